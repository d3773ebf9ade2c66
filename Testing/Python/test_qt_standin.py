"""Pins the PythonQt behaviours the ``qt`` stand-in imitates, so panels that pass here work in Slicer.

Each test names the PythonQt source (commontk/PythonQt, src/) that shows the behaviour.
"""

from __future__ import annotations

import sys

import pytest
import qt


@pytest.fixture(scope="module")
def app():
    return qt.QApplication.instance() or qt.QApplication([])


# --- properties are attributes (PythonQtInstanceWrapper.cpp getattro/setattro) ------------------


def test_property_read_gives_the_value(app):
    label = qt.QLabel("hello")
    assert label.text == "hello"
    assert isinstance(label.text, str)


def test_calling_a_property_getter_fails(app):
    with pytest.raises(TypeError):
        qt.QLabel("hello").text()


def test_property_write_sets_it(app):
    label = qt.QLabel()
    label.text = "x"
    assert qt.QLabel.text(label) == "x"
    button = qt.QPushButton()
    button.enabled = False
    assert not button.isEnabled()
    checkBox = qt.QCheckBox()
    checkBox.checked = True
    assert checkBox.isChecked()


def test_setter_methods_still_exist(app):
    button = qt.QPushButton()
    button.setEnabled(False)
    button.setText("Apply")
    assert button.enabled is False
    assert button.text == "Apply"


def test_read_only_property_write_raises(app):
    with pytest.raises(AttributeError, match="not writable"):
        qt.QPushButton().width = 10


def test_property_of_wrong_type_raises(app):
    with pytest.raises(AttributeError, match="does not accept"):
        qt.QWidget().size = 3


def test_new_attribute_on_cpp_object_raises_but_python_subclass_accepts(app):
    with pytest.raises(AttributeError, match="creating new attributes on C\\+\\+ objects is not allowed"):
        qt.QPushButton().myFlag = True

    class Panel(qt.QWidget):
        pass

    panel = Panel()
    panel.myFlag = True
    assert panel.myFlag is True


def test_python_subclass_method_wins_over_property(app):
    class Sized(qt.QWidget):
        def sizeHint(self):
            return qt.QSize(12, 34)

    assert Sized().sizeHint() == qt.QSize(12, 34)
    assert qt.QWidget().sizeHint == qt.QWidget().sizeHint  # a plain widget gives the value


def test_string_list_property_is_a_tuple(app):
    browser = qt.QTextBrowser()
    browser.searchPaths = ["/data"]
    assert browser.searchPaths == ("/data",)  # PythonQtConv::QStringListToPyObject


def test_name_is_object_name(app):
    # PYTHONQT_SUPPORT_NAME_PROPERTY (PythonQtClassInfo::lookForPropertyAndCache, CMakeLists.txt)
    widget = qt.QWidget()
    widget.objectName = "panel"
    assert widget.name == "panel"
    widget.name = "renamed"
    assert widget.objectName == "renamed"


def test_class_name_is_the_wrapper_type_name(app):
    assert qt.QPushButton().className() == "QPushButton"

    class MyWidget(qt.QWidget):
        pass

    assert MyWidget().className() == "MyWidget"


def test_dynamic_property_is_an_attribute(app):
    widget = qt.QWidget()
    widget.setProperty("SlicerParameterName", "threshold")
    assert widget.SlicerParameterName == "threshold"
    widget.SlicerParameterName = "other"
    assert widget.property("SlicerParameterName") == "other"


def test_direct_child_by_object_name(app):
    parent = qt.QWidget()
    child = qt.QLabel(parent)
    child.objectName = "statusLabel"
    assert parent.statusLabel is child


# --- connections (PythonQtStdDecorators.cpp, PythonQtSignal.cpp, PythonQtSignalReceiver.cpp) -----


def test_connect_signature_with_no_arguments_calls_without_arguments(app):
    calls = []
    button = qt.QPushButton()
    button.connect("clicked()", lambda *arguments: calls.append(arguments))
    button.click()
    assert calls == [()]


def test_connect_signature_passes_the_arguments(app):
    calls = []
    button = qt.QPushButton()
    button.checkable = True
    button.connect("clicked(bool)", lambda checked: calls.append(checked))
    button.click()
    assert calls == [True]


def test_arguments_are_cut_to_what_the_function_takes(app):
    calls = []

    class Widget:
        def onApply(self):
            calls.append("applied")

        def onToggle(self, checked, extra=None):
            calls.append((checked, extra))

    widget = Widget()
    button = qt.QPushButton()
    button.connect("clicked(bool)", widget.onApply)
    button.connect("clicked(bool)", widget.onToggle)
    button.click()
    assert calls == ["applied", (False, None)]


def test_connected_bound_method_is_kept_alive(app):
    calls = []

    class Receiver:
        def onClicked(self):
            calls.append("clicked")

    button = qt.QPushButton()
    button.clicked.connect(Receiver().onClicked)  # PySide would drop this weakly held method
    button.click()
    assert calls == ["clicked"]


def test_disconnect(app):
    calls = []

    def onClicked():
        calls.append("clicked")

    button = qt.QPushButton()
    button.connect("clicked(bool)", onClicked)
    assert button.disconnect("clicked(bool)", onClicked)
    button.click()
    button.clicked.connect(onClicked)
    button.clicked.disconnect(onClicked)
    button.click()
    assert calls == []


def test_overloaded_signals_by_signature(app):
    calls = []
    comboBox = qt.QComboBox()
    comboBox.addItems(["a", "b"])
    comboBox.connect("currentIndexChanged(int)", lambda index: calls.append(index))
    spinBox = qt.QDoubleSpinBox()
    spinBox.connect("valueChanged(double)", lambda value: calls.append(value))
    comboBox.currentIndex = 1
    spinBox.value = 2.5
    assert calls == [1, 2.5]


def test_unknown_signal_raises(app):
    # Stricter than PythonQt, which prints "signal ... does not exist" and returns False.
    with pytest.raises(ValueError, match="does not exist"):
        qt.QDoubleSpinBox().connect("valueChanged(int)", print)


def test_signal_attribute_has_no_pyside_overload_indexing(app):
    with pytest.raises(TypeError):
        qt.QPushButton().clicked[bool]


def test_signal_attribute_emit(app):
    calls = []
    button = qt.QPushButton()
    button.clicked.connect(lambda checked: calls.append(checked))
    button.clicked.emit(True)
    assert calls == [True]


def test_connect_to_receiver_slot(app):
    button = qt.QPushButton()
    label = qt.QLabel("text")
    button.connect("clicked()", label, "clear()")
    button.click()
    assert label.text == ""


# --- enums, timers, module contents -------------------------------------------------------------


def test_enums_through_the_class():
    assert qt.Qt.AlignLeft == 1
    assert qt.QMessageBox.Ok
    assert qt.QSizePolicy.Expanding
    assert qt.QFile.ReadOnly


def test_single_shot_fires_with_process_events(app):
    calls = []
    qt.QTimer.singleShot(0, lambda: calls.append("fired"))
    for _ in range(10):
        if calls:
            break
        qt.QApplication.processEvents()
    assert calls == ["fired"]


class _PythonSubclassWidget(qt.QWidget):
    """A widget class defined in Python, as the stand-in's main window is."""


def test_single_shot_calls_a_slot_of_a_child_widget(app):
    """slicer.util.delayDisplay closes its popup (a child of the main window) with singleShot(msec, popup.close).

    PySide then calls QObject.connect itself, with the sender first, when the parent is a Python subclass.
    """
    parent = _PythonSubclassWidget()
    child = qt.QWidget(parent)
    parent.show()
    assert child.visible
    qt.QTimer.singleShot(1, child.close)  # 0 ms takes another path in PySide
    deadline = qt.QElapsedTimer()
    deadline.start()
    while child.visible and deadline.elapsed() < 5000:
        qt.QApplication.processEvents()
        qt.QThread.msleep(1)
    assert not child.visible
    parent.close()


def test_ui_file_setting_a_property_twice_is_refused(app, tmp_path):
    path = tmp_path / "Twice.ui"
    path.write_text(
        '<ui version="4.0"><widget class="QWidget" name="Panel"><layout class="QVBoxLayout" name="layout"><item>'
        '<widget class="QTableWidget" name="caseTable">'
        '<property name="toolTip"><string>one</string></property>'
        '<property name="toolTip"><string>two</string></property>'
        "</widget></item></layout></widget></ui>",
        encoding="utf-8",
    )
    with pytest.raises(ValueError, match="toolTip more than once on caseTable"):
        qt.QUiLoader().load(str(path))


def test_timer_timeout_connect(app):
    calls = []
    timer = qt.QTimer()
    timer.interval = 0
    timer.timeout.connect(lambda: calls.append("tick"))
    timer.start()
    for _ in range(10):
        if calls:
            break
        qt.QApplication.processEvents()
    timer.stop()
    assert calls
    assert callable(timer.singleShot)  # PythonQt hides QTimer's singleShot property


def test_pyside_only_helpers_are_absent():
    for name in ("Signal", "Slot", "Property", "QEnum", "QFlag", "QtCore", "SIGNAL", "__feature__"):
        assert not hasattr(qt, name), name


def test_classes_of_the_four_modules_are_exported():
    for name in ("QPushButton", "QTimer", "Qt", "QSettings", "QFile", "QUiLoader", "QIcon", "QColor", "QApplication"):
        assert hasattr(qt, name), name


def test_calls_returning_nothing_keep_none_alive():
    """PySide6 6.12.0 dropped a reference to None per void call, aborting long runs; the pin avoids it."""
    timer = qt.QTimer()
    before = sys.getrefcount(None)
    for _ in range(2000):
        timer.stop()
        qt.QApplication.processEvents()
    assert sys.getrefcount(None) - before > -100

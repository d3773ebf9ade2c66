"""Pins the CTK widget API the ``ctk`` stand-in imitates (commontk/CTK Libs/Widgets/*.h)."""

from __future__ import annotations

import ctk
import pytest
import qt
from PySide6.QtTest import QTest
from slicer_standin import dialogs


@pytest.fixture(scope="module")
def app():
    return qt.QApplication.instance() or qt.QApplication([])


def _shownCollapsibleButton():
    button = ctk.ctkCollapsibleButton()
    button.text = "Parameters"
    layout = qt.QFormLayout(button)
    label = qt.QLabel("threshold")
    layout.addRow("Value:", label)
    button.show()
    return button, label


def test_collapsible_button_collapses_its_contents(app):
    button, label = _shownCollapsibleButton()
    collapsedStates = []
    button.connect("contentsCollapsed(bool)", lambda collapsed: collapsedStates.append(collapsed))
    assert button.text == "Parameters"
    assert button.checked and not button.collapsed and label.visible
    expandedHeight = button.sizeHint().height()
    button.collapsed = True
    assert not button.checked and not label.visible
    assert button.sizeHint().height() < expandedHeight
    button.checked = True
    assert not button.collapsed and label.visible
    assert collapsedStates == [True, False]


def test_collapsible_button_keeps_an_explicitly_hidden_child_hidden(app):
    button, label = _shownCollapsibleButton()
    label.hide()
    button.collapsed = True
    button.collapsed = False
    assert not label.visible


def test_collapsible_button_constructor_with_text(app):
    assert ctk.ctkCollapsibleButton("Inputs").text == "Inputs"
    assert ctk.ctkCollapsibleButton().className() == "ctkCollapsibleButton"


def test_collapsible_button_paints(app):
    button, _ = _shownCollapsibleButton()
    image = ctk.ctkWidgetsUtils.grabWidget(button)
    assert isinstance(image, qt.QImage)
    assert image.width() > 0 and image.height() > 0


def test_collapsible_group_box(app):
    box = ctk.ctkCollapsibleGroupBox()
    box.title = "Advanced"
    layout = qt.QVBoxLayout(box)
    child = qt.QLabel("x")
    layout.addWidget(child)
    box.show()
    box.collapsed = True
    assert not box.checked and not child.visible
    box.collapsed = False
    assert child.visible


def _recordingPathLineEdit(**properties):
    pathLineEdit = ctk.ctkPathLineEdit()
    for name, value in properties.items():
        setattr(pathLineEdit, name, value)
    changes, validity = [], []
    pathLineEdit.connect("currentPathChanged(QString)", lambda path: changes.append(path))
    pathLineEdit.connect("validInputChanged(bool)", lambda valid: validity.append(valid))
    return pathLineEdit, changes, validity


def test_path_line_edit_properties(app):
    pathLineEdit = ctk.ctkPathLineEdit()
    # CTK's default: QDir::AllEntries | QDir::NoDotAndDotDot | QDir::Readable | QDir::Executable.
    assert pathLineEdit.filters == 0x007 | 0x6000 | 0x010 | 0x040
    pathLineEdit.filters = ctk.ctkPathLineEdit.Files | ctk.ctkPathLineEdit.Writable
    pathLineEdit.nameFilters = ["Images (*.nrrd *.nii.gz)"]
    pathLineEdit.options = ctk.ctkPathLineEdit.DontConfirmOverwrite
    assert pathLineEdit.nameFilters == ("Images (*.nrrd *.nii.gz)",)
    assert pathLineEdit.filters == ctk.ctkPathLineEdit.Files | ctk.ctkPathLineEdit.Writable
    assert pathLineEdit.options == ctk.ctkPathLineEdit.DontConfirmOverwrite
    assert ctk.ctkPathLineEdit.Dirs == 0x001 and ctk.ctkPathLineEdit.Files == 0x002
    assert ctk.ctkPathLineEdit.NoDotAndDotDot == 0x1000  # CTK's enum value (Qt 4's), not QDir's
    assert pathLineEdit.comboBox().insertPolicy == qt.QComboBox.NoInsert


def test_path_line_edit_emits_for_acceptable_paths_only(app):
    pathLineEdit, changes, validity = _recordingPathLineEdit(nameFilters=["Images (*.nrrd *.nii.gz)"])
    pathLineEdit.currentPath = "/tmp/out.txt"
    pathLineEdit.currentPath = "/tmp/out.nrrd"
    assert pathLineEdit.currentPath == "/tmp/out.nrrd"
    assert changes == ["/tmp/out.nrrd"]
    assert validity == [True]  # valid input starts false, so a first invalid path changes nothing
    pathLineEdit.currentPath = ""
    assert changes == ["/tmp/out.nrrd"] and validity == [True, False]


def test_path_line_edit_name_filters_are_case_sensitive_and_match_the_whole_path(app):
    """ctk::nameFiltersToRegExp turns *.csv into .*\\.csv?$: case-sensitive, anchored, first dot part only."""
    pathLineEdit, changes, _ = _recordingPathLineEdit(nameFilters=["Case lists (*.csv)", "*.nii.gz"])
    for path in ("/data/Cases.CSV", "/data/cases.csv.bak", "/data/image.nii.gz", "/data/cases.csv", "/data/a.nii"):
        pathLineEdit.currentPath = path
    assert changes == ["/data/cases.csv", "/data/a.nii"]


def test_path_line_edit_without_name_filters_never_emits_an_empty_path(app):
    pathLineEdit, changes, validity = _recordingPathLineEdit(filters=ctk.ctkPathLineEdit.Dirs)
    pathLineEdit.currentPath = ""
    pathLineEdit.currentPath = "/data"
    pathLineEdit.currentPath = ""
    assert changes == ["/data"] and validity == [True, False]


def test_setting_name_filters_emits_nothing(app):
    pathLineEdit, changes, validity = _recordingPathLineEdit()
    pathLineEdit.currentPath = "/data/cases.csv"
    pathLineEdit.nameFilters = ["Label schemas (*.json)"]  # the text is no longer acceptable: CTK says nothing
    assert changes == ["/data/cases.csv"] and validity == [True]
    assert not pathLineEdit.comboBox().lineEdit().acceptableInput


def test_path_line_edit_emits_on_every_keystroke_the_validator_accepts(app):
    pathLineEdit, changes, _ = _recordingPathLineEdit()
    lineEdit = pathLineEdit.comboBox().lineEdit()
    QTest.keyClicks(lineEdit, "/da")
    assert changes == ["/", "/d", "/da"]
    assert lineEdit.modified  # typed, so modified; a path set in code is not
    pathLineEdit.currentPath = "/data"
    assert not lineEdit.modified and changes[-1] == "/data"


def shownWithFocus(pathLineEdit):
    """QLineEdit follows its completer only while it has the focus (QLineEdit::setCompleter, focusInEvent)."""
    pathLineEdit.show()
    pathLineEdit.activateWindow()
    lineEdit = pathLineEdit.comboBox().lineEdit()
    lineEdit.setFocus()
    qt.QApplication.processEvents()
    assert lineEdit.hasFocus()
    return lineEdit


def test_path_line_edit_emits_for_each_completion_highlighted(app):
    """ctkFileCompleter pops up completions; QLineEdit sets the text of each one highlighted."""
    pathLineEdit, changes, _ = _recordingPathLineEdit(nameFilters=["Case lists (*.csv)"])
    lineEdit = shownWithFocus(pathLineEdit)
    completer = lineEdit.completer()
    assert completer.completionMode == qt.QCompleter.PopupCompletion
    completer.setModel(qt.QStringListModel(["/data/cases.csv", "/data/cohort.csv"], completer))  # files, quickly
    QTest.keyClicks(lineEdit, "/data/c")
    assert completer.popup().visible and changes == []
    QTest.keyClick(completer.popup(), qt.Qt.Key_Down)
    QTest.keyClick(completer.popup(), qt.Qt.Key_Down)
    assert changes == ["/data/cases.csv", "/data/cohort.csv"] and not lineEdit.modified
    pathLineEdit.close()


def test_path_line_edit_browses_with_the_dialog_its_filters_choose(app, tmp_path):
    existing = tmp_path / "cases.csv"
    existing.write_text("case_id\n")
    save, _, _ = _recordingPathLineEdit(
        filters=ctk.ctkPathLineEdit.Files | ctk.ctkPathLineEdit.Writable, nameFilters=["Case lists (*.csv)"]
    )
    with dialogs.answering((str(tmp_path / "new.csv"), "")):
        save.browse()
    assert save.currentPath == str(tmp_path / "new.csv")
    assert dialogs.opened[-1].kind == "QFileDialog.getSaveFileName"
    # Picking an existing file in a save dialog asks whether to replace it, unless DontConfirmOverwrite.
    with pytest.raises(dialogs.UnattendedDialogError, match="already exists"), dialogs.answering((str(existing), "")):
        save.browse()
    save.options = ctk.ctkPathLineEdit.DontConfirmOverwrite
    with dialogs.answering((str(existing), "")):
        save.browse()
    assert save.currentPath == str(existing)
    folder, _, _ = _recordingPathLineEdit(filters=ctk.ctkPathLineEdit.Dirs)
    with dialogs.answering(str(tmp_path)):
        folder.browse()
    assert folder.currentPath == str(tmp_path)
    assert dialogs.opened[-1].kind == "QFileDialog.getExistingDirectory"
    with pytest.raises(dialogs.UnattendedDialogError, match="waited for a user"):
        folder.browse()  # unanswered: in Slicer it would wait for a click


def test_message_box_returns_the_remembered_answer_without_asking(app):
    box = ctk.ctkMessageBox()
    box.text = "Remove the model?"
    box.standardButtons = qt.QMessageBox.Ok | qt.QMessageBox.Cancel
    with dialogs.answering(qt.QMessageBox.Cancel):
        assert box.exec_() == qt.QMessageBox.Cancel
    assert dialogs.opened[-1].text == "Remove the model?"
    settings = qt.QSettings()
    settings.setValue("StandInTest/DontAskAgain", int(qt.QMessageBox.Ok))
    box.dontShowAgainSettingsKey = "StandInTest/DontAskAgain"
    assert box.dontShowAgainVisible
    assert box.exec_() == qt.QMessageBox.Ok  # no dialog: nothing needs answering
    settings.remove("StandInTest/DontAskAgain")


def test_slider_widget(app):
    slider = ctk.ctkSliderWidget()
    values = []
    slider.connect("valueChanged(double)", lambda value: values.append(value))
    slider.minimum = -10.0
    slider.maximum = 10.0
    slider.singleStep = 0.5
    slider.decimals = 1
    slider.value = 2.5
    assert (slider.minimum, slider.maximum, slider.singleStep, slider.decimals) == (-10.0, 10.0, 0.5, 1)
    assert slider.value == 2.5
    assert values[-1] == 2.5
    slider.setValue(3.0)
    assert values[-1] == 3.0


def test_search_box_and_combo_box(app):
    searchBox = ctk.ctkSearchBox()
    searchBox.text = "liver"
    assert isinstance(searchBox, qt.QLineEdit) and searchBox.text == "liver"
    comboBox = ctk.ctkComboBox()
    comboBox.defaultText = "Select a model"
    comboBox.addItems(["a", "b"])
    assert isinstance(comboBox, qt.QComboBox) and comboBox.defaultText == "Select a model"
    assert comboBox.count == 2

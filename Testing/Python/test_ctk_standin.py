"""Pins the CTK widget API the ``ctk`` stand-in imitates (commontk/CTK Libs/Widgets/*.h)."""

from __future__ import annotations

import ctk
import pytest
import qt


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


def test_path_line_edit(app):
    pathLineEdit = ctk.ctkPathLineEdit()
    changes = []
    validity = []
    pathLineEdit.connect("currentPathChanged(QString)", lambda path: changes.append(path))
    pathLineEdit.connect("validInputChanged(bool)", lambda valid: validity.append(valid))
    pathLineEdit.filters = ctk.ctkPathLineEdit.Files | ctk.ctkPathLineEdit.Writable
    pathLineEdit.nameFilters = ["Images (*.nrrd *.nii.gz)"]
    pathLineEdit.currentPath = "/tmp/out.txt"
    pathLineEdit.currentPath = "/tmp/out.nrrd"
    assert pathLineEdit.currentPath == "/tmp/out.nrrd"
    assert pathLineEdit.nameFilters == ("Images (*.nrrd *.nii.gz)",)
    assert pathLineEdit.filters == ctk.ctkPathLineEdit.Files | ctk.ctkPathLineEdit.Writable
    # As in CTK, currentPathChanged is emitted for valid input only.
    assert changes == ["/tmp/out.nrrd"]
    assert validity == [False, True]
    assert ctk.ctkPathLineEdit.Dirs == 0x001 and ctk.ctkPathLineEdit.Files == 0x002


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

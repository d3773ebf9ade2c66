"""The module's panel on the Slicer stand-in: path fields, the embedded Segment Editor's life cycle, scene close.

The stand-in's ctkPathLineEdit emits ``currentPathChanged`` per accepted keystroke and its
qMRMLSegmentEditorWidget keeps shortcuts and view observations as Slicer's do (Testing/Python/test_*_standin.py
pin both), so these tests fail where the panel would misbehave in Slicer.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import qt
import SimpleITK as sitk
import slicer
import slicer_standin
from PySide6.QtTest import QTest
from slicer_standin import dialogs

from TrainingDataExport import TrainingDataExportLogic

SCHEMA = {"labels": [{"value": 1, "name": "Liver", "color": "#dd8259"}]}


def write_project(folder, seed: int):
    """Two cases of seeded noise, their case list (cases.csv) and a label schema in ``folder``; returns it."""
    rng = np.random.default_rng(seed)
    for case_id in ("a", "b"):
        image = sitk.GetImageFromArray(rng.integers(0, 200, (4, 6, 7)).astype(np.int16))
        sitk.WriteImage(image, str(folder / f"{case_id}.nrrd"))
    (folder / "labels.json").write_text(json.dumps(SCHEMA), encoding="utf-8")
    TrainingDataExportLogic().createCaseListFromFolder(str(folder))
    return folder


@pytest.fixture
def project(tmp_path):
    """Two seeded cases, their case list (cases.csv) and a label schema in ``tmp_path``."""
    return write_project(tmp_path, 5)


def loadFirstCase(widget, project):
    widget.ui.caseListPathLineEdit.currentPath = str(project / "cases.csv")
    widget.ui.labelSchemaPathLineEdit.currentPath = str(project / "labels.json")
    widget.ui.caseTable.selectRow(0)
    widget.ui.loadCaseButton.click()
    assert widget.logic.caseLoaded()


def paint(logic):
    node = logic.segmentationNode
    segmentId = node.GetSegmentation().GetSegmentIdBySegmentName("Liver")
    mask = np.zeros((4, 6, 7), np.uint8)
    mask[1:3, 2:4, 2:5] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask, node, segmentId, logic.volumeNodes[0])


def test_typing_a_case_list_path_opens_it_only_when_editing_ends(widget, project, monkeypatch):
    loadFirstCase(widget, project)
    other = project / "other"
    other.mkdir()
    (other / "c.nrrd").write_bytes((project / "a.nrrd").read_bytes())
    TrainingDataExportLogic().createCaseListFromFolder(str(other))
    opened = []
    original = widget.logic.openCaseList
    monkeypatch.setattr(widget.logic, "openCaseList", lambda path: opened.append(path) or original(path))
    lineEdit = widget.ui.caseListPathLineEdit.comboBox().lineEdit()
    lineEdit.selectAll()
    QTest.keyClicks(lineEdit, str(other / "cases.csv"))  # ".../cases.cs" and ".../cases.csv" pass the filter
    assert opened == [] and widget.logic.caseLoaded()  # the loaded case stays open while the user types
    QTest.keyClick(lineEdit, qt.Qt.Key_Return)
    assert opened == [str(other / "cases.csv")]
    assert not widget.logic.caseLoaded() and [case.case_id for case in widget.logic.cases] == ["c"]
    lineEdit.setFocus()
    widget.ui.labelSchemaPathLineEdit.setFocus()  # focus leaving the field: nothing typed, nothing read again
    assert opened == [str(other / "cases.csv")]


def test_typing_back_to_the_open_case_list_keeps_the_loaded_case(widget, project):
    loadFirstCase(widget, project)
    lineEdit = widget.ui.caseListPathLineEdit.comboBox().lineEdit()
    QTest.keyClick(lineEdit, qt.Qt.Key_Backspace)
    QTest.keyClicks(lineEdit, "v")
    QTest.keyClick(lineEdit, qt.Qt.Key_Return)
    assert widget.logic.caseLoaded() and widget.logic.currentIndex == 0


def test_an_emptied_case_list_field_forgets_the_cases(widget, project):
    loadFirstCase(widget, project)
    widget.ui.caseListPathLineEdit.currentPath = ""
    assert widget.logic.cases == [] and not widget.logic.caseLoaded()
    assert widget.ui.caseTable.rowCount == 0


def test_an_existing_case_list_is_picked_without_a_question_and_upper_case_names_pass(widget, project):
    os.rename(project / "cases.csv", project / "Cases.CSV")
    with dialogs.answering((str(project / "Cases.CSV"), "")):  # no "replace it?" question follows
        widget.ui.caseListPathLineEdit.browse()
    assert [case.case_id for case in widget.logic.cases] == ["a", "b"]
    os.rename(project / "labels.json", project / "Labels.JSON")
    widget.ui.labelSchemaPathLineEdit.currentPath = str(project / "Labels.JSON")
    assert [label.name for label in widget.logic.labels] == ["Liver"]


def test_an_emptied_output_folder_disables_export(widget, project):
    loadFirstCase(widget, project)
    widget.ui.outputPathLineEdit.currentPath = str(project / "out")
    assert widget.ui.exportButton.enabled
    widget.ui.outputPathLineEdit.currentPath = ""  # no currentPathChanged for an empty path
    assert not widget.ui.exportButton.enabled


def test_the_segment_editor_lives_with_the_module(widget):
    """As Slicer's Segment Editor module: shortcuts while entered; effect, views and shortcuts released on exit."""
    editor = widget.segmentEditorWidget
    assert isinstance(editor, slicer.qMRMLSegmentEditorWidget)
    assert editor.parent() is widget.ui.annotationCollapsibleButton  # below the annotation buttons
    assert editor.mrmlSegmentEditorNode() is widget.logic.segmentEditorNode()
    shortcuts = slicer.util.mainWindow().findChildren(qt.QShortcut)
    panel = widget.parent
    panel.enter()
    assert editor.standInShortcuts
    assert all(shortcut.parent() is slicer.util.mainWindow() for shortcut in editor.standInShortcuts)
    editor.setActiveEffectByName("Paint")
    assert editor.standInViewsObserved
    panel.exit()
    assert editor.activeEffect() is None and not editor.mrmlSegmentEditorNode().GetActiveEffectName()
    assert not editor.standInViewsObserved and editor.standInShortcuts == []
    assert slicer.util.mainWindow().findChildren(qt.QShortcut) == shortcuts
    panel.enter()
    assert editor.standInShortcuts
    # Reload calls cleanup() on a panel that is still entered: nothing of the editor may outlive it.
    widget.cleanup()
    assert editor.standInShortcuts == [] and slicer.util.mainWindow().findChildren(qt.QShortcut) == shortcuts
    panel.exit()


def test_switching_modules_enters_and_exits_the_panel():
    panel = slicer.modules.trainingdataexport.widgetRepresentation()
    editor = panel.self().segmentEditorWidget
    slicer.util.selectModule("TrainingDataExport")
    try:
        assert panel.isEntered and editor.standInShortcuts
    finally:
        slicer.util.selectModule("Volumes")
    assert not panel.isEntered and editor.standInShortcuts == []


def test_closing_the_scene_keeps_unsaved_work_and_clears_the_editor(widget, project):
    loadFirstCase(widget, project)
    widget.parent.enter()
    editor = widget.segmentEditorWidget
    assert editor.segmentationNode() is widget.logic.segmentationNode
    paint(widget.logic)
    editor.setActiveEffectByName("Paint")
    slicer.mrmlScene.Clear(False)
    assert os.path.isfile(project / "a.recovery.seg.nrrd")
    assert not widget.logic.caseLoaded() and widget.logic.currentIndex is None
    assert editor.segmentationNode() is None and editor.activeEffect() is None
    assert editor.mrmlSegmentEditorNode() is widget.logic.segmentEditorNode()
    assert widget.ui.saveCaseButton.enabled is False
    widget.parent.exit()


def test_after_an_autosave_slicer_still_offers_to_save_the_segmentation(widget, project):
    loadFirstCase(widget, project)
    node = widget.logic.segmentationNode
    paint(widget.logic)
    widget.onAutosave()
    assert os.path.isfile(project / "a.recovery.seg.nrrd")
    # What Slicer's Save dialog and its exit prompt look at.
    assert node.GetModifiedSinceRead() and slicer.mrmlScene.GetModifiedSinceRead()
    storageNode = node.GetStorageNode()
    assert storageNode is None or storageNode.GetFileName() != str(project / "a.recovery.seg.nrrd")
    widget.ui.saveCaseButton.click()
    assert not node.GetModifiedSinceRead()
    assert node.GetStorageNode().GetFileName() == str(project / "a.seg.nrrd")


def test_a_restored_recovery_file_counts_as_unsaved(widget, project):
    loadFirstCase(widget, project)
    paint(widget.logic)
    widget.onAutosave()
    questions = []
    widget.confirm = lambda question: questions.append(question) or True
    widget.ui.loadCaseButton.click()
    assert "a.recovery.seg.nrrd" in questions[0]
    assert widget.logic.segmentationNode.GetModifiedSinceRead()


def test_the_recovery_question_is_a_dialog_in_the_gui(widget, project):
    """In Slicer's GUI the default answer comes from a modal dialog: never on a self-test's path."""
    loadFirstCase(widget, project)
    paint(widget.logic)
    widget.onAutosave()
    with slicer_standin.testing_mode(False), dialogs.answering(qt.QMessageBox.No):
        widget.loadCase(lambda: widget.logic.loadCase(0))
    assert "a.recovery.seg.nrrd" in dialogs.opened[-1].text
    assert widget.logic.segmentationNode.GetSegmentation().GetSegmentIdBySegmentName("Liver")


def test_the_case_checks_are_made_in_a_worker_process_and_shown_when_done(widget, project):
    """Checking reads every segmentation: the table says "checking…" until the job has checked them."""
    loadFirstCase(widget, project)
    paint(widget.logic)
    widget.ui.saveCaseButton.click()  # case a has a segmentation now: its check is not known
    table = widget.ui.caseTable
    assert table.item(0, 7).text() == "checking…" and widget.checkPoller.busy
    assert widget.logic.knownCaseProblems(0) is None
    assert widget.checkPoller.waitUntilDone(60)
    assert table.item(0, 7).text() == "ok" and widget.logic.knownCaseProblems(0) == []
    (project / "labels.json").write_text(json.dumps({"labels": [*SCHEMA["labels"], {
        "value": 2, "name": "Tumor", "color": "#90d5ff"}]}), encoding="utf-8")
    widget.logic.loadLabelSchema(str(project / "labels.json"))
    widget.updateCaseTable()
    assert widget.checkPoller.waitUntilDone(60)
    assert table.item(0, 7).text() == "1 problem"
    assert table.item(0, 7).toolTip() == "no segment for label 'Tumor' (2)"
    assert widget.logic.caseProblems(0) == ["no segment for label 'Tumor' (2)"]

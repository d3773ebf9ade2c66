"""The module's Logic on the Slicer stand-in: label-map cases, recovery after a stop, case navigation.

The self-test (TrainingDataExportTest) walks the main workflow through the panel; these cover the rest.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import qt
import SimpleITK as sitk
import slicer

from ModelRegistry import waitForJob
from ModelRegistryLib import JobError
from TrainingDataExport import TrainingDataExportLogic
from TrainingDataExportLib import ExportError, read_case_list

SCHEMA = {
    "labels": [{"value": 1, "name": "Liver", "color": "#dd8259"}, {"value": 2, "name": "Tumor", "color": "#90d5ff"}]
}


@pytest.fixture
def logic(tmp_path):
    rng = np.random.default_rng(11)
    for case_id in ("a", "b"):
        image = sitk.GetImageFromArray(rng.integers(0, 200, (5, 8, 9)).astype(np.int16))
        image.SetSpacing((0.5, 0.6, 2.0))
        image.SetOrigin((10.0, -4.0, 3.0))
        sitk.WriteImage(image, str(tmp_path / f"{case_id}.nrrd"))
    label = np.zeros((5, 8, 9), np.uint8)
    label[1:4, 2:6, 2:7] = 1
    label[2, 3:5, 3:5] = 2
    label_image = sitk.GetImageFromArray(label)
    label_image.CopyInformation(sitk.ReadImage(str(tmp_path / "a.nrrd")))
    sitk.WriteImage(label_image, str(tmp_path / "a_seg.nrrd"))
    (tmp_path / "labels.json").write_text(json.dumps(SCHEMA), encoding="utf-8")
    logic = TrainingDataExportLogic()
    logic.annotator = "tester"
    logic.createCaseListFromFolder(str(tmp_path))
    logic.loadLabelSchema(str(tmp_path / "labels.json"))
    yield logic
    logic.closeCase()


def segment_array(logic, name):
    node = logic.segmentationNode
    segment_id = node.GetSegmentation().GetSegmentIdBySegmentName(name)
    return slicer.util.arrayFromSegmentBinaryLabelmap(node, segment_id, logic.volumeNodes[0])


def test_a_label_map_case_loads_as_schema_segments_and_saves_as_seg_nrrd(logic, tmp_path):
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "a_seg.nrrd")))
    assert logic.loadCase(0) == ""
    np.testing.assert_array_equal(segment_array(logic, "Liver"), (label == 1).astype(np.uint8))
    np.testing.assert_array_equal(segment_array(logic, "Tumor"), (label == 2).astype(np.uint8))
    assert logic.saveCase() == str(tmp_path / "a.seg.nrrd")
    case = read_case_list(logic.caseListPath)[0]
    assert (case.segmentation, case.annotator, case.status) == (str(tmp_path / "a.seg.nrrd"), "tester", "in progress")
    assert logic.caseProblems(0) == []
    # The label map the case came from is left as it was.
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "a_seg.nrrd"))), label)


def test_work_left_unsaved_comes_back_from_the_recovery_file(logic, tmp_path):
    logic.loadCase(1)
    painted = np.zeros((5, 8, 9), np.uint8)
    painted[2:4, 1:3, 1:3] = 1
    node = logic.segmentationNode
    slicer.util.updateSegmentBinaryLabelmapFromArray(
        painted, node, node.GetSegmentation().GetSegmentIdBySegmentName("Tumor"), logic.volumeNodes[0]
    )
    # As if Slicer stopped after an autosave: the scene is gone, the recovery file stays.
    assert logic.autosave() == str(tmp_path / "b.recovery.seg.nrrd")
    assert logic.autosave() == ""  # nothing changed since
    slicer.mrmlScene.Clear(False)
    fresh = TrainingDataExportLogic()
    fresh.loadCaseList(logic.caseListPath)
    fresh.loadLabelSchema(logic.labelSchemaPath)
    assert fresh.loadCase(1) == str(tmp_path / "b.recovery.seg.nrrd")
    np.testing.assert_array_equal(segment_array(fresh, "Tumor"), np.zeros_like(painted))
    fresh.restoreRecovery()
    np.testing.assert_array_equal(segment_array(fresh, "Tumor"), painted)
    fresh.saveCase()
    assert not os.path.exists(tmp_path / "b.recovery.seg.nrrd")
    fresh.closeCase()
    assert fresh.loadCase(1) == ""
    np.testing.assert_array_equal(segment_array(fresh, "Tumor"), painted)
    fresh.closeCase()


def test_navigation_statuses_and_time_spent(logic, monkeypatch):
    with pytest.raises(ValueError, match="No case is loaded"):
        logic.nextCase()
    logic.loadCase(0)
    with pytest.raises(ValueError, match="no previous case"):
        logic.previousCase()
    clock = [time.monotonic()]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    logic.loadCase(0)
    clock[0] += 125.4
    logic.saveCase()
    clock[0] += 10
    logic.saveCase()
    assert read_case_list(logic.caseListPath)[0].time_spent == 135
    logic.nextCase()
    assert logic.currentIndex == 1 and [row[4] for row in logic.tableRows()] == ["in progress", "in progress"]
    logic.setStatus(1, "reviewed")
    assert read_case_list(logic.caseListPath)[1].status == "reviewed"
    with pytest.raises(ValueError, match="not a status"):
        logic.setStatus(1, "finished")


def test_a_pre_annotated_case_opens_its_prediction_and_saving_leaves_the_prediction_as_it_was(logic, tmp_path):
    """A model's prediction (here a label map) is the starting point of case b; the correction is the case's own."""
    prediction = np.zeros((5, 8, 9), np.uint8)
    prediction[1:3, 1:4, 1:5] = 1
    prediction_image = sitk.GetImageFromArray(prediction)
    prediction_image.CopyInformation(sitk.ReadImage(str(tmp_path / "b.nrrd")))
    (tmp_path / "predicted").mkdir()
    prediction_path = str(tmp_path / "predicted" / "b.nii.gz")
    sitk.WriteImage(prediction_image, prediction_path)
    before = (tmp_path / "predicted" / "b.nii.gz").read_bytes()
    case = logic.cases[1]
    case.pre_annotation, case.model_id, case.model_version, case.status = prediction_path, "m", "1.0", "pre-annotated"
    logic.saveCaseList()
    logic.loadCase(1)
    np.testing.assert_array_equal(segment_array(logic, "Liver"), prediction)
    assert segment_array(logic, "Tumor").sum() == 0
    assert read_case_list(logic.caseListPath)[1].status == "in progress"
    # Slicer's own Save would write the case's file, and counts the opened prediction as not saved yet.
    storage = logic.segmentationNode.GetStorageNode()
    assert storage.GetFileName() == str(tmp_path / "b.seg.nrrd") and logic.segmentationNode.GetModifiedSinceRead()
    corrected = prediction.copy()
    corrected[3, 5:7, 5:8] = 1
    node = logic.segmentationNode
    slicer.util.updateSegmentBinaryLabelmapFromArray(
        corrected, node, node.GetSegmentation().GetSegmentIdBySegmentName("Liver"), logic.volumeNodes[0])
    assert logic.saveCase() == str(tmp_path / "b.seg.nrrd")
    saved = read_case_list(logic.caseListPath)[1]
    assert (saved.segmentation, saved.pre_annotation, saved.model_id) == (str(tmp_path / "b.seg.nrrd"),
                                                                            prediction_path, "m")
    assert (tmp_path / "predicted" / "b.nii.gz").read_bytes() == before
    # Loaded again, the case opens the annotator's work, not the prediction.
    logic.loadCase(1)
    np.testing.assert_array_equal(segment_array(logic, "Liver"), corrected)


def test_loading_needs_the_schema(tmp_path, logic):
    logic.openLabelSchema("")
    with pytest.raises(ValueError, match="label schema first"):
        logic.loadCase(0)
    assert [row[7] for row in logic.tableRows()] == ["no schema", "no schema"]


def test_export_tasks_report_success_failure_and_cancel(logic, tmp_path):
    from TrainingDataExportLib import ExportSettings

    logic.setStatus(0, "done")
    task = logic.exportTask(ExportSettings("pairs"), str(tmp_path / "out"), folds=0, testFraction=0.0)
    assert waitForJob(task, 60) and task.state == "succeeded", task.error
    assert (task.progress.fraction, task.progress.text) == (1.0, f"exported 1 case(s) to {tmp_path / 'out'}")
    outcome = logic.exportOutcomeText(task)
    assert outcome.startswith(f"Exported 1 case(s) (1 written, 0 unchanged, 1 skipped) to {tmp_path / 'out'}.")
    assert outcome.endswith(f"Dataset card: {tmp_path / 'out' / 'dataset_card.md'}")

    cancelled = logic.exportTask(ExportSettings("pairs"), str(tmp_path / "other"))
    cancelled.cancel()
    assert waitForJob(cancelled, 60) and cancelled.state == "cancelled"
    assert logic.exportOutcomeText(cancelled).startswith("Export cancelled")

    # Another format into the same folder: refused before anything is written.
    failed = logic.exportTask(ExportSettings("monai"), str(tmp_path / "out"))
    assert waitForJob(failed, 60) and failed.state == "failed"
    assert "holds a 'pairs' export" in logic.exportOutcomeText(failed)
    with pytest.raises(ValueError, match="output folder"):
        logic.exportTask(ExportSettings("pairs"), "")


def test_the_console_export_waits_reports_progress_and_raises_failures(logic, tmp_path):
    from TrainingDataExportLib import ExportReport, ExportSettings

    logic.setStatus(0, "done")
    steps = []
    report = logic.exportDataset(ExportSettings("pairs"), str(tmp_path / "out"),
                                 progress=lambda *step: steps.append(step), folds=0, testFraction=0.0)
    assert isinstance(report, ExportReport) and report.written == [logic.cases[0].case_id]
    assert steps[-1] == (1.0, f"exported 1 case(s) to {tmp_path / 'out'}")
    with pytest.raises(JobError, match="holds a 'pairs' export") as failure:
        logic.exportDataset(ExportSettings("monai"), str(tmp_path / "out"))
    assert failure.value.raised(ExportError)


def test_cells_are_edited_in_the_panel_and_saved(logic):
    widget = slicer.modules.trainingdataexport.widgetRepresentation().self()
    original = widget.logic
    widget.logic = logic
    try:
        widget.updateCaseTable()
        table = widget.ui.caseTable
        columns = TrainingDataExportLogic.TABLE_COLUMNS
        table.item(0, columns.index("Patient")).setText("patient-7")
        table.item(1, columns.index("Status")).setText("reviewed")
        cases = read_case_list(logic.caseListPath)
        assert (cases[0].patient_id, cases[1].status) == ("patient-7", "reviewed")
        # A refused edit is undone in the table, and the file keeps the last valid list.
        table.item(0, columns.index("Patient")).setText("  ")
        assert "patient_id" in widget.ui.statusLabel.text
        assert table.item(0, columns.index("Patient")).text() == "patient-7"
        assert read_case_list(logic.caseListPath)[0].patient_id == "patient-7"
        assert not table.item(0, columns.index("Case")).flags() & qt.Qt.ItemIsEditable
    finally:
        widget.logic = original
        widget.updateCaseTable()


def test_only_editable_columns_and_valid_values_are_accepted(logic):
    with pytest.raises(ValueError, match="cannot be edited"):
        logic.editCase(0, "Case", "renamed")
    with pytest.raises(ValueError, match="not a status"):
        logic.editCase(0, "Status", "finished")
    logic.editCase(1, "Annotator", "second reader")
    assert read_case_list(logic.caseListPath)[1].annotator == "second reader"


def test_panel_fields_set_the_nnunet_dataset_and_channel_names():
    widget = slicer.modules.trainingdataexport.widgetRepresentation().self()
    ui = widget.ui
    ui.formatComboBox.currentIndex = ui.formatComboBox.findText("nnunet")
    ui.datasetIdSpinBox.value = 42
    ui.datasetNameLineEdit.text = "Liver"
    ui.channelNamesLineEdit.text = "CT, noNorm"
    settings = widget.exportSettings()
    assert (settings.dataset_id, settings.dataset_name, settings.channel_names) == (42, "Liver", ("CT", "noNorm"))
    assert ui.datasetIdSpinBox.enabled and ui.channelNamesLineEdit.enabled
    ui.datasetIdSpinBox.value = 0
    ui.datasetNameLineEdit.text = ""
    ui.channelNamesLineEdit.text = ""
    settings = widget.exportSettings()
    assert (settings.dataset_id, settings.dataset_name, settings.channel_names) == (None, None, ())
    ui.formatComboBox.currentIndex = ui.formatComboBox.findText("monai")
    assert not ui.datasetIdSpinBox.enabled and not ui.channelNamesLineEdit.enabled
    ui.formatComboBox.currentIndex = ui.formatComboBox.findText("nnunet")
    ui.datasetNameLineEdit.text = "no/slash"
    with pytest.raises(ValueError, match="dataset_name must be letters"):
        widget.exportSettings()
    ui.datasetNameLineEdit.text = ""


def test_export_from_the_console_with_a_dataset_id_name_and_channel_names(logic, tmp_path):
    logic.cases[1].segmentation = ""
    settings = TrainingDataExportLogic.exportSettings("nnunet", datasetId=5, datasetName="Liver", channelNames="CT")
    report = logic.exportDataset(settings, str(tmp_path / "nnUNet_raw"), folds=0, testFraction=0.0)
    dataset = json.loads((tmp_path / "nnUNet_raw" / "Dataset005_Liver" / "dataset.json").read_text(encoding="utf-8"))
    assert dataset["channel_names"] == {"0": "CT"} and report.written == ["a"]

"""Batch runs in Slicer: the console's cohortTask and segmentCohort, the panel's "Run on all cases" section, and
pre-annotations that reach Training Data Export's annotation workflow and its dataset card."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from batch_test_support import case_image, expected_labels, write_cases
from DeepSegment import DeepSegmentLogic, writeThresholdTestModel

import slicer
from DeepSegmentLib.batch import BatchError
from DeepSegmentLib.evaluation import label_map_metrics
from ModelRegistry import runJob
from ModelRegistryLib import IndexSource, Registry
from ModelRegistryLib.worker import HOLD_HOOK_VARIABLE
from TrainingDataExportLib import Case, ExportSettings, read_case_list, write_case_list

MODEL = "threshold-test"
SCHEMA = {"labels": [{"value": 1, "name": "Bright", "color": "#ff0000"}]}


@pytest.fixture()
def registry(tmp_path):
    index = writeThresholdTestModel(str(tmp_path / "models"))
    registry = Registry([IndexSource(index)], str(tmp_path / "cache"))
    registry.refresh(offline=True)
    return registry


@pytest.fixture()
def panel(registry):
    widget = slicer.modules.deepsegment.widgetRepresentation().self()
    original = widget.logic
    widget.logic = DeepSegmentLogic(registry)
    widget.updateModelList()
    section = widget.batchSection
    yield widget
    section.poller.stop()
    widget.logic.service.stop()
    widget.logic = original
    widget.updateModelList()
    ui = section.ui  # the panel outlives the test: leave the section as a new user sees it
    section.summary = None
    for pathLineEdit in (ui.batchCaseListPathLineEdit, ui.batchFolderPathLineEdit, ui.batchOutputPathLineEdit):
        pathLineEdit.currentPath = ""
    ui.batchSourceKindSelector.setCurrentIndex(0)
    ui.batchSummaryText.clear()
    ui.batchStatusLabel.text = ""
    ui.batchCollapsibleButton.collapsed = True
    evaluate = widget.evaluateSection.ui  # a batch hands its case list and predictions to Evaluate
    for pathLineEdit in (evaluate.caseListPathLineEdit, evaluate.predictionFolderPathLineEdit,
                         evaluate.reportFolderPathLineEdit, evaluate.referenceFolderPathLineEdit):
        pathLineEdit.currentPath = ""
    evaluate.evaluateModeSelector.setCurrentIndex(0)
    evaluate.evaluateCollapsibleButton.collapsed = True


def test_the_console_runs_a_cohort_and_refuses_bad_requests_before_any_work(registry, tmp_path):
    logic = DeepSegmentLogic(registry)
    images = write_cases(str(tmp_path / "images"), 3)
    summary = logic.segmentCohort(MODEL, str(tmp_path / "images"), str(tmp_path / "out"), kind="images",
                                  device="cpu", workers=1, precision="float32")
    assert [case.state for case in summary.cases] == ["done"] * 3 and summary.model_id == MODEL
    for case_id, image in images.items():
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / f"{case_id}.seg.nrrd")))
        np.testing.assert_array_equal(labels, expected_labels(image))
    # The same model and options: nothing to do for the cases the filter picks.
    task = logic.cohortTask(MODEL, str(tmp_path / "images"), str(tmp_path / "out"), kind="images", device="cpu",
                            precision="float32", caseFilter="case0, case2")
    assert [(case.case_id, case.state) for case in runJob(task).cases] == [("case0", "skipped"), ("case2", "skipped")]
    (tmp_path / "file").write_text("x")
    for arguments, message in [
        (("", str(tmp_path / "images"), str(tmp_path / "o")), "Select a model"),
        ((MODEL, str(tmp_path / "missing"), str(tmp_path / "o")), "Image folder not found"),
        ((MODEL, str(tmp_path / "images"), str(tmp_path / "file")), "is a file"),
        (("no-such-model", str(tmp_path / "images"), str(tmp_path / "o")), "none of the registry indexes"),
    ]:
        with pytest.raises(DeepSegmentLogic.BATCH_USER_ERRORS, match=message):
            logic.cohortTask(*arguments, kind="images")
    with pytest.raises(BatchError, match="case list"):
        logic.cohortTask(MODEL, str(tmp_path / "images"), str(tmp_path / "o"), kind="images", preAnnotate=True)
    assert not (tmp_path / "o").exists()


def _annotation_project(folder):
    """A case list of three cases (two to do, one done) and its label schema."""
    os.makedirs(folder, exist_ok=True)
    cases = []
    for number in range(3):
        path = os.path.join(folder, f"case{number}.nrrd")
        sitk.WriteImage(case_image(number), path)
        cases.append(Case(f"case{number}", f"p{number}", {"image": path}))
    with open(os.path.join(folder, "labels.json"), "w", encoding="utf-8") as file:
        json.dump(SCHEMA, file)
    label = sitk.Cast(sitk.ReadImage(cases[2].images["image"]) > 0.5, sitk.sitkUInt8)
    sitk.WriteImage(label, os.path.join(folder, "case2_seg.nii.gz"))
    cases[2].segmentation, cases[2].status = os.path.join(folder, "case2_seg.nii.gz"), "done"
    write_case_list(os.path.join(folder, "cases.csv"), cases)
    return os.path.join(folder, "cases.csv")


def test_pre_annotations_open_for_correction_and_the_card_says_how_much_they_changed(registry, tmp_path):
    caseList = _annotation_project(str(tmp_path / "project"))
    annotation = slicer.util.getModuleLogic("TrainingDataExport")
    annotation.openCaseList(caseList)
    annotation.loadLabelSchema(str(tmp_path / "project" / "labels.json"))
    try:
        logic = DeepSegmentLogic(registry)
        summary = logic.segmentCohort(MODEL, caseList, str(tmp_path / "predicted"), kind="cases", device="cpu",
                                      workers=1, precision="float32", preAnnotate=True,
                                      statuses=DeepSegmentLogic.NOT_ANNOTATED)
        assert [case.case_id for case in summary.cases] == ["case0", "case1"]
        assert summary.pre_annotated == ["case0", "case1"]
        # The annotation panel had the case list open: it shows the pre-annotations now, and keeps them on save.
        assert [case.status for case in annotation.cases] == ["pre-annotated", "pre-annotated", "done"]
        assert annotation.cases[0].model_id == MODEL

        annotation.loadCase(0)
        node = annotation.segmentationNode
        segmentId = node.GetSegmentation().GetSegmentIdBySegmentName("Bright")
        prediction = slicer.util.arrayFromSegmentBinaryLabelmap(node, segmentId, annotation.volumeNodes[0])
        np.testing.assert_array_equal(prediction, expected_labels(case_image(0)))
        corrected = prediction.copy()
        corrected[:4] = 0  # the annotator removes part of the prediction
        slicer.util.updateSegmentBinaryLabelmapFromArray(corrected, node, segmentId, annotation.volumeNodes[0])
        annotation.saveCase()
        assert read_case_list(caseList)[0].status == "in progress"
        assert read_case_list(caseList)[1].status == "pre-annotated"

        report = annotation.exportDataset(ExportSettings("pairs"), str(tmp_path / "export"), folds=0,
                                          testFraction=0.0)
        with open(os.path.join(report.output_dir, "dataset_card.json"), encoding="utf-8") as file:
            card = json.load(file)
        started = {case["case_id"]: case["pre_annotation"] for case in card["cases"]}
        assert set(started) == {"case0", "case2"} and started["case2"] is None
        (expected,) = label_map_metrics(corrected, prediction, case_image(0).GetSpacing(), [1], 2.0)
        assert started["case0"]["dice"]["1"] == pytest.approx(expected.dice, abs=1e-6)
        assert started["case0"]["model_id"] == MODEL and card["pre_annotations"]["cases"] == 1
    finally:
        annotation.closeCase()
        annotation.openCaseList("")
        annotation.openLabelSchema("")


def wait_for(section):
    assert section.poller.waitUntilDone(300), "the batch did not finish"


def test_the_panel_runs_on_all_cases_shows_the_summary_and_cancels(panel, tmp_path, monkeypatch):
    section = panel.batchSection
    ui = section.ui
    assert ui.batchCollapsibleButton.text == "Run on all cases" and ui.batchCollapsibleButton.collapsed
    ui.batchCollapsibleButton.collapsed = False  # as the user opens it
    panel.ui.deviceSelector.setCurrentIndex(panel.ui.deviceSelector.findData("cpu"))
    caseList = _annotation_project(str(tmp_path / "project"))
    assert not ui.batchCaseListPathLineEdit.isHidden() and ui.batchFolderPathLineEdit.isHidden()
    assert not ui.batchRunButton.enabled
    ui.batchCaseListPathLineEdit.currentPath = caseList
    ui.batchOutputPathLineEdit.currentPath = str(tmp_path / "predicted")
    ui.batchCaseFilterLineEdit.text = "case0 case2"
    assert ui.batchRunButton.enabled and ui.batchEvaluateButton.isHidden()
    ui.batchRunButton.click()
    assert ui.batchRunButton.text == "Cancel"
    wait_for(section)
    assert ui.batchRunButton.text == "Run on all cases" and ui.batchStatusLabel.text == "Finished."
    assert "2 done, 0 skipped, 0 failed, 0 not run" in ui.batchSummaryText.toPlainText()
    # A case list's results can be measured against its annotations: the Evaluate section gets both.
    assert not ui.batchEvaluateButton.isHidden()
    ui.batchEvaluateButton.click()
    evaluate = panel.evaluateSection.ui
    assert evaluate.caseListPathLineEdit.currentPath == caseList and not evaluate.evaluateCollapsibleButton.collapsed
    assert evaluate.predictionFolderPathLineEdit.currentPath == str(tmp_path / "predicted")
    assert evaluate.evaluateButton.enabled

    # A folder of larger cases, cancelled once one is done: what was computed stays, nothing is half-written.
    write_cases(str(tmp_path / "images"), 6, shape=(64, 64, 64))
    ui.batchSourceKindSelector.setCurrentIndex(ui.batchSourceKindSelector.findData("images"))
    assert ui.batchCaseListPathLineEdit.isHidden() and ui.batchPreAnnotateCheckBox.isHidden()
    ui.batchFolderPathLineEdit.currentPath = str(tmp_path / "images")
    ui.batchOutputPathLineEdit.currentPath = str(tmp_path / "out")
    ui.batchCaseFilterLineEdit.text = ""
    ui.batchWorkersSpinBox.value = 1
    # The run stops once a case is done until it is cancelled, so the cancel lands mid-run on any machine.
    monkeypatch.setenv(HOLD_HOOK_VARIABLE, "DeepSegmentLib.batch:run_batch@1 of 6 cases")
    ui.batchRunButton.click()
    while section.poller.busy and not ui.batchStatusLabel.text.startswith(("1 of 6", "2 of 6", "3 of 6")):
        section.poller.waitUntilDone(0.05)
    ui.batchRunButton.click()
    assert ui.batchStatusLabel.text.startswith("Cancelling")
    wait_for(section)
    ui.batchWorkersSpinBox.value = 0
    assert ui.batchStatusLabel.text == "Cancelled; run again to go on.", ui.batchStatusLabel.text
    summary = section.summary
    assert summary.cancelled and {case.state for case in summary.cases} == {"done", "not run"}
    assert ui.batchEvaluateButton.isHidden()
    written = sorted(name for name in os.listdir(tmp_path / "out") if name.endswith(".seg.nrrd"))
    assert written == sorted(f"{case.case_id}.seg.nrrd" for case in summary.cases if case.state == "done")

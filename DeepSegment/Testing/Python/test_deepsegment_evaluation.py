"""Evaluation in Slicer: two segmentation nodes, a cohort from the console and from the panel's Evaluate
section, results in real table and plot chart nodes, and selecting a case loads it."""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import pytest
import SimpleITK as sitk
from DeepSegment import DeepSegmentLogic
from evaluation_cases import label_map_pair

import qt
import slicer
from DeepSegmentLib.evaluation import BOTH_EMPTY, PREDICTION_EMPTY, label_map_metrics
from DeepSegmentLib.segfile import SegmentInfo, write_segmentation
from ModelRegistryLib.index import Label
from TrainingDataExportLib import Case, save_label_schema, write_case_list

SPACING = (0.8, 1.2, 2.5)  # x, y, z


@pytest.fixture()
def logic():
    return DeepSegmentLogic(registry=object())  # evaluation needs no model registry


def oblique_volume(shape):
    angle = np.radians(25.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    ijkToRAS = np.eye(4)
    ijkToRAS[:3, :3] = rotation @ np.diag(SPACING)
    ijkToRAS[:3, 3] = [10.0, -20.0, 35.0]
    return slicer.util.addVolumeFromArray(np.zeros(shape, np.int16), ijkToRAS=ijkToRAS, name="CT")


def segmentation_node(name, volume, masks):
    """A segmentation node on ``volume``'s grid with one segment per ``(name, mask)``."""
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    for segmentName, mask in masks:
        segmentId = node.GetSegmentation().AddEmptySegment("", segmentName)
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask.astype(np.uint8), node, segmentId, volume)
    return node


def node_count():
    """Nodes in the scene but the subject hierarchy's, which Slicer creates once, when first needed."""
    scene = slicer.mrmlScene
    return scene.GetNumberOfNodes() - scene.GetNodesByClass("vtkMRMLSubjectHierarchyNode").GetNumberOfItems()


def test_two_segmentation_nodes_are_compared_segment_by_segment(logic):
    reference, prediction = label_map_pair(21, shape=(30, 36, 40), labels=3, miss=0.0)
    volume = oblique_volume(reference.shape)
    referenceNode = segmentation_node("Expert", volume, [("Liver", reference == 1), ("Tumor", reference == 2),
                                                         ("Cyst", reference == 3)])
    predictionNode = segmentation_node("Model", volume, [("tumor", prediction == 2), ("LIVER", prediction == 1),
                                                         ("Spleen", prediction == 3)])
    nodesBefore = node_count()
    report = logic.evaluateSegmentations(referenceNode, predictionNode, tolerance=1.5, referenceVolumeNode=volume)
    assert node_count() == nodesBefore
    (case,) = report.cases
    assert case.case_id == "Expert / Model"
    assert case.notes == ["prediction segment 'Spleen' matches no reference segment"]
    liver, tumor, cyst = case.labels
    expected = label_map_metrics(reference, prediction, SPACING, [1, 2], 1.5)
    assert (liver.name, tumor.name) == ("Liver", "Tumor")
    for result, wanted in zip((liver, tumor), expected):
        for name in ("dice", "hd95_mm", "msd_mm", "nsd", "reference_ml", "prediction_ml"):
            assert result.measure(name) == pytest.approx(wanted.measure(name), abs=1e-6)
    assert cyst.status == PREDICTION_EMPTY  # no prediction segment is a cyst
    # Without a volume the reference segmentation's own geometry (the same grid here) is used.
    again = logic.evaluateSegmentations(referenceNode, predictionNode, tolerance=1.5)
    assert again.cases[0].labels == case.labels
    assert node_count() == nodesBefore
    with pytest.raises(ValueError, match="Select a reference"):
        logic.evaluateSegmentations(referenceNode, None)


def test_results_go_to_a_table_node_and_a_plot_chart_node(logic):
    reference, prediction = label_map_pair(22, shape=(20, 24, 28), labels=2, miss=0.0)
    volume = oblique_volume(reference.shape)
    referenceNode = segmentation_node("Expert", volume, [("Liver", reference == 1), ("Tumor", reference == 2),
                                                         ("Vessel", np.zeros_like(reference, bool))])
    predictionNode = segmentation_node("Model", volume, [("Liver", prediction == 1), ("Tumor", prediction == 2)])
    report = logic.evaluateSegmentations(referenceNode, predictionNode)
    tableNode, chartNode = logic.showEvaluation(report)
    assert tableNode.IsA("vtkMRMLTableNode") and chartNode.IsA("vtkMRMLPlotChartNode")
    table = tableNode.GetTable()
    columns = [table.GetColumn(index).GetName() for index in range(table.GetNumberOfColumns())]
    assert columns[:3] == ["Case", "Case number", "Liver Dice"]
    assert "Tumor HD95 (mm)" in columns and "Vessel Volume difference (%)" in columns and columns[-1] == "Status"
    assert table.GetNumberOfRows() == 1
    assert tableNode.GetCellText(0, 0) == "Expert / Model"
    assert table.GetColumnByName("Liver Dice").GetValue(0) == report.cases[0].labels[0].dice
    assert math.isnan(table.GetColumnByName("Vessel Dice").GetValue(0))
    assert tableNode.GetCellText(0, len(columns) - 1) == f"Vessel: {BOTH_EMPTY}"
    series = [chartNode.GetNthPlotSeriesNode(index) for index in range(chartNode.GetNumberOfPlotSeriesNodes())]
    assert [(s.GetXColumnName(), s.GetYColumnName()) for s in series] == [
        ("Case number", "Liver Dice"), ("Case number", "Tumor Dice"), ("Case number", "Vessel Dice")]
    assert all(s.GetTableNode() is tableNode for s in series)
    assert series[0].GetPlotType() == slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter
    # Shown again into the same nodes: replaced, not added to.
    assert logic.showEvaluation(report, tableNode, chartNode) == (tableNode, chartNode)
    assert chartNode.GetNumberOfPlotSeriesNodes() == 3
    assert slicer.mrmlScene.GetNodesByClass("vtkMRMLPlotSeriesNode").GetNumberOfItems() == 3
    assert tableNode.GetTable().GetNumberOfColumns() == len(columns)


def write_image(path, array, geometry=None) -> str:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin((5.0, -7.0, 12.0))
    if geometry is not None:
        image.CopyInformation(geometry)
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    if str(path).endswith(".seg.nrrd"):
        write_segmentation(str(path), image, [SegmentInfo(1, "Liver", "#dd8259"), SegmentInfo(2, "Tumor", "#90d5ff")])
    else:
        sitk.WriteImage(image, str(path))
    return str(path)


@pytest.fixture()
def project(tmp_path):
    """A case list with three annotated cases (images and .seg.nrrd references) and a prediction folder."""
    save_label_schema(str(tmp_path / "labels.json"), [Label(1, "Liver", "#dd8259"), Label(2, "Tumor", "#90d5ff")])
    cases, arrays = [], {}
    for seed in range(3):
        reference, prediction = label_map_pair(30 + seed, shape=(16, 20, 24), labels=2, miss=0.3)
        case_id = f"case{seed}"
        arrays[case_id] = (reference, prediction)
        cases.append(Case(case_id, case_id, {"image": write_image(tmp_path / "images" / f"{case_id}.nrrd",
                                                                  (reference * 100).astype(np.int16))},
                          write_image(tmp_path / "labels" / f"{case_id}.seg.nrrd", reference)))
        write_image(tmp_path / "predicted" / f"{case_id}.nii.gz", prediction)
    write_case_list(str(tmp_path / "cases.csv"), cases)
    return tmp_path, arrays


def test_cohort_from_the_console_and_loading_a_case(logic, project):
    folder, arrays = project
    report = logic.evaluateCohort(str(folder / "predicted"), cases=str(folder / "cases.csv"), tolerance=2.0,
                                  reportFolder=str(folder / "report"))
    assert os.path.isfile(folder / "report" / "evaluation.md")
    assert [label.name for label in report.labels] == ["Liver", "Tumor"]
    for case in report.cases:
        # The report came from a worker process as JSON: NaN (an empty label) is another float object there, which
        # == never finds equal, so the values are compared with NaN equal to NaN.
        expected = label_map_metrics(*arrays[case.case_id], SPACING, report.labels, 2.0)
        np.testing.assert_equal([dataclasses.asdict(result) for result in case.labels],
                                [dataclasses.asdict(result) for result in expected])
    rows = logic.evaluationCaseRows(report)
    means = [float(cells[1]) for _, cells in rows]
    assert means == sorted(means) and sorted(index for index, _ in rows) == [0, 1, 2]
    assert "3 cases measured, 0 failed. Mean Dice: Liver 0." in logic.evaluationSummary(report)

    nodes = logic.loadEvaluatedCase(report, 1)
    assert nodes["image"].GetName() == "case1 image"
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(nodes["image"]), arrays["case1"][0] * 100)
    for role, array in (("reference", arrays["case1"][0]), ("prediction", arrays["case1"][1])):
        node = nodes[role]
        assert node.GetName() == f"case1 {role}"
        segmentation = node.GetSegmentation()
        for label in report.labels:
            segmentId = segmentation.GetSegmentIdBySegmentName(label.name)
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(node, segmentId, nodes["image"])
            np.testing.assert_array_equal(mask, array == label.value)
    assert not nodes["reference"].GetDisplayNode().GetVisibility2DFill()
    assert nodes["prediction"].GetDisplayNode().GetVisibility2DFill()
    logic.loadEvaluatedCase(report, 2)
    assert not slicer.mrmlScene.IsNodePresent(nodes["reference"])  # the case shown before is gone
    assert slicer.mrmlScene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 2


def test_cohort_task_refuses_bad_inputs_at_once(logic, project):
    folder, _ = project
    predicted = str(folder / "predicted")
    (folder / "empty").mkdir()
    with pytest.raises(ValueError, match="either a reference folder or a case list"):
        logic.evaluationTask(predicted, reference=str(folder / "labels"), cases=str(folder / "cases.csv"))
    with pytest.raises(ValueError, match="folder not found"):
        logic.evaluationTask(predicted, reference=str(folder / "missing"))
    with pytest.raises(ValueError, match="labels are a label schema file"):
        logic.evaluationTask(predicted, reference=str(folder / "labels"), labels="liver")
    with pytest.raises(ValueError, match="No prediction"):
        logic.evaluationTask(str(folder / "empty"), reference=str(folder / "labels"))


def wait_for(poller, seconds=120):
    timer = qt.QElapsedTimer()
    timer.start()
    while poller.busy and timer.elapsed() < seconds * 1000:
        slicer.app.processEvents()
        qt.QThread.msleep(20)
    assert not poller.busy, "the evaluation did not finish"


def test_panel_evaluate_section(project):
    folder, arrays = project
    widget = slicer.modules.deepsegment.widgetRepresentation().self()
    section = widget.evaluateSection
    ui = section.ui
    try:
        exercise_the_evaluate_section(section, ui, folder, arrays)
    finally:  # the panel outlives the test: leave it as a new user sees it
        ui.evaluateModeSelector.setCurrentIndex(0)
        ui.evaluateCollapsibleButton.collapsed = True


def exercise_the_evaluate_section(section, ui, folder, arrays):
    assert ui.evaluateCollapsibleButton.text == "Evaluate" and ui.evaluateCollapsibleButton.collapsed
    ui.evaluateCollapsibleButton.collapsed = False  # as the user opens it (a collapsed section hides its widgets)
    ui.evaluateModeSelector.setCurrentIndex(ui.evaluateModeSelector.findData("cases"))
    assert not ui.caseListPathLineEdit.isHidden() and ui.referenceFolderPathLineEdit.isHidden()
    assert not ui.evaluateButton.enabled
    ui.caseListPathLineEdit.currentPath = str(folder / "cases.csv")
    ui.predictionFolderPathLineEdit.currentPath = str(folder / "predicted")
    ui.reportFolderPathLineEdit.currentPath = str(folder / "panel-report")
    assert ui.evaluateButton.enabled
    ui.evaluateButton.click()
    wait_for(section.poller)
    assert ui.evaluateStatusLabel.text.startswith("3 cases measured, 0 failed."), ui.evaluateStatusLabel.text
    assert os.path.isfile(folder / "panel-report" / "evaluation.csv")
    table = ui.evaluateCaseTable
    assert table.rowCount == 3
    assert section.tableNode.GetTable().GetNumberOfRows() == 3
    assert section.chartNode.GetNumberOfPlotSeriesNodes() == 2
    table.selectRow(0)
    firstCase = table.item(0, 0).text()
    loaded = slicer.mrmlScene.GetFirstNodeByName(f"{firstCase} prediction")
    assert loaded is not None and loaded.IsA("vtkMRMLSegmentationNode")

    # Two segmentations in the scene: measured at once, into the same table node.
    ui.evaluateModeSelector.setCurrentIndex(ui.evaluateModeSelector.findData("nodes"))
    assert not ui.evaluateButton.enabled
    ui.referenceSegmentationSelector.setCurrentNode(slicer.mrmlScene.GetFirstNodeByName(f"{firstCase} reference"))
    ui.predictionSegmentationSelector.setCurrentNode(loaded)
    tableNode = section.tableNode
    ui.evaluateButton.click()
    assert section.tableNode is tableNode and tableNode.GetTable().GetNumberOfRows() == 1
    assert table.rowCount == 1 and table.item(0, 0).text() == f"{firstCase} reference / {firstCase} prediction"
    nodes = slicer.mrmlScene.GetNumberOfNodes()
    table.selectRow(0)  # the two segmentations are in the scene already: nothing to load
    assert slicer.mrmlScene.GetNumberOfNodes() == nodes
    expected = label_map_metrics(*arrays[firstCase], SPACING, [1, 2], 2.0)
    assert float(table.item(0, 1).text()) == pytest.approx(
        np.mean([result.dice for result in expected if math.isfinite(result.dice)]), abs=1e-3)

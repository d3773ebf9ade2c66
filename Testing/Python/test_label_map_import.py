"""Label maps become segments in one call of Slicer's segmentations logic, on the stand-in's real MRML.

DeepSegment's results and TrainingDataExport's label-map cases both go through ``ModelRegistry.importLabelMap``;
each segment is compared, voxel for voxel, with what the former per-segment import
(``slicer.util.updateSegmentBinaryLabelmapFromArray`` once per label) gives, on an oblique, anisotropic grid.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk

from DeepSegment import DeepSegmentLogic, RunResult
from DeepSegmentLib import SegmentationResult
from ModelRegistry import addLabelSegment, importLabelMap
from ModelRegistryLib.index import Coding, Label, Terminology
from TrainingDataExport import TrainingDataExportLogic

TISSUE = Coding("SCT", "85756007", "Tissue")
LABELS = (
    Label(1, "Gray matter", "#b4b4b4", Terminology(TISSUE, Coding("SCT", "389081007", "Gray matter"))),
    Label(2, "White matter", "#fafaf0", Terminology(TISSUE, Coding("SCT", "389080008", "White matter"))),
    Label(4, "Lesion", "#dd3322"),  # no terminology
    Label(7, "Never found", "#00ff00"),  # no voxel of it: an empty segment
)


def oblique_label_image(shape=(9, 12, 14)) -> sitk.Image:
    """A seeded label map holding 0, 1, 2 and 4 on a tilted, anisotropic grid (LPS, as the engine returns it)."""
    rng = np.random.default_rng(5)
    array = rng.choice(np.array([0, 1, 2, 4], np.uint8), size=shape, p=[0.4, 0.3, 0.2, 0.1])
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 1.3, 2.5))
    image.SetOrigin((-12.0, 30.5, 4.25))
    angle = np.radians(20.0)
    image.SetDirection((np.cos(angle), -np.sin(angle), 0.0, np.sin(angle), np.cos(angle), 0.0, 0.0, 0.0, 1.0))
    return image


def per_segment_import(labelmapNode, segmentationNode, labels) -> None:
    """The import DeepSegment and TrainingDataExport used before: one mask and one update per label."""
    array = slicer.util.arrayFromVolume(labelmapNode)
    for label in labels:
        segmentId = addLabelSegment(segmentationNode, label, f"label_{label.value}")
        slicer.util.updateSegmentBinaryLabelmapFromArray(
            (array == label.value).astype(np.uint8), segmentationNode, segmentId, labelmapNode
        )


def terminology(segment) -> str:
    if hasattr(segment, "GetTerminology"):
        return segment.GetTerminology()
    entry = vtk.reference("")
    segment.GetTag(segment.GetTerminologyEntryTagName(), entry)
    return str(entry)


def describe(segmentationNode) -> list:
    """(id, name, color, terminology) of every segment, in order."""
    segmentation = segmentationNode.GetSegmentation()
    described = []
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        color = tuple(round(channel, 6) for channel in segment.GetColor())
        described.append((segmentation.GetNthSegmentID(index), segment.GetName(), color, terminology(segment)))
    return described


def test_a_result_becomes_the_segments_the_per_segment_import_made():
    image = oblique_label_image()
    truth = sitk.GetArrayFromImage(image)
    volume = DeepSegmentLogic.volumeNodeFromImage(sitk.Cast(image, sitk.sitkInt16), "Input")
    result = DeepSegmentLogic().applyResult(RunResult(LABELS, SegmentationResult(image, (1, 2, 4)), volume, 1.0))

    labelmap = DeepSegmentLogic.volumeNodeFromImage(image, "labels", "vtkMRMLLabelMapVolumeNode")
    before = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "per segment")
    before.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    per_segment_import(labelmap, before, LABELS)

    assert describe(result) == describe(before)
    assert [segment_id for segment_id, *_ in describe(result)] == ["label_1", "label_2", "label_4", "label_7"]
    assert describe(result)[0][3] == LABELS[0].terminology.slicer_entry()
    for label in LABELS:
        segment_id = f"label_{label.value}"
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(result, segment_id, volume)
        np.testing.assert_array_equal(mask, slicer.util.arrayFromSegmentBinaryLabelmap(before, segment_id, volume))
        np.testing.assert_array_equal(mask, (truth == label.value).astype(np.uint8))
    assert not slicer.util.arrayFromSegmentBinaryLabelmap(result, "label_7", volume).any()
    # The temporary label map node is gone: the scene holds the input, the result and this test's nodes.
    assert slicer.mrmlScene.GetNodesByClass("vtkMRMLLabelMapVolumeNode").GetNumberOfItems() == 1


def test_a_second_result_replaces_the_segments_of_a_given_segmentation():
    image = oblique_label_image()
    volume = DeepSegmentLogic.volumeNodeFromImage(sitk.Cast(image, sitk.sitkInt16), "Input")
    logic = DeepSegmentLogic()
    node = logic.applyResult(RunResult(LABELS, SegmentationResult(image, (1, 2, 4)), volume, 1.0))
    only_lesion = sitk.BinaryThreshold(image, 4, 4, 4, 0)
    logic.applyResult(RunResult(LABELS[2:3], SegmentationResult(only_lesion, (4,)), volume, 1.0), node)
    assert [segment_id for segment_id, *_ in describe(node)] == ["label_4"]
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(node, "label_4", volume)
    np.testing.assert_array_equal(mask, (sitk.GetArrayFromImage(image) == 4).astype(np.uint8))


def test_label_values_below_one_are_refused():
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    labelmap = DeepSegmentLogic.volumeNodeFromImage(oblique_label_image(), "labels", "vtkMRMLLabelMapVolumeNode")
    with pytest.raises(ValueError, match="label values are 1 or more"):
        importLabelMap(labelmap, node, {0: addLabelSegment(node, Label(1, "Background", "#000000"))})


def test_a_label_map_case_gets_schema_segments_and_one_for_each_unknown_value(tmp_path):
    image = oblique_label_image()
    array = sitk.GetArrayFromImage(image)
    array[0, 0, :3] = 9  # a value the schema does not know
    labels = sitk.GetImageFromArray(array)
    labels.CopyInformation(image)
    sitk.WriteImage(sitk.Cast(image, sitk.sitkInt16), str(tmp_path / "a.nrrd"))
    sitk.WriteImage(labels, str(tmp_path / "a_seg.nrrd"))
    schema = {"labels": [{"value": label.value, "name": label.name, "color": label.color} for label in LABELS]}
    (tmp_path / "labels.json").write_text(json.dumps(schema), encoding="utf-8")
    logic = TrainingDataExportLogic()
    logic.createCaseListFromFolder(str(tmp_path))
    logic.loadLabelSchema(str(tmp_path / "labels.json"))
    try:
        logic.loadCase(0)
        node, volume = logic.segmentationNode, logic.volumeNodes[0]
        names = [name for _, name, _, _ in describe(node)]
        # The file's values in order, then the schema's labels it lacks (empty, ready to paint).
        assert names == ["Gray matter", "White matter", "Lesion", "Label 9", "Never found"]
        segmentation = node.GetSegmentation()
        for value, name in ((1, "Gray matter"), (2, "White matter"), (4, "Lesion"), (9, "Label 9")):
            segment_id = segmentation.GetSegmentIdBySegmentName(name)
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(node, segment_id, volume)
            np.testing.assert_array_equal(mask, (array == value).astype(np.uint8))
        lesion = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("Lesion"))
        np.testing.assert_allclose(lesion.GetColor(), (0xDD / 255, 0x33 / 255, 0x22 / 255), atol=1e-6)
    finally:
        logic.closeCase()


def test_a_label_map_with_negative_values_is_refused(tmp_path):
    image = oblique_label_image()
    array = sitk.GetArrayFromImage(image).astype(np.int16)
    array[0, 0, 0] = -3
    labels = sitk.GetImageFromArray(array)
    labels.CopyInformation(image)
    sitk.WriteImage(sitk.Cast(image, sitk.sitkInt16), str(tmp_path / "a.nrrd"))
    sitk.WriteImage(labels, str(tmp_path / "a_seg.nrrd"))
    (tmp_path / "labels.json").write_text(json.dumps({"labels": [{"value": 1, "name": "A", "color": "#ff0000"}]}))
    logic = TrainingDataExportLogic()
    logic.createCaseListFromFolder(str(tmp_path))
    logic.loadLabelSchema(str(tmp_path / "labels.json"))
    with pytest.raises(ValueError, match="negative value -3"):
        logic.loadCase(0)
    assert not logic.caseLoaded()
    for nodeClass in ("vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode"):
        assert slicer.mrmlScene.GetNodesByClass(nodeClass).GetNumberOfItems() == 0, nodeClass

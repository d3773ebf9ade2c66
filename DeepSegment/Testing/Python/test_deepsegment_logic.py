"""DeepSegmentLogic from the Python console: segment, reuse an output node, cancel without traces."""

from __future__ import annotations

import numpy as np
import pytest
import vtk
from DeepSegment import DeepSegmentLogic, writeThresholdTestModel

import slicer
from ModelRegistryLib import IndexSource, Registry


@pytest.fixture()
def logic(tmp_path):
    index = writeThresholdTestModel(str(tmp_path / "models"))
    registry = Registry([IndexSource(index)], str(tmp_path / "cache"))
    registry.refresh(offline=True)
    return DeepSegmentLogic(registry)


def phantom_volume(shape=(12, 14, 16)):
    voxels = np.zeros(shape, np.int16)
    voxels[3:9, 4:10, 5:12] = 1
    matrix = np.diag([0.9, 1.3, 2.2, 1.0])
    matrix[:3, 3] = [4.0, -9.0, 21.0]
    return slicer.util.addVolumeFromArray(voxels, ijkToRAS=matrix, name="phantom"), voxels


def test_console_run_fills_a_given_segmentation(logic):
    volume, voxels = phantom_volume()
    output = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Result")
    output.GetSegmentation().AddEmptySegment("stale", "Stale segment")
    result = logic.segmentVolumes("threshold-test", [volume], device="cpu", quality="Fast", segmentationNode=output,
                                  threads=1)
    assert result is output
    segmentation = output.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())] == ["Bright"]
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(output, segmentation.GetSegmentIdBySegmentName("Bright"), volume)
    np.testing.assert_array_equal(mask, voxels)
    assert slicer.mrmlScene.GetNodesByClass("vtkMRMLLabelMapVolumeNode").GetNumberOfItems() == 0


def test_transformed_input_is_segmented_where_it_is_shown(logic):
    volume, voxels = phantom_volume()
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(1, 3, 7.5)
    transform.SetMatrixTransformToParent(shift)
    volume.SetAndObserveTransformNodeID(transform.GetID())
    output = logic.segmentVolumes("threshold-test", [volume], device="cpu")
    segmentId = output.GetSegmentation().GetSegmentIdBySegmentName("Bright")
    # The result lies in world space: compared on an untransformed copy of the moved volume's grid.
    moved = DeepSegmentLogic.volumeNodeFromImage(DeepSegmentLogic.imageFromVolumeNode(volume), "moved")
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(output, segmentId, moved)
    np.testing.assert_array_equal(mask, voxels)


def test_cancel_mid_run_leaves_the_scene_unchanged(logic):
    volume, _ = phantom_volume((24, 28, 32))
    nodes_before = slicer.mrmlScene.GetNumberOfNodes()
    task = logic.segmentationTask("threshold-test", [volume], device="cpu")
    report = task._report

    def cancel_while_inferring(step):
        report(step)
        if step.fraction > 0.5:
            task.cancel()

    task._report = cancel_while_inferring
    task.start()
    assert task.wait(60)
    assert task.state == "cancelled"
    assert slicer.mrmlScene.GetNumberOfNodes() == nodes_before


def test_inputs_are_matched_by_pattern(logic):
    other = slicer.util.addVolumeFromArray(np.zeros((2, 2, 2), np.int16), name="CT chest")
    volume, _ = phantom_volume()
    assert logic.matchInputs("threshold-test", [other, volume]) == [volume]
    assert logic.inputNames("threshold-test") == ["Image"]
    with pytest.raises(ValueError, match="every model input"):
        logic.segmentationTask("threshold-test", [None])

"""DeepSegmentLogic from the Python console: segment, reuse an output node, cancel without traces."""

from __future__ import annotations

import os

import numpy as np
import pytest
import vtk
from DeepSegment import DeepSegmentLogic, writeThresholdTestModel

import slicer
from DeepSegmentLib.container_backend import ContainerSettings
from DeepSegmentLib.container_runtime import ContainerRunError
from ModelRegistry import processEventsBriefly, waitForJob
from ModelRegistryLib import IndexSource, JobError, Registry
from ModelRegistryLib.worker import HOLD_HOOK_VARIABLE


@pytest.fixture()
def logic(tmp_path):
    index = writeThresholdTestModel(str(tmp_path / "models"))
    registry = Registry([IndexSource(index)], str(tmp_path / "cache"))
    registry.refresh(offline=True)
    logic = DeepSegmentLogic(registry)
    yield logic
    logic.service.stop()


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
    # The run stops at "inferring" until cancelled: the cancel lands mid-run however fast the machine is.
    logic.service.env = {HOLD_HOOK_VARIABLE: "DeepSegmentLib.service:segment_images@inferring"}
    task = logic.segmentationTask("threshold-test", [volume], device="cpu")
    while not task.finished and not (task.progress is not None and task.progress.text == "inferring"):
        task.poll()
        processEventsBriefly()
    task.cancel()
    assert waitForJob(task, 60)
    assert task.state == "cancelled"
    assert slicer.mrmlScene.GetNumberOfNodes() == nodes_before
    assert logic.service.worker("cpu").pid == task.pid, "the run stopped on request: the service lives on"


def test_inputs_are_matched_by_pattern(logic):
    other = slicer.util.addVolumeFromArray(np.zeros((2, 2, 2), np.int16), name="CT chest")
    volume, _ = phantom_volume()
    assert logic.matchInputs("threshold-test", [other, volume]) == [volume]
    assert logic.inputNames("threshold-test") == ["Image"]
    with pytest.raises(ValueError, match="every model input"):
        logic.segmentationTask("threshold-test", [None])


# -- container backend (a real container runtime; see conftest.py) ----------------------------------------


@pytest.fixture()
def container_logic(container_index, tmp_path):
    registry = Registry([IndexSource(container_index)], str(tmp_path / "cache"))
    registry.refresh(offline=True)
    logic = DeepSegmentLogic(registry)
    logic.setContainerSettings(ContainerSettings(run_folder=str(tmp_path / "runs")))
    yield logic
    logic.service.stop()


def test_console_runs_a_container_model_into_a_named_colored_segment(container_logic, tmp_path):
    volume, voxels = phantom_volume()
    assert container_logic.backendChoices("contract-test") == [("container", "Container (Docker or Podman)")]
    assert [backend for backend, _ in container_logic.backendChoices("threshold-test")] == ["inprocess", "container"]
    assert [p.name for p in container_logic.imageParameters("contract-test")] == ["behaviour", "threshold"]
    output = container_logic.segmentVolumes("contract-test", [volume], parameters={"threshold": 0.5})
    segmentation = output.GetSegmentation()
    segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("Bright"))
    np.testing.assert_allclose(segment.GetColor(), (1.0, 0.0, 0.0))
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(output, segmentation.GetSegmentIdBySegmentName("Bright"), volume)
    np.testing.assert_array_equal(mask, voxels)
    assert not os.listdir(tmp_path / "runs")


def test_container_failure_and_cancel_leave_the_scene_unchanged(container_logic):
    volume, _ = phantom_volume()
    nodes_before = slicer.mrmlScene.GetNumberOfNodes()
    with pytest.raises(JobError, match="too dark") as failure:
        container_logic.segmentVolumes("contract-test", [volume], parameters={"behaviour": "fail"})
    assert failure.value.raised(ContainerRunError)
    task = container_logic.segmentationTask("contract-test", [volume], parameters={"behaviour": "sleep"})
    lines = []
    while not task.finished and not (task.progress is not None and task.progress.text == "waiting"):
        lines += [record.text for record in task.poll()]
        processEventsBriefly()
    task.cancel()
    assert waitForJob(task, 120)
    lines += [record.text for record in task.poll()]
    assert task.state == "cancelled"
    assert "contract test image: sleep" in lines
    assert slicer.mrmlScene.GetNumberOfNodes() == nodes_before


def test_bad_container_requests_fail_before_any_work(container_logic):
    volume, _ = phantom_volume()
    with pytest.raises(ValueError, match="threshold"):
        container_logic.segmentationTask("contract-test", [volume], parameters={"threshold": -1.0})
    with pytest.raises(ValueError, match="offers container"):
        container_logic.segmentationTask("contract-test", [volume], backend="inprocess")
    with pytest.raises(ValueError, match="CPU or a CUDA GPU"):
        container_logic.segmentationTask("contract-test", [volume], device="mps")


def test_container_settings_are_remembered(container_logic, tmp_path):
    settings = ContainerSettings(runtime="podman", memory_limit="2g", timeout=600.0, run_folder=str(tmp_path),
                                 keep_run_folders=True)
    container_logic.setContainerSettings(settings)
    assert DeepSegmentLogic.savedContainerSettings() == settings
    container_logic.setContainerSettings(ContainerSettings())
    assert DeepSegmentLogic.savedContainerSettings() == ContainerSettings()


def test_panel_offers_the_backend_and_the_image_parameters(container_logic, tmp_path):
    widget = slicer.modules.deepsegment.widgetRepresentation().self()
    originalLogic = widget.logic
    widget.logic = container_logic
    try:
        volume, voxels = phantom_volume()
        widget.updateModelList()
        widget.ui.modelSelector.setCurrentIndex(widget.ui.modelSelector.findData("contract-test"))
        assert widget.ui.backendSelector.currentData == "container"
        assert widget.ui.qualitySelector.isHidden() and not widget.ui.containerCollapsibleButton.isHidden()
        assert widget.logic.containerSettings.run_folder == str(tmp_path / "runs")
        assert widget.ui.runtimeInfoLabel.text == container_logic.runtimeDescription()
        assert set(widget.parameterWidgets) == {"behaviour", "threshold"}
        assert widget.parameterValues() == {"behaviour": "ok", "threshold": 0.5}
        widget.parameterWidgets["threshold"][1].value = 0.25
        assert widget.inputSelectors[0].currentNode() is volume
        widget.ui.applyButton.click()
        assert widget.ui.applyButton.text == "Cancel"
        assert widget.poller.waitUntilDone(120)
        assert widget.ui.stageLabel.text == "Done.", widget.ui.stageLabel.text
        output = widget.ui.outputSelector.currentNode()
        segmentId = output.GetSegmentation().GetSegmentIdBySegmentName("Bright")
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(output, segmentId, volume)
        np.testing.assert_array_equal(mask, (voxels > 0.25).astype(mask.dtype))
        assert "contract test image: ok" in widget.ui.logText.plainText
        widget.ui.modelSelector.setCurrentIndex(widget.ui.modelSelector.findData("threshold-test"))
        assert [widget.ui.backendSelector.itemData(i) for i in range(widget.ui.backendSelector.count)] == [
            "inprocess", "container"]
        assert not widget.ui.qualitySelector.isHidden() and widget.ui.parametersCollapsibleButton.isHidden()
    finally:
        widget.logic = originalLogic
        widget.updateModelList()


def test_the_panel_explains_a_missing_runtime(container_logic, monkeypatch, tmp_path):
    found = container_logic.runtimeDescription()
    assert "No usable container runtime" not in found
    monkeypatch.setenv("PATH", str(tmp_path))
    assert container_logic.runtimeDescription() == found, "kept until asked again"
    description = container_logic.runtimeDescription(refresh=True)
    assert "No usable container runtime" in description and "podman: not found on PATH" in description


def test_devices_are_listed_once_in_a_worker_process_and_shared_by_every_logic(logic):
    from DeepSegmentLib.devices import available_devices

    logic.refreshDevices()
    listing = logic.devicesTask()
    assert listing.state == "succeeded" and listing.pid != os.getpid()
    assert logic.devices() == available_devices() and logic.devices()[0].kind == "cpu"
    assert DeepSegmentLogic().devicesTask() is listing and DeepSegmentLogic().knownDevices() == logic.devices()
    assert logic.deviceChoices()[0] == ("auto", f"Automatic ({logic.chooseDevice('auto').description})")


def test_a_listing_that_crashes_offers_the_cpu_and_says_why(logic, tmp_path):
    """A PyTorch (or GPU driver) that aborts when imported takes the listing's worker down, not Slicer."""
    (tmp_path / "torch.py").write_text("import os\nos.abort()\n")
    logic.service.env["PYTHONPATH"] = str(tmp_path)  # this torch comes first in the listing's worker
    try:
        assert [device.kind for device in logic.refreshDevices()] == ["cpu"]
        assert logic.devicesError.kind == "crash" and "SIGABRT" in str(logic.devicesError)
        assert logic.deviceChoices() == [("auto", f"Automatic ({logic.devices()[0].description})"),
                                         ("cpu", logic.devices()[0].description)]
    finally:
        del logic.service.env["PYTHONPATH"]
        logic.refreshDevices()
    assert logic.devicesError is None

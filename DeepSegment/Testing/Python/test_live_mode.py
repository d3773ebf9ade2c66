"""Deep Segment's live mode in Slicer: a sequence browser plays the real ultrasound cine at about 30 frames per
second (a qt.QTimer steps it, as Slicer's player does) while the test idles as Slicer does, and every label map
the live mode puts into the scene is checked pixel by pixel and by geometry; a slow model drops frames without a
backlog; a killed worker is explained; stopping leaves no process and no shared memory."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import qt
import vtk
from DeepSegment import DeepSegmentLogic
from live_test_support import MODEL_3D_ID, SLOW_MODEL_ID, frame_index, recorded_sequence, write_live_models
from stream_test_support import MODEL_ID, expected_labels

import slicer
from DeepSegmentLib.live import LIVE_WORKER_NAME
from DeepSegmentLib.shared_images import segment_prefix
from ModelRegistry import processEventsBriefly
from ModelRegistryLib import IndexSource, Registry

FRAME_MSEC = 33


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return write_live_models(str(tmp_path_factory.mktemp("live-models")))


@pytest.fixture()
def logic(index, tmp_path):
    registry = Registry([IndexSource(index)], str(tmp_path / "cache"))
    registry.refresh(offline=True)
    logic = DeepSegmentLogic(registry)
    yield logic
    logic.stopLive()
    logic.service.stop()


@pytest.fixture()
def panel(logic):
    """The Deep Segment panel, shown, with the test's logic; its Live section opened as a user opens it."""
    slicer.util.selectModule("DeepSegment")
    widget = slicer.modules.deepsegment.widgetRepresentation().self()
    original = widget.logic
    widget.logic = logic
    widget.liveSection.updateChoices()
    section = widget.liveSection
    section.ui.liveCollapsibleButton.collapsed = False
    yield section
    section.ui.liveCollapsibleButton.collapsed = True
    slicer.util.selectModule("Volumes")
    widget.logic = original
    widget.liveSection.updateChoices()


def segments_on_disk() -> set:
    return {name for name in os.listdir("/dev/shm") if name.startswith(segment_prefix())} \
        if os.path.isdir("/dev/shm") else set()


def idle_until(condition, timeout: float = 120.0, what: str = "") -> None:
    """Idle as Slicer does (events, then 20 ms holding the GIL) until ``condition()`` holds."""
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        processEventsBriefly()
    raise AssertionError(f"{what or 'condition'} not reached in {timeout} s")


def settled(logic) -> bool:
    """Every frame seen has been segmented, dropped or rejected: none in the worker, none waiting."""
    status = logic.liveStatus()
    return status.received == status.segmented + status.dropped + status.rejected


def start(logic, modelId, inputNode, outputNode=None):
    output = logic.startLive(modelId, inputNode, outputNode, device="cpu", threads=1)
    idle_until(lambda: logic.liveStatus().state != "starting", what="the model loaded")
    assert logic.liveStatus().state == "running", logic.liveStatus().message
    return output


class LabelRecorder:
    """Every label map put into a label map volume: its voxels and geometry at that moment."""

    def __init__(self, node) -> None:
        self.node = node
        self.items = []
        self.tag = node.AddObserver(slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent, self.record)

    def record(self, caller, event) -> None:
        matrix = vtk.vtkMatrix4x4()
        self.node.GetIJKToRASMatrix(matrix)
        self.items.append((slicer.util.arrayFromVolume(self.node).copy(), slicer.util.arrayFromVTKMatrix(matrix)))

    def close(self) -> None:
        self.node.RemoveObserver(self.tag)


def play(browser, logic, onLastFrame=None) -> None:
    """Step ``browser`` through its items every 33 ms with a qt.QTimer, idling as Slicer does, until the last item
    is shown and every frame has been dealt with; ``onLastFrame()`` runs right after the last item is shown."""
    timer = qt.QTimer()
    timer.setInterval(FRAME_MSEC)

    def step():
        following = browser.GetSelectedItemNumber() + 1
        if following >= browser.GetNumberOfItems():
            timer.stop()
            return
        browser.SetSelectedItemNumber(following)
        if following == browser.GetNumberOfItems() - 1 and onLastFrame is not None:
            onLastFrame()

    timer.connect("timeout()", step)
    timer.start()
    idle_until(lambda: not timer.isActive() and settled(logic), what="the recording played and segmented")


def check_recorded(items, frames, matrices) -> list:
    """Each label map matches its frame's expected labels exactly, at its frame's geometry; frames come in order.
    Returns the frame index of each."""
    indices = [frame_index(matrix, matrices) for _, matrix in items]
    assert indices == sorted(set(indices)), f"label maps out of order: {indices}"
    for (labels, _), index in zip(items, indices):
        assert labels.shape == frames[index].shape
        np.testing.assert_array_equal(labels, expected_labels(frames[index]))
    return indices


def test_a_recording_played_at_30_fps_is_segmented_frame_by_frame_into_a_label_map(logic):
    browser, proxy, frames, matrices = recorded_sequence(30)
    output = start(logic, MODEL_ID, proxy)
    assert output.IsA("vtkMRMLLabelMapVolumeNode") and output.GetName() == "Image_Reference live labels"
    recorder = LabelRecorder(output)
    play(browser, logic)
    recorder.close()
    indices = check_recorded(recorder.items, frames, matrices)
    status = logic.liveStatus()
    assert indices[-1] == 29 and status.received == 30 and status.rejected == 0
    assert status.segmented == len(indices) and status.dropped == 30 - len(indices)
    assert 0 < status.latency_p50_ms <= status.latency_p99_ms and status.frames_per_second > 0
    assert output.GetParentTransformNode() is None
    assert output.GetDisplayNode().GetColorNode().GetColorName(1) == "Echogenic"
    final = logic.stopLive()
    assert final.state == "stopped" and final.message == "Stopped."
    assert logic.liveStatus().state == "stopped" and logic.stopLive() is None
    assert not logic.live.stream.worker.alive and segments_on_disk() == set()
    browser.SetSelectedItemNumber(3)  # no longer followed
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(output), expected_labels(frames[29]))


def test_a_segmentation_output_follows_a_tracked_probe_under_its_transform(logic):
    browser, proxy, frames, _ = recorded_sequence(12)
    probe = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "ProbeToReference")
    probe.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(
        np.array([[0, -1, 0, 15.0], [1, 0, 0, -7.5], [0, 0, 1, 30.0], [0, 0, 0, 1]])))
    proxy.SetAndObserveTransformNodeID(probe.GetID())
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Live segmentation")
    assert start(logic, MODEL_ID, proxy, segmentation) is segmentation
    for index in (0, 4, 11):
        browser.SetSelectedItemNumber(index)
        idle_until(lambda: settled(logic), what=f"frame {index} segmented")
        segmentId = segmentation.GetSegmentation().GetSegmentIdBySegmentName("Echogenic")
        assert segmentation.GetSegmentation().GetNumberOfSegments() == 1 and segmentId == "label_1"
        assert segmentation.GetParentTransformNode() is probe
        # The proxy shows the frame under the probe's transform: the segment lies on it, voxel for voxel.
        np.testing.assert_array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, proxy),
                                      expected_labels(frames[index]))
    assert logic.liveStatus().segmented == 3
    logic.stopLive()
    assert slicer.util.getNodesByClass("vtkMRMLLabelMapVolumeNode") == [], \
        "the hidden label map feeding the segmentation is removed"


def test_a_slow_model_drops_frames_and_never_builds_a_backlog(logic):
    browser, proxy, frames, matrices = recorded_sequence(30)
    output = start(logic, SLOW_MODEL_ID, proxy)
    recorder = LabelRecorder(output)
    atLastFrame = []
    play(browser, logic, lambda: atLastFrame.append(len(recorder.items)))
    recorder.close()
    indices = check_recorded(recorder.items, frames, matrices)
    status = logic.liveStatus()
    assert status.dropped > 0 and status.segmented == len(indices) < 30
    # When the last frame came, at most one frame was in the worker and one waiting (replaced by the last): at
    # most two label maps follow, the last one for the last frame.
    assert len(recorder.items) - atLastFrame[0] <= 2 and indices[-1] == 29
    assert status.received == 30 and status.segmented + status.dropped == 30


def test_the_panel_starts_and_stops_live_mode_and_shows_its_figures(panel, logic):
    browser, proxy, frames, _ = recorded_sequence(10)
    ui = panel.ui
    ui.liveModelSelector.setCurrentIndex(ui.liveModelSelector.findData(MODEL_ID))
    ui.liveDeviceSelector.setCurrentIndex(ui.liveDeviceSelector.findData("cpu"))
    ui.liveThreadsSpinBox.value = 1
    ui.liveInputSelector.setCurrentNode(proxy)
    assert ui.liveStartButton.enabled and ui.liveStartButton.text == "Start"
    for attempt in range(2):  # start, stop, and start again
        browser.SetSelectedItemNumber(0)
        ui.liveStartButton.click()
        assert ui.liveStartButton.text == "Stop" and not ui.liveInputSelector.enabled
        assert ui.liveStatusLabel.text.startswith(f"Starting {MODEL_ID} 1.0.0")
        output = ui.liveOutputSelector.currentNode()
        assert output is not None and output.IsA("vtkMRMLLabelMapVolumeNode")
        idle_until(lambda: logic.liveStatus().state == "running", what="the model loaded")
        play(browser, logic)
        idle_until(lambda: "10 frames received" in ui.liveStatisticsLabel.text, what="the figures shown")
        assert ui.liveStatusLabel.text.startswith(f"Segmenting with {MODEL_ID} 1.0.0 on ")
        assert "frames/s, latency p50 " in ui.liveStatisticsLabel.text and " dropped, 0 rejected" in \
            ui.liveStatisticsLabel.text
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(output), expected_labels(frames[9]))
        ui.liveStartButton.click()
        assert ui.liveStartButton.text == "Start" and ui.liveInputSelector.enabled
        assert ui.liveStatusLabel.text == "Stopped."
        assert segments_on_disk() == set()
        if attempt == 0:
            ui.liveOutputSelector.setCurrentNode(None)  # the second run makes a new label map
    assert len(slicer.util.getNodesByClass("vtkMRMLLabelMapVolumeNode")) == 2


def test_a_killed_live_worker_is_explained_in_the_panel_and_the_next_start_works(panel, logic):
    browser, proxy, frames, _ = recorded_sequence(6)
    ui = panel.ui
    ui.liveModelSelector.setCurrentIndex(ui.liveModelSelector.findData(SLOW_MODEL_ID))
    ui.liveDeviceSelector.setCurrentIndex(ui.liveDeviceSelector.findData("cpu"))
    ui.liveThreadsSpinBox.value = 1
    ui.liveInputSelector.setCurrentNode(proxy)
    ui.liveStartButton.click()
    idle_until(lambda: logic.liveStatus().segmented == 1, what="the first frame segmented")
    browser.SetSelectedItemNumber(1)  # in the worker when it is killed
    worker = logic.live.stream.worker.pid
    os.kill(worker, signal.SIGKILL)
    idle_until(lambda: ui.liveStartButton.text == "Start", what="the failure shown")
    assert ui.liveStatusLabel.text.startswith(f"{LIVE_WORKER_NAME} stopped unexpectedly: it was killed (SIGKILL;"
                                              " the system may have run out of memory).")
    assert logic.liveStatus().state == "failed" and segments_on_disk() == set()
    browser.SetSelectedItemNumber(2)  # no longer followed
    assert logic.liveStatus().received == 2
    ui.liveModelSelector.setCurrentIndex(ui.liveModelSelector.findData(MODEL_ID))
    ui.liveStartButton.click()
    idle_until(lambda: logic.liveStatus().segmented == 1, what="the frame shown segmented after the restart")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(ui.liveOutputSelector.currentNode()),
                                  expected_labels(frames[2]))
    ui.liveStartButton.click()


def test_leaving_the_module_closing_the_scene_or_removing_the_input_stops_live_mode(panel, logic):
    _, proxy, _, _ = recorded_sequence(3)
    start(logic, MODEL_ID, proxy)
    slicer.util.selectModule("Volumes")
    assert logic.liveStatus().state == "stopped"
    assert logic.liveStatus().message == "Stopped: the Deep Segment module was left."
    slicer.util.selectModule("DeepSegment")
    start(logic, MODEL_ID, proxy)
    slicer.mrmlScene.RemoveNode(proxy)
    assert logic.liveStatus().message == "Stopped: 'Image_Reference' was removed from the scene."
    _, proxy, _, _ = recorded_sequence(3)
    start(logic, MODEL_ID, proxy)
    slicer.mrmlScene.Clear(False)
    assert logic.liveStatus().message == "Stopped: the scene was closed."
    assert segments_on_disk() == set()


def test_requests_live_mode_cannot_serve_are_refused_in_one_line(logic):
    _, proxy, _, _ = recorded_sequence(2)
    with pytest.raises(ValueError, match=r"^Select the volume to follow\.$"):
        logic.startLive(MODEL_ID, None)
    with pytest.raises(ValueError, match=r"^The output cannot be the volume that is followed\.$"):
        logic.startLive(MODEL_ID, proxy, proxy)
    # A 3D model not installed yet fails in the worker, which installs it; once installed, it is refused at once.
    logic.startLive(MODEL_3D_ID, proxy, device="cpu")
    idle_until(lambda: logic.liveStatus().state != "starting", what="the 3D model refused")
    assert logic.liveStatus().state == "failed"
    expected = "The model is a 3D model (dimensions 3): frames need a 2D model (dimensions 2)"
    assert logic.liveStatus().message == expected
    with pytest.raises(ValueError, match=r"^The model is a 3D model \(dimensions 3\)"):
        logic.startLive(MODEL_3D_ID, proxy, device="cpu")

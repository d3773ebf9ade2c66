"""The Deep Segment panel's Apply runs in the model service: cancel, and a worker that dies, leave Slicer's
scene as it was and say what happened; the next Apply works."""

from __future__ import annotations

import os
import signal

import numpy as np
import psutil
import pytest
from DeepSegment import DeepSegmentLogic

import slicer
from ModelRegistryLib.worker import ABORT_HOOK_VARIABLE, HOLD_HOOK_VARIABLE

# Runs stop at "inferring" until cancelled: a cancel or a kill lands mid-run however fast the machine is.
HOLD_AT_INFERRING = {HOLD_HOOK_VARIABLE: "DeepSegmentLib.service:segment_images@inferring"}


@pytest.fixture()
def panel(threshold_panel):
    return threshold_panel


def phantom(shape):
    voxels = np.zeros(shape, np.int16)
    voxels[2:-2, 3:-3, 4:-4] = 1
    return slicer.util.addVolumeFromArray(voxels, ijkToRAS=np.diag([0.8, 0.9, 1.5, 1.0]), name="phantom"), voxels


def apply(panel, volume=None):
    panel.updateModelList()
    if volume is not None:
        panel.inputSelectors[0].setCurrentNode(volume)
    panel.ui.deviceSelector.setCurrentIndex(panel.ui.deviceSelector.findData("cpu"))
    assert panel.ui.applyButton.enabled
    panel.ui.applyButton.click()
    assert panel.ui.applyButton.text == "Cancel"


def wait_for_stage(panel, stage):
    while panel.poller.busy and panel.ui.stageLabel.text != stage:
        panel.poller.waitUntilDone(0.05)
    assert panel.ui.stageLabel.text == stage


def scene_nodes():
    return [slicer.mrmlScene.GetNthNode(i).GetID() for i in range(slicer.mrmlScene.GetNumberOfNodes())]


def gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_cancel_from_the_panel_leaves_the_scene_unchanged(panel):
    phantom((64, 64, 64))
    before = scene_nodes()
    panel.logic.service.env = HOLD_AT_INFERRING
    apply(panel)
    wait_for_stage(panel, "inferring")
    panel.ui.applyButton.click()
    assert panel.ui.stageLabel.text == "Cancelling…"
    assert panel.poller.waitUntilDone(60)
    assert panel.ui.stageLabel.text == "Cancelled: the scene was not changed."
    assert panel.ui.applyButton.text == "Apply" and panel.ui.applyButton.enabled
    assert scene_nodes() == before


def test_a_killed_service_is_explained_and_the_next_apply_works(panel):
    phantom((64, 64, 64))
    before = scene_nodes()
    panel.logic.service.env = HOLD_AT_INFERRING
    apply(panel)
    wait_for_stage(panel, "inferring")
    worker = panel.poller.task.pid
    os.kill(worker, signal.SIGKILL)
    panel.logic.service.env = {}
    assert panel.poller.waitUntilDone(60)
    assert panel.ui.stageLabel.text == (
        "Segmentation failed; the scene was not changed and the next run starts a new service. The DeepSegment"
        " model service stopped unexpectedly: it was killed (SIGKILL; the system may have run out of memory).")
    assert scene_nodes() == before
    assert gone(worker)
    volume, voxels = phantom((12, 14, 16))
    apply(panel, volume)
    assert panel.poller.waitUntilDone(120)
    assert panel.ui.stageLabel.text == "Done.", panel.ui.stageLabel.text
    segmentation = panel.ui.outputSelector.currentNode()
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(
        segmentation, segmentation.GetSegmentation().GetSegmentIdBySegmentName("Bright"), volume)
    np.testing.assert_array_equal(mask, voxels)


def test_an_aborting_service_is_explained(panel):
    phantom((12, 14, 16))
    before = scene_nodes()
    panel.logic.service.env = {ABORT_HOOK_VARIABLE: "DeepSegmentLib.service:segment_images"}
    apply(panel)
    assert panel.poller.waitUntilDone(60)
    assert "The DeepSegment model service stopped unexpectedly: it aborted (SIGABRT)." in panel.ui.stageLabel.text
    assert scene_nodes() == before
    panel.logic.service.env = {}
    apply(panel)
    assert panel.poller.waitUntilDone(120)
    assert panel.ui.stageLabel.text == "Done."


def test_the_device_selector_offers_the_cpu_at_once_and_every_device_once_listed(panel):
    DeepSegmentLogic._deviceListing = DeepSegmentLogic._listedDevices = None  # as in a new Slicer session
    panel.updateDeviceSelector()
    selector = panel.ui.deviceSelector
    assert [selector.itemData(i) for i in range(selector.count)] == ["auto", "cpu"]
    assert panel.ui.deviceInfoLabel.text == "Looking for compute devices…"
    panel.devicePoller.follow(panel.logic.devicesTask())
    selector.setCurrentIndex(selector.findData("cpu"))  # chosen while the listing runs: kept
    assert panel.devicePoller.waitUntilDone(120)
    devices = panel.logic.devices()
    assert [selector.itemData(i) for i in range(selector.count)] == ["auto"] + [d.torch_name for d in devices]
    assert selector.currentData == "cpu" and panel.ui.deviceInfoLabel.text == devices[0].description

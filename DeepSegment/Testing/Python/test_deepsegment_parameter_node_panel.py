"""The Deep Segment panel's settings (model, device, quality, precision, threads, input and output nodes, and the
batch, evaluate, train and live sections' main choices) live in the module's parameter node: saved with the scene
and shown again when it is loaded; and what a run tells Slicer's log."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from DeepSegment import DeepSegmentLogic

import slicer


@pytest.fixture()
def panel(threshold_panel):
    return threshold_panel


def phantom(name="phantom"):
    voxels = np.zeros((12, 14, 16), np.int16)
    voxels[2:-2, 3:-3, 4:-4] = 1
    return slicer.util.addVolumeFromArray(voxels, ijkToRAS=np.diag([0.8, 0.9, 1.5, 1.0]), name=name)


def choose(panel, folder):
    ui = panel.ui
    other = phantom("second phantom")  # not the one the input's pattern pre-selects
    panel.inputSelectors[0].setCurrentNode(other)
    ui.qualitySelector.setCurrentIndex(ui.qualitySelector.findData("fast"))
    ui.precisionSelector.setCurrentIndex(ui.precisionSelector.findData("float32"))
    ui.threadsSpinBox.value = 2
    output = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Result")
    ui.outputSelector.setCurrentNode(output)
    batch, evaluate = panel.batchSection.ui, panel.evaluateSection.ui
    batch.batchSourceKindSelector.setCurrentIndex(batch.batchSourceKindSelector.findData("images"))
    batch.batchOutputPathLineEdit.currentPath = str(folder / "batch-out")
    evaluate.evaluateModeSelector.setCurrentIndex(evaluate.evaluateModeSelector.findData("folders"))
    evaluate.toleranceSpinBox.value = 1.5
    panel.trainSection.ui.trainEpochsSpinBox.value = 7
    panel.liveSection.ui.liveThreadsSpinBox.value = 3


def shown(panel):
    ui, batch, evaluate = panel.ui, panel.batchSection.ui, panel.evaluateSection.ui
    nodeName = lambda node: node.GetName() if node is not None else None  # noqa: E731
    return (ui.modelSelector.currentData, nodeName(panel.inputSelectors[0].currentNode()),
            ui.qualitySelector.currentData, ui.precisionSelector.currentData, ui.threadsSpinBox.value,
            nodeName(ui.outputSelector.currentNode()), batch.batchSourceKindSelector.currentData,
            batch.batchOutputPathLineEdit.currentPath, evaluate.evaluateModeSelector.currentData,
            evaluate.toleranceSpinBox.value, panel.trainSection.ui.trainEpochsSpinBox.value,
            panel.liveSection.ui.liveThreadsSpinBox.value)


def test_settings_go_to_the_parameter_node_and_follow_it(panel, tmp_path):
    phantom()
    choose(panel, tmp_path)
    node = panel.logic.getParameterNode()
    assert node.GetParameter("model") == "threshold-test"
    assert node.GetParameter("quality") == "fast"
    assert node.GetParameter("precision") == "float32"
    assert node.GetParameter("threads") == "2"
    assert node.GetNodeReference(DeepSegmentLogic.inputParameterName("Image")).GetName() == "second phantom"
    assert node.GetNodeReference("outputSegmentation").GetName() == "Result"
    assert node.GetParameter("batchSource") == "images" and node.GetParameter("evaluateMode") == "folders"

    node.SetParameter("quality", "exact")
    node.SetParameter("liveThreads", "5")
    assert panel.ui.qualitySelector.currentData == "exact"
    assert panel.liveSection.ui.liveThreadsSpinBox.value == 5
    first = slicer.util.getNode("phantom")
    node.SetNodeReferenceID(DeepSegmentLogic.inputParameterName("Image"), first.GetID())
    assert panel.inputSelectors[0].currentNode() is first


@pytest.mark.parametrize("suffix", [".mrb", ".mrml"])
def test_a_saved_scene_reopens_the_panel_with_its_nodes(panel, tmp_path, suffix):
    phantom()
    choose(panel, tmp_path)
    expected = shown(panel)
    if suffix == ".mrml":  # a scene file alone holds no data: the volumes are saved beside it
        for index, node in enumerate(slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")):
            assert slicer.util.saveNode(node, str(tmp_path / f"volume{index}.nrrd"))
    assert slicer.util.saveScene(str(tmp_path / ("scene" + suffix)))
    slicer.mrmlScene.Clear(0)
    assert panel.ui.qualitySelector.currentData == DeepSegmentLogic.DEFAULT_QUALITY  # closing: the defaults
    assert panel.inputSelectors[0].currentNode() is None

    slicer.util.loadScene(str(tmp_path / ("scene" + suffix)))
    assert shown(panel) == expected
    restored = panel.inputSelectors[0].currentNode()
    assert slicer.util.arrayFromVolume(restored).sum() > 0  # the volume itself came back, not only its name


def test_a_run_logs_model_runtime_device_inputs_and_timings(panel, caplog):
    caplog.set_level(logging.INFO)
    volume = phantom()
    panel.prefillInputs()
    panel.ui.deviceSelector.setCurrentIndex(panel.ui.deviceSelector.findData("cpu"))
    panel.ui.threadsSpinBox.value = 1
    panel.ui.applyButton.click()
    assert panel.poller.waitUntilDone(120)
    assert panel.ui.stageLabel.text == "Done."
    messages = [record.getMessage() for record in caplog.records if record.name == "DeepSegment"]
    started = [m for m in messages if m.startswith("Segmenting with threshold-test 1.0.0 (runtime deepsegment,"
                                                   " backend inprocess, model service worker ")]
    assert len(started) == 1, messages
    assert "device cpu, quality accurate, precision auto, threads 1" in started[0]
    assert "inputs phantom (16, 14, 12) voxels of (0.8, 0.9, 1.5) mm" in started[0]
    done = [m for m in messages if m.startswith("Segmented in ")]
    assert len(done) == 1 and done[0].endswith(f": 1 labels into {volume.GetName()} segmentation"), messages
    ended = [r.getMessage() for r in caplog.records if r.name == "ModelRegistry" and "succeeded after" in
             r.getMessage()]
    assert ended and ended[0].startswith("segmenting phantom with threshold-test (inprocess) succeeded after")

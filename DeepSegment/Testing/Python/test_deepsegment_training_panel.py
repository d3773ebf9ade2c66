"""Training in Slicer: the Deep Segment panel's Train section and the Logic's console calls, with real worker
processes, real table and plot chart nodes updated as epochs end, Cancel, and the new model listed and run by
the panel's logic at once.

The trainings fine-tune a small TorchScript model from a local registry (no MONAI in the worker: seconds, not a
minute); new MONAI networks are trained by test_training.py and test_training_cli.py.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk
from DeepSegment import DeepSegmentLogic
from ModelRegistry import ModelRegistryLogic, processEventsBriefly
from training_cases import published_base, write_case, write_case_list

import slicer
from DeepSegmentLib.runtimes.dependencies import install_arguments
from DeepSegmentLib.torchsetup import installed_packages, pinned_constraints
from DeepSegmentLib.training import CHECKPOINT_NAME, TrainingResult
from DeepSegmentLib.training_networks import MONAI_REQUIREMENT, NetworkSettings
from ModelRegistryLib.jobs import JobCancelledError


@pytest.fixture()
def project(tmp_path):
    """A case list, a base model published in a local registry of a private model cache, and a Deep Segment logic
    on that cache (the user's sources of another cache are not touched)."""
    case_list = write_case_list(str(tmp_path / "cases"))
    published_base(tmp_path, "tiny-base", "torchscript")
    logic = DeepSegmentLogic(registry=ModelRegistryLogic(cacheDir=str(tmp_path / "cache")).registry)
    yield case_list, logic
    logic.service.stop()


@pytest.fixture()
def panel(project):
    """The panel with the project's logic, its Train section open; put back as it was afterwards."""
    widget = slicer.modules.deepsegment.widgetRepresentation().self()
    original = widget.logic
    widget.logic = project[1]
    widget.updateModelList()
    widget.trainSection.updateModels()
    widget.trainSection.ui.trainCollapsibleButton.collapsed = False
    yield widget
    widget.trainSection.poller.stop()
    widget.trainSection.ui.trainCollapsibleButton.collapsed = True
    widget.logic = original
    widget.updateModelList()
    widget.trainSection.updateModels()
    slicer.mrmlScene.Clear()


def choose(combo, data):
    index = combo.findData(data)
    assert index >= 0, data
    combo.setCurrentIndex(index)


def fill(section, case_list, output, registry, model_id, epochs, steps=2):
    ui = section.ui
    choose(ui.trainDataSelector, "cases")
    ui.trainCaseListPathLineEdit.currentPath = case_list
    choose(ui.trainNetworkSelector, "finetune")
    choose(ui.trainBaseModelSelector, "tiny-base")
    ui.trainEpochsSpinBox.value = epochs
    ui.trainStepsSpinBox.value = steps
    choose(ui.trainDeviceSelector, "cpu")
    ui.trainOutputPathLineEdit.currentPath = output
    ui.trainRegistryPathLineEdit.currentPath = registry
    ui.trainModelIdLineEdit.text = model_id


def test_the_train_section_plots_the_epochs_and_the_new_model_segments_at_once(panel, project, tmp_path):
    case_list, logic = project
    section = panel.trainSection
    ui = section.ui
    choices = [ui.trainBaseModelSelector.itemData(i) for i in range(ui.trainBaseModelSelector.count)]
    assert choices == ["brain-tissue-demo", "tiny-base"]  # the bundled model and the local registry's
    assert not ui.trainButton.enabled  # no data, no folder yet
    fill(section, case_list, str(tmp_path / "run"), str(tmp_path / "registry"), "panel-tuned", epochs=3)
    assert ui.trainButton.enabled and ui.trainPatchLineEdit.isHidden()  # a fine-tuned model keeps its patch
    ui.trainButton.click()
    assert ui.trainButton.text == "Cancel" and not ui.trainPlotFrame.isHidden()
    assert section.poller.waitUntilDone(300), "the training did not finish in 300 s"
    assert ui.trainStatusLabel.text.startswith("Added panel-tuned 1.0.0 to "), ui.trainStatusLabel.text
    assert ui.trainButton.text == "Train" and ui.trainProgressBar.isHidden()

    # One table row per epoch as each ended; a chart of both curves, shown in the panel's own plot view.
    table = section.tableNode.GetTable()
    assert [table.GetColumnName(i) for i in range(3)] == ["Epoch", "Loss", "Validation Dice"]
    assert [table.GetValue(row, 0).ToDouble() for row in range(table.GetNumberOfRows())] == [1.0, 2.0, 3.0]
    assert all(np.isfinite(table.GetValue(row, column).ToDouble()) for row in range(3) for column in (1, 2))
    chart = section.chartNode
    series = [chart.GetNthPlotSeriesNode(i) for i in range(chart.GetNumberOfPlotSeriesNodes())]
    assert [(s.GetYColumnName(), s.GetTableNode()) for s in series] == [("Loss", section.tableNode),
                                                                       ("Validation Dice", section.tableNode)]
    assert section.plotView.mrmlPlotViewNode().GetPlotChartNode() is chart

    # The new model is listed and selected in the panel, and runs through the model service at once.
    assert panel.ui.modelSelector.currentData == "panel-tuned"
    assert "panel-tuned" in [modelId for modelId, _ in logic.modelChoices()]
    image_path, _ = write_case(str(tmp_path), "new", seed=31)
    volume = slicer.util.loadVolume(image_path)
    segmentation = logic.segmentVolumes("panel-tuned", [volume], device="cpu")
    names = [segmentation.GetSegmentation().GetNthSegment(i).GetName()
             for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]
    assert names == ["organ", "lesion"]


def test_cancel_stops_the_training_and_the_same_settings_continue_it(panel, project, tmp_path):
    case_list, logic = project
    section = panel.trainSection
    ui = section.ui
    output = str(tmp_path / "run")
    # Steps long enough that the cancel lands within the second epoch.
    fill(section, case_list, output, str(tmp_path / "registry"), "continued", epochs=3, steps=30)
    ui.trainButton.click()
    while section.poller.busy and section.tableNode.GetTable().GetNumberOfRows() == 0:
        processEventsBriefly()
    ui.trainButton.click()  # Cancel, once the first epoch has been plotted
    assert ui.trainStatusLabel.text == "Cancelling…"
    assert section.poller.waitUntilDone(60)
    assert ui.trainStatusLabel.text.startswith("Cancelled.") and ui.trainButton.text == "Train"
    assert os.path.isfile(os.path.join(output, CHECKPOINT_NAME))
    assert "continued" not in [modelId for modelId, _ in logic.modelChoices()]
    ui.trainButton.click()  # the same settings: it continues after its last complete epoch
    assert section.poller.waitUntilDone(300)
    assert ui.trainStatusLabel.text.startswith("Added continued 1.0.0"), ui.trainStatusLabel.text
    table = section.tableNode.GetTable()
    epochs = [table.GetValue(row, 0).ToDouble() for row in range(table.GetNumberOfRows())]
    assert epochs in ([2.0, 3.0], [3.0])  # the epochs trained after the cancel (one or two had ended by then)


def test_the_console_trains_blocking_and_shows_the_curves(project, tmp_path):
    case_list, logic = project
    settings = logic.trainingSettings(case_list, str(tmp_path / "run"), network="finetune", baseModel="tiny-base",
                                      epochs=2, steps_per_epoch=1, device="cpu", registry=str(tmp_path / "registry"),
                                      model_id="console-tuned")
    assert settings.network == NetworkSettings(base_model="tiny-base")
    assert settings.cache_dir == logic.registry.store.cache_dir
    assert logic.missingTrainingRequirements(settings) == []  # fine-tuning needs no MONAI
    result = logic.train(settings)
    assert isinstance(result, TrainingResult) and (result.model_id, result.version) == ("console-tuned", "1.0.0")
    assert "console-tuned" in [modelId for modelId, _ in logic.modelChoices()]
    tableNode, chartNode = logic.trainingCurves(result.history)
    assert tableNode.GetTable().GetNumberOfRows() == 2 and chartNode.GetNumberOfPlotSeriesNodes() == 2
    # The same settings again: the folder holds a finished training, which the worker refuses in one line.
    with pytest.raises(Exception, match="holds a finished training") as raised:
        logic.train(settings)
    assert not isinstance(raised.value, JobCancelledError)
    slicer.mrmlScene.Clear()


def test_settings_the_user_can_fix_are_refused_before_anything_starts(project, tmp_path):
    case_list, logic = project
    for options, message in (({"patchSize": "64 64"}, "three whole numbers"),
                             ({"network": "finetune"}, "Select the registry model"),
                             ({"epochs": 0}, "epochs must be 1 or more"),
                             ({"patchSize": "24 24 24"}, "multiple of 16")):
        with pytest.raises(DeepSegmentLogic.TRAINING_USER_ERRORS, match=message):
            logic.trainingTask(case_list, str(tmp_path / "run"), **options)
    with pytest.raises(ValueError, match="Select the training data"):
        logic.trainingSettings("", str(tmp_path / "run"))
    # Without MONAI a new network needs it installed first, with every installed package pinned (Slicer's own).
    arguments = install_arguments([MONAI_REQUIREMENT], "pins.txt")
    assert arguments == [MONAI_REQUIREMENT, "--constraint", "pins.txt"]
    pins = [pin.lower() for pin in pinned_constraints(installed_packages())]
    assert f"numpy=={np.__version__}" in pins and f"simpleitk=={sitk.Version.VersionString()}" in pins

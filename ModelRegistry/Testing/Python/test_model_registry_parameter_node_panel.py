"""The panel's settings live in the module's parameter node: saved with the scene, shown again when it is loaded,
shared by every panel of the module, and what Slicer's log receives from the registry's jobs."""

from __future__ import annotations

import logging

import pytest
import slicer

from ModelRegistry import ModelRegistryLogic, logJobRecords
from ModelRegistryLib.jobs import JobLog


@pytest.fixture
def panels(tmp_path):
    """Two panels of the module on one private cache folder, cleaned up as the application does."""
    made = []
    for _index in range(2):
        panel = slicer.modules.modelregistry.createNewWidgetRepresentation()
        panel.self().logic = ModelRegistryLogic(cacheDir=str(tmp_path / "cache"))
        panel.self().refresh(offline=True)
        made.append(panel)
    yield [panel.self() for panel in made]
    for panel in made:
        panel.self().cleanup()
        panel.deleteLater()
    slicer.app.processEvents()


def _settings(widget):
    ui = widget.ui
    return (ui.searchBox.text, ui.modalityFilter.currentData, ui.installedOnlyCheckBox.checked,
            widget.selectedModelId())


def test_the_panel_writes_its_settings_to_the_parameter_node_and_shows_the_node(panels):
    widget, other = panels
    node = widget.logic.getParameterNode()
    widget.ui.modalityFilter.setCurrentIndex(widget.ui.modalityFilter.findData("MR"))
    assert widget.selectModel("brain-tissue-demo")
    widget.ui.searchBox.text = "brain"
    assert node.GetParameter("searchText") == "brain"
    assert node.GetParameter("modality") == "MR"
    assert node.GetParameter("selectedModel") == "brain-tissue-demo"
    assert _settings(other) == ("brain", "MR", False, "brain-tissue-demo")  # the other panel shows them too

    node.SetParameter("searchText", "no such model")
    assert widget.ui.searchBox.text == "no such model"
    assert widget.ui.modelTable.rowCount == 0
    node.SetParameter("installedOnly", "true")
    assert widget.ui.installedOnlyCheckBox.checked


@pytest.mark.parametrize("suffix", [".mrb", ".mrml"])
def test_a_saved_scene_reopens_the_panel_where_it_was(panels, tmp_path, suffix):
    widget = panels[0]
    widget.ui.modalityFilter.setCurrentIndex(widget.ui.modalityFilter.findData("MR"))
    widget.ui.searchBox.text = "brain"
    assert widget.selectModel("brain-tissue-demo")
    assert slicer.util.saveScene(str(tmp_path / ("scene" + suffix)))

    slicer.mrmlScene.Clear(0)  # File > Close Scene: the defaults
    assert _settings(widget) == ("", "", False, None)

    slicer.util.loadScene(str(tmp_path / ("scene" + suffix)))
    assert _settings(widget) == ("brain", "MR", False, "brain-tissue-demo")
    assert "brain-tissue-demo" in widget.ui.cardBrowser.toPlainText()


def test_entering_the_module_takes_the_scenes_parameter_node(panels):
    widget = panels[0]
    widget.parameters.setParameterNode(None)
    widget.logic.getParameterNode().SetParameter("searchText", "tissue")
    assert widget.ui.searchBox.text == ""
    widget.enter()
    assert widget.ui.searchBox.text == "tissue"


def test_a_jobs_log_records_reach_slicers_log_with_its_description(caplog):
    class Job:
        description = "Installing demo 1.0.0"

    with caplog.at_level(logging.DEBUG):
        logJobRecords(Job(), [JobLog("warning", "not verified by the publisher"), JobLog("output", "a line"),
                              JobLog("info", "unpacked 3 files")])
    assert [(record.levelno, record.getMessage()) for record in caplog.records] == [
        (logging.WARNING, "[Installing demo 1.0.0] not verified by the publisher"),
        (logging.INFO, "[Installing demo 1.0.0] (output) a line"),
        (logging.INFO, "[Installing demo 1.0.0] unpacked 3 files"),
    ]

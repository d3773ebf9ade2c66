"""The panel's settings (case list, label schema, export format and options, folders) live in the module's
parameter node: saved with the scene, shown again when it is loaded; and what an export tells Slicer's log."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import slicer

from test_training_data_export_panel import write_project

from TrainingDataExport import TrainingDataExportLogic

@pytest.fixture
def project(tmp_path):
    """Two seeded cases, their case list (cases.csv) and a label schema in ``tmp_path/project``."""
    folder = tmp_path / "project"
    folder.mkdir()
    return write_project(folder, 7)


def _choose(widget, project, output):
    ui = widget.ui
    ui.caseListPathLineEdit.currentPath = str(project / "cases.csv")
    ui.labelSchemaPathLineEdit.currentPath = str(project / "labels.json")
    ui.outputPathLineEdit.currentPath = str(output)
    ui.formatComboBox.currentText = "monai"
    ui.spacingCheckBox.checked = True
    ui.spacingZSpinBox.value = 2.5
    ui.foldsSpinBox.value = 3
    ui.datasetNameLineEdit.text = "Liver"


def _shown(widget):
    ui = widget.ui
    return (ui.caseListPathLineEdit.currentPath, ui.labelSchemaPathLineEdit.currentPath,
            ui.outputPathLineEdit.currentPath, ui.formatComboBox.currentText, ui.spacingCheckBox.checked,
            ui.spacingZSpinBox.value, ui.foldsSpinBox.value, ui.datasetNameLineEdit.text)


def test_settings_are_written_to_the_parameter_node_and_follow_it(widget, project, tmp_path):
    _choose(widget, project, tmp_path / "out")
    node = widget.logic.getParameterNode()
    assert node.GetParameter("caseListPath") == str(project / "cases.csv")
    assert node.GetParameter("exportFormat") == "monai"
    assert node.GetParameter("resample") == "true"
    assert float(node.GetParameter("spacingZ")) == 2.5
    assert node.GetParameter("folds") == "3"

    node.SetParameter("exportFormat", "pairs")
    node.SetParameter("folds", "4")
    assert widget.ui.formatComboBox.currentText == "pairs"
    assert widget.ui.foldsSpinBox.value == 4
    node.SetParameter("caseListPath", "")  # another panel, or a script, forgets the case list
    assert widget.logic.cases == []


@pytest.mark.parametrize("suffix", [".mrb", ".mrml"])
def test_a_saved_scene_reopens_the_project_where_it_was(widget, project, tmp_path, suffix):
    _choose(widget, project, tmp_path / "out")
    expected = _shown(widget)
    assert slicer.util.saveScene(str(tmp_path / ("scene" + suffix)))
    widget.ui.caseListPathLineEdit.currentPath = ""
    widget.ui.formatComboBox.currentText = "nnunet"
    widget.ui.spacingCheckBox.checked = False
    slicer.mrmlScene.Clear(0)
    assert widget.logic.cases == []

    slicer.util.loadScene(str(tmp_path / ("scene" + suffix)))
    assert _shown(widget) == expected
    assert [case.case_id for case in widget.logic.cases] == ["a", "b"]  # the case list is open again
    assert widget.ui.caseTable.rowCount == 2


def test_an_export_logs_its_settings_and_counts(project, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    logic = TrainingDataExportLogic()
    logic.loadCaseList(str(project / "cases.csv"))
    logic.loadLabelSchema(str(project / "labels.json"))
    for index in range(2):
        logic.loadCase(index)
        node = logic.segmentationNode
        mask = np.zeros((4, 6, 7), np.uint8)
        mask[1:3, 2:4, 2:5] = 1
        segmentId = node.GetSegmentation().GetSegmentIdBySegmentName("Liver")
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask, node, segmentId, logic.volumeNodes[0])
        logic.saveCase()
    logic.closeCase()
    report = logic.exportDataset(logic.exportSettings("pairs"), str(tmp_path / "pairs"), folds=2)
    messages = [record.getMessage() for record in caplog.records if record.name == "TrainingDataExport"]
    assert any(m.startswith(f"Exporting 2 cases (case list {project / 'cases.csv'}, 1 labels from") and "pairs" in m
               for m in messages), messages
    assert any(m.startswith("Started Exporting 2 cases as pairs") for m in
               [r.getMessage() for r in caplog.records if r.name == "ModelRegistry"])
    written = len(report.written)
    assert f"Export to {tmp_path / 'pairs'}: {written} cases written, 0 unchanged, 0 skipped" in " ".join(messages)

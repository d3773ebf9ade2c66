"""The Training Data Export panel exports in a worker process: progress, a cancel that leaves only complete
files, and a full export afterwards."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from ModelRegistryLib.files import is_temporary_name
from TrainingDataExport import TrainingDataExportLogic

import slicer

SCHEMA = {"labels": [{"value": 1, "name": "Liver", "color": "#dd8259"}]}
CASES = 10


@pytest.fixture()
def panel(tmp_path):
    rng = np.random.default_rng(5)
    data = tmp_path / "data"
    data.mkdir()
    for number in range(CASES):
        image = sitk.GetImageFromArray(rng.normal(100, 30, (96, 96, 96)).astype(np.int16))
        image.SetSpacing((0.8, 0.8, 1.5))
        sitk.WriteImage(image, str(data / f"case{number:02d}.nrrd"))
        labels = np.zeros((96, 96, 96), np.uint8)
        labels[20:70, 30:60, 10:80] = 1
        label_image = sitk.GetImageFromArray(labels)
        label_image.CopyInformation(image)
        sitk.WriteImage(label_image, str(data / f"case{number:02d}_seg.nrrd"))
    (data / "labels.json").write_text(json.dumps(SCHEMA), encoding="utf-8")
    logic = TrainingDataExportLogic()
    logic.createCaseListFromFolder(str(data))
    logic.loadLabelSchema(str(data / "labels.json"))
    widget = slicer.modules.trainingdataexport.widgetRepresentation().self()
    original = widget.logic
    widget.logic = logic
    widget.updateCaseTable()
    yield widget
    widget.exportPoller.stop()
    widget.logic = original
    widget.updateCaseTable()


def start_export(panel, output):
    panel.ui.formatComboBox.currentText = "nnunet"
    panel.ui.foldsSpinBox.value = 0
    panel.ui.testFractionSpinBox.value = 0.0
    panel.ui.compressionSpinBox.value = 9
    panel.ui.outputPathLineEdit.currentPath = str(output)
    panel.ui.exportButton.click()
    assert panel.ui.exportButton.text == "Cancel"


def test_an_export_cancelled_from_the_panel_leaves_only_complete_files(panel, tmp_path):
    output = tmp_path / "nnUNet_raw"
    start_export(panel, output)
    while panel.exportPoller.busy and panel.ui.exportProgressBar.value == 0:
        panel.exportPoller.waitUntilDone(0.05)
    panel.ui.exportButton.click()
    assert "Cancelling…" in panel.ui.exportProgressBar.format
    assert panel.exportPoller.waitUntilDone(60)
    assert panel.ui.exportResultLabel.text.startswith("Export cancelled")
    written = [os.path.join(folder, name) for folder, _, names in os.walk(output) for name in names]
    assert not [path for path in written if path.endswith(".tmp") or is_temporary_name(path)]
    for path in written:
        if path.endswith(".nii.gz"):
            sitk.ReadImage(path)  # complete: it reads

    start_export(panel, output)
    assert panel.exportPoller.waitUntilDone(300)
    assert panel.ui.exportResultLabel.text.startswith(f"Exported {CASES} case(s)"), panel.ui.exportResultLabel.text

"""Models and recordings for the live mode tests: the ultrasound threshold model of stream_test_support in a registry,
a slow variant of it with the same known answer, a 3D model, and a sequence of the real cine frames in a browser."""

from __future__ import annotations

import json
import os

import numpy as np
from stream_test_support import MODEL_ID, threshold_2d_contract, tracked_matrix, ultrasound_frames

from DeepSegmentLib.package import archive_package, write_package

SLOW_MODEL_ID = "us-threshold-2d-slow"
MODEL_3D_ID = "threshold-3d"


def _threshold_network(slow: bool):
    import torch

    class Threshold(torch.nn.Module):
        """Logits of "brighter than 0.5"; the slow one first runs 24 convolutions whose result it multiplies by
        zero: the labels stay exact, each window batch costs about a GFLOP more (tens of milliseconds at least)."""

        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(3)
            self.widen = torch.nn.Conv2d(1, 24, 3, padding=1)
            layers = 24 if slow else 0
            self.convolutions = torch.nn.ModuleList(torch.nn.Conv2d(24, 24, 3, padding=1) for _ in range(layers))

        def forward(self, image):
            logits = torch.cat([0.5 - image, image - 0.5], dim=1)
            if len(self.convolutions) == 0:
                return logits
            work = self.widen(image)
            for convolution in self.convolutions:
                work = torch.relu(convolution(work))
            return logits + 0.0 * work.mean()

    return Threshold().eval()


def _zip_version(folder: str, model_id: str, network, contract: dict) -> dict:
    package = os.path.join(folder, model_id)
    write_package(package, network, contract)
    return {"version": "1.0.0", "files": [archive_package(package, os.path.join(folder, f"{model_id}-1.0.0.zip"))]}


def write_live_models(folder: str) -> str:
    """An index with the ultrasound threshold model (``MODEL_ID``), its slow twin (``SLOW_MODEL_ID``) and a 3D
    model (``MODEL_3D_ID``), packages and zips beside it; returns the index's path."""
    contract_3d = {**threshold_2d_contract(), "dimensions": 3}
    contract_3d["inference"] = {**contract_3d["inference"], "patchSize": [8, 8, 8]}
    models = []
    for model_id, network, contract in ((MODEL_ID, _threshold_network(False), threshold_2d_contract()),
                                        (SLOW_MODEL_ID, _threshold_network(True), threshold_2d_contract()),
                                        (MODEL_3D_ID, _threshold_network(False), contract_3d)):
        models.append({"id": model_id, "title": model_id, "task": "segmentation",
                       "versions": [_zip_version(folder, model_id, network, contract)]})
    path = os.path.join(folder, "index.json")
    with open(path, "w", encoding="utf-8") as file:
        json.dump({"schemaVersion": 1, "models": models}, file)
    return path


def cine_frames(count: int) -> tuple:
    """(frames (n, 1, rows, columns) uint8, their IJK-to-RAS matrices): the real cine as a tracked probe sees it."""
    frames, spacing = ultrasound_frames(count)
    return frames[:, None], [tracked_matrix(index, spacing) for index in range(count)]


def frame_index(matrix: np.ndarray, matrices: list) -> int:
    """Which frame a label map belongs to, by its geometry (every frame of the tracked probe has its own)."""
    found = [index for index, candidate in enumerate(matrices) if np.array_equal(candidate, matrix)]
    assert len(found) == 1, f"no frame has the geometry {matrix.tolist()}"
    return found[0]


def recorded_sequence(count: int, name: str = "Image_Reference") -> tuple:
    """A sequence of ``count`` cine frames of a tracked probe in a sequence browser, its proxy volume showing the
    first; returns (browser node, proxy volume node, frames, their IJK-to-RAS matrices)."""
    import vtk

    import slicer

    frames, tracked = cine_frames(count)
    sequence = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceNode", f"{name} sequence")
    for index, (frame, matrix) in enumerate(zip(frames, tracked)):
        volume = slicer.vtkMRMLScalarVolumeNode()
        volume.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(matrix))
        slicer.util.updateVolumeFromArray(volume, frame)
        sequence.SetDataNodeAtValue(volume, str(index))
    browser = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", f"{name} browser")
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    slicer.modules.sequences.logic().UpdateAllProxyNodes()
    proxy = browser.GetProxyNode(sequence)
    proxy.SetName(name)
    # A volume node keeps origin, spacing and axes, so a frame's matrix is the tracked one within rounding (the
    # last bit differs on some frames): the frame's geometry is the one the followed volume shows.
    matrices = []
    for index in range(count):
        browser.SetSelectedItemNumber(index)
        shown = vtk.vtkMatrix4x4()
        proxy.GetIJKToRASMatrix(shown)
        matrices.append(slicer.util.arrayFromVTKMatrix(shown))
    browser.SetSelectedItemNumber(0)
    return browser, proxy, frames, matrices

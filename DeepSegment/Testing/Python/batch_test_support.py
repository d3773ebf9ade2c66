"""What the batch tests share: a registry model whose labels are known exactly, and cases to run it on.

The model labels voxels brighter than 0.5 (label 1, "Bright"); with ``scale`` its network multiplies the image
first, so that another version of it gives other labels. Cases are seeded random volumes on oblique, anisotropic
grids, written as NIfTI files (or as DICOM series).
"""

from __future__ import annotations

import json
import os

import numpy as np
import SimpleITK as sitk

from DeepSegmentLib.geometry import image_from_array
from DeepSegmentLib.package import archive_package, write_package

MODEL_ID = "batch-threshold"
LABELS = [{"value": 1, "name": "Bright", "color": "#ff0000"}]


def threshold_contract(patch: int = 8) -> dict:
    return {
        "schemaVersion": 1, "format": "torchscript", "weights": "model.pt", "dimensions": 3,
        "inputs": [{"name": "Image"}],
        "preprocessing": {"spacing": None, "orientation": "native", "normalization": [{"kind": "none"}]},
        "inference": {"patchSize": [patch] * 3, "overlap": 0.25, "blending": "constant", "batchSize": 2,
                      "mirrorAxes": [], "activation": "softmax", "outputChannels": 2},
        "postprocessing": {"mode": "argmax"},
        "labels": LABELS,
    }


def write_threshold_model(folder: str, versions: dict | None = None, patch: int = 8) -> str:
    """Write ``versions`` (version -> scale of the image before the threshold; default ``{"1.0.0": 1.0}``) of the
    threshold model as zips with a one-model ``index.json`` in ``folder``; returns the index's path."""
    import torch

    class Threshold(torch.nn.Module):
        def __init__(self, scale: float) -> None:
            super().__init__()
            self.scale = scale

        def forward(self, image):
            image = image * self.scale
            return torch.cat([0.5 - image, image - 0.5], dim=1)

    entries = []
    for version, scale in (versions or {"1.0.0": 1.0}).items():
        package = os.path.join(folder, f"package-{version}")
        write_package(package, Threshold(scale), threshold_contract(patch))
        entries.append({"version": version,
                        "files": [archive_package(package, os.path.join(folder, f"{MODEL_ID}-{version}.zip"))]})
    index = {"schemaVersion": 1, "models": [{"id": MODEL_ID, "title": "Threshold (batch test model)",
                                             "task": "segmentation", "labels": LABELS, "versions": entries}]}
    path = os.path.join(folder, "index.json")
    with open(path, "w", encoding="utf-8") as file:
        json.dump(index, file)
    return path


def case_image(seed: int, shape: tuple = (9, 11, 13)) -> sitk.Image:
    """A seeded random volume on an oblique, anisotropic grid (float32): values about 0.2 or 0.8, never near the
    model's threshold, so that reduced precision gives the same labels."""
    rng = np.random.default_rng(seed)
    angle = 0.2 + 0.05 * seed
    matrix = np.eye(4)
    matrix[:3, :3] = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]) @ \
        np.diag([0.8, 0.9, 2.5])
    matrix[:3, 3] = [5.0 * seed, -3.0, 12.0]
    values = rng.choice([0.2, 0.8], shape) + rng.uniform(-0.1, 0.1, shape)
    return image_from_array(values.astype(np.float32), matrix)


def expected_labels(image: sitk.Image, scale: float = 1.0) -> np.ndarray:
    """The threshold model's labels of ``image`` (K, J, I)."""
    return (sitk.GetArrayFromImage(image) * scale > 0.5).astype(np.uint8)


def write_cases(folder: str, count: int, shape: tuple = (9, 11, 13), first_seed: int = 0) -> dict:
    """``count`` cases ``case<N>.nii.gz`` in ``folder``; returns case id -> image."""
    os.makedirs(folder, exist_ok=True)
    images = {}
    for number in range(count):
        image = case_image(first_seed + number, shape)
        sitk.WriteImage(image, os.path.join(folder, f"case{number}.nii.gz"))
        images[f"case{number}"] = image
    return images


def write_dicom_series(image: sitk.Image, folder: str, series_uid: str, series_number: int = 1) -> None:
    """``image`` (cast to int16) as one DICOM file per slice, with the tags a series reader needs."""
    os.makedirs(folder, exist_ok=True)
    image = sitk.Cast(sitk.RescaleIntensity(image, 0, 1000), sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = image.GetDirection()
    orientation = "\\".join(f"{value:.10g}" for value in (*direction[0::3], *direction[1::3]))
    for k in range(image.GetDepth()):
        slice_image = image[:, :, k]
        for tag, value in (
            ("0020|000e", series_uid),
            ("0020|0011", str(series_number)),
            ("0020|0032", "\\".join(f"{v:.10g}" for v in image.TransformIndexToPhysicalPoint((0, 0, k)))),
            ("0020|0037", orientation),
            ("0020|0013", str(k + 1)),
            ("0008|0060", "MR"),
            ("0008|0018", f"{series_uid}.{k + 1}"),
        ):
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(os.path.join(folder, f"{series_uid[-6:]}-{k:03d}.dcm"))
        writer.Execute(slice_image)


def result_files(folder: str) -> dict:
    """name -> bytes of every file in ``folder`` (not its subfolders)."""
    found = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, "rb") as file:
                found[name] = file.read()
    return found

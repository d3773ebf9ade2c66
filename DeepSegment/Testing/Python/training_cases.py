"""Seeded synthetic training data for the training tests and benchmark: small volumes of a bright ellipsoid
(label 1, "organ") holding a brighter blob (label 2, "lesion"), on oblique anisotropic grids, with a random
intensity gain and offset per case (so normalization matters) and noise. A case list of several patients (some
with two scans), its label schema, and a TrainingDataExport export of it; and small base models (a plain PyTorch
network, no MONAI) published in a local registry, to fine-tune."""

from __future__ import annotations

import math
import os

import numpy as np
import SimpleITK as sitk
import torch
from ModelRegistryLib.index import Label

from DeepSegmentLib.package import write_package
from DeepSegmentLib.training_publish import publish

from TrainingDataExportLib import Case, ExportSettings, caselist, export_dataset, read_case_list, save_label_schema

LABELS = (Label(1, "organ", "#dd8259"), Label(2, "lesion", "#90d5ff"))
SHAPE = (14, 24, 24)  # z, y, x voxels
SPACING = (1.6, 1.6, 2.5)  # x, y, z mm


def case_arrays(seed: int, shape=SHAPE, spacing=SPACING) -> tuple:
    """(image float32, label uint8) arrays (z, y, x) of one synthetic case."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    millimetres = [x * spacing[0], y * spacing[1], z * spacing[2]]
    extent = [n * s for n, s in zip(reversed(shape), spacing)]
    centre = [e * rng.uniform(0.4, 0.6) for e in extent]
    radii = [e * rng.uniform(0.2, 0.3) for e in extent]
    organ = sum(((m - c) / r) ** 2 for m, c, r in zip(millimetres, centre, radii)) <= 1
    lesion_centre = [c + r * rng.uniform(-0.2, 0.2) for c, r in zip(centre, radii)]
    lesion_radius = min(radii) * rng.uniform(0.55, 0.7)
    lesion = sum((m - c) ** 2 for m, c in zip(millimetres, lesion_centre)) <= lesion_radius ** 2
    labels = np.zeros(shape, np.uint8)
    labels[organ] = 1
    labels[organ & lesion] = 2
    gain, offset = rng.uniform(0.7, 1.4), rng.uniform(-40, 40)
    image = np.choose(labels, [0.0, 120.0, 220.0]) * gain + offset + rng.normal(0, 12, shape)
    return image.astype(np.float32), labels


def _on_grid(array: np.ndarray, spacing, angle_degrees: float) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    angle = math.radians(angle_degrees)
    image.SetDirection((math.cos(angle), -math.sin(angle), 0.0, math.sin(angle), math.cos(angle), 0.0, 0.0, 0.0, 1.0))
    image.SetOrigin((-20.0, 15.0, 40.0))
    return image


def write_case(folder: str, case_id: str, seed: int, angle_degrees: float = 0.0, shape=SHAPE, spacing=SPACING,
               image_transform=None) -> tuple:
    """Write one case (``<case>.nrrd`` and ``<case>_seg.nrrd``); returns (image path, label path).
    ``image_transform`` changes the image array before it is written (a test poisons a case with it)."""
    image, labels = case_arrays(seed, shape, spacing)
    if image_transform is not None:
        image = image_transform(image).astype(np.float32)
    paths = (os.path.join(folder, f"{case_id}.nrrd"), os.path.join(folder, f"{case_id}_seg.nrrd"))
    sitk.WriteImage(_on_grid(image, spacing, angle_degrees), paths[0], True)
    sitk.WriteImage(_on_grid(labels, spacing, angle_degrees), paths[1], True)
    return paths


# 8 patients, 10 cases: p0 and p1 have two scans each.
PATIENTS = ("p0", "p0", "p1", "p1", "p2", "p3", "p4", "p5", "p6", "p7")


def write_case_list(folder: str, patients=PATIENTS, transforms=None, angle_degrees: float = 10.0) -> str:
    """A case list of synthetic cases in ``folder`` with ``labels.json`` beside it; ``transforms`` maps a case id
    to an ``image_transform``. Returns the case list's path."""
    os.makedirs(folder, exist_ok=True)
    cases = []
    for index, patient in enumerate(patients):
        case_id = f"case{index:02d}"
        image, label = write_case(folder, case_id, seed=1000 + index, angle_degrees=angle_degrees * (index % 3),
                                  image_transform=(transforms or {}).get(case_id))
        cases.append(Case(case_id, patient, {"image": image}, label, status="done", annotator=f"reader{index % 2}"))
    path = os.path.join(folder, "cases.csv")
    caselist.write_case_list(path, cases)
    save_label_schema(os.path.join(folder, "labels.json"), LABELS)
    return path


def write_export(case_list: str, output: str, export_format: str = "nnunet", folds: int = 2,
                 test_fraction: float = 0.2, channel_names=("MR",)) -> str:
    """Export the case list; returns the export folder (the nnU-Net dataset folder for nnunet)."""
    report = export_dataset(read_case_list(case_list), LABELS, output,
                            ExportSettings(export_format, channel_names=tuple(channel_names)), folds=folds,
                            test_fraction=test_fraction)
    if export_format == "nnunet":
        return os.path.join(output, "Dataset001_Export")
    return report.output_dir


class TinyNetwork(torch.nn.Module):
    """Three output channels from one input: a plain convolutional network (no MONAI needed)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.BatchNorm3d(8),
                                          torch.nn.ReLU(), torch.nn.Conv3d(8, 3, 1))

    def forward(self, x):
        return self.layers(x)


def base_contract(model_format: str, labels=LABELS, activation: str = "softmax") -> dict:
    weights = {"torchscript": "model.pt", "torch.export": "model.pt2", "onnx": "model.onnx"}[model_format]
    channels = len(labels) + (1 if activation == "softmax" else 0)
    return {"schemaVersion": 1, "format": model_format, "weights": weights, "dimensions": 3,
            "inputs": [{"name": "image"}],
            "preprocessing": {"spacing": [2.0, 2.0, 2.5], "orientation": "RAS",
                              "normalization": [{"kind": "z-score", "foreground": "all"}]},
            "inference": {"patchSize": [16, 16, 8], "activation": activation, "outputChannels": channels},
            "postprocessing": {"mode": "argmax" if activation == "softmax" else "threshold"},
            "labels": [{"value": label.value, "name": label.name, "color": label.color} for label in labels]}


def published_base(tmp_path, model_id: str, model_format: str, **contract_changes) -> str:
    """A base model written in ``model_format``, published in a local registry of ``tmp_path/cache``."""
    torch.manual_seed(0)
    network = TinyNetwork().eval()
    folder = str(tmp_path / f"{model_id}-package")
    contract = {**base_contract(model_format), **contract_changes}
    if model_format == "torch.export":
        weights = torch.export.export(network, (torch.zeros(2, 1, 8, 16, 16),),
                                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    elif model_format == "onnx":
        weights = b"not an onnx model"
    else:
        weights = torch.jit.script(network)
    write_package(folder, weights, contract)
    entry = {"id": model_id, "title": model_id, "labels": contract["labels"],
             "versions": [{"version": "1.0.0", "files": []}]}
    publish(folder, entry, str(tmp_path / "bases"), str(tmp_path / "cache"))
    return folder


__all__ = ["LABELS", "PATIENTS", "TinyNetwork", "base_contract", "case_arrays", "published_base", "write_case",
           "write_case_list", "write_export"]

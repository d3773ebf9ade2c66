"""Fault injection on the export: kill -9 at every stage, then any later export.

Each interrupted export runs in a child process (export_child.py) that kills itself with SIGKILL at a
chosen moment: before the N-th rename of a finished file, before the N-th flush to disk (a temporary file
half-way), or at the N-th progress report. The folder is then exported again, with the same or other
settings, and must be byte for byte what a clean export with those settings writes into a new folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from ModelRegistryLib.index import Label

from TrainingDataExportLib.caselist import Case
from TrainingDataExportLib.export import ExportSettings, export_dataset

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "export_child.py")
SCHEMA = [Label(1, "liver", "#dd8259"), Label(2, "tumor", "#90d5ff")]
CASES = 10


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """Ten small annotated cases of ten patients (seeded)."""
    folder = tmp_path_factory.mktemp("data")
    found = []
    for index in range(CASES):
        rng = np.random.default_rng(index)
        image = sitk.GetImageFromArray(rng.normal(100, 20, (6, 12, 14)).astype(np.int16))
        image.SetSpacing((0.9, 0.9, 2.0))
        label = np.zeros((6, 12, 14), np.uint8)
        label[1:5, 2 + index % 4 : 9, 3:10] = 1
        label[2:4, 4:6, 5 : 7 + index % 3] = 2
        label_image = sitk.GetImageFromArray(label)
        label_image.CopyInformation(image)
        paths = [str(folder / f"case{index:02d}{suffix}.nrrd") for suffix in ("", "_seg")]
        sitk.WriteImage(image, paths[0])
        sitk.WriteImage(label_image, paths[1])
        found.append(Case(f"case{index:02d}", f"patient{index:02d}", {"image": paths[0]}, paths[1]))
    return found


def export(cases, output, settings: dict, options: dict):
    return export_dataset(cases, SCHEMA, str(output), ExportSettings(**settings), **options)


def interrupted_export(cases, output, settings: dict, options: dict, kill: dict) -> int:
    """Run the export in a child killed as ``kill`` says; return its exit status (negative: killed by signal)."""
    request = {
        "cases": [[c.case_id, c.patient_id, c.images, c.segmentation] for c in cases],
        "schema": [[label.value, label.name, label.color] for label in SCHEMA],
        "output": str(output),
        "settings": settings,
        "options": options,
        "kill": kill,
    }
    return subprocess.run([sys.executable, CHILD, json.dumps(request)], timeout=300).returncode


def tree(folder) -> dict:
    """relative path -> sha256 of every file under ``folder``, and every folder (value None)."""
    found = {}
    for directory, folders, files in os.walk(folder):
        for name in folders:
            found[os.path.relpath(os.path.join(directory, name), folder)] = None
        for name in files:
            path = os.path.join(directory, name)
            with open(path, "rb") as file:
                found[os.path.relpath(path, folder)] = hashlib.sha256(file.read()).hexdigest()
    return found


NNUNET = {"format": "nnunet"}
SEED_1 = {"folds": 2, "test_fraction": 0.3, "seed": 1, "workers": 1}
SEED_2 = dict(SEED_1, seed=2)


def test_the_issue_leak_a_killed_re_export_with_another_seed_leaves_no_test_case_in_training(cases, tmp_path):
    """Export with seed 1, kill a re-export with seed 2 while it writes, export with seed 1 again."""
    output, clean = tmp_path / "out", tmp_path / "clean"
    export(cases, clean, NNUNET, SEED_1)
    export(cases, output, NNUNET, SEED_1)
    # The 6th rename: some cases moved by the new seed are written, the run dies before its index files.
    assert interrupted_export(cases, output, NNUNET, SEED_2, {"at": "os.replace", "call": 6}) == -signal.SIGKILL
    report = export(cases, output, NNUNET, SEED_1)
    dataset = output / "Dataset001_Export"
    training = {name.split(".")[0] for name in os.listdir(dataset / "labelsTr")}
    testing = {name.split(".")[0] for name in os.listdir(dataset / "labelsTs")}
    assert not training & testing, f"test cases in labelsTr: {sorted(training & testing)} ({report.written})"
    assert json.loads((dataset / "dataset.json").read_text())["numTraining"] == len(training)
    assert tree(output) == tree(clean)

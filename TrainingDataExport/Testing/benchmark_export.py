"""Benchmark: export 20 cases of 256³ to nnU-Net format against plain SimpleITK read-and-write loops.

Run from the repository root: ``.venv/bin/python TrainingDataExport/Testing/benchmark_export.py [--cases N]``.

Inputs: seeded synthetic cases, an int16 image (a body-like ellipsoid with noise) and a uint8 label map
(two nested blobs) each, as gzip-compressed NRRD files as Slicer saves them. Three runs write the same
voxels to ``imagesTr/<case>_0000.nii.gz`` and ``labelsTr/<case>.nii.gz``:

- *plain SimpleITK loop*: ``ReadImage`` then ``WriteImage`` for each file, one case after the other. Its
  gzip level is NIfTI's fixed one in ITK: SimpleITK's ``compressionLevel`` has no effect on .nii.gz files.
- *plain loop, same gzip level*: the same loop, but each file written uncompressed by SimpleITK and
  gzipped by Python at the export's level, so that both sides do identical compression work.
- *export*: :func:`export_dataset` (validation, patient split, hashes, statistics, dataset card included).
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The label schema's Label comes from the model registry's Lib, in the sibling module folder.
sys.path.insert(1, os.path.join(os.path.dirname(sys.path[0]), "ModelRegistry"))

from ModelRegistryLib.index import Label
from TrainingDataExportLib.caselist import Case
from TrainingDataExportLib.export import ExportSettings, export_dataset

SCHEMA = [Label(1, "organ", "#dd8259"), Label(2, "lesion", "#90d5ff")]
SIZE = 256
LEVEL = 1


def make_cases(folder: str, count: int) -> list:
    grid = np.indices((SIZE, SIZE, SIZE), dtype=np.float32) - SIZE / 2
    body = (grid[2] ** 2 + grid[1] ** 2 / 1.5 + grid[0] ** 2 / 3) < (0.43 * SIZE) ** 2
    cases = []
    for index in range(count):
        rng = np.random.default_rng(index)
        image = np.where(body, 40, -1000).astype(np.int16)
        image += rng.normal(0, 20, image.shape).astype(np.int16)
        center = rng.integers(SIZE // 3, 2 * SIZE // 3, 3)
        distance = sum((grid[axis] + SIZE / 2 - center[axis]) ** 2 for axis in range(3))
        label = (distance < (SIZE / 6) ** 2).astype(np.uint8) + (distance < (SIZE / 20) ** 2).astype(np.uint8)
        paths = [os.path.join(folder, f"case{index:02d}{suffix}.nrrd") for suffix in ("", "_seg")]
        for array, path in zip((image, label), paths):
            volume = sitk.GetImageFromArray(array)
            volume.SetSpacing((0.8, 0.8, 1.5))
            writer = sitk.ImageFileWriter()
            writer.SetFileName(path)
            writer.SetUseCompression(True)
            writer.SetCompressionLevel(1)
            writer.Execute(volume)
        cases.append(Case(f"case{index:02d}", f"patient{index // 2}", {"image": paths[0]}, paths[1]))
    return cases


def plain_loop(cases: list, output: str, same_level: bool) -> None:
    for case in cases:
        targets = (
            (case.images["image"], os.path.join(output, "imagesTr", f"{case.case_id}_0000.nii.gz")),
            (case.segmentation, os.path.join(output, "labelsTr", f"{case.case_id}.nii.gz")),
        )
        for source, target in targets:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            image = sitk.ReadImage(source)
            if same_level:
                sitk.WriteImage(image, target[: -len(".gz")], False)
                with open(target[: -len(".gz")], "rb") as raw, gzip.open(target, "wb", compresslevel=LEVEL) as packed:
                    shutil.copyfileobj(raw, packed, 1 << 22)
                os.remove(target[: -len(".gz")])
            else:
                sitk.WriteImage(image, target, True, LEVEL)


def timed(function, *arguments, **options) -> float:
    started = time.perf_counter()
    function(*arguments, **options)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20)
    arguments = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="export-benchmark-")
    try:
        started = time.perf_counter()
        cases = make_cases(folder, arguments.cases)
        made = time.perf_counter() - started
        print(f"{arguments.cases} cases of {SIZE}³ (int16 image + uint8 labels) made in {made:.1f} s")
        print(f"processors: {os.cpu_count()}; export gzip level {LEVEL}")
        plain = timed(plain_loop, cases, os.path.join(folder, "plain"), same_level=False)
        same = timed(plain_loop, cases, os.path.join(folder, "same"), same_level=True)
        settings = ExportSettings("nnunet", compression_level=LEVEL)
        # 5 folds need 5 patients outside the test set (10 cases); fewer cases (a quick trial) get no folds.
        folds = 5 if arguments.cases >= 14 else 0
        ours = timed(export_dataset, cases, SCHEMA, os.path.join(folder, "export"), settings, folds=folds)
        rerun = timed(export_dataset, cases, SCHEMA, os.path.join(folder, "export"), settings, folds=folds)
        print(f"plain SimpleITK loop (ITK's fixed NIfTI gzip level): {plain:7.1f} s")
        print(f"plain loop, gzip level {LEVEL} like the export:          {same:7.1f} s")
        print(f"export_dataset to nnU-Net, gzip level {LEVEL}:           {ours:7.1f} s")
        print(f"re-export, nothing changed:                       {rerun:7.1f} s")
        print(f"speed-up over the plain loop: {plain / ours:.2f}x; over the same-level loop: {same / ours:.2f}x")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

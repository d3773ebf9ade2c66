"""``python -m DeepSegmentLib run``: from a registry model to a file, in-process and as a real process."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from DeepSegment import writeThresholdTestModel

from DeepSegmentLib.cli import main
from DeepSegmentLib.geometry import geometry_mismatch, image_from_array

MODULE_FOLDER = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def phantom(tmp_path) -> tuple:
    voxels = np.zeros((10, 12, 14), np.int16)
    voxels[2:8, 3:9, 4:11] = 1
    matrix = np.diag([0.7, 0.9, 2.0, 1.0])
    matrix[:3, 3] = [10.0, -5.0, 30.0]
    path = str(tmp_path / "phantom.nii.gz")
    sitk.WriteImage(image_from_array(voxels, matrix), path)
    return path, voxels


@pytest.mark.parametrize("output_name", ["labels.nii.gz", "labels.seg.nrrd"])
def test_run_writes_exact_labels(tmp_path, capsys, output_name):
    index = writeThresholdTestModel(str(tmp_path / "models"))
    input_path, voxels = phantom(tmp_path)
    output = str(tmp_path / output_name)
    code = main(["run", "--model", "threshold-test", "--input", input_path, "--output", output, "--device", "cpu",
                 "--index", index, "--cache-dir", str(tmp_path / "cache")])
    assert code == 0, capsys.readouterr().err
    written = sitk.ReadImage(output)
    assert geometry_mismatch(sitk.ReadImage(input_path), written) == ""
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), voxels)
    assert "timings:" in capsys.readouterr().out


def test_failures_exit_with_one_line(tmp_path, capsys):
    index = writeThresholdTestModel(str(tmp_path / "models"))
    input_path, _ = phantom(tmp_path)
    for arguments, reason in [
        (["--model", "no-such-model", "--input", input_path], "none of the registry indexes"),
        (["--model", "threshold-test", "--input", str(tmp_path / "missing.nrrd")], "not found"),
        (["--model", "threshold-test", "--input", input_path, "--input", input_path], "input"),
    ]:
        code = main(["run", *arguments, "--output", str(tmp_path / "o.nii.gz"), "--index", index,
                     "--cache-dir", str(tmp_path / "cache")])
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert code == 1 and error.startswith("error: ") and reason in error, error


def test_runs_as_a_process_from_the_module_folder(tmp_path):
    index = writeThresholdTestModel(str(tmp_path / "models"))
    input_path, voxels = phantom(tmp_path)
    output = str(tmp_path / "labels.nrrd")
    process = subprocess.run(
        [sys.executable, "-m", "DeepSegmentLib", "run", "--model", "threshold-test", "--input", input_path,
         "--output", output, "--index", index, "--cache-dir", str(tmp_path / "cache")],
        cwd=MODULE_FOLDER, capture_output=True, text=True, timeout=120,
    )
    assert process.returncode == 0, process.stderr
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(output)), voxels)

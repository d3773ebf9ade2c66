"""``python -m DeepSegmentLib run``: from a registry model to a file, in-process and as a real process."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from DeepSegment import writeThresholdTestModel
from ModelRegistryLib.files import is_temporary_name

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


# -- container backend (a real container runtime; see conftest.py) ----------------------------------------


def test_same_labels_in_process_and_in_the_reference_container(container_index, tmp_path, capsys):
    input_path, voxels = phantom(tmp_path)
    outputs = {}
    for backend in ("inprocess", "container"):
        outputs[backend] = str(tmp_path / f"{backend}.seg.nrrd")
        options = ["--parameter", "quality=fast"] if backend == "container" else ["--device", "cpu"]
        code = main(["run", "--model", "threshold-test", "--backend", backend, *options, "--input", input_path,
                     "--output", outputs[backend], "--index", container_index, "--cache-dir", str(tmp_path / "cache")])
        assert code == 0, capsys.readouterr().err
    container = sitk.ReadImage(outputs["container"])
    assert geometry_mismatch(sitk.ReadImage(input_path), container) == ""
    np.testing.assert_array_equal(sitk.GetArrayFromImage(container), sitk.GetArrayFromImage(
        sitk.ReadImage(outputs["inprocess"])))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(container), voxels)


def test_container_parameters_and_failures_from_the_command_line(container_index, tmp_path, capsys):
    input_path, _ = phantom(tmp_path)
    output = str(tmp_path / "labels.nrrd")
    common = ["--input", input_path, "--output", output, "--index", container_index,
              "--cache-dir", str(tmp_path / "cache")]
    assert main(["run", "--model", "contract-test", "--parameter", "threshold=0.0", *common]) == 0
    assert sitk.GetArrayFromImage(sitk.ReadImage(output)).sum() == np.count_nonzero(
        sitk.GetArrayFromImage(sitk.ReadImage(input_path)) > 0)
    for arguments, reason in [
        (["--parameter", "threshold=2"], "parameter 'threshold' must be at most 1"),
        (["--parameter", "speed=3"], "Unknown parameter 'speed'"),
        (["--parameter", "behaviour=fail"], "The model refuses this volume: too dark"),
        (["--backend", "inprocess"], "offers container"),
        (["--memory-limit", "lots"], "Memory limit must be"),
    ]:
        capsys.readouterr()
        code = main(["run", "--model", "contract-test", *arguments, *common])
        error = capsys.readouterr().err
        assert code == 1 and reason in error, error


def test_image_build_and_save_print_the_index_entries(container_runtime, base_image, threshold_model, tiny_image,
                                                     tmp_path, capsys):
    import json

    from ModelRegistryLib.download import file_sha256
    from ModelRegistryLib.index import parse_index

    tag = "localhost/deepsegment-cli-build:1.0.0"
    assert main(["image", "build", "--package", os.path.join(threshold_model, "package"), "--tag", tag,
                 "--base-image", base_image, "--pip-packages", ""]) == 0
    entry = json.loads(capsys.readouterr().out)
    assert entry["name"] == "localhost/deepsegment-cli-build"
    assert entry["id"] in container_runtime.image_identities(tag)
    archive = tmp_path / "tiny.tar"
    assert main(["image", "save", "--image", tiny_image.tag, "--output", str(archive)]) == 0
    entry["archive"] = json.loads(capsys.readouterr().out)["archive"]
    assert entry["archive"] == {"url": "tiny.tar", "sha256": file_sha256(str(archive)), "size": archive.stat().st_size}
    index = {"schemaVersion": 1, "models": [{"id": "built", "title": "Built", "versions": [
        {"version": "1.0.0", "image": entry}]}]}
    image = parse_index(index, base_url=archive.as_uri())[0].latest.image
    assert [parameter.name for parameter in image.parameters] == ["quality", "threads", "precision"]
    assert image.archive.url == archive.as_uri()
    container_runtime.call(["rmi", tag])


# -- every failure: one line on stderr, exit status 1, arguments checked before any work ------------------------

BAD_RUN_ARGUMENTS = [
    (["--threads", "-1"], "--threads must be from 1 to"),
    (["--threads", "0"], "--threads must be from 1 to"),
    (["--threads", "many"], "argument --threads: invalid int value"),
    (["--device", "gpu7"], "Unknown device 'gpu7'"),
    (["--timeout", "-5"], "--timeout must be a positive number"),
    (["--timeout", "inf"], "--timeout must be a positive number"),
    (["--timeout", "nan"], "--timeout must be a positive number"),
    (["--parameter", "quality"], "--parameter takes NAME=VALUE"),
    (["--image-archive", "missing.tar"], "Image archive not found"),
    (["--precision", "float8"], "argument --precision: invalid choice"),
    (["--backend", "gpu"], "argument --backend: invalid choice"),
    (["--workers", "2"], "unrecognized arguments: --workers 2"),
    (["--output", "OUT/labels.png"], "Unknown output type"),
    (["--output", "OUT/labels.mhd"], "Unknown output type"),
    (["--output", "OUT"], "is a folder"),
    (["--output", "FILE/labels.nii.gz"], "is not a folder"),
    (["--input", "OUT/missing.nrrd"], "Input not found"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_RUN_ARGUMENTS, ids=[" ".join(a) for a, _ in BAD_RUN_ARGUMENTS])
def test_bad_run_arguments_are_one_line_before_any_work(tmp_path, capsys, extra, message):
    index = writeThresholdTestModel(str(tmp_path / "models"))
    input_path, _ = phantom(tmp_path)
    (tmp_path / "FILE").write_text("a file")
    extra = [part.replace("OUT", str(tmp_path)).replace("FILE", str(tmp_path / "FILE")) for part in extra]
    given = dict(zip(extra[::2], extra[1::2]))
    command = ["run", "--model", "threshold-test", "--index", index, "--cache-dir", str(tmp_path / "cache"),
               "--input", given.pop("--input", input_path),
               "--output", given.pop("--output", str(tmp_path / "o.nii.gz")),
               *[part for pair in given.items() for part in pair]]
    assert main(command) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.splitlines() == [captured.err.strip()], captured.err
    assert captured.err.startswith("error: ") and message in captured.err, captured.err
    assert not (tmp_path / "cache").exists()  # nothing installed: refused before any work


def test_a_read_only_output_folder_is_refused_before_inference(tmp_path, capsys):
    from fault_injection import read_only

    index = writeThresholdTestModel(str(tmp_path / "models"))
    input_path, _ = phantom(tmp_path)
    results = tmp_path / "results"
    results.mkdir()
    with read_only(results):
        code = main(["run", "--model", "threshold-test", "--input", input_path, "--output", str(results / "o.nii.gz"),
                     "--index", index, "--cache-dir", str(tmp_path / "cache")])
    error = capsys.readouterr().err
    assert code == 1 and error.startswith("error: Cannot write to") and len(error.splitlines()) == 1
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("output_name", ["labels.nii.gz", "labels.nii", "labels.seg.nrrd"])
def test_a_full_disk_fails_the_run_with_one_line_and_keeps_the_previous_result(tmp_path, output_name):
    """The issue: a .nii.gz write on a full disk truncated the result, exited 0 and printed "wrote"."""
    from fault_injection import run_python

    index = writeThresholdTestModel(str(tmp_path / "models"))
    rng = np.random.default_rng(5)
    input_path = str(tmp_path / "noise.nrrd")
    sitk.WriteImage(sitk.GetImageFromArray(rng.integers(0, 2, (48, 64, 64)).astype(np.int16)), input_path)
    output = tmp_path / output_name
    command = ["run", "--model", "threshold-test", "--input", input_path, "--output", str(output), "--index", index,
               "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    assert main(command) == 0
    previous = output.read_bytes()
    sitk.WriteImage(sitk.GetImageFromArray(rng.integers(0, 2, (48, 64, 64)).astype(np.int16)), input_path)
    result = run_python(f"import sys; from DeepSegmentLib.cli import main; sys.exit(main({command!r}))",
                        cwd=MODULE_FOLDER, file_size_limit=60_000)
    # Progress is one line of standard error rewritten in place ("\r"); the failure is the one line after it.
    lines = [line.rsplit("\r", 1)[-1].strip() for line in result.stderr.split("\n") if line.strip()]
    assert result.returncode == 1 and "wrote" not in result.stdout, result.stdout + result.stderr
    assert lines[-1].startswith(f"error: Cannot write {output}: "), result.stderr
    assert all("error" not in line for line in lines[:-1])
    assert output.read_bytes() == previous
    assert not [name for name in os.listdir(tmp_path) if is_temporary_name(name)]

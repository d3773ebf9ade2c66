"""The command line (TrainingDataExportLib.cli): in-process, and once as a real ``python -m`` subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

import TrainingDataExportLib
from TrainingDataExportLib.caselist import Case, write_case_list
from TrainingDataExportLib.cli import main

SCHEMA = {
    "labels": [{"value": 1, "name": "liver", "color": "#dd8259"}, {"value": 2, "name": "tumor", "color": "#90d5ff"}]
}


@pytest.fixture
def project(tmp_path):
    """Four annotated cases of three patients, one case to do; a label schema."""
    rng = np.random.default_rng(3)
    cases = []
    for index, patient in enumerate(["p1", "p1", "p2", "p3", "p4"]):
        image = sitk.GetImageFromArray(rng.integers(0, 100, (6, 10, 12)).astype(np.int16))
        image.SetSpacing((0.8, 0.8, 2.0))
        image_path = str(tmp_path / f"c{index}.nrrd")
        sitk.WriteImage(image, image_path)
        segmentation = ""
        if index < 4:
            label = np.zeros((6, 10, 12), np.uint8)
            label[1:4, 2:7, 3:9] = 1
            label[2, 4:6, 5:7] = 2
            labelImage = sitk.GetImageFromArray(label)
            labelImage.CopyInformation(image)
            segmentation = str(tmp_path / f"c{index}_seg.nrrd")
            sitk.WriteImage(labelImage, segmentation)
        cases.append(Case(f"c{index}", patient, {"image": image_path}, segmentation))
    write_case_list(str(tmp_path / "cases.csv"), cases)
    (tmp_path / "labels.json").write_text(json.dumps(SCHEMA), encoding="utf-8")
    return tmp_path


def arguments(project, *extra):
    return ["--cases", str(project / "cases.csv"), "--schema", str(project / "labels.json"), *extra]


def test_export_writes_the_format_and_reports_progress(project, capsys):
    output = project / "out"
    status = main(
        ["export", *arguments(project, "--format", "pairs", "--output", str(output), "--folds", "2",
                              "--test-fraction", "0.25", "--seed", "4", "--spacing", "1", "1", "2",
                              "--crop-margin", "2", "--compression", "0", "--workers", "2")]
    )
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert captured.out.startswith(f"exported 4 case(s) to {output}: 4 written, 0 unchanged, 1 skipped")
    assert "[  0%] hashing input files" in captured.err and "[100%]" in captured.err
    assert "1 unannotated case(s) skipped: c4" in captured.err
    label = sitk.ReadImage(str(output / "labels" / "c0.nii"))
    assert label.GetSpacing() == pytest.approx((1.0, 1.0, 2.0))
    card = json.loads((output / "dataset_card.json").read_text(encoding="utf-8"))
    assert card["settings"]["crop_margin_mm"] == 2 and card["settings"]["seed"] == 4


def test_export_problems_give_one_error_line_naming_the_cases_and_status_1(project, capsys):
    bad = np.full((6, 10, 12), 7, np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(bad), str(project / "c2_seg.nrrd"))
    output = project / "out"
    assert main(["export", *arguments(project, "--format", "nnunet", "--output", str(output))]) == 1
    error = capsys.readouterr().err.splitlines()
    first = [line for line in error if line.startswith("error: ")]
    assert len(first) == 1
    assert "in 1 case(s): c2" in first[0]
    assert any("case 'c2'" in line and "extra label value 7" in line for line in error)
    assert not output.exists()


def test_bad_inputs_are_one_line_errors(project, capsys):
    (project / "labels.json").write_text('{"labels": [{"value": 1, "name": "a", "color": "red"}]}', encoding="utf-8")
    assert main(["check", *arguments(project)]) == 1
    assert capsys.readouterr().err.startswith("error: labels.json: labels[0].color")
    assert main(["check", "--cases", str(project / "none.csv"), "--schema", str(project / "labels.json")]) == 1
    assert "cannot read case list" in capsys.readouterr().err


def test_check_lists_each_case_and_fails_on_blocking_problems(project, capsys):
    assert main(["check", *arguments(project)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["c0: ok", "c1: ok", "c2: ok", "c3: ok", "c4: not annotated"]
    sitk.WriteImage(sitk.Image([12, 10, 6], sitk.sitkUInt8), str(project / "c1_seg.nrrd"))
    assert main(["check", *arguments(project)]) == 1
    captured = capsys.readouterr()
    assert "c1: no voxel has label 'liver' (1); no voxel has label 'tumor' (2); segmentation is empty" in captured.out
    assert "error: 1 case(s) have problems that stop an export" in captured.err


def test_python_m_runs_from_the_module_folder_without_model_registry_on_the_path(project):
    module_folder = os.path.dirname(os.path.dirname(TrainingDataExportLib.__file__))
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-m", "TrainingDataExportLib", "check", *arguments(project)],
        cwd=module_folder,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "c0: ok"
    failed = subprocess.run(
        [sys.executable, "-m", "TrainingDataExportLib", "export", *arguments(project), "--format", "nope",
         "--output", str(project / "out")],
        cwd=module_folder,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failed.returncode == 2 and "invalid choice: 'nope'" in failed.stderr

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
    assert "hashing input files (1 of 8)" in captured.err and "[100%]" in captured.err
    wrote = [line.split("] wrote case ")[1] for line in captured.err.splitlines() if "wrote case" in line]
    assert sorted(line.split()[0] for line in wrote) == ["c0", "c1", "c2", "c3"]
    assert [line.split(" ", 1)[1] for line in wrote] == [f"({number} of 4)" for number in range(1, 5)]
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
    assert failed.returncode == 1 and failed.stderr.startswith("error: argument --format: invalid choice: 'nope'")
    assert len(failed.stderr.splitlines()) == 1


# --- every failure: one line on stderr, exit status 1, before any work -------------------------------------

BAD_EXPORT_ARGUMENTS = [
    (["--workers", "-1"], "--workers takes 0"),
    (["--workers", "1000"], "--workers takes 0"),
    (["--spacing", "inf", "1", "1"], "--spacing takes three positive, finite numbers"),
    (["--spacing", "nan", "1", "1"], "--spacing takes three positive, finite numbers"),
    (["--spacing", "0", "1", "1"], "--spacing takes three positive, finite numbers"),
    (["--spacing", "1", "1"], "argument --spacing: expected 3 arguments"),
    (["--spacing", "0.001", "0.001", "0.001"], "would hold"),
    (["--crop-margin", "inf"], "--crop-margin takes a finite number"),
    (["--crop-margin", "-2"], "--crop-margin takes a finite number"),
    (["--folds", "-1"], "--folds takes 0"),
    (["--folds", "two"], "argument --folds: invalid int value"),
    (["--test-fraction", "1"], "--test-fraction takes a number from 0 to below 1"),
    (["--test-fraction", "nan"], "--test-fraction takes a number from 0 to below 1"),
    (["--compression", "12"], "--compression takes a gzip level"),
    (["--seed", "1.5"], "argument --seed: invalid int value"),
    (["--dataset-id", "0"], "--dataset-id takes a number from 1 to 999"),
    (["--dataset-id", "1000"], "--dataset-id takes a number from 1 to 999"),
    (["--dataset-name", "../x"], "dataset_name must be letters"),
    (["--dataset-name", "Dataset002_Liver"], "dataset_name is the name part"),
    (["--channel-names", "CT", "T2"], "channel_names gives 2 name(s) for 1 channel(s)"),
    (["--threads", "2"], "unrecognized arguments: --threads 2"),
    (["--format", "nope"], "argument --format: invalid choice"),
    (["--format", "monai", "--folds", "0"], "MONAI datalists need 2 folds or more"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_EXPORT_ARGUMENTS, ids=[" ".join(a) for a, _ in BAD_EXPORT_ARGUMENTS])
def test_bad_export_arguments_are_one_line_and_status_1_before_any_work(project, capsys, extra, message):
    format_given = "--format" in extra
    command = ["export", *arguments(project, "--output", str(project / "out"),
                                    *([] if format_given else ["--format", "nnunet"]), *extra)]
    assert main(command) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1, captured.err
    assert captured.err.startswith("error: ") and message in captured.err, captured.err
    assert not (project / "out").exists()


def test_a_non_utf8_case_list_names_the_file_and_line(project, capsys):
    text = (project / "cases.csv").read_text(encoding="utf-8").splitlines()
    text[2] = text[2].replace("c1", "c\xe91")
    (project / "cases.csv").write_bytes("\n".join(text).encode("latin-1"))
    for command in ("check", "export"):
        extra = ["--format", "pairs", "--output", str(project / "out")] if command == "export" else []
        assert main([command, *arguments(project, *extra)]) == 1
        error = capsys.readouterr().err
        assert error == "error: cases.csv is not UTF-8 text (line 3 holds byte 0xe9): save it as CSV UTF-8\n"


def test_a_case_list_with_a_byte_order_mark_is_read(project, capsys):
    data = (project / "cases.csv").read_bytes()
    (project / "cases.csv").write_bytes(b"\xef\xbb\xbf" + data)
    assert main(["check", *arguments(project)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "c0: ok"


def test_a_read_only_output_is_refused_before_any_work(project, capsys):
    from fault_injection import read_only

    output = project / "exports"
    output.mkdir()
    with read_only(output):
        assert main(["export", *arguments(project, "--format", "pairs", "--output", str(output / "new"))]) == 1
    error = capsys.readouterr().err
    assert len(error.splitlines()) == 1 and "cannot be written" in error and not error.startswith("[")
    assert os.listdir(output) == []


def test_an_output_that_is_a_file_is_refused(project, capsys):
    (project / "out.txt").write_text("mine")
    assert main(["export", *arguments(project, "--format", "pairs", "--output", str(project / "out.txt"))]) == 1
    assert "exists and is not a folder" in capsys.readouterr().err
    assert (project / "out.txt").read_text() == "mine"


def test_a_failing_write_is_one_line_and_status_1(project):
    """A full disk (a file-size limit in a child process): one line, and the next export completes the folder."""
    from fault_injection import run_python

    command = ["export", *arguments(project, "--format", "pairs", "--output", str(project / "out"), "--compression",
                                    "0", "--folds", "2")]
    result = run_python(f"import sys; from TrainingDataExportLib.cli import main; sys.exit(main({command!r}))",
                        file_size_limit=1800)
    errors = [line for line in result.stderr.splitlines() if not line.startswith("[")]
    assert result.returncode == 1 and len(errors) == 1, result.stderr
    assert errors[0].startswith("error: export failed (the next export finishes the folder): ")
    assert "File too large" in errors[0]
    assert main(command) == 0


def test_check_takes_the_settings_that_change_the_checks(project, capsys):
    assert main(["check", *arguments(project, "--format", "pairs", "--spacing", "0.001", "0.001", "0.001")]) == 1
    assert "would hold" in capsys.readouterr().out
    assert main(["check", *arguments(project, "--spacing", "1", "1", "1")]) == 1
    assert capsys.readouterr().err == "error: --spacing needs --format: check as for an export in that format\n"
    assert main(["check", *arguments(project, "--spacing", "inf", "1", "1")]) == 1
    assert capsys.readouterr().err.startswith("error: --spacing takes three positive, finite numbers")


def test_dataset_id_name_and_channel_names_from_the_command_line(project, capsys):
    output = project / "nnUNet_raw"
    assert main(["export", *arguments(project, "--format", "nnunet", "--output", str(output), "--dataset-id", "901",
                                      "--dataset-name", "Liver", "--channel-names", "CT", "--folds", "2")]) == 0
    dataset = json.loads((output / "Dataset901_Liver" / "dataset.json").read_text(encoding="utf-8"))
    assert dataset["channel_names"] == {"0": "CT"} and dataset["name"] == "Dataset901_Liver"
    assert "nnU-Net chooses each channel's normalization" not in capsys.readouterr().err
    # The dataset folder itself as the output: the same dataset, not Dataset901_Liver/Dataset001_Export.
    assert main(["export", *arguments(project, "--format", "nnunet", "--output", str(output / "Dataset901_Liver"),
                                      "--channel-names", "CT", "--folds", "2")]) == 0
    assert "4 unchanged" in capsys.readouterr().out
    assert sorted(os.listdir(output)) == ["Dataset901_Liver"]
    assert main(["export", *arguments(project, "--format", "nnunet", "--output", str(output / "Dataset901_Liver"),
                                      "--dataset-id", "902")]) == 1
    assert "is nnU-Net dataset 901 'Liver', but the settings ask for dataset 902 'Liver'" in capsys.readouterr().err

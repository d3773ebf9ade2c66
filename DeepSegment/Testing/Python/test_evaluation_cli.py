"""``python -m DeepSegmentLib evaluate``: folders or a case list to a report, arguments checked before any
work, one-line errors, metrics into a registry index; in-process and as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from evaluation_cases import label_map_pair

from DeepSegmentLib.cli import main
from DeepSegmentLib.evaluation import label_map_metrics
from DeepSegmentLib.evaluation_report import CSV_NAME, JSON_NAME, MARKDOWN_NAME, read_report
from ModelRegistryLib.index import Label, load_index
from TrainingDataExportLib import Case, save_label_schema, write_case_list

MODULE_FOLDER = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPACING = (0.8, 0.8, 2.0)


def write(path, array) -> str:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    sitk.WriteImage(image, str(path))
    return str(path)


@pytest.fixture()
def cohort(tmp_path):
    """Three cases in ``reference/`` and ``prediction/``, and a prediction without a reference."""
    arrays = {}
    for seed in range(3):
        reference, prediction = label_map_pair(seed, shape=(20, 24, 28), labels=2)
        arrays[f"case{seed}"] = (reference, prediction)
        write(tmp_path / "reference" / f"case{seed}_seg.nrrd", reference)
        write(tmp_path / "prediction" / f"case{seed}.nii.gz", prediction)
    write(tmp_path / "prediction" / "stray.nii.gz", reference)
    return tmp_path, arrays


def test_folders_to_report(cohort, capsys):
    folder, arrays = cohort
    output = folder / "report"
    code = main(["evaluate", "--reference", str(folder / "reference"), "--prediction", str(folder / "prediction"),
                 "--labels", "1,2", "--tolerance", "1.5", "--output", str(output)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.splitlines()[0] == "3 cases measured, 0 failed, 1 files unpaired"
    assert captured.out.splitlines()[1].startswith("Label 1 (1): Dice 0.")
    assert {MARKDOWN_NAME, JSON_NAME, CSV_NAME} <= set(os.listdir(output))
    report = read_report(str(output))
    assert report.prediction_only == ["stray"] and report.tolerance_mm == 1.5
    for case in report.cases:
        # The reference's grid is used: NIfTI rounds the predictions' spacing to single precision.
        assert case.labels == label_map_metrics(*arrays[case.case_id], SPACING, [1, 2], 1.5)


def test_case_list_with_schema_and_metrics_into_an_index(cohort, capsys):
    folder, arrays = cohort
    save_label_schema(str(folder / "labels.json"), [Label(1, "Liver", "#dd8259"), Label(2, "Spleen", "#9d6c5e")])
    write_case_list(str(folder / "cases.csv"), [
        Case(case_id, case_id, {"image": write(folder / "images" / f"{case_id}.nrrd", np.zeros((2, 2, 2), np.int16))},
             str(folder / "reference" / f"{case_id}_seg.nrrd")) for case_id in arrays])
    index = folder / "registry" / "index.json"
    index.parent.mkdir()
    index.write_text(json.dumps({"schemaVersion": 1, "models": [{"id": "abdomen", "title": "Abdomen", "versions": [
        {"version": "1.0.0", "files": [{"url": "a.zip", "sha256": "0" * 64, "size": 1}]}]}]}))
    code = main(["evaluate", "--cases", str(folder / "cases.csv"), "--prediction", str(folder / "prediction"),
                 "--output", str(folder / "out"), "--add-metrics-to", str(index), "--model", "abdomen"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.splitlines()[1].startswith("Liver (1): Dice")
    assert captured.out.splitlines()[-1] == f"updated {index}"
    (model,) = load_index(str(index))
    assert [metric.name for metric in model.metrics][:2] == ["Liver Dice", "Liver HD95 (mm)"]
    assert {metric.dataset for metric in model.metrics} == {f"{folder.name}, 3 cases"}


@pytest.mark.parametrize(("arguments", "reason"), [
    (["--reference", "{folder}/missing"], "folder not found"),
    (["--reference", "{folder}/reference", "--tolerance", "nan"], "tolerance"),
    (["--reference", "{folder}/reference", "--tolerance", "-1"], "tolerance"),
    (["--reference", "{folder}/reference", "--labels", "liver"], "labels are a label schema file or values"),
    (["--reference", "{folder}/reference", "--labels", "0"], "positive"),
    (["--reference", "{folder}/reference", "--output", "{folder}/reference/case0_seg.nrrd"], "is a file"),
    (["--reference", "{folder}/reference", "--add-metrics-to", "{folder}/index.json"], "needs --model"),
    (["--reference", "{folder}/reference", "--model", "x"], "go with --add-metrics-to"),
    (["--reference", "{folder}/reference", "--add-metrics-to", "{folder}/index.json", "--model", "x"],
     "cannot read registry index"),
    (["--cases", "{folder}/missing.csv"], "case list not found"),
    (["--reference", "{folder}/reference", "--prediction", "{folder}/empty"], "no prediction in"),
])
def test_bad_arguments_stop_before_any_work_with_one_line(cohort, capsys, arguments, reason):
    folder, _ = cohort
    (folder / "empty").mkdir()
    arguments = [argument.format(folder=folder) for argument in arguments]
    if "--prediction" not in arguments:
        arguments += ["--prediction", str(folder / "prediction")]
    if "--output" not in arguments:
        arguments += ["--output", str(folder / "out")]
    code = main(["evaluate", *arguments])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(error) == 1 and error[0].startswith("error: ") and reason in error[0], error
    assert not os.path.exists(folder / "out")


def test_no_measurable_case_fails(cohort, capsys):
    folder, _ = cohort
    (folder / "bad").mkdir()
    (folder / "bad" / "case0.nrrd").write_text("not an image")
    code = main(["evaluate", "--reference", str(folder / "reference"), "--prediction", str(folder / "bad"),
                 "--output", str(folder / "out")])
    assert code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: no case could be measured: cannot read")
    assert read_report(str(folder / "out")).failed[0].case_id == "case0"  # the report says why


def test_runs_as_a_process(cohort):
    folder, _ = cohort
    completed = subprocess.run(
        [sys.executable, "-m", "DeepSegmentLib", "evaluate", "--reference", str(folder / "reference"),
         "--prediction", str(folder / "prediction"), "--output", str(folder / "out")],
        cwd=MODULE_FOLDER, capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr
    assert os.path.isfile(folder / "out" / MARKDOWN_NAME)
    completed = subprocess.run([sys.executable, "-m", "DeepSegmentLib", "evaluate", "--prediction", str(folder),
                                "--output", str(folder / "out")],
                               cwd=MODULE_FOLDER, capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 1 and "one of the arguments --reference --cases is required" in completed.stderr

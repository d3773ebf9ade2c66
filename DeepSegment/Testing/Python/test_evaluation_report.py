"""The evaluation report's files (Markdown, JSON, CSV, plots; plots skipped without matplotlib) and its
results written into a registry index as a model card's metrics."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import sys

import pytest

from DeepSegmentLib.evaluation import EvaluationError, LabelMetrics
from DeepSegmentLib.evaluation_cohort import CaseEvaluation, EvaluationReport
from TrainingDataExportLib.csvfiles import spreadsheet_safe
from DeepSegmentLib.evaluation_report import (
    CSV_NAME,
    JSON_NAME,
    MARKDOWN_NAME,
    SUMMARY_CSV_NAME,
    add_metrics_to_index,
    card_metrics,
    default_dataset_name,
    label_summary,
    read_report,
    worst_cases,
    write_report,
)
from ModelRegistryLib.index import Label, load_index

LABELS = [Label(1, "Liver", "#dd8259"), Label(2, "Tumor", "#90d5ff")]


def write_index(folder) -> str:
    """A local registry index with one model, ``liver-ct``, its keys in a hand-written order."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "index.json")
    with open(path, "w", encoding="utf-8") as file:
        json.dump({"schemaVersion": 1, "models": [{
            "id": "liver-ct", "title": "Liver (CT)",
            "versions": [{"version": "1.0.0", "files": [{"url": "liver.zip", "sha256": "0" * 64, "size": 1}]}],
        }]}, file)
    return path


def liver(dice, hd95=3.0, reference_ml=100.0, prediction_ml=110.0):
    return LabelMetrics(1, "Liver", dice, hd95, 1.0, 0.9, reference_ml, prediction_ml)


def tumor_missed():
    return LabelMetrics(2, "Tumor", 0.0, math.inf, math.inf, 0.0, 5.0, 0.0)


def tumor_absent():
    return LabelMetrics(2, "Tumor", math.nan, math.nan, math.nan, math.nan, 0.0, 0.0)


def small_report() -> EvaluationReport:
    cases = [
        CaseEvaluation("ct01", "/r/ct01.nrrd", "/p/ct01.nrrd", labels=[liver(0.95), tumor_missed()]),
        CaseEvaluation("=cmd|'/c calc'!A1", "/r/x.nrrd", "/p/x.nrrd", labels=[liver(0.85, 5.0), tumor_absent()],
                       notes=["prediction resampled onto the reference grid (nearest neighbour): spacing differs"]),
        CaseEvaluation("ct03", "/r/ct03.nrrd", "/p/ct03.nrrd", error="cannot read /p/ct03.nrrd: not an image"),
    ]
    return EvaluationReport(cases, LABELS, 2.0, reference_only=["ct04"], prediction_only=["-ct05"],
                            unannotated=["ct06"], source={"cases": "/data/liver/cases.csv"}, seconds=1.5)


def test_summary_counts_each_situation_and_averages_finite_values():
    liver_summary, tumor_summary = label_summary(small_report())
    assert liver_summary["measures"]["dice"]["mean"] == pytest.approx(0.9)
    assert liver_summary["measures"]["dice"]["cases"] == 2
    assert liver_summary["measures"]["volume_difference_percent"]["median"] == pytest.approx(10.0)
    assert tumor_summary["statuses"] == {"both present": 0, "both empty": 1, "reference empty": 0,
                                         "prediction empty": 1}
    assert tumor_summary["measures"]["dice"]["mean"] == 0.0  # the missed tumour counts; the absent one does not
    assert tumor_summary["measures"]["hd95_mm"] is None  # its only distance is infinite
    worst = worst_cases(small_report())
    assert [item["case_id"] for item in worst] == ["ct01", "=cmd|'/c calc'!A1"]  # mean Dice 0.475, then 0.85
    assert (worst[0]["worst_label"], worst[0]["largest_hd95_mm"]) == ("Tumor", math.inf)


def test_report_files(tmp_path):
    paths = write_report(small_report(), str(tmp_path / "report"))
    names = sorted(os.path.relpath(path, tmp_path / "report") for path in paths)
    assert names == sorted([MARKDOWN_NAME, JSON_NAME, CSV_NAME, SUMMARY_CSV_NAME, "plots/dice.png",
                            "plots/hd95_mm.png", "plots/msd_mm.png", "plots/nsd.png",
                            "plots/volume_difference_percent.png", "plots/worst_cases.png"])
    for path in paths:
        if path.endswith(".png"):
            with open(path, "rb") as image:
                assert image.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not [name for name in os.listdir(tmp_path / "report") if name.startswith(".")]  # no temporary left

    def refuse(constant):
        raise ValueError(f"{constant} in JSON")

    with open(tmp_path / "report" / JSON_NAME, encoding="utf-8") as file:
        data = json.load(file, parse_constant=refuse)
    assert data["plots"][0] == "plots/dice.png" and data["plots_note"] == ""
    assert data["summary"][0]["name"] == "Liver"
    back = read_report(str(tmp_path / "report"))
    assert back.to_json() == small_report().to_json()

    markdown = (tmp_path / "report" / MARKDOWN_NAME).read_text(encoding="utf-8")
    for heading in ("## Per label", "## Worst cases", "## Plots", "## Cases", "## Failed cases", "## Not evaluated",
                    "## Notes"):
        assert heading in markdown
    assert "| Liver (1) | 2 | 0.900 ± 0.071 (0.900) |" in markdown
    assert "![dice.png](plots/dice.png)" in markdown
    assert "| ct01 | Tumor | 0.000 | ∞ | ∞ | 0.000 | 5.00 | 0.00 | -5.00 | -100.0 | prediction empty |" in markdown
    assert "=cmd\\|'/c calc'!A1" in markdown  # the table is not broken by the '|' in a case id
    assert "- Predictions without a reference (1): -ct05" in markdown


def test_csv_is_safe_for_spreadsheets(tmp_path):
    write_report(small_report(), str(tmp_path))
    with open(tmp_path / CSV_NAME, encoding="utf-8", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [(row["case_id"], row["label_name"]) for row in rows] == [
        ("ct01", "Liver"), ("ct01", "Tumor"), ("'=cmd|'/c calc'!A1", "Liver"), ("'=cmd|'/c calc'!A1", "Tumor"),
        ("ct03", "")]
    missed, absent = rows[1], rows[3]
    assert (missed["dice"], missed["hd95_mm"], missed["volume_difference_percent"]) == ("0", "inf", "-100")
    assert (absent["dice"], absent["hd95_mm"], absent["status"]) == ("", "", "both empty")
    assert rows[4]["error"] == "cannot read /p/ct03.nrrd: not an image"
    assert float(rows[0]["volume_difference_ml"]) == pytest.approx(10.0)
    with open(tmp_path / SUMMARY_CSV_NAME, encoding="utf-8", newline="") as file:
        summary = list(csv.DictReader(file))
    dice = next(row for row in summary if row["label_name"] == "Liver" and row["measure"] == "dice")
    assert (dice["cases"], float(dice["mean"]), dice["both_present"]) == ("2", pytest.approx(0.9), "2")
    assert spreadsheet_safe("@SUM(A1)") == "'@SUM(A1)" and spreadsheet_safe("+1+cmd") == "'+1+cmd"
    assert spreadsheet_safe("-100") == "-100"  # a number stays a number in a spreadsheet


def test_without_matplotlib_plots_are_skipped_with_a_note(tmp_path, monkeypatch):
    # As in a Slicer without matplotlib: importing it fails.
    for name in [module for module in sys.modules if module == "matplotlib" or module.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    paths = write_report(small_report(), str(tmp_path))
    assert not [path for path in paths if path.endswith(".png")]
    assert "Plots skipped: matplotlib is not installed." in (tmp_path / MARKDOWN_NAME).read_text(encoding="utf-8")
    assert json.loads((tmp_path / JSON_NAME).read_text(encoding="utf-8"))["plots_note"].startswith("Plots skipped")


def test_card_metrics_go_into_a_local_index(tmp_path):
    index = write_index(str(tmp_path / "registry"))
    report = small_report()
    dataset = default_dataset_name(report)
    assert dataset == "liver, 2 cases"
    metrics = card_metrics(report, dataset)
    assert [(entry["name"], entry["value"]) for entry in metrics] == [
        ("Liver Dice", 0.9), ("Liver HD95 (mm)", 4.0), ("Liver MSD (mm)", 1.0), ("Liver NSD at 2 mm", 0.9),
        ("Tumor Dice", 0.0), ("Tumor NSD at 2 mm", 0.0)]
    add_metrics_to_index(index, "liver-ct", [{"name": "Other", "value": 1.0, "dataset": "elsewhere"}])
    add_metrics_to_index(os.path.dirname(index), "liver-ct", metrics)
    add_metrics_to_index(index, "liver-ct", metrics)  # again: replaced, not repeated
    with open(index, encoding="utf-8") as file:
        assert list(json.load(file)["models"][0]) == ["id", "title", "versions", "metrics"]
    (model,) = load_index(index)
    assert [(metric.name, metric.value, metric.dataset) for metric in model.metrics] == [
        ("Other", 1.0, "elsewhere"), *((entry["name"], entry["value"], dataset) for entry in metrics)]
    assert not [name for name in os.listdir(os.path.dirname(index)) if name.startswith(".")]


def test_metrics_never_break_an_index(tmp_path):
    index = write_index(str(tmp_path))
    with open(index, encoding="utf-8") as file:
        before = file.read()
    with pytest.raises(EvaluationError, match="model 'liver' is not in registry index"):
        add_metrics_to_index(index, "liver", [])
    with pytest.raises(EvaluationError, match=r"would make .* invalid: .*metrics\[0\]\.value"):
        add_metrics_to_index(index, "liver-ct", [{"name": "Dice", "value": "high", "dataset": "x"}])
    with open(index, encoding="utf-8") as file:
        assert file.read() == before
    shutil.copy(index, tmp_path / "broken.json")
    (tmp_path / "broken.json").write_text("{", encoding="utf-8")
    with pytest.raises(EvaluationError, match="not valid JSON"):
        add_metrics_to_index(str(tmp_path / "broken.json"), "liver-ct", [])

"""An evaluation's report (Markdown, JSON, CSV, plots) and its results as a model card's metrics.

:func:`write_report` writes into a folder, each file atomically:

- ``evaluation.md``: per-label summary, worst cases, plots, every case, failures, unpaired files, notes;
- ``evaluation.json``: the whole report (:meth:`EvaluationReport.to_json`), the summary and the worst cases;
- ``evaluation.csv``: one row per case and label (a failed case: one row with its error), ready for a
  spreadsheet (text that a spreadsheet would run as a formula is quoted with a leading ``'``);
- ``evaluation_summary.csv``: per label and measure: cases, mean, SD, median, quartiles, range;
- ``plots/*.png`` (with matplotlib; without it, as in some Slicer installs, the report says plots were
  skipped): per-label distributions of each measure (box and points) and the cases with the lowest Dice.

Summaries use the finite values: a label both empty in a case is not counted (nothing to measure), and
where one side is empty Dice and NSD count as 0 while the infinite distances are left out; the counts of
each situation are given next to them.

:func:`card_metrics` turns a report into a model card's ``metrics`` entries (``{name, value, dataset}``,
the means per label), and :func:`add_metrics_to_index` writes them into a model of a local registry index.

Example::

    >>> import os, tempfile
    >>> from DeepSegmentLib.evaluation import LabelMetrics
    >>> from DeepSegmentLib.evaluation_cohort import CaseEvaluation, EvaluationReport
    >>> from ModelRegistryLib.index import Label
    >>> cases = [CaseEvaluation(f"ct{n}", "", "", labels=[LabelMetrics(1, "Liver", dice, 3.0, 1.0, 0.9, 10.0, 11.0)])
    ...          for n, dice in ((1, 0.9), (2, 0.8))]
    >>> report = EvaluationReport(cases, [Label(1, "Liver", "#dd8259")], tolerance_mm=2.0)
    >>> [round(entry["value"], 3) for entry in card_metrics(report, "test set")][:1]
    [0.85]
    >>> folder = tempfile.mkdtemp()
    >>> sorted(os.path.basename(path) for path in write_report(report, folder) if not path.endswith(".png"))
    ['evaluation.csv', 'evaluation.json', 'evaluation.md', 'evaluation_summary.csv']
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence

import numpy as np
from ModelRegistryLib.files import atomic_target, write_json_atomically, write_text_atomically
from ModelRegistryLib.index import IndexValidationError, file_url, parse_index
from TrainingDataExportLib.card import markdown_table
from TrainingDataExportLib.csvfiles import csv_text

from .evaluation import (
    BOTH_EMPTY,
    MEASURES,
    PREDICTION_EMPTY,
    REFERENCE_EMPTY,
    STATUSES,
    EvaluationError,
)
from .evaluation_cohort import EvaluationReport

MARKDOWN_NAME = "evaluation.md"
JSON_NAME = "evaluation.json"
CSV_NAME = "evaluation.csv"
SUMMARY_CSV_NAME = "evaluation_summary.csv"
PLOT_FOLDER = "plots"
WORST_CASE_COUNT = 10
# Measures summarised and plotted, with their titles; the volumes themselves are in the per-case tables.
SUMMARISED = (("dice", "Dice"), ("hd95_mm", "HD95 (mm)"), ("msd_mm", "MSD (mm)"), ("nsd", "NSD"),
              ("volume_difference_percent", "Volume difference (%)"))
# Text a spreadsheet would take for a formula (CSV injection): such cells get a leading apostrophe.
_DIGITS = {"dice": 3, "nsd": 3, "hd95_mm": 2, "msd_mm": 2, "reference_ml": 2, "prediction_ml": 2,
           "volume_difference_ml": 2, "volume_difference_percent": 1}


# --- summaries -----------------------------------------------------------------------------------------------


def _statistics(values: Sequence[float]) -> dict | None:
    if not values:
        return None
    array = np.asarray(values, float)
    q1, median, q3 = (float(v) for v in np.percentile(array, [25, 50, 75]))
    sd = float(array.std(ddof=1)) if len(values) > 1 else 0.0
    return {"cases": len(values), "mean": float(array.mean()), "sd": sd,
            "median": median, "q1": q1, "q3": q3, "min": float(array.min()), "max": float(array.max())}


def _label_results(report: EvaluationReport, value: int) -> list:
    return [result for case in report.cases if not case.error for result in case.labels if result.value == value]


def _finite(results: Sequence, measure: str) -> list:
    return [number for number in (result.measure(measure) for result in results) if math.isfinite(number)]


def label_summary(report: EvaluationReport) -> list:
    """Per label: ``value``, ``name``, ``statuses`` (cases in each situation) and, per measure of
    :data:`~DeepSegmentLib.evaluation.MEASURES`, statistics of its finite values (None when there are none)."""
    summary = []
    for label in report.labels:
        results = _label_results(report, label.value)
        summary.append({
            "value": label.value, "name": label.name,
            "statuses": {status: sum(result.status == status for result in results) for status in STATUSES},
            "measures": {measure: _statistics(_finite(results, measure)) for measure in MEASURES},
        })
    return summary


def worst_cases(report: EvaluationReport, count: int = WORST_CASE_COUNT) -> list:
    """The ``count`` measured cases with the lowest mean Dice over their labels, lowest first: ``case_id``,
    ``mean_dice``, the ``worst_label`` (lowest Dice) and its ``worst_dice``, and the ``largest_hd95_mm``."""
    ranked = []
    for case in report.cases:
        scored = [result for result in case.labels if math.isfinite(result.dice)]
        if case.error or not scored:
            continue
        worst = min(scored, key=lambda result: result.dice)
        distances = [result.hd95_mm for result in case.labels if not math.isnan(result.hd95_mm)]
        ranked.append({"case_id": case.case_id, "mean_dice": float(np.mean([result.dice for result in scored])),
                       "worst_label": worst.name, "worst_dice": worst.dice,
                       "largest_hd95_mm": max(distances) if distances else None})
    ranked.sort(key=lambda item: (item["mean_dice"], item["case_id"]))
    return ranked[:count]


# --- text formats --------------------------------------------------------------------------------------------


def _number(value: float | None, digits: int) -> str:
    if value is None or math.isnan(value):
        return "–"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    return f"{value:.{digits}f}"


def _mean_sd_median(statistics: dict | None, digits: int) -> str:
    if statistics is None:
        return "–"
    return (f"{_number(statistics['mean'], digits)} ± {_number(statistics['sd'], digits)} "
            f"({_number(statistics['median'], digits)})")


def _nsd_title(report: EvaluationReport) -> str:
    return f"NSD at {report.tolerance_mm:g} mm"


def _summary_lines(report: EvaluationReport, summary: list) -> list:
    header = ["Label", "Cases", *(_nsd_title(report) if measure == "nsd" else title for measure, title in SUMMARISED),
              "Both empty", "Reference empty", "Prediction empty"]
    rows = []
    for item in summary:
        statuses = item["statuses"]
        rows.append([f"{item['name']} ({item['value']})", str(sum(statuses.values())),
                     *(_mean_sd_median(item["measures"][measure], _DIGITS[measure]) for measure, _ in SUMMARISED),
                     str(statuses[BOTH_EMPTY]), str(statuses[REFERENCE_EMPTY]), str(statuses[PREDICTION_EMPTY])])
    return markdown_table(header, rows)


def _case_lines(report: EvaluationReport) -> list:
    header = ["Case", "Label", "Dice", "HD95 (mm)", "MSD (mm)", _nsd_title(report), "Reference (mL)",
              "Prediction (mL)", "Difference (mL)", "Difference (%)", "Status"]
    rows = []
    for case in report.cases:
        if case.error:
            continue
        for result in case.labels:
            rows.append([case.case_id, result.name,
                         *(_number(result.measure(measure), _DIGITS[measure]) for measure in MEASURES), result.status])
    return markdown_table(header, rows)


def report_markdown(report: EvaluationReport, plots: Sequence[str] = (), plots_note: str = "") -> str:
    """The report as Markdown; ``plots`` are image paths relative to the Markdown file."""
    measured = [case for case in report.cases if not case.error]
    source = ", ".join(f"{key}: `{value}`" for key, value in sorted(report.source.items()))
    lines = ["# Segmentation accuracy", "",
             f"{len(measured)} cases measured, {len(report.failed)} failed; surface tolerance "
             f"{report.tolerance_mm:g} mm; {report.seconds:.1f} s." + (f" Inputs: {source}." if source else ""), "",
             "## Per label", "",
             "Mean ± SD (median) over the cases where the value is finite. Dice = 2|R∩P|/(|R|+|P|); HD95: the larger "
             "of the two directed 95th percentiles of surface distances; MSD: the mean of both directions' surface "
             "distances; NSD: the share of both surfaces within the tolerance of the other; volume difference: "
             "prediction − reference, in % of the reference. Surfaces are the voxels with a face neighbour outside "
             "the mask; distances are in mm between voxel centres (MONAI's definitions). A label empty on both sides "
             "is not counted; empty on one side, Dice and NSD are 0 and distances infinite (left out of the means).",
             "", *_summary_lines(report, label_summary(report))]
    worst = worst_cases(report)
    if worst:
        lines += ["## Worst cases", "", "The cases with the lowest mean Dice over their labels.", ""]
        lines += markdown_table(["Case", "Mean Dice", "Worst label", "Its Dice", "Largest HD95 (mm)"],
                        [[item["case_id"], _number(item["mean_dice"], 3), item["worst_label"],
                          _number(item["worst_dice"], 3), _number(item["largest_hd95_mm"], 2)] for item in worst])
    lines += ["## Plots", ""]
    lines += [f"![{os.path.basename(path)}]({path})\n" for path in plots] or [plots_note or "No plots.", ""]
    lines += ["## Cases", "", *_case_lines(report)]
    if report.failed:
        lines += ["## Failed cases", ""]
        lines += markdown_table(["Case", "Error"], [[case.case_id, case.error] for case in report.failed])
    unpaired = [("References without a prediction", report.reference_only),
                ("Predictions without a reference", report.prediction_only),
                ("Cases not annotated", report.unannotated)]
    if any(ids for _, ids in unpaired):
        lines += ["## Not evaluated", ""]
        lines += [f"- {title} ({len(ids)}): {', '.join(ids)}" for title, ids in unpaired if ids] + [""]
    noted = [case for case in report.cases if case.notes]
    if noted:
        lines += ["## Notes", ""]
        lines += markdown_table(["Case", "Note"], [[case.case_id, note] for case in noted for note in case.notes])
    return "\n".join(lines).rstrip("\n") + "\n"


def _csv_number(value: float | None) -> str:
    if value is None or math.isnan(value):
        return ""
    return "inf" if math.isinf(value) else f"{value:.6g}"


def report_csv(report: EvaluationReport) -> str:
    """One row per case and label (a failed case: one row with its error); empty cells where a value is
    undefined (NaN), ``inf`` where infinite."""
    header = ["case_id", "label_value", "label_name", "status", *MEASURES, "notes", "error", "reference",
              "prediction"]
    rows = []
    for case in report.cases:
        text = ["; ".join(case.notes), case.error, case.reference, case.prediction]
        if case.error:
            rows.append([case.case_id, "", "", "", *([""] * len(MEASURES)), *text])
        for result in case.labels:
            rows.append([case.case_id, str(result.value), result.name,
                         result.status, *(_csv_number(result.measure(measure)) for measure in MEASURES), *text])
    return csv_text(header, rows)


def summary_csv(report: EvaluationReport) -> str:
    """Per label and measure: the statistics of :func:`label_summary`, and the counts of each situation."""
    keys = ("cases", "mean", "sd", "median", "q1", "q3", "min", "max")
    header = ["label_value", "label_name", "measure", *keys, *(status.replace(" ", "_") for status in STATUSES)]
    rows = []
    for item in label_summary(report):
        counts = [str(item["statuses"][status]) for status in STATUSES]
        for measure in MEASURES:
            statistics = item["measures"][measure] or {}
            rows.append([str(item["value"]), item["name"], measure,
                         *(_csv_number(statistics.get(key)) if key != "cases" else str(statistics.get(key, 0))
                           for key in keys), *counts])
    return csv_text(header, rows)


# --- plots ---------------------------------------------------------------------------------------------------


def _figure(width: float, height: float):
    # The object-oriented API without pyplot: no GUI backend is chosen or changed (Slicer has its own).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str) -> None:
    with atomic_target(path, suffix=".png") as temporary:
        figure.savefig(temporary, format="png")


def _distribution_plot(report: EvaluationReport, measure: str, title: str, path: str) -> None:
    names = [label.name for label in report.labels]
    values = [_finite(_label_results(report, label.value), measure) for label in report.labels]
    figure = _figure(max(4.0, 1.2 * len(names) + 1.5), 3.6)
    axes = figure.add_subplot()
    positions = np.arange(1, len(names) + 1)
    shown = [(position, data) for position, data in zip(positions, values) if data]
    if shown:
        axes.boxplot([data for _, data in shown], positions=[position for position, _ in shown], widths=0.5,
                     showfliers=False)
    jitter = np.random.default_rng(0)  # seeded: the same report draws the same picture
    for position, data in shown:
        axes.scatter(position + jitter.uniform(-0.15, 0.15, len(data)), data, s=10, alpha=0.6, zorder=3)
    axes.set_xticks(positions, [f"{name}\n(n={len(data)})" for name, data in zip(names, values)])
    axes.set_title(title)
    axes.grid(axis="y", alpha=0.3)
    _save(figure, path)


def _worst_case_plot(report: EvaluationReport, path: str) -> bool:
    worst = worst_cases(report)
    if not worst:
        return False
    figure = _figure(6.0, 0.35 * len(worst) + 1.2)
    axes = figure.add_subplot()
    axes.barh([item["case_id"] for item in worst][::-1], [item["mean_dice"] for item in worst][::-1])
    axes.set_xlim(0, 1)
    axes.set_xlabel("Mean Dice over labels")
    axes.set_title("Cases with the lowest Dice")
    _save(figure, path)
    return True


def report_plots(report: EvaluationReport, folder: str) -> tuple:
    """``(paths, note)``: PNG plots written into ``folder``, or none and a note saying why."""
    try:
        import matplotlib  # noqa: F401  (optional: some Slicer installs lack it)
    except ImportError:
        return [], "Plots skipped: matplotlib is not installed."
    if not any(not case.error for case in report.cases):
        return [], "No plots: no case was measured."
    os.makedirs(folder, exist_ok=True)
    paths = []
    for measure, title in SUMMARISED:
        paths.append(os.path.join(folder, f"{measure}.png"))
        _distribution_plot(report, measure, _nsd_title(report) if measure == "nsd" else title, paths[-1])
    worst_path = os.path.join(folder, "worst_cases.png")
    if _worst_case_plot(report, worst_path):
        paths.append(worst_path)
    return paths, ""


def _json_safe(value):
    """``value`` with non-finite floats as None (JSON has no NaN or infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def write_report(report: EvaluationReport, folder: str) -> list:
    """Write the report's files into ``folder`` (created when missing), each atomically; returns their paths."""
    summary = {"report": report.to_json(), "summary": label_summary(report),
               "worst_cases": _json_safe(worst_cases(report))}
    texts = [report_csv(report), summary_csv(report)]
    os.makedirs(folder, exist_ok=True)
    plots, note = report_plots(report, os.path.join(folder, PLOT_FOLDER))
    relative = [os.path.relpath(path, folder).replace(os.sep, "/") for path in plots]
    paths = [os.path.join(folder, name) for name in (MARKDOWN_NAME, JSON_NAME, CSV_NAME, SUMMARY_CSV_NAME)]
    write_json_atomically(paths[1], {**summary, "plots": relative, "plots_note": note})
    write_text_atomically(paths[2], texts[0])
    write_text_atomically(paths[3], texts[1])
    # The Markdown, which links the rest, comes last.
    write_text_atomically(paths[0], report_markdown(report, relative, note))
    return paths + plots


def read_report(path: str) -> EvaluationReport:
    """The report of an ``evaluation.json`` (or of the folder holding it)."""
    if os.path.isdir(path):
        path = os.path.join(path, JSON_NAME)
    with open(path, encoding="utf-8") as file:
        return EvaluationReport.from_json(json.load(file)["report"])


# --- model cards ---------------------------------------------------------------------------------------------


def _significant(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}")


def card_metrics(report: EvaluationReport, dataset: str) -> list:
    """The report as a model card's ``metrics`` entries: per label the mean Dice, HD95 (mm), MSD (mm) and NSD
    over the cases where they are finite, each with ``dataset`` (say which data and how many cases)."""
    titles = {"dice": "Dice", "hd95_mm": "HD95 (mm)", "msd_mm": "MSD (mm)", "nsd": _nsd_title(report)}
    entries = []
    for item in label_summary(report):
        for measure, title in titles.items():
            statistics = item["measures"][measure]
            if statistics is not None:
                entries.append({"name": f"{item['name']} {title}", "value": _significant(statistics["mean"]),
                                "dataset": dataset})
    return entries


def default_dataset_name(report: EvaluationReport) -> str:
    """``<reference folder or case list name>, <n> cases``: a dataset text for :func:`card_metrics`."""
    source = report.source.get("cases") or report.source.get("reference") or "evaluation"
    name = os.path.basename(os.path.dirname(source)) if source.lower().endswith(".csv") else os.path.basename(source)
    return f"{name or source}, {sum(not case.error for case in report.cases)} cases"


def add_metrics_to_index(index_path: str, model_id: str, metrics: Sequence[dict]) -> str:
    """Write ``metrics`` into model ``model_id`` of a local registry index file (or a folder holding
    ``index.json``), replacing entries of the same name and dataset; returns the file's path.

    The index is checked (``ModelRegistryLib.index.parse_index``) before it is replaced, atomically, so a
    registry never reads a broken or half-written file; keys keep their order.
    """
    path = os.path.join(index_path, "index.json") if os.path.isdir(index_path) else index_path
    try:
        with open(path, encoding="utf-8-sig") as file:
            document = json.load(file)
    except OSError as error:
        raise EvaluationError(f"cannot read registry index {path}: {error.strerror or error}") from None
    except ValueError as error:
        raise EvaluationError(f"{path} is not valid JSON: {error}") from None
    models = document.get("models") if isinstance(document, dict) else None
    model = next((item for item in models or () if isinstance(item, dict) and item.get("id") == model_id), None)
    if model is None:
        raise EvaluationError(f"model {model_id!r} is not in registry index {path}")
    replaced = {(entry["name"], entry.get("dataset", "")) for entry in metrics}
    kept = [entry for entry in model.get("metrics", [])
            if (entry.get("name"), entry.get("dataset", "")) not in replaced]
    model["metrics"] = kept + [dict(entry) for entry in metrics]
    try:
        parse_index(document, file_url(os.path.abspath(path)))
    except IndexValidationError as error:
        raise EvaluationError(f"the metrics would make {path} invalid: {error}") from None
    write_text_atomically(path, json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    return path

"""``python -m DeepSegmentLib evaluate``: accuracy of predictions against references, as a report.

Every argument is checked before any file is read: a missing folder, a bad label list or tolerance, an
output path that is a file or cannot be written, a model absent from the index to update, and a pairing that
finds no case all stop with one line on standard error and exit code 1. Cases that cannot be measured are
listed in the report; the command fails only when no case could be.

Example (from the DeepSegment folder)::

    python -m DeepSegmentLib evaluate --cases /data/liver/cases.csv --prediction /data/liver/predicted \
        --tolerance 2 --output /data/liver/evaluation
    python -m DeepSegmentLib evaluate --reference refs/ --prediction preds/ --labels 1,2 --output report/ \
        --add-metrics-to my-registry/index.json --model liver-ct --dataset "site B test set, 50 cases"
"""

from __future__ import annotations

import math
import os
import sys

from ModelRegistryLib.index import IndexValidationError
from TrainingDataExportLib.caselist import CaseListError
from TrainingDataExportLib.labelschema import LabelSchemaError

from .evaluation import DEFAULT_TOLERANCE_MM, EvaluationError, check_tolerance
from .evaluation_cohort import EvaluationCancelledError, evaluate_cohort, pair_case_list, pair_folders, parse_labels
from .evaluation_report import (
    add_metrics_to_index,
    card_metrics,
    default_dataset_name,
    label_summary,
    write_report,
)


def add_evaluate_parser(commands) -> None:
    """Add the ``evaluate`` command to the subparsers of DeepSegmentLib's command line."""
    evaluate = commands.add_parser("evaluate", help="measure predictions against references (Dice, HD95, MSD, NSD, "
                                                    "volumes) and write a report")
    references = evaluate.add_mutually_exclusive_group(required=True)
    references.add_argument("--reference", metavar="FOLDER", help="a folder of reference label maps or .seg.nrrd")
    references.add_argument("--cases", metavar="CASES.csv",
                            help="a TrainingDataExport case list: its segmentation column holds the references")
    evaluate.add_argument("--prediction", required=True, metavar="FOLDER",
                          help="a folder of predicted label maps or .seg.nrrd, named after the case ids")
    evaluate.add_argument("--labels", metavar="SCHEMA.json|VALUES",
                          help="a label schema (labels.json) or label values such as 1,2,5 (default: the case "
                               "list's labels.json, else the files' segments or values)")
    evaluate.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE_MM, metavar="MM",
                          help=f"surface tolerance of the normalized surface Dice (default {DEFAULT_TOLERANCE_MM:g})")
    evaluate.add_argument("--no-resample", action="store_true",
                          help="refuse predictions on another grid instead of resampling them (nearest neighbour)")
    evaluate.add_argument("--output", required=True, metavar="FOLDER", help="where the report is written")
    evaluate.add_argument("--add-metrics-to", metavar="INDEX",
                          help="a local registry index (file or folder) whose model --model gets the means as metrics")
    evaluate.add_argument("--model", metavar="ID", help="the model of --add-metrics-to")
    evaluate.add_argument("--dataset", metavar="TEXT",
                          help="the metrics' dataset (default: the source's name and the case count)")


def _writable_folder_problem(folder: str) -> str:
    if os.path.exists(folder):
        if not os.path.isdir(folder):
            return f"--output {folder} is a file, not a folder"
        return "" if os.access(folder, os.W_OK) else f"--output {folder} is not writable"
    parent = os.path.dirname(os.path.abspath(folder))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        return f"--output {folder} cannot be created in {parent}"
    return ""


def _checked_metrics_target(arguments) -> None:
    if arguments.add_metrics_to is None:
        if arguments.model or arguments.dataset:
            raise EvaluationError("--model and --dataset go with --add-metrics-to")
        return
    if not arguments.model:
        raise EvaluationError("--add-metrics-to needs --model, the model whose card gets the metrics")
    # The index is updated with the metrics it already has: a missing model or a broken index fails now.
    add_metrics_to_index(arguments.add_metrics_to, arguments.model, [])


def _progress(fraction: float, message: str) -> None:
    print(f"\r{fraction * 100:5.1f}% {message}".ljust(60), end="", file=sys.stderr, flush=True)


def _summary_line(item: dict) -> str:
    def mean(measure: str, digits: int) -> str:
        statistics = item["measures"][measure]
        if statistics is None or not math.isfinite(statistics["mean"]):
            return "–"
        return f"{statistics['mean']:.{digits}f}"

    return (f"{item['name']} ({item['value']}): Dice {mean('dice', 3)}, HD95 {mean('hd95_mm', 2)} mm, "
            f"MSD {mean('msd_mm', 2)} mm, NSD {mean('nsd', 3)}")


def run_evaluate(arguments) -> int:
    """The ``evaluate`` command; returns the exit code (errors raise, and ``cli.main`` prints them)."""
    check_tolerance(arguments.tolerance)
    labels = parse_labels(arguments.labels)
    problem = _writable_folder_problem(arguments.output)
    if problem:
        raise EvaluationError(problem)
    _checked_metrics_target(arguments)
    if arguments.cases is not None:
        if not os.path.isfile(arguments.cases):
            raise EvaluationError(f"case list not found: {arguments.cases}")
        pairing = pair_case_list(arguments.cases, arguments.prediction)
    else:
        pairing = pair_folders(arguments.reference, arguments.prediction)
    if not pairing.pairs:
        raise EvaluationError(f"no prediction in {arguments.prediction} matches a reference case "
                              f"({len(pairing.reference_only)} references, {len(pairing.prediction_only)} predictions)")
    report = evaluate_cohort(pairing, labels, arguments.tolerance, resample=not arguments.no_resample,
                             progress=_progress)
    print(file=sys.stderr)
    paths = write_report(report, arguments.output)
    measured = len(report.cases) - len(report.failed)
    print(f"{measured} cases measured, {len(report.failed)} failed, "
          f"{len(pairing.reference_only) + len(pairing.prediction_only)} files unpaired")
    for item in label_summary(report):
        print(_summary_line(item))
    print(f"wrote {paths[0]}")
    if arguments.add_metrics_to is not None and measured:
        dataset = arguments.dataset or default_dataset_name(report)
        index = add_metrics_to_index(arguments.add_metrics_to, arguments.model, card_metrics(report, dataset))
        print(f"updated {index}")
    if not measured:
        print(f"error: no case could be measured: {report.failed[0].error}", file=sys.stderr)
        return 1
    return 0


def main_evaluate(arguments) -> int:
    """``run_evaluate`` with its errors as one line on standard error and exit code 1."""
    try:
        return run_evaluate(arguments)
    except (EvaluationError, CaseListError, LabelSchemaError, IndexValidationError, OSError) as error:
        # A case list's problems come one per line: the user gets them all, on one line.
        print("error: " + " ".join(line.strip() for line in str(error).splitlines()), file=sys.stderr)
        return 1
    except (EvaluationCancelledError, KeyboardInterrupt):
        print("\nerror: interrupted", file=sys.stderr)
        return 130


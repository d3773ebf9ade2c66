"""Command line: export a case list as a training set, or check every case against the label schema.

::

    python -m TrainingDataExportLib export --cases cases.csv --schema labels.json --format nnunet --output out \\
        [--folds K] [--test-fraction F] [--seed S] [--spacing X Y Z] [--crop-margin MM] [--compression LEVEL] \\
        [--workers N]
    python -m TrainingDataExportLib check --cases cases.csv --schema labels.json

Progress goes to stderr; a failure prints ``error: ...`` (an export's problems follow, one per line, naming
the offending cases) and exits with status 1. ``check`` exits with 1 when a case has a problem that would
stop an export.

Example::

    >>> import contextlib, io
    >>> with contextlib.redirect_stderr(io.StringIO()) as errors:
    ...     main(["check", "--cases", "missing.csv", "--schema", "missing.json"])
    1
    >>> errors.getvalue().startswith("error: cannot read case list missing.csv")
    True
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .caselist import CaseListError, read_case_list
from .export import ExportCancelledError, ExportError, ExportSettings, export_dataset
from .formats import FORMATS
from .labelschema import LabelSchemaError, case_problems, load_label_schema


class CommandError(Exception):
    """A failure already explained in its message."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m TrainingDataExportLib",
        description="Export an annotation project's cases as training data, or check them against the label schema.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("export", "write the annotated cases as a training set (split by patient) with a dataset card"),
        ("check", "list each case's problems against the label schema"),
    ):
        command = commands.add_parser(name, help=help_text, description=help_text)
        command.add_argument("--cases", required=True, metavar="CASES.csv", help="the case list")
        command.add_argument("--schema", required=True, metavar="SCHEMA.json", help="the label schema")
    export = commands.choices["export"]
    export.add_argument("--format", required=True, choices=FORMATS)
    export.add_argument(
        "--output", required=True, metavar="DIR", help="output folder (new, empty, or an earlier export)"
    )
    export.add_argument("--folds", type=int, default=5, help="cross-validation folds (0: one train/validation split)")
    export.add_argument("--test-fraction", type=float, default=0.2, help="share of patients held out for testing")
    export.add_argument("--seed", type=int, default=0, help="seed of the split")
    export.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"), help="resample to this spacing (mm)")
    export.add_argument("--crop-margin", type=float, metavar="MM", help="crop to the labelled region plus MM")
    export.add_argument("--compression", type=int, default=1, metavar="LEVEL", help="gzip level 0-9 (0: none)")
    export.add_argument("--workers", type=int, default=0, metavar="N", help="cases written in parallel (0: auto)")
    return parser


def _inputs(arguments) -> tuple:
    try:
        cases = read_case_list(arguments.cases)
    except OSError as error:
        raise CommandError(f"cannot read case list {arguments.cases}: {error.strerror or error}") from None
    except CaseListError as error:
        raise CommandError(str(error)) from None
    try:
        labels = load_label_schema(arguments.schema)
    except LabelSchemaError as error:
        raise CommandError(str(error)) from None
    return cases, labels


def _progress(fraction: float, message: str) -> None:
    print(f"[{fraction * 100:3.0f}%] {message}", file=sys.stderr, flush=True)


def _export(arguments) -> int:
    cases, labels = _inputs(arguments)
    settings = ExportSettings(
        format=arguments.format,
        spacing=tuple(arguments.spacing) if arguments.spacing else None,
        crop_margin_mm=arguments.crop_margin,
        compression_level=arguments.compression,
    )
    try:
        report = export_dataset(
            cases,
            labels,
            arguments.output,
            settings,
            folds=arguments.folds,
            test_fraction=arguments.test_fraction,
            seed=arguments.seed,
            workers=arguments.workers,
            progress=_progress,
        )
    except (ExportError, ExportCancelledError) as error:
        raise CommandError(str(error)) from None
    except OSError as error:
        raise CommandError(f"export failed: {error}") from None
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"exported {len(report.written) + len(report.unchanged)} case(s) to {report.output_dir}: "
        f"{len(report.written)} written, {len(report.unchanged)} unchanged, {len(report.skipped)} skipped "
        f"({report.seconds:.1f} s)"
    )
    return 0


def _check(arguments) -> int:
    cases, labels = _inputs(arguments)
    blocking = 0
    for case in cases:
        problems = case_problems(case, labels)
        blocking += any(problem.blocking for problem in problems)
        status = "not annotated" if not case.segmentation else "ok"
        print(f"{case.case_id}: " + ("; ".join(map(str, problems)) if problems else status))
    if blocking:
        print(f"error: {blocking} case(s) have problems that stop an export", file=sys.stderr)
    return 1 if blocking else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    arguments = _parser().parse_args(argv)
    try:
        return _export(arguments) if arguments.command == "export" else _check(arguments)
    except CommandError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

"""Command line: export a case list as a training set, or check every case exactly as an export would.

::

    python -m TrainingDataExportLib export --cases cases.csv --schema labels.json --format nnunet --output out \\
        [--folds K] [--test-fraction F] [--seed S] [--spacing X Y Z] [--crop-margin MM] [--compression LEVEL] \\
        [--workers N] [--dataset-id N] [--dataset-name NAME] [--channel-names NAME [NAME ...]]
    python -m TrainingDataExportLib check --cases cases.csv --schema labels.json [--format F] [--spacing X Y Z]

Progress goes to stderr, one line per case as it is checked and written. Every failure prints one line,
``error: ...`` (an export's problems follow on that line, naming the offending cases), and exits with status
1; arguments are checked before any file is read. ``check`` runs the export's own checks
(:func:`~TrainingDataExportLib.checks.inspect_case`) and exits with 1 when a case has a problem that would
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

import math
import sys
from collections.abc import Sequence

from ModelRegistryLib.commandline import ArgumentParser, one_line

from .caselist import CaseListError, read_case_list
from .checks import inspect_case
from .export import ExportCancelledError, ExportError, ExportSettings, export_dataset
from .labelschema import LabelSchemaError, load_label_schema
from .settings import FORMATS, NNUNET_NORMALIZATION_NAMES

MAX_WORKERS = 64


class CommandError(Exception):
    """A failure already explained in its message."""


def _add_settings_arguments(command, format_required: bool) -> None:
    """The settings that change what an export writes and checks (``check`` takes them too)."""
    command.add_argument("--format", required=format_required, choices=FORMATS,
                         help=None if format_required else "check as for this format (4D sequences: slices2d only)")
    command.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"),
                         help="resample to this spacing (mm)")


def _parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m TrainingDataExportLib",
        description="Export an annotation project's cases as training data, or check them as an export would.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("export", "write the annotated cases as a training set (split by patient) with a dataset card"),
        ("check", "list each case's problems, checked exactly as an export checks them"),
    ):
        command = commands.add_parser(name, help=help_text, description=help_text)
        command.add_argument("--cases", required=True, metavar="CASES.csv", help="the case list")
        command.add_argument("--schema", required=True, metavar="SCHEMA.json", help="the label schema")
        _add_settings_arguments(command, format_required=name == "export")
    export = commands.choices["export"]
    export.add_argument("--output", required=True, metavar="DIR",
                        help="output folder (new, empty, or an earlier export); for nnunet, nnUNet_raw or a "
                             "DatasetNNN_Name folder")
    export.add_argument("--folds", type=int, default=5, help="cross-validation folds (0: none)")
    export.add_argument("--test-fraction", type=float, default=0.2, help="share of patients held out for testing")
    export.add_argument("--seed", type=int, default=0, help="seed of the split")
    export.add_argument("--crop-margin", type=float, metavar="MM", help="crop to the labelled region plus MM")
    export.add_argument("--compression", type=int, default=1, metavar="LEVEL", help="gzip level 0-9 (0: none)")
    export.add_argument("--workers", type=int, default=0, metavar="N", help="cases written in parallel (0: auto)")
    export.add_argument("--dataset-id", type=int, metavar="N", help="nnunet: dataset id, 1-999 (default 1)")
    export.add_argument("--dataset-name", metavar="NAME", help="nnunet: dataset name (default Export)")
    export.add_argument("--channel-names", nargs="+", metavar="NAME",
                        help=f"nnunet: one name per channel ({', '.join(NNUNET_NORMALIZATION_NAMES)}...)")
    return parser


def _argument_problem(arguments) -> str:
    """What is wrong with the arguments themselves (checked before any file is read), or ""."""
    if arguments.spacing is not None and not all(math.isfinite(s) and s > 0 for s in arguments.spacing):
        return f"--spacing takes three positive, finite numbers, not {' '.join(map(str, arguments.spacing))}"
    if arguments.command == "check":
        return "--spacing needs --format: check as for an export in that format" \
            if arguments.spacing and not arguments.format else ""
    if arguments.crop_margin is not None and not (math.isfinite(arguments.crop_margin) and arguments.crop_margin >= 0):
        return f"--crop-margin takes a finite number of mm, 0 or more, not {arguments.crop_margin}"
    if not 0 <= arguments.workers <= MAX_WORKERS:
        return f"--workers takes 0 (one per processor, up to 4) to {MAX_WORKERS}, not {arguments.workers}"
    if arguments.folds < 0:
        return f"--folds takes 0 (no folds) or more, not {arguments.folds}"
    if not (math.isfinite(arguments.test_fraction) and 0 <= arguments.test_fraction < 1):
        return f"--test-fraction takes a number from 0 to below 1, not {arguments.test_fraction}"
    if not 0 <= arguments.compression <= 9:
        return f"--compression takes a gzip level from 0 to 9, not {arguments.compression}"
    if arguments.dataset_id is not None and not 1 <= arguments.dataset_id <= 999:
        return f"--dataset-id takes a number from 1 to 999, not {arguments.dataset_id}"
    return ""


def _settings(arguments) -> ExportSettings | None:
    if arguments.format is None:
        return None
    exporting = arguments.command == "export"
    settings = ExportSettings(
        format=arguments.format,
        spacing=tuple(arguments.spacing) if arguments.spacing else None,
        crop_margin_mm=arguments.crop_margin if exporting else None,
        compression_level=arguments.compression if exporting else 1,
        dataset_id=arguments.dataset_id if exporting else None,
        dataset_name=arguments.dataset_name if exporting else None,
        channel_names=tuple(arguments.channel_names or ()) if exporting else (),
    )
    problems = settings.problems()
    if problems:
        raise CommandError("; ".join(problems))
    return settings


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


def _export(arguments, settings: ExportSettings) -> int:
    cases, labels = _inputs(arguments)
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
        raise CommandError(f"export failed (the next export finishes the folder): {error}") from None
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"exported {len(report.written) + len(report.unchanged)} case(s) to {report.output_dir}: "
        f"{len(report.written)} written, {len(report.unchanged)} unchanged, {len(report.skipped)} skipped "
        f"({report.seconds:.1f} s)"
    )
    return 0


def _check(arguments, settings: ExportSettings | None) -> int:
    cases, labels = _inputs(arguments)
    blocking = 0
    for case in cases:
        result = inspect_case(case, labels, settings)
        blocking += bool(result.blocking)
        status = "not annotated" if not case.segmentation else "ok"
        print(f"{case.case_id}: " + ("; ".join(map(str, result.problems)) if result.problems else status))
    if blocking:
        print(f"error: {blocking} case(s) have problems that stop an export", file=sys.stderr)
    return 1 if blocking else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    try:
        arguments = _parser().parse_args(argv)
    except SystemExit as exit:  # --help, or a bad argument already reported on one line
        return exit.code
    try:
        problem = _argument_problem(arguments)
        if problem:
            raise CommandError(problem)
        settings = _settings(arguments)
        return _export(arguments, settings) if arguments.command == "export" else _check(arguments, settings)
    except CommandError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a failure nobody foresaw is still one line; its type tells where to look
        print(f"error: {type(error).__name__}: {one_line(error)}", file=sys.stderr)
        return 1

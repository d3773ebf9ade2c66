"""``python -m DeepSegmentLib batch``: a model over every case of a case list, a folder of images or of DICOM series.

Progress (cases finished, those running, the time left) goes to standard error on one line; the summary (done,
skipped, failed with reasons, time) to standard output. The exit code is 0 when no case failed, 1 when one did or
the batch could not start (one line on standard error, before anything is written), 130 after Ctrl-C or SIGTERM,
which cancel the run cleanly: the running cases stop, results already computed are written, nothing is left
half-written, and the next run goes on from there.

Example (from the DeepSegment folder)::

    python -m DeepSegmentLib batch --model brain-tissue-demo --images /data/t1 --output /data/t1-tissue
    python -m DeepSegmentLib batch --model liver-ct --cases /data/liver/cases.csv --status "to do" --pre-annotate \
        --output /data/liver/predicted
    python -m DeepSegmentLib batch --model liver-ct --dicom /shared/study --output /shared/liver --ray auto
"""

from __future__ import annotations

import signal
import sys
import threading

from ModelRegistryLib import IndexValidationError, RegistryError, default_cache_dir
from ModelRegistryLib.commandline import one_line
from ModelRegistryLib.jobs import JobError
from TrainingDataExportLib.caselist import STATUSES

from .batch import FAILED, BatchError, BatchSettings, run_batch
from .batch_outputs import DEFAULT_FORMAT, OUTPUT_FORMATS
from .engine import DEFAULT_QUALITY, PRECISIONS, QUALITY_PRESETS


def add_batch_parser(commands) -> None:
    """Add the ``batch`` command to the subparsers of DeepSegmentLib's command line."""
    batch = commands.add_parser("batch", help="segment every case of a case list or a folder, skipping those done")
    batch.add_argument("--model", required=True, metavar="ID[@VERSION]")
    sources = batch.add_mutually_exclusive_group(required=True)
    sources.add_argument("--cases", metavar="CASES.csv", help="a TrainingDataExport case list")
    sources.add_argument("--images", metavar="FOLDER", help="a folder of image files, one case per file")
    sources.add_argument("--dicom", metavar="FOLDER",
                         help="a folder of DICOM series, one case per series (in it or any subfolder)")
    batch.add_argument("--output", required=True, metavar="FOLDER", help="where the results go, one file per case")
    batch.add_argument("--format", default=DEFAULT_FORMAT.lstrip("."),
                       choices=[suffix.lstrip(".") for suffix in OUTPUT_FORMATS],
                       help="the results' file type (default: seg.nrrd, a Slicer segmentation with segment names)")
    batch.add_argument("--case", action="append", default=[], metavar="PATTERN",
                       help="run only cases whose id matches this shell pattern (ct0*); repeatable")
    batch.add_argument("--status", action="append", default=[], choices=STATUSES,
                       help="run only case-list cases with this status; repeatable")
    batch.add_argument("--channel", action="append", default=[], metavar="NAME",
                       help="with --images: files <case>_<NAME>.<ext> are the channels of a case, in this order")
    batch.add_argument("--pre-annotate", action="store_true",
                       help="with --cases: record the results as pre-annotations of cases not annotated yet")
    batch.add_argument("--force", action="store_true", help="run every case, also those whose result is up to date")
    batch.add_argument("--workers", type=int, default=0,
                       help="local worker processes, each holding the model (default: one per GPU, else per core up "
                            "to 4)")
    batch.add_argument("--threads", type=int, default=0, help="PyTorch CPU threads per worker or Ray task")
    batch.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    batch.add_argument("--quality", choices=tuple(QUALITY_PRESETS), default=DEFAULT_QUALITY)
    batch.add_argument("--precision", choices=PRECISIONS, default="auto",
                       help="auto: float16 on CUDA, bfloat16 on CPUs that compute it natively; float32: always")
    batch.add_argument("--index", action="append", default=[], metavar="URL_OR_PATH",
                       help="a registry index to read after the bundled one; repeatable")
    batch.add_argument("--cache-dir", default=None, help=f"model cache folder (default: {default_cache_dir()})")
    batch.add_argument("--ray", default="", metavar="auto|HOST:PORT",
                       help="run on this Ray cluster (inputs and output on storage every node sees)")
    batch.add_argument("--ray-gpus-per-case", type=float, default=None, metavar="G",
                       help="GPUs a case asks Ray for (default: 1 with a CUDA device, else 0)")
    batch.add_argument("--ray-memory-gb", type=float, default=None, metavar="GB", help="memory a case asks Ray for")
    batch.add_argument("--retries", type=int, default=3,
                       help="times Ray runs a case again after its worker or node died (default 3)")


def _settings(arguments) -> BatchSettings:
    from .cli import MAX_THREADS, check_device

    check_device(arguments.device)
    if not 0 <= arguments.threads <= MAX_THREADS or not 0 <= arguments.workers <= MAX_THREADS:
        raise BatchError(f"--threads and --workers must be from 0 (automatic) to {MAX_THREADS}")
    if arguments.channel and not arguments.images:
        raise BatchError("--channel goes with --images")
    return BatchSettings(output_format=arguments.format, device=arguments.device, quality=arguments.quality,
                         precision=arguments.precision, workers=arguments.workers, threads=arguments.threads,
                         patterns=tuple(arguments.case), statuses=tuple(arguments.status),
                         channels=tuple(arguments.channel), pre_annotate=arguments.pre_annotate,
                         force=arguments.force, ray_address=arguments.ray.strip(),
                         ray_gpus_per_task=arguments.ray_gpus_per_case, ray_memory_gb=arguments.ray_memory_gb,
                         retries=arguments.retries)


def _progress(fraction: float, text: str) -> None:
    print(f"\r{fraction * 100:5.1f}% {text}"[:150].ljust(80), end="", file=sys.stderr, flush=True)


def _log(text: str, level: str = "info") -> None:
    print(f"\r{text}".ljust(80), file=sys.stderr, flush=True)


def main_batch(arguments) -> int:
    """The ``batch`` command; returns the exit code (see the module description)."""
    kind, source = next((kind, value) for kind, value in (("cases", arguments.cases), ("images", arguments.images),
                                                            ("dicom", arguments.dicom)) if value)
    cancel = threading.Event()

    def stop(*_) -> None:
        cancel.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C interrupts at once

    previous = {number: signal.signal(number, stop) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        summary = run_batch(arguments.model, kind, source, arguments.output, _settings(arguments),
                            indexes=arguments.index, cache_dir=arguments.cache_dir, progress=_progress, log=_log,
                            cancel=cancel)
    except (ValueError, RegistryError, IndexValidationError, JobError, OSError) as error:
        # BatchError, CaseSourceError and CaseListError are ValueErrors: the batch could not start.
        print(f"\nerror: {one_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nerror: interrupted", file=sys.stderr)
        return 130
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    print(file=sys.stderr)
    print(summary.text())
    print(f"results in {summary.output_dir}")
    if summary.cancelled:
        print("error: interrupted; run the same command again to go on", file=sys.stderr)
        return 130
    failed = summary.of_state(FAILED)
    if failed:
        print(f"error: {len(failed)} of {len(summary.cases)} cases failed", file=sys.stderr)
        return 1
    return 0

"""Command line of DeepSegment: ``python -m DeepSegmentLib run ...`` (run from the DeepSegment folder).

It installs the model from the registry when needed (verified download), segments the inputs in this
process and writes a label map (NIfTI, NRRD, MHA) or a Slicer segmentation (``.seg.nrrd``) chosen by
the output's file name. Failures exit with code 1 and one line on standard error saying why.

Example (from the repository root)::

    cd DeepSegment && python -m DeepSegmentLib run --model brain-tissue-demo --input t1.nii.gz --output seg.seg.nrrd
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence


from ModelRegistryLib import (
    IndexSource,
    IndexValidationError,
    Registry,
    RegistryError,
    bundled_source,
    default_cache_dir,
    user_sources,
)

from .engine import EngineCancelled, EngineError, EngineProgress, segment
from .imageio import read_volume, write_labels
from .package import PackageError, load_package
from .segfile import SegmentInfo


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m DeepSegmentLib", description="Segment volumes with models from the model registry."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="segment input volumes with a model")
    run.add_argument("--model", required=True, metavar="ID[@VERSION]")
    run.add_argument("--input", required=True, action="append", metavar="PATH",
                     help="an input volume (file or DICOM folder), one per model input channel, in order")
    run.add_argument("--output", required=True, metavar="PATH", help=".seg.nrrd, .nii.gz, .nii, .nrrd or .mha")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    run.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch (default: PyTorch's choice)")
    run.add_argument("--index", action="append", default=[], metavar="URL_OR_PATH",
                     help="a registry index to read after the bundled one; repeatable")
    run.add_argument("--cache-dir", default=None, help=f"model cache folder (default: {default_cache_dir()})")
    return parser


def _progress(step: EngineProgress) -> None:
    print(f"\r{step.fraction * 100:5.1f}% {step.stage}".ljust(40), end="", file=sys.stderr, flush=True)


def segment_files(model: str, inputs: Sequence[str], output: str, *, device: str = "auto", threads: int | None = None,
                  indexes: Sequence[str] = (), cache_dir: str | None = None, progress=None) -> dict:
    """The whole run; returns the timings in seconds by stage (``install`` and ``read`` included)."""
    start = time.perf_counter()
    cache_dir = cache_dir or default_cache_dir()
    registry = Registry([bundled_source(), *user_sources(cache_dir), *(IndexSource(i) for i in indexes)], cache_dir)
    registry.refresh()
    installed = registry.ensure_installed(model)
    package = load_package(installed.path)
    installed_at = time.perf_counter()
    images = [read_volume(path) for path in inputs]
    read_at = time.perf_counter()
    result = segment(images, package, device=device, threads=threads, progress=progress)
    segments = [SegmentInfo(label.value, label.name, label.color,
                            label.terminology.slicer_entry() if label.terminology else "") for label in package.labels]
    write_labels(output, result.labels, segments)
    timings = {"install": installed_at - start, "read": read_at - installed_at, **result.timings}
    timings["total"] = time.perf_counter() - start
    return timings


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    try:
        timings = segment_files(arguments.model, arguments.input, arguments.output, device=arguments.device,
                                threads=arguments.threads, indexes=arguments.index, cache_dir=arguments.cache_dir,
                                progress=_progress)
    except (RegistryError, IndexValidationError, PackageError, EngineError, LookupError, ValueError, OSError) as error:
        print(f"\nerror: {error}", file=sys.stderr)
        return 1
    except (EngineCancelled, KeyboardInterrupt):
        print("\nerror: interrupted", file=sys.stderr)
        return 130
    print(file=sys.stderr)
    print(f"wrote {arguments.output}")
    print("timings: " + ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in timings.items()))
    return 0

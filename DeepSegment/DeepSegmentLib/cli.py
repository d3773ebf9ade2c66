"""Command line of DeepSegment: ``python -m DeepSegmentLib run ...`` (run from the DeepSegment folder).

``run`` installs the model from the registry when needed (verified download), segments the inputs in
this process or in the model's container image (``--backend``), and writes a label map (NIfTI, NRRD,
MHA) or a Slicer segmentation (``.seg.nrrd``) chosen by the output's file name. ``image build`` and
``image save`` ship a model package as a container image. Failures exit with code 1 and say why on
standard error.

Example (from the repository root)::

    cd DeepSegment && python -m DeepSegmentLib run --model brain-tissue-demo --input t1.nii.gz --output seg.seg.nrrd
    python -m DeepSegmentLib run --model liver-ct --backend container --parameter quality=fast --input ct.nrrd \
        --output liver.seg.nrrd
"""

from __future__ import annotations

import argparse
import json
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

from .container_backend import DEFAULT_SETTINGS, ContainerSettings, segment_in_container
from .container_image import build_image, save_image
from .container_runtime import ContainerCancelledError, ContainerError, find_runtime
from .engine import (
    DEFAULT_QUALITY,
    PRECISIONS,
    QUALITY_PRESETS,
    EngineCancelled,
    EngineError,
    EngineProgress,
    quality_options,
    segment,
)
from .imageio import read_volume, write_labels
from .package import PackageError, load_package
from .segfile import SegmentInfo

BACKENDS = ("auto", "inprocess", "container")


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
    run.add_argument("--precision", choices=PRECISIONS, default="auto",
                     help="auto: float16 on CUDA, bfloat16 on CPUs that compute it natively; float32: always")
    run.add_argument("--quality", choices=tuple(QUALITY_PRESETS), default=DEFAULT_QUALITY,
                     help="in-process runs: exact runs the model's own windows, overlap and mirroring; accurate"
                          " (default) the same with fewer, larger windows where the network allows and without"
                          " background windows; fast also drops the mirroring and most of the overlap")
    run.add_argument("--index", action="append", default=[], metavar="URL_OR_PATH",
                     help="a registry index to read after the bundled one; repeatable")
    run.add_argument("--cache-dir", default=None, help=f"model cache folder (default: {default_cache_dir()})")
    run.add_argument("--backend", choices=BACKENDS, default="auto",
                     help="inprocess: this Python; container: the model's image; auto: in-process when the model "
                          "version has a package, else its image")
    run.add_argument("--parameter", action="append", default=[], metavar="NAME=VALUE",
                     help="a parameter of the model's image (container backend); repeatable")
    run.add_argument("--runtime", default="auto", help="container runtime: auto, docker, podman or a path")
    run.add_argument("--image-archive", default="", metavar="PATH",
                     help="load the model's image from this archive (docker/podman save) when it is not there yet")
    run.add_argument("--memory-limit", default="", metavar="SIZE", help="container memory limit, such as 8g")
    run.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="stop the container after this")
    run.add_argument("--keep-run-folder", action="store_true", help="keep the container's run folder for inspection")
    image = commands.add_parser("image", help="ship a model package as a container image").add_subparsers(
        dest="image_command", required=True, metavar="IMAGE_COMMAND")
    build = image.add_parser("build", help="build the reference image for a model package; prints the index entry")
    build.add_argument("--package", required=True, metavar="FOLDER", help="the model package (model.json, weights)")
    build.add_argument("--tag", required=True, metavar="NAME:TAG")
    build.add_argument("--base-image", default="", help="replaces the recipe's base image (any image with Python 3.9+)")
    build.add_argument("--pip-packages", default=None, help="what to pip-install on the base ('' for nothing)")
    build.add_argument("--runtime", default="auto", help="auto, docker, podman or a path")
    save = image.add_parser("save", help="write an image archive for offline sites; prints the index entry")
    save.add_argument("--image", required=True, metavar="REFERENCE")
    save.add_argument("--output", required=True, metavar="ARCHIVE.tar")
    save.add_argument("--runtime", default="auto", help="auto, docker, podman or a path")
    return parser


def _progress(step: EngineProgress) -> None:
    print(f"\r{step.fraction * 100:5.1f}% {step.stage}".ljust(40), end="", file=sys.stderr, flush=True)


def parse_parameters(texts: Sequence[str], image) -> dict:
    """``NAME=VALUE`` texts as the image's typed parameter values."""
    if texts and image is None:
        raise ValueError("--parameter applies to a container image; this model version has none")
    declared = {parameter.name: parameter for parameter in (image.parameters if image is not None else ())}
    values = {}
    for text in texts:
        name, separator, value = text.partition("=")
        if not separator:
            raise ValueError(f"--parameter takes NAME=VALUE, not {text!r}")
        if name not in declared:
            raise ValueError(f"Unknown parameter {name!r}; the image takes {', '.join(declared) or 'none'}")
        values[name] = declared[name].parse(value)
    return values


def segment_files(model: str, inputs: Sequence[str], output: str, *, device: str = "auto", threads: int | None = None,
                  precision: str = "auto", quality: str = DEFAULT_QUALITY, indexes: Sequence[str] = (),
                  cache_dir: str | None = None, backend: str = "auto",
                  parameters: Sequence[str] = (), container: ContainerSettings = DEFAULT_SETTINGS,
                  image_archive: str = "", progress=None, log=None) -> dict:
    """The whole run; returns the timings in seconds by stage (``install`` and ``read`` included)."""
    start = time.perf_counter()
    cache_dir = cache_dir or default_cache_dir()
    registry = Registry([bundled_source(), *user_sources(cache_dir), *(IndexSource(i) for i in indexes)], cache_dir)
    registry.refresh()
    entry, version = registry.resolve(model)
    backend = version.choose_backend(backend)
    values = parse_parameters(parameters, version.image if backend == "container" else None)
    if backend == "inprocess":
        package = load_package(registry.ensure_installed(model).path)
        labels = package.labels
    else:
        labels = entry.labels
    installed_at = time.perf_counter()
    images = [read_volume(path) for path in inputs]
    read_at = time.perf_counter()
    if backend == "inprocess":
        result = segment(images, package, device=device, threads=threads, precision=precision, progress=progress,
                         **quality_options(package, quality))
    else:
        result = segment_in_container(images, entry, version, parameters=values, device=device, archive=image_archive,
                                      download_folder=cache_dir, settings=container, progress=progress, log=log)
    segments = [SegmentInfo(label.value, label.name, label.color,
                            label.terminology.slicer_entry() if label.terminology else "") for label in labels]
    write_labels(output, result.labels, segments)
    timings = {"install": installed_at - start, "read": read_at - installed_at, **result.timings}
    timings["total"] = time.perf_counter() - start
    return timings


def _log(line: str) -> None:
    print(f"\r{line}".ljust(40), file=sys.stderr, flush=True)


def _image_command(arguments) -> int:
    runtime = find_runtime(arguments.runtime)
    if arguments.image_command == "build":
        built = build_image(runtime, arguments.package, arguments.tag, base_image=arguments.base_image,
                            pip_packages=arguments.pip_packages, log=_log)
        print(json.dumps(built.index_entry(), indent=2))
    else:
        print(json.dumps({"archive": save_image(runtime, arguments.image, arguments.output)}, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    try:
        if arguments.command == "image":
            return _image_command(arguments)
        container = ContainerSettings(runtime=arguments.runtime, memory_limit=arguments.memory_limit,
                                      timeout=arguments.timeout, keep_run_folders=arguments.keep_run_folder)
        timings = segment_files(arguments.model, arguments.input, arguments.output, device=arguments.device,
                                threads=arguments.threads, precision=arguments.precision,
                                quality=arguments.quality, indexes=arguments.index,
                                cache_dir=arguments.cache_dir,
                                backend=arguments.backend, parameters=arguments.parameter, container=container,
                                image_archive=arguments.image_archive, progress=_progress, log=_log)
    except (RegistryError, IndexValidationError, PackageError, EngineError, ContainerError, LookupError, ValueError,
            OSError) as error:
        print(f"\nerror: {error}", file=sys.stderr)
        return 1
    except (EngineCancelled, ContainerCancelledError, KeyboardInterrupt):
        print("\nerror: interrupted", file=sys.stderr)
        return 130
    print(file=sys.stderr)
    print(f"wrote {arguments.output}")
    print("timings: " + ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in timings.items()))
    return 0

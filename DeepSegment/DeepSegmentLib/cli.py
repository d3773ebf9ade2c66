"""Command line of DeepSegment: ``python -m DeepSegmentLib run ...`` (run from the DeepSegment folder).

``run`` installs the model from the registry when needed (verified download), segments the inputs in
this process or in the model's container image (``--backend``), and writes a label map (NIfTI, NRRD,
MHA) or a Slicer segmentation (``.seg.nrrd``) chosen by the output's file name, atomically. ``batch`` runs a
model over every case of a case list or a folder, here or on a Ray cluster (see ``batch_cli``). ``image build``
and ``image save`` ship a model package as a container image; ``evaluate`` measures predictions against
references and writes a report (see ``evaluation_cli``); ``stream`` segments OpenIGTLink image streams
live with a 2D model until Ctrl-C or SIGTERM (``stream.py``); ``train`` trains a model from an export or a case
list into the registry (see ``training_cli``). Every failure exits with code 1 and one line
on standard error saying why; the arguments (inputs, output type and folder, threads, device, timeout,
parameters) are checked before any work, so that a typo is not found after a long inference.

Example (from the repository root)::

    cd DeepSegment && python -m DeepSegmentLib run --model brain-tissue-demo --input t1.nii.gz --output seg.seg.nrrd
    python -m DeepSegmentLib run --model liver-ct --backend container --parameter quality=fast --input ct.nrrd \
        --output liver.seg.nrrd
    python -m DeepSegmentLib stream --model us-bone-2d --connect 127.0.0.1:18944 --listen 18945 --threads 2
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import signal
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
from ModelRegistryLib.commandline import ArgumentParser, one_line

from .batch_cli import add_batch_parser, main_batch
from .container_backend import DEFAULT_SETTINGS, ContainerSettings, segment_in_container
from .container_image import build_image, save_image
from .container_runtime import ContainerCancelledError, ContainerError, find_runtime
from .engine import DEFAULT_QUALITY, PRECISIONS, QUALITY_PRESETS, EngineCancelled, EngineError, EngineProgress
from .evaluation_cli import add_evaluate_parser, main_evaluate
from .frames import FrameSegmenter
from .imageio import check_output_path, read_volume, write_labels
from .package import PackageError, load_package
from .runtimes import RunOptions, RuntimeDependencyError, run_model
from .segfile import SegmentInfo
from .training_cli import add_train_parser, main_train
from .stream import (
    DEFAULT_OUTPUT_DEVICE,
    DEFAULT_REPORT_SECONDS,
    StreamError,
    StreamServer,
    bind_listener,
    parse_address,
)

BACKENDS = ("auto", "inprocess", "container")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$", re.IGNORECASE)
MAX_THREADS = 1024


def _parser() -> ArgumentParser:
    parser = ArgumentParser(
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
    add_batch_parser(commands)
    add_evaluate_parser(commands)
    _add_stream_parser(commands)
    add_train_parser(commands)
    return parser


def check_run_arguments(arguments) -> None:
    """Raise ``ValueError`` (one line) for ``run`` arguments that cannot work, before anything is installed,
    read or computed."""
    for path in arguments.input:
        if not os.path.exists(path):
            raise ValueError(f"Input not found: {path}")
    check_output_path(arguments.output)
    if arguments.threads is not None and not 1 <= arguments.threads <= MAX_THREADS:
        raise ValueError(f"--threads must be from 1 to {MAX_THREADS}, not {arguments.threads}")
    check_device(arguments.device)
    if arguments.timeout is not None and not (math.isfinite(arguments.timeout) and arguments.timeout > 0):
        raise ValueError(f"--timeout must be a positive number of seconds, not {arguments.timeout}")
    for text in arguments.parameter:
        if "=" not in text:
            raise ValueError(f"--parameter takes NAME=VALUE, not {text!r}")
    if arguments.image_archive and not os.path.isfile(arguments.image_archive):
        raise ValueError(f"Image archive not found: {arguments.image_archive}")
    if arguments.cache_dir and os.path.exists(arguments.cache_dir) and not os.path.isdir(arguments.cache_dir):
        raise ValueError(f"--cache-dir {arguments.cache_dir} is not a folder")


def check_device(device: str) -> None:
    """Raise ``ValueError`` (one line) for a device that is none of auto, cpu, cuda, cuda:N and mps."""
    if not _DEVICE.match(device.strip()):
        raise ValueError(f"Unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps")


class _Terminal:
    """Progress on one line of standard error, rewritten in place; anything else printed gets a line of its own,
    so that a failure is exactly one line."""

    def __init__(self) -> None:
        self.line_open = False

    def progress(self, step: EngineProgress) -> None:
        print(f"\r{step.fraction * 100:5.1f}% {step.stage}".ljust(40), end="", file=sys.stderr, flush=True)
        self.line_open = True

    def log(self, line: str) -> None:
        print(f"\r{line}".ljust(40), file=sys.stderr, flush=True)
        self.line_open = False

    def install_progress(self, step) -> None:
        """The model's install: only how a file the publisher gives no sha256 for was checked is shown, as a warning."""
        if step.stage == "trust":
            self.log(f"warning: {step.text}")

    def end_line(self) -> None:
        if self.line_open:
            print(file=sys.stderr)
            self.line_open = False

    def error(self, message: str) -> None:
        self.end_line()
        print(f"error: {message}", file=sys.stderr)


def _add_stream_parser(commands) -> None:
    stream = commands.add_parser("stream", help="segment OpenIGTLink image streams live with a 2D model")
    stream.add_argument("--model", required=True, metavar="ID[@VERSION]", help="a 2D model (dimensions 2)")
    stream.add_argument("--listen", metavar="[HOST:]PORT",
                        help="accept OpenIGTLink clients on this port (host 127.0.0.1 unless given; port 0: any)")
    stream.add_argument("--connect", metavar="HOST:PORT",
                        help="take frames from this OpenIGTLink server (such as PLUS); with --listen the label"
                             " maps go to the listening clients, else back to it")
    stream.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    stream.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch (default: PyTorch's choice)")
    stream.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: float16 on CUDA, bfloat16 on CPUs that compute it natively; float32: always")
    stream.add_argument("--quality", choices=tuple(QUALITY_PRESETS), default="fast",
                        help="fast (default): no mirroring; accurate: the model's mirroring (slower)")
    stream.add_argument("--output-device", default=DEFAULT_OUTPUT_DEVICE, metavar="NAME",
                        help="device name of the replies; {device} is the frame's (default: %(default)s)")
    stream.add_argument("--report-interval", type=float, default=DEFAULT_REPORT_SECONDS, metavar="SECONDS",
                        help="log frames per second, latency and drops this often while frames arrive (0: only"
                             " at exit)")
    stream.add_argument("--index", action="append", default=[], metavar="URL_OR_PATH",
                        help="a registry index to read after the bundled one; repeatable")
    stream.add_argument("--cache-dir", default=None, help=f"model cache folder (default: {default_cache_dir()})")


def _stream_command(arguments) -> int:
    """Serve until Ctrl-C or SIGTERM; the port is bound before the model loads, so a busy port fails at once."""
    if not (arguments.listen or arguments.connect):
        raise ValueError("stream needs --listen PORT, --connect HOST:PORT or both")
    if arguments.report_interval < 0 or (arguments.threads is not None and arguments.threads < 1):
        raise ValueError("--report-interval must be 0 or more and --threads 1 or more")
    listen = parse_address(arguments.listen, "127.0.0.1", "--listen") if arguments.listen else None
    connect = parse_address(arguments.connect, None, "--connect") if arguments.connect else None
    if importlib.util.find_spec("pyigtl") is None:
        raise ValueError("the stream server needs the pyigtl package (pip install pyigtl)")
    listener = bind_listener(*listen) if listen else None
    try:
        registry = open_registry(arguments.index, arguments.cache_dir)
        package = load_package(registry.ensure_installed(arguments.model).path)
        segmenter = FrameSegmenter(package, device=arguments.device, threads=arguments.threads,
                                   precision=arguments.precision, quality=arguments.quality)
        began = time.perf_counter()
        segmenter.warm_up()
        _stream_log(f"{arguments.model} ready on {segmenter.compute.description} ({segmenter.precision}, warm-up"
                    f" {time.perf_counter() - began:.2f} s)")
    except BaseException:
        if listener is not None:
            listener.close()
        raise
    # The network runs on this thread, which loaded and warmed it up (see StreamServer.start).
    server = StreamServer(segmenter, output_device=arguments.output_device, log=_stream_log,
                          report_seconds=arguments.report_interval).start(inference_thread=False)
    previous = signal.signal(signal.SIGTERM, lambda *_: server.request_stop())
    try:
        if listener is not None:
            server.listen(listener)
        if connect:
            server.connect(*connect, relay=listener is not None)
        server.serve()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        statistics = server.stop()
    _stream_log(f"stopped: {statistics.summary()}")
    return 0


def _stream_log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


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


def open_registry(indexes: Sequence[str], cache_dir: str | None) -> Registry:
    """The registry of the bundled index, the user's sources and ``indexes``, read afresh (or from its cache)."""
    cache_dir = cache_dir or default_cache_dir()
    registry = Registry([bundled_source(), *user_sources(cache_dir), *(IndexSource(i) for i in indexes)], cache_dir)
    registry.refresh()
    return registry


def segment_files(model: str, inputs: Sequence[str], output: str, *, device: str = "auto", threads: int | None = None,
                  precision: str = "auto", quality: str = DEFAULT_QUALITY, indexes: Sequence[str] = (),
                  cache_dir: str | None = None, backend: str = "auto",
                  parameters: Sequence[str] = (), container: ContainerSettings = DEFAULT_SETTINGS,
                  image_archive: str = "", progress=None, log=None, install_progress=None) -> dict:
    """The whole run; returns the timings in seconds by stage (``install`` and ``read`` included).

    In this process the version's runtime runs it (``DeepSegmentLib.runtimes``); ``quality`` is a preset of
    ``engine.QUALITY_PRESETS``. ``install_progress`` gets the model's install steps (how unverified files were
    checked among them).
    """
    start = time.perf_counter()
    cache_dir = cache_dir or default_cache_dir()
    registry = open_registry(indexes, cache_dir)
    entry, version = registry.resolve(model)
    backend = version.choose_backend(backend)
    values = parse_parameters(parameters, version.image if backend == "container" else None)
    installed = registry.ensure_installed(model, progress=install_progress) if backend == "inprocess" else None
    installed_at = time.perf_counter()
    images = [read_volume(path) for path in inputs]
    read_at = time.perf_counter()
    if backend == "inprocess":
        run = run_model(installed, images, runtime=version.runtime, device=device,
                        options=RunOptions(quality=quality, threads=threads, precision=precision), progress=progress)
        labels, result = run.labels, run.result
    else:
        labels = entry.labels
        result = segment_in_container(images, entry, version, parameters=values, device=device, archive=image_archive,
                                      download_folder=cache_dir, settings=container, progress=progress, log=log)
    segments = [SegmentInfo(label.value, label.name, label.color,
                            label.terminology.slicer_entry() if label.terminology else "") for label in labels]
    write_labels(output, result.labels, segments)
    timings = {"install": installed_at - start, "read": read_at - installed_at, **result.timings}
    timings["total"] = time.perf_counter() - start
    return timings


def _image_command(arguments, log) -> int:
    runtime = find_runtime(arguments.runtime)
    if arguments.image_command == "build":
        built = build_image(runtime, arguments.package, arguments.tag, base_image=arguments.base_image,
                            pip_packages=arguments.pip_packages, log=log)
        print(json.dumps(built.index_entry(), indent=2))
    else:
        print(json.dumps({"archive": save_image(runtime, arguments.image, arguments.output)}, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        arguments = _parser().parse_args(argv)
    except SystemExit as exit:  # --help, or a bad argument already reported on one line
        return exit.code
    terminal = _Terminal()
    if arguments.command == "evaluate":
        return main_evaluate(arguments)
    if arguments.command == "batch":
        return main_batch(arguments)
    if arguments.command == "train":
        return main_train(arguments)
    try:
        if arguments.command == "image":
            return _image_command(arguments, terminal.log)
        if arguments.command == "stream":
            return _stream_command(arguments)
        check_run_arguments(arguments)
        container = ContainerSettings(runtime=arguments.runtime, memory_limit=arguments.memory_limit,
                                      timeout=arguments.timeout, keep_run_folders=arguments.keep_run_folder)
        timings = segment_files(arguments.model, arguments.input, arguments.output, device=arguments.device,
                                threads=arguments.threads, precision=arguments.precision,
                                quality=arguments.quality, indexes=arguments.index,
                                cache_dir=arguments.cache_dir,
                                backend=arguments.backend, parameters=arguments.parameter, container=container,
                                image_archive=arguments.image_archive, progress=terminal.progress, log=terminal.log,
                                install_progress=terminal.install_progress)
    except (RegistryError, IndexValidationError, PackageError, EngineError, ContainerError, StreamError, LookupError,
            ValueError, OSError, RuntimeDependencyError) as error:
        terminal.error(one_line(error))
        return 1
    except (EngineCancelled, ContainerCancelledError, KeyboardInterrupt):
        terminal.error("interrupted")
        return 130
    except Exception as error:  # a failure nobody foresaw is still one line; its type tells where to look
        terminal.error(f"{type(error).__name__}: {one_line(error)}")
        return 1
    terminal.end_line()
    print(f"wrote {arguments.output}")
    print("timings: " + ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in timings.items()))
    return 0

"""Segmenting with a registry model's container image: the host side of the container contract.

``segment_in_container`` gets the image (already there, loaded from its archive or pulled by digest),
writes the inputs and ``request.json`` into a fresh run folder, runs the container with no network,
read-only inputs and only the output folder writable, follows its progress, and checks what comes
back: a ``result.json`` that says ``ok`` and a label map on exactly the first input's voxel grid whose
values are the registry's labels. Anything else raises ContainerError with the container's own words.
The run folder is removed afterwards unless the settings keep it.

Example (needs a container runtime and the image)::

    entry, version = registry.resolve("liver-ct@1.2.0")   # a ModelRegistryLib Registry
    result = segment_in_container([ct_image], entry, version, parameters={"quality": "fast"})
    result.labels  # a SimpleITK label map on ct_image's grid
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import SimpleITK as sitk
from ModelRegistryLib import download_file
from ModelRegistryLib.files import write_json_atomically

from TrainingDataExportLib.imagecheck import ImageFileError
from TrainingDataExportLib.imagefiles import read_image, write_image

from .container_contract import (
    INPUT_MOUNT,
    OUTPUT_MOUNT,
    ContractError,
    RunRequest,
    REQUEST_FILE,
    parse_progress,
    read_result,
)
from .container_runtime import (
    UNPRIVILEGED_USER,
    ContainerError,
    ContainerRunError,
    ContainerRuntime,
    find_runtime,
    new_container_name,
)
from .engine import EngineProgress, SegmentationResult
from .geometry import LabelMapError, checked_label_map

# Share of the progress bar for each step; the container's own progress fills the middle.
_IMAGE_SHARE, _INPUT_SHARE, _RESULT_SHARE = 0.1, 0.05, 0.05


@dataclass(frozen=True)
class ContainerSettings:
    """How containers run: ``runtime`` (auto, docker, podman or a path), an optional ``memory_limit``
    such as ``8g``, a ``timeout`` in seconds (None: no limit), the folder run folders are made in
    (empty: the system's temporary folder) and whether run folders are kept for inspection."""

    runtime: str = "auto"
    memory_limit: str = ""
    timeout: float | None = None
    run_folder: str = ""
    keep_run_folders: bool = False


DEFAULT_SETTINGS = ContainerSettings()


def ensure_image(runtime: ContainerRuntime, image, archive: str = "", download_folder: str = "",
                 log: Callable[[str], None] | None = None, cancel: threading.Event | None = None) -> str:
    """A reference that runs exactly ``image`` (a registry ContainerImage): the local copy when there is
    one, else the image loaded from ``archive`` (or from the registry's archive, downloaded and verified
    into ``download_folder``), else the image pulled by digest. Raises ContainerError when what was
    loaded or pulled is not the image the registry names."""
    wanted = {image.digest} | ({image.id} if image.id else set())
    present = _reference_to(runtime, (image.reference, image.id), wanted)
    if present:
        return present
    downloaded = ""
    if not archive and image.archive is not None and download_folder:
        downloaded = archive = os.path.join(download_folder, f"{image.archive.sha256}.tar")
        if log is not None:
            log(f"Downloading the image archive {image.archive.url}")
        download_file(image.archive.url, archive, sha256=image.archive.sha256, size=image.archive.size,
                      cancel=cancel)
    if archive:
        try:
            loaded = runtime.load(archive, log, cancel)
        finally:
            if downloaded:  # the runtime's store holds the image now; the archive only takes space
                os.remove(downloaded)
        present = _reference_to(runtime, (*loaded, image.id), wanted)
        if present:
            return present
        raise ContainerError(f"The image archive {os.path.basename(archive)} holds {', '.join(loaded) or 'no image'}"
                             f", not {image.reference}: its digest does not match the registry's.")
    runtime.pull(image.reference, log, cancel)
    if not runtime.image_identities(image.reference) & wanted:
        raise ContainerError(f"Pulling {image.reference} gave an image with another digest than the registry's.")
    return image.reference


def _reference_to(runtime: ContainerRuntime, references, wanted: set) -> str:
    """The first of ``references`` naming a local image with one of the ``wanted`` digests, else ``""``."""
    return next((r for r in references if r and runtime.image_identities(r) & wanted), "")


# Runtimes (executables) this process has removed orphan containers from.
_CLEANED_RUNTIMES: set = set()


def _remove_orphans_once(runtime: ContainerRuntime, log: Callable[[str], None] | None) -> None:
    """Remove the containers that killed processes left running, at this process's first run with ``runtime``."""
    if runtime.executable in _CLEANED_RUNTIMES:
        return
    _CLEANED_RUNTIMES.add(runtime.executable)
    removed = runtime.remove_orphan_containers()
    if removed and log is not None:
        log(f"Removed {len(removed)} container(s) whose run had been stopped by force: {', '.join(removed)}")


def _prepare_run_folder(images: Sequence, input_names: Sequence[str], request_fields: dict,
                        parent: str) -> tuple:
    """A new run folder holding input/ (volumes and request.json) and an empty, writable output/."""
    if parent:
        os.makedirs(parent, exist_ok=True)
    run_folder = tempfile.mkdtemp(prefix="deepsegment-run-", dir=parent or None)
    input_folder, output_folder = os.path.join(run_folder, "input"), os.path.join(run_folder, "output")
    os.mkdir(input_folder)
    os.mkdir(output_folder)
    inputs = []
    for number, (image, name) in enumerate(zip(images, input_names)):
        file = f"input-{number}.nrrd"
        write_image(image, os.path.join(input_folder, file), compression_level=0)
        inputs.append((name, file))
    write_json_atomically(os.path.join(input_folder, REQUEST_FILE),
                          RunRequest(inputs=tuple(inputs), **request_fields).to_json())
    if hasattr(os, "getuid") and os.getuid() == 0:
        # As root the container runs as nobody: it may read the inputs and write only the output folder.
        for folder in (run_folder, input_folder):
            os.chmod(folder, 0o755)
        for name in os.listdir(input_folder):
            os.chmod(os.path.join(input_folder, name), 0o644)
        os.chown(output_folder, *UNPRIVILEGED_USER)
    return run_folder, input_folder, output_folder


def _checked_labels(output_folder: str, label_map: str, reference: sitk.Image, label_values) -> tuple:
    """The label map on ``reference``'s exact grid and the label values it holds (0 left out)."""
    path = os.path.join(output_folder, label_map)
    if not os.path.isfile(path):
        raise ContractError(f"the label map {label_map} named by result.json is missing")
    try:
        labels = read_image(path)
    except ImageFileError as error:
        raise ContractError(f"the label map {label_map} cannot be used: {error}") from error
    try:
        return checked_label_map(labels, reference, label_values, lister="the registry")
    except LabelMapError as error:
        raise ContractError(str(error).replace("the label map", f"the label map {label_map}", 1)) from error


def segment_in_container(
    images: Sequence,
    entry,
    version,
    *,
    parameters: dict | None = None,
    device: str = "auto",
    archive: str = "",
    download_folder: str = "",
    settings: ContainerSettings = DEFAULT_SETTINGS,
    runtime: ContainerRuntime | None = None,
    progress: Callable[[EngineProgress], None] | None = None,
    log: Callable[[str], None] | None = None,
    cancel: threading.Event | None = None,
) -> SegmentationResult:
    """Segment ``images`` (SimpleITK volumes, one per model input) with the image of ``version`` of the
    registry model ``entry`` (ModelRegistryLib ``ModelEntry`` and ``ModelVersion``).

    ``parameters`` are checked against the image's declared parameters (defaults fill the rest);
    ``device`` is ``auto`` (the GPU when the runtime passes one through), ``cpu`` or ``cuda``; the
    label map may hold only the entry's label values (any, when it lists none); ``archive`` is an image archive to
    load when the image is not there yet, else the registry's archive is downloaded into
    ``download_folder`` (when given), else the image is pulled. Raises ContainerError (runtime
    missing, image problem, container failure, malformed or misplaced result), ContainerTimeoutError
    or ContainerCancelledError; nothing is left running and the run folder is removed either way.
    """
    image = version.image
    if image is None:
        offers = ", ".join(version.backends)
        raise ValueError(f"{entry.id} {version.version} has no container image: it offers {offers}")
    input_names = entry.input_names
    label_values = [label.value for label in entry.labels] or None
    images = list(images)
    if len(images) != len(input_names) or not images:
        raise ValueError(f"The model takes {len(input_names)} input volume(s); {len(images)} given")
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"A container runs on 'auto', 'cpu' or 'cuda', not {device!r}")
    values = image.parameter_values(parameters or {})
    report = progress or (lambda step: None)
    timings = {}
    start = time.perf_counter()
    report(EngineProgress(0.0, "finding the container runtime"))
    runtime = runtime or find_runtime(settings.runtime)
    _remove_orphans_once(runtime, log)
    use_gpu = device != "cpu" and (device != "auto" or bool(runtime.gpu_arguments))
    report(EngineProgress(0.01, "getting the image"))

    def image_log(line: str) -> None:  # the runtime's pull and load lines, shown as they come
        report(EngineProgress(0.01, f"getting the image: {line}"))
        if log is not None:
            log(line)

    reference = ensure_image(runtime, image, archive, download_folder, image_log, cancel)
    timings["image"] = time.perf_counter() - start
    report(EngineProgress(_IMAGE_SHARE, "writing the inputs"))
    # With GPUs passed through on "auto", the container picks: its PyTorch may still lack CUDA.
    container_device = "cpu" if not use_gpu else ("auto" if device == "auto" else "cuda")
    request = {"model_id": entry.id, "model_version": version.version, "parameters": values,
               "device": container_device}
    run_folder, input_folder, output_folder = _prepare_run_folder(images, input_names, request, settings.run_folder)
    try:
        timings["inputs"] = time.perf_counter() - start - timings["image"]
        name = new_container_name()
        arguments = runtime.run_arguments(
            reference, [(input_folder, INPUT_MOUNT, False), (output_folder, OUTPUT_MOUNT, True)], name=name,
            gpu=use_gpu, memory_limit=settings.memory_limit or None, environment={"PYTHONUNBUFFERED": "1"},
        )
        container_share = 1.0 - _IMAGE_SHARE - _INPUT_SHARE - _RESULT_SHARE

        def on_line(line: str) -> None:
            step = parse_progress(line)
            if step is None:
                if log is not None:
                    log(line)
            else:
                report(EngineProgress(_IMAGE_SHARE + _INPUT_SHARE + container_share * step[0], step[1]))

        report(EngineProgress(_IMAGE_SHARE + _INPUT_SHARE, f"starting the container ({runtime.name})"))
        container_start = time.perf_counter()
        exit_code, output = runtime.run(arguments, name=name, on_line=on_line, cancel=cancel,
                                        timeout=settings.timeout)
        timings["container"] = time.perf_counter() - container_start
        report(EngineProgress(1.0 - _RESULT_SHARE, "reading the result"))
        labels, present, messages = _read_outcome(exit_code, output, output_folder, images[0], label_values)
    finally:
        if settings.keep_run_folders:
            if log is not None:
                log(f"Run folder kept: {run_folder}")
        else:
            shutil.rmtree(run_folder, ignore_errors=True)
    timings["total"] = time.perf_counter() - start
    report(EngineProgress(1.0, "done"))
    where = f"{runtime.name} container, {'GPU' if use_gpu else 'CPU'}"
    return SegmentationResult(labels=labels, label_values=present, timings=timings, device=where, messages=messages)


def _read_outcome(exit_code: int, output: str, output_folder: str, reference: sitk.Image, label_values):
    """The checked label map, its label values and the messages of a finished container, or ContainerRunError
    saying what went wrong."""
    try:
        result = read_result(output_folder)
    except ContractError as error:
        if exit_code != 0:
            raise ContainerRunError(f"The container failed (exit code {exit_code}):\n{output}", exit_code,
                                    output) from error
        raise ContainerRunError(f"The container ended without a valid result ({error}).\n{output}", exit_code,
                                output) from error
    if exit_code != 0 or result.status != "ok":
        reason = "\n".join(result.messages) or output
        raise ContainerRunError(f"The container failed (exit code {exit_code}): {reason}", exit_code, output)
    try:
        return (*_checked_labels(output_folder, result.label_map, reference, label_values), result.messages)
    except ContractError as error:
        raise ContainerRunError(f"The container's result was rejected: {error}", exit_code, output) from error

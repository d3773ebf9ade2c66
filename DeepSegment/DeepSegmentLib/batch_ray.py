"""Batch runs on a Ray cluster: one Ray task per case, results written into the output folder on shared storage.

``ray`` is an optional dependency: it is imported only when a batch is asked to run on a cluster (``--ray auto`` or
``--ray HOST:PORT``; the panel's cluster address), and its absence is then one clear error.

- **The cluster** must see the inputs and the output folder at the same paths as this computer (shared storage),
  and its nodes need a Python of the same version with ``ray``, PyTorch, NumPy and SimpleITK. The extension's own
  code (``DeepSegmentLib``, ``ModelRegistryLib``, ``TrainingDataExportLib``) travels with the job (Ray's
  ``runtime_env`` ``py_modules``), and so does the model: its installed folder is put once into Ray's object store
  and unpacked on each node into ``<temp>/slicer-deeplearning-ray-models/<digest>`` (atomically: a staging folder
  renamed into place), then kept loaded by each Ray worker process across the cases it runs.
- **A task per case** (:func:`segment_case_task`) does what a local run does for a case, with the same functions:
  hash the inputs and skip the case if its result is up to date, read it, segment it through the model service's
  seam, write the result and its record atomically. The result files are therefore the same bytes as a local run's.
- **Resources**: each task asks for ``threads`` CPUs (default 1), a GPU when the device is CUDA (or
  ``ray_gpus_per_task``) and ``ray_memory_gb`` of memory when given, so Ray places cases where they fit.
- **Failures**: a task whose worker or node dies is run again by Ray (``retries`` times, default 3); a case whose
  model or input fails is reported with its reason and not run again (it would fail again). Cancel cancels every
  task (killing the running ones); temporary files of writes cut short are removed afterwards.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import threading
import time
import zipfile
from dataclasses import replace

from ModelRegistryLib.archive import extract_archive
from ModelRegistryLib.files import make_temporary_folder

from .batch import (
    DONE,
    FAILED,
    NOT_RUN,
    SKIPPED,
    BatchError,
    BatchPlan,
    BatchSettings,
    CaseOutcome,
    BatchProgress,
    case_record,
    fingerprint_of,
)
from .batch_cases import BatchCase
from .batch_outputs import is_up_to_date, output_path
from .batch_worker import segment_case_files

RAY_MISSING = ("Running on a Ray cluster needs the ray package in this Python (pip install ray) and on the "
               "cluster's nodes")
MODEL_CACHE_FOLDER = "slicer-deeplearning-ray-models"
_WAIT_SECONDS = 0.2
_CANCEL_WAIT_SECONDS = 30.0
_GIB = 1024**3


def ray_device(settings: BatchSettings) -> str:
    """The device a case runs on in a Ray task: ``cuda`` (the GPU Ray assigned it) or ``cpu``."""
    request = settings.device.strip().lower()
    if request == "mps":
        raise BatchError("Ray clusters run models on CPUs or CUDA GPUs, not on Apple's MPS")
    gpus = settings.ray_gpus_per_task if settings.ray_gpus_per_task is not None else \
        (1 if request.startswith("cuda") else 0)
    return "cuda" if gpus else "cpu"


def _import_ray():
    try:
        import ray
    except ImportError:
        raise BatchError(RAY_MISSING) from None
    return ray


def code_folders() -> list:
    """The packages a Ray worker needs to run a case: this one and the two it imports."""
    import ModelRegistryLib
    import TrainingDataExportLib

    return [os.path.dirname(os.path.abspath(module.__file__))
            for module in (ModelRegistryLib, TrainingDataExportLib)] + [os.path.dirname(os.path.abspath(__file__))]


def pack_model(folder: str) -> bytes:
    """The installed model folder as a zip archive in memory (stored: weights hardly compress)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for directory, subdirectories, names in os.walk(folder):
            subdirectories.sort()
            for name in sorted(names):
                path = os.path.join(directory, name)
                if os.path.isfile(path) and not os.path.islink(path):
                    archive.write(path, os.path.relpath(path, folder).replace(os.sep, "/"))
    return buffer.getvalue()


def unpacked_model(archive: bytes, digest: str) -> str:
    """The folder of the model packed by :func:`pack_model`, unpacked on this node once (atomically)."""
    root = os.path.join(tempfile.gettempdir(), MODEL_CACHE_FOLDER)
    target = os.path.join(root, digest)
    if os.path.isdir(target):
        return target
    staging = make_temporary_folder(root, prefix=".staging-")
    try:
        path = os.path.join(staging, "model.zip")
        with open(path, "wb") as file:
            file.write(archive)
        os.mkdir(os.path.join(staging, "model"))
        extract_archive(path, os.path.join(staging, "model"))
        with contextlib.suppress(OSError):  # another task on this node unpacked it first: theirs is the same
            os.rename(os.path.join(staging, "model"), target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not os.path.isdir(target):
        raise OSError(f"The model could not be unpacked into {target}")
    return target


def segment_case_task(case: BatchCase, plan: BatchPlan, archive: bytes) -> CaseOutcome:
    """The Ray task of one case (see the module description); a failure of the case is its outcome, so that Ray
    runs a task again only when its worker or node died."""
    began = time.perf_counter()
    where = _node_name()
    try:
        fingerprint, hashes = fingerprint_of(plan, case)
        result = output_path(plan.output_dir, case.case_id, plan.suffix)
        if not plan.settings.force and is_up_to_date(plan.output_dir, case.case_id, plan.suffix, fingerprint):
            return CaseOutcome(case.case_id, SKIPPED, "up to date", result, 0.0, where)
        folder = unpacked_model(archive, plan.model.files_sha256)
        settings = plan.settings
        segment_case_files(case, folder, plan.output_dir, plan.suffix, case_record(plan, case, fingerprint, hashes),
                           device=plan.devices[0], quality=settings.quality, threads=settings.threads or 1,
                           precision=settings.precision)
    except Exception as error:
        return CaseOutcome(case.case_id, FAILED, str(error) or type(error).__name__, "",
                           time.perf_counter() - began, where)
    return CaseOutcome(case.case_id, DONE, "", result, time.perf_counter() - began, where)


def _node_name() -> str:
    with contextlib.suppress(Exception):
        import ray

        return f"Ray node {ray.get_runtime_context().get_node_id()[:8]}"
    return "Ray"


def _task_options(plan: BatchPlan) -> dict:
    settings = plan.settings
    gpus = settings.ray_gpus_per_task if settings.ray_gpus_per_task is not None else \
        (1 if plan.devices[0] == "cuda" else 0)
    options = {"num_cpus": settings.threads or 1, "num_gpus": gpus, "max_retries": settings.retries,
               "retry_exceptions": False}
    if settings.ray_memory_gb:
        options["memory"] = int(settings.ray_memory_gb * _GIB)
    return options


def run_on_ray(plan: BatchPlan, *, progress=None, log=None, cancel: threading.Event | None = None) -> tuple:
    """Run the plan's cases on the Ray cluster at ``plan.settings.ray_address``; returns ``(outcomes in the plan's
    order, where they ran)``. Connects to the cluster unless this process is connected already."""
    ray = _import_ray()
    log = log or (lambda text, level="info": None)
    cancel = cancel or threading.Event()
    address = plan.settings.ray_address
    connected_here = not ray.is_initialized()
    if connected_here:
        try:
            ray.init(address=address, runtime_env={"py_modules": code_folders()}, logging_level=logging.ERROR,
                     log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as error:
            raise BatchError(f"Cannot connect to the Ray cluster at {address}: {error}") from None
    try:
        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
        where = f"Ray cluster at {address}, {nodes} node{'s' if nodes != 1 else ''}"
        outcomes = _run_tasks(ray, plan, progress, log, cancel)
    finally:
        if connected_here:
            ray.shutdown()
    return [outcomes[case.case_id] for case in plan.cases], where


def _run_tasks(ray, plan: BatchPlan, progress, log, cancel: threading.Event) -> dict:
    task = ray.remote(segment_case_task).options(**_task_options(plan))
    archive = ray.put(pack_model(plan.model.folder))
    shipped = replace(plan, cases=())  # each task gets its own case, not the whole list
    pending = {task.remote(case, shipped, archive): case for case in plan.cases}
    counter = BatchProgress(len(plan.cases), progress)
    counter.started()
    outcomes = {}

    def finish(outcome: CaseOutcome) -> None:
        outcomes[outcome.case_id] = outcome
        counter.finish(outcome)
        if outcome.state == FAILED:
            log(f"{outcome.case_id}: failed: {outcome.reason}", "warning")

    while pending:
        if cancel.is_set():
            _cancel_tasks(ray, pending, finish)
            break
        done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=_WAIT_SECONDS)
        for reference in done:
            case = pending.pop(reference)
            try:
                finish(ray.get(reference))
            except Exception as error:  # the task's worker or node died more often than it may be retried
                finish(CaseOutcome(case.case_id, FAILED, f"the Ray task did not complete: {error}"))
        counter.tell([], note=f"{len(pending)} running or queued on the cluster" if pending else "")
    counter.tell([], force=True)
    return outcomes


def _cancel_tasks(ray, pending: dict, finish) -> None:
    """Cancel every task (killing the running ones) and wait until they have ended, so that no result is written
    after the batch ends; a task that completed meanwhile keeps its outcome."""
    for reference in pending:
        with contextlib.suppress(Exception):
            ray.cancel(reference, force=True)
    deadline = time.monotonic() + _CANCEL_WAIT_SECONDS
    while pending and time.monotonic() < deadline:
        done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=_WAIT_SECONDS)
        for reference in done:
            case = pending.pop(reference)
            try:
                finish(ray.get(reference))
            except Exception:
                finish(CaseOutcome(case.case_id, NOT_RUN, "cancelled"))
    for case in pending.values():
        finish(CaseOutcome(case.case_id, NOT_RUN, "cancelled"))
    pending.clear()

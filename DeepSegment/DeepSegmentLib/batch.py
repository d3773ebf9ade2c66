"""Batch runs: one model over every case of a case list, a folder of images or a folder of DICOM series.

:func:`run_batch` is the whole run, for the command line (``python -m DeepSegmentLib batch``), the panel and the
console (a job of ``ModelRegistryLib.jobs``: it takes ``progress``, ``log`` and ``cancel`` and returns a JSON-able
:class:`BatchSummary`):

1. **Plan** (:func:`plan_batch`), before any case is read: the model is installed if needed, the cases are found
   (:mod:`~DeepSegmentLib.batch_cases`) and filtered (case id patterns, case-list status), the output folder is
   checked (writable, no result would replace an input) and locked against a second batch writing into it.
2. **Run** each case that is not up to date (:mod:`~DeepSegmentLib.batch_outputs`: its inputs' content, the model
   version and the options that change a result are those recorded with its result), here (:class:`LocalRun`) or on
   a Ray cluster (:mod:`~DeepSegmentLib.batch_ray`).
3. **Finish**: leftovers of interrupted writes removed, predictions recorded as pre-annotations in the case list
   when asked (``TrainingDataExportLib.preannotation``), and ``batch_summary.json`` written into the output folder.

Locally, each worker is a process (``ModelRegistryLib.jobs.WorkerProcess``) that keeps the network loaded across
cases (the model service's pool) and gets two cases at a time, so that it starts the next one the moment one ends.
Reader threads here hash and read the next cases and put their volumes in shared memory while the workers infer,
and a writer thread writes each result while the next cases run. A case that fails (an unreadable input, a model
error, even a worker that crashes) is reported with its reason and the others go on; a crashed worker is replaced.
Cancel stops the workers' runs and writes nothing more than the results already computed: every file is written
atomically, so nothing is half-written, and a re-run picks up where the run stopped.

Example (a model that labels voxels brighter than 0.5, installed in a folder, on two cases; the second run has
nothing to do; ``run_batch`` does the same with a registry model, ``python -m DeepSegmentLib batch`` too)::

    >>> import os, tempfile
    >>> import numpy as np, SimpleITK as sitk, torch
    >>> from DeepSegmentLib.package import write_package
    >>> folder = tempfile.mkdtemp()
    >>> class Threshold(torch.nn.Module):
    ...     def forward(self, image):
    ...         return torch.cat([0.5 - image, image - 0.5], dim=1)
    >>> write_package(os.path.join(folder, "model"), Threshold(), {"schemaVersion": 1, "format": "torchscript",
    ...     "weights": "model.pt", "dimensions": 3, "inputs": [{"name": "CT"}], "inference": {"patchSize": [8, 8, 8],
    ...     "activation": "softmax", "outputChannels": 2}, "postprocessing": {"mode": "argmax"}, "labels": [{"value":
    ...     1, "name": "Bright", "color": "#ff0000"}], "preprocessing": {"spacing": None, "orientation": "native",
    ...     "normalization": [{"kind": "none"}]}})
    >>> os.makedirs(os.path.join(folder, "images"))
    >>> for name in ("a", "b"):
    ...     sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random((6, 7, 8), np.float32)),
    ...                     os.path.join(folder, "images", name + ".nii.gz"))
    >>> model = BatchModel("threshold", "1.0.0", os.path.join(folder, "model"), "0" * 64)
    >>> settings = BatchSettings(device="cpu", quality="fast", threads=1)
    >>> plan = plan_batch(model, "images", os.path.join(folder, "images"), os.path.join(folder, "out"), settings,
    ...                   devices=["cpu"])
    >>> [case.state for case in LocalRun(plan).run()], sorted(os.listdir(os.path.join(folder, "out")))
    (['done', 'done'], ['.deepsegment-batch', 'a.seg.nrrd', 'b.seg.nrrd'])
    >>> [case.state for case in LocalRun(plan).run()]
    ['skipped', 'skipped']
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

from ModelRegistryLib import Registry, RegistryError, default_cache_dir
from ModelRegistryLib.store import ModelStore
from ModelRegistryLib.card import format_duration
from ModelRegistryLib.files import probe_writable, write_json_atomically
from ModelRegistryLib.jobs import CRASH_KIND, WorkerProcess
from ModelRegistryLib.locking import FileLock
from ModelRegistryLib.shared_arrays import free_blocks
from TrainingDataExportLib.preannotation import record_pre_annotations

from .batch_cases import (
    SOURCE_KINDS,
    SOURCE_TITLES,
    BatchCase,
    find_cases,
    input_sha256,
    read_case_images,
    select_cases,
)
from .batch_outputs import (
    DEFAULT_FORMAT,
    STATE_FOLDER,
    SUMMARY_NAME,
    BatchModel,
    case_fingerprint,
    is_up_to_date,
    output_format,
    output_path,
    remove_partial_files,
    write_case_result,
)
from .engine import DEFAULT_QUALITY, PRECISIONS, QUALITY_PRESETS
from .shared_images import read_shared_image, share_run_volumes

DONE, SKIPPED, FAILED, NOT_RUN = "done", "skipped", "failed", "not run"
# Cases a worker holds at once: the one it runs and the next, so that it never waits for the coordinator.
CASES_PER_WORKER = 2
READER_THREADS = 2
# Seconds a cancelled case may take to stop before its worker is terminated.
CANCEL_GRACE_SECONDS = 10.0
WORKER_NAME = "A DeepSegment batch worker"
_POLL_SECONDS = 0.02
DEEPSEGMENT_FOLDER = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class BatchError(ValueError):
    """A batch that cannot run (a bad option, a missing source, an output folder that cannot be written or is
    in use); the message says what to change. Nothing was written."""


@dataclass(frozen=True)
class BatchSettings:
    """How a batch runs.

    Args:
        output_format: the result files' ending: ``.seg.nrrd`` (segment names, colors, terminology), ``.nii.gz``,
            ``.nii``, ``.nrrd`` or ``.mha``.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        quality: ``fast`` or ``accurate`` (the model's mirroring).
        precision: ``auto`` (reduced where the device computes it natively) or ``float32``.
        workers: local worker processes, each holding the model (0: one per GPU, else :func:`default_workers`).
        threads: PyTorch CPU threads per worker (0: the cores shared among the workers).
        patterns: case id patterns (``ct0*``); only matching cases run (all when empty).
        statuses: case-list statuses (``to do``...); only cases with one of them run (all when empty).
        channels: channel names of a folder of images whose cases have several files (``<case>_<channel>``).
        pre_annotate: record the results in the case list as pre-annotations (a case list only).
        force: run every selected case, up to date or not.
        ray_address: ``""`` runs here; ``auto`` or ``HOST:PORT`` runs on that Ray cluster.
        ray_gpus_per_task, ray_memory_gb: Ray resources each case asks for (default: a GPU per case when the
            device is a GPU, else none; memory: the model card's ``resources.ramGB``, else none).
        retries: how often Ray runs a case again after its worker or node died.
    """

    output_format: str = DEFAULT_FORMAT
    device: str = "auto"
    quality: str = DEFAULT_QUALITY
    precision: str = "auto"
    workers: int = 0
    threads: int = 0
    patterns: tuple = ()
    statuses: tuple = ()
    channels: tuple = ()
    pre_annotate: bool = False
    force: bool = False
    ray_address: str = ""
    ray_gpus_per_task: float | None = None
    ray_memory_gb: float | None = None
    retries: int = 3


@dataclass(frozen=True)
class CaseOutcome:
    """What happened to one case: ``state`` done, skipped (up to date), failed (``reason``) or not run (cancelled);
    its result file, the seconds its run took, and where it ran."""

    case_id: str
    state: str
    reason: str = ""
    output: str = ""
    seconds: float = 0.0
    where: str = ""


@dataclass
class BatchSummary:
    """A finished batch: every selected case's :class:`CaseOutcome`, the time it took, whether it was cancelled, and
    the cases recorded as pre-annotations in the case list."""

    model_id: str
    version: str
    source: str
    output_dir: str
    cases: list = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 0
    where: str = "local"
    cancelled: bool = False
    pre_annotated: list = field(default_factory=list)

    def of_state(self, state: str) -> list:
        return [case for case in self.cases if case.state == state]

    def text(self) -> str:
        """The summary for people: counts, time, failures with their reasons."""
        counts = ", ".join(f"{len(self.of_state(state))} {state}" for state in (DONE, SKIPPED, FAILED, NOT_RUN))
        lines = [f"{self.model_id} {self.version} on {len(self.cases)} cases ({self.where}): {counts} in "
                 f"{format_duration(self.seconds)}" + (" (cancelled)" if self.cancelled else "") + "."]
        lines += [f"failed: {case.case_id}: {case.reason}" for case in self.of_state(FAILED)]
        if self.pre_annotated:
            lines.append(f"{len(self.pre_annotated)} cases recorded as pre-annotated in {self.source}.")
        return "\n".join(lines)


@dataclass(frozen=True)
class BatchPlan:
    """A batch ready to run: the model, the cases, the result files' ending, the options that change a result
    (part of every fingerprint), and the devices of the local workers."""

    model: BatchModel
    cases: tuple
    kind: str
    source: str
    output_dir: str
    suffix: str
    options: dict
    settings: BatchSettings
    devices: tuple = ()


# --------------------------------------------------------------------------------------------------- planning


def default_workers(cpu_count: int | None = None) -> int:
    """Local CPU workers when none is asked for: two on 2 cores and more (measured on 2 cores with the demo
    model: two workers of one thread each beat one worker of two threads, see the README's Cohorts section),
    one on a single core; never more than 4 (each holds a network and a case in memory)."""
    cores = cpu_count or os.cpu_count() or 1
    return max(1, min(4, cores))


def _checked_settings(settings: BatchSettings, kind: str) -> BatchSettings:
    if settings.quality not in QUALITY_PRESETS:
        raise BatchError(f"Unknown quality {settings.quality!r}: use {' or '.join(QUALITY_PRESETS)}")
    if settings.precision not in PRECISIONS:
        raise BatchError(f"Unknown precision {settings.precision!r}: use {' or '.join(PRECISIONS)}")
    if settings.workers < 0 or settings.threads < 0 or settings.retries < 0:
        raise BatchError("workers, threads and retries must be 0 or more")
    if settings.pre_annotate and kind != "cases":
        raise BatchError("Pre-annotations are recorded in a case list: run the batch on a case list")
    for name, value in (("GPUs per case", settings.ray_gpus_per_task), ("memory per case", settings.ray_memory_gb)):
        if value is not None and not value >= 0:
            raise BatchError(f"The Ray {name} must be 0 or more, not {value}")
    try:
        return replace(settings, output_format=output_format(settings.output_format))
    except ValueError as error:
        raise BatchError(str(error)) from None


def _checked_output_folder(output_dir: str) -> None:
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise BatchError(f"The output {output_dir} is a file, not a folder")
    existing = output_dir
    while not os.path.isdir(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    try:
        probe_writable(existing)
    except OSError as error:
        raise BatchError(f"Cannot write to {existing}: {error.strerror or error}") from None


def _local_devices(settings: BatchSettings) -> tuple:
    """One torch device name per local worker: one worker per GPU (or the asked number, shared round robin), else
    CPU workers."""
    request = settings.device.strip().lower() or "auto"
    if request == "cpu":
        return ("cpu",) * (settings.workers or default_workers())
    from .devices import available_devices, choose_device

    devices = available_devices()
    chosen = choose_device(request, devices)
    if chosen.kind == "cuda" and request in ("auto", "cuda"):
        gpus = [device.torch_name for device in devices if device.kind == "cuda"]
        count = settings.workers or len(gpus)
        return tuple(gpus[index % len(gpus)] for index in range(count))
    if chosen.kind == "cpu":
        return ("cpu",) * (settings.workers or default_workers())
    return (chosen.torch_name,) * (settings.workers or 1)


def _model_digest(files: dict) -> str:
    return hashlib.sha256(json.dumps(sorted(files.items())).encode("utf-8")).hexdigest()


def install_model(model: str, indexes: Sequence[str] = (), cache_dir: str | None = None, *, entry=None, version=None,
                  progress=None, cancel: threading.Event | None = None) -> BatchModel:
    """The installed model ``model`` (``id[@version]``) means, installed first when needed (works offline with an
    installed version); or the registry's ``entry`` and ``version`` (resolved by the caller, such as the panel's
    registry), installed into ``cache_dir``."""
    if entry is not None and version is not None:
        installed = ModelStore(cache_dir or default_cache_dir()).install(entry, version, progress=progress,
                                                                         cancel=cancel)
    else:
        from .cli import open_registry

        registry: Registry = open_registry(indexes, cache_dir)
        installed = registry.ensure_installed(model, progress=progress, cancel=cancel)
    return BatchModel(installed.model_id, installed.version, installed.path, _model_digest(installed.files))


def check_batch_request(kind: str, source: str, output_dir: str, settings: BatchSettings) -> BatchSettings:
    """The settings made canonical; raises :class:`BatchError` for what makes the batch impossible that can be told
    without reading a case (a bad option, a missing source, an output folder that cannot be written)."""
    settings = _checked_settings(settings, kind)
    if kind not in SOURCE_KINDS:
        raise BatchError(f"Unknown kind of case source {kind!r}: use {', '.join(SOURCE_KINDS)}")
    if not source or not (os.path.isfile(source) if kind == "cases" else os.path.isdir(source)):
        raise BatchError(f"{SOURCE_TITLES[kind]} not found: {source or '(none chosen)'}")
    _checked_output_folder(os.path.abspath(output_dir))
    return settings


def plan_batch(model: BatchModel, kind: str, source: str, output_dir: str, settings: BatchSettings,
               devices: Sequence[str] = ()) -> BatchPlan:
    """Find and select the cases and check the output folder (see the module description); raises
    :class:`BatchError` (or ``CaseListError``) before anything is written."""
    settings = check_batch_request(kind, source, output_dir, settings)
    output_dir = os.path.abspath(output_dir)
    cases = select_cases(find_cases(kind, source, settings.channels or None), settings.patterns, settings.statuses)
    if not cases:
        raise BatchError(f"No case of {source} matches the case filter")
    inputs = {os.path.normcase(os.path.abspath(item.path)) for case in cases for item in case.inputs}
    for case in cases:
        if os.path.normcase(output_path(output_dir, case.case_id, settings.output_format)) in inputs:
            raise BatchError(f"The result of case {case.case_id} would replace an input: choose another output "
                             "folder or format")
    kinds = {device.split(":")[0] for device in devices} or {settings.device.split(":")[0]}
    options = {"quality": settings.quality, "precision": settings.precision, "device": "+".join(sorted(kinds))}
    return BatchPlan(model, tuple(cases), kind, os.path.abspath(source), output_dir, settings.output_format, options,
                     settings, tuple(devices))


# ------------------------------------------------------------------------------------------------ progress


class BatchProgress:
    """Counts finished cases and turns them into a fraction, the cases running and an estimate of the time left.

    The estimate divides the work left (cases not finished, less the parts of running cases already done) by the
    pace so far (cases computed, plus those parts, per second since the first case started); skipped cases cost
    nothing and do not set the pace.
    """

    def __init__(self, total: int, report: Callable | None) -> None:
        self.total = total
        self.report = report
        self.finished = 0
        self.computed = 0  # cases that ran (not skipped): they set the pace
        self.first_start: float | None = None
        self._last = 0.0
        self._last_finished = 0  # finished cases at the last report: a new count is always reported

    def started(self) -> None:
        if self.first_start is None:
            self.first_start = time.monotonic()

    def finish(self, outcome: CaseOutcome) -> None:
        self.finished += 1
        if outcome.state in (DONE, FAILED) and outcome.seconds:
            self.computed += 1

    def time_left(self, running: float = 0.0) -> str:
        """``running``: the parts of the running cases done, summed."""
        done = self.computed + running
        if self.finished >= self.total or done <= 0 or self.first_start is None:
            return ""
        pace = done / max(1e-6, time.monotonic() - self.first_start)
        return f"; about {format_duration(max(0.0, self.total - self.finished - running) / pace)} left"

    def tell(self, running: Sequence[tuple], force: bool = False, note: str = "") -> None:
        """``running``: (case id, fraction of it done) of the cases being segmented; ``note`` says what runs when
        that is not known case by case."""
        now = time.monotonic()
        if self.report is None or (not force and now - self._last < 0.2 and self.finished == self._last_finished):
            return
        self._last, self._last_finished = now, self.finished
        parts = sum(part for _, part in running)
        fraction = (self.finished + parts) / max(1, self.total)
        names = ", ".join(case_id for case_id, _ in running)
        current = f"; {note}" if note else f"; segmenting {names}" if names else ""
        self.report(min(1.0, fraction), f"{self.finished} of {self.total} cases{current}{self.time_left(parts)}")


# ---------------------------------------------------------------------------------------------- local run


@dataclass
class _Prepared:
    """A case read and shared, waiting for or held by a worker: its fingerprint, inputs and shared segments."""

    case: BatchCase
    fingerprint: str
    input_hashes: list
    blocks: list
    inputs: list
    output: object


def case_record(plan: BatchPlan, case: BatchCase, fingerprint: str, input_hashes: Sequence[str]) -> dict:
    """What a case's record keeps besides its result file (see ``batch_outputs``)."""
    return {"fingerprint": fingerprint, "model": {"id": plan.model.model_id, "version": plan.model.version},
            "options": dict(plan.options),
            "inputs": [{"path": item.describe(), "sha256": digest} for item, digest in zip(case.inputs, input_hashes)]}


def fingerprint_of(plan: BatchPlan, case: BatchCase, cancel: threading.Event | None = None) -> tuple:
    """``(fingerprint, input hashes)`` of a case: its inputs' content hashed now."""
    hashes = [input_sha256(item, cancel) for item in case.inputs]
    return case_fingerprint(plan.model, plan.options, plan.suffix, hashes), hashes


class LocalRun:
    """A batch run on this machine (see the module description): :meth:`run` returns every case's outcome."""

    def __init__(self, plan: BatchPlan, *, python: str | None = None, progress=None, log=None,
                 cancel: threading.Event | None = None) -> None:
        self.plan = plan
        self.python = python
        self.log = log or (lambda text, level="info": None)
        self.cancel = cancel or threading.Event()
        self.progress = BatchProgress(len(plan.cases), progress)
        self.outcomes: dict = {}
        threads = plan.settings.threads or max(1, (os.cpu_count() or 1) // max(1, len(plan.devices)))
        self.threads = threads
        self.slots = [_Slot(device, index) for index, device in enumerate(plan.devices)]
        self._writes: queue.Queue = queue.Queue()
        self._written: queue.Queue = queue.Queue()
        self._pending_writes = 0

    # -- reading (reader threads) --------------------------------------------------------------------------

    def _prepare(self, case: BatchCase):
        """Hash the case's inputs; an up-to-date case is skipped, any other read and put in shared memory."""
        if self.cancel.is_set():
            return CaseOutcome(case.case_id, NOT_RUN, "cancelled")
        try:
            fingerprint, hashes = fingerprint_of(self.plan, case, self.cancel)
            if not self.plan.settings.force and is_up_to_date(self.plan.output_dir, case.case_id, self.plan.suffix,
                                                              fingerprint):
                return CaseOutcome(case.case_id, SKIPPED, "up to date",
                                   output_path(self.plan.output_dir, case.case_id, self.plan.suffix))
            images = read_case_images(case)
        except Exception as error:  # an unreadable case is this case's failure, not the batch's
            if self.cancel.is_set():
                return CaseOutcome(case.case_id, NOT_RUN, "cancelled")
            return CaseOutcome(case.case_id, FAILED, f"cannot read its input: {error}")
        try:
            blocks, inputs, output = share_run_volumes(images)
        except Exception as error:  # shared memory exhausted: this case cannot be handed to a worker
            return CaseOutcome(case.case_id, FAILED, f"cannot pass its volumes to a worker: {error}")
        return _Prepared(case, fingerprint, hashes, blocks, inputs, output)

    # -- writing (the writer thread) ------------------------------------------------------------------------

    def _writer(self) -> None:
        while True:
            item = self._writes.get()
            if item is None:
                return
            prepared, labels_image, run, seconds, where = item
            case = prepared.case
            record = dict(case_record(self.plan, case, prepared.fingerprint, prepared.input_hashes),
                          device=run.device, precision=run.precision, label_values=list(run.label_values),
                          seconds=round(seconds, 3))
            try:
                write_case_result(self.plan.output_dir, case.case_id, self.plan.suffix, labels_image, run.labels,
                                  record)
                outcome = CaseOutcome(case.case_id, DONE, "", output_path(self.plan.output_dir, case.case_id,
                                                                          self.plan.suffix), seconds, where)
            except Exception as error:
                outcome = CaseOutcome(case.case_id, FAILED, f"cannot write its result: {error}", "", seconds, where)
            self._written.put(outcome)

    # -- the coordinator's loop (this thread: the only one that touches worker processes) -------------------

    def _finish(self, outcome: CaseOutcome) -> None:
        self.outcomes[outcome.case_id] = outcome
        self.progress.finish(outcome)
        if outcome.state == FAILED:
            self.log(f"{outcome.case_id}: failed: {outcome.reason}", "warning")

    def _submit(self, slot: _Slot, prepared: _Prepared) -> None:
        if slot.worker is None or not slot.worker.alive:
            slot.worker = WorkerProcess(self.python, sys_path=[DEEPSEGMENT_FOLDER], name=f"{WORKER_NAME} {slot.index}")
        arguments = {"folder": self.plan.model.folder, "inputs": prepared.inputs, "output": prepared.output,
                     "model_id": self.plan.model.model_id, "version": self.plan.model.version,
                     "device": slot.device, "quality": self.plan.settings.quality, "threads": self.threads,
                     "precision": self.plan.settings.precision}
        job = slot.worker.submit("DeepSegmentLib.batch_worker:segment_shared", arguments,
                                 description=prepared.case.case_id, cancel_grace=CANCEL_GRACE_SECONDS)
        slot.jobs.append((prepared, job))
        self.progress.started()

    def _collect(self, slot: _Slot, ready: collections.deque) -> None:
        """Handle the slot's finished jobs, oldest first; after a crash, the cases queued behind the one that ran
        go back to the front of the queue (their worker never started them)."""
        if slot.worker is not None:
            slot.worker.poll()
        while slot.jobs and slot.jobs[0][1].finished:
            prepared, job = slot.jobs.popleft()
            where = f"worker {slot.index} ({slot.device})"
            seconds = time.monotonic() - max(job.started, slot.free_since)
            slot.free_since = time.monotonic()
            if job.error is None:
                labels_image = read_shared_image(job.result.label_map)
                free_blocks(prepared.blocks)
                self._writes.put((prepared, labels_image, job.result, seconds, where))
                self._pending_writes += 1
                continue
            free_blocks(prepared.blocks)
            if job.error.kind == CRASH_KIND:
                self._finish(CaseOutcome(prepared.case.case_id, FAILED, str(job.error), "", seconds, where))
                for queued, _ in reversed(slot.jobs):
                    ready.appendleft(queued)
                slot.jobs.clear()
                slot.worker = None  # the next case starts a fresh worker
            elif job.state == "cancelled":
                self._finish(CaseOutcome(prepared.case.case_id, NOT_RUN, "cancelled"))
            else:
                self._finish(CaseOutcome(prepared.case.case_id, FAILED, str(job.error), "", seconds, where))

    def run(self) -> list:
        cases = collections.deque(self.plan.cases)
        ready: collections.deque = collections.deque()
        reading: collections.deque = collections.deque()
        writer = threading.Thread(target=self._writer, name="batch writer", daemon=True)
        writer.start()
        cancelling = False
        room = len(self.slots)  # cases read ahead beyond those the workers hold
        with concurrent.futures.ThreadPoolExecutor(READER_THREADS, thread_name_prefix="batch reader") as readers:
            try:
                while True:
                    if self.cancel.is_set() and not cancelling:
                        cancelling = True
                        self._cancel(cases, reading, ready)
                    while not cancelling and cases and len(reading) + len(ready) < room + READER_THREADS:
                        reading.append(readers.submit(self._prepare, cases.popleft()))
                    while reading and reading[0].done():
                        item = reading.popleft().result()
                        if isinstance(item, CaseOutcome):
                            self._finish(item)
                        else:
                            ready.append(item)
                    for slot in self.slots:
                        while not cancelling and ready and len(slot.jobs) < CASES_PER_WORKER:
                            self._submit(slot, ready.popleft())
                    for slot in self.slots:
                        self._collect(slot, ready)
                    while not self._written.empty():
                        self._finish(self._written.get())
                        self._pending_writes -= 1
                    running = [(prepared.case.case_id, (job.progress.fraction or 0.0) if job.progress else 0.0)
                               for slot in self.slots for prepared, job in list(slot.jobs)[:1]]
                    self.progress.tell(running)
                    if not (cases or reading or ready or self._pending_writes or any(s.jobs for s in self.slots)):
                        break
                    if cancelling:
                        time.sleep(_POLL_SECONDS)
                    else:
                        self.cancel.wait(_POLL_SECONDS)
            finally:
                self._writes.put(None)
                writer.join()
                while not self._written.empty():
                    self._finish(self._written.get())
                for slot in self.slots:
                    for prepared, job in slot.jobs:
                        job.cancel()
                        free_blocks(prepared.blocks)
                    if slot.worker is not None:
                        slot.worker.stop()
                for prepared in ready:
                    free_blocks(prepared.blocks)
        self.progress.tell([], force=True)
        return [self.outcomes.get(case.case_id, CaseOutcome(case.case_id, NOT_RUN, "cancelled"))
                for case in self.plan.cases]

    def _cancel(self, cases: collections.deque, reading: collections.deque, ready: collections.deque) -> None:
        """Stop: no new case starts, the running ones are asked to stop; results already computed are written."""
        for case in cases:
            self._finish(CaseOutcome(case.case_id, NOT_RUN, "cancelled"))
        cases.clear()
        for future in reading:
            future.cancel()
        for future in reading:
            item = None if future.cancelled() else future.result()
            if isinstance(item, _Prepared):
                free_blocks(item.blocks)
                item = CaseOutcome(item.case.case_id, NOT_RUN, "cancelled")
            self._finish(item)
        reading.clear()
        for prepared in ready:
            free_blocks(prepared.blocks)
            self._finish(CaseOutcome(prepared.case.case_id, NOT_RUN, "cancelled"))
        ready.clear()
        for slot in self.slots:
            for _, job in slot.jobs:
                job.cancel()


@dataclass
class _Slot:
    """A local worker: its device, its process (None until its first case, or after a crash) and the jobs it holds,
    oldest (the one running) first."""

    device: str
    index: int
    worker: WorkerProcess | None = None
    jobs: collections.deque = field(default_factory=collections.deque)
    free_since: float = 0.0  # when its last case ended: the next one started then, or when it was submitted


# -------------------------------------------------------------------------------------------------- the run


def _write_summary(summary: BatchSummary, settings: BatchSettings) -> None:
    data = asdict(summary)
    data["settings"] = asdict(settings)
    write_json_atomically(os.path.join(summary.output_dir, SUMMARY_NAME), data)


def run_batch(
    model: str,
    kind: str,
    source: str,
    output_dir: str,
    settings: BatchSettings = BatchSettings(),
    *,
    indexes: Sequence[str] = (),
    cache_dir: str | None = None,
    entry=None,
    version=None,
    python: str | None = None,
    progress=None,
    log=None,
    cancel: threading.Event | None = None,
) -> BatchSummary:
    """Run ``model`` (``id[@version]``) over the cases of ``source`` into ``output_dir`` (see the module description).

    Args:
        model: the registry model, installed first when needed (from ``indexes`` and the user's sources; or the
            ``entry`` and ``version`` of it a caller has resolved).
        kind: ``cases`` (``source`` is a case list), ``images`` or ``dicom`` (``source`` is a folder).
        source: the case list or folder.
        output_dir: where the results, their records and ``batch_summary.json`` go (created when missing).
        settings: the :class:`BatchSettings`.
        cache_dir: the model cache (default: the user's).
        python: the interpreter of local workers (default: ``ModelRegistryLib.jobs.worker_python``'s choice).
        progress: ``progress(fraction, text)``: cases finished, those running and the time left.
        log: ``log(text, level)``: each failed case with its reason.
        cancel: an event; setting it stops the run (the summary then says so).

    Raises :class:`BatchError` (or the case list's ``CaseListError``, or ``RegistryError`` for the model) before
    anything is written; a failing case only fails itself.
    """
    began = time.perf_counter()
    cancel = cancel or threading.Event()
    settings = _checked_settings(settings, kind)
    if settings.ray_address:
        from .batch_ray import ray_device

        devices = (ray_device(settings),)
    else:
        devices = _local_devices(settings)
    # The cases and the folder are checked before the model is installed (which may download).
    plan = plan_batch(BatchModel("", "", "", ""), kind, source, output_dir, settings, devices)
    installed = install_model(model, indexes, cache_dir, entry=entry, version=version,
                              progress=_install_progress(progress), cancel=cancel)
    plan = replace(plan, model=installed)
    os.makedirs(plan.output_dir, exist_ok=True)
    lock = FileLock(os.path.join(plan.output_dir, STATE_FOLDER, "lock"), timeout=0)
    try:
        lock.acquire()
    except RegistryError:
        raise BatchError(f"Another batch run is writing into {plan.output_dir}; wait for it to end") from None
    try:
        remove_partial_files(plan.output_dir)
        if settings.ray_address:
            from .batch_ray import run_on_ray

            outcomes, where = run_on_ray(plan, progress=progress, log=log, cancel=cancel)
            workers = 0  # Ray decides
        else:
            outcomes = LocalRun(plan, python=python, progress=progress, log=log, cancel=cancel).run()
            where, workers = "local", len(devices)
        remove_partial_files(plan.output_dir)
        summary = BatchSummary(installed.model_id, installed.version, plan.source, plan.output_dir, outcomes,
                               workers=workers, where=where, cancelled=cancel.is_set())
        if settings.pre_annotate:
            results = {case.case_id: (case.output, installed.model_id, installed.version)
                       for case in outcomes if case.state in (DONE, SKIPPED)}
            summary.pre_annotated = record_pre_annotations(plan.source, results) if results else []
        summary.seconds = time.perf_counter() - began
        _write_summary(summary, settings)
    finally:
        lock.release()
    return summary


def _install_progress(progress):
    if progress is None:
        return None

    def report(step) -> None:
        progress(0.0, f"installing the model: {step.text or step.stage}")

    return report

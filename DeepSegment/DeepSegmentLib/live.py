"""Live segmentation for Slicer: frames segmented one by one in a persistent worker process, newest frame first.

Slicer's live mode (``DeepSegmentLogic.startLive``) follows a volume node that OpenIGTLinkIF or a sequence
browser updates, and puts a label map into the scene for every frame it can. The work is split as the rest
of the extension splits it: the network runs in a worker process of Slicer's Python
(ModelRegistryLib.jobs.WorkerProcess; the GUI keeps Python's GIL while it idles, so a thread in Slicer's
process would crawl, and a crashing model must not take the scene with it), and Slicer's main thread only
hands frames over and applies label maps, from a ``qt.QTimer``. This module is the part of that without Qt
and MRML:

- :class:`LiveStream` (Slicer's side): starts the worker, which installs the model if needed and keeps it
  loaded and warm (:class:`~DeepSegmentLib.frames.FrameSegmenter`); takes frames with :meth:`LiveStream.offer`
  and hands finished label maps to a callback from :meth:`LiveStream.poll`, which never blocks.
- :func:`open_live_model` and :func:`segment_live_frame`: what the worker runs (job targets).

**Newest frame first.** At most one frame is in the worker and at most one waits: a frame offered while
another waits replaces it, and the replaced one is counted as dropped. A model slower than the stream
lowers the rate of label maps, never builds a queue: latency stays one inference deep.

**No files, no copies to spare.** Frames go to the worker and label maps come back through shared memory
segments (:class:`~DeepSegmentLib.shared_images.SharedBlock`) this side creates once and reuses: two for
frames (the one the worker reads, and the one the next frame is written into meanwhile) and one for label
maps; they grow when a frame is bigger and are freed by :meth:`LiveStream.stop`, however the stream ends.
Per frame the pipe carries a few hundred bytes of JSON.

Example (a 3D model is refused; the worker is stopped and nothing is left behind)::

    >>> import tempfile
    >>> from ModelRegistryLib.registry import Registry, bundled_source
    >>> registry = Registry([bundled_source()], tempfile.mkdtemp())
    >>> statuses = registry.refresh()
    >>> entry, version = registry.resolve("brain-tissue-demo")
    >>> stream = LiveStream(entry, version, registry.store.cache_dir, device="cpu")
    >>> stream.wait_until_started(300)
    False
    >>> status = stream.statistics()
    >>> status.state, status.message
    ('failed', 'The model is a 3D model (dimensions 3): frames need a 2D model (dimensions 2)')
    >>> stream.stop().state
    'failed'
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from ModelRegistryLib.jobs import CANCELLED_KIND, CRASH_KIND, Job, JobError, WorkerProcess, describe_exit

from .shared_images import LABEL_MAP_BYTES_PER_VOXEL, SharedBlock
from .stream import LatencyHistogram

LIVE_WORKER_NAME = "The DeepSegment live worker"
DEFAULT_LIVE_QUALITY = "fast"  # no mirroring: a frame's worth of time is all there is
# Frames per second are counted over this many recent seconds (they fall to 0 when frames stop coming).
RATE_WINDOW_SECONDS = 2.0

STARTING = "starting"
RUNNING = "running"
STOPPED = "stopped"
FAILED = "failed"

_SEGMENTER: list = []  # in the worker: the one FrameSegmenter open_live_model made


# ------------------------------------------------------------------------------------ what travels


@dataclass(frozen=True)
class SharedFrame:
    """A frame in a shared segment: pixels of ``dtype`` and ``shape`` ((k, j, i) or (k, j, i, c)) at the start of
    segment ``block``, and its IJK-to-RAS matrix (16 numbers, row by row)."""

    block: str
    dtype: str
    shape: tuple
    ijk_to_ras: tuple


@dataclass(frozen=True)
class LiveModel:
    """The model the worker holds: registry id and version, its labels (ModelRegistryLib ``Label``), the device
    it runs on (a description) and the precision it computes in."""

    model_id: str
    version: str
    labels: tuple
    device: str
    precision: str


@dataclass(frozen=True)
class SegmentedFrame:
    """What the worker says of a frame: the voxel type of the label map it wrote, and its seconds of work."""

    dtype: str
    seconds: float


# ---------------------------------------------------------------------------------------- worker side


def open_live_model(cache_dir: str, entry, version, *, device: str = "cpu", threads: int | None = None,
                    precision: str = "auto", quality: str = DEFAULT_LIVE_QUALITY, warm_shape: tuple | None = None,
                    progress=None, cancel=None) -> LiveModel:
    """In the live worker: install ``version`` of the registry model ``entry`` into ``cache_dir`` if needed, load
    it on ``device`` (a torch device name) and run blank frames of ``warm_shape`` ((k, j, i); the model's patch
    when None) through it, so that the first real frame costs what every frame costs.

    Raises EngineError (one line) for a model that cannot segment frames: a 3D model, an unknown precision.
    """
    from ModelRegistryLib.store import ModelStore

    from .frames import FrameSegmenter, require_2d_model
    from .package import load_package

    installed = ModelStore(cache_dir).install(entry, version, progress=progress, cancel=cancel)
    package = load_package(installed.path)
    require_2d_model(package)
    if progress is not None:
        progress(1.0, "loading the model")
    if threads is None:
        threads = default_live_threads()
    segmenter = FrameSegmenter(package, device=device, threads=threads, precision=precision, quality=quality)
    segmenter.warm_up(tuple(warm_shape[:3]) if warm_shape else None)
    _SEGMENTER[:] = [segmenter]
    return LiveModel(entry.id, version.version, tuple(package.labels), segmenter.compute.description,
                     segmenter.precision)


def default_live_threads() -> int:
    """PyTorch's CPU threads in the live worker when none are asked for: one fewer than PyTorch would take (its
    default is a thread per core), at least one.

    Slicer's main thread works on every frame too (taking it, applying its labels), and so does the program
    that sends the stream. With a thread on every core, each parallel step of the network waits for the thread
    whose core Slicer's process took: on 2 cores under other work, a 256×256 U-Net frame took 100 to 2000 ms with
    2 threads beside Slicer's idle loop, 25 to 60 ms with one.
    """
    import torch

    return max(1, torch.get_num_threads() - 1)


def segment_live_frame(frame: SharedFrame, output: str) -> SegmentedFrame:
    """In the live worker: segment ``frame`` with the model :func:`open_live_model` loaded and write its label map
    (the frame's (k, j, i) shape, uint8 or uint16) at the start of the shared segment named ``output``.

    Raises FrameError (one line) for a frame the model cannot take.
    """
    if not _SEGMENTER:
        raise RuntimeError("No model is open in this worker: open_live_model runs first")
    started = time.perf_counter()
    block = SharedBlock.attach(frame.block)
    try:
        pixels = np.ndarray(frame.shape, dtype=np.dtype(frame.dtype), buffer=block.buf)
        labels = _SEGMENTER[0].segment(pixels, np.reshape(frame.ijk_to_ras, (4, 4)))
        del pixels
    finally:
        block.close()
    target_block = SharedBlock.attach(output)
    try:
        target = np.ndarray(labels.shape, dtype=labels.dtype, buffer=target_block.buf)
        target[...] = labels
        del target
    finally:
        target_block.close()
    return SegmentedFrame(labels.dtype.str, time.perf_counter() - started)


# ------------------------------------------------------------------------------------------ Slicer side


@dataclass(frozen=True)
class LiveResult:
    """A label map ready for the scene: ``labels`` (the frame's (k, j, i) shape), the frame's ``ijk_to_ras``, its
    ``number`` (1 for the first frame offered), when it was offered (``arrived``, ``time.perf_counter``), the
    ``tag`` it was offered with, and the worker's ``seconds`` of work on it."""

    labels: np.ndarray
    ijk_to_ras: np.ndarray
    number: int
    arrived: float
    tag: object
    seconds: float


@dataclass(frozen=True)
class LiveStatistics:
    """Where a live stream stands: ``state`` (starting, running, stopped, failed) and a ``message`` saying so in
    words (why, for a failure); the model (``id version``), its device and precision; frames ``received``,
    ``segmented`` (their label maps applied), ``dropped`` (a newer frame replaced them while they waited) and
    ``rejected`` (the model cannot take them; ``problem`` says why, for the latest); label maps per second over
    the last seconds; latency from a frame offered to its label map applied (p50, p99, over the whole stream, of
    the frames offered once the model was loaded); ``seconds`` from the first frame to the latest label map."""

    state: str
    message: str
    model: str = ""
    device: str = ""
    received: int = 0
    segmented: int = 0
    dropped: int = 0
    rejected: int = 0
    problem: str = ""
    frames_per_second: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    seconds: float = 0.0

    @property
    def active(self) -> bool:
        return self.state in (STARTING, RUNNING)

    def summary(self) -> str:
        """One line on frames and timing.

        >>> LiveStatistics(RUNNING, "", received=300, segmented=290, dropped=10, frames_per_second=29.04,
        ...                latency_p50_ms=21.04, latency_p99_ms=40.6).summary()
        '29.0 frames/s, latency p50 21.0 ms, p99 40.6 ms; 300 frames received, 290 segmented, 10 dropped, 0 rejected'
        """
        return (f"{self.frames_per_second:.1f} frames/s, latency p50 {self.latency_p50_ms:.1f} ms, p99"
                f" {self.latency_p99_ms:.1f} ms; {self.received} frames received, {self.segmented} segmented,"
                f" {self.dropped} dropped, {self.rejected} rejected")


@dataclass
class _Waiting:
    """A frame written into an input slot, waiting for the worker or in it."""

    number: int
    frame: SharedFrame
    slot: _Slot
    arrived: float
    tag: object


class _Slot:
    """A reusable shared segment, replaced by a bigger one when a frame does not fit."""

    def __init__(self) -> None:
        self.block: SharedBlock | None = None
        self.size = 0

    def hold(self, size: int) -> SharedBlock:
        if self.block is None or size > self.size:
            self.free()
            self.block = SharedBlock.create(size)
            self.size = max(1, size)
        return self.block

    def free(self) -> None:
        if self.block is not None:
            block, self.block, self.size = self.block, None, 0
            block.close()
            block.unlink()


class LiveStream:
    """Frames segmented live in a worker process of its own, newest frame first (see the module description).

    Args:
        entry: the registry model (ModelRegistryLib ``ModelEntry``); a 2D model.
        version: its ``ModelVersion`` to run (installed by the worker when it is not).
        cache_dir: the registry's cache folder.
        device: a torch device name (``cpu``, ``cuda:0``, ``mps``).
        threads: PyTorch's CPU threads in the worker (None: :func:`default_live_threads`).
        precision: ``auto`` or ``float32``; quality: ``fast`` or ``accurate`` (FrameSegmenter's).
        warm_shape: the (k, j, i) shape of the frames to come, so that the first one is not slower.
        python: the preferred interpreter of the worker (see ModelRegistryLib.jobs.worker_python).
        env: environment variables added to the worker's.

    The worker starts at once; frames offered while it loads the model wait (newest first, as always).
    Everything here runs on the thread that calls it (Slicer's main thread): :meth:`offer` and :meth:`poll`
    never block.
    """

    def __init__(self, entry, version, cache_dir: str, *, device: str = "cpu", threads: int | None = None,
                 precision: str = "auto", quality: str = DEFAULT_LIVE_QUALITY, warm_shape: tuple | None = None,
                 python: str | None = None, env: Mapping | None = None) -> None:
        from .service_client import DEEPSEGMENT_FOLDER

        self.description = f"{entry.id} {version.version}"
        self.worker = WorkerProcess(python, sys_path=[DEEPSEGMENT_FOLDER], env=env, name=LIVE_WORKER_NAME)
        self.model: LiveModel | None = None
        self.state = STARTING
        self.message = f"Starting {self.description}…"
        self.problem = ""
        self._inputs = (_Slot(), _Slot())
        self._output = _Slot()
        self._waiting: _Waiting | None = None
        self._in_worker: tuple | None = None  # (_Waiting, Job)
        self._counts: collections.Counter = collections.Counter()
        self._latency = LatencyHistogram()
        self._applied_at: collections.deque = collections.deque()
        self._first_arrival: float | None = None
        self._last_applied: float | None = None
        self._ready_at: float | None = None  # when the model was loaded
        arguments = {"cache_dir": cache_dir, "entry": entry, "version": version, "device": device,
                     "threads": threads, "precision": precision, "quality": quality,
                     "warm_shape": tuple(warm_shape) if warm_shape else None}
        try:
            self._opening: Job | None = self.worker.submit("DeepSegmentLib.live:open_live_model", arguments,
                                                           description=f"Loading {self.description}")
        except JobError as error:
            self._opening = None
            self._fail(str(error))

    # -- frames in ---------------------------------------------------------------------------------------

    def offer(self, pixels, ijk_to_ras, arrived: float | None = None, tag=None) -> None:
        """A new frame: ``pixels`` in (k, j, i) or (k, j, i, c) order (copied at once: the caller may reuse its
        memory), its IJK-to-RAS matrix, when it arrived (``time.perf_counter``; now by default) and a ``tag``
        handed back with its label map. It goes to the worker if the worker is free, else it waits, replacing
        (dropping) a frame that was waiting. Ignored once the stream has stopped or failed."""
        if self.state not in (STARTING, RUNNING):
            return
        arrived = time.perf_counter() if arrived is None else arrived
        array = np.asarray(pixels)
        matrix = np.asarray(ijk_to_ras, dtype=float)
        if matrix.shape != (4, 4):
            raise ValueError(f"A frame's IJK-to-RAS matrix is 4×4, not {matrix.shape}")
        self._counts["received"] += 1
        if self._first_arrival is None:
            self._first_arrival = arrived
        if self._waiting is not None:
            self._counts["dropped"] += 1
        busy_slot = self._in_worker[0].slot if self._in_worker is not None else None
        slot = self._inputs[1] if busy_slot is self._inputs[0] else self._inputs[0]
        block = slot.hold(array.nbytes)
        target = np.ndarray(array.shape, dtype=array.dtype, buffer=block.buf)
        target[...] = array
        del target
        frame = SharedFrame(block.name, array.dtype.str, tuple(array.shape), tuple(float(v) for v in matrix.ravel()))
        self._waiting = _Waiting(self._counts["received"], frame, slot, arrived, tag)
        if self.state == RUNNING and self._in_worker is None:
            self._send_waiting()

    def _send_waiting(self) -> None:
        waiting, self._waiting = self._waiting, None
        voxels = int(np.prod(waiting.frame.shape[:3]))
        output = self._output.hold(voxels * LABEL_MAP_BYTES_PER_VOXEL)
        try:
            job = self.worker.submit("DeepSegmentLib.live:segment_live_frame",
                                     {"frame": waiting.frame, "output": output.name},
                                     description=f"frame {waiting.number}")
        except JobError:  # the worker has gone: the next poll says why
            return
        self._in_worker = (waiting, job)

    # -- label maps out --------------------------------------------------------------------------------------

    def poll(self, apply: Callable[[LiveResult], None]) -> int:
        """Read what the worker sent (never blocks); hand each finished label map to ``apply`` (which puts it into
        the scene) and count its latency up to ``apply``'s return. Returns how many label maps were applied."""
        if self.state not in (STARTING, RUNNING):
            return 0
        self.worker.poll()
        if self._opening is not None and not self._opened():
            return 0
        applied = 0
        if self._in_worker is not None and self._in_worker[1].finished:
            waiting, job = self._in_worker
            self._in_worker = None
            result = self._result(waiting, job)
            if self.state != RUNNING:
                return 0
            if self._waiting is not None:
                self._send_waiting()  # the worker computes the next frame while this one is applied
            if result is not None:
                apply(result)
                self._count_applied(result)
                applied = 1
        if self.state == RUNNING and not self.worker.alive:
            self._fail(f"{LIVE_WORKER_NAME} stopped unexpectedly: {describe_exit(self.worker.process.returncode)}.")
        return applied

    def _opened(self) -> bool:
        """Whether the model is loaded (the stream runs); False while it loads, or when loading failed."""
        job = self._opening
        if not job.finished:
            if job.progress is not None and job.progress.text:
                self.message = f"Starting {self.description}: {job.progress.text}…"
            return False
        self._opening = None
        if job.error is not None:
            self._fail(str(job.error))
            return False
        self.model = job.result
        self.state = RUNNING
        self._ready_at = time.perf_counter()
        self.message = (f"Segmenting with {self.model.model_id} {self.model.version} on {self.model.device}"
                        f" ({self.model.precision}).")
        if self._waiting is not None:
            self._send_waiting()
        return True

    def _result(self, waiting: _Waiting, job: Job) -> LiveResult | None:
        """The label map of a finished frame job (copied out of the shared segment), or None when the frame was
        rejected; a crashed worker fails the stream."""
        if job.error is not None:
            if job.error.kind == CRASH_KIND:
                self._fail(str(job.error))
            elif job.error.kind != CANCELLED_KIND:
                self._counts["rejected"] += 1
                self.problem = str(job.error)
            return None
        done: SegmentedFrame = job.result
        shape = waiting.frame.shape[:3]
        shared = np.ndarray(shape, dtype=np.dtype(done.dtype), buffer=self._output.block.buf)
        labels = shared.copy()
        del shared
        return LiveResult(labels, np.reshape(waiting.frame.ijk_to_ras, (4, 4)), waiting.number, waiting.arrived,
                          waiting.tag, done.seconds)

    def _count_applied(self, result: LiveResult) -> None:
        now = time.perf_counter()
        self._counts["segmented"] += 1
        if result.arrived >= self._ready_at:  # a frame that waited for the model to load says nothing of latency
            self._latency.add(now - result.arrived)
        self._last_applied = now
        self._applied_at.append(now)

    # -- state ----------------------------------------------------------------------------------------------

    def wait_until_started(self, timeout: float, idle: Callable[[], None] | None = None) -> bool:
        """Poll until the model is loaded (True) or the stream has failed or ``timeout`` seconds passed (False);
        ``idle()`` runs between polls (Slicer passes one that processes GUI events). Frames that finish
        meanwhile are not applied: for scripts and tests before frames come, never from a GUI callback."""
        deadline = time.monotonic() + timeout
        while self.state == STARTING and time.monotonic() < deadline:
            self.poll(lambda result: None)
            (idle or (lambda: time.sleep(0.01)))()
        return self.state == RUNNING

    def statistics(self) -> LiveStatistics:
        """Where the stream stands now (see :class:`LiveStatistics`)."""
        now = time.perf_counter()
        while self._applied_at and now - self._applied_at[0] > RATE_WINDOW_SECONDS:
            self._applied_at.popleft()
        window = min(RATE_WINDOW_SECONDS, now - self._first_arrival) if self._first_arrival is not None else 0.0
        rate = len(self._applied_at) / window if window > 0 else 0.0
        seconds = self._last_applied - self._first_arrival if self._last_applied is not None else 0.0
        model = f"{self.model.model_id} {self.model.version}" if self.model is not None else self.description
        return LiveStatistics(
            state=self.state, message=self.message, model=model,
            device=f"{self.model.device} ({self.model.precision})" if self.model is not None else "",
            received=self._counts["received"], segmented=self._counts["segmented"], dropped=self._counts["dropped"],
            rejected=self._counts["rejected"], problem=self.problem, frames_per_second=rate,
            latency_p50_ms=self._latency.percentile(50) * 1000, latency_p99_ms=self._latency.percentile(99) * 1000,
            seconds=seconds,
        )

    def _fail(self, message: str) -> None:
        self.state = FAILED
        self.message = message
        self._release()

    def stop(self, message: str = "Stopped.") -> LiveStatistics:
        """Stop the worker (blocking a few seconds at most; a frame in it is abandoned) and free the shared
        segments; returns the final statistics. ``message`` says why (when the stream had not failed)."""
        if self.state in (STARTING, RUNNING):
            self.state = STOPPED
            self.message = message
        self._release()
        return self.statistics()

    def _release(self) -> None:
        self.worker.stop()
        self._opening = self._in_worker = self._waiting = None
        for slot in (*self._inputs, self._output):
            slot.free()


__all__ = [
    "DEFAULT_LIVE_QUALITY",
    "FAILED",
    "LIVE_WORKER_NAME",
    "RUNNING",
    "STARTING",
    "STOPPED",
    "LiveModel",
    "LiveResult",
    "LiveStatistics",
    "LiveStream",
    "SegmentedFrame",
    "SharedFrame",
    "default_live_threads",
    "open_live_model",
    "segment_live_frame",
]

"""The DeepSegment model service, Slicer side: persistent worker processes that run models for the panel and
the console.

:class:`ModelService` keeps one worker process (ModelRegistryLib.jobs) per compute device, running
DeepSegmentLib.service, and one more that supervises container runs. A worker holds its loaded networks
across runs, so the second run of a model pays no load time. Each run's volumes go to the worker, and its
label map comes back, through shared memory segments this side creates and always frees
(DeepSegmentLib.shared_images), with exactly the input's geometry.

If a worker crashes (a segfault, an abort, killed for running out of memory), the run fails with a sentence
saying so, Slicer goes on, and the next run starts a fresh worker. Runs are Jobs: poll them from the GUI's
timer (``job.poll()``, ``job.progress``, ``job.cancel()``); a finished one's ``result`` is a
:class:`SegmentationRun`.

Example::

    >>> import numpy as np, SimpleITK as sitk, tempfile
    >>> from ModelRegistryLib.registry import Registry, bundled_source
    >>> registry = Registry([bundled_source()], tempfile.mkdtemp())
    >>> statuses = registry.refresh()
    >>> entry, version = registry.resolve("brain-tissue-demo")
    >>> image = sitk.GetImageFromArray(np.random.default_rng(0).normal(100, 20, (40, 40, 40)).astype(np.float32))
    >>> service = ModelService()
    >>> job = service.segment([image], entry, version, registry.store.cache_dir, device="cpu", quality="fast")
    >>> job.wait(300), job.state, job.result.result.labels.GetSize(), job.result.version
    (True, 'succeeded', (40, 40, 40), '1.1.0')
    >>> service.stop()
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import SimpleITK as sitk

from ModelRegistryLib.jobs import Job, WorkerProcess
from ModelRegistryLib.shared_arrays import free_blocks, remove_orphan_segments

from .engine import DEFAULT_QUALITY, SegmentationResult
from .service import DEFAULT_IDLE_SECONDS, DEFAULT_MEMORY_BUDGET_BYTES, ServiceRun
from .shared_images import read_shared_image, share_run_volumes

SERVICE_NAME = "The DeepSegment model service"
DEEPSEGMENT_FOLDER = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTAINER_WORKER = "container"
# Seconds a cancelled run may take to stop before its worker is terminated: a container must be removed.
CANCEL_GRACE_SECONDS = 10.0
CONTAINER_CANCEL_GRACE_SECONDS = 60.0


@dataclass
class SegmentationRun:
    """A finished run: the model's ``labels`` (ModelRegistryLib ``Label``s), the engine's or container's
    ``result`` (a ``SegmentationResult`` whose label map has exactly the first input's geometry), the model
    and version that ran, and the ``seconds`` from the request to the result."""

    labels: tuple
    result: SegmentationResult
    model_id: str
    version: str
    seconds: float


class ModelService:
    """Runs models in persistent worker processes, one per compute device (see the module description).

    ``python`` is the preferred interpreter of the workers (see ModelRegistryLib.jobs.worker_python); the pool of
    each worker keeps networks within ``memory_budget_bytes`` (estimated) and unloads those unused for
    ``idle_seconds``; ``env`` adds environment variables to workers started from now on. Made, it removes the
    shared memory segments that a process killed during a run left (ModelRegistryLib.shared_arrays).
    """

    def __init__(self, python: str | None = None, *, memory_budget_bytes: int | None = DEFAULT_MEMORY_BUDGET_BYTES,
                 idle_seconds: float = DEFAULT_IDLE_SECONDS, env: Mapping | None = None) -> None:
        self.python = python
        self.memory_budget_bytes = memory_budget_bytes
        self.idle_seconds = idle_seconds
        self.env = dict(env or {})
        self._workers: dict = {}
        remove_orphan_segments()  # what a Slicer killed during a run left in memory

    def worker(self, key: str) -> WorkerProcess:
        """The live worker for ``key`` (a torch device name, or ``container``), started when there is none."""
        worker = self._workers.get(key)
        if worker is not None:
            worker.poll()  # notices a worker that died since
        if worker is None or not worker.alive:
            worker = self._new_worker()
            self._workers[key] = worker
        return worker

    def _new_worker(self) -> WorkerProcess:
        return WorkerProcess(self.python, sys_path=[DEEPSEGMENT_FOLDER], env=self.env, name=SERVICE_NAME)

    def list_devices(self) -> Job:
        """A job listing the compute devices PyTorch finds (``ComputeDevice``s: the CPU, then GPUs), in a worker
        that exits after it: listing imports PyTorch, which takes seconds and hundreds of MB, and a PyTorch or
        GPU driver that crashes takes only that worker down."""
        return self._new_worker().submit("DeepSegmentLib.devices:available_devices",
                                         description="Listing compute devices", exit_after=True)

    def segment(self, images: Sequence, entry, version, cache_dir: str, *, device: str = "cpu",
                quality: str = DEFAULT_QUALITY, threads: int | None = None, precision: str = "auto") -> Job:
        """Install (if needed) and run ``version`` of the registry model ``entry`` on ``images`` (SimpleITK
        volumes, one per model input) in the worker of ``device`` (a torch device name)."""
        options = {"device": device, "quality": quality, "threads": threads, "precision": precision,
                   "memory_budget_bytes": self.memory_budget_bytes, "idle_seconds": self.idle_seconds}
        return self._submit(device, "DeepSegmentLib.service:segment_images", images, entry, version, cache_dir,
                            options, CANCEL_GRACE_SECONDS)

    def segment_in_container(self, images: Sequence, entry, version, cache_dir: str, *,
                             parameters: dict | None = None, device: str = "auto", settings=None) -> Job:
        """Run the container image of ``version`` on ``images``, supervised by the container worker.
        ``settings`` is a ``ContainerSettings``; its time limit is the container runtime's to enforce."""
        options = {"parameters": parameters, "device": device, "settings": settings}
        return self._submit(CONTAINER_WORKER, "DeepSegmentLib.service:segment_images_in_container", images, entry,
                            version, cache_dir, options, CONTAINER_CANCEL_GRACE_SECONDS)

    def loaded_models(self, device: str = "cpu") -> Job:
        """A job listing the networks the worker of ``device`` holds (``LoadedNetwork``s)."""
        return self.worker(device).submit("DeepSegmentLib.service:loaded_models", description="Listing models")

    def stop(self) -> None:
        """Stop every worker (blocking a few seconds at most); runs in progress end cancelled."""
        for worker in self._workers.values():
            worker.stop()
        self._workers.clear()

    def _submit(self, key, target, images, entry, version, cache_dir, options, cancel_grace) -> Job:
        images = list(images)
        if not images:
            raise ValueError("No input volume to segment")
        segments, inputs, output = share_run_volumes(images)
        try:
            arguments = {"cache_dir": cache_dir, "entry": entry, "version": version, "inputs": inputs,
                         "output": output, **options}
            job = self.worker(key).submit(target, arguments, description=f"{entry.id} {version.version}",
                                          cancel_grace=cancel_grace)
        except BaseException:
            free_blocks(segments)
            raise
        started = time.monotonic()

        def finish(done: Job) -> None:
            try:
                if done.error is None:
                    done.result = _segmentation_run(done.result, time.monotonic() - started)
            finally:
                free_blocks(segments)

        job.when_done(finish)
        return job


def _segmentation_run(run: ServiceRun, seconds: float) -> SegmentationRun:
    labels: sitk.Image = read_shared_image(run.label_map)
    result = SegmentationResult(labels=labels, label_values=run.label_values, timings=run.timings, device=run.device,
                                peak_memory_bytes=run.peak_memory_bytes, messages=run.messages,
                                precision=run.precision)
    return SegmentationRun(run.labels, result, run.model_id, run.version, seconds)



"""The DeepSegment model service, worker side: the job targets a persistent worker process runs for Slicer.

:class:`DeepSegmentLib.service_client.ModelService` keeps one worker process per compute device and sends it
runs. The worker keeps a :class:`~DeepSegmentLib.pool.ModelPool` across runs (several networks within a
memory budget, least recently used unloaded first, unused ones unloaded while idle), so the second run of a
model loads nothing. A new version of a model is loaded beside the old one and, once it has run, the old
one is unloaded: no restart. Volumes arrive and label maps go back through shared memory
(DeepSegmentLib.shared_images). The model is installed here too, so the download never runs in Slicer.

Every in-process run goes through one call, :func:`segment_installed_model` (an installed model folder,
images and options in; labels and a result out), which hands the version's runtime to
``DeepSegmentLib.runtimes.run_model`` (DeepSegment packages, MONAI bundles, nnU-Net v2, Auto3DSeg models).

Example (what the client does, in one process)::

    >>> import numpy as np, SimpleITK as sitk, tempfile
    >>> from ModelRegistryLib.registry import Registry, bundled_source
    >>> from DeepSegmentLib.shared_images import allocate_label_map, read_shared_image, share_image
    >>> registry = Registry([bundled_source()], tempfile.mkdtemp())
    >>> statuses = registry.refresh()
    >>> entry, version = registry.resolve("brain-tissue-demo")
    >>> image = sitk.GetImageFromArray(np.random.default_rng(0).normal(100, 20, (40, 40, 40)).astype(np.float32))
    >>> (block, shared), (output, label_map) = share_image(image), allocate_label_map(image)
    >>> run = segment_images(registry.store.cache_dir, entry, version, [shared], label_map, device="cpu",
    ...                      quality="fast")
    >>> labels = read_shared_image(run.label_map)
    >>> for segment in (block, output): segment.close(); segment.unlink()
    >>> newest = loaded_models()[0]  # most recently used first: the network that just ran, kept for the next run
    >>> labels.GetSize(), [label.name for label in run.labels], newest.device, "brain-tissue-demo" in newest.folder
    ((40, 40, 40), ['Gray matter', 'White matter'], 'cpu', True)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from ModelRegistryLib.index import ModelEntry, ModelVersion
from ModelRegistryLib.store import ModelStore
from ModelRegistryLib.worker import call_when_idle

from .engine import DEFAULT_QUALITY, EngineProgress, SegmentationResult
from .pool import ModelPool
from .runtimes import RunOptions, run_model
from .shared_images import SharedImage, read_shared_image, write_shared_image

# Share of the progress bar given to installing a model that is not installed yet.
INSTALL_SHARE = 0.3
DEFAULT_MEMORY_BUDGET_BYTES = 4 * 1024**3
DEFAULT_IDLE_SECONDS = 600.0
IDLE_CHECK_SECONDS = 30.0

_POOL: list = []  # the worker's one ModelPool, made by the first run


@dataclass(frozen=True)
class ServiceRun:
    """What a run sends back: the model and version that ran, its labels (names, colors, terminology), the label
    map written into the run's shared segment, and the engine's (or container's) report."""

    model_id: str
    version: str
    labels: tuple
    label_map: SharedImage
    label_values: tuple
    timings: dict = field(default_factory=dict)
    device: str = ""
    peak_memory_bytes: int = 0
    messages: tuple = ()
    precision: str = "float32"


def model_pool(memory_budget_bytes: int | None = DEFAULT_MEMORY_BUDGET_BYTES,
               idle_seconds: float = DEFAULT_IDLE_SECONDS) -> ModelPool:
    """This process' pool of loaded networks (made by the first call, with its settings)."""
    if not _POOL:
        _POOL.append(ModelPool(memory_budget_bytes=memory_budget_bytes, idle_seconds=idle_seconds))
        call_when_idle(_POOL[0].unload_idle, IDLE_CHECK_SECONDS)
    return _POOL[0]


def loaded_models() -> list:
    """The networks this worker holds (``LoadedNetwork``s), most recently used first."""
    return model_pool().loaded()


def segment_installed_model(
    folder: str,
    images: Sequence,
    *,
    pool: ModelPool,
    device: str,
    quality: str = DEFAULT_QUALITY,
    threads: int | None = None,
    precision: str = "auto",
    runtime: str = "",
    progress: Callable[[EngineProgress], None] | None = None,
    cancel: threading.Event | None = None,
) -> tuple:
    """Run the model installed in ``folder`` on ``images`` (SimpleITK volumes); returns (labels, result).

    The one call per run: ``runtime`` (the version's; empty: told from the folder) runs it
    (``DeepSegmentLib.runtimes.run_model``); a DeepSegment package's network comes from ``pool`` (loaded at most
    once). The result lies on ``images[0]``'s grid.
    """
    if progress is not None:
        progress(EngineProgress(0.0, "loading the model"))
    run = run_model(folder, images, runtime=runtime, device=device, pool=pool, progress=progress, cancel=cancel,
                    options=RunOptions(quality=quality.lower(), threads=threads, precision=precision))
    return tuple(run.labels), run.result


def _progress_shares(installing: bool, progress) -> tuple:
    """Install and run progress callbacks sharing one bar (the install only when there is one to do)."""
    report = progress or (lambda *step: None)
    share = INSTALL_SHARE if installing else 0.0

    def install_progress(step):
        report((step.fraction or 0.0) * share, step.text)

    def run_progress(step):
        report(share + (1.0 - share) * step.fraction, step.stage)

    return install_progress, run_progress


def narrowed_labels(labels: sitk.Image) -> sitk.Image:
    """A label map with 8 or 16 bit voxels (a container may write 32 bit ones), as results travel and are written."""
    if labels.GetPixelID() in (sitk.sitkUInt8, sitk.sitkUInt16, sitk.sitkInt8, sitk.sitkInt16):
        return labels
    values = sitk.GetArrayViewFromImage(labels)
    if values.size and (values.min() < 0 or values.max() > np.iinfo(np.uint16).max):
        raise ValueError("The label map holds values outside 0 to 65535")
    return sitk.Cast(labels, sitk.sitkUInt16)


def service_run(model_id: str, version: str, labels: tuple, result: SegmentationResult,
                output: SharedImage) -> ServiceRun:
    """A run's report, its label map written into the shared segment ``output``."""
    written = write_shared_image(narrowed_labels(result.labels), output)
    return ServiceRun(model_id, version, labels, written, tuple(result.label_values), dict(result.timings),
                      result.device, int(result.peak_memory_bytes), tuple(result.messages), result.precision)


def segment_images(
    cache_dir: str,
    entry: ModelEntry,
    version: ModelVersion,
    inputs: Sequence[SharedImage],
    output: SharedImage,
    *,
    device: str = "cpu",
    quality: str = DEFAULT_QUALITY,
    threads: int | None = None,
    precision: str = "auto",
    memory_budget_bytes: int | None = DEFAULT_MEMORY_BUDGET_BYTES,
    idle_seconds: float = DEFAULT_IDLE_SECONDS,
    progress=None,
    cancel: threading.Event | None = None,
) -> ServiceRun:
    """A run in Slicer's Python: install ``version`` of ``entry`` into ``cache_dir`` if needed, segment the
    shared ``inputs`` with it on ``device`` (a torch device name), write the label map into ``output``.

    After the run, networks of the model's other installed versions are unloaded: a new version replaces
    the old one without a restart.
    """
    store = ModelStore(cache_dir)
    install_progress, run_progress = _progress_shares(store.get(entry.id, version.version) is None, progress)
    installed = store.install(entry, version, progress=install_progress, cancel=cancel)
    pool = model_pool(memory_budget_bytes, idle_seconds)
    images = [read_shared_image(shared) for shared in inputs]
    labels, result = segment_installed_model(installed.path, images, pool=pool, device=device, quality=quality,
                                             threads=threads, precision=precision, runtime=version.runtime,
                                             progress=run_progress, cancel=cancel)
    pool.unload([store.version_path(entry.id, other) for other in store.installed_versions(entry.id)
                 if other != version.version])
    return service_run(entry.id, version.version, labels, result, output)


def segment_images_in_container(
    cache_dir: str,
    entry: ModelEntry,
    version: ModelVersion,
    inputs: Sequence[SharedImage],
    output: SharedImage,
    *,
    parameters: dict | None = None,
    device: str = "auto",
    settings=None,
    progress=None,
    log=None,
    cancel: threading.Event | None = None,
) -> ServiceRun:
    """A run of the model's container image (DeepSegmentLib.container_backend), supervised from this worker:
    waiting on the container never happens in Slicer's process. ``settings`` is a ``ContainerSettings``."""
    from .container_backend import DEFAULT_SETTINGS, segment_in_container

    images = [read_shared_image(shared) for shared in inputs]
    result = segment_in_container(images, entry, version, parameters=parameters, device=device,
                                  download_folder=cache_dir, settings=settings or DEFAULT_SETTINGS,
                                  progress=progress, log=log, cancel=cancel)
    return service_run(entry.id, version.version, tuple(entry.labels), result, output)

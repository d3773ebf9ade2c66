"""The worker side of a batch run: one call per case, in a process (or Ray worker) that keeps the model loaded.

Both ways a batch runs a case go through the model service's one seam, ``service.segment_installed_model`` (an
installed model folder, images and options in; labels and a result out), so every runtime behind it runs in a
batch too, and the network stays loaded across cases in this process's pool (``service.model_pool``):

- :func:`segment_shared` runs in a local batch worker (``ModelRegistryLib.jobs.WorkerProcess``): the coordinator
  reads the case and passes its volumes in shared memory, and writes the result; this process only infers.
- :func:`segment_case_files` reads a case, segments it and writes its result and record, all in this process: a
  Ray task (shared storage), with the same reading and writing functions as a local run, hence the same bytes.

Example (what a local batch worker does for one case, in one process)::

    >>> import tempfile
    >>> import numpy as np, SimpleITK as sitk, torch
    >>> from DeepSegmentLib.package import write_package
    >>> from DeepSegmentLib.shared_images import allocate_label_map, read_shared_image, share_image
    >>> folder = tempfile.mkdtemp()
    >>> write_package(folder, torch.nn.Conv3d(1, 2, 1), {"schemaVersion": 1, "format": "torchscript",
    ...     "weights": "model.pt", "dimensions": 3, "inputs": [{"name": "CT"}], "inference": {"patchSize": [8, 8, 8],
    ...     "activation": "softmax", "outputChannels": 2}, "postprocessing": {"mode": "argmax"}, "labels": [{"value":
    ...     1, "name": "A", "color": "#ff0000"}], "preprocessing": {"spacing": None, "orientation": "native",
    ...     "normalization": [{"kind": "none"}]}})
    >>> image = sitk.GetImageFromArray(np.zeros((6, 7, 8), np.float32))
    >>> (block, shared), (output, label_map) = share_image(image), allocate_label_map(image)
    >>> run = segment_shared(folder, [shared], label_map, "m", "1.0.0", device="cpu", quality="fast", threads=1)
    >>> read_shared_image(run.label_map).GetSize(), [label.name for label in run.labels]
    ((8, 7, 6), ['A'])
    >>> for segment in (block, output): segment.close(); segment.unlink()
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence

from .batch_cases import BatchCase, read_case_images
from .batch_outputs import write_case_result
from .engine import DEFAULT_QUALITY
from .service import ServiceRun, model_pool, segment_installed_model, service_run
from .shared_images import SharedImage, read_shared_image


def segment_shared(
    folder: str,
    inputs: Sequence[SharedImage],
    output: SharedImage,
    model_id: str,
    version: str,
    *,
    device: str = "cpu",
    quality: str = DEFAULT_QUALITY,
    threads: int | None = None,
    precision: str = "auto",
    progress=None,
    cancel: threading.Event | None = None,
) -> ServiceRun:
    """Segment the shared ``inputs`` with the model installed in ``folder``; the label map goes into ``output``."""
    images = [read_shared_image(shared) for shared in inputs]
    labels, result = segment_installed_model(folder, images, pool=model_pool(), device=device, quality=quality,
                                             threads=threads, precision=precision, progress=progress, cancel=cancel)
    return service_run(model_id, version, tuple(labels), result, output)


def segment_case_files(
    case: BatchCase,
    folder: str,
    output_dir: str,
    suffix: str,
    record: Mapping,
    *,
    device: str = "cpu",
    quality: str = DEFAULT_QUALITY,
    threads: int | None = None,
    precision: str = "auto",
    cancel: threading.Event | None = None,
) -> dict:
    """Read ``case``, segment it with the model installed in ``folder`` and write its result and record into
    ``output_dir`` (``record`` holds the fingerprint and what else the record keeps); returns the record written."""
    began = time.perf_counter()
    images = read_case_images(case)
    labels, result = segment_installed_model(folder, images, pool=model_pool(), device=device, quality=quality,
                                             threads=threads, precision=precision, cancel=cancel)
    details = dict(record, device=result.device, precision=result.precision, label_values=list(result.label_values),
                   seconds=round(time.perf_counter() - began, 3))
    return write_case_result(output_dir, case.case_id, suffix, result.labels, labels, details)

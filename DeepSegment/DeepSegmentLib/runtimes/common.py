"""What every runtime shares: run options, progress and cancel by stage, the device, PyTorch's threads, finding a
model's files in an installed folder, loading checkpoints without running code, and the checked result.

Example::

    >>> import SimpleITK as sitk
    >>> stages = Stages(progress=None, cancel=None, shares={"inferring": 1.0})
    >>> with stages.stage("inferring"):
    ...     labels = sitk.Image(3, 3, 3, sitk.sitkUInt8)
    >>> result = finish(labels, sitk.Image(3, 3, 3, sitk.sitkInt16), [1], stages, "CPU")
    >>> result.label_values, sorted(result.timings)
    ((), ['inferring', 'total'])
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..devices import available_devices, choose_device
from ..engine import DEFAULT_QUALITY, EngineError, SegmentationResult, Stages
from ..geometry import LabelMapError, checked_label_map


@dataclass(frozen=True)
class RunOptions:
    """How a model runs, for every runtime (each uses what applies to it).

    ``quality``: a preset of ``engine.QUALITY_PRESETS``: ``exact`` (the model's own windows, overlap and
    test-time mirroring), ``accurate`` (the default: the same scores from less work where DeepSegment's engine can
    tell, see ``window_plan``) or ``fast`` (no mirroring and a quarter of the overlap; nnU-Net leaves out
    mirroring; MONAI bundles and Auto3DSeg models always run as configured); ``threads``: PyTorch's CPU threads
    for the run (None: PyTorch's choice); ``precision``: ``auto`` or ``float32`` (DeepSegment's engine; the other
    runtimes compute as their libraries do); ``folds``: the nnU-Net folds to ensemble (empty: every fold there is).
    """

    quality: str = DEFAULT_QUALITY
    threads: int | None = None
    precision: str = "auto"
    folds: tuple = ()


@dataclass
class ModelRun:
    """A finished run: the model's labels (ModelRegistryLib ``Label``: value, name, color, terminology), the result
    (a label map on exactly the input's grid, its values, timings...) and the runtime that made it. Picklable."""

    labels: tuple
    result: SegmentationResult
    runtime: str


def compute_device(device):
    """``(ComputeDevice, torch.device)`` a device request (``auto``, ``cpu``, ``cuda:1``...) means here."""
    import torch

    try:
        chosen = device if hasattr(device, "torch_name") else choose_device(device or "auto", available_devices())
    except ValueError as error:
        raise EngineError(str(error)) from error
    return chosen, torch.device(chosen.torch_name)


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """PyTorch's CPU threads set to ``threads`` inside the block (unchanged when None), restored after."""
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def find_root(folder: str, *relative: str) -> str:
    """The shallowest folder inside ``folder`` (itself included) holding every '/'-separated path of ``relative``:
    installed archives often wrap a model in a folder of its own. EngineError when there is none."""
    found = []
    for directory, subdirectories, _ in os.walk(folder):
        subdirectories.sort()
        if all(os.path.isfile(os.path.join(directory, *name.split("/"))) for name in relative):
            found.append(directory)
    if not found:
        raise EngineError(f"{folder} holds no {' and '.join(relative)}: it is not a model of this runtime")
    return min(found, key=lambda path: (path.count(os.sep), path))


def load_checkpoint(path: str):
    """A PyTorch checkpoint (state dict, or a dict holding one with plain data beside it), loaded without running
    code: ``torch.load(weights_only=True)``, which unpickles only tensors, containers and plain values, with NumPy's
    scalars and dtypes allowed as well (training code stores metrics as NumPy floats; rebuilding them runs no code).
    A checkpoint that needs anything else is refused, naming what it holds."""
    import torch

    allowed = _numpy_scalar_globals()
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as error:
        raise EngineError(f"The model's weights are missing: {path}") from error
    except Exception as error:  # pickle.UnpicklingError and whatever a damaged file raises
        try:
            unsafe = ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception:  # not a readable checkpoint at all
            unsafe = ""
        if unsafe:
            raise EngineError(
                f"{os.path.basename(path)} holds Python objects ({unsafe}) that loading would have to run code for; "
                "refused: only weights and plain data are loaded"
            ) from error
        raise EngineError(f"{os.path.basename(path)} cannot be read as a PyTorch checkpoint: {error}") from error


def _numpy_scalar_globals() -> list:
    """What rebuilding NumPy scalars and dtypes in a pickle refers to (names differ between NumPy 1 and 2)."""
    import numpy

    allowed = [numpy.dtype, *(type(numpy.dtype(kind)) for kind in "bBhHiIlLqQefdgFD?")]
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        with contextlib.suppress(ImportError, AttributeError):
            allowed.append(__import__(module, fromlist=["scalar"]).scalar)
    return allowed


def label_image(values_kji: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """A label map (uint8, or uint16 for values over 255) of voxel values in NumPy's (z, y, x) order, given the
    reference's geometry; EngineError when its shape is not the reference's."""
    values = np.asarray(values_kji)
    if values.shape != tuple(reversed(reference.GetSize())):
        raise EngineError(f"The model's result has {values.shape[::-1]} voxels, the input {reference.GetSize()}: it "
                          "does not lie on the input's voxel grid")
    dtype = np.uint8 if values.size == 0 or int(values.max()) <= 255 else np.uint16
    image = sitk.GetImageFromArray(np.ascontiguousarray(values, dtype=dtype))
    image.CopyInformation(reference)
    return image


def finish(labels: sitk.Image, reference: sitk.Image, label_values, stages: Stages, device: str,
           messages: tuple = (), precision: str = "float32") -> SegmentationResult:
    """The result of a run whose label map is ``labels``: checked to lie on the input's grid (as the container
    backend checks a container's) and to hold only ``label_values``."""
    try:
        checked, present = checked_label_map(labels, reference, label_values)
    except LabelMapError as error:
        raise EngineError(f"The model's result was rejected: {error}") from error
    return SegmentationResult(labels=checked, label_values=present, timings=stages.finished(), device=device,
                              messages=tuple(messages), precision=precision)

"""The inference engine: input volumes and a model package in, a label map on the input grid out.

Pipeline, on the compute device wherever the data is large: check the inputs → build the model
grid (the input grid itself, or the model's spacing with RAS/LPS axes covering the input's physical
bounding box) → resample every channel onto it (trilinear, ``resample.py``) → crop it when the model says
so (to its foreground, or to the box a localizer network labels on its own grid, plus a margin) → normalize
each channel → inference: sliding windows (``sliding_window.py``), the whole volume at once (padded to a size
multiple), or the volume resized to a fixed shape and the probabilities resized back → argmax, thresholds or
nested regions on the model grid (per-class float maps are never resampled onto the input grid), background
outside the crop → clean-up with SimpleITK (``postprocess.py``) →
nearest-neighbour back to the input grid with ``grid_sample`` on the device (the same exact index
mapping as on the way in) → label values. The result is then given exactly the geometry of
``images[0]`` (``CopyInformation``), so size, spacing, origin and direction always match it.

Progress is reported per stage and per batch of windows; a ``threading.Event`` cancels between
batches and stages (``EngineCancelled``, nothing returned). Inputs a user can fix raise
``EngineError`` with a message saying what is wrong, before any heavy work starts.

Example (a "network" whose logits threshold the intensity at 0.5)::

    >>> import numpy as np, SimpleITK as sitk, torch
    >>> from types import SimpleNamespace as Model
    >>> package = Model(
    ...     inputs=[Model(name="image")], dimensions=3, labels=[Model(value=1, name="bright")],
    ...     preprocessing=Model(spacing=None, orientation="native", normalization=(Model(kind="none"),)),
    ...     inference=Model(patch_size=(8, 8, 8), overlap=0.5, blending="gaussian", batch_size=2,
    ...                     mirror_axes=(), activation="softmax", output_channels=2),
    ...     postprocessing=Model(mode="argmax", thresholds={}, keep_largest_component=(), fill_holes=(),
    ...                          minimum_size_mm3={}))
    >>> threshold = lambda x: torch.cat([0.5 - x, x - 0.5], dim=1)
    >>> voxels = np.zeros((10, 12, 14), np.float32); voxels[3:7, 4:9, 5:11] = 1
    >>> result = segment([sitk.GetImageFromArray(voxels)], package, threshold, device="cpu")
    >>> bool((sitk.GetArrayFromImage(result.labels) == voxels).all()), result.label_values
    (True, (1,))
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Callable

import numpy as np
import SimpleITK as sitk

try:  # POSIX only; on Windows the CPU peak is reported as unknown (0)
    import resource
except ImportError:  # pragma: no cover
    resource = None

from .devices import ComputeDevice, available_devices, choose_device, reduced_precision
from .forward_pass import WindowsAcrossThreads, tuned_network, windows_per_call
from .postprocess import largest_component, postprocess_steps
from .resample import Grid, model_grid, resample, same_grid
from .sliding_window import OutOfDeviceMemoryError, Window, sliding_window
from .window_plan import (
    FirstWindowCheck,
    PerNetwork,
    WindowRefusedError,
    accepted_multiple,
    background_mask,
    plan_windows,
    window_wide_operation,
)

# Share of the whole run each stage is given in progress fractions (inference dominates).
STAGES = (
    ("reading", 0.05),
    ("resampling", 0.05),
    ("normalizing", 0.02),
    ("inferring", 0.78),
    ("postprocessing", 0.05),
    ("resampling back", 0.05),
)
# Float32 feature maps per window voxel alive during one forward pass of a typical small 3D U-Net
# (16 channels at full resolution, kept for skip connections, plus the coarser levels): a
# deliberately generous rule of thumb, as a network's working set cannot be known before running it.
NETWORK_FEATURES_PER_VOXEL = 64
# Voxels per slab when turning class scores into labels, bounding the temporary memory.
_SLAB_VOXELS = 1 << 24
# A window plan's larger windows may use this share of the memory left once volumes and accumulators are
# counted, leaving the rest to other programs; where the free memory cannot be told (Apple GPUs) the
# device is taken to have UNKNOWN_DEVICE_MEMORY bytes.
WINDOW_MEMORY_SHARE = 0.5
UNKNOWN_DEVICE_MEMORY = 4 * 1024**3
# The largest window (256³ voxels): one forward pass over it takes seconds on a CPU, so progress still
# moves and a cancel is still answered within seconds (both wait for the window in flight).
MAX_WINDOW_VOXELS = 1 << 24
# How windows are chosen: "model" tiles the volume with the model's own windows, "largest" lets a window
# plan (window_plan.py) use the largest windows a network made of local operations accepts.
WINDOW_CHOICES = ("model", "largest")
# Quality presets, each a set of segment() options (the accuracy each costs is measured by
# Testing/benchmark_inference.py and stated in the README). exact: the model as its authors validated it
# (its windows, overlap and mirroring). accurate: the same scores with less work: larger windows where
# the network's output does not depend on the window, windows of background skipped, the forward pass
# tuned for the device (forward_pass.py). fast: accurate without the mirroring and with a quarter of the
# model's window overlap.
QUALITY_PRESETS = MappingProxyType({
    "fast": MappingProxyType(
        {"overlap": 0.25, "mirror": False, "windows": "largest", "skip_background": True, "fast_forward": True}),
    "accurate": MappingProxyType(
        {"overlap": None, "mirror": True, "windows": "largest", "skip_background": True, "fast_forward": True}),
    "exact": MappingProxyType(
        {"overlap": None, "mirror": True, "windows": "model", "skip_background": False, "fast_forward": False}),
})
DEFAULT_QUALITY = "accurate"
# "auto": reduced precision where the device computes it natively; "float32": never.
PRECISIONS = ("auto", "float32")


@dataclass
class EngineProgress:
    """``fraction`` of the whole run done (0 to 1) and the ``stage`` running."""

    fraction: float
    stage: str


class EngineError(ValueError):
    """An input or model the engine cannot run on; the message tells the user what to change."""


class EngineCancelled(Exception):  # noqa: N818 - the name says what happened; it is not a failure
    """The run was cancelled; no result was made."""


@dataclass
class SegmentationResult:
    """A label map with exactly ``images[0]``'s geometry, the label values present in the model,
    seconds per stage, the device's description, the peak memory the run used (bytes: CUDA
    allocations on a GPU, the process's peak resident size on CPU, 0 where unknown) and messages
    for the user (a container's report), the precision the network ran in, and the windows it ran on
    (the window plan's summary, and why they were not larger where they were not)."""

    labels: sitk.Image
    label_values: tuple
    timings: dict = field(default_factory=dict)
    device: str = ""
    peak_memory_bytes: int = 0
    messages: tuple = ()
    precision: str = "float32"
    windows: str = ""


# ----------------------------------------------------------------------------------------------- inputs


def _input_names(package) -> list:
    return [getattr(spec, "name", "") or f"input {i + 1}" for i, spec in enumerate(package.inputs)]


def _validate(images: Sequence, package) -> None:
    """Raise EngineError for inputs that cannot be segmented; cheap checks only (no voxel reads)."""
    names = _input_names(package)
    if len(images) != len(names):
        raise EngineError(
            f"The model needs {len(names)} input volume(s) ({', '.join(names)}), {len(images)} given"
        )
    for name, image in zip(names, images):
        if image is None or image.GetNumberOfPixels() == 0:
            raise EngineError(f"Input '{name}' is empty (no voxels)")
        if image.GetDimension() != 3:
            size = "×".join(str(n) for n in image.GetSize())
            raise EngineError(f"Input '{name}' is a {image.GetDimension()}D image ({size}); the model needs 3D volumes")
        if min(image.GetSize()) < 2 and _dimensions(package) == 3:
            size = "×".join(str(n) for n in image.GetSize())
            raise EngineError(f"Input '{name}' has a single slice ({size}); the model needs 3D volumes")
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise EngineError(
                f"Input '{name}' has {image.GetNumberOfComponentsPerPixel()} components per voxel (color or"
                " vector image); the model needs one scalar volume per input"
            )
    regions = getattr(package.postprocessing, "regions", ())
    counts = {"argmax": len(package.labels) + 1, "threshold": len(package.labels), "regions": len(regions)}
    mode = package.postprocessing.mode
    if mode not in counts:
        raise EngineError(f"Unknown postprocessing mode {mode!r}: use argmax, threshold or regions")
    if package.inference.output_channels != counts[mode]:
        raise EngineError(
            f"The model is inconsistent: {mode} over {len(package.labels)} label(s) needs {counts[mode]} output"
            f" channels, the model declares {package.inference.output_channels}"
        )


def _dimensions(package) -> int:
    return int(getattr(package, "dimensions", 3))


def _mode(package) -> str:
    """How the network sees the model grid: ``sliding-window``, ``whole-volume`` or ``resize``."""
    return getattr(package.inference, "mode", "sliding-window")


def _with_slice_axis(sizes, package) -> tuple:
    """Sizes along the network's axes as image axes (x, y, z): a 2D model's are one voxel along its slice axis."""
    sizes = [int(n) for n in sizes]
    if _dimensions(package) == 2:
        sizes.insert(int(getattr(package, "slice_axis", 2)), 1)
    return tuple(sizes)


def window_patch_size(package) -> tuple:
    """The sliding window's patch in image axes (x, y, z): a 2D model's plane patch is one voxel thick
    along its slice axis, so slices are windows of the same engine (batched, blended, mirrored)."""
    return _with_slice_axis(package.inference.patch_size, package)


def network_input_size(package, grid_size: Sequence) -> tuple:
    """The size (x, y, z) of one network input over a model grid (or crop) of ``grid_size`` voxels (x, y, z): the
    model's window (``sliding-window``), its ``shape`` (``resize``), or the grid rounded up to the declared
    ``sizeMultiple`` (``whole-volume``); a 2D model's inputs are one slice thick.

    >>> from types import SimpleNamespace as Model
    >>> package = Model(dimensions=3, inference=Model(mode="whole-volume", size_multiple=(16, 16, 8)))
    >>> network_input_size(package, (100, 64, 30))
    (112, 64, 32)
    """
    mode = _mode(package)
    if mode == "sliding-window":
        return window_patch_size(package)
    if mode == "resize":
        return _with_slice_axis(package.inference.shape, package)
    axes = 3 if _dimensions(package) == 3 else 2
    multiple = _with_slice_axis(getattr(package.inference, "size_multiple", None) or (1,) * axes, package)
    thin = int(getattr(package, "slice_axis", 2)) if _dimensions(package) == 2 else None
    return tuple(1 if axis == thin else -(-int(n) // m) * m for axis, (n, m) in enumerate(zip(grid_size, multiple)))


class SliceWiseNetwork:
    """A 2D network seen as a 3D one: N×C×Z×Y×X windows one voxel thick along the slice axis go in as
    N×C×H×W slices, and the slice dimension is put back on the N×K×H×W output."""

    def __init__(self, network: Callable, slice_axis: int) -> None:
        self.network = network
        self.dim = 4 - int(slice_axis)  # image axis x, y, z is tensor dimension 4, 3, 2

    def __call__(self, windows):
        return self.network(windows.squeeze(self.dim)).unsqueeze(self.dim)


class ReversedAxesNetwork:
    """A network taking (N, C, x, y, z) tensors (MONAI, nibabel; ``axisOrder`` ``xyz``) seen as one taking the
    engine's (N, C, z, y, x): the spatial dimensions are reversed on the way in and on the way out (also for
    2D slices: (N, C, y, x) in, (N, C, x, y) to the network).

    >>> import torch
    >>> xyz = ReversedAxesNetwork(lambda t: t * torch.arange(t.shape[2]).reshape(1, 1, -1, 1, 1))
    >>> xyz(torch.ones(1, 1, 2, 3, 4))[0, 0, 0]   # scaled along x, the engine's last dimension
    tensor([[0., 1., 2., 3.],
            [0., 1., 2., 3.],
            [0., 1., 2., 3.]])
    """

    def __init__(self, network: Callable) -> None:
        self.network = network

    def __call__(self, windows):
        order = (0, 1, *range(windows.dim() - 1, 1, -1))  # its own inverse
        return self.network(windows.permute(order).contiguous()).permute(order)


def axis_order(package) -> str:
    """The order of the network's spatial tensor dimensions: ``zyx`` (the engine's) or ``xyz``."""
    return str(getattr(package.inference, "axis_order", "zyx"))


def engine_network(network: Callable, package) -> Callable:
    """``network`` as the sliding window calls it: on N×C×Z×Y×X windows, whatever the network's own axis
    order (``ReversedAxesNetwork``) and dimensions (a 2D network through ``SliceWiseNetwork``)."""
    model = ReversedAxesNetwork(network) if axis_order(package) == "xyz" else network
    return SliceWiseNetwork(model, getattr(package, "slice_axis", 2)) if _dimensions(package) == 2 else model


def network_window_shape(package, channels: int, batch: int = 1, size: Sequence | None = None) -> tuple:
    """The shape of one batch of the model's own windows (or of inputs of ``size``, x, y, z) as the network
    takes them, in its axis order."""
    patch = tuple(int(p) for p in (package.inference.patch_size if size is None else size))
    return (batch, channels, *(patch if axis_order(package) == "xyz" else reversed(patch)))


def _resolve_device(device) -> ComputeDevice:
    if isinstance(device, ComputeDevice):
        return device
    try:
        return choose_device(device, available_devices())
    except ValueError as error:
        raise EngineError(str(error)) from error


def _model_grid(images: Sequence, package) -> Grid:
    preprocessing = package.preprocessing
    spacing = preprocessing.spacing
    try:
        return model_grid(images[0], tuple(spacing) if spacing is not None else None, preprocessing.orientation,
                          getattr(preprocessing, "spacing_tolerance", None))
    except ValueError as error:
        raise EngineError(f"The model's preprocessing cannot be applied: {error}") from error


# ----------------------------------------------------------------------------------------------- memory


def _window_bytes_per_voxel(channels: int, classes: int) -> int:
    """Bytes per window voxel of a batch in flight: its input, logits, probabilities and their mirrored
    average, and the network's working set."""
    return channels * 4 + classes * 4 * 3 + 4 * NETWORK_FEATURES_PER_VOXEL


def estimate_memory(images: Sequence, package, device) -> int:
    """Bytes a run needs on ``device`` (a name such as ``"cpu"`` or a ComputeDevice) at its peak.

    Counts the input and model-grid volumes, the class-score accumulators (fp16 on CUDA), the batch of
    windows and their probabilities, a rule-of-thumb working set for the network, and the label maps.
    """
    compute = _resolve_device(device)
    grid = _model_grid(images, package)
    inference = package.inference
    channels = len(images)
    classes = int(inference.output_channels)
    patch_size = network_input_size(package, grid.size)
    patch = int(np.prod(patch_size))
    padded = int(np.prod([max(n, p) for n, p in zip(grid.size, patch_size)]))
    input_voxels = sum(int(np.prod(image.GetSize())) for image in images)
    accumulator_bytes = 2 if compute.kind == "cuda" else 4
    batch = int(inference.batch_size)
    total = (
        input_voxels * 4  # inputs as float32
        + channels * padded * 4 * 2  # model-grid volume, and its padded copy
        + (classes + 1) * padded * accumulator_bytes  # class scores and weights
        + batch * patch * _window_bytes_per_voxel(channels, classes)  # windows in flight, the network's work
        + padded * 6  # labels on the model grid (and as float32 for resampling back)
        + int(np.prod(images[0].GetSize())) * 6  # labels on the input grid
    )
    if compute.kind == "cpu":
        total += input_voxels * 4  # the NumPy copies the tensors are made from
    return int(total)


def _available_memory(compute: ComputeDevice) -> int:
    """Free memory of the device in bytes, 0 when it cannot be told."""
    if compute.kind == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(compute.index)[0])
    if compute.kind == "cpu":
        with contextlib.suppress(OSError, ValueError), open("/proc/meminfo", encoding="utf-8") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        return compute.total_memory
    return 0


def _memory_limit(compute: ComputeDevice, budget: int | None) -> int:
    """The bytes a run may use on the device: the budget, the free memory, the smaller of both, 0 if unknown."""
    available = _available_memory(compute)
    return min(budget, available) if budget and available else budget or available


def window_voxel_limit(images: Sequence, package, device, budget: int | None = None) -> int:
    """The most voxels one window of a window plan may hold (at most ``MAX_WINDOW_VOXELS``): a share of what
    the memory limit leaves once the volumes and accumulators are counted (``estimate_memory`` with the
    model's windows) on ``device`` (a name or a ComputeDevice), within the free memory and ``budget``."""
    compute = _resolve_device(device)
    limit = _memory_limit(compute, budget) or UNKNOWN_DEVICE_MEMORY
    inference = package.inference
    channels, classes = len(images), int(inference.output_channels)
    per_voxel = _window_bytes_per_voxel(channels, classes)
    model_windows = int(inference.batch_size) * int(np.prod(window_patch_size(package))) * per_voxel
    fixed = estimate_memory(images, package, compute) - model_windows
    return min(MAX_WINDOW_VOXELS, max(0, int((limit - fixed) * WINDOW_MEMORY_SHARE)) // per_voxel)


def _check_memory(images: Sequence, package, compute: ComputeDevice, budget: int | None) -> None:
    needed = estimate_memory(images, package, compute)
    limit = _memory_limit(compute, budget)
    if limit and needed > limit:
        reason = "the memory budget" if budget and limit == budget else "the free memory"
        raise EngineError(
            f"This volume needs about {needed / 1024**3:.2f} GiB on {compute.description} but {reason} is"
            f" {limit / 1024**3:.2f} GiB. Crop the volume, close other programs, raise the budget or use a"
            " device with more memory."
        )


def _peak_memory(device) -> int:
    if device.type == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated(device))
    if resource is None:
        return 0
    # ru_maxrss is in kilobytes on Linux, bytes on macOS.
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * (1 if sys.platform == "darwin" else 1024)


# ------------------------------------------------------------------------------------------ normalizing


def _foreground(channel, normalization):
    """Voxels whose statistics define the normalization, or None for all of them."""
    if getattr(normalization, "threshold", None) is not None:
        return channel > float(normalization.threshold)
    if getattr(normalization, "foreground", "all") == "nonzero":
        return channel != 0
    return None


def _percentile(values, percent: float) -> float:
    # kthvalue works on any size, unlike torch.quantile (limited to 2**24 elements).
    k = round(percent / 100.0 * (values.numel() - 1)) + 1
    return float(values.reshape(-1).kthvalue(min(max(k, 1), values.numel())).values)


def _foreground_values(channel, normalization, statistic: str) -> tuple:
    """(mask, values): the step's foreground of ``channel`` (None: every voxel) and its voxels' values;
    EngineError when it has none to compute ``statistic`` (words for the user) from."""
    mask = _foreground(channel, normalization)
    values = channel if mask is None else channel[mask]
    if values.numel() == 0:
        raise EngineError(f"The volume has no foreground voxels to compute {statistic} from")
    return mask, values


def _foreground_percentiles(channel, normalization) -> tuple:
    """The ``percentiles`` (low, high) of the step's foreground voxels of ``channel``."""
    _, values = _foreground_values(channel, normalization, "intensity percentiles")
    return tuple(_percentile(values, p) for p in normalization.percentiles)


def _linear_map(channel, low: float, high: float, normalization):
    """``channel`` mapped linearly from (low, high) onto the step's ``range``, clipped to it unless the step's
    ``clip`` is False (in place)."""
    low_out, high_out = (float(v) for v in getattr(normalization, "range", (0.0, 1.0)) or (0.0, 1.0))
    scale = (high_out - low_out) / (high - low) if high > low else 0.0
    if getattr(normalization, "clip", True):
        channel.clamp_(low, high)
    return channel.sub_(low).mul_(scale).add_(low_out)


def _z_score(channel, normalization):
    if getattr(normalization, "mean", None) is not None:
        return channel.sub_(float(normalization.mean)).div_(float(normalization.std))
    mask, values = _foreground_values(channel, normalization, "the intensity mean")
    mean = float(values.mean())
    std = float(values.std(unbiased=False)) if values.numel() > 1 else 0.0
    channel.sub_(mean).div_(std if std > 1e-8 else 1.0)
    if mask is not None:
        channel.masked_fill_(~mask, 0.0)
    return channel


def normalize(channel, normalization):
    """``channel`` (a float32 tensor, changed in place) normalized as ``normalization`` says: one step, or a
    sequence of steps applied in order (each computing its statistics on what the previous ones left).

    ``ct-window``: scale ``window`` (low, high) linearly onto ``range``, clipping outside unless ``clip`` is
    False. ``z-score``: subtract the mean and divide by the standard deviation of the foreground
    (``"all"``, ``"nonzero"`` voxels, or those above ``threshold``; voxels outside it are set to 0, as
    nnU-Net does), or the fixed ``mean`` and ``std``. ``percentile``: the foreground's ``percentiles`` (low,
    high, in percent) are scaled onto ``range``, clipping unless ``clip`` is False. ``clip``: clamp to
    ``window``, or to the foreground's ``percentiles``. ``scale-shift``: times ``scale`` plus ``shift``.
    ``sigmoid``: 1 / (1 + e^-x). ``none``: unchanged.

    >>> import torch
    >>> from types import SimpleNamespace as N
    >>> normalize(torch.tensor([-1000.0, 40.0, 400.0]), N(kind="ct-window", window=(-160, 240), range=(0, 1)))
    tensor([0.0000, 0.5000, 1.0000])
    >>> normalize(torch.tensor([0.0, 1.0, 3.0]), N(kind="z-score", foreground="nonzero", threshold=None))
    tensor([ 0., -1.,  1.])
    >>> normalize(torch.tensor([-2.0, 0.0, 9.0]), (N(kind="clip", window=(-1, 1)), N(kind="scale-shift", scale=2,
    ...                                             shift=1), N(kind="sigmoid")))
    tensor([0.2689, 0.7311, 0.9526])
    """
    if isinstance(normalization, (tuple, list)):
        for step in normalization:
            normalize(channel, step)
        return channel
    kind = normalization.kind
    if kind == "none":
        return channel
    if kind == "ct-window":
        low, high = (float(v) for v in normalization.window)
        return _linear_map(channel, low, high, normalization)
    if kind == "percentile":
        return _linear_map(channel, *_foreground_percentiles(channel, normalization), normalization)
    if kind == "z-score":
        return _z_score(channel, normalization)
    if kind == "clip":
        window = getattr(normalization, "window", None)
        low, high = window if window is not None else _foreground_percentiles(channel, normalization)
        return channel.clamp_(float(low), float(high))
    if kind == "scale-shift":
        return channel.mul_(float(normalization.scale)).add_(float(normalization.shift))
    if kind == "sigmoid":
        return channel.sigmoid_()
    raise EngineError(f"Unknown intensity normalization {kind!r}")


def non_finite_value(package) -> float | None:
    """What NaN and infinite input voxels become (the model's ``preprocessing.nonFinite``); None: refused."""
    return getattr(package.preprocessing, "non_finite_value", None)


def replace_non_finite(tensor, value: float):
    """``tensor`` with its NaN and infinite values replaced by ``value`` (in place)."""
    import torch

    value = float(value)
    return torch.nan_to_num_(tensor, nan=value, posinf=value, neginf=value)


def _normalizations(package, channels: int) -> list:
    steps = list(package.preprocessing.normalization)
    if len(steps) == 1:
        return steps * channels
    if len(steps) != channels:
        raise EngineError(f"The model gives {len(steps)} normalizations for {channels} input channels")
    return steps


# ------------------------------------------------------------------------------------------------ labels


def _label_lookup(package) -> np.ndarray:
    """Label value of each index ``_indices`` gives: 0 for background, then the labels in the package's order
    (argmax: output channel k is index k; threshold: output channel k is index k + 1)."""
    values = [int(label.value) for label in package.labels]
    dtype = np.uint8 if not values or max(values) <= 255 else np.uint16
    return np.array([0, *values], dtype=dtype)


def _most_probable_above(scores, limits) -> tuple:
    """(index of the most probable channel among those at least their ``limits``, whether any is): per voxel of
    ``scores`` (K×Z×Y×X probabilities; ``limits`` one per channel)."""
    import torch

    above = scores >= limits[:, None, None, None]
    best = torch.where(above, scores, torch.full_like(scores, -1.0)).max(dim=0).indices
    return best, above.any(dim=0)


def _argmax_with_thresholds(scores, thresholded, limits):
    """Argmax indices where the ``thresholded`` channels (a long tensor) count only where their probability is at
    least their ``limits``: the most probable of those that are, else the most probable other channel."""
    import torch

    others = scores.clone()
    others[thresholded] = -1.0
    best, any_above = _most_probable_above(scores[thresholded], limits)
    return torch.where(any_above, thresholded[best], others.max(dim=0).indices)


def _indices(probabilities, package):
    """Per voxel, the index into ``_label_lookup`` (uint8 tensor) decided on the model grid: argmax (labels with a
    channel threshold only where their probability reaches it), thresholds (the most probable label above its
    threshold), or nested regions (the last region listed whose probability reaches its threshold)."""
    import torch

    _, nz, ny, nx = probabilities.shape
    device = probabilities.device
    steps = package.postprocessing
    values = [int(label.value) for label in package.labels]
    dtype = torch.uint8 if len(values) < 256 else torch.int16
    indices = torch.empty((nz, ny, nx), dtype=dtype, device=device)
    thresholds = thresholded = None
    if steps.mode == "threshold":
        given = dict(steps.thresholds or {})
        thresholds = torch.tensor([float(given.get(v, 0.5)) for v in values], device=device)
    elif steps.mode == "regions":
        regions = [(c, float(region.threshold), values.index(int(region.label)) + 1)
                   for c, region in enumerate(steps.regions)]
    else:
        given = dict(getattr(steps, "channel_thresholds", None) or {})
        if given:
            thresholded = torch.tensor([k for k, v in enumerate(values, 1) if v in given], device=device)
            limits = torch.tensor([float(given[v]) for v in values if v in given], device=device)
    slab = max(1, _SLAB_VOXELS // (ny * nx))
    # max(dim=0).indices, not argmax(dim=0): the same first-maximum indices, but PyTorch's CPU argmax over
    # the outer (channel) dimension is about 7x slower (a 3×160³ volume: 0.98 s against 0.14 s; one 2×256²
    # frame: 6.3 ms against 0.5 ms).
    for z0 in range(0, nz, slab):
        scores = probabilities[:, z0 : z0 + slab].float()
        if steps.mode == "regions":
            block = torch.zeros(scores.shape[1:], dtype=dtype, device=device)
            for channel, threshold, index in regions:  # outermost first: inner regions paint over it
                block[scores[channel] >= threshold] = index
            indices[z0 : z0 + slab] = block
        elif thresholds is not None:
            best, any_above = _most_probable_above(scores, thresholds)
            indices[z0 : z0 + slab] = torch.where(any_above, best + 1, torch.zeros_like(best))
        elif thresholded is not None:
            indices[z0 : z0 + slab] = _argmax_with_thresholds(scores, thresholded, limits)
        else:
            indices[z0 : z0 + slab] = scores.max(dim=0).indices
    return indices


# ------------------------------------------------------------------------------------------------- stages


class Stages:
    """Times named stages, reports progress as ``EngineProgress`` (each stage a share of the whole) and raises
    EngineCancelled at stage boundaries and wherever :meth:`check_cancel` is called. On a CUDA ``device`` a stage
    ends when the device has finished its work, so that its time is the stage's own. Every runtime uses it."""

    def __init__(self, progress: Callable | None, cancel, shares: dict, device=None) -> None:
        self.progress, self.cancel, self.device = progress, cancel, device
        self.timings: dict = {}
        self._began = time.perf_counter()
        self._starts, start = {}, 0.0
        for name, share in shares.items():
            self._starts[name] = (start, share)
            start += share

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise EngineCancelled("Segmentation cancelled")

    def report(self, stage: str, within: float = 0.0) -> None:
        if self.progress is not None:
            start, share = self._starts[stage]
            self.progress(EngineProgress(min(1.0, start + share * min(max(within, 0.0), 1.0)), stage))

    @contextlib.contextmanager
    def stage(self, name: str):
        self.check_cancel()
        self.report(name)
        began = time.perf_counter()
        yield
        if self.device is not None and self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - began

    def finished(self) -> dict:
        """The stages' times and the ``total`` since this object was made, in seconds."""
        return {**self.timings, "total": time.perf_counter() - self._began}


def _read(images: Sequence, names: list, device, non_finite_value: float | None = None) -> list:
    """The images as float32 tensors on ``device``; NaN and infinite voxels (also values beyond float32's
    range) are refused, or replaced by ``non_finite_value`` when the model declares one."""
    import torch

    tensors = []
    for name, image in zip(names, images):
        array = sitk.GetArrayViewFromImage(image)
        tensor = torch.from_numpy(np.array(array, dtype=np.float32)).to(device)
        if array.dtype.kind == "f":
            if non_finite_value is not None:
                replace_non_finite(tensor, non_finite_value)
            elif not bool(torch.isfinite(tensor).all()):
                raise EngineError(
                    f"Input '{name}' contains NaN or infinite voxels; fix or mask them before segmenting (the"
                    " model's preprocessing.nonFinite does not say what to replace them with)"
                )
        tensors.append(tensor)
    return tensors


def _to_model_grid(tensors: list, images: Sequence, grid: Grid, device):
    import torch

    volume = torch.empty((len(tensors), *reversed(grid.size)), dtype=torch.float32, device=device)
    for c, (tensor, image) in enumerate(zip(tensors, images)):
        source = Grid.from_image(image)
        volume[c] = tensor if same_grid(source, grid) else resample(tensor[None], source, grid)[0]
    return volume


def _mirror_dims(mirror_axes: Sequence) -> tuple:
    """Tensor dimensions (N×C×Z×Y×X) of model axes given as 0 = x, 1 = y, 2 = z."""
    axes = tuple(int(a) for a in mirror_axes)
    if any(a not in (0, 1, 2) for a in axes):
        raise EngineError(f"Mirror axes must be 0 (x), 1 (y) or 2 (z), not {axes}")
    return tuple(4 - a for a in axes)


def _network(package, network, compute: ComputeDevice) -> Callable:
    """The given network, or the package's loaded onto the device."""
    if network is not None:
        return network
    from .package import load_network

    try:
        return load_network(package, compute.torch_name)
    except ValueError as error:  # PackageError: the weights file is missing, refused or unreadable
        raise EngineError(f"The model cannot be loaded: {error}") from error


def model_input(images: Sequence, package, device="cpu", normalized: bool = True) -> tuple:
    """``(volume, grid)``: ``images`` (one SimpleITK volume per model input) on the model grid as a C×Z×Y×X
    float32 tensor on ``device``, each channel normalized as the package says unless ``normalized`` is False.

    The same steps as :func:`segment` takes before its sliding window: a training prepares its data with this,
    so that the network learns on exactly what it will be given.

    >>> import SimpleITK as sitk
    >>> from types import SimpleNamespace as Model
    >>> package = Model(inputs=[Model(name="image")], preprocessing=Model(
    ...     spacing=(2.0, 2.0, 2.0), orientation="RAS", normalization=(Model(kind="z-score", foreground="all"),)))
    >>> volume, grid = model_input([sitk.Image([8, 6, 4], sitk.sitkFloat32) + 3.0], package)
    >>> tuple(volume.shape), grid.size, float(volume.abs().max())
    ((1, 2, 3, 4), (4, 3, 2), 0.0)
    """
    import torch

    images = list(images)
    if len(images) != len(package.inputs):
        raise EngineError(f"The model needs {len(package.inputs)} input volume(s), {len(images)} given")
    torch_device = torch.device(_resolve_device(device).torch_name)
    grid = _model_grid(images, package)
    volume = _to_model_grid(_read(images, _input_names(package), torch_device), images, grid, torch_device)
    if normalized:
        for c, step in enumerate(_normalizations(package, len(images))):
            normalize(volume[c], step)
    return volume, grid


def quality_options(package, quality: str = DEFAULT_QUALITY) -> dict:
    """``segment``'s ``overlap``, ``mirror_axes``, ``windows``, ``skip_background`` and ``fast_forward`` for a
    quality preset (``fast``, ``accurate`` or ``exact``); the overlap is the package's unless the preset sets
    one."""
    if quality not in QUALITY_PRESETS:
        raise EngineError(f"Unknown quality {quality!r}: use {', '.join(QUALITY_PRESETS)}")
    preset = QUALITY_PRESETS[quality]
    mirror_axes = tuple(package.inference.mirror_axes) if preset["mirror"] else ()
    overlap = float(package.inference.overlap if preset["overlap"] is None else preset["overlap"])
    return {"overlap": overlap, "mirror_axes": mirror_axes, "windows": preset["windows"],
            "skip_background": preset["skip_background"], "fast_forward": preset["fast_forward"]}


def _declared_multiple(package) -> tuple | None:
    """The package's ``sizeMultiple`` in tensor order (z, y, x), a 2D model's slice axis one voxel."""
    declared = getattr(package.inference, "size_multiple", None)
    return None if declared is None else tuple(reversed(_with_slice_axis(declared, package)))


def _window_plan(volume, model: Callable, network: Callable, package, window: Window, windows: str,
                 skip_background: bool, voxel_limit: int) -> tuple:
    """(plan, notes): the windows to run over ``volume`` and why they are not larger where they are not.

    Args:
        volume: the normalized model-grid volume (C×Z×Y×X, on the device).
        model: what the sliding window calls (a 2D network wrapped to take windows one slice thick).
        network: the network itself, whose graph is inspected and whose probe results are kept.
        package: the model package (its patch size, declared size multiples).
        window: the model's own windows, with this run's overlap, mirroring and precision.
        windows: ``"model"`` or ``"largest"`` (see ``WINDOW_CHOICES``).
        skip_background: skip windows holding only background, and crop larger windows to the rest.
        voxel_limit: the most voxels one larger window may hold.
    """
    shape = tuple(volume.shape[1:])
    notes = []
    multiple = None
    if windows == "largest":
        wide = window_wide_operation(network)
        multiple = _declared_multiple(package)
        if wide:
            notes.append(f"the network computes {wide} over each window, so it keeps the model's windows")
            multiple = None
        elif multiple is None:
            multiple = accepted_multiple(model, int(volume.shape[0]), window.patch_size, volume.device,
                                         cache_key=network)
            if multiple is None:
                notes.append("the network accepts no window size but the model's own")
    plan = plan_windows(shape, window, multiple=multiple, max_window_voxels=voxel_limit)
    background = background_mask(volume) if skip_background else None
    if background is None:
        return plan, notes
    skipping = plan_windows(shape, window, multiple=multiple, max_window_voxels=voxel_limit, background=background)
    # The probe runs a window through the network: only when the background changes which windows run.
    if (skipping.window, skipping.origins) == (plan.window, plan.origins):
        return plan, notes
    darkest = volume.reshape(int(volume.shape[0]), -1).min(dim=1).values
    probed = (tuple(darkest.tolist()), window.patch_size, window.autocast, str(volume.device))
    if not _background_answers.get(network, probed, lambda: _labels_background(darkest, model, package, window)):
        notes.append("the network does not label background input as background, so no window is skipped")
        return plan, notes
    return skipping, notes


# The probe's answer per network, darkest values, window and precision: volumes normalized alike (percentile
# scaling, clipped CT) share their darkest values, so a cohort or a live stream probes once, not every run.
_background_answers = PerNetwork()


def _labels_background(darkest, model: Callable, package, window: Window) -> bool:
    """Whether the network gives one window of background input (every channel at its ``darkest`` value in
    the volume) the background label everywhere: what skipping background windows takes for granted. A model
    that labels air, or one that marks what lies outside an organ, must run every window."""
    probe = darkest[:, None, None, None].expand(len(darkest), *window.patch_size).contiguous()
    probabilities = sliding_window(probe, model, replace(window, mirror_dims=()),
                                   activation=package.inference.activation,
                                   output_channels=int(package.inference.output_channels))
    return not bool(_indices(probabilities, package).any())


def _sizes(shape: Sequence) -> str:
    return "×".join(str(int(n)) for n in reversed(tuple(shape)))


def _infer_whole(volume, package, network: Callable, window: Window, fast_forward: bool, progress, cancelled) -> tuple:
    """``infer`` for whole-volume and resize inference: the network sees the whole ``volume`` (C×Z×Y×X) at once,
    padded to its size multiple or resized (trilinear) to its shape, its probabilities resized back before labels
    are decided; a 2D model sees each whole slice so. No tiling, so neither larger windows nor skipped
    background apply; mirroring does (one flip per mirrored axis and combination)."""
    from torch.nn import functional

    shape = tuple(int(n) for n in volume.shape[1:])
    size = tuple(reversed(network_input_size(package, tuple(reversed(shape)))))
    inputs, runs, notes = volume, network, []
    if _mode(package) == "resize":
        # A 2D model's slices stay slices: the slice dimension keeps its size.
        target = tuple(n if p == 1 and _dimensions(package) == 2 else p for n, p in zip(shape, size))
        if target != shape:
            inputs = functional.interpolate(volume[None], size=target, mode="trilinear", align_corners=False)[0]
        summary = f"resized {_sizes(shape)} to {_sizes(target)} voxels and back"
        if fast_forward:  # a fixed shape: the tuned network is checked once on it, one volume per call
            example = network_window_shape(package, int(volume.shape[0]), size=package.inference.shape)
            runs, applied = tuned_network(network, volume.device, window.autocast, example)
            if applied:
                notes.append(f"forward pass: {applied}")
    else:
        padded = tuple(max(n, p) for n, p in zip(shape, size))
        summary = f"whole volume: {_sizes(shape)} voxels" + (f", padded to {_sizes(padded)}" if padded != shape else "")
    model = engine_network(runs, package)
    whole = replace(window, patch_size=size, overlap=0.0, blending="constant")
    probabilities = sliding_window(inputs, model, whole, activation=package.inference.activation,
                                   output_channels=int(package.inference.output_channels), progress=progress,
                                   cancelled=cancelled, background_channel=package.postprocessing.mode == "argmax")
    if probabilities is not None and tuple(probabilities.shape[1:]) != shape:
        probabilities = functional.interpolate(probabilities[None], size=shape, mode="trilinear",
                                               align_corners=False)[0]
    return probabilities, None, "; ".join([summary, *notes])


def inference_window(package, device, *, overlap: float | None = None, mirror_axes: tuple | None = None,
                     precision: str = "auto") -> Window:
    """The model's own windows on ``device`` (a name or a ComputeDevice), with ``segment``'s ``overlap``,
    ``mirror_axes`` and ``precision`` options applied."""
    if precision not in PRECISIONS:
        raise EngineError(f"Unknown precision {precision!r}: use {' or '.join(PRECISIONS)}")
    inference = package.inference
    # Whole-volume and resize inference size their one window per volume (_infer_whole); (1, 1, 1) stands in.
    patch = window_patch_size(package) if _mode(package) == "sliding-window" else (1, 1, 1)
    window = Window(
        patch_size=tuple(reversed(patch)),
        overlap=float(inference.overlap if overlap is None else overlap),
        blending=inference.blending,
        batch_size=int(inference.batch_size),
        mirror_dims=_mirror_dims(inference.mirror_axes if mirror_axes is None else mirror_axes),
        autocast=reduced_precision(_resolve_device(device)) if precision == "auto" else "",
        padding_value=float(getattr(inference, "padding_value", 0.0)),
    )
    if not 0.0 <= window.overlap < 1.0:
        raise EngineError(f"Overlap must be at least 0 and below 1, not {window.overlap}")
    return window


def infer(
    volume,
    package,
    network: Callable,
    window: Window,
    *,
    windows: str = "model",
    skip_background: bool = False,
    fast_forward: bool = False,
    voxel_limit: int = 0,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> tuple:
    """(class probabilities K×Z×Y×X or ``None`` when cancelled, the window plan that ran, its summary with
    notes): ``segment``'s inference stage on a normalized model-grid ``volume`` (C×Z×Y×X tensor on the
    device).

    Args:
        volume: the normalized volume on the model grid.
        package: the model package (patch size, activation, output channels, dimensions).
        network: the network as loaded (a 2D one is run slice by slice here).
        window: the model's windows for this run (``inference_window``).
        windows: ``"model"`` or ``"largest"``; see ``segment``.
        skip_background: run no window holding only background; see ``segment``.
        fast_forward: run the network as ``forward_pass.tuned_network`` makes it faster on the device.
        voxel_limit: the most voxels one larger window may hold (``window_voxel_limit``).
        progress: called with (windows done, windows to run) after each batch.
        cancelled: asked before each batch; ``True`` stops the run.

    Raises ``OutOfDeviceMemoryError`` and ``ValueError`` (the network's output does not match the package)
    as ``sliding_window`` does. Larger windows the network refuses on their first run are replaced by the
    model's own, said in the summary.
    """
    if windows not in WINDOW_CHOICES:
        raise EngineError(f"Unknown windows {windows!r}: use {' or '.join(WINDOW_CHOICES)}")
    if _mode(package) != "sliding-window":
        return _infer_whole(volume, package, network, window, fast_forward, progress, cancelled)
    runs, notes = network, []
    if fast_forward:
        # Checked on as many windows per call as the run may hand over: with windows across threads, at least
        # one per thread group.
        most = windows_per_call(volume.device, window.autocast, window.batch_size, across_threads=True)
        example = network_window_shape(package, int(volume.shape[0]), batch=most)
        runs, applied = tuned_network(network, volume.device, window.autocast, example)
        if applied:
            notes.append(f"forward pass: {applied}")
        # Windows across threads is the last candidate adopted, so where applied it wraps the others.
        window = replace(window, batch_size=windows_per_call(volume.device, window.autocast, window.batch_size,
                                                             isinstance(runs, WindowsAcrossThreads)))
    model = engine_network(runs, package)
    plan, planned = _window_plan(volume, model, network, package, window, windows, skip_background, voxel_limit)
    notes = planned + notes

    def run(plan):
        checked = model if plan.window.patch_size == window.patch_size else FirstWindowCheck(model)
        return sliding_window(volume, checked, plan.window, activation=package.inference.activation,
                              output_channels=int(package.inference.output_channels), progress=progress,
                              cancelled=cancelled, origins=plan.origins,
                              background_channel=package.postprocessing.mode == "argmax")

    try:
        probabilities = run(plan)
    except WindowRefusedError as refused:
        size = "×".join(str(n) for n in plan.window.patch_size)
        notes.append(f"the network refused windows of {size} voxels ({refused}), so it ran the model's own")
        plan, _ = _window_plan(volume, model, network, package, window, "model", skip_background, 0)
        probabilities = run(plan)
    return probabilities, plan, "; ".join([plan.summary, *notes])


# ------------------------------------------------------------------------------------------------- crops


def _mask_bounds(mask) -> tuple | None:
    """Half-open bounds ((z0, z1), (y0, y1), (x0, x1)) of the True voxels of a Z×Y×X tensor; None when none are."""
    import torch

    if not bool(mask.any()):
        return None
    bounds = []
    for dim in range(3):
        present = mask.to(torch.uint8).amax(dim=tuple(d for d in range(3) if d != dim)).nonzero()
        bounds.append((int(present[0]), int(present[-1]) + 1))
    return tuple(bounds)


def _grown(bounds: Sequence, margin_mm: Sequence, grid: Grid) -> tuple:
    """Bounds (tensor order, half-open) grown by ``margin_mm`` (x, y, z; whole voxels of ``grid`` covering it) and
    clipped to the grid, as slices."""
    sizes, spacing, margins = (tuple(reversed(values)) for values in (grid.size, grid.spacing, margin_mm))
    steps = [math.ceil(float(m) / float(s) - 1e-9) for m, s in zip(margins, spacing)]
    return tuple(slice(max(0, low - m), min(n, high + m)) for (low, high), n, m in zip(bounds, sizes, steps))


def _box_on_grid(bounds: Sequence, source: Grid, target: Grid) -> tuple | None:
    """The bounds (tensor order, half-open) of the ``target`` voxels that overlap the box of ``source`` voxels
    ``bounds``: its corners carried through patient space, so the grids may differ in spacing and axes; None when
    the box lies outside ``target``."""
    edges = [(low - 0.5, high - 0.5) for low, high in reversed(tuple(bounds))]  # x, y, z voxel edges
    corners = np.array([[i, j, k, 1.0] for i in edges[0] for j in edges[1] for k in edges[2]]).T
    index = (np.linalg.inv(target.index_to_physical) @ source.index_to_physical @ corners)[:3]
    # Voxel c overlaps [low, high] where c + 0.5 > low and c - 0.5 < high; the 1e-6 keeps a voxel that only
    # touches an edge out despite round-off.
    lows = np.floor(index.min(axis=1) - 0.5 + 1e-6).astype(int) + 1
    highs = np.ceil(index.max(axis=1) + 0.5 - 1e-6).astype(int)
    box = [(max(0, int(low)), min(n, int(high))) for low, high, n in zip(lows, highs, target.size)]
    if any(low >= high for low, high in box):
        return None
    return tuple(reversed(box))


def _crop_box(volume, package, grid: Grid) -> tuple:
    """(box, note): the slices of the model grid the network runs on (all of it without a crop to the foreground;
    None when no voxel is in the foreground) and what the crop did, for the summary."""
    crop = getattr(package.inference, "crop", None)
    whole = tuple(slice(0, int(n)) for n in volume.shape[1:])
    if crop is None or crop.to != "foreground":
        return whole, ""
    mask = (volume > float(crop.threshold)) if crop.threshold is not None else (volume != 0)
    bounds = _mask_bounds(mask.any(dim=0))
    if bounds is None:
        above = "nonzero" if crop.threshold is None else f"above {crop.threshold:g}"
        return None, f"no voxel is {above}: nothing to segment"
    box = _grown(bounds, crop.margin_mm, grid)
    return box, f"cropped to the foreground: {_box_text(box)} of {_sizes(volume.shape[1:])} voxels"


def _box_text(box: Sequence) -> str:
    return _sizes([part.stop - part.start for part in box])


def _cropped(volume, box: Sequence):
    """The part of ``volume`` (C×Z×Y×X) in ``box``: ``volume`` itself when the box holds all of it, else a copy
    (normalized apart from the rest)."""
    if all(part.start == 0 and part.stop == n for part, n in zip(box, volume.shape[1:])):
        return volume
    return volume[(slice(None), *box)].clone()


def _placed(indices, box, shape: tuple, device):
    """Label indices on the whole grid of ``shape`` (Z×Y×X): ``indices`` in ``box``, background elsewhere
    (everywhere when ``box`` is None)."""
    import torch

    if box is not None and tuple(indices.shape) == shape:
        return indices
    dtype = indices.dtype if indices is not None else torch.uint8
    placed = torch.zeros(shape, dtype=dtype, device=device)
    if box is not None:
        placed[box] = indices
    return placed


def _normalized(volume, package):
    """``volume`` (C×Z×Y×X) with each channel normalized in place as the package says."""
    for c, step in enumerate(_normalizations(package, int(volume.shape[0]))):
        normalize(volume[c], step)
    return volume


def _run_network(volume, package, network: Callable, window: Window, compute: ComputeDevice, **options) -> tuple:
    """(class probabilities, summary): ``infer`` with ``options``, its failures said as EngineError, a cancel
    raised as EngineCancelled."""
    try:
        probabilities, _, summary = infer(volume, package, network, window, **options)
    except OutOfDeviceMemoryError as error:
        raise EngineError(
            f"{compute.description} ran out of memory while running the model ({error}). Use a smaller"
            " batch, the CPU, or close other programs using the GPU."
        ) from error
    except ValueError as error:
        raise EngineError(f"The model does not match its description: {error}") from error
    if probabilities is None:
        raise EngineCancelled("Segmentation cancelled")
    return probabilities, summary


def _localize(tensors: list, images: Sequence, package, network: Callable, window: Window, grid: Grid,
              compute: ComputeDevice, memory_budget: int | None, **options) -> tuple:
    """(box, note): the first stage of a two-stage model. The localizer runs on its own grid with its own
    normalization, inference and postprocessing; the voxels it labels (their largest component when it says
    so) bound a box carried onto the main model ``grid`` and grown by the crop's margin. The box is None when
    it labels nothing.

    Args:
        tensors: the input volumes on their own grids (float32, on the device).
        images: the input images (their geometry).
        package: the two-stage package (its ``localizer`` and its crop margin).
        network: the localizer's network, loaded.
        window: the localizer's windows for this run.
        grid: the main network's model grid.
        compute: the compute device.
        memory_budget: bytes a larger window may take from (``window_voxel_limit``), or None.
        options: ``infer``'s ``windows``, ``skip_background``, ``fast_forward``, ``progress`` and ``cancelled``.
    """
    import torch

    localizer = package.localizer
    first = localizer.package
    first_grid = _model_grid(images, first)
    volume = _to_model_grid(tensors, images, first_grid, tensors[0].device)
    box, note = _crop_box(volume, first, first_grid)
    if box is None:
        return None, f"localizer: {note}"
    sliding = _mode(first) == "sliding-window" and options["windows"] != "model"
    voxel_limit = window_voxel_limit(images, first, compute, memory_budget) if sliding else 0
    probabilities, summary = _run_network(_normalized(_cropped(volume, box), first), first, network, window, compute,
                                          voxel_limit=voxel_limit, **options)
    indices = _placed(_indices(probabilities, first), box, tuple(volume.shape[1:]), volume.device)
    labels = postprocess_steps(_label_lookup(first)[indices.cpu().numpy()], first_grid.spacing, first.postprocessing)
    mask = labels != 0
    if localizer.largest_component:
        mask = largest_component(mask, first_grid.spacing, int(getattr(first.postprocessing, "connectivity", 6)))
    bounds = _mask_bounds(torch.from_numpy(mask))
    on_grid = None if bounds is None else _box_on_grid(bounds, first_grid, grid)
    if on_grid is None:
        return None, f"localizer ({summary}) labelled nothing: nothing to segment"
    box = _grown(on_grid, package.inference.crop.margin_mm, grid)
    return box, f"localizer: {summary}; cropped to its box: {_box_text(box)} of {_sizes(reversed(grid.size))} voxels"


def segment(
    images: Sequence,
    package,
    network: Callable | None = None,
    *,
    localizer_network: Callable | None = None,
    device="auto",
    threads: int | None = None,
    overlap: float | None = None,
    mirror_axes: tuple | None = None,
    memory_budget: int | None = None,
    precision: str = "auto",
    windows: str = "model",
    skip_background: bool = False,
    fast_forward: bool = False,
    progress: Callable[[EngineProgress], None] | None = None,
    cancel: threading.Event | None = None,
) -> SegmentationResult:
    """Segment ``images`` (one SimpleITK volume per model input) with ``package``'s model.

    ``network`` maps an N×C×Z×Y×X float32 tensor on the device to N×K×Z×Y×X logits (N×C×H×W slices
    to N×K×H×W for a 2D package, run slice by slice along its slice axis; spatial dimensions in x, y, z
    order when the package's ``axisOrder`` is ``xyz``); by default it is loaded from the package, and so is
    ``localizer_network``, a two-stage package's first network. The package's crop (to the foreground, or to
    the box its localizer labels) limits the network to a box of the model grid, background outside.
    ``overlap`` and ``mirror_axes`` (0 = x, 1 = y, 2 = z) override the
    package's; ``threads`` sets PyTorch's CPU threads for this run only; ``memory_budget`` (bytes) caps
    the estimated memory; ``precision`` ``"auto"`` runs the network in reduced precision where the
    device computes it natively (float16 on CUDA, bfloat16 on CPUs with AMX or AVX-512 BF16: about
    twice as fast) and ``"float32"`` never does. ``windows`` ``"model"`` tiles the volume with the
    model's own windows; ``"largest"`` runs the largest windows the network accepts and the memory allows
    where its output does not depend on the window (``window_plan.py``). ``skip_background`` runs no window
    that holds only background (air, zero padding) and labels it background. ``fast_forward`` runs the
    network as ``forward_pass.tuned_network`` makes it faster on the device (the same function up to
    rounding). ``quality_options`` gives these options for a quality preset. Raises EngineError (bad
    inputs, not enough memory) or EngineCancelled.
    """
    import torch

    images = list(images)
    _validate(images, package)
    compute = _resolve_device(device)
    if windows not in WINDOW_CHOICES:
        raise EngineError(f"Unknown windows {windows!r}: use {' or '.join(WINDOW_CHOICES)}")
    window = inference_window(package, compute, overlap=overlap, mirror_axes=mirror_axes, precision=precision)
    _check_memory(images, package, compute, memory_budget)
    torch_device = torch.device(compute.torch_name)
    stages = Stages(progress, cancel, dict(STAGES), torch_device)
    names = _input_names(package)
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    if torch_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(torch_device)
    began = time.perf_counter()
    out_of_memory = getattr(torch.cuda, "OutOfMemoryError", MemoryError)
    try:
        with stages.stage("reading"):
            network = _network(package, network, compute)
            tensors = _read(images, names, torch_device, non_finite_value(package))
        grid = _model_grid(images, package)
        input_grid = Grid.from_image(images[0])
        localizer = getattr(package, "localizer", None)
        with stages.stage("resampling"):
            volume = _to_model_grid(tensors, images, grid, torch_device)
            if localizer is None:
                del tensors
        with stages.stage("normalizing"):
            # A crop to the foreground is found on the intensities as resampled, before they are normalized.
            box, crop_note = (None, "") if localizer is not None else _crop_box(volume, package, grid)
            if box is not None:
                volume = _normalized(_cropped(volume, box), package)
        with stages.stage("inferring"):
            options = {"windows": windows, "skip_background": skip_background, "fast_forward": fast_forward,
                       "cancelled": lambda: cancel is not None and cancel.is_set()}
            share = 0.25 if localizer is not None else 0.0  # of the stage, for the localizer
            if localizer is not None:
                # The localizer runs with its own windows, overlap and mirroring, unless this run turns them off.
                first_window = inference_window(localizer.package, compute, overlap=overlap, precision=precision,
                                                mirror_axes=() if mirror_axes == () else None)
                box, crop_note = _localize(
                    tensors, images, package, _network(localizer.package, localizer_network, compute), first_window,
                    grid, compute, memory_budget, progress=lambda done, total: stages.report(
                        "inferring", share * done / total), **options)
                del tensors
                if box is not None:
                    volume = _normalized(_cropped(volume, box), package)
            if box is None:  # nothing to segment: no window runs
                indices, summary = None, crop_note
            else:
                sliding = _mode(package) == "sliding-window" and windows != "model"
                voxel_limit = window_voxel_limit(images, package, compute, memory_budget) if sliding else 0
                probabilities, summary = _run_network(
                    volume, package, network, window, compute, voxel_limit=voxel_limit,
                    progress=lambda done, total: stages.report("inferring", share + (1 - share) * done / total),
                    **options)
                del volume
                indices = _indices(probabilities, package)
                del probabilities
                summary = "; ".join(text for text in (crop_note, summary) if text)
            indices = _placed(indices, box, tuple(reversed(grid.size)), torch_device)
        with stages.stage("postprocessing"):
            lookup = _label_lookup(package)
            labels = postprocess_steps(lookup[indices.cpu().numpy()], grid.spacing, package.postprocessing)
        with stages.stage("resampling back"):
            if not same_grid(grid, input_grid):
                on_device = torch.from_numpy(labels.astype(np.float32)).to(torch_device)[None]
                back = resample(on_device, grid, input_grid, mode="nearest")[0]
                labels = back.cpu().numpy().astype(lookup.dtype)
            result = sitk.GetImageFromArray(labels)
            result.CopyInformation(images[0])
        stages.report("resampling back", 1.0)
    except out_of_memory as error:  # outside the network too: resampling and labels on a full GPU
        message = f"{compute.description} ran out of memory ({error}). Use the CPU or close other GPU programs."
        raise EngineError(message) from error
    finally:
        torch.set_num_threads(previous_threads)
    stages.timings["total"] = time.perf_counter() - began
    return SegmentationResult(
        labels=result,
        label_values=tuple(int(v) for v in lookup[1:]),
        timings=stages.timings,
        device=compute.description,
        peak_memory_bytes=_peak_memory(torch_device),
        precision=window.autocast or "float32",
        windows=summary,
    )


__all__ = [
    "DEFAULT_QUALITY",
    "PRECISIONS",
    "QUALITY_PRESETS",
    "STAGES",
    "WINDOW_CHOICES",
    "EngineCancelled",
    "EngineError",
    "EngineProgress",
    "ReversedAxesNetwork",
    "SegmentationResult",
    "SliceWiseNetwork",
    "axis_order",
    "engine_network",
    "estimate_memory",
    "infer",
    "inference_window",
    "model_input",
    "network_window_shape",
    "non_finite_value",
    "normalize",
    "quality_options",
    "replace_non_finite",
    "segment",
    "window_patch_size",
    "window_voxel_limit",
]

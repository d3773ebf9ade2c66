"""Sliding-window inference: a network that sees fixed-size patches, applied to a whole volume.

Windows are copied into one preallocated batch tensor (no ``torch.cat`` per window), run through the
network under ``torch.inference_mode`` (and ``torch.autocast`` when the window asks for reduced
precision: float16 on CUDA, bfloat16 on CPUs that compute it natively), turned into probabilities in
float32, optionally averaged over mirrored copies, and added into preallocated accumulators weighted by
an importance map that is computed once per patch size and device. Accumulators are fp16 on CUDA under
float16 autocast (as nnU-Net: half the memory) and fp32 otherwise; when the GPU cannot hold them they
live in CPU memory and only the network runs on the GPU.

Example::

    >>> import torch
    >>> window_starts(160, 96, 0.5)
    [0, 32, 64]
    >>> window = Window(patch_size=(8, 8, 8), overlap=0.5, blending="gaussian", batch_size=2)
    >>> double = lambda batch: torch.cat([-batch, batch], dim=1)   # logits of 2 classes
    >>> probabilities = sliding_window(torch.ones(1, 12, 10, 9), double, window, activation="softmax")
    >>> probabilities.shape, bool(torch.allclose(probabilities[1], torch.sigmoid(torch.tensor(2.0))))
    (torch.Size([2, 12, 10, 9]), True)
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable

# Gaussian blending as in nnU-Net and MONAI: sigma = patch size / 8.
_SIGMA_SCALE = 0.125
# Weights never reach zero, so border voxels of the volume (seen by one window's edge only) stay defined;
# 1e-3 is also well above fp16's smallest normal number.
_MINIMUM_WEIGHT = 1e-3
_importance_maps: dict = {}
# How logits become probabilities; "none": the network's outputs are probabilities already.
ACTIVATIONS = ("softmax", "sigmoid", "none")
_importance_lock = threading.Lock()


class OutOfDeviceMemoryError(MemoryError):
    """The compute device ran out of memory while running the network."""


@dataclass(frozen=True)
class Window:
    """How windows tile a volume: ``patch_size`` in voxels in (z, y, x) tensor order, overlap in [0, 1),
    ``blending`` ``"gaussian"`` or ``"constant"``, windows per network call, and ``mirror_dims``: tensor
    dimensions (2 = z, 3 = y, 4 = x) whose flips are averaged as test-time augmentation; ``autocast``
    names the reduced-precision dtype the network runs in (``"float16"``, ``"bfloat16"``), or is empty
    for float32; ``padding_value`` is what windows hold beyond the volume (after normalization)."""

    patch_size: tuple
    overlap: float = 0.5
    blending: str = "gaussian"
    batch_size: int = 1
    mirror_dims: tuple = ()
    autocast: str = ""
    padding_value: float = 0.0


def padded_shape(shape: Sequence, patch: Sequence) -> tuple:
    """The volume's shape once padded (centred, with the window's ``padding_value``) to hold at least one window
    on every axis."""
    return tuple(max(int(s), int(p)) for s, p in zip(shape, patch))


def window_starts(size: int, patch: int, overlap: float) -> list:
    """Start offsets of windows of length ``patch`` covering ``size`` voxels with at least ``overlap``,
    spread evenly from the first voxel to the last (``size >= patch``)."""
    if size <= patch:
        return [0]
    step = max(1.0, patch * (1.0 - overlap))
    count = math.ceil((size - patch) / step) + 1
    return [round(i * (size - patch) / (count - 1)) for i in range(count)]


def importance_map(patch_size: Sequence, blending: str, device, dtype):
    """Per-voxel weight of a window's prediction (Gaussian peaking at 1 in the centre, or all ones),
    computed once per (patch size, blending, device, dtype) and shared."""
    import torch

    key = (tuple(patch_size), blending, str(device), dtype)
    with _importance_lock:
        if key not in _importance_maps:
            if blending == "constant":
                weights = torch.ones(tuple(patch_size))
            elif blending == "gaussian":
                axes = []
                for n in patch_size:
                    offsets = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
                    axes.append(torch.exp(-0.5 * (offsets / (n * _SIGMA_SCALE)) ** 2))
                weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
                weights = (weights / weights.max()).clamp_(min=_MINIMUM_WEIGHT)
            else:
                raise ValueError(f"Unknown blending {blending!r}: use gaussian or constant")
            _importance_maps[key] = weights.to(device=device, dtype=dtype)
        return _importance_maps[key]


def _allocate_accumulators(channels: int, shape: tuple, device, half: bool):
    """Class-score and weight accumulators: on a CUDA device (fp16 when ``half``), else fp32 in CPU memory."""
    import torch

    if device.type == "cuda":
        dtype = torch.float16 if half else torch.float32
        out_of_memory = getattr(torch.cuda, "OutOfMemoryError", RuntimeError)
        try:
            scores = torch.zeros((channels, *shape), dtype=dtype, device=device)
            weights = torch.zeros(shape, dtype=dtype, device=device)
            return scores, weights
        except out_of_memory:
            torch.cuda.empty_cache()
    return torch.zeros((channels, *shape)), torch.zeros(shape)


def _mirror_flips(mirror_dims: Sequence) -> list:
    """Every subset of the mirror dimensions, the unflipped input first."""
    dims = tuple(sorted(set(mirror_dims)))
    return [subset for r in range(len(dims) + 1) for subset in itertools.combinations(dims, r)]


def _predict(network: Callable, batch, flips: list, activation: str, device, autocast: str):
    """Probabilities for a batch of windows, averaged over mirrored copies."""
    import torch

    total = None
    for dims in flips:
        inputs = batch.flip(dims) if dims else batch
        if autocast:
            with torch.autocast(device.type, dtype=getattr(torch, autocast)):
                logits = network(inputs)
        else:
            logits = network(inputs)
        logits = logits.float()
        if activation == "softmax":
            probabilities = torch.softmax(logits, dim=1)
        elif activation == "sigmoid":
            probabilities = torch.sigmoid(logits)
        else:  # "none": the network gives probabilities itself (it ends in a softmax or sigmoid)
            probabilities = logits
        if dims:
            probabilities = probabilities.flip(dims)
        total = probabilities if total is None else total.add_(probabilities)
    return total.div_(len(flips)) if len(flips) > 1 else total


def _fill_uncovered(scores, weights, background_channel: bool) -> None:
    """Voxels no window covered get the background's probabilities: 1 in channel 0 when it is the background's
    (softmax), else 0 everywhere (below every threshold)."""
    uncovered = weights == 0
    if bool(uncovered.any()):
        weights.masked_fill_(uncovered, 1.0)
        if background_channel:
            scores[0].masked_fill_(uncovered, 1.0)


def sliding_window(
    image,
    network: Callable,
    window: Window,
    activation: str = "softmax",
    output_channels: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] = lambda: False,
    origins: Sequence | None = None,
    background_channel: bool | None = None,
):
    """Blended class probabilities (K×Z×Y×X) of ``network`` over ``image`` (C×Z×Y×X, on the device).

    ``activation`` ``softmax`` or ``sigmoid`` turns the network's logits into probabilities; ``none`` takes its
    outputs as probabilities already (a network ending in its own softmax). ``background_channel``: whether
    channel 0 is the background's, given to voxels no window covers (by default: under softmax).

    A volume smaller than the patch is padded with ``window.padding_value`` (zero by default; after
    normalization: the mean intensity for z-scores) and the result cropped back. ``progress(done, total)``
    is called after each batch of windows; ``cancelled()`` is asked before each batch and stops the run by
    returning ``None``.
    ``output_channels``, when given, is checked against what the network returns.

    ``origins`` (a window plan's, see ``window_plan.py``) lists the first voxel of each window to run in the
    padded volume (``padded_shape``); by default windows tile the whole volume with ``window.overlap``.
    Voxels no listed window covers get the background's probabilities (``output_channels`` is then needed
    when no window is listed at all).
    """
    import torch
    from torch.nn import functional

    if activation not in ACTIVATIONS:
        raise ValueError(f"Unknown activation {activation!r}: use softmax, sigmoid or none")
    if background_channel is None:
        background_channel = activation == "softmax"
    device = image.device
    shape = tuple(image.shape[1:])
    patch = tuple(int(p) for p in window.patch_size)
    padded = padded_shape(shape, patch)
    before = [(size - s) // 2 for size, s in zip(padded, shape)]
    if padded != shape:
        pads = []
        for axis in (2, 1, 0):  # F.pad takes the last dimension first
            pads += [before[axis], padded[axis] - shape[axis] - before[axis]]
        image = functional.pad(image, pads, value=float(window.padding_value))
    if origins is None:
        origins = list(itertools.product(*(window_starts(s, p, window.overlap) for s, p in zip(padded, patch))))
    starts = [tuple(int(o) for o in origin) for origin in origins]
    flips = _mirror_flips(window.mirror_dims)
    batch_size = max(1, int(window.batch_size))
    batch = torch.empty((min(batch_size, max(1, len(starts))), image.shape[0], *patch), dtype=image.dtype,
                        device=device)
    scores = weights = None
    if not starts:
        if output_channels is None:
            raise ValueError("output_channels is needed when no window runs")
        scores, weights = _allocate_accumulators(output_channels, padded, device, window.autocast == "float16")
    out_of_memory = getattr(torch.cuda, "OutOfMemoryError", RuntimeError)
    with torch.inference_mode():
        for first in range(0, len(starts), batch_size):
            if cancelled():
                return None
            chunk = starts[first : first + batch_size]
            slices = [tuple(slice(o, o + p) for o, p in zip(origin, patch)) for origin in chunk]
            for i, region in enumerate(slices):
                batch[i].copy_(image[(slice(None), *region)])
            try:
                probabilities = _predict(network, batch[: len(chunk)], flips, activation, device, window.autocast)
            except out_of_memory as error:
                raise OutOfDeviceMemoryError(str(error)) from error
            if scores is None:
                channels = probabilities.shape[1]
                if output_channels is not None and channels != output_channels:
                    raise ValueError(f"the network gives {channels} output channels, the model says {output_channels}")
                scores, weights = _allocate_accumulators(channels, padded, device, window.autocast == "float16")
                importance = importance_map(patch, window.blending, scores.device, scores.dtype)
            probabilities = probabilities.to(device=scores.device, dtype=scores.dtype)
            for i, region in enumerate(slices):
                scores[(slice(None), *region)].addcmul_(probabilities[i], importance)
                weights[region].add_(importance)
            if progress is not None:
                progress(min(first + batch_size, len(starts)), len(starts))
        crop = tuple(slice(b, b + s) for b, s in zip(before, shape))
        scores, weights = scores[(slice(None), *crop)], weights[crop]
        _fill_uncovered(scores, weights, background_channel)
        return scores.div_(weights)

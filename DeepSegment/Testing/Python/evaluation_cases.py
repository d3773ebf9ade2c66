"""Seeded synthetic segmentations for the evaluation tests and benchmark: organ-like blobs and their
"predictions" (the same blobs moved, resized and reshaped a little, now and then one missing or one extra).

A blob is a star-shaped surface around a centre: an ellipsoid whose radius varies with the direction by a
few smooth waves, so surfaces are curved and irregular like organs, not cubes, and no two cases are alike.
Everything is computed in the blob's own bounding box, so a 256³ case takes a fraction of a second.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Blob:
    """One blob: centre and radii in voxels (K, J, I order), and its waves (directions, amplitudes, phases)."""

    centre: tuple
    radii: tuple
    directions: np.ndarray  # (waves, 3) unit vectors
    frequencies: np.ndarray
    amplitudes: np.ndarray
    phases: np.ndarray


def random_blob(rng: np.random.Generator, shape, smallest: float, largest: float) -> Blob:
    radii = tuple(float(r) for r in rng.uniform(smallest, largest) * rng.uniform(0.7, 1.3, 3))
    centre = tuple(float(rng.uniform(r + 1, n - r - 2)) if n > 2 * r + 3 else n / 2 for r, n in zip(radii, shape))
    directions = rng.normal(size=(4, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return Blob(centre, radii, directions, rng.uniform(1.0, 3.0, 4), rng.uniform(0.0, 0.08, 4),
                rng.uniform(0, 2 * np.pi, 4))


def perturbed(blob: Blob, rng: np.random.Generator, shift: float, scale: float) -> Blob:
    """The blob as an imperfect model would see it: moved by about ``shift`` voxels, resized by about ``scale``."""
    return Blob(
        tuple(c + float(rng.normal(0, shift)) for c in blob.centre),
        tuple(r * float(1 + rng.normal(0, scale)) for r in blob.radii),
        blob.directions,
        blob.frequencies,
        np.clip(blob.amplitudes + rng.normal(0, 0.02, blob.amplitudes.shape), 0, 0.12),
        blob.phases + rng.normal(0, 0.3, blob.phases.shape),
    )


def paint(array: np.ndarray, blob: Blob, value: int) -> None:
    """Set the blob's voxels of ``array`` to ``value`` (later blobs cover earlier ones, as neighbouring organs do)."""
    reach = [r * 1.3 + 1 for r in blob.radii]
    low = [max(0, int(np.floor(c - r))) for c, r in zip(blob.centre, reach)]
    high = [min(n, int(np.ceil(c + r)) + 1) for c, r, n in zip(blob.centre, reach, array.shape)]
    if any(h <= lo for lo, h in zip(low, high)):
        return
    grids = np.ogrid[tuple(slice(lo, h) for lo, h in zip(low, high))]
    offsets = [(g - c) / r for g, c, r in zip(grids, blob.centre, blob.radii)]
    radius = np.sqrt(offsets[0] ** 2 + offsets[1] ** 2 + offsets[2] ** 2)
    safe = np.maximum(radius, 1e-9)
    bound = np.ones_like(radius)
    for direction, frequency, amplitude, phase in zip(blob.directions, blob.frequencies, blob.amplitudes,
                                                      blob.phases):
        cosine = (offsets[0] * direction[0] + offsets[1] * direction[1] + offsets[2] * direction[2]) / safe
        bound += amplitude * np.sin(frequency * np.pi * cosine + phase)
    region = array[tuple(slice(lo, h) for lo, h in zip(low, high))]
    region[radius <= bound] = value


def label_map_pair(seed: int, shape=(64, 64, 64), labels: int = 5, smallest: float = 4.0, largest: float = 14.0,
                   shift: float = 1.0, scale: float = 0.05, miss: float = 0.0, extra: float = 0.0) -> tuple:
    """``(reference, prediction)`` uint8 label maps (K, J, I) with ``labels`` blobs valued 1..labels.

    Args:
        seed: the case; the same seed gives the same arrays.
        shape: the arrays' shape.
        labels: how many labels.
        smallest: the smallest mean radius of a blob, in voxels.
        largest: the largest.
        shift: the prediction's typical displacement of a blob, in voxels.
        scale: its typical relative change of size.
        miss: the chance that the prediction misses a label entirely.
        extra: the chance that it adds a small false blob of some label.

    >>> reference, prediction = label_map_pair(3, shape=(32, 32, 32), labels=2, largest=8.0)
    >>> sorted(np.unique(reference).tolist()), reference.shape
    ([0, 1, 2], (32, 32, 32))
    """
    rng = np.random.default_rng(seed)
    reference = np.zeros(shape, np.uint8)
    prediction = np.zeros(shape, np.uint8)
    for value in range(1, labels + 1):
        blob = random_blob(rng, shape, smallest, largest)
        paint(reference, blob, value)
        moved = perturbed(blob, rng, shift, scale)
        if rng.uniform() >= miss:
            paint(prediction, moved, value)
    if rng.uniform() < extra:
        paint(prediction, random_blob(rng, shape, 2.0, smallest), int(rng.integers(1, labels + 1)))
    return reference, prediction


def monai_metrics(reference: np.ndarray, prediction: np.ndarray, spacing_xyz, labels: int, tolerance_mm: float,
                  one_hot_inputs: tuple | None = None, maximum: bool = True) -> np.ndarray:
    """MONAI's measures of labels 1..``labels``, one row each: Dice (``ignore_empty=False``), HD95, symmetric
    average surface distance, NSD at ``tolerance_mm`` and the maximum Hausdorff distance (HD100; NaN unless
    ``maximum``, as the benchmark times the first four alone).

    ``one_hot_inputs`` are ``(y_pred, y)`` already made by :func:`monai_inputs` (the benchmark times them apart).
    """
    from monai.metrics import (
        compute_average_surface_distance,
        compute_dice,
        compute_hausdorff_distance,
        compute_surface_dice,
    )

    y_pred, y = one_hot_inputs if one_hot_inputs is not None else monai_inputs(reference, prediction, labels)
    spacing = [float(s) for s in spacing_xyz[::-1]]  # arrays are (K, J, I)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about empty masks, which the tests want
        columns = [
            compute_dice(y_pred, y, include_background=False, ignore_empty=False)[0].numpy(),
            compute_hausdorff_distance(y_pred, y, percentile=95, spacing=spacing)[0].numpy(),
            compute_average_surface_distance(y_pred, y, symmetric=True, spacing=spacing)[0].numpy(),
            compute_surface_dice(y_pred, y, [tolerance_mm] * labels, spacing=spacing)[0].numpy(),
        ]
        columns.append(compute_hausdorff_distance(y_pred, y, spacing=spacing)[0].numpy() if maximum
                       else np.full(labels, np.nan))
    return np.stack(columns, axis=1)


def monai_inputs(reference: np.ndarray, prediction: np.ndarray, labels: int) -> tuple:
    """``(y_pred, y)``: the label maps as MONAI's metrics take them, one-hot tensors (1, labels + 1, K, J, I)."""
    import torch
    from monai.networks.utils import one_hot

    def encoded(array):
        return one_hot(torch.from_numpy(array[None, None].astype(np.int64)), labels + 1)

    return encoded(prediction), encoded(reference)


def monai_disagreements(results: Sequence, expected: np.ndarray, tolerance: float = 1e-3) -> list:
    """Where ``LabelMetrics`` ``results`` differ from :func:`monai_metrics` rows by more than ``tolerance``.

    The conventions of ``DeepSegmentLib.evaluation`` for empty masks are MONAI's: both empty, MONAI gives NaN
    distances and NSD (and Dice NaN with its default ``ignore_empty=True``; we give NaN, flagged); one side empty,
    Dice and NSD 0 and infinite distances (MONAI's 95th percentile interpolates between infinities into NaN;
    its maximum and mean say infinity).
    """
    problems = []
    for result, row in zip(results, expected):
        dice, hd95, asd, nsd, hd100 = (float(value) for value in row)
        if result.status == "both empty":
            pairs = [("dice", result.dice, math.nan), ("hd95", result.hd95_mm, hd95), ("msd", result.msd_mm, asd),
                     ("nsd", result.nsd, nsd)]
        elif result.status != "both present":
            pairs = [("dice", result.dice, dice), ("nsd", result.nsd, nsd), ("hd95", result.hd95_mm, hd100),
                     ("msd", result.msd_mm, asd)]
        else:
            pairs = [("dice", result.dice, dice), ("hd95", result.hd95_mm, hd95), ("msd", result.msd_mm, asd),
                     ("nsd", result.nsd, nsd)]
        for name, ours, theirs in pairs:
            same = (math.isnan(ours) and math.isnan(theirs)) or ours == theirs or abs(ours - theirs) <= tolerance
            if not same:
                problems.append(f"label {result.value} {name}: ours {ours}, MONAI {theirs}")
    return problems

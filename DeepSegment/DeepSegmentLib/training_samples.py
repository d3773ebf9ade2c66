"""A training's samples: the training cases on the model grid, normalized as the model will normalize, and the
augmented patches of every step.

**Preprocessing** (:func:`prepare_cases`): each training case goes through the engine's own first steps
(``engine.model_input``: the model grid of the published spacing and orientation, trilinear resampling,
normalization) and its label map onto the same grid with nearest neighbour, into ``.npy`` files that are read
memory-mapped, so a dataset larger than the memory trains. Dataset-wide normalization (nnU-Net's for CT: clip
to the 0.5 and 99.5 percentiles of the labelled voxels, subtract their mean, divide by their standard
deviation) is computed on the training cases only, from up to :data:`STATISTICS_SAMPLES` labelled voxels of
each, and published as a ``ct-window`` whose ``range`` is the clipped window in those units, which the engine
applies exactly. Per-image z-score needs no dataset statistics. A plan file records what was prepared, from
which cases, so a resumed training reuses it.

**Patches** (:class:`PatchSampler`): sample ``index`` of ``epoch`` is drawn from its own seed only
(``augmentation.sample_seed``): which case, whether the patch is centred on a labelled voxel (a third of
them by default, as nnU-Net does, a label picked first so small structures are seen), where, and how it is
augmented (``augmentation.augment``: one composed sampling grid, labels by nearest neighbour, zeros outside
the volume as the engine pads). Batches therefore do not depend on how many came before: a training resumed
at an epoch draws exactly what an uninterrupted one draws. Only a box around the patch's centre that holds
every point the augmentation may sample is read from the memory-mapped case.

Example::

    >>> import tempfile
    >>> import numpy as np, torch
    >>> folder = tempfile.mkdtemp()
    >>> image = np.random.default_rng(0).normal(size=(1, 12, 16, 16)).astype(np.float32)
    >>> labels = np.zeros((12, 16, 16), np.uint8); labels[4:8, 5:10, 5:10] = 1
    >>> save_case(folder, "c1", image, labels, seed=0)
    >>> sampler = PatchSampler(folder, ["c1"], (8, 8, 8), (1.0, 1.0, 1.0), None, foreground_fraction=1.0, seed=0)
    >>> images, classes, case_ids = sampler.batch(epoch=0, step=0, batch_size=2)
    >>> tuple(images.shape), tuple(classes.shape), case_ids, bool(classes.any())
    ((2, 1, 8, 8, 8), (2, 8, 8, 8), ['c1', 'c1'], True)
    >>> torch.equal(sampler.batch(0, 0, 2)[0], images)           # the same seed, epoch and step: the same batch
    True
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from ModelRegistryLib.files import atomic_target, write_json_atomically

PLAN_NAME = "plan.json"
# Labelled voxels per case (over all its labels) the dataset statistics are computed from, as nnU-Net samples.
STATISTICS_SAMPLES = 10_000
# Voxels remembered per label and case to centre patches on.
FOREGROUND_SAMPLES = 2_000
# nnU-Net's clipping percentiles for CT.
CT_PERCENTILES = (0.5, 99.5)
NORMALIZATIONS = ("auto", "z-score", "dataset", "percentile", "none")
# Seed streams of a sample besides its augmentation's (sample_seed): which case and patch centre.
_PICK_STREAM = 1


class PreparationError(ValueError):
    """Cases that cannot be prepared for training; the message names the case."""


# --- normalization ----------------------------------------------------------------------------------------


def channel_normalizations(request: str, modalities: Sequence[str]) -> list:
    """Per channel, the normalization ``request`` means: ``auto`` is ``dataset`` for CT channels and ``z-score``
    (per image) for the others; the rest apply to every channel.

    >>> channel_normalizations("auto", ["CT", ""])
    ['dataset', 'z-score']
    """
    if request not in NORMALIZATIONS:
        raise PreparationError(f"unknown normalization {request!r}: use {', '.join(NORMALIZATIONS)}")
    if request == "auto":
        return ["dataset" if modality == "CT" else "z-score" for modality in modalities]
    return [request] * len(modalities)


def dataset_window(samples: np.ndarray) -> dict:
    """A ``ct-window`` normalization (model.json's form) doing nnU-Net's CT normalization with statistics of
    ``samples`` (intensities of labelled training voxels): clip to their 0.5 and 99.5 percentiles, then
    subtract their mean and divide by their standard deviation.

    >>> window = dataset_window(np.arange(1001, dtype=np.float64))
    >>> window["window"], window["range"]
    ([5.0, 995.0], [-1.713, 1.713])
    """
    if samples.size == 0:
        raise PreparationError("the training cases have no voxel to compute intensity statistics from")
    low, high = (float(value) for value in np.percentile(samples, CT_PERCENTILES))
    mean, std = float(np.mean(samples)), float(np.std(samples))
    std = std if std > 1e-8 else 1.0
    if high <= low:
        high = low + std
    return {"kind": "ct-window", "window": [low, high],
            "range": [round((low - mean) / std, 4), round((high - mean) / std, 4)],
            "statistics": {"mean": mean, "std": std, "percentiles": list(CT_PERCENTILES), "voxels": int(samples.size)}}


def per_image_normalization(kind: str) -> dict:
    """model.json's normalization of a channel normalized per image (``z-score``, ``percentile``, ``none``)."""
    if kind == "z-score":
        return {"kind": "z-score", "foreground": "all"}
    if kind == "percentile":
        return {"kind": "percentile", "percentiles": list(CT_PERCENTILES), "range": [0, 1]}
    return {"kind": "none"}


# --- preparing the training cases -------------------------------------------------------------------------


def _case_path(folder: str, case_id: str, kind: str) -> str:
    return os.path.join(folder, f"{case_id}.{kind}.npy")


def _save_array(path: str, array: np.ndarray) -> None:
    with atomic_target(path) as temporary, open(temporary, "wb") as file:
        np.save(file, np.ascontiguousarray(array), allow_pickle=False)


def _foreground_samples(labels: np.ndarray, seed: int) -> np.ndarray:
    """Up to FOREGROUND_SAMPLES voxels (class, z, y, x) of each label present, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    chosen = []
    for value in np.unique(labels):
        if value == 0:
            continue
        voxels = np.argwhere(labels == value)
        if len(voxels) > FOREGROUND_SAMPLES:
            voxels = voxels[np.sort(rng.choice(len(voxels), FOREGROUND_SAMPLES, replace=False))]
        chosen.append(np.concatenate([np.full((len(voxels), 1), value), voxels], axis=1))
    return np.concatenate(chosen).astype(np.int32) if chosen else np.zeros((0, 4), np.int32)


def save_case(folder: str, case_id: str, image: np.ndarray, labels: np.ndarray, seed: int) -> None:
    """Write a prepared case: its C×Z×Y×X float32 image, Z×Y×X class indices and labelled voxels to centre on."""
    _save_array(_case_path(folder, case_id, "image"), image.astype(np.float32, copy=False))
    _save_array(_case_path(folder, case_id, "labels"), labels.astype(np.uint8, copy=False))
    _save_array(_case_path(folder, case_id, "foreground"), _foreground_samples(labels, seed))


def read_plan(folder: str) -> dict | None:
    """The plan of the cases prepared in ``folder`` (None when none finished)."""
    with contextlib.suppress(FileNotFoundError, ValueError, OSError), \
            open(os.path.join(folder, PLAN_NAME), encoding="utf-8") as file:
        return json.load(file)
    return None


@dataclass(frozen=True)
class PreparedCases:
    """What :func:`prepare_cases` made: the normalization of each channel (model.json's form), the cases whose
    voxels the statistics came from, and each case's spacing on its own grid (x, y, z)."""

    normalization: list
    statistics_cases: list
    spacings: list


def prepare_cases(folder: str, case_ids: Sequence[str], read_case: Callable, package, normalization: Sequence,
                  seed: int, request: dict, progress: Callable | None = None, cancel=None) -> PreparedCases:
    """Prepare the training cases ``case_ids`` into ``folder`` (see the module description) and return what the
    model's preprocessing is.

    Args:
        folder: where the prepared cases and the plan go.
        case_ids: the training cases, and only them: every voxel the statistics see comes from these.
        read_case: ``read_case(case_id) -> (images, class label map)``, SimpleITK, one image per channel.
        package: what the model grid is made of: ``inputs`` and ``preprocessing`` (``spacing``, ``orientation``).
        normalization: per channel, ``"dataset"`` (statistics computed here, :func:`dataset_window`) or a
            model.json normalization entry, applied as it is.
        seed: draws the voxels of the statistics and of the patch centres.
        request: what the plan must match for prepared cases to be reused (the preprocessing asked for).
        progress: ``progress(fraction, text)``; cancel: a ``threading.Event``.
    """
    import SimpleITK as sitk
    import torch

    from .engine import model_input, normalize
    from .package import parse_normalization
    from .resample import Grid, resample

    plan = read_plan(folder)
    if plan is not None and plan.get("request") == request and plan.get("cases") == list(case_ids):
        return PreparedCases(plan["normalization"], plan["statistics_cases"], plan["spacings"])
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(folder, PLAN_NAME))
    os.makedirs(folder, exist_ok=True)
    kinds = ["dataset" if item == "dataset" else "given" for item in normalization]
    samples = [[] for _ in kinds]
    spacings = []
    for number, case_id in enumerate(case_ids):
        if cancel is not None and cancel.is_set():
            raise InterruptedError("cancelled while preparing the training cases")
        if progress is not None:
            progress(number / len(case_ids), f"preparing case {case_id} ({number + 1} of {len(case_ids)})")
        images, classes = read_case(case_id)
        spacings.append([float(value) for value in images[0].GetSpacing()])
        volume, grid = model_input(images, package, "cpu", normalized=False)
        labels = resample(torch.from_numpy(sitk.GetArrayFromImage(classes))[None].float(), Grid.from_image(classes),
                          grid, mode="nearest")[0].to(torch.uint8).numpy()
        rng = np.random.default_rng([seed, number])
        foreground = labels > 0 if labels.any() else np.ones_like(labels, bool)
        for channel, kind in enumerate(kinds):
            if kind == "dataset":
                values = volume[channel].numpy()[foreground]
                take = min(len(values), STATISTICS_SAMPLES)
                samples[channel].append(values[np.sort(rng.choice(len(values), take, replace=False))])
        save_case(folder, case_id, volume.numpy(), labels, seed=seed + number)
    normalization = [dataset_window(np.concatenate(samples[channel])) if kind == "dataset" else dict(item)
                     for channel, (kind, item) in enumerate(zip(kinds, normalization))]
    steps = [parse_normalization(item, f"normalization[{index}]") for index, item in enumerate(normalization)]
    for number, case_id in enumerate(case_ids):
        if progress is not None:
            progress(number / len(case_ids), f"normalizing case {case_id}")
        volume = torch.from_numpy(np.load(_case_path(folder, case_id, "image")))
        for channel, step in enumerate(steps):
            normalize(volume[channel], step)  # the engine's own normalization, on the whole case
        _save_array(_case_path(folder, case_id, "image"), volume.numpy())
    statistics_cases = list(case_ids) if "dataset" in kinds else []
    write_json_atomically(os.path.join(folder, PLAN_NAME), {
        "request": request, "cases": list(case_ids), "normalization": normalization,
        "statistics_cases": statistics_cases, "spacings": spacings})
    return PreparedCases(normalization, statistics_cases, spacings)


# --- patches ----------------------------------------------------------------------------------------------


def sampling_reach_mm(patch_size_zyx: Sequence[int], spacing: Sequence[float], settings) -> float:
    """How far (mm) from a patch's centre its augmented voxels may sample the source, at most.

    A voxel ``p`` of the patch samples ``A (p + e) + t`` about the centre (``augmentation``'s convention):
    ``|A|`` is at most the shear's stretch over the smallest scale, ``|e|`` the elastic displacement's bound
    along three axes and ``|t|`` the translation's; plus a voxel for interpolation.

    >>> round(sampling_reach_mm((8, 8, 8), (1.0, 1.0, 1.0), None), 3)   # no augmentation: the half diagonal
    7.062
    """
    half = np.array([(n - 1) / 2 * s for n, s in zip(reversed(tuple(patch_size_zyx)), spacing)])
    radius = float(np.linalg.norm(half))
    if settings is None:
        return radius + max(spacing)
    stretch = (1.0 + math.sqrt(6.0) * settings.shear) / min(settings.scale_range)
    elastic = math.sqrt(3.0) * settings.elastic_displacement_mm if settings.elastic_probability > 0 else 0.0
    translation = float(np.linalg.norm(settings.translation_mm))
    return stretch * (radius + elastic) + translation + max(spacing)


class PatchSampler:
    """Augmented training patches of the cases prepared in ``folder`` (see the module description).

    ``patch_size`` is (z, y, x) voxels, ``spacing`` the model grid's (x, y, z) mm; ``augmentation`` an
    ``AugmentationSettings`` (None: none); ``direction`` the model grid's direction cosines (rotations are
    about patient axes); ``device`` where patches are augmented and returned. ``drawn`` counts the patches
    taken from each case (what a test reads to know which cases reached the batches).
    """

    def __init__(self, folder: str, case_ids: Sequence[str], patch_size: Sequence[int], spacing: Sequence[float],
                 augmentation, *, foreground_fraction: float = 1 / 3, seed: int = 0, direction=None,
                 device: str = "cpu") -> None:
        self.case_ids = list(case_ids)
        self.images = [np.load(_case_path(folder, case_id, "image"), mmap_mode="r") for case_id in self.case_ids]
        self.labels = [np.load(_case_path(folder, case_id, "labels"), mmap_mode="r") for case_id in self.case_ids]
        self.foreground = [np.load(_case_path(folder, case_id, "foreground")) for case_id in self.case_ids]
        self.patch_size = tuple(int(n) for n in patch_size)
        self.spacing = tuple(float(s) for s in spacing)
        self.augmentation = augmentation
        self.foreground_fraction = float(foreground_fraction)
        self.seed = int(seed)
        self.direction = direction
        self.device = device
        reach = sampling_reach_mm(self.patch_size, self.spacing, augmentation)
        self.reach_voxels = np.array([math.ceil(reach / s) + 1 for s in reversed(self.spacing)])  # z, y, x
        self.drawn = dict.fromkeys(self.case_ids, 0)

    def _centre(self, rng: np.random.Generator, case: int) -> np.ndarray:
        """A patch centre (z, y, x, continuous voxel index): on a labelled voxel (a label drawn first) for a share
        of the samples, else anywhere in the volume."""
        foreground = self.foreground[case]
        wants_foreground = rng.random() < self.foreground_fraction
        shape = np.array(self.labels[case].shape)
        anywhere = rng.random(3) * (shape - 1)
        label = rng.choice(np.unique(foreground[:, 0])) if len(foreground) else 0
        within = foreground[foreground[:, 0] == label] if len(foreground) else foreground
        pick = int(rng.integers(len(within))) if len(within) else 0
        if wants_foreground and len(within):
            return within[pick, 1:].astype(np.float64)
        return anywhere

    def sample(self, epoch: int, index: int) -> tuple:
        """Sample ``index`` of ``epoch``: (C×Z×Y×X image tensor, Z×Y×X uint8 class tensor, case id)."""
        import torch

        from TrainingDataExportLib.augmentation import SampleParameters, apply_parameters, augment, sample_seed

        seed = sample_seed(self.seed, epoch, index)
        rng = np.random.default_rng([seed, _PICK_STREAM])
        case = int(rng.integers(len(self.case_ids)))
        centre = self._centre(rng, case)
        shape = np.array(self.labels[case].shape)
        low = np.clip(np.floor(centre).astype(int) - self.reach_voxels, 0, shape)
        high = np.clip(np.ceil(centre).astype(int) + self.reach_voxels + 1, 0, shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
        image = torch.from_numpy(np.array(self.images[case][(slice(None), *box)]))[None]  # a copy: the file stays
        labels = torch.from_numpy(np.array(self.labels[case][box]))[None, None]
        # The patch centre in mm along the box's axes (x, y, z) from the box's centre.
        offset_mm = [float((centre[axis] - (low[axis] + high[axis] - 1) / 2) * self.spacing[2 - axis])
                     for axis in (2, 1, 0)]
        if self.augmentation is None:
            batch = apply_parameters(image, labels, self.spacing, [SampleParameters.identity()], self.patch_size,
                                     [offset_mm], self.direction, image_padding="zeros", device=self.device)
        else:
            batch = augment(image, labels, self.spacing, [seed], self.augmentation, self.patch_size, [offset_mm],
                            self.direction, image_padding="zeros", device=self.device)
        self.drawn[self.case_ids[case]] += 1
        return batch.images[0], batch.labels[0, 0], self.case_ids[case]

    def batch(self, epoch: int, step: int, batch_size: int) -> tuple:
        """Samples ``step * batch_size`` to ``(step + 1) * batch_size - 1`` of ``epoch``: (N×C×Z×Y×X float32
        images, N×Z×Y×X int64 classes, case ids)."""
        import torch

        samples = [self.sample(epoch, step * batch_size + i) for i in range(batch_size)]
        return (torch.stack([image for image, _, _ in samples]),
                torch.stack([labels for _, labels, _ in samples]).long(),
                [case_id for _, _, case_id in samples])

"""A model package: an installed model version's folder with ``model.json`` (the contract) and its weights.

The contract says what the network takes and gives: input channels, resampling, intensity
normalization, sliding-window settings, postprocessing and output labels. It is described by
``DeepSegment/Resources/Schema/model-package.schema.json``; :func:`parse_contract` checks the same rules
and those a schema cannot say (channel counts, label values referenced, the weights file inside the
folder), naming the offending field in every error, as ``ModelRegistryLib.index`` does for indexes.
Inputs and labels are written exactly as in a registry index and parsed by ModelRegistryLib.

Axis order: ``spacing``, ``patchSize``, ``mirrorAxes`` and ``sliceAxis`` name image axes x, y, z (i, j,
k of the model grid). The network's tensors are (batch, channel, z, y, x), NumPy's order for a
SimpleITK image, unless ``inference.axisOrder`` is ``xyz`` (MONAI and nibabel-based networks: (batch,
channel, x, y, z)); :attr:`ModelPackage.tensor_patch_size` and :attr:`ModelPackage.tensor_mirror_dims`
give the same in the network's tensor order.

Output channels and labels: with ``softmax`` (postprocessing ``argmax``) the network has one channel
more than there are labels, channel 0 is the background and channel ``c`` is the ``c``-th label in
``labels`` order; with ``sigmoid`` (``threshold``) channel ``c`` (from 0) is label ``c + 1`` in that
order. :attr:`ModelPackage.channel_values` gives the label value of every channel.

Weights are only loaded by loaders that cannot run code from the file; see :func:`load_network`.

PyTorch versions: ``torchVersion`` records the PyTorch release that wrote the weights (:func:`write_package`
fills it in). A ``torch.export`` program loads only in that release or a later one (an older PyTorch cannot
read a newer archive's layout: PyTorch 2.8 fails on 2.13's with a bare ``KeyError``), so
:func:`check_torch_version` refuses it in an older PyTorch before anything loads, naming the release it needs;
TorchScript files load across releases unless their file format version is newer than this PyTorch reads.

Example::

    >>> import tempfile, torch
    >>> network = torch.nn.Conv3d(1, 3, kernel_size=1)
    >>> contract = {"schemaVersion": 1, "format": "torch.export", "weights": "model.pt2", "dimensions": 3,
    ...     "inputs": [{"name": "T1", "modality": "MR"}],
    ...     "preprocessing": {"spacing": [1, 1, 1], "orientation": "RAS", "normalization": [{"kind": "z-score"}]},
    ...     "inference": {"patchSize": [16, 16, 8], "activation": "softmax", "outputChannels": 3},
    ...     "postprocessing": {"mode": "argmax"},
    ...     "labels": [{"value": 1, "name": "Gray matter", "color": "#b4b4b4"},
    ...                {"value": 2, "name": "White matter", "color": "#f0f0f0"}]}
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     write_package(folder, network, contract)   # exported here: torch.export, with a dynamic batch
    ...     package = load_package(folder)
    ...     output = load_network(package, "cpu")(torch.zeros(1, 1, 8, 16, 16))
    >>> package.tensor_patch_size, package.channel_values, tuple(output.shape)
    ((8, 16, 16), (0, 1, 2), (1, 3, 8, 16, 16))
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import sys
import zipfile
from collections.abc import Callable
import dataclasses
from dataclasses import dataclass
from typing import Any

from ModelRegistryLib.index import (
    NUMBER,
    IndexValidationError,
    Label,
    field_path,
    parse_input,
    parse_labels,
    parse_list,
    require,
    require_object,
)

SCHEMA_VERSION = 2
# Contracts of these versions are read; a version 1 contract may not use the fields of version 2, which a
# reader of version 1 would ignore, silently running the model another way.
SCHEMA_VERSIONS = (1, 2)
VERSION_2_FIELDS = (
    ("inference", "mode"), ("inference", "shape"), ("inference", "crop"), ("localizer",),
    ("inference", "axisOrder"), ("inference", "paddingValue"),
    ("preprocessing", "spacingTolerance"), ("preprocessing", "nonFinite"),
    ("postprocessing", "channelThresholds"), ("postprocessing", "regions"), ("postprocessing", "connectivity"),
    ("postprocessing", "dilate"),
)
# Normalization step kinds and keys a version 1 contract could not say.
VERSION_2_NORMALIZATION_KINDS = ("clip", "scale-shift", "sigmoid")
VERSION_2_NORMALIZATION_KEYS = ("clip", "mean", "std", "scale", "shift")
CONTRACT_NAME = "model.json"
MAX_CONTRACT_BYTES = 1024 * 1024
FORMATS = ("torchscript", "torch.export", "onnx")
ORIENTATIONS = ("RAS", "LPS", "native", "closest-RAS", "closest-LPS")
NORMALIZATIONS = ("ct-window", "z-score", "percentile", "clip", "scale-shift", "sigmoid", "none")
FOREGROUNDS = ("nonzero", "all")
AXIS_ORDERS = ("zyx", "xyz")
SPACING_TOLERANCES = ("mm", "fraction")
BLENDINGS = ("gaussian", "constant")
# How the network sees the model grid: tiled by windows of patchSize, whole (padded to sizeMultiple), or
# resized to a fixed shape and its probabilities resized back.
INFERENCE_MODES = ("sliding-window", "whole-volume", "resize")
CROPS = ("foreground", "localizer")
# The postprocessing modes each activation allows: argmax needs a background channel, which sigmoid
# outputs lack; "none" (the network already gives probabilities) allows every mode.
MODES_OF_ACTIVATION = {
    "softmax": ("argmax",), "sigmoid": ("threshold", "regions"), "none": ("argmax", "threshold", "regions")
}
POSTPROCESSING_MODES = ("argmax", "threshold", "regions")
CONNECTIVITIES = (6, 26)
DEFAULT_THRESHOLD = 0.5


class PackageError(ValueError):
    """A model package is unusable; ``field`` names where (e.g. ``inference.patchSize``, ``weights``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Normalization:
    """One step of how an input channel's intensities are scaled before inference (a channel has one step,
    or a tuple of steps applied in order).

    ``ct-window``: map ``window`` (low, high) linearly onto ``range``, clipping outside unless ``clip`` is
    False; ``z-score``: subtract the mean and divide by the standard deviation of the ``foreground`` voxels
    (``nonzero``, ``all``, or ``threshold``: those above ``threshold``; voxels outside it become 0), or by the
    fixed ``mean`` and ``std`` (every voxel); ``percentile``: map the ``percentiles`` (low, high, in percent)
    of the ``foreground``'s intensities onto ``range``, clipping outside unless ``clip`` is False; ``clip``:
    clamp to ``window`` (absolute values) or to the foreground's ``percentiles``; ``scale-shift``: multiply
    by ``scale``, then add ``shift``; ``sigmoid``: 1 / (1 + e^-x); ``none``: as they are.
    """

    kind: str
    window: tuple | None = None
    range: tuple = (0.0, 1.0)
    foreground: str = "nonzero"
    threshold: float | None = None
    percentiles: tuple | None = None
    clip: bool = True
    mean: float | None = None
    std: float | None = None
    scale: float = 1.0
    shift: float = 0.0


@dataclass(frozen=True)
class Preprocessing:
    """``spacing`` (x, y, z) in mm, or ``None`` for the input's own spacing; ``orientation``: ``RAS`` or ``LPS``
    (model grid axes along those directions, resampled), ``native`` (the input's own axes), or ``closest-RAS``
    / ``closest-LPS`` (the input's axes permuted and flipped to lie closest to RAS or LPS, no interpolation);
    one normalization per input (a :class:`Normalization`, or a tuple of them applied in order).
    ``spacing_tolerance``: ``("mm", d)`` or ``("fraction", f)``: a model axis whose input spacing is within
    that of ``spacing`` keeps the input's spacing (``None``: always the model's). ``non_finite_value``: what
    NaN and infinite voxels are replaced by (``None``: such inputs are refused).
    """

    spacing: tuple | None
    orientation: str
    normalization: tuple
    spacing_tolerance: tuple | None = None
    non_finite_value: float | None = None


@dataclass(frozen=True)
class Crop:
    """The box of the model grid the network runs on (zeros, i.e. background, outside): ``to`` ``foreground``
    (the voxels above ``threshold`` in any channel, or nonzero ones when ``threshold`` is None, before
    normalization) or ``localizer`` (the voxels the package's localizer labels), grown by ``margin_mm`` (x, y,
    z) on each side."""

    to: str
    threshold: float | None = None
    margin_mm: tuple = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class Inference:
    """How the network runs; ``patch_size``, ``mirror_axes``, ``size_multiple`` and ``shape`` in image axes
    (x, y, z), see the module doc. ``mode``: ``sliding-window`` (windows of ``patch_size``), ``whole-volume``
    (the whole model grid at once, padded to ``size_multiple``; ``patch_size`` None) or ``resize`` (the model
    grid resized to ``shape``, the probabilities resized back; ``patch_size`` None). ``size_multiple``: the
    network accepts windows whose sizes are multiples of these (``None``: not declared, the engine probes the
    network). ``crop``: a :class:`Crop`, or None for the whole model grid. ``axis_order``: the order of the
    network's spatial tensor dimensions, ``zyx`` (NumPy's order of a SimpleITK image) or ``xyz`` (MONAI,
    nibabel). ``padding_value``: the (normalized) intensity of voxels a window holds beyond the volume."""

    patch_size: tuple | None
    overlap: float
    blending: str
    batch_size: int
    mirror_axes: tuple
    activation: str
    output_channels: int
    size_multiple: tuple | None = None
    axis_order: str = "zyx"
    padding_value: float = 0.0
    mode: str = "sliding-window"
    shape: tuple | None = None
    crop: Crop | None = None


@dataclass(frozen=True)
class Region:
    """One output channel of nested regions: where its probability is at least ``threshold`` the voxel gets
    ``label``, regions later in the list painted over earlier ones (outermost first)."""

    label: int
    threshold: float = DEFAULT_THRESHOLD


@dataclass(frozen=True)
class Dilation:
    """Grow ``labels`` into the background by a ball of ``voxels`` voxels or ``mm`` millimetres (one is None)."""

    labels: tuple
    voxels: int | None = None
    mm: float | None = None


@dataclass(frozen=True)
class Postprocessing:
    """``mode`` ``argmax``, ``threshold`` (``thresholds``: label value → probability, every label present) or
    ``regions`` (``regions``: one :class:`Region` per channel); in argmax mode ``channel_thresholds`` (label
    value → probability) gives a label where its probability is at least that instead of where it is the
    largest. Label values whose largest connected component alone is kept, whose holes are filled, the
    smallest component kept per label value (mm³), components joined by faces (``connectivity`` 6) or also
    edges and corners (26), and ``dilate``: :class:`Dilation` steps run last. Where several labels pass their
    thresholds the most probable wins.
    """

    mode: str
    thresholds: dict
    keep_largest_component: tuple
    fill_holes: tuple
    minimum_size_mm3: dict
    channel_thresholds: dict = dataclasses.field(default_factory=dict)
    regions: tuple = ()
    connectivity: int = 6
    dilate: tuple = ()


@dataclass(frozen=True)
class ModelPackage:
    """A parsed model contract and where its files are; ``inputs`` are ModelRegistryLib ``ModelInput`` and
    ``labels`` ModelRegistryLib ``Label``; ``slice_axis`` is the image axis a 2D model steps along;
    ``torch_version`` the PyTorch release that wrote the weights ("" when not recorded)."""

    folder: str
    format: str
    weights_path: str
    dimensions: int
    inputs: tuple
    preprocessing: Preprocessing
    inference: Inference
    postprocessing: Postprocessing
    labels: tuple
    slice_axis: int = 2
    torch_version: str = ""
    contract_mtime_ns: int = 0
    weights_mtime_ns: int = 0
    localizer: Localizer | None = None

    @property
    def identity(self) -> tuple:
        """What a cache of loaded networks is keyed on: the folder, the weights file (a localizer's differs) and
        the modification times of both files."""
        return (self.folder, self.contract_mtime_ns, self.weights_mtime_ns, self.weights_path)

    @property
    def spatial_axes(self) -> tuple:
        """The image axes (0 = x, 1 = y, 2 = z) the network sees, x first: all three, or a 2D model's plane."""
        return tuple(axis for axis in range(3) if self.dimensions == 3 or axis != self.slice_axis)

    @property
    def tensor_patch_size(self) -> tuple:
        """The patch size in the network's tensor order ((z, y, x), or (x, y, z) with axis order ``xyz``)."""
        patch = tuple(self.inference.patch_size)
        return patch if self.inference.axis_order == "xyz" else tuple(reversed(patch))

    @property
    def tensor_mirror_dims(self) -> tuple:
        """The dimensions of the network's (batch, channel, ...) tensor that test-time augmentation flips."""
        axes = self.spatial_axes
        if self.inference.axis_order == "xyz":
            return tuple(sorted(2 + axes.index(axis) for axis in self.inference.mirror_axes))
        return tuple(sorted(1 + len(axes) - axes.index(axis) for axis in self.inference.mirror_axes))

    @property
    def channel_values(self) -> tuple:
        """The label value of each output channel: 0 (background) first in argmax mode, the regions' labels in
        regions mode."""
        if self.postprocessing.mode == "regions":
            return tuple(region.label for region in self.postprocessing.regions)
        values = tuple(label.value for label in self.labels)
        return (0, *values) if self.postprocessing.mode == "argmax" else values


@dataclass(frozen=True)
class Localizer:
    """The first stage of a two-stage model: a coarse network (``package``: its own weights, preprocessing,
    inference and postprocessing; its labels are the values 1, 2, ... its outputs give) whose labelled voxels,
    their largest connected component alone when ``largest_component``, bound the box the main network runs
    on (``inference.crop`` ``{"to": "localizer"}``)."""

    package: ModelPackage
    largest_component: bool = False


def _choice(mapping: dict, key: str, choices, field: str, default: Any = None) -> Any:
    if key not in mapping and default is not None:
        return default
    value = require(mapping, key, str, field)
    if value not in choices:
        raise PackageError(field_path(field, key), f"must be one of {', '.join(choices)}")
    return value


def _is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value, field: str) -> float:
    if not isinstance(value, NUMBER) or isinstance(value, bool) or not math.isfinite(value):
        raise PackageError(field, "must be a finite number")
    return float(value)


def _interval(mapping: dict, key: str, field: str, default: tuple | None = None) -> tuple:
    """A pair of numbers (low, high) with low < high."""
    if key not in mapping and default is not None:
        return default
    pair = require(mapping, key, list, field)
    if len(pair) != 2:
        raise PackageError(field_path(field, key), "must be two numbers [low, high]")
    low, high = (_finite(value, f"{field_path(field, key)}[{i}]") for i, value in enumerate(pair))
    if low >= high:
        raise PackageError(field_path(field, key), "must be [low, high] with low < high")
    return (low, high)


def _positive_integers(values: list, field: str, count: int) -> tuple:
    if len(values) != count:
        raise PackageError(field, f"must list {count} values")
    for i, value in enumerate(values):
        if not _is_integer(value) or value < 1:
            raise PackageError(f"{field}[{i}]", "must be an integer of 1 or more")
    return tuple(values)


def _foreground(item: dict, field: str) -> dict:
    """The ``foreground`` of a step whose statistics it selects, as Normalization fields."""
    foreground = item.get("foreground", "nonzero")
    if isinstance(foreground, dict):
        threshold = require(foreground, "threshold", NUMBER, f"{field}.foreground")
        return {"foreground": "threshold", "threshold": _finite(threshold, f"{field}.foreground.threshold")}
    if foreground not in FOREGROUNDS:
        raise PackageError(f"{field}.foreground", 'must be "nonzero", "all" or {"threshold": number}')
    return {"foreground": foreground}


def _percentiles(item: dict, field: str) -> tuple:
    percentiles = _interval(item, "percentiles", field)
    if percentiles[0] < 0 or percentiles[1] > 100:
        raise PackageError(f"{field}.percentiles", "must lie between 0 and 100")
    return percentiles


def _clip_flag(item: dict, field: str) -> bool:
    return require(item, "clip", bool, field) if "clip" in item else True


def _refuse_unused(item: dict, field: str, kind: str, allowed: tuple) -> None:
    """A key the step's kind does not use (a typo, a setting of another kind) is refused, never ignored.
    ``statistics`` (an object) may go with any step: where its numbers came from, for the reader."""
    if "statistics" in item:
        require_object(item["statistics"], f"{field}.statistics")
    for key in item:
        if key not in ("kind", "statistics") and key not in allowed:
            uses = ", ".join(allowed) or "nothing but its kind"
            raise PackageError(f"{field}.{key}", f"does not apply to {kind!r} normalization (it takes {uses})")


def _parse_z_score(item: dict, field: str) -> Normalization:
    if "mean" not in item and "std" not in item:
        return Normalization("z-score", **_foreground(item, field))
    if "foreground" in item:
        raise PackageError(f"{field}.foreground", "does not apply with a fixed mean and std (every voxel is scaled)")
    mean = _finite(require(item, "mean", NUMBER, field), f"{field}.mean")
    std = _finite(require(item, "std", NUMBER, field), f"{field}.std")
    if std <= 0:
        raise PackageError(f"{field}.std", "must be more than 0")
    return Normalization("z-score", foreground="all", mean=mean, std=std)


def _parse_clip(item: dict, field: str) -> Normalization:
    if ("window" in item) == ("percentiles" in item):
        raise PackageError(f"{field}.window", "a clip step needs either window (values) or percentiles, not both")
    if "window" in item:
        if "foreground" in item:
            raise PackageError(f"{field}.foreground", "applies to percentiles only")
        return Normalization("clip", window=_interval(item, "window", field))
    return Normalization("clip", percentiles=_percentiles(item, field), **_foreground(item, field))


# Per kind: the keys it uses, and how it is parsed.
_STEP_KEYS = {
    "ct-window": ("window", "range", "clip"),
    "percentile": ("percentiles", "range", "clip", "foreground"),
    "z-score": ("foreground", "mean", "std"),
    "clip": ("window", "percentiles", "foreground"),
    "scale-shift": ("scale", "shift"),
    "sigmoid": (),
    "none": (),
}


def _parse_normalization(item, field: str) -> Normalization:
    """One normalization step (an object with a ``kind``)."""
    item = require_object(item, field)
    kind = _choice(item, "kind", NORMALIZATIONS, field)
    _refuse_unused(item, field, kind, _STEP_KEYS[kind])
    if kind == "ct-window":
        return Normalization(kind, window=_interval(item, "window", field),
                             range=_interval(item, "range", field, (0.0, 1.0)), clip=_clip_flag(item, field))
    if kind == "percentile":
        return Normalization(kind, percentiles=_percentiles(item, field), clip=_clip_flag(item, field),
                             range=_interval(item, "range", field, (0.0, 1.0)), **_foreground(item, field))
    if kind == "z-score":
        return _parse_z_score(item, field)
    if kind == "clip":
        return _parse_clip(item, field)
    if kind == "scale-shift":
        if "scale" not in item and "shift" not in item:
            raise PackageError(f"{field}.scale", "a scale-shift step needs scale, shift or both")
        scale = _finite(item.get("scale", 1.0), f"{field}.scale")
        return Normalization(kind, scale=scale, shift=_finite(item.get("shift", 0.0), f"{field}.shift"))
    return Normalization(kind)


def parse_normalization(item, field: str = "normalization"):
    """A channel's normalization in ``model.json``, validated (``PackageError`` naming ``field``): one step (an
    object, a :class:`Normalization`), or a list of steps applied in order (a tuple of them)."""
    if not isinstance(item, list):
        return _parse_normalization(item, field)
    if not item:
        raise PackageError(field, "must list at least one step")
    return tuple(_parse_normalization(step, f"{field}[{i}]") for i, step in enumerate(item))


def _parse_spacing_tolerance(item: dict, field: str) -> tuple | None:
    if "spacingTolerance" not in item:
        return None
    field = f"{field}.spacingTolerance"
    given = require_object(item["spacingTolerance"], field)
    if len(given) != 1 or next(iter(given)) not in SPACING_TOLERANCES:
        raise PackageError(field, 'must be {"mm": number} or {"fraction": number}')
    unit, value = next(iter(given.items()))
    value = _finite(value, f"{field}.{unit}")
    if value < 0 or (unit == "fraction" and value >= 1):
        raise PackageError(f"{field}.{unit}", "must be at least 0" + (" and less than 1" if unit == "fraction" else ""))
    return (unit, value)


def _parse_non_finite(item: dict, field: str) -> float | None:
    """``nonFinite``: "refuse" (the default) or ``{"replaceWith": number}``."""
    given = item.get("nonFinite", "refuse")
    if given == "refuse":
        return None
    field = f"{field}.nonFinite"
    if not isinstance(given, dict) or set(given) != {"replaceWith"}:
        raise PackageError(field, 'must be "refuse" or {"replaceWith": number}')
    return _finite(given["replaceWith"], f"{field}.replaceWith")


def _parse_preprocessing(item, field: str, channels: int) -> Preprocessing:
    item = require_object(item, field)
    if "spacing" not in item:
        raise PackageError(f"{field}.spacing", "is required (null keeps the input's spacing)")
    spacing = item["spacing"]
    if spacing is not None:
        if not isinstance(spacing, list) or len(spacing) != 3:
            raise PackageError(f"{field}.spacing", "must be three numbers (x, y, z) in mm, or null")
        spacing = tuple(_finite(value, f"{field}.spacing[{i}]") for i, value in enumerate(spacing))
        for i, value in enumerate(spacing):
            if value <= 0:
                raise PackageError(f"{field}.spacing[{i}]", "must be more than 0")
    orientation = _choice(item, "orientation", ORIENTATIONS, field)
    require(item, "normalization", list, field)
    normalization = parse_list(item, "normalization", field, parse_normalization)
    if len(normalization) != channels:
        raise PackageError(f"{field}.normalization", f"lists {len(normalization)} entries for {channels} inputs")
    tolerance = _parse_spacing_tolerance(item, field)
    if tolerance is not None and spacing is None:
        raise PackageError(f"{field}.spacingTolerance", "applies only with a spacing (null keeps the input's)")
    return Preprocessing(spacing=spacing, orientation=orientation, normalization=normalization,
                         spacing_tolerance=tolerance, non_finite_value=_parse_non_finite(item, field))


def _margin(value, field: str) -> tuple:
    """A margin in mm: one number for every axis, or three (x, y, z); none below 0."""
    values = value if isinstance(value, list) else [value]
    if len(values) not in (1, 3):
        raise PackageError(field, "must be a number of mm or three (x, y, z)")
    margins = tuple(_finite(v, f"{field}[{i}]" if isinstance(value, list) else field) for i, v in enumerate(values))
    if min(margins) < 0:
        raise PackageError(field, "must be 0 or more")
    return margins * 3 if len(margins) == 1 else margins


def _parse_crop(item, field: str) -> Crop:
    item = require_object(item, field)
    to = _choice(item, "to", CROPS, field)
    threshold = None
    if "threshold" in item:
        if to != "foreground":
            raise PackageError(f"{field}.threshold", "applies only to a crop to the foreground")
        threshold = _finite(item["threshold"], f"{field}.threshold")
    margin = _margin(item["marginMm"], f"{field}.marginMm") if "marginMm" in item else (0.0, 0.0, 0.0)
    return Crop(to=to, threshold=threshold, margin_mm=margin)


def _parse_inference(item, field: str, axes: tuple) -> Inference:
    item = require_object(item, field)
    mode = _choice(item, "mode", INFERENCE_MODES, field, "sliding-window")
    patch_size = shape = None
    if mode == "sliding-window":
        patch_size = _positive_integers(require(item, "patchSize", list, field), f"{field}.patchSize", len(axes))
    elif "patchSize" in item:
        raise PackageError(f"{field}.patchSize", f"applies only to sliding-window inference, not {mode}")
    if mode == "resize":
        shape = _positive_integers(require(item, "shape", list, field), f"{field}.shape", len(axes))
    elif "shape" in item:
        raise PackageError(f"{field}.shape", "applies only to resize inference")
    overlap = _finite(item.get("overlap", 0.5), f"{field}.overlap")
    if not 0 <= overlap < 1:
        raise PackageError(f"{field}.overlap", "must be at least 0 and less than 1")
    batch_size = require(item, "batchSize", int, field) if "batchSize" in item else 1
    if batch_size < 1:
        raise PackageError(f"{field}.batchSize", "must be 1 or more")
    mirror_axes = tuple(require(item, "mirrorAxes", list, field)) if "mirrorAxes" in item else ()
    for i, axis in enumerate(mirror_axes):
        if not _is_integer(axis) or axis not in axes:
            raise PackageError(f"{field}.mirrorAxes[{i}]", f"must be one of the axes {list(axes)} (0 = x)")
    if len(set(mirror_axes)) != len(mirror_axes):
        raise PackageError(f"{field}.mirrorAxes", "names an axis twice")
    output_channels = require(item, "outputChannels", int, field)
    if output_channels < 1:
        raise PackageError(f"{field}.outputChannels", "must be 1 or more")
    size_multiple = None
    if "sizeMultiple" in item:
        field_name = f"{field}.sizeMultiple"
        size_multiple = _positive_integers(require(item, "sizeMultiple", list, field), field_name, len(axes))
        for i, (multiple, size) in enumerate(zip(size_multiple, patch_size or shape or size_multiple)):
            if size % multiple:
                kind = "patch size" if patch_size else "shape"
                raise PackageError(f"{field_name}[{i}]", f"must divide the {kind} {size}")
    return Inference(
        patch_size=patch_size,
        overlap=overlap,
        blending=_choice(item, "blending", BLENDINGS, field, "gaussian"),
        batch_size=batch_size,
        mirror_axes=mirror_axes,
        activation=_choice(item, "activation", tuple(MODES_OF_ACTIVATION), field),
        output_channels=output_channels,
        size_multiple=size_multiple,
        axis_order=_choice(item, "axisOrder", AXIS_ORDERS, field, "zyx"),
        padding_value=_finite(item.get("paddingValue", 0.0), f"{field}.paddingValue"),
        mode=mode,
        shape=shape,
        crop=_parse_crop(item["crop"], f"{field}.crop") if "crop" in item else None,
    )


def _label_values(mapping: dict, key: str, field: str, values: set) -> tuple:
    listed = tuple(require(mapping, key, list, field)) if key in mapping else ()
    for i, value in enumerate(listed):
        if not _is_integer(value) or value not in values:
            raise PackageError(f"{field}.{key}[{i}]", f"{value!r} is not a label value")
    return listed


def _per_label(mapping: dict, key: str, field: str, values: set, upper: float) -> dict:
    """A ``{"label value": number}`` object as ``{int: float}``; numbers between 0 and ``upper``."""
    given = require(mapping, key, dict, field) if key in mapping else {}
    result = {}
    for name, number in given.items():
        if not name.isdigit() or int(name) not in values:
            raise PackageError(f"{field}.{key}.{name}", "is not a label value")
        number = _finite(number, f"{field}.{key}.{name}")
        if not 0 <= number <= upper:
            raise PackageError(f"{field}.{key}.{name}", f"must be between 0 and {upper}")
        result[int(name)] = number
    return result


def _parse_regions(item: dict, field: str, values: set) -> tuple:
    """Nested regions, one per output channel (outermost first); every label is one region's."""
    regions = []
    for i, entry in enumerate(require(item, "regions", list, field)):
        entry_field = f"{field}.regions[{i}]"
        entry = require_object(entry, entry_field)
        label = require(entry, "label", int, entry_field)
        if label not in values:
            raise PackageError(f"{entry_field}.label", f"{label!r} is not a label value")
        threshold = _finite(entry.get("threshold", DEFAULT_THRESHOLD), f"{entry_field}.threshold")
        if not 0 <= threshold <= 1:
            raise PackageError(f"{entry_field}.threshold", "must be between 0 and 1")
        regions.append(Region(label, threshold))
    labels = [region.label for region in regions]
    if sorted(labels) != sorted(values):
        missing = sorted(values - set(labels))
        problem = f"leave out label {missing[0]}" if missing else "give a label twice"
        raise PackageError(f"{field}.regions", f"must name every label once (one region per channel); they {problem}")
    return tuple(regions)


def _parse_dilation(entry, field: str, values: set) -> Dilation:
    entry = require_object(entry, field)
    if not require(entry, "labels", list, field):
        raise PackageError(f"{field}.labels", "must list at least one label value")
    labels = _label_values(entry, "labels", field, values)
    if ("voxels" in entry) == ("mm" in entry):
        raise PackageError(field, "must give the radius either in voxels or in mm")
    if "voxels" in entry:
        voxels = entry["voxels"]
        if not _is_integer(voxels) or voxels < 1:
            raise PackageError(f"{field}.voxels", "must be an integer of 1 or more")
        return Dilation(labels, voxels=voxels)
    mm = _finite(entry["mm"], f"{field}.mm")
    if mm <= 0:
        raise PackageError(f"{field}.mm", "must be more than 0")
    return Dilation(labels, mm=mm)


def _parse_postprocessing(item, field: str, activation: str, values: set) -> Postprocessing:
    item = require_object(item, field)
    mode = _choice(item, "mode", POSTPROCESSING_MODES, field)
    if mode not in MODES_OF_ACTIVATION[activation]:
        allowed = " or ".join(repr(m) for m in MODES_OF_ACTIVATION[activation])
        raise PackageError(f"{field}.mode", f"{activation} outputs need {allowed}")
    thresholds = _per_label(item, "thresholds", field, values, 1.0)
    if thresholds and mode != "threshold":
        raise PackageError(f"{field}.thresholds", "apply only in threshold mode")
    if mode == "threshold":
        thresholds = {value: thresholds.get(value, DEFAULT_THRESHOLD) for value in sorted(values)}
    channel_thresholds = _per_label(item, "channelThresholds", field, values, 1.0)
    if channel_thresholds and mode != "argmax":
        raise PackageError(f"{field}.channelThresholds", "apply only in argmax mode")
    if mode == "regions":
        regions = _parse_regions(item, field, values)
    elif "regions" in item:
        raise PackageError(f"{field}.regions", "apply only in regions mode")
    else:
        regions = ()
    connectivity = item.get("connectivity", 6)
    if not _is_integer(connectivity) or connectivity not in CONNECTIVITIES:
        raise PackageError(f"{field}.connectivity", "must be 6 (faces) or 26 (faces, edges and corners)")
    return Postprocessing(
        mode=mode,
        thresholds=thresholds,
        keep_largest_component=_label_values(item, "keepLargestComponent", field, values),
        fill_holes=_label_values(item, "fillHoles", field, values),
        minimum_size_mm3=_per_label(item, "minimumSizeMm3", field, values, math.inf),
        channel_thresholds=channel_thresholds,
        regions=regions,
        connectivity=connectivity,
        dilate=parse_list(item, "dilate", field, lambda entry, at: _parse_dilation(entry, at, values)),
    )


def _path_inside(folder: str, name: str, field: str = "weights") -> str:
    """The real path of ``name`` relative to ``folder``, which must stay inside it (links resolved)."""
    if not name or os.path.isabs(name) or name.startswith(("/", "\\")):
        raise PackageError(field, "must be a file name relative to the model folder")
    root = os.path.realpath(folder)
    path = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath([root, path]) != root or path == root:
        raise PackageError(field, f"{name!r} points outside the model folder")
    return path


def _weights_path(document: dict, folder: str, field: str = "") -> str:
    weights_field = field_path(field, "weights")
    path = _path_inside(folder, require(document, "weights", str, field), weights_field)
    if not os.path.isfile(path):
        raise PackageError(weights_field, f"{document['weights']!r} is not a file in {os.path.realpath(folder)}")
    return path


def _check_version_fields(document: dict, schema_version: int) -> None:
    """Refuse, in a contract of an older schema version, the fields and values that came later."""
    if schema_version >= 2:
        return
    for path in VERSION_2_FIELDS:
        mapping = document
        for key in path[:-1]:
            mapping = mapping.get(key) if isinstance(mapping, dict) else None
        if isinstance(mapping, dict) and path[-1] in mapping:
            raise PackageError(".".join(path), "needs schemaVersion 2")
    inference, postprocessing = document.get("inference"), document.get("postprocessing")
    if isinstance(inference, dict) and inference.get("activation") == "none":
        raise PackageError("inference.activation", '"none" needs schemaVersion 2')
    if isinstance(postprocessing, dict) and postprocessing.get("mode") == "regions":
        raise PackageError("postprocessing.mode", '"regions" needs schemaVersion 2')
    preprocessing = document.get("preprocessing")
    if not isinstance(preprocessing, dict):
        return
    if str(preprocessing.get("orientation", "")).startswith("closest-"):
        raise PackageError("preprocessing.orientation", f'"{preprocessing["orientation"]}" needs schemaVersion 2')
    channels = preprocessing.get("normalization")
    for c, channel in enumerate(channels if isinstance(channels, list) else ()):
        field = f"preprocessing.normalization[{c}]"
        if isinstance(channel, list):
            raise PackageError(field, "a list of steps needs schemaVersion 2")
        if isinstance(channel, dict):
            if channel.get("kind") in VERSION_2_NORMALIZATION_KINDS:
                raise PackageError(f"{field}.kind", f'"{channel["kind"]}" needs schemaVersion 2')
            for key in VERSION_2_NORMALIZATION_KEYS:
                if key in channel:
                    raise PackageError(f"{field}.{key}", "needs schemaVersion 2")


def _parse_network(document: dict, folder: str, field: str, inputs: tuple, labels: tuple, dimensions: int,
                   slice_axis: int, weights_required: bool = True) -> ModelPackage:
    """What a contract says of one network (the package's, or its localizer's at ``field``), for its inputs and
    labels; ``weights_required`` as :func:`parse_contract` takes it."""
    model_format = _choice(document, "format", FORMATS, field)
    axes = tuple(axis for axis in range(3) if dimensions == 3 or axis != slice_axis)
    preprocessing = _parse_preprocessing(
        require(document, "preprocessing", dict, field), field_path(field, "preprocessing"), len(inputs)
    )
    inference = _parse_inference(require(document, "inference", dict, field), field_path(field, "inference"), axes)
    values = {label.value for label in labels}
    postprocessing = _parse_postprocessing(
        require(document, "postprocessing", dict, field), field_path(field, "postprocessing"), inference.activation,
        values,
    )
    expected = len(labels) + (1 if postprocessing.mode == "argmax" else 0)
    if inference.output_channels != expected:
        raise PackageError(
            field_path(field, "inference.outputChannels"),
            f"is {inference.output_channels}, but {len(labels)} labels in {postprocessing.mode} mode need {expected}",
        )
    torch_version = require(document, "torchVersion", str, field) if "torchVersion" in document else ""
    if torch_version and release(torch_version) is None:
        message = f"{torch_version!r} is not a PyTorch version such as 2.8.0"
        raise PackageError(field_path(field, "torchVersion"), message)
    if weights_required:
        weights_path = _weights_path(document, folder, field)
    else:
        weights_path = _path_inside(folder, require(document, "weights", str, field), field_path(field, "weights"))
    return ModelPackage(
        folder=os.path.realpath(folder),
        format=model_format,
        weights_path=weights_path,
        dimensions=dimensions,
        inputs=inputs,
        preprocessing=preprocessing,
        inference=inference,
        postprocessing=postprocessing,
        labels=labels,
        slice_axis=slice_axis,
        torch_version=torch_version,
        weights_mtime_ns=os.stat(weights_path).st_mtime_ns if weights_required else 0,
    )


def _localizer_labels(item: dict) -> tuple:
    """A localizer's labels: values 1, 2, ... one per output channel (but the background channel in argmax
    mode), so that its outputs decide labels as the main network's do."""
    inference, postprocessing = item.get("inference"), item.get("postprocessing")
    channels = inference.get("outputChannels") if isinstance(inference, dict) else None
    mode = postprocessing.get("mode") if isinstance(postprocessing, dict) else None
    count = channels - (mode == "argmax") if _is_integer(channels) else 1
    return tuple(Label(value, f"Localizer label {value}", "#ffffff") for value in range(1, max(1, count) + 1))


def _parse_localizer(item, folder: str, inputs: tuple, weights_required: bool) -> Localizer:
    field = "localizer"
    item = require_object(item, field)
    network = _parse_network(item, folder, field, inputs, _localizer_labels(item), 3, 2, weights_required)
    crop = network.inference.crop
    if crop is not None and crop.to == "localizer":
        raise PackageError(f"{field}.inference.crop.to", "a localizer crops to the foreground or not at all")
    largest = require(item, "largestComponent", bool, field) if "largestComponent" in item else False
    return Localizer(network, largest)


def _parse(document, folder: str, weights_required: bool = True) -> ModelPackage:
    document = require_object(document, "(document)")
    schema_version = require(document, "schemaVersion", int, "")
    if schema_version not in SCHEMA_VERSIONS:
        raise PackageError("schemaVersion", f"{schema_version} is not supported (expected {SCHEMA_VERSION} or older)")
    _check_version_fields(document, schema_version)
    dimensions = require(document, "dimensions", int, "")
    if dimensions not in (2, 3):
        raise PackageError("dimensions", "must be 3 (volumes) or 2 (slices)")
    slice_axis = require(document, "sliceAxis", int, "") if "sliceAxis" in document else 2
    if slice_axis not in (0, 1, 2):
        raise PackageError("sliceAxis", "must be 0 (x), 1 (y) or 2 (z)")
    if not require(document, "inputs", list, ""):
        raise PackageError("inputs", "must list at least one input channel")
    inputs = parse_list(document, "inputs", "", parse_input)
    if not require(document, "labels", list, ""):
        raise PackageError("labels", "must list at least one label")
    labels = parse_labels(document)
    package = _parse_network(document, folder, "", inputs, labels, dimensions, slice_axis, weights_required)
    localizer = (_parse_localizer(document["localizer"], folder, inputs, weights_required)
                 if "localizer" in document else None)
    crops_to_localizer = package.inference.crop is not None and package.inference.crop.to == "localizer"
    if crops_to_localizer and localizer is None:
        raise PackageError("inference.crop.to", "a crop to the localizer needs a localizer")
    if localizer is not None and not crops_to_localizer:
        raise PackageError("localizer", 'is used only with inference.crop {"to": "localizer"}')
    return dataclasses.replace(package, localizer=localizer)


def parse_contract(document: dict, folder: str, weights_required: bool = True) -> ModelPackage:
    """Validate a contract (decoded from JSON) whose weights lie in ``folder``; errors are ``PackageError``.

    ``weights_required=False`` checks everything but the weights files' presence: a training validates with the
    contract it will publish before its weights are written."""
    try:
        return _parse(document, folder, weights_required)
    except IndexValidationError as error:
        # Shared checks (inputs, labels, types) come from ModelRegistryLib with its error class.
        raise PackageError(error.field, str(error)[len(error.field) + 2 :]) from error


def load_package(folder: str) -> ModelPackage:
    """Read and validate ``folder/model.json``; a contract over ``MAX_CONTRACT_BYTES`` is refused unread."""
    path = os.path.join(folder, CONTRACT_NAME)
    try:
        status = os.stat(path)
        if status.st_size > MAX_CONTRACT_BYTES:
            raise PackageError("(document)", f"{status.st_size} bytes is over the {MAX_CONTRACT_BYTES}-byte limit")
        with open(path, "rb") as file:
            document = json.loads(file.read().decode("utf-8"))
    except OSError as error:
        raise PackageError("(document)", f"cannot read {path}: {error.strerror or error}") from error
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise PackageError("(document)", f"{path} is not valid JSON: {error}") from error
    package = parse_contract(document, folder)
    return ModelPackage(**{**package.__dict__, "contract_mtime_ns": status.st_mtime_ns})


def release(version: str) -> tuple | None:
    """The release numbers (major, minor, patch) of a PyTorch version, pre-release and local parts ignored.

    >>> release("2.13.0+cpu"), release("2.9.0a0+git5e8f0a1"), release("2.8"), release("nightly")
    ((2, 13, 0), (2, 9, 0), (2, 8, 0), None)
    """
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    return (int(match[1]), int(match[2]), int(match[3] or 0)) if match else None


def _read_member(path: str, wanted: Callable[[str], bool]) -> bytes:
    """The first member of zip archive ``path`` whose name below the root folder is ``wanted``; b"" if none."""
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if wanted(name.split("/", 1)[-1]):
                    return archive.read(name)
    except (zipfile.BadZipFile, OSError):
        pass
    return b""


def _is_program(member: str) -> bool:
    """``models/<name>.json``: a torch.export archive's serialized program, which records the writer's PyTorch."""
    folder, _, name = member.rpartition("/")
    return folder == "models" and name.endswith(".json")


def _export_torch_version(path: str) -> str:
    """The PyTorch release a ``torch.export`` archive says wrote it (in its program's JSON); "" if none."""
    try:
        recorded = json.loads(_read_member(path, _is_program) or b"{}").get("torch_version", "")
    except (ValueError, AttributeError):
        return ""
    return recorded if isinstance(recorded, str) and release(recorded) is not None else ""


def writer_torch_version(package: ModelPackage) -> str:
    """The PyTorch release that wrote the package's weights: a ``torch.export`` archive's own record, else
    ``torchVersion`` from ``model.json``; "" when neither says."""
    recorded = _export_torch_version(package.weights_path) if package.format == "torch.export" else ""
    return recorded or package.torch_version


def check_torch_version(package: ModelPackage, torch_version: str, max_torchscript_version: int | None = None) -> None:
    """Refuse, before loading anything, a package that PyTorch ``torch_version`` cannot load.

    A ``torch.export`` program needs the release that wrote it (major.minor) or a later one. A TorchScript file
    needs a PyTorch that reads its file format version (``max_torchscript_version``: the newest this PyTorch
    reads; None skips that check). ONNX models do not run in PyTorch. The error names the release needed.
    """
    writer = writer_torch_version(package)
    written, running = release(writer) if writer else None, release(torch_version)
    if running is None:  # a PyTorch build without a release number: nothing to compare
        return
    if package.format == "torch.export" and written is not None and running[:2] < written[:2]:
        what = f"it is a torch.export program written by PyTorch {writer}, which older releases cannot read"
    elif package.format == "torchscript" and max_torchscript_version is not None:
        recorded = _read_member(package.weights_path, lambda member: member == "version")
        file_version = int(recorded) if recorded.strip().isdigit() else 0
        if file_version <= max_torchscript_version:
            return
        what = (f"its TorchScript file format version {file_version} is newer than PyTorch {torch_version} reads"
                f" ({max_torchscript_version})" + (f"; it was written by PyTorch {writer}" if writer else ""))
    else:
        return
    needed = f"PyTorch {written[0]}.{written[1]} or later" if written is not None else "a newer PyTorch"
    hint = ""
    if sys.version_info < (3, 10) and (written is None or written[:2] >= (2, 9)):
        hint = " (PyTorch 2.9 and later need Python 3.10 or later: this is {}.{})".format(*sys.version_info[:2])
    raise PackageError(
        "torchVersion",
        f"this model needs {needed}, and this is PyTorch {torch_version}: {what}. Update PyTorch{hint},"
        f" or use a version of the model made for PyTorch {running[0]}.{running[1]}.",
    )


# Members of a torch.export archive (below its root folder) that are never unpickled: metadata read as
# text, JSON (the program and payload configs) and extra files read as strings.
_PT2_TEXT_MEMBERS = ("archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id")
_PT2_PAYLOAD_DIRECTORIES = {"data/weights/": "_weights_config.json", "data/constants/": "_constants_config.json"}
# Where torch.export.load unpickles members: sample inputs, and weights and constants not listed as raw bytes
# (PyTorch 2.8 and earlier pickle all of them into one member, data/weights/<model>.pt, with no config).
_PT2_PICKLED_DIRECTORIES = ("data/sample_inputs/", *_PT2_PAYLOAD_DIRECTORIES)


def _payloads(archive: zipfile.ZipFile, root: str) -> tuple:
    """(raw, pickled): members holding plain tensor bytes, and members the payload configs say are unpickled."""
    raw, pickled = set(), set()
    for directory, config_suffix in _PT2_PAYLOAD_DIRECTORIES.items():
        for name in archive.namelist():
            if not (name.startswith(root + directory) and name.endswith(config_suffix)):
                continue
            for entry in json.loads(archive.read(name))["config"].values():
                path_name = entry["path_name"]
                plain = not entry.get("use_pickle") and path_name.startswith(("weight_", "tensor_"))
                (raw if plain else pickled).add(root + directory + path_name)
    return raw, pickled


def _weights_only(archive: zipfile.ZipFile, name: str, member: str) -> None:
    import torch

    try:
        torch.load(io.BytesIO(archive.read(name)), weights_only=True)
    except Exception as error:  # the weights-only unpickler raises many kinds, all meaning "refused"
        raise PackageError("weights", f"{member!r} in the archive is not plain tensor data; refused") from error


def check_export_archive(path: str) -> None:
    """Refuse a ``.pt2`` file unless loading it with ``torch.export.load`` can run no code from it.

    ``torch.export.load`` unpickles some members with ``torch.load(weights_only=False)`` or ``pickle.loads``
    (pickled weights and constants, sample inputs, custom objects) and loads compiled AOTInductor
    libraries; a file crafted to use those paths runs code (the tests show it). So every member must be one
    that is never unpickled (metadata, JSON, plain tensor bytes listed in a payload config, extra text files)
    or a pickle (sample inputs; weights and constants pickled whole by PyTorch 2.8 and earlier) that
    PyTorch's weights-only unpickler accepts: that unpickler admits only tensor-rebuilding functions and
    plain containers, and the later full unpickling of the same bytes performs the same operations.
    Anything else (AOTInductor code, custom objects, members this check does not know) is refused.
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise PackageError("weights", f"is not a torch.export archive: {error}") from error
    with archive:
        names = archive.namelist()
        roots = {name.split("/", 1)[0] + "/" for name in names}
        if len(roots) != 1:
            raise PackageError("weights", "is not a torch.export archive (expected one root folder)")
        root = roots.pop()
        try:
            raw, pickled = _payloads(archive, root)
        except (ValueError, KeyError, TypeError, AttributeError, zipfile.BadZipFile) as error:
            raise PackageError("weights", f"has an unreadable payload configuration: {error}") from error
        for name in names:
            member = name[len(root) :]
            payload = member.startswith(_PT2_PICKLED_DIRECTORIES) and not member.endswith((".json", "/"))
            if name in pickled or (payload and name not in raw):
                _weights_only(archive, name, member)
            elif not (
                name.endswith("/")
                or name in raw
                or member in _PT2_TEXT_MEMBERS
                or member.endswith(".json")
                or member.startswith("extra/")
            ):
                raise PackageError("weights", f"{member!r} in the archive could run code; refused")


# What a weights file is, told from its first bytes or its zip members (below the archive's root folder).
FORMAT_NAMES = {"torchscript": "TorchScript", "torch.export": "a torch.export program", "onnx": "ONNX",
                "checkpoint": "a pickled checkpoint"}
# The first byte of a pickle of protocol 2 or later (PyTorch's legacy, non-zip torch.save files start so).
_PICKLE_PROTOCOL = b"\x80"


def weights_kind(path: str) -> str:
    """What a weights file is: ``torchscript`` (``torch.jit.save``), ``torch.export`` (``torch.export.save``),
    ``checkpoint`` (``torch.save``: a pickle of tensors or Python objects, zipped or legacy), or "" when
    neither (an ONNX protobuf, another file).

    >>> import tempfile, torch
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     torch.save(torch.nn.Conv3d(1, 2, 1).state_dict(), folder + "/model.pt")
    ...     weights_kind(folder + "/model.pt")
    'checkpoint'
    """
    try:
        with zipfile.ZipFile(path) as archive:
            members = {name.split("/", 1)[-1] for name in archive.namelist()}
    except (zipfile.BadZipFile, OSError):
        try:
            with open(path, "rb") as file:
                return "checkpoint" if file.read(1) == _PICKLE_PROTOCOL else ""
        except OSError:
            return ""
    if "archive_format" in members or any(_is_program(member) for member in members):
        return "torch.export"
    if "constants.pkl" in members or any(member.startswith("code/") for member in members):
        return "torchscript"
    return "checkpoint" if "data.pkl" in members else ""


def _checkpoint_contents(path: str) -> str:
    """What a pickled checkpoint holds, read with PyTorch's weights-only unpickler (which runs no code)."""
    import torch

    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the weights-only unpickler refuses anything needing Python classes
        needed = re.search(r"GLOBAL ([\w.]+)", str(error))
        what = f" ({needed[1]})" if needed else ""
        return f"Python objects whose classes are needed to load it{what}, such as a whole module saved with torch.save"
    if isinstance(content, dict):
        tensors = sum(isinstance(value, torch.Tensor) for value in content.values())
        keys = ", ".join(repr(key) for key in list(content)[:4]) + (", ..." if len(content) > 4 else "")
        return f"a dictionary of {len(content)} entries ({keys}), {tensors} of them tensors: weights, no network"
    return f"a {type(content).__name__}, not a network"


def check_weights_format(package: ModelPackage) -> None:
    """Refuse, before loading, weights of another kind than ``format`` says, naming what they are.

    A pickled checkpoint (``torch.save`` of a state dict or a module) holds no program: DeepSegment never
    unpickles one (unpickling runs code), so it says so and how to make a package instead of letting the
    loader call the file corrupted.
    """
    kind = weights_kind(package.weights_path)
    declared = package.format
    if not kind or kind == declared:
        return
    expected = FORMAT_NAMES[declared]
    if kind == "checkpoint":
        raise PackageError(
            "weights",
            f"this is a pickled checkpoint, not {expected}: {_checkpoint_contents(package.weights_path)}."
            " DeepSegment runs exported networks and never unpickles files (unpickling can run code): export the"
            " network with torch.export (DeepSegmentLib.programs.export_network, then write_package), or install"
            " the model with a runtime that builds the network from its own code (a MONAI bundle's models/model.pt:"
            " runtime monai-bundle; nnU-Net checkpoints: nnunet-v2)",
        )
    raise PackageError(
        "weights", f"this is {FORMAT_NAMES[kind]}, not {expected}: set \"format\": \"{kind}\" in {CONTRACT_NAME}"
    )


class OnnxNetwork:
    """An onnxruntime session called like a PyTorch network: a tensor in, the first output as a tensor."""

    def __init__(self, session, device: str) -> None:
        self.session = session
        self.device = device
        self.input_name = session.get_inputs()[0].name
        self.input_float16 = session.get_inputs()[0].type == "tensor(float16)"

    def __call__(self, tensor):
        import torch

        array = tensor.detach().to("cpu", torch.float16 if self.input_float16 else torch.float32).numpy()
        output = self.session.run(None, {self.input_name: array})[0]
        return torch.from_numpy(output).to(tensor.device)


def _load_onnx(path: str, device: str) -> OnnxNetwork:
    try:
        import onnxruntime
    except ImportError as error:
        raise PackageError(
            "format", "ONNX models need the onnxruntime package (pip install onnxruntime, or onnxruntime-gpu for CUDA)"
        ) from error
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise PackageError("format", "this onnxruntime has no CUDA support: install onnxruntime-gpu or use the CPU")
        index = int(device.partition(":")[2] or 0)
        providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    elif device != "cpu":
        raise PackageError("format", f"ONNX models run on the CPU or CUDA, not on {device!r}")
    try:
        session = onnxruntime.InferenceSession(path, providers=providers)
    except Exception as error:  # onnxruntime raises its own error types for every kind of bad model
        raise PackageError("weights", f"onnxruntime cannot load {os.path.basename(path)}: {error}") from error
    return OnnxNetwork(session, device)


def load_network(package: ModelPackage, device: str) -> Callable:
    """The package's network on ``device`` (``cpu``, ``cuda``, ``cuda:N``, ``mps``), ready for inference.

    No loader here runs code from the weights file, and none unpickles Python objects:

    - TorchScript (``torch.jit.load``): the program is TorchScript source compiled and interpreted by the
      TorchScript runtime, which can only call registered TorchScript operators; its constants and
      tensors are read by TorchScript's own unpickler, which knows tensors, containers and TorchScript
      classes and no Python globals.
    - torch.export (``torch.export.load``): the program is a serialized ATen operator graph (JSON) with
      tensor payloads; ``torch.export.load`` would unpickle some members with the full unpickler, so
      :func:`check_export_archive` first refuses any archive where that could run code.
    - ONNX (onnxruntime): a protobuf graph of ONNX operators; no custom operator library is registered.

    ``torch.load(weights_only=False)`` and ``pickle`` are never used. Weights of another kind than the
    declared format (a pickled checkpoint, a TorchScript file declared ``torch.export``...) raise ``PackageError``
    naming what they are (:func:`check_weights_format`), a file that is not a valid archive of its format
    raises one too, and so does a package this PyTorch is too old for (:func:`check_torch_version`), before
    anything is loaded. A torch.export program comes as a ``programs.ExportedNetwork``: run on batches its
    batch dimension does not accept (a program exported with a fixed batch), and refusing other shapes with
    a message saying which it accepts.
    """
    check_weights_format(package)
    if package.format == "onnx":
        return _load_onnx(package.weights_path, device)
    import torch

    max_torchscript_version = getattr(torch._C, "_get_max_operator_version", lambda: None)()
    check_torch_version(package, torch.__version__, max_torchscript_version)
    try:
        if package.format == "torchscript":
            network = torch.jit.load(package.weights_path, map_location=device)
            return network.eval()
        check_export_archive(package.weights_path)
        from .programs import load_exported

        return load_exported(package.weights_path, device)
    except PackageError:
        raise
    except (RuntimeError, ValueError, AssertionError, KeyError, zipfile.BadZipFile, OSError) as error:
        writer = writer_torch_version(package)
        newer = writer and release(writer) > release(torch.__version__)
        hint = f" (written by PyTorch {writer}, newer than this PyTorch {torch.__version__})" if newer else ""
        raise PackageError(
            "weights", f"cannot load {package.weights_path} as {package.format}{hint}: {error}"
        ) from error


def write_package(folder: str, network_or_program, contract: dict, *, static_batch: bool = False) -> None:
    """Write a model package: the weights named in ``contract`` and ``model.json``, after validating both.

    ``network_or_program``, by the contract's ``format``:

    - ``torch.export`` (what DeepSegment's own writers write): an ``ExportedProgram``, or an eager
      ``torch.nn.Module`` exported here from the module itself (``programs.export_network``: a dynamic batch,
      window sizes in any multiple the network accepts) for inputs of the contract's patch size and channels.
      A program whose batch dimension is fixed is refused unless ``static_batch`` (the engine then pads the
      last windows of a volume to its batch);
    - ``torchscript`` (read for bundles and older packages): a TorchScript module, or a module scripted here;
    - ``bytes`` of any format, written as they are.

    ``torchVersion`` is set to the PyTorch release that saved the weights: this one, or for ``bytes`` of a
    ``torch.export`` archive the release the archive names (other ``bytes`` keep the contract's).
    """
    os.makedirs(folder, exist_ok=True)
    path = _path_inside(folder, require(require_object(contract, "(document)"), "weights", str, ""))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        writer = _save_weights(path, network_or_program, contract, static_batch)
        if writer:
            contract = {**contract, "torchVersion": writer}
        parse_contract(contract, folder)
    except Exception:
        if os.path.isfile(path):
            os.remove(path)
        raise
    partial = os.path.join(folder, f".{CONTRACT_NAME}.partial")
    with open(partial, "w", encoding="utf-8") as file:
        json.dump(contract, file, indent=2)
    os.replace(partial, os.path.join(folder, CONTRACT_NAME))


def archive_package(folder: str, archive: str) -> dict:
    """Zip the files of the package in ``folder`` (flat, sorted) into ``archive``, written atomically, and return
    the registry index's file entry for it: ``url`` (the archive's name, relative to an index beside it),
    ``sha256`` and ``size``.

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> with open(os.path.join(folder, "model.json"), "w") as file:
    ...     _ = file.write("{}")
    >>> entry = archive_package(folder, os.path.join(folder, "model-1.0.0.zip"))
    >>> entry["url"], entry["size"] > 0, len(entry["sha256"])
    ('model-1.0.0.zip', True, 64)
    """
    from ModelRegistryLib.download import file_sha256
    from ModelRegistryLib.files import atomic_target

    names = sorted(name for name in os.listdir(folder) if os.path.isfile(os.path.join(folder, name)))
    with atomic_target(archive, suffix=".zip") as temporary, zipfile.ZipFile(temporary, "w") as zipped:
        for name in names:
            if os.path.join(folder, name) != os.path.abspath(archive):
                zipped.write(os.path.join(folder, name), name)
    return {"url": os.path.basename(archive), "sha256": file_sha256(archive), "size": os.path.getsize(archive)}


def _example_shape(contract: dict) -> tuple:
    """The input a network is exported for: a batch (at least 2), the contract's channels and patch size."""
    try:
        inference = contract["inference"]
        patch = [int(n) for n in inference["patchSize"]]
        return (max(2, int(inference.get("batchSize", 2))), len(contract["inputs"]), *reversed(patch))
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise PackageError("inference.patchSize", "and inputs are needed to export the network") from error


def _save_weights(path: str, network_or_program, contract: dict, static_batch: bool) -> str:
    """Write the weights; returns the PyTorch release that made them ("" when unknown)."""
    model_format = contract.get("format")
    if isinstance(network_or_program, bytes):
        with open(path, "wb") as file:
            file.write(network_or_program)
        return _export_torch_version(path) if model_format == "torch.export" else ""
    import torch

    if model_format == "torchscript":
        scripted = network_or_program
        if not isinstance(scripted, torch.jit.ScriptModule):
            scripted = torch.jit.script(network_or_program)
        torch.jit.save(scripted, path)
    elif model_format == "torch.export":
        from .programs import export_network, input_extents

        program = network_or_program
        if isinstance(program, torch.nn.Module) and not isinstance(program, torch.jit.ScriptModule):
            program = export_network(program, _example_shape(contract))
        if not isinstance(program, torch.export.ExportedProgram):
            raise PackageError("format", "torch.export packages take an ExportedProgram or an eager torch.nn.Module")
        batch = input_extents(program)[0]
        if batch.fixed and not static_batch:
            raise PackageError(
                "weights",
                f"the torch.export program's batch dimension is fixed at {batch.low}: export it with a dynamic batch"
                " (dynamic_shapes={0: torch.export.Dim(\"batch\")} for the input, or"
                " DeepSegmentLib.programs.export_network), or write it with static_batch=True (the engine then"
                f" pads the last windows of a volume to {batch.low})",
            )
        torch.export.save(program, path)
    else:
        raise PackageError("format", "write_package writes torchscript and torch.export networks, or raw bytes")
    return torch.__version__.split("+")[0]

"""Accuracy of a segmentation against a reference, per label, in physical units.

For each label: Dice, the 95th-percentile Hausdorff distance (HD95), the mean symmetric surface distance
(MSD), the normalized surface Dice (NSD) at a tolerance in mm, and the volumes (mL) with their difference.

**Definitions** (those of MONAI 1.x, ``monai.metrics``; the tests check agreement within 1e-3):

- *Dice* = 2·|R∩P| / (|R| + |P|) over voxels (``compute_dice``).
- *Surface*: the voxels of a mask that have at least one of their 6 face neighbours outside it, the space
  outside the image counting as outside (``scipy.ndimage.binary_erosion`` with its default cross, XOR the mask:
  MONAI's ``get_mask_edges`` without subvoxels).
- *Surface distances* from P to R: for every surface voxel of P, the Euclidean distance in mm from its centre
  to the nearest surface-voxel centre of R, and likewise from R to P (``get_surface_distance``).
- *HD95* = the larger of the two directed 95th percentiles (linear interpolation), in mm
  (``compute_hausdorff_distance(percentile=95)``).
- *MSD* = the mean of both directions' distances pooled together, in mm
  (``compute_average_surface_distance(symmetric=True)``).
- *NSD* = the fraction of both surfaces' voxels that lie within the tolerance of the other surface
  (``compute_surface_dice`` without subvoxels).
- *Volumes*: voxel count × voxel volume; the difference is prediction − reference (mL and % of the reference).

**Empty masks** follow MONAI, and every result says which side was empty (:attr:`LabelMetrics.status`), as
Metrics Reloaded asks, so that an average never silently mixes them in:

============================  ======  =============  ======  ====================
case                          Dice    HD95 and MSD   NSD     volume difference %
============================  ======  =============  ======  ====================
both empty                    NaN     NaN            NaN     NaN (0 mL)
reference empty               0       +inf           0       NaN
prediction empty              0       +inf           0       −100
============================  ======  =============  ======  ====================

Dice is 0 when exactly one side is empty (MONAI's ``ignore_empty=False``: the definition holds, a false
positive on an empty reference is an error) and NaN when both are (MONAI's default ``ignore_empty=True``:
nothing to measure, a true negative).

**Grids.** Distances use the voxel spacing; the axes' directions do not change them as long as the axes are
orthogonal, so oblique grids are measured exactly, and sheared grids are refused. Reference and prediction
must lie on one grid; when they do not, :func:`align_to_reference` puts the prediction on the reference's grid:
exactly when both share one voxel lattice (a Slicer segmentation cropped to its segments: then the union of
both grids is used), else by nearest-neighbour resampling, with a note saying so.

**Speed.** Per label, both masks are cropped to the bounding box of their union (the boxes of every label
come from one pass over each label map), surfaces are found with six shifted comparisons, voxels on both
surfaces get distance 0 at once, and only the others are looked up, once per direction, in a k-d tree of the
other surface (faster here than a distance transform of the box). All four measures come from these
distances: MONAI computes surfaces and distances again for each measure.

Example::

    >>> reference = np.zeros((20, 20, 20), np.uint8)
    >>> reference[5:15, 5:15, 5:15] = 1
    >>> prediction = np.roll(reference, 1, axis=2)  # one voxel along x
    >>> [result] = label_map_metrics(reference, prediction, spacing=(0.5, 1.0, 2.0), labels=[1], tolerance_mm=0.4)
    >>> round(result.dice, 3), result.hd95_mm, round(result.msd_mm, 4), round(result.nsd, 4), result.status
    (0.9, 0.5, 0.168, 0.6639, 'both present')
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from ModelRegistryLib.index import Label
from scipy import ndimage
from scipy.spatial import cKDTree
from TrainingDataExportLib.segmentations import grid_difference, lattice_offset

DEFAULT_TOLERANCE_MM = 2.0
BOTH_PRESENT = "both present"
BOTH_EMPTY = "both empty"
REFERENCE_EMPTY = "reference empty"
PREDICTION_EMPTY = "prediction empty"
STATUSES = (BOTH_PRESENT, BOTH_EMPTY, REFERENCE_EMPTY, PREDICTION_EMPTY)
# Names of the per-label measures, in report order, with their units.
MEASURES = ("dice", "hd95_mm", "msd_mm", "nsd", "reference_ml", "prediction_ml", "volume_difference_ml",
            "volume_difference_percent")
DEFAULT_COLOR = "#808080"
# Voxel axes whose directions are further than this from orthogonal make a sheared grid.
_ORTHOGONALITY_TOLERANCE = 1e-4


class EvaluationError(ValueError):
    """A reference and prediction that cannot be compared; the message says why, in one line."""


def _float_or_nan(value) -> float:
    return float("nan") if value is None else float(value)


@dataclass(frozen=True)
class LabelMetrics:
    """The measures of one label of one case (distances in mm, volumes in mL; see the module for the
    definitions and the values when a side is empty)."""

    value: int
    name: str
    dice: float
    hd95_mm: float
    msd_mm: float
    nsd: float
    reference_ml: float
    prediction_ml: float

    @property
    def volume_difference_ml(self) -> float:
        return self.prediction_ml - self.reference_ml

    @property
    def volume_difference_percent(self) -> float:
        return 100.0 * self.volume_difference_ml / self.reference_ml if self.reference_ml > 0 else math.nan

    @property
    def status(self) -> str:
        """``both present``, ``both empty``, ``reference empty`` or ``prediction empty``."""
        if self.reference_ml > 0:
            return BOTH_PRESENT if self.prediction_ml > 0 else PREDICTION_EMPTY
        return REFERENCE_EMPTY if self.prediction_ml > 0 else BOTH_EMPTY

    def measure(self, name: str) -> float:
        """One of :data:`MEASURES` by name."""
        if name not in MEASURES:
            raise KeyError(f"unknown measure {name!r}; known: {', '.join(MEASURES)}")
        return float(getattr(self, name))

    def to_json(self) -> dict:
        """A JSON-able dict: NaN and infinity, which JSON lacks, become null (``status`` tells which it was)."""
        data = {"value": self.value, "name": self.name, "status": self.status}
        for name in MEASURES:
            number = self.measure(name)
            data[name] = number if math.isfinite(number) else None
        return data

    @classmethod
    def from_json(cls, data: dict) -> LabelMetrics:
        """The inverse of :meth:`to_json` (null distances of a one-sided case come back as infinity)."""
        one_sided = data["status"] in (REFERENCE_EMPTY, PREDICTION_EMPTY)
        missing_distance = math.inf if one_sided else math.nan
        return cls(
            value=int(data["value"]),
            name=str(data["name"]),
            dice=_float_or_nan(data["dice"]),
            hd95_mm=missing_distance if data["hd95_mm"] is None else float(data["hd95_mm"]),
            msd_mm=missing_distance if data["msd_mm"] is None else float(data["msd_mm"]),
            nsd=_float_or_nan(data["nsd"]),
            reference_ml=float(data["reference_ml"]),
            prediction_ml=float(data["prediction_ml"]),
        )


def as_labels(labels: Iterable) -> list:
    """Labels to evaluate as ``ModelRegistryLib.index.Label`` objects: given as such, or as label values.

    >>> [(label.value, label.name) for label in as_labels([2, Label(1, "Liver", "#dd8259")])]
    [(2, 'Label 2'), (1, 'Liver')]
    """
    result = []
    for label in labels:
        if isinstance(label, Label):
            result.append(label)
        else:
            value = int(label)
            result.append(Label(value, f"Label {value}", DEFAULT_COLOR))
    values = [label.value for label in result]
    if len(set(values)) != len(values):
        raise EvaluationError(f"label values repeat in {values}")
    if any(value <= 0 for value in values):
        raise EvaluationError(f"label values must be positive (0 is the background): {values}")
    return result


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face neighbour outside it (outside the array counts as outside)."""
    padded = np.pad(mask, 1)
    inner = padded[1:-1, 1:-1, 1:-1].copy()
    for axis in range(3):
        for start in (0, 2):
            index = [slice(1, -1)] * 3
            index[axis] = slice(start, start + mask.shape[axis])
            inner &= padded[tuple(index)]
    return mask & ~inner


def _directed_distances(source: np.ndarray, target: np.ndarray, shared: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Distance (mm) from each ``source`` surface voxel to the nearest ``target`` surface voxel; voxels on
    both surfaces (``shared``) are 0 without a search."""
    searched = np.argwhere(source & ~shared) * spacing
    zeros = np.zeros(int(np.count_nonzero(shared)))
    if not len(searched):
        return zeros
    tree = cKDTree(np.argwhere(target) * spacing, leafsize=32)
    return np.concatenate([zeros, tree.query(searched)[0]])


def surface_distances(reference: np.ndarray, prediction: np.ndarray, spacing_kji: Sequence[float]) -> tuple:
    """``(prediction → reference, reference → prediction)`` surface distances in mm of two boolean masks
    (K, J, I) on one grid; an empty side gives no distances from it and infinite ones to it (MONAI's)."""
    spacing = np.asarray(spacing_kji, float)
    reference_surface = _surface(reference)
    prediction_surface = _surface(prediction)
    reference_any, prediction_any = bool(reference_surface.any()), bool(prediction_surface.any())
    if not (reference_any and prediction_any):
        return (np.full(int(np.count_nonzero(prediction_surface)), np.inf),
                np.full(int(np.count_nonzero(reference_surface)), np.inf))
    shared = reference_surface & prediction_surface
    return (_directed_distances(prediction_surface, reference_surface, shared, spacing),
            _directed_distances(reference_surface, prediction_surface, shared, spacing))


def _metrics_in_box(reference: np.ndarray, prediction: np.ndarray, spacing_kji: np.ndarray, tolerance_mm: float,
                    label: Label) -> LabelMetrics:
    """Measures of two masks cropped to (at least) the box holding both."""
    voxel_ml = float(np.prod(spacing_kji)) / 1000.0
    reference_count = int(np.count_nonzero(reference))
    prediction_count = int(np.count_nonzero(prediction))
    total = reference_count + prediction_count
    if total == 0:
        return LabelMetrics(label.value, label.name, math.nan, math.nan, math.nan, math.nan, 0.0, 0.0)
    dice = 2.0 * int(np.count_nonzero(reference & prediction)) / total
    to_reference, to_prediction = surface_distances(reference, prediction, spacing_kji)
    pooled = np.concatenate([to_reference, to_prediction])
    if reference_count and prediction_count:
        hd95 = max(float(np.percentile(to_reference, 95)), float(np.percentile(to_prediction, 95)))
        msd = float(pooled.mean())
    else:
        hd95 = msd = math.inf
    nsd = float(np.count_nonzero(pooled <= tolerance_mm)) / len(pooled)
    return LabelMetrics(label.value, label.name, dice, hd95, msd, nsd, reference_count * voxel_ml,
                        prediction_count * voxel_ml)


def check_tolerance(tolerance_mm: float) -> float:
    """``tolerance_mm`` as a float, or an :class:`EvaluationError` saying why it cannot be one."""
    tolerance = float(tolerance_mm)
    if not math.isfinite(tolerance) or tolerance < 0:
        raise EvaluationError(f"the surface tolerance must be a finite number of mm, 0 or more, not {tolerance_mm}")
    return tolerance


def _check_spacing(spacing: Sequence[float]) -> np.ndarray:
    values = np.asarray(spacing, float)
    if values.shape != (3,) or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise EvaluationError(f"spacing must be three positive numbers (x, y, z in mm), not {tuple(spacing)}")
    return values[::-1]  # arrays are (K, J, I)


def _union_box(first, second) -> tuple | None:
    if first is None:
        return second
    if second is None:
        return first
    return tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(first, second))


def _label_boxes(array: np.ndarray, largest: int) -> list:
    if array.dtype.kind == "b":
        array = array.view(np.uint8)
    elif array.dtype.kind not in "iu":
        raise EvaluationError(f"a label map holds integers, not {array.dtype}")
    return ndimage.find_objects(array, max_label=largest)


def label_map_metrics(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float], labels: Iterable,
                      tolerance_mm: float = DEFAULT_TOLERANCE_MM) -> list:
    """:class:`LabelMetrics` for each label of two integer label maps (K, J, I) on one grid.

    Args:
        reference: the reference label map (NumPy array in SimpleITK's K, J, I order).
        prediction: the predicted label map, same shape.
        spacing: voxel size in mm along x, y, z (SimpleITK's order: I, J, K).
        labels: label values, or ``ModelRegistryLib.index.Label`` objects (for names), to evaluate.
        tolerance_mm: the normalized surface Dice's tolerance.
    """
    reference, prediction = np.asarray(reference), np.asarray(prediction)
    if reference.ndim != 3 or reference.shape != prediction.shape:
        raise EvaluationError(f"label maps must be 3D of one shape, not {reference.shape} and {prediction.shape}")
    spacing_kji = _check_spacing(spacing)
    tolerance = check_tolerance(tolerance_mm)
    labels = as_labels(labels)
    largest = max((label.value for label in labels), default=0)
    reference_boxes = _label_boxes(reference, largest)
    prediction_boxes = _label_boxes(prediction, largest)
    results = []
    for label in labels:
        box = _union_box(reference_boxes[label.value - 1], prediction_boxes[label.value - 1])
        if box is None:
            results.append(LabelMetrics(label.value, label.name, math.nan, math.nan, math.nan, math.nan, 0.0, 0.0))
            continue
        results.append(_metrics_in_box(reference[box] == label.value, prediction[box] == label.value, spacing_kji,
                                       tolerance, label))
    return results


def mask_metrics(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float],
                 tolerance_mm: float = DEFAULT_TOLERANCE_MM, label: Label | int = 1) -> LabelMetrics:
    """:class:`LabelMetrics` of two boolean masks (K, J, I) on one grid (e.g. two segments of Slicer nodes).

    ``spacing`` is x, y, z in mm; ``label`` names the result.

    >>> mask = np.zeros((9, 9, 9), bool)
    >>> mask[2:7, 2:7, 2:7] = True
    >>> result = mask_metrics(mask, mask, (1.0, 1.0, 3.0))
    >>> result.dice, result.hd95_mm, result.nsd, result.reference_ml
    (1.0, 0.0, 1.0, 0.375)
    """
    reference, prediction = np.asarray(reference, bool), np.asarray(prediction, bool)
    if reference.ndim != 3 or reference.shape != prediction.shape:
        raise EvaluationError(f"masks must be 3D of one shape, not {reference.shape} and {prediction.shape}")
    [label] = as_labels([label])
    union = reference | prediction
    box = ndimage.find_objects(union.view(np.uint8))
    if not box:
        return LabelMetrics(label.value, label.name, math.nan, math.nan, math.nan, math.nan, 0.0, 0.0)
    return _metrics_in_box(reference[box[0]], prediction[box[0]], _check_spacing(spacing),
                           check_tolerance(tolerance_mm), label)


# --- images on grids ---------------------------------------------------------------------------------------


def _direction(image: sitk.Image) -> np.ndarray:
    return np.array(image.GetDirection(), float).reshape(3, 3)


def _check_label_image(image: sitk.Image, role: str) -> None:
    if image.GetDimension() != 3:
        raise EvaluationError(f"the {role} is {image.GetDimension()}D; 3D label maps are compared")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise EvaluationError(f"the {role} has {image.GetNumberOfComponentsPerPixel()} values per voxel, not one label")
    direction = _direction(image)
    if not np.allclose(direction.T @ direction, np.eye(3), atol=_ORTHOGONALITY_TOLERANCE):
        raise EvaluationError(f"the {role}'s voxel axes are not orthogonal (a sheared grid): distances in mm need "
                              "orthogonal axes; resample it first")


def _placed(image: sitk.Image, offset: Sequence[int], grid: sitk.Image) -> sitk.Image:
    """``image`` put into zeros on ``grid``, its first voxel at index ``offset`` (I, J, K) of the grid."""
    array = sitk.GetArrayViewFromImage(image)
    result = np.zeros(tuple(grid.GetSize())[::-1], array.dtype)
    result[tuple(slice(o, o + n) for o, n in zip(offset[::-1], array.shape))] = array
    placed = sitk.GetImageFromArray(result)
    placed.CopyInformation(grid)
    return placed


def _labelled_voxels_outside(prediction: sitk.Image, reference: sitk.Image) -> int:
    """How many labelled voxels of ``prediction`` lie outside ``reference``'s grid (lost by resampling onto it)."""
    ones = sitk.Image(reference.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(reference)
    inside = sitk.Resample(ones, prediction, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    labelled = sitk.GetArrayViewFromImage(prediction) > 0
    return int(np.count_nonzero(labelled & (sitk.GetArrayViewFromImage(inside) == 0)))


def align_to_reference(reference: sitk.Image, prediction: sitk.Image, resample: bool = True) -> tuple:
    """``(reference, prediction, notes)``: both label-map images on one grid, and how they were put there.

    The same grid is used as it is; grids on one voxel lattice (same spacing and axes, origins whole voxels
    apart) are both placed, exactly, on the union of their boxes; any other prediction grid is resampled
    onto the reference's with nearest-neighbour interpolation when ``resample`` (else refused). Images must
    be 3D, one label per voxel, with orthogonal axes.

    >>> reference = sitk.Image([8, 8, 8], sitk.sitkUInt8)
    >>> prediction = sitk.Image([4, 4, 4], sitk.sitkUInt8)
    >>> prediction.SetOrigin((6.0, 0.0, 0.0))  # 6 voxels along x: one lattice
    >>> aligned_reference, aligned_prediction, notes = align_to_reference(reference, prediction)
    >>> aligned_reference.GetSize(), aligned_prediction.GetSize(), aligned_prediction.GetOrigin()
    ((10, 8, 8), (10, 8, 8), (0.0, 0.0, 0.0))
    >>> notes
    ['the grids differ but share one voxel lattice: compared exactly on their union']
    """
    _check_label_image(reference, "reference")
    _check_label_image(prediction, "prediction")
    offset = lattice_offset(prediction, reference)
    if offset is not None:
        if not any(offset) and prediction.GetSize() == reference.GetSize():
            same = sitk.Image(prediction)
            same.CopyInformation(reference)  # the reference's numbers replace a file format's round-off
            return reference, same, []
        low = np.minimum(0, offset)
        high = np.maximum(reference.GetSize(), np.array(offset) + prediction.GetSize())
        union = sitk.Image([int(n) for n in high - low], sitk.sitkUInt8)
        union.SetSpacing(reference.GetSpacing())
        union.SetDirection(reference.GetDirection())
        union.SetOrigin(reference.TransformIndexToPhysicalPoint([int(n) for n in low]))
        return (_placed(reference, -low, union), _placed(prediction, np.array(offset) - low, union),
                ["the grids differ but share one voxel lattice: compared exactly on their union"])
    difference = grid_difference(prediction, reference)
    if not resample:
        raise EvaluationError(f"the prediction's grid differs from the reference's ({difference}); "
                              "allow resampling to compare them")
    notes = [f"prediction resampled onto the reference grid (nearest neighbour): {difference}"]
    outside = _labelled_voxels_outside(prediction, reference)
    if outside:
        notes.append(f"{outside} labelled prediction voxels lie outside the reference's grid: they are not counted")
    resampled = sitk.Resample(prediction, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                              prediction.GetPixelID())
    return reference, resampled, notes


def image_metrics(reference: sitk.Image, prediction: sitk.Image, labels: Iterable,
                  tolerance_mm: float = DEFAULT_TOLERANCE_MM, resample: bool = True) -> tuple:
    """``([LabelMetrics], notes)`` of two label-map images, after :func:`align_to_reference`.

    >>> reference = sitk.Image([10, 10, 10], sitk.sitkUInt8)
    >>> reference[2:6, 2:6, 2:6] = 1
    >>> reference.SetSpacing((0.8, 0.8, 2.5))
    >>> reference.SetDirection((0, -1, 0, 1, 0, 0, 0, 0, 1))  # turned 90 degrees about z
    >>> results, notes = image_metrics(reference, reference, [1])
    >>> results[0].dice, round(results[0].reference_ml, 6), notes
    (1.0, 0.1024, [])
    """
    reference, prediction, notes = align_to_reference(reference, prediction, resample)
    return label_map_metrics(sitk.GetArrayViewFromImage(reference), sitk.GetArrayViewFromImage(prediction),
                             reference.GetSpacing(), labels, tolerance_mm), notes

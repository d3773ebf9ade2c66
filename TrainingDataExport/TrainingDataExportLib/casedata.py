"""One case made ready to write: its images and label map read (checked), brought onto one grid, resampled to a
target spacing, cropped, renumbered, and summarised for the dataset card.

Geometry: the exported image and label map always share one grid. On the native grid a Slicer segmentation
saved on a part of its image's grid is moved onto it exactly; other channels are resampled onto the first
one's grid when they differ. With a target ``spacing`` the output grid covers the same field of view (first
and last voxel edges kept, axes unchanged), with ``round(extent / spacing)`` voxels per axis; images are
interpolated linearly or with B-splines, labels with nearest neighbour. Resampled integer images are rounded
back to their type. A crop keeps the labelled region (of every frame) plus a margin in mm.

Example::

    >>> image = sitk.Image([10, 10, 4], sitk.sitkInt16)
    >>> image.SetSpacing((0.5, 0.5, 2.0))
    >>> grid = target_grid(image, (1.0, 1.0, 1.0))
    >>> grid["size"], [float(value) for value in grid["origin"]]
    ([5, 5, 8], [0.25, 0.25, -0.5])
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from .imagefiles import read_image

from .card import CaseSummary, ChannelIntensity, channel_intensity
from .caselist import Case
from .formats import CaseData
from .preannotation import pre_annotation_changes
from .segmentations import label_counts, label_on_grid, read_label_map
from .settings import ExportSettings

INTERPOLATIONS = {"linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline}


@dataclass(frozen=True)
class CaseJob:
    """A case to export: its inputs' SHA-256, its fingerprint (inputs and settings), subset and validation fold."""

    case: Case
    inputs: dict  # path -> sha256
    fingerprint: str
    subset: str
    fold: int | None


def geometry(image) -> dict:
    """The grid of ``image`` as JSON data."""
    return {
        "spacing": [float(v) for v in image.GetSpacing()],
        "origin": [float(v) for v in image.GetOrigin()],
        "direction": [float(v) for v in image.GetDirection()],
        "size": [int(v) for v in image.GetSize()],
    }


def _frames(image: sitk.Image) -> list:
    """The 3D frames of an image: itself, or each time point of a 4D sequence."""
    if image.GetDimension() != 4:
        return [image]
    size = list(image.GetSize())
    return [sitk.Extract(image, [*size[:3], 0], [0, 0, 0, t]) for t in range(size[3])]


def _renumbered(label: sitk.Image, label_values: Mapping) -> sitk.Image:
    array = sitk.GetArrayViewFromImage(label)
    table = np.arange(max(int(array.max(initial=0)), *label_values) + 1, dtype=array.dtype)
    for old, new in label_values.items():
        table[old] = new
    result = sitk.GetImageFromArray(table[array], isVector=False)
    result.CopyInformation(label)
    return result


def target_grid(image: sitk.Image, spacing: tuple) -> dict:
    """The grid of ``spacing`` covering ``image``'s field of view (same first and last voxel edges, same axes)."""
    old_spacing = np.array(image.GetSpacing(), float)
    new_spacing = np.array(spacing, float)
    size = [max(1, round(n * s / t)) for n, s, t in zip(image.GetSize(), old_spacing, new_spacing)]
    direction = np.array(image.GetDirection(), float).reshape(3, 3)
    origin = np.array(image.GetOrigin(), float) + direction @ ((new_spacing - old_spacing) / 2)
    return {"size": size, "spacing": tuple(new_spacing), "origin": tuple(origin), "direction": image.GetDirection()}


def _resampled(image: sitk.Image, grid: dict, interpolator: int) -> sitk.Image:
    pixel = image.GetPixelID()
    floating = pixel in (sitk.sitkFloat32, sitk.sitkFloat64)
    output_type = pixel if interpolator == sitk.sitkNearestNeighbor or floating else sitk.sitkFloat32
    default = float(np.min(sitk.GetArrayViewFromImage(image)))
    result = sitk.Resample(
        image,
        grid["size"],
        sitk.Transform(),
        interpolator,
        grid["origin"],
        grid["spacing"],
        grid["direction"],
        default,
        output_type,
    )
    if output_type == pixel:
        return result
    # Interpolated integer images are rounded back to their type (a float copy would double the files).
    array = sitk.GetArrayViewFromImage(result)
    info = np.iinfo(sitk.GetArrayViewFromImage(image).dtype)
    rounded = sitk.GetImageFromArray(np.clip(np.rint(array), info.min, info.max).astype(info.dtype))
    rounded.CopyInformation(result)
    return rounded


def _on_grid(image: sitk.Image, reference: sitk.Image, interpolator: int) -> sitk.Image:
    """``image`` on ``reference``'s grid, resampled only when the grids differ."""
    if (
        image.GetSize() == reference.GetSize()
        and np.allclose(image.GetSpacing(), reference.GetSpacing(), rtol=1e-5)
        and np.allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-4)
        and np.allclose(image.GetDirection(), reference.GetDirection(), atol=1e-5)
    ):
        image.CopyInformation(reference)
        return image
    grid = {
        "size": reference.GetSize(),
        "spacing": reference.GetSpacing(),
        "origin": reference.GetOrigin(),
        "direction": reference.GetDirection(),
    }
    return _resampled(image, grid, interpolator)


def _crop_box(labels: Sequence[sitk.Image], margin_mm: float) -> tuple:
    """(start, stop) voxel indices (i, j, k) of the labelled region of all ``labels`` plus the margin."""
    reference = labels[0]
    low, high = None, None
    for label in labels:
        array = sitk.GetArrayViewFromImage(label)
        for array_axis in range(3):
            others = tuple(a for a in range(3) if a != array_axis)
            occupied = np.flatnonzero(array.any(axis=others))
            if occupied.size == 0:
                continue
            axis = 2 - array_axis
            low = low or [math.inf] * 3
            high = high or [-math.inf] * 3
            low[axis] = min(low[axis], int(occupied[0]))
            high[axis] = max(high[axis], int(occupied[-1]) + 1)
    if low is None:
        return (0, 0, 0), tuple(reference.GetSize())
    margin = [math.ceil(margin_mm / s - 1e-9) for s in reference.GetSpacing()]
    start = tuple(max(0, low[a] - margin[a]) for a in range(3))
    stop = tuple(min(reference.GetSize()[a], high[a] + margin[a]) for a in range(3))
    return start, stop


def _cropped(image: sitk.Image, box: tuple) -> sitk.Image:
    start, stop = box
    return image[start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]]


def _intensity(array: np.ndarray) -> ChannelIntensity:
    """:func:`~TrainingDataExportLib.card.channel_intensity`, from a histogram for 8- and 16-bit integers.

    The same numbers (percentiles interpolated linearly between ranks), several times faster on large
    volumes than sorting a float copy.
    """
    if array.dtype.kind not in "iu" or array.dtype.itemsize > 2:
        return channel_intensity(array)
    values = array.ravel()
    offset = int(values.min())
    counts = np.bincount((values.astype(np.int32) - offset) if offset else values)
    levels = np.arange(offset, offset + counts.size, dtype=np.float64)
    total = values.size
    mean = float(counts @ levels / total)
    std = math.sqrt(float(counts @ (levels - mean) ** 2 / total))
    cumulative = np.cumsum(counts)

    def percentile(q: float) -> float:
        position = q / 100 * (total - 1)
        below = math.floor(position)
        # The value of sorted rank r is the first level whose cumulative count exceeds r.
        low, high = (
            levels[np.searchsorted(cumulative, rank, side="right")] for rank in (below, min(below + 1, total - 1))
        )
        return float(low + (high - low) * (position - below))

    return ChannelIntensity(mean, std, percentile(1), percentile(99))


def prepare_case(job: CaseJob, labels: Sequence, settings: ExportSettings, channels: tuple,
                 label_values: Mapping | None = None) -> tuple:
    """``(CaseData, CaseSummary)``: the case's images and label map on the exported grid, and its summary.

    ``label_values`` (schema value -> exported value, when they differ) renumbers the exported label maps; the
    summary keeps the schema's values.
    """
    case = job.case
    interpolator = INTERPOLATIONS[settings.image_interpolation]
    images = {channel: read_image(case.images[channel]) for channel in channels}
    reference = images[channels[0]]
    for channel in channels[1:]:
        images[channel] = _on_grid(images[channel], reference, interpolator)
    label, _ = read_label_map(case.segmentation, labels, overlap=settings.overlap)
    label, _ = label_on_grid(label, reference, resample=settings.resample_label_to_image)
    # What the annotator changed of a model's prediction, on the case's own grid (before any resampling or crop).
    pre_annotation = None
    if case.pre_annotated:
        pre_annotation = (pre_annotation_changes(case, label, labels, settings.overlap) if label.GetDimension() == 3
                          else {"model_id": case.model_id, "model_version": case.model_version, "dice": {},
                                "problem": "the prediction of a sequence is not compared"})
    frame_images = {channel: _frames(images[channel]) for channel in channels}
    frame_labels = _frames(label)
    if settings.spacing is not None:
        grid = target_grid(frame_labels[0], settings.spacing)
        frame_labels = [_resampled(frame, grid, sitk.sitkNearestNeighbor) for frame in frame_labels]
        frame_images = {
            channel: [_resampled(frame, grid, interpolator) for frame in frames]
            for channel, frames in frame_images.items()
        }
    if settings.crop_margin_mm is not None:
        box = _crop_box(frame_labels, settings.crop_margin_mm)
        frame_labels = [_cropped(frame, box) for frame in frame_labels]
        frame_images = {channel: [_cropped(frame, box) for frame in frames] for channel, frames in frame_images.items()}

    intensities = {}
    for channel, frames in frame_images.items():
        arrays = [sitk.GetArrayViewFromImage(frame) for frame in frames]
        intensities[channel] = _intensity(arrays[0] if len(arrays) == 1 else np.stack(arrays))
    label_voxels = {}
    schema_values = [0, *(int(label.value) for label in labels)]
    for frame in frame_labels:
        for value, count in label_counts(sitk.GetArrayViewFromImage(frame), schema_values).items():
            if value:
                label_voxels[value] = label_voxels.get(value, 0) + count
    exported = frame_labels[0]
    summary = CaseSummary(
        case_id=case.case_id,
        patient_id=case.patient_id,
        subset=job.subset,
        validation_fold=job.fold,
        spacing=tuple(float(s) for s in exported.GetSpacing()),
        size=tuple(int(s) for s in exported.GetSize()),
        label_voxels=dict(sorted(label_voxels.items())),
        intensities=intensities,
        annotator=case.annotator,
        source_sha256=dict(sorted(job.inputs.items())),
        time_spent=int(case.time_spent),
        pre_annotation=pre_annotation,
    )
    if label_values and any(old != new for old, new in label_values.items()):
        frame_labels = [_renumbered(frame, label_values) for frame in frame_labels]
    data = CaseData(
        case_id=case.case_id,
        channels=channels,
        frames=tuple(
            ({channel: frame_images[channel][index] for channel in channels}, frame_labels[index])
            for index in range(len(frame_labels))
        ),
        windows={channel: (value.p01, value.p99) for channel, value in intensities.items()},
    )
    return data, summary


def summary_to_json(summary: CaseSummary) -> dict:
    data = dataclasses.asdict(summary)
    data["label_voxels"] = {str(value): count for value, count in summary.label_voxels.items()}
    return data


def summary_from_json(data: Mapping) -> CaseSummary:
    return CaseSummary(
        **{
            **data,
            "spacing": tuple(data["spacing"]),
            "size": tuple(data["size"]),
            "label_voxels": {int(value): count for value, count in data["label_voxels"].items()},
            "intensities": {channel: ChannelIntensity(**value) for channel, value in data["intensities"].items()},
        }
    )



"""Segmentations read as label maps whose values are the project's label schema.

A case's segmentation is either a **label map** (.nii, .nii.gz, .nrrd, .mha: one integer per voxel, taken as
it is) or a **Slicer segmentation** (.seg.nrrd). Which of the two a file is, is read from its header, not
guessed from its name: Slicer writes its segments' properties as NRRD key/value pairs
(``Segment<N>_ID``, ``_Name``, ``_LabelValue``, ``_Layer``, ``_Extent``, ``_Tags``...), and a segmentation
whose segments overlap is stored in several *layers*, one vector component each.

Segments get the schema's values: by name (letter case and surrounding spaces ignored), or, when no schema
label has that name, by terminology (the ``TerminologyEntry`` tag Slicer stores in ``Segment<N>_Tags``):
category, type and type modifier codes equal, and the anatomic region too where the schema label names one.

Overlapping segments that map to different labels are a problem by default (``overlap="error"``): a voxel
cannot hold two labels and any choice would silently change an annotation. With ``overlap="schema-order"``
the label later in the schema wins (list small structures after the organs that contain them).

Everything found is returned as :class:`LabelProblem` s, all at once; ``blocking`` ones (unmapped segments,
values outside the schema, overlaps, an empty segmentation, an unreadable file) make the label map unusable
for training, the others (a schema label without a segment, a segment matched by terminology under another
name, an empty segment) are for the annotator to review.

Example::

    >>> import os, shutil, tempfile
    >>> from ModelRegistryLib.index import Label
    >>> schema = [Label(1, "liver", "#dd8259"), Label(2, "tumor", "#90d5ff")]
    >>> labels = np.zeros((4, 5, 6), np.uint8)
    >>> labels[1:3, 1:3, 1:3] = 1
    >>> labels[0, 0, 0] = 7
    >>> folder = tempfile.mkdtemp()
    >>> sitk.WriteImage(sitk.GetImageFromArray(labels), os.path.join(folder, "case.nrrd"))
    >>> label_map, problems = read_label_map(os.path.join(folder, "case.nrrd"), schema)
    >>> [(str(problem), problem.blocking) for problem in problems]
    [('extra label value 7 (not in the schema)', True), ("no voxel has label 'tumor' (2)", False)]
    >>> shutil.rmtree(folder)
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from DeepSegmentLib.imagecheck import ImageFileError
from DeepSegmentLib.imageio import read_image

OVERLAP_POLICIES = ("error", "schema-order")

# Slicer's serialized terminology: context~category~type~type modifier~anatomic context~region~region modifier,
# each code scheme^value^meaning (vtkSlicerTerminologyEntry).
_TERMINOLOGY_TAG = "TerminologyEntry"
_SEGMENT_KEY = re.compile(r"^Segment(\d+)_ID$")
# Tolerance, in voxels, for a grid origin to count as lying on another grid's lattice (file round-off).
_LATTICE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class LabelProblem:
    """Something wrong with a segmentation; ``blocking`` when it makes the label map unusable for training."""

    message: str
    blocking: bool = True

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Segment:
    """One segment of a Slicer segmentation file, as its header describes it."""

    index: int
    segment_id: str
    name: str
    label_value: int
    layer: int
    extent: tuple | None  # (i0, i1, j0, j1, k0, k1) in the file's voxels; None: the whole file
    terminology: str


def _codes(part: str) -> tuple:
    """``("SCT", "10200004")`` of ``SCT^10200004^Liver``; meanings differ between terminology versions."""
    scheme, _, rest = part.partition("^")
    value = rest.partition("^")[0]
    return (scheme.strip().upper(), value.strip())


def terminology_key(terminology: str) -> tuple | None:
    """The codes that identify what a serialized terminology entry describes, or None when it names no type.

    (category, type, type modifier, anatomic region, region modifier), each as (scheme, value).

    >>> entry = "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure"
    >>> terminology_key(entry + "~SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^")
    (('SCT', '123037004'), ('SCT', '10200004'), ('', ''), ('', ''), ('', ''))
    """
    parts = terminology.split("~")
    if len(parts) < 3:
        return None
    parts += [""] * (7 - len(parts))
    category, type_, modifier, region, region_modifier = (_codes(parts[i]) for i in (1, 2, 3, 5, 6))
    if not type_[1]:
        return None
    return (category, type_, modifier, region, region_modifier)


def schema_terminology_key(terminology) -> tuple | None:
    """:func:`terminology_key`'s codes of a schema label's terminology (``ModelRegistryLib.index.Terminology``
    or None).

    >>> from ModelRegistryLib.index import Coding, Terminology
    >>> schema_terminology_key(Terminology(Coding("sct", "123037004", "Anatomical Structure"),
    ...                                    Coding("SCT", "10200004", "Liver")))
    (('SCT', '123037004'), ('SCT', '10200004'), ('', ''), ('', ''), ('', ''))
    """
    if terminology is None:
        return None
    codings = terminology.codings
    return tuple(
        ("", "") if coding is None else (coding.scheme.strip().upper(), coding.code.strip()) for coding in codings
    )


def _terminology_matches(schema_key: tuple, segment_key: tuple) -> bool:
    if schema_key[:3] != segment_key[:3]:
        return False
    # A region in the schema distinguishes e.g. a mass in the liver from one in the kidney; without one any
    # region of the segment is accepted.
    return not schema_key[3][1] or schema_key[3:] == segment_key[3:]


def _tags(text: str) -> dict:
    tags = {}
    for item in text.split("|"):
        name, separator, value = item.partition(":")
        if separator:
            tags[name] = value
    return tags


def _extent(text: str) -> tuple | None:
    numbers = [int(number) for number in text.split()]
    return tuple(numbers) if len(numbers) == 6 else None


def segments_of(metadata: dict) -> list:
    """The segments a Slicer segmentation header lists (empty for a plain label map), by segment index."""
    segments = []
    indices = sorted(int(match.group(1)) for match in map(_SEGMENT_KEY.match, metadata) if match)
    for index in indices:
        prefix = f"Segment{index}_"

        def value(key, default="", prefix=prefix):
            return metadata.get(prefix + key, default).strip()

        segments.append(
            Segment(
                index=index,
                segment_id=value("ID"),
                # Slicer names a segment after its ID when the name is missing.
                name=value("Name") or value("ID"),
                label_value=int(value("LabelValue", "1") or 1),
                layer=int(value("Layer", str(index)) or index),
                extent=_extent(value("Extent")),
                terminology=_tags(metadata.get(prefix + "Tags", "")).get(_TERMINOLOGY_TAG, ""),
            )
        )
    return segments


def _schema_labels(labels: Sequence) -> list:
    """Schema labels that paint voxels (value 0 is the background, never a segment)."""
    return [label for label in labels if int(label.value) > 0]


def label_pixel_type(labels: Sequence) -> int:
    """uint8 when every schema value fits, else uint16."""
    largest = max((int(label.value) for label in labels), default=0)
    if largest > 65535:
        raise ValueError(f"label value {largest} is too large: label values go up to 65535")
    return sitk.sitkUInt8 if largest <= 255 else sitk.sitkUInt16


def map_segments(segments: Sequence[Segment], labels: Sequence) -> tuple:
    """``({segment index: schema value}, problems)``: each segment by name, else by terminology."""
    schema = _schema_labels(labels)
    by_name = {}
    for label in schema:
        by_name.setdefault(label.name.strip().casefold(), label)
    keyed = [(label, schema_terminology_key(label.terminology)) for label in schema]
    mapping, problems = {}, []
    for segment in segments:
        label = by_name.get(segment.name.strip().casefold())
        if label is None:
            segment_key = terminology_key(segment.terminology)
            candidates = [
                label for label, key in keyed if key and segment_key and _terminology_matches(key, segment_key)
            ]
            if len(candidates) > 1:
                names = ", ".join(repr(label.name) for label in candidates)
                problems.append(LabelProblem(f"segment {segment.name!r}: its terminology matches labels {names}"))
                continue
            if not candidates:
                problems.append(
                    LabelProblem(f"segment {segment.name!r} matches no schema label by name or terminology")
                )
                continue
            label = candidates[0]
            problems.append(
                LabelProblem(f"segment {segment.name!r} is mapped to {label.name!r} by its terminology", blocking=False)
            )
        mapping[segment.index] = int(label.value)
    for value, indices in itertools.groupby(sorted(mapping, key=mapping.get), key=mapping.get):
        indices = list(indices)
        if len(indices) > 1:
            names = ", ".join(repr(segment.name) for segment in segments if segment.index in indices)
            problems.append(LabelProblem(f"segments {names} all map to label value {value}; they are merged", False))
    mapped_values = set(mapping.values())
    problems.extend(
        LabelProblem(f"no segment for label {label.name!r} ({label.value})", blocking=False)
        for label in schema
        if int(label.value) not in mapped_values
    )
    return mapping, problems


def _segment_mask(layers: np.ndarray, segment: Segment) -> np.ndarray:
    """Voxels of ``segment`` in the (K, J, I, layer) array; outside the segment's extent nothing counts."""
    if not 0 <= segment.layer < layers.shape[-1]:
        raise ValueError(f"segment {segment.name!r} is on layer {segment.layer}, the file has {layers.shape[-1]}")
    mask = layers[..., segment.layer] == segment.label_value
    if segment.extent is not None:
        i0, i1, j0, j1, k0, k1 = segment.extent
        inside = np.zeros_like(mask)
        if i0 <= i1 and j0 <= j1 and k0 <= k1:
            inside[max(k0, 0) : k1 + 1, max(j0, 0) : j1 + 1, max(i0, 0) : i1 + 1] = True
        mask &= inside
    return mask


def _paint_segments(image: sitk.Image, segments: Sequence, mapping: dict, labels: Sequence, overlap: str) -> tuple:
    """The label array of a Slicer segmentation, and the problems of painting it."""
    layers = sitk.GetArrayViewFromImage(image)
    if image.GetNumberOfComponentsPerPixel() == 1:
        layers = layers[..., np.newaxis]
    order = {int(label.value): position for position, label in enumerate(labels)}
    painted = [segment for segment in segments if segment.index in mapping]
    # Later schema labels are painted last, so they win where segments overlap.
    painted.sort(key=lambda segment: (order[mapping[segment.index]], segment.index))
    masks = {segment.index: _segment_mask(layers, segment) for segment in painted}
    problems = []
    for first, second in itertools.combinations(painted, 2):
        if first.layer == second.layer or mapping[first.index] == mapping[second.index]:
            continue
        shared = int(np.count_nonzero(masks[first.index] & masks[second.index]))
        if shared and overlap == "error":
            problems.append(
                LabelProblem(
                    f"segments {first.name!r} and {second.name!r} overlap in {shared} voxels "
                    "(export with overlap='schema-order' to let the later schema label win)"
                )
            )
    array = np.zeros(layers.shape[:-1], np.uint8 if label_pixel_type(labels) == sitk.sitkUInt8 else np.uint16)
    for segment in painted:
        mask = masks[segment.index]
        if not mask.any():
            problems.append(LabelProblem(f"segment {segment.name!r} is empty", blocking=False))
        array[mask] = mapping[segment.index]
    return array, problems


def label_counts(array: np.ndarray, expected: Sequence[int]) -> dict:
    """value -> voxel count of every value in an integer ``array`` (0 included when present).

    ``expected`` are the values likely present: with a few of them, one comparison each is several times
    faster than a histogram of the whole array; values not expected are found all the same.

    >>> label_counts(np.array([[0, 1, 1], [3, 0, 1]], np.uint8), expected=[0, 1])
    {0: 2, 1: 3, 3: 1}
    """
    values = np.asarray(array).ravel()
    if len(expected) <= 16:
        counts = {int(v): int(np.count_nonzero(values == v)) for v in sorted(set(expected))}
        counts = {value: count for value, count in counts.items() if count}
        if sum(counts.values()) == values.size:
            return counts
    present, numbers = np.unique(values, return_counts=True)
    return {int(value): int(count) for value, count in zip(present, numbers)}


def _checked_label_values(array: np.ndarray, labels: Sequence) -> tuple:
    """``array`` as integers, and a problem for each value the schema does not have."""
    problems = []
    if array.dtype.kind == "f":
        if not np.array_equal(array, np.round(array)):
            return None, [LabelProblem("label map has non-integer values: a label map holds one label value per voxel")]
        array = array.astype(np.int64)
    elif array.dtype.kind not in "iub":
        return None, [LabelProblem(f"label map has voxels of type {array.dtype}, not integers")]
    known = {int(label.value) for label in labels} | {0}
    present = label_counts(array, sorted(known))
    problems.extend(
        LabelProblem(f"extra label value {value} (not in the schema)")
        for value in sorted(present)
        if value not in known
    )
    problems.extend(
        LabelProblem(f"no voxel has label {label.name!r} ({label.value})", blocking=False)
        for label in _schema_labels(labels)
        if int(label.value) not in present
    )
    return array, problems


def _as_label_image(array: np.ndarray, geometry: sitk.Image, labels: Sequence) -> sitk.Image:
    pixel_type = label_pixel_type(labels)
    image = sitk.GetImageFromArray(array, isVector=False)
    image.SetSpacing(geometry.GetSpacing())
    image.SetOrigin(geometry.GetOrigin())
    image.SetDirection(geometry.GetDirection())
    return sitk.Cast(image, pixel_type) if image.GetPixelID() != pixel_type else image


def read_label_map(path: str, labels: Sequence, *, overlap: str = "error") -> tuple:
    """Read a label map or a Slicer segmentation as ``(label map with the schema's values, problems)``.

    ``labels`` is the schema: ``ModelRegistryLib.index.Label`` objects (``value``, ``name``, and
    ``terminology``, a ``Terminology`` or None; see :mod:`~TrainingDataExportLib.labelschema`). The label
    map is uint8, or uint16 when a schema value exceeds 255, on the file's own grid (a Slicer segmentation's
    grid can be a part of its image's: see :func:`label_on_grid`). It is None when the file cannot be read;
    ``problems`` (:class:`LabelProblem`) lists everything found.
    """
    if overlap not in OVERLAP_POLICIES:
        raise ValueError(f"overlap must be one of {', '.join(OVERLAP_POLICIES)}, not {overlap!r}")
    try:
        image = read_image(str(path))
    except ImageFileError as error:
        return None, [LabelProblem(f"segmentation: {error}")]
    metadata = {key: image.GetMetaData(key) for key in image.GetMetaDataKeys()}
    segments = segments_of(metadata)
    if segments:
        mapping, problems = map_segments(segments, labels)
        try:
            array, paint_problems = _paint_segments(image, segments, mapping, labels, overlap)
        except ValueError as error:
            return None, [*problems, LabelProblem(f"{path}: {error}")]
        problems += paint_problems
        geometry = image
    elif image.GetNumberOfComponentsPerPixel() > 1:
        components = image.GetNumberOfComponentsPerPixel()
        return None, [LabelProblem(f"{path} has {components} values per voxel and no segment list")]
    else:
        array, problems = _checked_label_values(sitk.GetArrayFromImage(image), labels)
        if array is None:
            return None, problems
        geometry = image
    if not np.any(array):
        problems.append(LabelProblem("segmentation is empty (no voxel is labelled)"))
    return _as_label_image(array, geometry, labels), problems


def _grid(image: sitk.Image) -> tuple:
    return (
        np.array(image.GetSpacing(), float),
        np.array(image.GetOrigin(), float),
        np.array(image.GetDirection(), float).reshape(image.GetDimension(), image.GetDimension()),
    )


def lattice_offset(image: sitk.Image, reference: sitk.Image) -> tuple | None:
    """Index in ``reference`` of ``image``'s first voxel when both share one voxel lattice, else None.

    Slicer saves a segmentation on a part of its image's grid (or a larger one): same spacing and axes,
    origin shifted by whole voxels. Such a label map is moved onto the image grid exactly, without resampling.
    """
    if image.GetDimension() != reference.GetDimension():
        return None
    spacing, origin, direction = _grid(image)
    reference_spacing, reference_origin, reference_direction = _grid(reference)
    if not np.allclose(spacing, reference_spacing, rtol=1e-5, atol=1e-6):
        return None
    if not np.allclose(direction, reference_direction, atol=1e-5):
        return None
    voxels = reference_direction.T @ (origin - reference_origin) / reference_spacing
    rounded = np.round(voxels)
    if not np.allclose(voxels, rounded, atol=_LATTICE_TOLERANCE):
        return None
    return tuple(int(value) for value in rounded)


def _rounded(values, digits: int) -> tuple:
    return tuple(round(float(value), digits) for value in values)


def grid_difference(image: sitk.Image, reference: sitk.Image) -> str:
    """How ``image``'s voxel grid differs from ``reference``'s (for messages), ``""`` when they are the same."""
    if image.GetDimension() != reference.GetDimension():
        return f"{image.GetDimension()}D instead of {reference.GetDimension()}D"
    spacing, origin, direction = _grid(image)
    reference_spacing, _, reference_direction = _grid(reference)
    if not np.allclose(spacing, reference_spacing, rtol=1e-5, atol=1e-6):
        return f"spacing {_rounded(spacing, 6)} instead of {_rounded(reference_spacing, 6)}"
    if not np.allclose(direction, reference_direction, atol=1e-5):
        return "axis directions differ"
    offset = lattice_offset(image, reference)
    if offset is None:
        return f"origin {_rounded(origin, 4)} is not on the image's voxel lattice"
    if any(offset) or image.GetSize() != reference.GetSize():
        return f"grid shifted by {offset} voxels with size {image.GetSize()} instead of {reference.GetSize()}"
    return ""


def _with_grid_of(image: sitk.Image, reference) -> sitk.Image:
    image.SetSpacing(reference.GetSpacing())
    image.SetOrigin(reference.GetOrigin())
    image.SetDirection(reference.GetDirection())
    return image


def label_on_grid(label: sitk.Image, reference, *, resample: bool = False) -> tuple:
    """``(label map on reference's grid or None, problem message or "")``.

    ``reference`` is an image, or an ``sitk.ImageFileReader`` that has read an image's information (its grid is
    all that is used). A label map on the same voxel lattice (a Slicer segmentation cropped or padded to its
    segments) is moved exactly; labelled voxels outside the reference are a problem. Any other grid is a
    problem unless ``resample``: then the label map is resampled with nearest-neighbour interpolation.

    >>> reference = sitk.Image([6, 5, 4], sitk.sitkInt16)
    >>> label = sitk.Image([2, 2, 2], sitk.sitkUInt8) + 1
    >>> label.SetOrigin((3.0, 2.0, 1.0))
    >>> moved, problem = label_on_grid(label, reference)
    >>> moved.GetSize(), int(sitk.GetArrayViewFromImage(moved).sum()), problem
    ((6, 5, 4), 8, '')
    """
    offset = lattice_offset(label, reference)
    if offset is None:
        if not resample:
            return None, f"label map grid differs from the image: {grid_difference(label, reference)}"
        dimension = reference.GetDimension()
        moved = sitk.Resample(
            label,
            reference.GetSize(),
            sitk.Transform(dimension, sitk.sitkIdentity),
            sitk.sitkNearestNeighbor,
            reference.GetOrigin(),
            reference.GetSpacing(),
            reference.GetDirection(),
            0,
            label.GetPixelID(),
        )
        return moved, ""
    if not any(offset) and label.GetSize() == reference.GetSize():
        # Same grid: the reference's numbers replace the file's round-off.
        return _with_grid_of(sitk.Image(label), reference), ""
    source = sitk.GetArrayViewFromImage(label)
    target = np.zeros(tuple(reference.GetSize())[::-1], source.dtype)
    target_slices, source_slices = [], []
    # (K, J, I) order: offsets reversed.
    for axis_start, source_size, target_size in zip(offset[::-1], source.shape, target.shape):
        low, high = max(axis_start, 0), min(axis_start + source_size, target_size)
        if low >= high:
            return None, "label map lies entirely outside the image"
        target_slices.append(slice(low, high))
        source_slices.append(slice(low - axis_start, high - axis_start))
    target[tuple(target_slices)] = source[tuple(source_slices)]
    outside = int(np.count_nonzero(source)) - int(np.count_nonzero(target))
    if outside:
        return None, f"{outside} labelled voxels lie outside the image"
    return _with_grid_of(sitk.GetImageFromArray(target, isVector=False), reference), ""

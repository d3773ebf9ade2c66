"""Export a case list as a training set: validated first, split by patient, written in parallel, incremental.

:func:`export_dataset` works in four steps:

1. **Validate everything before writing anything**: missing files, duplicate case ids, unreadable images,
   image/label grid mismatches, empty segmentations, segments or values that do not map to the label schema,
   overlapping segments, an unwritable output folder, a non-empty output folder that no export of ours
   wrote. Every offending case is collected and :class:`ExportError` lists them all; the output folder is
   left untouched. Cases without a segmentation are skipped and listed.
2. **Split by patient** (:func:`~TrainingDataExportLib.splits.split_by_patient`, stratified by which labels
   a case contains) unless a split is given.
3. **Write each case** on a thread pool (SimpleITK and zlib release the GIL while they read, resample and
   compress): read the channels (other channels are resampled onto the first one's grid when they differ),
   put the label map on the image grid, resample to a target spacing if asked (images linear or B-spline,
   labels nearest, one output grid), crop to the labelled region plus a margin, write the files, summarise.
4. Write the format's index files, the dataset card, and last the manifest ``.training-data-export.json``.

The manifest records, per case, the SHA-256 of its inputs and of the settings: a re-run rewrites only the
cases whose inputs or settings changed and removes the files of cases no longer exported. Each file is
written under a temporary name and renamed, so an interrupted or cancelled export leaves complete files
only, and the old manifest, so that the next run redoes what is needed.

Geometry: the exported image and label map always share one grid. On the native grid a Slicer
segmentation saved on a part of its image's grid is moved onto it exactly. With a target ``spacing`` the
output grid covers the same field of view (first and last voxel edges kept, axes unchanged), with
``round(extent / spacing)`` voxels per axis. Resampled integer images are rounded back to their type.

Example::

    >>> import os, shutil, tempfile
    >>> from ModelRegistryLib.index import Label
    >>> from TrainingDataExportLib.caselist import Case
    >>> folder = tempfile.mkdtemp()
    >>> cases = []
    >>> for index in range(4):
    ...     image = sitk.Image([8, 8, 4], sitk.sitkInt16) + index
    ...     label = sitk.Image([8, 8, 4], sitk.sitkUInt8)
    ...     label[2:5, 2:5, 1:3] = 1
    ...     paths = [os.path.join(folder, f"c{index}{suffix}.nrrd") for suffix in ("", "_seg")]
    ...     sitk.WriteImage(image, paths[0]); sitk.WriteImage(label, paths[1])
    ...     cases.append(Case(f"c{index}", f"p{index}", {"image": paths[0]}, paths[1]))
    >>> output = os.path.join(folder, "export")
    >>> report = export_dataset(cases, [Label(1, "liver", "#dd8259")], output, ExportSettings("nnunet"), folds=0,
    ...                         test_fraction=0.25)
    >>> sorted(report.written), report.unchanged
    (['c0', 'c1', 'c2', 'c3'], [])
    >>> sorted(os.listdir(os.path.join(output, "Dataset001_Export", "imagesTs")))
    ['c2_0000.nii.gz']
    >>> export_dataset(cases, [Label(1, "liver", "#dd8259")], output, ExportSettings("nnunet"), folds=0,
    ...                test_fraction=0.25).unchanged
    ['c0', 'c1', 'c2', 'c3']
    >>> shutil.rmtree(folder)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from . import formats
from .card import CaseSummary, ChannelIntensity, card_warnings, channel_intensity
from .card import write_dataset_card
from .caselist import Case, CaseListError, validate_cases
from .segmentations import OVERLAP_POLICIES, label_counts, label_on_grid, read_label_map, schema_terminology_key
from .splits import DatasetSplit, split_by_patient

MANIFEST_NAME = ".training-data-export.json"
MANIFEST_VERSION = 1
# Part of every case's fingerprint: a change to how cases are written makes a re-run rewrite them.
ENGINE_VERSION = 1
INTERPOLATIONS = {"linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline}
_NNUNET_DATASET_NAME = re.compile(r"^Dataset\d{3}_[A-Za-z0-9_\-]+$")
_HASH_CHUNK = 1 << 22
_MAX_LISTED = 30


@dataclass(frozen=True)
class ExportSettings:
    """How to export; every setting is recorded in the manifest and the dataset card."""

    format: str  # "nnunet" | "monai" | "pairs" | "slices2d"
    spacing: tuple | None = None  # target (x, y, z) mm; None: the native grid
    crop_margin_mm: float | None = None  # crop to the labelled region plus this margin; None: no crop
    image_interpolation: str = "linear"  # "linear" | "bspline" (labels always nearest)
    compression_level: int = 1  # gzip level 0-9 for .nii.gz / .nrrd; 0: uncompressed
    resample_label_to_image: bool = False  # label grid differs from the image's: resample it instead of failing
    overlap: str = "error"  # overlapping segments: "error" | "schema-order" (later schema label wins)
    pairs_extension: str = ".nii.gz"  # pairs: ".nii.gz", ".nii" or ".nrrd"
    slice_axis: int = 2  # slices2d: voxel axis (0=i, 1=j, 2=k) of the exported grid
    slice_format: str = "png"  # slices2d: "png" or "npy"
    slices_with_labels_only: bool = False  # slices2d: skip slices without any labelled voxel
    dataset_name: str = "Dataset001_Export"  # nnunet: dataset folder, DatasetXXX_Name

    def problems(self) -> list:
        """What is wrong with these settings (empty when nothing)."""
        found = []
        if self.format not in formats.FORMATS:
            found.append(f"format must be one of {', '.join(formats.FORMATS)}, not {self.format!r}")
        if self.spacing is not None and (
            len(self.spacing) != 3 or not all(isinstance(s, (int, float)) and s > 0 for s in self.spacing)
        ):
            found.append(f"spacing must be three positive numbers (x, y, z mm), not {self.spacing!r}")
        if self.crop_margin_mm is not None and not self.crop_margin_mm >= 0:
            found.append(f"crop_margin_mm must be 0 or more, not {self.crop_margin_mm!r}")
        if self.image_interpolation not in INTERPOLATIONS:
            found.append(f"image_interpolation must be linear or bspline, not {self.image_interpolation!r}")
        if self.compression_level not in range(10):
            found.append(f"compression_level must be 0 to 9, not {self.compression_level!r}")
        if self.overlap not in OVERLAP_POLICIES:
            found.append(f"overlap must be one of {', '.join(OVERLAP_POLICIES)}, not {self.overlap!r}")
        if self.pairs_extension not in (".nii.gz", ".nii", ".nrrd"):
            found.append(f"pairs_extension must be .nii.gz, .nii or .nrrd, not {self.pairs_extension!r}")
        if self.slice_axis not in (0, 1, 2):
            found.append(f"slice_axis must be 0, 1 or 2, not {self.slice_axis!r}")
        if self.slice_format not in ("png", "npy"):
            found.append(f"slice_format must be png or npy, not {self.slice_format!r}")
        if self.format == "nnunet" and not _NNUNET_DATASET_NAME.match(self.dataset_name):
            found.append(f"dataset_name must look like Dataset001_Liver for nnU-Net, not {self.dataset_name!r}")
        return found

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["spacing"] = None if self.spacing is None else [float(s) for s in self.spacing]
        return data


@dataclass
class ExportReport:
    """What an export did: case ids written and left unchanged, skipped cases with the reason, summaries."""

    output_dir: str
    written: list = field(default_factory=list)
    unchanged: list = field(default_factory=list)
    skipped: dict = field(default_factory=dict)
    summaries: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    seconds: float = 0.0


class ExportError(ValueError):
    """The export cannot run; ``problems`` lists every ``(case_id, message)`` found ("" for the whole export)."""

    def __init__(self, problems: Sequence[tuple]) -> None:
        self.problems = list(problems)
        cases = sorted({case_id for case_id, _ in self.problems if case_id})
        lines = [f"case {case_id!r}: {message}" if case_id else message for case_id, message in self.problems]
        shown = lines[:_MAX_LISTED] + ([f"... and {len(lines) - _MAX_LISTED} more"] if len(lines) > _MAX_LISTED else [])
        heading = f"export stopped before writing anything: {len(self.problems)} problem(s)"
        if cases:
            heading += f" in {len(cases)} case(s): {', '.join(cases)}"
        super().__init__(heading + "\n  " + "\n  ".join(shown))


class ExportCancelledError(RuntimeError):
    """The export was cancelled; files already written are complete, the manifest is the previous one."""


# --- small pieces ------------------------------------------------------------------------------------------


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _json_sha256(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode("utf-8")).hexdigest()


def _schema_pairs(labels: Sequence) -> list:
    return [(int(label.value), str(label.name)) for label in labels]


def _schema_problems(labels: Sequence) -> list:
    problems = []
    values = [int(label.value) for label in labels]
    names = [str(label.name).strip().casefold() for label in labels]
    if not any(value > 0 for value in values):
        problems.append("the label schema has no label (values 1 and up)")
    for value in sorted({v for v in values if values.count(v) > 1}):
        problems.append(f"label value {value} appears twice in the schema")
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"label name {name!r} appears twice in the schema")
    problems.extend(f"label value {v} is outside 0..65535" for v in values if not 0 <= v <= 65535)
    return problems


def _export_root(output_dir: str, settings: ExportSettings) -> str:
    """The folder this export owns: nnU-Net's dataset folder inside nnUNet_raw, else the output folder."""
    return os.path.join(output_dir, settings.dataset_name) if settings.format == "nnunet" else output_dir


def _read_manifest(root: str) -> tuple:
    """``(manifest or None, problem or "")``."""
    if not os.path.isdir(root):
        return None, "" if not os.path.exists(root) else f"{root} exists and is not a folder"
    path = os.path.join(root, MANIFEST_NAME)
    if not os.path.isfile(path):
        if os.listdir(root):
            return None, (
                f"output folder {root} is not empty and holds no earlier export ({MANIFEST_NAME} is missing): "
                "choose an empty or new folder"
            )
        return None, ""
    try:
        with open(path, encoding="utf-8") as file:
            manifest = json.load(file)
    except (OSError, ValueError) as error:
        return None, f"cannot read the manifest {path} of the earlier export: {error}"
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        return None, f"{path} was written by another version of this export; choose a new folder"
    return manifest, ""


def _writable_problem(root: str) -> str:
    existing = root
    while not os.path.exists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"output folder {root} cannot be written ({existing} is not writable)"
    return ""


def _geometry(image) -> dict:
    return {
        "spacing": [float(v) for v in image.GetSpacing()],
        "origin": [float(v) for v in image.GetOrigin()],
        "direction": [float(v) for v in image.GetDirection()],
        "size": [int(v) for v in image.GetSize()],
    }


def _image_information(path: str):
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    return reader


def _frames(image: sitk.Image) -> list:
    """The 3D frames of an image: itself, or each time point of a 4D sequence."""
    if image.GetDimension() != 4:
        return [image]
    size = list(image.GetSize())
    return [sitk.Extract(image, [*size[:3], 0], [0, 0, 0, t]) for t in range(size[3])]


# --- per-case work ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    case: Case
    inputs: dict  # path -> sha256
    fingerprint: str
    subset: str
    fold: int | None


def _case_inputs(case: Case) -> list:
    return sorted({*case.images.values(), case.segmentation})


def _check_case(case: Case, labels: Sequence, settings: ExportSettings) -> tuple:
    """``(blocking problems, warnings, label values present)`` of one annotated case, read from its files."""
    problems, warnings = [], []
    channels = {}
    for channel, path in case.images.items():
        try:
            channels[channel] = _image_information(path)
        except RuntimeError as error:
            problems.append(f"cannot read image {path}: {str(error).strip().splitlines()[-1]}")
    label, label_problems = read_label_map(case.segmentation, labels, overlap=settings.overlap)
    for problem in label_problems:
        (problems if problem.blocking else warnings).append(f"{os.path.basename(case.segmentation)}: {problem}")
    if problems:
        return problems, warnings, frozenset()
    reference = channels[next(iter(case.images))]
    if reference.GetDimension() == 4 and settings.format != "slices2d":
        problems.append("is a 4D sequence: sequences can only be exported as 2D slices (format slices2d)")
    elif reference.GetDimension() not in (3, 4):
        problems.append(f"image is {reference.GetDimension()}D; 3D images (or 4D sequences) are exported")
    for channel, information in channels.items():
        if information.GetNumberOfComponents() != 1:
            problems.append(f"image of channel {channel} has {information.GetNumberOfComponents()} components")
    _, grid_problem = label_on_grid(label, reference, resample=settings.resample_label_to_image)
    if grid_problem:
        problems.append(grid_problem + " (set resample_label_to_image to resample it)")
    counts = label_counts(sitk.GetArrayViewFromImage(label), [0, *(int(lab.value) for lab in labels)])
    present = frozenset(value for value in counts if value)
    return problems, warnings, present


def _target_grid(image: sitk.Image, spacing: tuple) -> dict:
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


def _prepare(job: _Job, labels: Sequence, settings: ExportSettings, channels: tuple) -> tuple:
    """``(CaseData, CaseSummary)``: the case's images and label map on the exported grid, and its summary."""
    case = job.case
    interpolator = INTERPOLATIONS[settings.image_interpolation]
    images = {channel: sitk.ReadImage(case.images[channel]) for channel in channels}
    reference = images[channels[0]]
    for channel in channels[1:]:
        images[channel] = _on_grid(images[channel], reference, interpolator)
    label, _ = read_label_map(case.segmentation, labels, overlap=settings.overlap)
    label, _ = label_on_grid(label, reference, resample=settings.resample_label_to_image)
    frame_images = {channel: _frames(images[channel]) for channel in channels}
    frame_labels = _frames(label)
    if settings.spacing is not None:
        grid = _target_grid(frame_labels[0], settings.spacing)
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
    )
    data = formats.CaseData(
        case_id=case.case_id,
        channels=channels,
        frames=tuple(
            ({channel: frame_images[channel][index] for channel in channels}, frame_labels[index])
            for index in range(len(frame_labels))
        ),
        windows={channel: (value.p01, value.p99) for channel, value in intensities.items()},
    )
    return data, summary


def _summary_to_json(summary: CaseSummary) -> dict:
    data = dataclasses.asdict(summary)
    data["label_voxels"] = {str(value): count for value, count in summary.label_voxels.items()}
    return data


def _summary_from_json(data: Mapping) -> CaseSummary:
    return CaseSummary(
        **{
            **data,
            "spacing": tuple(data["spacing"]),
            "size": tuple(data["size"]),
            "label_voxels": {int(value): count for value, count in data["label_voxels"].items()},
            "intensities": {channel: ChannelIntensity(**value) for channel, value in data["intensities"].items()},
        }
    )


def _write_job(job: _Job, root: str, labels, settings, channels, writer, cancel) -> dict:
    """Write one case; return its manifest entry."""
    if cancel is not None and cancel.is_set():
        raise ExportCancelledError("export cancelled")
    data, summary = _prepare(job, labels, settings, channels)
    records = writer.write_case(root, data, job.subset, settings.compression_level)
    files = sorted({path for record in records for path in (*record["images"].values(), record["label"])})
    return {
        "fingerprint": job.fingerprint,
        "placement": writer.placement(job.subset),
        "files": {path: os.path.getsize(os.path.join(root, path)) for path in files},
        "records": records,
        "geometry": _geometry(data.frames[0][1]),
        "summary": _summary_to_json(summary),
    }


def _is_unchanged(previous: Mapping | None, job: _Job, root: str, writer) -> bool:
    if not previous or previous.get("fingerprint") != job.fingerprint:
        return False
    if previous.get("placement") != writer.placement(job.subset):
        return False
    return all(
        os.path.isfile(os.path.join(root, path)) and os.path.getsize(os.path.join(root, path)) == size
        for path, size in previous["files"].items()
    )


# --- the export --------------------------------------------------------------------------------------------


def _static_problems(cases: Sequence[Case]) -> list:
    """Case-list problems and missing files, as (case id, message)."""
    problems = []
    try:
        validate_cases(cases)
    except CaseListError as error:
        problems.extend((problem.case_id or "", str(problem)) for problem in error.problems)
    for case in cases:
        for path in (*case.images.values(), case.segmentation):
            if path and not os.path.isfile(path):
                problems.append((case.case_id, f"file {path} does not exist"))
    return problems


def _restricted_split(split: DatasetSplit, case_ids: Sequence[str]) -> tuple:
    """``(split of exactly case_ids, problems)``: a given split may hold more cases than are exported."""
    missing = sorted(set(case_ids) - set(split.case_ids))
    if missing:
        return None, [(case_id, "is not in the given split") for case_id in missing]
    keep = set(case_ids)

    def kept(ids):
        return tuple(i for i in ids if i in keep)

    folds = tuple((kept(train), kept(validation)) for train, validation in split.folds)
    return DatasetSplit(test=kept(split.test), folds=folds, seed=split.seed, train=kept(split.train)), []


def _parallel(function, items: Sequence, workers: int, on_done: Callable) -> list:
    """``function`` on every item on ``workers`` threads, results in order; ``on_done(index)`` in this thread.

    The first error (or one raised by ``on_done``) cancels the items not started, waits for the running ones
    and is raised.
    """
    results = [None] * len(items)
    if not items:
        return results
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(function, item): index for index, item in enumerate(items)}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in sorted(done, key=futures.get):
                    results[futures[future]] = future.result()
                    on_done(futures[future])
        except BaseException:
            for future in pending:
                future.cancel()
            wait(pending)
            raise
    return results


@contextlib.contextmanager
def _itk_threads_for(workers: int):
    """ITK's own threads limited to one while ``workers`` > 1 threads run cases, restored after.

    The cases are the parallelism: ITK's threads would only compete with them for the processors (measured:
    two threads reading NRRD files scale 2x with one ITK thread each, not at all with ITK's default).
    """
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    if workers > 1:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def _remove_partial_files(root: str) -> None:
    """Temporary files an interrupted export may have left (only this export names files so)."""
    for folder, _, names in os.walk(root):
        for name in names:
            if name.startswith(formats.PARTIAL_PREFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(folder, name))


def _remove_obsolete(root: str, old_files: Sequence[str], kept: set) -> None:
    for relative in sorted(set(old_files) - kept):
        path = os.path.join(root, relative)
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        # Folders emptied by the removal go too (a test set that no longer exists...).
        folder = os.path.dirname(path)
        while folder != root and os.path.isdir(folder) and not os.listdir(folder):
            os.rmdir(folder)
            folder = os.path.dirname(folder)


def _write_manifest(root: str, settings, settings_hash: str, split, index_files: Sequence, entries: Mapping) -> None:
    formats.write_json(
        os.path.join(root, MANIFEST_NAME),
        {
            "manifest_version": MANIFEST_VERSION,
            "tool": "SlicerDeepLearning TrainingDataExport",
            "format": settings.format,
            "settings": settings.to_json(),
            "settings_sha256": settings_hash,
            "split": split.to_json(),
            "index_files": sorted(index_files),
            "cases": entries,
        },
    )


def export_dataset(
    cases: Sequence[Case],
    labels: Sequence,
    output_dir: str,
    settings: ExportSettings,
    *,
    split: DatasetSplit | None = None,
    folds: int = 5,
    test_fraction: float = 0.2,
    seed: int = 0,
    workers: int = 0,
    progress: Callable[[float, str], None] | None = None,
    cancel: threading.Event | None = None,
) -> ExportReport:
    """Export ``cases`` (see the module description) and return what was done.

    ``labels`` is the label schema (``ModelRegistryLib.index.Label`` objects, see
    :func:`~TrainingDataExportLib.labelschema.load_label_schema`). ``split`` fixes the
    split (it must hold every annotated case); otherwise one is made with ``folds``, ``test_fraction`` and
    ``seed``. ``workers`` threads write cases (0: up to 4, one per processor). ``progress(fraction, message)``
    is called from the calling thread; setting ``cancel`` stops the export (:class:`ExportCancelledError`).
    Raises :class:`ExportError` listing every problem before anything is written.
    """
    started = time.perf_counter()
    output_dir = os.path.abspath(os.fspath(output_dir))
    cases = list(cases)
    channels = tuple(cases[0].images) if cases else ()
    report = ExportReport(output_dir=output_dir)

    def tell(fraction: float, message: str) -> None:
        if progress is not None:
            progress(fraction, message)
        if cancel is not None and cancel.is_set():
            raise ExportCancelledError("export cancelled")

    problems = [("", message) for message in settings.problems() + _schema_problems(labels)]
    if problems:
        raise ExportError(problems)
    root = _export_root(output_dir, settings)
    manifest, manifest_problem = _read_manifest(root)
    problems += [("", message) for message in (manifest_problem, _writable_problem(root)) if message]
    if manifest is not None and manifest.get("format") != settings.format:
        problems.append(
            ("", f"{root} holds a {manifest.get('format')!r} export; use another folder for {settings.format!r}")
        )
    if not cases:
        problems.append(("", "the case list is empty"))
    problems += _static_problems(cases)
    if problems:
        raise ExportError(problems)

    annotated = [case for case in cases if case.annotated]
    for case in cases:
        if not case.annotated:
            report.skipped[case.case_id] = "not annotated"
    if report.skipped:
        report.warnings.append(
            f"{len(report.skipped)} unannotated case(s) skipped: {', '.join(sorted(report.skipped))}"
        )
    if not annotated:
        raise ExportError([("", "no case is annotated: there is nothing to export")])
    workers = workers or min(os.cpu_count() or 1, 4)
    settings_json = settings.to_json()
    settings_hash = _json_sha256(
        [
            ENGINE_VERSION,
            settings_json,
            _schema_pairs(labels),
            [schema_terminology_key(label.terminology) for label in labels],
        ]
    )
    previous_cases = (manifest or {}).get("cases", {})

    tell(0.0, "hashing input files")
    input_paths = sorted({path for case in annotated for path in _case_inputs(case)})
    hashes = dict(zip(input_paths, _parallel(file_sha256, input_paths, workers, lambda index: None)))
    fingerprints = {
        case.case_id: _json_sha256([settings_hash, channels, {p: hashes[p] for p in _case_inputs(case)}, case.case_id])
        for case in annotated
    }

    # Cases exported before with the same inputs and settings were validated then; the rest are read now.
    known = {
        case.case_id: frozenset(previous_cases[case.case_id]["summary"]["label_voxels"])
        for case in annotated
        if previous_cases.get(case.case_id, {}).get("fingerprint") == fingerprints[case.case_id]
    }
    to_check = [case for case in annotated if case.case_id not in known]
    tell(0.05, f"checking {len(to_check)} case(s)")
    with _itk_threads_for(workers):
        checked = _parallel(lambda case: _check_case(case, labels, settings), to_check, workers, lambda index: None)
    strata = {case_id: frozenset(int(v) for v in values) for case_id, values in known.items()}
    for case, (case_problems, case_warnings, present) in zip(to_check, checked):
        problems += [(case.case_id, message) for message in case_problems]
        report.warnings += [f"case {case.case_id!r}: {message}" for message in case_warnings]
        strata[case.case_id] = present
    if split is not None:
        split, split_problems = _restricted_split(split, [case.case_id for case in annotated])
        problems += split_problems
    if problems:
        raise ExportError(problems)
    if split is None:
        try:
            split = split_by_patient(annotated, folds=folds, test_fraction=test_fraction, seed=seed, strata=strata)
        except ValueError as error:
            raise ExportError([("", f"cannot split the cases: {error}")]) from None

    writer = formats.format_for(settings)
    jobs = [
        _Job(
            case=case,
            inputs={path: hashes[path] for path in _case_inputs(case)},
            fingerprint=fingerprints[case.case_id],
            subset=split.subset_of(case.case_id),
            fold=split.validation_fold_of(case.case_id),
        )
        for case in sorted(annotated, key=lambda case: case.case_id)
    ]
    entries = {}
    to_write = []
    for job in jobs:
        previous = previous_cases.get(job.case.case_id)
        if _is_unchanged(previous, job, root, writer):
            summary = dict(previous["summary"], subset=job.subset, validation_fold=job.fold)
            entries[job.case.case_id] = dict(previous, summary=summary)
            report.unchanged.append(job.case.case_id)
        else:
            to_write.append(job)

    os.makedirs(root, exist_ok=True)
    if manifest is None:
        # Claims the new folder, so that a re-run after a cancel or a crash knows it as ours.
        _write_manifest(root, settings, settings_hash, split, [], {})
    _remove_partial_files(root)
    done = []

    def case_written(index: int) -> None:
        done.append(index)
        tell(0.1 + 0.8 * len(done) / len(to_write), f"wrote case {to_write[index].case.case_id}")

    with _itk_threads_for(workers):
        written = _parallel(
            lambda job: _write_job(job, root, labels, settings, channels, writer, cancel),
            to_write,
            workers,
            case_written,
        )
    for job, entry in zip(to_write, written):
        entries[job.case.case_id] = entry
        report.written.append(job.case.case_id)

    tell(0.92, "writing the index files and the dataset card")
    index_entries = [
        formats.IndexEntry(
            case_id=job.case.case_id,
            patient_id=job.case.patient_id,
            subset=job.subset,
            fold=job.fold,
            records=tuple(entries[job.case.case_id]["records"]),
            geometry=entries[job.case.case_id]["geometry"],
        )
        for job in jobs
    ]
    index_files = formats.write_index(root, index_entries, split, channels, _schema_pairs(labels), settings)
    report.summaries = [_summary_from_json(entries[job.case.case_id]["summary"]) for job in jobs]
    warnings = report.warnings + card_warnings(report.summaries, _schema_pairs(labels))
    card_settings = dict(settings_json, folds=folds, test_fraction=test_fraction, seed=split.seed)
    card_files = write_dataset_card(root, report.summaries, _schema_pairs(labels), split, card_settings, warnings)
    report.warnings = warnings

    kept = {path for entry in entries.values() for path in entry["files"]}
    own_files = index_files + [os.path.relpath(path, root).replace(os.sep, "/") for path in card_files]
    old_files = [path for entry in previous_cases.values() for path in entry["files"]]
    _remove_obsolete(root, old_files + (manifest or {}).get("index_files", []), kept | set(own_files))
    _write_manifest(root, settings, settings_hash, split, own_files, entries)
    report.written.sort()
    report.seconds = time.perf_counter() - started
    if progress is not None:
        progress(1.0, f"exported {len(jobs)} case(s) to {root}")
    return report

"""The four export formats, and files written so that a half-written one never looks complete.

Every file is written under a hidden temporary name in its final folder (``.partial-<random>-<name>``) and
renamed into place (``os.replace``, atomic on one file system). Writers embed no time stamps or random ids:
the same arrays and settings give the same bytes. ``.nii.gz`` files are written by SimpleITK uncompressed
and gzipped here, because SimpleITK's NIfTI writer ignores the compression level; the gzip header holds no
time and no name.

Formats (``root`` is the export folder; case files are named after the case id):

- ``nnunet``: nnU-Net v2 raw data, ``root`` = ``<output>/<dataset_name>``: ``imagesTr/<case>_0000.nii.gz``
  (one file per channel, ``_0001``...), ``labelsTr/<case>.nii.gz``, test cases in ``imagesTs/`` with their
  labels in ``labelsTs/`` (nnU-Net ignores ``labelsTs``; it is there for evaluating on the test set),
  ``dataset.json`` and ``splits_final.json`` (nnU-Net reads the latter from its *preprocessed* folder: copy it
  to ``nnUNet_preprocessed/<dataset_name>/`` after ``nnUNetv2_plan_and_preprocess`` to train on these folds).
- ``monai``: ``images/<case>_<channel>.nii.gz``, ``labels/<case>.nii.gz`` and ``datalist.json`` in the layout
  of MONAI's ``load_decathlon_datalist``: ``training`` entries with their validation ``fold``, ``testing``
  entries; paths relative to the datalist (``base_dir``); several channels as a list of paths.
- ``pairs``: ``images/<case>_<channel><ext>``, ``labels/<case><ext>`` (NIfTI or NRRD) and ``pairs.csv``.
- ``slices2d``: one PNG or NPY pair per slice along ``slice_axis``: ``images/<case>_<slice>_<channel>.png``,
  ``labels/<case>_<slice>.png`` (``<case>_<frame>_<slice>`` for every frame of a sequence), listed in
  ``slices.csv``, with each case's 3D grid in ``geometry.json``. PNG images are windowed to the channel's
  1st..99th percentile as uint8; NPY images are float32 as they are. Labels keep their values (uint8, or
  uint16 when the schema has values over 255).

Example::

    >>> import os, shutil, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> write_json(os.path.join(folder, "index.json"), {"b": 1, "a": [1.5]})
    >>> print(open(os.path.join(folder, "index.json"), encoding="utf-8").read(), end="")
    {
      "a": [
        1.5
      ],
      "b": 1
    }
    >>> write_image(sitk.Image([4, 3, 2], sitk.sitkInt16), os.path.join(folder, "image.nii.gz"), 1)
    >>> sorted(os.listdir(folder))  # no temporary file is left
    ['image.nii.gz', 'index.json']
    >>> shutil.rmtree(folder)
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

FORMATS = ("nnunet", "monai", "pairs", "slices2d")
PARTIAL_PREFIX = ".partial-"
_GZIP_CHUNK = 1 << 22


# --- files ---------------------------------------------------------------------------------------------


def _partial_name(path: str, suffix: str = "") -> str:
    folder, name = os.path.split(path)
    return os.path.join(folder, f"{PARTIAL_PREFIX}{uuid.uuid4().hex[:12]}-{name}{suffix}")


@contextlib.contextmanager
def _atomic_target(path: str):
    """A temporary path to write; renamed to ``path`` when the block ends without an error, removed otherwise."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = _partial_name(path)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)


def write_bytes(path: str, data: bytes) -> None:
    with _atomic_target(path) as temporary, open(temporary, "wb") as file:
        file.write(data)


def write_json(path: str, data) -> None:
    """Sorted keys, two-space indent, "\\n" line ends: the same data gives the same bytes."""
    write_bytes(path, (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8"))


def write_csv(path: str, header: Sequence[str], rows: Sequence[Sequence]) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_bytes(path, text.getvalue().encode("utf-8"))


def _gzip_stream(file, level: int):
    """A gzip writer on ``file``: Intel's igzip (package ``isal``) when installed, else zlib.

    gzip dominates writing .nii.gz files, and igzip compresses about 4× faster than zlib's fastest
    level at a similar ratio. igzip has levels 0-3: zlib's 1-9 map onto 1-3. mtime=0 and no file name
    keep the header the same on every run.
    """
    try:
        from isal import igzip
    except ImportError:
        return gzip.GzipFile(filename="", mode="wb", fileobj=file, compresslevel=level, mtime=0)
    return igzip.IGzipFile(filename="", mode="wb", fileobj=file, compresslevel=min(3, (level + 2) // 3), mtime=0)


def _gzip_file(source: str, target: str, level: int) -> None:
    with open(source, "rb") as raw, open(target, "wb") as file, _gzip_stream(file, level) as stream:
        shutil.copyfileobj(raw, stream, _GZIP_CHUNK)


def write_image(image: sitk.Image, path: str, compression_level: int) -> None:
    """Write a NIfTI (.nii, .nii.gz), NRRD or PNG file atomically with gzip ``compression_level`` (0: none)."""
    with _atomic_target(path) as temporary:
        if path.endswith(".nii.gz"):
            uncompressed = _partial_name(path[: -len(".gz")])
            try:
                sitk.WriteImage(image, uncompressed, False)
                _gzip_file(uncompressed, temporary, compression_level)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(uncompressed)
        else:
            writer = sitk.ImageFileWriter()
            writer.SetFileName(temporary)
            writer.SetUseCompression(compression_level > 0)
            if compression_level > 0:
                writer.SetCompressionLevel(compression_level)
            writer.Execute(image)


def write_npy(array: np.ndarray, path: str) -> None:
    with _atomic_target(path) as temporary, open(temporary, "wb") as file:
        np.save(file, np.ascontiguousarray(array), allow_pickle=False)


# --- what a format writes for one case -------------------------------------------------------------------


@dataclass(frozen=True)
class CaseData:
    """One case ready to write: images per channel and the label map, all on one grid.

    ``frames`` holds one (images, label) pair per frame: a single one for a volume, one per time point for a
    sequence (slices2d only). ``windows`` gives each channel's (low, high) for PNG windowing.
    """

    case_id: str
    channels: tuple
    frames: tuple  # ((Mapping[channel, sitk.Image], sitk.Image), ...)
    windows: Mapping[str, tuple]


def _subset_folder(base: str, subset: str) -> str:
    return base + ("Ts" if subset == "test" else "Tr")


def _relative(*parts: str) -> str:
    return "/".join(parts)


class VolumeFormat:
    """nnU-Net, MONAI and pairs: one image file per channel and one label file per case."""

    def __init__(self, name: str, extension: str) -> None:
        self.name = name
        self.extension = extension

    def placement(self, subset: str) -> str:
        """What of a case's subset its file paths depend on (a moved case is rewritten)."""
        return _subset_folder("", subset) if self.name == "nnunet" else ""

    def case_paths(self, case: CaseData, subset: str) -> tuple:
        """``({channel: image path}, label path)``, relative to the export folder."""
        if self.name == "nnunet":
            images = {
                channel: _relative(_subset_folder("images", subset), f"{case.case_id}_{index:04d}{self.extension}")
                for index, channel in enumerate(case.channels)
            }
            return images, _relative(_subset_folder("labels", subset), case.case_id + self.extension)
        images = {
            channel: _relative("images", f"{case.case_id}_{channel}{self.extension}") for channel in case.channels
        }
        return images, _relative("labels", case.case_id + self.extension)

    def write_case(self, root: str, case: CaseData, subset: str, compression_level: int) -> list:
        """Write the case's files; return its records (here one: image paths by channel, label path)."""
        ((images, label),) = case.frames
        image_paths, label_path = self.case_paths(case, subset)
        for channel, relative in image_paths.items():
            write_image(images[channel], os.path.join(root, relative), compression_level)
        write_image(label, os.path.join(root, label_path), compression_level)
        return [{"images": image_paths, "label": label_path}]


def _window(array: np.ndarray, window: tuple) -> np.ndarray:
    low, high = window
    scale = 255.0 / (high - low) if high > low else 0.0
    return np.clip(np.round((array.astype(np.float64) - low) * scale), 0, 255).astype(np.uint8)


class SliceFormat:
    """2D slices (or frames) as PNG or NPY pairs."""

    name = "slices2d"

    def __init__(self, slice_axis: int, slice_format: str, with_labels_only: bool) -> None:
        self.slice_axis = slice_axis
        self.slice_format = slice_format
        self.with_labels_only = with_labels_only

    def placement(self, subset: str) -> str:
        return ""

    def _write_slice(self, array: np.ndarray, path: str) -> None:
        if self.slice_format == "npy":
            write_npy(array, path)
        else:
            write_image(sitk.GetImageFromArray(array), path, compression_level=0)

    def write_case(self, root: str, case: CaseData, subset: str, compression_level: int) -> list:
        # (K, J, I) arrays: voxel axis i is array axis 2.
        array_axis = 2 - self.slice_axis
        records = []
        for frame, (images, label) in enumerate(case.frames):
            label_array = sitk.GetArrayViewFromImage(label)
            image_arrays = {channel: sitk.GetArrayViewFromImage(images[channel]) for channel in case.channels}
            for index in range(label_array.shape[array_axis]):
                label_slice = np.take(label_array, index, axis=array_axis)
                if self.with_labels_only and not label_slice.any():
                    continue
                base = (
                    f"{case.case_id}_{frame:04d}_{index:04d}" if len(case.frames) > 1 else f"{case.case_id}_{index:04d}"
                )
                image_paths = {
                    channel: _relative("images", f"{base}_{channel}.{self.slice_format}") for channel in case.channels
                }
                label_path = _relative("labels", f"{base}.{self.slice_format}")
                for channel, relative in image_paths.items():
                    image_slice = np.take(image_arrays[channel], index, axis=array_axis)
                    if self.slice_format == "npy":
                        image_slice = image_slice.astype(np.float32)
                    else:
                        image_slice = _window(image_slice, case.windows[channel])
                    self._write_slice(image_slice, os.path.join(root, relative))
                self._write_slice(label_slice, os.path.join(root, label_path))
                records.append({"images": image_paths, "label": label_path, "frame": frame, "slice": index})
        return records


def format_for(settings) -> object:
    """The writer of ``settings.format`` (an :class:`~TrainingDataExportLib.export.ExportSettings`)."""
    if settings.format == "slices2d":
        return SliceFormat(settings.slice_axis, settings.slice_format, settings.slices_with_labels_only)
    extension = settings.pairs_extension if settings.format == "pairs" else ".nii.gz"
    return VolumeFormat(settings.format, extension)


# --- index files ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexEntry:
    """One exported case as the index files list it."""

    case_id: str
    patient_id: str
    subset: str
    fold: int | None
    records: tuple
    geometry: Mapping  # spacing, origin, direction, size of the exported grid


def _fold_cell(fold: int | None) -> str:
    return "" if fold is None else str(fold)


def _nnunet_index(root, entries, split, channels, labels, settings) -> list:
    label_names = {"background": 0}
    for value, name in labels:
        if value == 0:
            label_names = {name: 0}
    label_names.update({name: value for value, name in labels if value != 0})
    dataset = {
        "channel_names": {str(index): channel for index, channel in enumerate(channels)},
        "labels": label_names,
        "numTraining": sum(1 for entry in entries if entry.subset != "test"),
        "file_ending": ".nii.gz",
        "name": settings.dataset_name,
    }
    write_json(os.path.join(root, "dataset.json"), dataset)
    written = ["dataset.json"]
    if split.folds:
        folds = [{"train": list(train), "val": list(validation)} for train, validation in split.folds]
        write_json(os.path.join(root, "splits_final.json"), folds)
        written.append("splits_final.json")
    return written


def _monai_index(root, entries, split, channels, labels, settings) -> list:
    datalist = {"training": [], "testing": []}
    for entry in entries:
        (record,) = entry.records
        images = [record["images"][channel] for channel in channels]
        item = {"image": images[0] if len(images) == 1 else images, "label": record["label"]}
        if entry.subset == "test":
            datalist["testing"].append(item)
        else:
            if entry.fold is not None:
                item["fold"] = entry.fold
            datalist["training"].append(item)
    write_json(os.path.join(root, "datalist.json"), datalist)
    return ["datalist.json"]


def _pairs_index(root, entries, split, channels, labels, settings) -> list:
    header = ["case_id", "patient_id", "subset", "fold", *(f"image_{channel}" for channel in channels), "label"]
    rows = []
    for entry in entries:
        (record,) = entry.records
        images = [record["images"][channel] for channel in channels]
        rows.append([entry.case_id, entry.patient_id, entry.subset, _fold_cell(entry.fold), *images, record["label"]])
    write_csv(os.path.join(root, "pairs.csv"), header, rows)
    return ["pairs.csv"]


def _slices_index(root, entries, split, channels, labels, settings) -> list:
    header = [
        "case_id",
        "patient_id",
        "subset",
        "fold",
        "frame",
        "slice",
        *(f"image_{channel}" for channel in channels),
        "label",
    ]
    rows = [
        [
            entry.case_id,
            entry.patient_id,
            entry.subset,
            _fold_cell(entry.fold),
            record["frame"],
            record["slice"],
            *(record["images"][channel] for channel in channels),
            record["label"],
        ]
        for entry in entries
        for record in entry.records
    ]
    write_csv(os.path.join(root, "slices.csv"), header, rows)
    geometry = {"slice_axis": settings.slice_axis, "cases": {entry.case_id: entry.geometry for entry in entries}}
    write_json(os.path.join(root, "geometry.json"), geometry)
    return ["slices.csv", "geometry.json"]


_INDEX_WRITERS = {"nnunet": _nnunet_index, "monai": _monai_index, "pairs": _pairs_index, "slices2d": _slices_index}


def write_index(root: str, entries: Sequence[IndexEntry], split, channels, labels: Sequence[tuple], settings) -> list:
    """Write the format's index and metadata files; return their paths relative to ``root``.

    ``entries`` are sorted by case id; ``labels`` are (value, name) pairs; ``split`` is the
    :class:`~TrainingDataExportLib.splits.DatasetSplit` of the exported cases.
    """
    return _INDEX_WRITERS[settings.format](
        root, sorted(entries, key=lambda e: e.case_id), split, channels, labels, settings
    )

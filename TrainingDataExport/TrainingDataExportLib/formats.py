"""The four export formats: the files of each case and the index files, written through the export's journal.

Every file is written with ``DeepSegmentLib.imageio.write_image`` or ``ModelRegistryLib.files`` (a temporary
file in its final folder, flushed, renamed into place, verified), after the export has recorded it in its
journal (the ``place`` function each writer gets: it records relative paths and returns where to write them,
refusing any that would lead outside the export folder). Writers embed no time stamps or random ids: the same
arrays and settings give the same bytes. CSV files are spreadsheet-safe (:mod:`~TrainingDataExportLib.csvfiles`).

Formats (``root`` is the export folder; case files are named after the case id):

- ``nnunet``: nnU-Net v2 raw data, ``root`` = the dataset folder ``Dataset<NNN>_<Name>`` (see
  :mod:`~TrainingDataExportLib.settings`): ``imagesTr/<case>_0000.nii.gz`` (one file per channel,
  ``_0001``...), ``labelsTr/<case>.nii.gz``, test cases in ``imagesTs/`` with their labels in ``labelsTs/``
  (nnU-Net ignores ``labelsTs``; it is there for evaluating on the test set), ``dataset.json`` (channel names
  as set, label values made consecutive) and ``splits_final.json`` (nnU-Net reads the latter from its
  *preprocessed* folder: copy it to ``nnUNet_preprocessed/<dataset folder>/`` after
  ``nnUNetv2_plan_and_preprocess`` to train on these folds).
- ``monai``: ``images/<case>_<channel>.nii.gz``, ``labels/<case>.nii.gz`` and ``datalist.json`` in the layout
  of MONAI's ``load_decathlon_datalist``: ``training`` entries, each with the ``fold`` that validates it (as
  Auto3DSeg needs; such datalists need at least 2 folds), ``testing`` entries (in no fold); paths relative to
  the datalist (``base_dir``); several channels as a list of paths.
- ``pairs``: ``images/<case>_<channel><ext>``, ``labels/<case><ext>`` (NIfTI or NRRD) and ``pairs.csv``.
- ``slices2d``: one PNG or NPY pair per slice along ``slice_axis``: ``images/<case>_<slice>_<channel>.png``,
  ``labels/<case>_<slice>.png`` (``<case>_<frame>_<slice>`` for every frame of a sequence), listed in
  ``slices.csv``, with each case's 3D grid in ``geometry.json``. PNG images are windowed to the channel's
  1st..99th percentile as uint8; NPY images are float32 as they are. Labels keep their values (uint8, or
  uint16 when the schema has values over 255).

Example::

    >>> import os, shutil, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> def place(relatives):
    ...     return [os.path.join(folder, relative) for relative in relatives]
    >>> write_json(place, "index.json", {"b": 1, "a": [1.5]})
    >>> print(open(os.path.join(folder, "index.json"), encoding="utf-8").read(), end="")
    {
      "a": [
        1.5
      ],
      "b": 1
    }
    >>> write_csv(place, "pairs.csv", ["case_id"], [["=cmd()"]])
    >>> open(os.path.join(folder, "pairs.csv"), encoding="utf-8").read()
    "case_id\\n'=cmd()\\n"
    >>> sorted(os.listdir(folder))  # no temporary file is left
    ['index.json', 'pairs.csv']
    >>> shutil.rmtree(folder)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from DeepSegmentLib.imageio import write_image
from ModelRegistryLib.files import atomic_target, write_bytes_atomically

from .csvfiles import csv_text
from .settings import FORMATS, consecutive_label_values, nnunet_channel_names

__all__ = ["FORMATS", "CaseData", "IndexEntry", "format_for", "index_file_names", "write_index"]

# ``place(relative paths) -> absolute paths``: records the files in the export's journal before they are written.
Place = Callable[[Sequence[str]], list]


def write_json(place: Place, relative: str, data) -> None:
    """Sorted keys, two-space indent, "\\n" line ends: the same data gives the same bytes."""
    (path,) = place([relative])
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"
    write_bytes_atomically(path, text.encode("utf-8"))


def write_csv(place: Place, relative: str, header: Sequence[str], rows: Sequence[Sequence]) -> None:
    (path,) = place([relative])
    write_bytes_atomically(path, csv_text(header, rows).encode("utf-8"))


def write_npy(array: np.ndarray, path: str) -> None:
    with atomic_target(path) as temporary, open(temporary, "wb") as file:
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

    def write_case(self, place: Place, case: CaseData, subset: str, compression_level: int) -> list:
        """Write the case's files; return its records (here one: image paths by channel, label path)."""
        ((images, label),) = case.frames
        image_paths, label_path = self.case_paths(case, subset)
        targets = place([*image_paths.values(), label_path])
        for channel, path in zip(image_paths, targets):
            write_image(images[channel], path, compression_level)
        write_image(label, targets[-1], compression_level)
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

    def write_case(self, place: Place, case: CaseData, subset: str, compression_level: int) -> list:
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
                targets = place([*image_paths.values(), label_path])
                for channel, path in zip(image_paths, targets):
                    image_slice = np.take(image_arrays[channel], index, axis=array_axis)
                    if self.slice_format == "npy":
                        image_slice = image_slice.astype(np.float32)
                    else:
                        image_slice = _window(image_slice, case.windows[channel])
                    self._write_slice(image_slice, path)
                self._write_slice(label_slice, targets[-1])
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


def nnunet_labels(labels: Sequence[tuple]) -> dict:
    """dataset.json's ``labels``: name -> value, 0 the background, values made consecutive (1, 2, ...)."""
    background = next((name for value, name in labels if value == 0), "background")
    values = consecutive_label_values([value for value, _ in labels])
    return {background: 0, **{name: values[value] for value, name in sorted(labels) if value != 0}}


def _nnunet_index(root, place, entries, split, channels, labels, settings) -> None:
    dataset = {
        "channel_names": {str(index): name for index, name in enumerate(nnunet_channel_names(settings, channels)[0])},
        "labels": nnunet_labels(labels),
        "numTraining": sum(1 for entry in entries if entry.subset != "test"),
        "file_ending": ".nii.gz",
        "name": os.path.basename(root),
    }
    write_json(place, "dataset.json", dataset)
    if split.folds:
        folds = [{"train": list(train), "val": list(validation)} for train, validation in split.folds]
        write_json(place, "splits_final.json", folds)


def _monai_index(root, place, entries, split, channels, labels, settings) -> None:
    datalist = {"training": [], "testing": []}
    for entry in entries:
        (record,) = entry.records
        images = [record["images"][channel] for channel in channels]
        item = {"image": images[0] if len(images) == 1 else images, "label": record["label"]}
        if entry.subset == "test":
            datalist["testing"].append(item)
        else:
            if entry.fold is None:
                raise ValueError(f"case {entry.case_id!r} is in no fold: MONAI datalists need 2 folds or more")
            item["fold"] = entry.fold
            datalist["training"].append(item)
    write_json(place, "datalist.json", datalist)


def _pairs_index(root, place, entries, split, channels, labels, settings) -> None:
    header = ["case_id", "patient_id", "subset", "fold", *(f"image_{channel}" for channel in channels), "label"]
    rows = []
    for entry in entries:
        (record,) = entry.records
        images = [record["images"][channel] for channel in channels]
        rows.append([entry.case_id, entry.patient_id, entry.subset, _fold_cell(entry.fold), *images, record["label"]])
    write_csv(place, "pairs.csv", header, rows)


def _slices_index(root, place, entries, split, channels, labels, settings) -> None:
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
    write_csv(place, "slices.csv", header, rows)
    geometry = {"slice_axis": settings.slice_axis, "cases": {entry.case_id: entry.geometry for entry in entries}}
    write_json(place, "geometry.json", geometry)


_INDEX_WRITERS = {"nnunet": _nnunet_index, "monai": _monai_index, "pairs": _pairs_index, "slices2d": _slices_index}
_INDEX_FILES = {
    "nnunet": ("dataset.json", "splits_final.json"),
    "monai": ("datalist.json",),
    "pairs": ("pairs.csv",),
    "slices2d": ("slices.csv", "geometry.json"),
}


def index_file_names(settings, split) -> list:
    """The index files :func:`write_index` writes for ``settings`` and ``split``, relative to the export folder."""
    names = _INDEX_FILES[settings.format]
    return [name for name in names if name != "splits_final.json" or split.folds]


def write_index(root: str, place: Place, entries: Sequence[IndexEntry], split, channels, labels: Sequence[tuple],
                settings) -> list:
    """Write the format's index and metadata files into ``root`` (through ``place``); return their paths relative
    to ``root`` (:func:`index_file_names`).

    ``entries`` are sorted by case id; ``labels`` are the schema's (value, name) pairs; ``split`` is the
    :class:`~TrainingDataExportLib.splits.DatasetSplit` of the exported cases; ``channels`` the case list's.
    """
    _INDEX_WRITERS[settings.format](
        root, place, sorted(entries, key=lambda e: e.case_id), split, channels, labels, settings
    )
    return index_file_names(settings, split)

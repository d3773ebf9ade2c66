"""The cases of a batch run: from a TrainingDataExport case list, a folder of images, or a folder of DICOM series.

- **Case list** (``cases.csv``): one case per row, its image columns in order as the model's inputs (a model with
  several inputs needs ``image_<channel>`` columns); the row's status lets a run pick cases ("to do" ...).
- **Folder of images**: TrainingDataExport's folder scan (``case_list_from_folder``): every image file is a case
  named after the file, files marked as segmentations (``_seg``, ``.seg.nrrd``...) are left out; with ``channels``
  (``["t1", "flair"]``) the files ``<case>_<channel>.<ext>`` are the channels of one case.
- **Folder of DICOM series**: every DICOM series found in the folder or any subfolder is one case (one input): a
  subfolder may hold one series or several. A series is named after its folder's path below the given folder
  (``patient7/ct`` gives ``patient7_ct``; the folder itself gives its own name), followed by the series number
  (``_3``) when its folder holds several series (the end of its Series Instance UID when the number is missing or
  not unique). Series split across folders are not joined, and several series never make one multi-channel case:
  use a case list for models with several inputs.

A case's inputs are identified by content (:func:`input_sha256`), so a batch re-run knows which cases changed.

Example::

    >>> import os, tempfile
    >>> import numpy as np, SimpleITK as sitk
    >>> folder = tempfile.mkdtemp()
    >>> for name in ("ct2.nii.gz", "ct10.nii.gz", "ct2_seg.nii.gz"):
    ...     sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 4), np.int16)), os.path.join(folder, name))
    >>> cases = find_cases("images", folder)
    >>> [case.case_id for case in cases], [os.path.basename(i.path) for i in cases[0].inputs]
    (['ct2', 'ct10'], ['ct2.nii.gz'])
    >>> [case.case_id for case in select_cases(cases, patterns=["ct1*"])]
    ['ct10']
    >>> read_case_images(cases[0])[0].GetSize()
    (4, 3, 2)
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import SimpleITK as sitk
from ModelRegistryLib.download import file_sha256
from TrainingDataExportLib.caselist import case_list_from_folder, natural_sort_key, read_case_list

from .imageio import dicom_series_files, read_volume

SOURCE_KINDS = ("cases", "images", "dicom")
SOURCE_TITLES = {"cases": "Case list", "images": "Image folder", "dicom": "DICOM folder"}
# Characters a case id (a file name in the output folder) cannot hold.
_NOT_IN_FILE_NAMES = re.compile(r'[/\\:*?"<>|\x00-\x1f\x7f]')
_SERIES_NUMBER_TAG = "0020|0011"


@dataclass(frozen=True)
class CaseInput:
    """One input volume of a case: an image file, or a DICOM folder and, when it holds several, the Series
    Instance UID of the series meant."""

    path: str
    series: str = ""

    def describe(self) -> str:
        return f"{self.path} (series {self.series})" if self.series else self.path


@dataclass(frozen=True)
class BatchCase:
    """A case to segment: its id (the output's file name), its inputs in the model's order, and its status in the
    case list it comes from ("" for folders)."""

    case_id: str
    inputs: tuple
    status: str = ""


class CaseSourceError(ValueError):
    """The cases cannot be found: a missing file or folder, a case list with problems, a folder with nothing to
    segment. The message says which."""


def cases_from_case_list(path: str) -> list:
    """The cases of a TrainingDataExport case list, in its order."""
    if not os.path.isfile(path):
        raise CaseSourceError(f"Case list not found: {path}")
    return [BatchCase(case.case_id, tuple(CaseInput(image) for image in case.images.values()), case.status)
            for case in read_case_list(path)]


def cases_from_images(folder: str, channels: Sequence[str] | None = None) -> list:
    """The cases of a folder of image files (see the module description), numbers in their numeric order."""
    if not os.path.isdir(folder):
        raise CaseSourceError(f"Image folder not found: {folder}")
    return [BatchCase(case.case_id, tuple(CaseInput(case.images[channel]) for channel in case.channels))
            for case in case_list_from_folder(folder, channels=channels)]


def _safe_case_id(text: str) -> str:
    return _NOT_IN_FILE_NAMES.sub("_", text).strip(" .") or "series"


def _series_number(files: Sequence[str]) -> str:
    reader = sitk.ImageFileReader()
    reader.SetFileName(files[0])
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return ""
    return reader.GetMetaData(_SERIES_NUMBER_TAG).strip() if reader.HasMetaDataKey(_SERIES_NUMBER_TAG) else ""


def cases_from_dicom(folder: str) -> list:
    """One case per DICOM series in ``folder`` and its subfolders (see the module description), sorted by case id."""
    if not os.path.isdir(folder):
        raise CaseSourceError(f"DICOM folder not found: {folder}")
    root = os.path.abspath(folder)
    cases = []
    for directory, subdirectories, _ in os.walk(root):
        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
        series_ids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(directory))
        if not series_ids:
            continue
        relative = os.path.relpath(directory, root)
        base = _safe_case_id(os.path.basename(root) if relative == os.curdir else relative.replace(os.sep, "_"))
        if len(series_ids) == 1:
            cases.append(BatchCase(base, (CaseInput(directory),)))
            continue
        numbers = {uid: _series_number(dicom_series_files(directory, uid)) for uid in series_ids}
        for uid in series_ids:
            number = numbers[uid]
            unique = number and list(numbers.values()).count(number) == 1
            suffix = number if unique else uid.replace(".", "")[-8:]
            cases.append(BatchCase(_safe_case_id(f"{base}_{suffix}"), (CaseInput(directory, uid),)))
    if not cases:
        raise CaseSourceError(f"No DICOM series in {folder} or its subfolders")
    cases.sort(key=lambda case: natural_sort_key(case.case_id))
    seen = {}
    for case in cases:
        key = case.case_id.casefold()
        if key in seen:
            raise CaseSourceError(f"Two DICOM series would both be case {case.case_id!r}: "
                                  f"{seen[key].describe()} and {case.inputs[0].describe()}; rename a folder")
        seen[key] = case.inputs[0]
    return cases


def find_cases(kind: str, source: str, channels: Sequence[str] | None = None) -> list:
    """The cases of ``source``: a case list (``kind`` "cases"), a folder of images ("images", with optional
    ``channels``) or a folder of DICOM series ("dicom"). Raises :class:`CaseSourceError` (or the case list's own
    ``CaseListError``) saying what is wrong."""
    if kind == "cases":
        return cases_from_case_list(source)
    if kind == "images":
        return cases_from_images(source, channels)
    if kind == "dicom":
        return cases_from_dicom(source)
    raise CaseSourceError(f"Unknown kind of case source {kind!r}: use {', '.join(SOURCE_KINDS)}")


def select_cases(cases: Sequence[BatchCase], patterns: Sequence[str] = (), statuses: Sequence[str] = ()) -> list:
    """The cases whose id matches one of ``patterns`` (shell patterns such as ``ct0*``, compared ignoring case; all
    when there are none) and whose case-list status is one of ``statuses`` (any when there are none)."""
    patterns = [pattern.strip().casefold() for pattern in patterns if pattern.strip()]
    wanted = set(statuses)
    return [case for case in cases
            if (not patterns or any(fnmatch.fnmatchcase(case.case_id.casefold(), p) for p in patterns))
            and (not wanted or case.status in wanted)]


def parse_case_filter(text: str) -> list:
    """The patterns of a case filter as typed in the panel: separated by commas or spaces.

    >>> parse_case_filter("ct0*, ct1?  mr*")
    ['ct0*', 'ct1?', 'mr*']
    """
    return [part for part in re.split(r"[,\s]+", text or "") if part]


def read_case_images(case: BatchCase) -> list:
    """The case's input volumes (SimpleITK images, checked as every DeepSegment input is)."""
    return [read_volume(item.path, item.series) for item in case.inputs]


def input_sha256(item: CaseInput, cancel: threading.Event | None = None) -> str:
    """The SHA-256 of an input's content: a file's bytes, or for a DICOM series the names and bytes of its files."""
    if not os.path.exists(item.path):
        raise ValueError(f"Input not found: {item.path}")
    if not os.path.isdir(item.path):
        return file_sha256(item.path, cancel=cancel)
    digest = hashlib.sha256()
    for path in sorted(dicom_series_files(item.path, item.series)):
        digest.update(f"{os.path.basename(path)}\0{file_sha256(path, cancel=cancel)}\n".encode())
    return digest.hexdigest()

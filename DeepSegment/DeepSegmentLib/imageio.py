"""Reading and writing DeepSegment's inputs and results: volumes from image files or DICOM series folders, label
maps and Slicer segmentations. Reading and writing go through ``TrainingDataExportLib.imagefiles``, the
extension's one checked reader and one atomic, verified writer (see there).

Example::

    >>> import os, tempfile
    >>> import numpy as np, SimpleITK as sitk
    >>> from TrainingDataExportLib.imagefiles import write_image
    >>> folder = tempfile.mkdtemp()
    >>> write_image(sitk.GetImageFromArray(np.zeros((3, 4, 5), np.int16)), os.path.join(folder, "ct.nii.gz"))
    >>> read_volume(os.path.join(folder, "ct.nii.gz")).GetSize(), os.listdir(folder)
    ((5, 4, 3), ['ct.nii.gz'])
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import SimpleITK as sitk
from ModelRegistryLib.files import probe_writable
from TrainingDataExportLib.imagecheck import ImageFileError, count_non_finite, non_finite_message
from TrainingDataExportLib.imagefiles import itk_error, read_image, write_image

from .segfile import SEGMENTATION_SUFFIX, SegmentInfo, segmentation_image

# Label maps and images written as one file each (renamed into place atomically).
LABEL_MAP_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
OUTPUT_SUFFIXES = (SEGMENTATION_SUFFIX, *LABEL_MAP_SUFFIXES)


def dicom_series_files(folder: str, series: str = "") -> list:
    """The files of the DICOM series ``series`` (a Series Instance UID) in ``folder``, in slice order, or of its only
    series when ``series`` is empty; errors say what is wrong with the folder."""
    found = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
    if not found:
        raise ValueError(f"No DICOM series in folder {folder}")
    if series and series not in found:
        raise ValueError(f"No DICOM series {series} in folder {folder}")
    if not series and len(found) > 1:
        raise ValueError(f"{len(found)} DICOM series in folder {folder}: give a folder holding one series")
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, series or found[0]))


def read_volume(path: str, series: str = "") -> sitk.Image:
    """A 3D volume from a file or a DICOM folder (its series ``series``, or its only one); errors say what is wrong
    with the input."""
    if os.path.isdir(path):
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(dicom_series_files(path, series))
        try:
            image = reader.Execute()
        except RuntimeError as error:
            raise ImageFileError(f"Cannot read the DICOM series in {path}: {itk_error(error)}") from None
        count = count_non_finite(sitk.GetArrayViewFromImage(image))
        if count:
            raise ImageFileError(non_finite_message(path, count))
    elif os.path.isfile(path):
        image = read_image(path)
    else:
        raise ValueError(f"Input not found: {path}")
    if image.GetDimension() != 3:
        raise ValueError(f"{path} is a {image.GetDimension()}D image; a 3D volume is needed")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{path} has {image.GetNumberOfComponentsPerPixel()} components per voxel; one is needed")
    return image


def write_labels(path: str, labels: sitk.Image, segments: Sequence[SegmentInfo]) -> None:
    """Write a result: ``.seg.nrrd`` as a Slicer segmentation with segment names, else a plain label map."""
    check_output_path(path)
    image = segmentation_image(labels, segments) if path.lower().endswith(SEGMENTATION_SUFFIX) else labels
    write_image(image, path)


def check_output_path(path: str) -> None:
    """Raise ``ValueError`` (one line) when a result cannot be written to ``path``: an unknown ending, a folder,
    or a folder where files cannot be created. Checked before a run, so that its work is never lost."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"Output {path} is a folder; give a file name")
    if not path.lower().endswith(OUTPUT_SUFFIXES):
        raise ValueError(f"Unknown output type for {path}: use {SEGMENTATION_SUFFIX} or a label map "
                         f"({', '.join(LABEL_MAP_SUFFIXES)})")
    folder = os.path.dirname(os.path.abspath(path))
    existing = folder
    while not os.path.isdir(existing):
        parent = os.path.dirname(existing)
        if parent == existing or os.path.exists(existing):
            raise ValueError(f"Cannot create the output folder {folder}: {existing} is not a folder")
        existing = parent
    try:
        probe_writable(existing)
    except OSError as error:
        raise ValueError(f"Cannot write to {existing}: {error.strerror or error}") from None

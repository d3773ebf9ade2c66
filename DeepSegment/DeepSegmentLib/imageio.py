"""Reading input volumes and writing results outside Slicer (command line, demo, container entry point).

Inputs: any 3D image SimpleITK reads (NIfTI, NRRD, MHA/MHD, ...) or a folder holding one DICOM series.
Results: a label map (NIfTI, NRRD, MHA) or a Slicer segmentation (``.seg.nrrd``) chosen by file name.

Example::

    >>> import os, tempfile
    >>> import numpy as np, SimpleITK as sitk
    >>> folder = tempfile.mkdtemp()
    >>> sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5), np.int16)), os.path.join(folder, "ct.nrrd"))
    >>> read_volume(os.path.join(folder, "ct.nrrd")).GetSize()
    (5, 4, 3)
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import SimpleITK as sitk

from .segfile import SEGMENTATION_SUFFIX, SegmentInfo, write_segmentation

LABEL_MAP_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def read_volume(path: str) -> sitk.Image:
    """A 3D volume from a file or a folder with one DICOM series; errors say what is wrong with the input."""
    if os.path.isdir(path):
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(path)
        if not series:
            raise ValueError(f"No DICOM series in folder {path}")
        if len(series) > 1:
            raise ValueError(f"{len(series)} DICOM series in folder {path}: give a folder holding one series")
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(path, series[0]))
        image = reader.Execute()
    elif os.path.isfile(path):
        try:
            image = sitk.ReadImage(path)
        except RuntimeError as error:
            raise ValueError(f"Cannot read {path} as an image: {str(error).strip().splitlines()[-1]}") from error
    else:
        raise ValueError(f"Input not found: {path}")
    if image.GetDimension() != 3:
        raise ValueError(f"{path} is a {image.GetDimension()}D image; a 3D volume is needed")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{path} has {image.GetNumberOfComponentsPerPixel()} components per voxel; one is needed")
    return image


def write_labels(path: str, labels: sitk.Image, segments: Sequence[SegmentInfo]) -> None:
    """Write a result: ``.seg.nrrd`` as a Slicer segmentation with segment names, else a plain label map."""
    lower = path.lower()
    if lower.endswith(SEGMENTATION_SUFFIX):
        write_segmentation(path, labels, segments)
    elif lower.endswith(LABEL_MAP_SUFFIXES):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        sitk.WriteImage(labels, path, useCompression=True)
    else:
        label_maps = ", ".join(LABEL_MAP_SUFFIXES)
        raise ValueError(f"Unknown output type for {path}: use {SEGMENTATION_SUFFIX} or a label map ({label_maps})")

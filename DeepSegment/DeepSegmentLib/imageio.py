"""Reading and writing image files outside Slicer: the one checked reader and the one atomic, verified writer
of the extension (DeepSegment's command line, demo and container entry point; TrainingDataExport's export).

Reading (:func:`read_image`, :func:`read_image_information`, :func:`read_volume`): any image SimpleITK reads,
or a folder holding one DICOM series, after :func:`~DeepSegmentLib.imagecheck.check_image_file` has made sure
that the data is as long as the header says and holds no NaN or infinity (which ITK's NIfTI reader would turn
into zeros); failures are :class:`~DeepSegmentLib.imagecheck.ImageFileError` (a ``ValueError``), one line.

Writing (:func:`write_image`, :func:`write_labels`): through ``ModelRegistryLib.files.atomic_target`` (a
temporary file in the target's folder, flushed, renamed), and verified before the rename, because ITK's NIfTI
writer reports no error when the disk fills up: a failed write raises and leaves the previous file as it
was. ``.nii.gz`` files are gzipped here (by ``isal``'s igzip when installed, else zlib), with no time stamp or
name in the gzip header, so that the same image always gives the same bytes. Formats that write two files
(``.mhd``, ``.nhdr``) cannot be renamed into place as one and are not written.

Example::

    >>> import os, tempfile
    >>> import numpy as np, SimpleITK as sitk
    >>> folder = tempfile.mkdtemp()
    >>> write_image(sitk.GetImageFromArray(np.zeros((3, 4, 5), np.int16)), os.path.join(folder, "ct.nii.gz"))
    >>> read_volume(os.path.join(folder, "ct.nii.gz")).GetSize(), os.listdir(folder)
    ((5, 4, 3), ['ct.nii.gz'])
"""

from __future__ import annotations

import gzip
import os
import shutil
from collections.abc import Sequence

import SimpleITK as sitk
from ModelRegistryLib.files import atomic_target, probe_writable, temporary_path

from .imagecheck import ImageFileError, check_image_file, count_non_finite, non_finite_message
from .segfile import SEGMENTATION_SUFFIX, SegmentInfo, segmentation_image

# Label maps and images written as one file each (renamed into place atomically).
LABEL_MAP_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
OUTPUT_SUFFIXES = (SEGMENTATION_SUFFIX, *LABEL_MAP_SUFFIXES)
_GZIP_CHUNK = 1 << 22
_FLOAT_COMPONENTS = ("float", "double")


def _itk_error(error: RuntimeError) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


def read_image(path: str) -> sitk.Image:
    """The image in the file ``path``, checked (see the module description).

    >>> import numpy as np, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "x.nrrd")
    >>> image = sitk.GetImageFromArray(np.array([[[1.0, np.nan]]], np.float32))
    >>> sitk.WriteImage(image, path)
    >>> read_image(path)
    Traceback (most recent call last):
    ...
    DeepSegmentLib.imagecheck.ImageFileError: .../x.nrrd holds 1 NaN or infinite voxel value(s): ...
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageFileError(f"Image file not found: {path}")
    values_checked = check_image_file(path)
    try:
        image = sitk.ReadImage(path)
    except RuntimeError as error:
        raise ImageFileError(f"Cannot read {path} as an image: {_itk_error(error)}") from None
    if not values_checked:
        count = count_non_finite(sitk.GetArrayViewFromImage(image))
        if count:
            raise ImageFileError(non_finite_message(path, count))
    return image


def read_image_information(path: str) -> sitk.ImageFileReader:
    """A reader that has read the header of the image file ``path`` (size, spacing, pixel type...), after the
    checks of :func:`read_image`: the voxels are read too only when their values could not be checked from
    the file itself (floating-point voxels of a format :mod:`~DeepSegmentLib.imagecheck` does not parse)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageFileError(f"Image file not found: {path}")
    values_checked = check_image_file(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise ImageFileError(f"Cannot read {path} as an image: {_itk_error(error)}") from None
    component = sitk.GetPixelIDValueAsString(reader.GetPixelID()).split()[-1]
    if not values_checked and component in _FLOAT_COMPONENTS:
        read_image(path)
    return reader


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
        try:
            image = reader.Execute()
        except RuntimeError as error:
            raise ImageFileError(f"Cannot read the DICOM series in {path}: {_itk_error(error)}") from None
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


def _write_with_itk(image: sitk.Image, path: str, compression_level: int) -> None:
    writer = sitk.ImageFileWriter()
    writer.SetFileName(path)
    writer.SetUseCompression(compression_level > 0)
    if compression_level > 0:
        writer.SetCompressionLevel(compression_level)
    try:
        writer.Execute(image)
    except RuntimeError as error:
        raise OSError(_itk_error(error)) from None
    # ITK's NIfTI writer says nothing when a write falls short (a full disk): the length is checked here.
    try:
        check_image_file(path, values=False)
    except ImageFileError:
        raise OSError("the file written is shorter than its header says (is the disk full?)") from None


def write_image(image: sitk.Image, path: str, compression_level: int = 1) -> None:
    """Write ``image`` to ``path`` (NIfTI, NRRD, MetaImage ``.mha``, PNG... by its ending) atomically and
    verified, compressed with gzip level ``compression_level`` (0: none) where the format can be; raises
    ``OSError`` (the previous file intact) when the write fails."""
    path = os.fspath(path)
    lower = path.lower()
    if lower.endswith((".mhd", ".nhdr")):
        raise ValueError(f"{path}: .mhd and .nhdr keep their data in a second file; write .mha or .nrrd instead")
    try:
        with atomic_target(path) as temporary:
            if not lower.endswith(".nii.gz"):
                _write_with_itk(image, temporary, compression_level)
                return
            uncompressed = temporary_path(path[: -len(".gz")])
            try:
                _write_with_itk(image, uncompressed, 0)
                with open(uncompressed, "rb") as raw, open(temporary, "wb") as file, \
                        _gzip_stream(file, compression_level) as stream:
                    shutil.copyfileobj(raw, stream, _GZIP_CHUNK)
            finally:
                if os.path.exists(uncompressed):
                    os.remove(uncompressed)
    except OSError as error:
        raise OSError(f"Cannot write {path}: {error.strerror or error}") from None


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

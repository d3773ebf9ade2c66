"""Corrupted and hostile image files (DeepSegmentLib.imagecheck, imageio): truncated data, NaN and infinity in
every format read, and writes that fail on a full disk or a read-only folder, on real files."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest
import SimpleITK as sitk
from fault_injection import read_only, run_python

from DeepSegmentLib.imagecheck import ImageFileError, check_image_file, data_layout
from DeepSegmentLib.imageio import read_image, read_image_information, read_volume, write_image, write_labels
from DeepSegmentLib.segfile import SegmentInfo

# (file name, compressed): every layout ITK writes for the formats check_image_file reads.
LAYOUTS = [
    ("v.nii", False),
    ("v.nii.gz", False),
    ("v.nrrd", False),
    ("v.nrrd", True),
    ("v.nhdr", False),
    ("v.nhdr", True),
    ("v.mha", False),
    ("v.mha", True),
    ("v.mhd", False),
    ("v.mhd", True),
    ("v.seg.nrrd", True),
]
LAYOUT_IDS = [f"{name}{'-compressed' if compressed else ''}" for name, compressed in LAYOUTS]


def volume(dtype) -> sitk.Image:
    rng = np.random.default_rng(7)
    image = sitk.GetImageFromArray((rng.normal(100, 30, (8, 20, 24))).astype(dtype))
    image.SetSpacing((0.7, 0.7, 2.5))
    return image


def written(tmp_path, name, compressed, image) -> str:
    path = str(tmp_path / name)
    sitk.WriteImage(image, path, compressed)
    return path


def data_file(path: str) -> str:
    """The file holding the voxels (the detached one of a .nhdr/.mhd)."""
    return data_layout(path).data_path


def truncate(path: str, fraction: float = 0.6) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as file:
        file.truncate(int(size * fraction))


@pytest.mark.parametrize(("name", "compressed"), LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_intact_files_pass_and_read_as_written(tmp_path, name, compressed, dtype):
    image = volume(dtype)
    path = written(tmp_path, name, compressed, image)
    assert check_image_file(path) == (dtype == np.float32)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(path)), sitk.GetArrayFromImage(image))
    assert read_image_information(path).GetSize() == image.GetSize()


@pytest.mark.parametrize(("name", "compressed"), LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_truncated_files_are_refused_whatever_itk_would_do(tmp_path, name, compressed, dtype):
    """ITK reads a truncated NIfTI file with zeros for the missing voxels (exit 0, a wrong segmentation)."""
    path = written(tmp_path, name, compressed, volume(dtype))
    truncate(data_file(path))
    with pytest.raises(ImageFileError, match=r"truncated or damaged|ends early|damaged") as error:
        read_image(path)
    assert "\n" not in str(error.value) and os.path.basename(data_file(path)) in str(error.value)
    with pytest.raises(ImageFileError):
        read_image_information(path)


@pytest.mark.parametrize(("name", "compressed"), LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_and_infinity_are_refused_in_every_format(tmp_path, name, compressed, bad, dtype):
    """ITK's NIfTI reader turns NaN and infinity into 0: the raw data is checked, not what ITK returns."""
    array = sitk.GetArrayFromImage(volume(dtype))
    array[3, 4, 5] = bad
    array[7, 19, 23] = bad
    path = written(tmp_path, name, compressed, sitk.GetImageFromArray(array))
    with pytest.raises(ImageFileError, match="holds 2 NaN or infinite voxel value"):
        read_image(path)
    with pytest.raises(ImageFileError, match="holds 2 NaN or infinite voxel value"):
        read_image_information(path)


def test_the_issue_truncated_nifti_is_not_segmented_as_zeros(tmp_path):
    path = written(tmp_path, "t1.nii.gz", True, volume(np.int16))
    assert np.count_nonzero(sitk.GetArrayFromImage(sitk.ReadImage(path)) == 0) == 0
    truncate(path)
    assert np.count_nonzero(sitk.GetArrayFromImage(sitk.ReadImage(path)) == 0) > 0  # what ITK alone does
    with pytest.raises(ValueError, match=r"truncated or damaged|ends early"):
        read_volume(path)


def test_big_endian_and_byte_skip_nrrd_are_read_by_their_header(tmp_path):
    values = np.array([1.0, 2.0, np.nan, 4.0], ">f4")
    path = tmp_path / "big.nrrd"
    header = b"NRRD0004\ntype: float\ndimension: 1\nsizes: 4\nencoding: raw\nendian: big\nbyte skip: 3\n\n"
    path.write_bytes(header + b"xyz" + values.tobytes())
    with pytest.raises(ImageFileError, match="holds 1 NaN"):
        check_image_file(str(path))
    path.write_bytes(header + b"xyz" + values[:2].tobytes())
    with pytest.raises(ImageFileError, match="holds 8 bytes of image data where its header announces 16"):
        check_image_file(str(path))


def test_damaged_gzip_data_is_refused(tmp_path):
    path = written(tmp_path, "v.nii.gz", False, volume(np.int16))
    with open(path, "rb") as file:
        data = bytearray(file.read())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    with open(path, "wb") as file:
        file.write(bytes(data))
    with pytest.raises(ImageFileError, match=r"damaged|truncated"):
        read_image(path)


def test_nifti2_is_read_by_its_own_header(tmp_path):
    nibabel = pytest.importorskip("nibabel")
    array = np.ones((4, 5, 6), np.float32)
    array[1, 2, 3] = np.nan
    path = str(tmp_path / "v2.nii.gz")
    nibabel.save(nibabel.Nifti2Image(array, np.eye(4)), path)
    with pytest.raises(ImageFileError, match="holds 1 NaN"):
        check_image_file(path)
    with gzip.open(path) as file:
        data = file.read()
    with gzip.open(path, "wb") as file:
        file.write(data[:-40])
    with pytest.raises(ImageFileError, match="truncated"):
        check_image_file(path)


def test_other_formats_are_left_to_itk_and_checked_after_reading(tmp_path):
    path = str(tmp_path / "v.vtk")
    array = np.ones((2, 3, 4), np.float32)
    array[0, 0, 0] = np.inf
    sitk.WriteImage(sitk.GetImageFromArray(array), path)
    assert data_layout(path) is None and check_image_file(path) is False
    with pytest.raises(ImageFileError, match="holds 1 NaN"):
        read_image(path)


# --- writes ---------------------------------------------------------------------------------------------------

WRITTEN = ["out.nii.gz", "out.nii", "out.nrrd", "out.mha", "out.seg.nrrd"]


@pytest.mark.parametrize("name", WRITTEN)
def test_a_write_on_a_full_disk_fails_and_keeps_the_previous_file(tmp_path, name):
    """ITK's NIfTI writer says nothing when the disk fills (the issue's "wrote" after a failed .nii.gz)."""
    path = tmp_path / name
    previous = sitk.Cast(volume(np.int16) > 100, sitk.sitkUInt8)
    write_labels(str(path), previous, [SegmentInfo(1, "A", "#ff0000")])
    before = path.read_bytes()
    code = (
        "import numpy as np, SimpleITK as sitk\n"
        "from DeepSegmentLib.imageio import write_labels\n"
        "from DeepSegmentLib.segfile import SegmentInfo\n"
        "labels = sitk.GetImageFromArray(np.random.default_rng(1).integers(0, 3, (40, 60, 60)).astype(np.uint8))\n"
        f"write_labels({str(path)!r}, labels, [SegmentInfo(1, 'A', '#ff0000'), SegmentInfo(2, 'B', '#00ff00')])\n"
    )
    result = run_python(code, file_size_limit=len(before) + 2048)
    assert result.returncode == 1, result.stderr
    assert "OSError" in result.stderr.strip().splitlines()[-1]
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == [name]


@pytest.mark.parametrize("name", WRITTEN)
def test_a_write_into_a_read_only_folder_fails_and_keeps_the_previous_file(tmp_path, name):
    folder = tmp_path / "results"
    folder.mkdir()
    image = sitk.Cast(volume(np.int16) > 100, sitk.sitkUInt8)
    write_labels(str(folder / name), image, [SegmentInfo(1, "A", "#ff0000")])
    before = (folder / name).read_bytes()
    with read_only(folder):
        with pytest.raises(OSError):
            write_image(image * 0, str(folder / name))
        with pytest.raises(ValueError, match=r"Read-only file system|Permission denied"):
            write_labels(str(folder / name), image * 0, [SegmentInfo(1, "A", "#ff0000")])
    assert (folder / name).read_bytes() == before and os.listdir(folder) == [name]


def test_two_file_formats_are_not_written(tmp_path):
    for name in ("out.mhd", "out.nhdr"):
        with pytest.raises(ValueError, match="second file"):
            write_image(volume(np.int16), str(tmp_path / name))
    assert os.listdir(tmp_path) == []


def test_nifti_gz_is_the_same_bytes_every_time(tmp_path):
    for name in ("a.nii.gz", "b.nii.gz"):
        write_image(volume(np.int16), str(tmp_path / name))
    assert (tmp_path / "a.nii.gz").read_bytes() == (tmp_path / "b.nii.gz").read_bytes()

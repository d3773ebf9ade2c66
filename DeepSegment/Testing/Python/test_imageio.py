"""DeepSegmentLib.imageio: inputs from files or DICOM folders, results as label maps or .seg.nrrd."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from DeepSegmentLib.geometry import geometry_mismatch
from DeepSegmentLib.imageio import read_volume, write_labels
from DeepSegmentLib.segfile import SegmentInfo


def volume() -> sitk.Image:
    image = sitk.GetImageFromArray(np.arange(60, dtype=np.int16).reshape(3, 4, 5))
    image.SetSpacing((0.5, 0.6, 2.0))
    image.SetOrigin((1.0, 2.0, 3.0))
    return image


def write_dicom_series(image: sitk.Image, folder) -> None:
    """One file per slice with the tags a series reader needs to order and place them."""
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series_uid = "1.2.826.0.1.3680043.2.1125.1.42"
    for k in range(image.GetDepth()):
        slice_image = image[:, :, k]
        for tag, value in (
            ("0020|000e", series_uid),
            ("0020|0032", "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k)))),
            ("0020|0037", "1\\0\\0\\0\\1\\0"),
            ("0020|0013", str(k + 1)),
            ("0008|0060", "CT"),
            ("0008|0018", f"{series_uid}.{k + 1}"),
        ):
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(slice_image)


def test_reads_files_and_dicom_folders(tmp_path):
    image = volume()
    sitk.WriteImage(image, str(tmp_path / "ct.nii.gz"))
    assert geometry_mismatch(image, read_volume(str(tmp_path / "ct.nii.gz"))) == ""
    series = tmp_path / "series"
    series.mkdir()
    write_dicom_series(image, series)
    from_dicom = read_volume(str(series))
    assert from_dicom.GetSize() == image.GetSize()
    np.testing.assert_allclose(from_dicom.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(from_dicom), sitk.GetArrayFromImage(image))


def missing_file(folder):
    return folder / "missing.nrrd"


def empty_folder(folder):
    (folder / "empty").mkdir()
    return folder / "empty"


def text_file(folder):
    (folder / "text.nrrd").write_text("not an image")
    return folder / "text.nrrd"


def flat_image(folder):
    sitk.WriteImage(sitk.Image(4, 4, sitk.sitkUInt8), str(folder / "flat.nrrd"))
    return folder / "flat.nrrd"


@pytest.mark.parametrize(
    ("make", "message"),
    [(missing_file, "not found"), (empty_folder, "No DICOM series"), (text_file, "Cannot read"), (flat_image, "2D")],
)
def test_bad_inputs_say_why(tmp_path, make, message):
    with pytest.raises(ValueError, match=message):
        read_volume(str(make(tmp_path)))


@pytest.mark.parametrize("name", ["labels.nii.gz", "labels.nrrd", "labels.seg.nrrd"])
def test_results_keep_geometry(tmp_path, name):
    labels = sitk.Cast(volume() > 30, sitk.sitkUInt8)
    write_labels(str(tmp_path / name), labels, [SegmentInfo(1, "Bright", "#ff0000")])
    reread = sitk.ReadImage(str(tmp_path / name))
    assert geometry_mismatch(labels, reread) == ""
    np.testing.assert_array_equal(sitk.GetArrayFromImage(reread), sitk.GetArrayFromImage(labels))


def test_unknown_output_type_is_refused(tmp_path):
    with pytest.raises(ValueError, match="Unknown output type"):
        write_labels(str(tmp_path / "labels.png"), sitk.Image(2, 2, 2, sitk.sitkUInt8), [])

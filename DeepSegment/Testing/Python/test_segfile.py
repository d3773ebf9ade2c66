"""DeepSegmentLib.segfile: a .seg.nrrd written without Slicer opens in Slicer's own reader as meant."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import vtk

import slicer
from DeepSegmentLib.geometry import ijk_to_ras_from_image, image_from_array
from DeepSegmentLib.segfile import SegmentInfo, write_segmentation

GRAY = (
    "Segmentation category and type - 3D Slicer General Anatomy list"
    "~SCT^85756007^Tissue~SCT^389081007^Gray matter~^^~~^^~^^"
)


def oblique_labels() -> sitk.Image:
    labels = np.zeros((6, 7, 8), np.uint8)
    labels[1:4, 2:5, 3:6] = 1
    labels[4:6, 0:2, 0:3] = 2
    angle = np.radians(25)
    matrix = np.eye(4)
    matrix[:3, :3] = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    matrix[:3, :3] = matrix[:3, :3] @ np.diag([0.8, 1.2, 2.5])
    matrix[:3, 3] = [-20.0, 14.0, 33.0]
    return image_from_array(labels, matrix)


def test_slicer_reads_names_colors_terminology_values_and_geometry(tmp_path):
    image = oblique_labels()
    path = str(tmp_path / "result.seg.nrrd")
    segments = [SegmentInfo(2, "White matter", "#fafaf0"), SegmentInfo(1, "Gray matter", "#b4b4b4", GRAY)]
    write_segmentation(path, image, segments)
    node = slicer.util.loadSegmentation(path)
    segmentation = node.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())] == [
        "Gray matter", "White matter"]
    gray = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("Gray matter"))
    np.testing.assert_allclose(gray.GetColor(), (180 / 255, 180 / 255, 180 / 255), atol=1e-6)
    tag = vtk.reference("")
    assert gray.GetTag("TerminologyEntry", tag) and tag.get() == GRAY
    volume = slicer.util.addVolumeFromArray(sitk.GetArrayFromImage(image), ijkToRAS=ijk_to_ras_from_image(image))
    for value, name in ((1, "Gray matter"), (2, "White matter")):
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(node, segmentation.GetSegmentIdBySegmentName(name), volume)
        np.testing.assert_array_equal(mask, sitk.GetArrayFromImage(image) == value)


def test_empty_segment_and_file_name_rule(tmp_path):
    image = oblique_labels()
    write_segmentation(str(tmp_path / "a.seg.nrrd"), image, [SegmentInfo(3, "Absent", "#ff0000")])
    assert sitk.ReadImage(str(tmp_path / "a.seg.nrrd")).GetMetaData("Segment0_Extent") == "0 -1 0 -1 0 -1"
    with pytest.raises(ValueError, match=r"\.seg\.nrrd"):
        write_segmentation(str(tmp_path / "a.nrrd"), image, [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.seg.nrrd"]

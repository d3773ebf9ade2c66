"""DeepSegmentLib.geometry: RAS/LPS conversion keeps every voxel at its physical place."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st

from DeepSegmentLib.geometry import (
    LPS_FROM_RAS,
    geometry_mismatch,
    ijk_to_ras_from_image,
    image_from_array,
    is_oblique,
)
from geometry_cases import rotation


def ijk_to_ras(axes: np.ndarray, spacing, origin) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = axes @ np.diag(spacing)
    matrix[:3, 3] = origin
    return matrix


CASES = {
    "RAS axis-aligned": ijk_to_ras(np.eye(3), (1.0, 1.0, 1.0), (0, 0, 0)),
    "LPS axis-aligned (as DICOM)": ijk_to_ras(np.diag([-1.0, -1.0, 1.0]), (0.7, 0.7, 3.0), (120.5, 99.0, -40.0)),
    "oblique anisotropic": ijk_to_ras(rotation(0, 17) @ rotation(2, -32), (0.4, 0.9, 2.2), (-3.0, 8.0, 15.5)),
    "left-handed voxel axes": ijk_to_ras(np.diag([1.0, 1.0, -1.0]), (1.0, 2.0, 3.0), (5.0, 5.0, 5.0)),
}


@pytest.mark.parametrize("matrix", CASES.values(), ids=CASES.keys())
def test_every_voxel_lands_at_its_physical_point(matrix):
    voxels = np.random.default_rng(0).integers(0, 100, size=(4, 5, 6)).astype(np.int16)
    image = image_from_array(voxels, matrix)
    for ijk in [(0, 0, 0), (5, 4, 3), (2, 1, 3)]:
        ras = (matrix @ np.array([*ijk, 1.0]))[:3]
        np.testing.assert_allclose(image.TransformIndexToPhysicalPoint(ijk), LPS_FROM_RAS @ ras, atol=1e-9)
        assert image[ijk] == voxels[ijk[2], ijk[1], ijk[0]]
    np.testing.assert_allclose(ijk_to_ras_from_image(image), matrix, atol=1e-12)


@settings(max_examples=50, deadline=None)
@given(
    angles=st.tuples(*[st.floats(-180, 180)] * 3),
    spacing=st.tuples(*[st.floats(0.05, 10)] * 3),
    origin=st.tuples(*[st.floats(-500, 500)] * 3),
    flip=st.booleans(),
)
def test_round_trip_for_any_rigid_grid(angles, spacing, origin, flip):
    axes = rotation(0, angles[0]) @ rotation(1, angles[1]) @ rotation(2, angles[2])
    if flip:
        axes = axes @ np.diag([1.0, -1.0, 1.0])
    matrix = ijk_to_ras(axes, spacing, origin)
    image = image_from_array(np.zeros((2, 2, 2), np.uint8), matrix)
    np.testing.assert_allclose(ijk_to_ras_from_image(image), matrix, atol=1e-9 * max(1.0, *map(abs, origin)))


def test_round_trip_through_a_file_keeps_geometry(tmp_path):
    matrix = CASES["oblique anisotropic"]
    image = image_from_array(np.arange(24, dtype=np.float32).reshape(2, 3, 4), matrix)
    path = str(tmp_path / "image.nrrd")
    sitk.WriteImage(image, path)
    reread = sitk.ReadImage(path)
    assert geometry_mismatch(image, reread) == ""
    np.testing.assert_allclose(ijk_to_ras_from_image(reread), matrix, atol=1e-6)


def test_mismatch_names_what_differs():
    reference = image_from_array(np.zeros((2, 3, 4), np.uint8), CASES["RAS axis-aligned"])
    shifted = image_from_array(np.zeros((2, 3, 4), np.uint8), ijk_to_ras(np.eye(3), (1, 1, 1), (0.5, 0, 0)))
    flipped = image_from_array(np.zeros((2, 3, 4), np.uint8), ijk_to_ras(np.diag([-1.0, 1, 1]), (1, 1, 1), (0, 0, 0)))
    finer = image_from_array(np.zeros((2, 3, 4), np.uint8), ijk_to_ras(np.eye(3), (1, 1, 0.5), (0, 0, 0)))
    assert geometry_mismatch(reference, shifted).startswith("origin")
    assert geometry_mismatch(reference, flipped) == "axis directions differ"
    assert geometry_mismatch(reference, finer).startswith("spacing")
    assert geometry_mismatch(reference, image_from_array(np.zeros((3, 3, 4), np.uint8), np.eye(4))).startswith("size")


def test_oblique_detection():
    grid = np.zeros((1, 1, 1), np.uint8)
    assert not is_oblique(image_from_array(grid, CASES["LPS axis-aligned (as DICOM)"]))
    assert not is_oblique(image_from_array(grid, ijk_to_ras(rotation(2, 90), (1, 1, 1), (0, 0, 0))))
    assert is_oblique(image_from_array(grid, CASES["oblique anisotropic"]))


@pytest.mark.parametrize(
    ("array", "matrix", "message"),
    [
        (np.zeros((2, 2)), np.eye(4), "3D voxel array"),
        (np.zeros((2, 2, 2)), np.eye(3), "4x4"),
        (np.zeros((2, 2, 2)), np.diag([1.0, 1.0, 0.0, 1.0]), "singular"),
        (np.zeros((2, 2, 2)), np.ones((4, 4)), "affine"),
    ],
)
def test_bad_input_is_refused_with_a_reason(array, matrix, message):
    with pytest.raises(ValueError, match=message):
        image_from_array(array, matrix)

"""Per-label accuracy measures: agreement with MONAI's metrics and SimpleITK's filters, known answers,
empty masks, grids (anisotropic, oblique, resampled, sharing a lattice) and refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from evaluation_cases import label_map_pair, monai_disagreements, monai_metrics
from geometry_cases import rotation
from scipy import ndimage
from scipy.spatial import cKDTree

from DeepSegmentLib.evaluation import (
    BOTH_EMPTY,
    BOTH_PRESENT,
    PREDICTION_EMPTY,
    REFERENCE_EMPTY,
    EvaluationError,
    LabelMetrics,
    align_to_reference,
    image_metrics,
    label_map_metrics,
    mask_metrics,
)
from ModelRegistryLib.index import Label

TOLERANCE = 1e-3


def assert_agrees_with_monai(result: LabelMetrics, expected: np.ndarray) -> None:
    assert monai_disagreements([result], [expected], TOLERANCE) == []


def seeded_case(seed: int) -> tuple:
    """Four labels drawn, a fifth never: the cases meet every situation (see the next test)."""
    reference, prediction = label_map_pair(seed, shape=(36, 44, 52), labels=4, miss=0.25, extra=0.5)
    spacing = tuple(np.random.default_rng(100 + seed).uniform(0.3, 3.0, 3))
    tolerance = float(np.random.default_rng(200 + seed).uniform(0.5, 3.0))
    return reference, prediction, spacing, tolerance


@pytest.mark.parametrize("seed", range(6))
def test_seeded_shapes_on_anisotropic_grids_agree_with_monai(seed):
    reference, prediction, spacing, tolerance = seeded_case(seed)
    results = label_map_metrics(reference, prediction, spacing, [1, 2, 3, 4, 5], tolerance)
    expected = monai_metrics(reference, prediction, spacing, 5, tolerance)
    assert [result.value for result in results] == [1, 2, 3, 4, 5]
    for result, row in zip(results, expected):
        assert_agrees_with_monai(result, row)
    voxel_ml = np.prod(spacing) / 1000
    for result in results:
        assert result.reference_ml == pytest.approx(np.count_nonzero(reference == result.value) * voxel_ml)
        assert result.prediction_ml == pytest.approx(np.count_nonzero(prediction == result.value) * voxel_ml)


def test_the_seeded_cases_meet_every_situation():
    """The agreement test above meets empty labels on either side and both, not only overlapping blobs."""
    statuses = set()
    for seed in range(6):
        reference, prediction, spacing, _ = seeded_case(seed)
        statuses |= {result.status for result in label_map_metrics(reference, prediction, spacing, [1, 2, 3, 4, 5])}
    assert statuses == {BOTH_PRESENT, PREDICTION_EMPTY, REFERENCE_EMPTY, BOTH_EMPTY}


def cube(shape, start, size) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[tuple(slice(s, s + size) for s in start)] = 1
    return mask


def test_cubes_three_voxels_apart_give_known_distances():
    # Two 10-voxel cubes, the second 3 voxels further along x; spacing x 0.5 mm, y 2 mm, z 2.5 mm (y and z
    # steps exceed the 1.5 mm shift, so the nearest surface voxel always lies along x). Each cube's surface
    # has 10³ − 8³ = 488 voxels; from one cube to the other: its 100-voxel face at x = 0 and the 64 inner
    # voxels of its face at x = 9 are 3 × 0.5 = 1.5 mm away, the rings of side voxels at x = 1 and x = 2
    # (36 each) 1.0 and 0.5 mm, the other 252 voxels lie on the other surface (0 mm). Both directions alike.
    reference = cube((14, 14, 16), (2, 2, 2), 10)
    prediction = cube((14, 14, 16), (2, 2, 5), 10)
    [result] = label_map_metrics(reference, prediction, (0.5, 2.0, 2.5), [1], tolerance_mm=1.0)
    assert result.dice == pytest.approx(2 * 700 / 2000)
    assert result.hd95_mm == pytest.approx(1.5)
    assert result.msd_mm == pytest.approx((164 * 1.5 + 36 * 1.0 + 36 * 0.5) / 488)
    assert result.nsd == pytest.approx((252 + 36 + 36) / 488)
    assert result.reference_ml == result.prediction_ml == pytest.approx(1000 * 0.5 * 2.0 * 2.5 / 1000)
    assert result.volume_difference_ml == 0 and result.volume_difference_percent == 0
    assert_agrees_with_monai(result, monai_metrics(reference, prediction, (0.5, 2.0, 2.5), 1, 1.0)[0])


def test_identical_masks_are_perfect():
    reference, _ = label_map_pair(5, shape=(30, 30, 30), labels=3)
    results = label_map_metrics(reference, reference.copy(), (0.7, 0.7, 3.0), [1, 2, 3])
    assert [(r.dice, r.hd95_mm, r.msd_mm, r.nsd, r.volume_difference_ml) for r in results] == [(1.0, 0.0, 0.0, 1.0,
                                                                                                0.0)] * 3


def test_empty_masks_are_flagged_with_monai_values():
    empty = np.zeros((12, 12, 12), np.uint8)
    present = cube((12, 12, 12), (3, 3, 3), 5)
    both_empty, reference_empty, prediction_empty = (
        mask_metrics(reference, prediction, (1.0, 2.0, 3.0))
        for reference, prediction in ((empty, empty), (empty, present), (present, empty))
    )
    assert both_empty.status == BOTH_EMPTY
    assert all(math.isnan(value) for value in (both_empty.dice, both_empty.hd95_mm, both_empty.msd_mm,
                                               both_empty.nsd, both_empty.volume_difference_percent))
    assert both_empty.volume_difference_ml == 0
    assert reference_empty.status == REFERENCE_EMPTY and prediction_empty.status == PREDICTION_EMPTY
    for one_sided in (reference_empty, prediction_empty):
        assert (one_sided.dice, one_sided.hd95_mm, one_sided.msd_mm, one_sided.nsd) == (0.0, math.inf, math.inf, 0.0)
    assert math.isnan(reference_empty.volume_difference_percent)
    assert prediction_empty.volume_difference_percent == -100.0
    assert reference_empty.prediction_ml == pytest.approx(125 * 6 / 1000)


def test_json_round_trip_keeps_nan_and_infinity_apart():
    empty = np.zeros((8, 8, 8), bool)
    present = cube((8, 8, 8), (2, 2, 2), 3).astype(bool)
    for result in (mask_metrics(empty, empty, (1, 1, 1)), mask_metrics(present, empty, (1, 1, 1)),
                   mask_metrics(present, np.roll(present, 1, 0), (1, 1, 1))):
        data = result.to_json()
        assert all(value is None or math.isfinite(value) for value in data.values() if isinstance(value, float))
        back = LabelMetrics.from_json(data)
        assert back.status == result.status
        for name in ("dice", "hd95_mm", "msd_mm", "nsd", "reference_ml", "prediction_ml"):
            assert back.measure(name) == pytest.approx(result.measure(name), nan_ok=True)


def test_masks_and_label_maps_give_the_same_results():
    reference, prediction = label_map_pair(8, shape=(30, 34, 38), labels=3)
    spacing = (0.9, 1.1, 2.0)
    by_label_map = label_map_metrics(reference, prediction, spacing, [Label(2, "Kidney", "#aa0000")], 1.0)
    by_mask = mask_metrics(reference == 2, prediction == 2, spacing, 1.0, Label(2, "Kidney", "#aa0000"))
    assert by_label_map == [by_mask]
    assert by_mask.name == "Kidney"


def image(array: np.ndarray, spacing, origin=(0.0, 0.0, 0.0), direction=None) -> sitk.Image:
    result = sitk.GetImageFromArray(array)
    result.SetSpacing(tuple(float(s) for s in spacing))
    result.SetOrigin(tuple(float(v) for v in origin))
    result.SetDirection(tuple(np.asarray(np.eye(3) if direction is None else direction, float).ravel()))
    return result


def physical_surface_points(mask_image: sitk.Image, value: int) -> np.ndarray:
    """Physical centres (LPS, mm) of the surface voxels, found with SciPy's erosion and SimpleITK's geometry."""
    mask = sitk.GetArrayFromImage(mask_image) == value
    surface = mask & ~ndimage.binary_erosion(mask)
    indices = np.argwhere(surface)[:, ::-1].astype(float)  # (i, j, k)
    direction = np.array(mask_image.GetDirection()).reshape(3, 3)
    return np.array(mask_image.GetOrigin()) + (indices * np.array(mask_image.GetSpacing())) @ direction.T


def test_oblique_anisotropic_grid_agrees_with_physical_space_and_simpleitk():
    reference_array, prediction_array = label_map_pair(11, shape=(30, 40, 36), labels=3, shift=1.5)
    spacing, origin = (0.6, 1.3, 2.7), (-40.0, 12.5, 100.0)
    direction = rotation(2, 25.0) @ rotation(0, -35.0)
    reference = image(reference_array, spacing, origin, direction)
    prediction = image(prediction_array, spacing, origin, direction)
    results, notes = image_metrics(reference, prediction, [1, 2, 3], tolerance_mm=1.75)
    assert notes == []
    overlap = sitk.LabelOverlapMeasuresImageFilter()
    shapes = sitk.LabelShapeStatisticsImageFilter()
    shapes.Execute(reference)
    for result in results:
        overlap.Execute(reference, prediction)
        assert result.dice == pytest.approx(overlap.GetDiceCoefficient(result.value), abs=TOLERANCE)
        assert result.reference_ml == pytest.approx(shapes.GetPhysicalSize(result.value) / 1000, abs=TOLERANCE)
        reference_points = physical_surface_points(reference, result.value)
        prediction_points = physical_surface_points(prediction, result.value)
        to_reference = cKDTree(reference_points).query(prediction_points)[0]
        to_prediction = cKDTree(prediction_points).query(reference_points)[0]
        pooled = np.concatenate([to_reference, to_prediction])
        hd95 = max(np.percentile(to_reference, 95), np.percentile(to_prediction, 95))
        assert result.hd95_mm == pytest.approx(hd95, abs=TOLERANCE)
        assert result.msd_mm == pytest.approx(pooled.mean(), abs=TOLERANCE)
        assert result.nsd == pytest.approx(np.mean(pooled <= 1.75), abs=TOLERANCE)
    # The axes' directions do not change distances: the same arrays on an axis-aligned grid agree.
    aligned, _ = image_metrics(image(reference_array, spacing), image(prediction_array, spacing), [1, 2, 3], 1.75)
    assert aligned == results


def test_prediction_on_another_grid_is_resampled_by_nearest_neighbour():
    reference_array, prediction_array = label_map_pair(4, shape=(24, 30, 30), labels=2)
    spacing, direction = (1.2, 1.0, 2.4), rotation(1, 20.0)
    reference = image(reference_array, spacing, (5.0, -3.0, 8.0), direction)
    # The prediction, on its own finer and turned grid, as a model with another resampling would give it.
    finer = sitk.Image([70, 70, 60], sitk.sitkUInt8)
    finer.SetSpacing((0.6, 0.55, 1.3))
    finer.SetOrigin((-4.0, -9.0, 2.0))
    finer.SetDirection(tuple((rotation(2, 10.0) @ direction).ravel()))
    prediction = sitk.Resample(image(prediction_array, spacing, (5.0, -3.0, 8.0), direction), finer, sitk.Transform(),
                               sitk.sitkNearestNeighbor)
    results, notes = image_metrics(reference, prediction, [1, 2], tolerance_mm=2.0)
    assert len(notes) == 1 and notes[0].startswith("prediction resampled onto the reference grid (nearest neighbour)")
    on_reference_grid = sitk.GetArrayFromImage(sitk.Resample(prediction, reference, sitk.Transform(),
                                                             sitk.sitkNearestNeighbor))
    for result, row in zip(results, monai_metrics(reference_array, on_reference_grid, spacing, 2, 2.0)):
        assert_agrees_with_monai(result, row)
    with pytest.raises(EvaluationError, match="allow resampling"):
        image_metrics(reference, prediction, [1, 2], resample=False)


def test_prediction_reaching_beyond_the_reference_grid_is_noted():
    reference = image(cube((10, 10, 10), (2, 2, 2), 4), (1, 1, 1))
    prediction = image(cube((24, 10, 10), (14, 2, 2), 4), (1, 1, 0.6))
    _, notes = image_metrics(reference, prediction, [1])
    # The prediction's 4×4×4 cube has slices at z 8.4, 9.0, 9.6 and 10.2 mm; the reference ends at 9.5 mm.
    assert notes[-1] == "32 labelled prediction voxels lie outside the reference's grid: they are not counted"


def test_grids_on_one_lattice_are_compared_exactly_on_their_union():
    reference_array, prediction_array = label_map_pair(6, shape=(26, 30, 34), labels=2)
    spacing, direction, origin = (0.8, 0.9, 2.0), rotation(0, 30.0), np.array([3.0, 4.0, 5.0])
    full = label_map_metrics(reference_array, prediction_array, spacing, [1, 2])
    # A reference saved cropped to its segments, as Slicer saves a .seg.nrrd: its origin moves by whole voxels.
    box = ndimage.find_objects((reference_array > 0).view(np.uint8))[0]
    (k, j, i) = [slice(max(s.start - 1, 0), s.stop + 1) for s in box]
    cropped = reference_array[k, j, i]
    cropped_origin = origin + direction @ (np.array([i.start, j.start, k.start]) * np.array(spacing))
    results, notes = image_metrics(image(cropped, spacing, cropped_origin, direction),
                                   image(prediction_array, spacing, origin, direction), [1, 2])
    assert notes == ["the grids differ but share one voxel lattice: compared exactly on their union"]
    assert results == full


def test_unsupported_inputs_are_refused_in_one_line():
    labels = cube((8, 8, 8), (2, 2, 2), 3)
    sheared = image(labels, (1, 1, 1), direction=[[1, 0.3, 0], [0, 1, 0], [0, 0, 1]])
    with pytest.raises(EvaluationError, match="not orthogonal"):
        image_metrics(image(labels, (1, 1, 1)), sheared, [1])
    with pytest.raises(EvaluationError, match="2D"):
        image_metrics(sitk.Image([4, 4], sitk.sitkUInt8), sitk.Image([4, 4], sitk.sitkUInt8), [1])
    with pytest.raises(EvaluationError, match="tolerance"):
        label_map_metrics(labels, labels, (1, 1, 1), [1], tolerance_mm=-1)
    with pytest.raises(EvaluationError, match="spacing"):
        label_map_metrics(labels, labels, (1, 0, 1), [1])
    with pytest.raises(EvaluationError, match="integers"):
        label_map_metrics(labels.astype(float), labels.astype(float), (1, 1, 1), [1])
    with pytest.raises(EvaluationError, match="one shape"):
        label_map_metrics(labels, labels[1:], (1, 1, 1), [1])
    with pytest.raises(EvaluationError, match="positive"):
        label_map_metrics(labels, labels, (1, 1, 1), [0])


def test_align_keeps_one_grid_as_it_is():
    array = cube((6, 7, 8), (1, 1, 1), 3)
    reference = image(array, (0.5, 0.6, 0.7), direction=rotation(0, 10.0))
    prediction = image(array, (0.5, 0.6, 0.7 + 1e-7), direction=rotation(0, 10.0))  # a file format's round-off
    aligned_reference, aligned_prediction, notes = align_to_reference(reference, prediction)
    assert notes == [] and aligned_reference is reference
    assert aligned_prediction.GetSpacing() == (0.5, 0.6, 0.7)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(aligned_prediction), array)

"""DeepSegmentLib.postprocess: label clean-up that respects voxel sizes and never overwrites other labels."""

from __future__ import annotations

import numpy as np

from DeepSegmentLib.postprocess import postprocess


def blobs() -> np.ndarray:
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[1:6, 1:6, 1:6] = 1  # 125 voxels
    labels[8:10, 8:10, 8:10] = 1  # 8 voxels
    labels[8:11, 1:4, 1:4] = 2  # 27 voxels
    labels[1, 10, 10] = 2  # 1 voxel
    return labels


def test_keep_largest_component_applies_to_the_named_labels_only():
    result = postprocess(blobs(), (1.0, 1.0, 1.0), keep_largest_component=(1,))
    assert (result == 1).sum() == 125 and (result == 2).sum() == 28
    assert result[9, 9, 9] == 0


def test_components_touching_at_a_corner_are_separate():
    labels = np.zeros((4, 4, 4), np.uint8)
    labels[0, 0, 0] = labels[1, 1, 1] = labels[2, 2, 2] = labels[2, 2, 3] = 1
    assert postprocess(labels, (1, 1, 1), keep_largest_component=(1,)).sum() == 2


def test_minimum_size_is_in_cubic_millimetres():
    # 8 voxels of 0.5 × 0.5 × 2 mm = 4 mm³; 27 voxels = 13.5 mm³
    result = postprocess(blobs(), (0.5, 0.5, 2.0), minimum_size_mm3={1: 4.0, 2: 13.5})
    assert (result == 1).sum() == 133 and (result == 2).sum() == 27
    result = postprocess(blobs(), (0.5, 0.5, 2.0), minimum_size_mm3={1: 4.01})
    assert (result == 1).sum() == 125


def test_fill_holes_fills_enclosed_background_but_not_other_labels():
    labels = np.zeros((9, 9, 9), np.uint8)
    labels[1:8, 1:8, 1:8] = 1
    labels[3, 3, 3] = 0  # a cavity
    labels[5, 5, 5] = 2  # another structure inside
    result = postprocess(labels, (1, 1, 1), fill_holes=(1,))
    assert result[3, 3, 3] == 1 and result[5, 5, 5] == 2
    opened = labels.copy()
    opened[3, 3, 0:4] = 0  # a tunnel to the outside is not a hole
    assert postprocess(opened, (1, 1, 1), fill_holes=(1,))[3, 3, 3] == 0


def test_nothing_asked_changes_nothing_and_the_input_is_not_modified():
    labels = blobs()
    before = labels.copy()
    np.testing.assert_array_equal(postprocess(labels, (1, 1, 1)), before)
    postprocess(labels, (1, 1, 1), keep_largest_component=(1, 2), fill_holes=(1,), minimum_size_mm3={2: 5})
    np.testing.assert_array_equal(labels, before)
    assert postprocess(labels, (1, 1, 1), keep_largest_component=(7,)).sum() == labels.sum()

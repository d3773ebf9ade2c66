"""The demo's augmentation (DeepSegment/Demo/augment.py): seeded, geometrically exact, label values kept."""

from __future__ import annotations

import doctest
import math
import os
import sys

import numpy as np
import pytest
import torch
from torch.nn import functional

DEMO_FOLDER = os.path.join(os.path.dirname(__file__), "..", "..", "Demo")
sys.path.insert(0, os.path.abspath(DEMO_FOLDER))

import augment as augment_module  # noqa: E402
from augment import (  # noqa: E402
    AugmentationSettings,
    augment,
    bias_field,
    change_intensities,
    lower_resolution,
    random_affine,
    resample,
    rotation_matrix,
    sampling_grid,
)


def volume(shape=(6, 7, 8), seed=0) -> torch.Tensor:
    return torch.rand((1, 1, *shape), generator=torch.Generator().manual_seed(seed))


def label_volume(shape=(6, 7, 8), seed=0, values=(0, 1, 2, 7)) -> torch.Tensor:
    indices = torch.randint(0, len(values), (1, 1, *shape), generator=torch.Generator().manual_seed(seed))
    return torch.tensor(values, dtype=torch.float32)[indices]


def affine(matrix=None, translation=(0.0, 0.0, 0.0)) -> torch.Tensor:
    linear = torch.eye(3, dtype=torch.float64) if matrix is None else matrix
    return torch.cat([linear, torch.tensor(translation, dtype=torch.float64)[:, None]], dim=1)


def test_same_seed_gives_the_same_sample_and_another_seed_another():
    image, labels = volume((12, 14, 16)), label_volume((12, 14, 16))

    def run(seed):
        return augment(image, labels, (1.0, 1.2, 2.0), (8, 8, 8), torch.Generator().manual_seed(seed), (1.0, 0, 0))

    first, again, other = run(3), run(3), run(4)
    assert torch.equal(first.image, again.image) and torch.equal(first.labels, again.labels)
    assert not torch.equal(first.image, other.image)


def test_identity_grid_is_torchs_identity_grid_for_any_spacing_and_shape():
    shape, spacing = (5, 6, 9), (0.7, 1.3, 2.5)
    expected = functional.affine_grid(torch.eye(3, 4)[None], (1, 1, *shape), align_corners=False)
    assert torch.allclose(sampling_grid(shape, spacing, shape), expected, atol=1e-6)


def test_identity_grid_reproduces_image_and_labels_exactly():
    image, labels = volume(), label_volume()
    sample = resample(image, labels, sampling_grid(image.shape[2:], (1.0, 2.0, 3.0), image.shape[2:]))
    assert torch.allclose(sample.image, image, atol=1e-6)
    assert torch.equal(sample.labels, labels)


def test_centre_offset_of_one_voxel_shifts_by_one_voxel_along_that_axis():
    image, labels = volume(), label_volume()
    spacing = (1.5, 2.0, 3.0)  # x y z
    grid = sampling_grid(image.shape[2:], spacing, image.shape[2:], center_mm=(0.0, 2.0, 0.0))
    sample = resample(image, labels, grid)
    # y is the H axis (dim 3): output row j shows source row j + 1; the last row falls outside (zeros).
    assert torch.allclose(sample.image[:, :, :, :-1], image[:, :, :, 1:], atol=1e-6)
    assert torch.equal(sample.labels[:, :, :, :-1], labels[:, :, :, 1:])
    assert torch.all(sample.labels[:, :, :, -1] == 0)


def test_rotation_by_a_quarter_turn_about_z_permutes_voxels():
    n = 6
    image, labels = volume((4, n, n)), label_volume((4, n, n))
    quarter = affine(rotation_matrix(torch.tensor([0.0, 0.0, math.pi / 2], dtype=torch.float64)))
    sample = resample(image, labels, sampling_grid((4, n, n), (1.0, 1.0, 1.0), (4, n, n), affine=quarter))
    # Output offset (x, y) samples the source at (-y, x): out[k, j, i] = source[k, i, n - 1 - j].
    k, j, i = np.meshgrid(range(4), range(n), range(n), indexing="ij")
    expected = labels[0, 0].numpy()[k, i, n - 1 - j]
    assert np.array_equal(sample.labels[0, 0].numpy(), expected)
    assert np.allclose(sample.image[0, 0].numpy(), image[0, 0].numpy()[k, i, n - 1 - j], atol=1e-5)


def test_affine_and_elastic_compose_into_one_grid():
    shape, spacing = (4, 5, 6), (1.0, 1.5, 2.0)
    linear = rotation_matrix(torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)) * 1.1
    constant = torch.tensor([0.5, -1.0, 2.0])
    displacement = constant[:, None, None, None].expand(3, *shape)
    composed = sampling_grid(shape, spacing, shape, (1.0, 0.0, 0.0), affine(linear, (0.0, 3.0, 0.0)), displacement)
    # A constant displacement is a translation: the same grid as the affine moved by it.
    moved = affine(linear, (0.5, 2.0, 2.0))
    assert torch.allclose(composed, sampling_grid(shape, spacing, shape, (1.0, 0.0, 0.0), moved), atol=1e-5)
    # Scaling by 2 about the centre doubles every normalized coordinate.
    doubled = sampling_grid(shape, spacing, shape, affine=affine(2 * torch.eye(3, dtype=torch.float64)))
    assert torch.allclose(doubled, 2 * sampling_grid(shape, spacing, shape), atol=1e-6)


def test_random_affine_stays_within_its_ranges():
    settings = AugmentationSettings(rotation_degrees=20.0, scale_range=(0.85, 1.15), translation_mm=10.0)
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        matrix = random_affine(generator, settings)
        scales = torch.linalg.norm(matrix[:, :3], dim=0)
        assert torch.all((scales >= 0.85 - 1e-9) & (scales <= 1.15 + 1e-9))
        assert torch.all(matrix[:, 3].abs() <= 10.0)


@pytest.mark.parametrize("seed", range(5))
def test_nearest_sampling_keeps_label_values_under_heavy_deformation(seed):
    image, labels = volume((16, 16, 16), seed), label_volume((16, 16, 16), seed)
    settings = AugmentationSettings(elastic_mm=6.0, rotation_degrees=30.0)
    sample = augment(image, labels, (1.0, 1.0, 1.0), (12, 12, 12), torch.Generator().manual_seed(seed),
                     settings=settings)
    assert set(sample.labels.unique().tolist()) <= {0.0, 1.0, 2.0, 7.0}
    assert sample.image.shape == sample.labels.shape == (1, 1, 12, 12, 12)


def test_lower_resolution_keeps_shape_and_constant_images():
    image = torch.full((1, 1, 6, 9, 12), 0.25)
    for axis in range(3):
        blurred = lower_resolution(image, axis, 3.0)
        assert blurred.shape == image.shape and torch.allclose(blurred, image)
    # Along the chosen axis only: a pattern along another axis survives.
    ramp = torch.arange(12.0).expand(1, 1, 6, 9, 12).contiguous()
    assert torch.allclose(lower_resolution(ramp, 0, 2.5), ramp)


def test_image_changes_are_seeded_and_the_bias_field_is_smooth_and_positive():
    image = volume((8, 8, 8))
    first = change_intensities(image, torch.Generator().manual_seed(5), AugmentationSettings(probability=1.0))
    again = change_intensities(image, torch.Generator().manual_seed(5), AugmentationSettings(probability=1.0))
    assert torch.equal(first, again) and not torch.equal(first, image)
    field = bias_field(torch.Generator().manual_seed(1), (16, 16, 16), AugmentationSettings())
    assert torch.all(field > 0)
    # Neighbouring voxels of an upsampled 3-point grid differ by a small fraction only.
    assert float((field[..., 1:] / field[..., :-1]).log().abs().max()) < 0.2


def test_docstring_example_runs():
    assert doctest.testmod(augment_module, optionflags=doctest.ELLIPSIS).failed == 0

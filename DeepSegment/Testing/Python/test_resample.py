"""DeepSegmentLib.resample: model grids cover the input, and resampling puts values at their physical place."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from DeepSegmentLib.resample import Grid, model_grid, resample, same_grid
from geometry_cases import empty_image, rotation


OBLIQUE = empty_image((20, 16, 9), (0.7, 0.9, 2.5), (3.0, -4.0, 10.0), rotation(0, 25) @ rotation(2, 40))


def voxel_centres(grid: Grid) -> np.ndarray:
    """LPS points of every voxel centre, in NumPy (z, y, x) order, shape Z×Y×X×3."""
    k, j, i = np.indices(tuple(reversed(grid.size)), dtype=float)
    index = np.stack([i, j, k, np.ones_like(i)], axis=-1)
    return (index @ grid.index_to_physical.T)[..., :3]


def test_native_orientation_and_spacing_give_the_input_grid():
    assert same_grid(model_grid(OBLIQUE, None, "native"), Grid.from_image(OBLIQUE))


@pytest.mark.parametrize("orientation", ["RAS", "LPS"])
def test_an_axis_aligned_grid_covers_every_corner_of_an_oblique_input(orientation):
    grid = model_grid(OBLIQUE, (1.0, 1.0, 1.0), orientation)
    expected = {"RAS": (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0), "LPS": (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)}
    assert grid.direction == expected[orientation] and grid.spacing == (1.0, 1.0, 1.0)
    to_index = np.linalg.inv(grid.index_to_physical)
    for corner in itertools.product(*[(-0.5, n - 0.5) for n in OBLIQUE.GetSize()]):
        point = OBLIQUE.TransformContinuousIndexToPhysicalPoint(corner)
        index = (to_index @ [*point, 1.0])[:3]
        assert np.all(index >= -0.5 - 1e-9) and np.all(index <= np.array(grid.size) - 0.5 + 1e-9)
    # and no more than a voxel of margin beyond the bounding box on each side
    extent = np.ptp([OBLIQUE.TransformContinuousIndexToPhysicalPoint(c) for c in itertools.product(
        *[(-0.5, n - 0.5) for n in OBLIQUE.GetSize()])], axis=0)
    assert np.all(np.array(grid.size) <= np.ceil(extent) + 1)


def test_native_spacing_follows_the_closest_input_axis():
    # voxel axis i runs along y, j along z, k along x
    swapped = empty_image((10, 10, 10), (0.5, 1.0, 3.0), (0, 0, 0), [[0, 0, 1], [1, 0, 0], [0, 1, 0]])
    assert model_grid(swapped, None, "LPS").spacing == (3.0, 0.5, 1.0)


def test_bad_preprocessing_is_refused():
    with pytest.raises(ValueError, match="orientation"):
        model_grid(OBLIQUE, None, "PIR")
    with pytest.raises(ValueError, match="positive"):
        model_grid(OBLIQUE, (1.0, 0.0, 1.0), "RAS")


@pytest.mark.parametrize("orientation", ["RAS", "LPS", "native"])
def test_trilinear_resampling_reproduces_a_linear_field_at_the_physical_points(orientation):
    """A linear function of position is reproduced exactly by trilinear interpolation inside the input."""
    source = Grid.from_image(OBLIQUE)
    field = lambda points: points @ np.array([0.3, -1.2, 0.7]) + 5.0  # noqa: E731
    volume = torch.from_numpy(field(voxel_centres(source)).astype(np.float32))[None]
    target = model_grid(OBLIQUE, (0.8, 1.1, 1.3), orientation)
    result = resample(volume, source, target)[0].numpy()
    points = voxel_centres(target)
    # only target points whose trilinear neighbourhood lies inside the source
    index = (points.reshape(-1, 3) - source.origin) @ np.linalg.inv(source.index_to_physical[:3, :3]).T
    inside = np.all((index >= 0) & (index <= np.array(source.size) - 1), axis=1).reshape(result.shape)
    assert inside.sum() > 500
    np.testing.assert_allclose(result[inside], field(points)[inside], atol=2e-3)


def test_nearest_back_and_forth_through_a_flipped_grid_is_the_identity():
    ras_like = empty_image((7, 6, 5), (0.6, 0.9, 2.0), (4.0, -3.0, 2.0), np.diag([-1.0, -1.0, 1.0]))
    source = Grid.from_image(ras_like)
    volume = torch.arange(np.prod(source.size), dtype=torch.float32).reshape(1, *reversed(source.size))
    flipped = model_grid(ras_like, None, "LPS")
    there = resample(volume, source, flipped, "nearest")
    assert torch.equal(there, volume.flip(2, 3))
    assert torch.equal(resample(there, flipped, source, "nearest"), volume)


def test_a_one_voxel_thick_source_is_sampled_exactly():
    thin = empty_image((6, 5, 1), (1.0, 1.0, 3.0), (0, 0, 0), np.eye(3))
    volume = torch.rand(1, 1, 5, 6, generator=torch.Generator().manual_seed(0))
    target = model_grid(thin, (1.0, 1.0, 1.0), "LPS")
    result = resample(volume, Grid.from_image(thin), target)
    assert target.size == (6, 5, 3)
    for z in range(3):
        torch.testing.assert_close(result[:, z], volume[:, 0])


def test_integer_volumes_are_resampled_as_float_and_shapes_are_checked():
    source = Grid.from_image(OBLIQUE)
    labels = torch.ones((1, *reversed(source.size)), dtype=torch.uint8)
    assert resample(labels, source, source, "nearest").dtype == torch.float32
    with pytest.raises(ValueError, match="does not lie on a grid"):
        resample(labels[:, :-1], source, source)

"""The augmentation engine (TrainingDataExportLib.augmentation): known answers, label safety, seeding, and the
composed grid against the same transforms applied one at a time."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from TrainingDataExportLib import augmentation
from TrainingDataExportLib.augmentation import (
    AugmentationSettings,
    SampleParameters,
    add_noise,
    adjust_contrast,
    adjust_gamma,
    apply_parameters,
    augment,
    bias_field,
    control_point_counts,
    draw_parameters,
    linear_part,
    rotation_matrix,
    sample_seed,
    sampling_grid,
    simulate_thick_slices,
)

# Every change, always: what the tests of the whole pipeline need.
EVERYTHING = AugmentationSettings(
    elastic_probability=1.0, flip_probability=(0.5, 0.5, 0.5), thick_slice_probability=1.0, blur_probability=1.0,
    bias_field_probability=1.0, gamma_probability=1.0, contrast_probability=1.0, noise_probability=1.0,
)
NOTHING = AugmentationSettings(
    affine_probability=0.0, elastic_probability=0.0, thick_slice_probability=0.0, blur_probability=0.0,
    bias_field_probability=0.0, gamma_probability=0.0, contrast_probability=0.0, noise_probability=0.0,
)
INTENSITY_ONLY = AugmentationSettings(
    affine_probability=0.0, elastic_probability=0.0, thick_slice_probability=1.0, blur_probability=1.0,
    bias_field_probability=1.0, gamma_probability=1.0, contrast_probability=1.0, noise_probability=1.0,
)


def volume(shape=(6, 7, 8), seed=0, batch=1) -> torch.Tensor:
    return torch.rand((batch, 1, *shape), generator=torch.Generator().manual_seed(seed))


def label_volume(shape=(6, 7, 8), seed=0, values=(0, 1, 2, 7), dtype=torch.uint8) -> torch.Tensor:
    indices = torch.randint(0, len(values), (1, 1, *shape), generator=torch.Generator().manual_seed(seed))
    return torch.tensor(values, dtype=dtype)[indices]


def distance_mm(shape, spacing, center_mm=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Each voxel's distance (mm) from ``center_mm`` (x, y, z, from the volume's centre)."""
    z, y, x = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s - c
                            for n, s, c in zip(shape, spacing[::-1], center_mm[::-1])], indexing="ij")
    return np.sqrt(x**2 + y**2 + z**2)


def dice(first: np.ndarray, second: np.ndarray) -> float:
    return 2.0 * np.logical_and(first, second).sum() / (first.sum() + second.sum())


# -- identity and known answers -----------------------------------------------------------------------------


@pytest.mark.parametrize("label_mode", ["nearest", "onehot"])
def test_identity_parameters_give_the_input_back_exactly(label_mode):
    image = volume(batch=3) * 1000 - 200
    labels = label_volume(dtype=torch.int64).expand(3, -1, -1, -1, -1)
    batch = apply_parameters(image, labels, (0.7, 1.3, 2.5), [SampleParameters.identity()] * 3,
                             label_mode=label_mode)
    assert torch.equal(batch.images, image)
    assert torch.equal(batch.labels, labels) and batch.labels.dtype == torch.int64
    # Settings that change nothing draw identity parameters.
    nothing = augment(image, labels, (0.7, 1.3, 2.5), [1, 2, 3], NOTHING)
    assert all(p.spatial_identity and p.intensity_identity for p in nothing.parameters)
    assert torch.equal(nothing.images, image) and torch.equal(nothing.labels, labels)


def test_identity_grid_is_torchs_identity_grid_for_any_spacing_shape_and_slab():
    shape, spacing = (5, 6, 9), (0.7, 1.3, 2.5)
    expected = torch.nn.functional.affine_grid(torch.eye(3, 4)[None], (1, 1, *shape), align_corners=False)[0]
    assert torch.allclose(sampling_grid(SampleParameters(), shape, spacing), expected, atol=1e-6)
    assert torch.allclose(sampling_grid(SampleParameters(), shape, spacing, rows=slice(2, 4)), expected[2:4],
                          atol=1e-6)
    # Resampled through grid_sample all the same (an output centre offset of 0 forces it): within rounding.
    image = volume(shape)
    sampled = apply_parameters(image, None, spacing, [SampleParameters()], centers_mm=[(1e-12, 0.0, 0.0)])
    assert torch.allclose(sampled.images, image, atol=1e-5)


def test_a_quarter_turn_about_z_permutes_voxels_as_numpy_does():
    n, spacing = 6, (1.5, 1.5, 3.0)  # anisotropic along z only: a turn about z maps voxels onto voxels
    image, labels = volume((4, n, n)), label_volume((4, n, n))
    quarter = SampleParameters(linear=rotation_matrix([0.0, 0.0, math.pi / 2]))
    batch = apply_parameters(image, labels, spacing, [quarter])
    # Output offset (x, y) samples the source at (-y, x): out[k, j, i] = source[k, i, n - 1 - j].
    expected = np.rot90(labels[0, 0].numpy(), k=1, axes=(1, 2))
    k, j, i = np.meshgrid(range(4), range(n), range(n), indexing="ij")
    assert np.array_equal(expected, labels[0, 0].numpy()[k, i, n - 1 - j])
    assert np.array_equal(batch.labels[0, 0].numpy(), expected)
    assert np.allclose(batch.images[0, 0].numpy(), np.rot90(image[0, 0].numpy(), k=1, axes=(1, 2)), atol=1e-5)


@pytest.mark.parametrize("flips", [(True, False, False), (False, True, True), (True, True, True)])
def test_flips_match_numpy(flips):
    image, labels = volume((5, 6, 7)), label_volume((5, 6, 7))
    batch = apply_parameters(image, labels, (0.8, 1.0, 2.0), [SampleParameters(flips=flips)])
    axes = [dimension for dimension, flipped in zip((4, 3, 2), flips) if flipped]
    assert torch.equal(batch.labels, labels.flip(axes))
    assert torch.allclose(batch.images, image.flip(axes), atol=1e-5)


@pytest.mark.parametrize("image_padding, outside", [("minimum", -50.0), ("zeros", 0.0), ("border", None)])
def test_a_translation_by_whole_voxels_shifts_them_and_pads_outside(image_padding, outside):
    spacing = (1.5, 2.0, 3.0)
    image, labels = volume() * 100 - 50, label_volume()
    image[0, 0, 0, 0, 0] = -50.0  # the minimum
    shifted = SampleParameters(translation_mm=np.array([0.0, 2 * spacing[1], 0.0]))  # two voxels along y
    batch = apply_parameters(image, labels, spacing, [shifted], image_padding=image_padding)
    # Output row j shows source row j + 2 (y is the H dimension, 3); the last two rows are outside.
    assert torch.equal(batch.labels[:, :, :, :-2], labels[:, :, :, 2:])
    assert torch.all(batch.labels[:, :, :, -2:] == 0)
    assert torch.allclose(batch.images[:, :, :, :-2], image[:, :, :, 2:], atol=1e-4)
    if outside is not None:
        assert torch.allclose(batch.images[:, :, :, -2:], torch.tensor(outside), atol=1e-4)
    else:
        assert torch.allclose(batch.images[:, :, :, -2:], image[:, :, :, -1:].expand(-1, -1, -1, 2, -1), atol=1e-4)


def test_the_callers_images_are_never_changed_whatever_their_dtype():
    ct = (volume() * 1000 - 1000).to(torch.int16)
    as_float = ct.float()
    kept = (ct.clone(), as_float.clone())
    shifted = [SampleParameters(translation_mm=np.array([0.0, 2.0, 0.0]), gamma=0.5)]
    from_integers = apply_parameters(ct, None, (1.0, 1.0, 1.0), shifted).images
    from_floats = apply_parameters(as_float, None, (1.0, 1.0, 1.0), shifted).images
    assert torch.equal(ct, kept[0]) and torch.equal(as_float, kept[1])
    assert torch.equal(from_integers, from_floats) and from_integers.dtype == torch.float32


def test_a_patch_centred_off_the_middle_is_that_block_of_the_source():
    spacing = (1.0, 2.0, 0.5)
    image, labels = volume((10, 12, 14)), label_volume((10, 12, 14))
    # A 4×5×6 patch over the block that starts at voxel (k, j, i) = (4, 1, 5): its centre, in mm from the middle.
    start, size = np.array([4, 1, 5]), np.array([4, 5, 6])
    center_index = start + (size - 1) / 2.0  # k, j, i
    center_mm = ((center_index - (np.array([10, 12, 14]) - 1) / 2.0) * spacing[::-1])[::-1]
    batch = apply_parameters(image, labels, spacing, [SampleParameters()], output_shape=tuple(size),
                             centers_mm=[center_mm])  # one centre per sample (of one)
    block = (slice(None), slice(None), *[slice(a, a + b) for a, b in zip(start, size)])
    assert torch.equal(batch.labels, labels[block])
    assert torch.allclose(batch.images, image[block], atol=1e-5)


def test_rotations_are_about_physical_axes_so_a_sphere_stays_a_sphere_on_anisotropic_voxels():
    shape, spacing = (16, 40, 40), (1.0, 1.0, 3.0)
    sphere = (distance_mm(shape, spacing) <= 12.0).astype(np.uint8)
    labels = torch.from_numpy(sphere)[None, None]
    tilted = SampleParameters(linear=rotation_matrix([math.radians(40), math.radians(-30), 0.0]))
    turned = apply_parameters(labels.float(), labels, spacing, [tilted]).labels[0, 0].numpy()
    assert dice(turned, sphere) > 0.93
    # The same angles in voxel units (spacing ignored) squash the sphere (an ellipsoid in voxels) badly.
    in_voxels = apply_parameters(labels.float(), labels, (1.0, 1.0, 1.0), [tilted]).labels[0, 0].numpy()
    assert dice(in_voxels, sphere) < 0.8


def test_a_direction_makes_rotations_about_patient_axes():
    # Voxel axes i, j, k point along patient z, x, y: a turn about patient z is a turn about the voxel i axis.
    direction = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    angle = 0.3
    about_patient_z = SampleParameters(linear=rotation_matrix([0.0, 0.0, angle]),
                                       translation_mm=np.array([0.0, 0.0, 2.0]))
    about_voxel_x = SampleParameters(linear=rotation_matrix([angle, 0.0, 0.0]),
                                     translation_mm=np.array([2.0, 0.0, 0.0]))
    shape, spacing = (6, 7, 8), (1.0, 1.5, 2.0)
    assert torch.allclose(sampling_grid(about_patient_z, shape, spacing, direction=direction.flatten()),
                          sampling_grid(about_voxel_x, shape, spacing), atol=1e-6)


# -- labels --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("label_mode", ["nearest", "onehot"])
def test_labels_stay_within_the_label_set_under_heavy_changes(seed, label_mode):
    image, labels = volume((16, 16, 16), seed), label_volume((16, 16, 16), seed, values=(0, 3, 5, 200))
    heavy = AugmentationSettings(rotation_degrees=(45.0, 45.0, 45.0), scale_range=(0.6, 1.6), shear=0.3,
                                 elastic_probability=1.0, elastic_control_spacing_mm=6.0,
                                 elastic_displacement_mm=5.0, flip_probability=(0.5, 0.5, 0.5))
    batch = augment(image, labels, (1.0, 1.2, 0.9), [seed, seed + 10], heavy, output_shape=(12, 13, 14),
                    label_mode=label_mode)
    assert batch.labels.dtype == torch.uint8 and batch.labels.shape == (2, 1, 12, 13, 14)
    assert set(batch.labels.unique().tolist()) <= {0, 3, 5, 200}


def test_onehot_labels_follow_a_magnified_shape_more_closely_than_nearest():
    """The measured reason to offer "onehot": fewer wrong voxels against the shape's exact transform."""
    shape, spacing = (24, 24, 24), (2.0, 2.0, 2.0)
    distance = distance_mm(shape, spacing)
    labels = torch.from_numpy((distance <= 13).astype(np.uint8) + (distance <= 7))[None, None]
    for scale in (2.0, 1.5):
        magnified = SampleParameters(linear=linear_part([0.3, 0.2, 0.1], [scale] * 3))
        truth = (distance / scale <= 13).astype(np.uint8) + (distance / scale <= 7)  # a sphere turns into itself
        wrong = {mode: int((apply_parameters(labels.float(), labels, spacing, [magnified], label_mode=mode)
                            .labels[0, 0].numpy() != truth).sum()) for mode in ("nearest", "onehot")}
        assert wrong["onehot"] < 0.85 * wrong["nearest"], wrong


def test_probability_maps_are_resampled_linearly_and_never_touched_by_intensity_changes():
    image = volume((10, 11, 12)) * 300
    probabilities = torch.softmax(volume((10, 11, 12), seed=1, batch=1).expand(1, 3, -1, -1, -1) * 4
                                  + torch.arange(3.0).view(1, 3, 1, 1, 1), dim=1)
    seeds = [3, 4]
    intensity = augment(image, probabilities, (1.0, 1.0, 1.0), seeds, INTENSITY_ONLY, label_mode="linear")
    assert not torch.equal(intensity.images, image.expand(2, -1, -1, -1, -1))
    assert torch.equal(intensity.labels, probabilities.expand(2, -1, -1, -1, -1))
    # With spatial changes too: the same maps as with the spatial changes alone.
    both = augment(image, probabilities, (1.0, 1.0, 1.0), seeds, EVERYTHING, label_mode="linear")
    spatial_only = [SampleParameters(linear=p.linear, translation_mm=p.translation_mm, flips=p.flips,
                                     elastic_mm=p.elastic_mm, elastic_spacing_mm=p.elastic_spacing_mm)
                    for p in both.parameters]
    alone = apply_parameters(image, probabilities, (1.0, 1.0, 1.0), spatial_only, label_mode="linear")
    assert torch.equal(both.labels, alone.labels)
    inside = alone.labels.sum(dim=1) > 0.999  # wholly inside the source: the maps still sum to one
    assert torch.allclose(alone.labels.sum(dim=1)[inside], torch.tensor(1.0), atol=1e-5)


# -- seeding -------------------------------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_sample_whatever_the_batch_and_another_seed_another():
    image, labels = volume((12, 14, 16)), label_volume((12, 14, 16))
    spacing, seeds = (1.0, 1.2, 2.0), [sample_seed(7, 0, index) for index in range(3)]
    batch = augment(image, labels, spacing, seeds, EVERYTHING, output_shape=(8, 8, 8), centers_mm=(1.0, 0.0, 0.0))
    again = augment(image, labels, spacing, seeds, EVERYTHING, output_shape=(8, 8, 8), centers_mm=(1.0, 0.0, 0.0))
    assert torch.equal(batch.images, again.images) and torch.equal(batch.labels, again.labels)
    alone = augment(image, labels, spacing, seeds[1:2], EVERYTHING, output_shape=(8, 8, 8),
                    centers_mm=(1.0, 0.0, 0.0))
    assert torch.equal(alone.images[0], batch.images[1]) and torch.equal(alone.labels[0], batch.labels[1])
    assert not torch.equal(batch.images[0], batch.images[1])


def test_one_setting_changes_only_its_own_transform():
    """Each transform has its own stream: turning gamma off keeps the geometry and the noise drawn."""
    with_gamma = draw_parameters(11, EVERYTHING, (20, 20, 20), (1.0, 1.0, 1.0))
    without = draw_parameters(11, AugmentationSettings(**{**EVERYTHING.to_dict(), "gamma_probability": 0.0}),
                              (20, 20, 20), (1.0, 1.0, 1.0))
    assert with_gamma.gamma != 1.0 and without.gamma == 1.0
    assert np.array_equal(with_gamma.linear, without.linear)
    assert np.array_equal(with_gamma.elastic_mm, without.elastic_mm)
    assert (with_gamma.noise_std, with_gamma.noise_seed) == (without.noise_std, without.noise_seed)


def test_drawn_values_stay_within_their_ranges():
    chosen = AugmentationSettings(rotation_degrees=(0.0, 0.0, 20.0), scale_range=(0.9, 1.2), shear=0.0,
                                  translation_mm=(5.0, 0.0, 0.0), elastic_probability=1.0,
                                  elastic_displacement_mm=3.0, gamma_probability=1.0, gamma_range=(0.8, 1.25))
    for seed in range(30):
        p = draw_parameters(seed, chosen, (32, 32, 16), (1.0, 1.0, 2.0))
        # Only about z: z is kept, and the in-plane part is a rotation scaled by 1 / scale.
        about_z_only = np.zeros((3, 3))
        about_z_only[:2, :2], about_z_only[2, 2] = p.linear[:2, :2], p.linear[2, 2]
        assert np.allclose(p.linear, about_z_only)
        scale = 1.0 / p.linear[2, 2]
        assert 0.9 <= scale <= 1.2 and np.allclose(np.linalg.svd(p.linear)[1], 1.0 / scale)
        assert abs(math.degrees(math.atan2(p.linear[1, 0], p.linear[0, 0]))) <= 20.0
        assert abs(p.translation_mm[0]) <= 5.0 and not np.any(p.translation_mm[1:])
        assert p.elastic_mm.shape == (3, *control_point_counts((32, 32, 16), (1.0, 1.0, 2.0), 40.0))
        assert np.abs(p.elastic_mm).max() <= 3.0 and 0.8 <= p.gamma <= 1.25


def test_elastic_displacements_stay_within_their_magnitude_in_mm():
    spacing, shape = (0.8, 1.0, 2.5), (12, 30, 40)
    p = draw_parameters(2, AugmentationSettings(affine_probability=0.0, elastic_probability=1.0,
                                                elastic_displacement_mm=4.0), shape, spacing)
    half_extent_mm = torch.tensor([n * s / 2 for n, s in zip(shape[::-1], spacing)])
    moved_mm = (sampling_grid(p, shape, spacing) - sampling_grid(SampleParameters(), shape, spacing)) * half_extent_mm
    assert moved_mm.abs().max() <= 4.0 + 1e-4
    assert moved_mm.abs().max() > 1.0  # and it does move


def test_a_large_output_is_sampled_in_slabs_with_the_same_result(monkeypatch):
    image, labels = volume((9, 10, 11)), label_volume((9, 10, 11))
    whole = augment(image, labels, (1.0, 1.0, 1.0), [4, 5], EVERYTHING)
    monkeypatch.setattr(augmentation, "_GRID_SLAB_VOXELS", 10 * 11 * 2)
    slabs = augment(image, labels, (1.0, 1.0, 1.0), [4, 5], EVERYTHING)
    assert torch.equal(whole.labels, slabs.labels) and torch.allclose(whole.images, slabs.images, atol=1e-6)


# -- intensity -----------------------------------------------------------------------------------------------


def test_thick_slices_average_blocks_along_one_axis_and_leave_the_others():
    image = volume((12, 5, 6))
    thick = simulate_thick_slices(image, 2, 3.0)  # z: 4 slices of 3 voxels
    block_means = image[0, 0].reshape(4, 3, 5, 6).mean(dim=1)
    # The middle voxel of each block is the thick slice's centre: it holds the block's mean.
    assert torch.allclose(thick[0, 0, 1::3], block_means, atol=1e-6)
    # Between centres, a straight line; before the first and after the last, the outer slice.
    assert torch.allclose(thick[0, 0, 2], (2 * block_means[0] + block_means[1]) / 3, atol=1e-6)
    assert torch.allclose(thick[0, 0, 0], block_means[0], atol=1e-6)
    # A volume that varies along x and y only is unchanged; so is every axis but the chosen one.
    planar = image[:, :, :1].expand(-1, -1, 12, -1, -1)
    assert torch.allclose(simulate_thick_slices(planar, 2, 3.0), planar, atol=1e-6)
    assert torch.allclose(simulate_thick_slices(image, 2, 1.0), image, atol=1e-6)
    # Through the pipeline: thick slices along the drawn axis only.
    batch = apply_parameters(image, None, (1.0, 1.0, 1.0), [SampleParameters(thick_slices=(2, 3.0))])
    assert torch.allclose(batch.images, thick, atol=1e-6)


def test_the_bias_field_is_smooth_positive_bounded_and_multiplies_above_the_minimum():
    shape, spacing = (16, 20, 24), (1.0, 1.0, 2.0)
    coefficients = np.random.default_rng(0).uniform(-0.3, 0.3, control_point_counts(shape, spacing, 30.0))
    field = bias_field(coefficients, shape, spacing, 30.0)
    assert field.shape == shape
    assert float(field.min()) >= math.exp(-0.3) - 1e-6 and float(field.max()) <= math.exp(0.3) + 1e-6
    assert float(field.max() / field.min()) > 1.1  # it does vary
    # Smooth: neighbouring voxels differ by a small fraction only.
    assert float((field[..., 1:] / field[..., :-1]).log().abs().max()) < 0.05
    assert torch.allclose(bias_field(np.full((4, 4, 4), -0.2), shape, spacing, 30.0), torch.tensor(math.exp(-0.2)))
    # In the pipeline, intensities above the channel's minimum are scaled (CT's air stays air).
    ct = volume(shape) * 1000 - 1000
    ct[0, 0, 0, 0, 0] = -1000.0
    biased = apply_parameters(ct, None, spacing, [SampleParameters(bias_log_field=coefficients,
                                                                   bias_spacing_mm=30.0)]).images
    assert torch.allclose(biased, -1000.0 + (ct + 1000.0) * field, atol=1e-2)


def test_gamma_keeps_minimum_and_maximum_contrast_keeps_the_mean_and_noise_is_a_fraction_of_the_spread():
    image = volume((8, 9, 10)) * 50 + 10
    darker = adjust_gamma(image, 2.0)
    assert torch.isclose(darker.min(), image.min()) and torch.isclose(darker.max(), image.max())
    assert darker.mean() < image.mean()
    stretched = adjust_contrast(image, 1.5)
    assert torch.isclose(stretched.mean(), image.mean(), atol=1e-4)
    assert torch.isclose(stretched.std(), 1.5 * image.std(), rtol=1e-4)
    noisy = add_noise(image, 0.2, seed=9)
    assert torch.equal(noisy, add_noise(image, 0.2, seed=9)) and not torch.equal(noisy, add_noise(image, 0.2, 8))
    assert abs(float((noisy - image).std()) / float(image.std()) - 0.2) < 0.02


# -- the composed grid against one transform at a time --------------------------------------------------------


SHAPE, SPACING, CONTROL_SPACING = (20, 24, 28), (1.0, 1.5, 2.0), 12.0


def smooth_volume() -> torch.Tensor:
    z, y, x = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(SHAPE, SPACING[::-1])], indexing="ij")
    values = np.sin(2 * np.pi * x / 24) + np.cos(2 * np.pi * y / 30) + np.sin(2 * np.pi * (z + x) / 40)
    return torch.tensor(values, dtype=torch.float32)[None, None]


# No subnormal draws: a library loaded earlier in the test process (compiled with -ffast-math) may have set the
# processor to flush them to zero, and Hypothesis then refuses to draw them.
@settings(max_examples=25, deadline=None)
@given(
    angles=hnp.arrays(np.float64, 3, elements=st.floats(-0.3, 0.3, allow_subnormal=False)),
    scales=hnp.arrays(np.float64, 3, elements=st.floats(0.9, 1.1, allow_subnormal=False)),
    shear=hnp.arrays(np.float64, 6, elements=st.floats(-0.05, 0.05, allow_subnormal=False)),
    translation=hnp.arrays(np.float64, 3, elements=st.floats(-2.0, 2.0, allow_subnormal=False)),
    elastic=hnp.arrays(np.float64, (3, *control_point_counts(SHAPE, SPACING, CONTROL_SPACING)),
                       elements=st.floats(-3.0, 3.0, allow_subnormal=False)),
    flips=st.tuples(st.booleans(), st.booleans(), st.booleans()),
)
def test_the_composed_grid_equals_the_transforms_applied_one_at_a_time(angles, scales, shear, translation, elastic,
                                                                       flips):
    """Affine, then elastic, then flips, each a resample of the previous result, give the one-grid result up to
    interpolation error, wherever every intermediate sample point lies well inside its volume."""
    image = smooth_volume()
    linear = linear_part(angles, scales, shear)
    composed = SampleParameters(linear=linear, translation_mm=translation, elastic_mm=elastic,
                                elastic_spacing_mm=CONTROL_SPACING, flips=flips)
    steps = [SampleParameters(linear=linear, translation_mm=translation),
             SampleParameters(elastic_mm=elastic, elastic_spacing_mm=CONTROL_SPACING),
             SampleParameters(flips=flips)]
    once = apply_parameters(image, None, SPACING, [composed], image_padding="zeros").images
    in_turn = image
    for step in steps:
        in_turn = apply_parameters(in_turn, None, SPACING, [step], image_padding="zeros").images
    margin = torch.tensor([3.0 * 2 / n for n in SHAPE[::-1]])  # three voxels, in grid_sample's units
    final_points = sampling_grid(composed, SHAPE, SPACING)
    elastic_points = sampling_grid(SampleParameters(elastic_mm=elastic, elastic_spacing_mm=CONTROL_SPACING,
                                                    flips=flips), SHAPE, SPACING)
    inside = ((final_points.abs() <= 1 - margin).all(-1) & (elastic_points.abs() <= 1 - margin).all(-1))
    assert inside.float().mean() > 0.1
    error = (once - in_turn)[0, 0][inside].abs()
    assert float(error.max()) < 0.08 and float(error.mean()) < 0.02


# -- settings ------------------------------------------------------------------------------------------------


def test_settings_round_trip_through_json_and_refuse_unknown_or_inconsistent_values():
    import json

    settings_ = AugmentationSettings(rotation_degrees=(0.0, 0.0, 30.0), thick_slice_axes=(2,))
    assert AugmentationSettings.from_dict(json.loads(json.dumps(settings_.to_dict()))) == settings_
    with pytest.raises(ValueError, match="unknown augmentation settings: rotation"):
        AugmentationSettings.from_dict({"rotation": 10})
    with pytest.raises(ValueError, match="probability"):
        AugmentationSettings(noise_probability=1.5)
    with pytest.raises(ValueError, match="thick_slice_factor_range"):
        AugmentationSettings(thick_slice_factor_range=(0.5, 2.0))
    with pytest.raises(ValueError, match="3 values"):
        AugmentationSettings(flip_probability=(0.5, 0.5))


def test_inputs_that_do_not_fit_are_refused_with_the_reason():
    image, labels = volume(batch=2), label_volume()
    with pytest.raises(ValueError, match="2 volumes for 3 samples"):
        augment(image, labels, (1.0, 1.0, 1.0), [1, 2, 3])
    with pytest.raises(ValueError, match="batch, channels, D, H, W"):
        augment(image[0], None, (1.0, 1.0, 1.0), [1, 2])
    with pytest.raises(ValueError, match="do not match"):
        augment(image, labels[:, :, :3], (1.0, 1.0, 1.0), [1, 2])
    with pytest.raises(ValueError, match="spacing"):
        augment(image, None, [(1.0, 1.0, 1.0)] * 3, [1, 2])
    with pytest.raises(ValueError, match="label_mode"):
        augment(image, labels, (1.0, 1.0, 1.0), [1, 2], label_mode="cubic")
    small = draw_parameters(1, AugmentationSettings(elastic_probability=1.0, elastic_control_spacing_mm=2.0),
                            (4, 4, 4), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="do not cover an output of"):
        apply_parameters(volume((16, 16, 16)), None, (1.0, 1.0, 1.0), [small])


# -- devices -------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_gives_what_the_cpu_gives():
    image, labels = volume((32, 32, 32)), label_volume((32, 32, 32))
    on_cpu = augment(image, labels, (1.0, 1.0, 1.0), [1, 2], EVERYTHING, output_shape=(24, 24, 24))
    on_gpu = augment(image, labels, (1.0, 1.0, 1.0), [1, 2], EVERYTHING, output_shape=(24, 24, 24), device="cuda")
    assert on_gpu.images.device.type == "cuda" and on_gpu.labels.device.type == "cuda"
    # The noise comes from the GPU's generator: compare without it.
    without_noise = [SampleParameters(**{**p.__dict__, "noise_std": 0.0}) for p in on_cpu.parameters]
    cpu = apply_parameters(image, labels, (1.0, 1.0, 1.0), without_noise, output_shape=(24, 24, 24))
    gpu = apply_parameters(image, labels, (1.0, 1.0, 1.0), without_noise, output_shape=(24, 24, 24), device="cuda")
    assert torch.allclose(gpu.images.cpu(), cpu.images, atol=1e-3)
    assert float((gpu.labels.cpu() != cpu.labels).float().mean()) < 1e-3  # nearest ties may round apart
    again = augment(image, labels, (1.0, 1.0, 1.0), [1, 2], EVERYTHING, output_shape=(24, 24, 24), device="cuda")
    assert torch.allclose(again.images, on_gpu.images, atol=1e-5)

"""Heavy, seeded 3D augmentation in plain torch for training the demo model on a single template.

Spatial: a random affine (rotation about each axis, scale, translation) and an elastic deformation (a
coarse random displacement grid upsampled smoothly) are composed into ONE sampling grid, which is applied
with a single ``grid_sample`` to the image (trilinear) and a single one to the labels (nearest, so label
values stay label values). The grid is built for the output only, so a 64³ crop costs a 64³ resample
whatever the size of the source volume.

Image only, on intensities scaled to about 0..1: lower resolution along one random axis (area-averaged
down by 1–3×, then back), gamma, contrast scale and shift, a smooth multiplicative bias field, Gaussian
noise.

All randomness comes from the ``torch.Generator`` passed in, so a seed gives the same sample every time.

Tensors are (batch=1, channel=1, D, H, W), D/H/W being the K/J/I axes of a SimpleITK array; points
and displacements are in millimetres in (x, y, z) = (I, J, K) order, as ``grid_sample`` wants them.

Example::

    >>> import torch
    >>> image = torch.rand(1, 1, 20, 24, 28); labels = torch.randint(0, 3, (1, 1, 20, 24, 28)).float()
    >>> sample = augment(image, labels, (2.0, 2.0, 2.0), (16, 16, 16), torch.Generator().manual_seed(1))
    >>> sample.image.shape, sorted(set(sample.labels.unique().tolist())) <= [0.0, 1.0, 2.0]
    (torch.Size([1, 1, 16, 16, 16]), True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional


@dataclass(frozen=True)
class AugmentationSettings:
    """Ranges of each random change; ``probability`` is the chance of each image-only change."""

    rotation_degrees: float = 20.0
    scale_range: tuple = (0.85, 1.15)
    translation_mm: float = 10.0
    elastic_control_points: int = 5
    elastic_mm: float = 4.0
    resolution_factor_range: tuple = (1.0, 3.0)
    gamma_range: tuple = (0.7, 1.5)
    contrast_range: tuple = (0.85, 1.15)
    shift_range: tuple = (-0.1, 0.1)
    bias_field_strength: float = 0.3
    bias_control_points: int = 3
    noise_std_max: float = 0.05
    probability: float = 0.7


@dataclass(frozen=True)
class Sample:
    image: torch.Tensor
    labels: torch.Tensor


def _uniform(generator: torch.Generator, low: float, high: float, count: int = 1) -> torch.Tensor:
    return low + (high - low) * torch.rand(count, generator=generator, dtype=torch.float64)


def _happens(generator: torch.Generator, probability: float) -> bool:
    return bool(torch.rand(1, generator=generator) < probability)


def rotation_matrix(angles: torch.Tensor) -> torch.Tensor:
    """The 3×3 rotation by ``angles`` (radians) about x, then y, then z."""
    cx, cy, cz = torch.cos(angles).tolist()
    sx, sy, sz = torch.sin(angles).tolist()
    about_x = torch.tensor([[1, 0, 0], [0, cx, -sx], [0, sx, cx]], dtype=torch.float64)
    about_y = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]], dtype=torch.float64)
    about_z = torch.tensor([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]], dtype=torch.float64)
    return about_z @ about_y @ about_x


def random_affine(generator: torch.Generator, settings: AugmentationSettings) -> torch.Tensor:
    """A 3×4 matrix [A | t] in millimetres: an output offset p samples the source at A p + t."""
    limit = math.radians(settings.rotation_degrees)
    rotation = rotation_matrix(_uniform(generator, -limit, limit, 3))
    scales = _uniform(generator, *settings.scale_range, 3)
    translation = _uniform(generator, -settings.translation_mm, settings.translation_mm, 3)
    return torch.cat([rotation @ torch.diag(scales), translation[:, None]], dim=1)


def elastic_displacement(generator: torch.Generator, output_shape: Sequence[int],
                         settings: AugmentationSettings) -> torch.Tensor:
    """A smooth random displacement (3, D, H, W) in mm: Gaussian values on a coarse grid, upsampled."""
    points = settings.elastic_control_points
    coarse = torch.randn((1, 3, points, points, points), generator=generator) * settings.elastic_mm
    return functional.interpolate(coarse, size=tuple(output_shape), mode="trilinear", align_corners=True)[0]


def sampling_grid(
    source_shape: Sequence[int],
    spacing: Sequence[float],
    output_shape: Sequence[int],
    center_mm: Sequence[float] = (0.0, 0.0, 0.0),
    affine: torch.Tensor | None = None,
    displacement: torch.Tensor | None = None,
) -> torch.Tensor:
    """The ``grid_sample`` grid (1, d, h, w, 3) of an output of ``output_shape`` voxels of ``spacing`` mm.

    Output voxel offsets p from the output's centre (mm, xyz) sample the source at
    ``affine @ [p, 1] + center_mm + displacement(p)``, where ``center_mm`` is measured from the source's
    centre. Affine and elastic parts are composed here, so one resample applies both. With no affine, no
    displacement, a zero centre and equal shapes the grid samples each source voxel at its own centre.
    """
    spacing_xyz = torch.tensor(spacing, dtype=torch.float32)
    axes = [(torch.arange(n, dtype=torch.float32) - (n - 1) / 2.0) * s
            for n, s in zip(reversed(tuple(output_shape)), spacing_xyz)]
    # meshgrid over (z, y, x) gives (D, H, W) arrays; stacked back in x, y, z order.
    z, y, x = torch.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    points = torch.stack([x, y, z], dim=-1)
    if affine is not None:
        matrix = affine.to(torch.float32)
        points = points @ matrix[:, :3].T + matrix[:, 3]
    points = points + torch.tensor(center_mm, dtype=torch.float32)
    if displacement is not None:
        points = points + displacement.permute(1, 2, 3, 0)
    # align_corners=False: -1 and +1 are the outer faces of the first and last source voxels.
    half_extent = torch.tensor(list(reversed(tuple(source_shape))), dtype=torch.float32) * spacing_xyz / 2.0
    return (points / half_extent)[None]


def resample(image: torch.Tensor, labels: torch.Tensor, grid: torch.Tensor) -> Sample:
    """The image (trilinear) and labels (nearest) sampled on ``grid``; outside the source is 0."""
    return Sample(
        functional.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False),
        functional.grid_sample(labels, grid, mode="nearest", padding_mode="zeros", align_corners=False),
    )


def lower_resolution(image: torch.Tensor, axis: int, factor: float) -> torch.Tensor:
    """``image`` area-averaged down by ``factor`` along ``axis`` (0, 1, 2 = D, H, W) and interpolated back."""
    shape = list(image.shape[2:])
    coarse = list(shape)
    coarse[axis] = max(1, round(shape[axis] / factor))
    down = functional.adaptive_avg_pool3d(image, coarse)
    return functional.interpolate(down, size=shape, mode="trilinear", align_corners=False)


def bias_field(generator: torch.Generator, shape: Sequence[int], settings: AugmentationSettings) -> torch.Tensor:
    """A smooth positive multiplicative field (1, 1, D, H, W) around 1."""
    points = settings.bias_control_points
    coarse = torch.randn((1, 1, points, points, points), generator=generator) * settings.bias_field_strength
    return torch.exp(functional.interpolate(coarse, size=tuple(shape), mode="trilinear", align_corners=True))


def change_intensities(image: torch.Tensor, generator: torch.Generator, settings: AugmentationSettings) -> torch.Tensor:
    """Resolution, gamma, bias field, contrast/shift and noise, each with ``settings.probability``."""
    s = settings
    if _happens(generator, s.probability):
        axis = int(torch.randint(0, 3, (1,), generator=generator))
        image = lower_resolution(image, axis, float(_uniform(generator, *s.resolution_factor_range)))
    if _happens(generator, s.probability):
        log_low, log_high = math.log(s.gamma_range[0]), math.log(s.gamma_range[1])
        image = image.clamp(min=0.0) ** math.exp(float(_uniform(generator, log_low, log_high)))
    if _happens(generator, s.probability):
        image = image * bias_field(generator, image.shape[2:], s)
    if _happens(generator, s.probability):
        image = image * float(_uniform(generator, *s.contrast_range)) + float(_uniform(generator, *s.shift_range))
    if _happens(generator, s.probability):
        sigma = float(_uniform(generator, 0.0, s.noise_std_max))
        image = image + sigma * torch.randn(image.shape, generator=generator)
    return image


def augment(
    image: torch.Tensor,
    labels: torch.Tensor,
    spacing: Sequence[float],
    output_shape: Sequence[int],
    generator: torch.Generator,
    center_mm: Sequence[float] = (0.0, 0.0, 0.0),
    settings: AugmentationSettings = AugmentationSettings(),
) -> Sample:
    """One random variant of (image, labels) of ``output_shape`` voxels centred ``center_mm`` from the source's
    centre: spatial changes through one composed grid, then the image-only changes."""
    affine = random_affine(generator, settings)
    displacement = elastic_displacement(generator, output_shape, settings)
    grid = sampling_grid(image.shape[2:], spacing, output_shape, center_mm, affine, displacement)
    spatial = resample(image, labels, grid)
    return Sample(change_intensities(spatial.image, generator, settings), spatial.labels)

"""Seeded 3D augmentation of images and their segmentations, in PyTorch, on the CPU or a GPU.

What a training loop needs from augmentation, and what 2D tools do not give: ITK-style 3D changes in
physical units, cheap enough per batch that the network, not the augmentation, sets the pace.

- **Spatial**: a random affine (rotation about the image's physical axes, scaling, shear, translation), an
  elastic deformation (displacements in mm at the control points of a coarse cubic B-spline grid) and flips
  are composed into ONE sampling grid, applied with ONE ``grid_sample`` per sample to the image (trilinear)
  and one to the labels (nearest neighbour, so label values stay label values; or trilinear for probability
  maps, or one-hot trilinear then argmax). The grid is built for the output only, so a 96³ patch of a large
  volume costs a 96³ resample. Cubic B-splines reproduce linear functions exactly, so the affine part is
  folded into the spline's coefficients and the whole grid is one separable spline evaluation (three small
  matrix products) instead of a per-voxel matrix product plus an interpolated displacement field.
- **Intensity** (images only, never the labels): simulated thick slices (anisotropy: averaged down along one
  axis, then linearly back), Gaussian blur (sigma in mm), a smooth multiplicative bias field, gamma, contrast
  and Gaussian noise, in that order (acquisition first, noise last).

Everything random about a sample is drawn by :func:`draw_parameters` from the sample's own seed (NumPy
``SeedSequence``, one child stream per transform, every value drawn whether its transform happens or not),
into a :class:`SampleParameters` that can be logged, pickled, shown or applied again. The same seed and
settings give the same sample; on the CPU, bit for bit. A training loop gives each sample a seed from
:func:`sample_seed` (its run seed, epoch and index), so that samples do not depend on batch size or worker
count.

Conventions: tensors are (batch, channel, D, H, W), D/H/W being the K/J/I axes of a SimpleITK or Slicer
array; ``spacing``, points and displacements are (x, y, z) = (I, J, K) in millimetres; an output voxel's
offset ``p`` (mm, from the output's centre) samples the source at ``A (F p + e(F p)) + c + t`` where ``F``
flips, ``e`` is the elastic displacement, ``A`` the linear part, ``c`` the output centre's offset from the
source centre and ``t`` the translation. That is, in one resample, what resampling the source with the affine,
then that result with the elastic deformation, then flipping it would give (up to interpolation).

Example::

    >>> import torch
    >>> image = torch.rand(1, 1, 24, 28, 32)                      # (batch, channel, D, H, W)
    >>> labels = torch.randint(0, 3, (1, 1, 24, 28, 32), dtype=torch.uint8)
    >>> batch = augment(image, labels, spacing=(1.0, 1.0, 2.5), seeds=[sample_seed(0, 0, i) for i in range(2)],
    ...                 output_shape=(16, 16, 16))
    >>> batch.images.shape, batch.labels.dtype, set(batch.labels.unique().tolist()) <= {0, 1, 2}
    (torch.Size([2, 1, 16, 16, 16]), torch.uint8, True)
    >>> again = augment(image, labels, (1.0, 1.0, 2.5), [sample_seed(0, 0, 1)], output_shape=(16, 16, 16))
    >>> torch.equal(again.images[0], batch.images[1])
    True
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional

from ModelRegistryLib import CancelledError

LABEL_MODES = ("nearest", "linear", "onehot")
IMAGE_PADDINGS = ("minimum", "zeros", "border", "reflection")
AXIS_NAMES = ("x", "y", "z")
# The sampling grid is built for at most this many output voxels at a time (12 bytes each), so a preview of a
# large CT does not need gigabytes for it; a 128³ training patch is one slab.
_GRID_SLAB_VOXELS = 1 << 22
# Tensor dimension of each spatial axis (x, y, z) in (batch, channel, D, H, W).
_DIMENSION_OF_AXIS = (4, 3, 2)


# -- settings ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AugmentationSettings:
    """How often each change happens (``*_probability``) and within which ranges; JSON-able (:meth:`to_dict`).

    Per-axis values are (x, y, z). Rotations are uniform in ±degrees about each physical axis (x, then y,
    then z), scales uniform in ``scale_range`` (one factor for all axes when ``isotropic_scaling``; a factor
    above 1 magnifies the anatomy), each of the six shear terms uniform in ±``shear``, translations uniform
    in ±mm. Elastic control points lie ``elastic_control_spacing_mm`` apart over the output; each moves
    uniformly within ±``elastic_displacement_mm`` per axis, and so does every voxel (a B-spline stays within
    its coefficients). Thick slices are ``thick_slice_factor_range`` times the spacing along one of
    ``thick_slice_axes``. The bias field's logarithm stays within ±``bias_field_strength``. Gamma is
    log-uniform in ``gamma_range`` (applied between each channel's minimum and maximum, which it keeps);
    contrast scales around each channel's mean; noise has a standard deviation that is a fraction (uniform
    in ``noise_std_range``) of the channel's own, so the same settings fit CT numbers and normalized MR.

    The defaults follow the usual practice for small 3D datasets (nnU-Net's ranges, elastic as TorchIO's):
    every sample turned, scaled and sheared a little, half of them deformed, no flips (anatomy has a left
    and a right; enable them per axis where it does not matter).

    Example::

        >>> settings = AugmentationSettings(rotation_degrees=(0.0, 0.0, 30.0), flip_probability=(0.5, 0.0, 0.0))
        >>> AugmentationSettings.from_dict(settings.to_dict()) == settings
        True
        >>> AugmentationSettings(gamma_range=(1.5, 0.7))
        Traceback (most recent call last):
        ...
        ValueError: gamma_range must be (low, high) with 0 < low <= high, not (1.5, 0.7)
    """

    affine_probability: float = 1.0
    rotation_degrees: tuple = (15.0, 15.0, 15.0)
    scale_range: tuple = (0.85, 1.15)
    isotropic_scaling: bool = True
    shear: float = 0.05
    translation_mm: tuple = (10.0, 10.0, 10.0)
    elastic_probability: float = 0.5
    elastic_control_spacing_mm: float = 40.0
    elastic_displacement_mm: float = 6.0
    flip_probability: tuple = (0.0, 0.0, 0.0)
    thick_slice_probability: float = 0.2
    thick_slice_factor_range: tuple = (1.5, 4.0)
    thick_slice_axes: tuple = (0, 1, 2)
    blur_probability: float = 0.2
    blur_sigma_mm_range: tuple = (0.5, 1.5)
    bias_field_probability: float = 0.3
    bias_field_strength: float = 0.3
    bias_field_control_spacing_mm: float = 100.0
    gamma_probability: float = 0.3
    gamma_range: tuple = (0.7, 1.5)
    contrast_probability: float = 0.3
    contrast_range: tuple = (0.75, 1.25)
    noise_probability: float = 0.2
    noise_std_range: tuple = (0.0, 0.1)

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(item.default, tuple) and not isinstance(value, tuple):
                object.__setattr__(self, item.name, tuple(value))  # lists from JSON
        probabilities = [self.affine_probability, self.elastic_probability, *self.flip_probability,
                         self.thick_slice_probability, self.blur_probability, self.bias_field_probability,
                         self.gamma_probability, self.contrast_probability, self.noise_probability]
        if not all(0.0 <= p <= 1.0 for p in probabilities):
            raise ValueError("every probability must be between 0 and 1")
        for name in ("rotation_degrees", "translation_mm", "flip_probability"):
            if len(getattr(self, name)) != 3:
                raise ValueError(f"{name} must have 3 values (x, y, z)")
        _check_range("scale_range", self.scale_range, positive=True)
        _check_range("thick_slice_factor_range", self.thick_slice_factor_range, positive=True)
        _check_range("blur_sigma_mm_range", self.blur_sigma_mm_range)
        _check_range("gamma_range", self.gamma_range, positive=True)
        _check_range("contrast_range", self.contrast_range)
        _check_range("noise_std_range", self.noise_std_range)
        if self.thick_slice_factor_range[0] < 1.0:
            raise ValueError("thick_slice_factor_range must not go below 1 (slices thinner than the voxels)")
        if not self.thick_slice_axes or not set(self.thick_slice_axes) <= {0, 1, 2}:
            raise ValueError("thick_slice_axes must be some of 0, 1, 2 (x, y, z)")
        if self.elastic_control_spacing_mm <= 0 or self.bias_field_control_spacing_mm <= 0:
            raise ValueError("control point spacings must be positive")
        if min(self.shear, self.elastic_displacement_mm, self.bias_field_strength,
               *self.rotation_degrees, *self.translation_mm) < 0:
            raise ValueError("magnitudes (degrees, mm, shear, strength) must not be negative")

    def to_dict(self) -> dict:
        """The settings as a JSON-able dictionary (tuples become lists when written)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, document: dict) -> AugmentationSettings:
        """Settings from :meth:`to_dict`'s form; unknown names are refused (a typo would silently do nothing)."""
        unknown = set(document) - {item.name for item in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown augmentation settings: {', '.join(sorted(unknown))}")
        return cls(**document)


def _check_range(name: str, values: tuple, positive: bool = False) -> None:
    low_ok = values[0] > 0 if positive else values[0] >= 0
    if len(values) != 2 or not low_ok or values[0] > values[1]:
        bound = "0 < low" if positive else "0 <= low"
        raise ValueError(f"{name} must be (low, high) with {bound} <= high, not {values}")


# -- what is random about one sample -------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SampleParameters:
    """Everything random about one augmented sample; :meth:`identity` changes nothing.

    ``linear`` (3×3) maps output offsets to source offsets in mm, about the physical axes; ``elastic_mm``
    holds the (x, y, z) displacements of the control points, (3, nz, ny, nx), ``elastic_spacing_mm`` apart;
    ``flips`` are (x, y, z). ``thick_slices`` is (axis, factor), ``bias_log_field`` the coefficients of the
    bias field's logarithm, ``noise_std`` a fraction of each channel's standard deviation.

    Example::

        >>> SampleParameters.identity().spatial_identity, SampleParameters.identity().intensity_identity
        (True, True)
    """

    linear: np.ndarray = field(default_factory=lambda: np.eye(3))
    translation_mm: np.ndarray = field(default_factory=lambda: np.zeros(3))
    flips: tuple = (False, False, False)
    elastic_mm: np.ndarray | None = None
    elastic_spacing_mm: float = 0.0
    thick_slices: tuple | None = None
    blur_sigma_mm: float = 0.0
    bias_log_field: np.ndarray | None = None
    bias_spacing_mm: float = 0.0
    gamma: float = 1.0
    contrast: float = 1.0
    noise_std: float = 0.0
    noise_seed: int = 0

    @classmethod
    def identity(cls) -> SampleParameters:
        return cls()

    @property
    def spatial_identity(self) -> bool:
        return (np.array_equal(self.linear, np.eye(3)) and not np.any(self.translation_mm) and not any(self.flips)
                and self.elastic_mm is None)

    @property
    def intensity_identity(self) -> bool:
        return (self.thick_slices is None and self.blur_sigma_mm == 0.0 and self.bias_log_field is None
                and self.gamma == 1.0 and self.contrast == 1.0 and self.noise_std == 0.0)

    def describe(self) -> str:
        """What the changes are, in a few words (for a preview's name or tooltip).

        Example::

            >>> SampleParameters(linear=linear_part([0.0, 0.0, math.radians(12)], [1.1] * 3), gamma=0.8).describe()
            'turned 12°, magnified 1.10, gamma 0.80'
            >>> SampleParameters().describe()
            'unchanged'
        """
        words = []
        if not np.array_equal(self.linear, np.eye(3)):
            left, singular, right = np.linalg.svd(self.linear)
            turn = math.degrees(math.acos(np.clip((np.trace(left @ right) - 1.0) / 2.0, -1.0, 1.0)))
            low, high = sorted((1.0 / singular.max(), 1.0 / singular.min()))
            words.append(f"turned {turn:.0f}°")
            words.append(f"magnified {low:.2f}" if high - low < 0.005 else f"magnified {low:.2f}-{high:.2f}")
        if np.any(self.translation_mm):
            words.append(f"moved {np.linalg.norm(self.translation_mm):.1f} mm")
        if self.elastic_mm is not None:
            words.append(f"deformed (control points up to {np.abs(self.elastic_mm).max():.1f} mm)")
        words += [f"flipped {name}" for name, flipped in zip(AXIS_NAMES, self.flips) if flipped]
        if self.thick_slices is not None:
            words.append(f"{self.thick_slices[1]:.1f}× thicker slices along {AXIS_NAMES[self.thick_slices[0]]}")
        if self.blur_sigma_mm:
            words.append(f"blurred {self.blur_sigma_mm:.1f} mm")
        if self.bias_log_field is not None:
            words.append(f"bias field up to {math.exp(np.abs(self.bias_log_field).max()) - 1.0:.0%}")
        if self.gamma != 1.0:
            words.append(f"gamma {self.gamma:.2f}")
        if self.contrast != 1.0:
            words.append(f"contrast ×{self.contrast:.2f}")
        if self.noise_std:
            words.append(f"noise {self.noise_std:.0%}")
        return ", ".join(words) or "unchanged"


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of sample ``index`` of ``epoch`` in a run seeded ``seed``: independent streams for each.

    Example::

        >>> sample_seed(0, 0, 1) == sample_seed(0, 0, 1) != sample_seed(0, 1, 1)
        True
    """
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0])


def rotation_matrix(angles_rad: Sequence[float]) -> np.ndarray:
    """The 3×3 rotation by ``angles_rad`` about x, then y, then z (right-handed).

    Example::

        >>> np.round(rotation_matrix([0.0, 0.0, math.pi / 2]) @ [1.0, 0.0, 0.0], 6).tolist()
        [0.0, 1.0, 0.0]
    """
    cx, cy, cz = np.cos(angles_rad)
    sx, sy, sz = np.sin(angles_rad)
    about_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    about_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    about_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return about_z @ about_y @ about_x


def linear_part(angles_rad: Sequence[float], scales: Sequence[float],
                shear: Sequence[float] = (0.0,) * 6) -> np.ndarray:
    """``R · H · diag(1 / scales)``: output offsets to source offsets (a scale above 1 magnifies).

    ``shear`` is the six off-diagonal terms of ``H`` (xy, xz, yx, yz, zx, zy).

    Example::

        >>> linear_part([0, 0, 0], [2.0, 2.0, 0.5]).diagonal().tolist()
        [0.5, 0.5, 2.0]
    """
    shearing = np.eye(3)
    shearing[[0, 0, 1, 1, 2, 2], [1, 2, 0, 2, 0, 1]] = shear
    return rotation_matrix(angles_rad) @ shearing @ np.diag(1.0 / np.asarray(scales, dtype=np.float64))


def control_point_counts(output_shape: Sequence[int], spacing: Sequence[float], control_spacing_mm: float) -> tuple:
    """Control points (nz, ny, nx) of a cubic B-spline grid ``control_spacing_mm`` apart, centred on the output,
    that covers every output voxel with its four neighbours along each axis.

    Example::

        >>> control_point_counts((64, 128, 128), (1.0, 1.0, 2.0), 32.0)
        (7, 7, 7)
    """
    extents = [(n - 1) * s for n, s in zip(reversed(tuple(output_shape)), spacing)]
    return tuple(math.ceil(extent / control_spacing_mm - 1e-9) + 3 for extent in reversed(extents))


def draw_parameters(seed: int, settings: AugmentationSettings, output_shape: Sequence[int],
                    spacing: Sequence[float]) -> SampleParameters:
    """The random changes of one sample of ``output_shape`` voxels of ``spacing`` mm, drawn from ``seed``.

    Each transform draws from its own child stream of the seed, and draws its values whether it happens or not,
    so changing one setting never changes what the others draw.

    Example::

        >>> settings = AugmentationSettings(elastic_probability=1.0)
        >>> parameters = draw_parameters(7, settings, (32, 32, 32), (1.0, 1.0, 1.0))
        >>> parameters.elastic_mm.shape, bool(abs(parameters.elastic_mm).max() <= 6.0)
        ((3, 4, 4, 4), True)
        >>> np.array_equal(parameters.linear, draw_parameters(7, settings, (32, 32, 32), (1.0, 1.0, 1.0)).linear)
        True
    """
    s = settings
    streams = [np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(9)]
    happen, affine, elastic, thick, blur, bias, gamma, contrast, noise = streams
    happens = happen.random(11) < [
        s.affine_probability, s.elastic_probability, *s.flip_probability, s.thick_slice_probability,
        s.blur_probability, s.bias_field_probability, s.gamma_probability, s.contrast_probability,
        s.noise_probability,
    ]
    angles = np.radians(s.rotation_degrees) * affine.uniform(-1.0, 1.0, 3)
    scales = affine.uniform(*s.scale_range, 3)
    if s.isotropic_scaling:
        scales[:] = scales[0]
    shear = affine.uniform(-s.shear, s.shear, 6)
    translation = np.asarray(s.translation_mm) * affine.uniform(-1.0, 1.0, 3)
    elastic_counts = control_point_counts(output_shape, spacing, s.elastic_control_spacing_mm)
    displacements = elastic.uniform(-1.0, 1.0, (3, *elastic_counts)) * s.elastic_displacement_mm
    thick_axis = int(thick.choice(s.thick_slice_axes))
    thick_factor = float(thick.uniform(*s.thick_slice_factor_range))
    blur_sigma = float(blur.uniform(*s.blur_sigma_mm_range))
    bias_counts = control_point_counts(output_shape, spacing, s.bias_field_control_spacing_mm)
    bias_coefficients = bias.uniform(-1.0, 1.0, bias_counts) * s.bias_field_strength
    gamma_value = float(np.exp(gamma.uniform(*np.log(s.gamma_range))))
    contrast_value = float(contrast.uniform(*s.contrast_range))
    noise_std = float(noise.uniform(*s.noise_std_range))
    noise_seed = int(noise.integers(0, 2**63 - 1))
    return SampleParameters(
        linear=linear_part(angles, scales, shear) if happens[0] else np.eye(3),
        translation_mm=translation if happens[0] else np.zeros(3),
        flips=tuple(bool(value) for value in happens[2:5]),
        elastic_mm=displacements if happens[1] and s.elastic_displacement_mm else None,
        elastic_spacing_mm=s.elastic_control_spacing_mm,
        thick_slices=(thick_axis, thick_factor) if happens[5] and thick_factor > 1.0 else None,
        blur_sigma_mm=blur_sigma if happens[6] else 0.0,
        bias_log_field=bias_coefficients if happens[7] and s.bias_field_strength else None,
        bias_spacing_mm=s.bias_field_control_spacing_mm,
        gamma=gamma_value if happens[8] else 1.0,
        contrast=contrast_value if happens[9] else 1.0,
        noise_std=noise_std if happens[10] else 0.0,
        noise_seed=noise_seed,
    )


# -- the sampling grid ---------------------------------------------------------------------------------------


def cubic_bspline(t: np.ndarray) -> np.ndarray:
    """The uniform cubic B-spline kernel (support -2..2, sums to 1 over integer shifts).

    Example::

        >>> cubic_bspline(np.array([0.0, 1.0, 2.0])).tolist()
        [0.6666666666666666, 0.16666666666666666, 0.0]
    """
    t = np.abs(t)
    return np.where(t < 1.0, 2.0 / 3.0 - t**2 + t**3 / 2.0, np.where(t < 2.0, (2.0 - t) ** 3 / 6.0, 0.0))


def bspline_basis(positions_mm: np.ndarray, count: int, control_spacing_mm: float) -> np.ndarray:
    """(len(positions), count): the weight of each control point at each position (mm from the grid's centre).

    Control point ``k`` lies at ``(k - (count - 1) / 2) · control_spacing_mm``.

    Example::

        >>> basis = bspline_basis(np.array([-5.0, 0.0, 7.5]), 5, 10.0)   # within one spacing of the outer points
        >>> basis.sum(axis=1).round(12).tolist(), (basis @ ((np.arange(5) - 2) * 10.0)).round(12).tolist()
        ([1.0, 1.0, 1.0], [-5.0, 0.0, 7.5])
    """
    continuous = np.asarray(positions_mm, dtype=np.float64)[:, None] / control_spacing_mm + (count - 1) / 2.0
    return cubic_bspline(continuous - np.arange(count)[None, :])


def output_offsets_mm(size: int, spacing: float) -> np.ndarray:
    """Voxel centres along one axis in mm from the centre of ``size`` voxels.

    Example::

        >>> output_offsets_mm(4, 2.0).tolist()
        [-3.0, -1.0, 1.0, 3.0]
    """
    return (np.arange(size, dtype=np.float64) - (size - 1) / 2.0) * spacing


def _direction_matrix(direction: Sequence[float] | np.ndarray | None) -> np.ndarray:
    if direction is None:
        return np.eye(3)
    matrix = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    if not np.allclose(matrix.T @ matrix, np.eye(3), atol=1e-4):
        raise ValueError("direction must be orthonormal (the image's axis directions, one per column)")
    return matrix


def sampling_grid(
    parameters: SampleParameters,
    source_shape: Sequence[int],
    spacing: Sequence[float],
    output_shape: Sequence[int] | None = None,
    center_mm: Sequence[float] = (0.0, 0.0, 0.0),
    direction: Sequence[float] | np.ndarray | None = None,
    rows: slice = slice(None),
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The ``grid_sample`` grid (d, H, W, 3) of one sample: output rows ``rows`` (along D) of ``output_shape``.

    Args:
        parameters: the sample's changes (only the spatial ones are used).
        source_shape: (D, H, W) of the volume sampled.
        spacing: voxel size (x, y, z) in mm of the source, and of the output.
        output_shape: (D, H, W) of the output; the source's by default.
        center_mm: where the output's centre lies, in mm (x, y, z) along the source's axes from its centre.
        direction: the image's direction cosines (9 numbers row-major, columns = voxel axes, as SimpleITK's
            ``GetDirection``) so that rotations, translations and displacements are about patient axes;
            the voxel axes when None.
        rows: the output rows (along D) to build, so a large output can be sampled a slab at a time.
        device: where the grid is built.

    The elastic part is a cubic B-spline over the output; since the spline reproduces linear functions, the
    affine is folded into its coefficients and the grid is evaluated in one separable pass. Without elastic
    deformation the grid is a sum of three outer products.

    Example::

        >>> grid = sampling_grid(SampleParameters.identity(), (4, 5, 6), (1.0, 1.0, 2.0))
        >>> expected = functional.affine_grid(torch.eye(3, 4)[None], (1, 1, 4, 5, 6), align_corners=False)[0]
        >>> bool(torch.allclose(grid, expected, atol=1e-6))
        True
    """
    source_shape, output_shape = tuple(source_shape), tuple(output_shape or source_shape)
    to_patient = _direction_matrix(direction)
    # Output offsets along x, y, z (mm); a flip mirrors the output about its centre.
    axes = [output_offsets_mm(n, s) * (-1.0 if flipped else 1.0)
            for n, s, flipped in zip(reversed(output_shape), spacing, parameters.flips)]
    axes[2] = axes[2][rows]
    # Patient-frame changes expressed along the voxel axes (in mm), then scaled to grid_sample's [-1, 1].
    linear = to_patient.T @ parameters.linear @ to_patient
    offset = np.asarray(center_mm, dtype=np.float64) + to_patient.T @ parameters.translation_mm
    to_normalized = 2.0 / (np.array(list(reversed(source_shape)), dtype=np.float64) * np.asarray(spacing))
    if parameters.elastic_mm is None:
        columns = to_normalized[:, None] * linear
        x, y, z = (torch.tensor(np.outer(values, columns[:, axis]), dtype=torch.float32, device=device)
                   for axis, values in enumerate(axes))
        plane = x[None, :, :] + y[:, None, :] + torch.tensor(to_normalized * offset, dtype=torch.float32,
                                                              device=device)
        return plane[None] + z[:, None, None, :]
    control_spacing = parameters.elastic_spacing_mm
    counts = parameters.elastic_mm.shape[1:]  # (nz, ny, nx)
    if any(have < need for have, need in zip(counts, control_point_counts(output_shape, spacing, control_spacing))):
        raise ValueError(f"{counts} elastic control points do not cover an output of {output_shape} voxels of "
                         f"{tuple(spacing)} mm: draw the parameters for this output")
    knots = np.meshgrid(*[output_offsets_mm(n, control_spacing) for n in counts], indexing="ij")  # z, y, x
    # Where each control point goes: its knot plus its displacement (patient frame, turned to the voxel axes).
    displacements = np.einsum("ab,bzyx->azyx", to_patient.T, parameters.elastic_mm)
    moved = np.einsum("ab,bzyx->azyx", linear, np.stack([knots[2], knots[1], knots[0]]) + displacements)
    coefficients = to_normalized[:, None, None, None] * (moved + offset[:, None, None, None])
    return evaluate_bspline(coefficients, [bspline_basis(values, count, control_spacing)
                                           for values, count in zip(axes, reversed(counts))], device)


def evaluate_bspline(coefficients: np.ndarray, bases: Sequence[np.ndarray],
                     device: torch.device | str | None = None) -> torch.Tensor:
    """Σ Bz[d,k] By[h,j] Bx[w,i] C[c,k,j,i] as (D, H, W, c): a tensor-product spline, separably.

    ``coefficients`` is (c, nz, ny, nx); ``bases`` the (x, y, z) basis matrices, (W, nx), (H, ny), (D, nz).
    The last product, the only one as large as the output, is one matrix product into the result.

    Example::

        >>> ones = np.ones((1, 3, 3, 3)); basis = bspline_basis(np.zeros(2), 3, 1.0)
        >>> evaluate_bspline(ones, [basis, basis, basis]).shape
        torch.Size([2, 2, 2, 1])
    """
    def as_tensor(array: np.ndarray) -> torch.Tensor:
        return torch.tensor(array, dtype=torch.float32, device=device)

    along_x, along_y, along_z = (as_tensor(basis) for basis in bases)
    components, z_points, y_points = coefficients.shape[:3]
    # (c, nz, ny, W) → (nz, ny, W·c) → (nz, H, W·c): small; then (D, nz) @ (nz, H·W·c), the output's size.
    partial = (as_tensor(coefficients) @ along_x.T).permute(1, 2, 3, 0).reshape(z_points, y_points, -1)
    partial = along_y @ partial
    result = along_z @ partial.reshape(z_points, -1)
    return result.view(along_z.shape[0], along_y.shape[0], along_x.shape[0], components)


# -- resampling ----------------------------------------------------------------------------------------------


def _row_slabs(output_shape: Sequence[int]) -> list:
    depth, height, width = output_shape
    step = max(1, _GRID_SLAB_VOXELS // max(1, height * width))
    return [slice(start, min(start + step, depth)) for start in range(0, depth, step)]


def _join(pieces: list, dimension: int) -> torch.Tensor:
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dimension)


def resample(
    sources: Sequence[tuple],
    parameters: Sequence[SampleParameters],
    spacings: Sequence[Sequence[float]],
    output_shape: Sequence[int],
    centers_mm: Sequence[Sequence[float]],
    directions: Sequence,
) -> list:
    """Each of ``sources``, (volumes, mode, padding_mode) with volumes (1 or N, C, D, H, W; float), sampled for
    each of the N samples: ONE grid per sample (built a slab of rows at a time), shared by every source and
    channel, and one ``grid_sample`` per source and sample.

    Example::

        >>> volume = torch.arange(24.0).reshape(1, 1, 2, 3, 4)
        >>> turned = SampleParameters(linear=rotation_matrix([0.0, 0.0, math.pi]))  # a half turn about z
        >>> image, labels = resample([(volume, "bilinear", "zeros"), (volume, "nearest", "zeros")], [turned],
        ...                          [(1.0, 1.0, 1.0)], (2, 3, 4), [(0, 0, 0)], [None])
        >>> torch.equal(labels, volume.flip(3, 4)), bool(torch.allclose(image, volume.flip(3, 4), atol=1e-5))
        (True, True)
    """
    source_shape = sources[0][0].shape[2:]
    results = [[] for _ in sources]
    for index, sample in enumerate(parameters):
        slabs = [[] for _ in sources]
        for rows in _row_slabs(output_shape):
            grid = sampling_grid(sample, source_shape, spacings[index], output_shape, centers_mm[index],
                                 directions[index], rows, sources[0][0].device)[None]
            for pieces, (volumes, mode, padding_mode) in zip(slabs, sources):
                volume = volumes[index if volumes.shape[0] > 1 else 0][None]
                pieces.append(functional.grid_sample(volume, grid, mode=mode, padding_mode=padding_mode,
                                                     align_corners=False))
        for samples, pieces in zip(results, slabs):
            samples.append(_join(pieces, 2))
    return [_join(samples, 0) for samples in results]


# -- intensity -----------------------------------------------------------------------------------------------


def along_axis(image: torch.Tensor, matrix: np.ndarray, axis: int) -> torch.Tensor:
    """``image`` (N, C, D, H, W) with ``matrix`` (n_out, n) applied along ``axis`` (0, 1, 2 = x, y, z): a 1-D
    linear filter as one matrix product, boundaries and all.

    Example::

        >>> image = torch.arange(6.0).view(1, 1, 1, 2, 3)
        >>> along_axis(image, np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]), 0).flatten().tolist()
        [2.0, 1.0, 0.0, 5.0, 4.0, 3.0]
    """
    operator = torch.tensor(matrix, dtype=image.dtype, device=image.device)
    if axis == 0:
        return image @ operator.T
    if axis == 1:
        return operator @ image
    batch, channels, depth, height, width = image.shape
    return (operator @ image.reshape(batch * channels, depth, height * width)).view(
        batch, channels, operator.shape[0], height, width)


def thick_slice_matrix(size: int, factor: float) -> np.ndarray:
    """(size, size): the average over slices ``factor`` voxels thick (``round(size / factor)`` of them, as
    ``adaptive_avg_pool``), then linear interpolation back to the voxels (as ``interpolate``, align_corners
    False).

    Example::

        >>> thick_slice_matrix(4, 2.0).tolist()   # two slices of two voxels; voxels 1 and 2 lie between them
        [[0.5, 0.5, 0.0, 0.0], [0.375, 0.375, 0.125, 0.125], [0.125, 0.125, 0.375, 0.375], [0.0, 0.0, 0.5, 0.5]]
    """
    slices = max(1, round(size / factor))
    average = np.zeros((slices, size))
    for index in range(slices):
        start, end = (index * size) // slices, -((-(index + 1) * size) // slices)
        average[index, start:end] = 1.0 / (end - start)
    position = np.maximum((np.arange(size) + 0.5) * slices / size - 0.5, 0.0)
    lower = np.minimum(np.floor(position).astype(int), slices - 1)
    upper = np.minimum(lower + 1, slices - 1)
    weight = position - lower
    interpolate = np.zeros((size, slices))
    np.add.at(interpolate, (np.arange(size), lower), 1.0 - weight)
    np.add.at(interpolate, (np.arange(size), upper), weight)
    return interpolate @ average


def gaussian_matrix(size: int, sigma: float) -> np.ndarray:
    """(size, size): a Gaussian of ``sigma`` voxels, truncated at 3 sigma and normalized; the edge voxels repeat
    beyond the border.

    Example::

        >>> matrix = gaussian_matrix(5, 1.0)
        >>> matrix.sum(axis=1).round(12).tolist(), bool(matrix[2, 2] > matrix[2, 1] > matrix[2, 0] > 0)
        ([1.0, 1.0, 1.0, 1.0, 1.0], True)
    """
    radius = math.ceil(3.0 * sigma)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    weights /= weights.sum()
    matrix = np.zeros((size, size))
    rows = np.arange(size)
    for offset, weight in zip(offsets, weights):
        np.add.at(matrix, (rows, np.clip(rows + offset, 0, size - 1)), weight)
    return matrix


def simulate_thick_slices(image: torch.Tensor, axis: int, factor: float) -> torch.Tensor:
    """``image`` (N, C, D, H, W) as if acquired in slices ``factor`` voxels thick along ``axis`` (0, 1, 2 = x,
    y, z) and interpolated back linearly (:func:`thick_slice_matrix`); the other axes are untouched.

    Example::

        >>> steps = torch.tensor([0.0, 0, 0, 3, 3, 3, 0, 0, 0]).view(1, 1, 9, 1, 1)   # along z
        >>> simulate_thick_slices(steps, 2, 3.0).flatten().round(decimals=4).tolist()   # 3 slices: 0, 3, 0
        [0.0, 0.0, 1.0, 2.0, 3.0, 2.0, 1.0, 0.0, 0.0]
    """
    return along_axis(image, thick_slice_matrix(image.shape[_DIMENSION_OF_AXIS[axis]], factor), axis)


def gaussian_blur(image: torch.Tensor, sigma_voxels: Sequence[float]) -> torch.Tensor:
    """``image`` (N, C, D, H, W) convolved with a Gaussian of ``sigma_voxels`` (x, y, z) (:func:`gaussian_matrix`;
    an axis with sigma 0 is left alone).

    Example::

        >>> impulse = torch.zeros(1, 1, 9, 9, 9); impulse[0, 0, 4, 4, 4] = 1.0
        >>> blurred = gaussian_blur(impulse, (1.0, 1.0, 0.0))
        >>> round(float(blurred.sum()), 5), float(blurred[0, 0, 3].abs().max())
        (1.0, 0.0)
    """
    for axis, sigma in enumerate(sigma_voxels):
        if sigma > 0.0:
            image = along_axis(image, gaussian_matrix(image.shape[_DIMENSION_OF_AXIS[axis]], sigma), axis)
    return image


def bias_field(log_coefficients: np.ndarray, output_shape: Sequence[int], spacing: Sequence[float],
               control_spacing_mm: float, device: torch.device | str | None = None) -> torch.Tensor:
    """A smooth positive multiplicative field (D, H, W): ``exp`` of the cubic B-spline with ``log_coefficients``
    (nz, ny, nx) on control points ``control_spacing_mm`` apart centred on the output. The field stays within
    ``exp(min)`` and ``exp(max)`` of the coefficients; constant coefficients give a constant field.

    Example::

        >>> field = bias_field(np.full((4, 4, 4), 0.5), (6, 7, 8), (1.0, 1.0, 1.0), 10.0)
        >>> field.shape, bool(torch.allclose(field, torch.tensor(math.exp(0.5))))
        (torch.Size([6, 7, 8]), True)
    """
    axes = [output_offsets_mm(n, s) for n, s in zip(reversed(tuple(output_shape)), spacing)]
    counts = log_coefficients.shape
    bases = [bspline_basis(values, count, control_spacing_mm) for values, count in zip(axes, reversed(counts))]
    return torch.exp(evaluate_bspline(log_coefficients[None], bases, device)[..., 0])


def _channel_reduce(image: torch.Tensor, reduce) -> torch.Tensor:
    return reduce(image.flatten(2), dim=2).view(*image.shape[:2], 1, 1, 1)


def adjust_gamma(image: torch.Tensor, gamma: float) -> torch.Tensor:
    """``image`` (N, C, ...) scaled to 0..1 between each channel's minimum and maximum, raised to ``gamma``, and
    scaled back: the minimum and maximum stay, darker or brighter in between.

    Example::

        >>> adjust_gamma(torch.tensor([0.0, 1.0, 2.0, 4.0]).view(1, 1, 4, 1, 1), 2.0).flatten().tolist()
        [0.0, 0.25, 1.0, 4.0]
    """
    low = _channel_reduce(image, torch.amin)
    span = (_channel_reduce(image, torch.amax) - low).clamp(min=torch.finfo(image.dtype).tiny)
    return low + span * ((image - low) / span).clamp(0.0, 1.0) ** gamma


def adjust_contrast(image: torch.Tensor, factor: float) -> torch.Tensor:
    """``image`` (N, C, ...) scaled by ``factor`` about each channel's mean (which it keeps).

    Example::

        >>> adjust_contrast(torch.tensor([1.0, 2.0, 3.0]).view(1, 1, 3, 1, 1), 2.0).flatten().tolist()
        [0.0, 2.0, 4.0]
    """
    mean = _channel_reduce(image, torch.mean)
    return mean + (image - mean) * factor


def add_noise(image: torch.Tensor, std_fraction: float, seed: int) -> torch.Tensor:
    """``image`` (N, C, ...) plus Gaussian noise whose standard deviation is ``std_fraction`` of each channel's,
    drawn on the image's device from ``seed``.

    Example::

        >>> image = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
        >>> noisy = add_noise(image, 0.5, seed=3)
        >>> round(float((noisy - image).std()), 1), torch.equal(noisy, add_noise(image, 0.5, seed=3))
        (0.5, True)
    """
    generator = torch.Generator(device=image.device).manual_seed(seed)
    noise = torch.randn(image.shape, generator=generator, device=image.device, dtype=image.dtype)
    deviation = _channel_reduce(image, lambda values, dim: torch.std(values, dim=dim, correction=0))
    return image + noise * (std_fraction * deviation)


def change_intensities(images: torch.Tensor, parameters: Sequence[SampleParameters],
                       spacing: Sequence[Sequence[float]]) -> torch.Tensor:
    """Each sample's intensity changes, in place on ``images`` (N, C, D, H, W; float): thick slices, blur, bias
    field, gamma, contrast, noise. Samples without a change are left exactly as they are.

    Example::

        >>> images = torch.rand(2, 1, 8, 8, 8)
        >>> darker = change_intensities(images.clone(), [SampleParameters(gamma=2.0), SampleParameters()],
        ...                             [(1.0, 1.0, 1.0)] * 2)
        >>> bool(darker[0].mean() < images[0].mean()), torch.equal(darker[1], images[1])
        (True, True)
    """
    for index, sample in enumerate(parameters):
        if sample.intensity_identity:
            continue
        image = images[index : index + 1]
        if sample.thick_slices is not None:
            image = simulate_thick_slices(image, *sample.thick_slices)
        if sample.blur_sigma_mm > 0.0:
            image = gaussian_blur(image, [sample.blur_sigma_mm / s for s in spacing[index]])
        if sample.bias_log_field is not None:
            # Above each channel's minimum, so that CT numbers (air at -1000) are scaled as MR intensities are.
            low = _channel_reduce(image, torch.amin)
            image = low + (image - low) * bias_field(sample.bias_log_field, image.shape[2:], spacing[index],
                                                     sample.bias_spacing_mm, image.device)
        if sample.gamma != 1.0:
            image = adjust_gamma(image, sample.gamma)
        if sample.contrast != 1.0:
            image = adjust_contrast(image, sample.contrast)
        if sample.noise_std > 0.0:
            image = add_noise(image, sample.noise_std, sample.noise_seed)
        images[index : index + 1] = image
    return images


# -- the whole -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AugmentedBatch:
    """The augmented images (N, C, ...; float32), labels (as given: label values, or float probabilities)
    and what was drawn for each sample."""

    images: torch.Tensor
    labels: torch.Tensor | None
    parameters: list


def _per_sample(value, count: int, name: str) -> list:
    """``value`` for each of ``count`` samples: one (a triple, or a direction's 9 numbers) for all, or one each."""
    if value is None:
        return [None] * count
    array = np.asarray(value, dtype=np.float64)
    size = 9 if name == "direction" else 3
    if array.size == size:
        return [tuple(array.reshape(size).tolist())] * count
    if array.size != size * count:
        raise ValueError(f"{name}: give one for all samples or one for each of the {count}, not {array.shape}")
    return [tuple(values) for values in array.reshape(count, size).tolist()]


def _as_tensor(array, device: torch.device | str | None) -> torch.Tensor:
    tensor = torch.as_tensor(array)
    return tensor.to(device) if device is not None else tensor


def augment(
    images,
    labels,
    spacing: Sequence[float] | Sequence[Sequence[float]],
    seeds: Sequence[int],
    settings: AugmentationSettings | None = None,
    output_shape: Sequence[int] | None = None,
    centers_mm: Sequence[float] | Sequence[Sequence[float]] | None = None,
    direction: Sequence[float] | np.ndarray | None = None,
    label_mode: str = "nearest",
    image_padding: str = "minimum",
    device: torch.device | str | None = None,
) -> AugmentedBatch:
    """One augmented sample per seed: :func:`draw_parameters` with ``settings`` (the defaults when None), then
    :func:`apply_parameters`, whose arguments the others are.

    Example::

        >>> image = torch.rand(1, 1, 20, 20, 20); labels = (image > 0.5).to(torch.uint8)
        >>> first = augment(image, labels, (1.0, 1.0, 1.0), [5]); again = augment(image, labels, (1.0, 1.0, 1.0), [5])
        >>> torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
        True
    """
    settings = settings or AugmentationSettings()
    shape = tuple(output_shape or np.shape(images)[2:])
    spacings = _per_sample(spacing, len(seeds), "spacing")
    parameters = [draw_parameters(seed, settings, shape, spacings[index]) for index, seed in enumerate(seeds)]
    return apply_parameters(images, labels, spacing, parameters, output_shape, centers_mm, direction, label_mode,
                            image_padding, device)


def apply_parameters(
    images,
    labels,
    spacing: Sequence[float] | Sequence[Sequence[float]],
    parameters: Sequence[SampleParameters],
    output_shape: Sequence[int] | None = None,
    centers_mm: Sequence[float] | Sequence[Sequence[float]] | None = None,
    direction: Sequence[float] | np.ndarray | None = None,
    label_mode: str = "nearest",
    image_padding: str = "minimum",
    device: torch.device | str | None = None,
) -> AugmentedBatch:
    """Apply each sample's ``parameters``: one composed spatial resample, then its intensity changes.

    Args:
        images: (1 or N, C, D, H, W) tensor or array, any real dtype; one source serves all N samples when its
            batch is 1 (e.g. N random patches of one volume).
        labels: None, or (1 or N, L, D, H, W) on the images' grid: label values (``label_mode`` "nearest" or
            "onehot"; returned in their dtype) or probability maps ("linear"; returned as float32).
        spacing: voxel size (x, y, z) in mm, one for all samples or one per sample.
        parameters: what to do to each of the N samples (:func:`draw_parameters`).
        output_shape: (D, H, W) of the output; the source's by default.
        centers_mm: where each output's centre lies, in mm (x, y, z) along the source's axes from its centre; the
            centre by default. One for all samples or one per sample.
        direction: the image's direction cosines (9 numbers row-major, as SimpleITK's ``GetDirection``), so
            that rotations are about patient axes; the voxel axes by default. One for all or one per sample.
        label_mode: "nearest" (label maps; fast, values kept), "linear" (probability maps) or "onehot" (label
            maps: each value's mask sampled linearly, then the likeliest value; smoother boundaries when the
            anatomy is magnified, at the cost of one channel per label value).
        image_padding: what the image shows outside the source: "minimum" (each channel's minimum: air in CT,
            background in MR), "zeros", "border" or "reflection". Labels outside are 0.
        device: where to compute and return the results ("cpu", "cuda", ...); the images' device by default.

    Returns an :class:`AugmentedBatch`. When every sample is spatially unchanged and the output is the source's
    grid, no resampling is done, so identity parameters give the input back exactly.

    Example::

        >>> image = torch.rand(1, 1, 6, 7, 8); labels = torch.randint(0, 4, (1, 1, 6, 7, 8))
        >>> batch = apply_parameters(image, labels, (1.0, 1.0, 1.0), [SampleParameters.identity()])
        >>> torch.equal(batch.images, image), torch.equal(batch.labels, labels)
        (True, True)
    """
    if label_mode not in LABEL_MODES:
        raise ValueError(f"label_mode must be one of {', '.join(LABEL_MODES)}, not {label_mode!r}")
    if image_padding not in IMAGE_PADDINGS:
        raise ValueError(f"image_padding must be one of {', '.join(IMAGE_PADDINGS)}, not {image_padding!r}")
    source = _as_tensor(images, device)
    if source.ndim != 5:
        raise ValueError(f"images must be (batch, channels, D, H, W), not of shape {tuple(source.shape)}")
    count = len(parameters)
    if source.shape[0] not in (1, count):
        raise ValueError(f"images hold {source.shape[0]} volumes for {count} samples: give 1 or {count}")
    label_source = None if labels is None else _as_tensor(labels, source.device)
    if label_source is not None and (label_source.ndim != 5 or label_source.shape[2:] != source.shape[2:]
                                     or label_source.shape[0] not in (1, source.shape[0])):
        raise ValueError(f"labels of shape {tuple(label_source.shape)} do not match images {tuple(source.shape)}")
    source_shape = tuple(source.shape[2:])
    output_shape = tuple(output_shape or source_shape)
    spacings = _per_sample(spacing, count, "spacing")
    centers = _per_sample(centers_mm if centers_mm is not None else (0.0, 0.0, 0.0), count, "centers_mm")
    directions = _per_sample(direction, count, "direction")
    converted = source.dtype != torch.float32  # then ``source`` below is our own copy, free to change in place
    source = source.float()

    unchanged = (output_shape == source_shape and all(sample.spatial_identity for sample in parameters)
                 and not np.any(np.asarray(centers, dtype=np.float64)))
    if unchanged:
        output = source.expand(count, *source.shape[1:]).clone()
        output_labels = None if label_source is None else label_source.expand(count, *label_source.shape[1:])
        output_labels = None if output_labels is None else (
            output_labels.float() if label_mode == "linear" else output_labels).clone()
    else:
        # The image: outside the source, each channel's minimum (sampled with zeros around the image less it).
        fill = _channel_reduce(source, torch.amin) if image_padding == "minimum" else None
        if fill is not None and not bool(torch.any(fill != 0)):
            fill = None
        padding = "zeros" if image_padding == "minimum" else image_padding
        if fill is not None:
            source = source.sub_(fill) if converted else source - fill
        sources = [(source, "bilinear", padding)]
        if label_source is not None:
            sources.append(_label_source(label_source, label_mode))
        resampled = resample(sources, parameters, spacings, output_shape, centers, directions)
        output = resampled[0] if fill is None else resampled[0].add_(fill)
        output_labels = None if label_source is None else _label_result(resampled[1], label_source, label_mode)
    change_intensities(output, parameters, spacings)
    return AugmentedBatch(output, output_labels, list(parameters))


def _label_source(labels: torch.Tensor, label_mode: str) -> tuple:
    """What to sample for ``labels``: (volumes, mode, padding), labels 0 outside."""
    if label_mode == "linear":
        return labels.float(), "bilinear", "zeros"
    if label_mode == "nearest":
        return labels.float(), "nearest", "zeros"
    # One-hot: a channel per value (0, the value outside, always among them), sampled linearly.
    if labels.shape[1] != 1:
        raise ValueError("label_mode 'onehot' takes one label map channel")
    return (labels == _label_values(labels).view(1, -1, 1, 1, 1)).float(), "bilinear", "zeros"


def _label_values(labels: torch.Tensor) -> torch.Tensor:
    return torch.unique(torch.cat([labels.flatten(), labels.new_zeros(1)]))


def _label_result(resampled: torch.Tensor, labels: torch.Tensor, label_mode: str) -> torch.Tensor:
    if label_mode == "linear":
        return resampled
    if label_mode == "nearest":
        return resampled.to(labels.dtype)
    return _label_values(labels)[resampled.argmax(dim=1, keepdim=True)]  # one-hot: the likeliest value


# -- a preview of one case -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreviewVariant:
    """One augmented variant of a case, on the case's own grid: image (C, K, J, I) float32, labels (K, J, I)."""

    image: np.ndarray
    labels: np.ndarray
    description: str


def preview_variants(
    image: np.ndarray,
    labels: np.ndarray,
    spacing: Sequence[float],
    direction: Sequence[float] | np.ndarray | None = None,
    count: int = 4,
    seed: int = 0,
    settings: AugmentationSettings | None = None,
    progress: Callable[[float, str], None] | None = None,
    cancel: threading.Event | None = None,
    device: str = "cpu",
) -> list:
    """``count`` augmented variants of one case, each on the case's grid, to look at before training with them.

    Args:
        image: (C, K, J, I), the case's image channels on one grid.
        labels: (K, J, I) label map on that grid.
        spacing: voxel size (x, y, z) in mm.
        direction: the image's direction cosines (9 numbers row-major), so that rotations are about patient axes.
        count: how many variants; variant ``n`` is seeded ``sample_seed(seed, 0, n)``.
        seed: the preview's seed (another seed, other variants).
        settings: the augmentation (the defaults when None).
        progress: called with (fraction done, message) before each variant.
        cancel: set to stop between variants (raises ``CancelledError``).
        device: where to compute.

    Plain arrays in and out (:class:`PreviewVariant`), so that it can run in a worker process.

    Example::

        >>> image = np.random.default_rng(0).normal(size=(1, 10, 12, 14)).astype(np.float32)
        >>> variants = preview_variants(image, (image[0] > 0).astype(np.uint8), (1.0, 1.0, 2.0), count=2)
        >>> [variant.image.shape for variant in variants], variants[0].labels.dtype
        ([(1, 10, 12, 14), (1, 10, 12, 14)], dtype('uint8'))
    """
    variants = []
    for index in range(count):
        if cancel is not None and cancel.is_set():
            raise CancelledError("augmentation preview cancelled")
        if progress is not None:
            progress(index / count, f"Augmenting variant {index + 1} of {count}")
        batch = augment(image[None], labels[None, None], spacing, [sample_seed(seed, 0, index)], settings,
                        direction=direction, device=device)
        variants.append(PreviewVariant(batch.images[0].cpu().numpy(), batch.labels[0, 0].cpu().numpy(),
                                       batch.parameters[0].describe()))
    if progress is not None:
        progress(1.0, f"{count} variants")
    return variants

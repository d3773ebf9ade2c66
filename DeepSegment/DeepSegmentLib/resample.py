"""Voxel grids and resampling between them with PyTorch, on the compute device.

A :class:`Grid` is where a voxel array lies in patient space (LPS, as SimpleITK): size and spacing in
(x, y, z) order, origin, and direction cosines with one column per voxel axis. Resampling maps every
target voxel centre through the two IJK-to-physical matrices to a continuous index of the source
and samples there with ``torch.nn.functional.grid_sample``. Indices are normalized for
``align_corners=False`` (``(2 i + 1) / n - 1``), which is exact for every size including one voxel:
voxel centres land on voxel centres, so a grid that is only a flip or a permutation of another
reproduces its values; such a grid is not sampled at all: :func:`resample` permutes and flips the tensor's
axes (:func:`axis_permutation`), exactly, in both directions.

Orientations of a model grid (:func:`model_grid`): ``RAS`` and ``LPS`` (axes along those directions: an
oblique volume is interpolated), ``native`` (the input's own axes), and ``closest-RAS`` / ``closest-LPS``
(the input's own axes, permuted and flipped to point closest to RAS or LPS, as nibabel's
``as_closest_canonical`` and MONAI's ``Orientation`` do: an oblique direction is kept, nothing is interpolated).

Example::

    >>> import numpy as np, SimpleITK as sitk, torch
    >>> image = sitk.GetImageFromArray(np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    >>> image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))   # LPS-flipped axes, as from DICOM
    >>> source = Grid.from_image(image)
    >>> target = model_grid(image, spacing=None, orientation="LPS")
    >>> target.size, target.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    ((4, 3, 2), True)
    >>> volume = torch.from_numpy(sitk.GetArrayFromImage(image))[None]
    >>> flipped = resample(volume, source, target)
    >>> torch.equal(flipped[0], volume[0].flip(1, 2))
    True
    >>> torch.equal(resample(flipped, target, source, mode="nearest"), volume)
    True
    >>> closest = model_grid(image, spacing=None, orientation="closest-RAS")
    >>> closest.direction == (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0), axis_permutation(source, closest)
    (True, ((0, False), (1, False), (2, False)))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

# Axis-aligned model orientations as SimpleITK (LPS) direction matrices.
ORIENTATIONS = {"LPS": np.eye(3), "RAS": np.diag([-1.0, -1.0, 1.0])}
# "closest-RAS" keeps the input's axes, permuted and flipped to lie closest to RAS's.
CLOSEST = "closest-"
# How far (in voxels) a grid may be from an exact permutation of another for it to be taken as one.
_PERMUTATION_TOLERANCE = 1e-4
# Sampling coordinates are built per slab of target slices so that their memory stays bounded
# (12 bytes per voxel) whatever the volume size.
_SLAB_VOXELS = 1 << 24


@dataclass(frozen=True)
class Grid:
    """A voxel grid in LPS: ``size`` and ``spacing`` in (x, y, z), ``direction`` row-major 3×3."""

    size: tuple
    spacing: tuple
    origin: tuple
    direction: tuple

    @classmethod
    def from_image(cls, image: sitk.Image) -> Grid:
        return cls(
            tuple(int(n) for n in image.GetSize()),
            tuple(float(s) for s in image.GetSpacing()),
            tuple(float(v) for v in image.GetOrigin()),
            tuple(float(v) for v in image.GetDirection()),
        )

    @property
    def index_to_physical(self) -> np.ndarray:
        """4×4 matrix from a continuous (i, j, k) index to an LPS point in millimetres."""
        matrix = np.eye(4)
        matrix[:3, :3] = np.array(self.direction).reshape(3, 3) @ np.diag(self.spacing)
        matrix[:3, 3] = self.origin
        return matrix

    @property
    def voxel_volume(self) -> float:
        return float(np.prod(self.spacing))

    def image(self, array_zyx: np.ndarray) -> sitk.Image:
        """A SimpleITK image holding ``array_zyx`` on this grid."""
        image = sitk.GetImageFromArray(array_zyx)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


def _physical_corners(grid: Grid) -> np.ndarray:
    """The 8 outer corners of the grid's voxels (not of their centres), one LPS point per row."""
    edges = [(-0.5, n - 0.5) for n in grid.size]
    corners = np.array([[i, j, k, 1.0] for i in edges[0] for j in edges[1] for k in edges[2]])
    return (grid.index_to_physical @ corners.T).T[:, :3]


def _native_spacing_along(reference: Grid, direction: np.ndarray) -> tuple:
    """The reference's spacing of the voxel axis closest to each column of ``direction``."""
    reference_axes = np.array(reference.direction).reshape(3, 3)
    alignment = np.abs(direction.T @ reference_axes)  # [model axis, reference axis]
    return tuple(reference.spacing[int(np.argmax(row))] for row in alignment)


def closest_direction(direction: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """``direction``'s columns (voxel axes) permuted and negated so that column ``a`` is the one closest to
    ``axes``' column ``a`` and points along it; the pairs are chosen greedily, the best aligned first (as
    nibabel's ``io_orientation``), so every voxel axis is used once even for a volume turned by 45°.

    >>> voxel_axes = np.array([[0.0, 1, 0], [0, 0, -1], [1, 0, 0]])   # i along z, j along x, k along -y
    >>> closest_direction(voxel_axes, np.eye(3))   # j, -k, i: the LPS axes
    array([[1., 0., 0.],
           [0., 1., 0.],
           [0., 0., 1.]])
    """
    alignment = np.abs(axes.T @ direction)  # [wanted axis, voxel axis]
    chosen = np.zeros((3, 3))
    for _ in range(3):
        wanted, voxel = np.unravel_index(int(np.argmax(alignment)), alignment.shape)
        sign = 1.0 if float(axes[:, wanted] @ direction[:, voxel]) >= 0 else -1.0
        chosen[:, wanted] = sign * direction[:, voxel]
        alignment[wanted, :] = -1.0
        alignment[:, voxel] = -1.0
    return chosen + 0.0  # no negative zeros


def _direction(source: Grid, orientation: str) -> np.ndarray:
    native = np.array(source.direction).reshape(3, 3)
    if orientation == "native":
        return native
    if orientation in ORIENTATIONS:
        return ORIENTATIONS[orientation]
    if orientation.startswith(CLOSEST) and orientation[len(CLOSEST):] in ORIENTATIONS:
        return closest_direction(native, ORIENTATIONS[orientation[len(CLOSEST):]])
    raise ValueError(f"Unknown orientation {orientation!r}: use RAS, LPS, native, closest-RAS or closest-LPS")


def within_tolerance(native: float, wanted: float, tolerance: tuple | None) -> bool:
    """Whether spacing ``native`` is close enough to ``wanted`` to be kept: ``tolerance`` is ``("mm", d)``,
    ``("fraction", f)`` (of ``wanted``) or ``None`` (never).

    >>> within_tolerance(0.98, 1.0, ("mm", 0.05)), within_tolerance(0.9, 1.0, ("fraction", 0.05))
    (True, False)
    """
    if tolerance is None:
        return False
    unit, value = tolerance
    allowed = float(value) * (float(wanted) if unit == "fraction" else 1.0)
    return abs(float(native) - float(wanted)) <= allowed + 1e-12


def model_grid(reference: sitk.Image, spacing: tuple | None, orientation: str,
               spacing_tolerance: tuple | None = None) -> Grid:
    """The grid a model sees for ``reference``: ``spacing`` in mm (``None``: the reference's own along each
    model axis) and ``orientation`` ``"RAS"``, ``"LPS"`` (axis-aligned), ``"native"`` (the reference's axes) or
    ``"closest-RAS"``, ``"closest-LPS"`` (the reference's axes permuted and flipped, see ``closest_direction``).

    The grid covers the reference's whole physical bounding box (all voxel corners, so oblique
    volumes are not cut) and is centred on it; with native spacing and orientation it is the
    reference grid itself, and with native spacing and a closest orientation a permutation of it.
    ``spacing_tolerance`` (``("mm", d)`` or ``("fraction", f)``): a model axis whose native spacing lies
    within it of ``spacing`` keeps the native spacing.
    """
    source = Grid.from_image(reference)
    direction = _direction(source, orientation)
    native = _native_spacing_along(source, direction)
    if spacing is None:
        spacing = native
    spacing = np.array([float(s) for s in spacing])
    if spacing.shape != (3,) or not np.all(spacing > 0):
        raise ValueError(f"Target spacing must be three positive millimetre values, not {tuple(spacing)}")
    spacing = np.array([n if within_tolerance(n, s, spacing_tolerance) else s for n, s in zip(native, spacing)])
    # Corner coordinates along the model axes.
    along_axes = _physical_corners(source) @ direction
    low, high = along_axes.min(axis=0), along_axes.max(axis=0)
    # The tolerance keeps an extent that is a whole number of voxels from gaining one by round-off.
    size = np.array([max(1, math.ceil(extent / s - 1e-6)) for extent, s in zip(high - low, spacing)])
    first_centre = low + (high - low - size * spacing) / 2 + spacing / 2
    return Grid(
        tuple(int(n) for n in size),
        tuple(float(s) for s in spacing),
        tuple(float(v) for v in direction @ first_centre),
        tuple(float(v) for v in direction.ravel()),
    )


def same_grid(a: Grid, b: Grid, tolerance: float = 1e-6) -> bool:
    """Whether two grids put every voxel at the same place (so resampling would copy)."""
    return a.size == b.size and bool(
        np.allclose(a.index_to_physical, b.index_to_physical, atol=tolerance, rtol=0)
    )


def axis_permutation(source: Grid, target: Grid) -> tuple | None:
    """Per target axis (x, y, z), ``(source axis, flipped)`` when ``target`` holds exactly ``source``'s voxel
    centres with the axes permuted and flipped (to within 1e-4 voxel); ``None`` when it does not."""
    to_source = np.linalg.inv(source.index_to_physical) @ target.index_to_physical
    rotation, offset = to_source[:3, :3], to_source[:3, 3]
    signed = np.round(rotation)
    if not np.allclose(rotation, signed, atol=_PERMUTATION_TOLERANCE / max(max(target.size), 1), rtol=0):
        return None
    if not (np.abs(signed).sum(axis=0) == 1).all() or not (np.abs(signed).sum(axis=1) == 1).all():
        return None
    axes = []
    for axis in range(3):
        from_axis = int(np.argmax(np.abs(signed[:, axis])))
        flipped = bool(signed[from_axis, axis] < 0)
        start = source.size[from_axis] - 1 if flipped else 0
        if target.size[axis] != source.size[from_axis] or abs(offset[from_axis] - start) > _PERMUTATION_TOLERANCE:
            return None
        axes.append((from_axis, flipped))
    return tuple(axes)


def permute_axes(volume, axes: tuple):
    """``volume`` (C×Z×Y×X tensor) with its axes permuted and flipped as ``axis_permutation`` says: a copy."""
    # Tensor dimension of image axis a (0 = x) is 3 - a; the target's axis a comes from the source's axes[a][0].
    order = (0, *(3 - axes[2 - d][0] for d in range(3)))  # target dims z, y, x come from these source dims
    flips = [3 - a for a, (_, flipped) in enumerate(axes) if flipped]
    permuted = volume.permute(order)
    return (permuted.flip(flips) if flips else permuted).contiguous()


def resample(volume, source: Grid, target: Grid, mode: str = "bilinear", padding_mode: str = "border"):
    """``volume`` (C×Z×Y×X torch tensor on ``source``) sampled on ``target``, on the tensor's device.

    ``mode`` is ``"bilinear"`` (trilinear in 3D) or ``"nearest"``; values beyond the source are
    those of its border voxels. The result has ``volume``'s dtype when it is floating, else float32.
    A target that is a permutation and flip of the source's axes (``axis_permutation``) is copied exactly.
    """
    import torch
    from torch.nn import functional

    if tuple(volume.shape[1:]) != tuple(reversed(source.size)):
        raise ValueError(f"volume of shape {tuple(volume.shape)} does not lie on a grid of size {source.size}")
    data = volume if volume.is_floating_point() else volume.float()
    axes = axis_permutation(source, target)
    if axes is not None:
        return permute_axes(data, axes)
    # Target index -> source continuous index -> grid_sample's normalized coordinate, as one matrix.
    to_source = np.linalg.inv(source.index_to_physical) @ target.index_to_physical
    sizes = np.array(source.size, dtype=float)
    normalize = np.eye(4)
    normalize[:3, :3] = np.diag(2.0 / sizes)
    normalize[:3, 3] = 1.0 / sizes - 1.0
    matrix = torch.as_tensor((normalize @ to_source)[:3], dtype=torch.float32, device=data.device)
    nx, ny, nz = target.size
    x = torch.arange(nx, dtype=torch.float32, device=data.device)
    y = torch.arange(ny, dtype=torch.float32, device=data.device)
    partial = (x[None, :, None] * matrix[:, 0]) + (y[:, None, None] * matrix[:, 1]) + matrix[:, 3]  # Y×X×3
    result = torch.empty((data.shape[0], nz, ny, nx), dtype=data.dtype, device=data.device)
    slab = max(1, _SLAB_VOXELS // (nx * ny))
    for z0 in range(0, nz, slab):
        z = torch.arange(z0, min(nz, z0 + slab), dtype=torch.float32, device=data.device)
        coordinates = partial[None] + z[:, None, None, None] * matrix[:, 2]
        result[:, z0 : z0 + len(z)] = functional.grid_sample(
            data[None], coordinates[None], mode=mode, padding_mode=padding_mode, align_corners=False
        )[0]
    return result

"""Voxel grids and resampling between them with PyTorch, on the compute device.

A :class:`Grid` is where a voxel array lies in patient space (LPS, as SimpleITK): size and spacing in
(x, y, z) order, origin, and direction cosines with one column per voxel axis. Resampling maps every
target voxel centre through the two IJK-to-physical matrices to a continuous index of the source
and samples there with ``torch.nn.functional.grid_sample``. Indices are normalized for
``align_corners=False`` (``(2 i + 1) / n - 1``), which is exact for every size including one voxel:
voxel centres land on voxel centres, so a grid that is only a flip or a permutation of another
reproduces its values.

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

# Axis-aligned model orientations as SimpleITK (LPS) direction matrices.
ORIENTATIONS = {"LPS": np.eye(3), "RAS": np.diag([-1.0, -1.0, 1.0])}
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


def model_grid(reference: sitk.Image, spacing: tuple | None, orientation: str) -> Grid:
    """The grid a model sees for ``reference``: ``spacing`` in mm (``None``: the reference's own)
    and ``orientation`` ``"RAS"``, ``"LPS"`` (axis-aligned) or ``"native"`` (the reference's axes).

    The grid covers the reference's whole physical bounding box (all voxel corners, so oblique
    volumes are not cut) and is centred on it; with native spacing and orientation it is the
    reference grid itself.
    """
    source = Grid.from_image(reference)
    if orientation == "native":
        direction = np.array(source.direction).reshape(3, 3)
    elif orientation in ORIENTATIONS:
        direction = ORIENTATIONS[orientation]
    else:
        raise ValueError(f"Unknown orientation {orientation!r}: use RAS, LPS or native")
    if spacing is None:
        spacing = _native_spacing_along(source, direction)
    spacing = np.array([float(s) for s in spacing])
    if spacing.shape != (3,) or not np.all(spacing > 0):
        raise ValueError(f"Target spacing must be three positive millimetre values, not {tuple(spacing)}")
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


def resample(volume, source: Grid, target: Grid, mode: str = "bilinear", padding_mode: str = "border"):
    """``volume`` (C×Z×Y×X torch tensor on ``source``) sampled on ``target``, on the tensor's device.

    ``mode`` is ``"bilinear"`` (trilinear in 3D) or ``"nearest"``; values beyond the source are
    those of its border voxels. The result has ``volume``'s dtype when it is floating, else float32.
    """
    import torch
    from torch.nn import functional

    if tuple(volume.shape[1:]) != tuple(reversed(source.size)):
        raise ValueError(f"volume of shape {tuple(volume.shape)} does not lie on a grid of size {source.size}")
    data = volume if volume.is_floating_point() else volume.float()
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

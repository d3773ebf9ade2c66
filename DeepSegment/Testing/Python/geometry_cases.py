"""Grids shared by the DeepSegment tests: rotations and empty images placed anywhere in space."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def rotation(axis: int, degrees: float) -> np.ndarray:
    """The 3×3 rotation by ``degrees`` about axis 0, 1 or 2."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = [a for a in range(3) if a != axis]
    matrix = np.eye(3)
    matrix[i, i], matrix[i, j], matrix[j, i], matrix[j, j] = c, -s, s, c
    return matrix


def empty_image(size, spacing, origin, direction) -> sitk.Image:
    """A float image of zeros on the grid given by SimpleITK's size, spacing, origin and 3×3 direction."""
    image = sitk.Image([int(n) for n in size], sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(tuple(np.asarray(direction, float).ravel()))
    return image

"""Exact image geometry between Slicer (RAS, IJK-to-RAS matrix) and SimpleITK/ITK (LPS).

Slicer describes a volume by a voxel array in KJI order and a 4×4 IJK-to-RAS matrix; SimpleITK by
spacing, origin and direction cosines in LPS, with ``GetArrayFromImage`` also in KJI order. Getting the
flip between RAS and LPS, the column order of the direction matrix or the spacing of oblique axes
wrong is the most frequent cause of misplaced segmentations, so every conversion goes through here.

Example::

    >>> import numpy as np
    >>> ijk_to_ras = np.array([[-0.5, 0, 0, 10], [0, -0.5, 0, 20], [0, 0, 2.0, -30], [0, 0, 0, 1]])
    >>> image = image_from_array(np.zeros((4, 5, 6), np.int16), ijk_to_ras)
    >>> image.GetSize(), image.GetSpacing(), image.GetOrigin()
    ((6, 5, 4), (0.5, 0.5, 2.0), (-10.0, -20.0, -30.0))
    >>> bool(np.allclose(ijk_to_ras_from_image(image), ijk_to_ras))
    True
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

# RAS and LPS differ by the sign of their first two axes.
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


def _check_matrix(ijk_to_ras) -> np.ndarray:
    matrix = np.asarray(ijk_to_ras, dtype=float)
    if matrix.shape != (4, 4):
        raise ValueError(f"IJK-to-RAS must be a 4x4 matrix, not {matrix.shape}")
    if not np.allclose(matrix[3], [0, 0, 0, 1]):
        raise ValueError("IJK-to-RAS must be affine (last row 0 0 0 1)")
    if abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
        raise ValueError("IJK-to-RAS is singular: a voxel axis has zero length or two axes are parallel")
    return matrix


def image_from_array(array_kji: np.ndarray, ijk_to_ras) -> sitk.Image:
    """A SimpleITK image holding ``array_kji`` (a Slicer voxel array) at the place ``ijk_to_ras`` says."""
    array = np.asarray(array_kji)
    if array.ndim != 3:
        raise ValueError(f"expected a 3D voxel array (K, J, I), got {array.ndim} dimensions")
    matrix = _check_matrix(ijk_to_ras)
    axes_ras = matrix[:3, :3]
    spacing = np.linalg.norm(axes_ras, axis=0)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(v) for v in LPS_FROM_RAS @ matrix[:3, 3]))
    # SimpleITK's direction is row-major with one column per voxel axis.
    image.SetDirection(tuple(float(v) for v in (LPS_FROM_RAS @ (axes_ras / spacing)).ravel()))
    return image


def ijk_to_ras_from_image(image: sitk.Image) -> np.ndarray:
    """The 4×4 IJK-to-RAS matrix of a 3D SimpleITK image."""
    if image.GetDimension() != 3:
        raise ValueError(f"expected a 3D image, got {image.GetDimension()} dimensions")
    direction_lps = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = LPS_FROM_RAS @ direction_lps @ np.diag(image.GetSpacing())
    matrix[:3, 3] = LPS_FROM_RAS @ np.array(image.GetOrigin(), dtype=float)
    return matrix


def geometry_mismatch(reference: sitk.Image, other: sitk.Image, tolerance: float = 1e-4) -> str:
    """Why ``other`` does not lie on ``reference``'s voxel grid, or ``""`` when it does.

    Positions are compared in millimetres and directions as cosines, with ``tolerance`` for both, so
    round-off from file formats passes and a shifted, flipped or resampled grid does not.
    """
    if reference.GetSize() != other.GetSize():
        return f"size {other.GetSize()} differs from {reference.GetSize()}"
    if not np.allclose(reference.GetSpacing(), other.GetSpacing(), atol=tolerance):
        return f"spacing {other.GetSpacing()} differs from {reference.GetSpacing()}"
    if not np.allclose(reference.GetOrigin(), other.GetOrigin(), atol=tolerance):
        return f"origin {other.GetOrigin()} differs from {reference.GetOrigin()}"
    if not np.allclose(reference.GetDirection(), other.GetDirection(), atol=tolerance):
        return "axis directions differ"
    return ""


# Pixel types a label map may have: one integer per voxel.
LABEL_PIXEL_TYPES = (sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16, sitk.sitkUInt32, sitk.sitkInt32)


class LabelMapError(ValueError):
    """A label map a model's runner (a container, a runtime) gave back is unusable; the message says why."""


def checked_label_map(labels: sitk.Image, reference: sitk.Image, label_values=None, lister: str = "the model") -> tuple:
    """``(labels, values)``: ``labels`` with exactly ``reference``'s geometry, and the label values it holds (0 left
    out); LabelMapError when it is not one integer per voxel, does not lie on ``reference``'s voxel grid (within
    ``geometry_mismatch``'s tolerance) or holds values not among ``label_values`` (any, when None; ``lister`` is who
    lists them, in the message).

    >>> reference = sitk.Image(4, 3, 2, sitk.sitkInt16)
    >>> labels = sitk.Image(4, 3, 2, sitk.sitkUInt8); labels[1, 1, 1] = 2
    >>> checked_label_map(labels, reference, [1, 2])[1]
    (2,)
    >>> labels.SetOrigin((0.0, 0.5, 0.0)); checked_label_map(labels, reference)
    Traceback (most recent call last):
    ...
    DeepSegmentLib.geometry.LabelMapError: the label map does not lie on the input's voxel grid (origin ...
    """
    if labels.GetNumberOfComponentsPerPixel() != 1 or labels.GetPixelID() not in LABEL_PIXEL_TYPES:
        raise LabelMapError(f"the label map must hold one integer per voxel, not {labels.GetPixelIDTypeAsString()}")
    mismatch = geometry_mismatch(reference, labels) if labels.GetDimension() == 3 else "it is not 3D"
    if mismatch:
        raise LabelMapError(f"the label map does not lie on the input's voxel grid ({mismatch}); it was rejected")
    # Within the tolerance the grids are the same; round-off is not carried into Slicer.
    labels.CopyInformation(reference)
    present = set(np.unique(sitk.GetArrayViewFromImage(labels)).tolist()) - {0}
    if label_values is not None:
        unknown = sorted(present - set(label_values))
        if unknown:
            raise LabelMapError(f"the label map holds value(s) {', '.join(map(str, unknown))} that {lister} lists "
                                "no label for")
    return labels, tuple(sorted(present))


def is_oblique(image: sitk.Image, tolerance: float = 1e-6) -> bool:
    """Whether the voxel axes are not aligned with the patient axes (a tilted acquisition)."""
    direction = np.abs(np.array(image.GetDirection(), dtype=float).reshape(3, 3))
    return not np.allclose(np.sort(direction, axis=0)[:2], 0.0, atol=tolerance)

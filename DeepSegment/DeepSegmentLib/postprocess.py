"""Clean-up of a label map on the model grid: largest connected component, filled holes, minimum sizes, dilation.

Runs with SimpleITK filters on the label map (never on class probabilities), before it is resampled
back to the input grid, so sizes in mm³ refer to the model grid's voxels. For each label the steps
are: drop components smaller than the minimum size, keep the largest component, fill holes (only
background voxels enclosed by the label become the label: other labels are never overwritten).
Components are joined by faces (``connectivity`` 6, as nnU-Net's and SimpleITK's default) or also by edges
and corners (26, MONAI's ``KeepLargestConnectedComponent`` default). Dilations run last, in the order given:
a label grows into the background voxels whose centres lie within a ball of the radius of one of its
voxels' centres (an exact Euclidean distance map: in voxels, or in mm on the model grid's spacing).

Example::

    >>> import numpy as np
    >>> labels = np.zeros((5, 5, 9), np.uint8)
    >>> labels[1:4, 1:4, 1:4] = 1; labels[2, 2, 2] = 0   # a 3×3×3 cube with a cavity
    >>> labels[2, 2, 7] = 1                               # a 1-voxel speck
    >>> cleaned = postprocess(labels, spacing=(1.0, 1.0, 2.0), keep_largest_component=(1,), fill_holes=(1,))
    >>> int(cleaned.sum()), int(cleaned[2, 2, 2]), int(cleaned[2, 2, 7])
    (27, 1, 0)
    >>> int(postprocess(labels, (1.0, 1.0, 2.0), minimum_size_mm3={1: 4.0}).sum())   # the 2 mm³ speck goes
    26
    >>> corners = np.zeros((3, 3, 3), np.uint8); corners[0, 0, 0] = 1; corners[1, 1, 1] = 1; corners[2, 2, 2] = 1
    >>> [int(postprocess(corners, (1, 1, 1), keep_largest_component=(1,), connectivity=c).sum()) for c in (6, 26)]
    [1, 3]
    >>> int(postprocess(corners[:1, :1, :1], (1, 1, 1), dilate=[((1,), (0, 0, 0))]).sum())
    1
    >>> speck = np.zeros((5, 5, 5), np.uint8); speck[2, 2, 2] = 1
    >>> int(postprocess(speck, (1, 1, 1), dilate=[((1,), (1, 1, 1))]).sum())   # the speck and its 6 faces
    7
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import SimpleITK as sitk


def _mask_image(mask: np.ndarray, spacing: Sequence) -> sitk.Image:
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in spacing))
    return image


def _components(mask: np.ndarray, spacing: Sequence, minimum_voxels: int = 0, connectivity: int = 6) -> np.ndarray:
    """Connected components (joined by faces, or with ``connectivity`` 26 also by edges and corners), numbered by
    decreasing size, small ones dropped."""
    if connectivity not in (6, 26):
        raise ValueError(f"Connectivity must be 6 or 26, not {connectivity!r}")
    components = sitk.ConnectedComponent(_mask_image(mask, spacing), connectivity == 26)
    relabelled = sitk.RelabelComponent(components, minimumObjectSize=int(minimum_voxels))
    return sitk.GetArrayFromImage(relabelled)


def largest_component(mask: np.ndarray, spacing: Sequence, connectivity: int = 6) -> np.ndarray:
    """The largest connected component of a boolean Z×Y×X ``mask`` (all False when the mask is empty).

    >>> mask = np.zeros((1, 1, 6), bool); mask[0, 0, [0, 2, 3]] = True
    >>> largest_component(mask, (1, 1, 1)).nonzero()[2].tolist()
    [2, 3]
    """
    if not mask.any():
        return mask.copy()
    return _components(mask, spacing, connectivity=connectivity) == 1


def dilation_radius(dilation, spacing: Sequence) -> tuple:
    """The radius (x, y, z) in voxels of a package's ``Dilation`` (``voxels`` or ``mm``) on a grid of ``spacing``.

    >>> from types import SimpleNamespace as Dilation
    >>> dilation_radius(Dilation(voxels=2, mm=None), (0.5, 1.0, 3.0)), dilation_radius(Dilation(voxels=None, mm=2.0),
    ...                                                                                   (0.5, 1.0, 3.0))
    ((2.0, 2.0, 2.0), (4.0, 2.0, 0.6666666666666666))
    """
    if getattr(dilation, "voxels", None) is not None:
        return (float(dilation.voxels),) * 3
    return tuple(float(dilation.mm) / float(s) for s in spacing)


def _dilated(mask: np.ndarray, radius: Sequence) -> np.ndarray:
    """``mask`` grown by the ellipsoid of ``radius`` voxels (x, y, z): every voxel whose centre lies within it of
    the centre of a mask voxel (exact Euclidean distances, computed on a grid scaled to make the ellipsoid a
    unit ball)."""
    if not mask.any() or max(radius) <= 0:
        return mask
    # An axis of radius 0 keeps voxels in their slice: a tiny radius (huge scale) stands in for it.
    scale = tuple(1.0 / max(float(r), 1e-6) for r in radius)
    image = _mask_image(mask, scale)
    squared = sitk.SignedMaurerDistanceMap(image, insideIsPositive=False, squaredDistance=True, useImageSpacing=True,
                                           backgroundValue=0)
    return sitk.GetArrayFromImage(squared) <= 1.0 + 1e-9


def postprocess(
    labels: np.ndarray,
    spacing: Sequence,
    keep_largest_component: Sequence = (),
    fill_holes: Sequence = (),
    minimum_size_mm3: Mapping | None = None,
    connectivity: int = 6,
    dilate: Sequence = (),
) -> np.ndarray:
    """A cleaned copy of ``labels`` (Z×Y×X array; ``spacing`` in mm, (x, y, z)); the steps name label values.

    Args:
        labels: the label map on the model grid.
        spacing: its voxel size in mm (x, y, z).
        keep_largest_component: label values of which only the largest connected component is kept.
        fill_holes: label values whose enclosed background becomes the label.
        minimum_size_mm3: label value → the smallest component kept (mm³).
        connectivity: 6 (components joined by faces) or 26 (also by edges and corners).
        dilate: (label values, radius (x, y, z) in voxels) pairs, or a package's ``Dilation`` steps (in voxels or
            mm), run last and in order; dilation fills background voxels only.
    """
    result = labels.copy()
    minimum_size_mm3 = dict(minimum_size_mm3 or {})
    voxel_volume = float(np.prod(spacing))
    for value in sorted(set(keep_largest_component) | set(fill_holes) | set(minimum_size_mm3)):
        mask = result == value
        if not mask.any():
            continue
        if value in minimum_size_mm3 or value in keep_largest_component:
            minimum_voxels = math.ceil(float(minimum_size_mm3.get(value, 0.0)) / voxel_volume - 1e-9)
            components = _components(mask, spacing, minimum_voxels, connectivity)
            kept = components == 1 if value in keep_largest_component else components > 0
            result[mask & ~kept] = 0
            mask = kept
        if value in fill_holes and mask.any():
            filled = sitk.GetArrayFromImage(sitk.BinaryFillhole(_mask_image(mask, spacing), foregroundValue=1))
            result[(filled > 0) & (result == 0)] = value
    for step in dilate:
        values, radius = step if isinstance(step, tuple) else (step.labels, dilation_radius(step, spacing))
        for value in values:  # a background voxel two labels reach goes to the one listed first
            result[_dilated(result == int(value), radius) & (result == 0)] = int(value)
    return result


def postprocess_steps(labels: np.ndarray, spacing: Sequence, steps) -> np.ndarray:
    """``postprocess`` with a package's ``Postprocessing`` steps (those it declares: largest components, holes,
    minimum sizes, connectivity, dilations); ``labels`` itself when it declares none."""
    connectivity = int(getattr(steps, "connectivity", 6))
    dilate = tuple(getattr(steps, "dilate", ()))
    if not (steps.keep_largest_component or steps.fill_holes or steps.minimum_size_mm3 or dilate):
        return labels
    return postprocess(labels, spacing, steps.keep_largest_component, steps.fill_holes, steps.minimum_size_mm3,
                       connectivity, dilate)

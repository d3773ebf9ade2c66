"""Clean-up of a label map on the model grid: largest connected component, filled holes, minimum sizes.

Runs with SimpleITK filters on the label map (never on class probabilities), before it is resampled
back to the input grid, so sizes in mm³ refer to the model grid's voxels. For each label the steps
are: drop components smaller than the minimum size, keep the largest component, fill holes (only
background voxels enclosed by the label become the label: other labels are never overwritten).

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


def _components(mask: np.ndarray, spacing: Sequence, minimum_voxels: int = 0) -> np.ndarray:
    """Connected components (6-connected faces), numbered by decreasing size, small ones dropped."""
    components = sitk.ConnectedComponent(_mask_image(mask, spacing))
    relabelled = sitk.RelabelComponent(components, minimumObjectSize=int(minimum_voxels))
    return sitk.GetArrayFromImage(relabelled)


def postprocess(
    labels: np.ndarray,
    spacing: Sequence,
    keep_largest_component: Sequence = (),
    fill_holes: Sequence = (),
    minimum_size_mm3: Mapping | None = None,
) -> np.ndarray:
    """A cleaned copy of ``labels`` (Z×Y×X array; ``spacing`` in mm, (x, y, z)); the steps name label values."""
    result = labels.copy()
    minimum_size_mm3 = dict(minimum_size_mm3 or {})
    voxel_volume = float(np.prod(spacing))
    for value in sorted(set(keep_largest_component) | set(fill_holes) | set(minimum_size_mm3)):
        mask = result == value
        if not mask.any():
            continue
        if value in minimum_size_mm3 or value in keep_largest_component:
            minimum_voxels = math.ceil(float(minimum_size_mm3.get(value, 0.0)) / voxel_volume - 1e-9)
            components = _components(mask, spacing, minimum_voxels)
            kept = components == 1 if value in keep_largest_component else components > 0
            result[mask & ~kept] = 0
            mask = kept
        if value in fill_holes and mask.any():
            filled = sitk.GetArrayFromImage(sitk.BinaryFillhole(_mask_image(mask, spacing), foregroundValue=1))
            result[(filled > 0) & (result == 0)] = value
    return result

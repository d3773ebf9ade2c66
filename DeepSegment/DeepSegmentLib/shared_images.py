"""Volumes moved between Slicer and a worker process through shared memory: no files, exact geometry.

Built on ``ModelRegistryLib.shared_arrays`` (segments made and always freed by the Slicer side, no resource
tracker, leftovers of a killed Slicer removed later; its names ``SharedBlock``, ``segment_prefix`` and
``NAME_PREFIX`` are importable from here too). A :class:`SharedImage` describes an image in a segment (segment
name, voxel type, array shape, origin, spacing, direction); it is a dataclass, so it travels in a job's JSON
arguments and result (ModelRegistryLib.jobs.encode_value), and floats survive JSON exactly.

Example::

    >>> import numpy as np, SimpleITK as sitk
    >>> image = sitk.GetImageFromArray(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    >>> image.SetSpacing((0.7, 0.8, 2.5)); image.SetOrigin((1.0, -2.0, 3.5))
    >>> block, shared = share_image(image)
    >>> copy = read_shared_image(shared)
    >>> block.close(); block.unlink()
    >>> bool((sitk.GetArrayFromImage(copy) == sitk.GetArrayFromImage(image)).all()), copy.GetSpacing()
    (True, (0.7, 0.8, 2.5))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from ModelRegistryLib.shared_arrays import SharedBlock, allocate_array, array_in, free_blocks, share_array

# Where they were first: still importable from here.
from ModelRegistryLib.shared_arrays import NAME_PREFIX, segment_prefix  # noqa: F401

LABEL_MAP_BYTES_PER_VOXEL = 2  # label maps are uint8 or uint16


@dataclass(frozen=True)
class SharedImage:
    """An image in a shared segment: its voxels as a NumPy array of ``dtype`` and ``shape`` (z, y, x[, components])
    at the start of segment ``block``, and its geometry (LPS, as SimpleITK gives it)."""

    block: str
    dtype: str
    shape: tuple
    origin: tuple
    spacing: tuple
    direction: tuple
    vector: bool = False


def _describe(image: sitk.Image, block: str, dtype: str, shape: tuple) -> SharedImage:
    return SharedImage(block, dtype, tuple(shape), tuple(image.GetOrigin()), tuple(image.GetSpacing()),
                       tuple(image.GetDirection()), image.GetNumberOfComponentsPerPixel() > 1)


def share_image(image: sitk.Image) -> tuple:
    """A new segment holding ``image``'s voxels, and its :class:`SharedImage`; the caller closes and unlinks it."""
    block, shared = share_array(sitk.GetArrayViewFromImage(image))
    return block, _describe(image, block.name, shared.dtype, shared.shape)


def allocate_label_map(reference: sitk.Image) -> tuple:
    """A new segment big enough for a label map on ``reference``'s grid, and its :class:`SharedImage`
    (the worker writes the label map's own voxel type; see :func:`write_shared_image`)."""
    block, shared = allocate_array(tuple(reversed(reference.GetSize())), np.uint16)
    return block, _describe(reference, block.name, shared.dtype, shared.shape)


def share_run_volumes(images) -> tuple:
    """``(blocks, inputs, output)`` for one run: a segment holding each of ``images`` (their ``SharedImage``s are
    ``inputs``) and one for the label map on the first image's grid (``output``). ``blocks`` are every segment
    made, for the caller to free when the run has ended; if any cannot be made, those made are freed and the
    error raised."""
    blocks, inputs = [], []
    try:
        for image in images:
            block, shared = share_image(image)
            blocks.append(block)
            inputs.append(shared)
        block, output = allocate_label_map(images[0])
        blocks.append(block)
    except BaseException:
        free_blocks(blocks)
        raise
    return blocks, inputs, output


def read_shared_image(shared: SharedImage) -> sitk.Image:
    """A copy of the image ``shared`` describes, with exactly its geometry."""
    block = SharedBlock.attach(shared.block)
    try:
        voxels = array_in(block, shared.dtype, shared.shape)
        image = sitk.GetImageFromArray(voxels.copy(), isVector=shared.vector)
        del voxels
    finally:
        block.close()
    image.SetOrigin(shared.origin)
    image.SetSpacing(shared.spacing)
    image.SetDirection(shared.direction)
    return image


def write_shared_image(image: sitk.Image, target: SharedImage) -> SharedImage:
    """Write a label map into the segment :func:`allocate_label_map` made; returns what was written.

    The label map must have the target's size; its voxel type (at most two bytes) and geometry are its own.
    """
    voxels = sitk.GetArrayViewFromImage(image)
    if tuple(voxels.shape) != tuple(target.shape):
        raise ValueError(f"The label map has {voxels.shape[::-1]} voxels, not the input's {target.shape[::-1]}")
    if voxels.dtype.itemsize > LABEL_MAP_BYTES_PER_VOXEL or voxels.dtype.kind not in "ui":
        raise ValueError(f"A label map of {voxels.dtype} voxels cannot be sent back; use 8 or 16 bit integers")
    written = _describe(image, target.block, voxels.dtype.str, voxels.shape)
    block = SharedBlock.attach(target.block)
    try:
        array = array_in(block, written.dtype, written.shape)
        array[...] = voxels
        del array
    finally:
        block.close()
    return written

"""Volumes moved between Slicer and a worker process through shared memory: no files, exact geometry.

The Slicer side creates every segment, for the input volumes and for the label map the worker writes back,
and frees them all when the run ends, however it ends: a worker that crashes holds only mappings, which die
with it, so nothing leaks. A :class:`SharedImage` describes an image in a segment (segment name, voxel type,
array shape, origin, spacing, direction); it is a dataclass, so it travels in a job's JSON arguments and
result (ModelRegistryLib.jobs.encode_value), and floats survive JSON exactly.

Why not ``multiprocessing.shared_memory.SharedMemory`` as it is: on POSIX before Python 3.13 it registers
every segment it creates or attaches with multiprocessing's resource tracker, a helper process started with
``sys.executable`` (in Slicer: the Slicer application itself), and the tracker of an attaching worker
unlinks the segment when that worker exits. So on POSIX the segments are made with the primitive it uses
(``shm_open`` and ``mmap``) and nothing tracks them; on Windows, where named shared memory has no tracker
and disappears with its last handle, ``SharedMemory`` is used as it is.

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

import mmap
import os
import secrets
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

if os.name == "nt":
    from multiprocessing import shared_memory
else:
    import _posixshmem

NAME_PREFIX = "sdl_"  # short: macOS allows 31 characters in a segment name
LABEL_MAP_BYTES_PER_VOXEL = 2  # label maps are uint8 or uint16


class SharedBlock:
    """A named shared memory segment mapped into this process; ``buf`` is its memory.

    :meth:`create` makes a new one (the creator unlinks it), :meth:`attach` maps an existing one.
    """

    def __init__(self, name: str, size: int, create: bool) -> None:
        self.name = name
        if os.name == "nt":
            self._memory = shared_memory.SharedMemory(name, create=create, size=size)
            self._map = None
            self.buf = self._memory.buf
            return
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = _posixshmem.shm_open("/" + name, flags, mode=0o600)
        try:
            if create:
                os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size if create else os.fstat(fd).st_size)
        finally:
            os.close(fd)
        self.buf = memoryview(self._map)

    @classmethod
    def create(cls, size: int) -> SharedBlock:
        return cls(NAME_PREFIX + secrets.token_hex(8), max(1, int(size)), create=True)

    @classmethod
    def attach(cls, name: str) -> SharedBlock:
        return cls(name, 0, create=False)

    def close(self) -> None:
        """Unmap the segment from this process (every array viewing it must be gone)."""
        self.buf.release()
        if os.name == "nt":
            self._memory.close()
        else:
            self._map.close()

    def unlink(self) -> None:
        """Remove the segment's name; its memory goes when the last process unmaps it (the creator calls this)."""
        if os.name != "nt":
            _posixshmem.shm_unlink("/" + self.name)


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


def _array_in(block: SharedBlock, shared: SharedImage) -> np.ndarray:
    return np.ndarray(shared.shape, dtype=np.dtype(shared.dtype), buffer=block.buf)


def share_image(image: sitk.Image) -> tuple:
    """A new segment holding ``image``'s voxels, and its :class:`SharedImage`; the caller closes and unlinks it."""
    voxels = sitk.GetArrayViewFromImage(image)
    block = SharedBlock.create(voxels.nbytes)
    target = _array_in(block, _describe(image, block.name, voxels.dtype.str, voxels.shape))
    target[...] = voxels
    del target
    return block, _describe(image, block.name, voxels.dtype.str, voxels.shape)


def allocate_label_map(reference: sitk.Image) -> tuple:
    """A new segment big enough for a label map on ``reference``'s grid, and its :class:`SharedImage`
    (the worker writes the label map's own voxel type; see :func:`write_shared_image`)."""
    shape = tuple(reversed(reference.GetSize()))
    block = SharedBlock.create(int(np.prod(shape)) * LABEL_MAP_BYTES_PER_VOXEL)
    return block, _describe(reference, block.name, np.dtype(np.uint16).str, shape)


def read_shared_image(shared: SharedImage) -> sitk.Image:
    """A copy of the image ``shared`` describes, with exactly its geometry."""
    block = SharedBlock.attach(shared.block)
    try:
        voxels = _array_in(block, shared)
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
        array = _array_in(block, written)
        array[...] = voxels
        del array
    finally:
        block.close()
    return written

"""NumPy arrays moved between Slicer and worker processes through shared memory: no files, no pickling.

The Slicer side creates every segment, for what a job reads and for what it writes back, and frees them all
when the job ends, however it ends: a worker that crashes holds only mappings, which die with it. A
:class:`SharedArray` names an array in a segment (segment name, dtype, shape); it is a dataclass, so it
travels in a job's JSON arguments and result (ModelRegistryLib.jobs.encode_value). DeepSegment's volumes
(``DeepSegmentLib.shared_images``) and Training Data Export's augmentation preview use it.

Why not ``multiprocessing.shared_memory.SharedMemory`` as it is: on POSIX before Python 3.13 it registers
every segment it creates or attaches with multiprocessing's resource tracker, a helper process started with
``sys.executable`` (in Slicer: the Slicer application itself), and the tracker of an attaching worker
unlinks the segment when that worker exits. So on POSIX the segments are made with the primitive it uses
(``shm_open`` and ``mmap``) and nothing tracks them; on Windows, where named shared memory has no tracker
and disappears with its last handle, ``SharedMemory`` is used as it is.

A segment's name carries its creator's process id (:func:`segment_prefix`). If Slicer itself is killed while
a job runs, its segments stay in memory (on Linux, files in ``/dev/shm``) until
:func:`remove_orphan_segments` removes those whose creator is gone; Slicer's Model Registry module calls it
when Slicer starts, the DeepSegment model service when it is made. macOS offers no way to list its
segments: there they stay until the computer restarts. On Windows nothing stays: a segment goes with the
last process that has it open.

Example::

    >>> import numpy as np
    >>> block, shared = share_array(np.arange(6, dtype=np.int16).reshape(2, 3))
    >>> output, result = allocate_array((2, 3), np.float32)
    >>> write_shared_array(read_shared_array(shared) * 0.5, result)  # what a worker does
    >>> read_shared_array(result).tolist(), result.dtype
    ([[0.0, 0.5, 1.0], [1.5, 2.0, 2.5]], '<f4')
    >>> free_blocks([block, output])
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .jobs import process_exists

if os.name == "nt":
    from multiprocessing import shared_memory
else:
    import _posixshmem

NAME_PREFIX = "sdl_"  # short: macOS allows 31 characters in a segment name
# Where Linux shows the POSIX shared memory segments of the machine as files.
SEGMENT_FOLDER = "/dev/shm"
_SEGMENT_NAME = re.compile(re.escape(NAME_PREFIX) + r"(\d+)_[0-9a-f]+")


def segment_prefix(pid: int | None = None) -> str:
    """The start of the names of the segments process ``pid`` (this one by default) creates: a leftover segment
    names the process that leaked it.

    >>> segment_prefix(4194304)
    'sdl_4194304_'
    """
    return f"{NAME_PREFIX}{os.getpid() if pid is None else pid}_"


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
        return cls(segment_prefix() + secrets.token_hex(6), max(1, int(size)), create=True)

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


def free_blocks(blocks: Iterable[SharedBlock]) -> None:
    """Close and unlink segments this process created (what a job's creator does when the job has ended)."""
    for block in blocks:
        block.close()
        block.unlink()


@dataclass(frozen=True)
class SharedArray:
    """An array of ``dtype`` (``numpy.dtype.str``) and ``shape`` at the start of the shared segment ``block``."""

    block: str
    dtype: str
    shape: tuple


def array_in(block: SharedBlock, dtype, shape: Sequence[int]) -> np.ndarray:
    """The array of ``dtype`` and ``shape`` at the start of ``block``'s memory (a view: delete it before closing)."""
    return np.ndarray(tuple(shape), dtype=np.dtype(dtype), buffer=block.buf)


def share_array(array: np.ndarray) -> tuple:
    """A new segment holding a copy of ``array``, and its :class:`SharedArray`; the caller frees the segment."""
    array = np.asarray(array)
    block, shared = allocate_array(array.shape, array.dtype)
    target = array_in(block, shared.dtype, shared.shape)
    target[...] = array
    del target
    return block, shared


def allocate_array(shape: Sequence[int], dtype) -> tuple:
    """A new segment for an array of ``shape`` and ``dtype`` (zeros), and its :class:`SharedArray`."""
    dtype = np.dtype(dtype)
    shape = tuple(int(size) for size in shape)
    block = SharedBlock.create(int(np.prod(shape)) * dtype.itemsize)
    return block, SharedArray(block.name, dtype.str, shape)


def read_shared_array(shared: SharedArray) -> np.ndarray:
    """A copy of the array ``shared`` names."""
    block = SharedBlock.attach(shared.block)
    try:
        view = array_in(block, shared.dtype, shared.shape)
        array = view.copy()
        del view
    finally:
        block.close()
    return array


def write_shared_array(array: np.ndarray, target: SharedArray) -> None:
    """Write ``array`` into the segment ``target`` names (allocated by the other side): same shape, its values
    cast to the target's dtype as NumPy's assignment does."""
    array = np.asarray(array)
    if tuple(array.shape) != tuple(target.shape):
        raise ValueError(f"An array of shape {array.shape} cannot be written where {tuple(target.shape)} is expected")
    block = SharedBlock.attach(target.block)
    try:
        view = array_in(block, target.dtype, target.shape)
        view[...] = array
        del view
    finally:
        block.close()


def remove_orphan_segments(folder: str = SEGMENT_FOLDER) -> list:
    """Remove the segments left by processes that are gone (Slicer killed while a job ran); returns their names.

    Segments of live processes, and those this user may not remove, stay. Only where the system lists its
    segments as files in ``folder`` (Linux); elsewhere nothing is found (see the module description).
    """
    try:
        names = os.listdir(folder)
    except OSError:  # no such folder: macOS, Windows
        return []
    removed = []
    for name in names:
        match = _SEGMENT_NAME.fullmatch(name)
        if match is None or process_exists(int(match.group(1))):
            continue
        with contextlib.suppress(FileNotFoundError, PermissionError):  # gone meanwhile; another user's
            _posixshmem.shm_unlink("/" + name)
            removed.append(name)
    return removed

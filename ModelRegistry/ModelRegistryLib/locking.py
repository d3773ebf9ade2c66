"""An exclusive lock between processes, so that two installs of one model never write it at once.

Two Slicer instances, or Slicer and the command line, may install the same model at the same
moment. :class:`FileLock` locks a lock file with the operating system's own file locks
(``fcntl.flock`` on POSIX, ``msvcrt.locking`` on Windows): the system releases them when the
holding process exits or is killed, so a crash never leaves a stale lock behind, and no lock file
ever has to be deleted (deleting one would let two processes lock two different files of the same
name). Separate FileLock objects on one path also exclude each other inside one process.

Example::

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "model.lock")
    >>> with FileLock(path):
    ...     FileLock(path, timeout=0).acquire()
    Traceback (most recent call last):
    ...
    ModelRegistryLib.errors.RegistryError: ... is locked by another install ...
    >>> with FileLock(path, timeout=0):
    ...     pass
    >>> import shutil; shutil.rmtree(os.path.dirname(path))
"""

from __future__ import annotations

import os
import threading
import time

from .errors import CancelledError, RegistryError

try:
    import fcntl

    def _try_lock(descriptor: int) -> bool:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(descriptor: int) -> None:
        fcntl.flock(descriptor, fcntl.LOCK_UN)

except ImportError:  # Windows
    import msvcrt

    # msvcrt locks a byte range from the current position: always the first byte.
    def _try_lock(descriptor: int) -> bool:
        os.lseek(descriptor, 0, os.SEEK_SET)
        try:
            msvcrt.locking(descriptor, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(descriptor: int) -> None:
        os.lseek(descriptor, 0, os.SEEK_SET)
        msvcrt.locking(descriptor, msvcrt.LK_UNLCK, 1)


class FileLock:
    """Exclusive inter-process lock on the file ``path`` (created with its folder if missing); a context manager.

    ``acquire()`` waits, checking every ``poll`` seconds, until the lock is free; after ``timeout``
    seconds (None: no limit, 0: a single try) it raises RegistryError naming the lock, and when
    ``cancel`` is set it raises CancelledError.
    """

    def __init__(
        self,
        path: str,
        timeout: float | None = None,
        cancel: threading.Event | None = None,
        poll: float = 0.1,
    ) -> None:
        self.path = path
        self.timeout = timeout
        self.cancel = cancel
        self.poll = poll
        self._descriptor: int | None = None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def acquire(self) -> None:
        if self._descriptor is not None:
            raise RuntimeError(f"{self.path} is already locked by this FileLock")
        folder = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(folder, exist_ok=True)
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as error:
            raise RegistryError(f"cannot create the lock file {self.path}: {error.strerror or error}") from error
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        try:
            while not _try_lock(descriptor):
                if self.cancel is not None and self.cancel.is_set():
                    raise CancelledError(f"cancelled while waiting for {self.path}")
                if deadline is not None and time.monotonic() >= deadline:
                    waited = f" (waited {self.timeout:g} s)" if self.timeout else ""
                    raise RegistryError(
                        f"{self.path} is locked by another install of this model, in this or another "
                        f"program{waited}; try again when it has finished"
                    )
                delay = self.poll if deadline is None else max(0.0, min(self.poll, deadline - time.monotonic()))
                if self.cancel is None:
                    time.sleep(delay)
                else:
                    self.cancel.wait(delay)
        except BaseException:
            os.close(descriptor)
            raise
        self._descriptor = descriptor

    def release(self) -> None:
        """Unlock; does nothing when not locked."""
        descriptor, self._descriptor = self._descriptor, None
        if descriptor is None:
            return
        try:
            _unlock(descriptor)
        finally:
            os.close(descriptor)

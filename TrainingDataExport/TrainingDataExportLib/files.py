"""Files written so that a crash, a power cut or a full disk never leaves a half-written one behind.

Every write goes to a temporary file in the target's folder (so that the final rename stays within one file
system, where it is atomic), is flushed to disk, and is then renamed over the target. The previous version is
kept as ``<name>.bak`` (itself written atomically), so a save never silently destroys earlier work.

Example::

    >>> import os, shutil, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> path = os.path.join(folder, "notes.txt")
    >>> write_file_atomically(path, b"first")
    >>> write_file_atomically(path, b"second")
    >>> open(path).read(), open(backup_path(path)).read(), sorted(os.listdir(folder))
    ('second', 'first', ['notes.txt', 'notes.txt.bak'])
    >>> shutil.rmtree(folder)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid

BACKUP_SUFFIX = ".bak"


def backup_path(path: str) -> str:
    """Where the previous version of ``path`` is kept."""
    return os.fspath(path) + BACKUP_SUFFIX


def temporary_path(path: str, suffix: str = ".tmp") -> str:
    """A new hidden name next to ``path``, ending with ``suffix`` (writers that pick a format by extension
    need the real one)."""
    folder, name = os.path.split(os.fspath(path))
    return os.path.join(folder, f".{name}.{os.getpid()}.{uuid.uuid4().hex[:12]}{suffix}")


def _write_new_file(path: str, data: bytes, mode: int | None) -> None:
    # os.open with 0o666 lets the user's umask decide the permissions, as for any file the user creates;
    # tempfile.mkstemp would make it private (0600) and lock out the rest of a shared project's group.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
        file.flush()
        # On disk before the rename: otherwise a power cut can leave the new name pointing at empty data.
        os.fsync(file.fileno())
    if mode is not None:
        os.chmod(path, mode)


def sync_folder(folder: str) -> None:
    """Make renames in ``folder`` durable (POSIX); Windows cannot open a folder for this and needs no such step."""
    if os.name != "posix":
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    except OSError:  # some network file systems refuse fsync on folders; the rename itself is done
        pass
    finally:
        os.close(descriptor)


def sync_file(path: str) -> None:
    """Flush a file another writer (a Slicer storage node...) has written to disk before it is renamed."""
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _keep_backup(path: str) -> None:
    """Copy ``path`` to its backup name atomically; a copy (not a rename) so ``path`` never disappears."""
    temporary = temporary_path(backup_path(path))
    try:
        shutil.copyfile(path, temporary)
        shutil.copymode(path, temporary)
        sync_file(temporary)
        os.replace(temporary, backup_path(path))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)


def install_file(temporary: str, path: str, keep_backup: bool = True) -> None:
    """Rename the complete file ``temporary`` (in ``path``'s folder) to ``path``, keeping the previous ``path``
    as ``<path>.bak`` when ``keep_backup``.

    >>> import os, shutil, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> path = os.path.join(folder, "case.seg.nrrd")
    >>> for content in (b"old", b"new"):
    ...     temporary = temporary_path(path, ".seg.nrrd")
    ...     with open(temporary, "wb") as file:
    ...         _ = file.write(content)
    ...     install_file(temporary, path)
    >>> open(path, "rb").read(), open(backup_path(path), "rb").read()
    (b'new', b'old')
    >>> shutil.rmtree(folder)
    """
    path = os.fspath(path)
    try:
        if keep_backup and os.path.exists(path):
            _keep_backup(path)
        sync_file(temporary)
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
    sync_folder(os.path.dirname(os.path.abspath(path)))


def write_file_atomically(path: str, data: bytes, keep_backup: bool = True) -> None:
    """Write ``path`` so that it holds, at every moment, either its old or its new content, never a mix;
    the previous content is kept as ``<path>.bak`` when ``keep_backup``."""
    path = os.fspath(path)
    mode = os.stat(path).st_mode & 0o7777 if os.path.exists(path) else None
    temporary = temporary_path(path)
    try:
        _write_new_file(temporary, data, mode)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise
    install_file(temporary, path, keep_backup)

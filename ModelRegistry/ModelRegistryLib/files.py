"""The one way every module of the extension writes a file: completely, or not at all.

A file is written under a hidden temporary name in its final folder (``.partial-<random>-<name>``, so that a
writer choosing the format by the file name's ending, as SimpleITK does, sees the right one), flushed to
disk, renamed over the target (atomic within one file system), and the folder is flushed too, so that the
rename survives a power cut. A reader therefore sees the old file or the new one, never half of one; a
failed write (a full disk, a read-only folder, an error in the writer) removes the temporary file, leaves
the previous file as it was and raises. Temporary names start with :data:`TEMPORARY_PREFIX`, so that a
program cleaning up after a crash (:func:`is_temporary_name`) recognises them.

Files and folders are created with the permissions the user's umask gives (as ``open`` and ``mkdir`` do),
never private ones, so that a cache or an export shared by a group stays readable by the group; a file that
is replaced keeps its permissions. :func:`contained_path` resolves a relative path found in a file (a
manifest, a list) inside a folder, refusing any that would lead out of it.

Example::

    >>> import json, os, shutil, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> path = os.path.join(folder, "settings", "pins.json")
    >>> write_json_atomically(path, {"demo": "1.0.0"})
    >>> json.load(open(path))
    {'demo': '1.0.0'}
    >>> write_bytes_atomically(path, b"{}", keep_backup=True)
    >>> open(path, "rb").read(), json.load(open(backup_path(path)))
    (b'{}', {'demo': '1.0.0'})
    >>> with atomic_target(os.path.join(folder, "label.nii.gz")) as temporary:  # any writer, e.g. SimpleITK
    ...     os.path.basename(temporary).startswith(TEMPORARY_PREFIX), temporary.endswith("-label.nii.gz")
    (True, True)
    >>> sorted(os.listdir(folder)), os.listdir(os.path.join(folder, "settings"))
    (['label.nii.gz', 'settings'], ['pins.json', 'pins.json.bak'])
    >>> contained_path(folder, "../etc/passwd")
    Traceback (most recent call last):
    ...
    ValueError: '../etc/passwd' leads outside ...
    >>> shutil.rmtree(folder)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid

TEMPORARY_PREFIX = ".partial-"
BACKUP_SUFFIX = ".bak"
# File names are limited to 255 bytes on most file systems: a long target name is shortened in its temporary
# name (its end, which holds the extension, is kept).
_MAX_NAME_IN_TEMPORARY = 180


def temporary_path(path: str, suffix: str = "") -> str:
    """A new hidden name in ``path``'s folder that ends with ``path``'s name (and ``suffix``, when given).

    >>> name = os.path.basename(temporary_path("/data/case.seg.nrrd"))
    >>> name.startswith(TEMPORARY_PREFIX), name.endswith("-case.seg.nrrd")
    (True, True)
    """
    folder, name = os.path.split(os.fspath(path))
    return os.path.join(folder, f"{TEMPORARY_PREFIX}{uuid.uuid4().hex[:12]}-{name[-_MAX_NAME_IN_TEMPORARY:]}{suffix}")


def is_temporary_name(name: str) -> bool:
    """Whether a file name is one of :func:`temporary_path`'s (a leftover of an interrupted write)."""
    return os.path.basename(name).startswith(TEMPORARY_PREFIX)


def remove_temporary_files(root: str) -> None:
    """Remove the temporary files interrupted writes left anywhere under ``root`` (their names say so: nothing else
    is named like them)."""
    for folder, _, names in os.walk(root):
        for name in names:
            if is_temporary_name(name):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(folder, name))


def backup_path(path: str) -> str:
    """Where the previous version of ``path`` is kept by a write with ``keep_backup``."""
    return os.fspath(path) + BACKUP_SUFFIX


def sync_file(path: str) -> None:
    """Flush a file to disk (one another writer, such as SimpleITK or a Slicer storage node, has written)."""
    # Read-write: Windows cannot flush a descriptor opened for reading only.
    descriptor = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def sync_folder(folder: str) -> None:
    """Make the renames in ``folder`` durable (POSIX); Windows cannot open a folder for this and needs no such step."""
    if os.name != "posix":
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    except OSError:  # some network file systems refuse fsync on folders; the rename itself is done
        pass
    finally:
        os.close(descriptor)


def _create_empty(path: str) -> None:
    # 0o666 lets the umask decide, as for any file the user creates; tempfile.mkstemp would make it 0600 and
    # lock the rest of a shared project's group out of every file written this way.
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666))


def _keep_backup(path: str) -> None:
    """Copy ``path`` to its backup name atomically: a copy, not a rename, so ``path`` never disappears."""
    with atomic_target(backup_path(path)) as temporary:
        shutil.copyfile(path, temporary)
        shutil.copymode(path, temporary)


def install_file(temporary: str, path: str, keep_backup: bool = False) -> None:
    """Flush the complete file ``temporary`` (in ``path``'s folder) to disk and rename it to ``path``, keeping
    ``path``'s permissions, and its previous content as ``<path>.bak`` when ``keep_backup``. ``temporary`` is
    gone afterwards, whether this succeeds or raises.

    >>> import shutil, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> path = os.path.join(folder, "case.seg.nrrd")
    >>> for content in (b"old", b"new"):
    ...     temporary = temporary_path(path)
    ...     with open(temporary, "wb") as file:
    ...         _ = file.write(content)
    ...     install_file(temporary, path, keep_backup=True)
    >>> open(path, "rb").read(), open(backup_path(path), "rb").read()
    (b'new', b'old')
    >>> shutil.rmtree(folder)
    """
    path = os.fspath(path)
    try:
        sync_file(temporary)
        if os.path.exists(path):
            if keep_backup:
                _keep_backup(path)
            shutil.copymode(path, temporary)
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
    sync_folder(os.path.dirname(os.path.abspath(path)))


@contextlib.contextmanager
def atomic_target(path: str, suffix: str = "", keep_backup: bool = False):
    """A new temporary path beside ``path`` (see :func:`temporary_path`) for any writer to write; when the block
    ends without an error the file is installed at ``path`` (:func:`install_file`), otherwise removed.

    The folder is created when missing. The temporary file exists (empty) when the block starts.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = temporary_path(path, suffix)
    _create_empty(temporary)
    try:
        yield temporary
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise
    install_file(temporary, path, keep_backup)


def write_bytes_atomically(path: str, data: bytes, keep_backup: bool = False) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_target`."""
    with atomic_target(path, keep_backup=keep_backup) as temporary, open(temporary, "wb") as file:
        file.write(data)


def write_text_atomically(path: str, text: str, keep_backup: bool = False) -> None:
    """Write ``text`` (UTF-8, line ends as given) to ``path`` through :func:`atomic_target`."""
    write_bytes_atomically(path, text.encode("utf-8"), keep_backup)


def write_json_atomically(path: str, data) -> None:
    """Write ``data`` as JSON through :func:`atomic_target`; NaN and infinity, which JSON lacks, are refused."""
    write_text_atomically(path, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False))


def probe_writable(folder: str) -> None:
    """Raise ``OSError`` (read-only file system, permission denied...) unless a file can be created in
    ``folder``: tried for real, with a temporary file removed at once, because permission bits do not tell
    (root ignores them; a read-only mount or a full quota does not show in them).

    >>> import tempfile
    >>> probe_writable(tempfile.gettempdir())
    """
    temporary = temporary_path(os.path.join(folder, "write-test"))
    _create_empty(temporary)
    os.remove(temporary)


def make_temporary_folder(parent: str, prefix: str = "") -> str:
    """Create a new, uniquely named folder in ``parent`` with the umask's permissions (``tempfile.mkdtemp``
    makes it private, 0700) and return its path.

    >>> import tempfile
    >>> parent = tempfile.mkdtemp()
    >>> folder = make_temporary_folder(parent, prefix="staging-")
    >>> os.path.isdir(folder), os.path.basename(folder).startswith("staging-")
    (True, True)
    >>> import shutil; shutil.rmtree(parent)
    """
    os.makedirs(parent, exist_ok=True)
    while True:
        path = os.path.join(parent, f"{prefix}{uuid.uuid4().hex[:12]}")
        try:
            os.mkdir(path, 0o777)
            return path
        except FileExistsError:
            continue


def contained_path(root: str, relative: str) -> str:
    """``root`` joined with ``relative`` (a path with ``/`` separators read from a file), or ``ValueError`` when
    it would lead outside ``root``: absolute, with a drive, with ``..``, ``.`` or empty parts, a backslash or a
    control character, or through a folder that is a link to elsewhere.

    >>> contained_path("/exports/out", "labelsTr/case1.nii.gz")
    '/exports/out/labelsTr/case1.nii.gz'
    """
    if not isinstance(relative, str):
        raise ValueError(f"{relative!r} is not a relative path")
    parts = relative.split("/")
    if (
        not relative
        or os.path.isabs(relative)
        or os.path.splitdrive(relative)[0]
        or any(part in ("", ".", "..") for part in parts)
        or any(character == "\\" or ord(character) < 32 for character in relative)
    ):
        raise ValueError(f"{relative!r} leads outside {root} or is not a plain relative path")
    path = os.path.join(root, *parts)
    real_root = os.path.realpath(root)
    real_folder = os.path.realpath(os.path.dirname(path))
    if os.path.commonpath([real_root, real_folder]) != real_root:
        raise ValueError(f"{relative!r} leads outside {root} through a linked folder")
    return path

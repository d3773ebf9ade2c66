"""Unpacking model archives (zip, tar, tar.gz) so that nothing lands outside the target folder.

An archive from the internet can name entries ``../../.bashrc`` or ``/etc/x``, hold links pointing
out of the folder, devices, or a few kilobytes that inflate to terabytes. :func:`extract_archive`
reads the whole member list first and refuses the archive before writing anything when an entry:

- has an absolute path, a ``..`` component, a backslash, a ``:`` (drive letters, Windows streams)
  or a NUL character in its name;
- is anything but a plain file or a folder: symbolic and hard links are refused whatever they
  point to (model archives need none, and refusing them all leaves no way to write through one),
  as are devices, fifos and encrypted entries;
- repeats another entry's path (also in another letter case: the same file on Windows and macOS),
  or uses a file's path as a folder;
- makes the archive exceed ``max_files`` entries or, adding up the sizes the entries declare,
  ``max_total_bytes``.

While writing, every entry must unpack to exactly the size it declares (a crafted archive can lie
about sizes; Python's readers also check each entry's CRC). Any failure, cancel included, removes
everything written, leaving ``target_dir`` empty as it was found.

Example::

    >>> import os, tempfile, zipfile
    >>> folder = tempfile.mkdtemp()
    >>> with zipfile.ZipFile(os.path.join(folder, "model.zip"), "w") as archive:
    ...     archive.writestr("model/labels.csv", "1,liver\\n")
    ...     archive.writestr("model/weights.pt", b"\\x00" * 100)
    >>> os.mkdir(os.path.join(folder, "unpacked"))
    >>> list(extract_archive(os.path.join(folder, "model.zip"), os.path.join(folder, "unpacked")))
    ['model/labels.csv', 'model/weights.pt']
    >>> import shutil; shutil.rmtree(folder)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tarfile
import threading
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from .download import CHUNK_BYTES, error_for_write, format_bytes
from .errors import CancelledError, DiskFullError, RegistryError, UnsafeArchiveError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")

# What the readers raise on a damaged archive (tarfile wraps zlib errors only in some versions).
_READ_ERRORS = (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, OSError)


def is_archive(name: str) -> bool:
    """Whether a file name ends in one of ARCHIVE_SUFFIXES (in any letter case).

    >>> is_archive("brain-v1.0.0.ZIP"), is_archive("model.tar.gz"), is_archive("weights.pt")
    (True, True, False)
    """
    return name.lower().endswith(ARCHIVE_SUFFIXES)


@dataclass(frozen=True)
class _Entry:
    """One archive member: its name as stored, what it is ("file", "folder" or a refused kind), its size."""

    name: str
    kind: str
    size: int
    member: object  # the reader's own ZipInfo or TarInfo


class _ZipReader:
    def __init__(self, path: str) -> None:
        self._archive = zipfile.ZipFile(path)

    def close(self) -> None:
        self._archive.close()

    def entries(self) -> Iterator[_Entry]:
        for info in self._archive.infolist():
            yield _Entry(info.filename, self._kind(info), info.file_size, info)

    @staticmethod
    def _kind(info: zipfile.ZipInfo) -> str:
        if info.flag_bits & 0x1:
            return "encrypted file"
        # Zip files made on Unix keep the file type in the upper 16 bits of the external attributes.
        file_type = stat.S_IFMT(info.external_attr >> 16)
        if info.is_dir():
            return "folder"
        if file_type in (0, stat.S_IFREG):
            return "file"
        return "symbolic link" if file_type == stat.S_IFLNK else "special file"

    def open(self, entry: _Entry) -> BinaryIO:
        return self._archive.open(entry.member)


class _TarReader:
    def __init__(self, path: str) -> None:
        self._archive = tarfile.open(path, "r:*")  # noqa: SIM115 - closed by close()

    def close(self) -> None:
        self._archive.close()

    def entries(self) -> Iterator[_Entry]:
        # next() one member at a time, so an archive of millions of entries is refused at max_files
        # instead of being listed whole first.
        while True:
            member = self._archive.next()
            if member is None:
                return
            yield _Entry(member.name, self._kind(member), member.size, member)

    @staticmethod
    def _kind(member: tarfile.TarInfo) -> str:
        if member.isreg():
            return "file"
        if member.isdir():
            return "folder"
        if member.issym():
            return "symbolic link"
        if member.islnk():
            return "hard link"
        if member.ischr() or member.isblk():
            return "device file"
        return "fifo" if member.isfifo() else "special file"

    def open(self, entry: _Entry) -> BinaryIO:
        return self._archive.extractfile(entry.member)


@contextlib.contextmanager
def _opened(archive_path: str) -> Iterator[_ZipReader | _TarReader]:
    try:
        reader = _ZipReader(archive_path) if zipfile.is_zipfile(archive_path) else _TarReader(archive_path)
    except FileNotFoundError as error:
        raise RegistryError(f"archive not found: {archive_path}") from error
    except _READ_ERRORS as error:
        raise RegistryError(f"{archive_path} is not a readable zip or tar archive ({error})") from error
    try:
        yield reader
    finally:
        reader.close()


def extract_archive(
    archive_path: str,
    target_dir: str,
    *,
    max_total_bytes: int = 20 * 1024**3,
    max_files: int = 100_000,
    cancel: threading.Event | None = None,
) -> list:
    """Unpack a zip or tar (optionally gzip, bzip2 or xz compressed) archive into ``target_dir``.

    ``target_dir`` must be an existing, empty folder. The format is recognised from the content, not
    the name. Returns ``{relative path: sha256}`` of the files written, in archive order: paths are
    '/'-separated; each sha256 is taken while writing, so an installer needs no second pass over the
    files to record them. Every file is flushed to disk before this returns. Raises
    UnsafeArchiveError (see the module docstring), DiskFullError (also before writing, when the
    declared sizes exceed the free space), CancelledError, or RegistryError for an unreadable archive;
    in every such case ``target_dir`` is left empty. Files are written with default permissions.
    """
    if not os.path.isdir(target_dir):
        raise RegistryError(f"cannot unpack into {target_dir}: not an existing folder")
    if os.listdir(target_dir):
        raise RegistryError(f"cannot unpack into {target_dir}: the folder is not empty")
    with _opened(archive_path) as reader:
        try:
            entries = _checked_entries(reader.entries(), max_files, max_total_bytes)
        except _READ_ERRORS as error:
            raise RegistryError(f"{archive_path} is damaged ({error})") from error
        _check_free_space(archive_path, target_dir, sum(entry.size for entry, _ in entries))
        try:
            return _write(reader, entries, target_dir, cancel)
        except BaseException:
            _empty(target_dir)
            raise


def contained_path(name: str, what: str = "archive entry") -> str:
    """The '/'-separated path ``name`` stands for inside a folder (``""`` for the folder itself), or
    UnsafeArchiveError when it could lead out of the folder: an absolute path, a ``..`` component, a
    backslash, a ``:`` (drive letters, Windows streams) or a NUL character. ``what`` names it in errors.

    >>> contained_path("./model//weights.pt")
    'model/weights.pt'
    >>> contained_path("../../.bashrc", "manifest entry")
    Traceback (most recent call last):
    ...
    ModelRegistryLib.errors.UnsafeArchiveError: manifest entry '../../.bashrc' points outside the folder ('..')
    """
    for forbidden, why in (("\x00", "a NUL character"), ("\\", "a backslash"), (":", "a ':'")):
        if forbidden in name:
            raise UnsafeArchiveError(f"{what} {name!r} has {why} in its name")
    if name.startswith("/"):
        raise UnsafeArchiveError(f"{what} {name!r} has an absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"{what} {name!r} points outside the folder ('..')")
    return "/".join(parts)


def _checked_entries(entries: Iterator[_Entry], max_files: int, max_total_bytes: int) -> list:
    """(entry, relative path) of every entry worth writing, after checking them all against the rules."""
    checked = []
    kinds = {}  # case-folded path -> kind
    total = 0
    for count, entry in enumerate(entries, start=1):
        if count > max_files:
            raise UnsafeArchiveError(f"archive has more than {max_files} entries")
        if entry.kind not in ("file", "folder"):
            raise UnsafeArchiveError(
                f"archive entry {entry.name!r} is a {entry.kind}; only files and folders are allowed"
            )
        path = contained_path(entry.name)
        if not path:
            if entry.kind == "file":
                raise UnsafeArchiveError(f"archive entry {entry.name!r} is a file without a name")
            continue  # the archive's root folder, "./"
        key = path.casefold()
        if key in kinds:
            raise UnsafeArchiveError(f"archive lists {path!r} twice (letter case aside)")
        kinds[key] = entry.kind
        if entry.kind == "file":
            total += entry.size
            if total > max_total_bytes:
                raise UnsafeArchiveError(f"archive unpacks to more than the limit of {format_bytes(max_total_bytes)}")
        checked.append((entry, path))
    for key in kinds:
        parent = key.rpartition("/")[0]
        while parent:
            if kinds.get(parent) == "file":
                raise UnsafeArchiveError(f"archive uses the file {parent!r} as a folder")
            parent = parent.rpartition("/")[0]
    return checked


def _check_free_space(archive_path: str, target_dir: str, needed: int) -> None:
    free = shutil.disk_usage(target_dir).free
    if needed > free:
        raise DiskFullError(
            f"not enough disk space to unpack {os.path.basename(archive_path)}: "
            f"{format_bytes(needed)} needed, {format_bytes(free)} free in {target_dir}"
        )


def _write(reader: _ZipReader | _TarReader, entries: list, target_dir: str, cancel: threading.Event | None) -> dict:
    written = {}
    for entry, path in entries:
        destination = os.path.join(target_dir, *path.split("/"))
        folder = destination if entry.kind == "folder" else os.path.dirname(destination)
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as error:
            raise error_for_write(error, folder) from error
        if entry.kind == "file":
            written[path] = _write_file(reader, entry, path, destination, cancel)
    return written


def _write_file(
    reader: _ZipReader | _TarReader, entry: _Entry, path: str, destination: str, cancel: threading.Event | None
) -> str:
    """Copy one entry's bytes to ``destination``, holding the entry to the size it declares; returns their sha256."""
    try:
        sink = open(destination, "xb")  # noqa: SIM115 - closed below, errors of open and write told apart
    except OSError as error:
        raise error_for_write(error, destination) from error
    digest = hashlib.sha256()
    with sink:
        size = 0
        for chunk in _chunks(reader, entry, path, cancel):
            size += len(chunk)
            digest.update(chunk)
            if size > entry.size:
                raise UnsafeArchiveError(
                    f"archive entry {path!r} unpacks to more than the {entry.size} bytes it declares"
                )
            try:
                sink.write(chunk)
            except OSError as error:
                raise error_for_write(error, destination, entry.size - size + len(chunk)) from error
        if size != entry.size:
            raise UnsafeArchiveError(
                f"archive entry {path!r} unpacks to {size} bytes, not the {entry.size} it declares"
            )
        try:
            sink.flush()
            # Installed files must survive a power cut once the installer renames their folder into place.
            os.fsync(sink.fileno())
        except OSError as error:
            raise error_for_write(error, destination) from error
    return digest.hexdigest()


def _chunks(
    reader: _ZipReader | _TarReader, entry: _Entry, path: str, cancel: threading.Event | None
) -> Iterator[bytes]:
    """The entry's bytes; a reader failing on them means the archive lies about its content."""
    try:
        with reader.open(entry) as source:
            while True:
                if cancel is not None and cancel.is_set():
                    raise CancelledError(f"cancelled unpacking {path}")
                chunk = source.read(CHUNK_BYTES)
                if not chunk:
                    return
                yield chunk
    except _READ_ERRORS as error:
        raise UnsafeArchiveError(
            f"archive entry {path!r} does not unpack to what the archive declares (damaged or crafted): {error}"
        ) from error


def _empty(folder: str) -> None:
    """Remove everything inside ``folder``: what a failed extraction wrote there."""
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        with contextlib.suppress(OSError):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)

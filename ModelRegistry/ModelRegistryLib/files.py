"""Small file operations the registry relies on for never leaving a half-written file.

Example::

    >>> import json, os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "settings", "pins.json")
    >>> write_json_atomically(path, {"demo": "1.0.0"})
    >>> json.load(open(path))
    {'demo': '1.0.0'}
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets


@contextlib.contextmanager
def atomic_target(path: str, suffix: str = ".tmp"):
    """A new temporary path beside ``path`` to write to; when the block ends without an error the file is
    flushed to disk and renamed to ``path``, so a reader sees the old file or the new, never half of one.
    On an error the temporary file is removed. ``suffix`` lets writers that choose a format by the file
    name's ending (SimpleITK) see the right one.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = _new_file(folder, f".{os.path.basename(path)}.", suffix)
    try:
        yield temporary
        with open(temporary, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)


def _new_file(folder: str, prefix: str, suffix: str) -> str:
    """A new empty file in ``folder``, with the permissions the umask allows (tempfile.mkstemp makes 0600 files,
    which lock a group out of a shared cache or output folder)."""
    while True:
        candidate = os.path.join(folder, prefix + secrets.token_hex(6) + suffix)
        try:
            os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return candidate
        except FileExistsError:
            continue


def write_text_atomically(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_target`."""
    with atomic_target(path) as temporary, open(temporary, "w", encoding="utf-8") as file:
        file.write(text)


def write_json_atomically(path: str, data) -> None:
    """Write ``data`` as JSON through :func:`atomic_target`; NaN and infinity, which JSON lacks, are refused."""
    write_text_atomically(path, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False))

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
import tempfile


def write_text_atomically(path: str, text: str) -> None:
    """Write to a temporary file beside ``path``, then rename: a reader sees the old file or the new, never half."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


def write_json_atomically(path: str, data) -> None:
    write_text_atomically(path, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))

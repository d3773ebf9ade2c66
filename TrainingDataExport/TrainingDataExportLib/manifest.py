"""What an export folder holds: the manifest of the last complete export, and the journal of one in progress.

- The **manifest** (``.training-data-export.json``) is written last by a complete export: its settings, split,
  index files and, per case, the fingerprint of its inputs and settings and the files written for it. A
  re-export rewrites only the cases whose fingerprint changed, and removes the files of cases no longer
  exported. A new folder is claimed by a manifest listing no case, written before anything else.
- The **journal** (``.training-data-export.journal``) lists, one JSON string per line, every file an export is
  about to write, flushed to disk *before* the file is created. An export that is killed, cancelled or fails
  leaves it behind; the next export takes every file it names as unreliable: files no case needs any more
  are removed, and a case whose files it names is rewritten. Every file an export creates is therefore either
  in the manifest or in the journal, and nothing it wrote is ever left behind unaccounted for. A complete
  export removes the journal after writing its manifest.

Both are read as untrusted input: a path that is absolute, holds ``..`` or leads out of the export folder
through a link makes the manifest unusable (the export stops and says so), and such a journal line is
ignored, so that nothing outside the export folder is ever written or removed because a file said so.

Example::

    >>> import os, shutil, tempfile
    >>> root = tempfile.mkdtemp()
    >>> journal = Journal(root)
    >>> [os.path.relpath(path, root) for path in journal.record(["labelsTr/c1.nii.gz", "dataset.json"])]
    ['labelsTr/c1.nii.gz', 'dataset.json']
    >>> journal.close()
    >>> sorted(Journal(root).pending())
    ['dataset.json', 'labelsTr/c1.nii.gz']
    >>> read_manifest(root)
    (None, '')
    >>> shutil.rmtree(root)
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence

from ModelRegistryLib.files import contained_path, is_temporary_name, sync_folder, write_json_atomically

MANIFEST_NAME = ".training-data-export.json"
JOURNAL_NAME = ".training-data-export.journal"
MANIFEST_VERSION = 1
OWN_FILES = (MANIFEST_NAME, JOURNAL_NAME)


class ManifestError(ValueError):
    """A manifest that cannot be used: damaged, of another version, or naming files outside its folder."""


def _require(condition: bool, where: str, what: str) -> None:
    if not condition:
        raise ManifestError(f"{where} {what}")


def _check_paths(root: str, paths, where: str) -> None:
    for path in paths:
        try:
            contained_path(root, path)
        except ValueError:
            raise ManifestError(
                f"{where} names {path!r}, which is not a file inside the export folder: this manifest was not "
                "written by an export (delete it, or export to another folder)"
            ) from None


def validate_manifest(root: str, manifest) -> None:
    """Raise :class:`ManifestError` unless ``manifest`` has the shape an export writes, with every file inside
    ``root``."""
    _require(isinstance(manifest, Mapping), "the manifest", "is not a JSON object")
    _require(manifest.get("manifest_version") == MANIFEST_VERSION, "the manifest",
             "was written by another version of this export; choose a new folder")
    _require(isinstance(manifest.get("format"), str), "the manifest's format", "is not a text")
    index_files = manifest.get("index_files", [])
    _require(isinstance(index_files, list) and all(isinstance(p, str) for p in index_files),
             "the manifest's index_files", "is not a list of paths")
    _check_paths(root, index_files, "the manifest's index_files")
    cases = manifest.get("cases", {})
    _require(isinstance(cases, Mapping), "the manifest's cases", "is not a JSON object")
    for case_id, entry in cases.items():
        where = f"the manifest's case {case_id!r}"
        _require(isinstance(entry, Mapping), where, "is not a JSON object")
        _require(isinstance(entry.get("fingerprint"), str) and isinstance(entry.get("placement"), str), where,
                 "lacks its fingerprint or placement")
        files = entry.get("files")
        _require(isinstance(files, Mapping) and all(isinstance(size, int) for size in files.values()), where,
                 "does not list its files with their sizes")
        _check_paths(root, files, where)
        _require(isinstance(entry.get("records"), list) and isinstance(entry.get("summary"), Mapping), where,
                 "lacks its records or summary")


def read_manifest(root: str) -> tuple:
    """``(manifest or None, problem or "")`` of the export folder ``root`` (None and "" for a new or empty one)."""
    if not os.path.isdir(root):
        return None, "" if not os.path.exists(root) else f"{root} exists and is not a folder"
    path = os.path.join(root, MANIFEST_NAME)
    if not os.path.isfile(path):
        # What a first export killed before its manifest leaves (see the module description) is ours.
        if [name for name in os.listdir(root) if not is_temporary_name(name) and name != JOURNAL_NAME]:
            return None, (
                f"output folder {root} is not empty and holds no earlier export ({MANIFEST_NAME} is missing): "
                "choose an empty or new folder"
            )
        return None, ""
    try:
        with open(path, encoding="utf-8") as file:
            manifest = json.load(file)
        validate_manifest(root, manifest)
    except (OSError, ValueError) as error:
        return None, f"cannot use the manifest {path} of the earlier export: {error}"
    return manifest, ""


def write_manifest(root: str, manifest: Mapping) -> None:
    write_json_atomically(os.path.join(root, MANIFEST_NAME), {**manifest, "manifest_version": MANIFEST_VERSION})


class Journal:
    """The journal of the export into ``root`` (see the module description); safe to record from several threads."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.path = os.path.join(root, JOURNAL_NAME)
        self._lock = threading.Lock()
        self._file = None

    def pending(self) -> set:
        """The files an unfinished export was about to write (relative paths inside the export folder)."""
        try:
            with open(self.path, "rb") as file:
                lines = file.read().split(b"\n")[:-1]  # a last line without its end was being written: dropped
        except FileNotFoundError:
            return set()
        found = set()
        for line in lines:
            try:
                path = json.loads(line.decode("utf-8"))
                contained_path(self.root, path)
            except ValueError:
                continue
            found.add(path)
        return found

    def record(self, relatives: Sequence[str]) -> list:
        """Record ``relatives`` durably before they are written; return their absolute paths. ``ValueError`` for
        a path that would lead outside the export folder."""
        paths = [contained_path(self.root, relative) for relative in relatives]
        data = b"".join(json.dumps(relative).encode("utf-8") + b"\n" for relative in relatives)
        with self._lock:
            if self._file is None:
                created = not os.path.exists(self.path)
                self._file = open(self.path, "ab")  # noqa: SIM115 (kept open for the whole export, closed by close())
                if created:
                    sync_folder(self.root)
            self._file.write(data)
            self._file.flush()
            os.fsync(self._file.fileno())
        return paths

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def remove(self) -> None:
        """The export is complete and its manifest written: nothing is pending any more."""
        self.close()
        if os.path.exists(self.path):
            os.remove(self.path)
            sync_folder(self.root)

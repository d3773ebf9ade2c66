"""Installed models: one folder per model version inside a cache folder, each installed atomically.

Layout of the cache folder::

    models/<model id>/<version>/      an installed version: its files and MANIFEST_NAME
    downloads/<sha256>[.part]         downloads in progress (a .part resumes after an interruption)
    staging/<random>/                 a version being unpacked; renamed into models/ when complete
    locks/<model id>@<version>.lock   one installer per version at a time, across processes
    pins.json                         versions the user pinned

A version folder appears under ``models/`` only by one ``os.rename`` of a complete, verified staging
folder, so a partial or corrupt download is never reported as installed, and a crash leaves at worst a
``staging`` or ``.part`` leftover that the next install cleans up or resumes. Two processes installing
the same version take the same lock: the second waits, then finds the version installed.

Example::

    >>> import hashlib, os, tempfile
    >>> from ModelRegistryLib.index import ModelEntry, ModelFile, ModelVersion
    >>> folder = tempfile.mkdtemp()
    >>> weights = os.path.join(folder, "weights.pt")
    >>> with open(weights, "wb") as file:
    ...     _ = file.write(b"weights")
    >>> weightsFile = ModelFile("file://" + weights, hashlib.sha256(b"weights").hexdigest(), 7)
    >>> version = ModelVersion("1.0.0", files=(weightsFile,))
    >>> store = ModelStore(os.path.join(folder, "cache"))
    >>> installed = store.install(ModelEntry("demo", "Demo", (version,)), version)
    >>> sorted(os.listdir(installed.path)), store.installed_versions("demo")
    (['model-registry-manifest.json', 'weights.pt'], ['1.0.0'])
    >>> store.verify("demo")[0].ok
    True
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from urllib.parse import unquote, urlparse

from .archive import extract_archive, is_archive
from .download import Progress, download_file, error_for_write, file_digests, file_sha256, format_bytes
from .errors import ChecksumMismatchError, DiskFullError, RegistryError, UnsafeArchiveError
from .files import write_json_atomically
from .index import ModelEntry, ModelVersion, file_url, semantic_version_key
from .locking import FileLock
from .trust import TrustStore

MANIFEST_NAME = "model-registry-manifest.json"
CACHE_ENVIRONMENT_VARIABLE = "SLICER_DEEPLEARNING_CACHE_DIR"


def default_cache_dir(configured: str = "") -> str:
    """Where models live: the environment variable if set, else ``configured`` (an application setting),
    else the user's cache folder."""
    chosen = os.environ.get(CACHE_ENVIRONMENT_VARIABLE) or configured
    if chosen:
        return os.path.abspath(os.path.expanduser(chosen))
    if sys.platform.startswith("win"):
        base = os.environ.get("LOCALAPPDATA") or os.path.expanduser(r"~\AppData\Local")
        return os.path.join(base, "SlicerDeepLearning", "Cache")
    if sys.platform == "darwin":
        return os.path.expanduser("~/Library/Caches/SlicerDeepLearning")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "SlicerDeepLearning")


@dataclass(frozen=True)
class InstallProgress:
    """Where an install is: ``stage`` is "download", "unpack", "trust" (how a file without the publisher's sha256
    was checked: a line to show the user, never to hide) or "done"; ``fraction`` of all bytes, if known."""

    stage: str
    fraction: float | None
    text: str


@dataclass(frozen=True)
class InstalledModel:
    model_id: str
    version: str
    path: str
    files: dict = field(default_factory=dict)  # path relative to the version folder -> sha256
    source: str = ""
    installed_at: str = ""

    @property
    def size(self) -> int:
        return sum(os.path.getsize(os.path.join(self.path, name)) for name in self.files)


@dataclass(frozen=True)
class VerifyResult:
    model_id: str
    version: str
    missing: tuple = ()
    changed: tuple = ()
    extra: tuple = ()

    @property
    def ok(self) -> bool:
        return not (self.missing or self.changed or self.extra)

    @property
    def text(self) -> str:
        if self.ok:
            return f"{self.model_id} {self.version}: all files intact"
        problems = [f"{len(files)} {kind} ({', '.join(files[:3])})" for kind, files in
                    (("missing", self.missing), ("changed", self.changed), ("unexpected", self.extra)) if files]
        return f"{self.model_id} {self.version}: " + "; ".join(problems) + " — remove and install it again"


def _safe_component(text: str, what: str) -> str:
    # Ids and versions are validated by the index parser; this guards paths built from other inputs (imports).
    if not text or text in (".", "..") or any(c in text for c in "/\\:\0"):
        raise RegistryError(f"Invalid {what}: {text!r}")
    return text


def _file_name(url: str, name: str) -> str:
    return _safe_component(name or os.path.basename(unquote(urlparse(url).path)), "file name")


class ModelStore:
    """The installed model versions in ``cache_dir`` (created when first needed)."""

    def __init__(self, cache_dir: str) -> None:
        self.cache_dir = os.path.abspath(cache_dir)
        self.trust = TrustStore(self.cache_dir)

    def _folder(self, *parts: str) -> str:
        return os.path.join(self.cache_dir, *parts)

    def version_path(self, model_id: str, version: str) -> str:
        return self._folder("models", _safe_component(model_id, "model id"), _safe_component(version, "version"))

    # -- reading what is installed ---------------------------------------------------------------------

    def _read_manifest(self, folder: str) -> InstalledModel | None:
        try:
            with open(os.path.join(folder, MANIFEST_NAME), encoding="utf-8") as file:
                data = json.load(file)
            return InstalledModel(data["id"], data["version"], folder, dict(data["files"]), data.get("source", ""),
                                  data.get("installedAt", ""))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def installed(self) -> list:
        """Every installed version, sorted by model id then version."""
        root = self._folder("models")
        found = []
        for model_id in sorted(os.listdir(root)) if os.path.isdir(root) else []:
            for version in os.listdir(os.path.join(root, model_id)):
                model = self._read_manifest(os.path.join(root, model_id, version))
                if model is not None:
                    found.append(model)
        return sorted(found, key=lambda m: (m.model_id, semantic_version_key(m.version)))

    def installed_versions(self, model_id: str) -> list:
        return [m.version for m in self.installed() if m.model_id == model_id]

    def get(self, model_id: str, version: str) -> InstalledModel | None:
        return self._read_manifest(self.version_path(model_id, version))

    def disk_usage(self) -> int:
        """Bytes used by the cache folder, downloads in progress included."""
        total = 0
        for directory, _, files in os.walk(self.cache_dir):
            total += sum(os.path.getsize(os.path.join(directory, name)) for name in files)
        return total

    # -- pins -----------------------------------------------------------------------------------------------

    def _pins_path(self) -> str:
        return self._folder("pins.json")

    def pins(self) -> dict:
        try:
            with open(self._pins_path(), encoding="utf-8") as file:
                return dict(json.load(file))
        except (OSError, ValueError):
            return {}

    def pin(self, model_id: str, version: str | None) -> None:
        """Keep using ``version`` of ``model_id`` even when a newer one is installed; None removes the pin."""
        with FileLock(self._folder("locks", "pins.lock")):
            pins = self.pins()
            if version is None:
                pins.pop(model_id, None)
            else:
                pins[model_id] = version
            write_json_atomically(self._pins_path(), pins)

    # -- installing -----------------------------------------------------------------------------------------

    def install(
        self,
        entry: ModelEntry,
        version: ModelVersion,
        *,
        progress: Callable[[InstallProgress], None] | None = None,
        cancel: threading.Event | None = None,
        timeout: float = 30.0,
    ) -> InstalledModel:
        """Download, verify and unpack ``version`` of ``entry`` unless it is installed already."""
        if not version.files:
            raise RegistryError(f"{entry.id} {version.version} is a container image only: DeepSegment gets it "
                                "through the container runtime when it runs")
        lock = FileLock(self._folder("locks", f"{entry.id}@{version.version}.lock"), cancel=cancel)
        with lock:
            existing = self.get(entry.id, version.version)
            if existing is not None:
                return existing
            self._check_free_space(version.download_size * 2, f"{entry.id} {version.version}")
            version, blobs = self._download_all(version, progress, cancel, timeout)
            staging = self._new_staging_folder()
            try:
                try:
                    files = self._unpack_all(version, blobs, staging, progress, cancel)
                except UnsafeArchiveError:
                    # Verified bytes, but never installable: keeping them would only waste disk space.
                    _remove_files(blobs)
                    raise
                except OSError as error:
                    raise error_for_write(error, staging) from error
                source = ", ".join(f.url for f in version.files)
                self._finish(staging, entry.id, version.version, files, source)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            _remove_files(blobs)
        if progress:
            progress(InstallProgress("done", 1.0, f"Installed {entry.id} {version.version}"))
        return self.get(entry.id, version.version)

    def _check_free_space(self, needed: int, what: str) -> None:
        os.makedirs(self.cache_dir, exist_ok=True)
        free = shutil.disk_usage(self.cache_dir).free
        if free < needed:
            raise DiskFullError(
                f"Not enough disk space for {what}: {format_bytes(needed)} needed, {format_bytes(free)} free in"
                f" {self.cache_dir}"
            )

    def _download_all(self, version, progress, cancel, timeout) -> tuple:
        """``(version with every file's sha256 known, downloaded paths)``; files without the publisher's sha256
        go through the trust-on-first-use pins (``ModelRegistryLib.trust``), each saying how it was checked."""
        # Files of unknown size count as nothing here: the fraction then runs ahead of the bytes, never past 1.
        total = version.download_size
        done_before = 0
        blobs, files = [], []
        for number, model_file in enumerate(version.files, 1):
            def report(step: Progress, done_before=done_before, number=number):
                if progress:
                    fraction = min(1.0, (done_before + step.done) / total) if total else None
                    label = f"Downloading file {number} of {len(version.files)}: " if len(version.files) > 1 else ""
                    progress(InstallProgress("download", fraction, label + step.text))

            resolved = self.trust.resolve(model_file)
            if resolved.sha256:
                blob = self._folder("downloads", resolved.sha256)
                os.makedirs(os.path.dirname(blob), exist_ok=True)
                # Not made durable: the blob is moved or unpacked (durably) and removed; after a crash its .part
                # resumes and is verified again.
                try:
                    blobs.append(download_file(resolved.url, blob, sha256=resolved.sha256, size=resolved.size,
                                               progress=report, cancel=cancel, timeout=timeout, durable=False))
                except ChecksumMismatchError as error:
                    if model_file.sha256:
                        raise
                    raise self.trust.changed_error(model_file, error) from error
                notice = self.trust.notice(model_file) if not model_file.sha256 else None
            else:
                blob, sha256, notice = self.trust.first_download(model_file, self._folder("downloads"),
                                                                 progress=report, cancel=cancel, timeout=timeout)
                blobs.append(blob)
                resolved = replace(model_file, sha256=sha256, size=os.path.getsize(blob))
            if notice is not None and progress:
                progress(InstallProgress("trust", None, notice.text))
            files.append(resolved)
            done_before += resolved.size
        return replace(version, files=tuple(files)), blobs

    def _new_staging_folder(self) -> str:
        os.makedirs(self._folder("staging"), exist_ok=True)
        return tempfile.mkdtemp(dir=self._folder("staging"))

    def _unpack_all(self, version: ModelVersion, blobs: Sequence[str], staging: str, progress, cancel) -> dict:
        """Put every file of the version into ``staging``, archives unpacked; returns {relative path: sha256}."""
        files = {}
        for model_file, blob in zip(version.files, blobs):
            name = _file_name(model_file.url, model_file.name)
            if is_archive(name):
                if progress:
                    progress(InstallProgress("unpack", None, f"Unpacking {name}"))
                unpacked = tempfile.mkdtemp(dir=staging, prefix=".unpack-")
                for relative, digest in extract_archive(blob, unpacked, cancel=cancel).items():
                    files[_move_into(unpacked, relative, staging)] = digest
                shutil.rmtree(unpacked)
            else:
                # The download was verified against this sha256; a move (same disk) copies nothing.
                _move_into(os.path.dirname(blob), os.path.basename(blob), staging, name)
                _flush_to_disk(os.path.join(staging, name))
                files[name] = model_file.sha256
        return dict(sorted(files.items()))

    def _finish(self, staging: str, model_id: str, version: str, files: dict, source: str) -> None:
        manifest = {
            "id": model_id,
            "version": version,
            "files": files,
            "source": source,
            "installedAt": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        write_json_atomically(os.path.join(staging, MANIFEST_NAME), manifest)
        target = self.version_path(model_id, version)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.isdir(target):
            # A folder without a valid manifest is the leftover of a crash from before the rename existed.
            shutil.rmtree(target)
        os.rename(staging, target)

    def import_package(self, path: str, entries: Sequence[ModelEntry],
                       progress: Callable[[InstallProgress], None] | None = None) -> InstalledModel:
        """Install from a local file or folder holding the files of a version some index lists (see
        :meth:`local_version`); RegistryError when it holds none."""
        found = self.local_version(path, entries, progress)
        if found is None:
            raise RegistryError(
                f"{os.path.basename(os.path.abspath(path))} holds no complete model version listed in the registry"
                " indexes (files are matched by sha256): add the index that lists it, or check that the files are"
                " whole"
            )
        entry, version = found
        return self.install(entry, version, progress=progress)

    def local_version(self, path: str, entries: Sequence[ModelEntry],
                      progress: Callable[[InstallProgress], None] | None = None) -> tuple | None:
        """``(entry, version)`` of a version in ``entries`` whose files are in the local file or folder ``path``
        (offline sites), with file URLs pointing at the local copies; None when it holds no complete version.

        Files are recognised by their sha256 among the files of the versions in ``entries``: an imported
        package is exactly as trustworthy as a downloaded one, whatever its files are called locally. A file
        the publisher gives no sha256 for is recognised by the sha256 pinned on its first download, else by
        the publisher's MD5 or SHA-1, else (trust on first use, said through ``progress``) by its name, and
        then pinned.
        """
        if os.path.isfile(path):
            local_files = [os.path.abspath(path)]
        elif os.path.isdir(path):
            local_files = sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.abspath(path)) for f in fs)
        else:
            raise RegistryError(f"Nothing to import at {path}")
        digests = {local: file_digests(local, ("sha256", "md5", "sha1")) for local in local_files}

        def local_copy(model_file) -> str | None:
            """The local file with the file's sha256 (from the index or pinned), else its publisher's digest, else
            (nothing to check against) its name; None where there is none."""
            wanted = self.trust.resolve(model_file)
            if wanted.sha256 or model_file.publisher_digest:
                algorithm, digest = ("sha256", wanted.sha256) if wanted.sha256 else model_file.publisher_digest
                return next((local for local, found in digests.items() if found[algorithm] == digest), None)
            name = _file_name(model_file.url, model_file.name)
            return next((local for local in digests if os.path.basename(local) == name), None)

        for entry in entries:
            for version in entry.versions:
                copies = [local_copy(f) for f in version.files]
                if version.files and all(copies):
                    for model_file, local in zip(version.files, copies):
                        if not model_file.sha256:
                            self.trust.pin(model_file.url, digests[local]["sha256"], os.path.getsize(local))
                            if progress:
                                notice = self.trust.notice(model_file)
                                progress(InstallProgress("trust", None, f"{notice.text} (imported from {local})"))
                    local_version = replace(version, files=tuple(
                        replace(f, url=file_url(local), name=_file_name(f.url, f.name),
                                sha256=digests[local]["sha256"], size=os.path.getsize(local))
                        for f, local in zip(version.files, copies)
                    ))
                    return entry, local_version
        return None

    # -- removing and checking ------------------------------------------------------------------------------

    def remove(self, model_id: str, version: str | None = None) -> list:
        """Remove one installed version, or all versions of ``model_id``; returns the versions removed."""
        versions = [version] if version else self.installed_versions(model_id)
        removed = []
        for number in versions:
            target = self.version_path(model_id, number)
            with FileLock(self._folder("locks", f"{model_id}@{number}.lock")):
                if os.path.isdir(target):
                    # Renamed away first, so a half-deleted folder is never taken for an installed version.
                    trash = self._new_staging_folder()
                    os.rename(target, os.path.join(trash, "removed"))
                    shutil.rmtree(trash, ignore_errors=True)
                    removed.append(number)
        if self.pins().get(model_id) in removed:
            self.pin(model_id, None)
        return removed

    def verify(self, model_id: str | None = None, version: str | None = None) -> list:
        """Re-hash installed files against their manifests."""
        results = []
        for model in self.installed():
            if (model_id and model.model_id != model_id) or (version and model.version != version):
                continue
            missing, changed = [], []
            for name, digest in sorted(model.files.items()):
                full = os.path.join(model.path, name)
                if not os.path.isfile(full):
                    missing.append(name)
                elif file_sha256(full) != digest:
                    changed.append(name)
            present = {
                os.path.relpath(os.path.join(d, f), model.path).replace(os.sep, "/")
                for d, _, fs in os.walk(model.path)
                for f in fs
            }
            extra = sorted(present - set(model.files) - {MANIFEST_NAME})
            results.append(VerifyResult(model.model_id, model.version, tuple(missing), tuple(changed), tuple(extra)))
        return results


def _remove_files(paths: Sequence[str]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _flush_to_disk(path: str) -> None:
    with open(path, "rb+") as file:
        os.fsync(file.fileno())


def _move_into(source_folder: str, relative: str, staging: str, name: str = "") -> str:
    """Move ``source_folder/relative`` to ``staging/(name or relative)``; returns the '/'-separated path."""
    name = name or relative
    target = os.path.join(staging, name)
    if os.path.exists(target):
        raise RegistryError(f"Two files of the model version unpack to the same path: {name}")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.replace(os.path.join(source_folder, relative), target)
    return name.replace(os.sep, "/")

"""Installed models: one folder per model version inside a cache folder, each installed atomically.

Layout of the cache folder::

    models/<model id>/<version>/      an installed version: its files and MANIFEST_NAME
    downloads/<sha256>[.part]         downloads in progress (a .part resumes after an interruption)
    staging/<model id>@<version>/     the private workspace of whoever holds that version's lock:
        version/                      the version being unpacked; renamed into models/ when complete
        unpack/                       one archive being unpacked
        removed/, replaced/           a version being deleted (renamed out of models/ first)
    locks/<model id>@<version>.lock   one installer or remover per version at a time, across processes
    pins.json                         versions the user pinned

A version folder appears under ``models/`` only by one ``os.rename`` of a complete, verified staging
folder, so a partial or corrupt download is never reported as installed. A process killed at any moment
leaves at worst a ``.part`` (resumed by the next install), a verified download (used by the next install)
or a staging workspace, which the next install or removal of any version deletes once that version's
lock is free (:meth:`ModelStore.clean_staging`). Two processes installing the same version take the same
lock: the second waits, then finds the version installed. A version whose files were deleted is not
reported as installed (installing it again replaces it); ``verify`` says what is missing.

Nothing outside the cache folder is written or deleted, whatever an index, archive or manifest says:
paths are built only from validated model ids, versions, sha256 digests and file names, archive entries
are checked (:mod:`ModelRegistryLib.archive`), a manifest naming a path outside its folder is treated as
damaged, and a ``models/<id>`` folder that is a link to somewhere else is refused. Folders and files are
created with the permissions the umask allows, so a cache can be shared by a group.

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
import re
import shutil
import stat
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from urllib.parse import unquote, urlparse

from .archive import contained_path, extract_archive, is_archive
from .download import Progress, download_file, error_for_write, file_digests, file_sha256, format_bytes
from .errors import CancelledError, ChecksumMismatchError, DiskFullError, RegistryError, UnsafeArchiveError
from .files import write_json_atomically
from .index import ModelEntry, ModelVersion, file_url, semantic_version_key
from .locking import FileLock
from .trust import TrustStore, first_download_name

MANIFEST_NAME = "model-registry-manifest.json"
CACHE_ENVIRONMENT_VARIABLE = "SLICER_DEEPLEARNING_CACHE_DIR"
PINS_FILE = "pins.json"
_SHA256 = re.compile(r"[0-9a-f]{64}")


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
    """Where a long store operation is: ``stage`` is "download", "unpack", "import" (hashing local files),
    "verify", "trust" (how a file without the publisher's sha256 was checked: a line to show the user, never to
    hide) or "done"; ``fraction`` of the work, if known."""

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
    sizes: dict = field(default_factory=dict)  # path -> bytes; empty in manifests written before sizes were kept

    @property
    def size(self) -> int:
        if set(self.sizes) == set(self.files):
            return sum(self.sizes.values())
        return sum(_file_size(os.path.join(self.path, name)) for name in self.files)

    @property
    def complete(self) -> bool:
        """Whether every file of the manifest is there, as a regular file of the recorded size (not re-hashed)."""
        for name in self.files:
            try:
                status = os.stat(os.path.join(self.path, *name.split("/")))
            except OSError:
                return False
            if not stat.S_ISREG(status.st_mode) or self.sizes.get(name, status.st_size) != status.st_size:
                return False
        return True


@dataclass(frozen=True)
class VerifyResult:
    model_id: str
    version: str
    missing: tuple = ()
    changed: tuple = ()
    extra: tuple = ()
    problem: str = ""  # what is wrong with the version as a whole (no valid manifest)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.changed or self.extra or self.problem)

    @property
    def text(self) -> str:
        if self.ok:
            return f"{self.model_id} {self.version}: all files intact"
        problems = [self.problem] if self.problem else []
        problems += [f"{len(files)} {kind} ({', '.join(files[:3])})" for kind, files in
                     (("missing", self.missing), ("changed", self.changed), ("unexpected", self.extra)) if files]
        return f"{self.model_id} {self.version}: " + "; ".join(problems) + " — remove and install it again"


def _safe_component(text: str, what: str) -> str:
    # Ids and versions are validated by the index parser; this guards paths built from other inputs (imports).
    if not isinstance(text, str) or not text or text in (".", "..") or any(c in text for c in "/\\:\0"):
        raise RegistryError(f"Invalid {what}: {text!r}")
    return text


def _id_or_version(text: str, what: str) -> str:
    # Workspaces and locks are named <id>@<version>: an '@' in either would let two versions share one.
    if "@" in _safe_component(text, what):
        raise RegistryError(f"Invalid {what}: {text!r}")
    return text


def _file_name(url: str, name: str) -> str:
    name = _safe_component(name or os.path.basename(unquote(urlparse(url).path)), "file name")
    if name.casefold() == MANIFEST_NAME.casefold():
        raise RegistryError(f"A model file may not be called {MANIFEST_NAME}: the model store keeps its own record "
                            "of a version's files under that name")
    return name


def _checked_files(entry: ModelEntry, version: ModelVersion) -> None:
    """Refuse a version whose files would build paths from anything but a digest and a plain file name."""
    _id_or_version(entry.id, "model id")
    _id_or_version(version.version, "version")
    for model_file in version.files:
        # No sha256 (and maybe no size): a file trusted on first use, downloaded to a name made of its URL's digest.
        unverified = model_file.sha256 == ""
        if not isinstance(model_file.sha256, str) or not (unverified or _SHA256.fullmatch(model_file.sha256)):
            raise RegistryError(f"{entry.id} {version.version}: invalid sha256 {model_file.sha256!r}")
        size_ok = isinstance(model_file.size, int) and model_file.size >= 0
        if not size_ok and not (unverified and model_file.size is None):
            raise RegistryError(f"{entry.id} {version.version}: invalid size {model_file.size!r}")
        _file_name(model_file.url, model_file.name)


def _file_size(path: str) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0


class ModelStore:
    """The installed model versions in ``cache_dir`` (created when first needed)."""

    def __init__(self, cache_dir: str) -> None:
        self.cache_dir = os.path.abspath(cache_dir)
        self.trust = TrustStore(self.cache_dir)

    def _folder(self, *parts: str) -> str:
        return os.path.join(self.cache_dir, *parts)

    def version_path(self, model_id: str, version: str) -> str:
        return self._folder("models", _id_or_version(model_id, "model id"), _id_or_version(version, "version"))

    def _lock(self, name: str, cancel: threading.Event | None = None, timeout: float | None = None) -> FileLock:
        return FileLock(self._folder("locks", f"{name}.lock"), timeout=timeout, cancel=cancel)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Turn a failed write into the one-line error a user reads (a read-only cache, a full disk...)."""
        try:
            yield
        except OSError as error:
            raise error_for_write(error, error.filename or self.cache_dir) from error

    def _inside_models(self, path: str) -> str:
        """``path`` itself, after checking that the folder holding it is inside the cache's models folder."""
        models = os.path.realpath(self._folder("models"))
        holder = os.path.realpath(os.path.dirname(path))
        if os.path.commonpath([models, holder]) != models:
            raise RegistryError(f"{os.path.dirname(path)} leads outside the cache folder ({holder}): refusing to "
                                "change it; remove it by hand")
        return path

    # -- reading what is installed ---------------------------------------------------------------------

    def _read_manifest(self, folder: str, model_id: str, version: str) -> InstalledModel | None:
        """The version in ``folder`` as its manifest records it; None if the manifest is missing or invalid, names
        another version, or lists a path outside the folder."""
        try:
            with open(os.path.join(folder, MANIFEST_NAME), encoding="utf-8") as file:
                data = json.load(file)
            files, sizes = dict(data["files"]), dict(data.get("sizes", {}))
            valid = (
                data["id"] == model_id and data["version"] == version
                and all(isinstance(digest, str) and _SHA256.fullmatch(digest) for digest in files.values())
                and all(isinstance(name, str) and contained_path(name, "manifest entry") == name
                        and name != MANIFEST_NAME for name in files)
                and set(sizes) <= set(files) and all(type(size) is int for size in sizes.values())
            )
        except (OSError, ValueError, KeyError, TypeError, UnsafeArchiveError):
            return None
        if not valid:
            return None
        return InstalledModel(model_id, version, folder, files, str(data.get("source", "")),
                              str(data.get("installedAt", "")), sizes)

    def _version_folders(self, model_id: str | None = None) -> list:
        """``(model id, version)`` of every folder under ``models/`` (complete or not), named as paths allow."""
        root = self._folder("models")
        found = []
        model_ids = [model_id] if model_id else (sorted(os.listdir(root)) if os.path.isdir(root) else [])
        for identifier in model_ids:
            with contextlib.suppress(RegistryError):
                folder = os.path.join(root, _id_or_version(identifier, "model id"))
                for version in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
                    with contextlib.suppress(RegistryError):
                        found.append((identifier, _id_or_version(version, "version")))
        return found

    def _recorded(self, model_id: str | None = None) -> list:
        """``(model id, version, InstalledModel or None)`` of every version folder, its manifest read."""
        return [(identifier, version, self._read_manifest(self.version_path(identifier, version), identifier,
                                                          version))
                for identifier, version in self._version_folders(model_id)]

    def installed(self, model_id: str | None = None) -> list:
        """Every complete installed version (of ``model_id`` when given), sorted by model id then version."""
        found = [model for _, _, model in self._recorded(model_id) if model is not None and model.complete]
        return sorted(found, key=lambda m: (m.model_id, _version_order(m.version)))

    def installed_versions(self, model_id: str) -> list:
        return [m.version for m in self.installed(model_id)]

    def get(self, model_id: str, version: str) -> InstalledModel | None:
        """The version if it is installed and complete, else None."""
        model = self._read_manifest(self.version_path(model_id, version), model_id, version)
        return model if model is not None and model.complete else None

    def disk_usage(self) -> int:
        """Bytes used by the cache folder, downloads in progress included."""
        total = 0
        for directory, _, files in os.walk(self.cache_dir):
            total += sum(_file_size(os.path.join(directory, name)) for name in files)
        return total

    # -- pins -----------------------------------------------------------------------------------------------

    def _pins_path(self) -> str:
        return self._folder(PINS_FILE)

    def pins(self) -> dict:
        """``{model id: version spec}`` the user pinned; RegistryError naming the file when it is not that."""
        path = self._pins_path()
        try:
            with open(path, encoding="utf-8") as file:
                pins = json.load(file)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:  # JSON and UTF-8 errors are ValueErrors
            raise RegistryError(f"cannot read {path}: {error}; correct or delete it") from error
        if not isinstance(pins, dict) or not all(isinstance(v, str) and v for v in pins.values()):
            raise RegistryError(f"{path} must be a JSON object mapping model ids to versions, like "
                                '{"liver-ct": "1.2.0"}; correct or delete it')
        return pins

    def pin(self, model_id: str, version: str | None) -> None:
        """Keep using ``version`` of ``model_id`` even when a newer one is installed; None removes the pin.

        The version is not checked here (``Registry.pin`` checks it against the indexes and installed versions).
        """
        _id_or_version(model_id, "model id")
        with self._writing(), self._lock("pins"):
            pins = self.pins()
            if version is None:
                pins.pop(model_id, None)
            else:
                pins[model_id] = version
            write_json_atomically(self._pins_path(), pins)

    # -- the staging workspaces ---------------------------------------------------------------------------

    def _fresh_staging(self, model_id: str, version: str) -> str:
        """An empty workspace for ``version``; the caller holds that version's lock, so what was there is left
        by a killed install or removal of it."""
        workspace = self._folder("staging", f"{model_id}@{version}")
        shutil.rmtree(workspace, ignore_errors=True)
        os.makedirs(workspace)
        return workspace

    def clean_staging(self) -> list:
        """Delete the staging workspaces nobody is using (their version's lock is free): what installs and
        removals killed midway left. Returns their names."""
        root = self._folder("staging")
        cleaned = []
        for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
            lock = self._lock(name, timeout=0)
            try:
                lock.acquire()
            except RegistryError:
                continue  # that version is being installed or removed right now
            try:
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
                cleaned.append(name)
            finally:
                lock.release()
        return cleaned

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
        """Download, verify and unpack ``version`` of ``entry`` unless it is installed already (and complete)."""
        if not version.files:
            raise RegistryError(f"{entry.id} {version.version} is a container image only: DeepSegment gets it "
                                "through the container runtime when it runs")
        # Files the publisher gives no sha256 for: the sha256 pinned on their first download, where there is one.
        unverified = tuple(model_file for model_file in version.files if not model_file.sha256)
        version = replace(version, files=tuple(self.trust.resolve(model_file) for model_file in version.files))
        _checked_files(entry, version)
        blobs = [self._blob(model_file) for model_file in version.files]
        existing = self.get(entry.id, version.version)
        if existing is not None and not any(os.path.lexists(blob) for blob in blobs):
            return existing  # without a lock, so that a read-only (shared) cache serves what it holds
        with self._writing(), contextlib.ExitStack() as locks:
            locks.enter_context(self._lock(f"{entry.id}@{version.version}", cancel))
            # Two versions may share a file, hence its download: one writer per download (sorted: no deadlock).
            for blob in sorted({os.path.basename(blob) for blob in blobs}):
                locks.enter_context(self._lock(blob, cancel))
            if self.get(entry.id, version.version) is None:
                self.clean_staging()
                self._check_free_space(version.download_size * 2, f"{entry.id} {version.version}")
                version = self._download_all(version, blobs, unverified, progress, cancel, timeout)
                workspace = self._fresh_staging(entry.id, version.version)
                try:
                    files, sizes = self._unpack_all(version, blobs, workspace, progress, cancel)
                    self._finish(workspace, entry.id, version.version, files, sizes,
                                 ", ".join(f.url for f in version.files))
                except UnsafeArchiveError:
                    # Verified bytes, but never installable: keeping them would only waste disk space.
                    _remove_files(blobs)
                    raise
                finally:
                    shutil.rmtree(workspace, ignore_errors=True)
            # Also after a process killed between the rename and this line: the version is in place.
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

    def _blob(self, model_file) -> str:
        """Where a file is downloaded to: ``downloads/<sha256>``, or, for the first download of a file nobody gives
        a sha256 for, ``downloads/unverified-<sha256 of its URL>``."""
        if model_file.sha256:
            return self._folder("downloads", model_file.sha256)
        return self._folder("downloads", first_download_name(model_file.url))

    def _download_all(self, version: ModelVersion, blobs: Sequence[str], unverified: Sequence, progress, cancel,
                      timeout) -> ModelVersion:
        """Download every file of ``version`` to its blob; returns the version with every file's sha256 known.

        The ``unverified`` files (as the index lists them: no publisher's sha256) go through the trust-on-first-use
        pins (``ModelRegistryLib.trust``), each saying how it was checked (an InstallProgress of stage "trust")."""
        listed = {model_file.url: model_file for model_file in unverified}
        # Files of unknown size count as nothing here: the fraction then runs ahead of the bytes, never past 1.
        total = version.download_size
        done_before = 0
        files = []
        for number, (model_file, blob) in enumerate(zip(version.files, blobs), 1):
            def report(step: Progress, done_before=done_before, number=number):
                if progress:
                    fraction = min(1.0, (done_before + step.done) / total) if total else None
                    label = f"Downloading file {number} of {len(version.files)}: " if len(version.files) > 1 else ""
                    progress(InstallProgress("download", fraction, label + step.text))

            notice = None
            if model_file.sha256:
                # Not made durable: the blob is moved or unpacked (durably) and removed; after a crash its .part
                # resumes and is verified again.
                try:
                    download_file(model_file.url, blob, sha256=model_file.sha256, size=model_file.size,
                                  progress=report, cancel=cancel, timeout=timeout, durable=False)
                except ChecksumMismatchError as error:
                    if model_file.url not in listed:
                        raise
                    raise self.trust.changed_error(listed[model_file.url], error) from error
                if model_file.url in listed:
                    notice = self.trust.notice(listed[model_file.url])
            else:
                _, sha256, notice = self.trust.first_download(model_file, os.path.dirname(blob), progress=report,
                                                              cancel=cancel, timeout=timeout)
                model_file = replace(model_file, sha256=sha256, size=os.path.getsize(blob))
            if notice is not None and progress:
                progress(InstallProgress("trust", None, notice.text))
            files.append(model_file)
            done_before += model_file.size
        return replace(version, files=tuple(files))

    def _unpack_all(self, version: ModelVersion, blobs: Sequence[str], workspace: str, progress, cancel) -> tuple:
        """Put every file of the version into ``workspace/version``, archives unpacked; returns
        ``({relative path: sha256}, {relative path: size})``."""
        target = os.path.join(workspace, "version")
        os.mkdir(target)
        files = {}
        for model_file, blob in zip(version.files, blobs):
            name = _file_name(model_file.url, model_file.name)
            if is_archive(name):
                if progress:
                    progress(InstallProgress("unpack", None, f"Unpacking {name}"))
                unpacked = os.path.join(workspace, "unpack")
                os.mkdir(unpacked)
                for relative, digest in extract_archive(blob, unpacked, cancel=cancel).items():
                    if relative.casefold() == MANIFEST_NAME.casefold():
                        raise UnsafeArchiveError(f"{name} holds a file named {MANIFEST_NAME}, the name the model "
                                                 "store keeps for its record of a version's files")
                    files[_move_into(unpacked, relative, target)] = digest
                shutil.rmtree(unpacked)
            else:
                # The download was verified against this sha256; a move (same disk) copies nothing.
                _move_into(os.path.dirname(blob), os.path.basename(blob), target, name)
                _flush_to_disk(os.path.join(target, name))
                files[name] = model_file.sha256
        sizes = {name: os.path.getsize(os.path.join(target, *name.split("/"))) for name in files}
        return dict(sorted(files.items())), dict(sorted(sizes.items()))

    def _finish(self, workspace: str, model_id: str, version: str, files: dict, sizes: dict, source: str) -> None:
        manifest = {
            "id": model_id,
            "version": version,
            "files": files,
            "sizes": sizes,
            "source": source,
            "installedAt": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        write_json_atomically(os.path.join(workspace, "version", MANIFEST_NAME), manifest)
        target = self.version_path(model_id, version)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.lexists(self._inside_models(target)):
            # An incomplete copy (files deleted, or a crash before renames existed): out of the way first.
            os.rename(target, os.path.join(workspace, "replaced"))
        os.rename(os.path.join(workspace, "version"), target)

    def import_package(
        self,
        path: str,
        entries: Sequence[ModelEntry],
        *,
        progress: Callable[[InstallProgress], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> InstalledModel:
        """Install from a local file or folder (offline sites) holding the files of a version some index lists (see
        :meth:`local_version`); RegistryError when it holds none."""
        found = self.local_version(path, entries, progress=progress, cancel=cancel)
        if found is None:
            raise RegistryError(
                f"{os.path.basename(os.path.abspath(path))} holds no complete model version listed in the registry"
                " indexes (files are matched by sha256): add the index that lists it, or check that the files are"
                " whole"
            )
        entry, version = found
        return self.install(entry, version, progress=progress, cancel=cancel)

    def local_version(
        self,
        path: str,
        entries: Sequence[ModelEntry],
        *,
        progress: Callable[[InstallProgress], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> tuple | None:
        """``(entry, version)`` of a version in ``entries`` whose files are in the local file or folder ``path``
        (offline sites), with file URLs pointing at the local copies; None when it holds no complete version.

        Files are recognised by their sha256 among the files of the versions in ``entries``: an imported
        package is exactly as trustworthy as a downloaded one, whatever its files are called locally. A file
        the publisher gives no sha256 for is recognised by the sha256 pinned on its first download, else by
        the publisher's MD5 or SHA-1, else (trust on first use, said through ``progress``) by its name, and
        then pinned. Only regular files whose size is that of a listed file are read (any size where a listed
        file's is unknown; fifos, devices and sockets are skipped).
        """
        listed = [self.trust.resolve(f) for entry in entries for version in entry.versions for f in version.files]
        wanted = {f.size for f in listed}
        candidates = [(local, size) for local, size in _local_files(path) if None in wanted or size in wanted]
        total, done = sum(size for _, size in candidates), 0
        digests = {}
        for local, size in candidates:
            if progress:
                progress(InstallProgress("import", done / total if total else None, f"Checking {local}"))
            with contextlib.suppress(OSError, RegistryError):  # unreadable, or replaced by a fifo meanwhile
                digests[local] = file_digests(local, ("sha256", "md5", "sha1"), cancel=cancel)
            if cancel is not None and cancel.is_set():
                raise CancelledError(f"cancelled importing {path}")
            done += size

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
        """Remove one version, or all versions of ``model_id`` (complete or not); returns the versions removed."""
        versions = [version] if version else [number for _, number in self._version_folders(model_id)]
        removed = []
        with self._writing():
            for number in versions:
                target = self.version_path(model_id, number)
                with self._lock(f"{model_id}@{number}"):
                    if os.path.lexists(self._inside_models(target)):
                        # Renamed away first, so a half-deleted folder is never taken for an installed version.
                        workspace = self._fresh_staging(model_id, number)
                        os.rename(target, os.path.join(workspace, "removed"))
                        shutil.rmtree(workspace, ignore_errors=True)
                        removed.append(number)
            self.clean_staging()
        if removed and self.pins().get(model_id) in removed:
            self.pin(model_id, None)
        return removed

    def verify(
        self,
        model_id: str | None = None,
        version: str | None = None,
        *,
        progress: Callable[[InstallProgress], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> list:
        """Re-hash installed files against their manifests; versions with files missing are checked too, and a
        version folder without a valid manifest is reported."""
        results = []
        recorded = [r for r in self._recorded(model_id) if version is None or r[1] == version]
        total = sum(sum(model.sizes.values()) for _, _, model in recorded if model is not None) or None
        done = 0
        for identifier, number, model in recorded:
            if model is None:
                results.append(VerifyResult(identifier, number, problem=f"no valid {MANIFEST_NAME}"))
                continue
            missing, changed = [], []
            for name, digest in sorted(model.files.items()):
                if progress:
                    progress(InstallProgress("verify", done / total if total else None,
                                             f"Checking {identifier} {number}: {name}"))
                full = os.path.join(model.path, *name.split("/"))
                if not os.path.lexists(full):
                    missing.append(name)
                    continue
                try:
                    intact = file_sha256(full, cancel=cancel) == digest
                except CancelledError:
                    raise
                except (OSError, RegistryError):  # unreadable, or no longer a regular file
                    intact = False
                if not intact:
                    changed.append(name)
                done += model.sizes.get(name, 0)
            present = {
                os.path.relpath(os.path.join(d, f), model.path).replace(os.sep, "/")
                for d, _, fs in os.walk(model.path)
                for f in fs
            }
            extra = sorted(present - set(model.files) - {MANIFEST_NAME})
            results.append(VerifyResult(identifier, number, tuple(missing), tuple(changed), tuple(extra)))
        return results


def _version_order(version: str) -> tuple:
    """Sort key of a version folder's name: semantic order, names that are no semantic version last."""
    try:
        return (0, semantic_version_key(version))
    except ValueError:
        return (1, version)


def _local_files(path: str) -> list:
    """``(path, size)`` of the regular files at ``path`` (a file, or a folder searched without following links)."""
    try:
        status = os.stat(path)
    except OSError as error:
        raise RegistryError(f"Nothing to import at {path}: {error.strerror or error}") from error
    if stat.S_ISREG(status.st_mode):
        return [(os.path.abspath(path), status.st_size)]
    if not stat.S_ISDIR(status.st_mode):
        raise RegistryError(f"Nothing to import at {path}: not a file or folder")
    found = []
    for directory, _, names in os.walk(os.path.abspath(path)):
        for name in sorted(names):
            local = os.path.join(directory, name)
            with contextlib.suppress(OSError):
                status = os.stat(local)
                if stat.S_ISREG(status.st_mode):
                    found.append((local, status.st_size))
    return found


def _remove_files(paths: Sequence[str]) -> None:
    for path in paths:
        for leftover in (path, path + ".part"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(leftover)


def _flush_to_disk(path: str) -> None:
    with open(path, "rb+") as file:
        os.fsync(file.fileno())


def _move_into(source_folder: str, relative: str, target_folder: str, name: str = "") -> str:
    """Move ``source_folder/relative`` to ``target_folder/(name or relative)``; returns the '/'-separated path."""
    name = name or relative
    target = os.path.join(target_folder, *name.split("/"))
    if os.path.lexists(target):
        raise RegistryError(f"Two files of the model version unpack to the same path: {name}")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.replace(os.path.join(source_folder, *relative.split("/")), target)
    return name

"""The registry: index sources plus the model store, the one place every module asks for a model.

Example::

    >>> import os, tempfile
    >>> registry = Registry([bundled_source()], tempfile.mkdtemp())
    >>> statuses = registry.refresh()
    >>> all(status.ok for status in statuses)
    True
    >>> registry.state("no-such-model")
    'unknown'
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .errors import RegistryError
from .files import write_json_atomically
from .importers import ImporterError, index_document, package_foreign_model
from .index import (
    ModelEntry,
    ModelVersion,
    VersionNotFoundError,
    load_index,
    model_spec_problem,
    resolve_version,
    search,
    semantic_version_key,
)
from .sources import IndexSource, load_sources
from .store import InstalledModel, InstallProgress, ModelStore

BUNDLED_INDEX = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Resources", "Registry",
                             "bundled-index.json")

USER_SOURCES_FILE = "sources.json"
# Models imported from local files of the field's formats (nnU-Net results, MONAI bundles...): their archives and
# the index listing them, read after every other source.
IMPORTED_FOLDER = "imported"

NOT_INSTALLED = "not installed"
INSTALLED = "installed"
UPDATE_AVAILABLE = "update available"
UNKNOWN = "unknown"


def bundled_source() -> IndexSource:
    """The index that ships with the extension."""
    return IndexSource(BUNDLED_INDEX, name="Bundled with SlicerDeepLearning")


def user_sources(cache_dir: str) -> list:
    """Index sources the user added (in the Slicer panel or by hand), kept in ``<cache_dir>/sources.json``.

    They live with the cache so that Slicer, its Python console and the command line see the same ones.
    """
    path = os.path.join(cache_dir, USER_SOURCES_FILE)
    try:
        with open(path, encoding="utf-8") as file:
            items = json.load(file)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as error:  # JSON and UTF-8 errors are ValueErrors
        raise RegistryError(f"cannot read {path}: {error}; correct or delete it") from error
    if not isinstance(items, list) or not all(
        isinstance(item, dict) and isinstance(item.get("location"), str) and item["location"]
        and isinstance(item.get("name", ""), str) for item in items
    ):
        raise RegistryError(f'{path} must be a JSON list of {{"location": URL_OR_PATH, "name": TEXT}} objects; '
                            "correct or delete it")
    return [IndexSource(item["location"], name=item.get("name", "")) for item in items]


def imported_source(cache_dir: str) -> IndexSource:
    """The index of the models imported into ``cache_dir`` (``import`` of an nnU-Net results folder, a bundle...)."""
    return IndexSource(os.path.join(cache_dir, IMPORTED_FOLDER, "index.json"), name="Imported models")


def add_imported(cache_dir: str, path: str) -> list:
    """Add the field's model at ``path`` (``importers.package_foreign_model``) to the imported models' index in
    ``cache_dir``; ``(id, version)`` of each entry added.

    A model imported again with the same content keeps its version; with other content it gets the next patch
    version, so the version installed before stays what it was.
    """
    source = imported_source(cache_dir)
    entries = package_foreign_model(path, os.path.dirname(source.location))
    try:
        with open(source.location, encoding="utf-8") as file:
            document = json.load(file)
    except FileNotFoundError:
        document = index_document([])
    except (OSError, ValueError) as error:
        raise RegistryError(f"Cannot read the imported models' index {source.location}: {error}") from error
    added = []
    for entry in entries:
        (version,) = entry["versions"]
        existing = next((model for model in document["models"] if model["id"] == entry["id"]), None)
        if existing is None:
            document["models"].append(entry)
            added.append((entry["id"], version["version"]))
            continue
        same = next((old for old in existing["versions"] if old["files"] == version["files"]), None)
        if same is None:
            newest = max((old["version"] for old in existing["versions"]), key=semantic_version_key)
            major, minor, patch = semantic_version_key(newest)[:3]
            version["version"] = f"{major}.{minor}.{patch + 1}"
            existing.update({key: value for key, value in entry.items() if key != "versions"})
            existing["versions"].append(version)
            same = version
        added.append((entry["id"], same["version"]))
    write_json_atomically(source.location, index_document(document["models"]))
    return added


def import_model(store: ModelStore, path: str, entries: Sequence[ModelEntry], *,
                 progress: Callable[[InstallProgress], None] | None = None,
                 cancel: threading.Event | None = None) -> InstalledModel:
    """Install the local archive or folder at ``path``: the files of a version ``entries`` list (matched by sha256),
    else a model of the field (an nnU-Net v2 results folder or zip, a MONAI bundle, a SlicerMONAIAuto3DSeg archive),
    added to the imported models' index (:func:`add_imported`) and installed from there. Returns the (first)
    installed model. The panel's worker process runs this too (``tasks.import_package``)."""
    found = store.local_version(path, entries, progress=progress, cancel=cancel)
    if found is not None:
        return store.install(*found, progress=progress, cancel=cancel)
    try:
        added = add_imported(store.cache_dir, path)
    except ImporterError as error:
        raise RegistryError(
            f"{os.path.basename(os.path.abspath(path))} holds no complete model version listed in the registry"
            f" indexes (files are matched by sha256), and is no model of the field DeepSegment imports: {error}"
        ) from error
    imported = {model.id: model for model in load_index(imported_source(store.cache_dir).location)}
    installed = [store.install(imported[model_id], resolve_version(imported[model_id], version), progress=progress,
                               cancel=cancel) for model_id, version in added]
    return installed[0]


def save_user_sources(cache_dir: str, sources: Sequence[IndexSource]) -> None:
    write_json_atomically(
        os.path.join(cache_dir, USER_SOURCES_FILE),
        [{"location": source.location, "name": source.name} for source in sources],
    )


def parse_model_spec(spec: str) -> tuple:
    """``"id"`` or ``"id@version"`` → (id, version spec or None); RegistryError for what can name no version."""
    model_id, _, version = spec.strip().partition("@")
    if not model_id:
        raise RegistryError(f"No model id in {spec!r}: use ID or ID@VERSION")
    problem = model_spec_problem(model_id, version or None)
    if problem:
        raise RegistryError(f"{spec!r}: {problem}")
    return model_id, (version or None)


@dataclass(frozen=True)
class Update:
    model_id: str
    installed: str
    available: str


class Registry:
    """Models listed by ``sources`` (in order) and installed in ``cache_dir``."""

    def __init__(self, sources: Sequence[IndexSource], cache_dir: str) -> None:
        self.sources = list(sources)
        self.store = ModelStore(cache_dir)
        self._models: list = []
        self.statuses: list = []

    # -- listing -------------------------------------------------------------------------------------------

    def refresh(self, *, offline: bool = False, timeout: float = 10.0) -> list:
        """Read the sources again (remote ones from the network unless ``offline``); returns their statuses."""
        sources = list(self.sources)
        imported = imported_source(self.store.cache_dir)
        if os.path.isfile(imported.location) and imported not in sources:
            sources.append(imported)
        self._models, self.statuses = load_sources(sources, self.store.cache_dir, refresh=not offline, timeout=timeout)
        return self.statuses

    def models(self) -> list:
        return list(self._models)

    def find(self, model_id: str) -> ModelEntry | None:
        return next((model for model in self._models if model.id == model_id), None)

    def search(self, text: str = "", *, modality: str = "", task: str = "", anatomy: str = "",
               installed: bool | None = None) -> list:
        """Models matching every word of ``text`` and each filter given (filters compare case-insensitively)."""
        installed_ids = {model.model_id for model in self.store.installed()}
        matches = []
        for model in search(self._models, text):
            if modality and model.modality.lower() != modality.lower():
                continue
            if task and model.task.lower() != task.lower():
                continue
            if anatomy and anatomy.lower() not in (a.lower() for a in model.anatomy):
                continue
            if installed is not None and (model.id in installed_ids) != installed:
                continue
            matches.append(model)
        return matches

    def state(self, model_id: str) -> str:
        """``not installed``, ``installed``, ``update available`` (a newer release is listed), or ``unknown``."""
        installed = self.store.installed_versions(model_id)
        entry = self.find(model_id)
        if entry is None:
            return INSTALLED if installed else UNKNOWN
        if not installed:
            return NOT_INSTALLED
        newest_installed = max(installed, key=semantic_version_key)
        offered = entry.latest_release.version
        return UPDATE_AVAILABLE if semantic_version_key(offered) > semantic_version_key(newest_installed) else INSTALLED

    def updates(self) -> list:
        """One ``Update`` per installed model for which a source lists a newer version."""
        found = []
        for model_id in sorted({m.model_id for m in self.store.installed()}):
            if self.state(model_id) == UPDATE_AVAILABLE:
                newest = max(self.store.installed_versions(model_id), key=semantic_version_key)
                found.append(Update(model_id, newest, self.find(model_id).latest_release.version))
        return found

    # -- resolving and installing ----------------------------------------------------------------------------

    def resolve(self, spec: str) -> tuple:
        """``id[@version]`` → (entry, version) from the sources; a pinned version wins when none is asked.

        A pin no index can satisfy is an error that names the pin and how to lift it.
        """
        model_id, version_spec = parse_model_spec(spec)
        pinned = None if version_spec else self.store.pins().get(model_id)
        entry = self.find(model_id)
        if entry is None:
            known = ", ".join(sorted(m.id for m in self._models)[:10]) or "none"
            raise RegistryError(f"Model '{model_id}' is in none of the registry indexes (known: {known})"
                                + (self._pin_note(model_id, pinned) if pinned else ""))
        try:
            return entry, resolve_version(entry, version_spec or pinned)
        except VersionNotFoundError as error:
            if not pinned:
                raise
            raise RegistryError(f"{error}{self._pin_note(model_id, pinned)}") from error

    def _pin_note(self, model_id: str, pinned: str) -> str:
        return (f"; {model_id} is pinned to {pinned} in {os.path.join(self.store.cache_dir, 'pins.json')}:"
                f" unpin it (unpin {model_id}) or pin another version")

    def installed_model(self, spec: str) -> InstalledModel | None:
        """The installed (complete) version ``spec`` means, without network: the pinned, asked or newest one."""
        model_id, version_spec = parse_model_spec(spec)
        versions = self.store.installed_versions(model_id)
        if not versions:
            return None
        # Version specs mean the same for installed versions as for listed ones.
        installed = ModelEntry(model_id, model_id, tuple(ModelVersion(version) for version in versions))
        try:
            chosen = resolve_version(installed, version_spec or self.store.pins().get(model_id))
        except VersionNotFoundError:
            return None
        return self.store.get(model_id, chosen.version)

    def ensure_installed(
        self,
        spec: str,
        *,
        progress: Callable[[InstallProgress], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> InstalledModel:
        """The version ``spec`` means, installed first if needed.

        Without a version, the newest listed one (or the pinned one) is installed; with no index at hand
        (offline and never fetched) an already installed version is used.
        """
        try:
            entry, version = self.resolve(spec)
        except RegistryError:
            installed = self.installed_model(spec)
            if installed is not None:
                return installed
            raise
        return self.store.install(entry, version, progress=progress, cancel=cancel)

    def install(self, entry: ModelEntry, version: ModelVersion, **kwargs) -> InstalledModel:
        return self.store.install(entry, version, **kwargs)

    def remove(self, spec: str) -> list:
        model_id, version = parse_model_spec(spec)
        removed = self.store.remove(model_id, version)
        if not removed:
            raise RegistryError(f"{spec} is not installed")
        return removed

    def verify(self, spec: str | None = None, **options) -> list:
        """``ModelStore.verify`` of ``id[@version]`` (everything when None); ``options``: progress, cancel."""
        model_id, version = parse_model_spec(spec) if spec else (None, None)
        return self.store.verify(model_id, version, **options)

    def import_package(self, path: str, **options) -> InstalledModel:
        """:func:`import_model` against the listed models, then the sources read again (offline) so that an imported
        model of the field is listed; ``options``: progress, cancel."""
        installed = import_model(self.store, path, self._models, **options)
        self.refresh(offline=True)
        return installed

    def pin(self, spec: str) -> None:
        """Pin ``id@version`` (a version spec some index lists or that is installed); ``id`` alone unpins.

        >>> import tempfile
        >>> registry = Registry([bundled_source()], tempfile.mkdtemp()); _ = registry.refresh(offline=True)
        >>> try:
        ...     registry.pin("brain-tissue-demo@9")
        ... except LookupError as error:
        ...     print(error)
        model 'brain-tissue-demo' has no version matching '9'; available: 1.1.0, 1.0.0
        """
        model_id, version_spec = parse_model_spec(spec)
        if version_spec is not None:
            entry = self.find(model_id)
            known = {version.version for version in entry.versions} if entry is not None else set()
            known |= set(self.store.installed_versions(model_id))
            if not known:
                raise RegistryError(f"Model '{model_id}' is neither in the registry indexes nor installed")
            resolve_version(ModelEntry(model_id, model_id, tuple(ModelVersion(v) for v in known)), version_spec)
        self.store.pin(model_id, version_spec)


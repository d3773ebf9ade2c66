"""Index sources: where the lists of models come from, read in a stated order and merged into one list.

A source is an ``http(s)://`` or ``file://`` URL of an index document, a local folder holding ``index.json``,
or the path of a local index file. SlicerMONAIAuto3DSeg's ``Models.json`` is an index document too: it is
converted when read (``ModelRegistryLib.importers.foreign_index_document``), and the converted index is what
the cache keeps. File URLs in an index may be relative to it, so a folder (or the index
bundled with the extension) can ship archives next to its ``index.json``.

Remote indexes (http, https) are fetched with a size limit, validated, and the last good copy of each is
kept in ``<cache_dir>/indexes/<sha256 of its URL>.json`` with the time it was fetched. Listing therefore
works offline: when a fetch fails the cached copy is used (its status says so and why), and
``refresh=False`` reads the cached copies without touching the network. A document that fails validation
never replaces a good cached copy.

Merge rule: sources are read in the order given. The first source that lists a model id gives the model's
card (title, labels, license...). A later source listing the same id adds each version whose version
string is new (a lab's own index can add a version of a public model); its copy of a version already
listed is ignored, and so is the rest of its card. A failing source never hides the others.

Example::

    >>> import json, os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> with open(os.path.join(folder, "index.json"), "w") as file:
    ...     json.dump({"schemaVersion": 1, "models": [{"id": "demo", "title": "Demo", "versions": [
    ...         {"version": "1.0.0", "files": [{"url": "demo.zip", "sha256": 64 * "0", "size": 1}]}]}]}, file)
    >>> models, statuses = load_sources([IndexSource(folder, name="Lab models")], os.path.join(folder, "cache"))
    >>> [(model.id, model.latest.files[0].url.startswith("file://")) for model in models]
    [('demo', True)]
    >>> [(status.ok, status.model_count) for status in statuses]
    [(True, 1)]
    >>> import shutil; shutil.rmtree(folder)
"""

from __future__ import annotations

import concurrent.futures
import datetime
import hashlib
import json
import os
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from .download import fetch_bytes
from .errors import DownloadError
from .files import write_text_atomically
from .importers import foreign_index_document
from .index import (
    MAX_INDEX_BYTES,
    WEB_SCHEMES,
    IndexValidationError,
    ModelEntry,
    decode_index,
    load_index,
    local_path,
    parse_index,
)

INDEX_FILE_NAME = "index.json"
CACHE_FOLDER = "indexes"
# Sources are fetched side by side, so an offline start waits for one timeout, not one per source.
_MAX_PARALLEL_FETCHES = 8


@dataclass(frozen=True)
class IndexSource:
    """Where an index comes from: an http(s) or file URL, a folder holding ``index.json``, or a file path."""

    location: str
    name: str = ""  # shown in the panel

    @property
    def remote(self) -> bool:
        return urllib.parse.urlsplit(self.location).scheme.lower() in WEB_SCHEMES

    @property
    def title(self) -> str:
        return self.name or self.location


@dataclass
class SourceStatus:
    """How reading a source went.

    ``ok``: the source gave a list of models (fresh, or from the cached copy); ``from_cache``: that list is
    the cached copy, fetched at ``fetched_at`` (UTC, ISO 8601; ``None`` for local sources); ``error``: why
    the source gave nothing, or why a refresh failed when the cached copy was used instead.
    """

    source: IndexSource
    ok: bool
    from_cache: bool
    fetched_at: str | None
    error: str
    model_count: int


def cached_index_path(cache_dir: str, url: str) -> str:
    """Where the last good copy of the index at ``url`` is kept."""
    return os.path.join(cache_dir, CACHE_FOLDER, hashlib.sha256(url.encode("utf-8")).hexdigest() + ".json")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _keep_copy(cache_dir: str, url: str, document, fetched_at: str) -> None:
    text = json.dumps({"url": url, "fetchedAt": fetched_at, "index": document}, ensure_ascii=False)
    write_text_atomically(cached_index_path(cache_dir, url), text)


def _cached_copy(cache_dir: str, url: str) -> tuple:
    """``(models, fetched_at)`` from the cached copy of ``url``; ``((), None)`` when there is none."""
    path = cached_index_path(cache_dir, url)
    if not os.path.isfile(path):
        return (), None
    with open(path, "rb") as file:
        # The wrapper around the document adds a little; the limit is the document's, with room for that.
        kept = json.loads(file.read(2 * MAX_INDEX_BYTES).decode("utf-8"))
    if not isinstance(kept, dict) or kept.get("url") != url or not isinstance(kept.get("fetchedAt"), str):
        raise ValueError("the cached copy is not one this program wrote")
    return parse_index(kept.get("index"), url), kept["fetchedAt"]


def _read_remote(source: IndexSource, cache_dir: str, refresh: bool, timeout: float) -> tuple:
    url = source.location
    failure = ""
    if refresh:
        try:
            document = foreign_index_document(
                decode_index(fetch_bytes(url, max_bytes=MAX_INDEX_BYTES, timeout=timeout)), url)
            models = parse_index(document, url)
        except (DownloadError, ValueError, OSError) as error:  # IndexValidationError is a ValueError
            failure = f"could not refresh: {error}"
        else:
            fetched_at = _now()
            error = ""
            try:
                _keep_copy(cache_dir, url, document, fetched_at)
            except OSError as write_error:
                error = f"could not keep a copy for offline use: {write_error}"
            return models, SourceStatus(source, True, False, fetched_at, error, len(models))
    try:
        models, fetched_at = _cached_copy(cache_dir, url)
    except (OSError, ValueError) as error:  # IndexValidationError and JSON errors are ValueErrors
        reason = f"the cached copy is unreadable ({error})"
        return (), SourceStatus(source, False, False, None, "; ".join(filter(None, (failure, reason))), 0)
    if fetched_at is None:
        reason = failure or "not fetched yet: refresh to download it"
        return (), SourceStatus(source, False, False, None, reason, 0)
    return models, SourceStatus(source, True, True, fetched_at, failure, len(models))


def _read_local(source: IndexSource) -> tuple:
    path = os.path.expanduser(local_path(source.location))
    if os.path.isdir(path):
        path = os.path.join(path, INDEX_FILE_NAME)
    try:
        models = load_index(path, convert=foreign_index_document)
    except FileNotFoundError:
        reason = f"no index at {path} (neither an index file nor a folder holding {INDEX_FILE_NAME})"
        if path.endswith(INDEX_FILE_NAME) and os.path.isdir(os.path.dirname(path)):
            reason = f"no {INDEX_FILE_NAME} in the folder {os.path.dirname(path)}"
        return (), SourceStatus(source, False, False, None, reason, 0)
    except (OSError, IndexValidationError) as error:
        return (), SourceStatus(source, False, False, None, f"cannot read {path}: {error}", 0)
    return models, SourceStatus(source, True, False, None, "", len(models))


def read_source(source: IndexSource, cache_dir: str, *, refresh: bool = True, timeout: float = 10.0) -> tuple:
    """``(models, status)`` of one source; never raises for a source that cannot be read (the status says why)."""
    if source.remote:
        return _read_remote(source, cache_dir, refresh, timeout)
    return _read_local(source)


def merge_models(model_lists: Iterable[Iterable[ModelEntry]]) -> list:
    """One list of models from lists in priority order (the merge rule in the module docstring).

    >>> from ModelRegistryLib.index import ModelVersion
    >>> public = [ModelEntry("m", "Public card", (ModelVersion("1.0.0"),))]
    >>> lab = [ModelEntry("m", "Lab card", (ModelVersion("1.0.0"), ModelVersion("1.1.0")))]
    >>> [(m.title, [v.version for v in m.versions]) for m in merge_models([public, lab])]
    [('Public card', ['1.0.0', '1.1.0'])]
    """
    merged: dict = {}
    for models in model_lists:
        for model in models:
            first = merged.get(model.id)
            if first is None:
                merged[model.id] = model
                continue
            known = {version.version for version in first.versions}
            added = tuple(version for version in model.versions if version.version not in known)
            if added:
                merged[model.id] = replace(first, versions=first.versions + added)
    return list(merged.values())


def load_sources(
    sources: Sequence[IndexSource], cache_dir: str, *, refresh: bool = True, timeout: float = 10.0
) -> tuple:
    """``(models, statuses)``: the merged models of ``sources`` and one status per source, in their order.

    With ``refresh`` remote indexes are fetched (the cached copy stands in when that fails); without it the
    cached copies are used and the network is not touched.
    """
    if not sources:
        return [], []
    workers = min(_MAX_PARALLEL_FETCHES, len(sources))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="index-source") as pool:
        results = list(pool.map(lambda source: read_source(source, cache_dir, refresh=refresh, timeout=timeout),
                                sources))
    return merge_models(models for models, _ in results), [status for _, status in results]

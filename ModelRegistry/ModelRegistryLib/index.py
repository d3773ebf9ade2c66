"""The model registry index: a JSON document listing models and their versions.

The document is described by ``ModelRegistry/Resources/Schema/registry-index.schema.json``. Parsing
here does not need a JSON Schema library (Slicer bundles none): it checks the same rules and names the
offending field in every error, so a typo in an index gives a message a user can act on instead of a
crash somewhere later.

Example::

    >>> document = {"schemaVersion": 1, "models": [{"id": "demo", "title": "Demo", "versions": [
    ...     {"version": "1.0.0", "files": [{"url": "https://example.org/demo.zip",
    ...      "sha256": 64 * "0", "size": 10}]}]}]}
    >>> [model.id for model in parse_index(document)]
    ['demo']
    >>> parse_index(document)[0].latest.version
    '1.0.0'
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

SCHEMA_VERSION = 1
MAX_INDEX_BYTES = 16 * 1024 * 1024

_MODEL_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
_SEMANTIC_VERSION = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z.-]+))?$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_IMAGE_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class IndexValidationError(ValueError):
    """An index document breaks a rule; ``field`` names where (e.g. ``models[2].versions[0].sha256``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class ModelFile:
    url: str
    sha256: str
    size: int


@dataclass(frozen=True)
class ContainerImage:
    name: str
    digest: str


@dataclass(frozen=True)
class ModelVersion:
    version: str
    files: tuple = ()
    image: ContainerImage | None = None

    @property
    def sort_key(self) -> tuple:
        return semantic_version_key(self.version)


@dataclass(frozen=True)
class ModelEntry:
    id: str
    title: str
    versions: tuple
    description: str = ""
    task: str = ""
    modality: str = ""
    anatomy: tuple = ()

    @property
    def latest(self) -> ModelVersion:
        """The highest version; pre-releases rank below their release, as semantic versioning says."""
        return max(self.versions, key=lambda version: version.sort_key)


def semantic_version_key(version: str) -> tuple:
    """Sort key of a semantic version: ``1.10.0`` > ``1.9.0`` > ``1.9.0-rc1``."""
    match = _SEMANTIC_VERSION.match(version)
    if match is None:
        raise ValueError(f"not a semantic version (MAJOR.MINOR.PATCH): {version!r}")
    major, minor, patch, prerelease = match.groups()
    return (int(major), int(minor), int(patch), prerelease is None, prerelease or "")


def _require(mapping: dict, key: str, kind: type, field: str):
    if key not in mapping:
        raise IndexValidationError(f"{field}.{key}" if field else key, "is required")
    value = mapping[key]
    # bool is an int in Python; a size of `true` is still an error.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise IndexValidationError(f"{field}.{key}" if field else key, f"must be {kind.__name__}")
    return value


def _optional(mapping: dict, key: str, kind: type, field: str, default):
    return _require(mapping, key, kind, field) if key in mapping else default


def _string_list(items: list, field: str) -> tuple:
    for i, value in enumerate(items):
        if not isinstance(value, str):
            raise IndexValidationError(f"{field}[{i}]", "must be str")
    return tuple(items)


def _parse_file(item, field: str) -> ModelFile:
    if not isinstance(item, dict):
        raise IndexValidationError(field, "must be an object")
    sha256 = _require(item, "sha256", str, field)
    if not _SHA256.match(sha256):
        raise IndexValidationError(f"{field}.sha256", "must be 64 lower-case hexadecimal digits")
    size = _require(item, "size", int, field)
    if size < 0:
        raise IndexValidationError(f"{field}.size", "must not be negative")
    return ModelFile(url=_require(item, "url", str, field), sha256=sha256, size=size)


def _parse_version(item, field: str) -> ModelVersion:
    if not isinstance(item, dict):
        raise IndexValidationError(field, "must be an object")
    version = _require(item, "version", str, field)
    if not _SEMANTIC_VERSION.match(version):
        raise IndexValidationError(f"{field}.version", "must be a semantic version MAJOR.MINOR.PATCH")
    if ("files" in item) == ("image" in item):
        raise IndexValidationError(field, "needs either 'files' or 'image', not both")
    fileItems = _optional(item, "files", list, field, [])
    files = tuple(_parse_file(f, f"{field}.files[{i}]") for i, f in enumerate(fileItems))
    if "files" in item and not files:
        raise IndexValidationError(f"{field}.files", "must list at least one file")
    image = None
    if "image" in item:
        imageItem = _require(item, "image", dict, field)
        digest = _require(imageItem, "digest", str, f"{field}.image")
        if not _IMAGE_DIGEST.match(digest):
            raise IndexValidationError(f"{field}.image.digest", "must be 'sha256:' and 64 hexadecimal digits")
        image = ContainerImage(name=_require(imageItem, "name", str, f"{field}.image"), digest=digest)
    return ModelVersion(version=version, files=files, image=image)


def _parse_model(item, field: str) -> ModelEntry:
    if not isinstance(item, dict):
        raise IndexValidationError(field, "must be an object")
    model_id = _require(item, "id", str, field)
    if not _MODEL_ID.match(model_id):
        raise IndexValidationError(f"{field}.id", "must be lower-case letters, digits, '.', '_' or '-'")
    versions = _require(item, "versions", list, field)
    if not versions:
        raise IndexValidationError(f"{field}.versions", "must list at least one version")
    parsed = tuple(_parse_version(v, f"{field}.versions[{i}]") for i, v in enumerate(versions))
    seen = set()
    for i, version in enumerate(parsed):
        if version.version in seen:
            raise IndexValidationError(f"{field}.versions[{i}].version", f"duplicate version {version.version}")
        seen.add(version.version)
    return ModelEntry(
        id=model_id,
        title=_require(item, "title", str, field),
        versions=parsed,
        description=_optional(item, "description", str, field, ""),
        task=_optional(item, "task", str, field, ""),
        modality=_optional(item, "modality", str, field, ""),
        anatomy=_string_list(_optional(item, "anatomy", list, field, []), f"{field}.anatomy"),
    )


def parse_index(document) -> tuple:
    """Validate an index document (already decoded from JSON) and return its models."""
    if not isinstance(document, dict):
        raise IndexValidationError("(document)", "must be a JSON object")
    schema_version = _require(document, "schemaVersion", int, "")
    if schema_version != SCHEMA_VERSION:
        raise IndexValidationError("schemaVersion", f"{schema_version} is not supported (expected {SCHEMA_VERSION})")
    models = tuple(_parse_model(m, f"models[{i}]") for i, m in enumerate(_require(document, "models", list, "")))
    ids = [model.id for model in models]
    for i, model_id in enumerate(ids):
        if model_id in ids[:i]:
            raise IndexValidationError(f"models[{i}].id", f"duplicate model id {model_id!r}")
    return models


def load_index(path) -> tuple:
    """Read and validate an index file; files over ``MAX_INDEX_BYTES`` are refused unread."""
    size = os.path.getsize(path)
    if size > MAX_INDEX_BYTES:
        raise IndexValidationError("(document)", f"{size} bytes is over the {MAX_INDEX_BYTES}-byte limit")
    with open(path, encoding="utf-8") as file:
        try:
            document = json.load(file)
        except json.JSONDecodeError as error:
            raise IndexValidationError("(document)", f"not valid JSON: {error}") from error
    return parse_index(document)


def search(models, text: str = "") -> list:
    """Models whose id, title, description, task, modality or anatomy contain every word of ``text``."""
    words = text.lower().split()

    def haystack(model: ModelEntry) -> str:
        return " ".join((model.id, model.title, model.description, model.task, model.modality, *model.anatomy)).lower()

    return [model for model in models if all(word in haystack(model) for word in words)]

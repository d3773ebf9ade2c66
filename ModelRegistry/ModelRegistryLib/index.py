"""The model registry index: a JSON document listing models, each with its model card and its versions.

The document is described by ``ModelRegistry/Resources/Schema/registry-index.schema.json``. Parsing
here does not need a JSON Schema library (Slicer bundles none): it checks the same rules (and a few a
schema cannot say: unique label values, patterns that compile, real dates) and names the offending
field in every error, so a typo in an index gives a message a user can act on instead of a crash
somewhere later.

A model entry is the model's card: what it does (task, modality, anatomy, inputs, output labels with
colors and Slicer terminology codes), who made it and under which license, its intended use and
limitations, training data, metrics, resource needs and run times, and its versions with their
changelog. A version ships weight files (run in Slicer's Python), a container image pinned by digest
(with typed parameters and, for offline sites, an image archive), or both. File URLs may be relative
to the index (``load_index`` and ``parse_index(..., base_url=)`` resolve them), so a folder can hold an
index and the archives it lists.

Example::

    >>> document = {"schemaVersion": 1, "models": [{"id": "demo", "title": "Demo", "versions": [
    ...     {"version": "1.0.0", "files": [{"url": "weights/demo.zip", "sha256": 64 * "0", "size": 10}]},
    ...     {"version": "1.1.0-rc1", "files": [{"url": "weights/demo-rc.zip", "sha256": 64 * "0", "size": 10}]}]}]}
    >>> [model.id for model in parse_index(document)]
    ['demo']
    >>> model = parse_index(document, base_url="https://example.org/registry/index.json")[0]
    >>> model.latest.version, model.latest_release.version
    ('1.1.0-rc1', '1.0.0')
    >>> file = model.latest_release.files[0]
    >>> file.url, file.name, file.unpacked
    ('https://example.org/registry/weights/demo.zip', 'demo.zip', True)
    >>> resolve_version(model, "1").version
    '1.0.0'
"""

from __future__ import annotations

import datetime
import functools
import json
import math
import numbers
import os
import pathlib
import posixpath
import re
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import cached_property

from .archive import is_archive

SCHEMA_VERSION = 1
MAX_INDEX_BYTES = 16 * 1024 * 1024
# An index read from these may list only files at these (a local index may also list file URLs).
WEB_SCHEMES = ("http", "https")

# A file with one of these name endings is an archive, unpacked into the version's folder at install.
DEVICES = ("cpu", "cuda", "mps")

_MODEL_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
_SEMANTIC_VERSION = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z.-]+))?", re.ASCII)
_VERSION_PREFIX = re.compile(r"(0|[1-9]\d*)(?:\.(0|[1-9]\d*))?", re.ASCII)
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Digests some publishers give instead of a sha256 (the MONAI model zoo's large_files.yml: MD5; its
# model_info.json: SHA-1); a file with none of these is trusted on first use (ModelRegistryLib.trust).
# Hexadecimal digits of each.
_PUBLISHER_DIGESTS = {"md5": 32, "sha1": 40}
_IMAGE_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# An image name without tag or digest: path segments without whitespace, control characters or '@'; a ':' only
# before the last '/' (a registry's host:port, as in 127.0.0.1:5000/lab/liver), never in the last segment.
_IMAGE_NAME = re.compile(r"(?:[^\s@/\x00-\x1f\x7f]+/)*[^\s@/:\x00-\x1f\x7f]+")
_PARAMETER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_COLOR = re.compile(r"#[0-9a-fA-F]{6}")
# A target file name: one path segment, no control characters, not "." or "..".
_FILE_NAME = re.compile(r"(?!\.\.?$)[^/\\\x00-\x1f]+")


class IndexValidationError(ValueError):
    """An index document breaks a rule; ``field`` names where (e.g. ``models[2].versions[0].sha256``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class VersionNotFoundError(LookupError):
    """No version of a model matches a version spec; the message lists the versions there are."""

    def __init__(self, model_id: str, spec: str, available: Iterable[str]) -> None:
        self.model_id = model_id
        self.spec = spec
        self.available = tuple(available)
        super().__init__(
            f"model {model_id!r} has no version matching {spec!r}; available: {', '.join(self.available) or 'none'}"
        )


# How a version's files are verified: by the sha256 the index gives, by a weaker digest the publisher gives
# (and, after the first download, the sha256 pinned then), or by the sha256 pinned on the first download alone.
VERIFIED_SHA256 = "sha256"
VERIFIED_PUBLISHER_DIGEST = "publisher digest"
TRUSTED_ON_FIRST_USE = "trusted on first use"


@dataclass(frozen=True)
class ModelFile:
    """One file of a version; ``name`` is the file name it gets in the version's folder.

    ``sha256`` is empty where the publisher gives none: then ``md5`` or ``sha1`` is the publisher's digest, if
    any, and the file is trusted on first use (see ``ModelRegistryLib.trust``). ``size`` is None where unknown
    (only for such files).

    >>> ModelFile("https://x.org/m.zip", "", None, "m.zip").verification
    'trusted on first use'
    >>> ModelFile("https://x.org/m.pt", "", None, "m.pt", md5=32 * "0").publisher_digest
    ('md5', '00000000000000000000000000000000')
    """

    url: str
    sha256: str
    size: int | None
    name: str = ""
    md5: str = ""
    sha1: str = ""

    @property
    def unpacked(self) -> bool:
        """Whether the file is an archive that installing unpacks (by its name: .zip, .tar, .tar.gz, .tgz)."""
        return is_archive(self.name)

    @property
    def publisher_digest(self) -> tuple:
        """``(algorithm, hex digest)`` of the weaker digest the publisher gives, or ``()``."""
        return next(((name, getattr(self, name)) for name in _PUBLISHER_DIGESTS if getattr(self, name)), ())

    @property
    def verification(self) -> str:
        """``VERIFIED_SHA256``, ``VERIFIED_PUBLISHER_DIGEST`` or ``TRUSTED_ON_FIRST_USE``."""
        if self.sha256:
            return VERIFIED_SHA256
        return VERIFIED_PUBLISHER_DIGEST if self.publisher_digest else TRUSTED_ON_FIRST_USE


PARAMETER_TYPES = ("enum", "bool", "int", "float")
# Command-line words for true and false (compared in lower case).
_TRUE_WORDS = ("true", "1", "yes", "on")
_FALSE_WORDS = ("false", "0", "no", "off")


@dataclass(frozen=True)
class ImageParameter:
    """A typed setting a container image takes: the panel makes a widget of it, the command line a ``name=value``.

    ``type`` is one of ``PARAMETER_TYPES``; an ``enum`` has ``choices``; an ``int`` or ``float`` may have a
    ``minimum`` and ``maximum`` (inclusive). ``title`` is what a panel shows; it is the name where not given.

    >>> threshold = ImageParameter("threshold", "float", 0.5, minimum=0, maximum=1.0)
    >>> threshold.title, threshold.check(1), threshold.parse("0.25")
    ('threshold', 1.0, 0.25)
    >>> threshold.check(2.5)
    Traceback (most recent call last):
    ...
    ValueError: parameter 'threshold' must be at most 1.0, not 2.5
    >>> ImageParameter("fast", "bool", False).parse("Yes")
    True
    """

    name: str
    type: str
    default: object
    title: str = ""
    description: str = ""
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None

    def __post_init__(self) -> None:
        if self.type not in PARAMETER_TYPES:
            raise ValueError(f"parameter {self.name!r} has type {self.type!r}, not one of {', '.join(PARAMETER_TYPES)}")
        if not self.title:
            # Frozen: the one way to fill in a field after __init__.
            object.__setattr__(self, "title", self.name)

    def _error(self, rule: str, value) -> ValueError:
        return ValueError(f"parameter {self.name!r} must be {rule}, not {value!r}")

    def _number(self, value) -> float:
        """``value`` as an int (for an int parameter) or a float, if it is a finite number that fits."""
        # bool is an int in Python, but true is not a number of iterations.
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            if self.type == "int" and isinstance(value, numbers.Integral):
                return int(value)
            if _is_finite(value):
                if self.type == "float":
                    return float(value)
                if float(value).is_integer():
                    return int(value)
        raise self._error("an integer" if self.type == "int" else "a finite number", value)

    def check(self, value) -> object:
        """``value`` as this parameter's Python type (bool, int, float or str), or ``ValueError`` naming the parameter.

        An int is accepted for a float, and a float without a fraction for an int; a bool is never a number.
        """
        if self.type == "bool":
            if not isinstance(value, bool):
                raise self._error("true or false", value)
            return value
        if self.type == "enum":
            if not isinstance(value, str) or value not in self.choices:
                raise self._error("one of " + ", ".join(self.choices), value)
            return value
        number = self._number(value)
        if self.minimum is not None and number < self.minimum:
            raise self._error(f"at least {self.minimum!r}", value)
        if self.maximum is not None and number > self.maximum:
            raise self._error(f"at most {self.maximum!r}", value)
        return number

    def parse(self, text: str) -> object:
        """The value written as ``text`` on a command line, checked (see :meth:`check`).

        A bool is true/false, yes/no, on/off or 1/0 in any case; an enum is one of its choices, exactly.
        """
        if self.type == "bool":
            word = text.strip().lower()
            if word not in _TRUE_WORDS + _FALSE_WORDS:
                raise self._error("true or false (or yes/no, on/off, 1/0)", text)
            return word in _TRUE_WORDS
        if self.type == "enum":
            return self.check(text)
        try:
            number = int(text) if self.type == "int" else float(text)
        except ValueError:
            raise self._error("an integer" if self.type == "int" else "a number", text) from None
        return self.check(number)


@dataclass(frozen=True)
class ContainerImage:
    """A container image pinned by ``digest`` (its manifest digest), with the parameters it takes.

    ``archive`` is the image saved by ``docker save`` or ``podman save``, for sites without a registry: the
    container runtime loads it as it is (it is never unpacked, and it is not one of the version's files).
    ``id`` is the image's ID (its configuration's digest, ``""`` where the index gives none): unlike the
    manifest digest, it stays the same through a save and load, so a loaded archive can be recognised by it.

    >>> image = ContainerImage("ghcr.io/lab/liver", "sha256:" + 64 * "0",
    ...                        parameters=(ImageParameter("mode", "enum", "fast", choices=("fast", "full")),))
    >>> image.reference
    'ghcr.io/lab/liver@sha256:0000000000000000000000000000000000000000000000000000000000000000'
    >>> image.parameter_values({}), image.parameter_values({"mode": "full"})
    ({'mode': 'fast'}, {'mode': 'full'})
    """

    name: str
    digest: str
    archive: ModelFile | None = None
    parameters: tuple = ()
    id: str = ""

    @property
    def reference(self) -> str:
        """``name@digest``: what a container runtime pulls and runs."""
        return f"{self.name}@{self.digest}"

    def parameter_values(self, given: dict) -> dict:
        """Every parameter's value: its default, or the checked value in ``given`` (a ValueError if invalid).

        A name in ``given`` that is not a parameter of the image is an error listing the names there are.
        """
        known = [parameter.name for parameter in self.parameters]
        unknown = [name for name in given if name not in known]
        if unknown:
            there_are = f"its parameters are {', '.join(known)}" if known else "it has no parameters"
            raise ValueError(f"image {self.name} has no parameter {unknown[0]!r}; {there_are}")
        return {p.name: p.check(given.get(p.name, p.default)) for p in self.parameters}


# What runs a version's files in Slicer's Python: DeepSegment's own engine (a model.json package), a MONAI
# bundle's own inference configuration, an nnU-Net v2 trained model folder, or a SlicerMONAIAuto3DSeg model.
DEFAULT_RUNTIME = "deepsegment"
RUNTIMES = (DEFAULT_RUNTIME, "monai-bundle", "nnunet-v2", "auto3dseg")


@dataclass(frozen=True)
class ModelVersion:
    """One version of a model: weight ``files`` run in Slicer's Python, a container ``image``, or both.

    ``runtime`` (one of ``RUNTIMES``) names what runs the files: DeepSegment's engine by default.
    """

    version: str
    files: tuple = ()
    image: ContainerImage | None = None
    release_date: str = ""
    changelog: str = ""
    runtime: str = DEFAULT_RUNTIME

    @property
    def sort_key(self) -> tuple:
        return semantic_version_key(self.version)

    @property
    def prerelease(self) -> bool:
        return "-" in self.version

    @property
    def download_size(self) -> int:
        """Bytes of the version's files whose size is known (a container image and its archive are not counted)."""
        return sum(file.size for file in self.files if file.size is not None)

    @property
    def verified_by_publisher(self) -> bool:
        """Whether every file has a digest from the publisher (a sha256, or at least an MD5 or SHA-1)."""
        return all(file.verification != TRUSTED_ON_FIRST_USE for file in self.files)

    @property
    def backends(self) -> tuple:
        """How the version can run: ``"inprocess"`` (it has files), then ``"container"`` (it has an image)."""
        return (("inprocess",) if self.files else ()) + (("container",) if self.image is not None else ())

    def choose_backend(self, backend: str = "auto") -> str:
        """``backend`` if the version offers it, or for ``"auto"`` its first (in-process when it has files);
        a ValueError says what it offers."""
        if backend == "auto":
            return self.backends[0]
        if backend not in self.backends:
            raise ValueError(f"Version {self.version} cannot run {backend}: it offers {', '.join(self.backends)}")
        return backend


@dataclass(frozen=True)
class Coding:
    """A code as DICOM and Slicer's terminologies write it, e.g. ``Coding("SCT", "85756007", "Tissue")``."""

    scheme: str
    code: str
    meaning: str

    def __str__(self) -> str:
        return f"{self.scheme}^{self.code}^{self.meaning}"


@dataclass(frozen=True)
class Terminology:
    """What a label is, in Slicer's terminology terms: category and type (with modifier), anatomic region."""

    category: Coding
    type: Coding
    type_modifier: Coding | None = None
    region: Coding | None = None
    region_modifier: Coding | None = None

    @property
    def codings(self) -> tuple:
        """Category, type, type modifier, region and region modifier, in that order (None where absent)."""
        return (self.category, self.type, self.type_modifier, self.region, self.region_modifier)

    def slicer_entry(
        self,
        context: str = "Segmentation category and type - 3D Slicer General Anatomy list",
        region_context: str = "Anatomic codes - DICOM master list",
    ) -> str:
        """The entry string Slicer stores in a segment's ``TerminologyEntry`` tag.

        >>> tissue, gray = Coding("SCT", "85756007", "Tissue"), Coding("SCT", "389081007", "Gray matter")
        >>> Terminology(tissue, gray).slicer_entry("Ctx")
        'Ctx~SCT^85756007^Tissue~SCT^389081007^Gray matter~^^~~^^~^^'
        """

        def code(coding: Coding | None) -> str:
            return str(coding) if coding is not None else "^^"

        # Slicer leaves the anatomic context empty when no region is given.
        region_context = region_context if self.region is not None else ""
        parts = (context, code(self.category), code(self.type), code(self.type_modifier), region_context)
        return "~".join((*parts, code(self.region), code(self.region_modifier)))


@dataclass(frozen=True)
class Label:
    """One output label: its value in the label map, name, display color ``#rrggbb`` and terminology."""

    value: int
    name: str
    color: str
    terminology: Terminology | None = None


@dataclass(frozen=True)
class ModelInput:
    """One input channel; ``pattern`` (a regular expression of a safe subset, see :func:`input_pattern_problem`)
    picks matching volumes by name."""

    name: str
    modality: str = ""
    pattern: str = ""

    def matches(self, volume_name: str) -> bool:
        """Whether a volume of this name is a likely input (searched case-insensitively in the name's first
        MAX_MATCHED_NAME_LENGTH characters; no pattern: any). A pattern outside the allowed subset (see
        :func:`input_pattern_problem`) raises ValueError instead of risking a frozen panel.

        >>> ModelInput("T2", "MR", r"t2|flair").matches("Prostate T2 axial")
        True
        """
        return _compiled_input_pattern(self.pattern).search(volume_name[:MAX_MATCHED_NAME_LENGTH]) is not None


@functools.lru_cache(maxsize=512)
def _compiled_input_pattern(pattern: str) -> re.Pattern:
    """``pattern`` compiled, if :func:`input_pattern_problem` allows it (else ValueError saying why)."""
    problem = input_pattern_problem(pattern)
    if problem:
        raise ValueError(f"input pattern {pattern!r}: {problem}")
    return re.compile(pattern, re.IGNORECASE)


@dataclass(frozen=True)
class Metric:
    name: str
    value: float
    dataset: str = ""


@dataclass(frozen=True)
class Resources:
    """Memory a run needs, in GB; ``None`` where the card does not say."""

    ram_gb: float | None = None
    gpu_memory_gb: float | None = None


@dataclass(frozen=True)
class RuntimeEstimate:
    device: str
    seconds: float
    note: str = ""


@dataclass(frozen=True)
class Deprecation:
    message: str
    replaced_by: str = ""


@dataclass(frozen=True)
class ModelEntry:
    """A model's card and its versions."""

    id: str
    title: str
    versions: tuple
    description: str = ""
    task: str = ""
    modality: str = ""
    anatomy: tuple = ()
    inputs: tuple = ()
    labels: tuple = ()
    license: str = ""
    authors: tuple = ()
    citation: str = ""
    homepage: str = ""
    intended_use: str = ""
    limitations: str = ""
    training_data: str = ""
    metrics: tuple = ()
    resources: Resources | None = None
    runtime: tuple = ()
    deprecated: Deprecation | None = None
    subject: str = ""
    sample_data: tuple = ()

    @property
    def latest(self) -> ModelVersion:
        """The highest version; pre-releases rank below their release, as semantic versioning says."""
        return max(self.versions, key=lambda version: version.sort_key)

    @property
    def latest_release(self) -> ModelVersion:
        """The highest version that is not a pre-release, or the highest pre-release where there is none."""
        return _latest_release(self.versions)

    def version(self, spec: str | None = None) -> ModelVersion:
        """The version a spec names; see :func:`resolve_version`."""
        return resolve_version(self, spec)

    @property
    def input_names(self) -> list:
        """The names of the model's inputs, in order; one "Input volume" when the card lists none."""
        return [model_input.name for model_input in self.inputs] or ["Input volume"]

    @cached_property
    def search_text(self) -> str:
        """Lower-case text searched by :func:`search` (computed once per entry)."""
        words = (self.id, self.title, self.description, self.task, self.modality, *self.anatomy)
        return " ".join((*words, *(label.name for label in self.labels))).lower()


def semantic_version_key(version: str) -> tuple:
    """Sort key of a semantic version: ``1.10.0`` > ``1.9.0`` > ``1.9.0-rc1``."""
    match = _SEMANTIC_VERSION.fullmatch(version)
    if match is None:
        raise ValueError(f"not a semantic version (MAJOR.MINOR.PATCH): {version!r}")
    major, minor, patch, prerelease = match.groups()
    return (int(major), int(minor), int(patch), prerelease is None, prerelease or "")


def _latest_release(versions: Iterable[ModelVersion]) -> ModelVersion:
    # Python compares tuples left to right: releases first, then by version.
    return max(versions, key=lambda version: (not version.prerelease, version.sort_key))


def resolve_version(entry: ModelEntry, spec: str | None = None) -> ModelVersion:
    """The version of ``entry`` that ``spec`` names.

    ``None`` or ``"latest"``: the latest release (see ``ModelEntry.latest_release``); an exact version
    (``"1.2.3"``, ``"1.3.0-rc1"``): that version; ``"1"`` or ``"1.2"``: the highest release with that
    major (and minor) number, or the highest such pre-release where there is no release.

    >>> entry = ModelEntry("m", "M", tuple(ModelVersion(v) for v in ("1.2.0", "1.10.1", "2.0.0-rc1")))
    >>> [resolve_version(entry, spec).version for spec in (None, "1", "1.2", "2", "2.0.0-rc1")]
    ['1.10.1', '1.10.1', '1.2.0', '2.0.0-rc1', '2.0.0-rc1']
    >>> try:
    ...     resolve_version(entry, "3")
    ... except VersionNotFoundError as error:
    ...     print(error)
    model 'm' has no version matching '3'; available: 2.0.0-rc1, 1.10.1, 1.2.0
    """
    if spec is None or spec == "latest":
        return entry.latest_release
    exact = [version for version in entry.versions if version.version == spec]
    if exact:
        return exact[0]
    prefix = _VERSION_PREFIX.fullmatch(spec)
    if prefix is not None:
        numbers = tuple(int(number) for number in prefix.groups() if number is not None)
        matching = [version for version in entry.versions if version.sort_key[: len(numbers)] == numbers]
        if matching:
            return _latest_release(matching)
    newest_first = sorted((version.version for version in entry.versions), key=semantic_version_key, reverse=True)
    raise VersionNotFoundError(entry.id, spec, newest_first)


def model_spec_problem(model_id: str, version_spec: str | None = None) -> str:
    """Why ``model_id`` (and ``version_spec``) can name no model version of any index, or ``""``.

    >>> model_spec_problem("liver-ct", "1.2"), model_spec_problem("Liver CT"), model_spec_problem("liver", "v2")
    ('', "'Liver CT' is not a model id (lower-case letters, digits, '.', '_' and '-')", \
"'v2' is not a version: use 1.2.3, 1.2, 1 or latest")
    """
    if not _MODEL_ID.fullmatch(model_id):
        return f"{model_id!r} is not a model id (lower-case letters, digits, '.', '_' and '-')"
    if version_spec is not None and version_spec != "latest" and not (
        _SEMANTIC_VERSION.fullmatch(version_spec) or _VERSION_PREFIX.fullmatch(version_spec)
    ):
        return f"{version_spec!r} is not a version: use 1.2.3, 1.2, 1 or latest"
    return ""


# --- input name patterns ----------------------------------------------------------------------------
# Python's re backtracks and has no timeout: "^(\w+\s?)+$" takes minutes on a long volume name, and the
# panel matches patterns on its own thread. So an index may only use a subset of regular expressions whose
# matching time is bounded, checked when the index is read (see input_pattern_problem), and names are
# matched on their first MAX_MATCHED_NAME_LENGTH characters.

MAX_PATTERN_LENGTH = 200
MAX_MATCHED_NAME_LENGTH = 256
# The most backtracking steps one search of a pattern may take, by the bound of _PatternCost: at about
# 20 ns a step, 4.2 million keep the slowest admitted pattern near a tenth of a second on a 256-character
# name, while leaving room for what index authors write ("t1|mprage", "^.*T2.*$", "(ct|cta)_?venous").
MAX_PATTERN_STEPS = 1 << 22
_REPEAT = re.compile(r"\{(\d*)(,?)(\d*)\}")


def input_pattern_problem(pattern: str) -> str:
    """Why ``pattern`` is not allowed as an input's name pattern, or ``""`` when it is.

    The rule: at most MAX_PATTERN_LENGTH characters of literal characters, ``.``, classes ``[...]``,
    ``\\d \\D \\w \\W \\s \\S`` and other escaped characters, anchors ``^ $ \\b \\B``, alternatives ``|`` and
    groups ``(...)``, ``(?:...)``; a repeat (``* + ? {m} {m,} {m,n}``, lazy or not) applies to a single
    character item, never to a group; no backreferences, lookarounds, named groups or inline flags; and the
    backtracking the pattern allows, bounded by multiplying the lengths each repeat may try and adding up
    alternatives (see _PatternCost), stays under MAX_PATTERN_STEPS on a name of MAX_MATCHED_NAME_LENGTH characters.

    >>> input_pattern_problem("t1|mprage"), input_pattern_problem("^.*T2.*$")
    ('', '')
    >>> input_pattern_problem(r"^(\\w+\\s?)+$")
    'a repeat may only follow one character, a class or an escape like \\\\w, not a group (at character 10)'
    >>> input_pattern_problem(r"\\w*\\s*\\w*x")
    'too much backtracking: up to 4362470401 steps on a 256-character name, at most 4194304 are allowed'
    """
    if len(pattern) > MAX_PATTERN_LENGTH:
        return f"longer than {MAX_PATTERN_LENGTH} characters"
    try:
        steps = _PatternCost(pattern).steps()
    except ValueError as error:
        return str(error)
    if steps > MAX_PATTERN_STEPS:
        return (f"too much backtracking: up to {steps} steps on a {MAX_MATCHED_NAME_LENGTH}-character name, "
                f"at most {MAX_PATTERN_STEPS} are allowed")
    try:
        re.compile(pattern, re.IGNORECASE)
    except (re.error, RecursionError, OverflowError) as error:
        return f"not a regular expression: {error}"
    return ""


class _PatternCost:
    """Reads a pattern of the allowed subset and bounds the backtracking steps of one search with it.

    A repeat of one character item tries at most as many lengths as the name allows; a sequence tries
    every combination of its items' choices (their product); alternatives are tried one after the other
    (their sum); a search tries every start position, except for branches anchored with ``^``. A repeat
    that ends the pattern is tried once: it takes its longest length and nothing after it can fail.
    """

    def __init__(self, pattern: str) -> None:
        self.text = pattern
        self.at = 0

    def _error(self, message: str) -> ValueError:
        return ValueError(f"{message} (at character {self.at + 1})")

    def _peek(self) -> str:
        return self.text[self.at] if self.at < len(self.text) else ""

    def steps(self) -> int:
        names = MAX_MATCHED_NAME_LENGTH + 1  # start positions of a search, and lengths a '*' may try
        total = 0
        for anchored, cost in self._alternatives(top=True):
            total += cost * (1 if anchored else names)
        if self.at < len(self.text):
            raise self._error("a ')' without its '('")
        return total

    def _alternatives(self, top: bool = False) -> list:
        """``[(starts with '^', cost)]`` of the branches up to a ')' or the end."""
        branches = [self._branch(top)]
        while self._peek() == "|":
            self.at += 1
            branches.append(self._branch(top))
        return branches

    def _branch(self, top: bool = False) -> tuple:
        anchored = self._peek() == "^"
        cost = last = 1
        while self._peek() not in ("", "|", ")"):
            last = self._piece()
            cost *= last
        if top and self.at > 0 and self.text[self.at - 1] in "*+?}":
            # A repeat ending the pattern takes its longest length and succeeds: nothing after it can fail.
            cost //= last
        return anchored, cost

    def _piece(self) -> int:
        character = self._peek()
        if character == "(":
            return self._group()
        if character in "^$":
            self.at += 1
            return self._no_repeat()
        if character == "\\":
            return self._escape()
        if character == "[":
            self._class()
        elif character in "*+?{":
            raise self._error(f"'{character}' repeats nothing; write \\{character} for the character itself")
        else:
            self.at += 1
        return self._repeat()

    def _group(self) -> int:
        self.at += 1
        if self.text.startswith("?:", self.at):
            self.at += 2
        elif self._peek() == "?":
            raise self._error("only plain groups (...) and (?:...) are allowed: no lookarounds, named groups "
                              "or flags")
        cost = sum(branch_cost for _, branch_cost in self._alternatives())
        if self._peek() != ")":
            raise self._error("a '(' without its ')'")
        self.at += 1
        self._no_repeat("a group")
        return cost

    def _escape(self) -> int:
        self.at += 1
        escaped = self._peek()
        if not escaped:
            raise self._error("a pattern cannot end with '\\'")
        self.at += 1
        if escaped in "bB":
            return self._no_repeat()
        if escaped.isdigit():
            raise self._error("backreferences like \\1 are not allowed")
        if escaped.isalnum() and escaped not in "dDwWsSntrfv":
            raise self._error(f"\\{escaped} is not allowed; use \\d \\D \\w \\W \\s \\S \\b \\B or escape punctuation")
        return self._repeat()

    def _class(self) -> None:
        """Step over a class ``[...]``: escapes as outside it, no nested '['."""
        self.at += 1
        if self._peek() == "^":
            self.at += 1
        if self._peek() == "]":
            self.at += 1
        while self._peek() != "]":
            character = self._peek()
            if not character:
                raise self._error("a '[' without its ']'")
            if character == "[":
                raise self._error("write \\[ for a '[' inside a class")
            if character == "\\":
                self.at += 1
                escaped = self._peek()
                if escaped.isdigit() or (escaped.isalnum() and escaped not in "dDwWsSntrfv"):
                    raise self._error(f"\\{escaped} is not allowed in a class")
            self.at += 1
        self.at += 1

    def _no_repeat(self, what: str = "an anchor") -> int:
        if self._peek() in ("*", "+", "?") or (self._peek() == "{" and _REPEAT.match(self.text, self.at)):
            raise self._error(f"a repeat may only follow one character, a class or an escape like \\w, not {what}")
        return 1

    def _repeat(self) -> int:
        """How many lengths the repeat after a single-character item may try (1 without one)."""
        longest = MAX_MATCHED_NAME_LENGTH
        character = self._peek()
        if character in ("*", "+", "?"):
            self.at += 1
            choices = {"*": longest + 1, "+": longest, "?": 2}[character]
        elif character == "{":
            match = _REPEAT.match(self.text, self.at)
            if match is None:
                raise self._error("write \\{ for a '{' that is not a repeat {m}, {m,} or {m,n}")
            low, comma, high = match.groups()
            if not (low or high):
                raise self._error("write \\{ for a '{' that is not a repeat {m}, {m,} or {m,n}")
            least = int(low or 0)
            most = int(high) if high else (least if not comma else longest)
            if max(least, most) > longest:
                raise self._error(f"a repeat count over {longest} can never match a name")
            if most < least:
                raise self._error("a repeat {m,n} needs m <= n")
            self.at = match.end()
            choices = most - least + 1
        else:
            return 1
        if self._peek() == "?":  # lazy: the same lengths, tried shortest first
            self.at += 1
        if self._peek() in ("*", "+", "?", "{"):
            raise self._error("one repeat at a time")
        return choices


# The checks below are shared with other JSON documents of the extension (DeepSegment's model.json):
# each names the offending field in its error.


def field_path(field: str, key: str) -> str:
    return f"{field}.{key}" if field else key


def require(mapping: dict, key: str, kind, field: str):
    """``mapping[key]``, which must exist and be of ``kind`` (a type, or ``NUMBER``)."""
    if key not in mapping:
        raise IndexValidationError(field_path(field, key), "is required")
    value = mapping[key]
    # bool is an int in Python; a size of `true` is still an error.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        name = "a number" if kind is NUMBER else kind.__name__
        raise IndexValidationError(field_path(field, key), f"must be {name}")
    return value


def _optional(mapping: dict, key: str, kind: type, field: str, default):
    return require(mapping, key, kind, field) if key in mapping else default


NUMBER = (int, float)


def require_object(item, field: str) -> dict:
    if not isinstance(item, dict):
        raise IndexValidationError(field, "must be an object")
    return item


def _is_finite(value) -> bool:
    """Whether a number is finite and fits a float (Python's json module reads Infinity, and integers of any size)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _number(mapping: dict, key: str, field: str, *, required: bool = True) -> float | None:
    """A finite number >= 0 (JSON has no infinity; Python's json module would read one)."""
    if key not in mapping and not required:
        return None
    value = require(mapping, key, NUMBER, field)
    if not _is_finite(value) or value < 0:
        raise IndexValidationError(field_path(field, key), "must be a number >= 0")
    return value


def _matching(mapping: dict, key: str, pattern: re.Pattern, field: str, what: str, *, required: bool = True) -> str:
    if key not in mapping and not required:
        return ""
    value = require(mapping, key, str, field)
    if not pattern.fullmatch(value):
        raise IndexValidationError(field_path(field, key), f"must be {what}")
    return value


def parse_list(mapping: dict, key: str, field: str, parse) -> tuple:
    """The items of an optional list, each parsed by ``parse(item, field_of_item)``."""
    items = _optional(mapping, key, list, field, [])
    return tuple(parse(item, f"{field_path(field, key)}[{i}]") for i, item in enumerate(items))


def _scheme(url: str) -> str:
    return urllib.parse.urlsplit(url).scheme.lower()


def _string(item, field: str) -> str:
    if not isinstance(item, str):
        raise IndexValidationError(field, "must be str")
    return item


def _parse_file(item, field: str, base_url: str) -> ModelFile:
    item = require_object(item, field)
    url = require(item, "url", str, field)
    if base_url:
        url = urllib.parse.urljoin(base_url, url)
    if _scheme(base_url) in WEB_SCHEMES and _scheme(url) not in WEB_SCHEMES:
        # Else a web page could make the client read local files (and learn their sizes from its errors).
        raise IndexValidationError(f"{field}.url", "must be an http or https URL: an index from the web may only "
                                                   "point at the web")
    sha256 = _matching(item, "sha256", _SHA256, field, "64 lower-case hexadecimal digits", required=False)
    digests = {name: _matching(item, name, re.compile(f"[0-9a-f]{{{digits}}}"), field,
                               f"{digits} lower-case hexadecimal digits", required=False)
               for name, digits in _PUBLISHER_DIGESTS.items()}
    # A sha256 makes the size part of the promise; without one (trust on first use) the size may be unknown.
    size = require(item, "size", int, field) if sha256 or "size" in item else None
    if size is not None and size < 0:
        raise IndexValidationError(f"{field}.size", "must not be negative")
    if "name" in item:
        name = _matching(item, "name", _FILE_NAME, field, "a file name without '/' or '\\'")
    else:
        name = urllib.parse.unquote(posixpath.basename(urllib.parse.urlsplit(url).path))
        if not _FILE_NAME.fullmatch(name):
            raise IndexValidationError(f"{field}.url", "ends in no file name; give the file a 'name'")
    return ModelFile(url=url, sha256=sha256, size=size, name=name, **digests)


# The JSON type of a parameter's default, by the parameter's type.
_DEFAULT_KINDS = {"enum": str, "bool": bool, "int": int, "float": NUMBER}


def _parse_bound(item: dict, key: str, field: str) -> float | None:
    if key not in item:
        return None
    value = require(item, key, NUMBER, field)
    if not _is_finite(value):
        raise IndexValidationError(field_path(field, key), "must be a finite number")
    return value


def _parse_parameter(item, field: str) -> ImageParameter:
    item = require_object(item, field)
    name = _matching(item, "name", _PARAMETER_NAME, field, "letters, digits and '_', not starting with a digit")
    kind = require(item, "type", str, field)
    if kind not in PARAMETER_TYPES:
        raise IndexValidationError(f"{field}.type", f"must be one of {', '.join(PARAMETER_TYPES)}")
    if "choices" in item and kind != "enum":
        raise IndexValidationError(f"{field}.choices", "only an 'enum' parameter has choices")
    choices = parse_list(item, "choices", field, _string)
    if kind == "enum" and not choices:
        raise IndexValidationError(f"{field}.choices", "must list at least one choice")
    _unique(list(choices), f"{field}.choices", "", "choice")
    for key in ("minimum", "maximum"):
        if key in item and kind not in ("int", "float"):
            raise IndexValidationError(f"{field}.{key}", "only an 'int' or 'float' parameter has a range")
    minimum, maximum = _parse_bound(item, "minimum", field), _parse_bound(item, "maximum", field)
    if minimum is not None and maximum is not None and minimum > maximum:
        raise IndexValidationError(f"{field}.minimum", f"must not be more than the maximum, {maximum!r}")
    parameter = ImageParameter(
        name=name,
        type=kind,
        default=require(item, "default", _DEFAULT_KINDS[kind], field),
        title=_optional(item, "title", str, field, ""),
        description=_optional(item, "description", str, field, ""),
        choices=choices,
        minimum=minimum,
        maximum=maximum,
    )
    try:
        return replace(parameter, default=parameter.check(parameter.default))
    except ValueError as error:
        raise IndexValidationError(f"{field}.default", str(error)) from error


def _parse_image(item, field: str, base_url: str) -> ContainerImage:
    item = require_object(item, field)
    name = _matching(item, "name", _IMAGE_NAME, field, "an image name without tag or digest, e.g. 'ghcr.io/lab/liver'")
    digest = _matching(item, "digest", _IMAGE_DIGEST, field, "'sha256:' and 64 hexadecimal digits")
    image_id = _matching(item, "id", _IMAGE_DIGEST, field, "'sha256:' and 64 hexadecimal digits", required=False)
    archive = _parse_file(item["archive"], f"{field}.archive", base_url) if "archive" in item else None
    parameters = parse_list(item, "parameters", field, _parse_parameter)
    _unique([parameter.name for parameter in parameters], f"{field}.parameters", "name", "parameter name")
    return ContainerImage(name=name, digest=digest, archive=archive, parameters=parameters, id=image_id)


def _parse_version(item, field: str, base_url: str) -> ModelVersion:
    item = require_object(item, field)
    version = _matching(item, "version", _SEMANTIC_VERSION, field, "a semantic version MAJOR.MINOR.PATCH")
    if "files" not in item and "image" not in item:
        raise IndexValidationError(field, "needs 'files', an 'image', or both")
    files = parse_list(item, "files", field, lambda f, path: _parse_file(f, path, base_url))
    if "files" in item and not files:
        raise IndexValidationError(f"{field}.files", "must list at least one file")
    _unique([file.name for file in files], f"{field}.files", "name", "file name")
    image = _parse_image(item["image"], f"{field}.image", base_url) if "image" in item else None
    runtime = _optional(item, "runtime", str, field, DEFAULT_RUNTIME)
    if runtime not in RUNTIMES:
        raise IndexValidationError(f"{field}.runtime", f"must be one of {', '.join(RUNTIMES)}")
    if "runtime" in item and not files:
        raise IndexValidationError(f"{field}.runtime", "runs files: a version with only an image has no runtime")
    release_date = _matching(item, "releaseDate", _DATE, field, "a date YYYY-MM-DD", required=False)
    if release_date:
        try:
            datetime.date.fromisoformat(release_date)
        except ValueError as error:
            raise IndexValidationError(f"{field}.releaseDate", f"is not a date: {error}") from error
    return ModelVersion(
        version=version,
        files=files,
        image=image,
        release_date=release_date,
        changelog=_optional(item, "changelog", str, field, ""),
        runtime=runtime,
    )


def _parse_coding(item, field: str) -> Coding:
    item = require_object(item, field)
    return Coding(*(require(item, key, str, field) for key in ("scheme", "code", "meaning")))


def _parse_terminology(item, field: str) -> Terminology:
    item = require_object(item, field)

    def coding(key: str, required: bool = False) -> Coding | None:
        if key not in item and not required:
            return None
        return _parse_coding(require(item, key, dict, field), field_path(field, key))

    return Terminology(
        category=coding("category", required=True),
        type=coding("type", required=True),
        type_modifier=coding("typeModifier"),
        region=coding("region"),
        region_modifier=coding("regionModifier"),
    )


def _parse_label(item, field: str) -> Label:
    item = require_object(item, field)
    value = require(item, "value", int, field)
    if value < 1:
        raise IndexValidationError(f"{field}.value", "must be 1 or more (0 is the background)")
    terminology = item.get("terminology")
    return Label(
        value=value,
        name=require(item, "name", str, field),
        color=_matching(item, "color", _COLOR, field, "a color #rrggbb"),
        terminology=_parse_terminology(terminology, f"{field}.terminology") if "terminology" in item else None,
    )


def parse_input(item, field: str) -> ModelInput:
    item = require_object(item, field)
    pattern = _optional(item, "pattern", str, field, "")
    problem = input_pattern_problem(pattern)
    if problem:
        raise IndexValidationError(f"{field}.pattern", f"is not an allowed name pattern: {problem}")
    return ModelInput(
        name=require(item, "name", str, field), modality=_optional(item, "modality", str, field, ""), pattern=pattern
    )


def _parse_metric(item, field: str) -> Metric:
    item = require_object(item, field)
    value = require(item, "value", NUMBER, field)
    if not _is_finite(value):
        raise IndexValidationError(f"{field}.value", "must be a finite number")
    return Metric(
        name=require(item, "name", str, field), value=value, dataset=_optional(item, "dataset", str, field, "")
    )


def _parse_runtime(item, field: str) -> RuntimeEstimate:
    item = require_object(item, field)
    device = require(item, "device", str, field)
    if device not in DEVICES:
        raise IndexValidationError(f"{field}.device", f"must be one of {', '.join(DEVICES)}")
    seconds = _number(item, "seconds", field)
    return RuntimeEstimate(device=device, seconds=seconds, note=_optional(item, "note", str, field, ""))


def _parse_resources(item, field: str) -> Resources:
    item = require_object(item, field)
    return Resources(
        ram_gb=_number(item, "ramGB", field, required=False),
        gpu_memory_gb=_number(item, "gpuMemoryGB", field, required=False),
    )


def _parse_deprecation(item, field: str) -> Deprecation:
    item = require_object(item, field)
    return Deprecation(
        message=require(item, "message", str, field),
        replaced_by=_matching(item, "replacedBy", _MODEL_ID, field, "a model id", required=False),
    )


def _unique(values: list, field: str, key: str, what: str) -> None:
    """Refuse a value seen before in ``values``, naming ``field[i].key`` (``field[i]`` where ``key`` is empty)."""
    seen = set()
    for i, value in enumerate(values):
        if value in seen:
            raise IndexValidationError(f"{field}[{i}]" + (f".{key}" if key else ""), f"duplicate {what} {value!r}")
        seen.add(value)


def parse_labels(document, field: str = "") -> tuple:
    """The ``labels`` list of a model entry or of a label schema file (``{"labels": [...]}``), validated:
    values 1 or more and unique, names unique (ignoring case), colors ``#rrggbb``, terminology codes.

    >>> [label.name for label in parse_labels({"labels": [{"value": 1, "name": "Liver", "color": "#dd8259"}]})]
    ['Liver']
    """
    labels = parse_list(require_object(document, field or "(document)"), "labels", field, _parse_label)
    _unique([label.value for label in labels], field_path(field, "labels"), "value", "label value")
    _unique([label.name.lower() for label in labels], field_path(field, "labels"), "name", "label name")
    return labels


def _parse_model(item, field: str, base_url: str) -> ModelEntry:
    item = require_object(item, field)
    model_id = _matching(item, "id", _MODEL_ID, field, "lower-case letters, digits, '.', '_' or '-'")
    title = require(item, "title", str, field)
    if not require(item, "versions", list, field):
        raise IndexValidationError(f"{field}.versions", "must list at least one version")
    versions = parse_list(item, "versions", field, lambda v, path: _parse_version(v, path, base_url))
    _unique([version.version for version in versions], f"{field}.versions", "version", "version")
    labels = parse_labels(item, field)

    def optional(key: str, parse):
        return parse(item[key], f"{field}.{key}") if key in item else None

    def text(key: str) -> str:
        return _optional(item, key, str, field, "")

    return ModelEntry(
        id=model_id,
        title=title,
        versions=versions,
        description=text("description"),
        task=text("task"),
        modality=text("modality"),
        anatomy=parse_list(item, "anatomy", field, _string),
        inputs=parse_list(item, "inputs", field, parse_input),
        labels=labels,
        license=text("license"),
        authors=parse_list(item, "authors", field, _string),
        citation=text("citation"),
        homepage=text("homepage"),
        intended_use=text("intendedUse"),
        limitations=text("limitations"),
        training_data=text("trainingData"),
        metrics=parse_list(item, "metrics", field, _parse_metric),
        resources=optional("resources", _parse_resources),
        runtime=parse_list(item, "runtime", field, _parse_runtime),
        deprecated=optional("deprecated", _parse_deprecation),
        subject=text("subject"),
        sample_data=parse_list(item, "sampleData", field, _string),
    )


def parse_index(document, base_url: str = "") -> tuple:
    """Validate an index document (already decoded from JSON) and return its models.

    ``base_url`` is where the document came from; relative file URLs (and image archive URLs) are resolved
    against it, and when it is an http or https URL every file URL must be one too.
    """
    if not isinstance(document, dict):
        raise IndexValidationError("(document)", "must be a JSON object")
    schema_version = require(document, "schemaVersion", int, "")
    if schema_version != SCHEMA_VERSION:
        raise IndexValidationError("schemaVersion", f"{schema_version} is not supported (expected {SCHEMA_VERSION})")
    require(document, "models", list, "")
    models = parse_list(document, "models", "", lambda m, path: _parse_model(m, path, base_url))
    _unique([model.id for model in models], "models", "id", "model id")
    return models


def decode_index(data: bytes):
    """The JSON document in ``data`` (UTF-8), not yet validated; one over ``MAX_INDEX_BYTES`` is refused."""
    if len(data) > MAX_INDEX_BYTES:
        raise IndexValidationError("(document)", f"{len(data)} bytes is over the {MAX_INDEX_BYTES}-byte limit")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise IndexValidationError("(document)", f"not valid JSON: {error}") from error


def local_path(location: str) -> str:
    """The local path of a ``file://`` URL; any other string is taken as a path already."""
    if location.startswith("file:"):
        return urllib.request.url2pathname(urllib.parse.urlsplit(location).path)
    return location


def file_url(path) -> str:
    """The ``file://`` URL of a local path (made absolute)."""
    return pathlib.Path(os.path.abspath(path)).as_uri()


def load_index(path_or_url, convert=None) -> tuple:
    """Read and validate a local index file, given by path or ``file://`` URL; relative URLs in it resolve
    against its location. Files over ``MAX_INDEX_BYTES`` are refused unread. ``convert(document, url)``, where
    given, turns another format into an index document first (``ModelRegistryLib.importers``)."""
    path = local_path(os.fspath(path_or_url))
    size = os.path.getsize(path)
    if size > MAX_INDEX_BYTES:
        raise IndexValidationError("(document)", f"{size} bytes is over the {MAX_INDEX_BYTES}-byte limit")
    with open(path, "rb") as file:
        document = decode_index(file.read())
    return parse_index(convert(document, file_url(path)) if convert else document, file_url(path))


def search(models, text: str = "") -> list:
    """Models whose id, title, description, task, modality, anatomy or label names contain every word of ``text``."""
    words = text.lower().split()
    return [model for model in models if all(word in model.search_text for word in words)]

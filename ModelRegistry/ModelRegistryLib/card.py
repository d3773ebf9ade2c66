"""A model's card, readable: HTML for the panel (the rich-text subset Qt's labels show) and plain text for the CLI.

Both are made from one list of sections, so the panel and ``show`` never disagree. Every string from an index
is escaped: an index is data from the network, and markup in it must show as text, not as markup.

Example::

    >>> from ModelRegistryLib.index import parse_index
    >>> entry = parse_index({"schemaVersion": 1, "models": [{"id": "demo", "title": "Demo <b>", "modality": "CT",
    ...     "labels": [{"value": 1, "name": "Liver", "color": "#aa3322"}],
    ...     "versions": [{"version": "1.0.0", "files": [{"url": "https://x.org/d.zip", "sha256": 64 * "0",
    ...     "size": 2500000}]}]}]})[0]
    >>> html = card_html(entry, installed_versions=["1.0.0"])
    >>> "<h2>Demo &lt;b&gt;</h2>" in html, '<span style="color:#aa3322">' in html
    (True, True)
    >>> print(card_text(entry, installed_versions=["1.0.0"]))
    Demo <b> (demo)
    <BLANKLINE>
    Modality: CT
    Runs with: DeepSegment's engine (the package's model.json)
    <BLANKLINE>
    Labels
      Value  Color    Name
      1      #aa3322  Liver
    <BLANKLINE>
    Versions
      Version  Released  Download  State      Changes
      1.0.0              2.5 MB    installed
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from dataclasses import dataclass

from .download import format_bytes
from .index import (
    DEFAULT_RUNTIME,
    TRUSTED_ON_FIRST_USE,
    VERIFIED_PUBLISHER_DIGEST,
    Coding,
    ImageParameter,
    Label,
    ModelEntry,
    ModelVersion,
    semantic_version_key,
)
from .trust import NOT_VERIFIED

_WARNING_COLOR = "#b00020"
_DEVICE_NAMES = {"cpu": "CPU", "cuda": "CUDA GPU", "mps": "Apple GPU (MPS)"}
RUNTIME_DESCRIPTIONS = {
    DEFAULT_RUNTIME: "DeepSegment's engine (the package's model.json)",
    "monai-bundle": "MONAI bundle: its own inference configuration, through MONAI's bundle API (a bundle's "
                    "configuration is code that MONAI evaluates: install bundles from publishers you trust)",
    "nnunet-v2": "nnU-Net v2: nnunetv2's own predictor, preprocessing and resampling",
    "auto3dseg": "MONAI Auto3DSeg (SlicerMONAIAuto3DSeg's models): its checkpoint's configuration and labels.csv",
}


@dataclass(frozen=True)
class _Swatch:
    """A color sample in a table cell."""

    color: str


@dataclass(frozen=True)
class _Table:
    header: tuple
    rows: tuple


@dataclass(frozen=True)
class _Section:
    heading: str
    body: object  # str (a paragraph), _Table, or tuple of (name, value) pairs


def format_duration(seconds: float) -> str:
    """A run time for people: ``'45 s'``, ``'2 min 5 s'``, ``'1 h 5 min'``.

    >>> [format_duration(s) for s in (4.5, 45, 125, 3900)]
    ['4.5 s', '45 s', '2 min 5 s', '1 h 5 min']
    """
    if seconds < 60:
        return f"{seconds:.3g} s"
    minutes, seconds = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s" if seconds else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def _coding_text(coding: Coding) -> str:
    return f"{coding.meaning} ({coding.scheme} {coding.code})"


def _terminology_text(label: Label) -> str:
    terminology = label.terminology
    if terminology is None:
        return ""
    codes = [terminology.category, terminology.type, terminology.type_modifier]
    text = " / ".join(_coding_text(coding) for coding in codes if coding is not None)
    region = [coding for coding in (terminology.region, terminology.region_modifier) if coding is not None]
    return text + (", in " + " / ".join(_coding_text(coding) for coding in region) if region else "")


def _overview(entry: ModelEntry) -> tuple:
    fields = (
        ("Task", entry.task),
        ("Modality", entry.modality),
        ("Anatomy", ", ".join(entry.anatomy)),
        ("License", entry.license),
        ("Authors", ", ".join(entry.authors)),
        ("Homepage", entry.homepage),
        ("Subject", entry.subject),
        ("Sample data", ", ".join(entry.sample_data)),
    )
    return tuple((name, value) for name, value in fields if value)


def verification_text(version: ModelVersion) -> str:
    """How a version's files are checked, when not all by the publisher's sha256; ``""`` when they are.

    >>> from ModelRegistryLib.index import ModelFile
    >>> text = verification_text(ModelVersion("1.0.0", files=(ModelFile("https://x.org/m.zip", "", None, "m.zip"),)))
    >>> text.startswith("not verified by the publisher: it gives no checksum for m.zip; the sha256 of the first")
    True
    """
    unverified = [file.name for file in version.files if file.verification == TRUSTED_ON_FIRST_USE]
    weaker = [file.name for file in version.files if file.verification == VERIFIED_PUBLISHER_DIGEST]
    parts = []
    if unverified:
        parts.append(f"{NOT_VERIFIED}: it gives no checksum for {', '.join(unverified)}")
    if weaker:
        parts.append(f"checked against the publisher's MD5 or SHA-1 for {', '.join(weaker)} (it gives no sha256)")
    if not parts:
        return ""
    return "; ".join(parts) + "; the sha256 of the first download is pinned and every later download must match it" \
        " (trust on first use)"


def _running(version: ModelVersion) -> tuple:
    """How the shown version runs and how its files are checked."""
    fields = []
    if version.files:
        fields.append(("Runs with", RUNTIME_DESCRIPTIONS[version.runtime]))
        fields.append(("Download check", verification_text(version)))
    return tuple((name, value) for name, value in fields if value)


def _resources(entry: ModelEntry) -> tuple:
    fields = []
    if entry.resources is not None:
        for name, value in (("RAM", entry.resources.ram_gb), ("GPU memory", entry.resources.gpu_memory_gb)):
            if value is not None:
                fields.append((name, f"{value:g} GB"))
    for estimate in entry.runtime:
        note = f" ({estimate.note})" if estimate.note else ""
        fields.append((f"Run time, {_DEVICE_NAMES[estimate.device]}", format_duration(estimate.seconds) + note))
    return tuple(fields)


def _download_text(version: ModelVersion) -> str:
    """What a version offers: ``'12.3 MB'`` of files, ``'image ghcr.io/lab/liver'``, or both joined by ``', or '``."""
    offers = []
    if version.files:
        size = format_bytes(version.download_size) if all(f.size is not None for f in version.files) else "size unknown"
        offers.append(size + ("" if version.verified_by_publisher else f" ({NOT_VERIFIED})"))
    if version.image is not None:
        offers.append(f"image {version.image.name}")
    return ", or ".join(offers)


def _versions_table(entry: ModelEntry, selected: str, installed: set) -> _Table:
    rows = []
    for version in sorted(entry.versions, key=lambda v: semantic_version_key(v.version), reverse=True):
        states = [state for state, holds in (("installed", version.version in installed),
                                             ("selected", version.version == selected)) if holds]
        rows.append((version.version, version.release_date, _download_text(version), ", ".join(states),
                     version.changelog))
    return _Table(("Version", "Released", "Download", "State", "Changes"), tuple(rows))


def _value_text(value) -> str:
    """A parameter value as the index and the command line write it (``true``, not ``True``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _allowed_text(parameter: ImageParameter) -> str:
    """The values a parameter takes: ``'a, b, c'``, ``'0 to 1'``, ``'at least 1'``, ``'any number'``..."""
    if parameter.type == "enum":
        return ", ".join(parameter.choices)
    if parameter.type == "bool":
        return "true, false"
    low, high = parameter.minimum, parameter.maximum
    if low is not None and high is not None:
        return f"{low} to {high}"
    if low is not None:
        return f"at least {low}"
    if high is not None:
        return f"at most {high}"
    return "any integer" if parameter.type == "int" else "any number"


def _parameters_table(version: ModelVersion) -> _Table | None:
    """The parameters of the version's container image, or None where it has none."""
    if version.image is None or not version.image.parameters:
        return None
    parameters = version.image.parameters
    rows = tuple(
        (p.title if p.title == p.name else f"{p.title} ({p.name})", p.type, _value_text(p.default), _allowed_text(p),
         p.description)
        for p in parameters
    )
    header = ("Parameter", "Type", "Default", "Allowed", "Description")
    if not any(p.description for p in parameters):
        header = header[:-1]
    return _Table(header, tuple(row[: len(header)] for row in rows))


def _shown_version(entry: ModelEntry, selected: str) -> ModelVersion:
    """The version whose details the card shows: the selected one, else the latest release."""
    return next((version for version in entry.versions if version.version == selected), entry.latest_release)


def _sections(entry: ModelEntry, selected: str = "", installed: Iterable[str] = ()) -> list:
    """The card's sections in reading order, each only when the card has something to say in it."""
    shown = _shown_version(entry, selected)
    sections = [_Section("", entry.description), _Section("", _overview(entry) + _running(shown))]
    if entry.inputs:
        rows = tuple((i.name, i.modality, i.pattern) for i in entry.inputs)
        sections.append(_Section("Inputs", _Table(("Name", "Modality", "Picks volumes named like"), rows)))
    if entry.labels:
        rows = tuple((str(label.value), _Swatch(label.color), label.name, _terminology_text(label))
                     for label in entry.labels)
        header = ("Value", "Color", "Name", "Terminology")
        if not any(label.terminology for label in entry.labels):
            header = header[:-1]
        sections.append(_Section("Labels", _Table(header, tuple(row[: len(header)] for row in rows))))
    sections.append(_Section("Parameters", _parameters_table(shown)))
    sections += [
        _Section("Intended use", entry.intended_use),
        _Section("Limitations", entry.limitations),
        _Section("Training data", entry.training_data),
    ]
    if entry.metrics:
        rows = tuple((metric.name, f"{metric.value:g}", metric.dataset) for metric in entry.metrics)
        sections.append(_Section("Metrics", _Table(("Metric", "Value", "Dataset"), rows)))
    sections += [
        _Section("Resources", _resources(entry)),
        _Section("Citation", entry.citation),
        _Section("Versions", _versions_table(entry, selected, set(installed))),
    ]
    return [section for section in sections if section.body]


def _deprecation_text(entry: ModelEntry) -> str:
    deprecated = entry.deprecated
    instead = f" Use {deprecated.replaced_by} instead." if deprecated.replaced_by else ""
    return deprecated.message + instead


def _html_text(text: str) -> str:
    return html.escape(text).replace("\n", "<br>")


def _html_cell(cell) -> str:
    if isinstance(cell, _Swatch):
        color = html.escape(cell.color)
        return f'<span style="color:{color}">&#9632;&#9632;</span> {color}'
    return _html_text(cell)


def _html_table(rows: Iterable[Iterable[str]], header: Iterable[str] = ()) -> str:
    """A table of cells that are HTML already."""
    lines = ['<table border="1" cellspacing="0" cellpadding="3">']
    if header:
        lines.append("<tr>" + "".join(f"<th>{cell}</th>" for cell in header) + "</tr>")
    lines += ["<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows]
    return "\n".join([*lines, "</table>"])


def _html_body(body) -> str:
    if isinstance(body, str):
        return f"<p>{_html_text(body)}</p>"
    if isinstance(body, _Table):
        rows = ([_html_cell(cell) for cell in row] for row in body.rows)
        return _html_table(rows, [_html_text(name) for name in body.header])
    return _html_table([f"<b>{_html_text(name)}</b>", _html_text(value)] for name, value in body)


def card_html(entry: ModelEntry, version: str | None = None, installed_versions: Iterable[str] = ()) -> str:
    """The card as Qt rich text (h2/h3, p, table, b, i, span colors; no classes, no scripts).

    ``version`` is the version the user picked (default: the latest release); ``installed_versions`` are marked.
    """
    selected = version if version is not None else entry.latest_release.version
    parts = []
    if entry.deprecated is not None:
        warning = f"<b>Deprecated:</b> {_html_text(_deprecation_text(entry))}"
        parts.append(f'<p><span style="color:{_WARNING_COLOR}">{warning}</span></p>')
    parts.append(f"<h2>{_html_text(entry.title)}</h2>")
    parts.append(f"<p><i>{_html_text(entry.id)}</i>, version {_html_text(selected)}</p>")
    for section in _sections(entry, selected, installed_versions):
        if section.heading:
            parts.append(f"<h3>{_html_text(section.heading)}</h3>")
        parts.append(_html_body(section.body))
    return "\n".join(parts)


def _text_cell(cell) -> str:
    return cell.color if isinstance(cell, _Swatch) else " ".join(cell.split("\n"))


def _text_table(table: _Table) -> list:
    cells = [[_text_cell(cell) for cell in row] for row in (table.header, *table.rows)]
    widths = [max(len(row[column]) for row in cells) for column in range(len(cells[0]))]
    return ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]


def card_text(entry: ModelEntry, installed_versions: Iterable[str] = ()) -> str:
    """The card as plain text, for a terminal, showing the latest release; ``installed_versions`` are marked."""
    lines = [f"{entry.title} ({entry.id})"]
    if entry.deprecated is not None:
        lines.append("DEPRECATED: " + _deprecation_text(entry))
    for section in _sections(entry, installed=installed_versions):
        lines.append("")
        if section.heading:
            lines.append(section.heading)
        indent = "  " if section.heading else ""
        if isinstance(section.body, str):
            lines += [indent + line for line in section.body.splitlines()]
        elif isinstance(section.body, _Table):
            lines += _text_table(section.body)
        else:
            lines += [f"{indent}{name}: {value}" for name, value in section.body]
    return "\n".join(lines)

"""ModelRegistryLib.card: every section of a card shows when present and only then, escaped, in Qt's rich text."""

from __future__ import annotations

import html
import json
import re

import pytest
from PySide6.QtGui import QTextDocument
from test_index import valid_document

from ModelRegistryLib.card import card_html, card_text, format_duration
from ModelRegistryLib.index import parse_index

# What the full model of test_index.valid_document() shows under each heading, and the card field behind it.
SECTIONS = {
    "Inputs": "inputs",
    "Labels": "labels",
    "Intended use": "intendedUse",
    "Limitations": "limitations",
    "Training data": "trainingData",
    "Metrics": "metrics",
    "Citation": "citation",
}
QT_RICH_TEXT_TAGS = {"h2", "h3", "p", "br", "table", "tr", "th", "td", "b", "i", "ul", "li", "span"}


def full_document() -> dict:
    return json.loads(json.dumps(valid_document()))


def entry_of(document: dict, index: int = 0):
    return parse_index(document)[index]


def headings(text: str) -> set:
    return set(re.findall(r"<h3>(.*?)</h3>", text))


def test_every_section_of_a_full_card_shows():
    text = card_html(entry_of(full_document()))
    assert headings(text) == {*SECTIONS, "Resources", "Versions"}
    plain = card_text(entry_of(full_document())).splitlines()
    assert {*SECTIONS, "Resources", "Versions"} <= set(plain)


def test_a_minimal_card_shows_only_what_it_has():
    liver = entry_of(full_document(), 1)
    assert headings(card_html(liver)) == {"Versions"}
    assert "Deprecated" not in card_html(liver)
    assert card_text(liver).splitlines()[:4] == ["Liver (liver.ct)", "", "Modality: CT", ""]


@pytest.mark.parametrize("heading", SECTIONS)
def test_a_section_disappears_with_its_field(heading):
    document = full_document()
    del document["models"][0][SECTIONS[heading]]
    entry = entry_of(document)
    assert headings(card_html(entry)) == {*SECTIONS, "Resources", "Versions"} - {heading}
    assert heading not in card_text(entry).splitlines()


def test_resources_show_memory_and_run_times_and_disappear_without_them():
    document = full_document()
    text = card_text(entry_of(document))
    lines = ("  RAM: 4 GB", "  GPU memory: 2.5 GB", "  Run time, CPU: 1 min (8 threads)", "  Run time, CUDA GPU: 4.5 s")
    assert set(lines) <= set(text.splitlines())
    del document["models"][0]["resources"]
    assert "Resources" in headings(card_html(entry_of(document)))
    del document["models"][0]["runtime"]
    assert "Resources" not in headings(card_html(entry_of(document)))


def test_overview_fields_show_only_when_present():
    document = full_document()
    text = card_text(entry_of(document)).splitlines()
    assert {"Task: segmentation", "License: CC-BY-4.0", "Authors: A. Author, B. Author"} <= set(text)
    del document["models"][0]["license"]
    assert not any(line.startswith("License") for line in card_text(entry_of(document)).splitlines())


def test_deprecation_warning_comes_first():
    entry = entry_of(full_document())
    text = card_html(entry)
    assert text.startswith('<p><span style="color:#b00020"><b>Deprecated:</b> Trained on too few scanners.')
    assert "Use brain-tissue-2 instead." in text.split("\n")[0]
    assert card_text(entry).splitlines()[1].startswith("DEPRECATED: Trained on too few scanners.")


def test_labels_show_their_colors_in_swatches_qt_renders():
    entry = entry_of(full_document())
    document = QTextDocument()
    document.setHtml(card_html(entry))
    colors = set()
    block = document.begin()
    while block.isValid():
        fragments = block.begin()
        while not fragments.atEnd():
            fragment = fragments.fragment()
            if "■" in fragment.text():
                colors.add(fragment.charFormat().foreground().color().name())
            fragments += 1
        block = block.next()
    assert colors == {"#c87d6a", "#f5f0e6"}
    plain = document.toPlainText()
    assert "Gray matter (SCT 389081007)" in plain and "Brain tissue" in plain


def test_versions_are_newest_first_with_changelog_and_installed_state():
    entry = entry_of(full_document())
    text = card_html(entry, version="1.10.0-rc1", installed_versions=["1.0.0"])
    rows = re.findall(r"<tr><td>(\d+\.\d+\.\d+[^<]*)</td>(.*?)</tr>", text)
    assert [version for version, _ in rows] == ["1.10.0-rc1", "1.0.0"]
    assert "<td>selected</td>" in rows[0][1]
    assert "<td>installed</td>" in rows[1][1] and "First release" in rows[1][1] and "2024-02-29" in rows[1][1]
    assert "<i>brain-tissue</i>, version 1.10.0-rc1" in text
    # Without a version picked, the latest release is the one shown.
    assert "version 1.0.0" in card_html(entry)


def download_cells(text: str) -> dict:
    """Version -> its Download cell, from a card's HTML."""
    return dict(re.findall(r"<tr><td>(\d+\.\d+\.\d+[^<]*)</td><td>[^<]*</td><td>([^<]*)</td>", text))


def test_download_column_says_what_each_version_offers():
    document = full_document()
    document["models"][0]["versions"][1]["files"][0]["size"] = 12_300_000
    assert download_cells(card_html(entry_of(document))) == {
        "1.10.0-rc1": "12.3 MB, or image 127.0.0.1:5000/lab/brain-tissue",
        "1.0.0": "10 B",
    }
    assert download_cells(card_html(entry_of(document, 1))) == {"0.2.0": "image lab/liver"}
    assert "  0.2.0              image lab/liver" in card_text(entry_of(document, 1)).splitlines()


def test_parameters_of_the_shown_version_show_with_type_default_and_allowed_values():
    entry = entry_of(full_document())
    text = card_html(entry, version="1.10.0-rc1")
    assert "Parameters" in headings(text)
    table = text.split("<h3>Parameters</h3>")[1].split("</table>")[0]
    rows = [re.findall(r"<t[dh]>(.*?)</t[dh]>", row) for row in re.findall(r"<tr>(.*?)</tr>", table)]
    assert rows == [
        ["Parameter", "Type", "Default", "Allowed", "Description"],
        ["Threshold (threshold)", "float", "0.5", "0 to 1.0", "Probability above which a voxel is labelled"],
        ["iterations", "int", "3", "at least 1", ""],
        ["fast", "bool", "false", "true, false", ""],
        ["mode", "enum", "b", "a, b, c", ""],
    ]
    # The latest release, shown by default, has no image; a version the card does not know shows as the latest release.
    assert "Parameters" not in headings(card_html(entry))
    assert "Parameters" not in headings(card_html(entry, version="9.9.9"))


def test_parameters_show_in_the_text_card_of_the_latest_release():
    document = full_document()
    liver = document["models"][1]["versions"][0]
    liver["image"]["parameters"] = [
        {"name": "spacing", "type": "float", "default": 1.5, "maximum": 3},
        {"name": "passes", "type": "int", "default": 2},
        {"name": "level", "type": "float", "default": 0, "minimum": -1.5},
    ]
    lines = card_text(entry_of(document, 1)).splitlines()
    start = lines.index("Parameters")
    assert lines[start: start + 5] == [
        "Parameters",
        "  Parameter  Type   Default  Allowed",
        "  spacing    float  1.5      at most 3",
        "  passes     int    2        any integer",
        "  level      float  0.0      at least -1.5",
    ]
    assert lines.index("Versions") > start
    del liver["image"]["parameters"]
    assert "Parameters" not in card_text(entry_of(document, 1)).splitlines()


def marked_document() -> tuple:
    """The full document with every text field replaced by a distinct piece of markup, the markers, and those of
    them that are in the pre-release's image parameters (so only in the pre-release's card)."""
    document = full_document()
    markers = []

    def mark(container, key):
        markers.append(f'<x{len(markers)} a="&">')
        container[key] = markers[-1]

    model = document["models"][0]
    for key in ("title", "description", "task", "modality", "license", "citation", "homepage", "intendedUse",
                "limitations", "trainingData"):
        mark(model, key)
    for items, keys in ((model["inputs"], ("name", "modality", "pattern")), (model["labels"], ("name",)),
                        (model["metrics"], ("name", "dataset")), (model["runtime"][:1], ("note",))):
        for item in items:
            for key in keys:
                mark(item, key)
    for coding in model["labels"][0]["terminology"].values():
        mark(coding, "meaning")
    for lists in (model["anatomy"], model["authors"]):
        for i in range(len(lists)):
            mark(lists, i)
    mark(model["deprecated"], "message")
    mark(model["versions"][0], "changelog")
    first_parameter_marker = len(markers)
    threshold, _, _, mode = model["versions"][1]["image"]["parameters"]
    mark(threshold, "title")
    mark(threshold, "description")
    for i in range(len(mode["choices"])):
        mark(mode["choices"], i)
    mode["default"] = mode["choices"][0]
    return document, markers, markers[first_parameter_marker:]


def test_every_string_is_escaped():
    document, markers, parameter_markers = marked_document()
    # The marked title is an unknown version: the latest release shows, and the pre-release shows its parameters.
    text = card_html(entry_of(document), version=markers[0]) + card_html(entry_of(document), version="1.10.0-rc1")
    for marker in markers:
        assert html.escape(marker) in text
    assert not re.search(r"<x\d", text)
    assert set(re.findall(r"</?([a-z0-9]+)", text)) <= QT_RICH_TEXT_TAGS
    assert "class=" not in text and "<script" not in text
    plain = card_text(entry_of(document))
    assert all(marker in plain for marker in markers if marker not in parameter_markers)


def test_sizes_and_durations_read_well():
    assert [format_duration(s) for s in (0.25, 59, 60, 7200)] == ["0.25 s", "59 s", "1 min", "2 h"]

"""ModelRegistryLib.index: parsing agrees with the JSON Schema, and errors name the bad field."""

from __future__ import annotations

import functools
import json
import os
import re

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ModelRegistryLib.index import (
    MAX_INDEX_BYTES,
    Coding,
    IndexValidationError,
    ModelEntry,
    ModelVersion,
    VersionNotFoundError,
    file_url,
    load_index,
    parse_index,
    resolve_version,
    search,
    semantic_version_key,
)

RESOURCES = os.path.join(os.path.dirname(__file__), "..", "..", "Resources")
SCHEMA_PATH = os.path.join(RESOURCES, "Schema", "registry-index.schema.json")
BUNDLED_INDEX = os.path.join(RESOURCES, "Registry", "bundled-index.json")


def schema() -> dict:
    with open(SCHEMA_PATH, encoding="utf-8") as file:
        return json.load(file)


@functools.lru_cache(maxsize=1)
def schema_validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema())


TISSUE = {"scheme": "SCT", "code": "85756007", "meaning": "Tissue"}
GRAY_MATTER = {"scheme": "SCT", "code": "389081007", "meaning": "Gray matter"}
WHITE_MATTER = {"scheme": "SCT", "code": "389080008", "meaning": "White matter"}
BRAIN = {"scheme": "SCT", "code": "12738006", "meaning": "Brain"}
LEFT = {"scheme": "SCT", "code": "7771000", "meaning": "Left"}


def valid_document() -> dict:
    """Two models: the first with every model-card field, the second with only the required ones."""
    return {
        "schemaVersion": 1,
        "models": [
            {
                "id": "brain-tissue",
                "title": "Brain tissue",
                "description": "Gray and white matter",
                "task": "segmentation",
                "modality": "MR",
                "anatomy": ["brain"],
                "inputs": [
                    {"name": "T1", "modality": "MR", "pattern": "t1|mprage"},
                    {"name": "FLAIR", "pattern": "flair"},
                ],
                "labels": [
                    {"value": 1, "name": "Gray matter", "color": "#c87d6a",
                     "terminology": {"category": TISSUE, "type": GRAY_MATTER, "region": BRAIN, "regionModifier": LEFT}},
                    {"value": 2, "name": "White matter", "color": "#F5F0E6",
                     "terminology": {"category": TISSUE, "type": WHITE_MATTER}},
                ],
                "license": "CC-BY-4.0",
                "authors": ["A. Author", "B. Author"],
                "citation": "Author A. Brain tissue. 2024.",
                "homepage": "https://example.org/brain",
                "intendedUse": "Research only",
                "limitations": "Adults, 3 T scanners",
                "trainingData": "120 subjects from two sites",
                "metrics": [{"name": "Dice", "value": 0.91, "dataset": "test"}, {"name": "HD95", "value": 2}],
                "resources": {"ramGB": 4, "gpuMemoryGB": 2.5},
                "runtime": [{"device": "cpu", "seconds": 60, "note": "8 threads"}, {"device": "cuda", "seconds": 4.5}],
                "deprecated": {"message": "Trained on too few scanners.", "replacedBy": "brain-tissue-2"},
                "versions": [
                    {"version": "1.0.0", "releaseDate": "2024-02-29", "changelog": "First release",
                     "files": [{"url": "https://x.org/a.zip", "sha256": "0" * 64, "size": 5},
                               {"url": "https://x.org/b/", "sha256": "1" * 64, "size": 5, "name": "model.pt"}]},
                    {"version": "1.10.0-rc1", "files": [{"url": "file:///b.zip", "sha256": "f" * 64, "size": 0}]},
                ],
            },
            {
                "id": "liver.ct",
                "title": "Liver",
                "modality": "CT",
                "versions": [{"version": "0.2.0", "image": {"name": "lab/liver", "digest": "sha256:" + "a" * 64}}],
            },
        ],
    }


def test_bundled_index_follows_the_schema():
    with open(BUNDLED_INDEX, encoding="utf-8") as file:
        document = json.load(file)
    schema_validator().validate(document)
    assert len(load_index(BUNDLED_INDEX)) == len(document["models"])


def test_schema_is_a_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(schema())


def test_valid_document_parses():
    schema_validator().validate(valid_document())
    brain, liver = parse_index(valid_document())
    assert brain.latest.version == "1.10.0-rc1"
    assert brain.anatomy == ("brain",)
    assert liver.latest.image.digest == "sha256:" + "a" * 64
    assert liver.latest.files == ()


def test_model_card_fields_parse():
    brain, liver = parse_index(valid_document())
    inputs = [(i.name, i.modality, i.pattern) for i in brain.inputs]
    assert inputs == [("T1", "MR", "t1|mprage"), ("FLAIR", "", "flair")]
    gray, white = brain.labels
    assert (gray.value, gray.name, gray.color) == (1, "Gray matter", "#c87d6a")
    assert gray.terminology.type == Coding("SCT", "389081007", "Gray matter")
    assert gray.terminology.region_modifier == Coding("SCT", "7771000", "Left")
    assert white.terminology.type_modifier is None and white.terminology.region is None
    assert (brain.license, brain.authors) == ("CC-BY-4.0", ("A. Author", "B. Author"))
    assert brain.intended_use == "Research only"
    assert (brain.limitations, brain.training_data) == ("Adults, 3 T scanners", "120 subjects from two sites")
    assert [(m.name, m.value, m.dataset) for m in brain.metrics] == [("Dice", 0.91, "test"), ("HD95", 2, "")]
    assert (brain.resources.ram_gb, brain.resources.gpu_memory_gb) == (4, 2.5)
    assert [(r.device, r.seconds, r.note) for r in brain.runtime] == [("cpu", 60, "8 threads"), ("cuda", 4.5, "")]
    assert brain.deprecated.message == "Trained on too few scanners."
    assert brain.deprecated.replaced_by == "brain-tissue-2"
    first = brain.version("1.0.0")
    assert (first.release_date, first.changelog, first.download_size) == ("2024-02-29", "First release", 10)
    # The target name defaults to the URL's last path segment; only archives are unpacked.
    assert [(f.name, f.unpacked) for f in first.files] == [("a.zip", True), ("model.pt", False)]
    # What the card leaves out gets empty defaults.
    assert (liver.inputs, liver.labels, liver.metrics, liver.runtime) == ((), (), (), ())
    assert (liver.license, liver.resources, liver.deprecated) == ("", None, None)


def test_inputs_match_volume_names_case_insensitively():
    t1, flair = parse_index(valid_document())[0].inputs
    assert t1.matches("Sub-01 T1w") and t1.matches("MPRAGE_sag")
    assert not t1.matches("sub-01 flair")
    assert flair.matches("3D FLAIR")


def test_terminology_gives_slicer_entries():
    gray, white = parse_index(valid_document())[0].labels
    context, region_context = "Segmentation category and type - 3D Slicer General Anatomy list", "Anatomic codes"
    assert white.terminology.slicer_entry(context) == (
        context + "~SCT^85756007^Tissue~SCT^389080008^White matter~^^~~^^~^^"
    )
    assert gray.terminology.slicer_entry(context, region_context) == (
        context + "~SCT^85756007^Tissue~SCT^389081007^Gray matter~^^~Anatomic codes~SCT^12738006^Brain~SCT^7771000^Left"
    )


def write_index(path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document), encoding="utf-8")


def test_relative_file_urls_resolve_against_the_index_location(tmp_path):
    document = valid_document()
    files = document["models"][0]["versions"][0]["files"]
    files[0]["url"] = "weights/brain%20tissue.zip"
    files[1]["url"] = "../shared/model.pt"
    path = tmp_path / "my registry" / "index.json"
    write_index(path, document)
    folder_url = file_url(tmp_path)
    for location in (path, str(path), file_url(path)):
        first = load_index(location)[0].version("1.0.0")
        assert [f.url for f in first.files] == [
            folder_url + "/my%20registry/weights/brain%20tissue.zip",
            folder_url + "/shared/model.pt",
        ]
        assert first.files[0].name == "brain tissue.zip"
    # Absolute URLs stay as they are.
    assert load_index(path)[0].version("1.10.0-rc1").files[0].url == "file:///b.zip"
    remote = parse_index(document, base_url="https://example.org/registry/index.json")[0].version("1.0.0")
    assert [f.url for f in remote.files] == [
        "https://example.org/registry/weights/brain%20tissue.zip",
        "https://example.org/shared/model.pt",
    ]

def mutate(path, value):
    """The valid document with the field at ``path`` replaced (or deleted when value is ``DELETE``)."""
    # Through JSON rather than deepcopy: deepcopy keeps the shared coding dicts shared.
    document = json.loads(json.dumps(valid_document()))
    target = document
    for key in path[:-1]:
        target = target[key]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return document


DELETE = object()
MODEL = ("models", 0)
VERSION = (*MODEL, "versions", 0)
BAD_DOCUMENTS = {
    "models[0].id": (("models", 0, "id"), "Brain Tissue"),
    "models[1].title": (("models", 1, "title"), DELETE),
    "models[0].versions": (("models", 0, "versions"), []),
    "models[0].versions[1].version": (("models", 0, "versions", 1, "version"), "1.2"),
    "models[0].versions[0].files[0].sha256": (("models", 0, "versions", 0, "files", 0, "sha256"), "ABC"),
    "models[0].versions[0].files[0].size": (("models", 0, "versions", 0, "files", 0, "size"), -1),
    "models[0].versions[0].files[0].url": (("models", 0, "versions", 0, "files", 0, "url"), 7),
    "models[1].versions[0].image.digest": (("models", 1, "versions", 0, "image", "digest"), "a" * 64),
    "models[0].anatomy[0]": (("models", 0, "anatomy"), [3]),
    "schemaVersion": (("schemaVersion",), 2),
    "models[0].inputs[0].name": ((*MODEL, "inputs", 0, "name"), DELETE),
    "models[0].inputs[1].pattern": ((*MODEL, "inputs", 1, "pattern"), 5),
    "models[0].labels[0].value": ((*MODEL, "labels", 0, "value"), 0),
    "models[0].labels[1].color": ((*MODEL, "labels", 1, "color"), "red"),
    "models[0].labels[1].name": ((*MODEL, "labels", 1, "name"), DELETE),
    "models[0].labels[0].terminology.type": ((*MODEL, "labels", 0, "terminology", "type"), DELETE),
    "models[0].labels[0].terminology.region.code": ((*MODEL, "labels", 0, "terminology", "region", "code"), 12738006),
    "models[0].authors[1]": ((*MODEL, "authors"), ["A. Author", None]),
    "models[0].license": ((*MODEL, "license"), ["MIT"]),
    "models[0].intendedUse": ((*MODEL, "intendedUse"), 1),
    "models[0].metrics[0].value": ((*MODEL, "metrics", 0, "value"), "0.91"),
    "models[0].resources.ramGB": ((*MODEL, "resources", "ramGB"), -1),
    "models[0].resources.gpuMemoryGB": ((*MODEL, "resources", "gpuMemoryGB"), True),
    "models[0].runtime[1].device": ((*MODEL, "runtime", 1, "device"), "tpu"),
    "models[0].runtime[0].seconds": ((*MODEL, "runtime", 0, "seconds"), DELETE),
    "models[0].deprecated.message": ((*MODEL, "deprecated", "message"), DELETE),
    "models[0].deprecated.replacedBy": ((*MODEL, "deprecated", "replacedBy"), "Brain Tissue 2"),
    "models[0].versions[0].releaseDate": ((*VERSION, "releaseDate"), "29.02.2024"),
    "models[0].versions[0].changelog": ((*VERSION, "changelog"), ["First release"]),
    "models[0].versions[0].files[1].name": ((*VERSION, "files", 1, "name"), "../model.pt"),
}


# What a JSON Schema cannot say; the parser still refuses these, naming the field.
PARSER_ONLY_RULES = {
    "models[0].inputs[0].pattern": ((*MODEL, "inputs", 0, "pattern"), "t1|(mprage"),
    "models[0].labels[1].value": ((*MODEL, "labels", 1, "value"), 1),
    "models[0].versions[0].releaseDate": ((*VERSION, "releaseDate"), "2023-02-29"),
    "models[0].versions[0].files[1].name": ((*VERSION, "files", 1, "name"), "a.zip"),
    "models[0].versions[0].files[1].url": ((*VERSION, "files", 1), {"url": "https://x.org/b/", "sha256": 64 * "1",
                                                                   "size": 5}),
}


@pytest.mark.parametrize("field", PARSER_ONLY_RULES)
def test_parser_refuses_what_a_schema_cannot_say_and_names_the_field(field):
    path, value = PARSER_ONLY_RULES[field]
    with pytest.raises(IndexValidationError) as raised:
        parse_index(mutate(path, value))
    assert raised.value.field == field


@pytest.mark.parametrize("field", BAD_DOCUMENTS)
def test_schema_and_parser_both_refuse_and_name_the_field(field):
    path, value = BAD_DOCUMENTS[field]
    document = mutate(path, value)
    assert not schema_validator().is_valid(document)
    with pytest.raises(IndexValidationError) as raised:
        parse_index(document)
    assert raised.value.field == field


def test_version_needs_files_or_image_but_not_both():
    both = mutate(("models", 1, "versions", 0, "files"), [{"url": "u", "sha256": "0" * 64, "size": 1}])
    neither = mutate(("models", 1, "versions", 0, "image"), DELETE)
    empty_files = mutate(("models", 0, "versions", 0, "files"), [])
    for document in (both, neither, empty_files):
        assert not schema_validator().is_valid(document)
        with pytest.raises(IndexValidationError):
            parse_index(document)


def test_duplicates_are_refused():
    document = valid_document()
    document["models"][1]["id"] = "brain-tissue"
    with pytest.raises(IndexValidationError, match="duplicate model id"):
        parse_index(document)
    document = valid_document()
    document["models"][0]["versions"][1]["version"] = "1.0.0"
    with pytest.raises(IndexValidationError, match="duplicate version"):
        parse_index(document)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


def field_path(field: str) -> list:
    """``models[0].labels[1].value`` -> ``["models", 0, "labels", 1, "value"]``."""
    return [key if index == "" else int(index) for key, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", field)]


def names_a_place_in(document, field: str) -> bool:
    """Whether ``field`` leads into ``document``: every step exists but the last, which may be a missing key."""
    *parents, last = field_path(field)
    target = document
    for key in parents:
        if (isinstance(target, dict) and key in target) or (isinstance(target, list) and key < len(target)):
            target = target[key]
        else:
            return False
    return (isinstance(target, dict) and isinstance(last, str)) or (isinstance(target, list) and last < len(target))


def paths_in(document, prefix=()) -> list:
    """Every path to a value inside a JSON document (the root excluded)."""
    if isinstance(document, dict):
        items = document.items()
    elif isinstance(document, list):
        items = enumerate(document)
    else:
        return []
    paths = []
    for key, value in items:
        paths += [(*prefix, key), *paths_in(value, (*prefix, key))]
    return paths


def check_parse(document, mutated_path=None) -> None:
    """Parses, and then the schema agrees; or raises IndexValidationError naming a field of the document."""
    try:
        parse_index(document)
    except IndexValidationError as error:
        assert names_a_place_in(document, error.field), error
        if mutated_path is not None and "duplicate" not in str(error):
            # The error is about the changed value: at it or inside it, at a sibling that depends on it (a file's
            # name on its URL), or at an object holding it that now lacks something.
            path, parent = tuple(field_path(error.field)), tuple(mutated_path[:-1])
            assert path[: len(parent)] == parent or tuple(mutated_path[: len(path)]) == path, (mutated_path, error)
    else:
        # The parser checks all the schema does (and more), so a document it accepts the schema accepts.
        assert schema_validator().is_valid(document)


@settings(max_examples=300, deadline=None)
@given(document=JSON_VALUES)
def test_random_documents_give_a_validation_error_or_models(document):
    if isinstance(document, dict):
        check_parse(document)
    else:
        with pytest.raises(IndexValidationError) as raised:
            parse_index(document)
        assert raised.value.field == "(document)"


@settings(max_examples=600, deadline=None)
@given(path=st.sampled_from(paths_in(valid_document())), value=st.just(DELETE) | JSON_VALUES)
def test_one_field_changed_to_any_json_value_parses_or_names_the_field(path, value):
    check_parse(mutate(path, value), path)


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(min_value=0, max_value=len(json.dumps(valid_document())) - 1))
def test_truncated_files_give_a_validation_error(tmp_path_factory, cut):
    path = tmp_path_factory.mktemp("index") / "index.json"
    path.write_text(json.dumps(valid_document())[:cut], encoding="utf-8")
    with pytest.raises(IndexValidationError):
        load_index(path)


def test_oversized_index_is_refused_unread(tmp_path):
    path = tmp_path / "huge.json"
    with open(path, "wb") as file:
        file.truncate(MAX_INDEX_BYTES + 1)
    with pytest.raises(IndexValidationError, match="limit"):
        load_index(path)


def test_semantic_version_order():
    versions = ["1.10.0", "1.9.0", "1.9.0-rc1", "0.0.1", "2.0.0-alpha"]
    assert sorted(versions, key=semantic_version_key) == ["0.0.1", "1.9.0-rc1", "1.9.0", "1.10.0", "2.0.0-alpha"]
    with pytest.raises(ValueError):
        semantic_version_key("1.0")


def entry_with_versions(*versions: str) -> ModelEntry:
    return ModelEntry("m", "M", tuple(ModelVersion(version) for version in versions))


def test_latest_release_skips_prereleases_unless_there_is_nothing_else():
    assert entry_with_versions("1.0.0", "1.1.0-rc1").latest_release.version == "1.0.0"
    assert entry_with_versions("1.0.0", "1.1.0-rc1").latest.version == "1.1.0-rc1"
    assert entry_with_versions("1.1.0-rc1", "1.1.0-rc2").latest_release.version == "1.1.0-rc2"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, "1.10.0"),
        ("latest", "1.10.0"),
        ("1", "1.10.0"),
        ("1.9", "1.9.1"),
        ("1.9.0", "1.9.0"),
        ("0", "0.3.0"),
        ("2", "2.0.0-rc1"),
        ("2.0.0-rc1", "2.0.0-rc1"),
    ],
)
def test_resolve_version(spec, expected):
    entry = entry_with_versions("0.3.0", "1.9.0", "1.9.1", "1.10.0", "2.0.0-rc1")
    assert resolve_version(entry, spec).version == expected
    assert entry.version(spec).version == expected


@pytest.mark.parametrize("spec", ["3", "1.8", "1.9.2", "1.9.0-rc1", "v1", "1.x", "", "01"])
def test_unknown_version_spec_lists_the_versions_there_are(spec):
    entry = entry_with_versions("1.9.0", "1.10.0")
    with pytest.raises(VersionNotFoundError) as raised:
        resolve_version(entry, spec)
    assert isinstance(raised.value, LookupError)
    assert "available: 1.10.0, 1.9.0" in str(raised.value)
    assert raised.value.available == ("1.10.0", "1.9.0")


def test_search_finds_label_names():
    models = parse_index(valid_document())
    assert [m.id for m in search(models, "white matter")] == ["brain-tissue"]


def test_search_matches_every_word_anywhere():
    models = parse_index(valid_document())
    assert [m.id for m in search(models, "")] == ["brain-tissue", "liver.ct"]
    assert [m.id for m in search(models, "MR brain")] == ["brain-tissue"]
    assert [m.id for m in search(models, "ct LIVER")] == ["liver.ct"]
    assert search(models, "brain ct") == []

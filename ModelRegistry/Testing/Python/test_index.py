"""ModelRegistryLib.index: parsing agrees with the JSON Schema, and errors name the bad field."""

from __future__ import annotations

import contextlib
import copy
import json
import os

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ModelRegistryLib.index import (
    MAX_INDEX_BYTES,
    IndexValidationError,
    load_index,
    parse_index,
    search,
    semantic_version_key,
)

RESOURCES = os.path.join(os.path.dirname(__file__), "..", "..", "Resources")
SCHEMA_PATH = os.path.join(RESOURCES, "Schema", "registry-index.schema.json")
BUNDLED_INDEX = os.path.join(RESOURCES, "Registry", "bundled-index.json")


def schema() -> dict:
    with open(SCHEMA_PATH, encoding="utf-8") as file:
        return json.load(file)


def valid_document() -> dict:
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
                "versions": [
                    {"version": "1.0.0", "files": [{"url": "https://x.org/a.zip", "sha256": "0" * 64, "size": 5}]},
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
    jsonschema.Draft202012Validator(schema()).validate(document)
    assert len(load_index(BUNDLED_INDEX)) == len(document["models"])


def test_schema_is_a_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(schema())


def test_valid_document_parses():
    jsonschema.Draft202012Validator(schema()).validate(valid_document())
    brain, liver = parse_index(valid_document())
    assert brain.latest.version == "1.10.0-rc1"
    assert brain.anatomy == ("brain",)
    assert liver.latest.image.digest == "sha256:" + "a" * 64
    assert liver.latest.files == ()


def mutate(path, value):
    """The valid document with the field at ``path`` replaced (or deleted when value is ``DELETE``)."""
    document = copy.deepcopy(valid_document())
    target = document
    for key in path[:-1]:
        target = target[key]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return document


DELETE = object()
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
}


@pytest.mark.parametrize("field", BAD_DOCUMENTS)
def test_schema_and_parser_both_refuse_and_name_the_field(field):
    path, value = BAD_DOCUMENTS[field]
    document = mutate(path, value)
    assert not jsonschema.Draft202012Validator(schema()).is_valid(document)
    with pytest.raises(IndexValidationError) as raised:
        parse_index(document)
    assert raised.value.field == field


def test_version_needs_files_or_image_but_not_both():
    both = mutate(("models", 1, "versions", 0, "files"), [{"url": "u", "sha256": "0" * 64, "size": 1}])
    neither = mutate(("models", 1, "versions", 0, "image"), DELETE)
    empty_files = mutate(("models", 0, "versions", 0, "files"), [])
    for document in (both, neither, empty_files):
        assert not jsonschema.Draft202012Validator(schema()).is_valid(document)
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


@settings(max_examples=300, deadline=None)
@given(document=JSON_VALUES)
def test_random_documents_give_a_validation_error_or_models(document):
    with contextlib.suppress(IndexValidationError):
        parse_index(document)


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


def test_search_matches_every_word_anywhere():
    models = parse_index(valid_document())
    assert [m.id for m in search(models, "")] == ["brain-tissue", "liver.ct"]
    assert [m.id for m in search(models, "MR brain")] == ["brain-tissue"]
    assert [m.id for m in search(models, "ct LIVER")] == ["liver.ct"]
    assert search(models, "brain ct") == []

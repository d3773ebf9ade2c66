"""ModelRegistryLib.index: parsing agrees with the JSON Schema, and errors name the bad field."""

from __future__ import annotations

import dataclasses
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
    MAX_MATCHED_NAME_LENGTH,
    MAX_PATTERN_LENGTH,
    MAX_PATTERN_STEPS,
    Coding,
    ContainerImage,
    ImageParameter,
    IndexValidationError,
    ModelEntry,
    ModelFile,
    ModelVersion,
    VersionNotFoundError,
    file_url,
    input_pattern_problem,
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
    """Two models: the first with every model-card field (its pre-release has both files and an image with an
    archive and a parameter of each type), the second with only the required ones and an image."""
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
                    {"version": "1.10.0-rc1", "files": [{"url": "file:///b.zip", "sha256": "f" * 64, "size": 0}],
                     "image": {
                         "name": "127.0.0.1:5000/lab/brain-tissue",
                         "digest": "sha256:" + "b" * 64,
                         "id": "sha256:" + "c" * 64,
                         "archive": {"url": "images/brain-tissue.tar", "sha256": "2" * 64, "size": 7},
                         "parameters": [
                             {"name": "threshold", "type": "float", "title": "Threshold",
                              "description": "Probability above which a voxel is labelled", "default": 0.5,
                              "minimum": 0, "maximum": 1.0},
                             {"name": "iterations", "type": "int", "default": 3, "minimum": 1},
                             {"name": "fast", "type": "bool", "default": False},
                             {"name": "mode", "type": "enum", "default": "b", "choices": ["a", "b", "c"]},
                         ],
                     }},
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


# Patterns whose backtracking has no useful bound: each would freeze the panel on some volume name.
UNBOUNDED_PATTERNS = [
    r"^(\w+\s?)+$",  # the classic: minutes on a long name
    r"(a+)+$",
    r"(a|a)*b",
    r"(?:x+x+)+y",
    r"(\d+)*\.nii",
    r"\w*\s*\w*x",  # no nesting, but three repeats in a row: 257^4 steps
    "a?" * 30 + "a" * 30,
    "(?:a|a)" * 16 + "b",  # 2^16 alternatives at each of 257 starts
]
# Outside the subset though harmless here: refused so that the rule stays simple to state and to check.
OUTSIDE_THE_SUBSET = [r"(t1)\1", r"(?=t1)", r"(?i)T1", r"(?P<name>t1)", r"[[:alpha:]]", r"\At1", "a{}", "x{300}", "a**"]
USUAL_PATTERNS = {  # pattern: (a name it matches, a name it does not)
    "t1|mprage": ("Sub-01 MPRAGE sag", "sub-01 flair"),
    "^.*T2.*$": ("prostate t2 axial", "adc map"),
    ".*t1.*": ("my_T1_scan", "flair"),
    r"\bt2\b": ("Case 7 T2 ax", "Case 7 T2w"),
    "(ct|cta)_?venous": ("CTA_venous phase", "CT arterial"),
    r"t1w?[_ -]ce": ("sub-1_T1w-ce", "T2w_ce"),
    r"[_ -]adc\d*$": ("prostate ADC2", "adc prostate"),
    "^.*t2.*adc.*": ("t2 and adc", "t2 only"),
    "": ("anything", None),
}


@pytest.mark.parametrize("pattern", UNBOUNDED_PATTERNS + OUTSIDE_THE_SUBSET)
def test_patterns_outside_the_safe_subset_are_refused_when_the_index_is_read(pattern):
    document = valid_document()
    document["models"][0]["inputs"][0]["pattern"] = pattern
    with pytest.raises(IndexValidationError, match="is not an allowed name pattern") as raised:
        parse_index(document)
    assert raised.value.field == "models[0].inputs[0].pattern"
    with pytest.raises(ValueError, match="input pattern"):
        dataclasses.replace(parse_index(valid_document())[0].inputs[0], pattern=pattern).matches("t1")


@pytest.mark.parametrize("pattern", list(USUAL_PATTERNS))
def test_usual_patterns_are_allowed_and_match_as_regular_expressions(pattern):
    assert input_pattern_problem(pattern) == ""
    document = valid_document()
    document["models"][0]["inputs"][0]["pattern"] = pattern
    matched, unmatched = USUAL_PATTERNS[pattern]
    t1 = parse_index(document)[0].inputs[0]
    assert t1.matches(matched)
    assert unmatched is None or not t1.matches(unmatched)


def test_patterns_are_limited_in_length_and_names_are_matched_on_their_start():
    assert input_pattern_problem("a" * MAX_PATTERN_LENGTH) == ""
    assert "longer than" in input_pattern_problem("a" * (MAX_PATTERN_LENGTH + 1))
    t1 = parse_index(valid_document())[0].inputs[0]
    assert t1.matches("x" * (MAX_MATCHED_NAME_LENGTH - 2) + "t1")
    assert not t1.matches("x" * MAX_MATCHED_NAME_LENGTH + "t1")


def test_the_step_bound_counts_repeats_start_positions_and_alternatives():
    assert input_pattern_problem(r"^a*b*c") == ""  # 257 x 257 lengths, one start
    assert input_pattern_problem(r"a*bc*") == ""  # 257 starts x 257: a repeat ending the pattern is tried once
    assert "too much backtracking" in input_pattern_problem(r"a*bc*d")
    steps = int(re.search(r"up to (\d+) steps", input_pattern_problem(r"a*b*c")).group(1))
    assert steps == 257**3 > MAX_PATTERN_STEPS  # 257 starts x 257 x 257
    steps = int(re.search(r"up to (\d+) steps", input_pattern_problem("^" + "(?:a|b)" * 23)).group(1))
    assert steps == 2**23 > MAX_PATTERN_STEPS


@settings(max_examples=500, deadline=None)
@given(pattern=st.text(alphabet=st.sampled_from(list("ab.^$*+?{}[]()|\\,:=!<>P0123dwsbBx-")), max_size=30))
def test_any_text_gets_a_verdict_and_allowed_patterns_compile(pattern):
    problem = input_pattern_problem(pattern)
    assert isinstance(problem, str)
    if not problem:
        re.compile(pattern)


def test_a_remote_index_may_only_list_web_urls():
    document = valid_document()
    with pytest.raises(IndexValidationError, match="http or https") as raised:
        parse_index(document, base_url="https://example.org/index.json")  # lists file:///b.zip
    assert raised.value.field == "models[0].versions[1].files[0].url"
    document["models"][0]["versions"][1]["files"][0]["url"] = "weights/b.zip"
    archive = document["models"][0]["versions"][1]["image"]["archive"]
    for url in ("file:///etc/passwd", "FILE:/etc/passwd", "ftp://example.org/x.tar", "/etc/passwd"):
        archive["url"] = url
        expected = "models[0].versions[1].image.archive.url"
        if url == "/etc/passwd":  # relative to the index: on the same web server, allowed
            assert parse_index(document, base_url="http://example.org/r/index.json")
            continue
        with pytest.raises(IndexValidationError) as raised:
            parse_index(document, base_url="http://example.org/r/index.json")
        assert raised.value.field == expected
    archive["url"] = "file:///images/x.tar"
    # A local index (a folder, a file URL) may point at local files.
    assert parse_index(document, base_url="file:///srv/registry/index.json")
    assert parse_index(document)


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
    remote = parse_index(web_document(document), base_url="https://example.org/registry/index.json")[0].version("1.0.0")
    assert [f.url for f in remote.files] == [
        "https://example.org/registry/weights/brain%20tissue.zip",
        "https://example.org/shared/model.pt",
    ]

def web_document(document: dict | None = None) -> dict:
    """``document`` (by default the valid one) as a web server may serve it: its one file URL made relative."""
    document = json.loads(json.dumps(document or valid_document()))
    document["models"][0]["versions"][1]["files"][0]["url"] = "b.zip"
    return document


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
IMAGE = (*MODEL, "versions", 1, "image")
PARAMETERS = (*IMAGE, "parameters")
THRESHOLD, ITERATIONS, FAST, MODE = ((*PARAMETERS, i) for i in range(4))
IMAGE_FIELD = "models[0].versions[1].image"
THRESHOLD_FIELD, ITERATIONS_FIELD, FAST_FIELD, MODE_FIELD = (f"{IMAGE_FIELD}.parameters[{i}]" for i in range(4))
BAD_DOCUMENTS = [  # (field named in the error, path changed, new value)
    ("models[0].id", ("models", 0, "id"), "Brain Tissue"),
    ("models[1].title", ("models", 1, "title"), DELETE),
    ("models[0].versions", ("models", 0, "versions"), []),
    ("models[0].versions[1].version", ("models", 0, "versions", 1, "version"), "1.2"),
    ("models[0].versions[0].files[0].sha256", ("models", 0, "versions", 0, "files", 0, "sha256"), "ABC"),
    ("models[0].versions[0].files[0].size", ("models", 0, "versions", 0, "files", 0, "size"), -1),
    ("models[0].versions[0].files[0].url", ("models", 0, "versions", 0, "files", 0, "url"), 7),
    ("models[1].versions[0].image.digest", ("models", 1, "versions", 0, "image", "digest"), "a" * 64),
    ("models[0].anatomy[0]", ("models", 0, "anatomy"), [3]),
    ("schemaVersion", ("schemaVersion",), 2),
    ("models[0].inputs[0].name", (*MODEL, "inputs", 0, "name"), DELETE),
    ("models[0].inputs[1].pattern", (*MODEL, "inputs", 1, "pattern"), 5),
    ("models[0].labels[0].value", (*MODEL, "labels", 0, "value"), 0),
    ("models[0].labels[1].color", (*MODEL, "labels", 1, "color"), "red"),
    ("models[0].labels[1].name", (*MODEL, "labels", 1, "name"), DELETE),
    ("models[0].labels[0].terminology.type", (*MODEL, "labels", 0, "terminology", "type"), DELETE),
    ("models[0].labels[0].terminology.region.code", (*MODEL, "labels", 0, "terminology", "region", "code"), 12738006),
    ("models[0].authors[1]", (*MODEL, "authors"), ["A. Author", None]),
    ("models[0].license", (*MODEL, "license"), ["MIT"]),
    ("models[0].intendedUse", (*MODEL, "intendedUse"), 1),
    ("models[0].metrics[0].value", (*MODEL, "metrics", 0, "value"), "0.91"),
    ("models[0].resources.ramGB", (*MODEL, "resources", "ramGB"), -1),
    ("models[0].resources.gpuMemoryGB", (*MODEL, "resources", "gpuMemoryGB"), True),
    ("models[0].runtime[1].device", (*MODEL, "runtime", 1, "device"), "tpu"),
    ("models[0].runtime[0].seconds", (*MODEL, "runtime", 0, "seconds"), DELETE),
    ("models[0].deprecated.message", (*MODEL, "deprecated", "message"), DELETE),
    ("models[0].deprecated.replacedBy", (*MODEL, "deprecated", "replacedBy"), "Brain Tissue 2"),
    ("models[0].versions[0].releaseDate", (*VERSION, "releaseDate"), "29.02.2024"),
    ("models[0].versions[0].changelog", (*VERSION, "changelog"), ["First release"]),
    ("models[0].versions[0].files[1].name", (*VERSION, "files", 1, "name"), "../model.pt"),
    ("models[1].versions[0].image.name", ("models", 1, "versions", 0, "image", "name"), DELETE),
    (f"{IMAGE_FIELD}.name", (*IMAGE, "name"), "lab/brain:1.0"),
    (f"{IMAGE_FIELD}.id", (*IMAGE, "id"), "c" * 64),
    (f"{IMAGE_FIELD}.archive", (*IMAGE, "archive"), "images/brain-tissue.tar"),
    (f"{IMAGE_FIELD}.archive.sha256", (*IMAGE, "archive", "sha256"), "2" * 63),
    (f"{IMAGE_FIELD}.archive.size", (*IMAGE, "archive", "size"), DELETE),
    (f"{IMAGE_FIELD}.parameters", (*IMAGE, "parameters"), {"threshold": 0.5}),
    (f"{IMAGE_FIELD}.parameters[1]", (*PARAMETERS, 1), ["iterations", "int", 3]),
    (f"{THRESHOLD_FIELD}.name", (*THRESHOLD, "name"), "2nd_threshold"),
    (f"{ITERATIONS_FIELD}.name", (*ITERATIONS, "name"), DELETE),
    (f"{THRESHOLD_FIELD}.type", (*THRESHOLD, "type"), "double"),
    (f"{FAST_FIELD}.type", (*FAST, "type"), DELETE),
    (f"{THRESHOLD_FIELD}.title", (*THRESHOLD, "title"), 3),
    (f"{THRESHOLD_FIELD}.description", (*THRESHOLD, "description"), ["text"]),
    (f"{MODE_FIELD}.default", (*MODE, "default"), DELETE),
    (f"{THRESHOLD_FIELD}.default", (*THRESHOLD, "default"), "0.5"),
    (f"{ITERATIONS_FIELD}.default", (*ITERATIONS, "default"), 2.5),
    (f"{ITERATIONS_FIELD}.default", (*ITERATIONS, "default"), True),
    (f"{FAST_FIELD}.default", (*FAST, "default"), 0),
    (f"{MODE_FIELD}.default", (*MODE, "default"), 1),
    (f"{MODE_FIELD}.choices", (*MODE, "choices"), DELETE),
    (f"{MODE_FIELD}.choices", (*MODE, "choices"), []),
    (f"{MODE_FIELD}.choices[1]", (*MODE, "choices"), ["a", 2]),
    (f"{MODE_FIELD}.choices[2]", (*MODE, "choices"), ["a", "b", "a"]),
    (f"{FAST_FIELD}.choices", (*FAST, "choices"), ["yes", "no"]),
    (f"{FAST_FIELD}.minimum", (*FAST, "minimum"), 0),
    (f"{MODE_FIELD}.maximum", (*MODE, "maximum"), 3),
    (f"{THRESHOLD_FIELD}.minimum", (*THRESHOLD, "minimum"), "0"),
    (f"{ITERATIONS_FIELD}.maximum", (*ITERATIONS, "maximum"), None),
]


# What a JSON Schema cannot say; the parser still refuses these, naming the field.
PARSER_ONLY_RULES = [
    ("models[0].inputs[0].pattern", (*MODEL, "inputs", 0, "pattern"), "t1|(mprage"),
    ("models[0].inputs[0].pattern", (*MODEL, "inputs", 0, "pattern"), r"^(\w+\s?)+$"),  # backtracks for minutes
    ("models[0].labels[1].value", (*MODEL, "labels", 1, "value"), 1),
    ("models[0].versions[0].releaseDate", (*VERSION, "releaseDate"), "2023-02-29"),
    ("models[0].versions[0].files[1].name", (*VERSION, "files", 1, "name"), "a.zip"),
    ("models[0].versions[0].files[1].url", (*VERSION, "files", 1), {"url": "https://x.org/b/", "sha256": 64 * "1",
                                                                   "size": 5}),
    (f"{IMAGE_FIELD}.name", (*IMAGE, "name"), "lab/brain\n"),  # JSON Schema's "$" matches before a final newline
    (f"{IMAGE_FIELD}.archive.url", (*IMAGE, "archive", "url"), "https://x.org/images/"),
    (f"{THRESHOLD_FIELD}.default", (*THRESHOLD, "default"), 1.5),
    (f"{ITERATIONS_FIELD}.default", (*ITERATIONS, "default"), 0),
    (f"{ITERATIONS_FIELD}.default", (*ITERATIONS, "default"), 3.0),  # "integer" in JSON Schema takes 3.0
    (f"{MODE_FIELD}.default", (*MODE, "default"), "d"),
    (f"{THRESHOLD_FIELD}.minimum", (*THRESHOLD, "minimum"), 2),
    (f"{IMAGE_FIELD}.parameters[1].name", (*ITERATIONS, "name"), "threshold"),
    ("models[0].metrics[1].value", (*MODEL, "metrics", 1, "value"), 10**400),  # no float holds it
]


@pytest.mark.parametrize(("field", "path", "value"), PARSER_ONLY_RULES, ids=[rule[0] for rule in PARSER_ONLY_RULES])
def test_parser_refuses_what_a_schema_cannot_say_and_names_the_field(field, path, value):
    document = mutate(path, value)
    assert schema_validator().is_valid(document)
    with pytest.raises(IndexValidationError) as raised:
        parse_index(document)
    assert raised.value.field == field


@pytest.mark.parametrize(("field", "path", "value"), BAD_DOCUMENTS, ids=[bad[0] for bad in BAD_DOCUMENTS])
def test_schema_and_parser_both_refuse_and_name_the_field(field, path, value):
    document = mutate(path, value)
    assert not schema_validator().is_valid(document)
    with pytest.raises(IndexValidationError) as raised:
        parse_index(document)
    assert raised.value.field == field


def test_version_needs_files_or_an_image_or_both():
    both = mutate(("models", 1, "versions", 0, "files"), [{"url": "u.pt", "sha256": "0" * 64, "size": 1}])
    schema_validator().validate(both)
    version = parse_index(both)[1].latest
    assert ([f.name for f in version.files], version.image.name) == (["u.pt"], "lab/liver")
    neither = mutate(("models", 1, "versions", 0, "image"), DELETE)
    empty_files = mutate(("models", 0, "versions", 0, "files"), [])
    for document, error in ((neither, "models[1].versions[0]: needs 'files', an 'image', or both"),
                            (empty_files, "models[0].versions[0].files: must list at least one file")):
        assert not schema_validator().is_valid(document)
        with pytest.raises(IndexValidationError) as raised:
            parse_index(document)
        assert str(raised.value) == error


def brain_image():
    return parse_index(valid_document())[0].version("1.10.0-rc1").image


def test_image_parameters_of_every_type_parse():
    image = brain_image()
    assert (image.name, image.digest) == ("127.0.0.1:5000/lab/brain-tissue", "sha256:" + "b" * 64)
    assert image.id == "sha256:" + "c" * 64
    assert parse_index(valid_document())[1].latest.image.id == ""
    threshold, iterations, fast, mode = image.parameters
    assert threshold == ImageParameter("threshold", "float", 0.5, "Threshold",
                                       "Probability above which a voxel is labelled", minimum=0, maximum=1.0)
    assert iterations == ImageParameter("iterations", "int", 3, "iterations", minimum=1)
    assert fast == ImageParameter("fast", "bool", False, "fast")
    assert mode == ImageParameter("mode", "enum", "b", "mode", choices=("a", "b", "c"))
    assert [type(p.default) for p in image.parameters] == [float, int, bool, str]
    # An integer default of a float parameter is stored as a float.
    whole = mutate((*THRESHOLD, "default"), 1)
    assert repr(parse_index(whole)[0].version("1.10.0-rc1").image.parameters[0].default) == "1.0"


@pytest.mark.parametrize(
    "name", ["ghcr.io/lab/liver", "localhost/threshold-demo", "127.0.0.1:5000/lab/x", "liver", "a.b/c_d/e-f"]
)
def test_image_names_without_tag_or_digest_parse(name):
    document = mutate((*IMAGE, "name"), name)
    schema_validator().validate(document)
    assert parse_index(document)[0].version("1.10.0-rc1").image.name == name


@pytest.mark.parametrize("name", ["", "lab/liver:1.0", "lab/liver@sha256:" + "0" * 64, "lab /liver", "lab//liver",
                                  "/lab/liver", "lab/liver/", "lab/\x00liver"])
def test_image_names_with_a_tag_digest_or_blank_are_refused(name):
    document = mutate((*IMAGE, "name"), name)
    assert not schema_validator().is_valid(document)
    with pytest.raises(IndexValidationError, match="without tag or digest") as raised:
        parse_index(document)
    assert raised.value.field == f"{IMAGE_FIELD}.name"


def test_image_archive_resolves_against_the_index_and_is_not_a_file_of_the_version(tmp_path):
    path = tmp_path / "registry" / "index.json"
    write_index(path, valid_document())
    version = load_index(path)[0].version("1.10.0-rc1")
    archive = version.image.archive
    assert archive == ModelFile(file_url(tmp_path) + "/registry/images/brain-tissue.tar", "2" * 64, 7,
                                "brain-tissue.tar")
    assert archive not in version.files
    assert version.download_size == 0  # the version's one file has size 0; the archive's 7 bytes do not count
    remote = parse_index(web_document(), base_url="https://example.org/r/index.json")[0].version("1.10.0-rc1")
    assert remote.image.archive.url == "https://example.org/r/images/brain-tissue.tar"
    assert brain_image().archive.url == "images/brain-tissue.tar"  # no base URL: left as written
    assert parse_index(valid_document())[1].latest.image.archive is None


def test_backends_say_how_a_version_can_run():
    brain, liver = parse_index(valid_document())
    assert brain.version("1.0.0").backends == ("inprocess",)
    assert brain.version("1.10.0-rc1").backends == ("inprocess", "container")
    assert liver.latest.backends == ("container",)
    assert ModelVersion("1.0.0").backends == ()


def test_a_backend_is_chosen_among_those_the_version_offers():
    brain, liver = parse_index(valid_document())
    assert brain.version("1.10.0-rc1").choose_backend() == "inprocess"
    assert brain.version("1.10.0-rc1").choose_backend("container") == "container"
    assert liver.latest.choose_backend() == "container"
    with pytest.raises(ValueError, match="cannot run inprocess: it offers container"):
        liver.latest.choose_backend("inprocess")


def test_input_names_follow_the_card_or_name_one_input():
    brain, liver = parse_index(valid_document())
    assert brain.input_names == [model_input.name for model_input in brain.inputs]
    assert dataclasses.replace(liver, inputs=()).input_names == ["Input volume"]


def test_image_reference_is_name_at_digest():
    assert brain_image().reference == "127.0.0.1:5000/lab/brain-tissue@sha256:" + "b" * 64


@pytest.mark.parametrize(
    ("parameter", "value", "expected"),
    [
        ("threshold", 1, 1.0),
        ("threshold", 0.25, 0.25),
        ("threshold", 0, 0.0),
        ("iterations", 7, 7),
        ("iterations", 7.0, 7),
        ("iterations", 10**30, 10**30),
        ("fast", True, True),
        ("mode", "c", "c"),
    ],
)
def test_check_converts_to_the_parameter_type(parameter, value, expected):
    checked = {p.name: p for p in brain_image().parameters}[parameter].check(value)
    assert (checked, type(checked)) == (expected, type(expected))


@pytest.mark.parametrize(
    ("parameter", "value", "message"),
    [
        ("threshold", 2.5, "parameter 'threshold' must be at most 1.0, not 2.5"),
        ("threshold", -0.5, "parameter 'threshold' must be at least 0, not -0.5"),
        ("threshold", True, "parameter 'threshold' must be a finite number, not True"),
        ("threshold", float("nan"), "parameter 'threshold' must be a finite number, not nan"),
        ("threshold", 10**400, "parameter 'threshold' must be a finite number, not 1000"),
        ("threshold", "0.5", "parameter 'threshold' must be a finite number, not '0.5'"),
        ("iterations", 2.5, "parameter 'iterations' must be an integer, not 2.5"),
        ("iterations", False, "parameter 'iterations' must be an integer, not False"),
        ("iterations", float("inf"), "parameter 'iterations' must be an integer, not inf"),
        ("iterations", 0, "parameter 'iterations' must be at least 1, not 0"),
        ("fast", 1, "parameter 'fast' must be true or false, not 1"),
        ("mode", "d", "parameter 'mode' must be one of a, b, c, not 'd'"),
        ("mode", None, "parameter 'mode' must be one of a, b, c, not None"),
    ],
)
def test_check_refuses_with_a_message_naming_the_parameter(parameter, value, message):
    with pytest.raises(ValueError) as raised:
        {p.name: p for p in brain_image().parameters}[parameter].check(value)
    assert str(raised.value).startswith(message)


@pytest.mark.parametrize(
    ("parameter", "text", "expected"),
    [
        ("threshold", "0.75", 0.75),
        ("threshold", " 1 ", 1.0),
        ("iterations", "12", 12),
        *(("fast", word, True) for word in ("true", "TRUE", "1", "yes", "On")),
        *(("fast", word, False) for word in ("false", "False", "0", "no", "OFF")),
        ("mode", "a", "a"),
    ],
)
def test_parse_reads_command_line_text(parameter, text, expected):
    parsed = {p.name: p for p in brain_image().parameters}[parameter].parse(text)
    assert (parsed, type(parsed)) == (expected, type(expected))


@pytest.mark.parametrize(
    ("parameter", "text", "message"),
    [
        ("threshold", "high", "parameter 'threshold' must be a number, not 'high'"),
        ("threshold", "1.5", "parameter 'threshold' must be at most 1.0, not 1.5"),
        ("threshold", "nan", "parameter 'threshold' must be a finite number, not nan"),
        ("iterations", "2.5", "parameter 'iterations' must be an integer, not '2.5'"),
        ("iterations", "0", "parameter 'iterations' must be at least 1, not 0"),
        ("fast", "maybe", "parameter 'fast' must be true or false (or yes/no, on/off, 1/0), not 'maybe'"),
        ("mode", "A", "parameter 'mode' must be one of a, b, c, not 'A'"),
    ],
)
def test_parse_refuses_with_a_message_naming_the_parameter(parameter, text, message):
    with pytest.raises(ValueError) as raised:
        {p.name: p for p in brain_image().parameters}[parameter].parse(text)
    assert str(raised.value) == message


def test_parameter_values_overlay_the_given_values_on_the_defaults():
    image = brain_image()
    defaults = {"threshold": 0.5, "iterations": 3, "fast": False, "mode": "b"}
    assert image.parameter_values({}) == defaults
    assert image.parameter_values({"iterations": 5.0, "fast": True}) == {**defaults, "iterations": 5, "fast": True}
    with pytest.raises(ValueError, match="parameter 'mode' must be one of a, b, c, not 'z'"):
        image.parameter_values({"mode": "z"})
    with pytest.raises(ValueError) as raised:
        image.parameter_values({"fast": True, "treshold": 0.2})
    assert str(raised.value) == (
        "image 127.0.0.1:5000/lab/brain-tissue has no parameter 'treshold'; "
        "its parameters are threshold, iterations, fast, mode"
    )
    bare = ContainerImage("lab/x", "sha256:" + "0" * 64)
    assert bare.parameter_values({}) == {}
    with pytest.raises(ValueError, match="has no parameter 'x'; it has no parameters"):
        bare.parameter_values({"x": 1})


def test_a_parameter_title_is_its_name_unless_given():
    assert ImageParameter("fast", "bool", True).title == "fast"
    assert ImageParameter("fast", "bool", True, title="Fast mode").title == "Fast mode"
    with pytest.raises(ValueError, match="has type 'str', not one of enum, bool, int, float"):
        ImageParameter("name", "str", "x")


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"type": "string"}, "type", "must be one of enum, bool, int, float"),
        ({"name": "max-size"}, "name", "letters, digits and '_'"),
        ({"default": 1.5}, "default", "parameter 'threshold' must be at most 1.0, not 1.5"),
        ({"minimum": 2}, "minimum", "must not be more than the maximum, 1.0"),
        ({"type": "enum", "default": "a", "minimum": DELETE, "maximum": DELETE}, "choices", "must list at least one"),
        ({"type": "bool", "default": True, "minimum": DELETE}, "maximum", "only an 'int' or 'float' parameter"),
        ({"choices": ["a"]}, "choices", "only an 'enum' parameter has choices"),
        ({"maximum": float("inf")}, "maximum", "must be a finite number"),
    ],
)
def test_parameter_errors_name_the_field_and_say_why(change, field, message):
    document = mutate(PARAMETERS, [valid_document()["models"][0]["versions"][1]["image"]["parameters"][0]])
    parameter = document["models"][0]["versions"][1]["image"]["parameters"][0]
    for key, value in change.items():
        if value is DELETE:
            del parameter[key]
        else:
            parameter[key] = value
    with pytest.raises(IndexValidationError, match=re.escape(message)) as raised:
        parse_index(document)
    assert raised.value.field == f"{THRESHOLD_FIELD}.{field}"


def test_duplicate_parameter_names_are_refused():
    document = mutate((*MODE, "name"), "fast")
    with pytest.raises(IndexValidationError, match="duplicate parameter name 'fast'") as raised:
        parse_index(document)
    assert raised.value.field == f"{IMAGE_FIELD}.parameters[3].name"


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
            # The error is about the changed value: at it or inside it, at a field of the object it belongs to that
            # depends on it (a file's name on its URL, a parameter's default on its choices: a list item belongs to
            # the object holding the list), or at an object holding it that now lacks something.
            path = tuple(field_path(error.field))
            owner = tuple(mutated_path[:-2] if isinstance(mutated_path[-1], int) else mutated_path[:-1])
            assert path[: len(owner)] == owner or tuple(mutated_path[: len(path)]) == path, (mutated_path, error)
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

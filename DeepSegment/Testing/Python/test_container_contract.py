"""DeepSegmentLib.container_contract: request and result files read back exactly what was written, and
anything that breaks the contract is refused with a ContractError naming the part that is wrong."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ModelRegistryLib.files import write_json_atomically

from DeepSegmentLib.container_contract import (
    CONTRACT_VERSION,
    LABEL_MAP_FILE,
    MAX_JSON_BYTES,
    REQUEST_FILE,
    RESULT_FILE,
    ContractError,
    RunRequest,
    RunResult,
    format_progress,
    parse_progress,
    read_request,
    read_result,
)

REQUEST = RunRequest(
    "liver-ct", "1.2.0", (("CT", "input-0.nrrd"), ("PET", "input-1.nrrd")),
    {"fast": True, "threshold": 0.25, "folds": 3, "mode": "full"}, "cuda",
)
RESULT = RunResult("ok", "segmentation.nrrd", ((1, "liver"), (2, "liver tumor")), {"loading": 0.5, "inferring": 12},
                   ("2 labels found",))
READERS = {REQUEST_FILE: read_request, RESULT_FILE: read_result}
UNSAFE_FILE_NAMES = ["../x", "a/b", "", ".", "..", "/etc/passwd", "a\\b", "..\\x", "C:labels.nrrd", None, 3]


def write_text(folder, name: str, text: str) -> None:
    with open(os.path.join(folder, name), "w", encoding="utf-8") as file:
        file.write(text)


def request_document(**changes) -> dict:
    return {**REQUEST.to_json(), **changes}


def result_document(**changes) -> dict:
    return {**RESULT.to_json(), **changes}


def refused(folder, name: str, document) -> str:
    """The ContractError message for ``document`` written as ``name`` (it must be refused)."""
    write_text(folder, name, document if isinstance(document, str) else json.dumps(document))
    with pytest.raises(ContractError) as error:
        READERS[name](str(folder))
    return str(error.value)


# Round trips and defaults


def test_request_round_trip(tmp_path):
    write_json_atomically(str(tmp_path / REQUEST_FILE), REQUEST.to_json())
    assert read_request(str(tmp_path)) == REQUEST
    with open(tmp_path / REQUEST_FILE, encoding="utf-8") as file:
        assert json.load(file) == {
            "contract": CONTRACT_VERSION,
            "model": {"id": "liver-ct", "version": "1.2.0"},
            "device": "cuda",
            "inputs": [{"name": "CT", "file": "input-0.nrrd"}, {"name": "PET", "file": "input-1.nrrd"}],
            "parameters": {"fast": True, "threshold": 0.25, "folds": 3, "mode": "full"},
        }


def test_request_device_and_parameters_default_to_auto_and_none(tmp_path):
    document = request_document()
    del document["device"], document["parameters"]
    write_json_atomically(str(tmp_path / REQUEST_FILE), document)
    request = read_request(str(tmp_path))
    assert (request.device, request.parameters) == ("auto", {})
    assert request.inputs == REQUEST.inputs


@pytest.mark.parametrize("result", [
    RESULT,
    RunResult("error", messages=("CUDA out of memory", "try the CPU")),
    RunResult("ok", labels=((0, "background"), (255, "vessel")), timings={"total": 0}),
], ids=["ok", "error", "defaults"])
def test_result_round_trip(tmp_path, result):
    write_json_atomically(str(tmp_path / RESULT_FILE), result.to_json())
    assert read_result(str(tmp_path)) == result


def test_result_defaults_label_map_labels_timings_and_messages(tmp_path):
    write_json_atomically(str(tmp_path / RESULT_FILE), {"contract": CONTRACT_VERSION, "status": "error"})
    assert read_result(str(tmp_path)) == RunResult("error", LABEL_MAP_FILE, (), {}, ())
    assert LABEL_MAP_FILE == "labels.nrrd"


def test_written_json_replaces_in_one_step_and_leaves_no_partial_file(tmp_path):
    write_json_atomically(str(tmp_path / RESULT_FILE), RunResult("error").to_json())
    write_json_atomically(str(tmp_path / RESULT_FILE), RESULT.to_json())
    assert os.listdir(tmp_path) == [RESULT_FILE]
    assert read_result(str(tmp_path)) == RESULT


def test_written_json_that_fails_keeps_the_previous_file(tmp_path):
    write_json_atomically(str(tmp_path / RESULT_FILE), RESULT.to_json())
    with pytest.raises(TypeError):
        write_json_atomically(str(tmp_path / RESULT_FILE), {**RESULT.to_json(), "timings": {"total": object()}})
    assert read_result(str(tmp_path)) == RESULT


def test_written_json_refuses_what_json_lacks(tmp_path):
    with pytest.raises(ValueError):
        write_json_atomically(str(tmp_path / RESULT_FILE), {**RESULT.to_json(), "timings": {"total": float("nan")}})
    assert os.listdir(tmp_path) == []


def test_written_json_that_fails_leaves_no_partial_file(tmp_path):
    with pytest.raises(TypeError):
        write_json_atomically(str(tmp_path / RESULT_FILE), {"contract": CONTRACT_VERSION, "status": object()})
    assert os.listdir(tmp_path) == []


# What both readers refuse


@pytest.mark.parametrize("name", READERS)
def test_missing_file(tmp_path, name):
    with pytest.raises(ContractError, match=f"^{name} is missing$"):
        READERS[name](str(tmp_path))


@pytest.mark.parametrize("name", READERS)
def test_a_folder_in_place_of_the_file_counts_as_missing(tmp_path, name):
    os.mkdir(tmp_path / name)
    with pytest.raises(ContractError, match="is missing"):
        READERS[name](str(tmp_path))


@pytest.mark.parametrize("name", READERS)
@pytest.mark.parametrize("text", ['{"contract": 1,', "", "not json", "{'contract': 1}"])
def test_not_json(tmp_path, name, text):
    assert refused(tmp_path, name, text).startswith(f"{name} is not valid JSON")


@pytest.mark.parametrize("name", READERS)
def test_not_utf8(tmp_path, name):
    (tmp_path / name).write_bytes(b'{"contract": 1, "status": "\xff\xfe"}')
    with pytest.raises(ContractError, match="is not valid JSON"):
        READERS[name](str(tmp_path))


@pytest.mark.parametrize("name", READERS)
@pytest.mark.parametrize("text", ["[]", "[{\"contract\": 1}]", "1", "null", '"request"'])
def test_not_an_object(tmp_path, name, text):
    assert refused(tmp_path, name, text) == f"{name} must hold a JSON object"


@pytest.mark.parametrize("name", READERS)
@pytest.mark.parametrize("contract", [None, 0, 2, "1", [1]], ids=["missing", "0", "2", "string", "list"])
def test_wrong_contract_version(tmp_path, name, contract):
    document = request_document() if name == REQUEST_FILE else result_document()
    if contract is None:
        del document["contract"]
    else:
        document["contract"] = contract
    message = refused(tmp_path, name, document)
    assert message.startswith(f"{name} has contract {contract!r}")
    assert f"reads contract {CONTRACT_VERSION}" in message


@pytest.mark.parametrize("name", READERS)
def test_contract_true_is_not_version_1(tmp_path, name):
    document = request_document() if name == REQUEST_FILE else result_document()
    refused(tmp_path, name, {**document, "contract": True})


@pytest.mark.parametrize("name", READERS)
def test_file_larger_than_the_limit(tmp_path, name):
    document = json.dumps(request_document() if name == REQUEST_FILE else result_document())
    padded = document[:-1] + " " * (MAX_JSON_BYTES - len(document)) + "}"
    write_text(tmp_path, name, padded)
    assert os.path.getsize(tmp_path / name) == MAX_JSON_BYTES
    READERS[name](str(tmp_path))  # exactly at the limit: read
    write_text(tmp_path, name, padded + "\n")
    with pytest.raises(ContractError, match=f"^{name} is larger than {MAX_JSON_BYTES} bytes$"):
        READERS[name](str(tmp_path))


@pytest.mark.parametrize("name", READERS)
def test_deeply_nested_json_is_refused_as_a_contract_error(tmp_path, name):
    depth = 100_000  # 200 kB, well under MAX_JSON_BYTES
    refused(tmp_path, name, '{"contract": 1, "extra": ' + "[" * depth + "]" * depth + "}")


# request.json


@pytest.mark.parametrize("model", [
    None, "liver-ct", {"id": "liver-ct"}, {"version": "1.2.0"}, {"id": 7, "version": "1.2.0"},
    {"id": "liver-ct", "version": 1.2},
], ids=["missing", "string", "no version", "no id", "numeric id", "numeric version"])
def test_request_bad_model(tmp_path, model):
    document = request_document(model=model)
    if model is None:
        del document["model"]
    assert refused(tmp_path, REQUEST_FILE, document) == (
        "request.json: 'model' must be an object with string 'id' and 'version'")


@pytest.mark.parametrize("inputs", [None, [], {}, "input-0.nrrd", {"name": "CT", "file": "input-0.nrrd"}],
                         ids=["missing", "empty", "empty object", "string", "object"])
def test_request_inputs_must_be_a_non_empty_list(tmp_path, inputs):
    document = request_document(inputs=inputs)
    if inputs is None:
        del document["inputs"]
    assert refused(tmp_path, REQUEST_FILE, document) == "request.json: 'inputs' must be a non-empty list"


@pytest.mark.parametrize("item", ["input-1.nrrd", ["PET", "input-1.nrrd"], {"file": "input-1.nrrd"},
                                  {"name": 2, "file": "input-1.nrrd"}, None],
                         ids=["string", "pair", "no name", "numeric name", "null"])
def test_request_input_must_be_an_object_with_a_name(tmp_path, item):
    document = request_document(inputs=[{"name": "CT", "file": "input-0.nrrd"}, item])
    assert refused(tmp_path, REQUEST_FILE, document) == (
        "request.json: inputs[1] must be an object with a string 'name'")


@pytest.mark.parametrize("file", [*UNSAFE_FILE_NAMES, "missing"], ids=repr)
def test_request_input_file_must_be_a_plain_file_name(tmp_path, file):
    item = {"name": "PET"} if file == "missing" else {"name": "PET", "file": file}
    document = request_document(inputs=[{"name": "CT", "file": "input-0.nrrd"}, item])
    expected = None if file == "missing" else file
    assert refused(tmp_path, REQUEST_FILE, document) == (
        f"request.json: inputs[1].file must be a plain file name, not {expected!r}")


@pytest.mark.parametrize("file", ["input-0.nrrd", "CT image.nii.gz", ".hidden", "...", "ünïcödé.nrrd"])
def test_request_input_file_names_that_are_plain(tmp_path, file):
    write_json_atomically(str(tmp_path / REQUEST_FILE), request_document(inputs=[{"name": "CT", "file": file}]))
    assert read_request(str(tmp_path)).inputs == (("CT", file),)


@pytest.mark.parametrize("parameters", [[], "fast", 1, None, [["fast", True]]], ids=repr)
def test_request_parameters_must_be_an_object(tmp_path, parameters):
    assert refused(tmp_path, REQUEST_FILE, request_document(parameters=parameters)) == (
        "request.json: 'parameters' must be an object")


@pytest.mark.parametrize("device", ["gpu", "CUDA", "cuda:0", "", None, 0, ["cpu"]], ids=repr)
def test_request_unknown_device(tmp_path, device):
    assert refused(tmp_path, REQUEST_FILE, request_document(device=device)) == (
        f"request.json: 'device' must be one of auto, cpu, cuda, not {device!r}")


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda"])
def test_request_known_devices(tmp_path, device):
    write_json_atomically(str(tmp_path / REQUEST_FILE), request_document(device=device))
    assert read_request(str(tmp_path)).device == device


# result.json


@pytest.mark.parametrize("status", [None, "OK", "failed", "", 1, True], ids=repr)
def test_result_bad_status(tmp_path, status):
    document = result_document(status=status)
    if status is None:
        del document["status"]
    assert refused(tmp_path, RESULT_FILE, document) == (
        f"result.json: 'status' must be 'ok' or 'error', not {status!r}")


@pytest.mark.parametrize("messages", ["out of memory", [1], ["ok", None], {"0": "text"}, None, [["nested"]]],
                         ids=repr)
def test_result_messages_must_be_strings(tmp_path, messages):
    assert refused(tmp_path, RESULT_FILE, result_document(messages=messages)) == (
        "result.json: 'messages' must be a list of strings")


@pytest.mark.parametrize("timings", [
    {"inferring": "12.5"}, {"inferring": None}, {"inferring": True}, {"inferring": False},
    {"inferring": float("nan")}, {"inferring": float("inf")}, {"inferring": float("-inf")},
    {"inferring": [12.5]}, [12.5], "12.5", None,
], ids=repr)
def test_result_timings_must_be_finite_numbers(tmp_path, timings):
    # json.dumps writes NaN and Infinity as Python's json module reads them back.
    assert refused(tmp_path, RESULT_FILE, result_document(timings=timings)) == (
        "result.json: 'timings' must map stage names to seconds")


def test_result_timing_too_large_for_a_float_is_a_contract_error(tmp_path):
    refused(tmp_path, RESULT_FILE, result_document(timings={"inferring": 10**400}))


@pytest.mark.parametrize("label", [
    {"value": True, "name": "liver"}, {"value": False, "name": "liver"}, {"value": 1.0, "name": "liver"},
    {"value": 1.5, "name": "liver"}, {"value": "1", "name": "liver"}, {"value": None, "name": "liver"},
    {"name": "liver"}, {"value": 1}, {"value": 1, "name": 1}, "liver", [1, "liver"], None,
], ids=repr)
def test_result_label_must_have_integer_value_and_string_name(tmp_path, label):
    document = result_document(labels=[{"value": 1, "name": "liver"}, label])
    assert refused(tmp_path, RESULT_FILE, document) == (
        "result.json: labels[1] must be an object with integer 'value' and string 'name'")


@pytest.mark.parametrize("labels", [None, 5], ids=repr)
def test_result_labels_that_are_not_a_list(tmp_path, labels):
    refused(tmp_path, RESULT_FILE, result_document(labels=labels))


@pytest.mark.parametrize("label_map", UNSAFE_FILE_NAMES, ids=repr)
def test_result_label_map_must_be_a_plain_file_name(tmp_path, label_map):
    assert refused(tmp_path, RESULT_FILE, result_document(labelMap=label_map)) == (
        f"result.json: 'labelMap' must be a plain file name, not {label_map!r}")


# Progress lines


@pytest.mark.parametrize(("fraction", "line"), [
    (0.25, "PROGRESS: 0.2500 inferring"), (0, "PROGRESS: 0.0000 inferring"), (1, "PROGRESS: 1.0000 inferring"),
    (-0.5, "PROGRESS: 0.0000 inferring"), (1.7, "PROGRESS: 1.0000 inferring"),
    (float("inf"), "PROGRESS: 1.0000 inferring"), (float("-inf"), "PROGRESS: 0.0000 inferring"),
    (1 / 3, "PROGRESS: 0.3333 inferring"),
])
def test_format_progress_clamps_to_0_1(fraction, line):
    assert format_progress(fraction, "inferring") == line


def test_format_progress_of_nan_is_never_a_silent_log_line():
    try:
        line = format_progress(float("nan"), "inferring")
    except ValueError:
        return
    assert parse_progress(line) is not None


@settings(max_examples=200, deadline=None)
@given(
    fraction=st.floats(allow_nan=False),
    stage=st.text(max_size=40).filter(lambda text: text == text.strip() and len(text.splitlines()) <= 1),
)
def test_progress_round_trip(fraction, stage):
    parsed_fraction, parsed_stage = parse_progress(format_progress(fraction, stage))
    assert parsed_stage == stage
    assert 0.0 <= parsed_fraction <= 1.0
    assert parsed_fraction == pytest.approx(min(max(fraction, 0.0), 1.0), abs=5e-5)


@pytest.mark.parametrize(("line", "expected"), [
    ("PROGRESS: 0.5 inferring", (0.5, "inferring")),
    ("PROGRESS: 0.5", (0.5, "")),
    ("PROGRESS: 0.5 ", (0.5, "")),
    ("PROGRESS:0.5 inferring", (0.5, "inferring")),
    ("PROGRESS:    0.5   sliding window 3 of 8  ", (0.5, "sliding window 3 of 8")),
    ("PROGRESS: 1e-1 loading", (0.1, "loading")),
    ("PROGRESS: 1 done", (1.0, "done")),
    ("PROGRESS: -0.2 starting", (0.0, "starting")),
    ("PROGRESS: 3 past the end", (1.0, "past the end")),
    ("PROGRESS: 0.5 PROGRESS: 0.9 nested", (0.5, "PROGRESS: 0.9 nested")),
])
def test_parse_progress(line, expected):
    assert parse_progress(line) == expected


@pytest.mark.parametrize("line", [
    "loading weights", "", "PROGRESS:", "PROGRESS: ", "PROGRESS: half inferring", "PROGRESS: 0,5 inferring",
    "PROGRESS: nan inferring", "PROGRESS: NaN", "PROGRESS: inf inferring", "PROGRESS: -inf", "PROGRESS: infinity",
    "progress: 0.5 inferring", "PROGRESS 0.5 inferring",
    " PROGRESS: 0.5 inferring", "INFO PROGRESS: 0.5 inferring", "step 3/8 (PROGRESS: 0.5 inferring)",
], ids=repr)
def test_other_lines_are_log(line):
    assert parse_progress(line) is None

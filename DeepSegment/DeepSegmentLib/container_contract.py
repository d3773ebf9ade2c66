"""The contract between DeepSegment and a model's container image: what each side writes, and where.

A run has a fresh folder with two parts. DeepSegment writes the input volumes and ``request.json``
into ``input/``, mounted read-only at ``/input``; the container writes the label map and
``result.json`` into ``output/``, mounted at ``/output`` (the only place it may write). Progress goes
to standard output as lines ``PROGRESS: <fraction 0..1> <stage text>``; every other line is log.

``request.json``::

    {"contract": 1, "model": {"id": "liver", "version": "1.2.0"}, "device": "auto",
     "inputs": [{"name": "CT", "file": "input-0.nrrd"}], "parameters": {"fast": false}}

``result.json``::

    {"contract": 1, "status": "ok", "labelMap": "labels.nrrd",
     "labels": [{"value": 1, "name": "liver"}], "timings": {"inferring": 12.5}, "messages": []}

Both files are written with ``ModelRegistryLib.files.write_json_atomically``, so a reader never sees
half of one. A failed run writes ``"status": "error"`` and says why in ``messages``. Volumes are NRRD files in LPS
space (what SimpleITK, ITK and Slicer write); the label map must have the first input's exact grid.

Example::

    >>> import os, tempfile
    >>> from ModelRegistryLib.files import write_json_atomically
    >>> folder = tempfile.mkdtemp()
    >>> request = RunRequest("liver", "1.2.0", (("CT", "input-0.nrrd"),), {"fast": False}, "cpu")
    >>> write_json_atomically(os.path.join(folder, REQUEST_FILE), request.to_json())
    >>> read_request(folder) == request
    True
    >>> parse_progress("PROGRESS: 0.25 inferring"), parse_progress("loading weights")
    ((0.25, 'inferring'), None)
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

CONTRACT_VERSION = 1
INPUT_MOUNT = "/input"
OUTPUT_MOUNT = "/output"
REQUEST_FILE = "request.json"
RESULT_FILE = "result.json"
LABEL_MAP_FILE = "labels.nrrd"
PROGRESS_PREFIX = "PROGRESS:"
DEVICES = ("auto", "cpu", "cuda")
MAX_JSON_BYTES = 1 << 20


class ContractError(ValueError):
    """A request or result that breaks the contract; the message says which part and how."""


@dataclass(frozen=True)
class RunRequest:
    """What a container is asked to do: which model, its inputs as (name, file in /input) pairs, the
    parameter values and the device (``auto``, ``cpu`` or ``cuda``)."""

    model_id: str
    model_version: str
    inputs: tuple
    parameters: dict = field(default_factory=dict)
    device: str = "auto"

    def to_json(self) -> dict:
        return {
            "contract": CONTRACT_VERSION,
            "model": {"id": self.model_id, "version": self.model_version},
            "device": self.device,
            "inputs": [{"name": name, "file": file} for name, file in self.inputs],
            "parameters": dict(self.parameters),
        }


@dataclass(frozen=True)
class RunResult:
    """What a container reports: ``status`` (``ok`` or ``error``), the label map's file name in
    /output, its labels as (value, name) pairs, seconds per stage and messages for the user."""

    status: str
    label_map: str = LABEL_MAP_FILE
    labels: tuple = ()
    timings: dict = field(default_factory=dict)
    messages: tuple = ()

    def to_json(self) -> dict:
        return {
            "contract": CONTRACT_VERSION,
            "status": self.status,
            "labelMap": self.label_map,
            "labels": [{"value": value, "name": name} for value, name in self.labels],
            "timings": dict(self.timings),
            "messages": list(self.messages),
        }


def _read_json(folder: str, name: str) -> dict:
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise ContractError(f"{name} is missing")
    if os.path.getsize(path) > MAX_JSON_BYTES:
        raise ContractError(f"{name} is larger than {MAX_JSON_BYTES} bytes")
    try:
        with open(path, encoding="utf-8") as file:
            document = json.load(file)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise ContractError(f"{name} is not valid JSON: {error}") from error
    if not isinstance(document, dict):
        raise ContractError(f"{name} must hold a JSON object")
    contract = document.get("contract")
    if isinstance(contract, bool) or contract != CONTRACT_VERSION:
        raise ContractError(f"{name} has contract {document.get('contract')!r}; this DeepSegment reads "
                            f"contract {CONTRACT_VERSION}")
    return document


def _safe_file_name(value, what: str) -> str:
    # ':' too: on Windows "C:x" names a file relative to another drive's current folder.
    if not isinstance(value, str) or not value or value in (".", "..") or any(c in value for c in "/\\:"):
        raise ContractError(f"{what} must be a plain file name, not {value!r}")
    return value


def read_request(folder: str) -> RunRequest:
    """The request in ``folder`` (the container's /input), checked against the contract."""
    document = _read_json(folder, REQUEST_FILE)
    model = document.get("model")
    if not isinstance(model, dict) or not all(isinstance(model.get(key), str) for key in ("id", "version")):
        raise ContractError("request.json: 'model' must be an object with string 'id' and 'version'")
    items = document.get("inputs")
    if not isinstance(items, list) or not items:
        raise ContractError("request.json: 'inputs' must be a non-empty list")
    inputs = []
    for number, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ContractError(f"request.json: inputs[{number}] must be an object with a string 'name'")
        inputs.append((item["name"], _safe_file_name(item.get("file"), f"request.json: inputs[{number}].file")))
    parameters = document.get("parameters", {})
    if not isinstance(parameters, dict):
        raise ContractError("request.json: 'parameters' must be an object")
    device = document.get("device", "auto")
    if device not in DEVICES:
        raise ContractError(f"request.json: 'device' must be one of {', '.join(DEVICES)}, not {device!r}")
    return RunRequest(model["id"], model["version"], tuple(inputs), parameters, device)


def read_result(folder: str) -> RunResult:
    """The result in ``folder`` (the container's /output), checked against the contract."""
    document = _read_json(folder, RESULT_FILE)
    status = document.get("status")
    if status not in ("ok", "error"):
        raise ContractError(f"result.json: 'status' must be 'ok' or 'error', not {status!r}")
    messages = document.get("messages", [])
    if not isinstance(messages, list) or not all(isinstance(message, str) for message in messages):
        raise ContractError("result.json: 'messages' must be a list of strings")
    timings = document.get("timings", {})
    if not isinstance(timings, dict) or not all(_is_seconds(seconds) for seconds in timings.values()):
        raise ContractError("result.json: 'timings' must map stage names to seconds")
    items = document.get("labels", [])
    if not isinstance(items, list):
        raise ContractError("result.json: 'labels' must be a list")
    labels = []
    for number, item in enumerate(items):
        value = item.get("value") if isinstance(item, dict) else None
        if not isinstance(value, int) or isinstance(value, bool) or not isinstance(item.get("name"), str):
            raise ContractError(f"result.json: labels[{number}] must be an object with integer 'value' and "
                                "string 'name'")
        labels.append((value, item["name"]))
    label_map = _safe_file_name(document.get("labelMap", LABEL_MAP_FILE), "result.json: 'labelMap'")
    return RunResult(status, label_map, tuple(labels), dict(timings), tuple(messages))


def _is_seconds(value) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def format_progress(fraction: float, stage: str) -> str:
    """The line a container prints to report progress (a fraction that is not a number counts as 0)."""
    fraction = 0.0 if math.isnan(fraction) else min(max(fraction, 0.0), 1.0)
    return f"{PROGRESS_PREFIX} {fraction:.4f} {stage}"


def parse_progress(line: str) -> tuple | None:
    """(fraction, stage) from a progress line, or None for any other line (log output)."""
    if not line.startswith(PROGRESS_PREFIX):
        return None
    parts = line[len(PROGRESS_PREFIX):].strip().split(" ", 1)
    try:
        fraction = float(parts[0])
    except ValueError:
        return None
    if not math.isfinite(fraction):
        return None
    return min(max(fraction, 0.0), 1.0), parts[1].strip() if len(parts) > 1 else ""

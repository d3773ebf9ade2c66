"""The output folder of a batch run: one result file per case, and a record per case saying what made it.

Every case's result is ``<output>/<case id><format>`` (a Slicer ``.seg.nrrd`` with segment names, colors and
terminology by default, or a label map: ``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``), written atomically and verified
(``TrainingDataExportLib.imagefiles.write_image``), then its record ``<output>/.deepsegment-batch/<case id>.json``
(atomically too): the case's fingerprint, the inputs' SHA-256, the model, the options, and the result file's size
and SHA-256. A re-run skips a case when its record has the same fingerprint and the result file is still the one
recorded; a killed run leaves at most a case whose result is newer than its record, which the next run redoes.

The fingerprint covers what changes a result: the content of every input, the model (id, version and the SHA-256
of each of its installed files), and the options that change the labels (quality, precision, the kind of device:
CPUs and GPUs round differently) or the file (its format), plus :data:`RESULT_FORMAT_VERSION`. The number of
threads or workers, the case's path and the time do not count.

Example::

    >>> import os, tempfile
    >>> import numpy as np, SimpleITK as sitk
    >>> from ModelRegistryLib.index import Label
    >>> folder = tempfile.mkdtemp()
    >>> labels = sitk.GetImageFromArray(np.array([[[0, 1], [1, 1]]], np.uint8))
    >>> model = BatchModel("demo", "1.0.0", folder, "0" * 64)
    >>> fingerprint = case_fingerprint(model, {"quality": "fast"}, ".seg.nrrd", ["a" * 64])
    >>> record = write_case_result(folder, "ct01", ".seg.nrrd", labels, [Label(1, "Liver", "#dd8259")],
    ...                            {"fingerprint": fingerprint})
    >>> sorted(os.listdir(folder)), record["output"]["file"]
    (['.deepsegment-batch', 'ct01.seg.nrrd'], 'ct01.seg.nrrd')
    >>> is_up_to_date(folder, "ct01", ".seg.nrrd", fingerprint), is_up_to_date(folder, "ct01", ".seg.nrrd", "other")
    (True, False)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import SimpleITK as sitk
from ModelRegistryLib.download import file_sha256
from ModelRegistryLib.files import is_temporary_name, write_json_atomically

from .imageio import OUTPUT_SUFFIXES, write_labels
from .segfile import SegmentInfo
from .service import narrowed_labels

STATE_FOLDER = ".deepsegment-batch"
SUMMARY_NAME = "batch_summary.json"
DEFAULT_FORMAT = ".seg.nrrd"
OUTPUT_FORMATS = OUTPUT_SUFFIXES
# Part of every fingerprint: a change to how results are made or written makes a re-run redo every case.
RESULT_FORMAT_VERSION = 1


@dataclass(frozen=True)
class BatchModel:
    """The model a batch runs: its id and version, its installed folder, and the SHA-256 of its installed files
    (one digest over the store's manifest entries: a changed file changes it)."""

    model_id: str
    version: str
    folder: str
    files_sha256: str


def output_format(text: str) -> str:
    """The result file ending a format names (``seg.nrrd``, ``.nii.gz``...); ``ValueError`` for an unknown one.

    >>> output_format("nii.gz"), output_format(".seg.nrrd")
    ('.nii.gz', '.seg.nrrd')
    """
    suffix = "." + text.lower().lstrip(".")
    if suffix not in OUTPUT_SUFFIXES:
        raise ValueError(f"Unknown output format {text!r}: use {', '.join(s.lstrip('.') for s in OUTPUT_SUFFIXES)}")
    return suffix


def output_path(folder: str, case_id: str, suffix: str) -> str:
    return os.path.join(folder, case_id + suffix)


def record_path(folder: str, case_id: str) -> str:
    return os.path.join(folder, STATE_FOLDER, case_id + ".json")


def _json_sha256(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def case_fingerprint(model: BatchModel, options: Mapping, suffix: str, input_hashes: Sequence[str]) -> str:
    """The fingerprint of a case's result (see the module description); ``options`` are those that change it."""
    return _json_sha256([RESULT_FORMAT_VERSION, model.model_id, model.version, model.files_sha256, dict(options),
                         suffix, list(input_hashes)])


def read_record(folder: str, case_id: str) -> dict | None:
    """The case's record, or None when there is none or it cannot be read."""
    try:
        with open(record_path(folder, case_id), encoding="utf-8") as file:
            record = json.load(file)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def is_up_to_date(folder: str, case_id: str, suffix: str, fingerprint: str) -> bool:
    """Whether the case's result was made with ``fingerprint`` and its file is still the one recorded."""
    record = read_record(folder, case_id)
    if record is None or record.get("fingerprint") != fingerprint:
        return False
    output = record.get("output") or {}
    path = output_path(folder, case_id, suffix)
    if output.get("file") != os.path.basename(path) or not os.path.isfile(path):
        return False
    if os.path.getsize(path) != output.get("size"):
        return False
    return file_sha256(path) == output.get("sha256")


def segment_infos(labels: Sequence) -> list:
    """What a ``.seg.nrrd`` says of each label (name, color, terminology) for registry or package ``Label``s."""
    return [SegmentInfo(int(label.value), label.name, label.color,
                        label.terminology.slicer_entry() if label.terminology else "") for label in labels]


def write_case_result(folder: str, case_id: str, suffix: str, labels_image: sitk.Image, labels: Sequence,
                      record: Mapping) -> dict:
    """Write a case's result file, then its record (``record`` plus the file's name, size and SHA-256); returns the
    record. Both atomically: an interrupted write leaves the previous files as they were."""
    path = output_path(folder, case_id, suffix)
    write_labels(path, narrowed_labels(labels_image), segment_infos(labels))
    written = dict(record, case_id=case_id,
                   output={"file": os.path.basename(path), "size": os.path.getsize(path), "sha256": file_sha256(path)})
    write_json_atomically(record_path(folder, case_id), written)
    return written


def remove_partial_files(folder: str) -> list:
    """Remove the temporary files interrupted writes left in the output folder and its record folder (their names say
    so: nothing else is named like them); returns their paths."""
    removed = []
    for where in (folder, os.path.join(folder, STATE_FOLDER)):
        if not os.path.isdir(where):
            continue
        for name in os.listdir(where):
            if is_temporary_name(name):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(where, name))
                    removed.append(os.path.join(where, name))
    return removed

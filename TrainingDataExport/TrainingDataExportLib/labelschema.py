"""The label schema of an annotation project, and every case checked against it.

A schema is a JSON file in the model registry's label format, so that a model trained on an export
describes its outputs exactly as the registry lists them::

    {"labels": [{"value": 1, "name": "Liver", "color": "#dd8259",
                 "terminology": {"category": {"scheme": "SCT", "code": "123037004", "meaning": "Anatomical Structure"},
                                 "type": {"scheme": "SCT", "code": "10200004", "meaning": "Liver"}}}]}

It is parsed by ``ModelRegistryLib.index.parse_labels`` into ``ModelRegistryLib.index.Label`` objects
(value, name, color, terminology). New segmentations start from it, and every case is checked against it
(:mod:`~TrainingDataExportLib.checks`): segments missing, extra (matching no label) or misnamed (matched by
terminology only).

Example::

    >>> import os, shutil, tempfile
    >>> from ModelRegistryLib.index import Coding, Label, Terminology
    >>> folder = tempfile.mkdtemp()
    >>> liver = Terminology(Coding("SCT", "123037004", "Anatomical Structure"), Coding("SCT", "10200004", "Liver"))
    >>> path = os.path.join(folder, "labels.json")
    >>> save_label_schema(path, [Label(1, "Liver", "#dd8259", liver), Label(2, "Tumor", "#90d5ff")])
    >>> [(label.value, label.name, label.terminology is not None) for label in load_label_schema(path)]
    [(1, 'Liver', True), (2, 'Tumor', False)]
    >>> shutil.rmtree(folder)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from ModelRegistryLib.files import write_bytes_atomically
from ModelRegistryLib.index import IndexValidationError, parse_labels

DEFAULT_LABEL_SCHEMA_NAME = "labels.json"


class LabelSchemaError(ValueError):
    """A label schema file cannot be used; the message names the file and what to fix."""


def _coding_document(coding) -> dict:
    return {"scheme": coding.scheme, "code": coding.code, "meaning": coding.meaning}


def _label_document(label) -> dict:
    document = {"value": int(label.value), "name": label.name, "color": label.color}
    terminology = label.terminology
    if terminology is not None:
        keys = ("category", "type", "typeModifier", "region", "regionModifier")
        document["terminology"] = {
            key: _coding_document(c) for key, c in zip(keys, terminology.codings) if c is not None
        }
    return document


def label_schema_document(labels: Sequence) -> dict:
    """The JSON document of ``labels`` (what :func:`save_label_schema` writes).

    >>> from ModelRegistryLib.index import Label
    >>> label_schema_document([Label(1, "Liver", "#dd8259")])
    {'labels': [{'value': 1, 'name': 'Liver', 'color': '#dd8259'}]}
    """
    return {"labels": [_label_document(label) for label in labels]}


def parse_label_schema(document, source: str = "") -> tuple:
    """The labels of a decoded schema document, validated; raises :class:`LabelSchemaError`."""
    prefix = f"{source}: " if source else ""
    try:
        labels = parse_labels(document)
    except IndexValidationError as error:
        raise LabelSchemaError(f"{prefix}{error}") from None
    if not labels:
        raise LabelSchemaError(f'{prefix}the schema lists no label: add entries to "labels"')
    return labels


def load_label_schema(path: str) -> tuple:
    """Read and validate the label schema at ``path`` as ``ModelRegistryLib.index.Label`` objects.

    Raises :class:`LabelSchemaError` (a missing or unreadable file, invalid JSON, a label breaking a rule:
    values 1 or more and unique, names unique ignoring case, colors ``#rrggbb``, complete terminology codes).
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8-sig") as file:
            document = json.load(file)
    except OSError as error:
        raise LabelSchemaError(f"cannot read label schema {path}: {error.strerror or error}") from None
    except ValueError as error:
        raise LabelSchemaError(f"{path} is not valid JSON: {error}") from None
    return parse_label_schema(document, os.path.basename(path))


def save_label_schema(path: str, labels: Sequence) -> None:
    """Write ``labels`` to ``path`` atomically (validated first); the previous file is kept as ``path.bak``."""
    document = label_schema_document(labels)
    parse_label_schema(document, os.path.basename(os.fspath(path)))
    data = (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    write_bytes_atomically(path, data, keep_backup=True)

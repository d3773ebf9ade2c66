"""The label schema (TrainingDataExportLib.labelschema): reading, writing, and cases checked against it."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from ModelRegistryLib.index import Coding, Label, Terminology

from TrainingDataExportLib.caselist import Case
from TrainingDataExportLib.checks import case_problems, check_case
from TrainingDataExportLib.labelschema import (
    LabelSchemaError,
    label_schema_document,
    load_label_schema,
    save_label_schema,
)
from TrainingDataExportLib.segmentations import read_label_map
from test_segmentations import LIVER, LIVER_TERMINOLOGY, MASS, blobs, with_geometry, write_seg_nrrd

REGION = Coding("SCT", "10200004", "Liver")
SCHEMA = (
    Label(1, "Liver", "#dd8259", LIVER),
    Label(2, "Tumor", "#90d5ff", Terminology(MASS.category, MASS.type, region=REGION)),
)


def write_json(path, document):
    path.write_text(json.dumps(document), encoding="utf-8")
    return str(path)


def test_save_and_load_round_trip_keeps_every_code(tmp_path):
    path = str(tmp_path / "labels.json")
    save_label_schema(path, SCHEMA)
    assert load_label_schema(path) == SCHEMA
    with open(path, encoding="utf-8") as file:
        document = json.load(file)
    assert document["labels"][1]["terminology"]["region"] == {"scheme": "SCT", "code": "10200004", "meaning": "Liver"}
    # Atomic with a backup, as every file the workflow writes.
    save_label_schema(path, SCHEMA[:1])
    assert load_label_schema(path + ".bak") == SCHEMA
    assert sorted(os.listdir(tmp_path)) == ["labels.json", "labels.json.bak"]


def test_the_document_is_the_registry_label_format():
    assert label_schema_document(SCHEMA[:1]) == {
        "labels": [
            {
                "value": 1,
                "name": "Liver",
                "color": "#dd8259",
                "terminology": {
                    "category": {"scheme": "SCT", "code": "123037004", "meaning": "Anatomical Structure"},
                    "type": {"scheme": "SCT", "code": "10200004", "meaning": "Liver"},
                },
            }
        ]
    }


@pytest.mark.parametrize(
    "document, message",
    [
        ({"labels": []}, "lists no label"),
        ({"labels": [{"value": 0, "name": "x", "color": "#000000"}]}, "labels[0].value: must be 1 or more"),
        (
            {"labels": [{"value": 1, "name": "a", "color": "#000000"}, {"value": 1, "name": "b", "color": "#000000"}]},
            "duplicate label value 1",
        ),
        ({"labels": [{"value": 1, "name": "a", "color": "red"}]}, "labels[0].color"),
        ([1, 2], "must be an object"),
    ],
)
def test_invalid_schemas_name_the_file_and_the_field(tmp_path, document, message):
    path = write_json(tmp_path / "labels.json", document)
    with pytest.raises(LabelSchemaError) as error:
        load_label_schema(path)
    assert str(error.value).startswith("labels.json: ")
    assert message in str(error.value)


def test_unreadable_schemas_say_why(tmp_path):
    with pytest.raises(LabelSchemaError, match="cannot read label schema"):
        load_label_schema(str(tmp_path / "missing.json"))
    (tmp_path / "broken.json").write_text("{", encoding="utf-8")
    with pytest.raises(LabelSchemaError, match="is not valid JSON"):
        load_label_schema(str(tmp_path / "broken.json"))


def test_saving_an_invalid_schema_writes_nothing(tmp_path):
    with pytest.raises(LabelSchemaError):
        save_label_schema(str(tmp_path / "labels.json"), [Label(1, "a", "#000000"), Label(2, "A", "#000000")])
    assert os.listdir(tmp_path) == []


def test_schema_labels_map_segments_by_terminology(tmp_path):
    layer = blobs()
    segments = [{"name": "organ", "value": 1, "terminology": LIVER_TERMINOLOGY}]
    path = write_seg_nrrd(tmp_path / "c.seg.nrrd", [layer], segments)
    label, problems = read_label_map(path, SCHEMA)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label), np.where(layer == 1, 1, 0))
    assert "segment 'organ' is mapped to 'Liver' by its terminology" in [str(p) for p in problems]


def test_check_case_reports_missing_extra_and_misnamed_segments(tmp_path):
    layer = blobs()
    image = str(tmp_path / "c.nrrd")
    sitk.WriteImage(with_geometry(sitk.GetImageFromArray(np.zeros(layer.shape, np.int16))), image)
    segments = [
        {"name": "organ", "value": 1, "terminology": LIVER_TERMINOLOGY},
        {"name": "vessel", "value": 2},
    ]
    path = write_seg_nrrd(tmp_path / "c.seg.nrrd", [layer], segments)
    problems = check_case(Case("c", "p", {"image": image}, path), SCHEMA)
    assert problems == [
        "segment 'organ' is mapped to 'Liver' by its terminology",
        "segment 'vessel' matches no schema label by name or terminology",
        "no segment for label 'Tumor' (2)",
    ]
    assert [p.blocking for p in case_problems(Case("c", "p", {"image": image}, path), SCHEMA)] == [False, True, False]


def test_check_case_reports_missing_files_and_accepts_unannotated_cases(tmp_path):
    image = str(tmp_path / "c.nrrd")
    assert check_case(Case("c", "p", {"image": image}), SCHEMA) == [f"image {image} (image) does not exist"]
    sitk.WriteImage(sitk.Image([4, 4, 2], sitk.sitkInt16), image)
    assert check_case(Case("c", "p", {"image": image}), SCHEMA) == []
    missing = str(tmp_path / "c.seg.nrrd")
    assert check_case(Case("c", "p", {"image": image}, missing), SCHEMA) == [f"segmentation {missing} does not exist"]

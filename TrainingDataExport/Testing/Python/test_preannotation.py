"""Model-assisted annotation in TrainingDataExportLib (preannotation, caselist, card, export): pre-annotated cases
in the case list, and what the dataset card says of how much annotators changed the predictions."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from ModelRegistryLib.files import backup_path
from ModelRegistryLib.index import Label

from TrainingDataExportLib.card import card_markdown
from TrainingDataExportLib.caselist import (
    DONE,
    IN_PROGRESS,
    PRE_ANNOTATED,
    REVIEWED,
    TO_DO,
    Case,
    read_case_list,
    write_case_list,
)
from TrainingDataExportLib.export import ExportSettings, export_dataset
from TrainingDataExportLib.preannotation import label_dice, record_pre_annotations, status_after_loading

SCHEMA = [Label(1, "liver", "#dd8259"), Label(2, "tumor", "#90d5ff"), Label(3, "vessel", "#0000ff")]
SHAPE = (6, 10, 12)


@settings(max_examples=60, deadline=None)
@given(arrays(np.uint8, (4, 5, 6), elements=st.integers(0, 3)), arrays(np.uint8, (4, 5, 6), elements=st.integers(0, 3)))
def test_label_dice_is_the_dice_of_each_label_mask(first, second):
    dice = label_dice(first, second, [1, 2, 3, 4])
    for value in (1, 2, 3, 4):
        a, b = first == value, second == value
        if not a.any() and not b.any():
            assert dice[value] is None
        else:
            assert dice[value] == pytest.approx(2 * np.sum(a & b) / (a.sum() + b.sum()), abs=1e-6)


def test_label_dice_refuses_maps_that_cannot_be_compared():
    with pytest.raises(ValueError, match="cannot be compared"):
        label_dice(np.zeros(4, np.uint8), np.zeros(5, np.uint8), [1])
    with pytest.raises(ValueError, match="0 or more"):
        label_dice(np.array([0, -1]), np.array([0, 1]), [1])


def test_a_case_loaded_for_correction_is_in_progress_and_a_finished_one_keeps_its_status():
    assert status_after_loading(Case("a", "p", {"image": "a.nrrd"}, pre_annotation="a.seg.nrrd")) == IN_PROGRESS
    assert status_after_loading(Case("b", "p", {"image": "b.nrrd"})) == IN_PROGRESS
    assert status_after_loading(Case("c", "p", {"image": "c.nrrd"}, "c.seg.nrrd", status=DONE)) == DONE


def test_predictions_are_recorded_only_for_cases_nobody_started_and_survive_a_round_trip(tmp_path):
    path = str(tmp_path / "cases.csv")
    cases = [
        Case("todo", "p1", {"image": "todo.nrrd"}),
        Case("again", "p2", {"image": "again.nrrd"}, pre_annotation="old/again.seg.nrrd", model_id="m",
             model_version="0.9"),
        Case("started", "p3", {"image": "started.nrrd"}, "started.seg.nrrd", pre_annotation="old/s.seg.nrrd",
             model_id="m", model_version="0.9", status=IN_PROGRESS),
        Case("reviewed", "p4", {"image": "reviewed.nrrd"}, "reviewed.seg.nrrd", status=REVIEWED),
        Case("marked", "p5", {"image": "marked.nrrd"}, status=DONE),
    ]
    write_case_list(path, cases)
    predictions = {case.case_id: (str(tmp_path / "predicted" / f"{case.case_id}.seg.nrrd"), "m", "1.0")
                   for case in cases}
    assert record_pre_annotations(path, predictions) == ["todo", "again"]
    read = {case.case_id: case for case in read_case_list(path)}
    for case_id in ("todo", "again"):
        assert read[case_id].status == PRE_ANNOTATED and read[case_id].pre_annotated
        assert read[case_id].pre_annotation == str(tmp_path / "predicted" / f"{case_id}.seg.nrrd")
        assert (read[case_id].model_id, read[case_id].model_version) == ("m", "1.0")
    assert read["started"].pre_annotation == str(tmp_path / "old" / "s.seg.nrrd")
    assert read["started"].model_version == "0.9" and read["started"].status == IN_PROGRESS
    assert not read["reviewed"].pre_annotated and read["marked"].status == DONE
    with open(path, encoding="utf-8") as file:
        assert "todo,p1,todo.nrrd,,pre-annotated,,0,predicted/todo.seg.nrrd,m,1.0" in file.read().splitlines()
    assert os.path.isfile(backup_path(path))
    # Nothing to change: the file and its backup are left as they are.
    stamp = os.stat(path).st_mtime_ns
    assert record_pre_annotations(path, {"reviewed": predictions["reviewed"]}) == []
    assert os.stat(path).st_mtime_ns == stamp


def test_an_empty_status_with_a_prediction_reads_as_pre_annotated(tmp_path):
    path = tmp_path / "cases.csv"
    path.write_text("case_id,patient_id,image,segmentation,pre_annotation,model_id,model_version\n"
                    "a,p1,a.nrrd,,out/a.seg.nrrd,liver-ct,2.0.0\n", encoding="utf-8")
    (case,) = read_case_list(str(path))
    assert case.status == PRE_ANNOTATED and case.pre_annotation == str(tmp_path / "out" / "a.seg.nrrd")
    assert (case.model_id, case.model_version) == ("liver-ct", "2.0.0")


def _image(array, path):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.8, 2.0))
    image.SetOrigin((3.0, -4.0, 10.0))
    sitk.WriteImage(image, path, True)
    return path


def _pre_annotated_cases(folder):
    """Four cases: two started from a model's prediction (one corrected, one kept as it was), two from scratch."""
    rng = np.random.default_rng(5)
    final = np.zeros(SHAPE, np.uint8)
    final[1:5, 2:8, 3:9] = 1
    final[2:4, 4:6, 5:7] = 2
    corrected = final.copy()
    corrected[1:5, 2:8, 8] = 0  # the annotator added a column of liver voxels...
    corrected[3, 0:2, 0:2] = 2  # ...and removed a false tumor
    cases = []
    for number, (prediction, seconds) in enumerate([(corrected, 120), (final, 30), (None, 600), (None, 900)]):
        case_id = f"c{number}"
        image = _image(rng.normal(100, 20, SHAPE).astype(np.int16), os.path.join(folder, f"{case_id}.nrrd"))
        label = _image(final, os.path.join(folder, f"{case_id}_seg.nrrd"))
        case = Case(case_id, f"p{number}", {"image": image}, label, annotator="ann", time_spent=seconds,
                    status=DONE)
        if prediction is not None:
            case.pre_annotation = _image(prediction, os.path.join(folder, f"{case_id}_prediction.nii.gz"))
            case.model_id, case.model_version = "liver-ct", "2.0.0"
        cases.append(case)
    return cases, final, corrected


def _card(output):
    with open(os.path.join(output, "dataset_card.json"), encoding="utf-8") as file:
        return json.load(file)


def test_the_dataset_card_says_which_labels_started_from_a_model_and_how_much_they_changed(tmp_path):
    cases, final, corrected = _pre_annotated_cases(str(tmp_path))
    output = str(tmp_path / "export")
    export_dataset(cases, SCHEMA, output, ExportSettings("pairs"), folds=2, test_fraction=0.0)
    card = _card(output)
    liver = 2 * np.sum((final == 1) & (corrected == 1)) / (np.sum(final == 1) + np.sum(corrected == 1))
    tumor = 2 * np.sum((final == 2) & (corrected == 2)) / (np.sum(final == 2) + np.sum(corrected == 2))
    by_case = {case["case_id"]: case for case in card["cases"]}
    assert by_case["c0"]["pre_annotation"] == {"model_id": "liver-ct", "model_version": "2.0.0", "problem": "",
                                               "dice": {"1": pytest.approx(liver, abs=1e-6),
                                                        "2": pytest.approx(tumor, abs=1e-6), "3": None}}
    assert by_case["c1"]["pre_annotation"]["dice"] == {"1": 1.0, "2": 1.0, "3": None}
    assert by_case["c2"]["pre_annotation"] is None and by_case["c2"]["time_spent_s"] == 600
    summary = card["pre_annotations"]
    assert summary["cases"] == 2
    assert summary["models"] == [{"model_id": "liver-ct", "model_version": "2.0.0", "cases": 2}]
    assert summary["labels"][0]["dice"] == {"min": pytest.approx(liver, abs=1e-5), "median": pytest.approx(
        (liver + 1) / 2, abs=1e-5), "max": 1.0}
    assert summary["labels"][2] == {"value": 3, "name": "vessel", "cases": 0, "dice": None}
    assert summary["time_spent_s"] == {"pre_annotated": {"min": 30, "median": 75, "max": 120},
                                       "from_scratch": {"min": 600, "median": 750, "max": 900}}
    markdown = card_markdown(card)
    assert "2 of 4 cases started from a model's prediction, which the annotators corrected: liver-ct 2.0.0 (2)." \
        in markdown
    assert "| pre-annotated | 30 | 75 | 120 |" in markdown
    with open(os.path.join(output, "dataset_card.md"), encoding="utf-8") as file:
        assert file.read() == markdown
    # The prediction is one of the case's sources.
    assert cases[0].pre_annotation in by_case["c0"]["source_sha256"]


def test_a_changed_or_deleted_prediction_updates_the_card_and_rewrites_only_its_case(tmp_path):
    cases, _, _ = _pre_annotated_cases(str(tmp_path))
    output = str(tmp_path / "export")
    export_dataset(cases, SCHEMA, output, ExportSettings("pairs"), folds=2, test_fraction=0.0)
    report = export_dataset(cases, SCHEMA, output, ExportSettings("pairs"), folds=2, test_fraction=0.0)
    assert report.written == []
    empty = np.zeros(SHAPE, np.uint8)
    _image(empty, cases[1].pre_annotation)
    os.remove(cases[0].pre_annotation)
    report = export_dataset(cases, SCHEMA, output, ExportSettings("pairs"), folds=2, test_fraction=0.0)
    assert report.written == ["c0", "c1"]
    by_case = {case["case_id"]: case for case in _card(output)["cases"]}
    assert by_case["c1"]["pre_annotation"]["dice"] == {"1": 0.0, "2": 0.0, "3": None}
    assert by_case["c0"]["pre_annotation"]["problem"].startswith("the prediction ")
    assert "no longer exists" in by_case["c0"]["pre_annotation"]["problem"]
    assert any(warning.startswith("case 'c0' was pre-annotated, but the prediction") for warning in report.warnings)
    # The time spent is the case list's: a change rewrites the case, so the card never shows an old one.
    cases[1].time_spent = 45
    assert export_dataset(cases, SCHEMA, output, ExportSettings("pairs"), folds=2, test_fraction=0.0).written == ["c1"]
    assert {case["case_id"]: case for case in _card(output)["cases"]}["c1"]["time_spent_s"] == 45


def test_a_case_list_nobody_pre_annotated_is_written_as_before(tmp_path):
    path = str(tmp_path / "cases.csv")
    write_case_list(path, [Case("a", "p1", {"image": "a.nrrd"}, status=TO_DO)])
    with open(path, encoding="utf-8") as file:
        header, row = file.read().splitlines()
    assert header == "case_id,patient_id,image,segmentation,status,annotator,time_spent"
    assert row == "a,p1,a.nrrd,,to do,,0"

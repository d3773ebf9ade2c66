"""Cohorts: pairing files by case id or through a case list, labels by value or segment name, failing
cases, progress and cancel, and reports that survive JSON."""

from __future__ import annotations

import json
import math
import os
import threading

import numpy as np
import pytest
import SimpleITK as sitk
from evaluation_cases import label_map_pair

from DeepSegmentLib.evaluation import BOTH_EMPTY, EvaluationError, label_map_metrics
from DeepSegmentLib.evaluation_cohort import (
    CasePair,
    EvaluationCancelledError,
    EvaluationReport,
    Pairing,
    evaluate_case,
    evaluate_cohort,
    file_schema,
    label_files,
    match_segments,
    pair_case_list,
    pair_folders,
)
from DeepSegmentLib.segfile import SegmentInfo, write_segmentation
from ModelRegistryLib.index import Label
from TrainingDataExportLib import Case, save_label_schema, write_case_list

SPACING = (0.9, 1.1, 2.5)


def write_label_map(path, array: np.ndarray, spacing=SPACING) -> str:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    sitk.WriteImage(image, str(path))
    return str(path)


def write_seg_nrrd(path, array: np.ndarray, segments) -> str:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    write_segmentation(str(path), image, segments)
    return str(path)


def test_folders_pair_by_case_id_and_list_the_rest(tmp_path):
    array = np.zeros((4, 4, 4), np.uint8)
    for name in ("ct01_seg.nii.gz", "ct02.seg.nrrd", "ct03_label.nrrd", ".hidden.nrrd", "ct01.recovery.seg.nrrd"):
        write_label_map(tmp_path / "reference" / name, array)
    for name in ("ct01.nii.gz", "ct02.nii.gz", "ct10.nii.gz"):
        write_label_map(tmp_path / "prediction" / name, array)
    (tmp_path / "prediction" / "report.json").write_text("{}")
    pairing = pair_folders(str(tmp_path / "reference"), str(tmp_path / "prediction"))
    assert [(pair.case_id, os.path.basename(pair.reference), os.path.basename(pair.prediction))
            for pair in pairing.pairs] == [("ct01", "ct01_seg.nii.gz", "ct01.nii.gz"),
                                           ("ct02", "ct02.seg.nrrd", "ct02.nii.gz")]
    assert pairing.reference_only == ("ct03",)
    assert pairing.prediction_only == ("ct10",)


def test_two_files_for_one_case_are_refused(tmp_path):
    array = np.zeros((4, 4, 4), np.uint8)
    write_label_map(tmp_path / "ct01.nii.gz", array)
    write_label_map(tmp_path / "ct01_seg.nrrd", array)
    with pytest.raises(EvaluationError, match=r"several files for one case: ct01\.nii\.gz and ct01_seg\.nrrd"):
        label_files(str(tmp_path))
    with pytest.raises(EvaluationError, match="folder not found"):
        label_files(str(tmp_path / "missing"))


def test_plain_label_maps_are_compared_by_value_and_missing_labels_are_both_empty(tmp_path):
    first_reference, first_prediction = label_map_pair(1, shape=(20, 24, 28), labels=2)
    second_reference, second_prediction = label_map_pair(2, shape=(20, 24, 28), labels=3)
    pairs = []
    for case_id, reference, prediction in (("a", first_reference, first_prediction),
                                           ("b", second_reference, second_prediction)):
        pairs.append(CasePair(case_id, write_label_map(tmp_path / "ref" / f"{case_id}.nrrd", reference),
                              write_label_map(tmp_path / "pred" / f"{case_id}.nii.gz", prediction)))
    report = evaluate_cohort(pairs, tolerance_mm=1.5)
    assert [(label.value, label.name) for label in report.labels] == [(1, "Label 1"), (2, "Label 2"), (3, "Label 3")]
    first, second = report.cases
    assert first.labels[2].status == BOTH_EMPTY  # case "a" has no label 3 at all
    assert first.labels[:2] == label_map_metrics(first_reference, first_prediction, SPACING, [1, 2], 1.5)
    assert second.labels == label_map_metrics(second_reference, second_prediction, SPACING, [1, 2, 3], 1.5)


def test_case_list_references_are_matched_to_predictions_by_segment_name(tmp_path):
    """The annotator's .seg.nrrd stores Liver as 3 and Tumor as 1; the schema and the model say 1 and 2."""
    schema = [Label(1, "Liver", "#dd8259"), Label(2, "Tumor", "#90d5ff")]
    save_label_schema(str(tmp_path / "labels.json"), schema)
    reference, prediction = label_map_pair(3, shape=(24, 28, 32), labels=2)
    in_file = np.select([reference == 1, reference == 2], [3, 1], 0).astype(np.uint8)
    segments = [SegmentInfo(3, "liver", "#dd8259"), SegmentInfo(1, "Tumor", "#90d5ff")]
    cases = [
        Case("ct01", "p1", {"image": write_label_map(tmp_path / "ct01.nrrd", np.zeros_like(reference))},
             write_seg_nrrd(tmp_path / "ct01.seg.nrrd", in_file, segments)),
        Case("ct02", "p2", {"image": write_label_map(tmp_path / "ct02.nrrd", np.zeros_like(reference))},
             write_seg_nrrd(tmp_path / "ct02.seg.nrrd", in_file, segments)),
        Case("ct03", "p3", {"image": write_label_map(tmp_path / "ct03.nrrd", np.zeros_like(reference))}),
    ]
    write_case_list(str(tmp_path / "cases.csv"), cases)
    write_label_map(tmp_path / "predicted" / "ct01.nii.gz", prediction)
    write_label_map(tmp_path / "predicted" / "ct09.nii.gz", prediction)
    pairing = pair_case_list(str(tmp_path / "cases.csv"), str(tmp_path / "predicted"))
    assert [pair.case_id for pair in pairing.pairs] == ["ct01"]
    assert pairing.pairs[0].image == str(tmp_path / "ct01.nrrd")
    assert (pairing.reference_only, pairing.prediction_only, pairing.unannotated) == (("ct02",), ("ct09",), ("ct03",))
    assert [label.name for label in pairing.labels] == ["Liver", "Tumor"]
    report = evaluate_cohort(pairing, tolerance_mm=2.0)
    assert report.cases[0].labels == label_map_metrics(reference, prediction, SPACING, schema, 2.0)
    assert report.cases[0].notes == []
    assert report.source["labels"] == str(tmp_path / "labels.json")


def test_without_a_schema_the_first_segmentation_file_names_the_labels(tmp_path):
    reference, prediction = label_map_pair(4, shape=(20, 20, 24), labels=2)
    segments = [SegmentInfo(1, "Kidney", "#ff0000"), SegmentInfo(2, "Cyst", "#00ff00")]
    pair = CasePair("k1", write_seg_nrrd(tmp_path / "k1_ref.seg.nrrd", reference, segments),
                    write_seg_nrrd(tmp_path / "k1.seg.nrrd", prediction, segments[::-1]))
    assert [(label.value, label.name, label.color) for label in file_schema(pair.reference)] == [
        (1, "Kidney", "#ff0000"), (2, "Cyst", "#00ff00")]
    assert file_schema(write_label_map(tmp_path / "plain.nrrd", reference)) is None
    case = evaluate_case(pair, tolerance_mm=1.0)
    assert case.error == ""
    assert case.labels == label_map_metrics(reference, prediction, SPACING,
                                            [Label(1, "Kidney", "#ff0000"), Label(2, "Cyst", "#00ff00")], 1.0)


def test_values_outside_the_schema_are_noted(tmp_path):
    reference, prediction = label_map_pair(5, shape=(16, 16, 16), labels=3)
    pair = CasePair("c", write_label_map(tmp_path / "r.nrrd", reference),
                    write_label_map(tmp_path / "p.nrrd", prediction))
    case = evaluate_case(pair, labels=[1, 2])
    assert [result.value for result in case.labels] == [1, 2]
    assert "reference: extra label value 3 (not in the schema)" in case.notes


def test_a_bad_case_is_reported_and_the_others_go_on(tmp_path):
    reference, prediction = label_map_pair(6, shape=(16, 16, 16), labels=1)
    good = CasePair("good", write_label_map(tmp_path / "good_ref.nrrd", reference),
                    write_label_map(tmp_path / "good.nrrd", prediction))
    (tmp_path / "broken.nrrd").write_text("not an image")
    broken = CasePair("broken", good.reference, str(tmp_path / "broken.nrrd"))
    missing = CasePair("missing", good.reference, str(tmp_path / "nothing.nrrd"))
    floats = CasePair("floats", good.reference,
                      write_label_map(tmp_path / "floats.nrrd", prediction.astype(np.float32) + 0.5))
    report = evaluate_cohort([broken, good, missing, floats], labels=[1])
    errors = {case.case_id: case.error for case in report.cases}
    assert errors["good"] == ""
    assert "Cannot read" in errors["broken"] and "broken.nrrd" in errors["broken"]
    assert errors["missing"].startswith("file not found")
    assert "non-integer values" in errors["floats"] or "type float" in errors["floats"]
    assert [case.case_id for case in report.failed] == ["broken", "missing", "floats"]
    assert all("\n" not in error for error in errors.values())


def test_float_label_maps_with_whole_values_are_read_as_labels(tmp_path):
    reference, prediction = label_map_pair(7, shape=(16, 16, 16), labels=2)
    pair = CasePair("f", write_label_map(tmp_path / "r.nii.gz", reference.astype(np.float32)),
                    write_label_map(tmp_path / "p.nii.gz", prediction.astype(np.float32)))
    spacing = sitk.ReadImage(pair.reference).GetSpacing()  # NIfTI keeps it in single precision
    assert evaluate_case(pair).labels == label_map_metrics(reference, prediction, spacing, [1, 2])


def test_progress_and_cancel(tmp_path):
    reference, prediction = label_map_pair(8, shape=(12, 12, 12), labels=1)
    pairs = [CasePair(f"c{n}", write_label_map(tmp_path / f"r{n}.nrrd", reference),
                      write_label_map(tmp_path / f"p{n}.nrrd", prediction)) for n in range(3)]
    steps = []
    evaluate_cohort(pairs, progress=lambda fraction, message: steps.append((fraction, message)))
    assert steps[0] == (0.0, "case c0 (1 of 3)") and steps[-1] == (1.0, "evaluated 3 cases")
    cancel = threading.Event()

    def cancel_after_first(fraction, message):
        if fraction > 0:
            cancel.set()

    with pytest.raises(EvaluationCancelledError):
        evaluate_cohort(pairs, progress=cancel_after_first, cancel=cancel)


def test_a_bad_tolerance_stops_before_any_case():
    with pytest.raises(EvaluationError, match="tolerance"):
        evaluate_cohort([CasePair("x", "missing", "missing")], tolerance_mm=math.nan)


def test_report_survives_json(tmp_path):
    reference, prediction = label_map_pair(9, shape=(16, 18, 20), labels=3, miss=0.5)
    pair = CasePair("c", write_label_map(tmp_path / "r.nrrd", reference),
                    write_label_map(tmp_path / "p.nrrd", prediction))
    broken = CasePair("x", pair.reference, str(tmp_path / "missing.nrrd"))
    report = evaluate_cohort(Pairing((pair, broken), reference_only=("r9",), prediction_only=("p9",)), labels=[1, 2, 3])
    text = json.dumps(report.to_json(), allow_nan=False)
    back = EvaluationReport.from_json(json.loads(text))
    assert back.to_json() == report.to_json()
    assert [result.status for result in back.cases[0].labels] == [result.status for result in report.cases[0].labels]
    assert (back.reference_only, back.prediction_only) == (["r9"], ["p9"])


def slicer_terminology(code: str, meaning: str) -> str:
    """A serialized Slicer terminology entry of an anatomical structure."""
    return (f"Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure~"
            f"SCT^{code}^{meaning}~^^~Anatomic codes - DICOM master list~^^~^^")


def test_segments_match_by_name_else_by_a_distinctive_terminology():
    liver, kidney = slicer_terminology("10200004", "Liver"), slicer_terminology("64033007", "Kidney")
    tissue = slicer_terminology("85756007", "Tissue")  # what Slicer gives a segment made without a terminology
    reference = [("Liver", liver), ("Left kidney", kidney), ("Lesion", tissue), ("Cyst", tissue)]
    prediction = [("Segment_1", tissue), ("Hepar", liver), ("Segment_3", tissue), ("Ren", kidney), ("lesion", "")]
    assert match_segments(reference, prediction) == [1, 3, 4, None]

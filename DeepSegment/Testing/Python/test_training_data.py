"""Training data (DeepSegmentLib.training_data): exports written by TrainingDataExport and case lists, read with
their patients, held-out test set and folds, on real files."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from ModelRegistryLib.index import Label
from training_cases import LABELS, write_case_list, write_export

from DeepSegmentLib.training_data import (
    TrainingDataError,
    export_root,
    read_case_images,
    read_case_labels,
    read_training_data,
    reference_label_map,
)
from TrainingDataExportLib import Case, ExportSettings, export_dataset, read_case_list, save_label_schema
from TrainingDataExportLib.manifest import JOURNAL_NAME


@pytest.fixture(scope="module")
def case_list(tmp_path_factory):
    return write_case_list(str(tmp_path_factory.mktemp("cases")))


def patients_of(data, case_ids):
    return {data.case(case_id).patient_id for case_id in case_ids}


@pytest.mark.parametrize("export_format", ["nnunet", "monai", "pairs"])
def test_an_export_is_read_with_its_patients_test_set_and_folds(case_list, tmp_path, export_format):
    root = write_export(case_list, str(tmp_path / "export"), export_format)
    data = read_training_data(root)
    with open(os.path.join(root, ".training-data-export.json"), encoding="utf-8") as file:
        manifest = json.load(file)
    assert data.kind == export_format and data.channels == ("image",)
    assert [label.name for label in data.labels] == ["organ", "lesion"] and data.file_values == (1, 2)
    assert {case.case_id for case in data.cases} == set(manifest["cases"])
    for case in data.cases:
        summary = manifest["cases"][case.case_id]["summary"]
        assert (case.patient_id, case.subset, case.fold) == (summary["patient_id"], summary["subset"],
                                                            summary["validation_fold"])
        assert all(os.path.isfile(path) for path in (*case.images, case.label))
    for fold in (0, 1):
        partition = data.partition(fold)
        sides = [patients_of(data, ids) for ids in (partition.train, partition.validation, partition.test)]
        assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
        assert set(partition.test) == set(manifest["split"]["test"])
        assert set(partition.validation) == set(manifest["split"]["folds"][fold]["validation"])
    # Its index file and, for nnU-Net, the nnUNet_raw folder around it mean the same export.
    index = {"nnunet": "dataset.json", "monai": "datalist.json", "pairs": "pairs.csv"}[export_format]
    assert read_training_data(os.path.join(root, index)).cases == data.cases
    if export_format == "nnunet":
        assert export_root(str(tmp_path / "export")) == root


def test_a_case_list_is_split_by_patient_as_an_export_would_split_it(case_list, tmp_path):
    data = read_training_data(case_list, folds=2, test_fraction=0.2)
    exported = read_training_data(write_export(case_list, str(tmp_path / "export"), "monai"))
    assert data.kind == "cases" and data.labels == LABELS
    assert data.partition(0).test and patients_of(data, data.partition(0).test).isdisjoint(
        patients_of(data, data.split.train))
    # The same cases, patients and annotators; the export's split is stratified by label, the case list's not.
    assert {(case.case_id, case.patient_id, case.annotator) for case in data.cases} == \
        {(case.case_id, case.patient_id, case.annotator) for case in exported.cases}


def test_without_folds_validation_patients_are_drawn_from_the_training_patients(case_list, tmp_path):
    data = read_training_data(write_export(case_list, str(tmp_path / "export"), "nnunet", folds=0))
    assert data.split.folds == ()
    partition = data.partition(fold=0, validation_fraction=0.3, seed=4)
    assert partition.fold is None and partition.validation
    assert set(partition.train) | set(partition.validation) == set(data.split.train)
    assert patients_of(data, partition.train).isdisjoint(patients_of(data, partition.validation))
    assert partition == data.partition(None, 0.3, 4)  # seeded


def test_labels_renumbered_for_nnunet_come_back_with_the_schema_values(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    schema = [Label(1, "organ", "#dd8259"), Label(3, "lesion", "#90d5ff")]
    cases = []
    for index in range(4):
        label = np.zeros((6, 8, 8), np.uint8)
        label[1:4, 2:6, 2:6] = 1
        label[2, 3:5, 3:5] = 3
        paths = [str(folder / f"c{index}{suffix}.nrrd") for suffix in ("", "_seg")]
        sitk.WriteImage(sitk.GetImageFromArray(np.full((6, 8, 8), index, np.int16)), paths[0])
        sitk.WriteImage(sitk.GetImageFromArray(label), paths[1])
        cases.append(Case(f"c{index}", f"p{index}", {"image": paths[0]}, paths[1]))
    export_dataset(cases, schema, str(tmp_path / "raw"), ExportSettings("nnunet", channel_names=("CT",)), folds=2,
                   test_fraction=0.0)
    data = read_training_data(str(tmp_path / "raw"))
    assert [label.value for label in data.labels] == [1, 3] and data.file_values == (1, 2)
    assert data.modalities == ("CT",)  # nnU-Net's channel name says how it is normalized
    case = data.cases[0]
    image = read_case_images(case)[0]
    file_values = np.unique(sitk.GetArrayFromImage(sitk.ReadImage(case.label)))
    classes = np.unique(sitk.GetArrayFromImage(read_case_labels(data, case, image)))
    values = np.unique(sitk.GetArrayFromImage(reference_label_map(data, case, image)))
    assert file_values.tolist() == [0, 1, 2] and classes.tolist() == [0, 1, 2] and values.tolist() == [0, 1, 3]
    # A schema given for the colors and terminology must be the export's.
    path = str(tmp_path / "labels.json")
    save_label_schema(path, schema)
    assert read_training_data(str(tmp_path / "raw"), path).labels == tuple(schema)
    save_label_schema(path, [Label(1, "organ", "#dd8259")])
    with pytest.raises(TrainingDataError, match="does not match the export's labels"):
        read_training_data(str(tmp_path / "raw"), path)


def test_data_that_cannot_train_is_refused_in_one_line(case_list, tmp_path):
    def refused(path, match, **options):
        with pytest.raises(TrainingDataError, match=match) as raised:
            read_training_data(str(path), **options)
        assert "\n" not in str(raised.value)

    refused(tmp_path / "nothing", "not found")
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(empty, "neither a case list nor a folder exported")
    raw = tmp_path / "raw"
    for name in ("Dataset001_A", "Dataset002_B"):  # a folder so named is the dataset folder itself
        write_export(case_list, str(raw / name), "nnunet")
    refused(raw, "holds several exports")
    root = write_export(case_list, str(tmp_path / "unfinished"), "monai")
    open(os.path.join(root, JOURNAL_NAME), "w").close()
    refused(root, "did not finish")
    slices = tmp_path / "slices"
    export_dataset(read_case_list(case_list), LABELS, str(slices), ExportSettings("slices2d"), folds=2)
    refused(slices, "slices2d export")
    # A case list: its schema beside it, annotated cases, and every case passing the export's checks.
    folder = os.path.dirname(case_list)
    os.rename(os.path.join(folder, "labels.json"), os.path.join(folder, "moved.json"))
    try:
        refused(case_list, "labels.json beside the case list")
        bad = tmp_path / "bad.json"
        save_label_schema(str(bad), [Label(1, "organ", "#dd8259")])
        refused(case_list, "cannot be used: .*extra label value 2", labels_path=str(bad))
    finally:
        os.rename(os.path.join(folder, "moved.json"), os.path.join(folder, "labels.json"))
    with pytest.raises(TrainingDataError, match="fold 5 does not exist"):
        read_training_data(case_list, folds=2).partition(5)

"""Exports read by the field's own code: nnU-Net v2's dataset integrity check and MONAI's datalist loaders
(nnunetv2 and monai are test-only dependencies), with non-consecutive label values, named channels, folds and
nnU-Net dataset folders."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from fault_injection import run_python
from ModelRegistryLib.index import Label

from TrainingDataExportLib.caselist import Case
from TrainingDataExportLib.export import ExportError, ExportSettings, export_dataset

# Label values with a gap, as many label schemas have (a retired label, values shared with another project).
SCHEMA = [Label(1, "liver", "#dd8259"), Label(3, "tumor", "#90d5ff")]


@pytest.fixture
def cases(tmp_path):
    found = []
    for index in range(6):
        rng = np.random.default_rng(index)
        image = sitk.GetImageFromArray(rng.normal(0, 300, (8, 16, 16)).astype(np.int16))
        image.SetSpacing((0.8, 0.8, 2.5))
        label = np.zeros((8, 16, 16), np.uint8)
        label[2:6, 3:12, 4:13] = 1
        label[3:5, 6:9, 6 : 8 + index % 3] = 3
        label_image = sitk.GetImageFromArray(label)
        label_image.CopyInformation(image)
        paths = [str(tmp_path / f"ct{index}{suffix}.nrrd") for suffix in ("", "_seg")]
        sitk.WriteImage(image, paths[0])
        sitk.WriteImage(label_image, paths[1])
        found.append(Case(f"ct{index}", f"p{index // 2}", {"image": paths[0]}, paths[1]))
    return found


def nnunet_integrity_check(folder) -> str:
    """nnU-Net's own ``verify_dataset_integrity`` on ``folder``; "" when it passes, else its error."""
    result = run_python(
        "import warnings; warnings.simplefilter('ignore')\n"
        "from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity\n"
        f"verify_dataset_integrity({str(folder)!r}, 1)\n",
        cwd=str(folder),
        timeout=600,
    )
    return "" if result.returncode == 0 else (result.stderr.strip().splitlines() or ["failed"])[-1]


def test_nnunet_accepts_the_export_with_consecutive_labels_and_named_channels(cases, tmp_path):
    settings = ExportSettings("nnunet", dataset_id=7, dataset_name="Liver", channel_names=("CT",))
    report = export_dataset(cases, SCHEMA, str(tmp_path / "nnUNet_raw"), settings, folds=2, test_fraction=0.3)
    root = tmp_path / "nnUNet_raw" / "Dataset007_Liver"
    assert nnunet_integrity_check(root) == ""
    dataset = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    assert dataset["labels"] == {"background": 0, "liver": 1, "tumor": 2}
    assert dataset["channel_names"] == {"0": "CT"}
    for name in os.listdir(root / "labelsTr"):
        values = set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(root / "labelsTr" / name)))).tolist())
        assert values == {0, 1, 2}
    card = json.loads((root / "dataset_card.json").read_text(encoding="utf-8"))
    assert card["settings"]["nnunet_label_values"] == {"1": 1, "3": 2}
    assert any("the exported label maps hold 3 as 2" in warning for warning in card["warnings"])
    # The card's statistics keep the schema's values.
    assert [label["value"] for label in card["labels"]] == [1, 3]
    assert not any("normalization" in warning for warning in report.warnings)


def test_other_formats_keep_the_schema_values(cases, tmp_path):
    export_dataset(cases, SCHEMA, str(tmp_path / "pairs"), ExportSettings("pairs"), folds=2, test_fraction=0.3)
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "pairs" / "labels" / "ct0.nii.gz")))
    assert set(np.unique(label).tolist()) == {0, 1, 3}


def test_default_channel_names_warn_that_nnunet_will_use_z_score(cases, tmp_path):
    report = export_dataset(cases, SCHEMA, str(tmp_path / "raw"), ExportSettings("nnunet"), folds=2, test_fraction=0.3)
    assert any("gives z-score to channel(s) image" in warning for warning in report.warnings)
    dataset = json.loads((tmp_path / "raw" / "Dataset001_Export" / "dataset.json").read_text(encoding="utf-8"))
    assert dataset["channel_names"] == {"0": "image"}
    card = (tmp_path / "raw" / "Dataset001_Export" / "dataset_card.md").read_text(encoding="utf-8")
    assert "gives z-score to channel(s) image" in card


def test_a_dataset_folder_as_output_is_the_dataset_itself(cases, tmp_path):
    folder = tmp_path / "nnUNet_raw" / "Dataset901_Liver"
    export_dataset(cases, SCHEMA, str(folder), ExportSettings("nnunet", channel_names=("CT",)), folds=2,
                   test_fraction=0.3)
    assert (folder / "dataset.json").is_file() and not (folder / "Dataset001_Export").exists()
    assert json.loads((folder / "dataset.json").read_text(encoding="utf-8"))["name"] == "Dataset901_Liver"
    with pytest.raises(ExportError, match="is nnU-Net dataset 901 'Liver', but the settings ask for dataset 901 'Kid"):
        export_dataset(cases, SCHEMA, str(folder), ExportSettings("nnunet", dataset_name="Kidney"), folds=2,
                       test_fraction=0.3)


def test_monai_datalist_has_a_fold_in_every_training_entry_and_loads(cases, tmp_path):
    from monai.apps.auto3dseg.auto_runner import AutoRunner
    from monai.auto3dseg.utils import datafold_read
    from monai.data import load_decathlon_datalist

    root = tmp_path / "monai"
    report = export_dataset(cases, SCHEMA, str(root), ExportSettings("monai"), folds=2, test_fraction=0.3)
    datalist_path = str(root / "datalist.json")
    training = load_decathlon_datalist(datalist_path, is_segmentation=True, data_list_key="training")
    testing = load_decathlon_datalist(datalist_path, is_segmentation=True, data_list_key="testing")
    assert len(training) + len(testing) == len(cases)
    assert all(os.path.isfile(item["image"]) and os.path.isfile(item["label"]) for item in training + testing)
    assert all("fold" in item for item in training)
    folds = {s.case_id: s.validation_fold for s in report.summaries}
    assert all(item["fold"] == folds[os.path.basename(item["label"])[: -len(".nii.gz")]] for item in training)
    # Auto3DSeg reads the folds as they are, without drawing random case-level folds of its own (the method
    # reads only the file when every entry has a fold; it is called without building a whole AutoRunner).
    assert AutoRunner.inspect_datalist_folds(None, datalist_filename=datalist_path) == 2
    patient_of = {case.case_id: case.patient_id for case in cases}

    def patients(items) -> set:
        return {patient_of[os.path.basename(item["label"])[: -len(".nii.gz")]] for item in items}

    for fold in (0, 1):
        train, validation = datafold_read(datalist_path, str(root), fold=fold)
        assert train and validation and not patients(train) & patients(validation)


def test_monai_without_folds_is_refused_with_the_reason(cases, tmp_path):
    with pytest.raises(ExportError, match="MONAI datalists need 2 folds or more"):
        export_dataset(cases, SCHEMA, str(tmp_path / "monai"), ExportSettings("monai"), folds=0, test_fraction=0.3)
    assert not (tmp_path / "monai").exists()

"""One check for ``check`` and ``export`` (TrainingDataExportLib.checks): whatever one refuses, the other refuses,
on real files spoiled one way each (grids, truncated or NaN-holding files, sequences, components, sizes)."""

from __future__ import annotations

import doctest
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from ModelRegistryLib.index import Label

from TrainingDataExportLib import checks
from TrainingDataExportLib.caselist import Case, write_case_list
from TrainingDataExportLib.checks import inspect_case
from TrainingDataExportLib.cli import main
from TrainingDataExportLib.export import ExportError, ExportSettings, export_dataset
from TrainingDataExportLib.labelschema import label_schema_document

SCHEMA = [Label(1, "liver", "#dd8259"), Label(2, "tumor", "#90d5ff")]
SHAPE = (5, 9, 11)


def write_case(folder, case_id: str) -> Case:
    rng = np.random.default_rng(len(case_id))
    image = sitk.GetImageFromArray(rng.normal(50, 10, SHAPE).astype(np.float32))
    image.SetSpacing((0.8, 0.8, 2.0))
    label = np.zeros(SHAPE, np.uint8)
    label[1:4, 2:7, 3:8] = 1
    label[2, 4, 5] = 2
    label_image = sitk.GetImageFromArray(label)
    label_image.CopyInformation(image)
    paths = [str(folder / f"{case_id}.nii"), str(folder / f"{case_id}_seg.nii.gz")]
    sitk.WriteImage(image, paths[0])
    sitk.WriteImage(label_image, paths[1])
    return Case(case_id, case_id, {"image": paths[0]}, paths[1])


def truncate(path: str) -> None:
    with open(path, "r+b") as file:
        file.truncate(os.path.getsize(path) * 2 // 3)


def spoil(kind: str, case: Case) -> None:
    """Spoil ``case`` the ``kind`` way (every kind must stop an nnU-Net export)."""
    image = sitk.ReadImage(case.images["image"])
    if kind == "label on another grid":
        label = sitk.ReadImage(case.segmentation)
        label.SetSpacing((0.8, 0.8, 2.5))
        sitk.WriteImage(label, case.segmentation)
    elif kind == "truncated image":
        truncate(case.images["image"])
    elif kind == "truncated segmentation":
        truncate(case.segmentation)
    elif kind == "NaN in the image":
        array = sitk.GetArrayFromImage(image)
        array[2, 3, 4] = np.nan
        spoiled = sitk.GetImageFromArray(array)
        spoiled.CopyInformation(image)
        sitk.WriteImage(spoiled, case.images["image"])
    elif kind == "infinity in a float label map":
        label = sitk.GetArrayFromImage(sitk.ReadImage(case.segmentation)).astype(np.float32)
        label[0, 0, 0] = np.inf
        spoiled = sitk.GetImageFromArray(label)
        spoiled.CopyInformation(image)
        sitk.WriteImage(spoiled, case.segmentation)
    elif kind == "two components":
        sitk.WriteImage(sitk.Compose(image, image), case.images["image"])
    elif kind == "2D image":
        sitk.WriteImage(image[:, :, 0], case.images["image"])
    elif kind == "value outside the schema":
        label = sitk.ReadImage(case.segmentation)
        label[0, 0, 0] = 7
        sitk.WriteImage(label, case.segmentation)
    elif kind == "missing segmentation":
        os.remove(case.segmentation)
    else:
        raise AssertionError(kind)


KINDS = [
    "label on another grid",
    "truncated image",
    "truncated segmentation",
    "NaN in the image",
    "infinity in a float label map",
    "two components",
    "2D image",
    "value outside the schema",
    "missing segmentation",
]


@pytest.mark.parametrize("kind", KINDS)
def test_check_and_export_refuse_the_same_cases(tmp_path, capsys, kind):
    cases = [write_case(tmp_path, f"c{index}") for index in range(3)]
    spoil(kind, cases[1])
    assert inspect_case(cases[1], SCHEMA, ExportSettings("nnunet")).blocking
    assert not inspect_case(cases[0], SCHEMA, ExportSettings("nnunet")).blocking
    write_case_list(str(tmp_path / "cases.csv"), cases)
    (tmp_path / "labels.json").write_text(json.dumps(label_schema_document(SCHEMA)))
    arguments = ["--cases", str(tmp_path / "cases.csv"), "--schema", str(tmp_path / "labels.json")]
    assert main(["check", *arguments]) == 1
    checked = capsys.readouterr()
    assert checked.out.splitlines()[0] == "c0: ok" and not checked.out.splitlines()[1].endswith(": ok")
    assert main(["export", *arguments, "--format", "nnunet", "--output", str(tmp_path / "out"), "--folds", "0",
                 "--test-fraction", "0"]) == 1
    exported = capsys.readouterr()
    errors = [line for line in exported.err.splitlines() if not line.startswith("[")]  # progress lines aside
    assert len(errors) == 1 and errors[0].startswith("error: ") and "in 1 case(s): c1" in errors[0]
    assert not (tmp_path / "out").exists()


def test_a_sequence_is_refused_for_volumes_and_accepted_for_slices(tmp_path):
    case = write_case(tmp_path, "seq")
    frames = [sitk.ReadImage(case.images["image"])] * 3
    sitk.WriteImage(sitk.JoinSeries(frames), str(tmp_path / "seq4d.nrrd"))
    label = sitk.ReadImage(case.segmentation)
    sitk.WriteImage(sitk.JoinSeries([label] * 3), str(tmp_path / "seq4d_seg.nrrd"))
    sequence = Case("seq", "p", {"image": str(tmp_path / "seq4d.nrrd")}, str(tmp_path / "seq4d_seg.nrrd"))
    assert "4D sequence" in inspect_case(sequence, SCHEMA, ExportSettings("nnunet")).blocking[0]
    assert inspect_case(sequence, SCHEMA, ExportSettings("slices2d")).blocking == []
    assert inspect_case(sequence, SCHEMA).blocking == []


def test_an_absurd_spacing_is_refused_from_the_headers_before_any_work(tmp_path):
    cases = [write_case(tmp_path, f"c{index}") for index in range(3)]
    settings = ExportSettings("pairs", spacing=(0.001, 0.001, 0.001))
    assert "voxels (at most" in inspect_case(cases[0], SCHEMA, settings).blocking[0]
    calls = []
    with pytest.raises(ExportError, match=r"would hold .* voxels") as error:
        export_dataset(cases, SCHEMA, str(tmp_path / "out"), settings, folds=0, test_fraction=0,
                       progress=lambda fraction, message: calls.append(message))
    assert calls == [] and len(error.value.problems) == 3  # no file hashed, no case read
    assert not (tmp_path / "out").exists()


def test_docstring_examples_run():
    assert doctest.testmod(checks, optionflags=doctest.ELLIPSIS).failed == 0

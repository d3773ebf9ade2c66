"""The export engine and its formats (TrainingDataExportLib.export, .formats) on real files in tmp_path.

Cases are small seeded synthetic volumes with oblique, anisotropic geometry; every exported file is read
back and compared with its source.
"""

from __future__ import annotations

import csv
import doctest
import gzip
import hashlib
import json
import os
import sys
import threading

import numpy as np
import pytest
import SimpleITK as sitk
from ModelRegistryLib.files import is_temporary_name
from ModelRegistryLib.index import Label

from TrainingDataExportLib import export as export_module
from TrainingDataExportLib import formats
from TrainingDataExportLib.caselist import Case
from TrainingDataExportLib.export import (
    MANIFEST_NAME,
    ExportCancelledError,
    ExportError,
    ExportSettings,
    export_dataset,
)
from TrainingDataExportLib.splits import DatasetSplit

SCHEMA = [Label(1, "liver", "#dd8259"), Label(2, "tumor", "#90d5ff")]
ANGLE = np.radians(20)
DIRECTION = (1.0, 0.0, 0.0, 0.0, np.cos(ANGLE), -np.sin(ANGLE), 0.0, np.sin(ANGLE), np.cos(ANGLE))
SPACING = (0.8, 1.1, 2.5)
SIZE = (20, 18, 9)  # (i, j, k)


def geometry(image, spacing=SPACING, origin=(-10.0, 22.5, 5.0)):
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(DIRECTION)
    return image


def synthetic_case(folder, case_id, patient_id, seed, *, tumor=True, segmentation_suffix="_seg.nrrd"):
    rng = np.random.default_rng(seed)
    image = (rng.normal(100, 30, SIZE[::-1])).astype(np.int16)
    label = np.zeros(SIZE[::-1], np.uint8)
    k0, j0, i0 = 2 + seed % 3, 4 + seed % 5, 5 + seed % 4
    label[k0 : k0 + 4, j0 : j0 + 7, i0 : i0 + 8] = 1
    if tumor:
        label[k0 + 1 : k0 + 3, j0 + 2 : j0 + 4, i0 + 2 : i0 + 5] = 2
    image_path = os.path.join(folder, f"{case_id}.nrrd")
    label_path = os.path.join(folder, f"{case_id}{segmentation_suffix}")
    sitk.WriteImage(geometry(sitk.GetImageFromArray(image)), image_path, True)
    sitk.WriteImage(geometry(sitk.GetImageFromArray(label)), label_path, True)
    return Case(case_id, patient_id, {"image": image_path}, label_path)


@pytest.fixture
def cases(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    # 8 cases of 6 patients: p0 and p1 have two scans each.
    patients = ["p0", "p0", "p1", "p1", "p2", "p3", "p4", "p5"]
    return [
        synthetic_case(str(folder), f"case{index}", patient, index, tumor=index % 3 != 0)
        for index, patient in enumerate(patients)
    ]


def snapshot(folder):
    """Every file under ``folder`` with its bytes and modification time (empty when there is no folder)."""
    found = {}
    for directory, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as file:
                found[os.path.relpath(path, folder)] = (file.read(), os.stat(path).st_mtime_ns)
    return found


def hashes(folder):
    return {path: hashlib.sha256(data).hexdigest() for path, (data, _) in snapshot(folder).items()}


def array_of(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(path))


def assert_same_grid(image, reference):
    assert image.GetSize() == reference.GetSize()
    np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=1e-6)


def run(cases, output, **settings_and_options):
    options = {
        key: settings_and_options.pop(key)
        for key in ("split", "folds", "test_fraction", "seed", "workers", "progress", "cancel")
        if key in settings_and_options
    }
    options.setdefault("folds", 2)
    options.setdefault("test_fraction", 0.25)
    return export_dataset(cases, SCHEMA, str(output), ExportSettings(**settings_and_options), **options)


def test_docstring_examples_run():
    for module in (export_module, formats):
        assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0


# --- every format: export, reload, compare -----------------------------------------------------------------


def check_volume(case, image_path, label_path):
    source_image, source_label = sitk.ReadImage(case.images["image"]), sitk.ReadImage(case.segmentation)
    image, label = sitk.ReadImage(image_path), sitk.ReadImage(label_path)
    assert_same_grid(image, source_image)
    assert_same_grid(label, source_image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(source_image))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label), sitk.GetArrayFromImage(source_label))
    assert label.GetPixelID() == sitk.sitkUInt8


def test_nnunet_round_trip_and_metadata(cases, tmp_path):
    report = run(cases, tmp_path / "raw", format="nnunet", dataset_id=42, dataset_name="Liver")
    root = tmp_path / "raw" / "Dataset042_Liver"
    dataset = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    assert dataset == {
        "channel_names": {"0": "image"},
        "labels": {"background": 0, "liver": 1, "tumor": 2},
        "numTraining": 6,
        "file_ending": ".nii.gz",
        "name": "Dataset042_Liver",
    }
    by_id = {case.case_id: case for case in cases}
    test_ids = [summary.case_id for summary in report.summaries if summary.subset == "test"]
    assert len(test_ids) == 2
    for case_id, case in by_id.items():
        kind = "Ts" if case_id in test_ids else "Tr"
        check_volume(
            case, root / f"images{kind}" / f"{case_id}_0000.nii.gz", root / f"labels{kind}" / f"{case_id}.nii.gz"
        )
    folds = json.loads((root / "splits_final.json").read_text(encoding="utf-8"))
    assert len(folds) == 2
    patient = {case.case_id: case.patient_id for case in cases}
    for fold in folds:
        assert sorted(fold["train"] + fold["val"]) == sorted(set(by_id) - set(test_ids))
        assert not {patient[c] for c in fold["train"]} & {patient[c] for c in fold["val"]}
    assert (root / "dataset_card.md").is_file() and (root / MANIFEST_NAME).is_file()
    assert sorted(report.written) == sorted(by_id) and report.unchanged == [] and report.skipped == {}


def test_monai_round_trip_and_datalist(cases, tmp_path):
    report = run(cases, tmp_path / "monai", format="monai")
    datalist = json.loads((tmp_path / "monai" / "datalist.json").read_text(encoding="utf-8"))
    assert len(datalist["training"]) == 6 and len(datalist["testing"]) == 2
    folds = {summary.case_id: summary.validation_fold for summary in report.summaries}
    by_id = {case.case_id: case for case in cases}
    for item in datalist["training"] + datalist["testing"]:
        case_id = os.path.basename(item["label"])[: -len(".nii.gz")]
        assert item.get("fold") == folds[case_id]
        assert item["image"] == f"images/{case_id}_image.nii.gz"
        check_volume(by_id[case_id], tmp_path / "monai" / item["image"], tmp_path / "monai" / item["label"])


@pytest.mark.parametrize("extension", [".nii.gz", ".nrrd", ".nii"])
def test_pairs_round_trip_and_csv(cases, tmp_path, extension):
    run(cases, tmp_path / "pairs", format="pairs", pairs_extension=extension)
    with open(tmp_path / "pairs" / "pairs.csv", newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert [row["case_id"] for row in rows] == sorted(case.case_id for case in cases)
    by_id = {case.case_id: case for case in cases}
    for row in rows:
        assert row["label"] == f"labels/{row['case_id']}{extension}"
        assert row["subset"] in ("train", "test") and (row["fold"] == "") == (row["subset"] == "test")
        check_volume(by_id[row["case_id"]], tmp_path / "pairs" / row["image_image"], tmp_path / "pairs" / row["label"])


@pytest.mark.parametrize("slice_format", ["png", "npy"])
@pytest.mark.parametrize("slice_axis", [0, 2])
def test_slices_reassemble_to_the_source(cases, tmp_path, slice_format, slice_axis):
    output = tmp_path / "slices"
    run(cases[:4], output, format="slices2d", slice_format=slice_format, slice_axis=slice_axis, folds=0)
    with open(output / "slices.csv", newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    geometry_file = json.loads((output / "geometry.json").read_text(encoding="utf-8"))
    load = np.load if slice_format == "npy" else array_of
    for case in cases[:4]:
        case_rows = [row for row in rows if row["case_id"] == case.case_id]
        source = sitk.ReadImage(case.images["image"])
        assert len(case_rows) == source.GetSize()[slice_axis]
        labels = np.stack([load(str(output / row["label"])) for row in case_rows], axis=2 - slice_axis)
        np.testing.assert_array_equal(labels, array_of(case.segmentation))
        images = np.stack([load(str(output / row["image_image"])) for row in case_rows], axis=2 - slice_axis)
        if slice_format == "npy":
            assert images.dtype == np.float32
            np.testing.assert_array_equal(images, sitk.GetArrayFromImage(source).astype(np.float32))
        else:
            assert images.dtype == np.uint8 and images.min() == 0 and images.max() == 255
        grid = geometry_file["cases"][case.case_id]
        np.testing.assert_allclose(grid["spacing"], SPACING)
        np.testing.assert_allclose(grid["direction"], DIRECTION, atol=1e-9)
        assert grid["size"] == list(SIZE)


def test_slices_with_labels_only(cases, tmp_path):
    run(cases[:2], tmp_path / "s", format="slices2d", slices_with_labels_only=True, folds=0, test_fraction=0)
    with open(tmp_path / "s" / "slices.csv", newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert [int(row["slice"]) for row in rows if row["case_id"] == "case0"] == [2, 3, 4, 5]


def test_sequence_exports_every_frame_as_slices(tmp_path):
    rng = np.random.default_rng(5)
    frames = [rng.integers(0, 255, (1, 12, 16)).astype(np.uint8) for _ in range(3)]
    masks = [np.zeros((1, 12, 16), np.uint8) for _ in range(3)]
    for t, mask in enumerate(masks):
        mask[0, 2 + t : 6 + t, 3:9] = 1

    def sequence(arrays):
        return sitk.JoinSeries([geometry(sitk.GetImageFromArray(a), spacing=(0.3, 0.3, 1.0)) for a in arrays])

    image_path, label_path = str(tmp_path / "us.nrrd"), str(tmp_path / "us_label.nii.gz")
    sitk.WriteImage(sequence(frames), image_path)
    sitk.WriteImage(sequence(masks), label_path)
    case = Case("us1", "p1", {"image": image_path}, label_path)
    other = synthetic_case(str(tmp_path), "vol", "p2", 1)
    output = tmp_path / "out"
    export_dataset(
        [case, other], SCHEMA, str(output), ExportSettings("slices2d", slice_format="npy"), folds=0, test_fraction=0
    )
    with open(output / "slices.csv", newline="", encoding="utf-8") as file:
        rows = [row for row in csv.DictReader(file) if row["case_id"] == "us1"]
    assert [(row["frame"], row["slice"]) for row in rows] == [("0", "0"), ("1", "0"), ("2", "0")]
    for t, row in enumerate(rows):
        assert row["label"] == f"labels/us1_{t:04d}_0000.npy"
        np.testing.assert_array_equal(np.load(str(output / row["label"])), masks[t][0])
        np.testing.assert_array_equal(np.load(str(output / row["image_image"])), frames[t][0].astype(np.float32))
    # A sequence cannot go to a volume format.
    with pytest.raises(ExportError, match=r"us1.*sequences can only be exported as 2D slices"):
        export_dataset([case, other], SCHEMA, str(tmp_path / "nn"), ExportSettings("nnunet"), folds=0, test_fraction=0)


def test_two_channels_on_different_grids(cases, tmp_path):
    case = cases[0]
    source = sitk.ReadImage(case.images["image"])
    coarse = sitk.Resample(
        source,
        [10, 9, 9],
        sitk.Transform(),
        sitk.sitkLinear,
        source.GetOrigin(),
        (1.6, 2.2, 2.5),
        source.GetDirection(),
    )
    path = str(tmp_path / "data" / "case0_t2.nrrd")
    sitk.WriteImage(coarse, path)
    two = [
        Case(
            c.case_id,
            c.patient_id,
            {"ct": c.images["image"], "t2": path if c is case else c.images["image"]},
            c.segmentation,
        )
        for c in cases
    ]
    run(two, tmp_path / "nn", format="nnunet", folds=0, test_fraction=0)
    root = tmp_path / "nn" / "Dataset001_Export"
    dataset = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    assert dataset["channel_names"] == {"0": "ct", "1": "t2"}
    second = sitk.ReadImage(str(root / "imagesTr" / "case0_0001.nii.gz"))
    assert_same_grid(second, source)


# --- geometry options --------------------------------------------------------------------------------------


def test_resampled_export_shares_one_grid_at_the_target_spacing(cases, tmp_path):
    run(cases, tmp_path / "p", format="pairs", spacing=(1.0, 1.0, 1.25), image_interpolation="bspline")
    case = cases[1]
    source = sitk.ReadImage(case.images["image"])
    image = sitk.ReadImage(str(tmp_path / "p" / "images" / "case1_image.nii.gz"))
    label = sitk.ReadImage(str(tmp_path / "p" / "labels" / "case1.nii.gz"))
    assert_same_grid(label, image)
    np.testing.assert_allclose(image.GetSpacing(), (1.0, 1.0, 1.25))
    assert image.GetSize() == (16, 20, 18)  # round(20*0.8/1), round(18*1.1/1), round(9*2.5/1.25)
    assert image.GetPixelID() == source.GetPixelID() and label.GetPixelID() == sitk.sitkUInt8
    # Same field of view: the first voxel's corner stays where it was.
    corner = np.array(source.GetOrigin()) - np.array(DIRECTION).reshape(3, 3) @ (np.array(SPACING) / 2)
    new_corner = np.array(image.GetOrigin()) - np.array(DIRECTION).reshape(3, 3) @ (np.array(image.GetSpacing()) / 2)
    np.testing.assert_allclose(new_corner, corner, atol=1e-6)
    # Labelled volume is kept within the resampling error.
    volume = np.count_nonzero(array_of(case.segmentation)) * np.prod(SPACING)
    assert abs(np.count_nonzero(sitk.GetArrayFromImage(label)) * 1.25 - volume) < 0.25 * volume


def test_crop_keeps_every_labelled_voxel_plus_the_margin(cases, tmp_path):
    margin = 3.0
    run(cases, tmp_path / "p", format="pairs", crop_margin_mm=margin)
    for case in cases:
        source_label = sitk.ReadImage(case.segmentation)
        label = sitk.ReadImage(str(tmp_path / "p" / "labels" / f"{case.case_id}.nii.gz"))
        image = sitk.ReadImage(str(tmp_path / "p" / "images" / f"{case.case_id}_image.nii.gz"))
        assert_same_grid(label, image)
        source_array, array = sitk.GetArrayFromImage(source_label), sitk.GetArrayFromImage(label)
        assert np.count_nonzero(array) == np.count_nonzero(source_array)
        # Where the crop starts: the same physical point holds the same voxels.
        start = source_label.TransformPhysicalPointToIndex(label.GetOrigin())
        k, j, i = start[::-1]
        size = label.GetSize()[::-1]
        np.testing.assert_array_equal(array, source_array[k : k + size[0], j : j + size[1], i : i + size[2]])
        # The margin: ceil(3 mm / spacing) voxels on each side, unless the image ends first.
        voxels = np.argwhere(source_array)
        for axis, spacing in zip(range(3), SPACING[::-1]):
            wanted = int(np.ceil(margin / spacing))
            low, high = voxels[:, axis].min(), voxels[:, axis].max() + 1
            assert start[::-1][axis] == max(0, low - wanted)
            assert start[::-1][axis] + size[axis] == min(source_array.shape[axis], high + wanted)


# --- bad input: an error naming the cases, the folder untouched -------------------------------------------


def make_bad(kind, cases, tmp_path):
    """Spoil cases the ``kind`` way; return the names of the cases that must be reported."""
    if kind == "missing file":
        os.remove(cases[2].images["image"])
        os.remove(cases[5].segmentation)
        return ["case2", "case5"]
    if kind == "duplicate id":
        cases[3].case_id = "case1"
        return ["case1"]
    if kind == "geometry mismatch":
        label = sitk.ReadImage(cases[4].segmentation)
        label.SetOrigin((0.0, 0.0, 0.37))
        sitk.WriteImage(label, cases[4].segmentation)
        return ["case4"]
    if kind == "empty segmentation":
        sitk.WriteImage(geometry(sitk.Image(list(SIZE), sitk.sitkUInt8)), cases[6].segmentation)
        return ["case6"]
    if kind == "label conflict":
        for case in (cases[1], cases[7]):
            label = sitk.ReadImage(case.segmentation)
            label[0, 0, 0] = 9
            sitk.WriteImage(label, case.segmentation)
        return ["case1", "case7"]
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["missing file", "duplicate id", "geometry mismatch", "empty segmentation", "label conflict"]
)
@pytest.mark.parametrize("earlier_export", [False, True])
def test_bad_input_stops_before_writing(cases, tmp_path, kind, earlier_export):
    output = tmp_path / "out"
    if earlier_export:
        run(cases, output, format="monai")
    before = snapshot(output)
    offending = make_bad(kind, cases, tmp_path)
    with pytest.raises(ExportError) as error:
        run(cases, output, format="monai")
    assert sorted({case_id for case_id, _ in error.value.problems}) == offending
    for case_id in offending:
        assert repr(case_id) in str(error.value)
    assert snapshot(output) == before


def test_geometry_mismatch_can_resample_the_label(cases, tmp_path):
    make_bad("geometry mismatch", cases, tmp_path)
    run(cases, tmp_path / "out", format="pairs", resample_label_to_image=True)
    label = sitk.ReadImage(str(tmp_path / "out" / "labels" / "case4.nii.gz"))
    assert_same_grid(label, sitk.ReadImage(cases[4].images["image"]))


def test_foreign_folder_other_format_and_bad_settings_are_refused(cases, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty and holds no earlier export"):
        run(cases, foreign, format="pairs")
    assert snapshot(foreign) == {"notes.txt": (b"mine", os.stat(foreign / "notes.txt").st_mtime_ns)}
    run(cases, tmp_path / "out", format="pairs")
    with pytest.raises(ExportError, match="holds a 'pairs' export"):
        run(cases, tmp_path / "out", format="monai")
    with pytest.raises(ExportError, match="exists and is not a folder"):
        run(cases, tmp_path / "out" / "pairs.csv", format="pairs")
    with pytest.raises(ExportError) as error:
        run(cases, tmp_path / "x", format="nnunet", dataset_name="Dataset001_Liver", compression_level=12,
            spacing=(1, 1))
    assert len(error.value.problems) == 3
    assert not (tmp_path / "x").exists()


def test_unannotated_cases_are_skipped_and_listed(cases, tmp_path):
    cases[0].segmentation = ""
    report = run(cases, tmp_path / "out", format="pairs")
    assert report.skipped == {"case0": "not annotated"}
    assert "1 unannotated case(s) skipped: case0" in report.warnings
    assert "case0" not in (tmp_path / "out" / "pairs.csv").read_text(encoding="utf-8")
    assert "unannotated case(s) skipped" in (tmp_path / "out" / "dataset_card.md").read_text(encoding="utf-8")


def test_overlapping_segments_follow_the_overlap_setting(tmp_path):
    from test_segmentations import overlapping_layers, write_seg_nrrd

    liver, tumor = overlapping_layers()
    image = sitk.GetImageFromArray(np.zeros(liver.shape, np.int16))
    image.SetSpacing((0.7, 0.9, 2.5))
    image.SetOrigin((-12.5, 30.0, 7.25))
    angle = np.radians(30)
    image.SetDirection((np.cos(angle), -np.sin(angle), 0.0, np.sin(angle), np.cos(angle), 0.0, 0.0, 0.0, 1.0))
    cases = []
    for index in range(2):
        image_path = str(tmp_path / f"c{index}.nrrd")
        sitk.WriteImage(image, image_path)
        segments = [{"name": "Liver", "value": 1, "layer": 0}, {"name": "TUMOR", "value": 1, "layer": 1}]
        seg_path = write_seg_nrrd(tmp_path / f"c{index}.seg.nrrd", [liver, tumor], segments)
        cases.append(Case(f"c{index}", f"p{index}", {"image": image_path}, seg_path))
    with pytest.raises(ExportError, match="overlap in"):
        run(cases, tmp_path / "a", format="pairs", folds=0, test_fraction=0)
    run(cases, tmp_path / "b", format="pairs", folds=0, test_fraction=0, overlap="schema-order")
    np.testing.assert_array_equal(
        array_of(str(tmp_path / "b" / "labels" / "c0.nii.gz")), np.where(tumor == 1, 2, liver)
    )


def test_given_split_is_used_and_must_cover_the_cases(cases, tmp_path):
    ids = sorted(case.case_id for case in cases)
    split = DatasetSplit(test=("case7", "other"), folds=(), seed=3, train=tuple(i for i in ids if i != "case7"))
    report = run(cases, tmp_path / "out", format="pairs", split=split)
    assert [s.case_id for s in report.summaries if s.subset == "test"] == ["case7"]
    with pytest.raises(ExportError, match="'case7': is not in the given split"):
        run(cases, tmp_path / "out2", format="pairs", split=DatasetSplit(test=(), folds=(), seed=0, train=ids[:-1]))


# --- determinism, incremental re-export, cancel -------------------------------------------------------------


def test_identical_inputs_give_identical_bytes(cases, tmp_path):
    for name in ("one", "two"):
        run(cases, tmp_path / name, format="nnunet", crop_margin_mm=2.0, workers=3 if name == "one" else 1)
    first, second = hashes(tmp_path / "one"), hashes(tmp_path / "two")
    assert len(first) > 20 and first == second


@pytest.mark.parametrize("compressor", ["igzip", "zlib"])
def test_nifti_files_are_plain_gzip_with_either_compressor(cases, tmp_path, monkeypatch, compressor):
    """igzip (package isal) is an optional accelerator: without it zlib writes the same images."""
    if compressor == "zlib":
        monkeypatch.setitem(sys.modules, "isal", None)
    else:
        pytest.importorskip("isal")
    run(cases, tmp_path / "out", format="pairs")
    for path in sorted((tmp_path / "out" / "labels").glob("*.nii.gz")):
        with gzip.open(path) as packed:
            assert packed.read(4) == (348).to_bytes(4, "little")  # a NIfTI-1 header starts with its size
        assert sitk.ReadImage(str(path)).GetDimension() == 3


def test_re_export_rewrites_only_what_changed(cases, tmp_path):
    output = tmp_path / "out"
    run(cases, output, format="nnunet")
    before = snapshot(output)
    report = run(cases, output, format="nnunet")
    assert report.written == [] and sorted(report.unchanged) == sorted(c.case_id for c in cases)
    after = snapshot(output)
    case_files = [path for path in before if path.startswith("Dataset001_Export/images") or "/labels" in path]
    assert all(after[path] == before[path] for path in case_files)

    # A changed image: only that case is rewritten.
    image = sitk.ReadImage(cases[3].images["image"])
    sitk.WriteImage(image + 1, cases[3].images["image"], True)
    report = run(cases, output, format="nnunet")
    assert report.written == ["case3"]
    changed = snapshot(output)
    rewritten = {path for path in case_files if changed[path] != after[path]}
    assert rewritten and all("case3" in path for path in rewritten)

    # A case gone: its files go too (the split may move others, which are then rewritten).
    report = run(cases[:-1], output, format="nnunet")
    remaining = snapshot(output)
    assert not [path for path in remaining if "case7" in os.path.basename(path)]
    manifest = json.loads((output / "Dataset001_Export" / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert sorted(manifest["cases"]) == sorted(c.case_id for c in cases[:-1])

    # Other settings: every case is rewritten.
    report = run(cases[:-1], output, format="nnunet", compression_level=0)
    assert sorted(report.written) == sorted(c.case_id for c in cases[:-1])


class CancelAfter(threading.Event):
    """Set itself when a worker thread asks for the ``calls``-th time: a cancel at a known point of the run."""

    def __init__(self, calls):
        super().__init__()
        self.calls = calls

    def is_set(self):
        if threading.current_thread() is not threading.main_thread():
            self.calls -= 1
            if self.calls <= 0:
                self.set()
        return super().is_set()


def test_cancel_leaves_a_consistent_folder_and_a_re_run_completes(cases, tmp_path):
    output = tmp_path / "out"
    with pytest.raises(ExportCancelledError):
        # The worker asks before each case: the first two cases are written, the third is cancelled.
        run(cases, output, format="pairs", workers=1, cancel=CancelAfter(3))
    files = snapshot(output)
    # The folder is claimed by a manifest that records no case yet; no index file was written.
    assert json.loads(files[MANIFEST_NAME][0])["cases"] == {} and "pairs.csv" not in files
    assert not [path for path in files if is_temporary_name(path)]
    written = sorted(path for path in files if path.endswith(".nii.gz"))
    assert written == [
        "images/case0_image.nii.gz",
        "images/case1_image.nii.gz",
        "labels/case0.nii.gz",
        "labels/case1.nii.gz",
    ]
    for path in written:
        sitk.ReadImage(str(output / path))  # every file that is there is complete
    report = run(cases, output, format="pairs")
    assert sorted(report.written) == sorted(case.case_id for case in cases)
    assert (output / MANIFEST_NAME).is_file()


def test_progress_reaches_one(cases, tmp_path):
    fractions = []
    run(cases, tmp_path / "out", format="monai", progress=lambda fraction, message: fractions.append(fraction))
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_progress_reports_each_case_as_it_is_written(cases, tmp_path):
    """Not all at once after the last case (the issue: "checking" for the whole write phase, then every case)."""
    labels = tmp_path / "out" / "labels"
    seen = []

    def progress(fraction, message):
        if message.startswith("wrote case"):
            seen.append((message, sorted(os.listdir(labels))))

    run(cases, tmp_path / "out", format="monai", workers=1, progress=progress)
    assert [message for message, _ in seen] == [f"wrote case case{i} ({i + 1} of 8)" for i in range(8)]
    assert [files for _, files in seen] == [[f"case{j}.nii.gz" for j in range(i + 1)] for i in range(8)]


def test_summaries_hold_statistics_hashes_and_annotator(cases, tmp_path):
    cases[0].annotator = "ann"
    report = run(cases, tmp_path / "out", format="pairs")
    summary = next(s for s in report.summaries if s.case_id == "case0")
    source = array_of(cases[0].images["image"]).astype(np.float64)
    assert summary.annotator == "ann"
    # From a histogram of the int16 image: the same numbers as numpy on a float copy.
    intensity = summary.intensities["image"]
    assert (intensity.mean, intensity.std) == pytest.approx((source.mean(), source.std()), rel=1e-12)
    assert (intensity.p01, intensity.p99) == pytest.approx(tuple(np.percentile(source, [1, 99])), rel=1e-12)
    assert summary.label_voxels == {1: int(np.count_nonzero(array_of(cases[0].segmentation) == 1))}
    with open(cases[0].images["image"], "rb") as file:
        assert summary.source_sha256[cases[0].images["image"]] == hashlib.sha256(file.read()).hexdigest()
    assert summary.spacing == pytest.approx(SPACING) and summary.size == SIZE


def test_seg_nrrd_cases_are_mapped_to_the_schema(tmp_path):
    from test_segmentations import LIVER, LIVER_TERMINOLOGY, blobs, with_geometry, write_seg_nrrd

    schema = [Label(1, "liver", "#dd8259", LIVER), Label(2, "tumor", "#90d5ff")]
    layer = blobs()
    cases = []
    for index in range(3):
        image_path = str(tmp_path / f"c{index}.nrrd")
        sitk.WriteImage(with_geometry(sitk.GetImageFromArray(np.ones(layer.shape, np.int16))), image_path)
        segments = [{"name": "Tumor", "value": 1}, {"name": "organ", "value": 2, "terminology": LIVER_TERMINOLOGY}]
        path = write_seg_nrrd(tmp_path / f"c{index}.seg.nrrd", [layer], segments)
        cases.append(Case(f"c{index}", f"p{index}", {"image": image_path}, path))
    report = export_dataset(cases, schema, str(tmp_path / "out"), ExportSettings("pairs"), folds=0, test_fraction=0)
    expected = np.where(layer == 1, 2, np.where(layer == 2, 1, 0))
    np.testing.assert_array_equal(array_of(str(tmp_path / "out" / "labels" / "c0.nii.gz")), expected)
    assert "case 'c0': segment 'organ' is mapped to 'liver' by its terminology" in report.warnings

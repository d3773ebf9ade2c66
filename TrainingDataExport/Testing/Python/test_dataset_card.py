"""The dataset card (TrainingDataExportLib.card): contents, warnings, byte-identical files, readable plots."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from TrainingDataExportLib.card import (
    CaseSummary,
    ChannelIntensity,
    card_markdown,
    card_warnings,
    channel_intensity,
    dataset_card,
    label_voxel_counts,
    write_dataset_card,
)
from TrainingDataExportLib.splits import DatasetSplit

LABELS = [(0, "background"), (1, "liver"), (2, "tumor"), (3, "vessel")]
SPLIT = DatasetSplit(test=("d", "e"), folds=((("c",), ("a", "b")), (("a", "b"), ("c",))), seed=4)
SETTINGS = {"format": "nnunet", "spacing": (1.0, 1.0, 2.0), "gzip_level": 1, "crop_margin_mm": None}


def summary(case_id, patient_id, subset, fold, labels, *, spacing=(1.0, 1.0, 2.0), annotator="", mean=10.0):
    return CaseSummary(
        case_id=case_id,
        patient_id=patient_id,
        subset=subset,
        validation_fold=fold,
        spacing=spacing,
        size=(10, 12, 5 + len(case_id) * ord(case_id[0]) % 7),
        label_voxels=labels,
        intensities={"t1": ChannelIntensity(mean, 2.0, mean - 4, mean + 4), "t2": ChannelIntensity(1.0, 0.5, 0, 3)},
        annotator=annotator,
        source_sha256={f"/data/{case_id}_t1.nrrd": case_id * 64, f"/data/{case_id}_t2.nrrd": "0" * 64},
    )


def crafted_summaries():
    """Five cases of four patients; a voxel is 2 mm³ = 0.002 ml except in case d (2.05 mm³)."""
    return [
        summary("a", "p1", "train", 0, {1: 1000, 2: 50}, annotator="ana", mean=10.0),
        summary("b", "p1", "train", 0, {1: 2000, 2: 0}, annotator="ana", mean=20.0),
        summary("c", "p2", "train", 1, {1: 3000, 2: 5}, annotator="bob", mean=30.0),
        summary("d", "p3", "test", None, {1: 500}, spacing=(1.0, 1.0, 2.05), mean=40.0),
        summary("e", "p4", "test", None, {}, mean=50.0),
    ]


def read_bytes(path):
    with open(path, "rb") as file:
        return file.read()


# --- contents -----------------------------------------------------------------------------------------


def test_counts_per_subset_and_fold():
    counts = dataset_card(crafted_summaries(), LABELS, SPLIT, SETTINGS, [])["counts"]
    assert counts["subsets"] == [
        {"subset": "train", "cases": 3, "patients": 2},
        {"subset": "test", "cases": 2, "patients": 2},
        {"subset": "all", "cases": 5, "patients": 4},
    ]
    assert counts["folds"] == [
        {"fold": 0, "validation": {"cases": 2, "patients": 1}, "training": {"cases": 1, "patients": 1}},
        {"fold": 1, "validation": {"cases": 1, "patients": 1}, "training": {"cases": 2, "patients": 1}},
    ]


def test_label_presence_and_volumes_in_ml():
    labels = dataset_card(crafted_summaries(), LABELS, SPLIT, SETTINGS, [])["labels"]
    # Background is no label of the card; a label counted with 0 voxels (b's tumor) is absent.
    assert labels == [
        {
            "value": 1,
            "name": "liver",
            "cases": {"all": 4, "train": 3, "test": 1},
            "validation_folds": [2, 1],
            # a: 1000 × 0.002, b: 2000 × 0.002, c: 3000 × 0.002, d: 500 × 0.00205 ml.
            "volume_ml": {"min": 1.025, "median": 3.0, "max": 6.0},
        },
        {
            "value": 2,
            "name": "tumor",
            "cases": {"all": 2, "train": 2, "test": 0},
            "validation_folds": [1, 1],
            "volume_ml": {"min": 0.01, "median": 0.055, "max": 0.1},
        },
        {
            "value": 3,
            "name": "vessel",
            "cases": {"all": 0, "train": 0, "test": 0},
            "validation_folds": [0, 0],
            "volume_ml": None,
        },
    ]


def test_geometry_intensities_annotators_sources_settings():
    card = dataset_card(crafted_summaries(), LABELS, SPLIT, SETTINGS, ["skipped 1 unannotated case: f"])
    assert card["geometry"]["spacing_mm"] == {
        "x": {"min": 1.0, "median": 1.0, "max": 1.0},
        "y": {"min": 1.0, "median": 1.0, "max": 1.0},
        "z": {"min": 2.0, "median": 2.0, "max": 2.05},
    }
    sizes_k = sorted(s.size[2] for s in crafted_summaries())
    assert card["geometry"]["size_voxels"]["k"] == {"min": sizes_k[0], "median": sizes_k[2], "max": sizes_k[-1]}
    assert card["geometry"]["size_voxels"]["j"] == {"min": 12, "median": 12, "max": 12}
    assert list(card["intensities"]) == ["t1", "t2"]
    assert card["intensities"]["t1"]["mean"] == {"min": 10.0, "median": 30.0, "max": 50.0}
    assert card["intensities"]["t1"]["p99"] == {"min": 14.0, "median": 34.0, "max": 54.0}
    assert card["annotators"] == [
        {"annotator": "", "cases": 2},
        {"annotator": "ana", "cases": 2},
        {"annotator": "bob", "cases": 1},
    ]
    # Every case has its own t1 file; the five t2 entries share one (path, hash).
    assert card["sources"] == {"files": 10, "cases_with_hashes": 5}
    assert card["cases"][0]["source_sha256"] == {"/data/a_t1.nrrd": "a" * 64, "/data/a_t2.nrrd": "0" * 64}
    assert card["settings"] == {"crop_margin_mm": None, "format": "nnunet", "gzip_level": 1, "spacing": [1.0, 1.0, 2.0]}
    assert list(card["settings"]) == sorted(SETTINGS)
    assert card["warnings"] == ["skipped 1 unannotated case: f"]
    assert card["split"] == SPLIT.to_json()
    assert [case["case_id"] for case in card["cases"]] == ["a", "b", "c", "d", "e"]
    assert card["cases"][3]["label_volume_ml"] == {"1": 1.025}


def test_markdown_shows_warnings_first_and_every_section():
    card = dataset_card(crafted_summaries(), LABELS, SPLIT, SETTINGS, ["first warning", "a | b"])
    markdown = card_markdown(card)
    sections = [line for line in markdown.splitlines() if line.startswith("## ")]
    assert sections == [
        "## Warnings",
        "## Cases and patients",
        "## Labels",
        "## Geometry",
        "## Intensities",
        "## Annotators",
        "## Pre-annotations",
        "## Source files",
        "## Settings",
    ]
    for line in (
        "- first warning",
        "- a \\| b",
        "| train | 3 | 2 |",
        "| all | 5 | 4 |",
        "| 0 | 2 | 1 | 1 | 1 |",
        "| 1 | liver | 4 | 3 | 1 | 2 | 1 | 1.025 | 3 | 6 |",
        "| 3 | vessel | 0 | 0 | 0 | 0 | 0 | – | – | – |",
        "| z / k | 2 | 2 | 2.05 | 5 | 7 | 11 |",
        "| t1 | 30 (10 to 50) | 2 (2 to 2) | 26 (6 to 46) | 34 (14 to 54) |",
        "| (not recorded) | 2 |",
        "10 source files of 5 cases, identified by SHA-256: see `cases[].source_sha256` in `dataset_card.json`.",
        "| spacing | [1.0, 1.0, 2.0] |",
        "| crop_margin_mm | – |",
        "![label_volumes.png](dataset_card/label_volumes.png)",
    ):
        assert line in markdown.splitlines(), line


def test_a_card_without_folds_test_set_or_settings():
    summaries = [summary("a", "p1", "train", None, {1: 10})]
    split = DatasetSplit(test=(), folds=(), seed=0, train=("a",))
    card = dataset_card(summaries, LABELS, split, {}, [])
    assert card["counts"]["folds"] == []
    assert card["labels"][0]["validation_folds"] == []
    markdown = card_markdown(card)
    assert "No cross-validation folds; split by patient with seed 0." in markdown
    assert "## Warnings\n\nNone.\n" in markdown
    assert markdown.endswith("## Settings\n\nNone recorded.\n")


def test_intensities_that_are_not_numbers_become_null():
    summaries = crafted_summaries()
    summaries[0] = CaseSummary(
        **{**summaries[0].__dict__, "intensities": {"t1": ChannelIntensity(*[float("nan")] * 4)}}
    )
    card = dataset_card(summaries, LABELS, SPLIT, {}, [])
    assert card["cases"][0]["intensities"] == {"t1": {"mean": None, "std": None, "p01": None, "p99": None}}
    assert card["intensities"]["t1"]["mean"] == {"min": 20.0, "median": 35.0, "max": 50.0}
    json.dumps(card, allow_nan=False)


# --- the card must not contradict the split or carry what JSON cannot hold --------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: [*s, s[0]], "duplicate case summaries: a"),
        (lambda s: s[:-1], "no summary for: e"),
        (lambda s: [*s, summary("z", "p9", "test", None, {})], "not in the split: z"),
        (
            lambda s: [summary("a", "p1", "test", None, {}), *s[1:]],
            "case 'a': summary says subset 'test', fold None; the split says 'train', fold 0",
        ),
        (lambda s: [summary("a", "p1", "train", 1, {}), *s[1:]], "the split says 'train', fold 0"),
        (
            lambda s: [summary("a", "p1", "train", 0, {}, spacing=(1, 0, 1)), *s[1:]],
            r"spacing must be three positive numbers \(x, y, z mm\), not \(1, 0, 1\)",
        ),
    ],
)
def test_summaries_that_do_not_fit_the_split_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        dataset_card(change(crafted_summaries()), LABELS, SPLIT, SETTINGS, [])


def test_bad_schemas_and_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="label value 1 is listed twice"):
        dataset_card(crafted_summaries(), [(1, "liver"), (1, "tumor")], SPLIT, {}, [])
    with pytest.raises(ValueError, match="label value '1' of 'liver' must be a whole number"):
        dataset_card(crafted_summaries(), [("1", "liver")], SPLIT, {}, [])
    with pytest.raises(TypeError, match=r"settings.model.weights: object cannot be written to the dataset card"):
        write_dataset_card(str(tmp_path), crafted_summaries(), LABELS, SPLIT, {"model": {"weights": object()}}, [])
    assert os.listdir(tmp_path) == []


# --- warnings -----------------------------------------------------------------------------------------


def test_warnings_of_the_crafted_set():
    assert card_warnings(crafted_summaries(), LABELS) == [
        "label 2 'tumor' has fewer than 10 voxels in 1 case: c",
        "label 2 'tumor' is in no case of the test set",
        "label 3 'vessel' is in no case",
        "1 case has an empty label map: e",
    ]


def test_warning_thresholds_are_respected():
    summaries = crafted_summaries()
    # 50 voxels of tumor in a is not tiny under 10, tiny under 51; d's 2.05 mm is 2.5 % off the median.
    assert not any("fewer than" in w and ": a" in w for w in card_warnings(summaries, LABELS))
    assert "label 2 'tumor' has fewer than 51 voxels in 2 cases: a, c" in card_warnings(
        summaries, LABELS, tiny_label_voxels=51
    )
    assert card_warnings(summaries, LABELS, spacing_tolerance=0.02)[-2] == (
        "spacing along z varies from 2 to 2.05 mm (median 2 mm, spread 2 %): resample to one target spacing"
    )


def test_warnings_for_folds_unknown_labels_and_spacing():
    summaries = [
        summary("a", "p1", "train", 0, {1: 100, 7: 30}, spacing=(0.5, 0.5, 1.0)),
        summary("b", "p2", "train", 1, {1: 100, 2: 40}, spacing=(0.5, 0.5, 3.0)),
        summary("c", "p3", "test", None, {1: 100, 2: 40, 7: 1}, spacing=(0.5, 0.5, 3.0)),
    ]
    assert card_warnings(summaries, [(1, "liver"), (2, "tumor")]) == [
        "label 2 'tumor' is in no case of the validation set of fold 0",
        "label value 7 is not in the label schema: a, c",
        "spacing along z varies from 1 to 3 mm (median 3 mm, spread 67 %): resample to one target spacing",
    ]


def test_clean_data_has_no_warnings_and_long_lists_are_cut():
    clean = [summary(f"c{i:02d}", f"p{i}", "train", None, {1: 100 + i}) for i in range(25)]
    assert card_warnings(clean, [(1, "liver")]) == []
    empty = [summary(f"c{i:02d}", f"p{i}", "train", None, {}) for i in range(25)]
    assert card_warnings(empty, [])[-1] == (
        "25 cases have an empty label map: c00, c01, c02, c03, c04, c05, c06, c07, c08, c09 and 15 more"
    )


# --- files: determinism, Markdown from JSON, plots ------------------------------------------------------------


def written(folder):
    return {
        os.path.relpath(os.path.join(directory, name), folder): read_bytes(os.path.join(directory, name))
        for directory, _, names in os.walk(folder)
        for name in names
    }


def test_files_are_byte_identical_across_calls_and_input_orders(tmp_path):
    summaries = crafted_summaries()
    warnings = card_warnings(summaries, LABELS)
    first = write_dataset_card(str(tmp_path / "one"), summaries, LABELS, SPLIT, SETTINGS, warnings)
    assert [os.path.relpath(path, tmp_path / "one") for path in first] == [
        "dataset_card.md",
        "dataset_card.json",
        os.path.join("dataset_card", "cases.png"),
        os.path.join("dataset_card", "label_volumes.png"),
        os.path.join("dataset_card", "spacing.png"),
    ]
    reordered_settings = dict(reversed(list(SETTINGS.items())))
    write_dataset_card(str(tmp_path / "two"), summaries[::-1], LABELS[::-1], SPLIT, reordered_settings, warnings)
    one, two = written(tmp_path / "one"), written(tmp_path / "two")
    assert len(one) == 5
    assert one == two
    # Writing again over an existing card gives the same files.
    write_dataset_card(str(tmp_path / "one"), summaries, LABELS, SPLIT, SETTINGS, warnings)
    assert written(tmp_path / "one") == one


def test_json_holds_everything_the_markdown_shows(tmp_path):
    paths = write_dataset_card(str(tmp_path), crafted_summaries(), LABELS, SPLIT, SETTINGS, ["check me"])
    text = read_bytes(paths[1]).decode("utf-8")
    card = json.loads(text)
    assert list(card) == [
        "card_version",
        "warnings",
        "counts",
        "labels",
        "geometry",
        "intensities",
        "annotators",
        "pre_annotations",
        "sources",
        "settings",
        "split",
        "plots",
        "cases",
    ]
    assert card_markdown(card) == read_bytes(paths[0]).decode("utf-8")
    assert text.endswith("}\n") and "\r" not in text
    assert DatasetSplit.from_json(card["split"]) == SPLIT


def plot_pixels(path):
    image = sitk.ReadImage(path)
    assert image.GetNumberOfComponentsPerPixel() == 3
    assert image.GetPixelID() == sitk.sitkVectorUInt8
    return sitk.GetArrayFromImage(image)


def test_plots_are_readable_pngs_of_the_expected_size(tmp_path):
    paths = write_dataset_card(str(tmp_path), crafted_summaries(), LABELS, SPLIT, SETTINGS, [])
    for path in paths[2:]:
        assert read_bytes(path)[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = plot_pixels(path)
        assert pixels.shape == (320, 640, 3)
        # Drawn on: white background, black axes and text, and coloured data.
        colors = {tuple(color) for color in pixels.reshape(-1, 3)}
        assert {(255, 255, 255), (40, 40, 40), (31, 119, 180)} <= colors


def test_bar_heights_follow_the_counts(tmp_path):
    paths = write_dataset_card(str(tmp_path), crafted_summaries(), LABELS, SPLIT, SETTINGS, [])
    pixels = plot_pixels(paths[2])
    # Rows between the top and bottom margins (the legend is above), columns of each category: train, test,
    # F0 and F1 share the width between the margins and hold 3, 2, 2 and 1 cases.
    is_case_bar = np.all(pixels[40 : 320 - 36] == (31, 119, 180), axis=2)
    slot = (640 - 64 - 16) / 4
    heights = [int(is_case_bar[:, int(64 + slot * i) : int(64 + slot * (i + 1))].any(axis=1).sum()) for i in range(4)]
    assert heights[0] > heights[1] == heights[2] > heights[3] > 0
    assert abs(heights[0] / heights[3] - 3) < 0.1


def test_many_labels_widen_the_plot(tmp_path):
    labels = [(value, f"organ {value}") for value in range(1, 51)]
    summaries = [summary("a", "p1", "train", None, {value: value * 10 for value in range(1, 51)})]
    split = DatasetSplit(test=(), folds=(), seed=0, train=("a",))
    paths = write_dataset_card(str(tmp_path), summaries, labels, split, {}, [])
    assert plot_pixels(paths[3]).shape == (320, 64 + 16 + 16 * 50, 3)


# --- per-case statistics ---------------------------------------------------------------------------------


def test_channel_intensity_matches_numpy():
    values = np.random.default_rng(3).normal(100, 15, size=(20, 30, 40)).astype(np.float32)
    result = channel_intensity(values)
    assert result.mean == pytest.approx(float(values.astype(np.float64).mean()))
    assert result.std == pytest.approx(float(values.astype(np.float64).std()))
    assert (result.p01, result.p99) == pytest.approx(tuple(np.percentile(values.astype(np.float64), [1, 99])))
    with pytest.raises(ValueError, match="an image without voxels"):
        channel_intensity(np.zeros((0, 4)))


def test_label_voxel_counts():
    labels = np.random.default_rng(4).integers(0, 4, size=(10, 20, 30)).astype(np.uint16)
    labels[labels == 2] = 0
    expected = {value: int((labels == value).sum()) for value in (1, 3)}
    assert label_voxel_counts(labels) == expected
    assert label_voxel_counts(labels.astype(np.int16) - 1) == {-1: int((labels == 0).sum()), 2: expected[3]}
    assert label_voxel_counts(np.zeros((3, 3), np.uint8)) == {}
    with pytest.raises(ValueError, match="a label map holds whole numbers, not float32"):
        label_voxel_counts(np.zeros(3, np.float32))

"""The dataset card written with every export: what is in the training set, in Markdown, JSON and PNG plots.

A card answers the questions a reader of a training set asks before trusting it: how many cases and
patients are in each subset and fold, which labels occur where and how large they are, what the voxel
spacing, image size and intensities look like, who annotated, which source files (by SHA-256) were used,
with which settings, and what looks wrong (warnings come first).

- Cases a model pre-annotated (see :mod:`~TrainingDataExportLib.preannotation`) are counted by model and version,
  with the Dice between each prediction and its final label map per label, and the time spent per case beside
  that of the cases annotated from scratch.
- ``dataset_card.json`` holds everything, structured, keys in a fixed order, floats rounded to 6
  significant digits: identical inputs give identical bytes (no time stamp unless ``settings`` holds one).
  :func:`card_markdown` and :func:`card_plots` rebuild the Markdown and the plots from it alone.
- ``dataset_card.md`` is the readable summary; per-case details and the source hashes stay in the JSON.
- ``dataset_card/*.png``: cases and patients per subset and fold, label volume per case (log scale),
  voxel spacing per case. Slicer bundles no plotting library, so the plots are drawn here into a numpy
  array with a 3×5 pixel font (upper case, digits, a little punctuation) and written by SimpleITK.

Example::

    >>> import json, os, shutil, tempfile
    >>> from TrainingDataExportLib.splits import DatasetSplit
    >>> summaries = [CaseSummary("c1", "p1", "train", None, (1.0, 1.0, 2.0), (64, 64, 10), {1: 500},
    ...                          {"image": ChannelIntensity(10.0, 2.0, 6.0, 14.0)})]
    >>> split = DatasetSplit(test=(), folds=(), seed=0, train=("c1",))
    >>> card = dataset_card(summaries, [(1, "liver")], split, {"format": "nnunet"}, [])
    >>> card["labels"][0]["volume_ml"]
    {'min': 1.0, 'median': 1.0, 'max': 1.0}
    >>> folder = tempfile.mkdtemp()
    >>> for path in write_dataset_card(folder, summaries, [(1, "liver")], split, {"format": "nnunet"}, []):
    ...     print(os.path.relpath(path, folder))
    dataset_card.md
    dataset_card.json
    dataset_card/cases.png
    dataset_card/label_volumes.png
    dataset_card/spacing.png
    >>> with open(os.path.join(folder, "dataset_card.json"), encoding="utf-8") as file:
    ...     card_markdown(json.load(file)) == open(os.path.join(folder, "dataset_card.md"), encoding="utf-8").read()
    True
    >>> shutil.rmtree(folder)
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from .imagefiles import write_image
from ModelRegistryLib.files import write_text_atomically

from .splits import TEST, TRAIN, DatasetSplit, _listed

CARD_VERSION = 1
MARKDOWN_NAME = "dataset_card.md"
JSON_NAME = "dataset_card.json"
PLOT_FOLDER = "dataset_card"

SIGNIFICANT_DIGITS = 6
SPACING_AXES = ("x", "y", "z")
SIZE_AXES = ("i", "j", "k")
INTENSITY_STATISTICS = ("mean", "std", "p01", "p99")
UNKNOWN_ANNOTATOR = "(not recorded)"
_MAX_PROBLEMS = 10


@dataclass(frozen=True)
class ChannelIntensity:
    """Intensity statistics of one channel of one exported image: mean, standard deviation, 1st and 99th
    percentiles (see :func:`channel_intensity`)."""

    mean: float
    std: float
    p01: float
    p99: float


@dataclass(frozen=True)
class CaseSummary:
    """What the card needs to know of one exported case (the export fills one per case).

    ``spacing`` (x, y, z mm) and ``size`` (i, j, k voxels) are those of the exported image; ``label_voxels``
    counts the voxels of each non-zero label value in the exported label map (see :func:`label_voxel_counts`);
    ``intensities`` holds one :class:`ChannelIntensity` per channel name; ``source_sha256`` maps each source
    file to its SHA-256; ``time_spent`` is the annotation time recorded in the case list (seconds);
    ``pre_annotation``, for a case that started from a model's prediction, is what
    :func:`~TrainingDataExportLib.preannotation.pre_annotation_changes` found (model, version, Dice per label
    value, problem), else None.
    """

    case_id: str
    patient_id: str
    subset: str
    validation_fold: int | None
    spacing: tuple
    size: tuple
    label_voxels: Mapping[int, int]
    intensities: Mapping[str, ChannelIntensity]
    annotator: str = ""
    source_sha256: Mapping[str, str] = field(default_factory=dict)
    time_spent: int = 0
    pre_annotation: Mapping | None = None


# --- per-case statistics ------------------------------------------------------------------------------


def channel_intensity(values) -> ChannelIntensity:
    """Statistics of an image's voxel values (any shape), in float64; percentiles interpolate linearly.

    >>> channel_intensity(np.arange(101, dtype=np.int16))
    ChannelIntensity(mean=50.0, std=29.154759474226502, p01=1.0, p99=99.0)
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("an image without voxels has no intensity statistics")
    # One call for both percentiles: a single partition of the (possibly large) array.
    p01, p99 = np.percentile(values, [1, 99])
    return ChannelIntensity(float(values.mean()), float(values.std()), float(p01), float(p99))


def label_voxel_counts(label_map) -> dict:
    """label value -> voxel count for every non-zero value of a label map array (background 0 left out).

    >>> label_voxel_counts(np.array([[0, 1, 1], [3, 0, 1]], np.uint8))
    {1: 3, 3: 1}
    """
    values = np.asarray(label_map).ravel()
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"a label map holds whole numbers, not {values.dtype}")
    if values.size and values.min() >= 0:
        # bincount is one pass; np.unique sorts, which is several times slower on a 256³ map.
        counts = np.bincount(values)
        present = np.flatnonzero(counts)
    else:
        present, counts_of_present = np.unique(values, return_counts=True)
        counts = dict(zip(present.tolist(), counts_of_present.tolist()))
    return {int(value): int(counts[value]) for value in present if value != 0}


def _voxel_ml(spacing: Sequence) -> float:
    return math.prod(float(s) for s in spacing) / 1000.0


# --- the card as a JSON-ready dictionary ----------------------------------------------------------------


def _rounded(value: float) -> float | None:
    """``value`` to 6 significant digits; None for NaN or infinity, which JSON cannot hold."""
    value = float(value)
    if not math.isfinite(value):
        return None
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def _jsonable(value, where: str):
    """``value`` as JSON data with sorted keys and rounded floats; ``TypeError`` naming what cannot be."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return _rounded(value)
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return _jsonable(value.item(), where)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(key): _jsonable(value[key], f"{where}.{key}") for key in sorted(value, key=str)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise TypeError(f"{where}: {type(value).__name__} cannot be written to the dataset card (use JSON data)")


def _distribution(values: Sequence) -> dict | None:
    """min, median and max of ``values`` (rounded); None when there are none."""
    if not values:
        return None
    return {
        "min": _rounded(min(values)),
        "median": _rounded(statistics.median(values)),
        "max": _rounded(max(values)),
    }


def _label_schema(labels: Sequence) -> list:
    """(value, name) pairs sorted by value, background 0 left out; ``ValueError`` for a malformed schema."""
    schema = {}
    for item in labels:
        value, name = item
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"label value {value!r} of {name!r} must be a whole number")
        if value in schema:
            raise ValueError(f"label value {value} is listed twice ({schema[value]!r} and {name!r})")
        schema[value] = str(name)
    return sorted((value, name) for value, name in schema.items() if value != 0)


def _checked_summaries(summaries: Sequence[CaseSummary], split: DatasetSplit) -> list:
    """Summaries sorted by case id, checked against ``split`` (the card must not contradict the split)."""
    ordered = sorted(summaries, key=lambda summary: summary.case_id)
    ids = [summary.case_id for summary in ordered]
    duplicates = sorted({case_id for case_id, count in Counter(ids).items() if count > 1})
    if duplicates:
        raise ValueError(f"duplicate case summaries: {_listed(duplicates)}")
    if set(ids) != set(split.case_ids):
        missing, extra = sorted(set(split.case_ids) - set(ids)), sorted(set(ids) - set(split.case_ids))
        raise ValueError(
            "the case summaries and the split hold different cases"
            + (f"; no summary for: {_listed(missing)}" if missing else "")
            + (f"; not in the split: {_listed(extra)}" if extra else "")
        )
    problems = []
    for summary in ordered:
        where = f"case {summary.case_id!r}"
        if (summary.subset, summary.validation_fold) != (
            split.subset_of(summary.case_id),
            split.validation_fold_of(summary.case_id),
        ):
            problems.append(
                f"{where}: summary says subset {summary.subset!r}, fold {summary.validation_fold}; the split says "
                f"{split.subset_of(summary.case_id)!r}, fold {split.validation_fold_of(summary.case_id)}"
            )
        if len(summary.spacing) != 3 or not all(float(s) > 0 for s in summary.spacing):
            problems.append(f"{where}: spacing must be three positive numbers (x, y, z mm), not {summary.spacing}")
        if len(summary.size) != 3:
            problems.append(f"{where}: size must be three voxel counts (i, j, k), not {summary.size}")
    if problems:
        raise ValueError("case summaries do not fit the split:\n  " + "\n  ".join(problems[:_MAX_PROBLEMS]))
    return ordered


def _groups(cases: Sequence[dict], fold_count: int) -> list:
    """(name, cases) of every subset and validation fold that holds cases, in card order."""
    groups = [(f"{subset} set", [case for case in cases if case["subset"] == subset]) for subset in (TRAIN, TEST)]
    groups += [
        (f"validation set of fold {fold}", [case for case in cases if case["validation_fold"] == fold])
        for fold in range(fold_count)
    ]
    return [(name, members) for name, members in groups if members]


def _case_entry(summary: CaseSummary) -> dict:
    voxel_ml = _voxel_ml(summary.spacing)
    # A label counted with 0 voxels is absent: the export may list every schema label for every case.
    label_voxels = {int(value): int(count) for value, count in summary.label_voxels.items() if value and count}
    return {
        "case_id": summary.case_id,
        "patient_id": summary.patient_id,
        "subset": summary.subset,
        "validation_fold": summary.validation_fold,
        "annotator": summary.annotator,
        "spacing_mm": [_rounded(s) for s in summary.spacing],
        "size_voxels": [int(s) for s in summary.size],
        "label_voxels": {str(value): label_voxels[value] for value in sorted(label_voxels)},
        "label_volume_ml": {str(value): _rounded(label_voxels[value] * voxel_ml) for value in sorted(label_voxels)},
        "intensities": {
            channel: {name: _rounded(getattr(statistics_, name)) for name in INTENSITY_STATISTICS}
            for channel, statistics_ in summary.intensities.items()
        },
        "source_sha256": {path: summary.source_sha256[path] for path in sorted(summary.source_sha256)},
        "time_spent_s": int(summary.time_spent),
        "pre_annotation": _pre_annotation_entry(summary.pre_annotation),
    }


def _pre_annotation_entry(changes: Mapping | None) -> dict | None:
    if changes is None:
        return None
    dice = changes.get("dice") or {}
    return {
        "model_id": str(changes.get("model_id", "")),
        "model_version": str(changes.get("model_version", "")),
        "dice": {str(value): _rounded(dice[value]) if dice[value] is not None else None
                 for value in sorted(dice, key=int)},
        "problem": str(changes.get("problem", "")),
    }


def _counts(cases: Sequence[dict], fold_count: int) -> dict:
    def count(members) -> dict:
        return {"cases": len(members), "patients": len({case["patient_id"] for case in members})}

    return {
        "subsets": [
            {"subset": subset, **count([case for case in cases if case["subset"] == subset])}
            for subset in (TRAIN, TEST)
        ]
        + [{"subset": "all", **count(cases)}],
        "folds": [
            {
                "fold": fold,
                "validation": count([case for case in cases if case["validation_fold"] == fold]),
                "training": count(
                    [case for case in cases if case["subset"] == TRAIN and case["validation_fold"] != fold]
                ),
            }
            for fold in range(fold_count)
        ],
    }


def _label_entries(cases: Sequence[dict], schema: Sequence, fold_count: int) -> list:
    entries = []
    for value, name in schema:
        key = str(value)
        containing = [case for case in cases if key in case["label_volume_ml"]]
        entries.append(
            {
                "value": value,
                "name": name,
                "cases": {
                    "all": len(containing),
                    TRAIN: sum(case["subset"] == TRAIN for case in containing),
                    TEST: sum(case["subset"] == TEST for case in containing),
                },
                "validation_folds": [
                    sum(case["validation_fold"] == fold for case in containing) for fold in range(fold_count)
                ],
                "volume_ml": _distribution([case["label_volume_ml"][key] for case in containing]),
            }
        )
    return entries


def _channels(cases: Sequence[dict]) -> list:
    """Channel names in the order of their first appearance (cases are sorted, so this is stable)."""
    return list(dict.fromkeys(channel for case in cases for channel in case["intensities"]))


def _annotators(cases: Sequence[dict]) -> list:
    counts = Counter(case["annotator"] for case in cases)
    return [
        {"annotator": annotator, "cases": counts[annotator]}
        for annotator in sorted(counts, key=lambda annotator: (-counts[annotator], annotator))
    ]


def _pre_annotations(cases: Sequence[dict], schema: Sequence) -> dict:
    """Which cases started from a model's prediction, by model, how much each label changed (Dice between the
    prediction and the final label map; labels absent from both are left out) and the time spent."""
    started = [case for case in cases if case["pre_annotation"] is not None]
    models = Counter((case["pre_annotation"]["model_id"], case["pre_annotation"]["model_version"]) for case in started)
    measured = [case for case in started if not case["pre_annotation"]["problem"]]
    return {
        "cases": len(started),
        "models": [{"model_id": model_id, "model_version": version, "cases": count}
                   for (model_id, version), count in sorted(models.items())],
        "labels": [
            {
                "value": value,
                "name": name,
                "cases": len(values),
                "dice": _distribution(values),
            }
            for value, name in schema
            for values in [[case["pre_annotation"]["dice"][str(value)] for case in measured
                            if case["pre_annotation"]["dice"].get(str(value)) is not None]]
        ],
        "time_spent_s": {
            "pre_annotated": _distribution([case["time_spent_s"] for case in started]),
            "from_scratch": _distribution([case["time_spent_s"] for case in cases if case["pre_annotation"] is None]),
        },
    }


_PLOTS = (
    ("cases.png", "Cases and patients per subset and validation fold"),
    ("label_volumes.png", "Label volume per case (ml, log scale); bar: median"),
    ("spacing.png", "Voxel spacing per case (mm) along x, y and z; bar: median"),
)


def dataset_card(
    summaries: Sequence[CaseSummary],
    labels: Sequence[tuple],
    split: DatasetSplit,
    settings: Mapping[str, object],
    warnings: Sequence[str],
) -> dict:
    """The card as JSON-ready data (what ``dataset_card.json`` holds); see :func:`write_dataset_card`.

    Raises ``ValueError`` when the summaries and the split disagree (other cases, another subset or fold),
    for duplicate label values, and ``TypeError`` for settings that are not JSON data.
    """
    schema = _label_schema(labels)
    cases = [_case_entry(summary) for summary in _checked_summaries(summaries, split)]
    fold_count = len(split.folds)
    sources = {(path, digest) for case in cases for path, digest in case["source_sha256"].items()}
    return {
        "card_version": CARD_VERSION,
        "warnings": [str(warning) for warning in warnings],
        "counts": _counts(cases, fold_count),
        "labels": _label_entries(cases, schema, fold_count),
        "geometry": {
            "spacing_mm": {
                axis: _distribution([case["spacing_mm"][index] for case in cases])
                for index, axis in enumerate(SPACING_AXES)
            },
            "size_voxels": {
                axis: _distribution([case["size_voxels"][index] for case in cases])
                for index, axis in enumerate(SIZE_AXES)
            },
        },
        "intensities": {
            channel: {
                name: _distribution(
                    [
                        case["intensities"][channel][name]
                        for case in cases
                        if channel in case["intensities"] and case["intensities"][channel][name] is not None
                    ]
                )
                for name in INTENSITY_STATISTICS
            }
            for channel in _channels(cases)
        },
        "annotators": _annotators(cases),
        "pre_annotations": _pre_annotations(cases, schema),
        "sources": {
            "files": len(sources),
            "cases_with_hashes": sum(bool(case["source_sha256"]) for case in cases),
        },
        "settings": _jsonable(dict(settings), "settings"),
        "split": split.to_json(),
        "plots": [{"file": f"{PLOT_FOLDER}/{name}", "caption": caption} for name, caption in _PLOTS],
        "cases": cases,
    }


# --- warnings -----------------------------------------------------------------------------------------


def card_warnings(
    summaries: Sequence[CaseSummary],
    labels: Sequence[tuple],
    *,
    tiny_label_voxels: int = 10,
    spacing_tolerance: float = 0.05,
) -> list:
    """Warnings about the exported data, for the card (the export adds its own, e.g. skipped cases).

    Reported: labels present in a case with fewer than ``tiny_label_voxels`` voxels; schema labels found in no
    case at all, or in none of a subset (train, test) or validation fold; label values outside the schema;
    spacing whose spread along an axis, ``(max - min) / median``, is over ``spacing_tolerance``; cases whose
    label map is empty; pre-annotated cases whose prediction could not be compared with the final label map.

    >>> summaries = [CaseSummary(f"c{i}", f"p{i}", "train", None, (1.0, 1.0, 1.0 + i), (8, 8, 8),
    ...                          {1: 4 if i else 300}, {}) for i in range(2)]
    >>> for warning in card_warnings(summaries, [(1, "liver"), (2, "tumor")]):
    ...     print(warning)
    label 1 'liver' has fewer than 10 voxels in 1 case: c1
    label 2 'tumor' is in no case
    spacing along z varies from 1 to 2 mm (median 1.5 mm, spread 67 %): resample to one target spacing
    """
    schema = _label_schema(labels)
    summaries = sorted(summaries, key=lambda summary: summary.case_id)
    fold_count = 1 + max((s.validation_fold for s in summaries if s.validation_fold is not None), default=-1)
    cases = [
        {
            "case_id": s.case_id,
            "subset": s.subset,
            "validation_fold": s.validation_fold,
            "labels": {int(v): int(n) for v, n in s.label_voxels.items() if v and n},
        }
        for s in summaries
    ]
    warnings = []
    for value, name in schema:
        tiny = [case["case_id"] for case in cases if 0 < case["labels"].get(value, 0) < tiny_label_voxels]
        if tiny:
            warnings.append(
                f"label {value} {name!r} has fewer than {tiny_label_voxels} voxels in {len(tiny)} "
                f"case{'s' if len(tiny) > 1 else ''}: {_listed(tiny)}"
            )
        if not any(value in case["labels"] for case in cases):
            if cases:
                warnings.append(f"label {value} {name!r} is in no case")
            continue
        for group, members in _groups(cases, fold_count):
            if not any(value in case["labels"] for case in members):
                warnings.append(f"label {value} {name!r} is in no case of the {group}")
    known = {value for value, _ in schema}
    unknown = sorted({value for case in cases for value in case["labels"]} - known)
    for value in unknown:
        holders = [case["case_id"] for case in cases if value in case["labels"]]
        warnings.append(f"label value {value} is not in the label schema: {_listed(holders)}")
    for index, axis in enumerate(SPACING_AXES):
        spacings = [float(summary.spacing[index]) for summary in summaries if len(summary.spacing) == 3]
        median = statistics.median(spacings) if spacings else 0.0
        if median <= 0:  # no cases, or spacing the card itself refuses
            continue
        spread = (max(spacings) - min(spacings)) / median
        if spread > spacing_tolerance:
            warnings.append(
                f"spacing along {axis} varies from {min(spacings):g} to {max(spacings):g} mm "
                f"(median {median:g} mm, spread {spread * 100:.0f} %): resample to one target spacing"
            )
    empty = [case["case_id"] for case in cases if not case["labels"]]
    if empty:
        warnings.append(
            f"{len(empty)} case{'s have' if len(empty) > 1 else ' has'} an empty label map: {_listed(empty)}"
        )
    warnings += [f"case {summary.case_id!r} was pre-annotated, but {summary.pre_annotation['problem']}"
                 for summary in summaries if summary.pre_annotation and summary.pre_annotation.get("problem")]
    return warnings


# --- Markdown -----------------------------------------------------------------------------------------


def _cell(value) -> str:
    """A Markdown table cell: numbers compact, '|' escaped, no line breaks."""
    if value is None:
        return "–"
    if isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> list:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return [*lines, ""]


def _spread(distribution: dict | None) -> tuple:
    return (None, None, None) if distribution is None else tuple(distribution[k] for k in ("min", "median", "max"))


def _median_and_range(distribution: dict | None) -> str:
    if distribution is None:
        return "–"
    return f"{distribution['median']:g} ({distribution['min']:g} to {distribution['max']:g})"


def _plot_line(card: dict, index: int) -> list:
    plot = card["plots"][index]
    return [f"![{os.path.basename(plot['file'])}]({plot['file']})", "", f"*{plot['caption']}*", ""]


def card_markdown(card: dict) -> str:
    """The Markdown of a card made by :func:`dataset_card` (or read back from ``dataset_card.json``)."""
    counts = card["counts"]
    lines = ["# Dataset card", "", "## Warnings", ""]
    lines += [f"- {_cell(warning)}" for warning in card["warnings"]] or ["None."]
    lines += ["", "## Cases and patients", ""]
    lines += markdown_table(
        ["subset", "cases", "patients"], [(s["subset"], s["cases"], s["patients"]) for s in counts["subsets"]]
    )
    if counts["folds"]:
        lines += [
            f"{len(counts['folds'])} cross-validation folds, split by patient with seed {card['split']['seed']}:",
            "",
        ]
        lines += markdown_table(
            ["fold", "validation cases", "validation patients", "training cases", "training patients"],
            [
                (
                    f["fold"],
                    f["validation"]["cases"],
                    f["validation"]["patients"],
                    f["training"]["cases"],
                    f["training"]["patients"],
                )
                for f in counts["folds"]
            ],
        )
    else:
        lines += [f"No cross-validation folds; split by patient with seed {card['split']['seed']}.", ""]
    lines += _plot_line(card, 0)

    lines += ["## Labels", ""]
    fold_header = [f"fold {f['fold']}" for f in counts["folds"]]
    lines += markdown_table(
        ["value", "name", "cases", "train", "test", *fold_header, "volume ml min", "median", "max"],
        [
            (
                label["value"],
                label["name"],
                label["cases"]["all"],
                label["cases"][TRAIN],
                label["cases"][TEST],
                *label["validation_folds"],
                *_spread(label["volume_ml"]),
            )
            for label in card["labels"]
        ],
    )
    lines += ["Cases columns count the cases containing the label; fold columns, its validation cases.", ""]
    lines += _plot_line(card, 1)

    geometry = card["geometry"]
    lines += ["## Geometry", ""]
    lines += markdown_table(
        ["axis", "spacing mm min", "median", "max", "size voxels min", "median", "max"],
        [
            (
                f"{spacing_axis} / {size_axis}",
                *_spread(geometry["spacing_mm"][spacing_axis]),
                *_spread(geometry["size_voxels"][size_axis]),
            )
            for spacing_axis, size_axis in zip(SPACING_AXES, SIZE_AXES)
        ],
    )
    lines += _plot_line(card, 2)

    lines += ["## Intensities", ""]
    if card["intensities"]:
        lines += markdown_table(
            ["channel", *(f"{name}: median (min to max) over cases" for name in INTENSITY_STATISTICS)],
            [
                (channel, *(_median_and_range(statistics_[name]) for name in INTENSITY_STATISTICS))
                for channel, statistics_ in card["intensities"].items()
            ],
        )
    else:
        lines += ["No intensity statistics.", ""]

    lines += ["## Annotators", ""]
    lines += markdown_table(
        ["annotator", "cases"], [(a["annotator"] or UNKNOWN_ANNOTATOR, a["cases"]) for a in card["annotators"]]
    )

    lines += _pre_annotation_lines(card)

    sources = card["sources"]
    lines += [
        "## Source files",
        "",
        f"{sources['files']} source files of {sources['cases_with_hashes']} cases, identified by SHA-256: "
        f"see `cases[].source_sha256` in `{JSON_NAME}`.",
        "",
        "## Settings",
        "",
    ]
    if card["settings"]:
        lines += markdown_table(["setting", "value"], list(card["settings"].items()))
    else:
        lines += ["None recorded.", ""]
    return "\n".join(lines)


def _pre_annotation_lines(card: dict) -> list:
    summary = card["pre_annotations"]
    lines = ["## Pre-annotations", ""]
    if not summary["cases"]:
        return [*lines, "No label map started from a model's prediction.", ""]
    models = ", ".join(f"{m['model_id']} {m['model_version']} ({m['cases']})" for m in summary["models"])
    lines += [f"{summary['cases']} of {len(card['cases'])} cases started from a model's prediction, which the "
              f"annotators corrected: {models}.", ""]
    lines += markdown_table(
        ["value", "name", "cases", "Dice prediction vs final: min", "median", "max"],
        [(label["value"], label["name"], label["cases"], *_spread(label["dice"])) for label in summary["labels"]],
    )
    time_spent = summary["time_spent_s"]
    lines += markdown_table(
        ["cases", "time spent s: min", "median", "max"],
        [("pre-annotated", *_spread(time_spent["pre_annotated"])),
         ("from scratch", *_spread(time_spent["from_scratch"]))],
    )
    labels = [(str(label["value"]), label["name"]) for label in summary["labels"]]
    rows = []
    for case in card["cases"]:
        started = case["pre_annotation"]
        if started is None:
            continue
        dice = [started["dice"].get(value) for value, _ in labels]
        rows.append((case["case_id"], started["model_id"], started["model_version"], *dice, case["time_spent_s"],
                     started["problem"]))
    lines += markdown_table(["case", "model", "version", *(f"Dice {name}" for _, name in labels), "time spent s",
                             "problem"], rows)
    lines += ["A Dice of 1 means the annotator kept the prediction of that label as it was; empty: the label is in "
              "neither (–).", ""]
    return lines


# --- plots: a small raster drawing kit ------------------------------------------------------------------

# 3×5 glyphs, rows top to bottom, '#' on. Lower case is drawn as upper case; anything else as '?'.
_FONT_ROWS = {
    "0": "### #.# #.# #.# ###", "1": ".#. ##. .#. .#. ###", "2": "### ..# ### #.. ###", "3": "### ..# .## ..# ###",
    "4": "#.# #.# ### ..# ..#", "5": "### #.. ### ..# ###", "6": "### #.. ### #.# ###", "7": "### ..# ..# .#. .#.",
    "8": "### #.# ### #.# ###", "9": "### #.# ### ..# ###", "A": ".#. #.# ### #.# #.#", "B": "##. #.# ##. #.# ##.",
    "C": ".## #.. #.. #.. .##", "D": "##. #.# #.# #.# ##.", "E": "### #.. ##. #.. ###", "F": "### #.. ##. #.. #..",
    "G": ".## #.. #.# #.# .##", "H": "#.# #.# ### #.# #.#", "I": "### .#. .#. .#. ###", "J": "..# ..# ..# #.# .#.",
    "K": "#.# #.# ##. #.# #.#", "L": "#.. #.. #.. #.. ###", "M": "#.# ### ### #.# #.#", "N": "##. #.# #.# #.# #.#",
    "O": ".#. #.# #.# #.# .#.", "P": "##. #.# ##. #.. #..", "Q": ".#. #.# #.# ##. .##", "R": "##. #.# ##. #.# #.#",
    "S": ".## #.. .#. ..# ##.", "T": "### .#. .#. .#. .#.", "U": "#.# #.# #.# #.# ###", "V": "#.# #.# #.# #.# .#.",
    "W": "#.# #.# ### ### #.#", "X": "#.# #.# .#. #.# #.#", "Y": "#.# #.# .#. .#. .#.", "Z": "### ..# .#. #.. ###",
    " ": "... ... ... ... ...", ".": "... ... ... ... .#.", ",": "... ... ... .#. #..", "-": "... ... ### ... ...",
    "+": "... .#. ### .#. ...", ":": "... .#. ... .#. ...", "/": "..# ..# .#. #.. #..", "(": ".#. #.. #.. #.. .#.",
    ")": ".#. ..# ..# ..# .#.", "_": "... ... ... ... ###", "%": "#.# ..# .#. #.. #.#", "=": "... ### ... ### ...",
    "?": "##. ..# .#. ... .#.",
}  # fmt: skip
_GLYPHS = {
    character: np.array([[pixel == "#" for pixel in row] for row in rows.split()], dtype=bool)
    for character, rows in _FONT_ROWS.items()
}
TEXT_SCALE = 2
CHARACTER_WIDTH = 4 * TEXT_SCALE  # a glyph and one column of space
TEXT_HEIGHT = 5 * TEXT_SCALE

PLOT_WIDTH, PLOT_HEIGHT = 640, 320
_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 64, 16, 40, 36
_MIN_SLOT_WIDTH = 16

_WHITE, _BLACK, _GRID, _GREY = (255, 255, 255), (40, 40, 40), (225, 225, 225), (150, 150, 150)
_PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))


class _Canvas:
    """An RGB uint8 picture to draw rectangles, dots and text on; everything is clipped to its edges."""

    def __init__(self, width: int, height: int) -> None:
        self.pixels = np.full((height, width, 3), _WHITE, dtype=np.uint8)

    def rect(self, x0: float, y0: float, x1: float, y1: float, color: tuple) -> None:
        """Fill the pixels x0 <= x < x1, y0 <= y < y1 (in either order)."""
        height, width = self.pixels.shape[:2]
        left, right = sorted((round(x0), round(x1)))
        top, bottom = sorted((round(y0), round(y1)))
        self.pixels[max(top, 0) : min(bottom, height), max(left, 0) : min(right, width)] = color

    def dot(self, x: float, y: float, color: tuple) -> None:
        self.rect(x - 2, y - 1, x + 3, y + 2, color)
        self.rect(x - 1, y - 2, x + 2, y + 3, color)

    def text(self, x: float, y: float, text: str, color: tuple, align: str = "left", max_width: float = 0) -> None:
        """Draw ``text`` with its top at ``y``, cut to ``max_width`` pixels when given; align left/center/right."""
        if max_width:
            text = text[: max(int(max_width) // CHARACTER_WIDTH, 0)]
        width = len(text) * CHARACTER_WIDTH - TEXT_SCALE
        x = x - {"left": 0, "center": width / 2, "right": width}[align]
        for index, character in enumerate(text.upper()):
            glyph = _GLYPHS.get(character, _GLYPHS["?"])
            left, top = round(x) + index * CHARACTER_WIDTH, round(y)
            for row, column in zip(*np.nonzero(glyph)):
                self.rect(
                    left + column * TEXT_SCALE,
                    top + row * TEXT_SCALE,
                    left + (column + 1) * TEXT_SCALE,
                    top + (row + 1) * TEXT_SCALE,
                    color,
                )


def _tick_text(value: float) -> str:
    return f"{value:.4g}"


def _linear_ticks(largest: float, whole_numbers: bool = False) -> list:
    """0 and round steps (1, 2 or 5 × a power of ten) up to at least ``largest``: about five ticks."""
    if largest <= 0:
        return [0.0, 1.0]
    raw = largest / 5
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    if whole_numbers:
        step = max(step, 1)
    return [index * step for index in range(math.ceil(largest / step - 1e-9) + 1)]


def _log_ticks(values: Sequence) -> list:
    """Powers of ten around ``values`` (all positive), at least two."""
    if not values:
        return [1.0, 10.0]
    low, high = math.floor(math.log10(min(values))), math.ceil(math.log10(max(values)))
    return [10.0**exponent for exponent in range(low, max(high, low + 1) + 1)]


def _plot(title: str, categories: Sequence[str], ticks: Sequence[float], log: bool):
    """A canvas with title, grid, y ticks and category names; returns it, a value -> y function, the x
    centres of the categories and their slot width."""
    width = max(PLOT_WIDTH, _MARGIN_LEFT + _MARGIN_RIGHT + _MIN_SLOT_WIDTH * len(categories))
    canvas = _Canvas(width, PLOT_HEIGHT)
    top, bottom = _MARGIN_TOP, PLOT_HEIGHT - _MARGIN_BOTTOM
    left, right = _MARGIN_LEFT, width - _MARGIN_RIGHT
    scale = (lambda v: math.log10(v)) if log else (lambda v: v)
    low, high = scale(ticks[0]), scale(ticks[-1])

    def to_y(value: float) -> float:
        return bottom - (scale(value) - low) / (high - low) * (bottom - top)

    canvas.text(left, 12, title, _BLACK, max_width=right - left)
    for tick in ticks:
        y = to_y(tick)
        canvas.rect(left, y, right, y + 1, _GRID)
        canvas.text(left - 6, y - TEXT_HEIGHT / 2, _tick_text(tick), _BLACK, align="right", max_width=left - 8)
    canvas.rect(left - 1, top, left, bottom + 1, _BLACK)
    canvas.rect(left - 1, bottom, right, bottom + 1, _BLACK)
    slot = (right - left) / max(len(categories), 1)
    centres = [left + slot * (index + 0.5) for index in range(len(categories))]
    for centre, name in zip(centres, categories):
        canvas.text(centre, bottom + 10, name, _BLACK, align="center", max_width=slot - 4)
    return canvas, to_y, centres, slot


def _bar_chart(title: str, categories: Sequence[str], series: Sequence[tuple]) -> np.ndarray:
    """Grouped bars: ``series`` is a list of (name, values per category); each bar labelled with its value."""
    ticks = _linear_ticks(max((v for _, values in series for v in values), default=0), whole_numbers=True)
    canvas, to_y, centres, slot = _plot(title, categories, ticks, log=False)
    bar = slot * 0.7 / max(len(series), 1)
    for index, (name, values) in enumerate(series):
        color = _PALETTE[index % len(_PALETTE)]
        for centre, value in zip(centres, values):
            x0 = centre - slot * 0.35 + index * bar
            canvas.rect(x0, to_y(value), x0 + bar - 1, to_y(0), color)
            canvas.text(x0 + bar / 2, to_y(value) - TEXT_HEIGHT - 3, _tick_text(value), _BLACK, "center", bar + 8)
        legend_x = canvas.pixels.shape[1] - _MARGIN_RIGHT - 120
        canvas.rect(legend_x, 12 + index * 14, legend_x + 10, 22 + index * 14, color)
        canvas.text(legend_x + 14, 12 + index * 14, name, _BLACK)
    return canvas.pixels


def _strip_chart(title: str, categories: Sequence[str], values: Sequence[Sequence[float]], log: bool) -> np.ndarray:
    """One column of dots per category (one dot per case), a grey line from min to max and a median bar."""
    everything = [value for column in values for value in column]
    ticks = _log_ticks(everything) if log else _linear_ticks(max(everything, default=0))
    canvas, to_y, centres, slot = _plot(title, categories, ticks, log=log)
    jitter = min(slot * 0.3, 16)
    for index, (centre, column) in enumerate(zip(centres, values)):
        if not column:
            continue
        color = _PALETTE[index % len(_PALETTE)]
        column = sorted(column)
        canvas.rect(centre, to_y(column[0]), centre + 1, to_y(column[-1]) + 1, _GREY)
        # Under the dots, so that cases with the same value as the median stay visible.
        median = to_y(statistics.median(column))
        canvas.rect(centre - slot * 0.3, median - 1, centre + slot * 0.3, median + 2, _BLACK)
        for rank, value in enumerate(column):
            # Golden-ratio steps spread the dots evenly and repeatably, without a random generator.
            offset = ((rank * 0.6180339887) % 1 - 0.5) * 2 * jitter
            canvas.dot(centre + offset, to_y(value), color)
    return canvas.pixels


def card_plots(card: dict) -> dict:
    """file name -> RGB uint8 array of every plot of a card made by :func:`dataset_card`.

    >>> from TrainingDataExportLib.splits import DatasetSplit
    >>> split = DatasetSplit(test=(), folds=(), seed=0, train=("c1",))
    >>> summary = CaseSummary("c1", "p1", "train", None, (1.0, 1.0, 1.0), (8, 8, 8), {1: 5}, {})
    >>> {name: pixels.shape for name, pixels in card_plots(dataset_card([summary], [(1, "a")], split, {}, [])).items()}
    {'cases.png': (320, 640, 3), 'label_volumes.png': (320, 640, 3), 'spacing.png': (320, 640, 3)}
    """
    subsets = [s for s in card["counts"]["subsets"] if s["subset"] != "all"]
    folds = card["counts"]["folds"]
    cases = card["cases"]
    return {
        "cases.png": _bar_chart(
            "CASES AND PATIENTS PER SUBSET AND VALIDATION FOLD",
            [s["subset"] for s in subsets] + [f"F{f['fold']}" for f in folds],
            [
                ("cases", [s["cases"] for s in subsets] + [f["validation"]["cases"] for f in folds]),
                ("patients", [s["patients"] for s in subsets] + [f["validation"]["patients"] for f in folds]),
            ],
        ),
        "label_volumes.png": _strip_chart(
            "LABEL VOLUME PER CASE (ML, LOG SCALE)",
            [f"{label['value']} {label['name']}" for label in card["labels"]],
            [
                [case["label_volume_ml"][key] for case in cases if key in case["label_volume_ml"]]
                for key in (str(label["value"]) for label in card["labels"])
            ],
            log=True,
        ),
        "spacing.png": _strip_chart(
            "VOXEL SPACING PER CASE (MM)",
            [axis.upper() for axis in SPACING_AXES],
            [[case["spacing_mm"][index] for case in cases] for index in range(len(SPACING_AXES))],
            log=False,
        ),
    }


# --- writing ------------------------------------------------------------------------------------------

PLOT_NAMES = ("cases.png", "label_volumes.png", "spacing.png")


def card_file_names() -> list:
    """The files :func:`write_dataset_card` writes, relative to its folder, in the order it returns them."""
    return [MARKDOWN_NAME, JSON_NAME, *(f"{PLOT_FOLDER}/{name}" for name in PLOT_NAMES)]


def write_dataset_card(
    output_dir: str,
    summaries: Sequence[CaseSummary],
    labels: Sequence[tuple],
    split: DatasetSplit,
    settings: Mapping[str, object],
    warnings: Sequence[str],
    place=None,
) -> list:
    """Write output_dir/dataset_card.md, dataset_card.json and PNG plots under output_dir/dataset_card/ ;
    return their paths.

    ``labels`` are the (value, name) pairs of the label schema; ``split`` must hold exactly the summarised
    cases, in the subsets and folds their summaries say; ``settings`` (JSON data: str, numbers, bools, None,
    lists, mappings) are recorded as given, keys sorted; ``warnings`` come first in the card (typically the
    export's own plus :func:`card_warnings`). Identical arguments write identical bytes. Every file is written
    atomically; ``place`` (relative paths -> absolute paths, an export's journal) is told of them first.
    """
    card = dataset_card(summaries, labels, split, settings, warnings)
    relatives = card_file_names()
    paths = place(relatives) if place is not None else [os.path.join(output_dir, *r.split("/")) for r in relatives]
    # "\n" line ends and UTF-8: the same bytes on every system.
    write_text_atomically(paths[0], card_markdown(card))
    write_text_atomically(paths[1], json.dumps(card, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    plots = card_plots(card)
    for name, path in zip(PLOT_NAMES, paths[2:]):
        write_image(sitk.GetImageFromArray(plots[name], isVector=True), path, compression_level=0)
    return paths

"""What a training learns from: an export written by TrainingDataExport, or a case list, read with its patients,
its held-out test set and its patient-level validation folds.

- **An export** (nnU-Net raw, MONAI datalist or image/label pairs): the folder's manifest
  (``TrainingDataExportLib.manifest``) lists every case with its files, its patient, its subset (``train`` or
  ``test``) and the fold that validates it, and the dataset card (``dataset_card.json``) names the labels. The
  path may be the export folder, its index file (``dataset.json``, ``datalist.json``, ``pairs.csv``) or an
  ``nnUNet_raw`` folder holding one dataset. An export that did not finish (its journal is there) is refused.
  nnU-Net needs consecutive label values, so an export may hold label 3 as 2 (the card records it): cases are
  read with the values of the files and the model gets the schema's.
- **A case list** (``cases.csv``): its annotated cases, checked as ``check`` and ``export`` check them
  (``TrainingDataExportLib.checks.inspect_case``), split by patient here
  (``TrainingDataExportLib.splits.split_by_patient``: a test set and folds), with the label schema
  ``labels.json`` beside it unless another is given.

:meth:`TrainingData.partition` says which cases a training may learn from (the fold's training patients), which
validate it (the fold's validation patients, or a share of the training patients drawn by patient when the
export has no folds) and which are held out for the final evaluation (the test set). No patient is on two sides.

Example::

    >>> import os, tempfile
    >>> import numpy as np, SimpleITK as sitk
    >>> from ModelRegistryLib.index import Label
    >>> from TrainingDataExportLib import Case, save_label_schema, write_case_list
    >>> folder = tempfile.mkdtemp()
    >>> cases = []
    >>> for index in range(6):
    ...     image, label = np.full((4, 6, 6), index, np.int16), np.zeros((4, 6, 6), np.uint8)
    ...     label[1:3, 2:4, 2:4] = 1
    ...     paths = [os.path.join(folder, f"c{index}{suffix}.nrrd") for suffix in ("", "_seg")]
    ...     for array, path in zip((image, label), paths):
    ...         sitk.WriteImage(sitk.GetImageFromArray(array), path)
    ...     cases.append(Case(f"c{index}", f"p{index // 2}", {"image": paths[0]}, paths[1]))
    >>> write_case_list(os.path.join(folder, "cases.csv"), cases)
    >>> save_label_schema(os.path.join(folder, "labels.json"), [Label(1, "Liver", "#dd8259")])
    >>> data = read_training_data(os.path.join(folder, "cases.csv"), folds=2, test_fraction=0.3)
    >>> data.kind, data.channels, [label.name for label in data.labels]
    ('cases', ('image',), ['Liver'])
    >>> partition = data.partition(fold=0)
    >>> partition.train, partition.validation, partition.test
    (('c2', 'c3'), ('c4', 'c5'), ('c0', 'c1'))
    >>> labels = read_case_labels(data, data.case("c0"), read_case_images(data.case("c0"))[0])
    >>> int(sitk.GetArrayViewFromImage(labels).sum())     # class indices: 1 is the first label of the schema
    8
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from ModelRegistryLib.files import contained_path
from ModelRegistryLib.index import Label
from TrainingDataExportLib.caselist import CaseListError, read_case_list
from TrainingDataExportLib.checks import inspect_case
from TrainingDataExportLib.imagecheck import ImageFileError
from TrainingDataExportLib.imagefiles import read_image
from TrainingDataExportLib.labelschema import DEFAULT_LABEL_SCHEMA_NAME, LabelSchemaError, load_label_schema
from TrainingDataExportLib.manifest import JOURNAL_NAME, MANIFEST_NAME, read_manifest
from TrainingDataExportLib.segmentations import label_on_grid, read_label_map
from TrainingDataExportLib.splits import DatasetSplit, split_by_patient

DEFAULT_FOLDS = 5
DEFAULT_TEST_FRACTION = 0.2
DEFAULT_VALIDATION_FRACTION = 0.2
CARD_NAME = "dataset_card.json"
# Export formats a 3D network trains on (slices2d holds 2D slices).
VOLUME_FORMATS = ("nnunet", "monai", "pairs")
# Segment colors for labels an export names without colors (its dataset card has none).
LABEL_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22")
# Channel names (nnU-Net's, or the case list's) that mean CT: intensities in Hounsfield units.
CT_NAMES = ("ct", "cta", "cect", "ncct")


class TrainingDataError(ValueError):
    """Training data that cannot be used; the message says what and where, in one line."""


@dataclass(frozen=True)
class TrainingCase:
    """One case: its image files in channel order, its label file (a label map or a Slicer segmentation), its
    patient, its subset (``train`` or ``test``) and the index of the fold whose validation set holds it."""

    case_id: str
    patient_id: str
    images: tuple
    label: str
    subset: str
    fold: int | None = None
    annotator: str = ""


@dataclass(frozen=True)
class Partition:
    """Case ids a training learns from (``train``), stops and picks its best epoch on (``validation``), and is
    finally evaluated on (``test``); ``fold`` is the export's fold used, or None when the validation patients
    were drawn from the training patients."""

    train: tuple
    validation: tuple
    test: tuple
    fold: int | None


@dataclass(frozen=True)
class TrainingData:
    """A training set (see the module description).

    ``labels`` are the schema's (``ModelRegistryLib.index.Label``: values, names, colors, terminology);
    ``file_values`` gives each label's value in the label files, in the same order; ``modalities`` says per
    channel whether it is ``CT`` (else ""); ``card`` is the export's dataset card (None for a case list).
    """

    source: str
    kind: str
    channels: tuple
    modalities: tuple
    labels: tuple
    file_values: tuple
    cases: tuple
    split: DatasetSplit
    card: dict | None = None

    def case(self, case_id: str) -> TrainingCase:
        for case in self.cases:
            if case.case_id == case_id:
                return case
        raise KeyError(f"case {case_id!r} is not in {self.source}")

    def patients(self, case_ids: Sequence[str]) -> tuple:
        """The patients of ``case_ids``, sorted."""
        return tuple(sorted({self.case(case_id).patient_id for case_id in case_ids}))

    def partition(self, fold: int | None = 0, validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
                  seed: int = 0) -> Partition:
        """Which cases train, validate and test a model (see :class:`Partition`).

        With folds, ``fold`` picks one (its validation patients validate, the others train). Without folds, or
        with ``fold`` None, ``validation_fraction`` of the training cases, whole patients drawn with ``seed``,
        validate. Raises :class:`TrainingDataError` when a side would be empty.
        """
        folds = self.split.folds
        if fold is not None and folds:
            if not 0 <= fold < len(folds):
                raise TrainingDataError(f"fold {fold} does not exist: {self.source} has folds 0 to {len(folds) - 1}")
            train, validation = folds[fold]
        else:
            training = [self.case(case_id) for case_id in self.split.train]
            if len({case.patient_id for case in training}) < 2:
                raise TrainingDataError(
                    f"{self.source} has fewer than 2 training patients: one is needed to train and one to validate")
            try:
                drawn = split_by_patient(training, folds=0, test_fraction=validation_fraction, seed=seed)
            except ValueError as error:
                raise TrainingDataError(f"cannot draw validation patients: {error}") from None
            train, validation, fold = drawn.train, drawn.test, None
        if not train or not validation:
            raise TrainingDataError(f"{self.source}: no case left to {'train' if not train else 'validate'} on")
        return Partition(tuple(train), tuple(validation), tuple(self.split.test), fold)

    def class_of_file_value(self) -> np.ndarray:
        """A lookup table: the class index (0 background, ``k`` the ``k``-th label) of each label file value."""
        table = np.zeros(max(self.file_values) + 1, np.uint8)
        for index, value in enumerate(self.file_values, start=1):
            table[value] = index
        return table


# --- exports ----------------------------------------------------------------------------------------------


def export_root(path: str) -> str:
    """The export folder ``path`` means: itself, the folder of its index file, or the one dataset of an
    ``nnUNet_raw`` folder; :class:`TrainingDataError` when there is none."""
    folder = os.path.dirname(path) if os.path.isfile(path) else path
    if os.path.isfile(os.path.join(folder, MANIFEST_NAME)):
        return folder
    datasets = sorted(name for name in os.listdir(folder)
                      if os.path.isfile(os.path.join(folder, name, MANIFEST_NAME)))
    if len(datasets) == 1:
        return os.path.join(folder, datasets[0])
    if datasets:
        raise TrainingDataError(f"{folder} holds several exports ({', '.join(datasets)}): give one of them")
    raise TrainingDataError(f"{path} is neither a case list nor a folder exported by Training Data Export "
                            f"({MANIFEST_NAME} is missing)")


def _card(root: str) -> dict | None:
    try:
        with open(os.path.join(root, CARD_NAME), encoding="utf-8") as file:
            card = json.load(file)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise TrainingDataError(f"cannot read the dataset card of {root}: {error}") from None
    return card if isinstance(card, dict) else None


def _channel_order(root: str, export_format: str, records: dict) -> list:
    """The export's channels in their order: nnU-Net's file suffixes, the datalist's or the CSV's order."""
    channels = list(next(iter(records.values()))["images"])
    if len(channels) == 1:
        return channels
    some = next(iter(records.values()))["images"]
    if export_format == "nnunet":
        return sorted(channels, key=lambda channel: some[channel].rsplit("_", 1)[-1])
    if export_format == "monai":
        with open(os.path.join(root, "datalist.json"), encoding="utf-8") as file:
            entry = json.load(file)["training"][0]
        paths = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
        by_path = {path: channel for record in records.values() for channel, path in record["images"].items()}
        return [by_path[path] for path in paths]
    with open(os.path.join(root, "pairs.csv"), encoding="utf-8") as file:
        header = file.readline().strip().split(",")
    return [column[len("image_"):] for column in header if column.startswith("image_")]


def _export_labels(card: dict | None, schema: Sequence | None, root: str) -> tuple:
    """``(labels, file values)`` of an export: the schema given, else the card's names."""
    if card is None or not isinstance(card.get("labels"), list):
        raise TrainingDataError(f"{root} has no dataset card naming its labels ({CARD_NAME}): export it again")
    named = [(int(item["value"]), str(item["name"])) for item in card["labels"]]
    renumbered = (card.get("settings") or {}).get("nnunet_label_values") or {}
    file_values = tuple(int(renumbered.get(str(value), value)) for value, _ in named)
    if schema is None:
        labels = tuple(Label(value, name, LABEL_COLORS[index % len(LABEL_COLORS)])
                       for index, (value, name) in enumerate(named))
        return labels, file_values
    by_value = {label.value: label for label in schema}
    missing = [f"{name} ({value})" for value, name in named if value not in by_value]
    if missing or len(schema) != len(named):
        raise TrainingDataError(f"the label schema does not match the export's labels "
                                f"({', '.join(f'{name} ({value})' for value, name in named)})")
    return tuple(by_value[value] for value, _ in named), file_values


def _channel_modalities(names: Sequence[str]) -> tuple:
    return tuple("CT" if name.strip().lower() in CT_NAMES else "" for name in names)


def read_export(path: str, schema: Sequence | None = None) -> TrainingData:
    """The training data of an export (see the module description); ``schema`` (labels) gives the labels' colors
    and terminology, which the export does not keep."""
    root = os.path.abspath(export_root(path))
    if os.path.exists(os.path.join(root, JOURNAL_NAME)):
        raise TrainingDataError(f"the export into {root} did not finish: export again before training")
    manifest, problem = read_manifest(root)
    if problem or manifest is None:
        raise TrainingDataError(problem or f"{root} holds no export")
    export_format = manifest["format"]
    if export_format not in VOLUME_FORMATS:
        raise TrainingDataError(f"{root} is a {export_format} export; a 3D network trains on nnunet, monai or "
                                "pairs exports")
    records = {case_id: entry["records"][0] for case_id, entry in manifest["cases"].items()}
    if not records:
        raise TrainingDataError(f"{root} holds no case")
    try:
        split = DatasetSplit.from_json(manifest["split"])
        channels = _channel_order(root, export_format, records)
        cases = []
        for case_id in sorted(records):
            record, summary = records[case_id], manifest["cases"][case_id]["summary"]
            images = tuple(contained_path(root, record["images"][channel]) for channel in channels)
            label = contained_path(root, record["label"])
            cases.append(TrainingCase(case_id, str(summary["patient_id"]), images, label, split.subset_of(case_id),
                                      split.validation_fold_of(case_id), str(summary.get("annotator", ""))))
    except (KeyError, ValueError, TypeError, OSError) as error:
        raise TrainingDataError(f"cannot read the export in {root}: {error}") from None
    missing = [path for case in cases for path in (*case.images, case.label) if not os.path.isfile(path)]
    if missing:
        raise TrainingDataError(f"{len(missing)} file(s) of the export are missing, e.g. {missing[0]}: export again")
    card = _card(root)
    labels, file_values = _export_labels(card, schema, root)
    settings = (card or {}).get("settings") or {}
    names = settings.get("nnunet_channel_names") or settings.get("channel_names") or channels
    modalities = _channel_modalities(names) if len(names) == len(channels) else _channel_modalities(channels)
    return TrainingData(root, export_format, tuple(channels), modalities, labels, file_values, tuple(cases), split,
                        card)


# --- case lists -------------------------------------------------------------------------------------------


def read_case_list_data(path: str, schema: Sequence | None = None, *, folds: int = DEFAULT_FOLDS,
                        test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = 0) -> TrainingData:
    """The training data of a case list: its annotated cases, each checked, split by patient (``folds``,
    ``test_fraction``, ``seed`` as for an export); ``schema`` defaults to ``labels.json`` beside it."""
    try:
        cases = [case for case in read_case_list(path) if case.annotated]
    except (CaseListError, OSError) as error:
        raise TrainingDataError(f"cannot read the case list: {error}") from None
    if schema is None:
        schema_path = os.path.join(os.path.dirname(os.path.abspath(path)), DEFAULT_LABEL_SCHEMA_NAME)
        try:
            schema = load_label_schema(schema_path)
        except LabelSchemaError as error:
            raise TrainingDataError(f"{error} (give the label schema, or put {DEFAULT_LABEL_SCHEMA_NAME} beside the "
                                    "case list)") from None
    if not cases:
        raise TrainingDataError(f"{path} has no annotated case to train on")
    problems = [f"{case.case_id}: {'; '.join(check.blocking)}"
                for case in cases for check in [inspect_case(case, schema)] if check.blocking]
    if problems:
        raise TrainingDataError(f"{len(problems)} case(s) cannot be used: " + " | ".join(problems[:5]))
    try:
        split = split_by_patient(cases, folds=folds, test_fraction=test_fraction, seed=seed)
    except ValueError as error:
        raise TrainingDataError(f"cannot split {path} by patient: {error}") from None
    channels = cases[0].channels
    training_cases = tuple(
        TrainingCase(case.case_id, case.patient_id, tuple(case.images[channel] for channel in channels),
                     case.segmentation, split.subset_of(case.case_id), split.validation_fold_of(case.case_id),
                     case.annotator)
        for case in sorted(cases, key=lambda case: case.case_id))
    labels = tuple(schema)
    return TrainingData(os.path.abspath(path), "cases", channels, _channel_modalities(channels), labels,
                        tuple(label.value for label in labels), training_cases, split)


def read_training_data(path: str, labels_path: str = "", **split_options) -> TrainingData:
    """An export (folder or index file) or a case list (``.csv``); ``labels_path`` is a label schema to use instead
    of the data's own; ``split_options`` (``folds``, ``test_fraction``, ``seed``) split a case list."""
    if not os.path.exists(path):
        raise TrainingDataError(f"training data not found: {path}")
    try:
        schema = load_label_schema(labels_path) if labels_path else None
    except LabelSchemaError as error:
        raise TrainingDataError(str(error)) from None
    if os.path.isfile(path) and path.lower().endswith(".csv") and os.path.basename(path) != "pairs.csv":
        return read_case_list_data(path, schema, **split_options)
    return read_export(path, schema)


# --- reading cases ----------------------------------------------------------------------------------------


def read_case_images(case: TrainingCase) -> list:
    """The case's images (SimpleITK), in channel order, read with the checked reader."""
    try:
        return [read_image(path) for path in case.images]
    except ImageFileError as error:
        raise TrainingDataError(f"case {case.case_id}: {error}") from None


def _file_labels(data: TrainingData) -> list:
    """The schema with the values the label files hold."""
    return [Label(value, label.name, label.color, label.terminology)
            for label, value in zip(data.labels, data.file_values)]


def read_case_labels(data: TrainingData, case: TrainingCase, reference: sitk.Image) -> sitk.Image:
    """The case's reference segmentation on ``reference``'s grid (its first image), as class indices (uint8: 0
    background, ``k`` the ``k``-th label of ``data.labels``)."""
    label, problems = read_label_map(case.label, _file_labels(data))
    blocking = [str(problem) for problem in problems if problem.blocking]
    if label is None or blocking:
        raise TrainingDataError(f"case {case.case_id}: {'; '.join(blocking) or 'the segmentation cannot be read'}")
    moved, problem = label_on_grid(label, reference)
    if moved is None:
        raise TrainingDataError(f"case {case.case_id}: {problem}")
    classes = sitk.GetImageFromArray(data.class_of_file_value()[sitk.GetArrayViewFromImage(moved)])
    classes.CopyInformation(reference)
    return classes


def reference_label_map(data: TrainingData, case: TrainingCase, reference: sitk.Image) -> sitk.Image:
    """The case's segmentation on ``reference``'s grid with the schema's label values (as a model writes them)."""
    classes = read_case_labels(data, case, reference)
    values = np.array([0, *(label.value for label in data.labels)],
                      np.uint8 if max(label.value for label in data.labels) <= 255 else np.uint16)
    result = sitk.GetImageFromArray(values[sitk.GetArrayViewFromImage(classes)])
    result.CopyInformation(reference)
    return result


# --- what the model card says about the data --------------------------------------------------------------


def data_summary(data: TrainingData, partition: Partition, spacings: Sequence = ()) -> dict:
    """What a model card tells about the training data: cases and patients per side, labels, median spacing
    (of the dataset card, else of ``spacings``: (x, y, z) per case), annotators and the source (JSON-able)."""
    def side(case_ids):
        return {"cases": len(case_ids), "patients": len(data.patients(case_ids))}

    card = data.card or {}
    spacing = None
    card_spacing = (card.get("geometry") or {}).get("spacing_mm") or {}
    if all((card_spacing.get(axis) or {}).get("median") is not None for axis in "xyz"):
        spacing = [card_spacing[axis]["median"] for axis in "xyz"]
    elif spacings:
        spacing = [round(statistics.median(values), 4) for values in zip(*spacings)]
    annotators = {}
    for case in data.cases:
        annotators[case.annotator or "(not recorded)"] = annotators.get(case.annotator or "(not recorded)", 0) + 1
    return {
        "source": data.source,
        "kind": data.kind,
        "channels": list(data.channels),
        "labels": [{"value": label.value, "name": label.name} for label in data.labels],
        "training": side(partition.train),
        "validation": side(partition.validation),
        "test": side(partition.test),
        "all": side([case.case_id for case in data.cases]),
        "fold": partition.fold,
        "median_spacing_mm": spacing,
        "annotators": [{"annotator": name, "cases": count} for name, count in sorted(annotators.items())],
    }

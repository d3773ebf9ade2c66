"""Evaluating a cohort: pairing predictions with references, reading them with their labels, one case or all.

Inputs are pairs of files (:class:`CasePair`): a reference segmentation and a prediction, label maps (NIfTI,
NRRD, MHA) or Slicer segmentations (``.seg.nrrd``). Pairs come from

- two folders (:func:`pair_folders`): files paired by case id, the file name without its extension and
  without a segmentation mark (``_seg``, ``_label``, ``_labels``, ``_labelmap``, ``_segmentation``), so
  ``ct01_seg.nii.gz`` pairs with ``ct01.seg.nrrd``;
- a TrainingDataExport case list (:func:`pair_case_list`): each annotated case's ``segmentation`` is the
  reference, its prediction is the file named after the case id in the prediction folder (a batch output),
  and the label schema is ``labels.json`` beside the case list when there is one;
- any list the caller builds (a batch run knows its outputs): ``Pairing([CasePair(...), ...])``.

**Labels.** Given a schema (``ModelRegistryLib.index.Label`` objects: a project's ``labels.json``, a model's
registry labels), label maps are read by value and Slicer segmentations by segment name, else terminology
(``TrainingDataExportLib.read_label_map``). Without one, the first Slicer segmentation of the cohort
(references first) gives the schema, its segments' names and values; with label maps only, every value
found in either file is a label. Files are read with the schema only: values or segments it lacks are noted.

:func:`evaluate_case` measures one pair and never raises for a bad file: the case records the error and the
cohort goes on. :func:`evaluate_cohort` measures every pair with progress and cancel, and returns an
:class:`EvaluationReport` that is JSON-able (:meth:`EvaluationReport.to_json`), so it can come back from a
worker process; ``evaluation_report`` writes it as Markdown, JSON, CSV and plots.

Example::

    >>> import os, tempfile
    >>> import numpy as np, SimpleITK as sitk
    >>> folder = tempfile.mkdtemp()
    >>> labels = np.zeros((8, 8, 8), np.uint8)
    >>> labels[2:6, 2:6, 2:6] = 1
    >>> for subfolder, name in (("reference", "ct01_seg.nii.gz"), ("prediction", "ct01.nii.gz"),
    ...                         ("prediction", "ct02.nii.gz")):
    ...     os.makedirs(os.path.join(folder, subfolder), exist_ok=True)
    ...     sitk.WriteImage(sitk.GetImageFromArray(labels), os.path.join(folder, subfolder, name))
    >>> pairing = pair_folders(os.path.join(folder, "reference"), os.path.join(folder, "prediction"))
    >>> [pair.case_id for pair in pairing.pairs], pairing.prediction_only
    (['ct01'], ('ct02',))
    >>> report = evaluate_cohort(pairing, tolerance_mm=1.0)
    >>> [(case.case_id, case.labels[0].name, case.labels[0].dice) for case in report.cases]
    [('ct01', 'Label 1', 1.0)]
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from ModelRegistryLib.errors import CancelledError
from ModelRegistryLib.index import Label
from TrainingDataExportLib.caselist import case_id_of, natural_sort_key, read_case_list
from TrainingDataExportLib.labelschema import DEFAULT_LABEL_SCHEMA_NAME, load_label_schema
from TrainingDataExportLib.segmentations import read_label_map, segments_of, terminology_key

from .evaluation import (
    DEFAULT_COLOR,
    DEFAULT_TOLERANCE_MM,
    EvaluationError,
    LabelMetrics,
    align_to_reference,
    as_labels,
    check_tolerance,
    label_map_metrics,
)

SEGMENTATION_FILE_SUFFIX = ".seg.nrrd"
# read_label_map's problems that only say a label or the whole segmentation is empty: evaluation reports
# emptiness per label (LabelMetrics.status), so these would be noise in a case's notes.
_EMPTY_SEGMENTATION = "segmentation is empty"


class EvaluationCancelledError(CancelledError):
    """The user cancelled an evaluation; nothing was written."""


@dataclass(frozen=True)
class CasePair:
    """A case's reference and prediction files; ``image`` (optional) is the case's image, for viewing."""

    case_id: str
    reference: str
    prediction: str
    image: str = ""


@dataclass(frozen=True)
class Pairing:
    """Pairs to evaluate and what could not be paired (case ids): references without a prediction,
    predictions without a reference, and case-list cases not annotated yet. ``labels`` is the schema that
    came with the inputs (a case list's ``labels.json``), or empty."""

    pairs: tuple
    reference_only: tuple = ()
    prediction_only: tuple = ()
    unannotated: tuple = ()
    labels: tuple = ()
    source: dict = field(default_factory=dict)


@dataclass
class CaseEvaluation:
    """One case's results: :class:`~DeepSegmentLib.evaluation.LabelMetrics` per label, ``notes`` (how the
    files were read and aligned) and ``error`` (why the case could not be measured, else "")."""

    case_id: str
    reference: str
    prediction: str
    image: str = ""
    labels: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    error: str = ""

    def label(self, value: int) -> LabelMetrics | None:
        return next((result for result in self.labels if result.value == value), None)

    def to_json(self) -> dict:
        return {"case_id": self.case_id, "reference": self.reference, "prediction": self.prediction,
                "image": self.image, "labels": [result.to_json() for result in self.labels],
                "notes": list(self.notes), "error": self.error}

    @classmethod
    def from_json(cls, data: dict) -> CaseEvaluation:
        return cls(data["case_id"], data["reference"], data["prediction"], data.get("image", ""),
                   [LabelMetrics.from_json(item) for item in data["labels"]], list(data.get("notes", ())),
                   data.get("error", ""))


def _label_json(label: Label) -> dict:
    return {"value": label.value, "name": label.name, "color": label.color}


@dataclass
class EvaluationReport:
    """A cohort's results: cases, the labels evaluated, the NSD tolerance, what could not be paired, where the
    inputs came from (``source``) and how long it took."""

    cases: list
    labels: list
    tolerance_mm: float
    reference_only: list = field(default_factory=list)
    prediction_only: list = field(default_factory=list)
    unannotated: list = field(default_factory=list)
    source: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def failed(self) -> list:
        return [case for case in self.cases if case.error]

    def to_json(self) -> dict:
        """A JSON-able dict (no NaN or infinity; see ``LabelMetrics.to_json``)."""
        return {"tolerance_mm": self.tolerance_mm, "labels": [_label_json(label) for label in self.labels],
                "cases": [case.to_json() for case in self.cases], "reference_only": list(self.reference_only),
                "prediction_only": list(self.prediction_only), "unannotated": list(self.unannotated),
                "source": dict(self.source), "seconds": self.seconds}

    @classmethod
    def from_json(cls, data: dict) -> EvaluationReport:
        return cls([CaseEvaluation.from_json(item) for item in data["cases"]],
                   [Label(int(item["value"]), item["name"], item.get("color", DEFAULT_COLOR))
                    for item in data["labels"]],
                   float(data["tolerance_mm"]), list(data.get("reference_only", ())),
                   list(data.get("prediction_only", ())), list(data.get("unannotated", ())),
                   dict(data.get("source", {})), float(data.get("seconds", 0.0)))


# --- pairing -------------------------------------------------------------------------------------------------


def label_files(folder: str) -> dict:
    """``{case id: path}`` of the label files in ``folder`` (not its subfolders), in case-id order.

    Raises :class:`~DeepSegmentLib.evaluation.EvaluationError` when the folder is missing or two files
    name one case.
    """
    folder = os.path.abspath(os.fspath(folder))
    if not os.path.isdir(folder):
        raise EvaluationError(f"folder not found: {folder}")
    found = {}
    clashes = []
    for name in sorted(os.listdir(folder)):
        case_id = case_id_of(name)
        if case_id is None or not os.path.isfile(os.path.join(folder, name)):
            continue
        if case_id in found:
            clashes.append(f"{os.path.basename(found[case_id])} and {name}")
        found[case_id] = os.path.join(folder, name)
    if clashes:
        raise EvaluationError(f"{folder}: several files for one case: {'; '.join(clashes)}")
    return {case_id: found[case_id] for case_id in sorted(found, key=natural_sort_key)}


def pair_folders(reference_folder: str, prediction_folder: str) -> Pairing:
    """Pair the label files of two folders by case id (see the module)."""
    references, predictions = label_files(reference_folder), label_files(prediction_folder)
    pairs = tuple(CasePair(case_id, path, predictions[case_id]) for case_id, path in references.items()
                  if case_id in predictions)
    return Pairing(pairs, tuple(case_id for case_id in references if case_id not in predictions),
                   tuple(case_id for case_id in predictions if case_id not in references),
                   source={"reference": os.path.abspath(reference_folder),
                           "prediction": os.path.abspath(prediction_folder)})


def _first_image(case) -> str:
    return next(iter(case.images.values()), "")


def pair_case_list(case_list: str, prediction_folder: str) -> Pairing:
    """Pair a case list's annotated cases (references) with the prediction folder's files (see the module).

    Raises ``TrainingDataExportLib.CaseListError`` for a bad case list and ``LabelSchemaError`` for a bad
    ``labels.json`` beside it.
    """
    cases = read_case_list(case_list)
    predictions = label_files(prediction_folder)
    schema_path = os.path.join(os.path.dirname(os.path.abspath(case_list)), DEFAULT_LABEL_SCHEMA_NAME)
    labels = tuple(load_label_schema(schema_path)) if os.path.isfile(schema_path) else ()
    case_ids = {case.case_id for case in cases}
    pairs = tuple(CasePair(case.case_id, case.segmentation, predictions[case.case_id], _first_image(case))
                  for case in cases if case.segmentation and case.case_id in predictions)
    source = {"cases": os.path.abspath(case_list), "prediction": os.path.abspath(prediction_folder)}
    if labels:
        source["labels"] = schema_path
    missing = tuple(case.case_id for case in cases if case.segmentation and case.case_id not in predictions)
    return Pairing(pairs, missing, tuple(case_id for case_id in predictions if case_id not in case_ids),
                   tuple(case.case_id for case in cases if not case.segmentation), labels, source)


def parse_labels(text: str | None) -> list | None:
    """Labels given as text (``--labels``, a panel field): a label schema file, or comma-separated label values;
    None when ``text`` is empty.

    >>> [label.value for label in parse_labels("1, 3")]
    [1, 3]
    """
    if not text:
        return None
    if os.path.isfile(text):
        return list(load_label_schema(text))
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise EvaluationError(f"labels are a label schema file or values such as 1,2,5, not {text!r}") from None
    if not values:
        raise EvaluationError(f"no label value in {text!r}")
    return as_labels(values)


# --- reading -------------------------------------------------------------------------------------------------


def _header(path: str) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(os.fspath(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise EvaluationError(f"cannot read {path}: {str(error).strip().splitlines()[-1]}") from None
    return reader


def _color(text: str) -> str:
    try:
        red, green, blue = (min(max(float(part), 0.0), 1.0) for part in text.split())
    except ValueError:
        return DEFAULT_COLOR
    return "#{:02x}{:02x}{:02x}".format(*(round(component * 255) for component in (red, green, blue)))


def file_schema(path: str) -> list | None:
    """The labels a Slicer segmentation file's segments define (names, colors and their values in the file,
    renumbered 1, 2... when segments on different layers share one), or None for a plain label map."""
    reader = _header(path)
    metadata = {key: reader.GetMetaData(key) for key in reader.GetMetaDataKeys()}
    segments = segments_of(metadata)
    if not segments:
        return None
    values = [segment.label_value for segment in segments]
    if len(set(values)) != len(values) or min(values) <= 0:
        values = list(range(1, len(segments) + 1))
    labels = []
    for segment, value in zip(segments, values):
        color = _color(metadata.get(f"Segment{segment.index}_Color", ""))
        labels.append(Label(value, segment.name, color))
    return labels


def _values_present(array: np.ndarray) -> list:
    """The positive values of an integer array (a histogram where the values are small, else a sort)."""
    if array.dtype.kind == "b":
        return [1] if array.any() else []
    if array.dtype.kind not in "iu":
        raise EvaluationError(f"a label map holds integers, not {array.dtype}")
    if array.size and array.dtype.itemsize <= 2 and array.min() >= 0:
        present = np.flatnonzero(np.bincount(array.ravel()))
    else:
        present = np.unique(array)
    return [int(value) for value in present if value > 0]


def _integer_labels(image: sitk.Image, path: str) -> sitk.Image:
    """A label map stored as floating point (NIfTI often is) as integers, when every value is a whole number."""
    if image.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
        return image
    array = sitk.GetArrayViewFromImage(image)
    if not np.array_equal(array, np.round(array)):
        raise EvaluationError(f"{path} has non-integer values: a label map holds one label value per voxel")
    return sitk.Cast(image, sitk.sitkInt32)


def read_label_file(path: str, labels: Sequence | None = None) -> tuple:
    """``(label map image, labels, notes)`` of a segmentation file.

    With ``labels`` (a schema), the file is read with it (``TrainingDataExportLib.read_label_map``) and the
    labels are those; without, a label map is read as it is and its labels are the values present.
    ``notes`` are the problems found (values or segments outside the schema, overlapping segments).
    Raises :class:`~DeepSegmentLib.evaluation.EvaluationError` when the file cannot be used.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise EvaluationError(f"file not found: {path}")
    if labels:
        image, problems = read_label_map(path, labels)
        notes = [str(problem) for problem in problems
                 if problem.blocking and not str(problem).startswith(_EMPTY_SEGMENTATION)]
        if image is None:
            raise EvaluationError("; ".join(notes) or f"cannot read {path}")
        return image, list(labels), notes
    try:
        image = sitk.ReadImage(path)
    except RuntimeError as error:
        raise EvaluationError(f"cannot read {path}: {str(error).strip().splitlines()[-1]}") from None
    image = _integer_labels(image, path)
    return image, as_labels(_values_present(sitk.GetArrayViewFromImage(image))), []


def cohort_schema(pairs: Iterable[CasePair]) -> list | None:
    """The labels of the first Slicer segmentation among the references, else the predictions, or None."""
    pairs = list(pairs)
    for path in [pair.reference for pair in pairs] + [pair.prediction for pair in pairs]:
        if path.lower().endswith(SEGMENTATION_FILE_SUFFIX) and os.path.isfile(path):
            labels = file_schema(path)
            if labels:
                return labels
    return None


def match_segments(reference: Sequence[tuple], prediction: Sequence[tuple]) -> list:
    """For each reference segment ``(name, serialized terminology)``, the index of the prediction segment that is
    the same structure, or None: the same name (letter case and surrounding spaces ignored), else the same
    terminology (category, type and modifier codes, as ``TrainingDataExportLib`` matches segments). A
    terminology that several segments of one side share names no one structure (Slicer gives segments made
    without one a generic "Tissue"), so it matches nothing. Each prediction segment is used once.

    >>> match_segments([("Liver", ""), ("Tumor", ""), ("Cyst", "")], [("tumor", ""), ("LIVER ", ""), ("Spleen", "")])
    [1, 0, None]
    """

    def distinctive_keys(segments) -> list:
        keys = [terminology_key(terminology or "") for _, terminology in segments]
        codes = [key[:3] if key else None for key in keys]
        return [code if code is not None and codes.count(code) == 1 else None for code in codes]

    reference_keys, prediction_keys = distinctive_keys(reference), distinctive_keys(prediction)
    names = [name.strip().casefold() for name, _ in prediction]
    used, matches = set(), []
    for (name, _), key in zip(reference, reference_keys):
        candidates = [index for index, other in enumerate(names) if other == name.strip().casefold()]
        candidates += [index for index, other in enumerate(prediction_keys) if key is not None and other == key]
        match = next((index for index in candidates if index not in used), None)
        if match is not None:
            used.add(match)
        matches.append(match)
    return matches


# --- evaluating ----------------------------------------------------------------------------------------------


def read_case_labels(pair: CasePair, labels: Sequence | None = None, resample: bool = True) -> tuple:
    """``(reference, prediction, labels, notes)``: a pair's label maps on one grid (see
    :func:`~DeepSegmentLib.evaluation.align_to_reference`), with the labels to compare (``labels``, else the
    files' own: see the module) and notes on how they were read and aligned. Raises
    :class:`~DeepSegmentLib.evaluation.EvaluationError` when the files cannot be used."""
    schema = as_labels(labels) if labels else (file_schema(pair.reference) or file_schema(pair.prediction))
    reference, reference_labels, reference_notes = read_label_file(pair.reference, schema)
    prediction, prediction_labels, prediction_notes = read_label_file(pair.prediction, schema)
    if schema is None:
        schema = as_labels(sorted({label.value for label in [*reference_labels, *prediction_labels]}))
    reference, prediction, grid_notes = align_to_reference(reference, prediction, resample)
    notes = [f"reference: {note}" for note in reference_notes]
    notes += [f"prediction: {note}" for note in prediction_notes]
    return reference, prediction, schema, notes + grid_notes


def evaluate_case(pair: CasePair, labels: Sequence | None = None, tolerance_mm: float = DEFAULT_TOLERANCE_MM,
                  resample: bool = True) -> CaseEvaluation:
    """Measure one pair (:func:`read_case_labels`, then :func:`~DeepSegmentLib.evaluation.label_map_metrics`); a
    file that cannot be read or compared gives a case with ``error`` set instead of an exception.

    Args:
        pair: the case's files.
        labels: the schema (``Label`` objects or values); None: the files' own (see the module).
        tolerance_mm: the normalized surface Dice's tolerance.
        resample: resample a prediction on another grid onto the reference's (nearest neighbour).
    """
    case = CaseEvaluation(pair.case_id, pair.reference, pair.prediction, pair.image)
    try:
        reference, prediction, schema, case.notes = read_case_labels(pair, labels, resample)
        case.labels = label_map_metrics(sitk.GetArrayViewFromImage(reference), sitk.GetArrayViewFromImage(prediction),
                                        reference.GetSpacing(), schema, tolerance_mm)
    except (EvaluationError, ValueError, OSError, RuntimeError) as error:
        case.error = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
    return case


def _complete(case: CaseEvaluation, labels: Sequence) -> CaseEvaluation:
    """The case with a "both empty" result for each of ``labels`` its files did not have."""
    if case.error:
        return case
    present = {result.value for result in case.labels}
    missing = [LabelMetrics(label.value, label.name, math.nan, math.nan, math.nan, math.nan, 0.0, 0.0)
               for label in labels if label.value not in present]
    order = {label.value: position for position, label in enumerate(labels)}
    case.labels = sorted(case.labels + missing, key=lambda result: order.get(result.value, len(order)))
    return case


def evaluate_cohort(pairing: Pairing | Sequence[CasePair], labels: Sequence | None = None,
                    tolerance_mm: float = DEFAULT_TOLERANCE_MM, resample: bool = True,
                    progress: Callable[[float, str], None] | None = None, cancel=None) -> EvaluationReport:
    """Measure every pair; the report lists failed cases with their reason, and the unpaired files.

    Args:
        pairing: a :class:`Pairing` (or a list of :class:`CasePair`).
        labels: the schema; None: the pairing's, else the cohort's files' (see the module).
        tolerance_mm: the normalized surface Dice's tolerance.
        resample: resample a prediction on another grid onto the reference's (nearest neighbour).
        progress: called with ``(fraction, message)`` before each case and at the end.
        cancel: a ``threading.Event`` (or any object with ``is_set()``); when set, the evaluation stops
            with :class:`EvaluationCancelledError` before the next case.
    """
    if not isinstance(pairing, Pairing):
        pairing = Pairing(tuple(pairing))
    check_tolerance(tolerance_mm)
    start = time.perf_counter()
    schema = as_labels(labels) if labels else (list(pairing.labels) or cohort_schema(pairing.pairs))
    cases = []
    total = len(pairing.pairs)
    for number, pair in enumerate(pairing.pairs):
        if cancel is not None and cancel.is_set():
            raise EvaluationCancelledError("evaluation cancelled")
        if progress is not None:
            progress(number / max(total, 1), f"case {pair.case_id} ({number + 1} of {total})")
        cases.append(evaluate_case(pair, schema, tolerance_mm, resample))
    if schema is None:
        values = sorted({result.value for case in cases for result in case.labels})
        names = {result.value: result.name for case in cases for result in case.labels}
        schema = [Label(value, names[value], DEFAULT_COLOR) for value in values]
    if progress is not None:
        progress(1.0, f"evaluated {total} cases")
    return EvaluationReport([_complete(case, schema) for case in cases], list(schema), float(tolerance_mm),
                            list(pairing.reference_only), list(pairing.prediction_only), list(pairing.unannotated),
                            dict(pairing.source), time.perf_counter() - start)



def evaluate_and_report(pairing: Pairing, labels: Sequence | None = None, tolerance_mm: float = DEFAULT_TOLERANCE_MM,
                        resample: bool = True, report_folder: str = "",
                        progress: Callable[[float, str], None] | None = None, cancel=None) -> EvaluationReport:
    """:func:`evaluate_cohort`, then the report written into ``report_folder`` when one is given: the job a
    panel runs in a worker process (arguments and result travel as JSON).

    >>> report = evaluate_and_report(Pairing(()), [Label(1, "Liver", "#dd8259")], report_folder="")
    >>> report.cases
    []
    """
    report = evaluate_cohort(pairing, labels, tolerance_mm, resample, progress=progress, cancel=cancel)
    if report_folder:
        if progress is not None:
            progress(1.0, "writing the report")
        from .evaluation_report import write_report  # that module imports this one

        write_report(report, report_folder)
    return report

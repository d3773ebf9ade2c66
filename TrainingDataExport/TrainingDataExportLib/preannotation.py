"""Model-assisted annotation: cases a model pre-annotated, and how much the annotators changed its predictions.

A DeepSegment batch run over a case list can write each prediction into the case list (:func:`record_pre_annotations`):
the case gets status "pre-annotated" and the ``pre_annotation``, ``model_id`` and ``model_version`` columns. The
annotation workflow then opens the prediction for correction instead of an empty segmentation, and saving writes the
annotator's own file (the prediction stays as it was). At export time, :func:`pre_annotation_changes` compares each
prediction with the final label map, label by label (Dice), for the dataset card, which also shows the time spent per
case: a reader sees which labels started from a model and how far the annotators had to move them.

The Dice of two label maps is computed here in one pass (a joint histogram of the two maps' values); DeepSegment's
evaluation (``DeepSegmentLib.evaluation``) has the full set of measures, which this module does not need: this one
must not depend on DeepSegment.

Example::

    >>> import numpy as np
    >>> prediction = np.array([[0, 1, 1, 2], [0, 1, 2, 2]], np.uint8)
    >>> final = np.array([[0, 1, 1, 1], [0, 1, 2, 2]], np.uint8)
    >>> label_dice(prediction, final, [1, 2, 3])
    {1: 0.857143, 2: 0.8, 3: None}
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from .caselist import IN_PROGRESS, PRE_ANNOTATED, TO_DO, Case, read_case_list, write_case_list
from .segmentations import label_on_grid, read_label_map

DICE_DIGITS = 6
# Cases whose pre-annotation a new prediction may replace: nobody has started correcting them.
REPLACEABLE_STATUSES = (TO_DO, PRE_ANNOTATED)


def label_dice(first: np.ndarray, second: np.ndarray, values: Sequence[int]) -> dict:
    """Dice of each label value between two label maps of one shape: ``2|A∩B| / (|A| + |B|)``, rounded to 6
    digits; None where the value is in neither map (nothing to compare). Values must be 0 or more."""
    first, second = np.asarray(first).ravel(), np.asarray(second).ravel()
    if first.shape != second.shape:
        raise ValueError(f"label maps of {first.size} and {second.size} voxels cannot be compared")
    if (first.size and min(int(first.min()), int(second.min())) < 0) or any(int(v) < 0 for v in values):
        raise ValueError("label values must be 0 or more")
    top = max([int(first.max(initial=0)), int(second.max(initial=0)), *(int(v) for v in values)]) + 1
    # One pass: voxel counts of every (first value, second value) pair.
    joint = np.bincount(first.astype(np.int64) * top + second, minlength=top * top).reshape(top, top)
    dice = {}
    for value in (int(v) for v in values):
        total = int(joint[value, :].sum() + joint[:, value].sum())
        dice[value] = round(2.0 * int(joint[value, value]) / total, DICE_DIGITS) if total else None
    return dice


def pre_annotation_changes(case: Case, final_label: sitk.Image, labels: Sequence, overlap: str = "error") -> dict:
    """How the annotator changed ``case``'s prediction: the model, its version and the Dice of each schema label
    between the prediction and ``final_label`` (the exported label map on the case's image grid, schema values),
    with ``problem`` saying why nothing could be compared ("" when the Dice is there).

    The prediction is read with the schema like any segmentation (segments by name or terminology, label maps by
    value) and brought onto the final label map's grid (nearest neighbour when the grids differ).
    """
    values = [int(label.value) for label in labels]
    changes = {"model_id": case.model_id, "model_version": case.model_version, "dice": {}, "problem": ""}
    if not os.path.isfile(case.pre_annotation):
        changes["problem"] = f"the prediction {case.pre_annotation} no longer exists"
        return changes
    prediction, problems = read_label_map(case.pre_annotation, labels, overlap=overlap)
    problem = ""
    if prediction is not None:
        prediction, problem = label_on_grid(prediction, final_label, resample=True)
    if prediction is None:
        reasons = [str(p) for p in problems if "is empty" not in str(p)] or [problem or "unreadable"]
        changes["problem"] = f"the prediction cannot be compared: {reasons[0]}"
        return changes
    dice = label_dice(sitk.GetArrayViewFromImage(prediction), sitk.GetArrayViewFromImage(final_label), values)
    changes["dice"] = {str(value): dice[value] for value in values}
    return changes


def record_pre_annotations(case_list_path: str, predictions: Mapping[str, tuple]) -> list:
    """Record model predictions as pre-annotations in the case list at ``case_list_path``; returns the case ids
    recorded.

    ``predictions`` maps a case id to ``(prediction file, model id, model version)``. Only cases nobody has started
    annotating take one (status "to do" or "pre-annotated", no segmentation): they become "pre-annotated" with the
    three columns set. Others are left as they are. The case list is read afresh and written atomically (the
    previous version kept as ``.bak``), and not at all when nothing changes.

    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> path = os.path.join(folder, "cases.csv")
    >>> write_case_list(path, [Case("a", "p1", {"image": "a.nrrd"}), Case("b", "p2", {"image": "b.nrrd"}, "b.nrrd")])
    >>> predictions = {c: (os.path.join(folder, "out", f"{c}.seg.nrrd"), "demo", "1.0.0") for c in "ab"}
    >>> record_pre_annotations(path, predictions)
    ['a']
    >>> print(open(path, encoding="utf-8").read(), end="")
    case_id,patient_id,image,segmentation,status,annotator,time_spent,pre_annotation,model_id,model_version
    a,p1,a.nrrd,,pre-annotated,,0,out/a.seg.nrrd,demo,1.0.0
    b,p2,b.nrrd,b.nrrd,in progress,,0,,,
    """
    cases = read_case_list(case_list_path)
    recorded = []
    for case in cases:
        if case.case_id not in predictions or case.annotated or case.status not in REPLACEABLE_STATUSES:
            continue
        path, model_id, model_version = predictions[case.case_id]
        case.pre_annotation, case.model_id, case.model_version = os.path.abspath(path), model_id, model_version
        case.status = PRE_ANNOTATED
        recorded.append(case.case_id)
    if recorded:
        write_case_list(case_list_path, cases)
    return recorded


def status_after_loading(case: Case) -> str:
    """The status a case takes when the annotation workflow loads it: a case to do, or a pre-annotation opened for
    correction, is in progress from then on; any other keeps its own.

    >>> status_after_loading(Case("a", "p1", {"image": "a.nrrd"}, pre_annotation="a.seg.nrrd"))
    'in progress'
    """
    return IN_PROGRESS if case.status in REPLACEABLE_STATUSES else case.status

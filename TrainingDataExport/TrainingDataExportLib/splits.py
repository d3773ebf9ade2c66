"""Patient-level splits: a held-out test set and k cross-validation folds that never leak a patient.

The unit is the patient: all cases of one ``patient_id`` (several scans, visits or sequences) go to the same
side of every split, test versus training and, within each fold, validation versus training. Splitting by
case instead lets a model see a patient's other scan during training and look better than it is.

- Test set: whole patients, about ``test_fraction`` of the *cases*, chosen at random (seeded) within each
  stratum, so that every stratum is represented in proportion.
- Folds: the remaining patients are dealt into ``folds`` validation sets, largest patient first, always into
  a fold that keeps the case counts within one patient of each other, and among those into the fold with the
  fewest patients' cases of the same stratum. Every training case is validated in exactly one fold.
- Strata: ``strata`` maps a case id to any key, typically which labels the case contains (a ``frozenset``
  of label names). A patient's stratum is the most common key among its cases (ties: the first in sorted
  order), since a patient can only go one way. Keys should be built from ``str``, ``int``, ``tuple`` and
  ``frozenset`` so that their order does not depend on the process.
- Deterministic: the same cases, settings and seed give the same split, in whatever order the cases come.
  The test set does not depend on ``folds``.

``folds`` of 0 or 1 makes no folds (a single fold would validate on every training case and train on none):
:attr:`DatasetSplit.folds` is empty and every non-test case is simply training data.

Example::

    >>> from TrainingDataExportLib.caselist import Case
    >>> cases = [Case(f"c{i}", f"p{i // 2}", {"image": f"c{i}.nrrd"}) for i in range(10)]
    >>> split = split_by_patient(cases, folds=2, test_fraction=0.2, seed=1)
    >>> split.test
    ('c4', 'c5')
    >>> split.subset_of("c4"), split.subset_of("c0"), split.validation_fold_of("c0")
    ('test', 'train', 0)
    >>> [validation for train, validation in split.folds]
    [('c0', 'c1', 'c6', 'c7'), ('c2', 'c3', 'c8', 'c9')]
    >>> DatasetSplit.from_json(split.to_json()) == split
    True
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

TEST = "test"
TRAIN = "train"

_MAX_LISTED = 10


def _listed(items: Sequence) -> str:
    """``a, b, c`` with at most ``_MAX_LISTED`` items named, so that an error stays readable."""
    items = list(items)
    text = ", ".join(str(item) for item in items[:_MAX_LISTED])
    return text + (f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


@dataclass(frozen=True)
class DatasetSplit:
    """Where each case goes: ``test`` and ``train`` case ids, and one ``(train, validation)`` pair per fold.

    All are sorted tuples of case ids (any iterables are accepted and sorted). ``train`` may be left out when
    there are folds: it is then the union of the first fold. Inconsistent content (a case on both sides, folds
    that do not partition the training cases) raises ``ValueError``, so a split read from a file is checked.

    >>> split = DatasetSplit(test=("c",), folds=((("b",), ("a",)), (("a",), ("b",))), seed=0)
    >>> split.train, split.subset_of("b"), split.validation_fold_of("b"), split.validation_fold_of("c")
    (('a', 'b'), 'train', 1, None)
    """

    test: tuple
    folds: tuple
    seed: int
    train: tuple = ()
    # case id -> (subset, index of the fold validating it or None), for constant-time look-ups.
    _placement: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        test = tuple(sorted(self.test))
        folds = tuple((tuple(sorted(train)), tuple(sorted(validation))) for train, validation in self.folds)
        train = tuple(sorted(self.train)) if self.train or not folds else tuple(sorted(folds[0][0] + folds[0][1]))
        placement = {}
        for subset, ids in ((TEST, test), (TRAIN, train)):
            for case_id in ids:
                if case_id in placement:
                    raise ValueError(f"case {case_id!r} is listed twice in the split ({placement[case_id][0]})")
                placement[case_id] = (subset, None)
        train_set = set(train)
        for index, (fold_train, validation) in enumerate(folds):
            both = fold_train + validation
            if len(set(both)) != len(both) or set(both) != train_set:
                raise ValueError(
                    f"fold {index}: its training and validation cases must partition the {len(train)} training cases"
                )
            for case_id in validation:
                if placement[case_id][1] is not None:
                    raise ValueError(f"case {case_id!r} is validated in folds {placement[case_id][1]} and {index}")
                placement[case_id] = (TRAIN, index)
        unvalidated = [case_id for case_id in train if folds and placement[case_id][1] is None]
        if unvalidated:
            raise ValueError(f"training cases validated in no fold: {_listed(unvalidated)}")
        object.__setattr__(self, "test", test)
        object.__setattr__(self, "folds", folds)
        object.__setattr__(self, "train", train)
        object.__setattr__(self, "_placement", placement)

    @property
    def case_ids(self) -> tuple:
        """Every case of the split, sorted."""
        return tuple(sorted(self._placement))

    def _place(self, case_id: str) -> tuple:
        try:
            return self._placement[case_id]
        except KeyError:
            raise KeyError(f"case {case_id!r} is not in this split") from None

    def subset_of(self, case_id: str) -> str:
        """``"test"`` or ``"train"``; ``KeyError`` for a case the split does not hold."""
        return self._place(case_id)[0]

    def validation_fold_of(self, case_id: str) -> int | None:
        """Index of the fold whose validation set holds ``case_id``; None for test cases or without folds."""
        return self._place(case_id)[1]

    def to_json(self) -> dict:
        """A JSON-ready dictionary (keys in a fixed order); :meth:`from_json` reads it back."""
        return {
            "seed": self.seed,
            "test": list(self.test),
            "train": list(self.train),
            "folds": [{"train": list(train), "validation": list(validation)} for train, validation in self.folds],
        }

    @classmethod
    def from_json(cls, d: Mapping) -> DatasetSplit:
        """The split :meth:`to_json` wrote; ``ValueError`` naming the field for anything malformed."""
        if not isinstance(d, Mapping):
            raise ValueError("a split must be a JSON object with seed, test, train and folds")

        def ids(value, where: str) -> tuple:
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise ValueError(f"split {where}: must be a list of case ids (strings)")
            return tuple(value)

        seed = d.get("seed")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError("split seed: must be an integer")
        folds = d.get("folds", [])
        if not isinstance(folds, list) or not all(isinstance(fold, Mapping) for fold in folds):
            raise ValueError("split folds: must be a list of objects with train and validation")
        return cls(
            test=ids(d.get("test", []), "test"),
            folds=tuple(
                (ids(fold.get("train"), f"folds[{i}].train"), ids(fold.get("validation"), f"folds[{i}].validation"))
                for i, fold in enumerate(folds)
            ),
            seed=seed,
            train=ids(d.get("train", []), "train"),
        )


# --- splitting ----------------------------------------------------------------------------------------


def _stratum_text(key: Hashable) -> str:
    """A text for ``key`` that orders strata the same way in every process.

    ``repr`` of a frozenset of strings depends on the process's string hashing, so sets are written sorted.
    """
    if isinstance(key, (frozenset, set)):
        return "{" + ",".join(sorted(_stratum_text(item) for item in key)) + "}"
    if isinstance(key, tuple):
        return "(" + ",".join(_stratum_text(item) for item in key) + ")"
    return repr(key)


def check_split_arguments(folds: int, test_fraction: float, seed: int) -> None:
    """Raise ``ValueError`` for folds, a test fraction or a seed :func:`split_by_patient` cannot use."""
    if not isinstance(folds, int) or isinstance(folds, bool) or folds < 0:
        raise ValueError(f"folds must be a whole number, 0 (or 1) for no folds, not {folds!r}")
    if not isinstance(test_fraction, (int, float)) or not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be at least 0 and below 1 (0 for no test set), not {test_fraction!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, not {seed!r}")


def _cases_by_patient(cases: Sequence) -> dict:
    """patient id -> sorted tuple of its case ids; ``ValueError`` for duplicate ids or missing patient ids."""
    seen, duplicates, without_patient = set(), [], []
    by_patient = {}
    for case in cases:
        if case.case_id in seen:
            duplicates.append(case.case_id)
        seen.add(case.case_id)
        if not isinstance(case.patient_id, str) or not case.patient_id.strip():
            without_patient.append(case.case_id)
        else:
            by_patient.setdefault(case.patient_id, []).append(case.case_id)
    if duplicates:
        raise ValueError(f"duplicate case ids, each case must appear once: {_listed(sorted(set(duplicates)))}")
    if without_patient:
        raise ValueError(
            f"cases without a patient id (use the case id when each case is its own patient): "
            f"{_listed(without_patient)}"
        )
    return {patient: tuple(sorted(ids)) for patient, ids in by_patient.items()}


def _patient_strata(by_patient: Mapping, strata: Mapping | None) -> dict:
    """patient id -> stratum text: the most common stratum of its cases, ties to the first in sorted order."""
    if strata is None:
        return dict.fromkeys(by_patient, "")
    missing = sorted(case_id for ids in by_patient.values() for case_id in ids if case_id not in strata)
    if missing:
        raise ValueError(f"strata gives no stratum for cases: {_listed(missing)}")
    result = {}
    for patient, ids in by_patient.items():
        counts = Counter(_stratum_text(strata[case_id]) for case_id in ids)
        result[patient] = min(counts, key=lambda text: (-counts[text], text))
    return result


def _stratum_quotas(cases_per_stratum: Mapping, test_fraction: float, stratum_rank: Mapping) -> dict:
    """Test cases per stratum: whole numbers proportional to each stratum, summing to the rounded total.

    Largest remainders get the extra case (ties by the seeded ``stratum_rank``), so that ten strata of two
    cases each still give a 20 % test set of four cases instead of none.
    """
    exact = {stratum: test_fraction * count for stratum, count in cases_per_stratum.items()}
    quotas = {stratum: math.floor(value) for stratum, value in exact.items()}
    # Half up, not Python's round-half-to-even, so that a user can predict the size from the fraction.
    total = math.floor(test_fraction * sum(cases_per_stratum.values()) + 0.5)
    by_remainder = sorted(exact, key=lambda stratum: (quotas[stratum] - exact[stratum], stratum_rank[stratum]))
    for stratum in by_remainder[: total - sum(quotas.values())]:
        quotas[stratum] += 1
    return quotas


def _fill(patients: Sequence, sizes: Mapping, goal: int) -> list:
    """Patients (taken in the given, shuffled, order) whose cases add up as close to ``goal`` as possible."""
    chosen, count = [], 0
    for patient in patients:
        if count + sizes[patient] <= goal:
            chosen.append(patient)
            count += sizes[patient]
    chosen_set = set(chosen)
    left = [patient for patient in patients if patient not in chosen_set]
    if count < goal and left:
        # Every patient left is larger than the shortfall; overshooting with the smallest may still be closer.
        smallest = min(left, key=lambda patient: sizes[patient])
        if sizes[smallest] - (goal - count) < goal - count:
            chosen.append(smallest)
    return chosen


def _test_patients(order: Sequence, sizes: Mapping, stratum_of: Mapping, test_fraction: float) -> set:
    by_stratum = {}
    for patient in order:
        by_stratum.setdefault(stratum_of[patient], []).append(patient)
    cases_per_stratum = {stratum: sum(sizes[p] for p in patients) for stratum, patients in by_stratum.items()}
    # A stratum ranks by where its first patient fell in the shuffle: ties between strata are seeded too.
    stratum_rank = {stratum: rank for rank, stratum in enumerate(by_stratum)}
    quotas = _stratum_quotas(cases_per_stratum, test_fraction, stratum_rank)
    chosen = set()
    # What earlier strata took over (or under) their quota is asked back from later ones, so the total holds.
    excess = 0
    for stratum in sorted(by_stratum):
        taken = _fill(by_stratum[stratum], sizes, quotas[stratum] - excess)
        chosen.update(taken)
        excess += sum(sizes[p] for p in taken) - quotas[stratum]
    return chosen


def _fold_of_patient(patients: Sequence, sizes: Mapping, stratum_of: Mapping, rank: Mapping, folds: int) -> dict:
    """patient id -> fold index; fold case counts stay within the largest patient's size of each other."""
    largest = max(sizes[patient] for patient in patients)
    totals = [0] * folds
    stratum_counts = {}
    fold_of = {}
    for patient in sorted(patients, key=lambda p: (-sizes[p], stratum_of[p], rank[p])):
        size = sizes[patient]
        # Any fold that keeps max - min <= largest is allowed (the smallest fold always is): this freedom is
        # what lets strata spread without unbalancing the folds.
        limit = max(max(totals), min(totals) + largest)
        counts = stratum_counts.setdefault(stratum_of[patient], [0] * folds)
        fold = min((f for f in range(folds) if totals[f] + size <= limit), key=lambda f: (counts[f], totals[f], f))
        fold_of[patient] = fold
        totals[fold] += size
        counts[fold] += size
    return fold_of


def split_by_patient(
    cases: Sequence,
    *,
    folds: int = 5,
    test_fraction: float = 0.2,
    seed: int = 0,
    strata: Mapping[str, Hashable] | None = None,
) -> DatasetSplit:
    """Split ``cases`` (objects with ``case_id`` and ``patient_id``) by patient; see the module's description.

    ``test_fraction`` of the cases (rounded half up, by whole patients: a patient larger than the rest of
    the quota may leave the test set a little smaller or larger) go to the test set; 0 makes none.
    ``folds`` of 0 or 1 makes no folds. Raises ``ValueError`` for duplicate case ids, cases without a
    patient id, cases missing from ``strata``, a fraction outside [0, 1), a test set that would take every
    patient, or more folds than patients left for training.

    >>> from TrainingDataExportLib.caselist import Case
    >>> cases = [Case(f"c{i}", "p1" if i < 3 else f"p{i}", {"image": "x.nrrd"}) for i in range(6)]
    >>> split = split_by_patient(cases, folds=0, test_fraction=0.5, seed=0)
    >>> split.test, split.train, split.folds
    (('c3', 'c4', 'c5'), ('c0', 'c1', 'c2'), ())
    >>> split_by_patient(cases, folds=4, test_fraction=0.5)
    Traceback (most recent call last):
    ValueError: 4 folds need at least 4 patients outside the test set, but there are 1 (of 4 patients)...
    """
    check_split_arguments(folds, test_fraction, seed)
    by_patient = _cases_by_patient(cases)
    stratum_of = _patient_strata(by_patient, strata)
    sizes = {patient: len(ids) for patient, ids in by_patient.items()}
    # Sorting first makes the shuffle, and so the whole split, independent of the order of the input.
    order = sorted(by_patient)
    random.Random(seed).shuffle(order)
    rank = {patient: index for index, patient in enumerate(order)}

    test_patients = _test_patients(order, sizes, stratum_of, test_fraction) if test_fraction > 0 else set()
    train_patients = [patient for patient in order if patient not in test_patients]
    if order and not train_patients:
        raise ValueError(
            f"test_fraction {test_fraction} of {sum(sizes.values())} cases would leave no patient for training: "
            f"lower test_fraction"
        )
    fold_count = folds if folds >= 2 else 0
    if len(train_patients) < fold_count:
        raise ValueError(
            f"{folds} folds need at least {folds} patients outside the test set, but there are "
            f"{len(train_patients)} (of {len(order)} patients): lower folds or test_fraction"
        )
    fold_of = _fold_of_patient(train_patients, sizes, stratum_of, rank, fold_count) if fold_count else {}

    def case_ids(patients) -> tuple:
        return tuple(sorted(case_id for patient in patients for case_id in by_patient[patient]))

    train = case_ids(train_patients)
    validations = [case_ids(p for p in train_patients if fold_of[p] == fold) for fold in range(fold_count)]
    return DatasetSplit(
        test=case_ids(test_patients),
        folds=tuple((tuple(sorted(set(train) - set(validation))), validation) for validation in validations),
        seed=seed,
        train=train,
    )

"""Patient-level splits (TrainingDataExportLib.splits): no patient ever on both sides of a split."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import TrainingDataExportLib
from TrainingDataExportLib.caselist import Case
from TrainingDataExportLib.splits import DatasetSplit, split_by_patient

LABEL_SETS = (frozenset(), frozenset({"liver"}), frozenset({"liver", "tumor"}), frozenset({"tumor"}))


def make_cases(sizes, prefix="p"):
    """One patient per entry of ``sizes``, with that many cases: case ``<patient>_<k>``."""
    return [
        Case(f"{prefix}{patient}_{k}", f"{prefix}{patient}", {"image": f"{prefix}{patient}_{k}.nrrd"})
        for patient, size in enumerate(sizes)
        for k in range(size)
    ]


def patients_of(cases, ids):
    patient = {case.case_id: case.patient_id for case in cases}
    return {patient[case_id] for case_id in ids}


def check_split(split, cases, folds):
    """Every invariant a split must hold, whatever the input."""
    ids = sorted(case.case_id for case in cases)
    patient = {case.case_id: case.patient_id for case in cases}
    # Every case is placed exactly once, in test or train.
    assert sorted(split.test + split.train) == ids
    assert split.case_ids == tuple(ids)
    assert not patients_of(cases, split.test) & patients_of(cases, split.train)
    assert len(split.folds) == (folds if folds >= 2 else 0)
    validated = []
    for index, (train, validation) in enumerate(split.folds):
        assert sorted(train + validation) == list(split.train)
        assert not patients_of(cases, train) & patients_of(cases, validation)
        assert list(train) == sorted(train) and list(validation) == sorted(validation)
        validated += validation
        assert all(split.validation_fold_of(case_id) == index for case_id in validation)
    if split.folds:
        # The validation sets partition the training cases.
        assert sorted(validated) == list(split.train)
        sizes = Counter(patient[case_id] for case_id in split.train)
        lengths = [len(validation) for _, validation in split.folds]
        assert max(lengths) - min(lengths) <= max(sizes.values())
    for case_id in split.test:
        assert split.subset_of(case_id) == "test" and split.validation_fold_of(case_id) is None
    for case_id in split.train:
        assert split.subset_of(case_id) == "train"
        assert (split.validation_fold_of(case_id) is None) == (not split.folds)


@st.composite
def case_lists(draw):
    """Random patients (ids not in case order) with 1 to 4 cases each, and a random stratum per case."""
    sizes = draw(st.lists(st.integers(1, 4), min_size=1, max_size=14))
    names = draw(
        st.lists(st.text("abcxyz0123", min_size=1, max_size=4), min_size=len(sizes), max_size=len(sizes), unique=True)
    )
    cases = [Case(f"{name}-{k}", name, {"image": "x.nrrd"}) for name, size in zip(names, sizes) for k in range(size)]
    strata = {case.case_id: draw(st.sampled_from(LABEL_SETS)) for case in cases}
    return cases, strata


@settings(max_examples=300, deadline=None)
@given(
    data=case_lists(),
    folds=st.integers(0, 6),
    test_fraction=st.sampled_from([0.0, 0.1, 0.2, 0.25, 0.5, 0.75]),
    seed=st.integers(0, 2**32),
    stratified=st.booleans(),
    shuffle_seed=st.integers(0, 1000),
)
def test_no_patient_crosses_any_split(data, folds, test_fraction, seed, stratified, shuffle_seed):
    cases, strata = data
    strata = strata if stratified else None
    arguments = {"folds": folds, "test_fraction": test_fraction, "seed": seed, "strata": strata}
    shuffled = list(cases)
    random.Random(shuffle_seed).shuffle(shuffled)
    try:
        split = split_by_patient(cases, **arguments)
    except ValueError as error:
        # Only two requests are impossible: a test set taking every patient, or too few patients for the folds.
        if "no patient for training" in str(error):
            assert test_fraction > 0
            return
        # The test set does not depend on folds, so the split without folds shows how many patients remain.
        without_folds = split_by_patient(cases, **{**arguments, "folds": 0})
        assert folds >= 2 and len(patients_of(cases, without_folds.train)) < folds
        assert f"{folds} folds need at least {folds} patients" in str(error)
        return
    check_split(split, cases, folds)
    assert split.seed == seed
    # Deterministic and independent of the order of the input.
    assert split_by_patient(cases, **arguments) == split
    assert split_by_patient(shuffled, **arguments) == split
    assert split_by_patient(cases, **{**arguments, "folds": 0}).test == split.test
    assert DatasetSplit.from_json(json.loads(json.dumps(split.to_json()))) == split
    if test_fraction == 0:
        assert split.test == ()


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 5), min_size=2, max_size=30),
    test_fraction=st.floats(0.05, 0.5),
    seed=st.integers(0, 1000),
)
def test_test_set_is_within_one_patient_of_the_fraction(sizes, test_fraction, seed):
    cases = make_cases(sizes)
    target = math.floor(test_fraction * len(cases) + 0.5)
    try:
        split = split_by_patient(cases, folds=0, test_fraction=test_fraction, seed=seed)
    except ValueError as error:
        assert "no patient for training" in str(error)
        return
    assert abs(len(split.test) - target) < max(sizes)


def test_single_case_patients_give_the_exact_fraction():
    cases = make_cases([1] * 50)
    for fraction, expected in ((0.2, 10), (0.1, 5), (0.33, 17), (0.01, 1), (0.009, 0)):
        assert len(split_by_patient(cases, folds=0, test_fraction=fraction).test) == expected


def test_many_small_strata_still_give_the_fraction():
    # Ten strata of two cases: each stratum's share is 0.4 of a case, yet 20 % of 20 is 4.
    cases = make_cases([1] * 20)
    strata = {case.case_id: index // 2 for index, case in enumerate(cases)}
    split = split_by_patient(cases, folds=0, test_fraction=0.2, strata=strata)
    assert len(split.test) == 4
    assert len({strata[case_id] for case_id in split.test}) == 4


def test_each_stratum_is_in_the_test_set_and_in_every_fold():
    # Three strata of 15 single-case patients and 5 of two-case patients: 20 % test, 5 folds.
    cases = make_cases([1] * 45, "s") + make_cases([2] * 15, "m")
    strata = {}
    for case in cases:
        number = int(case.patient_id[1:])
        strata[case.case_id] = LABEL_SETS[1 + number % 3]
    split = split_by_patient(cases, folds=5, test_fraction=0.2, seed=7, strata=strata)
    check_split(split, cases, 5)
    assert len(split.test) == 15
    for stratum in LABEL_SETS[1:]:
        members = [case.case_id for case in cases if strata[case.case_id] == stratum]
        assert Counter(strata[case_id] for case_id in split.test)[stratum] == round(0.2 * len(members))
        per_fold = [sum(strata[case_id] == stratum for case_id in validation) for _, validation in split.folds]
        assert min(per_fold) >= 1
        # Patients of at most two cases: each stratum's share of a fold differs by at most one patient.
        assert max(per_fold) - min(per_fold) <= 2


def test_equal_patients_spread_each_stratum_evenly_over_the_folds():
    cases = make_cases([1] * 40)
    strata = {case.case_id: "tumor" if index % 4 == 0 else "liver" for index, case in enumerate(cases)}
    split = split_by_patient(cases, folds=5, test_fraction=0, seed=3, strata=strata)
    assert [sum(strata[c] == "tumor" for c in validation) for _, validation in split.folds] == [2] * 5
    assert [len(validation) for _, validation in split.folds] == [8] * 5


def test_folds_are_balanced_by_case_count():
    cases = make_cases([6, 5, 4, 3, 3, 2, 2, 2, 1, 1, 1, 1])
    split = split_by_patient(cases, folds=3, test_fraction=0, seed=0)
    check_split(split, cases, 3)
    lengths = [len(validation) for _, validation in split.folds]
    assert sum(lengths) == 31
    # Largest patient first into the smallest fold reaches the best possible balance here.
    assert max(lengths) - min(lengths) <= 1


def test_a_patients_cases_stay_together():
    cases = make_cases([5, 1, 1, 1, 1, 1])
    for seed in range(20):
        split = split_by_patient(cases, folds=2, test_fraction=0.3, seed=seed)
        check_split(split, cases, 2)
        big = {f"p0_{k}" for k in range(5)}
        assert big <= set(split.test) or big <= set(split.train)


def test_the_seed_changes_the_split_and_repeats_it():
    cases = make_cases([1, 2, 1, 3, 1, 1, 2, 1, 1, 1])
    splits = {seed: split_by_patient(cases, folds=3, seed=seed) for seed in range(10)}
    assert len({split.test for split in splits.values()}) > 3
    assert all(split_by_patient(cases, folds=3, seed=seed) == split for seed, split in splits.items())


def test_no_test_set_and_no_folds():
    cases = make_cases([1, 2, 3])
    for folds in (0, 1):
        split = split_by_patient(cases, folds=folds, test_fraction=0)
        assert split.test == () and split.folds == ()
        assert split.train == tuple(sorted(case.case_id for case in cases))
        assert split.validation_fold_of("p1_0") is None
        assert split.to_json()["folds"] == []


def test_one_patient():
    cases = make_cases([3])
    split = split_by_patient(cases, folds=0, test_fraction=0.2)
    # Three cases of one patient: 20 % would be 1 case, but the patient is indivisible and stays in training.
    assert split.test == () and split.train == ("p0_0", "p0_1", "p0_2")
    with pytest.raises(ValueError, match="2 folds need at least 2 patients outside the test set, but there are 1"):
        split_by_patient(cases, folds=2, test_fraction=0)
    with pytest.raises(ValueError, match="would leave no patient for training"):
        split_by_patient(make_cases([1]), folds=0, test_fraction=0.6)


def test_an_empty_case_list_splits_into_nothing():
    assert split_by_patient([], folds=0) == DatasetSplit(test=(), folds=(), seed=0)
    with pytest.raises(ValueError, match="5 folds need at least 5 patients"):
        split_by_patient([])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"test_fraction": 1.0}, "test_fraction must be at least 0 and below 1"),
        ({"test_fraction": -0.1}, "test_fraction must be at least 0 and below 1"),
        ({"test_fraction": float("nan")}, "test_fraction must be at least 0 and below 1"),
        ({"folds": -1}, "folds must be a whole number"),
        ({"folds": 2.0}, "folds must be a whole number"),
        ({"seed": "1"}, "seed must be an integer"),
        ({"folds": 9, "test_fraction": 0.2}, "9 folds need at least 9 patients outside the test set, but there are 8"),
        ({"strata": {"p0_0": "a"}}, r"strata gives no stratum for cases: p1_0, p2_0"),
    ],
)
def test_impossible_requests_say_what_to_change(arguments, message):
    with pytest.raises(ValueError, match=message):
        split_by_patient(make_cases([1] * 10)[:3] if "strata" in arguments else make_cases([1] * 10), **arguments)


def test_duplicate_case_ids_and_missing_patient_ids_are_refused():
    cases = make_cases([2, 1])
    with pytest.raises(ValueError, match="duplicate case ids, each case must appear once: p0_1"):
        split_by_patient([*cases, Case("p0_1", "p9", {"image": "x"})], folds=0)
    with pytest.raises(ValueError, match=r"cases without a patient id .*: x, y"):
        split_by_patient([*cases, Case("x", "", {"image": "x"}), Case("y", "  ", {"image": "y"})], folds=0)


def test_a_patients_stratum_is_its_most_common_one():
    # Patient q0 has two "tumor" cases and one "none": it counts as tumor.
    cases = make_cases([3, 3, 3], "q")
    strata = {"q0_0": "tumor", "q0_1": "tumor", "q0_2": "none", "q1_0": "tumor", "q1_1": "tumor", "q1_2": "tumor"}
    strata.update({f"q2_{k}": "none" for k in range(3)})
    tests = {split_by_patient(cases, folds=0, test_fraction=0.34, seed=seed, strata=strata).test for seed in range(30)}
    # Quotas: tumor 2 of its 6 cases, none 1 of its 3. The none patient q2 would overshoot its quota by 2, so the
    # shortfall passes to tumor, which takes one whole patient. Were q0 counted as none, q2 could be chosen.
    assert tests == {("q0_0", "q0_1", "q0_2"), ("q1_0", "q1_1", "q1_2")}


def test_stratum_keys_order_the_same_in_every_process():
    # frozensets of strings iterate in an order that changes with PYTHONHASHSEED; the split must not.
    lib_folder = os.path.dirname(os.path.dirname(TrainingDataExportLib.__file__))
    # TrainingDataExportLib reads label schemas with ModelRegistryLib, in the sibling module folder.
    registry_folder = os.path.join(os.path.dirname(lib_folder), "ModelRegistry")
    program = (
        "import json, sys; sys.path[:0] = sys.argv[1:3]\n"
        "from TrainingDataExportLib.caselist import Case\n"
        "from TrainingDataExportLib.splits import split_by_patient\n"
        "cases = [Case(f'p{i}_0', f'p{i}', {'image': 'x'}) for i in range(12)]\n"
        "labels = (frozenset(), frozenset({'liver'}), frozenset({'liver', 'tumor'}), frozenset({'tumor'}))\n"
        "strata = {case.case_id: labels[i % 4] for i, case in enumerate(cases)}\n"
        "print(json.dumps(split_by_patient(cases, folds=3, strata=strata).to_json()))\n"
    )
    outputs = [
        subprocess.run(
            [sys.executable, "-c", program, lib_folder, registry_folder],
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for hash_seed in ("1", "2", "3")
    ]
    assert outputs[0] == outputs[1] == outputs[2]
    # Pinned: a change here means that exports made before would now be split differently.
    assert json.loads(outputs[0])["test"] == ["p1_0", "p7_0"]


# --- DatasetSplit ---------------------------------------------------------------------------------------


def test_dataset_split_json_round_trip_and_order():
    split = split_by_patient(make_cases([1, 2, 1, 1, 3, 1]), folds=2, seed=5)
    document = split.to_json()
    assert list(document) == ["seed", "test", "train", "folds"]
    assert list(document["folds"][0]) == ["train", "validation"]
    assert DatasetSplit.from_json(document) == split
    # Sorted on construction, so that a split read from a hand-written file compares equal.
    assert DatasetSplit(test=("b", "a"), folds=(), seed=1, train=("d", "c")).test == ("a", "b")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "must be a JSON object"),
        ({"seed": "0", "test": []}, "split seed: must be an integer"),
        ({"seed": 0, "test": [1]}, "split test: must be a list of case ids"),
        ({"seed": 0, "folds": {}}, "split folds: must be a list"),
        ({"seed": 0, "train": ["a"], "folds": [{"train": ["a"]}]}, r"split folds\[0\].validation"),
        ({"seed": 0, "test": ["a"], "train": ["a"]}, "case 'a' is listed twice in the split"),
        (
            {"seed": 0, "train": ["a", "b"], "folds": [{"train": ["a"], "validation": ["a", "b"]}]},
            "fold 0: its training and validation cases must partition the 2 training cases",
        ),
        (
            {"seed": 0, "train": ["a", "b"], "folds": [{"train": ["a"], "validation": ["b"]}] * 2},
            "case 'b' is validated in folds 0 and 1",
        ),
        (
            {"seed": 0, "train": ["a", "b"], "folds": [{"train": ["a", "b"], "validation": []}]},
            "training cases validated in no fold: a, b",
        ),
    ],
)
def test_dataset_split_refuses_malformed_documents(document, message):
    with pytest.raises(ValueError, match=message):
        DatasetSplit.from_json(document)


def test_unknown_cases_raise_key_error():
    split = DatasetSplit(test=("t",), folds=(), seed=0, train=("a",))
    with pytest.raises(KeyError, match="case 'b' is not in this split"):
        split.subset_of("b")
    with pytest.raises(KeyError):
        split.validation_fold_of("b")

"""The case list (TrainingDataExportLib.caselist) on real files in pytest's temporary folders."""

from __future__ import annotations

import doctest
import os
import stat
import tempfile

import pytest
import SimpleITK
from hypothesis import given, settings
from hypothesis import strategies as st
from ModelRegistryLib.files import backup_path

import TrainingDataExportLib
from TrainingDataExportLib import (
    Case,
    CaseListError,
    case_list_from_folder,
    parse_case_list,
    read_case_list,
    validate_cases,
    write_case_list,
)
from TrainingDataExportLib import caselist
from TrainingDataExportLib.caselist import STATUSES


def write_image(path, value=0):
    """A real 4x4x2 image file (SimpleITK picks the format from the extension)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = SimpleITK.Image([4, 4, 2], SimpleITK.sitkUInt8)
    image += value
    SimpleITK.WriteImage(image, str(path))
    return str(path)


def write_text(path, text):
    with open(path, "w", encoding="utf-8", newline="") as file:
        file.write(text)
    return str(path)


def read_bytes(path):
    with open(path, "rb") as file:
        return file.read()


def problems_of(error_info):
    return [(problem.row, problem.column) for problem in error_info.value.problems]


def test_docstring_examples_run():
    assert doctest.testmod(caselist).failed == 0


def test_public_names_are_exported():
    for name in TrainingDataExportLib.__all__:
        assert hasattr(TrainingDataExportLib, name)


# --- round trip, paths -------------------------------------------------------------------------------


def test_single_channel_round_trip_with_relative_paths(tmp_path):
    cases = [
        Case("ct01", "p1", {"image": write_image(tmp_path / "ct01.nrrd")}, write_image(tmp_path / "ct01_seg.nrrd")),
        Case("ct02", "p1", {"image": write_image(tmp_path / "images" / "ct02.nii.gz")}),
    ]
    path = tmp_path / "cases.csv"
    write_case_list(path, cases)
    assert path.read_text(encoding="utf-8") == (
        "case_id,patient_id,image,segmentation,status,annotator,time_spent\n"
        "ct01,p1,ct01.nrrd,ct01_seg.nrrd,in progress,,0\n"
        "ct02,p1,images/ct02.nii.gz,,to do,,0\n"
    )
    assert read_case_list(path) == cases
    assert read_case_list(str(path))[1].images["image"] == str(tmp_path / "images" / "ct02.nii.gz")


def test_several_channels_use_image_channel_columns(tmp_path):
    cases = [
        Case("a", "a", {"t1": str(tmp_path / "a_t1.nrrd"), "flair": str(tmp_path / "a_flair.nrrd")}),
        Case("b", "b", {"t1": str(tmp_path / "b_t1.nrrd"), "flair": str(tmp_path / "b_flair.nrrd")}, "b.seg.nrrd"),
    ]
    path = tmp_path / "cases.csv"
    write_case_list(path, cases)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "case_id,patient_id,image_t1,image_flair,segmentation,status,annotator,time_spent"
    assert lines[2] == "b,b,b_t1.nrrd,b_flair.nrrd,b.seg.nrrd,in progress,,0"
    reread = read_case_list(path)
    assert reread[0].channels == ("t1", "flair")
    # A relative path in a Case is relative to the CSV's folder, as the CSV stores it.
    assert reread[1].segmentation == str(tmp_path / "b.seg.nrrd")


def test_paths_outside_the_folder_stay_absolute(tmp_path):
    outside = str(tmp_path / "elsewhere" / "x.nrrd")
    path = tmp_path / "project" / "cases.csv"
    path.parent.mkdir()
    write_case_list(path, [Case("x", "x", {"image": outside})])
    assert f"x,x,{outside}," in path.read_text(encoding="utf-8")
    assert read_case_list(path)[0].images["image"] == outside


def test_extra_columns_survive_a_round_trip(tmp_path):
    path = write_text(
        tmp_path / "cases.csv",
        "case_id,patient_id,image,segmentation,site,reader\na,a,a.nrrd,,lyon,\nb,b,b.nrrd,b_seg.nrrd,oslo,ana\n",
    )
    cases = read_case_list(path)
    assert cases[1].extra == {"site": "oslo", "reader": "ana"}
    os.remove(path)
    write_case_list(path, cases)
    assert read_case_list(path) == cases
    with open(path, encoding="utf-8") as file:
        header = file.readline().rstrip("\n")
    assert header == (
        "case_id,patient_id,image,segmentation,status,annotator,time_spent,site,reader"
    )


def test_workflow_columns_round_trip_and_old_files_get_defaults(tmp_path):
    old = write_text(
        tmp_path / "old.csv", "case_id,patient_id,image,segmentation\na,a,a.nrrd,\nb,b,b.nrrd,b.seg.nrrd\n"
    )
    assert [(case.status, case.annotator, case.time_spent) for case in read_case_list(old)] == [
        ("to do", "", 0),
        ("in progress", "", 0),
    ]
    path = write_text(
        tmp_path / "cases.csv",
        "case_id,patient_id,image,segmentation,annotator,status,time_spent\n"
        "a,a,a.nrrd,a.seg.nrrd,ana,reviewed,3725\nb,b,b.nrrd,,,,\n",
    )
    cases = read_case_list(path)
    assert [(case.status, case.annotator, case.time_spent, case.extra) for case in cases] == [
        ("reviewed", "ana", 3725, {}),
        ("to do", "", 0, {}),
    ]
    cases[1].status, cases[1].annotator, cases[1].time_spent = "done", "bob", 12
    write_case_list(path, cases)
    assert read_case_list(path) == cases


@pytest.mark.parametrize(
    "row, column",
    [
        ("a,a,a.nrrd,,finished,,0", "status"),
        ("a,a,a.nrrd,,to do,,-5", "time_spent"),
        ("a,a,a.nrrd,,to do,,1.5", "time_spent"),
    ],
)
def test_bad_workflow_cells_are_reported_with_row_and_column(row, column):
    with pytest.raises(CaseListError) as error:
        parse_case_list("case_id,patient_id,image,segmentation,status,annotator,time_spent\n" + row + "\n", "/data")
    assert problems_of(error) == [(2, column)]


def test_recovery_files_are_not_cases(tmp_path):
    for name in ("ct01.nrrd", "ct01.seg.nrrd", "ct01.recovery.seg.nrrd"):
        write_image(tmp_path / name)
    (case,) = case_list_from_folder(str(tmp_path))
    assert case.segmentation == str(tmp_path / "ct01.seg.nrrd")


def test_spreadsheet_habits_are_accepted(tmp_path):
    """Byte-order mark, CRLF line ends, spaces after commas, blank lines at the end."""
    path = write_text(
        tmp_path / "cases.csv",
        "\ufeffcase_id, patient_id, image, segmentation\r\na, p, a.nrrd, \r\n,,,\r\n\r\n",
    )
    assert read_case_list(path) == [Case("a", "p", {"image": str(tmp_path / "a.nrrd")})]


def test_header_only_file_is_an_empty_case_list(tmp_path):
    path = tmp_path / "cases.csv"
    write_case_list(path, [])
    assert read_case_list(path) == []


# --- atomic write and backup --------------------------------------------------------------------------


def test_write_keeps_the_previous_version_as_backup_and_leaves_no_temporary_file(tmp_path):
    path = str(tmp_path / "cases.csv")
    first = [Case("a", "a", {"image": "a.nrrd"})]
    second = [*first, Case("b", "b", {"image": "b.nrrd"})]
    write_case_list(path, first)
    assert not os.path.exists(backup_path(path))
    first_bytes = read_bytes(path)
    write_case_list(path, second)
    assert read_bytes(backup_path(path)) == first_bytes
    assert [case.case_id for case in read_case_list(path)] == ["a", "b"]
    assert sorted(os.listdir(tmp_path)) == ["cases.csv", "cases.csv.bak"]


def test_writing_the_same_content_keeps_the_backup_of_the_last_change(tmp_path):
    path = str(tmp_path / "cases.csv")
    write_case_list(path, [Case("a", "a", {"image": "a.nrrd"})])
    write_case_list(path, [Case("a", "a", {"image": "a.nrrd"}, "a_seg.nrrd")])
    backup = read_bytes(backup_path(path))
    write_case_list(path, read_case_list(path))
    assert read_bytes(backup_path(path)) == backup


def test_a_failed_write_leaves_the_case_list_as_it_was(tmp_path, monkeypatch):
    path = str(tmp_path / "cases.csv")
    write_case_list(path, [Case("a", "a", {"image": "a.nrrd"})])
    before = read_bytes(path)
    realReplace = os.replace

    def failingReplace(source, target):
        if os.fspath(target) == path:
            raise OSError("disk full")
        realReplace(source, target)

    monkeypatch.setattr(caselist.os, "replace", failingReplace)
    with pytest.raises(OSError, match="disk full"):
        write_case_list(path, [Case("b", "b", {"image": "b.nrrd"})])
    assert read_bytes(path) == before
    assert sorted(os.listdir(tmp_path)) == ["cases.csv", "cases.csv.bak"]


def test_an_invalid_case_list_is_not_written(tmp_path):
    path = str(tmp_path / "cases.csv")
    write_case_list(path, [Case("a", "a", {"image": "a.nrrd"})])
    before = read_bytes(path)
    with pytest.raises(CaseListError, match="channels"):
        write_case_list(path, [Case("a", "a", {"image": "a.nrrd"}), Case("b", "b", {"t1": "b.nrrd"})])
    assert read_bytes(path) == before


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_write_keeps_the_file_permissions(tmp_path):
    path = str(tmp_path / "cases.csv")
    write_case_list(path, [Case("a", "a", {"image": "a.nrrd"})])
    os.chmod(path, 0o640)
    write_case_list(path, [Case("b", "b", {"image": "b.nrrd"})])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


# --- validation ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["case_id", "patient_id", "segmentation"])
def test_missing_required_column(missing):
    columns = [c for c in ("case_id", "patient_id", "image", "segmentation") if c != missing]
    with pytest.raises(CaseListError, match=f"column {missing}: required column is missing") as error:
        parse_case_list(",".join(columns) + "\n", "/data", source="cases.csv")
    assert problems_of(error) == [(1, missing)]
    assert str(error.value).startswith("cases.csv: row 1, column ")


@pytest.mark.parametrize(
    ("header", "expected", "column"),
    [
        ("case_id,patient_id,segmentation", "no image column", None),
        ("case_id,patient_id,image,image_t2,segmentation", "inconsistent channels", "image"),
        ("case_id,patient_id,image_,segmentation", "names no channel", "image_"),
        ("case_id,patient_id,image,image,segmentation", "appears twice", "image"),
        ("case_id,patient_id,image,,segmentation", "column 4 has no name", None),
    ],
)
def test_bad_header(header, expected, column):
    with pytest.raises(CaseListError, match=expected) as error:
        parse_case_list(header + "\n", "/data")
    assert (1, column) in problems_of(error)


def test_empty_file():
    with pytest.raises(CaseListError, match="the file is empty"):
        parse_case_list("", "/data")


HEADER = "case_id,patient_id,image_t1,image_t2,segmentation\n"


@pytest.mark.parametrize(
    ("rows", "expected", "row", "column"),
    [
        ("a,p,a1,a2,\nb,p,b1,b2,\nA,p,c1,c2,\n", "duplicate case id 'A' \\(first on row 2\\)", 4, "case_id"),
        ("a,,a1,a2,\n", "is empty", 2, "patient_id"),
        ("a,p,a1,,\n", "every case needs a file for every channel", 2, "image_t2"),
        (",p,a1,a2,\n", "is empty", 2, "case_id"),
        ("../a,p,a1,a2,\n", "not usable as a file name", 2, "case_id"),
        ("a,p,a1,a2,,surplus\n", "has 6 cells but the header has 5", 2, None),
    ],
)
def test_bad_row(rows, expected, row, column):
    with pytest.raises(CaseListError, match=expected) as error:
        parse_case_list(HEADER + rows, "/data", source="cases.csv")
    assert problems_of(error) == [(row, column)]


def test_every_problem_is_reported_at_once(tmp_path):
    path = write_text(tmp_path / "cases.csv", HEADER + "a,,a1,a2,\na,p,,b2,\n")
    with pytest.raises(CaseListError) as error:
        read_case_list(path)
    assert problems_of(error) == [(2, "patient_id"), (3, "case_id"), (3, "image_t1")]
    assert str(error.value).startswith("cases.csv: 3 problems:\n  row 2 (case 'a'), column patient_id: is empty")


def test_inconsistent_channels_in_memory():
    with pytest.raises(CaseListError, match="case 'b', column image: has channels t1 but the first case has t1, t2"):
        validate_cases([Case("a", "a", {"t1": "x", "t2": "y"}), Case("b", "b", {"t1": "z"})])


# --- building from a folder ---------------------------------------------------------------------------------


def names(cases):
    return [
        (
            case.case_id,
            case.patient_id,
            {channel: os.path.basename(path) for channel, path in case.images.items()},
            os.path.basename(case.segmentation),
        )
        for case in cases
    ]


def test_folder_scan_pairs_segmentations_and_sorts_numbers_naturally(tmp_path):
    for name in ("case10.nrrd", "case2.nii.gz", "case2_seg.nii.gz", "case1.mha", "case1.seg.nrrd"):
        write_image(tmp_path / name)
    write_image(tmp_path / "case3.mhd")  # writes case3.raw (or .zraw) beside it: not an image of its own
    write_image(tmp_path / "case3_label.nrrd")
    write_text(tmp_path / "notes.txt", "not an image")
    write_image(tmp_path / ".hidden.nrrd")
    assert names(case_list_from_folder(tmp_path)) == [
        ("case1", "case1", {"image": "case1.mha"}, "case1.seg.nrrd"),
        ("case2", "case2", {"image": "case2.nii.gz"}, "case2_seg.nii.gz"),
        ("case3", "case3", {"image": "case3.mhd"}, "case3_label.nrrd"),
        ("case10", "case10", {"image": "case10.nrrd"}, ""),
    ]
    assert case_list_from_folder(tmp_path)[0].images["image"] == str(tmp_path / "case1.mha")


@pytest.mark.parametrize(
    ("pattern", "patients"),
    [
        (r"^(?P<patient>p\d+)_", ["p1", "p1", "p2"]),
        (r"^(p\d+)", ["p1", "p1", "p2"]),
        (r"p\d", ["p1", "p1", "p2"]),
    ],
)
def test_patient_pattern(tmp_path, pattern, patients):
    for name in ("p1_a.nrrd", "p1_b.nrrd", "p2_a.nrrd"):
        write_image(tmp_path / name)
    assert [case.patient_id for case in case_list_from_folder(tmp_path, patient_pattern=pattern)] == patients


def test_patient_pattern_that_does_not_match_names_the_case(tmp_path):
    write_image(tmp_path / "p1_a.nrrd")
    write_image(tmp_path / "anon.nrrd")
    with pytest.raises(CaseListError, match=r"case 'anon': patient id pattern '\^\(p\\\\d\+\)' finds no patient id"):
        case_list_from_folder(tmp_path, patient_pattern=r"^(p\d+)")


def test_invalid_patient_pattern(tmp_path):
    write_image(tmp_path / "a.nrrd")
    with pytest.raises(CaseListError, match="pattern '\\(' is invalid"):
        case_list_from_folder(tmp_path, patient_pattern="(")


def test_several_channels_from_file_name_suffixes(tmp_path):
    for name in ("b_0000.nii.gz", "b_0001.nii.gz", "a_0001.nii.gz", "a_0000.nii.gz", "a_seg.nii.gz"):
        write_image(tmp_path / name)
    assert names(case_list_from_folder(tmp_path, channels=["0000", "0001"])) == [
        ("a", "a", {"0000": "a_0000.nii.gz", "0001": "a_0001.nii.gz"}, "a_seg.nii.gz"),
        ("b", "b", {"0000": "b_0000.nii.gz", "0001": "b_0001.nii.gz"}, ""),
    ]


def test_longest_channel_name_wins(tmp_path):
    for name in ("x_t1.nrrd", "x_ce_t1.nrrd"):
        write_image(tmp_path / name)
    assert names(case_list_from_folder(tmp_path, channels=["t1", "ce_t1"])) == [
        ("x", "x", {"t1": "x_t1.nrrd", "ce_t1": "x_ce_t1.nrrd"}, "")
    ]


def test_folder_problems_are_all_reported(tmp_path):
    for name in ("a_t1.nrrd", "a_t2.nrrd", "b_t1.nrrd", "c.nrrd", "d_seg.nrrd", "a_seg.nrrd", "a.seg.nrrd"):
        write_image(tmp_path / name)
    with pytest.raises(CaseListError) as error:
        case_list_from_folder(tmp_path, channels=["t1", "t2"])
    messages = [str(problem) for problem in error.value.problems]
    assert any("c.nrrd: the name ends with none of the channels _t1, _t2" in m for m in messages)
    assert any("d_seg.nrrd matches no image (expected an image named d)" in m for m in messages)
    assert any(m.startswith("case 'a': two segmentations") for m in messages)
    assert "case 'b': no file for channel t2" in messages
    assert str(error.value).startswith(f"{tmp_path}: 4 problems:")


def test_two_images_for_one_case(tmp_path):
    write_image(tmp_path / "a.nrrd")
    write_image(tmp_path / "a.nii.gz")
    with pytest.raises(CaseListError, match="case 'a': two files for channel image"):
        case_list_from_folder(tmp_path)


def test_case_ids_differing_only_in_letter_case(tmp_path):
    write_image(tmp_path / "a.nrrd")
    write_image(tmp_path / "A.nrrd")
    with pytest.raises(CaseListError, match="duplicate case id"):
        case_list_from_folder(tmp_path)


def test_segmentation_folder_and_recursive_scan(tmp_path):
    write_image(tmp_path / "images" / "one" / "a.nrrd")
    write_image(tmp_path / "images" / "b.nrrd")
    write_image(tmp_path / "labels" / "a.nrrd")
    assert names(case_list_from_folder(tmp_path / "images")) == [("b", "b", {"image": "b.nrrd"}, "")]
    cases = case_list_from_folder(tmp_path / "images", segmentation_folder=tmp_path / "labels", recursive=True)
    assert names(cases) == [("a", "a", {"image": "a.nrrd"}, "a.nrrd"), ("b", "b", {"image": "b.nrrd"}, "")]
    assert cases[0].segmentation == str(tmp_path / "labels" / "a.nrrd")


def test_segmentation_folder_inside_the_image_folder(tmp_path):
    write_image(tmp_path / "a.nrrd")
    write_image(tmp_path / "labels" / "a.nrrd")
    cases = case_list_from_folder(tmp_path, segmentation_folder=tmp_path / "labels", recursive=True)
    assert names(cases) == [("a", "a", {"image": "a.nrrd"}, "a.nrrd")]


def test_channel_order_of_a_case_does_not_matter(tmp_path):
    cases = [Case("a", "a", {"t1": "a1", "t2": "a2"}), Case("b", "b", {"t2": "b2", "t1": "b1"})]
    write_case_list(tmp_path / "cases.csv", cases)
    assert read_case_list(tmp_path / "cases.csv")[1].channels == ("t1", "t2")


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(CaseListError, match="no image files"):
        case_list_from_folder(tmp_path)
    with pytest.raises(CaseListError, match="does not exist"):
        case_list_from_folder(tmp_path / "missing")


def test_folder_scan_then_csv_round_trip(tmp_path):
    for name in ("ct1.nrrd", "ct1_seg.nrrd", "ct2.nrrd"):
        write_image(tmp_path / name)
    cases = case_list_from_folder(tmp_path)
    write_case_list(tmp_path / "cases.csv", cases)
    assert read_case_list(tmp_path / "cases.csv") == cases


# --- property: any valid case list survives a write and a read ------------------------------------------------

_NAME_CHARACTERS = st.characters(whitelist_categories=("L", "N"), whitelist_characters=" ._-,\"'")
_identifier = st.text(_NAME_CHARACTERS, min_size=1, max_size=12).filter(
    lambda text: text == text.strip() and text not in (".", "..")
)
_file_name = st.from_regex(r"[A-Za-z0-9_-]{1,8}(/[A-Za-z0-9_-]{1,8})?\.(nrrd|nii\.gz|mha)", fullmatch=True)


@st.composite
def case_lists(draw):
    channels = draw(
        st.one_of(
            st.just(["image"]),
            st.lists(st.from_regex(r"[a-z0-9]{1,5}", fullmatch=True), min_size=1, max_size=3, unique=True),
        )
    )
    case_ids = draw(st.lists(_identifier, max_size=6, unique_by=str.casefold))
    extra_columns = draw(st.lists(st.sampled_from(["site", "reader", "notes"]), max_size=2, unique=True))
    cases = []
    for case_id in case_ids:
        images = {channel: (draw(st.booleans()), draw(_file_name)) for channel in channels}
        segmentation = draw(st.one_of(st.just(None), st.tuples(st.booleans(), _file_name)))
        extra = {column: draw(st.one_of(st.just(""), _identifier)) for column in extra_columns}
        workflow = (
            draw(st.sampled_from(STATUSES)),
            draw(st.one_of(st.just(""), _identifier)),
            draw(st.integers(0, 10**7)),
        )
        cases.append((case_id, draw(_identifier), images, segmentation, extra, workflow))
    return cases


@settings(max_examples=60, deadline=None)
@given(case_lists())
def test_any_valid_case_list_round_trips(drawn):
    with tempfile.TemporaryDirectory() as root:
        project, outside = os.path.join(root, "project"), os.path.join(root, "outside")

        def place(inside_and_name):
            inside, name = inside_and_name
            return os.path.normpath(os.path.join(project if inside else outside, name))

        cases = [
            Case(
                case_id,
                patient_id,
                {channel: place(value) for channel, value in images.items()},
                place(segmentation) if segmentation else "",
                extra,
                *workflow,
            )
            for case_id, patient_id, images, segmentation, extra, workflow in drawn
        ]
        os.makedirs(project)
        path = os.path.join(project, "cases.csv")
        write_case_list(path, cases)
        assert read_case_list(path) == cases
        # Deterministic: writing what was read changes no byte and makes no backup.
        first = read_bytes(path)
        write_case_list(path, read_case_list(path))
        assert read_bytes(path) == first
        assert not os.path.exists(backup_path(path))

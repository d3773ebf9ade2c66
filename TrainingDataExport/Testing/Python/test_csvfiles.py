"""CSV files (TrainingDataExportLib.csvfiles): safe in a spreadsheet, read back losslessly, encodings refused
with the file and line; the case list and the exported pairs.csv and slices.csv written that way."""

from __future__ import annotations

import csv
import doctest
import io

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given
from hypothesis import strategies as st
from ModelRegistryLib.index import Label

from TrainingDataExportLib import csvfiles
from TrainingDataExportLib.caselist import Case, CaseListError, read_case_list, write_case_list
from TrainingDataExportLib.csvfiles import CsvEncodingError, csv_rows, csv_text, read_csv_file
from TrainingDataExportLib.export import ExportSettings, export_dataset

HOSTILE_IDS = ["=HYPERLINK(\"http://x\")", "+1+2", "-3-4", "@SUM(A1)", "'quoted", "''twice", "plain"]


def formula_cells(text: str) -> list:
    """Cells a spreadsheet would run as a formula."""
    return [cell for row in csv.reader(io.StringIO(text)) for cell in row if cell.startswith(csvfiles.FORMULA_STARTS)]


# Any text but NUL, which Python's csv reader refuses before 3.11 (Slicer 5.8 has 3.9).
CELLS = st.text(st.characters(blacklist_characters="\x00"))


@given(st.lists(st.lists(CELLS, min_size=1, max_size=4), min_size=1, max_size=5))
def test_every_cell_reads_back_as_written_and_none_is_a_formula(rows):
    rows = [[cell.strip() for cell in row] for row in rows]  # the reader strips cells, as hand-edited files need
    text = csv_text(rows[0], rows[1:])
    assert formula_cells(text) == []
    assert csv_rows(text) == rows


def test_hostile_ids_in_the_case_list_are_neutralised_and_read_back(tmp_path):
    image = str(tmp_path / "a.nrrd")
    cases = [Case(f"case{index}", patient, {"image": image}) for index, patient in enumerate(HOSTILE_IDS)]
    path = tmp_path / "cases.csv"
    write_case_list(str(path), cases)
    text = path.read_text(encoding="utf-8")
    assert formula_cells(text) == [] and "'=HYPERLINK" in text
    assert [case.patient_id for case in read_case_list(str(path))] == HOSTILE_IDS


def test_exported_csv_files_are_spreadsheet_safe(tmp_path):
    ids = ["=cmd", "-5", "@x", "+y"]
    cases = []
    for index, patient in enumerate(ids):
        image = sitk.GetImageFromArray(np.full((3, 6, 6), index, np.int16))
        label = sitk.GetImageFromArray(np.pad(np.ones((1, 2, 2), np.uint8), ((1, 1), (2, 2), (2, 2))))
        paths = [str(tmp_path / f"c{index}{suffix}.nrrd") for suffix in ("", "_seg")]
        sitk.WriteImage(image, paths[0])
        sitk.WriteImage(label, paths[1])
        cases.append(Case(f"c{index}", patient, {"image": paths[0]}, paths[1]))
    schema = [Label(1, "organ", "#ff0000")]
    for settings, name in ((ExportSettings("pairs"), "pairs.csv"), (ExportSettings("slices2d"), "slices.csv")):
        folder = tmp_path / settings.format
        export_dataset(cases, schema, str(folder), settings, folds=0, test_fraction=0)
        text = (folder / name).read_text(encoding="utf-8")
        assert formula_cells(text) == []
        assert sorted({row[1] for row in csv_rows(text)[1:]}) == sorted(ids)


def test_another_encoding_is_refused_with_the_file_and_line(tmp_path):
    path = tmp_path / "cases.csv"
    path.write_bytes("case_id,patient_id\nc1,p1\nc2,Müller\n".encode("cp1252"))
    with pytest.raises(CsvEncodingError, match=r"^cases.csv is not UTF-8 text \(line 3 holds byte 0xfc\)"):
        read_csv_file(str(path))
    with pytest.raises(CaseListError, match="line 3"):
        read_case_list(str(path))


def test_utf8_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "cases.csv"
    path.write_bytes("\ufeffcase_id,patient_id\nc1,Müller\n".encode())
    assert csv_rows(read_csv_file(str(path))) == [["case_id", "patient_id"], ["c1", "Müller"]]


def test_docstring_examples_run():
    assert doctest.testmod(csvfiles, optionflags=doctest.ELLIPSIS).failed == 0

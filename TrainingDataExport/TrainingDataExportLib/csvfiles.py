"""CSV files as the module writes and reads them: safe to open in a spreadsheet, read back as written.

- **Spreadsheet formulas**: a spreadsheet program runs a cell starting with ``=``, ``+``, ``-`` or ``@`` (and,
  in some, a tab or a carriage return) as a formula, so a case or patient id like ``=HYPERLINK(...)`` would
  run when the exported CSV is opened. Such a cell is written with a leading apostrophe (the OWASP
  recommendation: spreadsheets show the text as it is), and so is a cell that starts with an apostrophe
  itself; reading removes one leading apostrophe, so every cell reads back exactly as it was written.
  A hand-written cell that starts with an apostrophe loses it on reading.
- **Encoding**: files are written in UTF-8 with ``\\n`` line ends. Reading accepts UTF-8 with or without the
  byte-order mark spreadsheet programs add; any other encoding is refused with :class:`CsvEncodingError`
  naming the file and the line (save the file as "CSV UTF-8").

Example::

    >>> text = csv_text(["case_id", "patient_id"], [["=1+2", "'quoted"], ["-3", "p4"]])
    >>> print(text, end="")
    case_id,patient_id
    '=1+2,''quoted
    '-3,p4
    >>> csv_rows(text)
    [['case_id', 'patient_id'], ['=1+2', "'quoted"], ['-3', 'p4']]
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence

# Cell starts that spreadsheet programs treat as a formula (OWASP "CSV injection"), and the escape itself.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
ESCAPE = "'"


class CsvEncodingError(ValueError):
    """A CSV file is not UTF-8; the message names the file and the line."""


def spreadsheet_safe(cell) -> str:
    """``cell`` as text a spreadsheet shows and never runs (see the module description).

    >>> spreadsheet_safe("@SUM(A1)"), spreadsheet_safe("case01"), spreadsheet_safe(3)
    ("'@SUM(A1)", 'case01', '3')
    """
    text = str(cell)
    return ESCAPE + text if text.startswith((*FORMULA_STARTS, ESCAPE)) else text


def from_spreadsheet_safe(cell: str) -> str:
    """The text :func:`spreadsheet_safe` was given (one leading apostrophe removed)."""
    return cell[1:] if cell.startswith(ESCAPE) else cell


def csv_text(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """The CSV text of ``header`` and ``rows``, every cell made :func:`spreadsheet_safe`, ``\\n`` line ends."""
    output = io.StringIO()
    writer = csv.writer(output, lineterminator="\n")
    # csv quotes a cell holding "\n" but not one holding a lone "\r", which readers then take as a line end:
    # such rows are written with every cell quoted.
    quoting_all = csv.writer(output, lineterminator="\n", quoting=csv.QUOTE_ALL)
    for row in [header, *rows]:
        cells = [spreadsheet_safe(cell) for cell in row]
        (quoting_all if any("\r" in cell for cell in cells) else writer).writerow(cells)
    return output.getvalue()


def csv_rows(text: str, line_numbers: list | None = None) -> list:
    """The rows of CSV ``text`` (header included) as :func:`csv_text` wrote them; surrounding spaces of each
    cell are removed first (hand-edited files have them after commas). ``line_numbers``, when given, gets the
    line on which each row ends (rows may span lines)."""
    reader = csv.reader(io.StringIO(text))
    rows = []
    for cells in reader:
        rows.append([from_spreadsheet_safe(cell.strip()) for cell in cells])
        if line_numbers is not None:
            line_numbers.append(reader.line_num)
    return rows


def read_csv_file(path: str) -> str:
    """The text of the CSV file ``path``: UTF-8, with or without a byte-order mark, else :class:`CsvEncodingError`.
    ``OSError`` when it cannot be read."""
    with open(path, "rb") as file:
        data = file.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise CsvEncodingError(
            f"{os.path.basename(path)} is not UTF-8 text (line {line} holds byte 0x{data[error.start]:02x}): "
            "save it as CSV UTF-8"
        ) from None

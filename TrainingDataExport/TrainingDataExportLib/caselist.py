"""The case list of an annotation project: one row per case, kept as a CSV file next to the data.

Columns: ``case_id``, ``patient_id``, the image files (``image`` for a single channel, ``image_<channel>``
for several: ``image_t1``, ``image_flair``...), ``segmentation`` (a label map or a Slicer ``.seg.nrrd``;
empty while the case is not annotated yet), and the annotation workflow: ``status`` (to do, pre-annotated, in
progress, done, reviewed), ``annotator`` and ``time_spent`` (seconds). A case a model pre-annotated (a
DeepSegment batch run) also has ``pre_annotation`` (the model's prediction, which the annotation workflow
opens for correction and keeps untouched), ``model_id`` and ``model_version``; these three columns are
written only when some case has them. Other columns are kept as they are, so a column
a user or a later version adds survives a read and a write; a file without the workflow columns (an older
list, or one written by hand) reads with their defaults. Paths inside the CSV's folder are stored relative to it,
so the project folder can be moved or shared as a whole.

Every check names the row (row 1 is the header, as in a spreadsheet) and the column, because a case list
is often edited by hand and a message a user can act on beats an export that fails much later.

Example::

    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> for name in ("ct01.nrrd", "ct01_seg.nrrd", "ct02.nrrd"):
    ...     open(os.path.join(folder, name), "wb").close()
    >>> cases = case_list_from_folder(folder)
    >>> [(case.case_id, case.patient_id, case.annotated) for case in cases]
    [('ct01', 'ct01', True), ('ct02', 'ct02', False)]
    >>> path = os.path.join(folder, "cases.csv")
    >>> write_case_list(path, cases)
    >>> print(open(path, encoding="utf-8").read(), end="")
    case_id,patient_id,image,segmentation,status,annotator,time_spent
    ct01,ct01,ct01.nrrd,ct01_seg.nrrd,in progress,,0
    ct02,ct02,ct02.nrrd,,to do,,0
    >>> read_case_list(path) == cases
    True
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ModelRegistryLib.files import write_bytes_atomically

from .csvfiles import CsvEncodingError, csv_rows, csv_text, read_csv_file

CASE_ID = "case_id"
PATIENT_ID = "patient_id"
IMAGE = "image"
IMAGE_PREFIX = "image_"
SEGMENTATION = "segmentation"
STATUS = "status"
ANNOTATOR = "annotator"
TIME_SPENT = "time_spent"
WORKFLOW_COLUMNS = (STATUS, ANNOTATOR, TIME_SPENT)
PRE_ANNOTATION = "pre_annotation"
MODEL_ID = "model_id"
MODEL_VERSION = "model_version"
PRE_ANNOTATION_COLUMNS = (PRE_ANNOTATION, MODEL_ID, MODEL_VERSION)

TO_DO = "to do"
PRE_ANNOTATED = "pre-annotated"
IN_PROGRESS = "in progress"
DONE = "done"
REVIEWED = "reviewed"
STATUSES = (TO_DO, PRE_ANNOTATED, IN_PROGRESS, DONE, REVIEWED)

DEFAULT_CASE_LIST_NAME = "cases.csv"

# Longest first where one ends another (".nii.gz" before ".nii" would not matter, ".seg.nrrd" before ".nrrd" does).
IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
SEGMENTATION_EXTENSIONS = (".seg.nrrd",)
# File-name endings that mark a label map as the segmentation of the image with the rest of the name.
SEGMENTATION_SUFFIXES = ("_segmentation", "_labelmap", "_labels", "_label", "_seg")
# The annotation workflow's recovery files (``<case>.recovery.seg.nrrd``) are never a case's segmentation.
RECOVERY_SUFFIX = ".recovery.seg.nrrd"

# Case ids become file names in every export format (nnU-Net's ``<case>_0000.nii.gz``...): no separators,
# no control characters, and "." or ".." would name a folder.
_FORBIDDEN_IN_CASE_ID = re.compile(r"[/\\\x00-\x1f\x7f]")
_MAX_LISTED_PROBLEMS = 20


@dataclass
class Case:
    """One case: its images by channel name, its segmentation ("" while not annotated), its workflow state
    (``status``, ``annotator``, ``time_spent`` in seconds), other columns, and the model prediction it started
    from when a model pre-annotated it (``pre_annotation``, ``model_id``, ``model_version``; "" otherwise).

    Paths are absolute after :func:`read_case_list` and :func:`case_list_from_folder`. An empty ``status``
    becomes "in progress" when the case has a segmentation, "pre-annotated" when it has only a prediction,
    else "to do".

    >>> Case("ct01", "p1", {"image": "ct01.nrrd"}, "ct01.seg.nrrd").status
    'in progress'
    >>> Case("ct02", "p2", {"image": "ct02.nrrd"}, pre_annotation="predicted/ct02.seg.nrrd").status
    'pre-annotated'
    """

    case_id: str
    patient_id: str
    images: dict[str, str]
    segmentation: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    status: str = ""
    annotator: str = ""
    time_spent: int = 0
    pre_annotation: str = ""
    model_id: str = ""
    model_version: str = ""

    def __post_init__(self) -> None:
        if not self.status:
            self.status = IN_PROGRESS if self.segmentation else PRE_ANNOTATED if self.pre_annotation else TO_DO

    @property
    def annotated(self) -> bool:
        return bool(self.segmentation)

    @property
    def pre_annotated(self) -> bool:
        """Whether the case's annotation started (or is to start) from a model's prediction."""
        return bool(self.pre_annotation)

    @property
    def channels(self) -> tuple:
        return tuple(self.images)


@dataclass(frozen=True)
class CaseListProblem:
    """One thing wrong with a case list, and where: ``row`` (1 is the header), ``column``, ``case_id``."""

    message: str
    row: int | None = None
    column: str | None = None
    case_id: str | None = None

    def __str__(self) -> str:
        where = []
        if self.row is not None:
            where.append(f"row {self.row}" + (f" (case {self.case_id!r})" if self.case_id else ""))
        elif self.case_id:
            where.append(f"case {self.case_id!r}")
        if self.column:
            where.append(f"column {self.column}")
        return f"{', '.join(where)}: {self.message}" if where else self.message


class CaseListError(ValueError):
    """A case list (or a folder to build one from) has problems; ``problems`` lists every one found.

    All problems are reported at once, so that a user fixes a hand-edited CSV in one pass.
    """

    def __init__(self, problems: Sequence[CaseListProblem], source: str = "") -> None:
        self.problems = list(problems)
        self.source = source
        prefix = f"{source}: " if source else ""
        if len(self.problems) == 1:
            text = prefix + str(self.problems[0])
        else:
            lines = [str(problem) for problem in self.problems[:_MAX_LISTED_PROBLEMS]]
            if len(self.problems) > _MAX_LISTED_PROBLEMS:
                lines.append(f"... and {len(self.problems) - _MAX_LISTED_PROBLEMS} more")
            text = f"{prefix}{len(self.problems)} problems:\n  " + "\n  ".join(lines)
        super().__init__(text)


def image_column(channel: str, channels: Sequence[str]) -> str:
    """The CSV column of ``channel``: ``image`` when it is the only channel and is called so."""
    return IMAGE if tuple(channels) == (IMAGE,) else IMAGE_PREFIX + channel


# --- validation ---------------------------------------------------------------------------------------


def _case_id_problem(case_id: str) -> str | None:
    if not case_id:
        return "is empty"
    if case_id != case_id.strip():
        return "has leading or trailing spaces"
    if case_id in (".", "..") or _FORBIDDEN_IN_CASE_ID.search(case_id):
        return f"{case_id!r} is not usable as a file name (no '/', '\\', control characters, '.' or '..')"
    return None


def _case_problems(cases: Sequence[Case], rows: Sequence[int] | None = None) -> list[CaseListProblem]:
    """Problems of cases already parsed; ``rows`` gives each case's CSV row when they come from a file."""
    problems = []
    first_row_of = {}
    reference_channels = cases[0].channels if cases else ()
    for index, case in enumerate(cases):
        row = rows[index] if rows is not None else None
        case_id = case.case_id or None

        def problem(message, column, row=row, case_id=case_id):
            problems.append(CaseListProblem(message, row=row, column=column, case_id=case_id))

        id_problem = _case_id_problem(case.case_id)
        if id_problem:
            problem(id_problem, CASE_ID)
        else:
            # Compared ignoring letter case: "Case1" and "case1" would overwrite each other's exported files
            # on Windows and macOS file systems.
            key = case.case_id.casefold()
            if key in first_row_of:
                first = first_row_of[key]
                seen = f"row {first}" if rows is not None else f"case number {first}"
                problem(f"duplicate case id {case.case_id!r} (first on {seen})", CASE_ID)
            else:
                first_row_of[key] = row if rows is not None else index + 1
        if not case.patient_id.strip():
            problem("is empty (use the case id when each case is its own patient)", PATIENT_ID)
        elif case.patient_id != case.patient_id.strip():
            # Reading strips cells (hand-edited CSVs have spaces after commas): " p1" would come back as "p1".
            problem("has leading or trailing spaces", PATIENT_ID)
        if not case.images:
            problem("has no image", IMAGE)
        if set(case.channels) != set(reference_channels):
            # Every case needs the same inputs: a model takes a fixed list of channels. (Their order in a Case
            # does not matter: the CSV columns follow the first case's order.)
            problem(
                f"has channels {', '.join(case.channels) or '(none)'} but the first case has "
                f"{', '.join(reference_channels) or '(none)'}",
                IMAGE,
            )
        for channel, path in case.images.items():
            if not channel or channel != channel.strip():
                problem(f"channel name {channel!r} is empty or has surrounding spaces", IMAGE)
            elif not path:
                problem("is empty: every case needs a file for every channel", image_column(channel, case.channels))
        if case.status not in STATUSES:
            problem(f"{case.status!r} is not a status: use one of {', '.join(STATUSES)}", STATUS)
        if isinstance(case.time_spent, bool) or not isinstance(case.time_spent, int) or case.time_spent < 0:
            problem(f"{case.time_spent!r} is not a number of seconds (a whole number, 0 or more)", TIME_SPENT)
        for column in case.extra:
            if column in (CASE_ID, PATIENT_ID, IMAGE, SEGMENTATION, *WORKFLOW_COLUMNS, *PRE_ANNOTATION_COLUMNS) or \
                    column.startswith(
                IMAGE_PREFIX
            ):
                problem("is a reserved column name and cannot be an extra column", column)
    return problems


def validate_cases(cases: Sequence[Case]) -> None:
    """Raise :class:`CaseListError` listing every problem of ``cases``; return quietly when there is none.

    >>> try:
    ...     validate_cases([Case("a", "p1", {"image": "a.nrrd"}), Case("A", "", {"image": "b.nrrd"})])
    ... except CaseListError as error:
    ...     print(error)
    2 problems:
      case 'A', column case_id: duplicate case id 'A' (first on case number 1)
      case 'A', column patient_id: is empty (use the case id when each case is its own patient)
    """
    problems = _case_problems(list(cases))
    if problems:
        raise CaseListError(problems)


# --- reading ------------------------------------------------------------------------------------------


def _resolved_path(cell: str, folder: str) -> str:
    if not cell:
        return ""
    return os.path.normpath(cell if os.path.isabs(cell) else os.path.join(folder, cell))


def _header_problems(header: Sequence[str]) -> list[CaseListProblem]:
    problems = []
    seen = set()
    for index, name in enumerate(header):
        if not name:
            problems.append(CaseListProblem(f"column {index + 1} has no name", row=1))
        elif name in seen:
            problems.append(CaseListProblem("appears twice in the header", row=1, column=name))
        seen.add(name)
    for required in (CASE_ID, PATIENT_ID, SEGMENTATION):
        if required not in header:
            problems.append(CaseListProblem("required column is missing from the header", row=1, column=required))
    image_columns = [name for name in header if name == IMAGE or name.startswith(IMAGE_PREFIX)]
    if not image_columns:
        problems.append(
            CaseListProblem(
                "no image column: name it 'image' for a single channel, 'image_<channel>' for several", row=1
            )
        )
    elif IMAGE in image_columns and len(image_columns) > 1:
        problems.append(
            CaseListProblem(
                "inconsistent channels: 'image' (single channel) cannot be mixed with 'image_<channel>' columns",
                row=1,
                column=IMAGE,
            )
        )
    if IMAGE_PREFIX in header:
        problems.append(CaseListProblem("names no channel after 'image_'", row=1, column=IMAGE_PREFIX))
    return problems


def parse_case_list(text: str, folder: str, source: str = "") -> list[Case]:
    """Parse CSV text; relative paths are taken relative to ``folder``. See :func:`read_case_list`."""
    line_numbers = []
    rows = csv_rows(text, line_numbers)
    if not rows:
        raise CaseListError(
            [CaseListProblem("the file is empty: it needs a header row (case_id, patient_id, image, segmentation)")],
            source,
        )
    header = rows[0]
    problems = _header_problems(header)
    if problems:
        raise CaseListError(problems, source)
    image_columns = [name for name in header if name == IMAGE or name.startswith(IMAGE_PREFIX)]
    channels = [IMAGE if name == IMAGE else name[len(IMAGE_PREFIX) :] for name in image_columns]
    extra_columns = [
        name for name in header
        if name not in (CASE_ID, PATIENT_ID, SEGMENTATION, *WORKFLOW_COLUMNS, *PRE_ANNOTATION_COLUMNS, *image_columns)
    ]

    cases, case_rows = [], []
    for row, cells in zip(line_numbers[1:], rows[1:]):
        # Spreadsheets often leave blank lines at the end of a sheet.
        if not any(cells):
            continue
        if len(cells) > len(header):
            problems.append(CaseListProblem(f"has {len(cells)} cells but the header has {len(header)}", row=row))
            continue
        values = dict(zip(header, cells + [""] * (len(header) - len(cells))))
        time_text = values.get(TIME_SPENT, "") or "0"
        # Anything but a whole number stays text, so that validation reports it with its row.
        time_spent = int(time_text) if time_text.isascii() and time_text.isdigit() else time_text
        cases.append(
            Case(
                case_id=values[CASE_ID],
                patient_id=values[PATIENT_ID],
                images={
                    channel: _resolved_path(values[column], folder) for channel, column in zip(channels, image_columns)
                },
                segmentation=_resolved_path(values[SEGMENTATION], folder),
                extra={column: values[column] for column in extra_columns},
                status=values.get(STATUS, ""),
                annotator=values.get(ANNOTATOR, ""),
                time_spent=time_spent,
                pre_annotation=_resolved_path(values.get(PRE_ANNOTATION, ""), folder),
                model_id=values.get(MODEL_ID, ""),
                model_version=values.get(MODEL_VERSION, ""),
            )
        )
        case_rows.append(row)
    problems.extend(_case_problems(cases, case_rows))
    if problems:
        raise CaseListError(sorted(problems, key=lambda p: p.row or 0), source)
    return cases


def read_case_list(path: str) -> list[Case]:
    """Read and validate a case list CSV; paths come back absolute.

    Raises :class:`CaseListError` naming the row and column of every problem: missing required columns,
    duplicate case ids, empty patient ids or image cells, inconsistent channel columns, a file that is not
    UTF-8 (see :mod:`~TrainingDataExportLib.csvfiles`); ``OSError`` when the file cannot be read.
    """
    path = os.fspath(path)
    try:
        text = read_csv_file(path)
    except CsvEncodingError as error:
        raise CaseListError([CaseListProblem(str(error))]) from None
    return parse_case_list(text, os.path.dirname(os.path.abspath(path)), source=os.path.basename(path))


# --- writing ------------------------------------------------------------------------------------------


def _stored_path(path: str, folder: str) -> str:
    """Relative to ``folder`` with '/' when inside it (portable across machines and systems), else absolute."""
    if not path:
        return ""
    absolute = os.path.normpath(path if os.path.isabs(path) else os.path.join(folder, path))
    try:
        relative = os.path.relpath(absolute, folder)
    except ValueError:  # another drive on Windows: no relative path exists
        return absolute
    if relative == os.pardir or relative.startswith(os.pardir + os.sep) or os.path.isabs(relative):
        return absolute
    return relative.replace(os.sep, "/")


def format_case_list(cases: Sequence[Case], folder: str) -> str:
    """The CSV text of ``cases`` (validated first); paths inside ``folder`` are written relative to it."""
    cases = list(cases)
    validate_cases(cases)
    channels = cases[0].channels if cases else (IMAGE,)
    extra_columns = []
    for case in cases:
        extra_columns.extend(column for column in case.extra if column not in extra_columns)
    # A case list nobody pre-annotated keeps the columns it always had.
    pre_annotation_columns = PRE_ANNOTATION_COLUMNS if any(
        case.pre_annotation or case.model_id or case.model_version for case in cases) else ()
    # Spreadsheet-safe cells and "\n" line ends (the same bytes on every system, clean diffs under version control).
    header = [
        CASE_ID,
        PATIENT_ID,
        *(image_column(channel, channels) for channel in channels),
        SEGMENTATION,
        *WORKFLOW_COLUMNS,
        *pre_annotation_columns,
        *extra_columns,
    ]
    rows = [
        [
            case.case_id,
            case.patient_id,
            *(_stored_path(case.images[channel], folder) for channel in channels),
            _stored_path(case.segmentation, folder),
            case.status,
            case.annotator,
            case.time_spent,
            *((_stored_path(case.pre_annotation, folder), case.model_id, case.model_version)
              if pre_annotation_columns else ()),
            *(case.extra.get(column, "") for column in extra_columns),
        ]
        for case in cases
    ]
    return csv_text(header, rows)


def write_case_list(path: str, cases: Iterable[Case]) -> None:
    """Validate ``cases`` and write them to ``path`` atomically, keeping the previous version as ``path.bak``.

    Paths inside the CSV's folder are stored relative to it; a relative path in a :class:`Case` is taken as
    relative to that folder too. Writing content identical to the file's leaves the file and its backup
    untouched, so the backup stays the last *different* version.
    """
    path = os.fspath(path)
    data = format_case_list(list(cases), os.path.dirname(os.path.abspath(path))).encode("utf-8")
    if os.path.isfile(path):
        with open(path, "rb") as file:
            if file.read() == data:
                return
    write_bytes_atomically(path, data, keep_backup=True)


# --- building from a folder -----------------------------------------------------------------------------


def _split_extension(name: str) -> tuple:
    """``("ct01", ".nii.gz")`` for ``ct01.nii.gz``; ``(name, "")`` when the file is not an image."""
    lower = name.lower()
    for extension in SEGMENTATION_EXTENSIONS + IMAGE_EXTENSIONS:
        if lower.endswith(extension) and len(name) > len(extension):
            return name[: -len(extension)], extension
    return name, ""


def _segmentation_base(stem: str, extension: str) -> str | None:
    """The image name a segmentation file belongs to, or None when the file is not marked as one."""
    if extension in SEGMENTATION_EXTENSIONS:
        return stem
    lower = stem.lower()
    for suffix in SEGMENTATION_SUFFIXES:
        if lower.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return None


def case_id_of(file_name: str) -> str | None:
    """The case id a segmentation file is named after, or None when the file is no label map.

    >>> [case_id_of(name) for name in ("ct01.seg.nrrd", "ct01_seg.nii.gz", "ct02.nii", "notes.txt", ".x.nrrd")]
    ['ct01', 'ct01', 'ct02', None, None]
    """
    if file_name.startswith(".") or file_name.lower().endswith(RECOVERY_SUFFIX):
        return None
    stem, extension = _split_extension(file_name)
    if not extension:
        return None
    return _segmentation_base(stem, extension) or stem


def _image_files(folder: str, recursive: bool, skip: str = "") -> list[str]:
    """Image files of ``folder`` (and its subfolders when ``recursive``, except ``skip``), sorted."""
    found = []
    for directory, subdirectories, files in os.walk(folder):
        # Hidden files and folders are tools' leftovers (.DS_Store, our own .tmp files), never cases.
        subdirectories[:] = (
            sorted(d for d in subdirectories if not d.startswith(".") and os.path.join(directory, d) != skip)
            if recursive
            else []
        )
        found.extend(
            os.path.join(directory, name)
            for name in sorted(files)
            if not name.startswith(".") and _split_extension(name)[1] and not name.lower().endswith(RECOVERY_SUFFIX)
        )
    return found


def natural_sort_key(text: str) -> list:
    """Sort key putting ``case2`` before ``case10``, as people number cases."""
    return [int(part) if part.isdigit() else part.casefold() for part in re.split(r"(\d+)", text)]


def _patient_id(case_id: str, pattern: re.Pattern | None) -> str | None:
    if pattern is None:
        return case_id
    match = pattern.search(case_id)
    if match is None:
        return None
    if "patient" in pattern.groupindex:
        return match.group("patient")
    return match.group(1) if pattern.groups else match.group(0)


def case_list_from_folder(
    folder: str,
    patient_pattern: str | None = None,
    channels: Sequence[str] | None = None,
    segmentation_folder: str | None = None,
    recursive: bool = False,
) -> list[Case]:
    """Build a case list from the image files (.nii, .nii.gz, .nrrd, .mha, .mhd) of ``folder``.

    - Without ``channels``, every image file is a case (single channel ``image``) whose id is the file name
      without extension. With ``channels`` (e.g. ``["t1", "flair"]`` or nnU-Net's ``["0000", "0001"]``),
      ``<case>_<channel>.<ext>`` files are the channels of case ``<case>``.
    - Files marked as segmentations (``<case>.seg.nrrd``, or ``<case>_seg``, ``_label``, ``_labels``,
      ``_labelmap``, ``_segmentation`` before the extension) are paired to their case. Every file of
      ``segmentation_folder``, when given, is a segmentation named after its case (with or without a mark).
    - ``patient_pattern`` (a regular expression searched in the case id) gives the patient id: its group
      named ``patient``, else its first group, else the whole match; without it, each case is its own patient.

    Cases come sorted by case id, numbers in their numeric order. Raises :class:`CaseListError` listing
    every file that cannot be placed (unpaired segmentation, missing channel, two files for one case...).

    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> for name in ("p7_visit2_t1.nii.gz", "p7_visit2_flair.nii.gz", "p7_visit2.seg.nrrd"):
    ...     open(os.path.join(folder, name), "wb").close()
    >>> (case,) = case_list_from_folder(folder, patient_pattern=r"^(p\\d+)_", channels=["t1", "flair"])
    >>> case.case_id, case.patient_id, case.channels, os.path.basename(case.segmentation)
    ('p7_visit2', 'p7', ('t1', 'flair'), 'p7_visit2.seg.nrrd')
    """
    folder = os.path.abspath(os.fspath(folder))
    if not os.path.isdir(folder):
        raise CaseListError([CaseListProblem(f"folder {folder} does not exist")])
    try:
        pattern = re.compile(patient_pattern) if patient_pattern else None
    except re.error as error:
        raise CaseListError([CaseListProblem(f"patient id pattern {patient_pattern!r} is invalid: {error}")]) from None
    channel_names = list(channels) if channels else [IMAGE]
    problems = []
    images = {}  # case id -> {channel: path}
    segmentation_files = []  # (case id it names, path)

    segmentation_folder = os.path.abspath(os.fspath(segmentation_folder)) if segmentation_folder else ""
    # A segmentation folder inside the image folder holds no images, even in a recursive scan.
    for path in _image_files(folder, recursive, skip=segmentation_folder):
        stem, extension = _split_extension(os.path.basename(path))
        base = _segmentation_base(stem, extension)
        if base is not None:
            segmentation_files.append((base, path))
            continue
        if channels:
            # Longest channel name first: with channels "t1" and "ce_t1", "x_ce_t1" is channel ce_t1 of x.
            matching = [c for c in sorted(channel_names, key=len, reverse=True) if stem.endswith("_" + c)]
            if not matching or len(stem) == len(matching[0]) + 1:
                problems.append(
                    CaseListProblem(f"{path}: the name ends with none of the channels _{', _'.join(channel_names)}")
                )
                continue
            channel, case_id = matching[0], stem[: -len(matching[0]) - 1]
        else:
            channel, case_id = IMAGE, stem
        caseImages = images.setdefault(case_id, {})
        if channel in caseImages:
            problems.append(
                CaseListProblem(f"two files for channel {channel}: {caseImages[channel]} and {path}", case_id=case_id)
            )
            continue
        caseImages[channel] = path

    if segmentation_folder:
        for path in _image_files(segmentation_folder, recursive):
            stem, extension = _split_extension(os.path.basename(path))
            base = _segmentation_base(stem, extension)
            segmentation_files.append((stem if base is None else base, path))

    segmentations = {}
    for case_id, path in segmentation_files:
        if case_id not in images:
            problems.append(
                CaseListProblem(f"segmentation {path} matches no image (expected an image named {case_id})")
            )
        elif case_id in segmentations:
            problems.append(CaseListProblem(f"two segmentations: {segmentations[case_id]} and {path}", case_id=case_id))
        else:
            segmentations[case_id] = path

    cases = []
    for case_id in sorted(images, key=natural_sort_key):
        missing = [channel for channel in channel_names if channel not in images[case_id]]
        if missing:
            problems.append(CaseListProblem(f"no file for channel {', '.join(missing)}", case_id=case_id))
            continue
        patient_id = _patient_id(case_id, pattern)
        if not patient_id:
            problems.append(
                CaseListProblem(f"patient id pattern {patient_pattern!r} finds no patient id", case_id=case_id)
            )
            continue
        cases.append(
            Case(
                case_id=case_id,
                patient_id=patient_id,
                images={channel: images[case_id][channel] for channel in channel_names},
                segmentation=segmentations.get(case_id, ""),
            )
        )
    if not images and not problems:
        problems.append(CaseListProblem(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {folder}"))
    problems.extend(_case_problems(cases))
    if problems:
        raise CaseListError(problems, source=folder)
    return cases

"""Qt-free core of the TrainingDataExport module: the case list of an annotation project.

Importable in Slicer, in its Python console, from a command line and in tests.
"""

from .caselist import (
    DEFAULT_CASE_LIST_NAME,
    IMAGE_EXTENSIONS,
    SEGMENTATION_EXTENSIONS,
    SEGMENTATION_SUFFIXES,
    Case,
    CaseListError,
    CaseListProblem,
    backup_path,
    case_list_from_folder,
    format_case_list,
    image_column,
    natural_sort_key,
    parse_case_list,
    read_case_list,
    validate_cases,
    write_case_list,
)

__all__ = [
    "DEFAULT_CASE_LIST_NAME",
    "IMAGE_EXTENSIONS",
    "SEGMENTATION_EXTENSIONS",
    "SEGMENTATION_SUFFIXES",
    "Case",
    "CaseListError",
    "CaseListProblem",
    "backup_path",
    "case_list_from_folder",
    "format_case_list",
    "image_column",
    "natural_sort_key",
    "parse_case_list",
    "read_case_list",
    "validate_cases",
    "write_case_list",
]

"""Qt-free core of the TrainingDataExport module: case lists, patient-level splits, export formats and
the dataset card.

Importable in Slicer, in its Python console, from a command line and in tests.
"""

from .card import (
    CaseSummary,
    ChannelIntensity,
    card_markdown,
    card_warnings,
    channel_intensity,
    dataset_card,
    label_voxel_counts,
    write_dataset_card,
)
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
from .export import (
    MANIFEST_NAME,
    ExportCancelledError,
    ExportError,
    ExportReport,
    ExportSettings,
    export_dataset,
)
from .segmentations import LabelProblem, label_on_grid, read_label_map
from .splits import DatasetSplit, split_by_patient

__all__ = [
    "DEFAULT_CASE_LIST_NAME",
    "IMAGE_EXTENSIONS",
    "MANIFEST_NAME",
    "SEGMENTATION_EXTENSIONS",
    "SEGMENTATION_SUFFIXES",
    "Case",
    "CaseListError",
    "CaseListProblem",
    "CaseSummary",
    "ChannelIntensity",
    "DatasetSplit",
    "ExportCancelledError",
    "ExportError",
    "ExportReport",
    "ExportSettings",
    "LabelProblem",
    "backup_path",
    "card_markdown",
    "card_warnings",
    "case_list_from_folder",
    "channel_intensity",
    "dataset_card",
    "export_dataset",
    "format_case_list",
    "image_column",
    "label_on_grid",
    "label_voxel_counts",
    "natural_sort_key",
    "parse_case_list",
    "read_case_list",
    "read_label_map",
    "split_by_patient",
    "validate_cases",
    "write_case_list",
    "write_dataset_card",
]

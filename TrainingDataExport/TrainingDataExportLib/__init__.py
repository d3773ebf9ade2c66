"""Qt-free core of the TrainingDataExport module: case lists and their annotation workflow, the label schema,
patient-level splits, export formats, the dataset card and the command line.

Importable in Slicer, in its Python console, from a command line and in tests. It uses ModelRegistry's Qt-free
core, ``ModelRegistryLib`` (label schemas, the one atomic file write); Slicer puts every module folder on
``sys.path``, and from a command line or another Python the sibling folder of this source tree is used. Its image
files (``imagefiles``: the one checked reader and verified writer) serve DeepSegment too, which depends on this
module. The 3D augmentation engine needs PyTorch, so it is not imported here: ``from
TrainingDataExportLib.augmentation import augment``.
"""

import importlib.util
import os
import sys

if importlib.util.find_spec("ModelRegistryLib") is None:
    sys.path.append(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                 "ModelRegistry"))

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
    DONE,
    IMAGE_EXTENSIONS,
    IN_PROGRESS,
    PRE_ANNOTATED,
    RECOVERY_SUFFIX,
    REVIEWED,
    SEGMENTATION_EXTENSIONS,
    SEGMENTATION_SUFFIXES,
    STATUSES,
    TO_DO,
    Case,
    CaseListError,
    CaseListProblem,
    case_list_from_folder,
    format_case_list,
    image_column,
    natural_sort_key,
    parse_case_list,
    read_case_list,
    validate_cases,
    write_case_list,
)
from .checks import CaseCheck, case_problems, check_case, inspect_case
from .export import (
    MANIFEST_NAME,
    ExportCancelledError,
    ExportError,
    ExportReport,
    ExportSettings,
    export_dataset,
)
from .labelschema import (
    DEFAULT_LABEL_SCHEMA_NAME,
    LabelSchemaError,
    label_schema_document,
    load_label_schema,
    parse_label_schema,
    save_label_schema,
)
from .preannotation import label_dice, pre_annotation_changes, record_pre_annotations
from .segmentations import LabelProblem, label_on_grid, read_label_map
from .splits import DatasetSplit, split_by_patient
from .workflow import format_duration, recovery_path, recovery_to_offer, segmentation_save_path

__all__ = [
    "DEFAULT_CASE_LIST_NAME",
    "DEFAULT_LABEL_SCHEMA_NAME",
    "DONE",
    "IMAGE_EXTENSIONS",
    "IN_PROGRESS",
    "MANIFEST_NAME",
    "PRE_ANNOTATED",
    "RECOVERY_SUFFIX",
    "REVIEWED",
    "SEGMENTATION_EXTENSIONS",
    "SEGMENTATION_SUFFIXES",
    "STATUSES",
    "TO_DO",
    "Case",
    "CaseCheck",
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
    "LabelSchemaError",
    "card_markdown",
    "card_warnings",
    "case_list_from_folder",
    "case_problems",
    "channel_intensity",
    "check_case",
    "dataset_card",
    "export_dataset",
    "format_case_list",
    "format_duration",
    "image_column",
    "inspect_case",
    "label_dice",
    "label_on_grid",
    "label_schema_document",
    "label_voxel_counts",
    "load_label_schema",
    "natural_sort_key",
    "parse_case_list",
    "parse_label_schema",
    "pre_annotation_changes",
    "read_case_list",
    "read_label_map",
    "record_pre_annotations",
    "recovery_path",
    "recovery_to_offer",
    "save_label_schema",
    "segmentation_save_path",
    "split_by_patient",
    "validate_cases",
    "write_case_list",
    "write_dataset_card",
]

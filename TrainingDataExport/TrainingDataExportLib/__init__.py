"""Qt-free core of the TrainingDataExport module: case lists and their annotation workflow, the label schema,
patient-level splits, export formats, the dataset card and the command line.

Importable in Slicer, in its Python console, from a command line and in tests. It uses ModelRegistry's Qt-free
core, ``ModelRegistryLib`` (label schemas, the one atomic file write); Slicer puts every module folder on
``sys.path``, and from a command line or another Python the sibling folder of this source tree is used. Its image
files (``imagefiles``: the one checked reader and verified writer) serve DeepSegment too, which depends on this
module. Its names are imported when first used (``ModelRegistryLib.lazy``), so that a worker process running
one of its jobs imports only what that job needs. The 3D augmentation engine needs PyTorch and is no export
here: ``from TrainingDataExportLib.augmentation import augment``.
"""

import importlib.util
import os
import sys

if importlib.util.find_spec("ModelRegistryLib") is None:
    sys.path.append(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                 "ModelRegistry"))

from ModelRegistryLib.lazy import lazy_exports

# What each submodule exports, imported when first used (see ModelRegistryLib.lazy).
_EXPORTS = {
    "card": (
        "CaseSummary", "ChannelIntensity", "card_markdown", "card_warnings", "channel_intensity", "dataset_card",
        "label_voxel_counts", "write_dataset_card"
    ),
    "caselist": (
        "DEFAULT_CASE_LIST_NAME", "DONE", "IMAGE_EXTENSIONS", "IN_PROGRESS", "PRE_ANNOTATED", "RECOVERY_SUFFIX",
        "REVIEWED",
        "SEGMENTATION_EXTENSIONS", "SEGMENTATION_SUFFIXES", "STATUSES", "TO_DO", "Case", "CaseListError",
        "CaseListProblem", "case_list_from_folder", "format_case_list", "image_column", "natural_sort_key",
        "parse_case_list", "read_case_list", "validate_cases", "write_case_list"
    ),
    "checks": ("CaseCheck", "case_problems", "check_case", "inspect_case"),
    "export": (
        "MANIFEST_NAME", "ExportCancelledError", "ExportError", "ExportReport", "ExportSettings", "export_dataset"
    ),
    "labelschema": (
        "DEFAULT_LABEL_SCHEMA_NAME", "LabelSchemaError", "label_schema_document", "load_label_schema",
        "parse_label_schema", "save_label_schema"
    ),
    "preannotation": ("label_dice", "pre_annotation_changes", "record_pre_annotations"),
    "segmentations": ("LabelProblem", "label_on_grid", "read_label_map"),
    "splits": ("DatasetSplit", "split_by_patient"),
    "workflow": ("format_duration", "recovery_path", "recovery_to_offer", "segmentation_save_path"),
}
__getattr__, __dir__, __all__ = lazy_exports(sys.modules[__name__], _EXPORTS)

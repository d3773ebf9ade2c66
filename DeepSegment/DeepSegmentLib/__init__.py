"""Qt-free core of the DeepSegment module: model packages and their loaders, the model pool, the
inference engine (resampling, sliding window, postprocessing), the runtimes that run the field's models
(MONAI bundles, nnU-Net v2, Auto3DSeg) behind one call (``runtimes.run_model``), the model service
(persistent worker processes that run models for Slicer, volumes passed in shared memory), compute devices,
exact image geometry, image files, per-frame inference for live streams (``frames``; the OpenIGTLink
stream server is ``stream``), accuracy assessment (``evaluation``), and whether PyTorch is installed.

Importable in Slicer, in its Python console, from a command line (``python -m DeepSegmentLib``) and in
tests. PyTorch is imported only when a model runs or devices are listed, and NumPy, SimpleITK, SciPy and the
submodules only when a name that needs them is first used (``ModelRegistryLib.lazy``): ``from DeepSegmentLib
import ModelService`` imports the service client and what it needs, nothing else.
"""

import importlib.util
import os
import sys

# Model labels and inputs are parsed by ModelRegistry's Lib, and evaluation reads case lists and segmentations
# with TrainingDataExport's. Slicer puts every module folder on sys.path; from a command line or another
# Python, the sibling folders of this source tree are used (a container image holds only ModelRegistryLib).
if importlib.util.find_spec("ModelRegistryLib") is None:
    sys.path.append(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                 "ModelRegistry"))
if importlib.util.find_spec("TrainingDataExportLib") is None:
    sys.path.append(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                 "TrainingDataExport"))

from ModelRegistryLib.lazy import lazy_exports

# What each submodule exports, imported when first used (see ModelRegistryLib.lazy).
_EXPORTS = {
    "devices": ("ComputeDevice", "available_devices", "choose_device", "cpu_device"),
    "engine": (
        "DEFAULT_QUALITY", "PRECISIONS", "QUALITY_PRESETS", "EngineCancelled", "EngineError", "EngineProgress",
        "SegmentationResult", "estimate_memory", "quality_options", "segment"
    ),
    "frames": ("FrameError", "FrameSegmenter"),
    "geometry": ("LPS_FROM_RAS", "geometry_mismatch", "ijk_to_ras_from_image", "image_from_array", "is_oblique"),
    "imageio": ("read_volume", "write_labels"),
    "package": (
        "ModelPackage", "PackageError", "archive_package", "load_network", "load_package", "parse_contract",
        "write_package"
    ),
    "pool": ("ModelPool",),
    "programs": ("ExportedNetwork", "NetworkInputError", "export_network"),
    "runtimes": ("ModelRun", "RunOptions", "RuntimeDependencyError", "detect_runtime", "run_model"),
    "segfile": ("SegmentInfo", "write_segmentation"),
    "service_client": ("ModelService", "SegmentationRun"),
    "torchsetup": ("TorchStatus", "installed_packages", "pinned_constraints", "torch_installed", "torch_status"),
}
__getattr__, __dir__, __all__ = lazy_exports(sys.modules[__name__], _EXPORTS)

"""Qt-free core of the DeepSegment module: model packages and their loaders, the model pool, the
inference engine (resampling, sliding window, postprocessing), the runtimes that run the field's models
(MONAI bundles, nnU-Net v2, Auto3DSeg) behind one call (``runtimes.run_model``), the model service
(persistent worker processes that run models for Slicer, volumes passed in shared memory), compute devices,
exact image geometry, image files, and the PyTorch install plan.

Importable in Slicer, in its Python console, from a command line (``python -m DeepSegmentLib``) and in
tests. PyTorch is imported only when a model runs or devices are listed.
"""

import importlib.util
import os
import sys

# Model labels and inputs are parsed by ModelRegistry's Lib. Slicer puts every module folder on sys.path;
# from a command line or another Python, the sibling ModelRegistry folder of this source tree is used.
if importlib.util.find_spec("ModelRegistryLib") is None:
    sys.path.append(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                 "ModelRegistry"))

from .devices import ComputeDevice, available_devices, choose_device
from .engine import (
    DEFAULT_QUALITY,
    PRECISIONS,
    QUALITY_PRESETS,
    EngineCancelled,
    EngineError,
    EngineProgress,
    SegmentationResult,
    estimate_memory,
    quality_options,
    segment,
)
from .geometry import LPS_FROM_RAS, geometry_mismatch, ijk_to_ras_from_image, image_from_array, is_oblique
from .imageio import read_volume, write_labels
from .package import ModelPackage, PackageError, load_network, load_package, parse_contract, write_package
from .pool import ModelPool
from .runtimes import ModelRun, RunOptions, RuntimeDependencyError, detect_runtime, run_model
from .segfile import SegmentInfo, write_segmentation
from .service_client import ModelService, SegmentationRun
from .torchsetup import driver_cuda_version, install_plan, installed_packages, torch_status

__all__ = [
    "DEFAULT_QUALITY",
    "LPS_FROM_RAS",
    "PRECISIONS",
    "QUALITY_PRESETS",
    "ComputeDevice",
    "EngineCancelled",
    "EngineError",
    "EngineProgress",
    "ModelPackage",
    "ModelPool",
    "ModelRun",
    "ModelService",
    "PackageError",
    "RunOptions",
    "RuntimeDependencyError",
    "SegmentInfo",
    "SegmentationResult",
    "SegmentationRun",
    "available_devices",
    "choose_device",
    "detect_runtime",
    "driver_cuda_version",
    "estimate_memory",
    "geometry_mismatch",
    "ijk_to_ras_from_image",
    "image_from_array",
    "install_plan",
    "installed_packages",
    "is_oblique",
    "load_network",
    "load_package",
    "parse_contract",
    "quality_options",
    "read_volume",
    "run_model",
    "segment",
    "torch_status",
    "write_labels",
    "write_package",
    "write_segmentation",
]

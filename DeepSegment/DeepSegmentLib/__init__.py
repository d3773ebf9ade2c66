"""Qt-free core of the DeepSegment module: model packages and their loaders, the model pool, the
inference engine (resampling, sliding window, postprocessing), the model service (persistent worker
processes that run models for Slicer, volumes passed in shared memory), per-frame inference for live streams
(``frames``; the OpenIGTLink stream server is ``stream``), accuracy assessment (``evaluation``), compute
devices, exact image geometry, reading inputs and writing results, and whether PyTorch is installed.

Importable in Slicer, in its Python console, from a command line (``python -m DeepSegmentLib``) and in
tests. PyTorch is imported only when a model runs or devices are listed.
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
from .frames import FrameError, FrameSegmenter
from .geometry import LPS_FROM_RAS, geometry_mismatch, ijk_to_ras_from_image, image_from_array, is_oblique
from .imageio import read_volume, write_labels
from .package import ModelPackage, PackageError, load_network, load_package, parse_contract, write_package
from .pool import ModelPool
from .segfile import SegmentInfo, write_segmentation
from .service_client import ModelService, SegmentationRun
from .torchsetup import TorchStatus, torch_status

__all__ = [
    "DEFAULT_QUALITY",
    "LPS_FROM_RAS",
    "PRECISIONS",
    "QUALITY_PRESETS",
    "ComputeDevice",
    "EngineCancelled",
    "EngineError",
    "EngineProgress",
    "FrameError",
    "FrameSegmenter",
    "ModelPackage",
    "ModelPool",
    "ModelService",
    "PackageError",
    "SegmentInfo",
    "SegmentationResult",
    "SegmentationRun",
    "TorchStatus",
    "available_devices",
    "choose_device",
    "estimate_memory",
    "geometry_mismatch",
    "ijk_to_ras_from_image",
    "image_from_array",
    "is_oblique",
    "load_network",
    "load_package",
    "parse_contract",
    "quality_options",
    "read_volume",
    "segment",
    "torch_status",
    "write_labels",
    "write_package",
    "write_segmentation",
]

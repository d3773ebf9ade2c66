"""Qt-free core of the DeepSegment module: compute devices and exact image geometry.

Importable in Slicer, in its Python console, from a command line and in tests.
"""

from .devices import ComputeDevice, available_devices, choose_device
from .geometry import LPS_FROM_RAS, geometry_mismatch, ijk_to_ras_from_image, image_from_array, is_oblique

__all__ = [
    "LPS_FROM_RAS",
    "ComputeDevice",
    "available_devices",
    "choose_device",
    "geometry_mismatch",
    "ijk_to_ras_from_image",
    "image_from_array",
    "is_oblique",
]

"""Whether this Python has PyTorch, and which; and what pins every installed package when pip adds one.

Installing PyTorch into Slicer is the job of Slicer's PyTorch extension (its PyTorchUtils module picks the
build for the computer's NVIDIA driver, or the CPU build, with light-the-torch); DeepSegment asks it to (see
``DeepSegmentLogic.installTorch``). Outside Slicer PyTorch is a plain requirement of the environment.

Example::

    >>> status = torch_status()
    >>> status.installed, status.message.startswith("PyTorch ")
    (True, True)
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class TorchStatus:
    """``installed``; the ``version`` and whether ``cuda`` is usable when it is; a ``message`` for the user."""

    installed: bool
    version: str = ""
    cuda: bool = False
    message: str = ""


def torch_status() -> TorchStatus:
    try:
        import torch
    except ImportError:
        return TorchStatus(False, message="PyTorch is not installed.")
    cuda = bool(torch.cuda.is_available())
    where = "with CUDA" if cuda else "CPU only"
    return TorchStatus(True, torch.__version__, cuda, f"PyTorch {torch.__version__} ({where})")


def installed_packages() -> dict:
    """Every distribution in this Python, by name, with its version."""
    found = {}
    for distribution in importlib.metadata.distributions():
        name = distribution.metadata["Name"]
        if name:
            found.setdefault(name, distribution.version)
    return found


def pinned_constraints(installed: Mapping[str, str]) -> list:
    """pip constraint lines keeping every installed package (``installed_packages()``) at its version: with them,
    ``pip install`` can add a package (MONAI for training) but never change Slicer's numpy, SimpleITK or vtk.

    >>> pinned_constraints({"SimpleITK": "2.4.0", "numpy": "1.26.4"})
    ['numpy==1.26.4', 'SimpleITK==2.4.0']
    """
    return [f"{name}=={version}" for name, version in sorted(installed.items(), key=lambda i: i[0].lower())]

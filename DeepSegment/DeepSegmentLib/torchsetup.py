"""Whether this Python has PyTorch, and which; and the pins that keep every installed package at its version
when pip adds an optional library on first use (MONAI, nnunetv2: ``pinned_constraints``).

Installing PyTorch into Slicer is the job of Slicer's PyTorch extension (its PyTorchUtils module picks the
build for the computer's NVIDIA driver, or the CPU build, with light-the-torch); DeepSegment asks it to (see
``DeepSegmentLogic.installTorch``). Outside Slicer PyTorch is a plain requirement of the environment.

Example::

    >>> status = torch_status()  # in Slicer's process, ``torch_installed()`` is enough (it imports nothing)
    >>> status.installed, status.message.startswith("PyTorch ")
    (True, True)
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class TorchStatus:
    """``installed``; the ``version`` and whether ``cuda`` is usable when it is; a ``message`` for the user."""

    installed: bool
    version: str = ""
    cuda: bool = False
    message: str = ""


def torch_installed() -> bool:
    """Whether PyTorch can be imported here, found without importing it: importing PyTorch takes seconds and
    hundreds of MB, which Slicer's own process need not pay (models run in worker processes).

    >>> torch_installed()
    True
    """
    importlib.invalidate_caches()  # finds a PyTorch installed since the last look
    return importlib.util.find_spec("torch") is not None


def torch_status() -> TorchStatus:
    """Whether PyTorch is installed, its version and whether CUDA is usable (imports PyTorch)."""
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

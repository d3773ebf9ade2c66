"""Installing PyTorch into Slicer's Python without breaking Slicer.

Users of Slicer's deep-learning extensions most often suffer from PyTorch installs: a CPU build on a
GPU machine, a CUDA build the driver cannot run, or pip upgrading Slicer's own numpy or SimpleITK. The
plan made here avoids each: the build is chosen from the NVIDIA driver's CUDA version, and every
package already installed is pinned by a constraints file, so pip can add packages but change none.
Slicer's PyTorch extension (light-the-torch) is preferred when present; this is the fallback.

Example::

    >>> plan = install_plan(driver_cuda=(12, 4), installed={"numpy": "1.26.4", "SimpleITK": "2.4.0"})
    >>> plan.index_url.rsplit("/", 1)[-1], plan.constraints
    ('cu124', ['numpy==1.26.4', 'SimpleITK==2.4.0'])
    >>> install_plan(driver_cuda=None, installed={}).index_url.rsplit("/", 1)[-1]
    'cpu'
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

PYTORCH_WHEEL_INDEX = "https://download.pytorch.org/whl"
# CUDA builds PyTorch publishes, newest first; a driver runs builds up to its own CUDA version.
CUDA_BUILDS = ((12, 8), (12, 6), (12, 4), (12, 1), (11, 8))


@dataclass(frozen=True)
class TorchStatus:
    installed: bool
    version: str = ""
    cuda: bool = False
    message: str = ""


@dataclass(frozen=True)
class InstallPlan:
    """What to ask pip for: ``requirement`` from ``index_url``, never changing the ``constraints`` pins."""

    requirement: str
    index_url: str
    constraints: list

    @property
    def description(self) -> str:
        build = self.index_url.rsplit("/", 1)[-1]
        kind = "CPU-only build" if build == "cpu" else f"CUDA {build[2:-1]}.{build[-1]} build"
        return f"PyTorch ({kind}); {len(self.constraints)} installed packages are kept as they are"

    def pip_arguments(self, constraints_file: str) -> list:
        """Arguments for ``pip install`` (e.g. ``slicer.util.pip_install``) given the path of the pins file."""
        return [self.requirement, "--index-url", self.index_url, "--extra-index-url", "https://pypi.org/simple",
                "--constraint", constraints_file]


def torch_status() -> TorchStatus:
    try:
        import torch
    except ImportError:
        return TorchStatus(False, message="PyTorch is not installed.")
    cuda = bool(torch.cuda.is_available())
    where = "with CUDA" if cuda else "CPU only"
    return TorchStatus(True, torch.__version__, cuda, f"PyTorch {torch.__version__} ({where})")


def driver_cuda_version() -> tuple | None:
    """The highest CUDA version the NVIDIA driver supports, from ``nvidia-smi``; None without a usable driver."""
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return None
    try:
        output = subprocess.run([executable], capture_output=True, text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", output)
    return (int(match.group(1)), int(match.group(2))) if match else None


def installed_packages() -> dict:
    """Every distribution in this Python, by name, with its version."""
    found = {}
    for distribution in importlib.metadata.distributions():
        name = distribution.metadata["Name"]
        if name:
            found.setdefault(name, distribution.version)
    return found


def pinned_constraints(installed: Mapping[str, str]) -> list:
    """pip constraint lines keeping every installed package (``installed_packages()``) at its version.

    >>> pinned_constraints({"SimpleITK": "2.4.0", "numpy": "1.26.4"})
    ['numpy==1.26.4', 'SimpleITK==2.4.0']
    """
    return [f"{name}=={version}" for name, version in sorted(installed.items(), key=lambda i: i[0].lower())]


def install_plan(driver_cuda: tuple | None, installed: Mapping[str, str], requirement: str = "torch") -> InstallPlan:
    """The PyTorch build for this driver (CPU-only without one), with every installed package pinned."""
    build = "cpu"
    if driver_cuda is not None:
        usable = [cuda for cuda in CUDA_BUILDS if cuda <= tuple(driver_cuda)]
        if usable:
            build = f"cu{usable[0][0]}{usable[0][1]}"
    return InstallPlan(requirement, f"{PYTORCH_WHEEL_INDEX}/{build}", pinned_constraints(installed))

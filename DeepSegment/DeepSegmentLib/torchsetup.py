"""Whether this Python has PyTorch, and which.

Installing PyTorch into Slicer is the job of Slicer's PyTorch extension (its PyTorchUtils module picks the
build for the computer's NVIDIA driver, or the CPU build, with light-the-torch); DeepSegment asks it to (see
``DeepSegmentLogic.installTorch``). Outside Slicer PyTorch is a plain requirement of the environment.

Example::

    >>> status = torch_status()
    >>> status.installed, status.message.startswith("PyTorch ")
    (True, True)
"""

from __future__ import annotations

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

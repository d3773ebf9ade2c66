"""Compute devices for inference: what this machine offers, and which one a request means.

PyTorch is optional here: Slicer may not have it yet (it is installed on demand), and the panel must
still tell the user what it would run on. Without PyTorch only the CPU is listed. Listing imports PyTorch
(seconds, and hundreds of MB): Slicer lists devices in a worker process (``ModelService.list_devices``).

Example::

    >>> cpu = ComputeDevice(kind="cpu", name="x86_64, 8 threads")
    >>> gpu = ComputeDevice(kind="cuda", index=0, name="NVIDIA H100", total_memory=80 * 1024**3)
    >>> choose_device("auto", [cpu, gpu]).torch_name
    'cuda:0'
    >>> gpu.description
    'CUDA GPU 0: NVIDIA H100, 80.0 GiB'
    >>> choose_device("cpu", [cpu, gpu]).description
    'CPU: x86_64, 8 threads'
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

# "auto" picks the first kind present in this order.
AUTO_PREFERENCE = ("cuda", "mps", "cpu")
_KIND_TITLES = {"cpu": "CPU", "cuda": "CUDA GPU", "mps": "Apple GPU (MPS)"}


@dataclass(frozen=True)
class ComputeDevice:
    """One device PyTorch can run on; ``total_memory`` in bytes, 0 when unknown."""

    kind: str
    index: int = 0
    name: str = ""
    total_memory: int = 0

    @property
    def torch_name(self) -> str:
        return f"cuda:{self.index}" if self.kind == "cuda" else self.kind

    @property
    def description(self) -> str:
        title = _KIND_TITLES[self.kind] + (f" {self.index}" if self.kind == "cuda" else "")
        memory = f", {self.total_memory / 1024**3:.1f} GiB" if self.total_memory else ""
        return f"{title}: {self.name}{memory}"


def cpu_device() -> ComputeDevice:
    """This machine's CPU (found without PyTorch)."""
    threads = os.cpu_count() or 1
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not on Windows
        memory = 0
    name = f"{platform.machine() or 'processor'}, {threads} threads"
    return ComputeDevice(kind="cpu", name=name, total_memory=memory)


def available_devices() -> list:
    """The CPU, then every CUDA GPU, then Apple's MPS device, as PyTorch sees them."""
    devices = [cpu_device()]
    try:
        import torch
    except ImportError:
        return devices
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            devices.append(ComputeDevice("cuda", index, properties.name, int(properties.total_memory)))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append(ComputeDevice("mps", 0, "Metal Performance Shaders"))
    return devices


def choose_device(request: str, devices) -> ComputeDevice:
    """The device meant by ``request``: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    A request that cannot be met raises ``ValueError`` saying what is missing, rather than quietly
    running somewhere else: a user who asked for the GPU must learn that it was not found.
    """
    request = request.strip().lower()
    devices = list(devices)
    if request == "auto":
        for kind in AUTO_PREFERENCE:
            for device in devices:
                if device.kind == kind:
                    return device
        raise ValueError("No compute device is available")
    kind, _, index_text = request.partition(":")
    if kind not in _KIND_TITLES:
        raise ValueError(f"Unknown device {request!r}: use auto, cpu, cuda, cuda:N or mps")
    if index_text and not index_text.isdigit():
        raise ValueError(f"Device index must be a number: {request!r}")
    matches = [d for d in devices if d.kind == kind and (not index_text or d.index == int(index_text))]
    if matches:
        return matches[0]
    if kind == "cuda":
        found = [d.torch_name for d in devices if d.kind == "cuda"]
        raise ValueError(
            f"CUDA device {request!r} is not available (found: {', '.join(found) or 'none'}). A CUDA build of"
            " PyTorch and a working NVIDIA driver are needed; torch.cuda.is_available() must be True."
        )
    raise ValueError(f"{_KIND_TITLES[kind]} is not available on this machine")


def _cpu_computes_bfloat16() -> bool:
    """Whether this CPU has bfloat16 matrix instructions (AMX or AVX-512 BF16), as oneDNN sees them."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a PyTorch build without oneDNN
        return False


def reduced_precision(device: ComputeDevice) -> str:
    """The dtype a network runs in faster on ``device`` with little loss: ``"float16"`` on CUDA,
    ``"bfloat16"`` on CPUs that compute it natively (on others it is emulated and slower), else ``""``
    (float32: MPS, older CPUs)."""
    if device.kind == "cuda":
        return "float16"
    if device.kind == "cpu" and _cpu_computes_bfloat16():
        return "bfloat16"
    return ""

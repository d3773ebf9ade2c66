"""DeepSegmentLib.devices: the device list, and what each request resolves to."""

from __future__ import annotations

import pytest
import torch

from DeepSegmentLib.devices import ComputeDevice, available_devices, choose_device, reduced_precision

CPU = ComputeDevice("cpu", name="test cpu")
GPU0 = ComputeDevice("cuda", 0, "GPU zero", 8 * 1024**3)
GPU1 = ComputeDevice("cuda", 1, "GPU one", 16 * 1024**3)
MPS = ComputeDevice("mps", 0, "Metal")


def test_this_machine_lists_the_cpu_first():
    devices = available_devices()
    assert devices[0].kind == "cpu"
    assert devices[0].torch_name == "cpu"
    import torch

    assert sum(d.kind == "cuda" for d in devices) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)


@pytest.mark.parametrize(
    ("request_text", "devices", "expected"),
    [
        ("auto", [CPU], CPU),
        ("auto", [CPU, MPS], MPS),
        ("auto", [CPU, MPS, GPU0, GPU1], GPU0),
        ("cpu", [CPU, GPU0], CPU),
        ("cuda", [CPU, GPU0, GPU1], GPU0),
        ("CUDA:1", [CPU, GPU0, GPU1], GPU1),
        (" mps ", [CPU, MPS], MPS),
    ],
)
def test_request_resolves(request_text, devices, expected):
    assert choose_device(request_text, devices) == expected


@pytest.mark.parametrize(
    ("request_text", "devices", "message"),
    [
        ("cuda", [CPU], "found: none"),
        ("cuda:2", [CPU, GPU0], "found: cuda:0"),
        ("mps", [CPU], "Apple GPU"),
        ("tpu", [CPU], "Unknown device"),
        ("cuda:x", [CPU, GPU0], "must be a number"),
        ("auto", [], "No compute device"),
    ],
)
def test_unmet_request_says_why(request_text, devices, message):
    with pytest.raises(ValueError, match=message):
        choose_device(request_text, devices)


def test_descriptions_name_kind_and_memory():
    assert GPU1.description == "CUDA GPU 1: GPU one, 16.0 GiB"
    assert MPS.description == "Apple GPU (MPS): Metal"
    assert CPU.description == "CPU: test cpu"


def test_reduced_precision_is_native_only():
    assert reduced_precision(ComputeDevice(kind="cuda", index=0)) == "float16"
    assert reduced_precision(ComputeDevice(kind="mps")) == ""
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert reduced_precision(ComputeDevice(kind="cpu")) == ("bfloat16" if native else "")

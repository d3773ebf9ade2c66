"""DeepSegmentLib.torchsetup: the PyTorch build matches the driver, and nothing installed may change."""

from __future__ import annotations

import os
import stat

import pytest

from DeepSegmentLib.torchsetup import driver_cuda_version, install_plan, installed_packages, torch_status


@pytest.mark.parametrize(
    ("driver", "build"),
    [(None, "cpu"), ((11, 4), "cpu"), ((11, 8), "cu118"), ((12, 2), "cu121"), ((12, 4), "cu124"), ((13, 0), "cu128")],
)
def test_build_follows_the_driver(driver, build):
    plan = install_plan(driver, {})
    assert plan.index_url.endswith("/" + build)
    assert ("CPU-only" in plan.description) == (build == "cpu")


def test_every_installed_package_is_pinned():
    plan = install_plan((12, 4), {"numpy": "1.26.4", "SimpleITK": "2.4.0", "requests": "2.32.0"})
    assert plan.constraints == ["numpy==1.26.4", "requests==2.32.0", "SimpleITK==2.4.0"]
    arguments = plan.pip_arguments("/tmp/pins.txt")
    assert arguments[0] == "torch" and arguments[arguments.index("--constraint") + 1] == "/tmp/pins.txt"


def test_this_python_is_listed_with_its_numpy():
    import numpy

    assert installed_packages()["numpy"] == numpy.__version__


def test_status_of_the_installed_torch():
    import torch

    status = torch_status()
    assert status.installed and status.version == torch.__version__
    assert status.cuda == torch.cuda.is_available()


def fake_nvidia_smi(folder, output: str) -> None:
    """A real executable named nvidia-smi that prints what a driver's would."""
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\necho '{output}'\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


@pytest.mark.skipif(os.name != "posix", reason="the fake driver tool is a shell script")
def test_driver_cuda_version_is_read_from_nvidia_smi(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert driver_cuda_version() is None
    fake_nvidia_smi(tmp_path, "| NVIDIA-SMI 550.54.15   Driver Version: 550.54.15   CUDA Version: 12.4     |")
    assert driver_cuda_version() == (12, 4)
    fake_nvidia_smi(tmp_path, "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")
    assert driver_cuda_version() is None

"""PyTorch comes from Slicer's PyTorch extension: through its PyTorchUtils module, or a message saying what to install.

The extension's module is stood in for by a real scripted module (Testing/Python/Data/PyTorchUtils), loaded by
the stand-in's module manager as Slicer loads the extension's; PyTorch is hidden from the import system
(``sys.modules["torch"] = None``), and that module's ``installTorch`` brings it back instead of downloading it.
"""

from __future__ import annotations

import os
import re
import sys

import pytest
import qt
import slicer
import slicer_standin
from slicer_standin import dialogs

from DeepSegment import PYTORCH_EXTENSION, DeepSegmentLogic, PyTorchExtensionMissingError
from DeepSegmentLib import torch_status

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
PYTORCH_UTILS = os.path.join(REPOSITORY, "Testing", "Python", "Data", "PyTorchUtils", "PyTorchUtils.py")


@pytest.fixture
def hidden_torch(monkeypatch):
    """PyTorch made unimportable, as in a Slicer where it was never installed; the real module is returned."""
    import torch

    monkeypatch.setitem(sys.modules, "torch", None)
    return torch


@pytest.fixture
def pytorch_utils(hidden_torch):
    """The PyTorch extension's module, loaded for one test (its Python module is returned)."""
    with slicer_standin.modules_loaded([PYTORCH_UTILS]):
        import PyTorchUtils

        PyTorchUtils.hidden_torch = hidden_torch
        PyTorchUtils.install_calls.clear()
        yield PyTorchUtils
    assert not hasattr(slicer.modules, "pytorchutils")


def test_status_says_whether_and_which_pytorch_is_installed(monkeypatch):
    import torch

    status = torch_status()
    assert (status.installed, status.version, status.cuda) == (True, torch.__version__, torch.cuda.is_available())
    monkeypatch.setitem(sys.modules, "torch", None)
    assert torch_status() == torch_status().__class__(False, message="PyTorch is not installed.")


def test_an_installed_pytorch_is_used_as_it_is():
    assert slicer.app.moduleManager().module("PyTorchUtils") is None
    assert DeepSegmentLogic().installTorch()  # no extension needed, nothing installed


def test_pytorch_is_installed_through_the_extension_without_a_prompt_in_testing_mode(pytorch_utils):
    assert not torch_status().installed
    assert DeepSegmentLogic().installTorch()
    assert torch_status().installed
    # The build is the extension's choice (light-the-torch): no backend or version forced.
    assert pytorch_utils.install_calls == [{
        "askConfirmation": True, "forceComputationBackend": None, "torchVersionRequirement": None,
        "torchvisionVersionRequirement": None,
    }]


def test_in_the_gui_the_extension_asks_first_and_a_no_installs_nothing(pytorch_utils):
    logic = DeepSegmentLogic()
    with slicer_standin.testing_mode(False):
        with dialogs.answering(qt.QMessageBox.Cancel):
            assert not logic.installTorch(askConfirmation=True)
        assert "light-the-torch" in dialogs.opened[-1].text
        assert not torch_status().installed
        with dialogs.answering(qt.QMessageBox.Ok):
            assert logic.installTorch(askConfirmation=True)
    assert torch_status().installed


def test_the_panel_installs_pytorch_before_a_run(pytorch_utils):
    widget = slicer.modules.deepsegment.widgetRepresentation().self()
    with slicer_standin.testing_mode(False), dialogs.answering(qt.QMessageBox.Cancel):
        assert not widget.torchReady()
    assert "not installed" in widget.ui.stageLabel.text
    with slicer_standin.testing_mode(False), dialogs.answering(qt.QMessageBox.Ok):
        assert widget.torchReady()
    assert len(pytorch_utils.install_calls) == 2


def test_without_the_extension_the_user_is_told_what_to_install(hidden_torch):
    with pytest.raises(PyTorchExtensionMissingError) as raised:
        DeepSegmentLogic().installTorch()
    message = str(raised.value)
    for needed in ("PyTorch extension", "Extensions Manager", "restart", "PyTorchUtils folder",
                   "https://github.com/fepegar/SlicerPyTorch", "additional module paths"):
        assert needed in message
    assert not torch_status().installed


def test_without_the_extension_the_panel_shows_what_to_install(hidden_torch):
    widget = slicer.modules.deepsegment.widgetRepresentation().self()
    assert not widget.torchReady()  # testing mode: the error is logged, no dialog
    assert "PyTorch extension" in widget.ui.stageLabel.text
    with slicer_standin.testing_mode(False), dialogs.answering(qt.QMessageBox.Ok):
        assert not widget.torchReady()
    assert "Extensions Manager" in dialogs.opened[-1].text


def test_the_extension_declares_the_pytorch_extension_as_a_dependency():
    with open(os.path.join(REPOSITORY, "CMakeLists.txt"), encoding="utf-8") as file:
        depends = re.search(r"set\(EXTENSION_DEPENDS\s+([^)]*)\)", file.read()).group(1).split()
    assert PYTORCH_EXTENSION in depends

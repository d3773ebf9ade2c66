"""A stand-in of the PyTorch extension's PyTorchUtils module (github.com/fepegar/SlicerPyTorch), for tests.

It is a real scripted module, loaded by the stand-in's module manager as Slicer loads the extension's, with
the parts of ``PyTorchUtilsLogic`` that DeepSegment uses and their real signatures: ``torchInstalled()``,
``installTorch(askConfirmation, forceComputationBackend, torchVersionRequirement,
torchvisionVersionRequirement)`` (returns the ``torch`` module, or None when the user declines; asks with
``slicer.util.confirmOkCancelDisplay`` unless Slicer runs in testing mode) and the ``torch`` property.

Where the real one runs light-the-torch (downloads), this one makes importable the PyTorch a test hid
(``hidden_torch``), and records each call in ``install_calls``.
"""

import importlib
import sys

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleLogic

# The torch module a test hid (sys.modules["torch"] = None) and that installTorch brings back.
hidden_torch = None
# The keyword arguments of every installTorch call, in order.
install_calls = []


class PyTorchUtils(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "PyTorch Utils"
        self.parent.categories = ["Utilities"]
        self.parent.contributors = ["SlicerDeepLearning developers (a test stand-in of fepegar/SlicerPyTorch)"]
        self.parent.helpText = "Installs PyTorch (a test stand-in)."
        self.parent.acknowledgementText = "Stands in for the PyTorch extension's module in tests."


class PyTorchUtilsLogic(ScriptedLoadableModuleLogic):
    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._torch = None

    @staticmethod
    def torchInstalled():
        try:
            import torch  # noqa: F401
        except ImportError:
            return False
        return True

    @property
    def torch(self):
        if self._torch is None:
            self._torch = importlib.import_module("torch") if self.torchInstalled() else self.installTorch()
        return self._torch

    def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None,
                     torchvisionVersionRequirement=None):
        install_calls.append({
            "askConfirmation": askConfirmation, "forceComputationBackend": forceComputationBackend,
            "torchVersionRequirement": torchVersionRequirement,
            "torchvisionVersionRequirement": torchvisionVersionRequirement,
        })
        question = "PyTorch will be downloaded and installed using light-the-torch."
        if askConfirmation and not slicer.app.commandOptions().testingEnabled and not (
            slicer.util.confirmOkCancelDisplay(question)
        ):
            return None
        sys.modules["torch"] = hidden_torch
        return hidden_torch

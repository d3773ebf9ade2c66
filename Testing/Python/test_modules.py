"""Slicer's generic module test, and each module's self-test, for every module of the extension.

Slicer's ``WITH_GENERIC_TESTS`` checks a module's metadata and that ``logic()`` and
``widgetRepresentation()`` return the same object on every call; the application then drives the panel
through setup, enter, exit and cleanup. The self-test is the module's ``<Name>Test`` run through
``runTest()``, exactly as ``slicer.selfTests[name]()`` runs it in Slicer, and each of its test methods
alone, as Slicer's ctest runs them through ``slicer.testing.runUnitTest``.
"""

from __future__ import annotations

import io
import os
import unittest

import pytest

import slicer
import slicer_standin

# The extension's modules, as the stand-in loaded them (conftest.py loads every module CMake builds).
MODULE_NAMES = [
    name
    for name in slicer.app.moduleManager().loadedModuleNames()
    if isinstance(slicer.app.moduleManager().module(name), slicer.qSlicerScriptedLoadableModule)
]


def module(name):
    return getattr(slicer.modules, name.lower())


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_metadata_is_complete(name):
    described = module(name)
    assert described.title
    assert described.categories == ["Deep Learning"]
    assert described.contributors
    assert described.helpText
    assert described.acknowledgementText
    assert not described.icon.isNull(), f"{name}/Resources/Icons/{name}.png is missing"


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_logic_and_widget_representation_are_stable(name):
    described = module(name)
    assert described.logic() is not None
    assert described.logic() is described.logic()
    assert described.widgetRepresentation() is not None
    assert described.widgetRepresentation() is described.widgetRepresentation()
    assert slicer.util.getModuleWidget(name) is described.widgetRepresentation().self()
    assert slicer.util.getModuleLogic(name) is described.widgetRepresentation().self().logic


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_panel_lifecycle(name):
    """A second panel goes through what the application does to one: setup, enter, exit, cleanup."""
    panel = module(name).createNewWidgetRepresentation()
    widget = panel.self()
    panel.show()
    slicer.app.processEvents()
    for _ in range(2):
        panel.enter()
        slicer.app.processEvents()
        panel.exit()
    widget.cleanup()
    panel.deleteLater()
    slicer.app.processEvents()


@pytest.mark.parametrize("testing", [True, False], ids=["testing mode", "GUI mode"])
@pytest.mark.parametrize("name", MODULE_NAMES)
def test_module_self_test(name, testing):
    """As the module's Test button runs it: in Slicer's GUI (testing mode off, so slicer.util's message boxes
    open, and any modal dialog fails the test here), and in testing mode."""
    with slicer_standin.testing_mode(testing):
        slicer.selfTests[name]()


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_module_self_test_as_ctest_runs_it(name):
    """As Slicer's ctest runs it: each test method alone, after setUp."""
    slicer.testing.runUnitTest([os.path.dirname(module(name).path)], name)


def test_a_self_test_that_cannot_run_is_skipped_not_passed(monkeypatch):
    """DeepSegment's Apply test needs PyTorch: without it the test says so, in ctest as in runTest."""
    import DeepSegment
    from DeepSegmentLib.torchsetup import TorchStatus

    monkeypatch.setattr(DeepSegment, "torch_status", lambda: TorchStatus(False, message="PyTorch is not installed."))
    result = unittest.TextTestRunner(stream=io.StringIO()).run(
        DeepSegment.DeepSegmentTest("test_SegmentThroughPanelApply")
    )
    assert result.wasSuccessful() and len(result.skipped) == 1
    assert "PyTorch is not installed" in result.skipped[0][1]
    with pytest.raises(unittest.SkipTest):
        slicer.selfTests["DeepSegment"]()

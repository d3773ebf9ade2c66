"""pytest set-up: every test runs inside the Slicer stand-in, with the extension's modules loaded.

The stand-in (Testing/SlicerStandIn) boots real MRML from the slicer-core wheel and a PythonQt-like
``qt`` on PySide6; the modules are then loaded as Slicer's module factory loads them, so
``import DeepSegment`` or ``import ModelRegistryLib`` work in tests as in Slicer's Python console.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import pytest

REPOSITORY = os.path.dirname(os.path.abspath(__file__))


os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# Models installed by tests go to a private folder, never to the user's cache.
os.environ["SLICER_DEEPLEARNING_CACHE_DIR"] = tempfile.mkdtemp(prefix="SlicerDeepLearning-test-cache-")
sys.path.insert(0, os.path.join(REPOSITORY, "Testing", "SlicerStandIn"))
# Test helpers every module's tests share (fault_injection: full disks, read-only folders, killed children).
sys.path.insert(0, os.path.join(REPOSITORY, "Testing", "Python"))


def pytest_configure(config):
    import slicer_standin

    slicer_standin.boot()
    slicer_standin.load_modules(slicer_standin.extension_module_paths(REPOSITORY))


@pytest.fixture(autouse=True)
def clear_scene():
    """Each test starts and ends with an empty scene, as after Slicer's File / Close Scene."""
    import slicer

    slicer.mrmlScene.Clear(False)
    yield
    slicer.mrmlScene.Clear(False)


@pytest.fixture(autouse=True)
def fail_on_errors_in_slots(monkeypatch):
    """An exception raised in a slot fails the test.

    Qt (PySide here, PythonQt in Slicer) prints such an exception through ``sys.excepthook`` and goes on,
    so a broken panel callback would otherwise pass unnoticed.
    """
    errors = []
    monkeypatch.setattr(sys, "excepthook", lambda kind, value, trace: errors.append((kind, value, trace)))
    yield
    if errors:
        import traceback

        pytest.fail("Exception in a Qt slot:\n" + "".join(traceback.format_exception(*errors[0])), pytrace=False)


@pytest.fixture(autouse=True)
def no_worker_process_left_running():
    """Every worker process a test starts (a panel's job, a model service, a server) has ended after it."""
    yield
    import qt

    import slicer
    from ModelRegistryLib import jobs

    deadline = time.monotonic() + 10.0
    while jobs.live_workers() and time.monotonic() < deadline:
        slicer.app.processEvents()
        qt.QThread.msleep(20)
    left = jobs.live_workers()
    if left:
        jobs.stop_all_workers()
        pytest.fail(f"worker processes left running: {', '.join(f'{w.name} (pid {w.pid})' for w in left)}")

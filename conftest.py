"""pytest set-up: every test runs inside the Slicer stand-in, with the extension's modules loaded.

The stand-in (Testing/SlicerStandIn) boots real MRML from the slicer-core wheel and a PythonQt-like
``qt`` on PySide6; the modules are then loaded as Slicer's module factory loads them, so
``import DeepSegment`` or ``import ModelRegistryLib`` work in tests as in Slicer's Python console.

Without the slicer-core wheel (there is none for Python 3.9, the Python of Slicer 5.8) the stand-in cannot
boot: the module folders are then put on ``sys.path`` and what needs Slicer is skipped, with the reason:
test files whose top-level imports need ``slicer``, ``qt``, ``ctk``, ``vtk`` (Slicer's), the stand-in or a
module's ``<Name>.py``, and tests that import them when they run. A Lib (``<Name>Lib``) that imports one of
them still fails.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
import tempfile
import time

import pytest

REPOSITORY = os.path.dirname(os.path.abspath(__file__))
# Whether slicer-core (real MRML) is installed: without it the stand-in cannot boot.
STAND_IN = importlib.util.find_spec("slicer") is not None
NO_STAND_IN = "needs the Slicer stand-in, which needs slicer-core (no wheel for this Python)"


os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# Models installed by tests go to a private folder, never to the user's cache.
os.environ["SLICER_DEEPLEARNING_CACHE_DIR"] = tempfile.mkdtemp(prefix="SlicerDeepLearning-test-cache-")
sys.path.insert(0, os.path.join(REPOSITORY, "Testing", "SlicerStandIn"))
# Test helpers every module's tests share (fault_injection: full disks, read-only folders, killed children).
sys.path.insert(0, os.path.join(REPOSITORY, "Testing", "Python"))


def pytest_configure(config):
    import slicer_standin

    paths = slicer_standin.extension_module_paths(REPOSITORY)
    if STAND_IN:
        slicer_standin.boot()
        slicer_standin.load_modules(paths)
    else:
        sys.path[:0] = [os.path.dirname(path) for path in paths]


def _needs_slicer(module: str) -> bool:
    """Whether importing ``module`` needs Slicer: slicer, qt, ctk, vtk, the stand-in or a module's ``<Name>.py``."""
    top = module.split(".")[0]
    module_file = os.path.join(REPOSITORY, top, top + ".py")
    return top in ("slicer", "qt", "ctk", "vtk", "slicer_standin") or os.path.isfile(module_file)


def _imports_slicer_at_top(path) -> bool:
    with open(path, encoding="utf-8") as file:
        tree = ast.parse(file.read(), str(path))
    for node in tree.body:
        if isinstance(node, ast.Import) and any(_needs_slicer(alias.name) for alias in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and not node.level and _needs_slicer(node.module or ""):
            return True
    return False


class _SkippedModule(pytest.Module):
    """A test file that cannot be imported without the stand-in: reported as skipped."""

    def collect(self):
        pytest.skip(f"{self.path.name} {NO_STAND_IN}")


def pytest_pycollect_makemodule(module_path, parent):
    if not STAND_IN and _imports_slicer_at_top(module_path):
        return _SkippedModule.from_parent(parent, path=module_path)
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Without the stand-in, a test (or fixture) that imports what needs Slicer is skipped, not failed.

    Only an import made by test code or a module's ``<Name>.py`` counts: one made by a Lib is a failure.
    """
    outcome = yield
    report = outcome.get_result()
    error = call.excinfo.value if call.excinfo is not None else None
    if STAND_IN or not isinstance(error, ModuleNotFoundError) or not _needs_slicer(error.name or ""):
        return
    frames = [entry.path for entry in call.excinfo.traceback if str(entry.path).startswith(REPOSITORY)]
    importer = os.path.relpath(str(frames[-1]), REPOSITORY) if frames else ""
    if any(part.endswith("Lib") for part in importer.split(os.sep)[:-1]):
        return
    report.outcome = "skipped"
    report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: {NO_STAND_IN} (imports {error.name})")


@pytest.fixture(autouse=True)
def clear_scene():
    """Each test starts and ends with an empty scene, as after Slicer's File / Close Scene."""
    if not STAND_IN:
        yield
        return
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
    from ModelRegistryLib import jobs

    deadline = time.monotonic() + 10.0
    while jobs.live_workers() and time.monotonic() < deadline:
        # Qt delivers a panel's job results; a test run without Qt (the GPU machine has no PySide6) has none.
        if "slicer" in sys.modules:
            sys.modules["slicer"].app.processEvents()
        time.sleep(0.02)
    left = jobs.live_workers()
    if left:
        jobs.stop_all_workers()
        pytest.fail(f"worker processes left running: {', '.join(f'{w.name} (pid {w.pid})' for w in left)}")

"""A stand-in for the parts of the 3D Slicer application that the ``slicer-core`` wheel lacks.

Test infrastructure only: nothing in the extension's modules imports it. ``boot()`` does, once per
process, what Slicer's application does before any scripted module runs:

- imports the ``qt`` (PySide6 behaving like PythonQt) and ``ctk`` stand-ins from this folder,
- boots real MRML (scene, application logic, core module logics) from the wheel,
- creates ``slicer.app`` (with a hidden main window) and sets ``slicer.mrmlScene``, ``slicer.modules``,
  ``slicer.selfTests``, ``slicer.ScriptedLoadableModule``, ``slicer.testing``, ``slicer.i18n``, the ``qMRML*``
  widgets and Slicer's module classes on ``slicer``,
- makes every modal dialog fail the test instead of waiting for a user (``dialogs``).

Then ``load_modules(paths)`` loads scripted modules as Slicer's module factory does;
``extension_module_paths(folder)`` finds those of an extension from its CMakeLists.txt.

Example::

    import slicer_standin
    slicer_standin.boot()
    (deepSegment,) = slicer_standin.load_modules(["DeepSegment/DeepSegment.py"])
    panel = deepSegment.widgetRepresentation()   # the Python widget is panel.self()
    with slicer_standin.testing_mode(False):     # as in the GUI's Reload & Test
        slicer.selfTests["DeepSegment"]()
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

_STATE = {}


def boot(state_directory=None):
    """Start the stand-in application (idempotent) and return ``slicer.app``."""
    if "app" in _STATE:
        return _STATE["app"]
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    import ctk  # noqa: F401  (Slicer imports it at start-up; panels use it without importing)
    import qt  # noqa: F401  (importing it gives PySide6 objects PythonQt's behaviour)

    import slicer
    import slicer.util

    from . import ScriptedLoadableModule, dialogs, i18n, modules, qmrml, testing
    from .application import StandInApplication
    from .mrml import boot_core_logics

    core = boot_core_logics()
    if state_directory is None:
        state_directory = tempfile.mkdtemp(prefix="SlicerStandIn-")
    app = StandInApplication(core, state_directory)
    dialogs.install()
    slicer.app = app
    slicer.mrmlScene = core.scene
    slicer.modules = modules.new_modules_namespace()
    slicer.selfTests = {}
    for name, module in (("ScriptedLoadableModule", ScriptedLoadableModule), ("testing", testing), ("i18n", i18n)):
        sys.modules["slicer." + name] = module
        setattr(slicer, name, module)
    for name, widgetClass in qmrml.QMRML_CLASSES.items():
        setattr(slicer, name, widgetClass)
    slicer.qSlicerScriptedLoadableModule = modules.qSlicerScriptedLoadableModule
    slicer.qSlicerScriptedLoadableModuleWidget = modules.qSlicerScriptedLoadableModuleWidget
    for name, logic in core.module_logics.items():
        app.moduleManager().register(modules.qSlicerAbstractCoreModule(name, logic))
    _STATE["app"] = app
    return app


@contextlib.contextmanager
def testing_mode(enabled: bool):
    """Run a block with ``slicer.app.testingEnabled()`` set to ``enabled`` (False: the GUI's mode)."""
    app = boot()
    previous = app.testingEnabled()
    app.setTestingEnabled(enabled)
    try:
        yield
    finally:
        app.setTestingEnabled(previous)


def load_modules(paths) -> list:
    """Load scripted modules from their ``<Name>.py`` files; returns their module objects in load order.

    A module that is already loaded is not loaded again.
    """
    app = boot()
    return app.moduleManager().loadScriptedModules([os.fspath(p) for p in paths])


@contextlib.contextmanager
def modules_loaded(paths):
    """Load scripted modules for a block only (another extension's module that a test provides, such as a
    stand-in of PyTorchUtils); afterwards they are gone, as after a restart without that extension."""
    app = boot()
    already = set(app.moduleManager().loadedModuleNames())
    loaded = load_modules(paths)
    try:
        yield loaded
    finally:
        app.moduleManager().forget([module.name for module in loaded if module.name not in already])


def extension_module_paths(extension_directory) -> list:
    """The ``<Name>/<Name>.py`` files of the scripted modules an extension's CMakeLists.txt builds, in order."""
    with open(os.path.join(extension_directory, "CMakeLists.txt"), encoding="utf-8") as file:
        names = re.findall(r"^\s*add_subdirectory\((\w+)\)", file.read(), re.MULTILINE)
    paths = [os.path.join(extension_directory, name, name + ".py") for name in names]
    return [path for path in paths if os.path.isfile(path)]

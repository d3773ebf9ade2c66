"""``slicer.app``: the application object of the stand-in, a QApplication like Slicer's qSlicerApplication.

It answers what scripted modules and Slicer's ``slicer/util.py`` ask of the application: testing mode,
temporary and cache folders, settings, the MRML scene and application logic, the I/O manager, the
module manager and the main window. Settings go to an ini file in a private folder, never to the user's
own Slicer settings.

Testing mode is on, as in Slicer started with ``--testing`` (ctest). ``setTestingEnabled(False)`` (a
stand-in call: Slicer fixes the mode at start-up) gives the GUI's mode, in which a developer runs
Reload & Test: ``slicer.util`` then opens its message boxes, which fail the test here (see ``dialogs``).
"""

from __future__ import annotations

import os

from PySide6 import QtCore, QtWidgets

from .io_manager import CoreIOManager
from .mainwindow import qSlicerMainWindow
from .modules import ModuleManager
from .mrml import CoreLogics


def _slicer_core_version() -> tuple:
    from importlib.metadata import version

    major, minor = version("slicer-core").split(".")[:2]
    return int(major), int(minor)


class CommandOptions(QtCore.QObject):
    """``slicer.app.commandOptions()`` (qSlicerCommandOptions): ``testingEnabled`` is Slicer's ``--testing``."""

    def __init__(self, application) -> None:
        super().__init__()
        self._application = application

    testingEnabled = QtCore.Property(bool, lambda self: self._application.testingEnabled())


class StandInApplication(QtWidgets.QApplication):
    """The one QApplication of a stand-in session; ``state_directory`` holds its settings and temp files."""

    def __init__(self, core: CoreLogics, state_directory: str) -> None:
        super().__init__(["SlicerStandIn"])
        self.setOrganizationName("SlicerDeepLearning")
        self.setApplicationName("Slicer")
        self._core = core
        self._temporary_path = os.path.join(state_directory, "temp")
        self._cache_path = os.path.join(state_directory, "cache")
        for folder in (self._temporary_path, self._cache_path):
            os.makedirs(folder, exist_ok=True)
        QtCore.QSettings.setDefaultFormat(QtCore.QSettings.IniFormat)
        settings_directory = os.path.join(state_directory, "settings")
        QtCore.QSettings.setPath(QtCore.QSettings.IniFormat, QtCore.QSettings.UserScope, settings_directory)
        self._io_manager = CoreIOManager(core.scene, core.module_logics, core.application_logic)
        self._module_manager = ModuleManager()
        self._major_version, self._minor_version = _slicer_core_version()
        self._testing_enabled = True
        self._command_options = CommandOptions(self)
        self._main_window = qSlicerMainWindow(self._module_manager)

    temporaryPath = QtCore.Property(str, lambda self: self._temporary_path)
    cachePath = QtCore.Property(str, lambda self: self._cache_path)
    majorVersion = QtCore.Property(int, lambda self: self._major_version)
    minorVersion = QtCore.Property(int, lambda self: self._minor_version)

    def testingEnabled(self) -> bool:
        return self._testing_enabled

    def setTestingEnabled(self, enabled: bool) -> None:
        """Stand-in only: switch between ctest's testing mode (on) and the GUI's (off)."""
        self._testing_enabled = bool(enabled)

    def commandOptions(self) -> CommandOptions:
        return self._command_options

    def settings(self) -> QtCore.QSettings:
        return QtCore.QSettings()

    def userSettings(self) -> QtCore.QSettings:
        return QtCore.QSettings()

    def mrmlScene(self):
        return self._core.scene

    def applicationLogic(self):
        return self._core.application_logic

    def coreIOManager(self) -> CoreIOManager:
        return self._io_manager

    def moduleManager(self) -> ModuleManager:
        return self._module_manager

    def layoutManager(self):
        """No views exist in the stand-in (its main window is never shown)."""
        return None

"""Slicer's main window, as far as scripted modules reach it: found by name, with a module selector.

Slicer's GUI, and the ctest that runs a module's self-test (``--testing`` without ``--no-main-window``),
have a ``qSlicerMainWindow``: ``slicer.util.mainWindow()`` finds it among the top-level widgets by that
object name, message boxes and ``delayDisplay`` popups take it as parent, the Segment Editor puts its
keyboard shortcuts on it, and ``slicer.util.selectModule(name)`` asks its module selector to switch modules.
Switching exits the panel of the module shown so far and enters the new one, as qSlicerModulePanel does
(removeModule calls ``exit()``, addModule ``enter()``). The stand-in's main window is never shown and has no
views (``slicer.app.layoutManager()`` stays None).
"""

from __future__ import annotations

from PySide6 import QtCore, QtWidgets


class qSlicerModuleSelectorToolBar(QtCore.QObject):
    """``selectedModule`` (the module shown, "" at first) and ``selectModule(name)``."""

    moduleSelected = QtCore.Signal(str)

    def __init__(self, moduleManager, parent=None) -> None:
        super().__init__(parent)
        self._moduleManager = moduleManager
        self._selected = ""

    def _getSelectedModule(self) -> str:
        return self._selected

    def selectModule(self, moduleName: str) -> None:
        if moduleName == self._selected:
            return
        module = self._moduleManager.module(moduleName)
        if module is None:
            raise RuntimeError(f"Module {moduleName!r} is not loaded")
        previous = self._moduleManager.module(self._selected) if self._selected else None
        if previous is not None and previous.widgetRepresentation() is not None:
            previous.widgetRepresentation().exit()
        self._selected = moduleName
        panel = module.widgetRepresentation()
        if panel is not None:
            panel.enter()
        self.moduleSelected.emit(moduleName)

    selectedModule = QtCore.Property(str, _getSelectedModule, selectModule, notify=moduleSelected)


class qSlicerMainWindow(QtWidgets.QMainWindow):
    """The application's main window (hidden): ``slicer.util.mainWindow()`` returns it."""

    def __init__(self, moduleManager) -> None:
        super().__init__()
        self.setObjectName("qSlicerMainWindow")
        self._moduleSelector = qSlicerModuleSelectorToolBar(moduleManager, self)

    def moduleSelector(self) -> qSlicerModuleSelectorToolBar:
        return self._moduleSelector

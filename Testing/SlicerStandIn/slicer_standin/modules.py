"""Module objects and the module manager, as Slicer's module factory creates and loads them.

In Slicer every module is a C++ object (``qSlicerAbstractCoreModule``) reachable as
``slicer.modules.<lowercase name>``. For a scripted module it is a ``qSlicerScriptedLoadableModule``:
the factory puts the module's folder on ``sys.path``, imports ``<Name>.py`` under the name ``<Name>``,
and calls ``<Name>(parent)`` with the C++ object as ``parent``, so ``parent.title = ...`` sets a Qt
property of that object. ``widgetRepresentation()`` creates the panel once: a
``qSlicerScriptedLoadableModuleWidget`` whose ``self()`` is the Python ``<Name>Widget``, built with that
panel as parent, then ``setup()``; the application calls ``enter()``/``exit()`` as the user switches
modules and ``cleanup()`` through ``moduleAboutToBeUnloaded`` when it quits.
"""

from __future__ import annotations

import importlib
import os
import sys
import types

from PySide6 import QtCore, QtGui, QtWidgets

import slicer

from .qmrml import qMRMLWidget


def _module_name(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


class qSlicerAbstractCoreModule(QtCore.QObject):
    """A module of the application: metadata as Qt properties, a logic, maybe a panel."""

    def __init__(self, name: str, logic=None, path: str = "") -> None:
        super().__init__()
        self._name = name
        self._metadata = {
            "title": name,
            "categories": [],
            "dependencies": [],
            "contributors": [],
            "helpText": "",
            "acknowledgementText": "",
        }
        self._icon = QtGui.QIcon()
        self._path = path
        self._logic = logic

    def _get(self, key):
        return self._metadata[key]

    def _set(self, key, value):
        self._metadata[key] = list(value) if isinstance(self._metadata[key], list) else str(value)

    name = QtCore.Property(str, lambda self: self._name)
    path = QtCore.Property(str, lambda self: self._path)
    title = QtCore.Property(str, lambda self: self._get("title"), lambda self, v: self._set("title", v))
    categories = QtCore.Property(list, lambda self: self._get("categories"), lambda self, v: self._set("categories", v))
    dependencies = QtCore.Property(
        list, lambda self: self._get("dependencies"), lambda self, v: self._set("dependencies", v)
    )
    contributors = QtCore.Property(
        list, lambda self: self._get("contributors"), lambda self, v: self._set("contributors", v)
    )
    helpText = QtCore.Property(str, lambda self: self._get("helpText"), lambda self, v: self._set("helpText", v))
    acknowledgementText = QtCore.Property(
        str, lambda self: self._get("acknowledgementText"), lambda self, v: self._set("acknowledgementText", v)
    )
    icon = QtCore.Property(QtGui.QIcon, lambda self: self._icon, lambda self, v: setattr(self, "_icon", v))

    def logic(self):
        return self._logic

    def widgetRepresentation(self):
        """Core modules have no panel in the stand-in (Slicer's are C++ widgets)."""
        return None


class qSlicerScriptedLoadableModuleWidget(qMRMLWidget):
    """The panel Slicer creates for a scripted module; ``self()`` is the Python widget object.

    ``isEntered`` is true between ``enter()`` and ``exit()`` (qSlicerAbstractModuleWidget). Slicer asserts
    that they alternate (Q_ASSERT, in debug builds); the stand-in always does.
    """

    def __init__(self) -> None:
        super().__init__()
        self.setLayout(QtWidgets.QVBoxLayout())
        self._python_widget = None
        self._entered = False

    def self(self):
        return self._python_widget

    def _isEntered(self) -> bool:
        return self._entered

    isEntered = QtCore.Property(bool, _isEntered)

    def enter(self) -> None:
        if self._entered:
            raise AssertionError("enter() called on a module panel that is already entered")
        self._entered = True
        self._python_widget.enter()

    def exit(self) -> None:
        if not self._entered:
            raise AssertionError("exit() called on a module panel that is not entered")
        self._entered = False
        self._python_widget.exit()


class qSlicerScriptedLoadableModule(qSlicerAbstractCoreModule):
    """A scripted module: the Python ``<Name>`` object describes it, ``<Name>Widget`` is its panel."""

    def __init__(self, path: str) -> None:
        name = _module_name(path)
        super().__init__(name, path=path)
        self._widget = None
        self.pythonModule = importlib.import_module(name)
        self.pythonInstance = getattr(self.pythonModule, name)(self)
        setattr(slicer.modules, name + "Instance", self.pythonInstance)

    def logic(self):
        # Slicer gives a scripted module a generic C++ logic; the Python logic lives in the widget.
        if self._logic is None:
            self._logic = slicer.vtkSlicerScriptedLoadableModuleLogic()
            self._logic.SetMRMLScene(slicer.mrmlScene)
        return self._logic

    def widgetRepresentation(self):
        if self._widget is None:
            self._widget = self.createNewWidgetRepresentation()
        return self._widget

    def createNewWidgetRepresentation(self):
        widgetClass = getattr(self.pythonModule, self._name + "Widget", None)
        if widgetClass is None:
            return None
        panel = qSlicerScriptedLoadableModuleWidget()
        panel.setMRMLScene(slicer.mrmlScene)
        panel._python_widget = widgetClass(panel)
        setattr(slicer.modules, self._name + "Widget", panel._python_widget)
        panel._python_widget.setup()
        return panel


class ModuleManager(QtCore.QObject):
    """``slicer.app.moduleManager()``: loaded modules by name, and the unload notification."""

    moduleAboutToBeUnloaded = QtCore.Signal(str)

    def __init__(self) -> None:
        super().__init__()
        self._modules = {}

    def module(self, name: str):
        return self._modules.get(name)

    def factoryManager(self):
        return self

    def loadedModuleNames(self) -> list:
        return list(self._modules)

    def register(self, module: qSlicerAbstractCoreModule) -> None:
        self._modules[module.name] = module
        setattr(slicer.modules, module.name.lower(), module)

    def loadScriptedModules(self, paths) -> list:
        """Load scripted modules from their ``<Name>.py`` paths, dependencies checked, as Slicer does.

        Every module folder goes on ``sys.path`` first, so a module may import another module's Lib.
        Returns the modules in load order (those loaded before first). A module whose dependency is not
        loaded is refused.
        """
        paths = [os.path.abspath(path) for path in paths]
        for path in paths:
            if os.path.dirname(path) not in sys.path:
                sys.path.insert(0, os.path.dirname(path))
        already = [self._modules[name] for name in map(_module_name, paths) if name in self._modules]
        modules = [qSlicerScriptedLoadableModule(path) for path in paths if _module_name(path) not in self._modules]
        pending = {module.name: module for module in modules}
        loaded = []
        while pending:
            ready = [m for m in pending.values() if all(d in self._modules for d in m.dependencies)]
            if not ready:
                missing = {m.name: [d for d in m.dependencies if d not in self._modules] for m in pending.values()}
                raise RuntimeError(f"Modules with unmet dependencies: {missing}")
            for module in ready:
                self.register(module)
                loaded.append(pending.pop(module.name))
        return already + loaded

    def unloadModules(self) -> None:
        """Tell every scripted module panel that the application quits (its ``cleanup()`` runs)."""
        for name in reversed(list(self._modules)):
            self.moduleAboutToBeUnloaded.emit(name)


def new_modules_namespace() -> types.SimpleNamespace:
    """``slicer.modules``: one attribute per loaded module, lower-case, as in Slicer."""
    return types.SimpleNamespace()

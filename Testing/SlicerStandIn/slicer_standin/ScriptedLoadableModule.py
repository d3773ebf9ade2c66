"""The base classes of Slicer scripted modules, with the API of Slicer's ``slicer.ScriptedLoadableModule``.

Our modules do ``from slicer.ScriptedLoadableModule import *`` exactly as they do in Slicer; the stand-in
registers this file under that name. It is written from the documented behaviour of Slicer 5.x
(Base/Python/slicer/ScriptedLoadableModule.py): what a module fills in, where icons and resources are
looked up, how self-tests are registered and run, how parameter nodes are found.
"""

from __future__ import annotations

import importlib
import logging
import os
import unittest

import ctk
import qt

import slicer

__all__ = [
    "ScriptedLoadableModule",
    "ScriptedLoadableModuleLogic",
    "ScriptedLoadableModuleTest",
    "ScriptedLoadableModuleWidget",
]


class ScriptedLoadableModule:
    """Module description: ``parent`` is the application's module object whose properties the module fills."""

    def __init__(self, parent):
        super().__init__()
        self.parent = parent
        self.moduleName = self.__class__.__name__
        parent.title = ""
        parent.categories = []
        parent.dependencies = []
        parent.contributors = []
        parent.helpText = ""
        parent.acknowledgementText = ""
        moduleDirectory = os.path.dirname(parent.path)
        for extension in (".svg", ".png"):
            iconPath = os.path.join(moduleDirectory, "Resources", "Icons", self.moduleName + extension)
            if os.path.isfile(iconPath):
                parent.icon = qt.QIcon(iconPath)
                break
        if not hasattr(slicer, "selfTests"):
            slicer.selfTests = {}
        slicer.selfTests[self.moduleName] = self.runTest

    def resourcePath(self, filename: str) -> str:
        return os.path.join(os.path.dirname(self.parent.path), "Resources", filename)

    def runTest(self, msec: int = 100, **kwargs) -> None:
        """Run the module's ``<ModuleName>Test`` test case, as Slicer's self-test runner does."""
        module = importlib.import_module(self.__module__)
        className = self.moduleName + "Test"
        testCaseClass = getattr(module, className, None)
        if testCaseClass is None:
            raise AssertionError(f"Test case class not found: {self.__module__}.{className}")
        testCase = testCaseClass()
        testCase.messageDelay = msec
        testCase.runTest(**kwargs)


class ScriptedLoadableModuleWidget:
    """Module panel. Without a parent it makes a top-level ``qMRMLWidget`` and sets itself up, as Slicer does."""

    def __init__(self, parent=None):
        super().__init__()
        self.moduleName = self.__class__.__name__
        if self.moduleName.endswith("Widget"):
            self.moduleName = self.moduleName[: -len("Widget")]
        self.developerMode = slicer.util.settingsValue("Developer/DeveloperMode", False, converter=slicer.util.toBool)
        if parent:
            self.parent = parent
        else:
            self.parent = slicer.qMRMLWidget()
            self.parent.setLayout(qt.QVBoxLayout())
            self.parent.setMRMLScene(slicer.mrmlScene)
        self.layout = self.parent.layout()
        if not parent:
            self.setup()
            self.parent.show()
        slicer.app.moduleManager().connect("moduleAboutToBeUnloaded(QString)", self._onModuleAboutToBeUnloaded)

    def resourcePath(self, filename: str) -> str:
        return os.path.join(os.path.dirname(slicer.util.modulePath(self.moduleName)), "Resources", filename)

    def _onModuleAboutToBeUnloaded(self, moduleName: str) -> None:
        if moduleName == self.moduleName:
            self.cleanup()
            slicer.app.moduleManager().disconnect("moduleAboutToBeUnloaded(QString)", self._onModuleAboutToBeUnloaded)

    def setupDeveloperSection(self) -> None:
        """In developer mode, add a section that runs the module's self-test (Slicer also offers reload there)."""
        if not self.developerMode:
            return
        section = ctk.ctkCollapsibleButton()
        section.text = "Reload && Test"
        self.layout.addWidget(section)
        sectionLayout = qt.QFormLayout(section)
        self.testButton = qt.QPushButton("Test")
        self.testButton.toolTip = "Run the module's self-test."
        self.testButton.connect("clicked()", self.onTest)
        sectionLayout.addRow(self.testButton)

    def onTest(self, **kwargs) -> None:
        with slicer.util.tryWithErrorDisplay("Test failed."):
            slicer.selfTests[self.moduleName](msec=100, **kwargs)

    def setup(self) -> None:
        self.setupDeveloperSection()

    def enter(self) -> None:
        """Called each time the user opens the module."""

    def exit(self) -> None:
        """Called each time the user opens another module."""

    def cleanup(self) -> None:
        """Called when the application closes (the module is about to be unloaded)."""


class ScriptedLoadableModuleLogic:
    """Module logic: parameter nodes live in ``slicer.mrmlScene`` as ``vtkMRMLScriptedModuleNode``."""

    def __init__(self, parent=None):
        super().__init__()
        self.moduleName = self.__class__.__name__
        if self.moduleName.endswith("Logic"):
            self.moduleName = self.moduleName[: -len("Logic")]
        self.isSingletonParameterNode = True

    def getParameterNode(self):
        if self.isSingletonParameterNode:
            parameterNode = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if parameterNode:
                # Closing the scene may strip the attribute; Slicer restores it here too.
                if parameterNode.GetAttribute("ModuleName") != self.moduleName:
                    parameterNode.SetAttribute("ModuleName", self.moduleName)
                return parameterNode
        else:
            existing = self.getAllParameterNodes()
            if existing:
                return existing[0]
        return slicer.mrmlScene.AddNode(self.createParameterNode())

    def getAllParameterNodes(self) -> list:
        nodes = []
        for index in range(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScriptedModuleNode")):
            node = slicer.mrmlScene.GetNthNodeByClass(index, "vtkMRMLScriptedModuleNode")
            if node.GetAttribute("ModuleName") == self.moduleName:
                nodes.append(node)
        return nodes

    def createParameterNode(self):
        node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)  # the Python variable owns the new object
        if self.isSingletonParameterNode:
            node.SetSingletonTag(self.moduleName)
        node.SetAttribute("ModuleName", self.moduleName)
        node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    """Base of a module's self-test; ``runTest`` is what Slicer's test runner calls."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.enableScreenshots = False
        self.screenshotScaleFactor = 1.0

    def delayDisplay(self, message: str, requestedDelay=None, msec=None) -> None:
        if hasattr(self, "messageDelay"):
            msec = self.messageDelay
        if msec is None:
            msec = requestedDelay if requestedDelay is not None else 100
        slicer.util.delayDisplay(message, msec)

    def takeScreenshot(self, name: str, description: str, type=-1) -> None:
        """Show the description; with screenshots enabled, fail loudly: the stand-in has no views to capture."""
        self.delayDisplay(description)
        if self.enableScreenshots:
            raise RuntimeError(f"Screenshot '{name}' needs Slicer's views, which the stand-in does not have")

    def runTest(self) -> None:
        logging.warning("No test is defined in " + self.__class__.__name__)

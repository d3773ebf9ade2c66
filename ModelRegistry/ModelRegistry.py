import json
import os

import qt

import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

from ModelRegistryLib import load_index, search

#
# ModelRegistry
#


class ModelRegistry(ScriptedLoadableModule):
    """Browse the segmentation models that registry indexes offer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Model Registry"
        self.parent.categories = ["Deep Learning"]
        self.parent.dependencies = []
        self.parent.contributors = ["SlicerDeepLearning developers"]
        self.parent.helpText = (
            "Find deep-learning models in registry indexes: search by name, task, modality or anatomy."
            " Model indexes are JSON documents described by the schema in this module's Resources/Schema folder."
        )
        self.parent.acknowledgementText = (
            "Part of the SlicerDeepLearning extension. Its registry design learns from SlicerMONAIAuto3DSeg,"
            " DeepInfer and the MONAI model zoo."
        )


#
# ModelRegistryWidget
#


class ModelRegistryWidget(ScriptedLoadableModuleWidget):
    """Panel: a search box over the models of the registry and a table of the matches."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.logic = None
        self.ui = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ModelRegistry.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        self.logic = ModelRegistryLogic()
        self.ui.modelTable.setColumnCount(len(ModelRegistryLogic.TABLE_COLUMNS))
        self.ui.modelTable.setHorizontalHeaderLabels(ModelRegistryLogic.TABLE_COLUMNS)
        self.ui.searchBox.connect("textChanged(QString)", self.updateModelTable)
        self.layout.addStretch(1)
        self.updateModelTable()

    def updateModelTable(self, _text=None):
        rows = self.logic.tableRows(self.ui.searchBox.text)
        table = self.ui.modelTable
        table.setRowCount(len(rows))
        for rowIndex, row in enumerate(rows):
            for columnIndex, value in enumerate(row):
                table.setItem(rowIndex, columnIndex, qt.QTableWidgetItem(value))
        self.ui.statusLabel.text = self.logic.statusText(len(rows))


#
# ModelRegistryLogic
#


class ModelRegistryLogic(ScriptedLoadableModuleLogic):
    """Reads registry indexes and answers searches; usable from the Python console without the panel.

    Example (Slicer's Python console)::

        logic = slicer.util.getModuleLogic("ModelRegistry")
        [model.id for model in logic.search("brain MR")]
    """

    TABLE_COLUMNS = ("Title", "ID", "Version", "Modality")

    def __init__(self, indexPaths=None):
        ScriptedLoadableModuleLogic.__init__(self)
        self.indexPaths = list(indexPaths) if indexPaths is not None else [self.bundledIndexPath()]
        self._models = None

    @staticmethod
    def bundledIndexPath():
        return os.path.join(os.path.dirname(__file__), "Resources", "Registry", "bundled-index.json")

    def setIndexPaths(self, indexPaths):
        """Use these index files, in this order; a model id found in several keeps its first entry."""
        self.indexPaths = list(indexPaths)
        self._models = None

    def models(self):
        if self._models is None:
            byId = {}
            for path in self.indexPaths:
                for model in load_index(path):
                    byId.setdefault(model.id, model)
            self._models = list(byId.values())
        return self._models

    def search(self, text=""):
        return search(self.models(), text)

    def tableRows(self, text=""):
        """One row of strings per matching model, in ``TABLE_COLUMNS`` order."""
        return [(model.title, model.id, model.latest.version, model.modality) for model in self.search(text)]

    def statusText(self, matchCount):
        total = len(self.models())
        if total == 0:
            return "No models in the registry indexes."
        return f"{matchCount} of {total} models match."


#
# ModelRegistryTest
#


class ModelRegistryTest(ScriptedLoadableModuleTest):
    """Self-test: runs in Slicer (Developer mode > Test, or headless) and in the test stand-in."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_BundledIndexLoads()
        self.test_SearchFiltersPanelTable()

    def test_BundledIndexLoads(self):
        self.delayDisplay("Loading the bundled registry index")
        logic = ModelRegistryLogic()
        self.assertEqual(len(logic.models()), len(load_index(logic.bundledIndexPath())))

    def test_SearchFiltersPanelTable(self):
        self.delayDisplay("Searching a registry index from the panel")
        indexPath = os.path.join(slicer.app.temporaryPath, "ModelRegistryTest-index.json")
        with open(indexPath, "w", encoding="utf-8") as indexFile:
            json.dump(_twoModelIndex(), indexFile)
        widget = slicer.modules.modelregistry.widgetRepresentation().self()
        widget.logic.setIndexPaths([indexPath])
        widget.ui.searchBox.text = ""
        widget.updateModelTable()
        self.assertEqual(widget.ui.modelTable.rowCount, 2)
        widget.ui.searchBox.text = "brain"
        self.assertEqual(widget.ui.modelTable.rowCount, 1)
        self.assertEqual(widget.ui.modelTable.item(0, 1).text(), "brain-demo")
        self.assertEqual(widget.ui.statusLabel.text, "1 of 2 models match.")
        widget.logic.setIndexPaths([ModelRegistryLogic.bundledIndexPath()])
        widget.ui.searchBox.text = ""
        self.delayDisplay("Test passed")


def _twoModelIndex():
    def version(number):
        return {"version": number, "files": [{"url": "https://example.org/model.zip", "sha256": 64 * "a", "size": 1}]}

    return {
        "schemaVersion": 1,
        "models": [
            {"id": "brain-demo", "title": "Brain tissue", "modality": "MR", "versions": [version("1.0.0")]},
            {"id": "liver-demo", "title": "Liver", "modality": "CT", "versions": [version("0.9.0"), version("1.2.0")]},
        ],
    }

import os
import shutil

import numpy as np
import qt

import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

from TrainingDataExportLib import (
    DEFAULT_CASE_LIST_NAME,
    CaseListError,
    case_list_from_folder,
    read_case_list,
    write_case_list,
)

#
# TrainingDataExport
#


class TrainingDataExport(ScriptedLoadableModule):
    """Annotate cases and export them as clean, leak-free training data."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Training Data Export"
        self.parent.categories = ["Deep Learning"]
        self.parent.dependencies = []
        self.parent.contributors = ["SlicerDeepLearning developers"]
        self.parent.helpText = (
            "Keep the case list of an annotation project: one row per case with its patient, its images (one"
            " column per channel) and its segmentation, saved as a CSV file next to the data. Create it from a"
            " folder of images: files named &lt;case&gt;_seg, &lt;case&gt;_label or &lt;case&gt;.seg.nrrd are"
            " paired to their case as its segmentation."
        )
        self.parent.acknowledgementText = (
            "Part of the SlicerDeepLearning extension. Its export formats follow the nnU-Net v2 and MONAI"
            " dataset conventions."
        )


#
# TrainingDataExportWidget
#


class TrainingDataExportWidget(ScriptedLoadableModuleWidget):
    """Panel: the case list file, a folder to create it from, and the table of cases."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.logic = None
        self.ui = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/TrainingDataExport.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        self.logic = TrainingDataExportLogic()
        self.ui.caseTable.setColumnCount(len(TrainingDataExportLogic.TABLE_COLUMNS))
        self.ui.caseTable.setHorizontalHeaderLabels(TrainingDataExportLogic.TABLE_COLUMNS)
        self.ui.caseListPathLineEdit.connect("currentPathChanged(QString)", self.onCaseListPathChanged)
        self.ui.imageFolderPathLineEdit.connect("currentPathChanged(QString)", self.updateButtonStates)
        self.ui.createFromFolderButton.connect("clicked(bool)", self.onCreateFromFolder)
        self.layout.addStretch(1)
        self.updateCaseTable()
        self.updateButtonStates()

    def updateButtonStates(self, _path=None):
        self.ui.createFromFolderButton.enabled = self.logic.canCreateFromFolder(
            self.ui.imageFolderPathLineEdit.currentPath
        )

    def onCaseListPathChanged(self, path):
        # Errors a user can fix (a malformed CSV, an unreadable file) go to the status line, not to a dialog:
        # the path changes as the user types, and a dialog per keystroke would be unbearable.
        try:
            self.logic.openCaseList(path)
        except (CaseListError, OSError) as error:
            self.updateCaseTable()
            self.ui.statusLabel.text = str(error)
            return
        self.updateCaseTable()

    def onCreateFromFolder(self):
        try:
            self.logic.createCaseListFromFolder(
                self.ui.imageFolderPathLineEdit.currentPath, self.ui.caseListPathLineEdit.currentPath
            )
        except (CaseListError, OSError) as error:
            self.ui.statusLabel.text = str(error)
            return
        # Showing the written file; setting the same path again emits nothing, so the table is updated here.
        self.ui.caseListPathLineEdit.currentPath = self.logic.caseListPath
        self.updateCaseTable()

    def updateCaseTable(self):
        rows = self.logic.tableRows()
        table = self.ui.caseTable
        table.setRowCount(len(rows))
        for rowIndex, row in enumerate(rows):
            for columnIndex, value in enumerate(row):
                table.setItem(rowIndex, columnIndex, qt.QTableWidgetItem(value))
        self.ui.statusLabel.text = self.logic.statusText()


#
# TrainingDataExportLogic
#


class TrainingDataExportLogic(ScriptedLoadableModuleLogic):
    """The project's case list: create it from a folder, load and save it; no Qt here, usable from the console.

    Example (Slicer's Python console)::

        logic = slicer.util.getModuleLogic("TrainingDataExport")
        logic.createCaseListFromFolder("/data/liver", patientPattern=r"^(\\d+)_")  # writes /data/liver/cases.csv
        logic.tableRows()  # [('001_a', '001', 'image', 'annotated'), ...]
        logic.loadCaseList("/data/liver/cases.csv")
    """

    TABLE_COLUMNS = ("Case", "Patient", "Channels", "Segmentation")
    ANNOTATED = "annotated"
    TO_DO = "to do"

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.cases = []
        # The CSV the cases were read from or written to: where saveCaseList writes by default.
        self.caseListPath = ""

    @staticmethod
    def canCreateFromFolder(folder):
        return bool(folder) and os.path.isdir(folder)

    def openCaseList(self, path):
        """Load ``path`` when it is an existing file; otherwise forget the cases and keep ``path`` as the target.

        On a read error the cases are forgotten too, so that nothing stale is shown or saved over the file.
        """
        self.cases = []
        self.caseListPath = ""
        if path and os.path.isfile(path):
            return self.loadCaseList(path)
        self.caseListPath = os.path.abspath(path) if path else ""
        return self.cases

    def loadCaseList(self, path):
        """Read and validate the case list CSV at ``path``; raises ``CaseListError`` naming row and column."""
        self.cases = read_case_list(path)
        self.caseListPath = os.path.abspath(path)
        return self.cases

    def saveCaseList(self, path=None):
        """Write the cases (atomically; the previous version is kept as ``<path>.bak``) to ``path`` or where
        they came from."""
        path = path or self.caseListPath
        if not path:
            raise ValueError("No case list file: give a path to save the cases to.")
        write_case_list(path, self.cases)
        self.caseListPath = os.path.abspath(path)

    def createCaseListFromFolder(
        self, folder, caseListPath="", patientPattern=None, channels=None, segmentationFolder=None, recursive=False
    ):
        """Find the cases of ``folder`` (see ``TrainingDataExportLib.case_list_from_folder``) and write their
        case list to ``caseListPath`` (default: ``cases.csv`` in ``folder``).

        An existing case list is never replaced: it may hold work (patient ids, later annotation states) that
        a folder scan cannot recover. Raises ``FileExistsError`` then, ``CaseListError`` for unplaceable files.
        """
        if not self.canCreateFromFolder(folder):
            # Checked here because an empty path would otherwise mean the current working directory.
            raise NotADirectoryError(f"Image folder does not exist: {folder or '(none chosen)'}")
        caseListPath = os.path.abspath(caseListPath or os.path.join(folder, DEFAULT_CASE_LIST_NAME))
        if os.path.exists(caseListPath):
            raise FileExistsError(
                f"{caseListPath} already exists: load it, or choose a new file name to create a case list."
            )
        cases = case_list_from_folder(
            folder,
            patient_pattern=patientPattern,
            channels=channels,
            segmentation_folder=segmentationFolder,
            recursive=recursive,
        )
        write_case_list(caseListPath, cases)
        self.cases = cases
        self.caseListPath = caseListPath
        return cases

    def tableRows(self):
        """One row of strings per case, in ``TABLE_COLUMNS`` order."""
        return [
            (case.case_id, case.patient_id, ", ".join(case.channels), self.ANNOTATED if case.annotated else self.TO_DO)
            for case in self.cases
        ]

    def statusText(self):
        if not self.caseListPath:
            return "Choose a case list file, or create one from a folder of images."
        if not os.path.isfile(self.caseListPath):
            return f"{os.path.basename(self.caseListPath)} does not exist yet: create it from a folder of images."
        annotated = sum(1 for case in self.cases if case.annotated)
        return f"{len(self.cases)} cases: {annotated} annotated, {len(self.cases) - annotated} to do."


#
# TrainingDataExportTest
#


class TrainingDataExportTest(ScriptedLoadableModuleTest):
    """Self-test: runs in Slicer (Developer mode > Test, or headless) and in the test stand-in."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_CaseListFromFolder()

    def test_CaseListFromFolder(self):
        self.delayDisplay("Writing two synthetic cases, one of them annotated")
        folder = os.path.join(slicer.app.temporaryPath, "TrainingDataExportTest")
        if os.path.isdir(folder):
            shutil.rmtree(folder)
        os.makedirs(folder)
        rng = np.random.default_rng(6)
        for caseId in ("case01", "case02"):
            image = rng.normal(100.0, 20.0, size=(8, 16, 16)).astype(np.int16)
            self._saveVolume(image, os.path.join(folder, caseId + ".nrrd"), "vtkMRMLScalarVolumeNode")
        label = np.zeros((8, 16, 16), dtype=np.uint8)
        label[2:6, 4:12, 4:12] = 1
        self._saveVolume(label, os.path.join(folder, "case01_seg.nrrd"), "vtkMRMLLabelMapVolumeNode")

        self.delayDisplay("Creating the case list from the folder in the panel")
        widget = slicer.modules.trainingdataexport.widgetRepresentation().self()
        caseListPath = os.path.join(folder, "cases.csv")
        widget.ui.caseListPathLineEdit.currentPath = caseListPath
        widget.ui.imageFolderPathLineEdit.currentPath = folder
        self.assertTrue(widget.ui.createFromFolderButton.enabled)
        widget.ui.createFromFolderButton.click()
        table = widget.ui.caseTable
        self.assertEqual(table.rowCount, 2)
        rows = [[table.item(row, column).text() for column in range(table.columnCount)] for row in range(2)]
        self.assertEqual(rows, [["case01", "case01", "image", "annotated"], ["case02", "case02", "image", "to do"]])
        self.assertEqual(widget.ui.statusLabel.text, "2 cases: 1 annotated, 1 to do.")

        self.delayDisplay("Saving and re-reading the case list")
        cases = read_case_list(caseListPath)
        self.assertEqual(cases, widget.logic.cases)
        self.assertEqual(cases[0].segmentation, os.path.join(folder, "case01_seg.nrrd"))
        logic = TrainingDataExportLogic()
        logic.loadCaseList(caseListPath)
        copyPath = os.path.join(folder, "copy.csv")
        logic.saveCaseList(copyPath)
        self.assertEqual(read_case_list(copyPath), cases)
        with open(caseListPath, encoding="utf-8") as original, open(copyPath, encoding="utf-8") as copy:
            self.assertEqual(copy.read(), original.read())  # relative paths: the same text in the same folder

        self.delayDisplay("An existing case list is not replaced")
        widget.ui.createFromFolderButton.click()
        self.assertIn("already exists", widget.ui.statusLabel.text)
        self.assertEqual(table.rowCount, 2)

        # Leave the panel empty; ctkPathLineEdit may not signal an empty path, so the slot is called directly.
        widget.ui.imageFolderPathLineEdit.currentPath = ""
        widget.ui.caseListPathLineEdit.currentPath = ""
        widget.onCaseListPathChanged("")
        self.assertEqual(table.rowCount, 0)
        self.delayDisplay("Test passed")

    def _saveVolume(self, array, path, nodeClassName):
        node = slicer.util.addVolumeFromArray(array, name=os.path.basename(path), nodeClassName=nodeClassName)
        self.assertTrue(slicer.util.saveNode(node, path))
        slicer.mrmlScene.RemoveNode(node)

import copy
import getpass
import importlib.util
import json
import logging
import os
import shutil
import time
import types

import numpy as np
import qt
import vtk

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from ModelRegistry import (
    JobPoller,
    ParameterNodeBinding,
    PathChoiceWatcher,
    addLabelSegment,
    importLabelMap,
    runJob,
    startJob,
    waitForJob,
)
from ModelRegistryLib import JobError
from ModelRegistryLib.files import backup_path, install_file, temporary_path
from ModelRegistryLib.shared_arrays import allocate_array, free_blocks, read_shared_array, share_array
from TrainingDataExportLib import (
    DEFAULT_CASE_LIST_NAME,
    DONE,
    REVIEWED,
    STATUSES,
    CaseListError,
    ExportError,
    ExportSettings,
    LabelSchemaError,
    case_list_from_folder,
    check_case,
    format_duration,
    load_label_schema,
    read_case_list,
    recovery_path,
    recovery_to_offer,
    save_label_schema,
    segmentation_save_path,
    validate_cases,
    write_case_list,
)
from TrainingDataExportLib.card import MARKDOWN_NAME
from TrainingDataExportLib.formats import FORMATS
from TrainingDataExportLib.preannotation import status_after_loading
from TrainingDataExportLib.workflow import is_slicer_segmentation_file

_MODULE_FOLDER = os.path.dirname(os.path.abspath(__file__))
# What a user can fix (a file, a setting, a case list cell), or a worker process that would not start; anything
# else is a bug and should show as one.
USER_ERRORS = (CaseListError, LabelSchemaError, ExportError, JobError, OSError, ValueError)
# Slicer routes the root logger to its log: what a maintainer needs (cases, settings, counts) goes there.
logger = logging.getLogger(__name__)
# Marks the subject hierarchy folder of an augmentation preview (its value: the case id).
AUGMENTATION_FOLDER_ATTRIBUTE = "TrainingDataExport.AugmentationPreview"

#
# TrainingDataExport
#


class TrainingDataExport(ScriptedLoadableModule):
    """Annotate cases and export them as clean, leak-free training data."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Training Data Export")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Deep Learning")]
        # The label schema is the model registry's label format, read with ModelRegistryLib (which also writes every
        # file atomically). DeepSegment depends on this module (case lists, image files), not the other way round.
        self.parent.dependencies = ["ModelRegistry"]
        self.parent.contributors = ["SlicerDeepLearning developers"]
        self.parent.helpText = _(
            "Annotate the cases of a project and export them as training data. The case list (a CSV file next"
            " to the data) holds each case's patient, images, segmentation, status, annotator and time spent;"
            " create it from a folder of images. The label schema (JSON) gives every label's value, name, color"
            " and terminology: new segmentations start from it and every case is checked against it. Load a"
            " case, paint it in the Segment Editor, save (the previous file is kept as .bak; work in progress is"
            " written to a recovery file every minute), and mark it done. Export writes nnU-Net, MONAI, image/label"
            " pairs or 2D slices, split by patient, with a dataset card."
        )
        self.parent.acknowledgementText = _(
            "Part of the SlicerDeepLearning extension. Its export formats follow the nnU-Net v2 and MONAI"
            " dataset conventions."
        )


#
# TrainingDataExportWidget
#


class TrainingDataExportWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Panel: the case list and label schema, the annotation workflow with the Segment Editor, the export.

    The embedded Segment Editor lives as in Slicer's own Segment Editor module (SegmentEditor.py): its
    keyboard shortcuts, which act in the whole main window, are installed in ``enter()`` and removed in
    ``exit()`` together with the active effect and its view observations; closing the scene clears its
    selections.
    """

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.ui = None
        self.segmentEditorWidget = None
        self.exportPoller = None
        self.autosaveTimer = None
        self.parameters = None
        # Questions to the user go through here, so that a self-test can answer them without a modal dialog.
        self.confirm = slicer.util.confirmYesNoDisplay

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/TrainingDataExport.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        self.logic = TrainingDataExportLogic()
        self.ui.caseTable.setColumnCount(len(TrainingDataExportLogic.TABLE_COLUMNS))
        self.ui.caseTable.setHorizontalHeaderLabels(TrainingDataExportLogic.tableColumnTitles())
        self.ui.caseTable.horizontalHeader().setSectionResizeMode(qt.QHeaderView.ResizeToContents)
        self.segmentEditorWidget = self.createSegmentEditor()
        self.ui.annotatorLineEdit.text = self.logic.annotator
        self.ui.exportProgressBar.setRange(0, 1000)
        self.ui.exportProgressBar.visible = False
        # Empty result lines take no room: the panel must fit beside the views.
        _showText(self.ui.annotationStatusLabel, "")
        _showText(self.ui.exportResultLabel, "")

        # Reading a case list closes the loaded case: only once a path is chosen, not at every keystroke.
        self.caseListChoice = PathChoiceWatcher(self.ui.caseListPathLineEdit, self.onCaseListPathChosen)
        self.labelSchemaChoice = PathChoiceWatcher(self.ui.labelSchemaPathLineEdit, self.onLabelSchemaPathChosen)
        # Cheap checks follow every keystroke; an emptied field emits only validInputChanged.
        for pathLineEdit in (self.ui.imageFolderPathLineEdit, self.ui.outputPathLineEdit):
            pathLineEdit.connect("currentPathChanged(QString)", self.updateButtonStates)
            pathLineEdit.connect("validInputChanged(bool)", self.updateButtonStates)
        self.ui.createFromFolderButton.connect("clicked(bool)", self.onCreateFromFolder)
        self.ui.caseTable.connect("itemSelectionChanged()", self.updateButtonStates)
        self.ui.caseTable.connect("cellDoubleClicked(int,int)", self.onCaseDoubleClicked)
        self.ui.caseTable.connect("cellChanged(int,int)", self.onCaseEdited)
        self.ui.annotatorLineEdit.connect("textChanged(QString)", self.onAnnotatorChanged)
        self.ui.loadCaseButton.connect("clicked(bool)", self.onLoadCase)
        self.ui.saveCaseButton.connect("clicked(bool)", self.onSaveCase)
        self.ui.previousCaseButton.connect("clicked(bool)", self.onPreviousCase)
        self.ui.nextCaseButton.connect("clicked(bool)", self.onNextCase)
        self.ui.markDoneButton.connect("clicked(bool)", lambda: self.onMarkStatus(DONE))
        self.ui.markReviewedButton.connect("clicked(bool)", lambda: self.onMarkStatus(REVIEWED))
        self.ui.spacingCheckBox.connect("toggled(bool)", self.updateButtonStates)
        self.ui.cropCheckBox.connect("toggled(bool)", self.updateButtonStates)
        self.ui.formatComboBox.connect("currentIndexChanged(int)", self.updateButtonStates)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneEndImport)

        # Work in progress goes to a recovery file regularly, so a crash loses at most this interval.
        self.autosaveTimer = qt.QTimer()
        self.autosaveTimer.setInterval(int(TrainingDataExportLogic.AUTOSAVE_SECONDS * 1000))
        self.autosaveTimer.connect("timeout()", self.onAutosave)
        self.autosaveTimer.start()
        self.exportPoller = JobPoller(self.showExportProgress, self.onExportFinished)
        self.checkPoller = JobPoller(lambda progress: None, self.onCasesChecked)
        self.setupAugmentationPreview()
        self.layout.addStretch(1)
        self.updateCaseTable()
        self.parameters = ParameterNodeBinding(lambda: self.logic.getParameterNode())
        for name, widget in TrainingDataExportLogic.panelParameters(self.ui):
            self.parameters.bind(name, widget)
        self.parameters.initialize()

    def createSegmentEditor(self):
        """The Segment Editor, made in code as Slicer's Segment Editor module makes it (no designer plug-in
        needed to load the panel), below the annotation buttons."""
        editor = slicer.qMRMLSegmentEditorWidget()
        editor.setMaximumNumberOfUndoStates(10)
        editor.toolTip = _("The Segment Editor, set to the loaded case's segmentation and first image.")
        # The parameter node first, so that the selections the editor makes when it gets the scene are kept.
        editor.setMRMLSegmentEditorNode(self.logic.segmentEditorNode())
        editor.setMRMLScene(slicer.mrmlScene)
        layout = self.ui.annotationCollapsibleButton.layout()
        layout.insertWidget(layout.indexOf(self.ui.annotationStatusLabel), editor)
        return editor

    def enter(self):
        self.parameters.initialize()
        # The editor's keys (1-0 pick an effect, Z/Y undo and redo...) act in the whole main window: only while
        # this module is shown.
        self.segmentEditorWidget.installKeyboardShortcuts()
        self.segmentEditorWidget.setMRMLSegmentEditorNode(self.logic.segmentEditorNode())
        self.segmentEditorWidget.updateWidgetFromMRML()

    def exit(self):
        self.releaseSegmentEditor()

    def releaseSegmentEditor(self):
        """Deactivate the editor's effect and remove its keyboard shortcuts and view observations."""
        self.segmentEditorWidget.setActiveEffect(None)
        self.segmentEditorWidget.uninstallKeyboardShortcuts()
        self.segmentEditorWidget.removeViewObservations()

    def onSceneStartClose(self, caller, event):
        # The loaded case's nodes go with the scene: its unsaved work is kept in the recovery file first.
        self.onAutosave()
        self.segmentEditorWidget.setSegmentationNode(None)
        self.segmentEditorWidget.removeViewObservations()

    def onSceneEndClose(self, caller, event):
        self.logic.closeCase()  # forgets the removed nodes
        _showText(self.ui.annotationStatusLabel, "")
        self.updateCaseTable()
        self.onSceneEndImport(caller, event)

    def onSceneEndImport(self, caller, event):
        if self.parent.isEntered:
            # The parameter node is a singleton: closing the scene reset it, importing one may have replaced it.
            self.segmentEditorWidget.setMRMLSegmentEditorNode(self.logic.segmentEditorNode())
            self.segmentEditorWidget.updateWidgetFromMRML()

    def cleanup(self):
        # Reload calls cleanup() on an entered panel too: its shortcuts must not outlive it.
        self.releaseSegmentEditor()
        self.removeObservers()
        self.parameters.cleanup()
        # The editor's selectors observe the scene: a panel deleted while they still do would be called back.
        self.segmentEditorWidget.setMRMLScene(None)
        self.autosaveTimer.stop()
        self.exportPoller.stop()
        self.augmentationPoller.stop()
        self.checkPoller.stop()

    # -- state of the panel -----------------------------------------------------------------------------

    def selectedIndex(self):
        rows = sorted({index.row() for index in self.ui.caseTable.selectedIndexes()})
        return rows[0] if rows else None

    def updateButtonStates(self, _unused=None):
        ui = self.ui
        self.updateAugmentationPreviewButtons()
        ui.createFromFolderButton.enabled = self.logic.canCreateFromFolder(ui.imageFolderPathLineEdit.currentPath)
        selected = self.selectedIndex()
        current = self.logic.currentIndex if self.logic.caseLoaded() else None
        ui.loadCaseButton.enabled = selected is not None and bool(self.logic.labels)
        ui.saveCaseButton.enabled = current is not None
        ui.previousCaseButton.enabled = current is not None and current > 0
        ui.nextCaseButton.enabled = current is not None and current + 1 < len(self.logic.cases)
        statusTarget = current if current is not None else selected
        ui.markDoneButton.enabled = statusTarget is not None
        ui.markReviewedButton.enabled = statusTarget is not None
        for spinBox in (ui.spacingXSpinBox, ui.spacingYSpinBox, ui.spacingZSpinBox):
            spinBox.enabled = ui.spacingCheckBox.checked
        ui.cropMarginSpinBox.enabled = ui.cropCheckBox.checked
        nnunet = ui.formatComboBox.currentText == "nnunet"
        for widget in (ui.datasetIdSpinBox, ui.datasetNameLineEdit, ui.channelNamesLineEdit):
            widget.enabled = nnunet
        ui.exportButton.enabled = self.exportPoller.busy or (
            bool(self.logic.cases) and bool(self.logic.labels) and bool(ui.outputPathLineEdit.currentPath)
        )

    def updateCaseTable(self):
        """The table as the logic has it; checks not known yet show "checking…" and are made by a job."""
        rows = self.logic.tableRows(wait=False)
        table = self.ui.caseTable
        selected = self.selectedIndex()
        table.setRowCount(len(rows))
        checkColumn = len(TrainingDataExportLogic.TABLE_COLUMNS) - 1
        table.blockSignals(True)
        for rowIndex, row in enumerate(rows):
            for columnIndex, value in enumerate(row):
                item = qt.QTableWidgetItem(value)
                if TrainingDataExportLogic.TABLE_COLUMNS[columnIndex] not in TrainingDataExportLogic.EDITABLE_COLUMNS:
                    item.setFlags(item.flags() & ~qt.Qt.ItemIsEditable)
                if columnIndex == checkColumn:
                    item.setToolTip("\n".join(self.logic.knownCaseProblems(rowIndex) or []))
                table.setItem(rowIndex, columnIndex, item)
        table.blockSignals(False)
        if selected is not None and selected < len(rows):
            table.selectRow(selected)
        self.ui.statusLabel.text = self.logic.statusText()
        self.updateButtonStates()
        if not self.checkPoller.busy:
            task = self.logic.caseCheckTask()
            if task is not None:
                self.checkPoller.follow(task)

    def onCasesChecked(self, task):
        if task.state == "succeeded":
            self.updateCaseTable()  # files changed meanwhile are checked again
        elif task.state == "failed":
            _showText(self.ui.statusLabel, _("The cases could not be checked: {error}").format(error=task.error))

    def onCaseEdited(self, row, column):
        """Patient, status and annotator cells are edited in place (F2 or a click on a selected cell)."""
        try:
            columnName = TrainingDataExportLogic.TABLE_COLUMNS[column]
            self.logic.editCase(row, columnName, self.ui.caseTable.item(row, column).text())
        except (ValueError, CaseListError, OSError) as error:
            self.updateCaseTable()  # puts the refused cell back
            _showText(self.ui.statusLabel, str(error))
            return
        self.updateCaseTable()

    def _showError(self, message, error):
        _showText(self.ui.annotationStatusLabel, f"{message} {error}")
        slicer.util.errorDisplay(f"{message}\n\n{error}")

    # -- cases ----------------------------------------------------------------------------------------------

    def onCaseListPathChosen(self, path):
        """Open the chosen case list (closing the loaded case), or forget the cases for an empty path."""
        if path and os.path.abspath(path) == self.logic.caseListPath:
            return  # typed back to, or written by Create from folder: nothing to close and read again
        # Errors a user can fix (a malformed CSV, an unreadable file) go to the status line, not to a dialog.
        try:
            self.logic.openCaseList(path)
        except (CaseListError, OSError) as error:
            self.updateCaseTable()
            self.ui.statusLabel.text = str(error)
            return
        self.updateCaseTable()

    def onLabelSchemaPathChosen(self, path):
        if path and os.path.abspath(path) == self.logic.labelSchemaPath:
            return
        try:
            self.logic.openLabelSchema(path)
        except (LabelSchemaError, OSError) as error:
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
        # Showing the written file, which is the case list already open: the table is updated here.
        self.ui.caseListPathLineEdit.currentPath = self.logic.caseListPath
        self.updateCaseTable()

    # -- annotation -------------------------------------------------------------------------------------------

    def onAnnotatorChanged(self, text):
        self.logic.annotator = text.strip()

    def onCaseDoubleClicked(self, row, _column):
        self.loadCase(lambda: self.logic.loadCase(row))

    def onLoadCase(self):
        index = self.selectedIndex()
        self.loadCase(lambda: self.logic.loadCase(index))

    def onPreviousCase(self):
        self.loadCase(self.logic.previousCase)

    def onNextCase(self):
        self.loadCase(self.logic.nextCase)

    def loadCase(self, load):
        """Run ``load`` (a Logic call loading a case), offer its recovery file, and show the case for editing."""
        try:
            recovery = load()
            if recovery and self.confirm(
                _("{file} holds work newer than the saved segmentation (autosaved before Slicer stopped or the case"
                  " was left unsaved). Restore it?").format(file=os.path.basename(recovery))
            ):
                self.logic.restoreRecovery()
        except USER_ERRORS as error:
            self._showError(_("Loading the case failed."), error)
            self.updateCaseTable()
            return
        editor = self.segmentEditorWidget
        editor.setMRMLSegmentEditorNode(self.logic.segmentEditorNode())
        editor.setSegmentationNode(self.logic.segmentationNode)
        editor.setSourceVolumeNode(self.logic.volumeNodes[0])
        self.ui.caseTable.selectRow(self.logic.currentIndex)
        _showText(self.ui.annotationStatusLabel, self.logic.annotationStatusText())
        self.updateCaseTable()

    def onSaveCase(self):
        try:
            self.logic.saveCase()
        except USER_ERRORS as error:
            self._showError(_("Saving the case failed."), error)
            return
        _showText(self.ui.annotationStatusLabel, self.logic.annotationStatusText())
        self.updateCaseTable()

    def onMarkStatus(self, status):
        index = self.logic.currentIndex if self.logic.caseLoaded() else self.selectedIndex()
        try:
            self.logic.setStatus(index, status)
        except USER_ERRORS as error:
            self._showError(_("Changing the status failed."), error)
            return
        self.updateCaseTable()

    def onAutosave(self):
        try:
            path = self.logic.autosave()
        except USER_ERRORS as error:
            # Not a dialog: it would pop up every minute while, say, the disk stays full.
            logger.warning("Autosave failed: %s", error)
            _showText(self.ui.annotationStatusLabel, _("Autosave failed: {error}").format(error=error))
            return
        if path:
            _showText(self.ui.annotationStatusLabel,
                      _("Work in progress kept in {file}.").format(file=os.path.basename(path)))

    # -- export --------------------------------------------------------------------------------------------

    def exportSettings(self):
        ui = self.ui
        spacing = None
        if ui.spacingCheckBox.checked:
            spacing = (ui.spacingXSpinBox.value, ui.spacingYSpinBox.value, ui.spacingZSpinBox.value)
        return self.logic.exportSettings(
            ui.formatComboBox.currentText,
            spacing=spacing,
            cropMargin=ui.cropMarginSpinBox.value if ui.cropCheckBox.checked else None,
            compression=ui.compressionSpinBox.value,
            datasetId=ui.datasetIdSpinBox.value,
            datasetName=ui.datasetNameLineEdit.text,
            channelNames=ui.channelNamesLineEdit.text,
        )

    def onExportButton(self):
        if self.exportPoller.busy:
            self.exportPoller.cancel()
            self._showStage(_("Cancelling…"))
            return
        ui = self.ui
        try:
            task = self.logic.exportTask(
                self.exportSettings(),
                ui.outputPathLineEdit.currentPath,
                folds=ui.foldsSpinBox.value,
                testFraction=ui.testFractionSpinBox.value,
                seed=ui.seedSpinBox.value,
            )
        except USER_ERRORS as error:
            _showText(ui.exportResultLabel, str(error))
            return
        self.exportPoller.follow(task)
        ui.exportButton.text = _("Cancel")
        ui.exportProgressBar.value = 0
        ui.exportProgressBar.visible = True
        self._showStage(task.description)
        _showText(ui.exportResultLabel, "")
        self.updateButtonStates()

    def showExportProgress(self, progress):
        self.ui.exportProgressBar.value = int((progress.fraction or 0.0) * 1000)
        self._showStage(_("Cancelling…") if self.exportPoller.task.cancel_requested else progress.text)

    def onExportFinished(self, task):
        self.ui.exportButton.text = _("Export")
        self.ui.exportProgressBar.visible = False
        if task.state == "succeeded":
            self.logic.logExportReport(task.result)
        _showText(self.ui.exportResultLabel, self.logic.exportOutcomeText(task))
        self.updateButtonStates()

    def _showStage(self, text):
        # The stage is written on the progress bar ("%p" is Qt's percentage), so it needs no line of its own.
        self.ui.exportProgressBar.setFormat(text.replace("%", "%%") + " (%p%)")

    # -- augmentation preview ------------------------------------------------------------------------------

    def setupAugmentationPreview(self):
        ui = self.ui
        self.augmentationPoller = JobPoller(self._showAugmentationProgress, self.onAugmentationPreviewFinished)
        _showText(ui.augmentationStatusLabel, "")
        ui.augmentationPreviewButton.connect("clicked(bool)", self.onAugmentationPreview)
        ui.augmentationRemoveButton.connect("clicked(bool)", self.onAugmentationRemove)
        ui.augmentationShowComboBox.connect("currentIndexChanged(int)", self.onAugmentationShow)

    def updateAugmentationPreviewButtons(self):
        ui = self.ui
        previewing = self.augmentationPoller.busy
        previewed = len(self.logic.augmentationPreviewChoices()) > 1 and not previewing
        ui.augmentationPreviewButton.text = _("Cancel") if previewing else _("Preview")
        ui.augmentationPreviewButton.enabled = previewing or self.logic.caseLoaded()
        ui.augmentationRemoveButton.enabled = previewed
        ui.augmentationShowComboBox.enabled = previewed

    def onAugmentationPreview(self):
        """Preview, or cancel the preview being computed (in a worker process: see augmentationPreviewTask)."""
        ui = self.ui
        if self.augmentationPoller.busy:
            self.augmentationPoller.cancel()
            _showText(ui.augmentationStatusLabel, _("Cancelling…"))
            return
        try:
            count, seed = ui.augmentationCountSpinBox.value, ui.augmentationSeedSpinBox.value
            self.augmentationPoller.follow(self.logic.augmentationPreviewTask(count, seed))
        except USER_ERRORS as error:
            _showText(ui.augmentationStatusLabel, _("Preview failed: {error}").format(error=error))
        self.updateAugmentationPreviewButtons()

    def _showAugmentationProgress(self, progress):
        if not self.augmentationPoller.task.cancel_requested:
            _showText(self.ui.augmentationStatusLabel, progress.text)

    def onAugmentationPreviewFinished(self, task):
        if task.state == "succeeded":
            self._fillAugmentationChoices(shown=1)
            return
        _showText(self.ui.augmentationStatusLabel,
                  _("Preview cancelled.") if task.state == "cancelled"
                  else _("Preview failed: {error}").format(error=task.error))
        self.updateAugmentationPreviewButtons()

    def onAugmentationRemove(self):
        self.logic.clearAugmentationPreview()
        self._fillAugmentationChoices(shown=0)

    def onAugmentationShow(self, index):
        if index < 0:
            _showText(self.ui.augmentationStatusLabel, "")
            return
        self.logic.showAugmentationPreview(index)
        _showText(self.ui.augmentationStatusLabel, self.logic.augmentationPreviewDescription(index))

    def _fillAugmentationChoices(self, shown):
        comboBox = self.ui.augmentationShowComboBox
        comboBox.blockSignals(True)
        comboBox.clear()
        comboBox.addItems(self.logic.augmentationPreviewChoices())
        comboBox.currentIndex = shown if comboBox.count else -1
        comboBox.blockSignals(False)
        self.onAugmentationShow(comboBox.currentIndex)
        self.updateAugmentationPreviewButtons()


#
# TrainingDataExportLogic
#


class TrainingDataExportLogic(ScriptedLoadableModuleLogic):
    """The annotation project: case list, label schema, the workflow of one loaded case, and the export.

    No Qt here: everything the panel does can be done from Slicer's Python console.

    Example (Slicer's Python console)::

        logic = slicer.util.getModuleLogic("TrainingDataExport")
        logic.createCaseListFromFolder("/data/liver", patientPattern=r"^(\\d+)_")  # writes /data/liver/cases.csv
        logic.loadLabelSchema("/data/liver/labels.json")
        logic.loadCase(0)          # images + segmentation (or a new one from the schema) in the scene
        # ... paint in the Segment Editor, or: slicer.util.updateSegmentBinaryLabelmapFromArray(...)
        logic.saveCase()           # /data/liver/001_a.seg.nrrd, the case list updated
        logic.setStatus(0, "done")
        from TrainingDataExportLib import ExportSettings
        report = logic.exportDataset(ExportSettings("nnunet"), "/data/liver/nnUNet_raw")
    """

    TABLE_COLUMNS = ("Case", "Patient", "Channels", "Segmentation", "Status", "Annotator", "Time spent", "Check")
    # Table columns a user may edit in the panel, and the case field each one sets.
    EDITABLE_COLUMNS = types.MappingProxyType({"Patient": "patient_id", "Status": "status", "Annotator": "annotator"})
    FORMATS = FORMATS
    AUTOSAVE_SECONDS = 60

    @staticmethod
    def panelParameters(ui):
        """The panel's settings saved with the scene: (parameter name, widget) pairs of its parameter node."""
        return (("caseListPath", ui.caseListPathLineEdit), ("labelSchemaPath", ui.labelSchemaPathLineEdit),
                ("imageFolder", ui.imageFolderPathLineEdit), ("outputFolder", ui.outputPathLineEdit),
                ("exportFormat", ui.formatComboBox), ("resample", ui.spacingCheckBox),
                ("spacingX", ui.spacingXSpinBox), ("spacingY", ui.spacingYSpinBox), ("spacingZ", ui.spacingZSpinBox),
                ("crop", ui.cropCheckBox), ("cropMargin", ui.cropMarginSpinBox), ("compression", ui.compressionSpinBox),
                ("datasetId", ui.datasetIdSpinBox), ("datasetName", ui.datasetNameLineEdit),
                ("channelNames", ui.channelNamesLineEdit), ("folds", ui.foldsSpinBox),
                ("testFraction", ui.testFractionSpinBox), ("seed", ui.seedSpinBox),
                ("augmentationCount", ui.augmentationCountSpinBox), ("augmentationSeed", ui.augmentationSeedSpinBox))

    @staticmethod
    def tableColumnTitles():
        """The case table's column titles, in ``TABLE_COLUMNS`` order, in the user's language."""
        return [_("Case"), _("Patient"), _("Channels"), _("Segmentation"), _("Status"), _("Annotator"),
                _("Time spent"), _("Check")]

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.cases = []
        # The CSV the cases were read from or written to: where saveCaseList writes by default.
        self.caseListPath = ""
        self.labels = ()
        self.labelSchemaPath = ""
        self.annotator = _userName()
        # The loaded case.
        self.currentIndex = None
        self.volumeNodes = []
        self.segmentationNode = None
        self._startTime = 0.0
        self._autosavedStamp = 0
        # case id -> (what the check depends on, problems): reading every segmentation again per table update
        # would make the panel slow on large projects.
        self._checks = {}

    # -- case list ---------------------------------------------------------------------------------------

    @staticmethod
    def canCreateFromFolder(folder):
        return bool(folder) and os.path.isdir(folder)

    def openCaseList(self, path):
        """Load ``path`` when it is an existing file; otherwise forget the cases and keep ``path`` as the target.

        On a read error the cases are forgotten too, so that nothing stale is shown or saved over the file.
        """
        self.closeCase()
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

        An existing case list is never replaced: it may hold work (patient ids, annotation states) that a
        folder scan cannot recover. Raises ``FileExistsError`` then, ``CaseListError`` for unplaceable files.
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
        self.closeCase()
        self.cases = cases
        self.caseListPath = caseListPath
        return cases

    # -- label schema ------------------------------------------------------------------------------------

    def openLabelSchema(self, path):
        """Load the schema at ``path`` when it is an existing file; otherwise forget the labels."""
        self.labels = ()
        self.labelSchemaPath = ""
        self._checks.clear()
        if path and os.path.isfile(path):
            return self.loadLabelSchema(path)
        return self.labels

    def loadLabelSchema(self, path):
        """Read the label schema (JSON, the model registry's label format); raises ``LabelSchemaError``."""
        self.labels = load_label_schema(path)
        self.labelSchemaPath = os.path.abspath(path)
        self._checks.clear()
        return self.labels

    def saveLabelSchema(self, path, labels):
        """Write ``labels`` (``ModelRegistryLib.index.Label``) as the project's schema and use it."""
        save_label_schema(path, labels)
        return self.loadLabelSchema(path)

    # -- table ---------------------------------------------------------------------------------------------

    def _checkKey(self, case):
        """What the check of ``case`` depends on: the schema, its files and their modification times."""
        paths = [*case.images.values(), case.segmentation]
        return (self.labels, tuple((path, _modificationTime(path)) for path in paths))

    def knownCaseProblems(self, index):
        """The problems of case ``index`` if it was checked since its files last changed, else None (never
        reads a file but to look at its time; empty without a schema)."""
        if not self.labels:
            return []
        case = self.cases[index]
        cached = self._checks.get(case.case_id)
        return cached[1] if cached is not None and cached[0] == self._checkKey(case) else None

    def caseProblems(self, index):
        """The problems of case ``index`` against the label schema (empty without a schema); checked here when
        not known (see caseCheckTask)."""
        problems = self.knownCaseProblems(index)
        if problems is None:
            case = self.cases[index]
            problems = check_case(case, self.labels)
            self._checks[case.case_id] = (self._checkKey(case), problems)
        return problems

    def caseCheckTask(self):
        """Start checking the cases whose check is not known (``TrainingDataExportLib.checks.check_cases``) in a
        worker process; returns the running Job, or None when every check is known. When it has succeeded, the
        checks are known (``knownCaseProblems``, ``tableRows(wait=False)``).

        A check reads the whole segmentation: for a large project, minutes that would freeze the GUI.
        """
        stale = [case for index, case in enumerate(self.cases) if self.knownCaseProblems(index) is None]
        if not stale:
            return None
        keys = [self._checkKey(case) for case in stale]
        task = startJob("TrainingDataExportLib.checks:check_cases", {"cases": stale, "labels": tuple(self.labels)},
                        f"Checking {len(stale)} cases", sysPath=[_MODULE_FOLDER])

        def remember(done):
            if done.error is None:
                for case, key, problems in zip(stale, keys, done.result):
                    self._checks[case.case_id] = (key, problems)

        task.when_done(remember)
        return task

    def checkText(self, index, wait=True):
        """The check column of case ``index``: "checking…" when its check is not known and ``wait`` is False."""
        if not self.labels:
            return "no schema"
        problems = self.caseProblems(index) if wait else self.knownCaseProblems(index)
        if problems is None:
            return "checking…"
        if problems:
            return f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
        return "ok" if self.cases[index].annotated else ""

    def tableRows(self, wait=True):
        """One row of strings per case, in ``TABLE_COLUMNS`` order (see checkText for ``wait``)."""
        return [
            (
                case.case_id,
                case.patient_id,
                ", ".join(case.channels),
                os.path.basename(case.segmentation),
                case.status,
                case.annotator,
                format_duration(case.time_spent),
                self.checkText(index, wait),
            )
            for index, case in enumerate(self.cases)
        ]

    def statusText(self):
        if not self.caseListPath:
            return _("Choose a case list file, or create one from a folder of images.")
        if not os.path.isfile(self.caseListPath):
            return f"{os.path.basename(self.caseListPath)} does not exist yet: create it from a folder of images."
        counts = ", ".join(f"{sum(case.status == s for case in self.cases)} {s}" for s in STATUSES)
        text = f"{len(self.cases)} cases: {counts}."
        if not self.labels:
            text += " Choose the label schema to annotate and check the cases."
        return text

    # -- the loaded case -----------------------------------------------------------------------------------

    def caseLoaded(self):
        """Whether a case is loaded and its segmentation still in the scene (a scene close removes it)."""
        node = self.segmentationNode
        return node is not None and node.GetScene() is not None and slicer.mrmlScene.IsNodePresent(node)

    def currentCase(self):
        if not self.caseLoaded():
            raise ValueError("No case is loaded: select a case and load it first.")
        return self.cases[self.currentIndex]

    def loadCase(self, index):
        """Load case ``index``: its image channels and its segmentation; for a case a model pre-annotated and nobody
        has saved yet, its prediction, opened for correction (saving writes the case's own file and leaves the
        prediction as it was); else a new segmentation whose segments come from the label schema, referenced to the
        first channel. A case to do or pre-annotated becomes "in progress".

        Returns the path of a recovery file holding work newer than the saved segmentation ("" when there is
        none): :meth:`restoreRecovery` puts it in place of the loaded segmentation.
        """
        if not self.labels:
            raise ValueError("Choose the label schema first: segmentations are made and checked against it.")
        if index is None or not 0 <= index < len(self.cases):
            raise ValueError(f"There is no case {index!r} in the case list.")
        self.closeCase()
        case = self.cases[index]
        volumeNodes = []
        try:
            for position, (channel, path) in enumerate(case.images.items()):
                properties = {"name": f"{case.case_id} {channel}", "show": position == 0}
                volumeNodes.append(slicer.util.loadVolume(path, properties))
            segmentationNode = self._loadSegmentation(case, volumeNodes[0])
        except Exception:
            for node in volumeNodes:
                slicer.mrmlScene.RemoveNode(node)
            raise
        self.currentIndex = index
        self.volumeNodes = volumeNodes
        self.segmentationNode = segmentationNode
        self._startTime = time.monotonic()
        self._autosavedStamp = self._editStamp()
        status = status_after_loading(case)
        if status != case.status:
            case.status = status
            self.saveCaseList()
        return recovery_to_offer(case)

    def _loadSegmentation(self, case, referenceVolumeNode):
        name = f"{case.case_id} segmentation"
        # A prediction is only the starting point: corrections are saved to the case's own file.
        path = case.segmentation or case.pre_annotation
        if path and is_slicer_segmentation_file(path):
            node = slicer.util.loadSegmentation(path, {"name": name})
        else:
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
            node.CreateDefaultDisplayNodes()
            node.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
            if path:
                try:
                    self._importLabelMap(path, node)
                except Exception:
                    slicer.mrmlScene.RemoveNode(node)
                    raise
        self._addSchemaSegments(node, referenceVolumeNode)
        if not case.segmentation and case.pre_annotation:
            # Slicer's Save dialog must write the case's file, never over the prediction, and list the node as
            # not saved yet (read from the prediction, it would count as saved).
            if node.GetStorageNode() is None:
                node.AddDefaultStorageNode()
            node.GetStorageNode().SetFileName(segmentation_save_path(case))
            node.StorableModified()
        return node

    def _importLabelMap(self, path, segmentationNode):
        """The values of a label-map file as segments, in one import: the schema's name, color and terminology
        where the value is known, ``Label <value>`` where it is not."""
        labelMapNode = slicer.util.loadLabelVolume(path, {"show": False})
        try:
            values = [int(value) for value in np.unique(slicer.util.arrayFromVolume(labelMapNode)) if value]
            if values and values[0] < 0:
                raise ValueError(f"{path} holds the negative value {values[0]}: label values are 1 or more.")
            byValue = {label.value: label for label in self.labels}
            segmentation = segmentationNode.GetSegmentation()
            segmentIds = {
                value: addLabelSegment(segmentationNode, byValue[value]) if value in byValue
                else segmentation.AddEmptySegment("", f"Label {value}")
                for value in values
            }
            importLabelMap(labelMapNode, segmentationNode, segmentIds)
        finally:
            slicer.mrmlScene.RemoveNode(labelMapNode)

    def _addSchemaSegments(self, segmentationNode, referenceVolumeNode):
        """A segment for every schema label the segmentation lacks (by name), so the editor is ready.

        Each new segment starts as an empty label map on the reference volume's grid: a segment left with the
        default empty geometry shares its layer with painted ones, and saving such a layer was seen to shift the
        painted voxels when the spacing is not 1 mm (slicer-core 5.8).
        """
        segmentation = segmentationNode.GetSegmentation()
        count = segmentation.GetNumberOfSegments()
        names = {segmentation.GetNthSegment(i).GetName().strip().casefold() for i in range(count)}
        for label in self.labels:
            if label.name.strip().casefold() not in names:
                segmentId = addLabelSegment(segmentationNode, label)
                empty = np.zeros(slicer.util.arrayFromVolume(referenceVolumeNode).shape, np.uint8)
                slicer.util.updateSegmentBinaryLabelmapFromArray(
                    empty, segmentationNode, segmentId, referenceVolumeNode
                )

    def restoreRecovery(self):
        """Replace the loaded segmentation by the case's recovery file (kept until the next save)."""
        case = self.currentCase()
        path = recovery_path(case)
        node = slicer.util.loadSegmentation(path, {"name": self.segmentationNode.GetName()})
        node.SetReferenceImageGeometryParameterFromVolumeNode(self.volumeNodes[0])
        slicer.mrmlScene.RemoveNode(self.segmentationNode)
        self.segmentationNode = node
        self._addSchemaSegments(node, self.volumeNodes[0])
        # Read from the recovery file, the node would count as saved: Slicer's Save dialog must offer it.
        node.StorableModified()
        self._autosavedStamp = self._editStamp()
        return node

    def segmentEditorNode(self):
        """The Segment Editor parameter node of this module (one per scene)."""
        node = slicer.mrmlScene.GetSingletonNode("TrainingDataExport", "vtkMRMLSegmentEditorNode")
        if node is None:
            node = slicer.vtkMRMLSegmentEditorNode()
            node.SetSingletonTag("TrainingDataExport")
            node = slicer.mrmlScene.AddNode(node)
        return node

    def _editStamp(self):
        """A number that grows whenever the segmentation or one of its segments' voxels changes."""
        segmentation = self.segmentationNode.GetSegmentation()
        stamps = [segmentation.GetMTime()]
        for i in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(i)
            stamps.append(segment.GetMTime())
            representation = segment.GetRepresentation("Binary labelmap")
            if representation is not None:
                stamps.append(representation.GetMTime())
        return max(stamps)

    def hasUnsavedWork(self):
        return self.caseLoaded() and self._editStamp() > self._autosavedStamp

    def _writeSegmentation(self, path, storageNode):
        """Write the segmentation through ``storageNode`` to ``path`` (a new file), removed again on failure."""
        storageNode.SetFileName(path)
        try:
            if not storageNode.WriteData(self.segmentationNode):
                raise OSError(f"Could not write the segmentation to {path}")
        except BaseException:
            if os.path.exists(path):
                os.remove(path)
            raise

    def saveCase(self):
        """Save the loaded case's segmentation (see ``TrainingDataExportLib.segmentation_save_path``) atomically,
        the previous file kept as ``<name>.bak``; record annotator and time spent in the case list (written
        atomically too). Returns the segmentation's path."""
        case = self.currentCase()
        path = segmentation_save_path(case)
        temporary = temporary_path(path)
        # Through the node's own storage node: Slicer then counts the segmentation as saved (its Save dialog
        # and exit prompt compare the node's changes with that storage node's last write, GetModifiedSinceRead).
        if self.segmentationNode.GetStorageNode() is None:
            self.segmentationNode.AddDefaultStorageNode()
        storageNode = self.segmentationNode.GetStorageNode()
        previous = storageNode.GetFileName()
        try:
            self._writeSegmentation(temporary, storageNode)
            install_file(temporary, path, keep_backup=True)
        except BaseException:
            storageNode.SetFileName(previous)
            self.segmentationNode.StorableModified()  # not saved after all
            raise
        storageNode.SetFileName(path)
        now = time.monotonic()
        case.time_spent += round(now - self._startTime)
        self._startTime = now
        case.segmentation = path
        case.annotator = self.annotator
        self.saveCaseList()
        # The saved file now holds everything: a recovery file would only be offered by mistake later.
        recovery = recovery_path(case)
        if os.path.exists(recovery):
            os.remove(recovery)
        self._autosavedStamp = self._editStamp()
        return path

    def autosave(self):
        """Write the loaded case's work to its recovery file when it changed since the last save or autosave.

        Returns the recovery file's path, or "" when there was nothing to write.
        """
        if not self.hasUnsavedWork():
            return ""
        path = recovery_path(self.currentCase())
        temporary = temporary_path(path)
        # Through a storage node of its own, not the node's: the segmentation keeps its file and still counts as
        # unsaved in Slicer's Save dialog and exit prompt, since the recovery file is not the case's file.
        self._writeSegmentation(temporary, slicer.vtkMRMLSegmentationStorageNode())
        install_file(temporary, path, keep_backup=False)
        self._autosavedStamp = self._editStamp()
        return path

    def closeCase(self):
        """Keep unsaved work in the recovery file, and remove the loaded case's nodes from the scene."""
        if self.caseLoaded():
            self.autosave()
        for node in [*self.volumeNodes, self.segmentationNode]:
            if node is not None and node.GetScene() is not None:
                node.GetScene().RemoveNode(node)
        self.currentIndex = None
        self.volumeNodes = []
        self.segmentationNode = None

    def nextCase(self):
        """Load the case after the loaded one (see :meth:`loadCase`)."""
        return self._loadAdjacentCase(+1)

    def previousCase(self):
        """Load the case before the loaded one (see :meth:`loadCase`)."""
        return self._loadAdjacentCase(-1)

    def _loadAdjacentCase(self, step):
        self.currentCase()
        index = self.currentIndex + step
        if not 0 <= index < len(self.cases):
            raise ValueError("There is no " + ("next" if step > 0 else "previous") + " case.")
        return self.loadCase(index)

    def editCase(self, index, column, value):
        """Change one cell of the case table (a column of ``EDITABLE_COLUMNS``) and save the case list.

        The edited list is checked as a whole first (an empty or duplicate-making value is refused with
        the reason), so the file on disk never holds an invalid case list.
        """
        if column not in self.EDITABLE_COLUMNS:
            raise ValueError(f"The {column} column cannot be edited here.")
        if index is None or not 0 <= index < len(self.cases):
            raise ValueError(f"There is no case {index!r} in the case list.")
        value = value.strip()
        if column == "Status" and value not in STATUSES:
            raise ValueError(f"{value!r} is not a status: use one of {', '.join(STATUSES)}.")
        edited = copy.deepcopy(self.cases)
        setattr(edited[index], self.EDITABLE_COLUMNS[column], value)
        validate_cases(edited)
        self.cases = edited
        self.saveCaseList()

    def setStatus(self, index, status):
        """Set the status of case ``index`` ("to do", "in progress", "done", "reviewed") and save the case list."""
        if status not in STATUSES:
            raise ValueError(f"{status!r} is not a status: use one of {', '.join(STATUSES)}.")
        if index is None or not 0 <= index < len(self.cases):
            raise ValueError(f"There is no case {index!r} in the case list.")
        self.cases[index].status = status
        self.saveCaseList()

    def annotationStatusText(self):
        if not self.caseLoaded():
            return _("No case loaded.")
        case = self.currentCase()
        saved = os.path.basename(case.segmentation) if case.segmentation else _("not saved yet")
        return _("Case {case} ({number} of {count}): {status}, {saved}.").format(
            case=case.case_id, number=self.currentIndex + 1, count=len(self.cases), status=case.status, saved=saved)

    # -- export --------------------------------------------------------------------------------------------

    @staticmethod
    def exportSettings(format, spacing=None, cropMargin=None, compression=1, datasetId=0, datasetName="",
                       channelNames=""):
        """The ``ExportSettings`` of the panel's fields: ``datasetId`` 0 and an empty ``datasetName`` mean "from an
        output folder named DatasetNNN_Name, else the default"; ``channelNames`` is comma-separated (nnU-Net's
        names: CT, noNorm, zscore...), empty for the case list's channel names. Raises ``ValueError`` for
        settings an export would refuse.

        >>> TrainingDataExportLogic.exportSettings("nnunet", datasetId=7, datasetName="Liver", channelNames="CT, T2")
        ExportSettings(format='nnunet', ..., dataset_id=7, dataset_name='Liver', channel_names=('CT', 'T2'))
        """
        settings = ExportSettings(
            format=format,
            spacing=tuple(spacing) if spacing else None,
            crop_margin_mm=cropMargin,
            compression_level=compression,
            dataset_id=datasetId or None,
            dataset_name=datasetName.strip() or None,
            channel_names=tuple(name.strip() for name in channelNames.split(",") if name.strip()),
        )
        problems = settings.problems()
        if problems:
            raise ValueError("; ".join(problems))
        return settings

    def exportTask(self, settings, outputDir, folds=5, testFraction=0.2, seed=0, workers=0):
        """Start exporting the cases with the schema (``TrainingDataExportLib.export_dataset``) to ``outputDir``
        in a worker process; returns the running Job (``progress``, ``cancel()``, ``state``, ``result``: the
        ``ExportReport``).

        The export reads, resamples and compresses every case: in a worker process of Slicer's Python it runs
        at full speed while the GUI stays responsive (a thread of Slicer's process would crawl while the GUI
        idles, as the GUI keeps Python's GIL then). The cases and schema are sent as they are now, so what the
        panel changes meanwhile does not reach the running export. ``settings`` is an ``ExportSettings``.
        """
        if not self.labels:
            raise ValueError(_("Choose the label schema first: the export writes its label values."))
        if not outputDir:
            raise ValueError(_("Choose an output folder for the export."))
        arguments = {
            "cases": list(self.cases), "labels": tuple(self.labels), "output_dir": os.path.abspath(outputDir),
            "settings": settings, "folds": folds, "test_fraction": testFraction, "seed": seed, "workers": workers,
        }
        logger.info("Exporting %d cases (case list %s, %d labels from %s) to %s: %s, folds %d, test fraction %s,"
                    " seed %d, workers %d", len(self.cases), self.caseListPath or "(not saved)", len(self.labels),
                    self.labelSchemaPath or "(not saved)", arguments["output_dir"], settings, folds, testFraction,
                    seed, workers)
        return startJob("TrainingDataExportLib:export_dataset", arguments,
                        _("Exporting {count} cases as {format}").format(count=len(self.cases), format=settings.format),
                        sysPath=[_MODULE_FOLDER])

    def exportDataset(self, settings, outputDir, progress=None, cancel=None, folds=5, testFraction=0.2, seed=0,
                      workers=0):
        """Export as ``exportTask`` does and wait (keeping the GUI responsive); returns the ``ExportReport``.

        ``progress(fraction, message)`` is called as the export goes on; setting ``cancel`` (a
        ``threading.Event``) cancels it. Raises ModelRegistryLib's ``JobError`` saying why the export failed
        (every offending case is listed before anything is written) or ``JobCancelledError``.
        """
        report = _outcomeReporting(self.exportTask(settings, outputDir, folds, testFraction, seed, workers),
                                   progress, cancel)
        self.logExportReport(report)
        return report

    @staticmethod
    def logExportReport(report):
        """Say in Slicer's log what an export wrote (an ``ExportReport``)."""
        logger.info("Export to %s: %d cases written, %d unchanged, %d skipped; dataset card %s", report.output_dir,
                    len(report.written), len(report.unchanged), len(report.skipped), _cardPath(report) or "(none)")

    @staticmethod
    def exportOutcomeText(task):
        if task.state == "cancelled":
            return _("Export cancelled: the files written are complete; export again to finish.")
        if task.state == "failed":
            return _("Export failed: {error}").format(error=task.error)
        report = task.result
        cardPath = _cardPath(report)
        root = os.path.dirname(cardPath) or report.output_dir
        return _("Exported {count} case(s) ({written} written, {unchanged} unchanged, {skipped} skipped) to {folder}."
                 " Dataset card: {card}").format(count=len(report.written) + len(report.unchanged),
                                                 written=len(report.written), unchanged=len(report.unchanged),
                                                 skipped=len(report.skipped), folder=root, card=cardPath)

    # -- augmentation preview ------------------------------------------------------------------------------

    # The preview of the loaded case: (volume node, segmentation node, description) per variant, and the subject
    # hierarchy folder holding them (class-level defaults: none until a preview is made).
    augmentationPreview = ()
    _augmentationFolder = 0

    @staticmethod
    def augmentationAvailable():
        """Whether PyTorch, which the augmentation engine runs on, can be imported."""
        return importlib.util.find_spec("torch") is not None

    def previewAugmentation(self, count=4, seed=0, settings=None, progress=None, cancel=None):
        """Add ``count`` augmented variants of the loaded case to the scene and show the first.

        Each variant is the case's first image and its segmentation (its segments as a label map; where segments
        overlap, the later one wins) through ``TrainingDataExportLib.augmentation`` with ``settings`` (an
        ``AugmentationSettings``; the defaults when None): a volume on the case's grid, with the case's window and
        level so that intensity changes show, and a segmentation with the case's segment names, colors and
        terminology, in a subject hierarchy folder "<case> augmentation preview". Rotations are about the
        patient's axes. The same ``seed`` gives the same variants. A previous preview is replaced.
        ``progress(fraction, message)`` is called as it goes on; setting ``cancel`` (a ``threading.Event``)
        cancels it. The variants are computed as ``augmentationPreviewTask`` does, in a worker process; this
        waits for them, keeping Slicer responsive.

        Returns [(volume node, segmentation node)] per variant.

        Example (Slicer's Python console)::

            logic = slicer.util.getModuleLogic("TrainingDataExport")
            logic.loadCase(0)
            from TrainingDataExportLib.augmentation import AugmentationSettings
            logic.previewAugmentation(4, seed=1, settings=AugmentationSettings(flip_probability=(0.5, 0, 0)))
            logic.showAugmentationPreview(2)     # 0 is the case itself
            logic.clearAugmentationPreview()
        """
        return _outcomeReporting(self.augmentationPreviewTask(count, seed, settings), progress, cancel)

    def augmentationPreviewTask(self, count=4, seed=0, settings=None):
        """Start computing the augmentation preview of the loaded case (see ``previewAugmentation``) in a worker
        process; returns the running Job (``progress``, ``cancel()``, ``state``). When it succeeds, the variants
        are added to the scene, here on the main thread, and its ``result`` is [(volume node, segmentation node)].

        The augmentation computes on PyTorch for seconds: in a worker process of Slicer's Python it runs at full
        speed while the GUI stays responsive (a thread here would crawl, as the GUI keeps Python's GIL while it
        idles), and PyTorch is not imported into Slicer. The case's arrays go to the worker, and the variants
        come back, through shared memory that this side creates and always frees (ModelRegistryLib.shared_arrays).
        If the case is closed or changed meanwhile, the job fails and the scene is left as it is.
        """
        if not self.augmentationAvailable():
            raise ValueError(_(
                "The augmentation preview needs PyTorch: Deep Segment installs it when it first runs a model, or"
                " install Slicer's PyTorch extension."
            ))
        if not self.caseLoaded():
            raise ValueError(_("Load a case first: the preview augments the loaded case."))
        case, reference, segmentationNode = self.currentCase(), self.volumeNodes[0], self.segmentationNode
        segmentation = segmentationNode.GetSegmentation()
        segmentIds = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
        image = slicer.util.arrayFromVolume(reference)
        labels = np.zeros(image.shape, np.uint8 if len(segmentIds) < 256 else np.uint16)
        for value, segmentId in enumerate(segmentIds, 1):
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, reference)
            labels[mask > 0] = value
        directions = vtk.vtkMatrix4x4()
        reference.GetIJKToRASDirectionMatrix(directions)
        blocks = []  # the shared memory segments made here, freed here when the job ends

        def shared(made):
            blocks.append(made[0])
            return made[1]

        try:
            arguments = {
                "image": shared(share_array(image[None])), "labels": shared(share_array(labels)),
                "variants": [(shared(allocate_array((1, *image.shape), np.float32)),
                              shared(allocate_array(labels.shape, labels.dtype))) for _copy in range(count)],
                "spacing": tuple(reference.GetSpacing()), "seed": seed, "settings": settings,
                "direction": tuple(directions.GetElement(row, column) for row in range(3) for column in range(3)),
            }
            task = startJob("TrainingDataExportLib.augmentation:write_preview_variants", arguments,
                            f"Augmentation preview of {case.case_id}", sysPath=[_MODULE_FOLDER])
        except BaseException:
            free_blocks(blocks)
            raise

        def addVariants(done):
            try:
                if done.error is not None:
                    return
                if not (self.caseLoaded() and self.volumeNodes[0] is reference
                        and self.segmentationNode is segmentationNode
                        and all(segmentation.GetSegment(segmentId) for segmentId in segmentIds)):
                    raise ValueError("the case changed while its variants were computed; preview again")
                done.result = self._addAugmentationPreview(case, reference, segmentationNode, segmentIds, [
                    (read_shared_array(variantImage), read_shared_array(variantLabels), description)
                    for (variantImage, variantLabels), description in zip(arguments["variants"], done.result)])
            finally:
                free_blocks(blocks)

        task.when_done(addVariants)
        return task

    def _addAugmentationPreview(self, case, reference, segmentationNode, segmentIds, variants):
        """The preview's nodes from the variants' arrays ((image, labels, description) each); see
        previewAugmentation."""
        segmentation = segmentationNode.GetSegmentation()
        self.clearAugmentationPreview()
        hierarchy = slicer.mrmlScene.GetSubjectHierarchyNode()
        folder = hierarchy.CreateFolderItem(hierarchy.GetSceneItemID(), f"{case.case_id} augmentation preview")
        hierarchy.SetItemAttribute(folder, AUGMENTATION_FOLDER_ATTRIBUTE, case.case_id)
        preview = []
        for number, (image, labels, description) in enumerate(variants, 1):
            name = f"{case.case_id} augmented {number}"
            volumeNode = slicer.util.addVolumeFromArray(image[0], name=name)
            volumeNode.CopyOrientation(reference)
            volumeNode.SetAttribute("TrainingDataExport.Augmentation", description)
            display, referenceDisplay = volumeNode.GetDisplayNode(), reference.GetDisplayNode()
            if display is not None and referenceDisplay is not None:
                display.SetAutoWindowLevel(False)
                display.SetWindowLevel(referenceDisplay.GetWindow(), referenceDisplay.GetLevel())
            variantNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{name} segmentation")
            variantNode.CreateDefaultDisplayNodes()
            variantNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
            copiedIds = {value: _copySegmentDescription(segmentation.GetSegment(segmentId), variantNode)
                         for value, segmentId in enumerate(segmentIds, 1)}
            labelMapNode = slicer.util.addVolumeFromArray(
                labels, name=f"{name} labels", nodeClassName="vtkMRMLLabelMapVolumeNode"
            )
            labelMapNode.CopyOrientation(volumeNode)
            try:
                importLabelMap(labelMapNode, variantNode, copiedIds)
            finally:
                slicer.mrmlScene.RemoveNode(labelMapNode)
            for node in (volumeNode, variantNode):
                item = hierarchy.GetItemByDataNode(node)
                if item:
                    hierarchy.SetItemParent(item, folder)
                else:  # no subject hierarchy plugin made an item for the node (outside the application)
                    hierarchy.CreateItem(folder, node)
            preview.append((volumeNode, variantNode, description))
        self.augmentationPreview = tuple(preview)
        self._augmentationFolder = folder
        self.showAugmentationPreview(1 if preview else 0)
        return [(volumeNode, variantNode) for volumeNode, variantNode, _description in preview]

    def _augmentationPreviewNodes(self):
        """(volume, segmentation) of the case, then of each variant still in the scene."""
        nodes = [(volumeNode, segmentationNode) for volumeNode, segmentationNode, _text in self.augmentationPreview
                 if volumeNode.GetScene() is not None and segmentationNode.GetScene() is not None]
        return ([(self.volumeNodes[0], self.segmentationNode)] if self.caseLoaded() else []) + nodes

    def augmentationPreviewChoices(self):
        """What :meth:`showAugmentationPreview` can show, by index: the case, then each variant (empty without a
        preview)."""
        nodes = self._augmentationPreviewNodes()
        if not self.caseLoaded() or len(nodes) < 2:
            return []
        return [_("Loaded case")] + [_("Variant {number}").format(number=number) for number in range(1, len(nodes))]

    def augmentationPreviewDescription(self, index):
        """What was done to variant ``index`` (0: the case itself)."""
        if index == 0:
            return _("The loaded case, as annotated.")
        return _("Variant {number}: {description}.").format(number=index,
                                                            description=self.augmentationPreview[index - 1][2])

    def showAugmentationPreview(self, index):
        """Show the case (``index`` 0) or variant ``index`` in the slice views, with its segmentation alone."""
        nodes = self._augmentationPreviewNodes()
        if not 0 <= index < len(nodes):
            raise ValueError(f"There is no variant {index} to show.")
        slicer.util.setSliceViewerLayers(background=nodes[index][0])
        for position, (_volumeNode, segmentationNode) in enumerate(nodes):
            display = segmentationNode.GetDisplayNode()
            if display is not None:
                display.SetVisibility(position == index)

    def clearAugmentationPreview(self):
        """Remove the preview's nodes and folder; the case is shown again."""
        hierarchy = slicer.mrmlScene.GetSubjectHierarchyNode()
        for volumeNode, segmentationNode, _description in self.augmentationPreview:
            for node in (volumeNode, segmentationNode):
                if node.GetScene() is not None:
                    node.GetScene().RemoveNode(node)
        # Only our folder: after a scene close its item id may name another item, or none.
        items = vtk.vtkIdList()
        hierarchy.GetItemChildren(hierarchy.GetSceneItemID(), items, True)
        folder = self._augmentationFolder
        if folder and items.IsId(folder) >= 0 and hierarchy.GetItemAttribute(folder, AUGMENTATION_FOLDER_ATTRIBUTE):
            hierarchy.RemoveItem(folder)
        self.augmentationPreview = ()
        self._augmentationFolder = 0
        if self.caseLoaded():
            self.showAugmentationPreview(0)


def _outcomeReporting(task, progress=None, cancel=None):
    """Wait for ``task`` (keeping Slicer responsive), calling ``progress(fraction, message)`` as it goes on and
    cancelling it once ``cancel`` (a ``threading.Event``) is set; its result, or its ``JobError`` raised."""
    reported = [None]

    def follow():
        if progress is not None and task.progress is not None and task.progress != reported[0]:
            reported[0] = task.progress
            progress(task.progress.fraction, task.progress.text)
        if cancel is not None and cancel.is_set():
            task.cancel()

    while not waitForJob(task, 0.1):
        follow()
    follow()
    return runJob(task)  # its log records to Slicer's log, then its result or error


def _showText(label, text):
    label.text = text
    label.visible = bool(text)


def _cardPath(report):
    """The dataset card of an export: in nnU-Net's dataset folder, else in the output folder."""
    for root, _folders, files in os.walk(report.output_dir):
        if MARKDOWN_NAME in files:
            return os.path.join(root, MARKDOWN_NAME)
    return ""


def _userName():
    try:
        return getpass.getuser()
    except (KeyError, OSError, ImportError):  # no user name in the environment or the password database
        return ""


def segmentTerminologyEntry(segment):
    """The serialized terminology of a segment (the TerminologyEntry tag)."""
    if hasattr(segment, "GetTerminology"):
        return segment.GetTerminology()
    entry = vtk.reference("")
    segment.GetTag("TerminologyEntry", entry)
    return str(entry)


def _copySegmentDescription(segment, segmentationNode):
    """An empty segment in ``segmentationNode`` with ``segment``'s name, color and terminology; returns its id."""
    segmentation = segmentationNode.GetSegmentation()
    segmentId = segmentation.AddEmptySegment("", segment.GetName(), segment.GetColor())
    entry = segmentTerminologyEntry(segment)
    if entry:
        copied = segmentation.GetSegment(segmentId)
        if hasattr(copied, "SetTerminology"):
            copied.SetTerminology(entry)
        else:
            copied.SetTag("TerminologyEntry", entry)
    return segmentId


def _modificationTime(path):
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


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
        self.setUp()
        self.test_AnnotateAndExport()

    def _freshFolder(self, name):
        folder = os.path.join(slicer.app.temporaryPath, name)
        if os.path.isdir(folder):
            shutil.rmtree(folder)
        os.makedirs(folder)
        return folder

    def _writeCases(self, folder, labelled):
        """Two seeded synthetic cases; ``labelled``: case01 gets a label-map segmentation."""
        rng = np.random.default_rng(6)
        for caseId in ("case01", "case02"):
            image = rng.normal(100.0, 20.0, size=(8, 16, 16)).astype(np.int16)
            self._saveVolume(image, os.path.join(folder, caseId + ".nrrd"), "vtkMRMLScalarVolumeNode")
        if labelled:
            label = np.zeros((8, 16, 16), dtype=np.uint8)
            label[2:6, 4:12, 4:12] = 1
            self._saveVolume(label, os.path.join(folder, "case01_seg.nrrd"), "vtkMRMLLabelMapVolumeNode")

    def _panel(self):
        widget = slicer.modules.trainingdataexport.widgetRepresentation().self()
        self._resetPanel(widget)
        return widget

    @staticmethod
    def _resetPanel(widget):
        """The panel as a user first sees it (handlers called too: a field already empty signals nothing)."""
        widget.logic.closeCase()
        for pathLineEdit in (
            widget.ui.caseListPathLineEdit,
            widget.ui.imageFolderPathLineEdit,
            widget.ui.labelSchemaPathLineEdit,
            widget.ui.outputPathLineEdit,
        ):
            pathLineEdit.currentPath = ""
        widget.onCaseListPathChosen("")
        widget.onLabelSchemaPathChosen("")
        _showText(widget.ui.annotationStatusLabel, "")
        _showText(widget.ui.exportResultLabel, "")
        widget.updateButtonStates()

    def test_CaseListFromFolder(self):
        self.delayDisplay("Writing two synthetic cases, one of them annotated")
        folder = self._freshFolder("TrainingDataExportTest")
        self._writeCases(folder, labelled=True)

        self.delayDisplay("Creating the case list from the folder in the panel")
        widget = self._panel()
        caseListPath = os.path.join(folder, "cases.csv")
        widget.ui.caseListPathLineEdit.currentPath = caseListPath
        widget.ui.imageFolderPathLineEdit.currentPath = folder
        self.assertTrue(widget.ui.createFromFolderButton.enabled)
        widget.ui.createFromFolderButton.click()
        table = widget.ui.caseTable
        self.assertEqual(table.rowCount, 2)
        rows = [[table.item(row, column).text() for column in range(table.columnCount)] for row in range(2)]
        self.assertEqual(
            rows,
            [
                ["case01", "case01", "image", "case01_seg.nrrd", "in progress", "", "0:00:00", "no schema"],
                ["case02", "case02", "image", "", "to do", "", "0:00:00", "no schema"],
            ],
        )
        self.assertTrue(widget.ui.statusLabel.text.startswith(
            "2 cases: 1 to do, 0 pre-annotated, 1 in progress, 0 done, 0 reviewed."), widget.ui.statusLabel.text)

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

        self._resetPanel(widget)
        self.assertEqual(table.rowCount, 0)
        self.delayDisplay("Test passed")

    def test_AnnotateAndExport(self):
        self.delayDisplay("Writing two synthetic cases and a label schema")
        folder = self._freshFolder("TrainingDataExportWorkflowTest")
        self._writeCases(folder, labelled=False)
        schemaPath = os.path.join(folder, "labels.json")
        liver = {
            "category": {"scheme": "SCT", "code": "123037004", "meaning": "Anatomical Structure"},
            "type": {"scheme": "SCT", "code": "10200004", "meaning": "Liver"},
        }
        schema = {
            "labels": [
                {"value": 1, "name": "Liver", "color": "#dd8259", "terminology": liver},
                {"value": 2, "name": "Tumor", "color": "#90d5ff"},
            ]
        }
        with open(schemaPath, "w", encoding="utf-8") as file:
            json.dump(schema, file)
        widget = self._panel()
        logic = widget.logic
        widget.ui.caseListPathLineEdit.currentPath = os.path.join(folder, "cases.csv")
        widget.ui.imageFolderPathLineEdit.currentPath = folder
        widget.ui.createFromFolderButton.click()
        widget.ui.labelSchemaPathLineEdit.currentPath = schemaPath
        self.assertEqual([label.name for label in logic.labels], ["Liver", "Tumor"])
        widget.ui.annotatorLineEdit.text = "selftest"

        self.delayDisplay("Loading case01 through the panel: a new segmentation from the schema")
        widget.ui.caseTable.selectRow(0)
        self.assertTrue(widget.ui.loadCaseButton.enabled)
        widget.ui.loadCaseButton.click()
        self.assertEqual(logic.currentIndex, 0)
        self.assertEqual(logic.cases[0].status, "in progress")
        segmentationNode = logic.segmentationNode
        editor = widget.segmentEditorWidget
        self.assertIs(editor.mrmlSegmentEditorNode(), logic.segmentEditorNode())
        self.assertIs(editor.segmentationNode(), segmentationNode)
        self.assertIs(editor.sourceVolumeNode(), logic.volumeNodes[0])
        segmentation = segmentationNode.GetSegmentation()
        self.assertEqual(
            [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())],
            ["Liver", "Tumor"],
        )
        liverId = segmentation.GetSegmentIdBySegmentName("Liver")
        self.assertIn("SCT^10200004^Liver", segmentTerminologyEntry(segmentation.GetSegment(liverId)))

        self.delayDisplay("Painting through the segmentation API; autosave writes the recovery file")
        self.assertEqual(logic.autosave(), "")  # nothing painted yet
        painted = np.zeros((8, 16, 16), dtype=np.uint8)
        painted[2:6, 4:12, 4:12] = 1
        slicer.util.updateSegmentBinaryLabelmapFromArray(painted, segmentationNode, liverId, logic.volumeNodes[0])
        widget.onAutosave()
        recovery = os.path.join(folder, "case01.recovery.seg.nrrd")
        self.assertTrue(os.path.isfile(recovery))
        self.assertIn("recovery", widget.ui.annotationStatusLabel.text)
        # The recovery file is not the case's file: Slicer's Save dialog must still offer the segmentation.
        self.assertTrue(segmentationNode.GetModifiedSinceRead())

        self.delayDisplay("Reloading offers the recovery file; the answer restores it")
        questions = []
        widget.confirm = lambda question: questions.append(question) or True  # no modal dialog in a self-test
        try:
            widget.ui.loadCaseButton.click()
        finally:
            widget.confirm = slicer.util.confirmYesNoDisplay
        self.assertEqual(len(questions), 1)
        self.assertIn("case01.recovery.seg.nrrd", questions[0])
        segmentationNode = logic.segmentationNode
        self.assertTrue(segmentationNode.GetModifiedSinceRead())
        liverId = segmentationNode.GetSegmentation().GetSegmentIdBySegmentName("Liver")
        restored = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, liverId, logic.volumeNodes[0])
        np.testing.assert_array_equal(restored, painted)

        self.delayDisplay("Saving twice: the first version is kept as a backup")
        widget.ui.saveCaseButton.click()
        savedPath = os.path.join(folder, "case01.seg.nrrd")
        self.assertTrue(os.path.isfile(savedPath))
        self.assertFalse(os.path.exists(recovery))
        self.assertFalse(segmentationNode.GetModifiedSinceRead())
        self.assertEqual(segmentationNode.GetStorageNode().GetFileName(), savedPath)
        self.assertFalse(os.path.exists(backup_path(savedPath)))
        with open(savedPath, "rb") as file:
            firstVersion = file.read()
        # As the Segment Editor paints by default: the tumor overwrites the liver where they meet.
        painted[3, 6:9, 6:9] = 2
        for name, value in (("Liver", 1), ("Tumor", 2)):
            segmentId = segmentationNode.GetSegmentation().GetSegmentIdBySegmentName(name)
            slicer.util.updateSegmentBinaryLabelmapFromArray(
                (painted == value).astype(np.uint8), segmentationNode, segmentId, logic.volumeNodes[0]
            )
        widget.ui.saveCaseButton.click()
        with open(backup_path(savedPath), "rb") as file:
            self.assertEqual(file.read(), firstVersion)
        self.assertEqual(read_case_list(logic.caseListPath)[0].segmentation, savedPath)
        self.assertEqual(read_case_list(logic.caseListPath)[0].annotator, "selftest")
        self.assertEqual(logic.caseProblems(0), [])
        self.assertTrue(widget.checkPoller.waitUntilDone(60))  # the table's checks are made in a worker process
        self.assertEqual(widget.ui.caseTable.item(0, 7).text(), "ok")

        self.delayDisplay("Marking the case done; the next case is to do")
        widget.ui.markDoneButton.click()
        self.assertEqual(read_case_list(logic.caseListPath)[0].status, "done")
        self.assertEqual(widget.ui.caseTable.item(0, 4).text(), "done")
        widget.ui.nextCaseButton.click()
        self.assertEqual(logic.currentIndex, 1)
        self.assertEqual(logic.cases[1].status, "in progress")
        logic.closeCase()

        self.delayDisplay("Exporting through the panel's Export button (nnU-Net), polling until it ends")
        output = os.path.join(folder, "nnUNet_raw")
        widget.ui.formatComboBox.currentText = "nnunet"
        widget.ui.foldsSpinBox.value = 0
        widget.ui.testFractionSpinBox.value = 0.0
        widget.ui.outputPathLineEdit.currentPath = output
        self.assertTrue(widget.ui.exportButton.enabled)
        widget.ui.exportButton.click()
        self.assertEqual(widget.ui.exportButton.text, "Cancel")
        self.assertTrue(widget.exportPoller.waitUntilDone(60), "the export did not finish in 60 s")
        self.assertEqual(widget.ui.exportButton.text, "Export")
        self.assertIn("Exported 1 case(s)", widget.ui.exportResultLabel.text)
        self.assertIn("1 skipped", widget.ui.exportResultLabel.text)

        dataset = os.path.join(output, "Dataset001_Export")
        self.assertIn(os.path.join(dataset, "dataset_card.md"), widget.ui.exportResultLabel.text)
        with open(os.path.join(dataset, "dataset.json"), encoding="utf-8") as file:
            description = json.load(file)
        self.assertEqual(description["labels"], {"background": 0, "Liver": 1, "Tumor": 2})
        self.assertEqual(description["numTraining"], 1)
        labelNode = slicer.util.loadLabelVolume(os.path.join(dataset, "labelsTr", "case01.nii.gz"))
        imageNode = slicer.util.loadVolume(os.path.join(folder, "case01.nrrd"))
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(labelNode), painted)
        for getter in ("GetSpacing", "GetOrigin"):
            np.testing.assert_allclose(getattr(labelNode, getter)(), getattr(imageNode, getter)(), atol=1e-4)
        self._resetPanel(widget)
        self.delayDisplay("Test passed")

    def _saveVolume(self, array, path, nodeClassName):
        node = slicer.util.addVolumeFromArray(array, name=os.path.basename(path), nodeClassName=nodeClassName)
        self.assertTrue(slicer.util.saveNode(node, path))
        slicer.mrmlScene.RemoveNode(node)

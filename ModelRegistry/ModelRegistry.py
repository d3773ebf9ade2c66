import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
import types
import zipfile

import ctk
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

from ModelRegistryLib import (
    NOT_INSTALLED,
    UNKNOWN,
    UPDATE_AVAILABLE,
    IndexSource,
    JobError,
    Registry,
    RegistryError,
    bundled_source,
    card_html,
    default_cache_dir,
    format_bytes,
    save_user_sources,
    start_job,
    stop_all_workers,
    user_sources,
    worker_python,
)
from ModelRegistryLib.jobs import describe_exit
from ModelRegistryLib.shared_arrays import remove_orphan_segments

# Slicer routes the root logger to its log (Help > Report a bug collects it): what a maintainer needs to
# diagnose a user's problem goes there; panels show only short status texts.
logger = logging.getLogger(__name__)

#
# ModelRegistry
#


class ModelRegistry(ScriptedLoadableModule):
    """Find, install and keep deep-learning models from registry indexes."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Model Registry")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Deep Learning")]
        self.parent.dependencies = []
        self.parent.contributors = ["SlicerDeepLearning developers"]
        self.parent.helpText = _(
            "Find deep-learning models in registry indexes, read their model cards, and install, update,"
            " verify or remove them. Downloads are checked against their sha256, resume after an"
            " interruption and can be cancelled; installed models work offline. Indexes are JSON documents"
            " described by the schema in this module's Resources/Schema folder."
        )
        self.parent.acknowledgementText = _(
            "Part of the SlicerDeepLearning extension. Its registry design learns from SlicerMONAIAuto3DSeg,"
            " DeepInfer and the MONAI model zoo."
        )
        # Worker processes never outlive Slicer (they also exit by themselves when Slicer is gone).
        slicer.app.connect("aboutToQuit()", stop_all_workers)
        # Volumes a Slicer killed during a job had put in shared memory stay there until removed.
        remove_orphan_segments()


#
# Long jobs in worker processes (shared by the extension's panels)
#


def slicerPythonOnPath():
    """PythonSlicer, Slicer's own Python interpreter, which Slicer puts on PATH (None outside Slicer): what
    worker processes run. ``sys.executable`` is the Slicer application itself: it would open a second Slicer."""
    return shutil.which("PythonSlicer")


def workerPython():
    """The interpreter worker processes run (ModelRegistryLib.jobs.worker_python); raises JobError if none."""
    return worker_python(slicerPythonOnPath())


def startJob(target, kwargs=None, description="", sysPath=(), **options):
    """Run ``target`` (``module:function``) in a new worker process of Slicer's Python; returns its Job.

    Long work runs there, not in a thread: in Slicer the GUI keeps Python's GIL while it idles, so a thread
    would crawl, and a crashing job would take Slicer down. ``sysPath`` lists the module folders the job
    imports from; ``options`` are ModelRegistryLib.jobs.start_job's (``timeout``, ``cancel_grace``...).
    """
    job = start_job(target, kwargs, description=description, python=slicerPythonOnPath(), sys_path=sysPath,
                    **options)
    logJobStart(job)
    return job


def processEventsBriefly():
    """Let Slicer's GUI handle what is pending, then idle 20 ms: how blocking calls and tests wait."""
    slicer.app.processEvents()
    qt.QThread.msleep(20)


def waitForJob(job, timeoutSeconds=None):
    """Block until ``job`` ends while Slicer's GUI stays responsive (console, scripts, tests); True if it ended."""
    return job.wait(timeoutSeconds, idle=processEventsBriefly)


def runJob(job):
    """Wait for ``job`` (see waitForJob) and return its result, or raise its error; what the job logged goes to
    Slicer's log (see logJobRecords)."""
    waitForJob(job)
    logJobRecords(job, job.poll())
    logJobEnd(job)
    return job.outcome()


# Levels of the job protocol's log records (ModelRegistryLib.jobs.JobLog) in Python's logging; others (a worker's
# error output, training epochs) are information.
_JOB_LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
                   "error": logging.ERROR, "critical": logging.CRITICAL}


def logJobRecords(job, records):
    """Put the log records a worker sent for ``job`` into Slicer's log, each prefixed with the job's description.

    Example::

        job = startJob("ModelRegistryLib.tasks:verify", {"cache_dir": cacheDir, "spec": None}, "Verifying")
        waitForJob(job)
        logJobRecords(job, job.poll())   # e.g. "[Verifying] brain-tissue-demo 1.0.0: verified"
    """
    for record in records:
        level = _JOB_LOG_LEVELS.get(record.level, logging.INFO)
        prefix = "" if record.level in _JOB_LOG_LEVELS else f"({record.level}) "
        logger.log(level, "[%s] %s%s", job.description, prefix, record.text)


def logJobStart(job):
    """Say in Slicer's log which job started, running what, in which worker process."""
    logger.info("Started %s: %s in worker process %s", job.description, job.target, job.pid)


def logJobEnd(job):
    """Say in Slicer's log how ``job`` ended, after how long, and how its worker process exited if it has."""
    process = getattr(job.worker, "process", None)
    returncode = process.returncode if process is not None else None
    exitText = f"; {describe_exit(returncode)}" if returncode is not None else ""
    seconds = time.monotonic() - job.started
    if job.state == "failed":
        logger.error("%s failed after %.1f s (worker process %s%s): %s", job.description, seconds, job.pid, exitText,
                     job.error)
    else:
        logger.info("%s %s after %.1f s (worker process %s%s)", job.description, job.state, seconds, job.pid,
                    exitText)


class JobPoller:
    """Follows one job (a ModelRegistryLib.jobs ``Job``) for a panel, on the main thread.

    Every 100 ms it reads what the job's worker process sent, without blocking, and hands new log records
    to ``onLog``, the latest progress to ``onProgress`` ("Starting" from when the worker has begun the job
    until the job's first report: ``Job.shown_progress``) and, once the job has ended, the job to
    ``onFinished``. The work runs in the worker; results reach widgets and MRML only through these
    callbacks, so no panel blocks the GUI or touches MRML from elsewhere. Every record also goes to Slicer's log
    (logJobRecords), with the job's end (logJobEnd; startJob logs its start).
    """

    def __init__(self, onProgress, onFinished, onLog=None, intervalMsec=100):
        self.task = None
        self._onProgress = onProgress
        self._onFinished = onFinished
        self._onLog = onLog
        self._timer = qt.QTimer()
        self._timer.setInterval(intervalMsec)
        self._timer.connect("timeout()", self.poll)

    @property
    def busy(self):
        return self.task is not None

    def follow(self, task):
        """Follow ``task`` (started) until it ends; returns it."""
        self.task = task
        self._timer.start()
        return task

    def poll(self):
        task = self.task
        if task is None:
            return
        records = task.poll()
        logJobRecords(task, records)
        for record in records:
            if self._onLog is not None:
                self._onLog(record)
        if task.shown_progress is not None:
            self._onProgress(task.shown_progress)
        if not task.finished:
            return
        self._timer.stop()
        self.task = None
        logJobEnd(task)
        self._onFinished(task)

    def cancel(self):
        if self.task is not None:
            self.task.cancel()

    def stop(self):
        """Stop the task (blocking a few seconds at most) and stop following it: panel clean-up."""
        self._timer.stop()
        if self.task is not None:
            self.task.stop()
            self.task = None

    def waitUntilDone(self, timeoutSeconds):
        """Process events until the followed task has ended (tests, scripts); True if it has."""
        deadline = time.monotonic() + timeoutSeconds
        while self.busy and time.monotonic() < deadline:
            processEventsBriefly()
        return not self.busy


#
# ModelRegistryWidget
#


class ModelRegistryWidget(ScriptedLoadableModuleWidget):
    """Panel: search and filter models, read a model's card, install/update/verify/import in a worker process,
    remove."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.logic = None
        self.ui = None
        self.poller = None
        self.parameters = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ModelRegistry.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        self.logic = ModelRegistryLogic()
        self.ui.modelTable.setColumnCount(len(ModelRegistryLogic.TABLE_COLUMNS))
        self.ui.modelTable.setHorizontalHeaderLabels(ModelRegistryLogic.tableColumnTitles())
        header = self.ui.modelTable.horizontalHeader()
        header.setSectionResizeMode(qt.QHeaderView.ResizeToContents)
        header.setSectionResizeMode(0, qt.QHeaderView.Stretch)
        self.poller = JobPoller(self.showProgress, self.onTaskFinished, onLog=self.onJobLog)
        self.jobWarnings = []

        self.ui.searchBox.connect("textChanged(QString)", self.updateModelTable)
        for combo in (self.ui.modalityFilter, self.ui.taskFilter, self.ui.anatomyFilter):
            combo.connect("currentIndexChanged(int)", self.updateModelTable)
        self.ui.installedOnlyCheckBox.connect("toggled(bool)", self.updateModelTable)
        self.ui.modelTable.connect("itemSelectionChanged()", self.updateSelection)
        self.ui.installButton.connect("clicked(bool)", self.onInstall)
        self.ui.removeButton.connect("clicked(bool)", self.onRemove)
        self.ui.verifyButton.connect("clicked(bool)", self.onVerify)
        self.ui.importButton.connect("clicked(bool)", self.onImport)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.addSourceButton.connect("clicked(bool)", self.onAddSource)
        self.ui.removeSourceButton.connect("clicked(bool)", self.onRemoveSource)
        self.ui.refreshButton.connect("clicked(bool)", self.onRefresh)
        self.ui.cacheDirectoryPathLineEdit.currentPath = self.logic.cacheDir
        self.cacheDirectoryChoice = PathChoiceWatcher(self.ui.cacheDirectoryPathLineEdit, self.onCacheDirectoryChosen)
        self.layout.addStretch(1)
        self.ui.progressBar.visible = False
        self.ui.cancelButton.visible = False
        self.parameters = ParameterNodeBinding(lambda: self.logic.getParameterNode(),
                                               lambda node: self.logic.setDefaultParameters(node))
        for name, widget in (("searchText", self.ui.searchBox), ("modality", self.ui.modalityFilter),
                             ("task", self.ui.taskFilter), ("anatomy", self.ui.anatomyFilter),
                             ("installedOnly", self.ui.installedOnlyCheckBox)):
            self.parameters.bind(name, widget)
        self.parameters.bindValue("selectedModel", lambda: self.selectedModelId() or "", self.showSelectedModel,
                                  [(self.ui.modelTable, "itemSelectionChanged()")])
        self.refresh(offline=True)
        self.parameters.initialize()

    def enter(self):
        self.parameters.initialize()

    def cleanup(self):
        self.poller.stop()
        self.parameters.cleanup()

    # -- listing ------------------------------------------------------------------------------------------

    def refresh(self, offline=False):
        """Read the sources again and rebuild filters, table and source list."""
        statuses = self.logic.refresh(offline=offline)
        self.ui.sourceList.clear()
        for status in statuses:
            self.ui.sourceList.addItem(self.logic.sourceStatusText(status))
        choices = self.logic.filterChoices()
        for combo, key in ((self.ui.modalityFilter, "modality"), (self.ui.taskFilter, "task"),
                           (self.ui.anatomyFilter, "anatomy")):
            current = combo.currentData
            combo.blockSignals(True)
            combo.clear()
            combo.addItem(_("Any"), "")
            for choice in choices[key]:
                combo.addItem(choice, choice)
            combo.setCurrentIndex(max(0, combo.findData(current)))
            combo.blockSignals(False)
            # The scene's choice, where the indexes read now offer it.
            self.parameters.refresh(key)
        self.ui.cacheLabel.text = self.logic.cacheSummary()
        self.updateModelTable()

    @staticmethod
    def _filterValue(combo):
        return combo.currentData or ""

    def updateModelTable(self, _unused=None):
        selected = self.selectedModelId()
        models = self.logic.search(
            self.ui.searchBox.text,
            modality=self._filterValue(self.ui.modalityFilter),
            task=self._filterValue(self.ui.taskFilter),
            anatomy=self._filterValue(self.ui.anatomyFilter),
            installedOnly=self.ui.installedOnlyCheckBox.checked,
        )
        table = self.ui.modelTable
        table.blockSignals(True)
        table.setRowCount(len(models))
        for rowIndex, (model, row) in enumerate(zip(models, self.logic.tableRows(models))):
            for columnIndex, value in enumerate(row):
                item = qt.QTableWidgetItem(value)
                item.setData(qt.Qt.UserRole, model.id)
                table.setItem(rowIndex, columnIndex, item)
            if model.id == selected:
                table.selectRow(rowIndex)
        table.blockSignals(False)
        self.ui.statusLabel.text = self.logic.statusText(len(models))
        self.updateSelection()

    def selectedModelId(self):
        items = self.ui.modelTable.selectedItems()
        return items[0].data(qt.Qt.UserRole) if items else None

    def selectModel(self, modelId):
        for row in range(self.ui.modelTable.rowCount):
            if self.ui.modelTable.item(row, 0).data(qt.Qt.UserRole) == modelId:
                self.ui.modelTable.selectRow(row)
                return True
        return False

    def showSelectedModel(self, modelId):
        """Select ``modelId`` in the table (none for ""); False if the table does not list it."""
        if modelId:
            return self.selectModel(modelId)
        self.ui.modelTable.clearSelection()
        return True

    def updateSelection(self):
        modelId = self.selectedModelId()
        self.ui.cardBrowser.setHtml(self.logic.cardHtml(modelId) if modelId else "")
        actions = self.logic.actions(modelId)
        busy = self.poller.busy
        self.ui.installButton.text = actions["installLabel"]
        self.ui.installButton.enabled = actions["install"] and not busy
        self.ui.removeButton.enabled = actions["remove"] and not busy
        self.ui.verifyButton.enabled = actions["verify"] and not busy
        self.ui.importButton.enabled = not busy

    # -- jobs in a worker process ---------------------------------------------------------------------------

    def _start(self, makeTask, *arguments):
        try:
            task = self.poller.follow(makeTask(*arguments))
        except (RegistryError, JobError, ValueError) as error:
            self.ui.progressLabel.text = str(error)
            return
        self.jobWarnings = []
        self.ui.progressBar.setRange(0, 0)
        self.ui.progressBar.visible = True
        self.ui.cancelButton.visible = True
        self.ui.progressLabel.text = task.description
        self.updateSelection()

    def showProgress(self, step):
        if step.fraction is not None:
            self.ui.progressBar.setRange(0, 1000)
            self.ui.progressBar.value = int(step.fraction * 1000)
        else:
            self.ui.progressBar.setRange(0, 0)
        self.ui.progressLabel.text = _("Cancelling…") if self.poller.task.cancel_requested else step.text

    def onJobLog(self, record):
        # How files the publisher gives no sha256 for were checked: said when the job ends, never dropped.
        if record.level == "warning":
            self.jobWarnings.append(record.text)

    def onTaskFinished(self, task):
        self.ui.progressBar.visible = False
        self.ui.cancelButton.visible = False
        # An import may have added models of the field to the imported models' index: read the sources again.
        self.refresh(offline=True)
        self.ui.progressLabel.text = self.logic.taskOutcomeText(task, self.jobWarnings)

    def onInstall(self):
        self._start(self.logic.installTask, self.selectedModelId())

    def onVerify(self):
        self._start(self.logic.verifyTask, self.selectedModelId())

    def onImport(self):
        typed = self.ui.sourceLineEdit.text.strip()
        if typed and os.path.exists(typed):  # a folder too (an nnU-Net results folder, a bundle)
            self.ui.sourceLineEdit.text = ""
            self.importPackage(typed)
            return
        path = qt.QFileDialog.getOpenFileName(
            self.parent, _("Import a model archive"), "",
            _("Model archives (*.zip *.tar *.tar.gz *.tgz);;All files (*)"))
        if path:
            self.importPackage(path)

    def importPackage(self, path):
        """Install the local archive or folder at ``path`` in a worker process (the Import… button)."""
        self._start(self.logic.importTask, path)

    def onCancel(self):
        if self.poller.busy:
            self.poller.cancel()
            self.ui.progressLabel.text = _("Cancelling…")

    def onRemove(self):
        modelId = self.selectedModelId()
        question = _("Remove every installed version of {model}?").format(model=modelId)
        if not slicer.util.confirmOkCancelDisplay(question):
            return
        # tryWithErrorDisplay shows the error and raises it again, so what must follow a failure too is in
        # ``finally``: a removal that failed half-way has removed some versions.
        try:
            with slicer.util.tryWithErrorDisplay(_("Removing the model failed.")):
                self.ui.progressLabel.text = self.logic.remove(modelId)
        finally:
            self.updateModelTable()

    # -- sources ---------------------------------------------------------------------------------------------

    def onAddSource(self):
        try:
            with slicer.util.tryWithErrorDisplay(_("Adding the index failed.")):
                self.logic.addSource(self.ui.sourceLineEdit.text.strip())
                self.ui.sourceLineEdit.text = ""
        finally:
            # Also after a failure: a source that was added but could not be read is listed as unavailable.
            self.refresh(offline=True)

    def onRemoveSource(self):
        row = self.ui.sourceList.currentRow
        try:
            with slicer.util.tryWithErrorDisplay(_("Removing the index failed.")):
                self.logic.removeSourceAt(row)
        finally:
            self.refresh(offline=True)

    def onCacheDirectoryChosen(self, path):
        """A cache folder was chosen (browsed, or typed and confirmed): every index is read again there."""
        if not path or path == self.logic.cacheDir or self.poller.busy:
            return
        qt.QSettings().setValue(ModelRegistryLogic.CACHE_DIRECTORY_SETTING, path)
        logger.info("Model cache folder set to %s", path)
        self.logic = ModelRegistryLogic()
        self.refresh(offline=True)

    def onRefresh(self):
        with slicer.util.tryWithErrorDisplay(_("Refreshing the indexes failed."), waitCursor=True):
            self.refresh(offline=False)


#
# PathChoiceWatcher (shared by the extension's panels)
#


class PathChoiceWatcher:
    """Calls ``onPathChosen(path)`` when the user has chosen a path in a ``ctkPathLineEdit``, not per keystroke.

    ctkPathLineEdit emits ``currentPathChanged`` on every change of its text that its name filters accept
    (ctkPathLineEdit::updateHasValidInput runs on the line edit's textChanged): without name filters every
    keystroke of ``/data/project`` emits, ``/d`` first; so does every completion highlighted in its file
    completer's popup (QLineEdit sets the text). A path counts as chosen here
    - when it is set otherwise: the browse dialog, the history list, a completion picked, or code
      (QLineEdit::setText clears the line edit's ``modified`` flag, which typing sets);
    - when typing ends (Return, or the focus leaving the field: ``editingFinished``), if the name filters
      accept the text or it is empty;
    - as "" when code empties the field (ctkPathLineEdit emits no ``currentPathChanged`` for an empty path).

    Example (a panel's ``setup``)::

        self.cacheChoice = PathChoiceWatcher(self.ui.cacheDirectoryPathLineEdit, self.onCacheDirectoryChosen)
    """

    def __init__(self, pathLineEdit, onPathChosen):
        self.pathLineEdit = pathLineEdit
        self._lineEdit = pathLineEdit.comboBox().lineEdit()
        self._onPathChosen = onPathChosen
        # A text shown while the user was typing or picking a completion: chosen when editing ends.
        self._pending = False
        pathLineEdit.connect("currentPathChanged(QString)", self._onCurrentPathChanged)
        pathLineEdit.connect("validInputChanged(bool)", self._onValidInputChanged)
        self._lineEdit.connect("editingFinished()", self._onEditingFinished)

    def _editing(self):
        completer = self._lineEdit.completer()
        return self._lineEdit.modified or (completer is not None and completer.popup().visible)

    def _onCurrentPathChanged(self, path):
        self._pending = self._editing()
        if not self._pending:
            self._onPathChosen(path)

    def _onValidInputChanged(self, valid):
        if not valid and not self._editing() and not self.pathLineEdit.currentPath:
            self._pending = False
            self._onPathChosen("")

    def _onEditingFinished(self):
        if not (self._lineEdit.modified or self._pending):
            return
        self._lineEdit.modified = False
        self._pending = False
        path = self.pathLineEdit.currentPath
        if not path or self._lineEdit.acceptableInput:
            self._onPathChosen(path)


#
# Parameter nodes (shared by the extension's panels)
#


def setMissingParameters(parameterNode, defaults):
    """Set each parameter of ``defaults`` (name -> string) that ``parameterNode`` does not have yet."""
    present = set(parameterNode.GetParameterNames())
    for name, value in defaults.items():
        if name not in present:
            parameterNode.SetParameter(name, value)


class ParameterNodeBinding(VTKObservationMixin):
    """Keeps a panel's settings and its module's parameter node (a ``vtkMRMLScriptedModuleNode``) in step.

    The parameter node is saved with the scene (.mrml, .mrb) and is the one node every panel of the module shares,
    so a reopened scene, or another panel, shows the work where it was. A widget's change is written to the node;
    a change of the node (a scene loaded, a script, another panel) is shown by the widget. Values are parameter
    strings; volume and segmentation selectors are node references (role = the parameter's name), so the nodes
    they name survive saving and loading. As Slicer's scripted-module template does, the binding lets go of the
    node when the scene starts closing and takes it again, with the Logic's defaults, when the closing ends, after a
    scene is imported, and each time the module is entered (``initialize``).

    ``getParameterNode()`` returns the node (the Logic's ``getParameterNode``); ``setDefaults(node)`` sets the
    Logic's defaults for parameters not set yet. A setting that is not set after that takes what its widget shows.

    Example (a panel's ``setup``)::

        self.parameters = ParameterNodeBinding(lambda: self.logic.getParameterNode(), self.logic.setDefaultParameters)
        self.parameters.bind("quality", self.ui.qualitySelector)     # a combo box: its item data, else its text
        self.parameters.bind("inputVolume", self.ui.inputSelector)   # a node reference
        self.parameters.initialize()
    """

    AFTER_WIDGETS = -10.0

    def __init__(self, getParameterNode, setDefaults=None):
        VTKObservationMixin.__init__(self)
        self._getParameterNode = getParameterNode
        self._setDefaults = setDefaults
        self.parameterNode = None
        self._bindings = {}  # name -> (read, write, isReference)
        self._showing = False  # widgets are being set from the node: their signals write nothing back
        # name -> the node's value as last shown or stored: a node modification shows only what changed in the
        # node, so a widget changed by the user whose signal has not reached storeWidget yet is not undone.
        self._known = {}
        scene = slicer.mrmlScene
        self.addObserver(scene, scene.StartCloseEvent, self._onSceneStartClose)
        # After the widgets have seen the scene's new nodes (a node selector lists an imported node only once it
        # has handled the import's end; VTK calls observers of lower priority later).
        self.addObserver(scene, scene.EndCloseEvent, self._onSceneEndClose, priority=self.AFTER_WIDGETS)
        self.addObserver(scene, scene.EndImportEvent, self._onSceneEndImport, priority=self.AFTER_WIDGETS)
        self.addObserver(scene, scene.EndBatchProcessEvent, self._onSceneEndBatchProcess, priority=self.AFTER_WIDGETS)

    # -- what is bound --------------------------------------------------------------------------------------

    def bind(self, name, widget):
        """Keep parameter ``name`` and ``widget`` in step (a node selector, path field, combo or check box, spin box
        or line edit)."""
        read, write, signals, isReference = _widgetAccess(widget)
        self.bindValue(name, read, write, [(widget, signal) for signal in signals], isReference=isReference)

    def bindWidgets(self, ui, widgetNames):
        """Bind each parameter of ``widgetNames`` (parameter name -> widget name in ``ui``, a panel's
        ``childWidgetVariables``)."""
        for name, widgetName in widgetNames.items():
            self.bind(name, getattr(ui, widgetName))

    def bindValue(self, name, read, write, changes=(), isReference=False):
        """Keep parameter ``name`` in step with a value the panel shows otherwise (a table's selection...).

        ``read()`` returns the shown value (a string, or a node for a reference; None: nothing chosen, nothing
        written), ``write(value)`` shows one and returns False when it cannot (not among the choices yet);
        ``changes`` lists the (object, signal) pairs that say the shown value changed.
        """
        self._bindings[name] = (read, write, isReference)
        for widget, signal in changes:
            widget.connect(signal, lambda *_unused, name=name: self.storeWidget(name))
        if self.parameterNode is not None:
            self.refresh(name)

    def unbind(self, name):
        """Stop keeping ``name`` in step (its widget is about to be deleted); the node keeps its value."""
        self._bindings.pop(name, None)

    # -- node and widgets -----------------------------------------------------------------------------------

    def initialize(self):
        """Take the module's parameter node (defaults set where missing) and show it: on setup and module enter."""
        node = self._getParameterNode()
        if self._setDefaults is not None:
            self._setDefaults(node)
        self.setParameterNode(node)

    def setParameterNode(self, node):
        """Follow ``node`` (None: none) and show it; settings it lacks take what their widgets show."""
        if self.parameterNode is not None:
            self.removeObserver(self.parameterNode, vtk.vtkCommand.ModifiedEvent, self._onNodeModified)
        self.parameterNode = node
        self._known = {}
        if node is not None:
            self.addObserver(node, vtk.vtkCommand.ModifiedEvent, self._onNodeModified)
            self.refresh()

    def refresh(self, name=None):
        """Show the node's value of ``name`` (all when None); where it has none, or one the widget cannot show (a
        choice that no longer exists), store what the widget shows. Panels call it after refilling choices."""
        if self.parameterNode is None:
            return
        for parameter in ([name] if name else list(self._bindings)):
            if not self._show(parameter):
                self.storeWidget(parameter)

    @property
    def showing(self):
        """True while widgets are being set from the node (a scene loaded, the module entered), not by the user."""
        return self._showing

    def value(self, name):
        """The node's value of ``name``: a string, or the referenced node."""
        if self._bindings[name][2]:
            return self.parameterNode.GetNodeReference(name)
        return self.parameterNode.GetParameter(name)

    def storeWidget(self, name):
        """Write what the widget of ``name`` shows to the node (the widget's change signal calls it)."""
        if self._showing or self.parameterNode is None or name not in self._bindings:
            return
        read, _write, isReference = self._bindings[name]
        shown = read()
        if isReference:
            nodeId = shown.GetID() if shown is not None else None
            self._known[name] = nodeId
            if self.parameterNode.GetNodeReferenceID(name) != nodeId:
                self.parameterNode.SetNodeReferenceID(name, nodeId)
        elif shown is not None:
            self._known[name] = shown
            if self.parameterNode.GetParameter(name) != shown:
                self.parameterNode.SetParameter(name, shown)

    def _nodeValueKey(self, name):
        """What the node holds for ``name``, comparable: a node id, a string, or None."""
        if self._bindings[name][2]:
            return self.parameterNode.GetNodeReferenceID(name)
        return self.parameterNode.GetParameter(name) if name in self.parameterNode.GetParameterNames() else None

    def _show(self, name):
        """Show the node's value of ``name``; False where it has none or the widget cannot show it."""
        read, write, isReference = self._bindings[name]
        if isReference:
            hasValue = self.parameterNode.GetNodeReferenceID(name) is not None
        else:
            hasValue = name in self.parameterNode.GetParameterNames()
        if not hasValue:
            return False
        self._known[name] = self._nodeValueKey(name)
        value = self.value(name)
        if read() == value:
            return True
        previous, self._showing = self._showing, True  # a widget shown may show others (a model's inputs)
        try:
            return write(value) is not False
        finally:
            self._showing = previous

    def _onNodeModified(self, caller=None, event=None):
        for name in list(self._bindings):
            if self._nodeValueKey(name) != self._known.get(name):
                self._show(name)

    def _onSceneStartClose(self, caller=None, event=None):
        self.setParameterNode(None)

    def _onSceneEndClose(self, caller=None, event=None):
        self.initialize()

    def _onSceneEndImport(self, caller=None, event=None):
        self.initialize()

    def _onSceneEndBatchProcess(self, caller=None, event=None):
        # Slicer's node selectors list the nodes a batch added (a scene imported) only when it ends.
        self.refresh()

    def cleanup(self):
        """Stop observing the scene and the node (the panel's cleanup)."""
        self.removeObservers()
        self.parameterNode = None


def _widgetAccess(widget):
    """How a widget's value is read, written and watched: (read, write, change signals, is a node reference)."""
    if isinstance(widget, slicer.qMRMLNodeComboBox):
        return widget.currentNode, widget.setCurrentNode, ["currentNodeChanged(vtkMRMLNode*)"], True
    if isinstance(widget, ctk.ctkPathLineEdit):
        def writePath(path):
            widget.currentPath = path
        # An emptied field emits only validInputChanged (see PathChoiceWatcher).
        return (lambda: widget.currentPath), writePath, ["currentPathChanged(QString)", "validInputChanged(bool)"], \
            False
    if isinstance(widget, qt.QComboBox):
        def readChoice():
            if widget.currentIndex < 0:
                return None
            data = widget.currentData
            return str(data) if data is not None else widget.currentText

        def writeChoice(value):
            index = widget.findData(value)
            index = index if index >= 0 else widget.findText(value)
            if index < 0:
                return False
            widget.setCurrentIndex(index)
            return True
        return readChoice, writeChoice, ["currentIndexChanged(int)"], False
    if isinstance(widget, qt.QAbstractButton):
        def writeChecked(value):
            widget.checked = value == "true"
        return (lambda: "true" if widget.checked else "false"), writeChecked, ["toggled(bool)"], False
    if isinstance(widget, (qt.QSpinBox, qt.QDoubleSpinBox)):
        number = int if isinstance(widget, qt.QSpinBox) else float

        def writeNumber(value):
            try:
                widget.value = number(value)
            except ValueError:
                return False
            return True
        return (lambda: repr(widget.value)), writeNumber, ["valueChanged(double)" if number is float
                                                          else "valueChanged(int)"], False
    if isinstance(widget, qt.QLineEdit):
        def writeText(text):
            widget.text = text
        return (lambda: widget.text), writeText, ["textChanged(QString)"], False
    raise TypeError(f"No parameter binding for a {type(widget).__name__}")


#
# Labels in segmentations (shared by the extension's panels)
#


def addLabelSegment(segmentationNode, label, segmentId=""):
    """An empty segment for ``label`` (a ModelRegistryLib ``Label``): its name, color and terminology; returns its id.

    ``segmentId`` "" lets Slicer derive the id from the name, as the Segment Editor does.
    """
    color = tuple(int(label.color[i : i + 2], 16) / 255.0 for i in (1, 3, 5))
    segmentation = segmentationNode.GetSegmentation()
    segmentId = segmentation.AddEmptySegment(segmentId, label.name, color)
    if label.terminology is not None:
        segment = segmentation.GetSegment(segmentId)
        entry = label.terminology.slicer_entry()
        if hasattr(segment, "SetTerminology"):  # Slicer 5.10 and later
            segment.SetTerminology(entry)
        else:  # Slicer 5.8 keeps the terminology in a tag
            segment.SetTag(segment.GetTerminologyEntryTagName(), entry)
    return segmentId


def importLabelMap(labelmapNode, segmentationNode, segmentIdsByValue):
    """Put a label map's voxels into existing segments, with one call of Slicer's segmentations logic.

    ``segmentIdsByValue`` maps each label value (1 or more) to the id of a segment of ``segmentationNode``,
    made beforehand with its name, color and terminology (:func:`addLabelSegment`); the voxels of a value go
    to its segment, replacing what it held, and a segment whose value has no voxel is left empty. Every
    non-zero value of the label map must be listed: the segments share the label map as one layer, where
    voxels of another value would belong to no segment. The label map's geometry and parent transform are
    kept exactly (no resampling when they match the segmentation's).

    Example (Slicer's Python console)::

        labels = slicer.util.getNode("labels")               # a vtkMRMLLabelMapVolumeNode holding 1 and 2
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        liver = addLabelSegment(node, Label(1, "Liver", "#dd8259"))
        tumor = addLabelSegment(node, Label(2, "Tumor", "#f0e68c"))
        importLabelMap(labels, node, {1: liver, 2: tumor})
    """
    # Slicer's logic takes the ids in label order: the i-th id (from 0) receives the voxels of value i + 1.
    values = sorted(segmentIdsByValue)
    if values and values[0] < 1:
        raise ValueError(f"Label value {values[0]} cannot be a segment: label values are 1 or more.")
    segmentIds = vtk.vtkStringArray()
    segmentIds.SetNumberOfValues(values[-1] if values else 0)
    for value in values:
        segmentIds.SetValue(value - 1, segmentIdsByValue[value])
    messages = slicer.vtkMRMLMessageCollection()
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if not logic.ImportLabelmapToSegmentationNode(labelmapNode, segmentationNode, segmentIds, messages):
        raise RuntimeError(f"The label map could not be imported: {messages.GetAllMessagesAsString().strip()}")


#
# ModelRegistryLogic
#


class ModelRegistryLogic(ScriptedLoadableModuleLogic):
    """Everything the panel decides, usable from Slicer's Python console without the panel.

    Example (Slicer's Python console)::

        logic = slicer.util.getModuleLogic("ModelRegistry")
        [model.id for model in logic.search("brain", modality="MR")]
        installed = logic.install("brain-tissue-demo")   # downloads, verifies, unpacks in a worker; waits
        installed.path
        job = logic.installTask("brain-tissue-demo")     # the same without waiting: job.progress, job.cancel()
    """

    TABLE_COLUMNS = ("Title", "Version", "Modality", "Size", "State")
    CACHE_DIRECTORY_SETTING = "DeepLearning/ModelCacheDirectory"
    # The panel's settings saved with the scene (its parameter node), and their values before any choice.
    PARAMETER_DEFAULTS = types.MappingProxyType({"searchText": "", "modality": "", "task": "", "anatomy": "",
                                                 "installedOnly": "false", "selectedModel": ""})

    def __init__(self, cacheDir=None):
        ScriptedLoadableModuleLogic.__init__(self)
        self.cacheDir = cacheDir or self.configuredCacheDirectory()
        self.registry = Registry([bundled_source(), *user_sources(self.cacheDir)], self.cacheDir)
        self.registry.refresh(offline=True)

    def setDefaultParameters(self, parameterNode):
        """Set the panel's settings that ``parameterNode`` lacks to their defaults."""
        setMissingParameters(parameterNode, self.PARAMETER_DEFAULTS)

    @staticmethod
    def tableColumnTitles():
        """The model table's column titles, in ``TABLE_COLUMNS`` order, in the user's language."""
        return [_("Title"), _("Version"), _("Modality"), _("Size"), _("State")]

    @classmethod
    def configuredCacheDirectory(cls):
        """The environment variable if set, else the Slicer setting, else the user's cache folder."""
        return default_cache_dir(slicer.util.settingsValue(cls.CACHE_DIRECTORY_SETTING, ""))

    def refresh(self, offline=False):
        """Read the sources again; remote ones only from their cached copies when ``offline``."""
        self.registry.sources = [bundled_source(), *user_sources(self.cacheDir)]
        return self.registry.refresh(offline=offline)

    def addSource(self, location, name=""):
        """Add an index (URL, file or folder) after the others, then read it from the network once."""
        if not location:
            raise ValueError(_("Enter the URL of an index, or the path of an index file or folder."))
        sources = user_sources(self.cacheDir)
        if any(source.location == location for source in sources):
            raise ValueError(_("{location} is already a source.").format(location=location))
        save_user_sources(self.cacheDir, [*sources, IndexSource(location, name=name)])
        logger.info("Registry index added: %s", location)
        statuses = self.refresh(offline=False)
        failed = [s for s in statuses if s.source.location == location and not s.ok]
        if failed:
            logger.warning("Registry index %s could not be read: %s", location, failed[0].error)
            raise RegistryError(_("Added {location}, but it could not be read: {error}").format(
                location=location, error=failed[0].error))

    def removeSourceAt(self, row):
        """Remove the user's source shown at ``row`` of the source list (the bundled index stays)."""
        sources = user_sources(self.cacheDir)
        userRow = row - 1
        if not 0 <= userRow < len(sources):
            raise ValueError(_("Select an index you added: the bundled index cannot be removed."))
        save_user_sources(self.cacheDir, sources[:userRow] + sources[userRow + 1:])
        logger.info("Registry index removed: %s", sources[userRow].location)

    @staticmethod
    def sourceStatusText(status):
        label = status.source.name or status.source.location
        if status.ok and not status.from_cache:
            return _("{source}: {count} models").format(source=label, count=status.model_count)
        if status.ok:
            return _("{source}: {count} models (offline copy)").format(source=label, count=status.model_count)
        return _("{source}: unavailable — {error}").format(source=label, error=status.error)

    def filterChoices(self):
        models = self.registry.models()
        return {
            "modality": sorted({m.modality for m in models if m.modality}),
            "task": sorted({m.task for m in models if m.task}),
            "anatomy": sorted({a for m in models for a in m.anatomy}),
        }

    def search(self, text="", modality="", task="", anatomy="", installedOnly=False):
        return self.registry.search(text, modality=modality, task=task, anatomy=anatomy,
                                    installed=True if installedOnly else None)

    def tableRows(self, models):
        """One row of strings per model, in ``TABLE_COLUMNS`` order."""
        return [
            (model.title, model.latest_release.version, model.modality, _downloadSizeText(model.latest_release),
             self.registry.state(model.id))
            for model in models
        ]

    def statusText(self, matchCount):
        total = len(self.registry.models())
        if total == 0:
            return _("No models in the registry indexes.")
        return _("{count} of {total} models match.").format(count=matchCount, total=total)

    def cardHtml(self, modelId):
        entry = self.registry.find(modelId)
        if entry is None:
            return ""
        return card_html(entry, installed_versions=self.registry.store.installed_versions(modelId))

    def actions(self, modelId):
        """Which buttons apply to the model: install (labelled Install or Update), remove, verify."""
        state = self.registry.state(modelId) if modelId else UNKNOWN
        installed = bool(modelId) and bool(self.registry.store.installed_versions(modelId))
        return {
            "install": state in (NOT_INSTALLED, UPDATE_AVAILABLE),
            "installLabel": _("Update") if state == UPDATE_AVAILABLE else _("Install"),
            "remove": installed,
            "verify": installed,
        }

    def cacheSummary(self):
        return _("Models are kept in {folder} ({size} MB used).").format(
            folder=self.cacheDir, size=f"{self.registry.store.disk_usage() / 1e6:.1f}")

    # Install, verify and import run in a worker process of Slicer's Python (ModelRegistryLib.jobs): hashing
    # and unpacking hundreds of MB in a thread of Slicer's process would crawl while the GUI idles, since
    # the GUI keeps Python's GIL then. The ...Task methods return the running job (progress, cancel(),
    # state, result) for panels and scripts; install, verify and importPackage wait for it, keeping the GUI
    # responsive, and return its result or raise its error.

    def installTask(self, modelId):
        """Start installing the newest (or pinned) version of ``modelId`` in a worker; returns the Job."""
        entry, version = self.registry.resolve(modelId)
        logger.info("Installing %s %s (runtime %s) into %s", entry.id, version.version, version.runtime, self.cacheDir)
        return startJob("ModelRegistryLib.tasks:install",
                        {"cache_dir": self.cacheDir, "entry": entry, "version": version},
                        _("Installing {model} {version}").format(model=entry.id, version=version.version))

    def verifyTask(self, modelId):
        """Start re-hashing the installed files of ``modelId`` (every model when empty) in a worker."""
        return startJob("ModelRegistryLib.tasks:verify", {"cache_dir": self.cacheDir, "spec": modelId or None},
                        _("Verifying {model}").format(model=modelId) if modelId else _("Verifying every model"))

    def importTask(self, path):
        """Start installing a local archive or folder in a worker: a version the indexes list (recognised by sha256),
        else a model of the field (an nnU-Net v2 results folder or zip, a MONAI bundle, a SlicerMONAIAuto3DSeg
        archive), added to the imported models' index that is read after every other source."""
        if not path or not os.path.exists(path):
            raise ValueError(_("Nothing to import at {path}").format(path=path or _("(no path given)")))
        logger.info("Importing %s into %s", os.path.abspath(path), self.cacheDir)
        return startJob("ModelRegistryLib.tasks:import_package",
                        {"cache_dir": self.cacheDir, "path": os.path.abspath(path), "entries": self.registry.models()},
                        _("Importing {name}").format(name=os.path.basename(os.path.abspath(path))))

    def install(self, modelId):
        """Install ``modelId`` (see installTask) and wait; returns the ``InstalledModel``."""
        return runJob(self.installTask(modelId))

    def verify(self, modelId=None):
        """Re-hash installed files (see verifyTask) and wait; returns ``VerifyResult``s."""
        return runJob(self.verifyTask(modelId))

    def importPackage(self, path):
        """Import a local archive or folder (see importTask) and wait; returns the ``InstalledModel``."""
        return runJob(self.importTask(path))

    @staticmethod
    def taskOutcomeText(task, warnings=()):
        """What the panel says when a job has ended; ``warnings`` (how unverified files were checked) follow."""
        if task.state == "cancelled":
            return _("{job}: cancelled (a later install resumes the download).").format(job=task.description)
        if task.state == "failed":
            return _("{job} failed: {error}").format(job=task.description, error=task.error)
        if isinstance(task.result, list):  # verify results
            return " ".join(result.text for result in task.result) or _("Nothing installed to verify.")
        return _("{job}: done ({path}).").format(job=task.description, path=task.result.path) + "".join(
            " " + _("Warning: {text}.").format(text=text) for text in warnings)

    def remove(self, modelId):
        removed = self.registry.remove(modelId)
        logger.info("Removed %s versions %s from %s", modelId, ", ".join(removed), self.cacheDir)
        return _("Removed {model} {versions}.").format(model=modelId, versions=", ".join(removed))


def _downloadSizeText(version):
    """The table's size column: the package's download size, or that the version is a container image."""
    return format_bytes(version.download_size) if version.files else _("container")


#
# ModelRegistryTest
#


class ModelRegistryTest(ScriptedLoadableModuleTest):
    """Self-test: runs in Slicer (Developer mode > Test, or headless) and in the test stand-in.

    It serves a small model package from a web server on 127.0.0.1 and installs it through the panel.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_BundledIndexLoads()
        self.test_InstallFromLoopbackServerThroughPanel()

    def test_BundledIndexLoads(self):
        self.delayDisplay("Reading the bundled registry index")
        logic = ModelRegistryLogic(cacheDir=tempfile.mkdtemp(dir=slicer.app.temporaryPath))
        statuses = logic.refresh(offline=True)
        self.assertTrue(statuses[0].ok, statuses[0].error)

    def test_InstallFromLoopbackServerThroughPanel(self):
        self.delayDisplay("Installing a model from a local web server through the panel")
        folder = tempfile.mkdtemp(dir=slicer.app.temporaryPath)
        with _ServedModelPackage(folder) as indexUrl:
            widget = slicer.modules.modelregistry.widgetRepresentation().self()
            originalLogic = widget.logic
            widget.logic = ModelRegistryLogic(cacheDir=os.path.join(folder, "cache"))
            try:
                widget.logic.addSource(indexUrl, name="Self-test server")
                widget.refresh(offline=True)
                widget.ui.searchBox.text = "self-test"
                self.assertEqual(widget.ui.modelTable.rowCount, 1)
                self.assertTrue(widget.selectModel("selftest-model"))
                self.assertIn("Self-test model", widget.ui.cardBrowser.toPlainText())
                self.assertTrue(widget.ui.installButton.enabled)
                widget.ui.installButton.click()
                self.assertTrue(widget.poller.waitUntilDone(60), "install did not finish in 60 s")
                self.assertIn("done", widget.ui.progressLabel.text)
                installed = widget.logic.registry.installed_model("selftest-model")
                with open(os.path.join(installed.path, "weights.txt"), encoding="utf-8") as weights:
                    self.assertEqual(weights.read(), "self-test weights")
                self.assertEqual(widget.ui.modelTable.item(0, 4).text(), "installed")
                widget.ui.verifyButton.click()
                self.assertTrue(widget.poller.waitUntilDone(60), "verify did not finish in 60 s")
                self.assertIn("all files intact", widget.ui.progressLabel.text)
            finally:
                widget.logic = originalLogic
                widget.ui.searchBox.text = ""
                widget.refresh(offline=True)
        self.delayDisplay("Test passed")


class _ServedModelPackage:
    """A one-model index and its zip archive served over HTTP on 127.0.0.1 while in a ``with`` block.

    The server runs in a process of its own: a server thread in Slicer's process would starve while the
    GUI idles waiting for the install, as every Python thread there does.
    """

    def __init__(self, folder):
        self.folder = folder
        self.server = None
        archive = os.path.join(folder, "selftest-model-1.0.0.zip")
        with zipfile.ZipFile(archive, "w") as package:
            package.writestr("weights.txt", "self-test weights")
        with open(archive, "rb") as packageFile:
            digest = hashlib.sha256(packageFile.read()).hexdigest()
        index = {
            "schemaVersion": 1,
            "models": [{
                "id": "selftest-model",
                "title": "Self-test model",
                "description": "A package served by the ModelRegistry self-test.",
                "modality": "CT",
                "versions": [{"version": "1.0.0", "files": [
                    {"url": "selftest-model-1.0.0.zip", "sha256": digest, "size": os.path.getsize(archive)}
                ]}],
            }],
        }
        with open(os.path.join(folder, "index.json"), "w", encoding="utf-8") as indexFile:
            json.dump(index, indexFile)

    def __enter__(self):
        # http.server prints "Serving HTTP on 127.0.0.1 port <port> ..." once it listens.
        self.server = subprocess.Popen(
            [workerPython(), "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", self.folder],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        port = self.server.stdout.readline().split(" port ")[1].split()[0]
        return f"http://127.0.0.1:{port}/index.json"

    def __exit__(self, *exc):
        self.server.terminate()
        self.server.wait()
        self.server.stdout.close()
        shutil.rmtree(self.folder, ignore_errors=True)

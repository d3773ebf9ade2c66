import http.server
import json
import functools
import hashlib
import os
import shutil
import tempfile
import threading
import time
import zipfile

import qt

import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

from ModelRegistryLib import (
    NOT_INSTALLED,
    UNKNOWN,
    UPDATE_AVAILABLE,
    BackgroundTask,
    IndexSource,
    Registry,
    RegistryError,
    bundled_source,
    card_html,
    default_cache_dir,
    format_bytes,
    save_user_sources,
    user_sources,
)

#
# ModelRegistry
#


class ModelRegistry(ScriptedLoadableModule):
    """Find, install and keep deep-learning models from registry indexes."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Model Registry"
        self.parent.categories = ["Deep Learning"]
        self.parent.dependencies = []
        self.parent.contributors = ["SlicerDeepLearning developers"]
        self.parent.helpText = (
            "Find deep-learning models in registry indexes, read their model cards, and install, update,"
            " verify or remove them. Downloads are checked against their sha256, resume after an"
            " interruption and can be cancelled; installed models work offline. Indexes are JSON documents"
            " described by the schema in this module's Resources/Schema folder."
        )
        self.parent.acknowledgementText = (
            "Part of the SlicerDeepLearning extension. Its registry design learns from SlicerMONAIAuto3DSeg,"
            " DeepInfer and the MONAI model zoo."
        )


#
# BackgroundTaskPoller (shared by the extension's panels)
#


class BackgroundTaskPoller:
    """Follows a ModelRegistryLib ``BackgroundTask`` for a panel, on the main thread.

    Every 100 ms it hands the task's latest progress to ``onProgress``; when the task has ended it
    hands the task to ``onFinished``, once. Work runs in the task's thread; results reach widgets and
    MRML only through these callbacks, so no panel blocks the GUI or touches MRML from a worker.
    """

    def __init__(self, onProgress, onFinished, intervalMsec=100):
        self.task = None
        self._onProgress = onProgress
        self._onFinished = onFinished
        self._timer = qt.QTimer()
        self._timer.setInterval(intervalMsec)
        self._timer.connect("timeout()", self.poll)

    @property
    def busy(self):
        return self.task is not None

    def start(self, task):
        """Start ``task`` (not started yet) and follow it; returns it."""
        self.task = task.start()
        self._timer.start()
        return self.task

    def poll(self):
        task = self.task
        if task is None:
            return
        if task.progress is not None:
            self._onProgress(task.progress)
        if not task.finished:
            return
        self._timer.stop()
        self.task = None
        self._onFinished(task)

    def cancel(self):
        if self.task is not None:
            self.task.cancel()

    def stop(self):
        """Cancel the task and stop following it (panel cleanup)."""
        self.cancel()
        self._timer.stop()


#
# ModelRegistryWidget
#


class ModelRegistryWidget(ScriptedLoadableModuleWidget):
    """Panel: search and filter models, read a model's card, install/update/remove/verify in the background."""

    ANY = "Any"

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.logic = None
        self.ui = None
        self.poller = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ModelRegistry.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        self.logic = ModelRegistryLogic()
        self.ui.modelTable.setColumnCount(len(ModelRegistryLogic.TABLE_COLUMNS))
        self.ui.modelTable.setHorizontalHeaderLabels(ModelRegistryLogic.TABLE_COLUMNS)
        header = self.ui.modelTable.horizontalHeader()
        header.setSectionResizeMode(qt.QHeaderView.ResizeToContents)
        header.setSectionResizeMode(0, qt.QHeaderView.Stretch)
        self.poller = BackgroundTaskPoller(self.showProgress, self.onTaskFinished)

        self.ui.searchBox.connect("textChanged(QString)", self.updateModelTable)
        for combo in (self.ui.modalityFilter, self.ui.taskFilter, self.ui.anatomyFilter):
            combo.connect("currentIndexChanged(int)", self.updateModelTable)
        self.ui.installedOnlyCheckBox.connect("toggled(bool)", self.updateModelTable)
        self.ui.modelTable.connect("itemSelectionChanged()", self.updateSelection)
        self.ui.installButton.connect("clicked(bool)", self.onInstall)
        self.ui.removeButton.connect("clicked(bool)", self.onRemove)
        self.ui.verifyButton.connect("clicked(bool)", self.onVerify)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.addSourceButton.connect("clicked(bool)", self.onAddSource)
        self.ui.importButton.connect("clicked(bool)", self.onImport)
        self.ui.removeSourceButton.connect("clicked(bool)", self.onRemoveSource)
        self.ui.refreshButton.connect("clicked(bool)", self.onRefresh)
        self.ui.cacheDirectoryPathLineEdit.currentPath = self.logic.cacheDir
        self.ui.cacheDirectoryPathLineEdit.connect("currentPathChanged(QString)", self.onCacheDirectoryChanged)
        self.layout.addStretch(1)
        self.ui.progressBar.visible = False
        self.ui.cancelButton.visible = False
        self.refresh(offline=True)

    def cleanup(self):
        self.poller.stop()

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
            current = combo.currentText
            combo.blockSignals(True)
            combo.clear()
            combo.addItems([self.ANY, *choices[key]])
            combo.setCurrentIndex(max(0, combo.findText(current)))
            combo.blockSignals(False)
        self.ui.cacheLabel.text = self.logic.cacheSummary()
        self.updateModelTable()

    def _filterValue(self, combo):
        return "" if combo.currentText == self.ANY else combo.currentText

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

    def updateSelection(self):
        modelId = self.selectedModelId()
        self.ui.cardBrowser.setHtml(self.logic.cardHtml(modelId) if modelId else "")
        actions = self.logic.actions(modelId)
        busy = self.poller.busy
        self.ui.installButton.text = actions["installLabel"]
        self.ui.installButton.enabled = actions["install"] and not busy
        self.ui.removeButton.enabled = actions["remove"] and not busy
        self.ui.verifyButton.enabled = actions["verify"] and not busy

    # -- background work --------------------------------------------------------------------------------

    def _start(self, task):
        self.poller.start(task)
        self.ui.progressBar.value = 0
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
        self.ui.progressLabel.text = step.text

    def onTaskFinished(self, task):
        self.ui.progressBar.visible = False
        self.ui.cancelButton.visible = False
        # An import may have added models (and the imported models' index to the sources).
        self.refresh(offline=True)
        self.ui.progressLabel.text = self.logic.taskOutcomeText(task)

    def onInstall(self):
        self._start(self.logic.installTask(self.selectedModelId()))

    def onVerify(self):
        self._start(self.logic.verifyTask(self.selectedModelId()))

    def onCancel(self):
        if self.poller.busy:
            self.poller.cancel()
            self.ui.progressLabel.text = "Cancelling…"

    def onRemove(self):
        modelId = self.selectedModelId()
        if not slicer.util.confirmOkCancelDisplay(f"Remove every installed version of {modelId}?"):
            return
        with slicer.util.tryWithErrorDisplay("Removing the model failed."):
            self.ui.progressLabel.text = self.logic.remove(modelId)
        self.updateModelTable()

    # -- sources ---------------------------------------------------------------------------------------------

    def onAddSource(self):
        with slicer.util.tryWithErrorDisplay("Adding the index failed."):
            self.logic.addSource(self.ui.sourceLineEdit.text.strip())
            self.ui.sourceLineEdit.text = ""
        self.refresh(offline=True)

    def onImport(self):
        path = self.ui.sourceLineEdit.text.strip()
        with slicer.util.tryWithErrorDisplay("Importing the model failed."):
            self._start(self.logic.importTask(path))
            self.ui.sourceLineEdit.text = ""

    def onRemoveSource(self):
        row = self.ui.sourceList.currentRow
        with slicer.util.tryWithErrorDisplay("Removing the index failed."):
            self.logic.removeSourceAt(row)
        self.refresh(offline=True)

    def onCacheDirectoryChanged(self, path):
        if not path or path == self.logic.cacheDir or self.poller.busy:
            return
        qt.QSettings().setValue(ModelRegistryLogic.CACHE_DIRECTORY_SETTING, path)
        self.logic = ModelRegistryLogic()
        self.refresh(offline=True)

    def onRefresh(self):
        with slicer.util.tryWithErrorDisplay("Refreshing the indexes failed.", waitCursor=True):
            self.refresh(offline=False)


#
# ModelRegistryLogic
#


class ModelRegistryLogic(ScriptedLoadableModuleLogic):
    """Everything the panel decides, usable from Slicer's Python console without the panel.

    Example (Slicer's Python console)::

        logic = slicer.util.getModuleLogic("ModelRegistry")
        [model.id for model in logic.search("brain", modality="MR")]
        installed = logic.registry.ensure_installed("brain-tissue-demo")   # downloads, verifies, unpacks
        installed.path
    """

    TABLE_COLUMNS = ("Title", "Version", "Modality", "Size", "State")
    CACHE_DIRECTORY_SETTING = "DeepLearning/ModelCacheDirectory"

    def __init__(self, cacheDir=None):
        ScriptedLoadableModuleLogic.__init__(self)
        self.cacheDir = cacheDir or self.configuredCacheDirectory()
        self.registry = Registry([bundled_source(), *user_sources(self.cacheDir)], self.cacheDir)
        self.registry.refresh(offline=True)

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
            raise ValueError("Enter the URL of an index, or the path of an index file or folder.")
        sources = user_sources(self.cacheDir)
        if any(source.location == location for source in sources):
            raise ValueError(f"{location} is already a source.")
        save_user_sources(self.cacheDir, [*sources, IndexSource(location, name=name)])
        statuses = self.refresh(offline=False)
        failed = [s for s in statuses if s.source.location == location and not s.ok]
        if failed:
            raise RegistryError(f"Added {location}, but it could not be read: {failed[0].error}")

    def removeSourceAt(self, row):
        """Remove the user's source shown at ``row`` of the source list (the bundled index stays)."""
        sources = user_sources(self.cacheDir)
        userRow = row - 1
        if not 0 <= userRow < len(sources):
            raise ValueError("Select an index you added: the bundled index cannot be removed.")
        save_user_sources(self.cacheDir, sources[:userRow] + sources[userRow + 1:])

    @staticmethod
    def sourceStatusText(status):
        label = status.source.name or status.source.location
        if status.ok and not status.from_cache:
            return f"{label}: {status.model_count} models"
        if status.ok:
            return f"{label}: {status.model_count} models (offline copy)"
        return f"{label}: unavailable — {status.error}"

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
            return "No models in the registry indexes."
        return f"{matchCount} of {total} models match."

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
            "installLabel": "Update" if state == UPDATE_AVAILABLE else "Install",
            "remove": installed,
            "verify": installed,
        }

    def cacheSummary(self):
        return f"Models are kept in {self.cacheDir} ({self.registry.store.disk_usage() / 1e6:.1f} MB used)."

    @staticmethod
    def _installingTask(work, description):
        """A task running ``work(progress, cancel)`` whose trust notices (how files without the publisher's sha256
        were checked) are kept in ``task.notices``: the panel shows only the latest progress, and these must not
        pass unseen."""
        notices = []

        def run(progress, cancel):
            def report(step):
                if getattr(step, "stage", "") == "trust":
                    notices.append(step.text)
                progress(step)

            return work(report, cancel)

        task = BackgroundTask(run, description)
        task.notices = notices
        return task

    def installTask(self, modelId):
        """A not yet started task installing the newest (or pinned) version of ``modelId``."""
        return self._installingTask(
            lambda progress, cancel: self.registry.ensure_installed(modelId, progress=progress, cancel=cancel),
            f"Installing {modelId}",
        )

    def importTask(self, path):
        """A not yet started task installing the model at ``path`` (an archive or folder of a version an index lists,
        an nnU-Net v2 results folder or zip, a MONAI bundle, a SlicerMONAIAuto3DSeg archive): the field's models are
        added to the imported models' index, which is read after every other source."""
        if not path:
            raise ValueError("Enter the path of a model archive or folder to import.")
        return self._installingTask(lambda progress, cancel: self.registry.import_package(path, progress=progress),
                                    f"Importing {os.path.basename(os.path.normpath(path))}")

    def verifyTask(self, modelId):
        return BackgroundTask(lambda progress, cancel: self.registry.verify(modelId), f"Verifying {modelId}")

    @staticmethod
    def taskOutcomeText(task):
        if task.state == "cancelled":
            return f"{task.description}: cancelled (a later install resumes the download)."
        if task.state == "failed":
            return f"{task.description} failed: {task.error}"
        if isinstance(task.result, list):  # verify results
            return " ".join(result.text for result in task.result) or "Nothing installed to verify."
        notices = "".join(f" Warning: {notice}." for notice in getattr(task, "notices", ()))
        return f"{task.description}: done ({task.result.path}).{notices}"

    def remove(self, modelId):
        return f"Removed {modelId} " + ", ".join(self.registry.remove(modelId)) + "."


def _downloadSizeText(version):
    """The table's size column: the package's download size, or that the version is a container image."""
    return format_bytes(version.download_size) if version.files else "container"


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
                deadline = time.time() + 30
                while widget.poller.busy and time.time() < deadline:
                    slicer.app.processEvents()
                    time.sleep(0.02)
                self.assertFalse(widget.poller.busy, "install did not finish in 30 s")
                self.assertIn("done", widget.ui.progressLabel.text)
                installed = widget.logic.registry.installed_model("selftest-model")
                with open(os.path.join(installed.path, "weights.txt"), encoding="utf-8") as weights:
                    self.assertEqual(weights.read(), "self-test weights")
                self.assertEqual(widget.ui.modelTable.item(0, 4).text(), "installed")
                widget.ui.verifyButton.click()
                while widget.poller.busy and time.time() < deadline:
                    slicer.app.processEvents()
                    time.sleep(0.02)
                self.assertIn("all files intact", widget.ui.progressLabel.text)
            finally:
                widget.logic = originalLogic
                widget.ui.searchBox.text = ""
                widget.refresh(offline=True)
        self.delayDisplay("Test passed")


class _ServedModelPackage:
    """A one-model index and its zip archive served over HTTP on 127.0.0.1 while in a ``with`` block."""

    def __init__(self, folder):
        self.folder = folder
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
        handler = functools.partial(_QuietHandler, directory=folder)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/index.json"

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        shutil.rmtree(self.folder, ignore_errors=True)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass

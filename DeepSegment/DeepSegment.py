import importlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
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

from DeepSegmentLib import (
    DEFAULT_QUALITY,
    LPS_FROM_RAS,
    QUALITY_PRESETS,
    EngineError,
    ModelService,
    PackageError,
    archive_package,
    choose_device,
    cpu_device,
    ijk_to_ras_from_image,
    image_from_array,
    is_oblique,
    torch_installed,
    load_package,
    torch_status,
    write_package,
)
from DeepSegmentLib.batch import BatchSettings, check_batch_request
from DeepSegmentLib.batch_cases import parse_case_filter
from DeepSegmentLib.batch_outputs import DEFAULT_FORMAT, OUTPUT_FORMATS
from DeepSegmentLib.container_backend import ContainerSettings
from DeepSegmentLib.runtimes import missing_requirements
from DeepSegmentLib.runtimes.dependencies import install_arguments
from DeepSegmentLib.torchsetup import installed_packages, pinned_constraints
from DeepSegmentLib.container_runtime import ContainerRuntimeNotFoundError, find_runtime
from ModelRegistry import (
    JobPoller,
    ModelRegistryLogic,
    ParameterNodeBinding,
    addLabelSegment,
    importLabelMap,
    runJob,
    setMissingParameters,
    slicerPythonOnPath,
    startJob,
    waitForJob,
)
from ModelRegistryLib import IndexSource, JobError, Registry, RegistryError
from ModelRegistryLib.files import write_text_atomically
from ModelRegistryLib.index import Label
from DeepSegmentLib.evaluation import BOTH_PRESENT, DEFAULT_TOLERANCE_MM, EvaluationError, mask_metrics
from DeepSegmentLib.evaluation_cohort import (
    CaseEvaluation,
    CasePair,
    EvaluationReport,
    match_segments,
    pair_case_list,
    pair_folders,
    parse_labels,
    read_case_labels,
)
from DeepSegmentLib.evaluation_report import worst_cases
from DeepSegmentLib.training import EPOCH_LOG_LEVEL, TrainingError, TrainingSettings, check_settings
from DeepSegmentLib.training_networks import MONAI_REQUIREMENT, NetworkSettings
from ModelRegistryLib.registry import user_sources
from DeepSegmentLib.frames import require_2d_model
from DeepSegmentLib.live import DEFAULT_LIVE_QUALITY, STOPPED, LiveStatistics, LiveStream
from TrainingDataExport import segmentTerminologyEntry
from TrainingDataExportLib import PRE_ANNOTATED, TO_DO

_MODULE_FOLDER = os.path.dirname(os.path.abspath(__file__))
# Slicer routes the root logger to its log (Help > Report a bug collects it): runs, their settings and timings.
logger = logging.getLogger(__name__)

# Slicer's PyTorch extension (github.com/fepegar/SlicerPyTorch, "PyTorch" in the Extensions Index, a dependency
# of this extension) and its module that installs PyTorch.
PYTORCH_EXTENSION = "PyTorch"
PYTORCH_MODULE = "PyTorchUtils"
PYTORCH_EXTENSION_MISSING = (
    "Deep Segment runs models with PyTorch, which Slicer's PyTorch extension installs, and that extension is"
    f" not installed. Install the {PYTORCH_EXTENSION} extension from the Extensions Manager (View > Extensions"
    " Manager, category Utilities) and restart Slicer; in a Slicer without the Extensions Manager (a development"
    " build), add the PyTorchUtils folder of https://github.com/fepegar/SlicerPyTorch to the additional module"
    " paths (Edit > Application Settings > Modules) and restart. Models in containers run without PyTorch."
)


class PyTorchExtensionMissingError(RuntimeError):
    """PyTorch is not installed and Slicer's PyTorch extension, which installs it, is missing too."""


#
# DeepSegment
#


class DeepSegment(ScriptedLoadableModule):
    """Segment volumes with deep-learning models from the model registry."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Deep Segment")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Deep Learning")]
        self.parent.dependencies = ["ModelRegistry", "TrainingDataExport"]
        self.parent.contributors = ["SlicerDeepLearning developers"]
        self.parent.helpText = _(
            "Segment volumes with a deep-learning model from the model registry, on a GPU or the CPU."
            " Pick a model: its inputs are pre-filled from the volumes' names. Apply installs the model if"
            " needed (verified download), runs it in the background with progress and Cancel, and makes a"
            " segmentation with named, colored segments on the exact grid of the input. Models shipped as"
            " container images run in Docker or Podman, isolated (no network, read-only inputs), with their"
            " parameters in the panel. Evaluate measures segmentations against references (Dice, HD95, mean"
            " surface distance, normalized surface Dice, volumes) for two segmentations or a whole cohort."
            " Live follows a volume that a stream (OpenIGTLinkIF) or a sequence browser updates and segments every"
            " new frame with a 2D model."
            " Train makes a model from annotated cases (an export of Training Data Export or a case list): a"
            " MONAI network or a registry model fine-tuned, validated on held-out patients, added to a local"
            " registry index with its card."
        )
        self.parent.acknowledgementText = _(
            "Part of the SlicerDeepLearning extension. Its engine learns from MONAI, nnU-Net and"
            " SlicerMONAIAuto3DSeg; its container models from DeepInfer."
        )


#
# DeepSegmentWidget
#


class DeepSegmentWidget(ScriptedLoadableModuleWidget):
    """Panel: model, inputs generated from the model's contract, device, quality, output, Apply/Cancel."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.logic = None
        self.ui = None
        self.inputSelectors = []
        self.inputParameterNames = []  # the parameter node's references of the inputSelectors
        self.parameterWidgets = {}
        self.poller = None
        self.batchSection = None
        self.evaluateSection = None
        self.trainSection = None
        self.liveSection = None
        self.parameters = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DeepSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        self.ui.outputSelector.setMRMLScene(slicer.mrmlScene)
        self.logic = DeepSegmentLogic()
        # The panel's settings, saved with the scene; the sections bind theirs too.
        self.parameters = ParameterNodeBinding(lambda: self.logic.getParameterNode(),
                                               lambda node: self.logic.setDefaultParameters(node))
        self.updateDeviceSelector()
        # Devices are listed in a worker process (importing PyTorch here would block the GUI for seconds).
        self.devicePoller = JobPoller(lambda progress: None, self.onDevicesListed)
        self.devicePoller.follow(self.logic.devicesTask())
        for quality in DeepSegmentLogic.QUALITIES:
            self.ui.qualitySelector.addItem(DeepSegmentLogic.qualityLabel(quality), quality)
        self.ui.qualitySelector.setCurrentIndex(self.ui.qualitySelector.findData(DeepSegmentLogic.DEFAULT_QUALITY))
        for precision, label in DeepSegmentLogic.PRECISION_LABELS.items():
            self.ui.precisionSelector.addItem(label, precision)
        self.showContainerSettings(self.logic.containerSettings)
        self.poller = JobPoller(self.showProgress, self.onTaskFinished, onLog=self.onLog)
        self.ui.modelSelector.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.deviceSelector.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.backendSelector.connect("currentIndexChanged(int)", self.onBackendChanged)
        self.ui.runtimeSelector.connect("currentIndexChanged(int)", self.onRuntimeChanged)
        self.ui.refreshModelsButton.connect("clicked(bool)", self.updateModelList)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyOrCancel)
        self.batchSection = BatchSection(self)
        self.layout.addWidget(self.batchSection.widget)
        self.liveSection = LiveSection(self)
        self.layout.addWidget(self.liveSection.widget)
        self.evaluateSection = EvaluateSection(self)
        self.layout.addWidget(self.evaluateSection.widget)
        self.trainSection = TrainSection(self)
        self.layout.addWidget(self.trainSection.widget)
        self.layout.addStretch(1)
        self.ui.progressBar.visible = False
        for name, widget in (("model", self.ui.modelSelector), ("backend", self.ui.backendSelector),
                             ("device", self.ui.deviceSelector), ("quality", self.ui.qualitySelector),
                             ("precision", self.ui.precisionSelector), ("threads", self.ui.threadsSpinBox),
                             ("outputSegmentation", self.ui.outputSelector)):
            self.parameters.bind(name, widget)
        self.updateModelList()
        self.onDeviceChanged()
        self.parameters.initialize()

    def cleanup(self):
        self.parameters.cleanup()
        self.poller.stop()
        self.devicePoller.stop()
        # The model service's workers hold networks (and GPU memory): they stop with the panel.
        self.logic.service.stop()
        self.batchSection.cleanup()
        self.evaluateSection.cleanup()
        self.trainSection.cleanup()
        self.liveSection.cleanup()

    def enter(self):
        self.parameters.initialize()
        self.prefillInputs()
        self.liveSection.enter()

    def exit(self):
        self.liveSection.exit()

    # -- model and inputs ---------------------------------------------------------------------------------

    def updateModelList(self, _unused=None):
        current = self.ui.modelSelector.currentData
        self.ui.modelSelector.blockSignals(True)
        self.ui.modelSelector.clear()
        for modelId, label in self.logic.modelChoices():
            self.ui.modelSelector.addItem(label, modelId)
        index = self.ui.modelSelector.findData(current) if current else -1
        self.ui.modelSelector.setCurrentIndex(max(index, 0))
        self.ui.modelSelector.blockSignals(False)
        self.parameters.refresh("model")  # the scene's model, where the registry lists it
        self.onModelChanged()

    def onModelChanged(self, _index=None):
        """Rebuild one volume selector per model input, pre-filled by the input's name pattern (after the volume
        the scene's parameter node names for that input)."""
        for parameterName in self.inputParameterNames:
            self.parameters.unbind(parameterName)
        self.inputParameterNames = []
        for selector in self.inputSelectors:
            selector.setParent(None)
            selector.deleteLater()
        self.inputSelectors = []
        layout = self.ui.inputsCollapsibleButton.layout()
        while layout.rowCount() > 0:
            layout.removeRow(0)
        modelId = self.ui.modelSelector.currentData
        self.ui.modelInfoLabel.text = self.logic.modelSummary(modelId)
        self.ui.backendSelector.blockSignals(True)
        self.ui.backendSelector.clear()
        for backend, label in self.logic.backendChoices(modelId):
            self.ui.backendSelector.addItem(label, backend)
        self.ui.backendSelector.blockSignals(False)
        if self.parameters.showing:  # the parameter node is being shown (a scene loaded): its backend too
            self.parameters.refresh("backend")
        else:  # the user picked another model: the backend it prefers
            self.parameters.storeWidget("backend")
        self.onBackendChanged()
        for name in self.logic.inputNames(modelId):
            selector = slicer.qMRMLNodeComboBox()
            selector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
            selector.showChildNodeTypes = False
            selector.noneEnabled = True
            selector.addEnabled = False
            selector.removeEnabled = False
            selector.setMRMLScene(slicer.mrmlScene)
            selector.toolTip = _("Volume for the model's '{input}' input").format(input=name)
            selector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateApplyState)
            layout.addRow(_("{input}:").format(input=name), selector)
            self.inputSelectors.append(selector)
            self.inputParameterNames.append(DeepSegmentLogic.inputParameterName(name))
            self.parameters.bind(self.inputParameterNames[-1], selector)
        self.prefillInputs()

    def onBackendChanged(self, _index=None):
        """Show what the chosen backend uses: quality for in-process runs, the image's parameters and the
        container settings for container runs."""
        inContainer = self.ui.backendSelector.currentData == "container"
        for widget in (self.ui.qualityLabel, self.ui.qualitySelector, self.ui.threadsLabel, self.ui.threadsSpinBox,
                       self.ui.precisionLabel, self.ui.precisionSelector):
            widget.visible = not inContainer
        self.ui.containerCollapsibleButton.visible = inContainer
        self.buildParameterWidgets(self.logic.imageParameters(self.ui.modelSelector.currentData) if inContainer else ())
        if inContainer:
            self.showRuntime()

    def buildParameterWidgets(self, parameters):
        """One widget per image parameter, like DeepInfer: a list, a check box or a range-limited number."""
        layout = self.ui.parametersCollapsibleButton.layout()
        while layout.rowCount() > 0:
            layout.removeRow(0)
        self.parameterWidgets = {}
        for parameter in parameters:
            if parameter.type == "enum":
                widget = qt.QComboBox()
                for choice in parameter.choices:
                    widget.addItem(choice)
                widget.currentText = parameter.default
            elif parameter.type == "bool":
                widget = qt.QCheckBox()
                widget.checked = parameter.default
            else:
                widget = qt.QSpinBox() if parameter.type == "int" else qt.QDoubleSpinBox()
                if parameter.type == "float":
                    widget.decimals = 4
                    widget.singleStep = 0.05
                widget.minimum = parameter.minimum if parameter.minimum is not None else -1e9
                widget.maximum = parameter.maximum if parameter.maximum is not None else 1e9
                widget.value = parameter.default
            widget.toolTip = parameter.description
            layout.addRow(f"{parameter.title or parameter.name}:", widget)
            self.parameterWidgets[parameter.name] = (parameter, widget)
        self.ui.parametersCollapsibleButton.visible = bool(parameters)

    def parameterValues(self):
        """The image parameters as the widgets show them."""
        values = {}
        for name, (parameter, widget) in self.parameterWidgets.items():
            if parameter.type == "enum":
                values[name] = widget.currentText
            elif parameter.type == "bool":
                values[name] = bool(widget.checked)
            else:
                values[name] = int(widget.value) if parameter.type == "int" else float(widget.value)
        return values

    def showContainerSettings(self, settings):
        self.ui.runtimeSelector.blockSignals(True)
        self.ui.runtimeSelector.clear()
        for runtime in ("auto", "podman", "docker"):
            self.ui.runtimeSelector.addItem(runtime)
        self.ui.runtimeSelector.currentText = settings.runtime
        self.ui.runtimeSelector.blockSignals(False)
        self.ui.memoryLimitLineEdit.text = settings.memory_limit
        self.ui.timeoutSpinBox.value = round((settings.timeout or 0) / 60)
        self.ui.keepRunFolderCheckBox.checked = settings.keep_run_folders

    def containerSettings(self):
        minutes = self.ui.timeoutSpinBox.value
        return ContainerSettings(runtime=self.ui.runtimeSelector.currentText.strip() or "auto",
                                 memory_limit=self.ui.memoryLimitLineEdit.text.strip(),
                                 timeout=minutes * 60.0 if minutes else None,
                                 run_folder=self.logic.containerSettings.run_folder,
                                 keep_run_folders=bool(self.ui.keepRunFolderCheckBox.checked))

    def onRuntimeChanged(self, _index=None):
        """The user picked another runtime: ask it again."""
        self.showRuntime(refresh=True)

    def showRuntime(self, refresh=False):
        self.logic.setContainerSettings(self.containerSettings())
        self.ui.runtimeInfoLabel.text = self.logic.runtimeDescription(refresh)

    def prefillInputs(self):
        modelId = self.ui.modelSelector.currentData
        if not modelId:
            return
        for selector, node in zip(self.inputSelectors, self.logic.matchInputs(modelId, self.volumeNodes())):
            if selector.currentNode() is None and node is not None:
                selector.setCurrentNode(node)
        self.updateApplyState()

    @staticmethod
    def volumeNodes():
        return list(slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"))

    def updateDeviceSelector(self):
        """The device choices, keeping the one chosen (the CPU and automatic until the devices are listed)."""
        selector = self.ui.deviceSelector
        chosen = selector.currentData
        selector.blockSignals(True)
        selector.clear()
        for request, label in self.logic.deviceChoices():
            selector.addItem(label, request)
        selector.setCurrentIndex(max(0, selector.findData(chosen)))
        selector.blockSignals(False)
        self.parameters.refresh("device")  # the scene's device, where this computer has it
        self.onDeviceChanged()

    def onDevicesListed(self, task):
        if self.logic.devicesError is not None:
            self.log(f"Compute devices could not be listed, so only the CPU is offered: {self.logic.devicesError}")
        self.updateDeviceSelector()
        if self.logic.knownDevices() is None:  # the listing was stopped: it runs again
            self.devicePoller.follow(self.logic.devicesTask())

    def onDeviceChanged(self, _index=None):
        if self.logic.knownDevices() is None:
            self.ui.deviceInfoLabel.text = _("Looking for compute devices…")
            return
        with slicer.util.tryWithErrorDisplay(_("The device is not available.")):
            self.ui.deviceInfoLabel.text = self.logic.chooseDevice(self.ui.deviceSelector.currentData).description

    def updateApplyState(self, _unused=None):
        if self.poller.busy:
            return
        inputs = [selector.currentNode() for selector in self.inputSelectors]
        ready = bool(self.ui.modelSelector.currentData) and bool(inputs) and all(inputs)
        self.ui.applyButton.enabled = ready
        self.ui.geometryLabel.text = self.logic.geometrySummary(inputs[0] if inputs else None)

    # -- running --------------------------------------------------------------------------------------------

    def onApplyOrCancel(self):
        if self.poller.busy:
            self.poller.cancel()
            self.ui.stageLabel.text = _("Cancelling…")
            return
        backend = self.ui.backendSelector.currentData or "auto"
        inContainer = backend == "container"
        if not inContainer and not self.torchReady():
            return
        if not inContainer and self.logic.knownDevices() is None:
            self.ui.stageLabel.text = _("Looking for compute devices…")
            self.ui.applyButton.enabled = False  # no second click while waiting
            try:
                self.logic.devices()  # waits for the listing, keeping Slicer responsive
            finally:
                self.ui.applyButton.enabled = True
        if not inContainer and not self.logic.installRuntimeDependencies(self.ui.modelSelector.currentData,
                                                                         slicer.util.confirmOkCancelDisplay):
            self.ui.stageLabel.text = _("The model's runtime needs packages that are not installed.")
            return
        with slicer.util.tryWithErrorDisplay(_("Segmentation could not start.")):
            if inContainer:
                self.logic.setContainerSettings(self.containerSettings())
            task = self.poller.follow(self.logic.segmentationTask(
                self.ui.modelSelector.currentData,
                [selector.currentNode() for selector in self.inputSelectors],
                device=self.ui.deviceSelector.currentData,
                quality=self.ui.qualitySelector.currentData,
                threads=self.ui.threadsSpinBox.value or None,
                precision=self.ui.precisionSelector.currentData,
                backend=backend,
                parameters=self.parameterValues() if inContainer else None,
            ))
            self.ui.applyButton.text = _("Cancel")
            self.ui.progressBar.visible = True
            self.ui.progressBar.value = 0
            self.ui.timingLabel.text = ""
            self.log(f"Started {task.description}")

    def torchReady(self):
        """Whether PyTorch can run models here, installed through Slicer's PyTorch extension on first use."""
        try:
            if self.logic.installTorch(askConfirmation=True):
                return True
            self.ui.stageLabel.text = _("PyTorch is needed to run models in Slicer's Python: it was not installed.")
        except PyTorchExtensionMissingError as error:
            self.ui.stageLabel.text = _("PyTorch is needed: install Slicer's PyTorch extension.")
            slicer.util.errorDisplay(str(error))  # in testing mode, only logged
        except Exception as error:  # the extension's installer failed (network, disk, files in use...)
            self.ui.stageLabel.text = _("PyTorch could not be installed.")
            slicer.util.errorDisplay(_("PyTorch could not be installed: {error}").format(error=error))
        return False

    def showProgress(self, step):
        self.ui.progressBar.value = int((step.fraction or 0.0) * 100)
        self.ui.stageLabel.text = _("Cancelling…") if self.poller.task.cancel_requested else step.text

    def onLog(self, record):
        """Lines the run logged (a container's output); what the worker printed on its error output is only
        quoted when the worker crashes."""
        if record.level != "output":
            self.log(record.text)

    def onTaskFinished(self, task):
        """The result is applied to the scene here, on the main thread."""
        self.ui.applyButton.text = _("Apply")
        self.ui.progressBar.visible = False
        if task.state == "succeeded":
            segmentation = self.logic.applyResult(task.result, self.ui.outputSelector.currentNode())
            self.ui.outputSelector.setCurrentNode(segmentation)
            self.ui.stageLabel.text = _("Done.")
            self.ui.timingLabel.text = self.logic.timingSummary(task.result)
            self.log(self.ui.timingLabel.text)
        else:
            message = self.logic.failureText(task)
            self.ui.stageLabel.text = message
            self.log(message)
            if task.state == "failed":
                slicer.util.errorDisplay(message)
        self.updateApplyState()

    def log(self, text):
        self.ui.logText.appendPlainText(time.strftime("%H:%M:%S ") + text)


class BatchSection:
    """The panel's "Run on all cases" section: the model, device, quality and precision chosen above, run over a case
    list, a folder of images or of DICOM series (here or on a Ray cluster), in the background with progress, the time
    left and Cancel; the summary lists failed cases with their reasons. Decisions are the Logic's."""

    # The section's settings in the panel's parameter node (saved with the scene): parameter -> widget.
    PARAMETERS = types.MappingProxyType({
        "batchSource": "batchSourceKindSelector", "batchCaseList": "batchCaseListPathLineEdit",
        "batchFolder": "batchFolderPathLineEdit", "batchOutputFolder": "batchOutputPathLineEdit",
        "batchFormat": "batchFormatSelector", "batchCaseFilter": "batchCaseFilterLineEdit",
        "batchNotAnnotated": "batchNotAnnotatedCheckBox", "batchPreAnnotate": "batchPreAnnotateCheckBox",
        "batchWorkers": "batchWorkersSpinBox", "batchRayAddress": "batchRayAddressLineEdit"})

    def __init__(self, owner):
        self.owner = owner  # the panel: its logic may be replaced (tests do)
        self.widget = slicer.util.loadUI(owner.resourcePath("UI/DeepSegmentBatch.ui"))
        self.ui = slicer.util.childWidgetVariables(self.widget)
        self.summary = None
        self.poller = JobPoller(self.showProgress, self.onFinished, onLog=self.onLog)
        ui = self.ui
        for kind, label in DeepSegmentLogic.BATCH_SOURCES:
            ui.batchSourceKindSelector.addItem(label, kind)
        for suffix in OUTPUT_FORMATS:
            ui.batchFormatSelector.addItem(suffix, suffix)
        ui.batchFormatSelector.setCurrentIndex(ui.batchFormatSelector.findData(DEFAULT_FORMAT))
        ui.batchProgressBar.visible = False
        ui.batchSourceKindSelector.connect("currentIndexChanged(int)", self.updateState)
        for pathLineEdit in (ui.batchCaseListPathLineEdit, ui.batchFolderPathLineEdit, ui.batchOutputPathLineEdit):
            pathLineEdit.connect("currentPathChanged(QString)", self.updateState)
        owner.ui.modelSelector.connect("currentIndexChanged(int)", self.updateState)
        ui.batchRunButton.connect("clicked(bool)", self.onRunOrCancel)
        ui.batchEvaluateButton.connect("clicked(bool)", self.onEvaluate)
        owner.parameters.bindWidgets(ui, self.PARAMETERS)
        self.updateState()

    @property
    def logic(self):
        return self.owner.logic

    def kind(self):
        return self.ui.batchSourceKindSelector.currentData

    def source(self):
        ui = self.ui
        return (ui.batchCaseListPathLineEdit if self.kind() == "cases" else ui.batchFolderPathLineEdit).currentPath

    def updateState(self, _unused=None):
        ui, fromCaseList = self.ui, self.kind() == "cases"
        for widget in (ui.batchCaseListLabel, ui.batchCaseListPathLineEdit, ui.batchNotAnnotatedCheckBox,
                       ui.batchPreAnnotateCheckBox):
            widget.visible = fromCaseList
        for widget in (ui.batchFolderLabel, ui.batchFolderPathLineEdit):
            widget.visible = not fromCaseList
        ui.batchEvaluateButton.visible = self.summary is not None and self.logic.canEvaluateCohort(self.summary)
        if self.poller.busy:
            return
        ui.batchRunButton.enabled = bool(self.owner.ui.modelSelector.currentData and self.source()
                                         and ui.batchOutputPathLineEdit.currentPath)

    def onRunOrCancel(self):
        ui, panel = self.ui, self.owner.ui
        if self.poller.busy:
            self.poller.cancel()
            ui.batchStatusLabel.text = _("Cancelling: the running cases stop, the results computed are kept…")
            return
        fromCaseList = self.kind() == "cases"
        try:
            task = self.logic.cohortTask(
                panel.modelSelector.currentData, self.source(), ui.batchOutputPathLineEdit.currentPath,
                kind=self.kind(), caseFilter=ui.batchCaseFilterLineEdit.text,
                statuses=DeepSegmentLogic.NOT_ANNOTATED if fromCaseList and ui.batchNotAnnotatedCheckBox.checked
                else (),
                device=panel.deviceSelector.currentData, quality=panel.qualitySelector.currentData,
                precision=panel.precisionSelector.currentData, threads=panel.threadsSpinBox.value,
                workers=ui.batchWorkersSpinBox.value, outputFormat=ui.batchFormatSelector.currentData,
                preAnnotate=fromCaseList and ui.batchPreAnnotateCheckBox.checked,
                rayAddress=ui.batchRayAddressLineEdit.text)
        except DeepSegmentLogic.BATCH_USER_ERRORS as error:
            ui.batchStatusLabel.text = _("The batch could not start: {error}").format(error=error)
            return
        self.summary = None
        self.poller.follow(task)
        ui.batchRunButton.text = _("Cancel")
        ui.batchProgressBar.visible = True
        ui.batchProgressBar.value = 0
        ui.batchSummaryText.clear()
        ui.batchStatusLabel.text = _("Starting…")
        self.updateState()

    def showProgress(self, progress):
        self.ui.batchProgressBar.value = int((progress.fraction or 0.0) * 100)
        if not self.poller.task.cancel_requested:
            self.ui.batchStatusLabel.text = progress.text

    def onLog(self, record):
        if record.level != "output":
            self.ui.batchSummaryText.appendPlainText(record.text)

    def onFinished(self, task):
        ui = self.ui
        ui.batchRunButton.text = _("Run on all cases")
        ui.batchProgressBar.visible = False
        if task.state == "succeeded":
            self.summary = task.result
            self.logic.refreshAnnotationCaseList(self.summary)
            ui.batchStatusLabel.text = _("Cancelled; run again to go on.") if self.summary.cancelled else _("Finished.")
            ui.batchSummaryText.setPlainText(self.summary.text())
        else:
            ui.batchStatusLabel.text = (_("Cancelled.") if task.state == "cancelled"
                                        else _("The batch failed: {error}").format(error=task.error))
        self.updateState()

    def onEvaluate(self):
        """Hand the case list and the results to the Evaluate section, opened."""
        evaluate = self.owner.evaluateSection.ui
        evaluate.evaluateModeSelector.setCurrentIndex(evaluate.evaluateModeSelector.findData("cases"))
        evaluate.caseListPathLineEdit.currentPath = self.summary.source
        evaluate.predictionFolderPathLineEdit.currentPath = self.summary.output_dir
        evaluate.evaluateCollapsibleButton.collapsed = False

    def cleanup(self):
        self.poller.stop()


class EvaluateSection:
    """The panel's Evaluate section: two segmentations, two folders, or a case list and a prediction folder
    measured against each other; results in a table node and a plot chart node, and a list of cases (lowest
    Dice first) where selecting one loads it. Decisions are the Logic's; cohorts run in the background."""

    MODES = (("nodes", _("Two segmentations")), ("folders", _("Two folders")), ("cases", _("Case list and folder")))
    PARAMETERS = types.MappingProxyType({
        "evaluateMode": "evaluateModeSelector", "evaluateReference": "referenceSegmentationSelector",
        "evaluatePrediction": "predictionSegmentationSelector",
        "evaluateReferenceFolder": "referenceFolderPathLineEdit", "evaluateCaseList": "caseListPathLineEdit",
        "evaluatePredictionFolder": "predictionFolderPathLineEdit",
        "evaluateLabels": "evaluateLabelsLineEdit", "evaluateTolerance": "toleranceSpinBox",
        "evaluateReportFolder": "reportFolderPathLineEdit"})

    def __init__(self, owner):
        self.owner = owner  # the panel: its logic may be replaced (tests do)
        self.widget = slicer.util.loadUI(owner.resourcePath("UI/DeepSegmentEvaluate.ui"))
        self.ui = slicer.util.childWidgetVariables(self.widget)
        self.report = None
        self.tableNode = None
        self.chartNode = None
        self.poller = JobPoller(self.showProgress, self.onFinished)
        ui = self.ui
        for selector in (ui.referenceSegmentationSelector, ui.predictionSegmentationSelector):
            selector.setMRMLScene(slicer.mrmlScene)
            selector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateState)
        for mode, label in self.MODES:
            ui.evaluateModeSelector.addItem(label, mode)
        ui.toleranceSpinBox.value = DEFAULT_TOLERANCE_MM
        ui.evaluateCaseTable.setColumnCount(len(DeepSegmentLogic.EVALUATION_CASE_COLUMNS))
        ui.evaluateCaseTable.setHorizontalHeaderLabels(DeepSegmentLogic.evaluationColumnTitles())
        ui.evaluateProgressBar.visible = False
        ui.evaluateModeSelector.connect("currentIndexChanged(int)", self.updateState)
        for pathLineEdit in (ui.referenceFolderPathLineEdit, ui.caseListPathLineEdit, ui.predictionFolderPathLineEdit):
            pathLineEdit.connect("currentPathChanged(QString)", self.updateState)
        ui.evaluateButton.connect("clicked(bool)", self.onEvaluateOrCancel)
        ui.evaluateCaseTable.connect("itemSelectionChanged()", self.onCaseSelected)
        owner.parameters.bindWidgets(ui, self.PARAMETERS)
        self.updateState()

    @property
    def logic(self):
        return self.owner.logic

    def mode(self):
        return self.ui.evaluateModeSelector.currentData

    def updateState(self, _unused=None):
        ui, mode = self.ui, self.mode()
        for widget in (ui.referenceSegmentationLabel, ui.referenceSegmentationSelector, ui.predictionSegmentationLabel,
                       ui.predictionSegmentationSelector):
            widget.visible = mode == "nodes"
        for widget in (ui.referenceFolderLabel, ui.referenceFolderPathLineEdit):
            widget.visible = mode == "folders"
        for widget in (ui.caseListLabel, ui.caseListPathLineEdit):
            widget.visible = mode == "cases"
        for widget in (ui.predictionFolderLabel, ui.predictionFolderPathLineEdit, ui.evaluateLabelsLabel,
                       ui.evaluateLabelsLineEdit, ui.reportFolderLabel, ui.reportFolderPathLineEdit):
            widget.visible = mode != "nodes"
        if self.poller.busy:
            return
        if mode == "nodes":
            ready = ui.referenceSegmentationSelector.currentNode() is not None and \
                ui.predictionSegmentationSelector.currentNode() is not None
        else:
            reference = ui.referenceFolderPathLineEdit if mode == "folders" else ui.caseListPathLineEdit
            ready = bool(reference.currentPath) and bool(ui.predictionFolderPathLineEdit.currentPath)
        ui.evaluateButton.enabled = ready

    def onEvaluateOrCancel(self):
        ui = self.ui
        if self.poller.busy:
            self.poller.cancel()
            ui.evaluateStatusLabel.text = _("Cancelling…")
            return
        try:
            if self.mode() == "nodes":
                report = self.logic.evaluateSegmentations(ui.referenceSegmentationSelector.currentNode(),
                                                          ui.predictionSegmentationSelector.currentNode(),
                                                          ui.toleranceSpinBox.value)
                self.showReport(report)
                return
            reference = ui.referenceFolderPathLineEdit.currentPath if self.mode() == "folders" else None
            cases = ui.caseListPathLineEdit.currentPath if self.mode() == "cases" else None
            task = self.logic.evaluationTask(ui.predictionFolderPathLineEdit.currentPath, reference=reference,
                                             cases=cases, labels=ui.evaluateLabelsLineEdit.text.strip(),
                                             tolerance=ui.toleranceSpinBox.value,
                                             reportFolder=ui.reportFolderPathLineEdit.currentPath)
        except DeepSegmentLogic.EVALUATION_USER_ERRORS as error:
            ui.evaluateStatusLabel.text = _("Evaluation could not start: {error}").format(error=error)
            return
        self.poller.follow(task)
        ui.evaluateButton.text = _("Cancel")
        ui.evaluateProgressBar.visible = True
        ui.evaluateProgressBar.value = 0
        ui.evaluateStatusLabel.text = _("Evaluating…")

    def showProgress(self, progress):
        self.ui.evaluateProgressBar.value = int(progress.fraction * 100)
        self.ui.evaluateStatusLabel.text = progress.text

    def onFinished(self, task):
        self.ui.evaluateButton.text = _("Evaluate")
        self.ui.evaluateProgressBar.visible = False
        if task.state == "succeeded":
            self.showReport(task.result)
        else:
            self.ui.evaluateStatusLabel.text = (_("Cancelled.") if task.state == "cancelled"
                                                else _("Evaluation failed: {error}").format(error=task.error))
        self.updateState()

    def showReport(self, report):
        """Table and chart nodes in the scene (shown in the views where there are any), and the case list."""
        self.report = report
        self.tableNode, self.chartNode = self.logic.showEvaluation(report, self.tableNode, self.chartNode)
        self.logic.showEvaluationInViews(self.tableNode, self.chartNode)
        table = self.ui.evaluateCaseTable
        rows = self.logic.evaluationCaseRows(report)
        table.blockSignals(True)
        table.clearContents()
        table.setRowCount(len(rows))
        for rowIndex, (_caseIndex, cells) in enumerate(rows):
            for columnIndex, text in enumerate(cells):
                table.setItem(rowIndex, columnIndex, qt.QTableWidgetItem(text))
        table.blockSignals(False)
        self.ui.evaluateStatusLabel.text = self.logic.evaluationSummary(report)

    def onCaseSelected(self):
        rows = sorted({index.row() for index in self.ui.evaluateCaseTable.selectedIndexes()})
        if not rows or self.report is None:
            return
        caseIndex = self.logic.evaluationCaseRows(self.report)[rows[0]][0]
        with slicer.util.tryWithErrorDisplay(_("The case could not be loaded.")):
            self.logic.loadEvaluatedCase(self.report, caseIndex)

    def cleanup(self):
        self.poller.stop()


class TrainSection:
    """The panel's Train section: data (an export or a case list), network (new, or a registry model to
    fine-tune), the main settings, and where the result goes; Train runs in a worker process, with progress,
    the loss and validation Dice plotted as epochs end (a plot view of table and chart nodes in the scene), and
    Cancel. Decisions are the Logic's; what the section holds is what the user picked."""

    DATA_KINDS = (("export", _("Export folder")), ("cases", _("Case list")))
    PARAMETERS = types.MappingProxyType({
        "trainData": "trainDataSelector", "trainExportFolder": "trainExportPathLineEdit",
        "trainCaseList": "trainCaseListPathLineEdit", "trainOutputFolder": "trainOutputPathLineEdit",
        "trainNetwork": "trainNetworkSelector", "trainBaseModel": "trainBaseModelSelector",
        "trainPatchSize": "trainPatchLineEdit", "trainLabelSchema": "trainLabelsPathLineEdit",
        "trainEpochs": "trainEpochsSpinBox", "trainStepsPerEpoch": "trainStepsSpinBox",
        "trainBatchSize": "trainBatchSpinBox", "trainLearningRate": "trainLearningRateSpinBox",
        "trainPatience": "trainPatienceSpinBox", "trainDevice": "trainDeviceSelector",
        "trainPrecision": "trainPrecisionSelector", "trainSeed": "trainSeedSpinBox",
        "trainRegistry": "trainRegistryPathLineEdit", "trainModelId": "trainModelIdLineEdit"})

    def __init__(self, owner):
        self.owner = owner  # the panel: its logic may be replaced (tests do)
        self.widget = slicer.util.loadUI(owner.resourcePath("UI/DeepSegmentTrain.ui"))
        self.ui = slicer.util.childWidgetVariables(self.widget)
        self.tableNode = None
        self.chartNode = None
        self.poller = JobPoller(self.showProgress, self.onFinished, onLog=self.onLog)
        ui = self.ui
        for kind, label in self.DATA_KINDS:
            ui.trainDataSelector.addItem(label, kind)
        for kind, label in DeepSegmentLogic.TRAINING_NETWORKS:
            ui.trainNetworkSelector.addItem(label, kind)
        for request, label in self.logic.deviceChoices():
            ui.trainDeviceSelector.addItem(label, request)
        for precision, label in DeepSegmentLogic.PRECISION_LABELS.items():
            ui.trainPrecisionSelector.addItem(label, precision)
        ui.trainProgressBar.visible = False
        # A chart of the scene in the panel itself: the curves stay in sight while the training runs.
        self.plotView = slicer.qMRMLPlotView()
        self.plotView.setMRMLScene(slicer.mrmlScene)
        self.plotView.setMinimumHeight(200)
        ui.trainPlotFrame.layout().addWidget(self.plotView)
        ui.trainPlotFrame.visible = False
        ui.trainDataSelector.connect("currentIndexChanged(int)", self.updateState)
        ui.trainNetworkSelector.connect("currentIndexChanged(int)", self.updateState)
        for pathLineEdit in (ui.trainExportPathLineEdit, ui.trainCaseListPathLineEdit, ui.trainOutputPathLineEdit):
            pathLineEdit.connect("currentPathChanged(QString)", self.updateState)
        ui.trainButton.connect("clicked(bool)", self.onTrainOrCancel)
        owner.parameters.bindWidgets(ui, self.PARAMETERS)
        self.updateModels()

    @property
    def logic(self):
        return self.owner.logic

    def dataPath(self):
        ui = self.ui
        return (ui.trainExportPathLineEdit if ui.trainDataSelector.currentData == "export"
                else ui.trainCaseListPathLineEdit).currentPath

    def updateModels(self):
        """The registry models that can be fine-tuned, in the base model list."""
        selector = self.ui.trainBaseModelSelector
        current = selector.currentData
        selector.clear()
        for modelId, label in self.logic.fineTuningChoices():
            selector.addItem(label, modelId)
        selector.setCurrentIndex(max(selector.findData(current), 0) if current else 0)
        self.owner.parameters.refresh("trainBaseModel")
        self.updateState()

    def updateState(self, _unused=None):
        ui = self.ui
        export = ui.trainDataSelector.currentData == "export"
        for widget in (ui.trainExportLabel, ui.trainExportPathLineEdit):
            widget.visible = export
        for widget in (ui.trainCaseListLabel, ui.trainCaseListPathLineEdit):
            widget.visible = not export
        fineTuning = ui.trainNetworkSelector.currentData == "finetune"
        for widget in (ui.trainBaseModelLabel, ui.trainBaseModelSelector):
            widget.visible = fineTuning
        for widget in (ui.trainPatchLabel, ui.trainPatchLineEdit):
            widget.visible = not fineTuning  # a fine-tuned model keeps its patch size
        if self.poller.busy:
            return
        ui.trainButton.enabled = bool(self.dataPath()) and bool(ui.trainOutputPathLineEdit.currentPath) and (
            not fineTuning or bool(ui.trainBaseModelSelector.currentData))

    def options(self):
        """The settings as the widgets show them (the Logic's ``trainingTask`` keywords)."""
        ui = self.ui
        return {"network": ui.trainNetworkSelector.currentData,
                "baseModel": ui.trainBaseModelSelector.currentData or "", "patchSize": ui.trainPatchLineEdit.text,
                "labels": ui.trainLabelsPathLineEdit.currentPath,
                "epochs": ui.trainEpochsSpinBox.value, "steps_per_epoch": ui.trainStepsSpinBox.value,
                "batch_size": ui.trainBatchSpinBox.value, "learning_rate": ui.trainLearningRateSpinBox.value,
                "patience": ui.trainPatienceSpinBox.value, "device": ui.trainDeviceSelector.currentData,
                "precision": ui.trainPrecisionSelector.currentData, "seed": ui.trainSeedSpinBox.value,
                "registry": ui.trainRegistryPathLineEdit.currentPath, "model_id": ui.trainModelIdLineEdit.text.strip()}

    def onTrainOrCancel(self):
        ui = self.ui
        if self.poller.busy:
            self.poller.cancel()
            ui.trainStatusLabel.text = _("Cancelling…")
            return
        try:
            settings = self.logic.trainingSettings(self.dataPath(), ui.trainOutputPathLineEdit.currentPath,
                                                   **self.options())
            if not self.dependenciesReady(settings):
                return
            task = self.logic.trainingTask(settings)
        except DeepSegmentLogic.TRAINING_USER_ERRORS as error:
            ui.trainStatusLabel.text = _("Training could not start: {error}").format(error=error)
            return
        self.tableNode, self.chartNode = self.logic.trainingCurveNodes(self.tableNode, self.chartNode)
        self.logic.showTrainingCurves(self.plotView, self.chartNode)
        ui.trainPlotFrame.visible = True
        self.poller.follow(task)
        ui.trainButton.text = _("Cancel")
        ui.trainProgressBar.visible = True
        ui.trainProgressBar.value = 0
        ui.trainStatusLabel.text = _("Starting…")

    def dependenciesReady(self, settings):
        """Whether what the training needs is installed, after offering to install it (MONAI for a new network)."""
        missing = self.logic.missingTrainingRequirements(settings)
        if not missing:
            return True
        if self.logic.installTrainingDependencies(missing):
            return True
        self.ui.trainStatusLabel.text = _("Training a new network needs {packages}: it was not installed.").format(
            packages=", ".join(missing))
        return False

    def showProgress(self, progress):
        self.ui.trainProgressBar.value = int((progress.fraction or 0.0) * 100)
        self.ui.trainStatusLabel.text = _("Cancelling…") if self.poller.task.cancel_requested else progress.text

    def onLog(self, record):
        """Each finished epoch adds a row to the curves' table."""
        if record.level == EPOCH_LOG_LEVEL:
            self.logic.addTrainingEpoch(self.tableNode, json.loads(record.text))
            self.plotView.fitToContent()

    def onFinished(self, task):
        ui = self.ui
        ui.trainButton.text = _("Train")
        ui.trainProgressBar.visible = False
        if task.state == "succeeded":
            ui.trainStatusLabel.text = self.logic.trainingSummary(task.result)
            self.owner.updateModelList()
            self.updateModels()
            modelSelector = self.owner.ui.modelSelector
            modelSelector.setCurrentIndex(max(modelSelector.findData(task.result.model_id), 0))
        elif task.state == "cancelled":
            ui.trainStatusLabel.text = _("Cancelled. Train again with the same settings and folder to continue.")
        else:
            ui.trainStatusLabel.text = _("Training failed: {error}").format(error=task.error)
        self.updateState()

    def cleanup(self):
        self.poller.stop()


class LiveSection:
    """The panel's Live section: a 2D model follows a volume (a stream OpenIGTLinkIF updates, a sequence browser's
    recording) and segments every new frame into a label map or segmentation, with the rate, the latency and the
    dropped frames shown while it runs. Decisions are the Logic's (``startLive``, ``stopLive``, ``liveStatus``),
    so a session started from the console shows here too."""

    REFRESH_MSEC = 250
    PARAMETERS = types.MappingProxyType({
        "liveModel": "liveModelSelector", "liveInput": "liveInputSelector", "liveOutput": "liveOutputSelector",
        "liveDevice": "liveDeviceSelector", "liveThreads": "liveThreadsSpinBox"})

    def __init__(self, owner):
        self.owner = owner  # the panel: its logic may be replaced (tests do)
        self.widget = slicer.util.loadUI(owner.resourcePath("UI/DeepSegmentLive.ui"))
        self.ui = slicer.util.childWidgetVariables(self.widget)
        ui = self.ui
        for selector in (ui.liveInputSelector, ui.liveOutputSelector):
            selector.setMRMLScene(slicer.mrmlScene)
        ui.liveInputSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateState)
        ui.liveModelSelector.connect("currentIndexChanged(int)", self.updateState)
        ui.liveStartButton.connect("clicked(bool)", self.onStartOrStop)
        self._timer = qt.QTimer()
        self._timer.setInterval(self.REFRESH_MSEC)
        self._timer.connect("timeout()", self.showStatus)
        owner.parameters.bindWidgets(ui, self.PARAMETERS)
        self.updateChoices()

    @property
    def logic(self):
        return self.owner.logic

    def updateChoices(self):
        """Models and devices from the Logic, keeping the current choices where they remain."""
        for selector, choices in ((self.ui.liveModelSelector, self.logic.modelChoices()),
                                  (self.ui.liveDeviceSelector, self.logic.deviceChoices())):
            current = selector.currentData
            selector.blockSignals(True)
            selector.clear()
            for value, label in choices:
                selector.addItem(label, value)
            selector.setCurrentIndex(max(selector.findData(current) if current else -1, 0))
            selector.blockSignals(False)
        for name in ("liveModel", "liveDevice"):
            self.owner.parameters.refresh(name)
        self.showStatus()

    def updateState(self, _unused=None):
        active = self.logic.liveStatus().active
        for widget in (self.ui.liveModelSelector, self.ui.liveInputSelector, self.ui.liveOutputSelector,
                       self.ui.liveDeviceSelector, self.ui.liveThreadsSpinBox):
            widget.enabled = not active
        self.ui.liveStartButton.text = _("Stop") if active else _("Start")
        self.ui.liveStartButton.enabled = active or (
            bool(self.ui.liveModelSelector.currentData) and self.ui.liveInputSelector.currentNode() is not None)

    def onStartOrStop(self):
        if self.logic.liveStatus().active:
            self.logic.stopLive()
            self.showStatus()
            return
        if not self.owner.torchReady():
            self.ui.liveStatusLabel.text = self.owner.ui.stageLabel.text
            return
        try:
            ui = self.ui
            output = self.logic.startLive(ui.liveModelSelector.currentData, ui.liveInputSelector.currentNode(),
                                          ui.liveOutputSelector.currentNode(), device=ui.liveDeviceSelector.currentData,
                                          threads=ui.liveThreadsSpinBox.value or None)
        except DeepSegmentLogic.LIVE_USER_ERRORS as error:
            self.ui.liveStatusLabel.text = _("Live segmentation could not start: {error}").format(error=error)
            return
        self.ui.liveOutputSelector.setCurrentNode(output)
        self._timer.start()
        self.showStatus()

    def showStatus(self):
        status = self.logic.liveStatus()
        skipped = " " + _("Frames skipped: {reason}").format(reason=status.problem) if status.problem else ""
        self.ui.liveStatusLabel.text = status.message + skipped
        self.ui.liveStatisticsLabel.text = status.summary() if status.received else ""
        if not status.active:
            self._timer.stop()
        self.updateState()

    def enter(self):
        self.updateChoices()
        if self.logic.liveStatus().active:
            self._timer.start()

    def exit(self):
        """Leaving the module stops live segmentation: nothing would show its state or stop it otherwise."""
        if self.logic.liveStatus().active:
            self.logic.stopLive(_("Stopped: the Deep Segment module was left."))
        self._timer.stop()
        self.showStatus()

    def cleanup(self):
        self._timer.stop()
        self.logic.stopLive()


#
# DeepSegmentLogic
#


class RunResult:
    """A finished run: the labels (registry or package ``Label``s), the engine's or container's result, the
    input volume node it belongs to, and the seconds it took."""

    def __init__(self, labels, result, inputNode, seconds):
        self.labels = labels
        self.result = result
        self.inputNode = inputNode
        self.seconds = seconds


class LiveSession(VTKObservationMixin):
    """Live mode in the scene (DeepSegmentLogic.startLive): every new frame of ``inputNode`` goes to ``stream`` (a
    DeepSegmentLib ``LiveStream``: the model in a worker process, newest frame first), and every label map that
    comes back is put into ``outputNode`` (a label map volume, or a segmentation) at the frame's place and under
    its parent transform, on the main thread.

    A new frame is the volume's ImageDataModifiedEvent, as aigt's live modules observe it: OpenIGTLinkIF fires it
    once it has set a received image and its geometry, a sequence browser once it shows another item. A QTimer
    polls the stream every few milliseconds; nothing runs in a thread of Slicer's process. Closing the scene, or
    removing the input or the output, stops it.
    """

    POLL_INTERVAL_MSEC = 2

    def __init__(self, stream, inputNode, outputNode):
        VTKObservationMixin.__init__(self)
        self.stream = stream
        self.inputNode = inputNode
        self.outputNode = outputNode
        self._segmentIds = None  # label value -> segment id, for a segmentation output
        self._colored = False  # whether a label map output shows the model's label names and colors
        self._labelmap = None  # the hidden label map a segmentation output is filled from
        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_INTERVAL_MSEC)
        self._timer.connect("timeout()", self.poll)

    def start(self):
        self.addObserver(self.inputNode, slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent, self.onFrame)
        self.addObserver(slicer.mrmlScene, slicer.vtkMRMLScene.StartCloseEvent, self.onSceneClose)
        self.addObserver(slicer.mrmlScene, slicer.vtkMRMLScene.NodeAboutToBeRemovedEvent, self.onNodeRemoved)
        self._timer.start()
        self.onFrame()  # the frame shown now (a paused recording, the last frame received)

    def onFrame(self, caller=None, event=None):
        arrived = time.perf_counter()
        node = self.inputNode
        pixels = self.framePixels(node)
        if pixels is None:
            return
        ijkToRAS = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(ijkToRAS)
        world = slicer.util.arrayFromVTKMatrix(ijkToRAS)
        transformNode = node.GetParentTransformNode()
        if transformNode is not None:
            if not transformNode.IsTransformToWorldLinear():
                self.stop(f"Stopped: '{node.GetName()}' is under a non-linear transform; harden it first.")
                return
            toWorld = vtk.vtkMatrix4x4()
            transformNode.GetMatrixTransformToWorld(toWorld)
            world = slicer.util.arrayFromVTKMatrix(toWorld) @ world
        # The model sees the frame in the world (a model resampling onto RAS axes needs its turn); the labels go
        # where the frame is, under its transform (they move with a tracked probe), with its origin, spacing and
        # axes as the node keeps them: the label map's geometry is the frame's to the last bit.
        directions = vtk.vtkMatrix4x4()
        node.GetIJKToRASDirectionMatrix(directions)
        geometry = (node.GetOrigin(), node.GetSpacing(), directions)
        self.stream.offer(pixels, world, arrived,
                          tag=(geometry, transformNode.GetID() if transformNode is not None else None))

    @staticmethod
    def framePixels(volumeNode):
        """The volume's voxels as an array viewing its image ((k, j, i), or (k, j, i, c) with several components),
        None when it has none. Unlike ``slicer.util.arrayFromVolume`` it takes any volume node, OpenIGTLinkIF's
        streaming volumes (video) included."""
        import vtk.util.numpy_support

        image = volumeNode.GetImageData()
        scalars = image.GetPointData().GetScalars() if image is not None else None
        if scalars is None or scalars.GetNumberOfTuples() == 0:
            return None
        components = image.GetNumberOfScalarComponents()
        shape = tuple(reversed(image.GetDimensions())) + ((components,) if components > 1 else ())
        return vtk.util.numpy_support.vtk_to_numpy(scalars).reshape(shape)

    def poll(self):
        try:
            self.stream.poll(self.apply)
        except Exception as error:  # the output changed under us (another module, a script): say so and stop
            self.stop(f"Stopped: the labels could not be put into '{self.outputNode.GetName()}': {error}")
            return
        if self.stream.state not in ("starting", "running"):  # the worker failed; the stream says why
            self._detach()

    def apply(self, result):
        """Put a label map (DeepSegmentLib ``LiveResult``) into the output node."""
        geometry, transformId = result.tag
        if self.outputNode.IsA("vtkMRMLSegmentationNode"):
            self._applyToSegmentation(result.labels, geometry, transformId)
            return
        if not self._colored and self.outputNode.IsA("vtkMRMLLabelMapVolumeNode"):
            self._colored = True
            self.outputNode.GetDisplayNode().SetAndObserveColorNodeID(self._labelColors().GetID())
        self._fill(self.outputNode, result.labels, geometry, transformId)

    def _labelColors(self):
        """A color table of the model's labels (names and colors), for a label map output."""
        model = self.stream.model
        colors = slicer.mrmlScene.AddNewNodeByClass(
            "vtkMRMLColorTableNode", slicer.mrmlScene.GenerateUniqueName(f"{model.model_id} labels"))
        colors.SetTypeToUser()
        colors.SetNumberOfColors(max(label.value for label in model.labels) + 1)
        colors.SetColor(0, "Background", 0.0, 0.0, 0.0, 0.0)
        for label in model.labels:
            colors.SetColor(label.value, label.name, *(int(label.color[i:i + 2], 16) / 255.0 for i in (1, 3, 5)), 1.0)
        return colors

    @staticmethod
    def _fill(volumeNode, labels, geometry, transformId):
        """Give ``volumeNode`` the label map and the frame's geometry in one modification: observers get one
        ModifiedEvent and one ImageDataModifiedEvent, with every voxel in place (a new image each time, as a
        sequence browser shows frames; ``slicer.util.updateVolumeFromArray`` would signal a new image before
        its voxels are written)."""
        import vtk.util.numpy_support

        image = vtk.vtkImageData()
        image.SetDimensions(*reversed(labels.shape))
        image.GetPointData().SetScalars(vtk.util.numpy_support.numpy_to_vtk(labels.ravel(), deep=True))
        origin, spacing, directions = geometry
        with slicer.util.NodeModify(volumeNode):
            volumeNode.SetOrigin(origin)
            volumeNode.SetSpacing(spacing)
            volumeNode.SetIJKToRASDirectionMatrix(directions)
            volumeNode.SetAndObserveTransformNodeID(transformId)
            volumeNode.SetAndObserveImageData(image)

    def _applyToSegmentation(self, labels, geometry, transformId):
        segmentation = self.outputNode
        if self._segmentIds is None:
            segmentation.GetSegmentation().RemoveAllSegments()
            self._segmentIds = {label.value: addLabelSegment(segmentation, label, f"label_{label.value}")
                                for label in self.stream.model.labels}
            # Slicer's segmentations logic imports from a label map node in the scene, under the segmentation's
            # transform (one that is not in the scene is taken as in the world): a hidden one, removed at the end.
            self._labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "DeepSegment live labels")
            self._labelmap.SetHideFromEditors(True)
            self._labelmap.SetSaveWithScene(False)
        if segmentation.GetTransformNodeID() != transformId:
            segmentation.SetAndObserveTransformNodeID(transformId)
        self._fill(self._labelmap, labels, geometry, transformId)
        importLabelMap(self._labelmap, segmentation, self._segmentIds)

    def onSceneClose(self, caller=None, event=None):
        self.stop("Stopped: the scene was closed.")

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeRemoved(self, caller, event, node):
        if node == self.inputNode or node == self.outputNode:
            self.stop(f"Stopped: '{node.GetName()}' was removed from the scene.")

    def statistics(self):
        return self.stream.statistics()

    def stop(self, message="Stopped."):
        """Stop following the volume, stop the worker and free its shared memory; returns the final statistics."""
        self._detach()
        return self.stream.stop(message)

    def _detach(self):
        self._timer.stop()
        self.removeObservers()
        labelmap, self._labelmap = self._labelmap, None
        if labelmap is not None and slicer.mrmlScene.IsNodePresent(labelmap):
            DeepSegmentLogic.removeTemporaryLabelmap(labelmap)


class DeepSegmentLogic(ScriptedLoadableModuleLogic):
    """Everything the panel decides, usable from Slicer's Python console.

    Models run in the model service (DeepSegmentLib.service_client): a worker process of Slicer's Python per
    compute device, which keeps loaded networks between runs. In Slicer's process a run would crawl whenever
    the GUI idles (the GUI keeps Python's GIL then), and a model that crashes or exhausts memory would take
    Slicer and the user's scene with it; in the worker it runs at full speed and a crash costs only the run.

    Example (Slicer's Python console)::

        logic = slicer.util.getModuleLogic("DeepSegment")
        segmentation = logic.segmentVolumes("brain-tissue-demo", [getNode("MRHead")])  # waits for the result
        task = logic.segmentationTask("brain-tissue-demo", [getNode("MRHead")])      # the same, not waiting:
        task.progress, task.state          # ... task.cancel(); when task.state == "succeeded":
        segmentation = logic.applyResult(task.result)
        logic.chooseDevice("auto").description                                        # e.g. 'CUDA GPU 0: ...'
    """

    QUALITIES = tuple(QUALITY_PRESETS)  # fast, accurate, exact
    DEFAULT_QUALITY = DEFAULT_QUALITY
    BACKEND_LABELS = types.MappingProxyType(
        {"inprocess": _("Slicer's Python"), "container": _("Container (Docker or Podman)")}
    )
    CONTAINER_SETTINGS = "DeepLearning/Container/"
    PRECISION_LABELS = types.MappingProxyType(
        {"auto": _("Automatic (faster where the hardware allows)"), "float32": _("Full (float32)")}
    )

    # The panel's settings saved with the scene (its parameter node) that have a default before any choice.
    PARAMETER_DEFAULTS = types.MappingProxyType({"device": "auto", "quality": DEFAULT_QUALITY, "precision": "auto",
                                                 "threads": "0", "backend": "auto"})

    # The compute devices, listed once per session in a worker process (devicesTask) for every logic.
    _deviceListing = None
    _listedDevices = None
    devicesError = None

    def __init__(self, registry=None):
        ScriptedLoadableModuleLogic.__init__(self)
        self.registry = registry if registry is not None else ModelRegistryLogic().registry
        self.service = ModelService(slicerPythonOnPath())
        self.containerSettings = self.savedContainerSettings()
        self._runtimeDescriptions = {}
        self._evaluatedCaseNodes = {}  # role -> node of the evaluated case on show
        self.live = None  # the LiveSession of startLive (kept after it ends: its final status)

    def setDefaultParameters(self, parameterNode):
        """Set the panel's settings that ``parameterNode`` lacks to their defaults."""
        setMissingParameters(parameterNode, self.PARAMETER_DEFAULTS)

    @staticmethod
    def qualityLabel(quality):
        """A quality preset's name as the panel shows it."""
        return {"exact": _("Exact"), "accurate": _("Accurate"), "fast": _("Fast")}.get(quality, quality.capitalize())

    @staticmethod
    def inputParameterName(inputName):
        """The parameter node's reference to the volume chosen for a model's input ``inputName``: a reference role
        (MRML files write references as ``role:ids;``, so only letters, digits and ``_`` are kept).

        >>> DeepSegmentLogic.inputParameterName("T1 (contrast)")
        'inputVolume_T1__contrast_'
        """
        return "inputVolume_" + re.sub(r"\W", "_", inputName, flags=re.ASCII)

    # -- devices --------------------------------------------------------------------------------------------

    def devicesTask(self):
        """The job listing the compute devices PyTorch finds (``ModelService.list_devices``), started by the first
        call of the session and after ``refreshDevices``.

        It runs in a worker process: importing PyTorch in Slicer's would block the GUI for seconds and keep
        hundreds of MB there for good. Once it has ended, ``devices()`` answers at once, for every logic; if it
        failed, with the CPU alone (``devicesError`` says why).
        """
        cls = DeepSegmentLogic
        if cls._deviceListing is None:
            cls._deviceListing = self.service.list_devices()
            cls._deviceListing.when_done(cls._devicesListed)
        return cls._deviceListing

    @staticmethod
    def _devicesListed(job):
        cls = DeepSegmentLogic
        if job is not cls._deviceListing:  # a refresh started another listing meanwhile
            return
        if job.state == "cancelled":  # its worker was stopped: list again when asked next
            cls._deviceListing = None
        elif job.error is None:
            cls._listedDevices, cls.devicesError = job.result, None
        else:
            cls._listedDevices, cls.devicesError = [cpu_device()], job.error

    def knownDevices(self):
        """The compute devices if they have been listed, else None (the listing is started); never waits."""
        self.devicesTask().poll()
        return DeepSegmentLogic._listedDevices

    def devices(self):
        """Compute devices PyTorch finds, the CPU first (listed once per session: ``devicesTask``; waits for the
        listing while Slicer stays responsive). ``refreshDevices`` looks again."""
        while self.knownDevices() is None:
            waitForJob(self.devicesTask())
        return DeepSegmentLogic._listedDevices

    def refreshDevices(self):
        DeepSegmentLogic._deviceListing = DeepSegmentLogic._listedDevices = None
        return self.devices()

    def chooseDevice(self, request="auto"):
        return choose_device(request or "auto", self.devices())

    def deviceChoices(self):
        """(request, label) pairs for a device selector: automatic choice first, then each device; the CPU alone
        while the devices are being listed (never waits)."""
        devices = self.knownDevices()
        if devices is None:
            return [("auto", _("Automatic (looking for GPUs…)")), ("cpu", cpu_device().description)]
        automatic = ("auto", _("Automatic ({device})").format(device=choose_device("auto", devices).description))
        return [automatic] + [(device.torch_name, device.description) for device in devices]

    # -- models ---------------------------------------------------------------------------------------------

    def modelChoices(self):
        """(model id, label) of every model in the registry; image-only models say they run in a container."""
        choices = []
        for model in self.registry.models():
            state = self.registry.state(model.id) if model.latest_release.files else _("container")
            choices.append((model.id, _("{title} ({state})").format(title=model.title, state=state)))
        return choices

    def backendChoices(self, modelSpec):
        """(backend, label) pairs the model's version offers: in Slicer's Python first, then its container."""
        if not modelSpec:
            return []
        _entry, version = self.registry.resolve(modelSpec)
        return [(backend, self.BACKEND_LABELS[backend]) for backend in version.backends]

    def imageParameters(self, modelSpec):
        """The typed parameters of the model's container image (ModelRegistryLib ``ImageParameter``)."""
        _entry, version = self.registry.resolve(modelSpec)
        return version.image.parameters if version.image is not None else ()

    @classmethod
    def savedContainerSettings(cls):
        """Container settings from Slicer's settings (defaults where none are saved)."""
        value = slicer.util.settingsValue
        timeout = value(cls.CONTAINER_SETTINGS + "TimeoutSeconds", 0, converter=float)
        return ContainerSettings(
            runtime=value(cls.CONTAINER_SETTINGS + "Runtime", "auto"),
            memory_limit=value(cls.CONTAINER_SETTINGS + "MemoryLimit", ""),
            timeout=timeout or None,
            run_folder=value(cls.CONTAINER_SETTINGS + "RunFolder", ""),
            keep_run_folders=value(cls.CONTAINER_SETTINGS + "KeepRunFolders", False, converter=slicer.util.toBool),
        )

    def setContainerSettings(self, settings):
        """Use ``settings`` (a ContainerSettings) from now on, and remember them for the next session."""
        self.containerSettings = settings
        stored = qt.QSettings()
        stored.setValue(self.CONTAINER_SETTINGS + "Runtime", settings.runtime)
        stored.setValue(self.CONTAINER_SETTINGS + "MemoryLimit", settings.memory_limit)
        stored.setValue(self.CONTAINER_SETTINGS + "TimeoutSeconds", settings.timeout or 0)
        stored.setValue(self.CONTAINER_SETTINGS + "RunFolder", settings.run_folder)
        stored.setValue(self.CONTAINER_SETTINGS + "KeepRunFolders", settings.keep_run_folders)

    def runtimeDescription(self, refresh=False):
        """One line on the container runtime the settings pick, or why none is usable.

        Asking a runtime takes a moment, so the answer is kept per runtime setting until ``refresh``.
        """
        choice = self.containerSettings.runtime
        if refresh or choice not in self._runtimeDescriptions:
            try:
                runtime = find_runtime(choice)
            except ContainerRuntimeNotFoundError as error:
                self._runtimeDescriptions[choice] = str(error)
            else:
                gpu = "GPU passthrough available" if runtime.gpu_arguments else "no GPU passthrough (CPU only)"
                mode = "rootless" if runtime.rootless else "rootful"
                self._runtimeDescriptions[choice] = f"{runtime.name} ({runtime.executable}, {mode}), {gpu}."
        return self._runtimeDescriptions[choice]

    def modelSummary(self, modelId):
        entry = self.registry.find(modelId) if modelId else None
        if entry is None:
            return _("No model selected: add models in the Model Registry module.")
        labels = ", ".join(label.name for label in entry.labels) or _("labels listed in the model package")
        return _("{description} Labels: {labels}.").format(description=entry.description or entry.title, labels=labels)

    def inputNames(self, modelId):
        entry = self.registry.find(modelId) if modelId else None
        if entry is None:
            return []
        return entry.input_names

    def matchInputs(self, modelId, volumeNodes):
        """For each model input, the first volume whose name matches its pattern (None where none does)."""
        entry = self.registry.find(modelId)
        if entry is None:
            return []
        if not entry.inputs:
            return [volumeNodes[-1] if volumeNodes else None]
        return [next((node for node in volumeNodes if modelInput.matches(node.GetName())), None)
                for modelInput in entry.inputs]

    # -- geometry ---------------------------------------------------------------------------------------------

    @staticmethod
    def imageFromVolumeNode(volumeNode):
        """The volume as a SimpleITK image (LPS) at its place in the world, parent transforms included.

        A non-linear parent transform cannot be expressed on a voxel grid: the user must harden it first.
        """
        ijkToRAS = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(ijkToRAS)
        transformNode = volumeNode.GetParentTransformNode()
        if transformNode is not None:
            if not transformNode.IsTransformToWorldLinear():
                raise ValueError(
                    _("Volume '{name}' is under a non-linear transform; harden the transform (Data module, right-click "
                      "the transform) before segmenting it.").format(
                        name=volumeNode.GetName())
                )
            toWorld = vtk.vtkMatrix4x4()
            transformNode.GetMatrixTransformToWorld(toWorld)
            vtk.vtkMatrix4x4.Multiply4x4(toWorld, ijkToRAS, ijkToRAS)
        return image_from_array(slicer.util.arrayFromVolume(volumeNode), slicer.util.arrayFromVTKMatrix(ijkToRAS))

    @staticmethod
    def volumeNodeFromImage(image, name, nodeClassName="vtkMRMLScalarVolumeNode"):
        """A new volume node holding a SimpleITK image at its exact place."""
        import SimpleITK as sitk

        return slicer.util.addVolumeFromArray(
            sitk.GetArrayFromImage(image), ijkToRAS=ijk_to_ras_from_image(image), name=name, nodeClassName=nodeClassName
        )

    def geometrySummary(self, volumeNode):
        """One line on the input grid as the engine sees it, or what to do when there is no input."""
        if volumeNode is None:
            return _("Select an input volume.")
        if volumeNode.GetImageData() is None:
            return _("Volume '{name}' has no voxels.").format(name=volumeNode.GetName())
        image = self.imageFromVolumeNode(volumeNode)
        size = "\u00d7".join(str(n) for n in image.GetSize())
        spacing = "\u00d7".join(f"{s:.3g}" for s in image.GetSpacing())
        alignment = "oblique axes" if is_oblique(image) else "axis-aligned"
        return _("{size} voxels, spacing {spacing} mm, {alignment}").format(
            size=size, spacing=spacing, alignment=alignment)

    # -- running --------------------------------------------------------------------------------------------

    def segmentationTask(self, modelSpec, inputNodes, device="auto", quality=DEFAULT_QUALITY, threads=None,
                         backend="auto", parameters=None, precision="auto"):
        """Start segmenting ``inputNodes`` with the model in the model service; returns the running Job.

        ``backend`` is ``inprocess`` (the model's package in Slicer's Python, in the service's worker for the
        device; the model is installed there first if needed), ``container`` (its image, supervised by the
        service; ``parameters`` are the image's) or ``auto`` (in-process when the version has a package);
        ``precision`` (in-process) is ``auto`` (reduced where the device computes it natively) or
        ``float32``. The volumes are read here, on the main thread; the worker gets them through shared
        memory and touches no MRML node. Poll the job (``job.poll()``, ``job.progress``, ``job.cancel()``);
        once it has succeeded, ``applyResult(job.result)`` puts the labels into the scene. Bad requests
        (no model, a missing input, a parameter out of range) raise here, before any work.
        """
        if not modelSpec:
            raise ValueError(_("Select a model."))
        if not inputNodes or not all(inputNodes):
            raise ValueError(_("Select a volume for every model input."))
        entry, version = self.registry.resolve(modelSpec)
        backend = version.choose_backend(backend)
        cacheDir = self.registry.store.cache_dir
        images = [self.imageFromVolumeNode(node) for node in inputNodes]
        if backend == "container":
            values = version.image.parameter_values(parameters or {})  # a bad value fails here, before any work
            if device not in ("auto", "cpu") and not device.startswith("cuda"):
                raise ValueError(_("A container can run on the CPU or a CUDA GPU, not on {device}.").format(
                    device=device))
            task = self.service.segment_in_container(
                images, entry, version, cacheDir, parameters=values,
                device="cuda" if device.startswith("cuda") else device, settings=self.containerSettings)
        else:
            deviceName = self.chooseDevice(device).torch_name
            task = self.service.segment(images, entry, version, cacheDir, device=deviceName, quality=quality.lower(),
                                        threads=threads, precision=precision)
        inputNode = inputNodes[0]
        task.description = _("segmenting {volume} with {model} ({backend})").format(
            volume=inputNode.GetName(), model=modelSpec, backend=backend)
        logger.info("Segmenting with %s %s (runtime %s, backend %s, model service worker %s): device %s, quality %s,"
                    " precision %s, threads %s%s; inputs %s", entry.id, version.version, version.runtime, backend,
                    task.pid, device, quality, precision, threads or "auto",
                    f", image parameters {parameters}" if backend == "container" else "",
                    "; ".join(f"{node.GetName()} {image.GetSize()} voxels of"
                              f" {tuple(round(spacing, 3) for spacing in image.GetSpacing())} mm"
                              for node, image in zip(inputNodes, images)))

        def toRunResult(done):
            if done.error is None:
                done.result = RunResult(done.result.labels, done.result.result, inputNode, done.result.seconds)

        task.when_done(toRunResult)
        return task

    def applyResult(self, run, segmentationNode=None):
        """Put a finished run's labels into a segmentation node (a new one unless given); main thread only."""
        if segmentationNode is None:
            name = slicer.mrmlScene.GenerateUniqueName(run.inputNode.GetName() + " segmentation")
            segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
            segmentationNode.CreateDefaultDisplayNodes()
        self.fillSegmentation(segmentationNode, run.result.labels, run.labels, run.inputNode)
        logger.info("%s: %d labels into %s", self.timingSummary(run), len(run.labels), segmentationNode.GetName())
        return segmentationNode

    def fillSegmentation(self, segmentationNode, labelImage, labels, referenceVolumeNode=None):
        """Replace the segments of ``segmentationNode`` by one per label (registry ``Label``: value, name, color,
        terminology) holding the voxels of ``labelImage`` (SimpleITK) with that value. The segmentation's grid
        is ``referenceVolumeNode``'s, else the label image's. Main thread only."""
        labelmap = self.volumeNodeFromImage(labelImage, "DeepSegment labels", "vtkMRMLLabelMapVolumeNode")
        try:
            segmentationNode.GetSegmentation().RemoveAllSegments()
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode or labelmap)
            # Every label gets a segment (an empty one when the label map has none of it), with a stable id. The
            # label map holds only these values: the engine writes no other, a container's result is checked, and
            # an evaluated case's files are read with the report's labels.
            segmentIds = {label.value: addLabelSegment(segmentationNode, label, f"label_{label.value}")
                          for label in labels}
            importLabelMap(labelmap, segmentationNode, segmentIds)
        finally:
            self.removeTemporaryLabelmap(labelmap)

    def segmentVolumes(self, modelSpec, inputNodes, device="auto", quality=DEFAULT_QUALITY, segmentationNode=None,
                       threads=None, backend="auto", parameters=None, precision="auto"):
        """Segment and wait, keeping Slicer responsive (Python console and scripts): returns the segmentation
        node. The run happens in the model service (see segmentationTask); a failure raises ModelRegistryLib's
        ``JobError`` with the reason, a cancel ``JobCancelledError``, and the scene is then left unchanged."""
        task = self.segmentationTask(modelSpec, inputNodes, device, quality, threads, backend, parameters,
                                     precision=precision)
        return self.applyResult(runJob(task), segmentationNode)

    @staticmethod
    def timingSummary(run):
        stages = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in run.result.timings.items())
        return _("Segmented in {seconds} s on {device}, {precision} ({stages}).").format(
            seconds=f"{run.seconds:.1f}", device=run.result.device, precision=run.result.precision, stages=stages)

    @staticmethod
    def failureText(task):
        if task.state == "cancelled":
            return _("Cancelled: the scene was not changed.")
        if task.error.kind == "crash":
            return _("Segmentation failed; the scene was not changed and the next run starts a new service."
                     " {error}").format(error=task.error)
        return _("Segmentation failed: {error}").format(error=task.error)

    # -- PyTorch ---------------------------------------------------------------------------------------------

    @staticmethod
    def torchStatus():
        return torch_status()

    @staticmethod
    def pytorchUtilsLogic():
        """The logic of the PyTorch extension's PyTorchUtils module; None when that extension is not installed."""
        if not hasattr(slicer.modules, PYTORCH_MODULE.lower()):
            return None
        import PyTorchUtils  # Slicer's module factory puts every module's folder on sys.path

        return PyTorchUtils.PyTorchUtilsLogic()

    def installTorch(self, askConfirmation=True):
        """Install PyTorch through Slicer's PyTorch extension; True once PyTorch can be imported.

        The extension's PyTorchUtils picks the build for this computer with light-the-torch (CUDA for the
        NVIDIA driver's version, else the CPU build) and pip-installs torch and torchvision, which leaves
        Slicer's numpy, SimpleITK and vtk as they are. With ``askConfirmation`` it asks the user first (not in
        testing mode), and False is returned when the user declines. Raises PyTorchExtensionMissingError, which
        says what to install, when the extension is missing (a Slicer without it, a development build).
        """
        if torch_installed():  # found without importing it: Slicer's process need not pay for PyTorch
            return True
        torchLogic = self.pytorchUtilsLogic()
        if torchLogic is None:
            raise PyTorchExtensionMissingError(PYTORCH_EXTENSION_MISSING)
        if torchLogic.installTorch(askConfirmation=askConfirmation) is None:
            return False
        DeepSegmentLogic._deviceListing = DeepSegmentLogic._listedDevices = None  # list again, with PyTorch
        return torch_installed()

    # -- batch runs ----------------------------------------------------------------------------------------

    BATCH_SOURCES = (("cases", _("A case list")), ("images", _("A folder of images")),
                     ("dicom", _("A folder of DICOM series")))
    # Case-list statuses of the cases nobody has annotated yet (the panel's "Only cases not annotated yet").
    NOT_ANNOTATED = (TO_DO, PRE_ANNOTATED)
    BATCH_USER_ERRORS = (ValueError, RegistryError, OSError)

    def cohortTask(self, modelSpec, source, outputFolder, kind="cases", caseFilter="", statuses=(), device="auto",
                   quality=DEFAULT_QUALITY, precision="auto", threads=0, workers=0, outputFormat=DEFAULT_FORMAT,
                   preAnnotate=False, force=False, rayAddress=""):
        """Start running ``modelSpec`` over every case of ``source`` into ``outputFolder``, in a worker process;
        returns the running job (``progress``: cases finished, those running, the time left; ``cancel()``;
        ``result``: the ``DeepSegmentLib.batch.BatchSummary``).

        ``kind`` says what ``source`` is: ``cases`` (a Training Data Export case list), ``images`` or ``dicom`` (a
        folder). ``caseFilter`` holds case id patterns (``"ct0*, ct1?"``), ``statuses`` case-list statuses (only
        those cases run). ``workers`` local worker processes each hold the model (0: automatic), with ``threads``
        PyTorch threads each (0: automatic). ``preAnnotate`` records the results in the case list as
        pre-annotations; ``force`` runs cases whose result is up to date too; ``rayAddress`` (``auto`` or
        ``HOST:PORT``) runs on that Ray cluster. Bad requests raise here, before any work.
        """
        if not modelSpec:
            raise ValueError(_("Select a model."))
        if not outputFolder:
            raise ValueError(_("Choose the output folder."))
        settings = BatchSettings(
            output_format=outputFormat, device=device or "auto", quality=quality, precision=precision,
            workers=int(workers or 0), threads=int(threads or 0), patterns=tuple(parse_case_filter(caseFilter)),
            statuses=tuple(statuses), pre_annotate=bool(preAnnotate), force=bool(force),
            ray_address=(rayAddress or "").strip())
        settings = check_batch_request(kind, source, outputFolder, settings)
        arguments = {"model": modelSpec, "kind": kind, "source": source, "output_dir": outputFolder,
                     "settings": settings, "cache_dir": self.registry.store.cache_dir}
        try:
            arguments["entry"], arguments["version"] = self.registry.resolve(modelSpec)
        except RegistryError:
            if self.registry.installed_model(modelSpec) is None:
                raise
        # The batch's own worker processes run the model: this job coordinates them (and must stop them when
        # cancelled, hence its long grace).
        logger.info("Batch: %s over the %s at %s into %s: %s", modelSpec, kind, source, outputFolder, settings)
        return startJob("DeepSegmentLib.batch:run_batch", arguments,
                        _("running {model} on the cases of {source}").format(model=modelSpec, source=source),
                        sysPath=[_MODULE_FOLDER], cancel_grace=60.0)

    def segmentCohort(self, modelSpec, source, outputFolder, **options):
        """:meth:`cohortTask`, waited for while Slicer stays responsive (Python console and scripts): returns the
        ``BatchSummary``, or raises ModelRegistryLib's ``JobError`` saying why the batch failed (a failing case
        only fails itself: see the summary)."""
        summary = runJob(self.cohortTask(modelSpec, source, outputFolder, **options))
        self.refreshAnnotationCaseList(summary)
        return summary

    @staticmethod
    def canEvaluateCohort(summary):
        """Whether a batch's results can be measured against its case list's annotations."""
        return summary.source.lower().endswith(".csv") and any(case.output for case in summary.cases)

    @staticmethod
    def refreshAnnotationCaseList(summary):
        """After a batch recorded pre-annotations, Training Data Export reads the case list again if it has it open,
        so that its next save keeps them, and shows them in its case table. Returns whether it did."""
        if not summary.pre_annotated:
            return False
        annotationPanel = slicer.util.getModuleWidget("TrainingDataExport")
        annotation = annotationPanel.logic
        if not annotation.caseListPath or os.path.normcase(annotation.caseListPath) != os.path.normcase(
                os.path.abspath(summary.source)):
            return False
        annotation.loadCaseList(annotation.caseListPath)
        annotationPanel.updateCaseTable()
        return True

    # -- evaluation ----------------------------------------------------------------------------------------

    EVALUATION_CASE_COLUMNS = ("Case", "Mean Dice", "Worst label", "Its Dice", "Largest HD95 (mm)", "Notes")

    @staticmethod
    def evaluationColumnTitles():
        """The case list's column titles, in ``EVALUATION_CASE_COLUMNS`` order, in the user's language."""
        return [_("Case"), _("Mean Dice"), _("Worst label"), _("Its Dice"), _("Largest HD95 (mm)"), _("Notes")]
    EVALUATION_USER_ERRORS = (EvaluationError, ValueError, OSError)
    EVALUATION_MEASURES = (("dice", "Dice"), ("hd95_mm", "HD95 (mm)"), ("msd_mm", "MSD (mm)"), ("nsd", "NSD"),
                           ("volume_difference_percent", "Volume difference (%)"))

    def evaluateSegmentations(self, referenceNode, predictionNode, tolerance=DEFAULT_TOLERANCE_MM,
                              referenceVolumeNode=None):
        """Measure ``predictionNode`` against ``referenceNode`` (segmentation nodes), segment by segment; returns
        an ``EvaluationReport`` with one case.

        Prediction segments are matched to the reference's by name, else terminology; a reference segment
        without a match is compared with an empty one. Both are taken on ``referenceVolumeNode``'s grid, else on
        the reference segmentation's own geometry (Slicer resamples the prediction there, nearest neighbour).
        """
        if referenceNode is None or predictionNode is None:
            raise ValueError(_("Select a reference and a prediction segmentation."))
        referenceIds, referenceSegments = self._segments(referenceNode)
        predictionIds, predictionSegments = self._segments(predictionNode)
        if not referenceIds:
            raise ValueError(_("The reference segmentation '{name}' has no segment.").format(
                name=referenceNode.GetName()))
        matches = match_segments([(s.GetName(), segmentTerminologyEntry(s)) for s in referenceSegments],
                                 [(s.GetName(), segmentTerminologyEntry(s)) for s in predictionSegments])
        geometryNode = referenceVolumeNode or self._referenceGeometryNode(referenceNode)
        try:
            spacing = self.imageFromVolumeNode(geometryNode).GetSpacing()
            labels, results = [], []
            for position, (segmentId, segment, match) in enumerate(zip(referenceIds, referenceSegments, matches)):
                color = "#{:02x}{:02x}{:02x}".format(*(round(c * 255) for c in segment.GetColor()))
                labels.append(Label(position + 1, segment.GetName(), color))
                referenceMask = self._segmentMask(referenceNode, segmentId, geometryNode)
                predictionMask = (np.zeros_like(referenceMask) if match is None else
                                  self._segmentMask(predictionNode, predictionIds[match], geometryNode))
                results.append(mask_metrics(referenceMask, predictionMask, spacing, tolerance, labels[-1]))
        finally:
            if geometryNode is not referenceVolumeNode:
                self.removeTemporaryLabelmap(geometryNode)
        notes = [f"prediction segment '{segment.GetName()}' matches no reference segment"
                 for index, segment in enumerate(predictionSegments) if index not in matches]
        case = CaseEvaluation(f"{referenceNode.GetName()} / {predictionNode.GetName()}", referenceNode.GetName(),
                              predictionNode.GetName(), labels=results, notes=notes)
        return EvaluationReport([case], labels, float(tolerance), source={
            "reference node": referenceNode.GetName(), "prediction node": predictionNode.GetName()})

    @staticmethod
    def _segments(segmentationNode):
        segmentation = segmentationNode.GetSegmentation()
        ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
        return ids, [segmentation.GetSegment(segmentId) for segmentId in ids]

    @staticmethod
    def _segmentMask(segmentationNode, segmentId, geometryNode):
        """The segment as a boolean array on ``geometryNode``'s grid (Slicer resamples it there, nearest
        neighbour, parent transforms included). Unlike ``slicer.util.arrayFromSegmentBinaryLabelmap``, no display
        node is left behind in the scene."""
        labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "DeepSegment evaluation mask")
        try:
            segmentIds = vtk.vtkStringArray()
            segmentIds.InsertNextValue(segmentId)
            if not slicer.modules.segmentations.logic().ExportSegmentsToLabelmapNode(segmentationNode, segmentIds,
                                                                                      labelmap, geometryNode):
                raise ValueError(_("Segment '{segmentId}' of '{name}' could not be exported.").format(
                    segmentId=segmentId, name=segmentationNode.GetName()))
            return slicer.util.arrayFromVolume(labelmap) > 0
        finally:
            DeepSegmentLogic.removeTemporaryLabelmap(labelmap)

    @staticmethod
    def removeTemporaryLabelmap(labelmap):
        """Remove a label map node used for a computation, with its display node and the color table a
        segmentation export made for it (Slicer's shared color tables are singletons and stay)."""
        display = labelmap.GetDisplayNode()
        if display is not None:
            color = display.GetColorNode()
            slicer.mrmlScene.RemoveNode(display)
            if color is not None and not color.GetSingletonTag():
                slicer.mrmlScene.RemoveNode(color)
        slicer.mrmlScene.RemoveNode(labelmap)

    @staticmethod
    def _referenceGeometryNode(segmentationNode):
        """A temporary label map on the segmentation's reference geometry (the caller removes it)."""
        labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "DeepSegment evaluation grid")
        if not slicer.modules.segmentations.logic().ExportAllSegmentsToLabelmapNode(
                segmentationNode, labelmap, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY):
            DeepSegmentLogic.removeTemporaryLabelmap(labelmap)
            raise ValueError(_("The segmentation '{name}' has no geometry to compare on.").format(
                name=segmentationNode.GetName()))
        return labelmap

    def evaluationTask(self, prediction, reference=None, cases=None, labels=None, tolerance=DEFAULT_TOLERANCE_MM,
                       resample=True, reportFolder=""):
        """Start measuring a prediction folder against a reference folder or a case list's annotations (one of
        ``reference`` and ``cases``) in a worker process; returns the running job (``progress``, ``cancel()``,
        ``state``, ``result``: the ``EvaluationReport``, also written into ``reportFolder`` when given).
        ``labels`` is a schema file, values ("1,2,5") or empty (the inputs' own). Inputs are paired here, so
        that a missing folder or a bad case list fails at once.

        A cohort takes minutes (surface distances of every label of every case): in a worker process of
        Slicer's Python it runs at full speed while the GUI stays responsive, where a thread of Slicer's
        process would crawl (the GUI keeps Python's GIL while it idles).
        """
        if bool(reference) == bool(cases):
            raise ValueError(_("Give either a reference folder or a case list."))
        if not prediction:
            raise ValueError(_("Select the prediction folder."))
        schema = parse_labels(labels)
        pairing = pair_case_list(cases, prediction) if cases else pair_folders(reference, prediction)
        if not pairing.pairs:
            raise ValueError(_("No prediction in {prediction} matches a reference case.").format(prediction=prediction))
        arguments = {"pairing": pairing, "labels": schema, "tolerance_mm": tolerance, "resample": resample,
                     "report_folder": reportFolder}
        logger.info("Evaluating %d cases (predictions %s) with tolerance %s mm", len(pairing.pairs), prediction,
                    tolerance)
        return startJob("DeepSegmentLib.evaluation_cohort:evaluate_and_report", arguments,
                        _("evaluating {count} cases").format(count=len(pairing.pairs)), sysPath=[_MODULE_FOLDER])

    def evaluateCohort(self, prediction, reference=None, cases=None, labels=None, tolerance=DEFAULT_TOLERANCE_MM,
                       resample=True, reportFolder=""):
        """:meth:`evaluationTask`, waited for while Slicer stays responsive (Python console and scripts): returns
        the ``EvaluationReport``, or raises ModelRegistryLib's ``JobError`` saying why it failed."""
        return runJob(self.evaluationTask(prediction, reference, cases, labels, tolerance, resample, reportFolder))

    def showEvaluation(self, report, tableNode=None, chartNode=None):
        """``(table node, plot chart node)`` of a report: one table row per case (per label: Dice, HD95, MSD,
        NSD and volume difference; NaN where undefined) and a chart of each label's Dice per case. Given nodes
        are reused."""
        if tableNode is None:
            tableNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode",
                                                           slicer.mrmlScene.GenerateUniqueName("Evaluation"))
        table = tableNode.GetTable()
        with slicer.util.NodeModify(tableNode):
            tableNode.RemoveAllColumns()
            caseColumn = vtk.vtkStringArray()
            caseColumn.SetName("Case")
            numberColumn = vtk.vtkDoubleArray()
            numberColumn.SetName("Case number")
            measureColumns = []
            for label in report.labels:
                for measure, title in self.EVALUATION_MEASURES:
                    column = vtk.vtkDoubleArray()
                    column.SetName(f"{label.name} {title}")
                    measureColumns.append((label.value, measure, column))
            statusColumn = vtk.vtkStringArray()
            statusColumn.SetName("Status")
            for number, case in enumerate(report.cases, start=1):
                caseColumn.InsertNextValue(case.case_id)
                numberColumn.InsertNextValue(number)
                for value, measure, column in measureColumns:
                    result = case.label(value)
                    column.InsertNextValue(result.measure(measure) if result is not None else float("nan"))
                statusColumn.InsertNextValue(case.error or "; ".join(
                    f"{result.name}: {result.status}" for result in case.labels if result.status != BOTH_PRESENT))
            for column in (caseColumn, numberColumn, *(column for *_measure, column in measureColumns), statusColumn):
                table.AddColumn(column)
        tableNode.Modified()
        if chartNode is None:
            chartNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotChartNode",
                                                           slicer.mrmlScene.GenerateUniqueName("Evaluation Dice"))
        for index in range(chartNode.GetNumberOfPlotSeriesNodes() - 1, -1, -1):
            series = chartNode.GetNthPlotSeriesNode(index)
            chartNode.RemoveNthPlotSeriesNodeID(index)
            slicer.mrmlScene.RemoveNode(series)
        chartNode.SetTitle("Dice per case")
        chartNode.SetXAxisTitle("Case number")
        chartNode.SetYAxisTitle("Dice")
        for label in report.labels:
            series = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{label.name} Dice")
            series.SetAndObserveTableNodeID(tableNode.GetID())
            series.SetXColumnName("Case number")
            series.SetYColumnName(f"{label.name} Dice")
            series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
            series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleNone)
            series.SetColor(*(int(label.color[i:i + 2], 16) / 255.0 for i in (1, 3, 5)))
            chartNode.AddAndObservePlotSeriesNodeID(series.GetID())
        return tableNode, chartNode

    @staticmethod
    def showEvaluationInViews(tableNode, chartNode):
        """Show the table and the chart in Slicer's views (nothing to do without views: headless, tests)."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:
            return
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotTableView)
        applicationLogic = slicer.app.applicationLogic()
        selection = applicationLogic.GetSelectionNode()
        selection.SetActiveTableID(tableNode.GetID())
        applicationLogic.PropagateTableSelection()
        selection.SetActivePlotChartID(chartNode.GetID())
        applicationLogic.PropagatePlotChartSelection()

    @staticmethod
    def evaluationCaseRows(report):
        """``[(case index, cells)]`` for the panel's case list (:attr:`EVALUATION_CASE_COLUMNS`): measured cases
        with the lowest mean Dice first, then the others (failed, or nothing to measure), by case id."""
        ranked = {item["case_id"]: item for item in worst_cases(report, count=len(report.cases))}
        order = [case.case_id for case in report.cases]
        rows = []
        for index, case in enumerate(report.cases):
            item = ranked.get(case.case_id)
            if item is None:
                cells = [case.case_id, "", "", "", "", case.error or "; ".join(case.notes)]
            else:
                hd95 = item["largest_hd95_mm"]
                cells = [case.case_id, f"{item['mean_dice']:.3f}", item["worst_label"], f"{item['worst_dice']:.3f}",
                         "" if hd95 is None else ("∞" if hd95 == float("inf") else f"{hd95:.2f}"),
                         "; ".join(case.notes)]
            rows.append((index, cells))
        rank = {case_id: position for position, case_id in enumerate(ranked)}
        rows.sort(key=lambda row: (rank.get(order[row[0]], len(rank)), order[row[0]]))
        return rows

    @staticmethod
    def evaluationSummary(report):
        """One line: cases measured and failed, mean Dice per label."""
        means = []
        for label in report.labels:
            values = [result.dice for case in report.cases if not case.error for result in case.labels
                      if result.value == label.value and np.isfinite(result.dice)]
            means.append(f"{label.name} {np.mean(values):.3f}" if values else f"{label.name} –")
        measured = len(report.cases) - len(report.failed)
        text = _("1 case measured") if measured == 1 else _("{count} cases measured").format(count=measured)
        return text + _(", {failed} failed. Mean Dice: {means}.").format(failed=len(report.failed),
                                                                          means=", ".join(means))

    def loadEvaluatedCase(self, report, caseIndex):
        """Load case ``caseIndex`` of a cohort report: its image (when the case list gives one), the reference
        (outlined) and the prediction (filled) as segmentations, on the grid they were compared on. The nodes of
        the case loaded before are removed. Returns the new nodes by role (``image``, ``reference``,
        ``prediction``); a comparison of two segmentation nodes has nothing to load (``{}``)."""
        if "reference node" in report.source:
            return {}
        case = report.cases[caseIndex]
        if not os.path.isfile(case.reference) or not os.path.isfile(case.prediction):
            raise ValueError(_("Case {case_id} has no reference and prediction files to load.").format(
                case_id=case.case_id))
        for node in self._evaluatedCaseNodes.values():
            if node is not None and slicer.mrmlScene.IsNodePresent(node):
                slicer.mrmlScene.RemoveNode(node)
        self._evaluatedCaseNodes = {}
        reference, prediction, labels, _pair = read_case_labels(CasePair(case.case_id, case.reference, case.prediction),
                                                            report.labels)
        nodes = {"image": slicer.util.loadVolume(case.image, {"name": f"{case.case_id} image"})
                 if case.image and os.path.isfile(case.image) else None}
        for role, image in (("reference", reference), ("prediction", prediction)):
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{case.case_id} {role}")
            node.CreateDefaultDisplayNodes()
            self.fillSegmentation(node, image, labels)
            display = node.GetDisplayNode()
            display.SetVisibility2DFill(role == "prediction")  # the reference as an outline over the prediction
            display.SetVisibility2DOutline(True)
            nodes[role] = node
        self._evaluatedCaseNodes = nodes
        return nodes

    def installRuntimeDependencies(self, modelSpec, confirm):
        """Install what the runtime of ``modelSpec``'s version needs (nnunetv2, MONAI...) when it is missing: True
        when it is there. ``confirm(text)`` asks the user first (see :meth:`installRequirements`)."""
        if not modelSpec:
            return True
        _entry, version = self.registry.resolve(modelSpec)
        missing = missing_requirements(version.runtime)
        if not missing:
            return True
        self.installRequirements(missing, f"Models run by {version.runtime} need {', '.join(missing)}.", confirm)
        return not missing_requirements(version.runtime)

    @staticmethod
    def installRequirements(missing, why, confirm):
        """Install the pip requirements ``missing`` into Slicer's Python after ``confirm(text)`` (``why`` opens the
        question) says yes, every installed package pinned: pip may add packages, never change Slicer's numpy,
        SimpleITK or vtk, nor PyTorch (an install that would is refused by pip and changes nothing). The worker
        processes that run models and trainings use this same Python, so they find what is installed here.
        Returns whether the user agreed."""
        if not confirm(why + " " + _("Install now? Packages already installed (Slicer's numpy, SimpleITK,"
                                     " PyTorch...) are kept as they are.")):
            return False
        pins = os.path.join(slicer.app.temporaryPath, "DeepSegment-pip-constraints.txt")
        write_text_atomically(pins, "\n".join(pinned_constraints(installed_packages())) + "\n")
        slicer.util.pip_install(install_arguments(missing, pins))
        importlib.invalidate_caches()
        return True

    # -- training -------------------------------------------------------------------------------------------

    TRAINING_NETWORKS = (("unet", _("MONAI U-Net (new)")), ("segresnet", _("MONAI SegResNet (new)")),
                         ("finetune", _("Fine-tune a registry model")))
    TRAINING_USER_ERRORS = (TrainingError, ValueError, OSError)
    TRAINING_CURVE_COLUMNS = ("Epoch", "Loss", "Validation Dice")

    def fineTuningChoices(self):
        """(model id, title) of the registry models whose latest version runs in Slicer's Python (a package)."""
        return [(model.id, model.title) for model in self.registry.models() if model.latest_release.files]

    @staticmethod
    def parsePatchSize(text):
        """A patch size typed as three whole numbers (x y z voxels); None for an empty text (planned)."""
        words = str(text or "").replace(",", " ").replace("x", " ").split()
        if not words:
            return None
        if len(words) != 3 or not all(word.isdigit() and int(word) > 0 for word in words):
            raise ValueError(_("The patch size must be three whole numbers of voxels (x y z), not {text}.").format(
                text=repr(text)))
        return tuple(int(word) for word in words)

    def trainingSettings(self, data, output, network="unet", baseModel="", patchSize="", **options):
        """The checked ``TrainingSettings`` (DeepSegmentLib.training) of a training on ``data`` (an export folder or
        index file, or a case list) into the folder ``output``.

        ``network`` is ``unet``, ``segresnet``, ``finetune`` (with ``baseModel``, a registry ``ID[@VERSION]``) or a
        ``NetworkSettings``; ``patchSize`` may be typed ("64 64 32"); ``options`` are other ``TrainingSettings``
        fields (``epochs``, ``learning_rate``, ``registry``...). The model cache is the registry's. Raises
        ``ValueError`` (``TrainingError``) saying what to change.
        """
        if not data:
            raise ValueError(_("Select the training data: an export folder or a case list."))
        if not output:
            raise ValueError(_("Select the folder the training is kept in."))
        if isinstance(network, NetworkSettings):
            networkSettings = network
        elif network == "finetune":
            if not baseModel:
                raise ValueError(_("Select the registry model to fine-tune."))
            networkSettings = NetworkSettings(base_model=baseModel)
        else:
            networkSettings = NetworkSettings(architecture=network)
        if not networkSettings.base_model and "patch_size" not in options:
            options["patch_size"] = self.parsePatchSize(patchSize)
        settings = TrainingSettings(data=data, output=output, network=networkSettings,
                                    cache_dir=self.registry.store.cache_dir, **options)
        check_settings(settings)
        return settings

    @staticmethod
    def missingTrainingRequirements(settings):
        """The pip requirements a training with ``settings`` needs and this Python lacks: MONAI for a new network
        (fine-tuning a registry model needs only PyTorch)."""
        if settings.network.base_model or importlib.util.find_spec("monai") is not None:
            return []
        return [MONAI_REQUIREMENT]

    def installTrainingDependencies(self, missing=(MONAI_REQUIREMENT,), confirm=None):
        """Install ``missing`` (MONAI) into Slicer's Python after asking (``confirm``, default a dialog; see
        :meth:`installRequirements`). Returns whether everything is installed afterwards."""
        missing = list(missing)
        self.installRequirements(missing, f"Training a new network needs {', '.join(missing)}, which is not"
                                 " installed.", confirm or slicer.util.confirmOkCancelDisplay)
        return all(importlib.util.find_spec(requirement.split("==")[0]) is not None for requirement in missing)

    def trainingTask(self, data, output="", **options):
        """Start a training in a worker process; returns the running job (``progress``, ``cancel()``, ``state``;
        ``result``: a ``TrainingResult``). ``data`` is a ``TrainingSettings``, or the data with ``output`` and
        ``options`` as :meth:`trainingSettings` takes them. Each finished epoch arrives as a log record of level
        ``EPOCH_LOG_LEVEL`` holding its JSON (:meth:`addTrainingEpoch`). When it succeeds the registry is read
        again, so the new model is listed at once.

        A training takes minutes to days: in a worker process it runs at full speed while Slicer stays
        responsive (a thread of Slicer's process would crawl: the GUI keeps Python's GIL while it idles).
        """
        settings = data if isinstance(data, TrainingSettings) else self.trainingSettings(data, output, **options)
        missing = self.missingTrainingRequirements(settings)
        if missing:
            raise ValueError(_("Training a new network needs {packages}: install it first"
                               " (installTrainingDependencies()), or fine-tune a registry model.").format(
                packages=", ".join(missing)))
        logger.info("Training: %s", settings)
        task = startJob("DeepSegmentLib.training:train_job", {"settings": settings},
                        _("training on {data}").format(data=os.path.basename(os.path.normpath(settings.data))),
                        sysPath=[_MODULE_FOLDER])
        task.when_done(lambda done: self.refreshModels() if done.error is None else None)
        return task

    def train(self, data, output="", **options):
        """:meth:`trainingTask`, waited for while Slicer stays responsive (console, scripts): returns the
        ``TrainingResult``, or raises ModelRegistryLib's ``JobError`` saying why it failed (``JobCancelledError``
        when cancelled; the same call continues it)."""
        return runJob(self.trainingTask(data, output, **options))

    def refreshModels(self):
        """Read the registry's sources again, the user's sources included (a training adds its registry folder)."""
        known = {source.location for source in self.registry.sources}
        cacheDir = self.registry.store.cache_dir
        self.registry.sources += [source for source in user_sources(cacheDir) if source.location not in known]
        self.registry.refresh(offline=True)

    @classmethod
    def trainingCurveNodes(cls, tableNode=None, chartNode=None):
        """``(table node, plot chart node)`` for a training's curves, the table emptied: one row per epoch
        (:attr:`TRAINING_CURVE_COLUMNS`; the validation Dice is NaN for epochs not validated) and a chart of the
        loss and the validation Dice per epoch. Given nodes still in the scene are reused."""
        scene = slicer.mrmlScene
        if tableNode is None or not scene.IsNodePresent(tableNode):
            tableNode = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName("Training curves"))
        with slicer.util.NodeModify(tableNode):
            tableNode.RemoveAllColumns()
            for name in cls.TRAINING_CURVE_COLUMNS:
                column = vtk.vtkDoubleArray()
                column.SetName(name)
                tableNode.GetTable().AddColumn(column)
        if chartNode is not None and scene.IsNodePresent(chartNode):
            return tableNode, chartNode
        chartNode = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", scene.GenerateUniqueName("Training curves"))
        chartNode.SetTitle("Training")
        chartNode.SetXAxisTitle("Epoch")
        chartNode.SetYAxisTitle("Loss, validation Dice")
        for name, color in (("Loss", (0.85, 0.33, 0.1)), ("Validation Dice", (0.0, 0.45, 0.74))):
            series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name}")
            series.SetAndObserveTableNodeID(tableNode.GetID())
            series.SetXColumnName("Epoch")
            series.SetYColumnName(name)
            series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
            series.SetColor(*color)
            chartNode.AddAndObservePlotSeriesNodeID(series.GetID())
        return tableNode, chartNode

    @staticmethod
    def addTrainingEpoch(tableNode, record):
        """Add an epoch's record (``epoch``, ``loss``, ``validation_dice``) as a row of the curves' table."""
        table = tableNode.GetTable()
        dice = record.get("validation_dice")
        row = table.InsertNextBlankRow()
        for column, value in enumerate((record["epoch"], record["loss"], float("nan") if dice is None else dice)):
            table.SetValue(row, column, vtk.vtkVariant(float(value)))
        table.Modified()
        tableNode.Modified()

    def trainingCurves(self, history, tableNode=None, chartNode=None):
        """The curves of a finished training (``TrainingResult.history``) as table and chart nodes, shown in the
        views' plot view where there is one."""
        tableNode, chartNode = self.trainingCurveNodes(tableNode, chartNode)
        for record in history:
            self.addTrainingEpoch(tableNode, record)
        self.showEvaluationInViews(tableNode, chartNode)
        return tableNode, chartNode

    @staticmethod
    def showTrainingCurves(plotView, chartNode):
        """Show ``chartNode`` in ``plotView`` (a ``qMRMLPlotView`` of the panel) through a plot view node of its
        own (a new one when the scene lost the previous one)."""
        viewNode = plotView.mrmlPlotViewNode()
        if viewNode is None or not slicer.mrmlScene.IsNodePresent(viewNode):
            viewNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotViewNode", "DeepSegment training plot")
            plotView.setMRMLPlotViewNode(viewNode)
        viewNode.SetPlotChartNodeID(chartNode.GetID())

    @staticmethod
    def trainingSummary(result):
        """One paragraph on a finished training (a ``TrainingResult``)."""
        dice = ", ".join(f"{name} {value:.3f}" for name, value in result.test_dice.items() if value is not None)
        return _("Added {model} {version} to {index}: best epoch {best} of {epochs} ({stopped}). Held-out Dice:"
                 " {dice}. Write its intended use and limitations there.").format(
            model=result.model_id, version=result.version, index=result.index, best=result.best_epoch,
            epochs=len(result.history), stopped=result.stopped, dice=dice or _("no test case"))

    # -- live ------------------------------------------------------------------------------------------------

    LIVE_USER_ERRORS = (ValueError, RegistryError, JobError)

    def startLive(self, modelSpec, inputVolumeNode, outputNode=None, device="auto", threads=None, precision="auto",
                  quality=DEFAULT_LIVE_QUALITY):
        """Segment every new frame of ``inputVolumeNode`` with a 2D model until :meth:`stopLive`; returns the output
        node, updated in place: ``outputNode`` (a label map volume or a segmentation), or a new label map volume.

        A frame is new when the volume's voxels change: OpenIGTLinkIF received an image, a sequence browser shows
        another item (a recording that plays). The model runs in a worker process of its own, installed there if
        needed and kept loaded (``device``, ``threads``, ``precision``, ``quality`` as for ``segmentationTask``;
        live mode is ``fast`` by default, and takes one CPU thread fewer than the cores when ``threads`` is
        None: Slicer works on every frame too); frames go to it and label maps come back through shared memory, and
        label maps are applied on the main thread, each at its frame's place (its geometry and parent
        transform). The newest frame goes first: frames that come while the model is busy replace each other
        and are counted as dropped, so a model slower than the stream lowers the rate, never adds a backlog.
        Returns at once while the model loads; :meth:`liveStatus` says how it goes (state, message, frames per
        second, latency from a frame in the volume to its labels in the scene, dropped frames). A bad request
        (no model, a 3D model already installed, a container-only model, an output that is the input) raises
        ValueError, before any work; a 3D model that is not installed yet fails in the worker, and the status
        says so. Starting again stops the session before.

        Example (Slicer's Python console)::

            logic = slicer.util.getModuleLogic("DeepSegment")
            labels = logic.startLive("us-bone-2d", getNode("Image_Reference"))
            logic.liveStatus().summary()   # '29.8 frames/s, latency p50 18.0 ms, p99 31.5 ms; 300 frames ...'
            logic.stopLive()
        """
        self.stopLive()
        if not modelSpec:
            raise ValueError(_("Select a model."))
        if inputVolumeNode is None:
            raise ValueError(_("Select the volume to follow."))
        if outputNode is not None and outputNode == inputVolumeNode:
            raise ValueError(_("The output cannot be the volume that is followed."))
        if not torch_status().installed:
            raise ValueError(_("PyTorch is not installed: install it with the PyTorch extension (installTorch())."))
        entry, version = self.registry.resolve(modelSpec)
        if "inprocess" not in version.backends:
            raise ValueError(_("{id} {version} runs only in a container; live mode runs models in Slicer's"
                               " Python.").format(id=entry.id, version=version.version))
        installed = self.registry.store.get(entry.id, version.version)
        if installed is not None:
            try:
                require_2d_model(load_package(installed.path))
            except (EngineError, PackageError) as error:
                raise ValueError(str(error)) from error
        transformNode = inputVolumeNode.GetParentTransformNode()
        if transformNode is not None and not transformNode.IsTransformToWorldLinear():
            raise ValueError(_("Volume '{name}' is under a non-linear transform; harden the transform before segmenting"
                               " it live.").format(
                name=inputVolumeNode.GetName()))
        if outputNode is None:
            name = slicer.mrmlScene.GenerateUniqueName(inputVolumeNode.GetName() + " live labels")
            outputNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", name)
        if outputNode.GetDisplayNode() is None:
            outputNode.CreateDefaultDisplayNodes()
        image = inputVolumeNode.GetImageData()
        warmShape = tuple(reversed(image.GetDimensions())) if image is not None else None
        stream = LiveStream(entry, version, self.registry.store.cache_dir, device=self.chooseDevice(device).torch_name,
                            threads=threads, precision=precision, quality=quality, warm_shape=warmShape,
                            python=slicerPythonOnPath())
        self.live = LiveSession(stream, inputVolumeNode, outputNode)
        self.live.start()
        logger.info("Live segmentation of %s with %s %s into %s: device %s, threads %s, precision %s, quality %s,"
                    " frames of %s voxels", inputVolumeNode.GetName(), entry.id, version.version, outputNode.GetName(),
                    device, threads or "auto", precision, quality, warmShape)
        return outputNode

    def stopLive(self, message=None):
        """Stop live segmentation (the worker process ends, its shared memory is freed; the output keeps the last
        labels); ``message`` (default "Stopped.") is its final status text; returns the final status, or None when
        it was not running."""
        if self.live is None or not self.live.statistics().active:
            return None
        status = self.live.stop(message or _("Stopped."))
        logger.info("Live segmentation stopped (%s): %s", message or "by the user", status.summary())
        return status

    def liveStatus(self):
        """Where live segmentation stands (DeepSegmentLib ``LiveStatistics``: ``state``, ``message``, ``received``,
        ``segmented``, ``dropped``, ``rejected``, ``problem``, ``frames_per_second``, ``latency_p50_ms``,
        ``latency_p99_ms``, ``summary()``); the last session's after it ended."""
        if self.live is None:
            return LiveStatistics(STOPPED, "Live segmentation has not been started.")
        return self.live.statistics()


#
# DeepSegmentTest
#


class DeepSegmentTest(ScriptedLoadableModuleTest):
    """Self-test: runs in Slicer (Developer mode > Test, or headless) and in the test stand-in."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ImageGeometryMatchesVolume()
        self.setUp()
        self.test_ParentTransformIsApplied()
        self.setUp()
        # Last: without PyTorch it raises unittest.SkipTest, which ends runTest as skipped, not passed.
        self.test_SegmentThroughPanelApply()

    @staticmethod
    def _obliqueVolume(name="Oblique", voxels=None):
        """A seeded volume with anisotropic spacing, a 30 degree tilt and a non-zero origin."""
        angle = np.radians(30.0)
        rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
        ijkToRAS = np.eye(4)
        ijkToRAS[:3, :3] = rotation @ np.diag([0.8, 1.1, 2.5])
        ijkToRAS[:3, 3] = [12.0, -40.0, 7.0]
        if voxels is None:
            voxels = np.random.default_rng(7).integers(0, 1000, size=(5, 6, 7), dtype=np.int16)
        node = slicer.util.addVolumeFromArray(voxels, ijkToRAS=ijkToRAS, name=name)
        return node, voxels, ijkToRAS

    def test_ImageGeometryMatchesVolume(self):
        self.delayDisplay("Volume to SimpleITK image and back keeps every voxel in place")
        node, voxels, ijkToRAS = self._obliqueVolume()
        image = DeepSegmentLogic.imageFromVolumeNode(node)
        for ijk in [(0, 0, 0), (1, 2, 3), (6, 5, 4)]:
            expectedLPS = LPS_FROM_RAS @ (ijkToRAS @ np.array([*ijk, 1.0]))[:3]
            np.testing.assert_allclose(image.TransformIndexToPhysicalPoint(ijk), expectedLPS, atol=1e-9)
            self.assertEqual(image[ijk], voxels[ijk[2], ijk[1], ijk[0]])
        copy = DeepSegmentLogic.volumeNodeFromImage(image, "Copy")
        copyMatrix = vtk.vtkMatrix4x4()
        copy.GetIJKToRASMatrix(copyMatrix)
        np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(copyMatrix), ijkToRAS, atol=1e-9)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(copy), voxels)

    def test_ParentTransformIsApplied(self):
        self.delayDisplay("A linear parent transform moves the image the engine reads")
        node, _voxels, ijkToRAS = self._obliqueVolume()
        transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        shift = vtk.vtkMatrix4x4()
        shift.SetElement(0, 3, 5.0)
        transform.SetMatrixTransformToParent(shift)
        node.SetAndObserveTransformNodeID(transform.GetID())
        image = DeepSegmentLogic.imageFromVolumeNode(node)
        expectedOriginRAS = ijkToRAS[:3, 3] + [5.0, 0.0, 0.0]
        np.testing.assert_allclose(image.GetOrigin(), LPS_FROM_RAS @ expectedOriginRAS, atol=1e-9)

    def test_SegmentThroughPanelApply(self):
        if not torch_installed():
            # Reported as skipped (also by Reload & Test, whose error display names the reason), never as passed.
            self.skipTest("PyTorch is not installed: the panel's Apply cannot be tested here.")
        self.delayDisplay("Segmenting a phantom through the panel's Apply, with a model from a local index")
        folder = tempfile.mkdtemp(dir=slicer.app.temporaryPath)
        try:
            indexPath = writeThresholdTestModel(folder)
            widget = slicer.modules.deepsegment.widgetRepresentation().self()
            originalLogic = widget.logic
            widget.logic = DeepSegmentLogic(Registry([IndexSource(indexPath)], os.path.join(folder, "cache")))
            widget.logic.registry.refresh(offline=True)
            try:
                phantom = np.zeros((12, 14, 16), np.int16)
                phantom[3:9, 4:10, 5:12] = 1
                volume, _voxels, _ijkToRAS = self._obliqueVolume("Phantom bright", phantom)
                widget.updateModelList()
                self.assertEqual(widget.ui.modelSelector.currentData, "threshold-test")
                self.assertIs(widget.inputSelectors[0].currentNode(), volume)
                self.assertTrue(widget.ui.applyButton.enabled)
                widget.ui.applyButton.click()
                self.assertTrue(widget.poller.waitUntilDone(120), "segmentation did not finish in 120 s")
                segmentation = widget.ui.outputSelector.currentNode()
                self.assertIsNotNone(segmentation, widget.ui.stageLabel.text)
                segmentId = segmentation.GetSegmentation().GetSegmentIdBySegmentName("Bright")
                mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume)
                np.testing.assert_array_equal(mask, phantom)
                self.assertIn("Segmented in", widget.ui.timingLabel.text)
            finally:
                widget.logic.service.stop()
                widget.logic = originalLogic
                widget.updateModelList()
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self.delayDisplay("Test passed")


def writeThresholdTestModel(folder):
    """Write into ``folder`` a one-model index (returned) whose network labels voxels brighter than 0.5.

    Its result is known exactly, so tests of the panel, the console and the command line can check voxels.
    """

    import torch

    class Threshold(torch.nn.Module):
        def forward(self, image):
            return torch.cat([0.5 - image, image - 0.5], dim=1)

    contract = {
        "schemaVersion": 1,
        "format": "torch.export",
        "weights": "model.pt2",
        "dimensions": 3,
        "inputs": [{"name": "Image", "pattern": "phantom"}],
        "preprocessing": {"spacing": None, "orientation": "native", "normalization": [{"kind": "none"}]},
        "inference": {"patchSize": [8, 8, 8], "overlap": 0.25, "blending": "constant", "batchSize": 2,
                      "mirrorAxes": [], "activation": "softmax", "outputChannels": 2},
        "postprocessing": {"mode": "argmax"},
        "labels": [{"value": 1, "name": "Bright", "color": "#ff0000"}],
    }
    packageFolder = os.path.join(folder, "package")
    write_package(packageFolder, Threshold(), contract)
    files = [archive_package(packageFolder, os.path.join(folder, "threshold-test-1.0.0.zip"))]
    index = {"schemaVersion": 1, "models": [{
        "id": "threshold-test", "title": "Threshold test", "task": "segmentation",
        "inputs": [{"name": "Image", "pattern": "phantom"}],
        "labels": [{"value": 1, "name": "Bright", "color": "#ff0000"}],
        "versions": [{"version": "1.0.0", "files": files}],
    }]}
    indexPath = os.path.join(folder, "index.json")
    with open(indexPath, "w", encoding="utf-8") as indexFile:
        json.dump(index, indexFile)
    return indexPath

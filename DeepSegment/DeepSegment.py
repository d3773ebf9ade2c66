import collections
import json
import os
import shutil
import tempfile
import time
import types
import zipfile

import numpy as np
import qt
import vtk

import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

from DeepSegmentLib import (
    DEFAULT_QUALITY,
    LPS_FROM_RAS,
    QUALITY_PRESETS,
    EngineCancelled,
    ModelPool,
    available_devices,
    choose_device,
    driver_cuda_version,
    ijk_to_ras_from_image,
    image_from_array,
    install_plan,
    installed_packages,
    is_oblique,
    load_package,
    quality_options,
    segment,
    torch_status,
    write_package,
)
from DeepSegmentLib.container_backend import ContainerSettings, segment_in_container
from DeepSegmentLib.container_runtime import ContainerCancelledError, ContainerRuntimeNotFoundError, find_runtime
from ModelRegistry import BackgroundTaskPoller, ModelRegistryLogic
from ModelRegistryLib import BackgroundTask, CancelledError, IndexSource, Registry

#
# DeepSegment
#


class DeepSegment(ScriptedLoadableModule):
    """Segment volumes with deep-learning models from the model registry."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Deep Segment"
        self.parent.categories = ["Deep Learning"]
        self.parent.dependencies = ["ModelRegistry"]
        self.parent.contributors = ["SlicerDeepLearning developers"]
        self.parent.helpText = (
            "Segment volumes with a deep-learning model from the model registry, on a GPU or the CPU."
            " Pick a model: its inputs are pre-filled from the volumes' names. Apply installs the model if"
            " needed (verified download), runs it in the background with progress and Cancel, and makes a"
            " segmentation with named, colored segments on the exact grid of the input. Models shipped as"
            " container images run in Docker or Podman, isolated (no network, read-only inputs), with their"
            " parameters in the panel."
        )
        self.parent.acknowledgementText = (
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
        self.parameterWidgets = {}
        self.pendingLog = collections.deque()  # container output, appended by the worker thread
        self.poller = None
        self.idleTimer = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DeepSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        self.ui.outputSelector.setMRMLScene(slicer.mrmlScene)
        self.logic = DeepSegmentLogic()
        for request, label in self.logic.deviceChoices():
            self.ui.deviceSelector.addItem(label, request)
        for quality in DeepSegmentLogic.QUALITIES:
            self.ui.qualitySelector.addItem(quality.capitalize(), quality)
        self.ui.qualitySelector.setCurrentIndex(self.ui.qualitySelector.findData(DeepSegmentLogic.DEFAULT_QUALITY))
        for precision, label in DeepSegmentLogic.PRECISION_LABELS.items():
            self.ui.precisionSelector.addItem(label, precision)
        self.showContainerSettings(self.logic.containerSettings)
        self.poller = BackgroundTaskPoller(self.showProgress, self.onTaskFinished)
        # Networks left unused for a while give their memory back (GPU memory above all).
        self.idleTimer = qt.QTimer()
        self.idleTimer.setInterval(60 * 1000)
        self.idleTimer.connect("timeout()", self.logic.pool.unload_idle)
        self.idleTimer.start()
        self.ui.modelSelector.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.deviceSelector.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.backendSelector.connect("currentIndexChanged(int)", self.onBackendChanged)
        self.ui.runtimeSelector.connect("currentIndexChanged(int)", self.onRuntimeChanged)
        self.ui.refreshModelsButton.connect("clicked(bool)", self.updateModelList)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyOrCancel)
        self.layout.addStretch(1)
        self.ui.progressBar.visible = False
        self.updateModelList()
        self.onDeviceChanged()

    def cleanup(self):
        self.poller.stop()
        self.idleTimer.stop()

    def enter(self):
        self.prefillInputs()

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
        self.onModelChanged()

    def onModelChanged(self, _index=None):
        """Rebuild one volume selector per model input, pre-filled by the input's name pattern."""
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
        self.onBackendChanged()
        for name in self.logic.inputNames(modelId):
            selector = slicer.qMRMLNodeComboBox()
            selector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
            selector.showChildNodeTypes = False
            selector.noneEnabled = True
            selector.addEnabled = False
            selector.removeEnabled = False
            selector.setMRMLScene(slicer.mrmlScene)
            selector.toolTip = f"Volume for the model's '{name}' input"
            selector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateApplyState)
            layout.addRow(f"{name}:", selector)
            self.inputSelectors.append(selector)
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

    def onDeviceChanged(self, _index=None):
        with slicer.util.tryWithErrorDisplay("The device is not available."):
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
            self.ui.stageLabel.text = "Cancelling…"
            return
        backend = self.ui.backendSelector.currentData or "auto"
        inContainer = backend == "container"
        if (not inContainer and not self.logic.torchStatus().installed
                and not self.logic.installTorch(slicer.util.confirmOkCancelDisplay)):
            self.ui.stageLabel.text = "PyTorch is needed to run models in Slicer's Python."
            return
        with slicer.util.tryWithErrorDisplay("Segmentation could not start."):
            if inContainer:
                self.logic.setContainerSettings(self.containerSettings())
            task = self.poller.start(self.logic.segmentationTask(
                self.ui.modelSelector.currentData,
                [selector.currentNode() for selector in self.inputSelectors],
                device=self.ui.deviceSelector.currentData,
                quality=self.ui.qualitySelector.currentData,
                threads=self.ui.threadsSpinBox.value or None,
                precision=self.ui.precisionSelector.currentData,
                backend=backend,
                parameters=self.parameterValues() if inContainer else None,
                log=self.pendingLog.append,
            ))
            self.ui.applyButton.text = "Cancel"
            self.ui.progressBar.visible = True
            self.ui.progressBar.value = 0
            self.ui.timingLabel.text = ""
            self.log(f"Started {task.description}")

    def showProgress(self, step):
        self.ui.progressBar.value = int(step.fraction * 100)
        self.ui.stageLabel.text = step.text
        self.flushLog()

    def flushLog(self):
        while self.pendingLog:
            self.log(self.pendingLog.popleft())

    def onTaskFinished(self, task):
        """The result is applied to the scene here, on the main thread."""
        self.ui.applyButton.text = "Apply"
        self.ui.progressBar.visible = False
        self.flushLog()
        if task.state == "succeeded":
            segmentation = self.logic.applyResult(task.result, self.ui.outputSelector.currentNode())
            self.ui.outputSelector.setCurrentNode(segmentation)
            self.ui.stageLabel.text = "Done."
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


#
# DeepSegmentLogic
#


class RunProgress:
    """What the panel shows of a run: overall ``fraction`` (0 to 1) and a line of ``text``."""

    def __init__(self, fraction, text):
        self.fraction = fraction
        self.text = text


class RunResult:
    """A finished run: the labels (registry or package ``Label``s), the engine's or container's result and
    the input volume node it belongs to."""

    def __init__(self, labels, result, inputNode, seconds):
        self.labels = labels
        self.result = result
        self.inputNode = inputNode
        self.seconds = seconds


class DeepSegmentLogic(ScriptedLoadableModuleLogic):
    """Everything the panel decides, usable from Slicer's Python console.

    Example (Slicer's Python console)::

        logic = slicer.util.getModuleLogic("DeepSegment")
        segmentation = logic.segmentVolumes("brain-tissue-demo", [getNode("MRHead")])  # waits for the result
        logic.chooseDevice("auto").description                                        # e.g. 'CUDA GPU 0: ...'
    """

    QUALITIES = tuple(QUALITY_PRESETS)  # fast, accurate, exact
    DEFAULT_QUALITY = DEFAULT_QUALITY
    BACKEND_LABELS = types.MappingProxyType(
        {"inprocess": "Slicer's Python", "container": "Container (Docker or Podman)"}
    )
    INSTALL_SHARE = 0.3  # of the progress bar, while the model downloads
    CONTAINER_SETTINGS = "DeepLearning/Container/"
    PRECISION_LABELS = types.MappingProxyType(
        {"auto": "Automatic (faster where the hardware allows)", "float32": "Full (float32)"}
    )

    def __init__(self, registry=None):
        ScriptedLoadableModuleLogic.__init__(self)
        self._devices = None
        self.registry = registry if registry is not None else ModelRegistryLogic().registry
        self.pool = ModelPool()
        self.containerSettings = self.savedContainerSettings()
        self._runtimeDescriptions = {}

    # -- devices --------------------------------------------------------------------------------------------

    def devices(self):
        """Compute devices PyTorch finds (found once; ``refreshDevices`` looks again)."""
        if self._devices is None:
            self._devices = available_devices()
        return self._devices

    def refreshDevices(self):
        self._devices = None
        return self.devices()

    def chooseDevice(self, request="auto"):
        return choose_device(request or "auto", self.devices())

    def deviceChoices(self):
        """(request, label) pairs for a device selector: automatic choice first, then each device."""
        automatic = ("auto", "Automatic (" + self.chooseDevice("auto").description + ")")
        return [automatic] + [(device.torch_name, device.description) for device in self.devices()]

    # -- models ---------------------------------------------------------------------------------------------

    def modelChoices(self):
        """(model id, label) of every model in the registry; image-only models say they run in a container."""
        choices = []
        for model in self.registry.models():
            state = self.registry.state(model.id) if model.latest_release.files else "container"
            choices.append((model.id, f"{model.title} ({state})"))
        return choices

    def backendChoices(self, modelSpec):
        """(backend, label) pairs the model's version offers: in Slicer's Python first, then its container."""
        if not modelSpec:
            return []
        _, version = self.registry.resolve(modelSpec)
        return [(backend, self.BACKEND_LABELS[backend]) for backend in version.backends]

    def imageParameters(self, modelSpec):
        """The typed parameters of the model's container image (ModelRegistryLib ``ImageParameter``)."""
        _, version = self.registry.resolve(modelSpec)
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
            return "No model selected: add models in the Model Registry module."
        labels = ", ".join(label.name for label in entry.labels) or "labels listed in the model package"
        return f"{entry.description or entry.title} Labels: {labels}."

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
                    f"Volume '{volumeNode.GetName()}' is under a non-linear transform; harden the transform"
                    " (Data module, right-click the transform) before segmenting it."
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
            return "Select an input volume."
        if volumeNode.GetImageData() is None:
            return f"Volume '{volumeNode.GetName()}' has no voxels."
        image = self.imageFromVolumeNode(volumeNode)
        size = "\u00d7".join(str(n) for n in image.GetSize())
        spacing = "\u00d7".join(f"{s:.3g}" for s in image.GetSpacing())
        alignment = "oblique axes" if is_oblique(image) else "axis-aligned"
        return f"{size} voxels, spacing {spacing} mm, {alignment}"

    # -- running --------------------------------------------------------------------------------------------

    def segmentationTask(self, modelSpec, inputNodes, device="auto", quality=DEFAULT_QUALITY, threads=None,
                         backend="auto", parameters=None, log=None, precision="auto"):
        """A not yet started BackgroundTask: get the model if needed, then segment ``inputNodes``.

        ``backend`` is ``inprocess`` (the model's package in Slicer's Python), ``container`` (its image;
        ``parameters`` are the image's) or ``auto`` (in-process when the version has a package);
        ``precision`` (in-process) is ``auto`` (reduced where the device computes it natively) or
        ``float32``. ``log``
        receives the container's output lines, from the worker thread. The volumes are read here, on the
        main thread; the worker touches no MRML node.
        """
        if not modelSpec:
            raise ValueError("Select a model.")
        if not inputNodes or not all(inputNodes):
            raise ValueError("Select a volume for every model input.")
        entry, version = self.registry.resolve(modelSpec)
        backend = version.choose_backend(backend)
        images = [self.imageFromVolumeNode(node) for node in inputNodes]
        inputNode = inputNodes[0]
        if backend == "container":
            run = self._containerRun(entry, version, images, device, parameters, log)
        else:
            run = self._inProcessRun(modelSpec, images, device, quality, threads, precision)

        def timed(progress, cancel):
            start = time.perf_counter()
            labels, result = run(progress, cancel)
            return RunResult(labels, result, inputNode, time.perf_counter() - start)

        return BackgroundTask(timed, f"segmenting {inputNode.GetName()} with {modelSpec} ({backend})")

    def _inProcessRun(self, modelSpec, images, device, quality, threads, precision):
        deviceName = self.chooseDevice(device).torch_name

        def run(progress, cancel):
            def installing(step):
                progress(RunProgress((step.fraction or 0.0) * self.INSTALL_SHARE, step.text))

            def segmenting(step):
                progress(RunProgress(self.INSTALL_SHARE + (1 - self.INSTALL_SHARE) * step.fraction, step.stage))

            installed = self.registry.ensure_installed(modelSpec, progress=installing, cancel=cancel)
            package = load_package(installed.path)
            try:
                result = segment(images, package, self.pool.get(package, deviceName), device=deviceName,
                                 threads=threads, precision=precision, progress=segmenting, cancel=cancel,
                                 **quality_options(package, quality.lower()))
            except EngineCancelled as cancelled:
                raise CancelledError(str(cancelled) or "Cancelled") from cancelled
            return package.labels, result

        return run

    def _containerRun(self, entry, version, images, device, parameters, log):
        values = version.image.parameter_values(parameters or {})  # a bad value fails here, before any work
        if device not in ("auto", "cpu") and not device.startswith("cuda"):
            raise ValueError(f"A container can run on the CPU or a CUDA GPU, not on {device}.")

        def run(progress, cancel):
            try:
                result = segment_in_container(
                    images, entry, version, parameters=values, device="cuda" if device.startswith("cuda") else device,
                    download_folder=self.registry.store.cache_dir, settings=self.containerSettings,
                    progress=lambda step: progress(RunProgress(step.fraction, step.stage)), log=log, cancel=cancel,
                )
            except ContainerCancelledError as cancelled:
                raise CancelledError(str(cancelled)) from cancelled
            return entry.labels, result

        return run

    def applyResult(self, run, segmentationNode=None):
        """Put a finished run's labels into a segmentation node (a new one unless given); main thread only."""
        labelmap = self.volumeNodeFromImage(run.result.labels, "DeepSegment labels", "vtkMRMLLabelMapVolumeNode")
        try:
            if segmentationNode is None:
                name = slicer.mrmlScene.GenerateUniqueName(run.inputNode.GetName() + " segmentation")
                segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
                segmentationNode.CreateDefaultDisplayNodes()
            segmentation = segmentationNode.GetSegmentation()
            segmentation.RemoveAllSegments()
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(run.inputNode)
            labels = slicer.util.arrayFromVolume(labelmap)
            for label in run.labels:
                color = [int(label.color[i:i + 2], 16) / 255.0 for i in (1, 3, 5)]
                segmentId = segmentation.AddEmptySegment(f"label_{label.value}", label.name, color)
                segment = segmentation.GetSegment(segmentId)
                if label.terminology is not None:
                    segment.SetTag("TerminologyEntry", label.terminology.slicer_entry())
                slicer.util.updateSegmentBinaryLabelmapFromArray(
                    (labels == label.value).astype(np.uint8), segmentationNode, segmentId, labelmap
                )
        finally:
            slicer.mrmlScene.RemoveNode(labelmap)
        return segmentationNode

    def segmentVolumes(self, modelSpec, inputNodes, device="auto", quality=DEFAULT_QUALITY, segmentationNode=None,
                       threads=None, backend="auto", parameters=None, precision="auto"):
        """Segment and wait (Python console and scripts): returns the segmentation node."""
        task = self.segmentationTask(modelSpec, inputNodes, device, quality, threads, backend, parameters,
                                     precision=precision).start()
        while not task.wait(0.05):
            slicer.app.processEvents()
        if task.error is not None:
            raise task.error
        return self.applyResult(task.result, segmentationNode)

    @staticmethod
    def timingSummary(run):
        stages = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in run.result.timings.items())
        return f"Segmented in {run.seconds:.1f} s on {run.result.device}, {run.result.precision} ({stages})."

    @staticmethod
    def failureText(task):
        if task.state == "cancelled":
            return "Cancelled: the scene was not changed."
        return f"Segmentation failed: {task.error}"

    # -- PyTorch ---------------------------------------------------------------------------------------------

    @staticmethod
    def torchStatus():
        return torch_status()

    def installTorch(self, confirm):
        """Install PyTorch on demand: through Slicer's PyTorch extension when present, else a pinned pip install.

        ``confirm(text)`` asks the user (the panel passes ``slicer.util.confirmOkCancelDisplay``); nothing
        is installed when it returns False. Packages already installed (Slicer's numpy, SimpleITK...) are
        pinned, so the install cannot replace them.
        """
        if torch_status().installed:
            return True
        if hasattr(slicer.modules, "pytorchutils"):
            torchLogic = slicer.util.getModuleLogic("PyTorchUtils")
            return torchLogic.installTorch(askConfirmation=True) is not None
        plan = install_plan(driver_cuda_version(), installed_packages())
        if not confirm(f"Deep Segment needs PyTorch. Install {plan.description}? This downloads up to a few GB."):
            return False
        pins = os.path.join(slicer.app.temporaryPath, "DeepSegment-pip-constraints.txt")
        with open(pins, "w", encoding="utf-8") as pinsFile:
            pinsFile.write("\n".join(plan.constraints) + "\n")
        slicer.util.pip_install(plan.pip_arguments(pins))
        return torch_status().installed


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
        node, _, ijkToRAS = self._obliqueVolume()
        transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        shift = vtk.vtkMatrix4x4()
        shift.SetElement(0, 3, 5.0)
        transform.SetMatrixTransformToParent(shift)
        node.SetAndObserveTransformNodeID(transform.GetID())
        image = DeepSegmentLogic.imageFromVolumeNode(node)
        expectedOriginRAS = ijkToRAS[:3, 3] + [5.0, 0.0, 0.0]
        np.testing.assert_allclose(image.GetOrigin(), LPS_FROM_RAS @ expectedOriginRAS, atol=1e-9)

    def test_SegmentThroughPanelApply(self):
        if not torch_status().installed:
            self.delayDisplay("PyTorch is not installed: the panel's Apply cannot be tested here.")
            return
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
                volume, _, _ = self._obliqueVolume("Phantom bright", phantom)
                widget.updateModelList()
                self.assertEqual(widget.ui.modelSelector.currentData, "threshold-test")
                self.assertIs(widget.inputSelectors[0].currentNode(), volume)
                self.assertTrue(widget.ui.applyButton.enabled)
                widget.ui.applyButton.click()
                deadline = time.time() + 60
                while widget.poller.busy and time.time() < deadline:
                    slicer.app.processEvents()
                    time.sleep(0.02)
                self.assertFalse(widget.poller.busy, "segmentation did not finish in 60 s")
                segmentation = widget.ui.outputSelector.currentNode()
                self.assertIsNotNone(segmentation, widget.ui.stageLabel.text)
                segmentId = segmentation.GetSegmentation().GetSegmentIdBySegmentName("Bright")
                mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume)
                np.testing.assert_array_equal(mask, phantom)
                self.assertIn("Segmented in", widget.ui.timingLabel.text)
            finally:
                widget.logic = originalLogic
                widget.updateModelList()
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self.delayDisplay("Test passed")


def writeThresholdTestModel(folder):
    """Write into ``folder`` a one-model index (returned) whose network labels voxels brighter than 0.5.

    Its result is known exactly, so tests of the panel, the console and the command line can check voxels.
    """
    import hashlib

    import torch

    class Threshold(torch.nn.Module):
        def forward(self, image):
            return torch.cat([0.5 - image, image - 0.5], dim=1)

    contract = {
        "schemaVersion": 1,
        "format": "torchscript",
        "weights": "model.pt",
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
    archive = os.path.join(folder, "threshold-test-1.0.0.zip")
    with zipfile.ZipFile(archive, "w") as package:
        for name in sorted(os.listdir(packageFolder)):
            package.write(os.path.join(packageFolder, name), name)
    with open(archive, "rb") as archiveFile:
        digest = hashlib.sha256(archiveFile.read()).hexdigest()
    index = {"schemaVersion": 1, "models": [{
        "id": "threshold-test", "title": "Threshold test", "task": "segmentation",
        "inputs": [{"name": "Image", "pattern": "phantom"}],
        "labels": [{"value": 1, "name": "Bright", "color": "#ff0000"}],
        "versions": [{"version": "1.0.0", "files": [
            {"url": os.path.basename(archive), "sha256": digest, "size": os.path.getsize(archive)}]}],
    }]}
    indexPath = os.path.join(folder, "index.json")
    with open(indexPath, "w", encoding="utf-8") as indexFile:
        json.dump(index, indexFile)
    return indexPath

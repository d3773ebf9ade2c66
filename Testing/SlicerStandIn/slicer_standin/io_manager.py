"""Reading and writing MRML nodes as ``slicer.app.coreIOManager()`` does in Slicer.

Slicer's ``slicer.util.loadVolume``/``loadSegmentation``/``loadNodeFromFile``/``saveNode`` call
``qSlicerCoreIOManager`` (``fileType``, ``loadNodes``, ``fileWriterFileType``, ``saveNodes``). This class
provides those calls for the file types our modules use, on the real readers and storage nodes of the
``slicer-core`` wheel, so that Slicer's own ``slicer/util.py`` works unchanged.

Scenes (``slicer.util.saveScene``/``loadScene``, file type ``SceneFile``) are written and read as Slicer's
qSlicerSceneWriter and qSlicerSceneReader/qSlicerSceneBundleReader do: a ``.mrml`` file is the scene alone
(``Commit``); a ``.mrb`` bundle is the scene with its data saved into a folder
(``SaveSceneToSlicerDataBundleDirectory``) and zipped; any other name is that folder itself. Loading imports
the scene into the current one, or replaces it when the ``clear`` property is true; a bundle is unpacked into
a temporary folder first, removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import vtk

import slicer

VOLUME_FILE = "VolumeFile"
SEGMENTATION_FILE = "SegmentationFile"
SCENE_FILE = "SceneFile"
NO_FILE = "NoFile"

_VOLUME_EXTENSIONS = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".hdr", ".img", ".mha", ".mhd", ".dcm")
_SEGMENTATION_EXTENSIONS = (".seg.nrrd", ".seg.nhdr", ".seg.vtm")

# Flags of vtkSlicerVolumesLogic::AddArchetypeVolume.
_LABELMAP = 1
_CENTERED = 2
_SINGLE_FILE = 4


class CoreIOManager:
    """File-type detection, loading and saving for volumes and segmentations."""

    def __init__(self, scene: slicer.vtkMRMLScene, module_logics: dict,
                 application_logic: slicer.vtkSlicerApplicationLogic) -> None:
        self._scene = scene
        self._logics = module_logics
        self._application_logic = application_logic

    def fileType(self, fileName) -> str:
        name = str(fileName).lower()
        if name.endswith((".mrml", ".mrb")):
            return SCENE_FILE
        if name.endswith(_SEGMENTATION_EXTENSIONS):
            return SEGMENTATION_FILE
        if name.endswith(_VOLUME_EXTENSIONS):
            return VOLUME_FILE
        return NO_FILE

    def loadNodes(self, fileType, properties, loadedNodes=None, userMessages=None) -> bool:
        fileName = str(properties["fileName"])
        if not os.path.isfile(fileName):
            return self._fail(userMessages, f"File not found: {fileName}")
        if fileType == SCENE_FILE:
            return self._load_scene(os.path.abspath(fileName), bool(properties.get("clear", False)), userMessages)
        if fileType == VOLUME_FILE:
            node = self._load_volume(fileName, properties)
        elif fileType == SEGMENTATION_FILE:
            node = self._logics["Segmentations"].LoadSegmentationFromFile(
                fileName, bool(properties.get("autoOpacities", True)), properties.get("name", "")
            )
        else:
            return self._fail(userMessages, f"No reader for file type '{fileType}' ({fileName})")
        if node is None:
            return self._fail(userMessages, f"Reading failed: {fileName}")
        if loadedNodes is not None:
            loadedNodes.AddItem(node)
        return True

    def _load_volume(self, fileName: str, properties: dict):
        flags = (_LABELMAP if properties.get("labelmap") else 0) | (_CENTERED if properties.get("center") else 0)
        if properties.get("singleFile"):
            flags |= _SINGLE_FILE
        name = properties.get("name") or _node_name_from_file(fileName)
        node = self._logics["Volumes"].AddArchetypeVolume(fileName, name, flags)
        if node is not None and properties.get("show", True) and not properties.get("labelmap"):
            # Slicer would show the volume in the slice views; here only the selection is recorded.
            self._selection_node().SetActiveVolumeID(node.GetID())
        return node

    def _load_scene(self, fileName: str, clear: bool, userMessages) -> bool:
        if not fileName.lower().endswith(".mrb"):
            self._scene.SetURL(fileName)
            return bool(self._scene.Connect() if clear else self._scene.Import()) or self._fail(
                userMessages, f"Reading the scene failed: {fileName}")
        unpackFolder = tempfile.mkdtemp(prefix="__BundleLoadTemp")
        # vtkMRMLApplicationLogic::UnpackSlicerDataBundle changes the working folder into the unpacked one, and
        # leaves it there when the file is no bundle: the folder is restored before the unpacked one is removed.
        workingFolder = os.getcwd()
        try:
            sceneFile = self._application_logic.UnpackSlicerDataBundle(fileName, unpackFolder)
            if not sceneFile:
                return self._fail(userMessages, f"Not a scene bundle: {fileName}")
            self._scene.SetURL(sceneFile)
            loaded = self._scene.Connect() if clear else self._scene.Import()
        finally:
            os.chdir(workingFolder)
            shutil.rmtree(unpackFolder, ignore_errors=True)
        # The unpacked folder is gone: the scene now points where the bundle is.
        bundleFolder = os.path.dirname(fileName)
        self._scene.SetURL(os.path.join(bundleFolder, os.path.splitext(os.path.basename(fileName))[0] + ".mrml"))
        self._scene.SetRootDirectory(bundleFolder)
        return bool(loaded) or self._fail(userMessages, f"Reading the scene failed: {fileName}")

    def _save_scene(self, fileName: str, userMessages) -> bool:
        fileName = os.path.abspath(fileName)
        if fileName.lower().endswith(".mrml"):
            self._scene.SetURL(fileName)
            self._scene.SetRootDirectory(os.path.dirname(fileName))
            return bool(self._scene.Commit()) or self._fail(userMessages, f"Writing the scene failed: {fileName}")
        applicationLogic = self._application_logic
        if not fileName.lower().endswith(".mrb"):
            os.makedirs(fileName, exist_ok=True)
            return bool(applicationLogic.SaveSceneToSlicerDataBundleDirectory(fileName, None, userMessages))
        packFolder = tempfile.mkdtemp(prefix="__BundleSaveTemp")
        workingFolder = os.getcwd()
        try:
            bundleFolder = os.path.join(packFolder, os.path.splitext(os.path.basename(fileName))[0])
            os.mkdir(bundleFolder)
            saved = applicationLogic.SaveSceneToSlicerDataBundleDirectory(bundleFolder, None, userMessages)
            zipped = saved and applicationLogic.Zip(fileName, bundleFolder)
        finally:
            os.chdir(workingFolder)  # as when loading: the working folder must not be left in a removed one
            shutil.rmtree(packFolder, ignore_errors=True)
        return bool(zipped) or self._fail(userMessages, f"Writing the scene bundle failed: {fileName}")

    def _selection_node(self):
        return self._scene.GetNodeByID("vtkMRMLSelectionNodeSingleton")

    def fileWriterFileType(self, node) -> str:
        if node is None or node.IsA("vtkMRMLScene"):
            return SCENE_FILE
        if node.IsA("vtkMRMLSegmentationNode"):
            return SEGMENTATION_FILE
        if node.IsA("vtkMRMLVolumeNode"):
            return VOLUME_FILE
        return NO_FILE

    def saveNodes(self, fileType, properties, userMessages=None) -> bool:
        if fileType == SCENE_FILE:
            return self._save_scene(str(properties["fileName"]), userMessages)
        node = self._scene.GetNodeByID(properties["nodeID"])
        if node is None or fileType == NO_FILE:
            return self._fail(userMessages, f"No writer for node {properties.get('nodeID')}")
        storageNode = node.GetStorageNode()
        if storageNode is None:
            node.AddDefaultStorageNode()
            storageNode = node.GetStorageNode()
        storageNode.SetFileName(str(properties["fileName"]))
        if "useCompression" in properties:
            storageNode.SetUseCompression(bool(properties["useCompression"]))
        if not storageNode.WriteData(node):
            return self._fail(userMessages, f"Writing failed: {properties['fileName']}")
        return True

    @staticmethod
    def _fail(userMessages, message: str) -> bool:
        if userMessages is not None:
            userMessages.AddMessage(vtk.vtkCommand.ErrorEvent, message)
        return False


def _node_name_from_file(fileName: str) -> str:
    base = os.path.basename(fileName)
    for extension in sorted(_VOLUME_EXTENSIONS + _SEGMENTATION_EXTENSIONS, key=len, reverse=True):
        if base.lower().endswith(extension):
            return base[: -len(extension)]
    return base

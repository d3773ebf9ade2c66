"""Reading and writing MRML nodes as ``slicer.app.coreIOManager()`` does in Slicer.

Slicer's ``slicer.util.loadVolume``/``loadSegmentation``/``loadNodeFromFile``/``saveNode`` call
``qSlicerCoreIOManager`` (``fileType``, ``loadNodes``, ``fileWriterFileType``, ``saveNodes``). This class
provides those calls for the file types our modules use, on the real readers and storage nodes of the
``slicer-core`` wheel, so that Slicer's own ``slicer/util.py`` works unchanged.
"""

from __future__ import annotations

import os

import vtk

import slicer

VOLUME_FILE = "VolumeFile"
SEGMENTATION_FILE = "SegmentationFile"
NO_FILE = "NoFile"

_VOLUME_EXTENSIONS = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".hdr", ".img", ".mha", ".mhd", ".dcm")
_SEGMENTATION_EXTENSIONS = (".seg.nrrd", ".seg.nhdr", ".seg.vtm")

# Flags of vtkSlicerVolumesLogic::AddArchetypeVolume.
_LABELMAP = 1
_CENTERED = 2
_SINGLE_FILE = 4


class CoreIOManager:
    """File-type detection, loading and saving for volumes and segmentations."""

    def __init__(self, scene: slicer.vtkMRMLScene, module_logics: dict) -> None:
        self._scene = scene
        self._logics = module_logics

    def fileType(self, fileName) -> str:
        name = str(fileName).lower()
        if name.endswith(_SEGMENTATION_EXTENSIONS):
            return SEGMENTATION_FILE
        if name.endswith(_VOLUME_EXTENSIONS):
            return VOLUME_FILE
        return NO_FILE

    def loadNodes(self, fileType, properties, loadedNodes=None, userMessages=None) -> bool:
        fileName = str(properties["fileName"])
        if not os.path.isfile(fileName):
            return self._fail(userMessages, f"File not found: {fileName}")
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

    def _selection_node(self):
        return self._scene.GetNodeByID("vtkMRMLSelectionNodeSingleton")

    def fileWriterFileType(self, node) -> str:
        if node.IsA("vtkMRMLSegmentationNode"):
            return SEGMENTATION_FILE
        if node.IsA("vtkMRMLVolumeNode"):
            return VOLUME_FILE
        return NO_FILE

    def saveNodes(self, fileType, properties, userMessages=None) -> bool:
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

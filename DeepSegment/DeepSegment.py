import numpy as np
import vtk

import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

from DeepSegmentLib import (
    LPS_FROM_RAS,
    available_devices,
    choose_device,
    ijk_to_ras_from_image,
    image_from_array,
    is_oblique,
)

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
            "Segment a volume with a deep-learning model on a GPU or the CPU. The panel shows the input's"
            " geometry exactly as the inference engine reads it (spacing, oblique axes, parent transforms)"
            " and the compute devices PyTorch finds on this machine."
        )
        self.parent.acknowledgementText = (
            "Part of the SlicerDeepLearning extension. Its engine learns from MONAI, nnU-Net and"
            " SlicerMONAIAuto3DSeg."
        )


#
# DeepSegmentWidget
#


class DeepSegmentWidget(ScriptedLoadableModuleWidget):
    """Panel: input volume with its geometry, and the compute device."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.logic = None
        self.ui = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DeepSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        self.ui.inputSelector.setMRMLScene(slicer.mrmlScene)
        self.logic = DeepSegmentLogic()
        for request, label in self.logic.deviceChoices():
            self.ui.deviceSelector.addItem(label, request)
        self.ui.inputSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputChanged)
        self.ui.deviceSelector.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.layout.addStretch(1)
        self.onInputChanged(self.ui.inputSelector.currentNode())
        self.onDeviceChanged()

    def onInputChanged(self, volumeNode):
        self.ui.geometryLabel.text = self.logic.geometrySummary(volumeNode)

    def onDeviceChanged(self, _index=None):
        self.ui.deviceInfoLabel.text = self.logic.chooseDevice(self.ui.deviceSelector.currentData).description


#
# DeepSegmentLogic
#


class DeepSegmentLogic(ScriptedLoadableModuleLogic):
    """Everything the panel decides, usable from Slicer's Python console.

    Example (Slicer's Python console)::

        logic = slicer.util.getModuleLogic("DeepSegment")
        image = logic.imageFromVolumeNode(getNode("MRHead"))   # SimpleITK image, LPS, exact geometry
        logic.chooseDevice("auto").description                 # e.g. 'CUDA GPU 0: NVIDIA ..., 24.0 GiB'
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._devices = None

    def devices(self):
        """Compute devices PyTorch finds (found once; ``refreshDevices`` looks again)."""
        if self._devices is None:
            self._devices = available_devices()
        return self._devices

    def refreshDevices(self):
        self._devices = None
        return self.devices()

    def chooseDevice(self, request="auto"):
        return choose_device(request, self.devices())

    def deviceChoices(self):
        """(request, label) pairs for a device selector: automatic choice first, then each device."""
        automatic = ("auto", "Automatic (" + self.chooseDevice("auto").description + ")")
        return [automatic] + [(device.torch_name, device.description) for device in self.devices()]

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
        self.test_ParentTransformIsApplied()
        self.test_PanelShowsGeometryAndDevice()

    @staticmethod
    def _obliqueVolume():
        """A seeded volume with anisotropic spacing, a 30 degree tilt and a non-zero origin."""
        angle = np.radians(30.0)
        rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
        ijkToRAS = np.eye(4)
        ijkToRAS[:3, :3] = rotation @ np.diag([0.8, 1.1, 2.5])
        ijkToRAS[:3, 3] = [12.0, -40.0, 7.0]
        voxels = np.random.default_rng(7).integers(0, 1000, size=(5, 6, 7), dtype=np.int16)
        node = slicer.util.addVolumeFromArray(voxels, ijkToRAS=ijkToRAS, name="Oblique")
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

    def test_PanelShowsGeometryAndDevice(self):
        self.delayDisplay("The panel shows the selected volume's geometry and the compute device")
        widget = slicer.modules.deepsegment.widgetRepresentation().self()
        node, _, _ = self._obliqueVolume()
        widget.ui.inputSelector.setCurrentNode(node)
        expected = "7\u00d76\u00d75 voxels, spacing 0.8\u00d71.1\u00d72.5 mm, oblique axes"
        self.assertEqual(widget.ui.geometryLabel.text, expected)
        self.assertEqual(widget.ui.deviceSelector.count, 1 + len(widget.logic.devices()))
        widget.ui.deviceSelector.currentIndex = widget.ui.deviceSelector.findData("cpu")
        self.assertTrue(widget.ui.deviceInfoLabel.text.startswith("CPU: "))
        widget.ui.inputSelector.setCurrentNode(None)
        self.assertEqual(widget.ui.geometryLabel.text, "Select an input volume.")
        self.delayDisplay("Test passed")

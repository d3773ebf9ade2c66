"""Pins the qMRML widget behaviour the stand-in imitates (Slicer Libs/MRML/Widgets/qMRMLNodeComboBox.h/.cxx),
and loading a .ui file with ctk and qMRML widgets through Slicer's real ``slicer.util.loadUI``."""

from __future__ import annotations

import os

import ctk
import pytest
import qt
import slicer
import slicer.util
from slicer_standin.qmrml import QMRML_CLASSES

UI_FILE = os.path.join(os.path.dirname(__file__), "Data", "StandInPanel.ui")


@pytest.fixture
def scene():
    assert qt.QApplication.instance() is not None
    for name, cls in QMRML_CLASSES.items():
        assert getattr(slicer, name) is cls  # the stand-in boot puts them into the slicer namespace
    return slicer.vtkMRMLScene()


def _volumeSelector(scene, **properties):
    selector = slicer.qMRMLNodeComboBox()
    selector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
    for name, value in properties.items():
        setattr(selector, name, value)
    selector.setMRMLScene(scene)
    return selector


def test_defaults_match_the_real_widget(scene):
    selector = slicer.qMRMLNodeComboBox()
    assert not selector.enabled  # disabled until it has a scene
    assert (selector.noneEnabled, selector.addEnabled, selector.removeEnabled) == (False, True, True)
    assert (selector.editEnabled, selector.renameEnabled, selector.selectNodeUponCreation) == (False, False, True)
    assert selector.showChildNodeTypes and not selector.showHidden
    selector.setMRMLScene(scene)
    assert selector.enabled and selector.mrmlScene() is scene


def test_follows_scene_additions_and_types(scene):
    selector = _volumeSelector(scene)
    added = []
    selector.connect("nodeAdded(vtkMRMLNode*)", lambda node: added.append(node.GetName()))
    scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "first")
    scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")  # a subclass: listed
    scene.AddNewNodeByClass("vtkMRMLModelNode", "model")  # other type: not listed
    assert selector.nodeCount() == 2
    assert [selector.nodeFromIndex(i).GetName() for i in range(2)] == ["first", "labels"]
    assert added == ["first", "labels"]
    selector.showChildNodeTypes = False
    assert selector.nodeCount() == 1


def test_first_node_becomes_current_and_signals_carry_the_node(scene):
    selector = _volumeSelector(scene)
    nodes, valid, ids = [], [], []
    selector.connect("currentNodeChanged(vtkMRMLNode*)", lambda node: nodes.append(node))
    selector.connect("currentNodeChanged(bool)", lambda isValid: valid.append(isValid))
    selector.connect("currentNodeIDChanged(QString)", lambda nodeID: ids.append(nodeID))
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "first")
    assert selector.currentNode() is volume
    assert selector.currentNodeID == volume.GetID()
    assert nodes == [volume] and valid == [True] and ids == [volume.GetID()]


def test_none_enabled_keeps_none_selected(scene):
    selector = _volumeSelector(scene, noneEnabled=True)
    scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "first")
    assert selector.currentNode() is None
    assert selector.nodeCount() == 1


def test_set_current_node_and_id(scene):
    selector = _volumeSelector(scene, noneEnabled=True)
    first = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "first")
    second = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "second")
    selector.setCurrentNode(second)
    assert selector.currentNode() is second
    selector.setCurrentNodeID(first.GetID())
    assert selector.currentNode() is first
    selector.setCurrentNode(scene.AddNewNodeByClass("vtkMRMLModelNode"))  # not listed: selection cleared
    assert selector.currentNode() is None


def test_current_node_requested_before_the_scene_is_applied_with_it(scene):
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "first")
    other = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "second")
    selector = slicer.qMRMLNodeComboBox()
    selector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
    selector.setCurrentNode(other)
    selector.setMRMLScene(scene)
    assert selector.currentNode() is other
    assert volume is not None


def test_rename_relabels_and_signals(scene):
    selector = _volumeSelector(scene)
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "first")
    nodes = []
    selector.currentNodeChanged.connect(lambda node: nodes.append(node))
    volume.SetName("renamed")
    assert selector.comboBox().itemText(0) == "renamed"
    assert nodes == [volume]  # the real widget emits on current text change


def test_removal_moves_to_the_neighbour_then_clears(scene):
    selector = _volumeSelector(scene)
    first = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "first")
    second = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "second")
    removed = []
    selector.connect("nodeAboutToBeRemoved(vtkMRMLNode*)", lambda node: removed.append(node.GetName()))
    nodes = []
    selector.connect("currentNodeChanged(vtkMRMLNode*)", lambda node: nodes.append(node))
    selector.setCurrentNode(first)
    scene.RemoveNode(first)
    assert selector.currentNode() is second
    scene.RemoveNode(second)
    assert selector.currentNode() is None
    assert nodes[-1] is None
    assert removed == ["first", "second"]
    assert selector.nodeCount() == 0


def test_hidden_nodes_and_attributes_filter(scene):
    selector = _volumeSelector(scene)
    selector.addAttribute("vtkMRMLScalarVolumeNode", "Modality", "CT")
    ct = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
    ct.SetAttribute("Modality", "CT")
    scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "mr").SetAttribute("Modality", "MR")
    hidden = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "hidden")
    hidden.SetAttribute("Modality", "CT")
    hidden.SetHideFromEditors(True)
    assert [selector.nodeFromIndex(i) for i in range(selector.nodeCount())] == [ct]


def test_add_node_creates_selects_and_signals(scene):
    selector = _volumeSelector(scene, noneEnabled=True, baseName="Output")
    byUser = []
    selector.connect("nodeAddedByUser(vtkMRMLNode*)", lambda node: byUser.append(node))
    node = selector.addNode()
    assert node.IsA("vtkMRMLScalarVolumeNode") and node.GetName() == "Output"
    assert scene.GetNodeByID(node.GetID()) is node
    assert selector.currentNode() is node
    assert byUser == [node]
    selector.selectNodeUponCreation = False
    selector.addNode()
    assert selector.currentNode() is node


def test_works_with_the_application_scene():
    selector = _volumeSelector(slicer.mrmlScene)
    volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "app volume")
    assert selector.currentNode() is volume


def test_mrml_widget_scene_signal(scene):
    widget = slicer.qMRMLWidget()
    scenes = []
    widget.connect("mrmlSceneChanged(vtkMRMLScene*)", lambda newScene: scenes.append(newScene))
    widget.setMRMLScene(scene)
    assert widget.mrmlScene() is scene and scenes == [scene]


def test_segment_editor_widget_holds_the_selections(scene):
    editor = slicer.qMRMLSegmentEditorWidget()
    editor.setMRMLScene(scene)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    editorNode = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editor.setMRMLSegmentEditorNode(editorNode)
    editor.setSegmentationNode(segmentation)
    editor.setSourceVolumeNode(volume)
    assert editor.segmentationNode() is segmentation
    assert editor.sourceVolumeNode() is volume
    assert editor.mrmlSegmentEditorNode() is editorNode


def test_load_ui_with_ctk_and_qmrml_widgets(scene):
    widget = slicer.util.loadUI(UI_FILE)
    ui = slicer.util.childWidgetVariables(widget)
    assert isinstance(widget, slicer.qMRMLWidget)
    assert isinstance(ui.inputsCollapsibleButton, ctk.ctkCollapsibleButton)
    assert ui.inputsCollapsibleButton.text == "Inputs" and ui.inputsCollapsibleButton.collapsed
    assert isinstance(ui.inputSelector, slicer.qMRMLNodeComboBox)
    assert ui.inputSelector.nodeTypes == ("vtkMRMLScalarVolumeNode",)
    assert ui.inputSelector.noneEnabled and not ui.inputSelector.addEnabled and not ui.inputSelector.removeEnabled
    assert not ui.inputSelector.selectNodeUponCreation
    assert ui.inputSelector.SlicerParameterName == "inputVolume"
    assert ui.thresholdSlider.value == 100.0 and ui.thresholdSlider.decimals == 1
    assert ui.outputPathLineEdit.nameFilters == ("Images (*.nrrd *.nii.gz)",)
    assert ui.outputPathLineEdit.filters == ctk.ctkPathLineEdit.Files | ctk.ctkPathLineEdit.Writable
    assert ui.applyButton.enabled is False and ui.inputLabel.text == "Input volume:"
    assert sorted(child.name for child in slicer.util.findChildren(widget, className="ctk*")) == [
        "inputsCollapsibleButton",
        "outputPathLineEdit",
        "thresholdSlider",
    ]
    # The .ui connection mrmlSceneChanged(vtkMRMLScene*) -> setMRMLScene(vtkMRMLScene*) works.
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    widget.setMRMLScene(scene)
    assert ui.inputSelector.mrmlScene() is scene and ui.inputSelector.nodeFromIndex(0) is volume

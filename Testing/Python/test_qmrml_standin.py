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


def test_plot_view_shows_a_plot_view_node_of_its_scene():
    view = slicer.qMRMLPlotView()
    scenes = []
    view.connect("mrmlSceneChanged(vtkMRMLScene*)", lambda newScene: scenes.append(newScene))
    view.setMRMLScene(slicer.mrmlScene)
    viewNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotViewNode")
    chart = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotChartNode")
    viewNode.SetPlotChartNodeID(chart.GetID())
    view.setMRMLPlotViewNode(viewNode)
    view.fitToContent()
    assert view.mrmlScene() is slicer.mrmlScene and scenes == [slicer.mrmlScene]
    assert view.mrmlPlotViewNode() is viewNode and viewNode.GetPlotChartNode() is chart
    with pytest.raises(TypeError):
        view.setMRMLPlotViewNode(chart)
    view.setMRMLPlotViewNode(None)
    assert view.mrmlPlotViewNode() is None
    for node in (viewNode, chart):
        slicer.mrmlScene.RemoveNode(node)


def _editorWithCase():
    """An editor on Slicer's scene (where the segment editor node class is registered) with its parameter node."""
    editor = slicer.qMRMLSegmentEditorWidget()
    editorNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editor.setMRMLSegmentEditorNode(editorNode)
    editor.setMRMLScene(slicer.mrmlScene)
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    return editor, editorNode, segmentation, volume


def test_segment_editor_keeps_its_selections_in_the_parameter_node():
    """qMRMLSegmentEditorWidget::setSegmentationNode/setSourceVolumeNode write the segment editor node."""
    editor = slicer.qMRMLSegmentEditorWidget()
    editor.setMRMLScene(slicer.mrmlScene)
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    # Slicer logs these as errors and ignores them: a panel doing so shows an empty editor.
    with pytest.raises(RuntimeError, match="need to set segment editor node first"):
        editor.setSegmentationNode(segmentation)
    editorNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editor.setMRMLSegmentEditorNode(editorNode)
    with pytest.raises(RuntimeError, match="segment editor and segmentation nodes first"):
        editor.setSourceVolumeNode(volume)
    editor.setSegmentationNode(segmentation)
    editor.setSourceVolumeNode(volume)
    assert editor.mrmlSegmentEditorNode() is editorNode
    assert editorNode.GetSegmentationNode() is segmentation and editorNode.GetSourceVolumeNode() is volume
    assert editor.segmentationNode() is segmentation and editor.sourceVolumeNode() is volume
    assert editor.segmentationNodeID() == segmentation.GetID() and editor.sourceVolumeNodeID() == volume.GetID()
    # The widget follows its parameter node.
    other = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    editorNode.SetAndObserveSegmentationNode(other)
    assert editor.segmentationNode() is other


def test_an_active_effect_observes_the_views_until_deactivated():
    editor, editorNode, segmentation, volume = _editorWithCase()
    editor.setSegmentationNode(segmentation)
    editor.setSourceVolumeNode(volume)
    assert "Paint" in editor.availableEffectNames() and editor.activeEffect() is None
    editor.setActiveEffectByName("Paint")
    assert editor.activeEffect().name == "Paint" and editorNode.GetActiveEffectName() == "Paint"
    assert editor.standInViewsObserved
    editor.setActiveEffect(None)
    assert editor.activeEffect() is None and not editor.standInViewsObserved
    editor.setActiveEffect(editor.effectByName("Erase"))
    # Another segmentation deactivates the effect (qMRMLSegmentEditorWidget::setSegmentationNode).
    editor.setSegmentationNode(slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode"))
    assert editor.activeEffect() is None and not editorNode.GetActiveEffectName()
    editor.setActiveEffectByName("Paint")
    editor.removeViewObservations()
    assert not editor.standInViewsObserved and editor.activeEffect().name == "Paint"


def test_keyboard_shortcuts_live_on_the_main_window_until_uninstalled():
    editor = slicer.qMRMLSegmentEditorWidget()
    mainWindow = slicer.util.mainWindow()
    before = len(mainWindow.findChildren(qt.QShortcut))
    editor.installKeyboardShortcuts()
    editor.installKeyboardShortcuts()  # installing again replaces them
    installed = mainWindow.findChildren(qt.QShortcut)
    assert len(installed) - before == len(editor.standInShortcuts) == 35
    assert {shortcut.key.toString() for shortcut in editor.standInShortcuts} >= {"1", "0", "Shift+1", "Z", "Q", "I"}
    editor.uninstallKeyboardShortcuts()
    assert len(mainWindow.findChildren(qt.QShortcut)) == before and editor.standInShortcuts == []


def test_closing_the_scene_resets_the_selections_and_the_effect():
    editor, editorNode, segmentation, volume = _editorWithCase()
    editorNode.SetSingletonTag("StandInTest")  # singletons stay when the scene closes, reset
    editor.setSegmentationNode(segmentation)
    editor.setSourceVolumeNode(volume)
    editor.setActiveEffectByName("Paint")
    slicer.mrmlScene.Clear(False)
    assert slicer.mrmlScene.GetSingletonNode("StandInTest", "vtkMRMLSegmentEditorNode") is editorNode
    assert editor.mrmlSegmentEditorNode() is editorNode
    assert editor.segmentationNode() is None and editor.sourceVolumeNode() is None
    assert editor.activeEffect() is None and not editor.standInViewsObserved


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

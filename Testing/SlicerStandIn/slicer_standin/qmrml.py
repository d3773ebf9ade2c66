"""Stand-ins for the qMRML widgets Slicer modules use (Slicer Libs/MRML/Widgets), on PySide6.

They work on a real MRML scene from the ``slicer-core`` wheel and follow it through VTK
observers, with the public API of the real widgets (see qMRMLNodeComboBox.h): Qt
properties, slots and signals named as in Slicer.  Signals carrying a ``vtkMRMLNode*`` or
``vtkMRMLScene*`` are declared with a Python-object argument; the ``qt`` stand-in
matches them by their C++ signature (``connect('currentNodeChanged(vtkMRMLNode*)', f)``).
``QMRML_CLASSES`` maps each class name to its class, to be set on the ``slicer`` module.
"""

from __future__ import annotations

import qt  # noqa: F401  (installs PythonQt semantics before the classes below are used)
import slicer
import slicer.util
import vtk
from PySide6.QtCore import Property, QObject, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import QComboBox, QFormLayout, QHBoxLayout, QInputDialog, QLabel, QSizePolicy, QWidget


class qMRMLWidget(QWidget):
    """Base of Slicer's MRML-aware panels: holds a scene, ``mrmlSceneChanged(vtkMRMLScene*)``.

    In .ui files this signal is connected to the ``setMRMLScene`` slot of child selectors,
    so setting the scene on the top widget reaches them all.
    """

    mrmlSceneChanged = Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._mrmlScene = None

    def mrmlScene(self):
        return self._mrmlScene

    def setMRMLScene(self, scene):
        if scene is self._mrmlScene:
            return
        self._mrmlScene = scene
        self.mrmlSceneChanged.emit(scene)


def _observeUntilDestroyed(widget, observations):
    """Remove the VTK observers listed in ``observations`` when the widget's C++ side goes.

    The callback captures only the list, so the observers do not keep calling a deleted widget.
    """

    def removeObservers():
        for observed, tag in observations:
            observed.RemoveObserver(tag)
        observations.clear()

    widget.destroyed.connect(removeObservers)


def _flagAccessors(name):
    """Setter and Qt property of one boolean option of qMRMLNodeComboBox."""

    def getter(self):
        return self._flags[name]

    def setter(self, value):
        self._flags[name] = bool(value)
        self._refresh()

    return setter, Property(bool, getter, setter)


class qMRMLNodeComboBox(QWidget):
    """Selector of a node of the scene, like Slicer's qMRMLNodeComboBox.

    Lists the scene's nodes whose class is (or, with ``showChildNodeTypes``, derives from)
    one of ``nodeTypes``, hides nodes hidden from editors unless ``showHidden``, and
    filters on attributes given by ``addAttribute``.  It follows the scene: added nodes
    appear, removed ones go, renamed ones are relabelled.  As with the real widget (whose
    inner QComboBox picks an item when its first item is inserted or its current item is
    removed), the first listed node becomes current when nothing is selected and
    ``noneEnabled`` is false, and when the current node is removed the node taking its
    place (or else the last one) becomes current; with no node left the selection is empty.
    ``addNode()`` creates a node of the first type (the "Create new" entry) and selects it
    when ``selectNodeUponCreation``.  Selection changes emit ``currentNodeChanged(vtkMRMLNode*)``,
    ``currentNodeChanged(bool)`` and ``currentNodeIDChanged(QString)``, as does a rename of
    the current node (the real widget emits on current text change).
    """

    currentNodeChanged = Signal((object,), (bool,))
    currentNodeIDChanged = Signal(str)
    nodeActivated = Signal(object)
    nodeAdded = Signal(object)
    nodeAddedByUser = Signal(object)
    nodeAddedByUserAction = Signal(object)
    nodeAboutToBeRemoved = Signal(object)
    currentNodeRenamed = Signal(str)
    nodeAboutToBeEdited = Signal(object)

    _CREATE, _DELETE, _RENAME, _EDIT = "create", "delete", "rename", "edit"

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None
        self._observations = []
        _observeUntilDestroyed(self, self._observations)
        self._nodeTypes = []
        self._hideChildNodeTypes = []
        self._attributes = []
        self._baseNames = {}
        self._flags = {
            "noneEnabled": False,
            "addEnabled": True,
            "removeEnabled": True,
            "editEnabled": False,
            "renameEnabled": False,
            "selectNodeUponCreation": True,
            "showHidden": False,
            "showChildNodeTypes": True,
        }
        self._noneDisplay = "None"
        self._nodes = []
        self._current = None
        self._currentLabel = ""
        self._requestedNode = None
        self._updating = False
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self._comboBox = QComboBox(self)
        self._comboBox.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)
        layout.addWidget(self._comboBox)
        self._comboBox.activated.connect(self._onActivated)
        self.setEnabled(False)

    # --- properties -----------------------------------------------------------------------

    def _getNodeTypes(self):
        return list(self._nodeTypes)

    def setNodeTypes(self, nodeTypes):
        self._nodeTypes = [str(nodeType) for nodeType in nodeTypes]
        self._refresh()

    nodeTypes = Property("QStringList", _getNodeTypes, setNodeTypes)

    def _getHideChildNodeTypes(self):
        return list(self._hideChildNodeTypes)

    def setHideChildNodeTypes(self, nodeTypes):
        self._hideChildNodeTypes = [str(nodeType) for nodeType in nodeTypes]
        self._refresh()

    hideChildNodeTypes = Property("QStringList", _getHideChildNodeTypes, setHideChildNodeTypes)

    setNoneEnabled, noneEnabled = _flagAccessors("noneEnabled")
    setAddEnabled, addEnabled = _flagAccessors("addEnabled")
    setRemoveEnabled, removeEnabled = _flagAccessors("removeEnabled")
    setEditEnabled, editEnabled = _flagAccessors("editEnabled")
    setRenameEnabled, renameEnabled = _flagAccessors("renameEnabled")
    setSelectNodeUponCreation, selectNodeUponCreation = _flagAccessors("selectNodeUponCreation")
    setShowHidden, showHidden = _flagAccessors("showHidden")
    setShowChildNodeTypes, showChildNodeTypes = _flagAccessors("showChildNodeTypes")

    def _getNoneDisplay(self):
        return self._noneDisplay

    def setNoneDisplay(self, text):
        self._noneDisplay = text
        self._refresh()

    noneDisplay = Property(str, _getNoneDisplay, setNoneDisplay)

    def _getBaseName(self):
        return self._baseNames.get(self._nodeTypes[0], "") if self._nodeTypes else ""

    def setBaseName(self, baseName, nodeType=""):
        for each in [nodeType] if nodeType else self._nodeTypes:
            self._baseNames[each] = baseName

    baseName = Property(str, _getBaseName, setBaseName)

    def _getCurrentNodeID(self):
        return self._current.GetID() if self._current is not None else ""

    def setCurrentNodeID(self, nodeID):
        node = self._scene.GetNodeByID(nodeID) if (self._scene is not None and nodeID) else None
        self.setCurrentNode(node)

    # A property in Slicer too: PythonQt gives ``combo.currentNodeID`` as a str.
    currentNodeID = Property(str, _getCurrentNodeID, setCurrentNodeID, notify=currentNodeIDChanged)

    # --- scene ----------------------------------------------------------------------------

    def mrmlScene(self):
        return self._scene

    def setMRMLScene(self, scene):
        if scene is self._scene:
            return
        for observed, tag in self._observations:
            observed.RemoveObserver(tag)
        self._observations.clear()
        requested = self._requestedNode or self._current
        self._requestedNode = None
        self._scene = scene
        if scene is not None:
            for event, callback in (
                (slicer.vtkMRMLScene.NodeAddedEvent, self._onNodeAdded),
                (slicer.vtkMRMLScene.NodeAboutToBeRemovedEvent, self._onNodeAboutToBeRemoved),
                (slicer.vtkMRMLScene.NodeRemovedEvent, self._onNodeRemoved),
                (slicer.vtkMRMLScene.EndBatchProcessEvent, self._onSceneChanged),
                (slicer.vtkMRMLScene.EndCloseEvent, self._onSceneChanged),
                (slicer.vtkMRMLScene.EndImportEvent, self._onSceneChanged),
            ):
                self._observations.append((scene, scene.AddObserver(event, callback)))
        self._refresh(preferred=requested)
        self.setEnabled(scene is not None)

    def _matches(self, node):
        className = node.GetClassName()
        if self._flags["showChildNodeTypes"]:
            typeMatches = any(node.IsA(nodeType) for nodeType in self._nodeTypes)
        else:
            typeMatches = className in self._nodeTypes
        if not typeMatches or any(node.IsA(hidden) for hidden in self._hideChildNodeTypes):
            return False
        if node.GetHideFromEditors() and not self._flags["showHidden"]:
            return False
        for nodeType, name, value in self._attributes:
            if node.IsA(nodeType):
                actual = node.GetAttribute(name)
                if actual is None or (value is not None and actual != str(value)):
                    return False
        return True

    def _sceneNodes(self):
        if self._scene is None or not self._nodeTypes:
            return []
        nodes = self._scene.GetNodes()
        return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]

    def _observeNode(self, node):
        if not any(observed is node for observed, _ in self._observations):
            self._observations.append((node, node.AddObserver(vtk.vtkCommand.ModifiedEvent, self._onNodeModified)))

    def _forgetNode(self, node):
        for entry in [entry for entry in self._observations if entry[0] is node]:
            node.RemoveObserver(entry[1])
            self._observations.remove(entry)

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def _onNodeAdded(self, caller, event, node):
        if self._scene is None or self._scene.IsBatchProcessing() or not self._matchesType(node):
            return
        self._refresh()
        if self._matches(node):
            self.nodeAdded.emit(node)

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def _onNodeAboutToBeRemoved(self, caller, event, node):
        if any(listed is node for listed in self._nodes):
            self.nodeAboutToBeRemoved.emit(node)

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def _onNodeRemoved(self, caller, event, node):
        self._forgetNode(node)
        if not self._scene.IsBatchProcessing():
            self._refresh()

    def _onSceneChanged(self, caller, event):
        self._refresh()

    def _onNodeModified(self, caller, event):
        self._refresh()

    def _matchesType(self, node):
        return any(node.IsA(nodeType) for nodeType in self._nodeTypes)

    # --- list and selection ---------------------------------------------------------------

    def _label(self, nodeType):
        return nodeType[len("vtkMRML") :] if nodeType.startswith("vtkMRML") else nodeType

    def _refresh(self, preferred=None):
        """Rebuild the list from the scene and settle the current node like the real widget."""
        previousNodes = self._nodes
        candidates = [node for node in self._sceneNodes() if self._matchesType(node)]
        for node in candidates:
            self._observeNode(node)
        self._nodes = [node for node in candidates if self._matches(node)]
        current = preferred if preferred is not None else self._current
        if not any(node is current for node in self._nodes):
            current = self._replacementFor(current, previousNodes)
        self._rebuildItems()
        self._setCurrent(current)

    def _replacementFor(self, current, previousNodes):
        if self._flags["noneEnabled"] and current is None:
            return None
        if current is None:
            return self._nodes[0] if self._nodes else None
        positions = [i for i, node in enumerate(previousNodes) if node is current]
        if not positions or not self._nodes:
            return None
        return self._nodes[min(positions[0], len(self._nodes) - 1)]

    def _rebuildItems(self):
        self._updating = True
        try:
            self._comboBox.clear()
            if self._flags["noneEnabled"]:
                self._comboBox.addItem(self._noneDisplay, None)
            for node in self._nodes:
                self._comboBox.addItem(node.GetName() or "", node.GetID())
            label = self._label(self._nodeTypes[0]) if self._nodeTypes else "node"
            actions = [
                (self._CREATE, "addEnabled", f"Create new {label}"),
                (self._DELETE, "removeEnabled", f"Delete current {label}"),
                (self._EDIT, "editEnabled", f"Edit current {label}"),
                (self._RENAME, "renameEnabled", f"Rename current {label}"),
            ]
            enabledActions = [(action, text) for action, flag, text in actions if self._flags[flag]]
            if enabledActions and self._scene is not None:
                self._comboBox.insertSeparator(self._comboBox.count)
                for action, text in enabledActions:
                    self._comboBox.addItem(text, action)
        finally:
            self._updating = False

    def _indexOf(self, node):
        offset = 1 if self._flags["noneEnabled"] else 0
        if node is None:
            return 0 if offset else -1
        for i, listed in enumerate(self._nodes):
            if listed is node:
                return i + offset
        return -1

    def _setCurrent(self, node):
        self._updating = True
        try:
            self._comboBox.setCurrentIndex(self._indexOf(node))
        finally:
            self._updating = False
        label = node.GetName() if node is not None else ""
        if node is self._current and label == self._currentLabel:
            return
        self._current = node
        self._currentLabel = label
        overloads = qMRMLNodeComboBox.currentNodeChanged.__get__(self, type(self))
        overloads[object].emit(node)
        overloads[bool].emit(node is not None)
        self.currentNodeIDChanged.emit(node.GetID() if node is not None else "")

    def _onActivated(self, index):
        data = self._comboBox.itemData(index)
        offset = 1 if self._flags["noneEnabled"] else 0
        if data == self._CREATE:
            node = self.addNode()
            if node is not None:
                self.setCurrentNode(node)
                self.nodeAddedByUserAction.emit(node)
        elif data == self._DELETE:
            self.removeCurrentNode()
        elif data == self._EDIT:
            self.nodeAboutToBeEdited.emit(self._current)
        elif data == self._RENAME:
            self.renameCurrentNode()
        else:
            node = self._nodes[index - offset] if index >= offset else None
            self.setCurrentNode(node)
            self.nodeActivated.emit(node)
        self._comboBox.setCurrentIndex(self._indexOf(self._current))

    # --- public API ----------------------------------------------------------------------

    def currentNode(self):
        return self._current

    def setCurrentNode(self, node):
        if self._scene is None:
            self._requestedNode = node
            return
        self._setCurrent(node if self._indexOf(node) != -1 or node is None else None)

    def setCurrentNodeIndex(self, index):
        self.setCurrentNode(self.nodeFromIndex(index))

    def nodeCount(self):
        return len(self._nodes) if self._scene is not None else 0

    def nodeFromIndex(self, index):
        return self._nodes[index] if 0 <= index < len(self._nodes) else None

    def nodes(self):
        return list(self._nodes)

    def addAttribute(self, nodeType, attributeName, attributeValue=None):
        self._attributes.append((nodeType, attributeName, attributeValue))
        self._refresh()

    def removeAttribute(self, nodeType, attributeName):
        self._attributes = [entry for entry in self._attributes if entry[:2] != (nodeType, attributeName)]
        self._refresh()

    def addNode(self, nodeType=None):
        """Create a node of ``nodeType`` (default: the first node type) in the scene."""
        if self._scene is None or not self._nodeTypes:
            return None
        nodeType = nodeType or self._nodeTypes[0]
        if nodeType not in self._nodeTypes:
            return None
        node = self._scene.CreateNodeByClass(nodeType)
        if node is None:
            return None
        baseName = self._baseNames.get(nodeType) or self._scene.GetTagByClassName(nodeType) or self._label(nodeType)
        node.SetName(self._scene.GenerateUniqueName(baseName))
        for attributeNodeType, name, value in self._attributes:
            if node.IsA(attributeNodeType):
                node.SetAttribute(name, "" if value is None else str(value))
        self._scene.AddNode(node)
        node.UnRegister(None)  # the scene holds it now (CreateNodeByClass returned a new reference)
        if self._flags["selectNodeUponCreation"]:
            self.setCurrentNode(node)
        self.nodeAddedByUser.emit(node)
        return node

    def removeCurrentNode(self):
        if self._scene is not None and self._current is not None:
            self._scene.RemoveNode(self._current)

    def renameCurrentNode(self):
        """Ask for a new name in a dialog (blocks, as in Slicer)."""
        if self._current is None:
            return
        name, ok = QInputDialog.getText(self, "Rename", "New name:", text=self._current.GetName())
        if ok and name:
            self._current.SetName(name)
            self.currentNodeRenamed.emit(name)

    def comboBox(self):
        return self._comboBox


# Slicer 5.8's core effects, in the Segment Editor's default order.
SEGMENT_EDITOR_EFFECT_NAMES = (
    "Paint",
    "Draw",
    "Erase",
    "Level tracing",
    "Grow from seeds",
    "Fill between slices",
    "Threshold",
    "Margin",
    "Hollow",
    "Smoothing",
    "Scissors",
    "Islands",
    "Logical operators",
    "Mask volume",
)

# The keys qMRMLSegmentEditorWidget::installKeyboardShortcuts binds: effects 1..20, deactivate/toggle the
# effect, undo/redo, previous/next segment, toggle the intensity mask.
SEGMENT_EDITOR_SHORTCUT_KEYS = (
    *[str(i % 10) for i in range(1, 11)],
    *["Shift+" + str(i % 10) for i in range(1, 11)],
    "Esc",
    "Space",
    "Z",
    QKeySequence.StandardKey.Undo,
    "Y",
    QKeySequence.StandardKey.Redo,
    *"QW/*,.><",
    "I",
)


class qSlicerSegmentEditorAbstractEffect(QObject):
    """An effect of the Segment Editor, as far as the stand-in goes: its ``name`` (a Qt property)."""

    def __init__(self, name, parent=None):
        super().__init__(parent)
        self._name = name

    name = Property(str, lambda self: self._name)


class qMRMLSegmentEditorWidget(qMRMLWidget):
    """Stand-in for Slicer's Segment Editor widget (qMRMLSegmentEditorWidget.cxx, Slicer 5.8), without painting.

    What it keeps and how, as in Slicer:

    - The selections live in the segment editor node (``setMRMLSegmentEditorNode``): the widget follows
      that node's changes (``updateWidgetFromMRML``). ``setSegmentationNode`` needs the node, and
      ``setSourceVolumeNode`` a segmentation too: Slicer refuses them with a logged error (qCritical) and
      goes on; the stand-in raises ``RuntimeError``. Selecting another segmentation deactivates the effect.
      ``segmentationNode()`` is what the segmentation selector shows, ``sourceVolumeNode()`` the node's.
    - ``setActiveEffect(effect)`` / ``setActiveEffectByName(name)`` write the node's active effect name; an
      active effect makes the widget observe the views (``setupViewObservations``), none removes the
      observations. The effects are named (``availableEffectNames()``) but cannot paint.
    - ``installKeyboardShortcuts(parent=None)`` puts ``QShortcut`` objects for the editor's keys on
      ``parent``, by default the main window, where they act in every module until
      ``uninstallKeyboardShortcuts()`` deletes them (the Segment Editor module does so in ``exit()``).
    - Closing the scene resets the node (singletons stay, their references go): at EndCloseEvent the widget
      updates from it again.

    Not in Slicer, for tests: ``standInViewsObserved`` tells whether the views would be observed (the
    stand-in has no views, so Slicer's widget would observe none) and ``standInShortcuts`` lists the
    installed shortcuts.
    """

    segmentationNodeChanged = Signal(object)
    sourceVolumeNodeChanged = Signal(object)
    masterVolumeNodeChanged = Signal(object)
    currentSegmentIDChanged = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._parameterNode = None
        self._parameterNodeObservations = []
        _observeUntilDestroyed(self, self._parameterNodeObservations)
        self._sceneObservations = []
        _observeUntilDestroyed(self, self._sceneObservations)
        self._segmentationNode = None
        self._sourceVolumeNode = None
        self._effects = [qSlicerSegmentEditorAbstractEffect(name, self) for name in SEGMENT_EDITOR_EFFECT_NAMES]
        self._activeEffect = None
        self._maximumNumberOfUndoStates = 10
        self._updating = False
        self.standInViewsObserved = False
        self.standInShortcuts = []
        layout = QFormLayout(self)
        self._segmentationSelector = qMRMLNodeComboBox(self)
        self._segmentationSelector.setNodeTypes(["vtkMRMLSegmentationNode"])
        self._sourceVolumeSelector = qMRMLNodeComboBox(self)
        self._sourceVolumeSelector.setNodeTypes(["vtkMRMLScalarVolumeNode"])
        for selector in (self._segmentationSelector, self._sourceVolumeSelector):
            selector.setAddEnabled(False)
            selector.setRemoveEnabled(False)
            selector.setNoneEnabled(True)
            self.mrmlSceneChanged.connect(selector.setMRMLScene)
        layout.addRow(QLabel("Segmentation:", self), self._segmentationSelector)
        layout.addRow(QLabel("Source volume:", self), self._sourceVolumeSelector)
        self._segmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._onSegmentationSelected)
        self._sourceVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._onSourceVolumeSelected)

    # --- scene and parameter node -----------------------------------------------------------

    def setMRMLScene(self, scene):
        if scene is self.mrmlScene():
            return
        for observed, tag in self._sceneObservations:
            observed.RemoveObserver(tag)
        self._sceneObservations.clear()
        self._updating = True  # the selectors pick nodes of the new scene: not the user's choice
        try:
            super().setMRMLScene(scene)
        finally:
            self._updating = False
        self.updateWidgetFromMRML()
        if scene is not None:
            for event, callback in (
                (slicer.vtkMRMLScene.EndCloseEvent, self._onSceneEndClose),
                (slicer.vtkMRMLScene.EndBatchProcessEvent, self._onSceneEndBatchProcess),
            ):
                self._sceneObservations.append((scene, scene.AddObserver(event, callback)))

    def _onSceneEndClose(self, caller, event):
        self.updateWidgetFromMRML()

    def _onSceneEndBatchProcess(self, caller, event):
        self.updateWidgetFromMRML()

    def setMRMLSegmentEditorNode(self, node):
        if node is self._parameterNode:
            return
        for observed, tag in self._parameterNodeObservations:
            observed.RemoveObserver(tag)
        self._parameterNodeObservations.clear()
        self._parameterNode = node
        if node is not None:
            tag = node.AddObserver(vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._parameterNodeObservations.append((node, tag))
            self.updateWidgetFromMRML()

    def _onParameterNodeModified(self, caller, event):
        self.updateWidgetFromMRML()

    def mrmlSegmentEditorNode(self):
        return self._parameterNode

    def updateWidgetFromMRML(self):
        """Show the parameter node's selections and activate its effect (skipped while the scene closes)."""
        scene = self.mrmlScene()
        if scene is None or scene.IsClosing() or scene.IsBatchProcessing():
            return
        node = self._parameterNode
        self._segmentationSelector.setEnabled(node is not None)
        if node is None:
            return
        self._updating = True
        try:
            segmentation = node.GetSegmentationNode()
            self._segmentationSelector.setCurrentNode(segmentation)
            self._sourceVolumeSelector.setCurrentNode(node.GetSourceVolumeNode())
        finally:
            self._updating = False
        if segmentation is not self._segmentationNode:
            self._segmentationNode = segmentation
            self.segmentationNodeChanged.emit(segmentation)
        source = node.GetSourceVolumeNode()
        if source is not self._sourceVolumeNode:
            self._sourceVolumeNode = source
            self.sourceVolumeNodeChanged.emit(source)
            self.masterVolumeNodeChanged.emit(source)
        self._updateActiveEffect(self.effectByName(node.GetActiveEffectName() or ""))

    # --- selections ---------------------------------------------------------------------------

    def _refused(self, message):
        raise RuntimeError(f"qMRMLSegmentEditorWidget: {message} (Slicer logs this error and ignores the call)")

    def setSegmentationNode(self, node):
        if self._parameterNode is None:
            if node is not None:
                self._refused("setSegmentationNode failed: need to set segment editor node first")
            return
        if self._parameterNode.GetSegmentationNode() is node:
            return
        self.setActiveEffect(None)
        self._parameterNode.SetAndObserveSegmentationNode(node)

    def setSegmentationNodeID(self, nodeID):
        scene = self.mrmlScene()
        if scene is None:
            self._refused("setSegmentationNodeID failed: MRML scene is not set")
        self.setSegmentationNode(scene.GetNodeByID(nodeID) if nodeID else None)

    def segmentationNode(self):
        return self._segmentationSelector.currentNode()

    def segmentationNodeID(self):
        return self._segmentationSelector.currentNodeID

    def setSourceVolumeNode(self, node):
        if self._parameterNode is None or self.segmentationNode() is None:
            if node is not None:
                self._refused("setSourceVolumeNode failed: need to set segment editor and segmentation nodes first")
            return
        if node is not None and not node.IsA("vtkMRMLScalarVolumeNode"):
            node = None
        if self._parameterNode.GetSourceVolumeNode() is node:
            return
        self._parameterNode.SetAndObserveSourceVolumeNode(node)

    def setSourceVolumeNodeID(self, nodeID):
        scene = self.mrmlScene()
        if scene is None:
            self._refused("setSourceVolumeNodeID failed: MRML scene is not set")
        self.setSourceVolumeNode(scene.GetNodeByID(nodeID) if nodeID else None)

    def sourceVolumeNode(self):
        return self._parameterNode.GetSourceVolumeNode() if self._parameterNode is not None else None

    def sourceVolumeNodeID(self):
        node = self.sourceVolumeNode()
        return node.GetID() if node is not None and node.GetID() else ""

    def _onSegmentationSelected(self, node):
        if not self._updating:
            self.setSegmentationNode(node)

    def _onSourceVolumeSelected(self, node):
        if not self._updating:
            self.setSourceVolumeNode(node)

    def currentSegmentID(self):
        if self._parameterNode is None:
            return ""
        return self._parameterNode.GetSelectedSegmentID() or ""

    def setCurrentSegmentID(self, segmentID):
        if self._parameterNode is not None:
            self._parameterNode.SetSelectedSegmentID(segmentID)
            self.currentSegmentIDChanged.emit(segmentID)

    # --- effects and views --------------------------------------------------------------------

    def availableEffectNames(self):
        return [effect.name for effect in self._effects]

    def effectCount(self):
        return len(self._effects)

    def effectByIndex(self, index):
        return self._effects[index] if 0 <= index < len(self._effects) else None

    def effectByName(self, name):
        return next((effect for effect in self._effects if effect.name == name), None)

    def activeEffect(self):
        return self._activeEffect

    def setActiveEffect(self, effect):
        if self._parameterNode is None:
            if effect is not None:
                self._refused("setActiveEffect failed: invalid segment editor parameter set node")
            return
        self._parameterNode.SetActiveEffectName(effect.name if effect is not None else "")

    def setActiveEffectByName(self, name):
        effect = self.effectByName(name)
        if name and effect is None:
            self._refused(f"setActiveEffectByName failed: no effect named {name!r}")
        self.setActiveEffect(effect)

    def _updateActiveEffect(self, effect):
        if effect is self._activeEffect:
            return
        self._activeEffect = effect
        if effect is not None:
            self.setupViewObservations()
        else:
            self.removeViewObservations()

    def setupViewObservations(self):
        self.standInViewsObserved = True

    def removeViewObservations(self):
        self.standInViewsObserved = False

    def turnOffLightboxes(self):
        return False  # no slice views, so none in light box mode

    # --- keyboard shortcuts -------------------------------------------------------------------

    def installKeyboardShortcuts(self, parent=None):
        self.uninstallKeyboardShortcuts()
        if parent is None:
            parent = slicer.util.mainWindow()
        for key in SEGMENT_EDITOR_SHORTCUT_KEYS:
            self.standInShortcuts.append(QShortcut(QKeySequence(key), parent))

    def uninstallKeyboardShortcuts(self):
        for shortcut in self.standInShortcuts:
            shortcut.setParent(None)
            shortcut.deleteLater()
        self.standInShortcuts = []

    # --- options ------------------------------------------------------------------------------

    def _getMaximumNumberOfUndoStates(self):
        return self._maximumNumberOfUndoStates

    def setMaximumNumberOfUndoStates(self, count):
        self._maximumNumberOfUndoStates = int(count)

    maximumNumberOfUndoStates = Property(int, _getMaximumNumberOfUndoStates, setMaximumNumberOfUndoStates)


class qMRMLPlotView(QWidget):
    """Slicer's chart view of a plot view node (qMRMLPlotView.h), as panels embed it: ``setMRMLScene``,
    ``mrmlScene()``, ``mrmlSceneChanged(vtkMRMLScene*)``, ``setMRMLPlotViewNode`` / ``mrmlPlotViewNode()`` and
    ``fitToContent()``. It draws nothing here (the stand-in has no views): tests read the plot view node, its chart
    and the chart's series and tables, which are real MRML nodes."""

    mrmlSceneChanged = Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._mrmlScene = None
        self._plotViewNode = None

    def mrmlScene(self):
        return self._mrmlScene

    def setMRMLScene(self, scene):
        if scene is self._mrmlScene:
            return
        self._mrmlScene = scene
        self.mrmlSceneChanged.emit(scene)

    def mrmlPlotViewNode(self):
        return self._plotViewNode

    def setMRMLPlotViewNode(self, node):
        if node is not None and not node.IsA("vtkMRMLPlotViewNode"):
            raise TypeError(f"setMRMLPlotViewNode takes a vtkMRMLPlotViewNode, not a {node.GetClassName()}")
        self._plotViewNode = node

    def fitToContent(self):
        """Fits the axes to the plotted data in Slicer; nothing is drawn here."""


QMRML_CLASSES = {
    cls.__name__: cls
    for cls in (qMRMLWidget, qMRMLNodeComboBox, qMRMLSegmentEditorWidget, qSlicerSegmentEditorAbstractEffect,
                qMRMLPlotView)
}

"""The stand-in application: what ``slicer.app``, ``slicer.modules`` and Slicer's ``slicer.util`` give modules.

Each test uses Slicer's real ``slicer/util.py`` on the real MRML of the slicer-core wheel, as module
code does, so a failure here means module code that works in Slicer would fail in the tests (or the
reverse).
"""

from __future__ import annotations

import os
import textwrap

import numpy as np
import pytest
import qt
import vtk

import slicer
import slicer_standin
from slicer_standin import dialogs


def test_application_is_in_testing_mode_with_private_folders():
    assert slicer.app.testingEnabled()
    assert slicer.app.applicationName == "Slicer"
    assert os.path.isdir(slicer.app.temporaryPath)
    assert os.path.isdir(slicer.app.cachePath)
    assert slicer.app.majorVersion >= 5
    assert slicer.app.mrmlScene() is slicer.mrmlScene
    assert slicer.app.layoutManager() is None
    folder = slicer.util.tempDirectory()
    assert os.path.isdir(folder) and folder.startswith(slicer.app.temporaryPath)


def test_settings_are_private_and_persistent():
    settings = slicer.app.settings()
    settings.setValue("SlicerDeepLearning/TestKey", "42")
    settings.sync()
    assert slicer.util.settingsValue("SlicerDeepLearning/TestKey", None) == "42"
    assert slicer.util.settingsValue("SlicerDeepLearning/Missing", "default") == "default"
    # Next to the temporary folder, in the stand-in's own state folder: never the user's Slicer.ini.
    assert settings.fileName().startswith(os.path.dirname(slicer.app.temporaryPath) + os.sep)
    settings.remove("SlicerDeepLearning/TestKey")


@pytest.mark.parametrize(
    ("name", "logic_class"),
    [
        ("volumes", "vtkSlicerVolumesLogic"),
        ("segmentations", "vtkSlicerSegmentationsModuleLogic"),
        ("terminologies", "vtkSlicerTerminologiesModuleLogic"),
        ("subjecthierarchy", "vtkSlicerSubjectHierarchyModuleLogic"),
        ("sequences", "vtkSlicerSequencesLogic"),
        ("colors", "vtkMRMLColorLogic"),
    ],
)
def test_core_modules_expose_their_logics(name, logic_class):
    module = getattr(slicer.modules, name)
    assert module.logic().IsA(logic_class)
    assert module.logic().GetMRMLScene() is slicer.mrmlScene
    assert slicer.app.applicationLogic().GetModuleLogic(module.name) is module.logic()


def test_segments_can_be_created_and_filled():
    """Works only when the segmentations logic has registered its converter rules, as Slicer does."""
    volume = slicer.util.addVolumeFromArray(np.zeros((4, 5, 6), np.int16), name="Reference")
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segmentId = segmentation.GetSegmentation().AddEmptySegment("tumor", "Tumor", [1.0, 0.0, 0.0])
    mask = np.zeros((4, 5, 6), np.uint8)
    mask[1:3, 2:4, 3:5] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentation, segmentId, volume)
    np.testing.assert_array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume), mask)
    assert segmentation.GetSegmentation().GetSegment(segmentId).GetName() == "Tumor"


def test_default_color_tables_survive_closing_the_scene():
    """Built-in tables (Slicer's file-based ones such as GenericAnatomyColors are not in the wheel)."""
    slicer.mrmlScene.Clear(False)
    for nodeID in ("vtkMRMLColorTableNodeLabels", "vtkMRMLColorTableNodeGrey"):
        assert slicer.mrmlScene.GetNodeByID(nodeID) is not None


def test_volume_and_segmentation_files_round_trip_through_slicer_util(tmp_path):
    ijkToRAS = np.diag([0.5, 0.7, 2.0, 1.0])
    ijkToRAS[:3, 3] = [10.0, -5.0, 3.0]
    voxels = np.random.default_rng(3).integers(0, 500, size=(3, 4, 5)).astype(np.int16)
    volume = slicer.util.addVolumeFromArray(voxels, ijkToRAS=ijkToRAS, name="Original")
    path = str(tmp_path / "volume.nrrd")
    assert slicer.util.saveNode(volume, path)
    loaded = slicer.util.loadVolume(path)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(loaded), voxels)
    matrix = vtk.vtkMatrix4x4()
    loaded.GetIJKToRASMatrix(matrix)
    np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(matrix), ijkToRAS)
    assert loaded.GetName() == "volume"

    labels = slicer.util.loadLabelVolume(path)
    assert labels.IsA("vtkMRMLLabelMapVolumeNode")

    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation.GetSegmentation().AddEmptySegment("a", "A")
    segmentationPath = str(tmp_path / "labels.seg.nrrd")
    assert slicer.util.saveNode(segmentation, segmentationPath)
    reloaded = slicer.util.loadSegmentation(segmentationPath)
    assert reloaded.GetSegmentation().GetSegment("a").GetName() == "A"


def test_loading_a_missing_file_raises_with_the_reason(tmp_path):
    with pytest.raises(RuntimeError, match="File not found"):
        slicer.util.loadVolume(str(tmp_path / "missing.nrrd"))


def test_parameter_node_is_a_singleton_tagged_with_the_module():
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

    class ExampleLogic(ScriptedLoadableModuleLogic):
        pass

    node = ExampleLogic().getParameterNode()
    assert node.GetAttribute("ModuleName") == "Example"
    assert ExampleLogic().getParameterNode() is node
    assert ExampleLogic().getAllParameterNodes() == [node]


def test_try_with_error_display_reraises_in_testing_mode():
    with pytest.raises(ValueError), slicer.util.tryWithErrorDisplay("Failed"):
        raise ValueError("boom")


def test_try_with_error_display_shows_the_error_then_reraises_in_the_gui():
    """Slicer's own util (the wheel's slicer/util.py): in the GUI an error box, then the error again."""
    after = []
    gui, answer = slicer_standin.testing_mode(False), dialogs.answering(qt.QMessageBox.Ok)
    with gui, answer, pytest.raises(ValueError, match="boom"):
        with slicer.util.tryWithErrorDisplay("Failed"):
            raise ValueError("boom")
        after.append("skipped by the error")
    assert after == []
    assert dialogs.opened[-1].kind == "ctkMessageBox" and dialogs.opened[-1].text.startswith("Failed")


def test_testing_mode_can_be_switched_off_as_in_the_gui():
    assert slicer.app.testingEnabled()
    # Testing mode: no dialog, and the answer is no, although Slicer's docstring says yes (the testing value
    # True is compared with QMessageBox.Yes): code after a confirmation never runs in ctest.
    assert slicer.util.confirmYesNoDisplay("Restore?") is False
    assert slicer.util.confirmOkCancelDisplay("Restore?") is False
    with slicer_standin.testing_mode(False):
        assert not slicer.app.testingEnabled()
        with dialogs.answering(qt.QMessageBox.No):
            assert not slicer.util.confirmYesNoDisplay("Restore?")
        # Nobody answers: in Slicer the dialog would wait; here the call fails.
        with pytest.raises(dialogs.UnattendedDialogError, match="Restore"):
            slicer.util.confirmOkCancelDisplay("Restore?")
        with pytest.raises(dialogs.UnattendedDialogError):
            slicer.util.errorDisplay("Something failed")  # a main window exists, so the box opens
    assert slicer.app.testingEnabled()


def test_a_dialog_that_closes_itself_may_run():
    """slicer.util.delayDisplay's popup (testing mode off, 400 ms or more) closes itself: not a failure."""
    count = len(dialogs.opened)
    with slicer_standin.testing_mode(False):
        slicer.util.delayDisplay("A message that goes away", 400)
    assert len(dialogs.opened) == count


def test_every_kind_of_waiting_dialog_fails():
    for opens in (
        lambda: qt.QMessageBox.question(None, "Question", "Go on?"),
        lambda: qt.QFileDialog.getOpenFileName(None, "Open", "", ""),
        lambda: qt.QInputDialog.getText(None, "Name", "New name:"),
        lambda: qt.QMessageBox(qt.QMessageBox.Warning, "Title", "Text").exec_(),
    ):
        with pytest.raises(dialogs.UnattendedDialogError):
            opens()
    with pytest.raises(dialogs.UnattendedDialogError, match="did not open"), dialogs.answering(qt.QMessageBox.Ok):
        pass


def test_saving_a_node_makes_it_count_as_saved(tmp_path):
    """As qSlicerNodeWriter: the node's own storage node writes, so GetModifiedSinceRead turns false."""
    volume = slicer.util.addVolumeFromArray(np.zeros((3, 4, 5), np.int16))
    assert volume.GetModifiedSinceRead()
    assert slicer.util.saveNode(volume, str(tmp_path / "volume.nrrd"))
    assert not volume.GetModifiedSinceRead()
    slicer.util.updateVolumeFromArray(volume, np.ones((3, 4, 5), np.int16))
    assert volume.GetModifiedSinceRead()


def test_delay_display_processes_events():
    fired = []
    qt.QTimer.singleShot(0, lambda: fired.append(True))
    slicer.util.delayDisplay("processing events", 10)
    assert fired == [True]


def write_module(folder, name, dependencies=(), body=""):
    """A minimal scripted module in ``folder/name/name.py``, with a panel that records its life cycle."""
    os.makedirs(os.path.join(folder, name), exist_ok=True)
    source = f'''
        import slicer
        from slicer.ScriptedLoadableModule import *

        class {name}(ScriptedLoadableModule):
            def __init__(self, parent):
                ScriptedLoadableModule.__init__(self, parent)
                parent.title = "{name} title"
                parent.dependencies = {list(dependencies)!r}

        class {name}Widget(ScriptedLoadableModuleWidget):
            events = []
            def setup(self):
                ScriptedLoadableModuleWidget.setup(self)
                self.events.append("setup")
            def enter(self):
                self.events.append("enter")
            def exit(self):
                self.events.append("exit")
            def cleanup(self):
                self.events.append("cleanup")
    '''
    path = os.path.join(folder, name, name + ".py")
    with open(path, "w", encoding="utf-8") as file:
        file.write(textwrap.dedent(source) + textwrap.dedent(body))
    return path


def test_modules_load_in_dependency_order_and_panels_live_their_cycle(tmp_path):
    first = write_module(str(tmp_path), "StandInProbeB", dependencies=["StandInProbeA"])
    second = write_module(str(tmp_path), "StandInProbeA")
    modules = slicer_standin.load_modules([first, second])
    assert [module.name for module in modules] == ["StandInProbeA", "StandInProbeB"]
    assert slicer.modules.standinprobea.title == "StandInProbeA title"
    assert slicer.modules.standinprobea.path == second
    assert slicer_standin.load_modules([second])[0] is modules[0]

    panel = slicer.modules.standinprobea.widgetRepresentation()
    widget = panel.self()
    assert slicer.modules.StandInProbeAWidget is widget
    assert widget.parent is panel and widget.layout is panel.layout()
    panel.enter()
    assert panel.isEntered
    with pytest.raises(AssertionError):
        panel.enter()  # Slicer asserts that enter and exit alternate
    panel.exit()
    assert not panel.isEntered
    # Selecting modules in the main window exits the module shown and enters the new one.
    slicer.util.selectModule("StandInProbeA")
    assert slicer.util.selectedModule() == "StandInProbeA" and panel.isEntered
    slicer.util.selectModule("StandInProbeB")
    assert not panel.isEntered and slicer.modules.standinprobeb.widgetRepresentation().isEntered
    slicer.util.selectModule("Volumes")  # a core module: no panel in the stand-in
    slicer.app.moduleManager().moduleAboutToBeUnloaded.emit("StandInProbeA")
    assert widget.events == ["setup", "enter", "exit", "enter", "exit", "cleanup"]


def test_module_with_a_missing_dependency_is_refused(tmp_path):
    path = write_module(str(tmp_path), "StandInProbeOrphan", dependencies=["NoSuchModule"])
    with pytest.raises(RuntimeError, match="NoSuchModule"):
        slicer_standin.load_modules([path])


def test_self_test_of_a_module_runs_its_test_case(tmp_path):
    body = """
        class StandInProbeTestedTest(ScriptedLoadableModuleTest):
            ran = []
            def runTest(self):
                self.ran.append(self.messageDelay)
    """
    path = write_module(str(tmp_path), "StandInProbeTested", body=body)
    (module,) = slicer_standin.load_modules([path])
    slicer.selfTests["StandInProbeTested"](msec=5)
    assert module.pythonModule.StandInProbeTestedTest.ran == [5]

"""Scenes saved and loaded through Slicer's ``slicer.util.saveScene``/``loadScene`` in the stand-in, and
``slicer.i18n``: what the modules' parameter nodes and translatable texts rely on."""

from __future__ import annotations

import os

import numpy as np
import pytest
import qt

import slicer


@pytest.fixture
def clean_scene():
    slicer.mrmlScene.Clear(0)
    yield slicer.mrmlScene
    slicer.mrmlScene.Clear(0)


def _parameterNode(moduleName="SceneFileTest"):
    node = slicer.mrmlScene.GetSingletonNode(moduleName, "vtkMRMLScriptedModuleNode")
    if node is None:
        node = slicer.vtkMRMLScriptedModuleNode()
        node.SetSingletonTag(moduleName)
        node.SetAttribute("ModuleName", moduleName)
        node = slicer.mrmlScene.AddNode(node)
    return node


@pytest.mark.parametrize("suffix", [".mrb", ".mrml", ""])
def test_a_saved_scene_brings_back_parameters_references_and_volumes(clean_scene, tmp_path, suffix):
    voxels = np.random.default_rng(3).integers(0, 100, (4, 5, 6)).astype(np.int16)
    volume = slicer.util.addVolumeFromArray(voxels, name="Patient CT")
    if suffix == ".mrml":  # a scene file alone holds no data: the volume is saved beside it first
        assert slicer.util.saveNode(volume, str(tmp_path / "ct.nrrd"))
    node = _parameterNode()
    node.SetParameter("quality", "fast")
    node.SetNodeReferenceID("inputVolume", volume.GetID())
    path = str(tmp_path / ("scene" + suffix if suffix else "bundle-folder"))

    workingFolder = os.getcwd()
    assert slicer.util.saveScene(path)
    assert os.getcwd() == workingFolder
    slicer.mrmlScene.Clear(0)
    assert _parameterNode().GetParameter("quality") == ""  # closing resets the singleton
    assert not slicer.mrmlScene.GetNodesByName("Patient CT").GetNumberOfItems()

    scenePath = path if suffix else os.path.join(path, "bundle-folder.mrml")
    slicer.util.loadScene(scenePath)
    node = _parameterNode()
    assert node.GetParameter("quality") == "fast"
    restored = node.GetNodeReference("inputVolume")
    assert restored is not None and restored.GetName() == "Patient CT"
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(restored), voxels)


def test_loading_a_scene_with_clear_replaces_the_scene(clean_scene, tmp_path):
    slicer.util.addVolumeFromArray(np.zeros((2, 2, 2)), name="Saved")
    assert slicer.util.saveScene(str(tmp_path / "one.mrb"))
    slicer.util.addVolumeFromArray(np.zeros((2, 2, 2)), name="Added later")
    slicer.util.loadScene(str(tmp_path / "one.mrb"), {"clear": True})
    assert slicer.mrmlScene.GetNodesByName("Saved").GetNumberOfItems() == 1
    assert slicer.mrmlScene.GetNodesByName("Added later").GetNumberOfItems() == 0


def test_a_file_that_is_not_a_bundle_fails_to_load(clean_scene, tmp_path):
    path = tmp_path / "broken.mrb"
    path.write_bytes(b"not a zip")
    workingFolder = os.getcwd()
    with pytest.raises(RuntimeError):
        slicer.util.loadScene(str(path))
    assert os.getcwd() == workingFolder  # Slicer's unpacking changed it


def test_translation_functions_return_the_text_with_no_translation_loaded():
    from slicer.i18n import getContext, tr, translate

    assert translate("qSlicerAbstractCoreModule", "Deep Learning") == "Deep Learning"
    assert tr("{count} models match.").format(count=2) == "2 models match."
    assert getContext(os.path.abspath(__file__)) == "test_scene_files_standin"
    deepSegment = os.path.join(os.path.dirname(__file__), "..", "..", "DeepSegment", "DeepSegmentLib", "engine.py")
    assert getContext(os.path.abspath(deepSegment)) == "DeepSegmentLib.engine"


class _Translator(qt.QTranslator):
    """A translation as a loaded .qm file gives it, without the file: ``translations`` maps source texts."""

    def __init__(self, translations):
        super().__init__()
        self.translations = translations

    def translate(self, context, sourceText, disambiguation=None, n=-1):
        return self.translations.get(sourceText, "")  # "": not translated here

    def isEmpty(self):
        return False


def test_a_loaded_translation_is_used_unless_its_placeholders_differ(caplog):
    from slicer.i18n import tr

    translator = _Translator({"{count} models": "{count} modèles", "{count} files": "{compte} fichiers"})
    slicer.app.installTranslator(translator)
    try:
        assert tr("{count} models") == "{count} modèles"
        assert tr("{count} files") == "{count} files"
        assert "placeholders differ" in caplog.text
    finally:
        slicer.app.removeTranslator(translator)
    assert tr("{count} models") == "{count} models"

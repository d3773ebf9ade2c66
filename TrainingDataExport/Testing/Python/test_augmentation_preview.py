"""The augmentation preview of the loaded case (TrainingDataExportLogic.previewAugmentation and its panel section)
on the Slicer stand-in: real MRML volumes, segmentations and subject hierarchy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import slicer

from TrainingDataExport import TrainingDataExportLogic
from TrainingDataExportLib.augmentation import AugmentationSettings

SCHEMA = {
    "labels": [{"value": 1, "name": "Liver", "color": "#dd8259"}, {"value": 2, "name": "Tumor", "color": "#90d5ff"}]
}
INTENSITY_ONLY = AugmentationSettings(affine_probability=0.0, elastic_probability=0.0, gamma_probability=1.0,
                                      noise_probability=1.0)


@pytest.fixture
def logic(tmp_path):
    """A loaded case: a 12×16×20 image of 0.8 × 0.9 × 2 mm voxels with a two-label segmentation."""
    rng = np.random.default_rng(3)
    image = sitk.GetImageFromArray(rng.integers(0, 200, (12, 16, 20)).astype(np.int16))
    image.SetSpacing((0.8, 0.9, 2.0))
    image.SetOrigin((10.0, -4.0, 3.0))
    sitk.WriteImage(image, str(tmp_path / "a.nrrd"))
    label = np.zeros((12, 16, 20), np.uint8)
    label[2:10, 3:13, 4:16] = 1
    label[4:8, 6:10, 8:12] = 2
    label_image = sitk.GetImageFromArray(label)
    label_image.CopyInformation(image)
    sitk.WriteImage(label_image, str(tmp_path / "a_seg.nrrd"))
    (tmp_path / "labels.json").write_text(json.dumps(SCHEMA), encoding="utf-8")
    logic = TrainingDataExportLogic()
    logic.createCaseListFromFolder(str(tmp_path))
    logic.loadLabelSchema(str(tmp_path / "labels.json"))
    logic.loadCase(0)
    yield logic
    logic.clearAugmentationPreview()
    logic.closeCase()


def segment_arrays(segmentation_node, volume_node) -> dict:
    segmentation = segmentation_node.GetSegmentation()
    arrays = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        arrays[segment.GetName()] = slicer.util.arrayFromSegmentBinaryLabelmap(
            segmentation_node, segmentation.GetNthSegmentID(index), volume_node)
    return arrays


def test_variants_lie_on_the_case_grid_with_its_segments(logic):
    reference = logic.volumeNodes[0]
    original = segment_arrays(logic.segmentationNode, reference)
    pairs = logic.previewAugmentation(3, seed=2)
    assert len(pairs) == 3
    for volume_node, segmentation_node in pairs:
        assert volume_node.GetSpacing() == reference.GetSpacing() and volume_node.GetOrigin() == reference.GetOrigin()
        assert slicer.util.arrayFromVolume(volume_node).shape == (12, 16, 20)
        assert volume_node.GetAttribute("TrainingDataExport.Augmentation")
        arrays = segment_arrays(segmentation_node, volume_node)
        assert list(arrays) == ["Liver", "Tumor"]
        colors = [segmentation_node.GetSegmentation().GetNthSegment(i).GetColor() for i in range(2)]
        assert np.allclose(colors[0], [0xDD / 255, 0x82 / 255, 0x59 / 255])
        # Turned, scaled and deformed a little: about as large as before, and not where it was.
        for name in ("Liver", "Tumor"):
            assert 0.5 < arrays[name].sum() / original[name].sum() < 2.0
        assert not np.array_equal(arrays["Liver"], original["Liver"])
    # The variants live in one subject hierarchy folder; the first is shown with its segmentation alone.
    hierarchy = slicer.mrmlScene.GetSubjectHierarchyNode()
    folder = hierarchy.GetItemParent(hierarchy.GetItemByDataNode(pairs[0][0]))
    assert hierarchy.GetItemName(folder) == "a augmentation preview"
    assert hierarchy.GetNumberOfItemChildren(folder) == 6
    assert pairs[0][1].GetDisplayNode().GetVisibility() and not logic.segmentationNode.GetDisplayNode().GetVisibility()
    assert logic.augmentationPreviewChoices() == ["Loaded case", "Variant 1", "Variant 2", "Variant 3"]


def test_intensity_changes_alone_keep_every_segment_voxel_for_voxel(logic):
    reference = logic.volumeNodes[0]
    original = segment_arrays(logic.segmentationNode, reference)
    (volume_node, segmentation_node), = logic.previewAugmentation(1, seed=0, settings=INTENSITY_ONLY)
    arrays = segment_arrays(segmentation_node, volume_node)
    assert all(np.array_equal(arrays[name], original[name]) for name in original)
    assert not np.array_equal(slicer.util.arrayFromVolume(volume_node), slicer.util.arrayFromVolume(reference))
    assert "gamma" in logic.augmentationPreviewDescription(1)


def test_a_new_preview_replaces_the_last_and_the_same_seed_gives_the_same_variants(logic):
    first = [slicer.util.arrayFromVolume(volume).copy() for volume, _ in logic.previewAugmentation(2, seed=5)]
    volumes = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    again = [slicer.util.arrayFromVolume(volume) for volume, _ in logic.previewAugmentation(2, seed=5)]
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == volumes
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    other = slicer.util.arrayFromVolume(logic.previewAugmentation(1, seed=6)[0][0])
    assert not np.array_equal(other, first[0])
    logic.clearAugmentationPreview()
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 1
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1
    assert logic.augmentationPreviewChoices() == [] and logic.segmentationNode.GetDisplayNode().GetVisibility()


def test_showing_a_variant_shows_its_segmentation_alone(logic):
    pairs = logic.previewAugmentation(2)
    logic.showAugmentationPreview(2)
    visible = [node.GetDisplayNode().GetVisibility() for node in (logic.segmentationNode, *[s for _, s in pairs])]
    assert visible == [0, 0, 1]
    logic.showAugmentationPreview(0)
    assert logic.segmentationNode.GetDisplayNode().GetVisibility()
    with pytest.raises(ValueError, match="no variant 3"):
        logic.showAugmentationPreview(3)


def test_the_panel_previews_shows_and_removes(logic):
    widget = slicer.modules.trainingdataexport.widgetRepresentation().self()
    original = widget.logic
    ui = widget.ui
    try:
        widget.logic = TrainingDataExportLogic()
        widget.updateButtonStates()
        assert not ui.augmentationPreviewButton.enabled  # no case loaded
        widget.logic = logic
        widget.updateButtonStates()
        assert ui.augmentationPreviewButton.enabled and not ui.augmentationRemoveButton.enabled
        ui.augmentationCountSpinBox.value = 2
        ui.augmentationPreviewButton.click()
        assert [ui.augmentationShowComboBox.itemText(i) for i in range(ui.augmentationShowComboBox.count)] == [
            "Loaded case", "Variant 1", "Variant 2"]
        assert ui.augmentationShowComboBox.currentIndex == 1
        assert ui.augmentationStatusLabel.text.startswith("Variant 1: ")
        assert ui.augmentationRemoveButton.enabled
        ui.augmentationShowComboBox.currentIndex = 0
        assert ui.augmentationStatusLabel.text == "The loaded case, as annotated."
        assert logic.segmentationNode.GetDisplayNode().GetVisibility()
        ui.augmentationRemoveButton.click()
        assert ui.augmentationShowComboBox.count == 0 and not ui.augmentationRemoveButton.enabled
        assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 1
    finally:
        widget.logic = original
        widget.updateButtonStates()


def test_without_pytorch_the_panel_says_what_is_needed(logic, monkeypatch):
    monkeypatch.setattr(TrainingDataExportLogic, "augmentationAvailable", staticmethod(lambda: False))
    widget = slicer.modules.trainingdataexport.widgetRepresentation().self()
    original = widget.logic
    try:
        widget.logic = logic
        widget.updateButtonStates()
        widget.ui.augmentationPreviewButton.click()
        assert "needs PyTorch" in widget.ui.augmentationStatusLabel.text
        assert widget.ui.augmentationPreviewButton.enabled
    finally:
        widget.logic = original
        widget.updateButtonStates()

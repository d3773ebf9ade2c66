"""The ``auto3dseg`` runtime on SlicerMONAIAuto3DSeg-format archives (an Auto3DSeg SegResNet config, a random state
dict, labels.csv), and a Models.json source from a real server on 127.0.0.1: listed, installed (trusted on first
use), segmented from the Python console with named segments and their terminology."""

from __future__ import annotations

import copy
import json
import os
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk
import qt
import torch
import vtk
from DeepSegment import DeepSegmentLogic
from field_models import MODELS_JSON, auto3dseg_config, make_auto3dseg_archive, oblique_volume
from ModelRegistry import ModelRegistryLogic
from registry_test_server import RegistryTestServer

import slicer
from DeepSegmentLib.engine import EngineError
from DeepSegmentLib.geometry import geometry_mismatch, ijk_to_ras_from_image
from DeepSegmentLib.runtimes import detect_runtime, run_model
from ModelRegistryLib import IndexSource, Registry
from ModelRegistryLib.trust import NOT_VERIFIED


def installed(archive: str, folder) -> str:
    target = os.path.join(str(folder), "installed", os.path.splitext(os.path.basename(archive))[0])
    with zipfile.ZipFile(archive) as opened:
        opened.extractall(target)
    return target


def test_an_auto3dseg_archive_runs_with_its_labels_and_terminology(tmp_path):
    folder = installed(make_auto3dseg_archive(str(tmp_path)), tmp_path)
    assert detect_runtime(folder) == "auto3dseg"
    image = oblique_volume()
    steps = []
    run = run_model(folder, [image], device="cpu", progress=steps.append)
    assert [(label.value, label.name) for label in run.labels] == [(1, "liver"), (2, "left kidney"),
                                                                   (3, "kidney cyst")]
    kidney, cyst = run.labels[1].terminology, run.labels[2].terminology
    assert (kidney.type.meaning, kidney.type_modifier.meaning, kidney.region) == ("Kidney", "Left", None)
    assert (cyst.category.meaning, cyst.region.meaning, cyst.region_modifier.meaning) == (
        "Morphologically Altered Structure", "Kidney", "Left")
    assert geometry_mismatch(image, run.result.labels) == "" and run.result.labels.GetOrigin() == image.GetOrigin()
    assert run.result.label_values and set(run.result.label_values) <= {1, 2, 3}
    assert [step.stage for step in steps if step.stage == "inferring"] and steps[-1].fraction == pytest.approx(0.9)
    assert "SegResNetDS (epoch 12)" in run.result.messages[0]


def test_whole_head_models_keep_their_largest_components_as_the_extension_does(tmp_path):
    image = oblique_volume(seed=4)
    plain = run_model(installed(make_auto3dseg_archive(str(tmp_path), seed=5), tmp_path), [image], device="cpu")
    head = installed(make_auto3dseg_archive(str(tmp_path), name="whole-head-1mm-v1.0.1.zip", seed=5), tmp_path)
    kept = run_model(head, [image], device="cpu")
    plain_labels, kept_labels = (sitk.GetArrayFromImage(run.result.labels) for run in (plain, kept))
    assert not np.array_equal(plain_labels, kept_labels)
    for value in kept.result.label_values:
        mask = sitk.GetImageFromArray((kept_labels == value).astype(np.uint8))
        assert int(sitk.GetArrayFromImage(sitk.ConnectedComponent(mask, True)).max()) <= 2


def test_brats_models_take_four_volumes_and_merge_their_regions(tmp_path):
    archive = make_auto3dseg_archive(
        str(tmp_path), name="brats-tiny-v1.0.0.zip",
        network={"_target_": "SegResNetDS", "init_filters": 8, "blocks_down": [1, 1, 1], "norm": "INSTANCE",
                 "in_channels": 4, "out_channels": 3, "dsdepth": 1},
        sigmoid=True, normalize_mode="meanstd")
    image = oblique_volume()
    run = run_model(installed(archive, tmp_path), [image] * 4, device="cpu")
    assert geometry_mismatch(image, run.result.labels) == ""
    assert set(run.result.label_values) <= {1, 2, 3} and run.result.label_values


@pytest.mark.parametrize(("network", "message"), [
    ({"_target_": "SegResNetDS", "in_channels": "$__import__('os').getcwd()"}, "expressions or references"),
    ({"_target_": "os.system", "command": "true"}, "not a MONAI network class"),
    ({"_target_": "SegResNetDS", "_requires_": "@x"}, "expressions or references"),
])
def test_a_network_configuration_that_would_run_code_is_refused(tmp_path, network, message):
    archive = make_auto3dseg_archive(str(tmp_path))
    folder = installed(archive, tmp_path)
    model = os.path.join(folder, "model", "model.pt")
    checkpoint = torch.load(model, weights_only=False)
    checkpoint["config"] = {**checkpoint["config"], "network": network}
    torch.save(checkpoint, model)
    with pytest.raises(EngineError, match=message):
        run_model(folder, [oblique_volume()], device="cpu")


def test_an_archive_without_an_auto3dseg_config_is_refused(tmp_path):
    folder = installed(make_auto3dseg_archive(str(tmp_path)), tmp_path)
    torch.save({"state_dict": {}}, os.path.join(folder, "model", "model.pt"))
    with pytest.raises(EngineError, match="no Auto3DSeg config and state_dict"):
        run_model(folder, [oblique_volume()], device="cpu")


def test_config_keys_match_the_extensions_script():
    """The config keys the runtime reads are those the extension's script reads (and Auto3DSeg writes)."""
    assert set(auto3dseg_config()) == {"network", "roi_size", "resample_resolution", "normalize_mode",
                                       "intensity_bounds", "crop_foreground", "orientation_ras", "sigmoid",
                                       "extra_modalities"}


def test_a_models_json_source_lists_installs_and_runs_in_slicer(tmp_path):
    """SlicerMONAIAuto3DSeg's own Models.json entry for the aorta model, served with an archive of that name."""
    with open(MODELS_JSON, encoding="utf-8") as file:
        aorta = copy.deepcopy(next(model for model in json.load(file)["models"] if model["title"] == "Aorta"))
    archive = make_auto3dseg_archive(str(tmp_path), name="aorta-v1.1.0.zip")
    with RegistryTestServer() as server, open(archive, "rb") as file:
        server.add("/models/aorta-v1.1.0.zip", file.read())
        aorta["versions"] = [{"url": "aorta-v1.1.0.zip"}]
        server.add("/models/Models.json", json.dumps({"models": [aorta]}).encode())
        registryLogic = ModelRegistryLogic(str(tmp_path / "cache"))
        registryLogic.addSource(server.url("/models/Models.json"), name="SlicerMONAIAuto3DSeg")
        assert registryLogic.tableRows(registryLogic.search("aorta"))[0][:2] == ("Aorta", "1.1.0")
        card = registryLogic.cardHtml("aorta")
        assert NOT_VERIFIED in card and "MONAI Auto3DSeg" in card and "CTACardio" in card
        volume = slicer.util.addVolumeFromArray(sitk.GetArrayFromImage(oblique_volume()), name="CT aorta")
        logic = DeepSegmentLogic(registryLogic.registry)
        try:
            assert logic.inputNames("aorta") == ["Input volume"]
            assert logic.installRuntimeDependencies("aorta", confirm=lambda text: pytest.fail(text))
            segmentation = logic.segmentVolumes("aorta", [volume], device="cpu")
        finally:
            logic.service.stop()
    names = [segmentation.GetSegmentation().GetNthSegment(i).GetName()
             for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]
    assert names == ["liver", "left kidney", "kidney cyst"]
    entry = vtk.reference("")
    assert segmentation.GetSegmentation().GetNthSegment(1).GetTag("TerminologyEntry", entry)
    assert "SCT^64033007^Kidney~SCT^7771000^Left" in entry.get()
    assert registryLogic.registry.store.trust.pinned(server.url("/models/aorta-v1.1.0.zip")) is not None


def test_the_panel_runs_an_auto3dseg_model(tmp_path):
    archive = make_auto3dseg_archive(str(tmp_path), name="organs-v1.0.0.zip")
    index = {"schemaVersion": 1, "models": [{"id": "organs", "title": "Organs (Auto3DSeg)", "inputs": [
        {"name": "CT", "pattern": "ct"}], "versions": [
        {"version": "1.0.0", "runtime": "auto3dseg", "files": [{"url": os.path.basename(archive)}]}]}]}
    with open(tmp_path / "index.json", "w", encoding="utf-8") as file:
        json.dump(index, file)
    registry = Registry([IndexSource(str(tmp_path / "index.json"))], str(tmp_path / "cache"))
    registry.refresh(offline=True)
    image = oblique_volume()
    volume = slicer.util.addVolumeFromArray(sitk.GetArrayFromImage(image), ijkToRAS=ijk_to_ras_from_image(image),
                                            name="CT abdomen")
    widget = slicer.modules.deepsegment.widgetRepresentation().self()
    original = widget.logic
    widget.logic = DeepSegmentLogic(registry)
    try:
        widget.updateModelList()
        assert widget.ui.modelSelector.currentData == "organs"
        assert widget.inputSelectors[0].currentNode() is volume
        widget.ui.deviceSelector.setCurrentIndex(widget.ui.deviceSelector.findData("cpu"))
        widget.ui.applyButton.click()
        deadline = qt.QTime.currentTime().addSecs(120)
        while widget.poller.busy and qt.QTime.currentTime() < deadline:
            slicer.app.processEvents()
            qt.QThread.msleep(20)
        assert not widget.poller.busy and widget.ui.stageLabel.text == "Done.", widget.ui.stageLabel.text
        segmentation = widget.ui.outputSelector.currentNode().GetSegmentation()
        assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())] == [
            "liver", "left kidney", "kidney cyst"]
        assert "Segmented in" in widget.ui.timingLabel.text
    finally:
        widget.logic.service.stop()
        widget.logic = original
        widget.updateModelList()

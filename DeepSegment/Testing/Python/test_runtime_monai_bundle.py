"""The ``monai-bundle`` runtime on real MONAI model-zoo configurations (with random weights for their own networks):
the full path, exact geometry, labels from the bundle, and the same labels as the bundle's own components running
from a file to a file."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from field_models import ZOO, aligned_volume, bundle_directly, make_bundle, oblique_volume, zip_folder
from monai.transforms import LoadImaged
from registry_test_server import RegistryTestServer

from DeepSegmentLib.engine import EngineCancelled, EngineError
from DeepSegmentLib.geometry import geometry_mismatch
from DeepSegmentLib.runtimes import detect_runtime, run_model
from DeepSegmentLib.runtimes.monai_io import MemoryImageReader, register_reader
from ModelRegistryLib import Registry

# Bundles whose networks run on a CPU in seconds (the others' run too, in minutes: wholeBody's SegResNet on 96³).
RUNNABLE = ["spleen_ct_segmentation", "prostate_mri_anatomy", "ventricular_short_axis_3label"]


@pytest.mark.parametrize("name", RUNNABLE)
def test_zoo_bundles_run_with_their_own_configuration_on_the_exact_grid(name, tmp_path):
    bundle = make_bundle(name, str(tmp_path))
    assert detect_runtime(str(tmp_path)) == "monai-bundle"
    image = oblique_volume(size=(26, 22, 10) if name.startswith("ventricular") else (30, 26, 14))
    steps = []
    run = run_model(str(tmp_path), [image], device="cpu", progress=steps.append)
    with open(os.path.join(bundle, "configs", "metadata.json"), encoding="utf-8") as file:
        channels = json.load(file)["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert [(label.value, label.name) for label in run.labels] == [(int(k), v) for k, v in channels.items() if k != "0"]
    assert run.runtime == "monai-bundle"
    assert geometry_mismatch(image, run.result.labels) == ""
    assert run.result.labels.GetOrigin() == image.GetOrigin()
    assert set(run.result.label_values) <= {label.value for label in run.labels} and run.result.label_values
    assert steps[0].stage == "loading" and steps[-1].fraction == pytest.approx(0.9)
    assert set(run.result.timings) == {"loading", "preprocessing", "inferring", "postprocessing", "total"}


@pytest.mark.parametrize("name", ["spleen_ct_segmentation", "ventricular_short_axis_3label"])
def test_same_labels_as_the_bundles_own_components_from_a_file(name, tmp_path):
    bundle = make_bundle(name, str(tmp_path / "bundle"))
    image = aligned_volume()
    sitk.WriteImage(image, str(tmp_path / "input.nii.gz"))
    expected = bundle_directly(bundle, str(tmp_path / "input.nii.gz"), str(tmp_path / "output"))
    run = run_model(bundle, [image], device="cpu")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(run.result.labels), sitk.GetArrayFromImage(expected))
    assert geometry_mismatch(expected, run.result.labels) == ""


def test_the_memory_reader_gives_what_a_file_gives(tmp_path):
    """MONAI's LoadImaged on an oblique NIfTI file and on the same image in memory: one array, one affine."""
    image = oblique_volume()
    sitk.WriteImage(image, str(tmp_path / "image.nii.gz"))
    from_file = LoadImaged(keys="image", ensure_channel_first=True)({"image": str(tmp_path / "image.nii.gz")})["image"]
    reader = MemoryImageReader()
    loader = LoadImaged(keys="image", ensure_channel_first=True)
    assert register_reader(loader, reader) == 1
    from_memory = loader({"image": reader.add(image)})["image"]
    np.testing.assert_array_equal(from_memory.numpy(), from_file.numpy())
    np.testing.assert_allclose(from_memory.affine.numpy(), from_file.affine.numpy(), atol=1e-5)
    assert from_memory.meta["space"] == from_file.meta["space"] == "RAS"
    # Two volumes for one key are its channels, as MONAI stacks two files.
    both = loader({"image": [reader.add(image), reader.add(image)]})["image"]
    assert tuple(both.shape) == (2, *from_file.shape[1:])


def test_a_bundle_made_for_another_monai_says_so(tmp_path):
    shutil.copytree(os.path.join(ZOO, "swin_unetr_btcv_segmentation"), tmp_path / "swin")
    with pytest.raises(EngineError, match=r"cannot be run \(it was made with MONAI 1\.4\.0; this is MONAI"):
        run_model(str(tmp_path), [oblique_volume()], device="cpu")


def test_a_result_off_the_input_grid_is_refused(tmp_path):
    bundle = make_bundle("spleen_ct_segmentation", str(tmp_path))
    path = os.path.join(bundle, "configs", "inference.json")
    with open(path, encoding="utf-8") as file:
        config = json.load(file)
    config["postprocessing"]["transforms"] = [item for item in config["postprocessing"]["transforms"]
                                              if item["_target_"] != "Invertd"]
    with open(path, "w", encoding="utf-8") as file:
        json.dump(config, file)
    with pytest.raises(EngineError, match="does not lie on the input's voxel grid"):
        run_model(str(tmp_path), [oblique_volume()], device="cpu")


def test_weights_that_do_not_fit_and_cancel(tmp_path):
    bundle = make_bundle("spleen_ct_segmentation", str(tmp_path))
    cancel = threading.Event()

    def cancel_when_inferring(step):
        if step.stage == "inferring":
            cancel.set()

    with pytest.raises(EngineCancelled):
        run_model(str(tmp_path), [oblique_volume()], device="cpu", progress=cancel_when_inferring, cancel=cancel)
    torch.save({"other": torch.zeros(2)}, os.path.join(bundle, "models", "model.pt"))
    with pytest.raises(EngineError, match=r"weights model\.pt do not fit its network"):
        run_model(str(tmp_path), [oblique_volume()], device="cpu")


def test_a_zoo_bundle_folder_imports_downloads_its_weights_checked_by_md5_and_runs(tmp_path):
    """The bundle as the zoo's repository holds it (configuration, large_files.yml with MD5s): import, install from a
    server, run."""
    made = make_bundle("spleen_ct_segmentation", str(tmp_path / "made"))
    with open(os.path.join(made, "models", "model.pt"), "rb") as file:
        weights = file.read()
    repository = tmp_path / "model-zoo" / "spleen_ct_segmentation"
    shutil.copytree(os.path.join(ZOO, "spleen_ct_segmentation", "configs"), repository / "configs")
    with RegistryTestServer() as server:
        server.add("/model_spleen.pt", weights)
        (repository / "large_files.yml").write_text(
            f'large_files:\n- path: "models/model.pt"\n  url: "{server.url("/model_spleen.pt")}"\n'
            f'  hash_val: "{hashlib.md5(weights).hexdigest()}"\n  hash_type: "md5"\n', encoding="utf-8")
        registry = Registry([], str(tmp_path / "cache"))
        said = []
        installed = registry.import_package(str(repository), progress=said.append)
    assert installed.model_id == "spleen_ct_segmentation"
    assert any("matches the publisher's MD5" in step.text for step in said if step.stage == "trust")
    entry, version = registry.resolve("spleen_ct_segmentation")
    assert version.runtime == "monai-bundle" and [label.name for label in entry.labels] == ["spleen"]
    image = oblique_volume()
    run = run_model(installed, [image], runtime=version.runtime, device="cpu")
    assert geometry_mismatch(image, run.result.labels) == "" and run.result.label_values


def test_a_bundle_zip_imports_and_runs(tmp_path):
    bundle = make_bundle("prostate_mri_anatomy", str(tmp_path / "made"))
    archive = zip_folder(bundle, str(tmp_path / "prostate_mri_anatomy_v0.3.4.zip"), "prostate_mri_anatomy/")
    registry = Registry([], str(tmp_path / "cache"))
    installed = registry.import_package(archive)
    assert (installed.model_id, installed.version) == ("prostate_mri_anatomy", "0.3.4")
    image = oblique_volume()
    run = run_model(installed, [image], device="cpu")
    assert geometry_mismatch(image, run.result.labels) == "" and run.runtime == "monai-bundle"

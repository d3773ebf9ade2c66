"""The ``nnunet-v2`` runtime on a model folder nnunetv2 made itself: voxel-identical to nnunetv2's own predictor on
the same input, imported and run from the command lines, unsafe checkpoints refused."""

from __future__ import annotations

import os
import shutil
import threading

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from field_models import make_nnunet_model, nnunet_directly, oblique_volume

from DeepSegmentLib.cli import main as deepsegment
from DeepSegmentLib.engine import EngineCancelled, EngineError
from DeepSegmentLib.geometry import geometry_mismatch
from DeepSegmentLib.runtimes import RunOptions, detect_runtime, run_model
from ModelRegistryLib.cli import main as registry

FAST = RunOptions(quality="fast")


@pytest.fixture(scope="module")
def nnunet_model(tmp_path_factory) -> str:
    """nnU-Net's results folder ``nnUNetTrainer__nnUNetPlans__3d_fullres`` (made once for these tests)."""
    return make_nnunet_model(str(tmp_path_factory.mktemp("nnunet")))


def test_voxel_identical_to_nnunets_own_predictor(nnunet_model, tmp_path):
    image = oblique_volume()
    expected = nnunet_directly(nnunet_model, image, str(tmp_path), mirroring=False)
    assert detect_runtime(os.path.dirname(nnunet_model)) == "nnunet-v2"
    steps = []
    run = run_model(os.path.dirname(nnunet_model), [image], device="cpu", options=FAST, progress=steps.append)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(run.result.labels), sitk.GetArrayFromImage(expected))
    assert geometry_mismatch(image, run.result.labels) == "" and run.result.labels.GetOrigin() == image.GetOrigin()
    assert [(label.value, label.name) for label in run.labels] == [(1, "ball"), (2, "box")]
    assert run.result.label_values and set(run.result.label_values) <= {1, 2}
    inferring = [step.fraction for step in steps if step.stage == "inferring"]
    assert len(inferring) > 2 and inferring == sorted(inferring) and inferring[-1] == pytest.approx(1.0)
    assert "folds 0" in run.result.messages[0]


def test_mirroring_is_nnunets_own_when_accurate(nnunet_model, tmp_path):
    image = oblique_volume(size=(12, 12, 8))  # one window: eight mirrored passes of it
    expected = nnunet_directly(nnunet_model, image, str(tmp_path), mirroring=True)
    run = run_model(os.path.dirname(nnunet_model), [image], device="cpu", options=RunOptions(quality="accurate"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(run.result.labels), sitk.GetArrayFromImage(expected))
    assert "mirrored" in run.result.messages[0]


def test_inputs_folds_and_cancel(nnunet_model):
    folder = os.path.dirname(nnunet_model)
    with pytest.raises(EngineError, match="needs 1 input volume"):
        run_model(folder, [oblique_volume(), oblique_volume()], device="cpu")
    with pytest.raises(EngineError, match="has no fold 3; it has 0"):
        run_model(folder, [oblique_volume()], device="cpu", options=RunOptions(folds=(3,)))
    cancel = threading.Event()

    def cancel_when_inferring(step):
        if step.stage == "inferring" and step.fraction > 0.1:
            cancel.set()

    with pytest.raises(EngineCancelled):
        run_model(folder, [oblique_volume()], device="cpu", options=FAST, progress=cancel_when_inferring,
                  cancel=cancel)


class Payload:
    """Stands for what a malicious checkpoint could make torch.load build (any class runs code when rebuilt)."""


def test_a_checkpoint_that_needs_code_to_load_is_refused(nnunet_model, tmp_path):
    copy = shutil.copytree(nnunet_model, tmp_path / "model")
    checkpoint = copy / "fold_0" / "checkpoint_final.pth"
    loaded = torch.load(checkpoint, weights_only=True)
    torch.save({**loaded, "extra": Payload()}, checkpoint)
    with pytest.raises(EngineError, match=r"holds Python objects \(.*Payload\).*refused"):
        run_model(str(tmp_path), [oblique_volume()], device="cpu", options=FAST)


def test_an_nnunet_results_folder_imports_installs_and_runs_from_the_command_lines(nnunet_model, tmp_path, capsys):
    cache = str(tmp_path / "cache")
    # Training leaves more than the predictor reads: only dataset.json, plans.json and the checkpoints are kept.
    (tmp_path / "results").mkdir()
    results = shutil.copytree(nnunet_model, tmp_path / "results" / os.path.basename(nnunet_model))
    (results / "fold_0" / "progress.png").write_bytes(b"not needed")
    assert registry(["--cache-dir", cache, "--offline", "import", str(results)]) == 0
    installed = capsys.readouterr().out.strip()
    assert installed.endswith(os.path.join("dataset987_tiny-3d_fullres", "1.0.0"))
    assert sorted(os.listdir(installed)) == ["Dataset987_Tiny", "model-registry-manifest.json"]
    assert registry(["--cache-dir", cache, "--offline", "list"]) == 0
    listing = capsys.readouterr().out
    assert "dataset987_tiny-3d_fullres" in listing and "1.0.0" in listing and "installed" in listing
    image = oblique_volume()
    sitk.WriteImage(image, str(tmp_path / "ct.nrrd"))
    output = str(tmp_path / "labels.seg.nrrd")
    assert deepsegment(["run", "--model", "dataset987_tiny-3d_fullres", "--input", str(tmp_path / "ct.nrrd"),
                        "--output", output, "--device", "cpu", "--quality", "fast", "--cache-dir", cache]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"wrote {output}"
    written = sitk.ReadImage(output)
    assert geometry_mismatch(image, written) == ""
    assert {written.GetMetaData(f"Segment{i}_Name") for i in range(2)} == {"ball", "box"}
    direct = run_model(os.path.dirname(nnunet_model), [image], device="cpu", options=FAST)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(direct.result.labels))
    capsys.readouterr()
    # Imported again unchanged: the same version; changed: the next one, the first kept as it was.
    assert registry(["--cache-dir", cache, "--offline", "import", str(results)]) == 0
    assert capsys.readouterr().out.strip() == installed
    torch.save({**torch.load(results / "fold_0" / "checkpoint_final.pth", weights_only=True), "current_epoch": 7},
               results / "fold_0" / "checkpoint_final.pth")
    assert registry(["--cache-dir", cache, "--offline", "import", str(results)]) == 0
    assert capsys.readouterr().out.strip().endswith(os.path.join("dataset987_tiny-3d_fullres", "1.0.1"))

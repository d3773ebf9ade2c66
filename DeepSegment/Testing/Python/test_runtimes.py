"""DeepSegmentLib.runtimes: one dispatch for every runtime, its detection, its optional libraries (installed on first
use without touching what is installed), and checkpoints loaded without running code."""

from __future__ import annotations

import json
import os
import pickle
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from DeepSegment import DeepSegmentLogic, writeThresholdTestModel
from field_models import make_auto3dseg_archive

import slicer
from DeepSegmentLib.engine import EngineError
from DeepSegmentLib.pool import ModelPool
from DeepSegmentLib.runtimes import (
    RunOptions,
    RuntimeDependencyError,
    detect_runtime,
    missing_requirements,
    requirements,
    run_model,
)
from DeepSegmentLib.runtimes import dependencies
from DeepSegmentLib.runtimes.common import load_checkpoint
from DeepSegmentLib.torchsetup import installed_packages, pinned_constraints
from ModelRegistryLib import IndexSource, Registry
from ModelRegistryLib.index import RUNTIMES


@pytest.fixture()
def registry(tmp_path):
    index = writeThresholdTestModel(str(tmp_path / "models"))
    registry = Registry([IndexSource(index)], str(tmp_path / "cache"))
    registry.refresh(offline=True)
    return registry


def phantom() -> tuple:
    voxels = np.zeros((10, 12, 14), np.float32)
    voxels[2:8, 3:9, 4:11] = 1
    image = sitk.GetImageFromArray(voxels)
    image.SetSpacing((0.8, 1.2, 2.0))
    return image, voxels


def test_an_installed_deepsegment_package_runs_through_the_dispatch(registry):
    installed = registry.ensure_installed("threshold-test")
    _, version = registry.resolve("threshold-test")
    assert version.runtime == "deepsegment" == detect_runtime(installed.path)
    image, voxels = phantom()
    pool = ModelPool()
    run = run_model(installed, [image], runtime=version.runtime, device="cpu", pool=pool,
                    options=RunOptions(quality="fast", threads=1, precision="float32"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(run.result.labels), voxels)
    assert [label.name for label in run.labels] == ["Bright"] and len(pool.loaded()) == 1
    # The run is picklable, for a worker process to hand it back.
    assert pickle.loads(pickle.dumps(run)).labels == run.labels


def test_what_cannot_run_says_why(tmp_path, registry):
    image, _ = phantom()
    with pytest.raises(EngineError, match="does not exist: install the model first"):
        run_model(str(tmp_path / "missing"), [image])
    (tmp_path / "empty").mkdir()
    with pytest.raises(EngineError, match="holds no model DeepSegment can run"):
        run_model(str(tmp_path / "empty"), [image])
    installed = registry.ensure_installed("threshold-test")
    with pytest.raises(EngineError, match="Unknown runtime 'onnx-magic'"):
        run_model(installed, [image], runtime="onnx-magic")
    with pytest.raises(EngineError, match="No input volume"):
        run_model(installed, [])
    # The runtime named by the index is used, whatever the folder holds.
    with pytest.raises(EngineError, match="holds no nnU-Net v2 trained model folder"):
        run_model(installed, [image], runtime="nnunet-v2")


def test_every_runtime_names_its_pinned_libraries():
    assert set(dependencies._REQUIREMENTS) == set(RUNTIMES)
    assert requirements("deepsegment") == () and requirements("nnunet-v2") == ("nnunetv2==2.8.1",)
    assert all("==" in requirement for runtime in RUNTIMES for requirement in requirements(runtime)
               if not requirement.startswith("PyYAML"))
    # The test environment has them all (requirements-dev.txt pins the same releases).
    assert all(missing_requirements(runtime) == [] for runtime in RUNTIMES)
    import monai
    import nnunetv2  # noqa: F401 - present

    assert f"monai=={monai.__version__}" in requirements("monai-bundle")


def test_a_missing_library_is_named_and_installed_on_first_use_keeping_what_is_installed(monkeypatch, tmp_path):
    monkeypatch.setitem(dependencies._REQUIREMENTS, "auto3dseg", (("nonexistent-lib==1.0", "nonexistent_lib"),))
    archive = make_auto3dseg_archive(str(tmp_path))
    zipfile.ZipFile(archive).extractall(tmp_path / "installed")
    with pytest.raises(RuntimeDependencyError, match=r"auto3dseg runtime needs nonexistent-lib==1\.0"):
        run_model(str(tmp_path / "installed"), [phantom()[0]])

    # In Slicer: the user is asked, then pip gets the requirement and a constraint on every installed package.
    index = {"schemaVersion": 1, "models": [{"id": "tiny", "title": "Tiny", "versions": [
        {"version": "1.0.0", "runtime": "auto3dseg", "files": [{"url": os.path.basename(archive)}]}]}]}
    (tmp_path / "index.json").write_text(json.dumps(index), encoding="utf-8")
    registry = Registry([IndexSource(str(tmp_path / "index.json"))], str(tmp_path / "cache"))
    registry.refresh(offline=True)
    logic = DeepSegmentLogic(registry)
    asked, installs = [], []
    assert not logic.installRuntimeDependencies("tiny", confirm=lambda text: asked.append(text) or False)
    assert "nonexistent-lib==1.0" in asked[0] and installs == []

    def pip_install(arguments):
        installs.append(arguments)
        with open(arguments[arguments.index("--constraint") + 1], encoding="utf-8") as file:
            installs.append(file.read().splitlines())

    monkeypatch.setattr(slicer.util, "pip_install", pip_install)
    assert not logic.installRuntimeDependencies("tiny", confirm=lambda text: True)  # still missing afterwards
    arguments, constraints = installs
    assert arguments[0] == "nonexistent-lib==1.0" and arguments[1] == "--constraint"
    pinned = [line.lower() for line in constraints]
    assert f"numpy=={np.__version__}" in pinned and f"simpleitk=={sitk.Version.VersionString()}" in pinned
    assert constraints == pinned_constraints(installed_packages())


class Payload:
    # exec, not print: Ray replaces builtins.print once a test has imported it, and the pickle would name Ray's.
    def __reduce__(self):
        return (exec, ("print('this would have run')",))


def test_checkpoints_load_weights_and_plain_data_only(tmp_path, capfd):
    plain = tmp_path / "plain.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "metric": np.float64(0.5), "epoch": np.int64(3),
                "config": {"roi_size": [8, 8, 8]}}, plain)
    loaded = load_checkpoint(str(plain))
    assert float(loaded["metric"]) == 0.5 and loaded["config"]["roi_size"] == [8, 8, 8]
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"state_dict": {}, "hook": Payload()}, unsafe)
    with pytest.raises(EngineError, match=r"holds Python objects \(builtins\.exec\).*refused"):
        load_checkpoint(str(unsafe))
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(EngineError, match="cannot be read as a PyTorch checkpoint"):
        load_checkpoint(str(tmp_path / "broken.pt"))
    with pytest.raises(EngineError, match="weights are missing"):
        load_checkpoint(str(tmp_path / "none.pt"))
    assert "this would have run" not in capfd.readouterr().out

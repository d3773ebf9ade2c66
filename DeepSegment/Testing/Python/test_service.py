"""The DeepSegment model service: real worker processes keep networks between runs, swap versions, survive
nothing that kills them, and leave no process and no shared memory behind."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import psutil
import pytest
import SimpleITK as sitk
import torch

from DeepSegmentLib.package import archive_package, write_package
from DeepSegmentLib.service_client import SERVICE_NAME, ModelService
from DeepSegmentLib.shared_images import segment_prefix
from ModelRegistry import processEventsBriefly, waitForJob
from ModelRegistryLib import IndexSource, Registry
from ModelRegistryLib.worker import ABORT_HOOK_VARIABLE, HOLD_HOOK_VARIABLE

# Runs stop at "inferring" until cancelled: a cancel or a kill lands mid-run however fast the machine is.
HOLD_AT_INFERRING = {HOLD_HOOK_VARIABLE: "DeepSegmentLib.service:segment_images@inferring"}


class Threshold(torch.nn.Module):
    """Logits of "brighter than 0.5" (or, inverted, of "darker than 0.5")."""

    def __init__(self, sign: float) -> None:
        super().__init__()
        self.sign = sign

    def forward(self, image):
        return torch.cat([self.sign * (0.5 - image), self.sign * (image - 0.5)], dim=1)


def write_version(folder, version: str, sign: float) -> dict:
    contract = {
        "schemaVersion": 1, "format": "torchscript", "weights": "model.pt", "dimensions": 3,
        "inputs": [{"name": "Image"}],
        "preprocessing": {"spacing": None, "orientation": "native", "normalization": [{"kind": "none"}]},
        "inference": {"patchSize": [8, 8, 8], "overlap": 0.5, "blending": "constant", "batchSize": 2,
                      "mirrorAxes": [], "activation": "softmax", "outputChannels": 2},
        "postprocessing": {"mode": "argmax"},
        "labels": [{"value": 1, "name": "Bright" if sign > 0 else "Dark", "color": "#ff0000"}],
    }
    package = os.path.join(folder, f"package-{version}")
    write_package(package, torch.jit.script(Threshold(sign)), contract)
    return {"version": version,
            "files": [archive_package(package, os.path.join(folder, f"threshold-{version}.zip"))]}


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    """A model with two versions: 1.0.0 labels bright voxels, 2.0.0 dark ones."""
    folder = str(tmp_path_factory.mktemp("service-models"))
    versions = [write_version(folder, "1.0.0", 1.0), write_version(folder, "2.0.0", -1.0)]
    document = {"schemaVersion": 1, "models": [{"id": "threshold", "title": "Threshold", "versions": versions}]}
    path = os.path.join(folder, "index.json")
    with open(path, "w", encoding="utf-8") as file:
        json.dump(document, file)
    return path


@pytest.fixture()
def registry(index, tmp_path):
    registry = Registry([IndexSource(index)], str(tmp_path / "cache"))
    registry.refresh(offline=True)
    return registry


@pytest.fixture()
def service():
    service = ModelService()
    yield service
    service.stop()


def phantom(shape=(12, 14, 16)):
    voxels = np.zeros(shape, np.float32)
    voxels[3:9, 4:10, 5:12] = 1
    image = sitk.GetImageFromArray(voxels)
    image.SetSpacing((0.9, 1.3, 2.2))
    image.SetOrigin((4.0, -9.0, 21.0))
    return image, voxels


def run(service, registry, spec, image, **options):
    entry, version = registry.resolve(spec)
    job = service.segment([image], entry, version, registry.store.cache_dir, device="cpu", **options)
    assert waitForJob(job, 300), "the run did not end in 300 s"
    return job


def segments_on_disk():
    # This process's own segments: other test runs on the machine may be creating and freeing theirs meanwhile.
    return {name for name in os.listdir("/dev/shm") if name.startswith(segment_prefix())} \
        if os.path.isdir("/dev/shm") else set()


def wait_for_stage(job, stage):
    while not job.finished and not (job.progress is not None and job.progress.text == stage):
        job.poll()
        processEventsBriefly()


def gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_run_gives_labels_on_the_input_grid_and_the_model_stays_loaded(service, registry):
    image, voxels = phantom()
    before = segments_on_disk()
    job = run(service, registry, "threshold@1.0.0", image, quality="fast")
    assert job.state == "succeeded", job.error
    run_result = job.result
    labels = run_result.result.labels
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), voxels.astype(np.uint8))
    assert (labels.GetOrigin(), labels.GetSpacing(), labels.GetDirection()) == (
        image.GetOrigin(), image.GetSpacing(), image.GetDirection())
    assert [label.name for label in run_result.labels] == ["Bright"]
    assert (run_result.model_id, run_result.version) == ("threshold", "1.0.0")
    assert segments_on_disk() == before, "every shared segment is freed"
    listing = service.loaded_models("cpu")
    assert waitForJob(listing, 60)
    assert [entry.folder for entry in listing.result] == [registry.store.version_path("threshold", "1.0.0")]


def test_the_second_run_of_a_model_loads_nothing(service, registry):
    image, voxels = phantom()
    first = run(service, registry, "threshold@1.0.0", image)
    assert first.state == "succeeded", first.error
    # Spoil the installed weights, keeping their time stamp: a second load would fail.
    weights = os.path.join(registry.store.version_path("threshold", "1.0.0"), "model.pt")
    stamp = os.stat(weights)
    with open(weights, "wb") as file:
        file.write(b"not a network")
    os.utime(weights, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    second = run(service, registry, "threshold@1.0.0", image)
    assert second.state == "succeeded", second.error
    assert second.pid == first.pid
    np.testing.assert_array_equal(sitk.GetArrayFromImage(second.result.result.labels), voxels.astype(np.uint8))


def test_a_new_version_replaces_the_old_one_without_a_restart(service, registry):
    image, voxels = phantom()
    old = run(service, registry, "threshold@1.0.0", image)
    new = run(service, registry, "threshold@2.0.0", image)
    assert new.state == "succeeded", new.error
    assert new.pid == old.pid
    np.testing.assert_array_equal(sitk.GetArrayFromImage(new.result.result.labels), 1 - voxels.astype(np.uint8))
    assert [label.name for label in new.result.labels] == ["Dark"]
    listing = service.loaded_models("cpu")
    assert waitForJob(listing, 60)
    assert [entry.folder for entry in listing.result] == [registry.store.version_path("threshold", "2.0.0")]


def test_the_model_is_installed_in_the_worker_with_progress(service, registry):
    image, _ = phantom()
    entry, version = registry.resolve("threshold@1.0.0")
    job = service.segment([image], entry, version, registry.store.cache_dir, device="cpu")
    fractions = []
    while not job.finished:
        job.poll()
        if job.progress is not None and job.progress.fraction not in fractions:
            fractions.append(job.progress.fraction)
        processEventsBriefly()
    assert job.state == "succeeded", job.error
    assert registry.store.get("threshold", "1.0.0") is not None
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_a_worker_killed_mid_run_fails_the_run_and_the_next_run_starts_a_new_one(service, registry):
    image, _ = phantom((64, 64, 64))
    before = segments_on_disk()
    entry, version = registry.resolve("threshold@1.0.0")
    service.env = HOLD_AT_INFERRING
    job = service.segment([image], entry, version, registry.store.cache_dir, device="cpu")
    wait_for_stage(job, "inferring")
    killed = job.pid
    os.kill(killed, signal.SIGKILL)
    service.env = {}
    assert waitForJob(job, 60)
    assert job.state == "failed" and job.error.kind == "crash"
    assert str(job.error).startswith(
        f"{SERVICE_NAME} stopped unexpectedly: it was killed (SIGKILL; the system may have run out of memory).")
    assert gone(killed)
    assert segments_on_disk() == before
    small, voxels = phantom()
    again = run(service, registry, "threshold@1.0.0", small)
    assert again.state == "succeeded", again.error
    assert again.pid != killed
    np.testing.assert_array_equal(sitk.GetArrayFromImage(again.result.result.labels), voxels.astype(np.uint8))


def test_an_aborting_worker_is_reported_and_replaced(registry):
    image, _ = phantom()
    service = ModelService(env={ABORT_HOOK_VARIABLE: "DeepSegmentLib.service:segment_images"})
    try:
        crashed = run(service, registry, "threshold@1.0.0", image)
        assert crashed.error.kind == "crash" and "it aborted (SIGABRT)" in str(crashed.error)
        service.env = {}
        again = run(service, registry, "threshold@1.0.0", image)
        assert again.state == "succeeded", again.error
        assert gone(crashed.pid)
    finally:
        service.stop()


def test_cancel_stops_the_run_and_the_service_lives_on(service, registry):
    image, _ = phantom((64, 64, 64))
    service.env = HOLD_AT_INFERRING
    before = segments_on_disk()
    entry, version = registry.resolve("threshold@1.0.0")
    job = service.segment([image], entry, version, registry.store.cache_dir, device="cpu")
    wait_for_stage(job, "inferring")
    job.cancel()
    assert waitForJob(job, 60)
    assert job.state == "cancelled"
    assert segments_on_disk() == before
    assert service.worker("cpu").pid == job.pid


def test_an_engine_error_comes_back_as_one_line(service, registry):
    image, _ = phantom()
    array = sitk.GetArrayFromImage(image)
    array[0, 0, 0] = np.nan
    broken = sitk.GetImageFromArray(array)
    broken.CopyInformation(image)
    job = run(service, registry, "threshold@1.0.0", broken)
    assert job.state == "failed"
    from DeepSegmentLib.engine import EngineError

    assert job.error.raised(EngineError)
    assert "NaN or infinite voxels" in str(job.error)

"""DeepSegment's container backend against a real container runtime (Podman here, Docker where present).

Images are built on this machine (no registry pull): the reference recipe around the threshold test
model, and a contract test image that misbehaves on request. Every test checks that no container is
left behind and that the run folder is gone.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import SimpleITK as sitk
from geometry_cases import empty_image, rotation

from DeepSegmentLib import load_package, segment
from DeepSegmentLib.container_backend import ContainerSettings, ensure_image, segment_in_container
from DeepSegmentLib.container_runtime import (
    ContainerCancelledError,
    ContainerError,
    ContainerRunError,
    ContainerTimeoutError,
)
from ModelRegistryLib import ChecksumMismatchError, ContainerImage, ModelFile, load_index
from ModelRegistryLib.download import file_sha256
from ModelRegistryLib.jobs import MODEL_REGISTRY_FOLDER

DEEPSEGMENT_FOLDER = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def models(container_index) -> dict:
    return {entry.id: entry for entry in load_index(container_index)}


@pytest.fixture
def runs(tmp_path):
    """Settings whose run folders go to a folder the test checks is left empty."""
    folder = tmp_path / "runs"
    yield ContainerSettings(run_folder=str(folder))
    assert not folder.exists() or not os.listdir(folder), "a run folder was left behind"


def _phantom(seed: int = 0) -> sitk.Image:
    """Random voxels on an oblique, anisotropic grid away from the origin (the hard case for geometry)."""
    image = empty_image((23, 17, 11), (0.7, 1.3, 2.9), (-41.5, 12.25, 7.0), rotation(2, 17) @ rotation(0, -8))
    values = np.random.default_rng(seed).random((11, 17, 23)).astype(np.float32)
    phantom = sitk.GetImageFromArray(values)
    phantom.CopyInformation(image)
    return phantom


def _run(entry, images, settings, **options):
    return segment_in_container(images, entry, entry.latest, settings=settings, **options)


def _containers(runtime) -> list:
    return runtime.call(["ps", "--all", "--filter", "name=^deepsegment-", "--format", "{{.Names}}"]).split()


def test_reference_image_gives_the_in_process_labels_on_the_input_grid(models, threshold_model, runs):
    phantom = _phantom()
    steps, lines = [], []
    result = _run(models["threshold-test"], [phantom], runs, parameters={"quality": "fast"}, device="cpu",
                  progress=steps.append, log=lines.append)
    for attribute in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(result.labels, attribute)() == getattr(phantom, attribute)()
    in_process = segment([phantom], load_package(os.path.join(threshold_model, "package")), device="cpu")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.labels), sitk.GetArrayFromImage(in_process.labels))
    assert result.label_values == (1,)
    assert "inferring" in {step.stage for step in steps}, "the engine's progress inside the container came through"
    fractions = [step.fraction for step in steps]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert result.device == f"{result.device.split()[0]} container, CPU"


def test_parameters_device_and_safety_reach_the_container(models, container_runtime, runs):
    phantom = _phantom(1)
    result = _run(models["contract-test"], [phantom], ContainerSettings(run_folder=runs.run_folder,
                                                                        memory_limit="300m"),
                  parameters={"behaviour": "probe", "threshold": 0.25}, device="auto")
    expected = (sitk.GetArrayFromImage(phantom) > 0.25).astype(np.uint8)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.labels), expected)
    messages = _messages_of(result)
    assert 'parameters {"behaviour": "probe", "threshold": 0.25}' in messages
    assert "device cpu" in messages  # no GPU passthrough on this machine
    assert "uid 0" not in messages
    assert "network False" in messages and "interfaces ['lo']" in messages
    assert "writable input False" in messages and "writable root False" in messages
    assert "writable output True" in messages
    assert f"memory {300 * 1024 * 1024}" in messages
    assert not _containers(container_runtime)


def _messages_of(result) -> str:
    return "\n".join(result.messages)


@pytest.mark.parametrize(("behaviour", "expected"), [
    ("fail", r"exit code 3\): The model refuses this volume: too dark"),
    ("crash", r"exit code 2\):\n(.|\n)*Segmentation fault in the model's native code"),
    ("malformed", r"without a valid result \(result.json is not valid JSON"),
    ("no-labels", "label map labels.nrrd named by result.json is missing"),
    ("shifted", r"does not lie on the input's voxel grid \(origin"),
    ("unknown-label", "value\\(s\\) 7 that the registry lists no label for"),
])
def test_a_failing_or_misbehaving_container_is_reported_with_its_own_words(models, container_runtime, runs,
                                                                         behaviour, expected):
    with pytest.raises(ContainerRunError, match=expected):
        _run(models["contract-test"], [_phantom()], runs, parameters={"behaviour": behaviour})
    assert not _containers(container_runtime)


def test_cancel_stops_and_removes_the_container(models, container_runtime, runs):
    cancel = threading.Event()

    def progress(step):
        if step.stage == "waiting":
            cancel.set()

    with pytest.raises(ContainerCancelledError):
        _run(models["contract-test"], [_phantom()], runs, parameters={"behaviour": "sleep"}, progress=progress,
             cancel=cancel)
    assert not _containers(container_runtime)


def test_timeout_stops_and_removes_the_container(models, container_runtime, runs):
    settings = ContainerSettings(run_folder=runs.run_folder, timeout=3)
    with pytest.raises(ContainerTimeoutError, match="longer than 3 s"):
        _run(models["contract-test"], [_phantom()], settings, parameters={"behaviour": "sleep"})
    assert not _containers(container_runtime)


def test_kept_run_folder_holds_the_request_and_the_result(models, tmp_path):
    settings = ContainerSettings(run_folder=str(tmp_path), keep_run_folders=True)
    lines = []
    _run(models["contract-test"], [_phantom()], settings, log=lines.append)
    (run_folder,) = os.listdir(tmp_path)
    assert sorted(os.listdir(tmp_path / run_folder / "input")) == ["input-0.nrrd", "request.json"]
    assert sorted(os.listdir(tmp_path / run_folder / "output")) == ["labels.nrrd", "result.json"]
    assert f"Run folder kept: {tmp_path / run_folder}" in lines


def test_bad_parameters_are_refused_before_anything_runs(models, runs):
    with pytest.raises(ValueError, match="threshold"):
        _run(models["contract-test"], [_phantom()], runs, parameters={"threshold": 2.0})
    with pytest.raises(ValueError, match="has no parameter 'colour'"):
        _run(models["contract-test"], [_phantom()], runs, parameters={"colour": "red"})


def test_missing_runtime_is_explained(models, runs, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ContainerError, match=r"No usable container runtime(.|\n)*podman: not found on PATH"):
        _run(models["contract-test"], [_phantom()], runs)


def _image(built, name: str = ""):
    """A registry ContainerImage for a built image."""
    return ContainerImage(name=name or built.tag.rsplit(":", 1)[0], digest=built.digest, id=built.id)


def test_image_archive_is_loaded_and_its_digest_checked(container_runtime, tiny_image, tmp_path):
    archive = str(tmp_path / "tiny.tar")
    container_runtime.call(["save", "--output", archive, tiny_image.tag])
    container_runtime.call(["rmi", tiny_image.tag])
    impostor = ContainerImage(name="localhost/deepsegment-absent", digest="sha256:" + "0" * 64, id="sha256:" + "1" * 64)
    with pytest.raises(ContainerError, match="digest does not match the registry's"):
        ensure_image(container_runtime, impostor, archive)
    container_runtime.call(["rmi", tiny_image.tag])
    lines = []
    reference = ensure_image(container_runtime, _image(tiny_image), archive, log=lines.append)
    assert tiny_image.id in container_runtime.image_identities(reference)
    assert any(line.startswith("Loaded image") for line in lines)


def test_registry_archive_is_downloaded_verified_and_removed_after_loading(container_runtime, tiny_image, tmp_path):
    archive = tmp_path / "published" / "tiny.tar"
    archive.parent.mkdir()
    container_runtime.call(["save", "--output", str(archive), tiny_image.tag])
    container_runtime.call(["rmi", tiny_image.tag])
    listed = ModelFile(url=archive.as_uri(), sha256=file_sha256(str(archive)), size=archive.stat().st_size,
                       name="tiny.tar")
    image = dataclasses.replace(_image(tiny_image), archive=listed)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    assert tiny_image.id in container_runtime.image_identities(ensure_image(container_runtime, image,
                                                                            download_folder=str(downloads)))
    assert not os.listdir(downloads)
    container_runtime.call(["rmi", tiny_image.tag])
    archive.write_bytes(archive.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ChecksumMismatchError):
        ensure_image(container_runtime, image, download_folder=str(downloads))
    assert not container_runtime.image_identities(tiny_image.id), "a tampered archive was loaded"


def test_image_is_pulled_by_digest_from_a_registry(container_runtime, tiny_image, loopback_registry, tmp_path):
    name = f"{loopback_registry}/lab/tiny"
    container_runtime.call(["tag", tiny_image.tag, f"{name}:1"])
    digest_file = tmp_path / "pushed-digest"
    container_runtime.call(["push", "--digestfile", str(digest_file), f"{name}:1"])
    digest = digest_file.read_text().strip()
    container_runtime.call(["rmi", f"{name}:1"])
    lines = []
    image = ContainerImage(name=name, digest=digest)
    assert ensure_image(container_runtime, image, log=lines.append) == f"{name}@{digest}"
    assert any("Copying" in line for line in lines), "the pull's progress reached the log"
    container_runtime.call(["rmi", f"{name}@{digest}"])
    with pytest.raises(ContainerError, match=r"Pulling .* failed"):
        ensure_image(container_runtime, ContainerImage(name=name, digest="sha256:" + "2" * 64))


def _supervise_a_sleeping_container(runtime, image) -> tuple:
    """A process waiting on a container that sleeps, as a worker waits on a model's container (in a session of
    its own, as workers run); returns the process and the container's name once the container runs."""
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{DEEPSEGMENT_FOLDER!r}, {MODEL_REGISTRY_FOLDER!r}]
        from DeepSegmentLib.container_runtime import ContainerRuntime, new_container_name
        runtime = {runtime!r}
        name = new_container_name()
        command = ["python3", "-c", "print('up', flush=True); import time; time.sleep(300)"]
        runtime.run(runtime.run_arguments({image!r}, [], name=name) + command, name=name,
                    on_line=lambda line: print(name, flush=True))
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                               start_new_session=True)
    return process, process.stdout.readline().strip()


def test_a_container_whose_supervisor_was_killed_is_removed_and_no_other(container_runtime, base_image):
    """A worker killed while it waits on its container (SIGKILL to its process group, as the job supervisor's
    last resort) leaves the container running: the next worker's first container run removes it."""
    killed, orphan = _supervise_a_sleeping_container(container_runtime, base_image)
    living, supervised = _supervise_a_sleeping_container(container_runtime, base_image)
    try:
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait()
        assert {orphan, supervised} <= set(_containers(container_runtime)), "the orphan runs on"
        assert container_runtime.remove_orphan_containers() == [orphan]
        assert orphan not in _containers(container_runtime) and supervised in _containers(container_runtime)
    finally:
        os.killpg(living.pid, signal.SIGKILL)
        living.wait()
        for process in (killed, living):
            process.stdout.close()
        for name in (orphan, supervised):
            container_runtime.remove_container(name)

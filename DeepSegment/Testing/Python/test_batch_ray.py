"""Batch runs on a real Ray cluster on this machine (a head and two worker nodes, see ray_test_cluster.py): the same
result files as a local run, byte for byte, also when a worker node is killed while it runs a case."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time

import pytest
from batch_test_support import MODEL_ID, result_files, write_cases, write_threshold_model
from ModelRegistryLib.files import is_temporary_name

from DeepSegmentLib.batch import SKIPPED, BatchError, BatchSettings, run_batch
from DeepSegmentLib.batch_outputs import read_record

pytest.importorskip("ray", reason="the Ray tests need the ray package")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the test cluster reads /proc")

from ray_test_cluster import LocalRayCluster  # noqa: E402

CASES = 6
TASK = "segment_case_task"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray-model")
    return {"index": write_threshold_model(str(folder)), "cache": str(folder / "cache")}


@pytest.fixture(scope="module")
def cluster():
    # A short folder: Ray's Unix socket paths below it must stay within 107 characters.
    folder = tempfile.mkdtemp(prefix="sdl-ray-")
    cluster = LocalRayCluster(folder, workers=2, cpus=1).start()
    yield cluster
    cluster.stop()
    assert not os.path.exists(folder)


def batch(model, images, output, settings):
    return run_batch(MODEL_ID, "images", str(images), str(output), settings, indexes=[model["index"]],
                     cache_dir=model["cache"])


def results(folder) -> dict:
    return {name: data for name, data in result_files(str(folder)).items() if name.endswith(".seg.nrrd")}


def test_a_killed_worker_node_is_survived_and_the_results_are_a_local_runs_bytes(model, cluster, tmp_path):
    write_cases(str(tmp_path / "images"), CASES, shape=(64, 64, 64))
    local = batch(model, tmp_path / "images", tmp_path / "local", BatchSettings(device="cpu", workers=1, threads=1))
    assert {case.state for case in local.cases} == {"done"}

    killed, finished = [], threading.Event()

    def kill_a_worker_node_while_it_runs_a_case():
        while not finished.is_set():
            index = cluster.worker_node_running(TASK)
            if index is not None:
                cluster.kill_node(index)
                killed.append(index)
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_a_worker_node_while_it_runs_a_case, daemon=True)
    killer.start()
    try:
        summary = batch(model, tmp_path / "images", tmp_path / "ray",
                        BatchSettings(device="cpu", threads=1, ray_address=cluster.address))
    finally:
        finished.set()
        killer.join()
    assert killed, "no worker node was caught running a case"
    assert [case.state for case in summary.cases] == ["done"] * CASES, [case.reason for case in summary.cases]
    assert summary.where.startswith(f"Ray cluster at {cluster.address}")
    assert results(tmp_path / "ray") == results(tmp_path / "local") and len(results(tmp_path / "local")) == CASES
    assert not any(is_temporary_name(name) for _, _, names in os.walk(tmp_path / "ray") for name in names)
    for case in summary.cases:
        assert read_record(str(tmp_path / "ray"), case.case_id)["fingerprint"] == \
            read_record(str(tmp_path / "local"), case.case_id)["fingerprint"]

    # Local and cluster runs keep the same records: either one skips what the other did.
    shutil.rmtree(tmp_path / "local")
    shutil.copytree(tmp_path / "ray", tmp_path / "local")
    again = batch(model, tmp_path / "images", tmp_path / "local", BatchSettings(device="cpu", workers=1, threads=1))
    assert {case.state for case in again.cases} == {SKIPPED}


def test_a_rerun_on_the_cluster_skips_the_cases_done(model, cluster, tmp_path):
    write_cases(str(tmp_path / "images"), 3)
    settings = BatchSettings(device="cpu", threads=1, ray_address=cluster.address)
    assert {case.state for case in batch(model, tmp_path / "images", tmp_path / "out", settings).cases} == {"done"}
    rerun = batch(model, tmp_path / "images", tmp_path / "out", settings)
    assert {case.state for case in rerun.cases} == {SKIPPED}


def test_without_the_ray_package_a_cluster_run_is_one_clear_error(model, tmp_path, monkeypatch):
    write_cases(str(tmp_path / "images"), 1)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    with pytest.raises(BatchError, match="needs the ray package"):
        batch(model, tmp_path / "images", tmp_path / "out", BatchSettings(device="cpu", ray_address="auto"))

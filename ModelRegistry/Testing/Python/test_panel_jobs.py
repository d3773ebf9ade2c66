"""The Model Registry panel runs install, verify and import in worker processes: progress, cancel, results.

The server runs in a process of its own, as a test idling like Slicer would starve a server thread.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile

import pytest
from ModelRegistry import ModelRegistryLogic
from registry_test_server import served_in_a_process

import slicer
from ModelRegistryLib import jobs

ARCHIVE_BYTES = 3 * 1024 * 1024


@pytest.fixture()
def package(tmp_path):
    """A model whose 3 MiB archive (random bytes: no compression) and index are files in ``tmp_path/served``."""
    served = tmp_path / "served"
    served.mkdir()
    archive = served / "paced-1.0.0.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("weights.bin", os.urandom(ARCHIVE_BYTES))
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    index = {"schemaVersion": 1, "models": [{"id": "paced", "title": "Paced model", "versions": [
        {"version": "1.0.0", "files": [{"url": "paced-1.0.0.zip", "sha256": digest, "size": archive.stat().st_size}]},
    ]}]}
    (served / "index.json").write_text(json.dumps(index), encoding="utf-8")
    return {"/index.json": str(served / "index.json"), "/paced-1.0.0.zip": str(archive)}


@pytest.fixture()
def panel(tmp_path):
    widget = slicer.modules.modelregistry.widgetRepresentation().self()
    original = widget.logic
    widget.logic = ModelRegistryLogic(cacheDir=str(tmp_path / "cache"))
    yield widget
    widget.poller.stop()
    widget.logic = original
    widget.refresh(offline=True)


def select(panel, base_url):
    panel.logic.addSource(base_url + "/index.json")
    panel.refresh(offline=True)
    assert panel.selectModel("paced")


def wait_for_progress(panel):
    def downloading():
        return panel.ui.progressBar.maximum == 1000 and panel.ui.progressBar.value > 0

    while panel.poller.busy and not downloading():
        panel.poller.waitUntilDone(0.05)
    assert downloading(), panel.ui.progressLabel.text


def test_install_shows_progress_and_cancel_leaves_nothing_installed(panel, package):
    with served_in_a_process(package, bytes_per_second=ARCHIVE_BYTES / 4) as base_url:
        select(panel, base_url)
        panel.ui.installButton.click()
        assert panel.poller.busy and not panel.ui.installButton.enabled
        wait_for_progress(panel)
        panel.ui.cancelButton.click()
        assert panel.poller.waitUntilDone(30)
    assert panel.ui.progressLabel.text == "Installing paced 1.0.0: cancelled (a later install resumes the download)."
    assert panel.logic.registry.store.installed_versions("paced") == []
    assert panel.ui.installButton.enabled


def test_install_verify_and_import_run_in_workers(panel, package, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    with served_in_a_process(package) as base_url:
        select(panel, base_url)
        panel.ui.installButton.click()
        assert panel.poller.waitUntilDone(60)
    installed = panel.logic.registry.installed_model("paced")
    assert panel.ui.progressLabel.text == f"Installing paced 1.0.0: done ({installed.path})."
    # Slicer's log says what ran, where, in which worker, and how it ended.
    messages = [record.getMessage() for record in caplog.records if record.name == "ModelRegistry"]
    assert f"Installing paced 1.0.0 (runtime deepsegment) into {panel.logic.cacheDir}" in messages
    started = [m for m in messages if m.startswith("Started Installing paced 1.0.0: ModelRegistryLib.tasks:install")]
    assert len(started) == 1 and started[0].split()[-1].isdigit()  # the worker's pid
    assert any(m.startswith("[Installing paced 1.0.0] download: ") for m in messages), messages  # from the worker
    assert any(m.startswith("[Installing paced 1.0.0] unpack: ") for m in messages), messages
    # The worker's exit status follows the pid when the worker has exited by then.
    assert any(m.startswith("Installing paced 1.0.0 succeeded after ") and f"(worker process {pid}" in m
               for pid in [started[0].split()[-1]] for m in messages), messages
    panel.ui.verifyButton.click()
    assert panel.poller.waitUntilDone(60)
    assert panel.ui.progressLabel.text == "paced 1.0.0: all files intact"
    panel.logic.remove("paced")
    panel.importPackage(package["/paced-1.0.0.zip"])
    assert panel.poller.waitUntilDone(60)
    assert panel.ui.progressLabel.text.startswith("Importing paced-1.0.0.zip: done (")
    assert panel.logic.registry.installed_model("paced") is not None


def test_the_console_install_waits_and_raises_what_failed(package, tmp_path, caplog):
    logic = ModelRegistryLogic(cacheDir=str(tmp_path / "console-cache"))
    with served_in_a_process(package) as base_url:
        logic.addSource(base_url + "/index.json")
        installed = logic.install("paced")
    assert installed.version == "1.0.0" and os.path.isdir(installed.path)
    assert [result.ok for result in logic.verify("paced")] == [True]
    with pytest.raises(jobs.JobError, match="holds no complete model version"):
        logic.importPackage(str(tmp_path / "console-cache" / "sources.json"))
    failures = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert failures and failures[-1].getMessage().startswith("Importing sources.json failed after ")
    assert "holds no complete model version" in failures[-1].getMessage()

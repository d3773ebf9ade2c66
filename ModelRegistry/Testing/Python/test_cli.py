"""``python -m ModelRegistryLib``: every command, in-process and as real processes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
from registry_test_server import RegistryTestServer

from ModelRegistryLib.cli import main

MODULE_FOLDER = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WEIGHTS = os.urandom(200_000)


@pytest.fixture()
def server():
    with RegistryTestServer() as running:
        running.add("/net-1.0.0.pt", WEIGHTS)
        index = {"schemaVersion": 1, "models": [{
            "id": "net", "title": "A network", "modality": "CT", "description": "Test model",
            "versions": [{"version": "1.0.0", "files": [
                {"url": "net-1.0.0.pt", "sha256": hashlib.sha256(WEIGHTS).hexdigest(), "size": len(WEIGHTS)}]}],
        }]}
        running.add("/index.json", json.dumps(index).encode())
        yield running


def run(capsys, *arguments):
    code = main(list(arguments))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_list_show_install_verify_pin_remove(server, tmp_path, capsys):
    common = ["--index", server.url("/index.json"), "--cache-dir", str(tmp_path)]
    code, out, _ = run(capsys, *common, "list")
    assert code == 0 and "net" in out and "not installed" in out
    code, out, _ = run(capsys, *common, "show", "net")
    assert code == 0 and "A network" in out
    code, out, err = run(capsys, *common, "install", "net@1.0.0")
    assert code == 0 and os.path.isfile(os.path.join(out.strip(), "net-1.0.0.pt"))
    assert "Installed net 1.0.0" in err
    code, out, _ = run(capsys, *common, "verify", "net")
    assert code == 0 and "all files intact" in out
    assert run(capsys, *common, "pin", "net@1.0.0")[0] == 0
    assert run(capsys, *common, "unpin", "net")[0] == 0
    code, out, _ = run(capsys, *common, "remove", "net")
    assert code == 0 and "Removed 1.0.0" in out


def test_failures_exit_non_zero_with_one_line(server, tmp_path, capsys):
    common = ["--index", server.url("/index.json"), "--cache-dir", str(tmp_path)]
    for arguments, reason in [
        (["install", "missing-model"], "none of the registry indexes"),
        (["install", "net@9"], "9"),
        (["remove", "net"], "not installed"),
        (["import", str(tmp_path / "nothing.zip")], "Nothing to import"),
        (["pin", "net"], "ID@VERSION"),
    ]:
        code, _, err = run(capsys, *common, *arguments)
        assert code == 1, arguments
        assert err.startswith("error: ") and reason in err and err.count("\n") == 1, err


def test_import_installs_a_local_copy(server, tmp_path, capsys):
    copy = tmp_path / "net.pt"
    copy.write_bytes(WEIGHTS)
    code, out, _ = run(capsys, "--index", server.url("/index.json"), "--cache-dir", str(tmp_path / "c"), "import",
                       str(copy))
    assert code == 0 and out.strip().endswith(os.path.join("net", "1.0.0"))


def test_two_processes_installing_at_once_download_once(server, tmp_path):
    server.add("/net-1.0.0.pt", WEIGHTS, bytes_per_second=400_000)
    command = [sys.executable, "-m", "ModelRegistryLib", "--index", server.url("/index.json"), "--cache-dir",
               str(tmp_path), "install", "net"]
    processes = [subprocess.Popen(command, cwd=MODULE_FOLDER, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for _ in range(2)]
    outputs = [process.communicate(timeout=60) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    assert outputs[0][0] == outputs[1][0]
    assert sum(request.sent for request in server.requests("/net-1.0.0.pt")) == len(WEIGHTS)

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


def one_line_error(code: int, err: str) -> bool:
    return code == 1 and err.startswith("error: ") and err.count("\n") == 1


@pytest.mark.parametrize(("arguments", "reason"), [
    ([], "required: COMMAND"),
    (["frobnicate"], "invalid choice"),
    (["install"], "required: ID[@VERSION]"),
    (["list", "--timeout", "3"], "unrecognized arguments"),
    (["install", "Net"], "is not a model id"),
    (["install", "net@v1"], "is not a version"),
    (["show", "net@1.0.0"], "without a version"),
    (["pin", "net"], "pin ID@VERSION"),
    (["import", "/no/such/folder"], "Nothing to import"),
    (["--index", "ftp://example.org/index.json", "list"], "only http, https and file"),
])
def test_bad_arguments_are_one_line_before_any_work(server, tmp_path, capsys, arguments, reason):
    code, out, err = run(capsys, "--index", server.url("/index.json"), "--cache-dir", str(tmp_path), *arguments)
    assert one_line_error(code, err) and reason in err, err
    assert out == "" and server.requests() == [] and os.listdir(tmp_path) == []


def test_a_cache_dir_that_is_a_file_is_refused(server, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    code, _, err = run(capsys, "--cache-dir", str(tmp_path / "file"), "list")
    assert one_line_error(code, err) and "is not a folder" in err


@pytest.mark.parametrize(("name", "content", "reason"), [
    ("pins.json", '["net"]', "pins.json must be a JSON object"),
    ("pins.json", '{"net": ', "cannot read"),
    ("sources.json", '[{"location": 5}]', "sources.json must be a JSON list"),
    ("sources.json", b"\xff\xfe", "cannot read"),
])
def test_settings_files_of_the_wrong_shape_are_one_line_naming_the_file(server, tmp_path, capsys, name, content,
                                                                        reason):
    (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    code, _, err = run(capsys, "--index", server.url("/index.json"), "--cache-dir", str(tmp_path), "install", "net")
    assert one_line_error(code, err) and reason in err and str(tmp_path / name) in err, err


def test_pinning_a_version_that_does_not_exist_is_refused(server, tmp_path, capsys):
    common = ["--index", server.url("/index.json"), "--cache-dir", str(tmp_path)]
    code, _, err = run(capsys, *common, "pin", "net@2.0.0")
    assert one_line_error(code, err) and "available: 1.0.0" in err
    assert not (tmp_path / "pins.json").exists()


def test_damaged_install_fails_verify_with_one_error_line(server, tmp_path, capsys):
    common = ["--index", server.url("/index.json"), "--cache-dir", str(tmp_path)]
    code, out, _ = run(capsys, *common, "install", "net")
    with open(os.path.join(out.strip(), "net-1.0.0.pt"), "ab") as file:
        file.write(b"!")
    code, out, err = run(capsys, *common, "verify")
    assert "1 changed (net-1.0.0.pt)" in out
    assert code == 1 and err.rstrip("\n").rsplit("\n", 1)[-1] == "error: net 1.0.0 failed verification: remove and " \
                                                                 "install again"


def test_a_failure_after_progress_is_on_a_line_of_its_own(server, tmp_path, capsys):
    server.add("/net-1.0.0.pt", WEIGHTS, wrong_bytes=True)
    code, _, err = run(capsys, "--index", server.url("/index.json"), "--cache-dir", str(tmp_path), "install", "net")
    assert code == 1 and "\nerror: " in err and "sha256" in err.rsplit("\n", 2)[-2]


def test_usage_errors_of_the_real_process_are_one_line_with_exit_code_1(tmp_path):
    finished = subprocess.run([sys.executable, "-m", "ModelRegistryLib", "--cache-dir", str(tmp_path), "remove"],
                              cwd=MODULE_FOLDER, capture_output=True, text=True, timeout=60)
    assert finished.returncode == 1 and finished.stdout == ""
    assert finished.stderr.startswith("error: ") and finished.stderr.count("\n") == 1

"""ModelRegistryLib.store: atomic, verified installs from a real (misbehaving) server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import threading
import zipfile

import pytest
from registry_test_server import RegistryTestServer

from ModelRegistryLib.errors import (
    CancelledError,
    ChecksumMismatchError,
    DiskFullError,
    RegistryError,
    UnsafeArchiveError,
)
from ModelRegistryLib.index import ModelEntry, ModelFile, ModelVersion
from ModelRegistryLib.locking import FileLock
from ModelRegistryLib.store import CACHE_ENVIRONMENT_VARIABLE, MANIFEST_NAME, ModelStore, default_cache_dir


def zip_bytes(files: dict) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def entry_for(url: str, data: bytes, version: str = "1.0.0", name: str = "") -> tuple:
    model_file = ModelFile(url, hashlib.sha256(data).hexdigest(), len(data), name)
    model_version = ModelVersion(version, files=(model_file,))
    return ModelEntry("demo", "Demo", (model_version,)), model_version


MODULE_FOLDER = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE = zip_bytes({"model.json": b'{"a": 1}', "weights/net.pt": os.urandom(300_000)})


def leftovers(store: ModelStore) -> list:
    """Files in the cache that are neither installed versions nor locks."""
    found = []
    for folder in ("staging", "downloads"):
        root = os.path.join(store.cache_dir, folder)
        if os.path.isdir(root):
            found += os.listdir(root)
    return found


@pytest.fixture()
def server():
    with RegistryTestServer() as running:
        yield running


def test_install_unpacks_verifies_and_records(server, tmp_path):
    server.add("/demo-1.0.0.zip", PACKAGE)
    entry, version = entry_for(server.url("/demo-1.0.0.zip"), PACKAGE)
    store = ModelStore(str(tmp_path))
    steps = []
    installed = store.install(entry, version, progress=steps.append)
    assert installed.path == store.version_path("demo", "1.0.0")
    assert sorted(installed.files) == ["model.json", "weights/net.pt"]
    assert os.path.isfile(os.path.join(installed.path, MANIFEST_NAME))
    assert [result.ok for result in store.verify()] == [True]
    assert steps[-1].stage == "done" and any(step.stage == "download" for step in steps)
    assert leftovers(store) == []
    assert store.disk_usage() >= len(PACKAGE)
    # A second install is a no-op: no new request.
    requests = len(server.requests())
    assert store.install(entry, version) == installed
    assert len(server.requests()) == requests


def test_plain_file_is_kept_under_its_name(server, tmp_path):
    server.add("/weights-v2.bin", b"weights")
    entry, version = entry_for(server.url("/weights-v2.bin"), b"weights", name="net.pt")
    installed = ModelStore(str(tmp_path)).install(entry, version)
    assert sorted(os.listdir(installed.path)) == [MANIFEST_NAME, "net.pt"]


def test_wrong_bytes_install_nothing(server, tmp_path):
    server.add("/demo.zip", PACKAGE, wrong_bytes=True)
    entry, version = entry_for(server.url("/demo.zip"), PACKAGE)
    store = ModelStore(str(tmp_path))
    with pytest.raises(ChecksumMismatchError):
        store.install(entry, version)
    assert store.installed() == []
    assert leftovers(store) == []


def test_interrupted_download_resumes_without_fetching_bytes_again(server, tmp_path):
    server.add("/demo.zip", PACKAGE, drop_after=100_000, times=1)
    entry, version = entry_for(server.url("/demo.zip"), PACKAGE)
    installed = ModelStore(str(tmp_path)).install(entry, version)
    first, second = server.requests("/demo.zip")
    assert second.range_start == first.sent == 100_000
    assert first.sent + second.sent == len(PACKAGE)
    assert installed.version == "1.0.0"


def test_cancel_leaves_nothing_installed_and_a_later_install_resumes(server, tmp_path):
    server.add("/demo.zip", PACKAGE, bytes_per_second=200_000, times=1)
    entry, version = entry_for(server.url("/demo.zip"), PACKAGE)
    store = ModelStore(str(tmp_path))
    cancel = threading.Event()

    def cancel_after_some_bytes(step):
        if step.fraction and step.fraction > 0.2:
            cancel.set()

    with pytest.raises(CancelledError):
        store.install(entry, version, progress=cancel_after_some_bytes, cancel=cancel)
    assert store.installed() == []
    store.install(entry, version)
    _, second = server.requests("/demo.zip")
    # Bytes in flight when the user cancelled may be fetched again; those kept are not.
    assert second.range_start > 0 and second.range_start + second.sent == len(PACKAGE)


def test_two_concurrent_installs_download_once(server, tmp_path):
    server.add("/demo.zip", PACKAGE, bytes_per_second=1_000_000)
    entry, version = entry_for(server.url("/demo.zip"), PACKAGE)
    results, errors = [], []

    def install():
        try:
            results.append(ModelStore(str(tmp_path)).install(entry, version))
        except Exception as error:  # collected for the assertion below
            errors.append(error)

    threads = [threading.Thread(target=install) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert results[0] == results[1]
    assert sum(request.sent for request in server.requests("/demo.zip")) == len(PACKAGE)


def test_malicious_archive_is_refused_and_nothing_escapes(server, tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = 4
        archive.addfile(info, io.BytesIO(b"evil"))
    data = buffer.getvalue()
    server.add("/evil.tar.gz", data)
    entry, version = entry_for(server.url("/evil.tar.gz"), data)
    cache = tmp_path / "cache"
    store = ModelStore(str(cache))
    with pytest.raises(UnsafeArchiveError):
        store.install(entry, version)
    assert store.installed() == []
    assert not any(path.name == "escaped.txt" for path in tmp_path.rglob("*"))
    assert leftovers(store) == []


def test_too_little_disk_space_is_refused_before_downloading(server, tmp_path):
    server.add("/huge.zip", b"x")
    model_file = ModelFile(server.url("/huge.zip"), "0" * 64, 10**16)
    version = ModelVersion("1.0.0", files=(model_file,))
    with pytest.raises(DiskFullError, match="needed"):
        ModelStore(str(tmp_path)).install(ModelEntry("huge", "Huge", (version,)), version)
    assert server.requests() == []


def test_verify_finds_changed_missing_and_extra_files(server, tmp_path):
    server.add("/demo.zip", PACKAGE)
    entry, version = entry_for(server.url("/demo.zip"), PACKAGE)
    store = ModelStore(str(tmp_path))
    installed = store.install(entry, version)
    with open(os.path.join(installed.path, "model.json"), "ab") as file:
        file.write(b" ")
    os.remove(os.path.join(installed.path, "weights", "net.pt"))
    with open(os.path.join(installed.path, "notes.txt"), "w", encoding="utf-8") as file:
        file.write("added by hand")
    (result,) = store.verify("demo")
    assert (result.changed, result.missing, result.extra) == (("model.json",), ("weights/net.pt",), ("notes.txt",))
    assert not result.ok and "install it again" in result.text


def test_remove_and_pins(server, tmp_path):
    server.add("/demo.zip", PACKAGE)
    entry, version = entry_for(server.url("/demo.zip"), PACKAGE)
    store = ModelStore(str(tmp_path))
    store.install(entry, version)
    store.pin("demo", "1.0.0")
    assert store.pins() == {"demo": "1.0.0"}
    assert store.remove("demo") == ["1.0.0"]
    assert store.installed() == [] and store.pins() == {}
    assert store.remove("demo") == []


def test_import_from_a_local_archive_is_recognised_by_checksum(tmp_path):
    archive = tmp_path / "downloaded-by-hand.zip"
    archive.write_bytes(PACKAGE)
    entry, _ = entry_for("https://unreachable.invalid/demo-1.0.0.zip", PACKAGE)
    store = ModelStore(str(tmp_path / "cache"))
    installed = store.import_package(str(archive), [entry])
    assert (installed.model_id, installed.version) == ("demo", "1.0.0")
    assert sorted(installed.files) == ["model.json", "weights/net.pt"]
    other = tmp_path / "other.zip"
    other.write_bytes(b"not a model")
    with pytest.raises(RegistryError, match="no complete model version"):
        store.import_package(str(other), [entry])


def test_import_from_a_folder_of_files(tmp_path):
    first, second = b"first file", b"second file"
    files = tuple(
        ModelFile(f"https://unreachable.invalid/{name}", hashlib.sha256(data).hexdigest(), len(data), name)
        for name, data in (("a.pt", first), ("b.json", second))
    )
    version = ModelVersion("2.0.0", files=files)
    folder = tmp_path / "copied from a USB stick"
    folder.mkdir()
    (folder / "renamed-a.pt").write_bytes(first)
    (folder / "b.json").write_bytes(second)
    store = ModelStore(str(tmp_path / "cache"))
    installed = store.import_package(str(folder), [ModelEntry("pair", "Pair", (version,))])
    assert sorted(installed.files) == ["a.pt", "b.json"]


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENVIRONMENT_VARIABLE, str(tmp_path / "models"))
    assert default_cache_dir() == str(tmp_path / "models")
    assert default_cache_dir(configured=str(tmp_path / "setting")) == str(tmp_path / "models")
    monkeypatch.delenv(CACHE_ENVIRONMENT_VARIABLE)
    assert default_cache_dir(configured=str(tmp_path / "setting")) == str(tmp_path / "setting")
    assert "SlicerDeepLearning" in default_cache_dir()


# --- what issue 16 found: each fault as a class ------------------------------------------------------


def test_archive_member_named_like_the_manifest_is_refused_and_leaves_nothing(server, tmp_path):
    hostile = zip_bytes({MANIFEST_NAME: b'{"id": "demo"}', "model.json": b"{}"})
    server.add("/demo.zip", hostile)
    entry, version = entry_for(server.url("/demo.zip"), hostile)
    store = ModelStore(str(tmp_path))
    with pytest.raises(UnsafeArchiveError, match=MANIFEST_NAME):
        store.install(entry, version)
    assert store.installed() == [] and leftovers(store) == []
    # Deeper in the archive the name is just a file of the model.
    nested = zip_bytes({"docs/" + MANIFEST_NAME: b"{}", "model.json": b"{}"})
    server.add("/nested.zip", nested)
    entry, version = entry_for(server.url("/nested.zip"), nested)
    installed = store.install(entry, version)
    assert "docs/" + MANIFEST_NAME in installed.files
    assert [result.ok for result in store.verify()] == [True]


def test_a_plain_file_named_like_the_manifest_is_refused(server, tmp_path):
    server.add("/m.json", b"{}")
    entry, version = entry_for(server.url("/m.json"), b"{}", name=MANIFEST_NAME.upper())
    with pytest.raises(RegistryError, match="may not be called"):
        ModelStore(str(tmp_path)).install(entry, version)


def test_staging_left_by_killed_installs_is_cleaned_unless_its_version_is_being_installed(server, tmp_path):
    store = ModelStore(str(tmp_path))
    killed = tmp_path / "staging" / "demo@0.9.0" / "version" / "weights"
    killed.mkdir(parents=True)
    (killed / "net.pt").write_bytes(os.urandom(10_000))
    (tmp_path / "staging" / "tmp8a7sdf").mkdir()  # left by an older version of this code
    busy = tmp_path / "staging" / "other@1.0.0"
    busy.mkdir()
    server.add("/demo.zip", PACKAGE)
    entry, version = entry_for(server.url("/demo.zip"), PACKAGE)
    with FileLock(str(tmp_path / "locks" / "other@1.0.0.lock")):  # another process installs other 1.0.0
        store.install(entry, version)
        assert os.listdir(tmp_path / "staging") == ["other@1.0.0"]
    assert store.clean_staging() == ["other@1.0.0"]
    assert os.listdir(tmp_path / "staging") == []


def test_part_answered_with_the_wrong_range_does_not_block_the_install(server, tmp_path):
    server.add("/demo.zip", PACKAGE, wrong_range=True)
    entry, version = entry_for(server.url("/demo.zip"), PACKAGE)
    store = ModelStore(str(tmp_path))
    os.makedirs(tmp_path / "downloads")
    (tmp_path / "downloads" / (version.files[0].sha256 + ".part")).write_bytes(PACKAGE[:50_000])
    installed = store.install(entry, version)
    assert installed.version == "1.0.0" and leftovers(store) == []


def test_a_version_whose_files_were_deleted_is_not_installed_and_installs_again(server, tmp_path):
    server.add("/demo.zip", PACKAGE)
    entry, version = entry_for(server.url("/demo.zip"), PACKAGE)
    store = ModelStore(str(tmp_path))
    installed = store.install(entry, version)
    os.remove(os.path.join(installed.path, "weights", "net.pt"))
    assert store.installed() == [] and store.get("demo", "1.0.0") is None
    assert store.installed_versions("demo") == []
    (result,) = store.verify()
    assert result.missing == ("weights/net.pt",)
    store.install(entry, version)
    assert len(server.requests("/demo.zip")) == 2
    assert [result.ok for result in store.verify()] == [True] and leftovers(store) == []
    # A truncated file is no complete install either (sizes are in the manifest).
    with open(os.path.join(installed.path, "model.json"), "r+b") as file:
        file.truncate(1)
    assert store.installed() == []
    # Whatever is left of a version, remove takes it away.
    assert store.remove("demo") == ["1.0.0"]
    assert not os.path.exists(installed.path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs fifos")
def test_import_of_a_folder_holding_a_fifo_and_a_device_link_finishes(tmp_path):
    folder = tmp_path / "usb stick"
    folder.mkdir()
    (folder / "demo.zip").write_bytes(PACKAGE)
    os.mkfifo(folder / "pipe")
    os.symlink("/dev/zero", folder / "zeros")
    entry, _ = entry_for("https://unreachable.invalid/demo-1.0.0.zip", PACKAGE)
    outcome = []
    worker = threading.Thread(target=lambda: outcome.append(
        ModelStore(str(tmp_path / "cache")).import_package(str(folder), [entry])))
    worker.start()
    worker.join(20)
    blocked = worker.is_alive()
    while worker.is_alive():  # it waits for a writer: give it one, so that the test ends
        with contextlib.suppress(OSError):
            os.close(os.open(folder / "pipe", os.O_WRONLY | os.O_NONBLOCK))
        worker.join(0.2)
    assert not blocked
    assert [(m.model_id, m.version) for m in outcome] == [("demo", "1.0.0")]


def test_files_are_created_as_the_umask_allows(server, tmp_path):
    # A cache shared by a group: umask 002 must give group-writable folders and files (mkdtemp gave 0700,
    # mkstemp 0600). The umask is per process, so the install runs in a child process.
    server.add("/demo.zip", PACKAGE)
    entry, _ = entry_for(server.url("/demo.zip"), PACKAGE)
    script = (
        "import os, sys; os.umask(0o002); sys.path.insert(0, sys.argv[1])\n"
        "from ModelRegistryLib.index import ModelEntry, ModelFile, ModelVersion\n"
        "from ModelRegistryLib.store import ModelStore\n"
        "version = ModelVersion('1.0.0', files=(ModelFile(sys.argv[3], sys.argv[4], int(sys.argv[5])),))\n"
        "store = ModelStore(sys.argv[2]); store.install(ModelEntry('demo', 'Demo', (version,)), version)\n"
        "store.pin('demo', '1.0.0')\n"
    )
    model_file = entry.versions[0].files[0]
    subprocess.run([sys.executable, "-c", script, MODULE_FOLDER, str(tmp_path / "cache"), model_file.url,
                    model_file.sha256, str(model_file.size)], check=True)
    store = ModelStore(str(tmp_path / "cache"))
    installed = store.get("demo", "1.0.0")
    modes = {os.path.relpath(path, tmp_path / "cache"): stat.S_IMODE(os.stat(path).st_mode) for path in (
        installed.path, os.path.join(installed.path, "weights"), os.path.join(installed.path, "weights", "net.pt"),
        os.path.join(installed.path, MANIFEST_NAME), store.cache_dir + "/pins.json", store.cache_dir + "/models")}
    assert modes == {name: (0o775 if os.path.isdir(tmp_path / "cache" / name) else 0o664) for name in modes}


def test_a_manifest_naming_paths_outside_its_folder_is_damaged_and_nothing_outside_is_touched(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")
    store = ModelStore(str(tmp_path / "cache"))
    folder = tmp_path / "cache" / "models" / "demo" / "1.0.0"
    folder.mkdir(parents=True)
    digest = hashlib.sha256(b"precious").hexdigest()
    for files in ({"../../../../outside.txt": digest}, {str(outside): digest}, {"a\\..\\x": digest}):
        (folder / MANIFEST_NAME).write_text(json.dumps({"id": "demo", "version": "1.0.0", "files": files}))
        assert store.installed() == [] and store.get("demo", "1.0.0") is None
        assert [(r.version, r.problem) for r in store.verify()] == [("1.0.0", f"no valid {MANIFEST_NAME}")]
    # A manifest of another version (copied by hand) does not make this folder that version.
    (folder / MANIFEST_NAME).write_text(json.dumps({"id": "other", "version": "2.0.0", "files": {}}))
    assert store.installed() == []
    assert store.remove("demo") == ["1.0.0"]
    assert outside.read_bytes() == b"precious"
    assert os.listdir(tmp_path / "cache" / "models" / "demo") == []


def test_a_model_folder_linked_outside_the_cache_is_neither_removed_nor_replaced(server, tmp_path):
    elsewhere = tmp_path / "elsewhere" / "1.0.0"
    elsewhere.mkdir(parents=True)
    (elsewhere / "precious.txt").write_bytes(b"precious")
    (tmp_path / "cache" / "models").mkdir(parents=True)
    os.symlink(tmp_path / "elsewhere", tmp_path / "cache" / "models" / "demo")
    store = ModelStore(str(tmp_path / "cache"))
    with pytest.raises(RegistryError, match="outside the cache folder"):
        store.remove("demo", "1.0.0")
    server.add("/demo.zip", PACKAGE)
    entry, version = entry_for(server.url("/demo.zip"), PACKAGE)
    with pytest.raises(RegistryError, match="outside the cache folder"):
        store.install(entry, version)
    assert os.listdir(elsewhere) == ["precious.txt"]


def test_two_versions_sharing_a_file_install_at_once(server, tmp_path):
    shared = os.urandom(400_000)
    server.add("/shared.pt", shared, bytes_per_second=2_000_000)
    model_file = ModelFile(server.url("/shared.pt"), hashlib.sha256(shared).hexdigest(), len(shared), "net.pt")
    versions = [ModelVersion(number, files=(model_file,)) for number in ("1.0.0", "1.0.1")]
    entry = ModelEntry("demo", "Demo", tuple(versions))
    errors = []

    def install(version):
        try:
            ModelStore(str(tmp_path)).install(entry, version)
        except Exception as error:  # collected for the assertion below
            errors.append(error)

    threads = [threading.Thread(target=install, args=(version,)) for version in versions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    store = ModelStore(str(tmp_path))
    assert store.installed_versions("demo") == ["1.0.0", "1.0.1"]
    assert all(result.ok for result in store.verify()) and leftovers(store) == []


def test_verify_and_import_report_progress_and_can_be_cancelled(server, tmp_path):
    server.add("/demo.zip", PACKAGE)
    entry, version = entry_for(server.url("/demo.zip"), PACKAGE)
    store = ModelStore(str(tmp_path / "cache"))
    store.install(entry, version)
    steps = []
    assert [r.ok for r in store.verify(progress=steps.append)] == [True]
    assert {step.stage for step in steps} == {"verify"} and steps[-1].fraction < 1
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(CancelledError):
        store.verify(cancel=cancel)
    copy = tmp_path / "copy.zip"
    copy.write_bytes(PACKAGE)
    with pytest.raises(CancelledError):
        ModelStore(str(tmp_path / "other")).import_package(str(copy), [entry], cancel=cancel)

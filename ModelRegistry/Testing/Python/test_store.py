"""ModelRegistryLib.store: atomic, verified installs from a real (misbehaving) server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import io
import os
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

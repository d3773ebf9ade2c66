"""Files without the publisher's sha256: checked against the publisher's MD5/SHA-1, else trusted on first use, and
never silently; downloads from a real server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile

import pytest
from registry_test_server import RegistryTestServer

from ModelRegistryLib.card import card_html, card_text
from ModelRegistryLib.cli import main
from ModelRegistryLib.errors import ChecksumMismatchError
from ModelRegistryLib.index import ModelEntry, ModelFile, ModelVersion, parse_index
from ModelRegistryLib.store import ModelStore
from ModelRegistryLib.trust import NOT_VERIFIED, PINS_FILE, TrustStore


def archive(payload: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as output:
        output.writestr("model/weights.bin", payload)
    return buffer.getvalue()


FIRST = archive(os.urandom(50_000))
REPLACED = archive(os.urandom(50_000))


def unverified_version(url: str, **digest) -> tuple:
    version = ModelVersion("1.0.0", files=(ModelFile(url, "", None, "liver-v1.0.0.zip", **digest),),
                           runtime="auto3dseg")
    return ModelEntry("liver", "Liver", (version,)), version


@pytest.fixture()
def server():
    with RegistryTestServer() as running:
        yield running


def test_first_download_is_pinned_and_said_and_later_ones_must_match(server, tmp_path):
    server.add("/liver-v1.0.0.zip", FIRST)
    store = ModelStore(str(tmp_path / "cache"))
    entry, version = unverified_version(server.url("/liver-v1.0.0.zip"))
    said = []
    installed = store.install(entry, version, progress=said.append)
    notices = [step.text for step in said if step.stage == "trust"]
    assert len(notices) == 1 and NOT_VERIFIED in notices[0] and "trusted on first use" in notices[0]
    pin = store.trust.pinned(server.url("/liver-v1.0.0.zip"))
    assert (pin.sha256, pin.size) == (hashlib.sha256(FIRST).hexdigest(), len(FIRST))
    assert installed.files == {"model/weights.bin": hashlib.sha256(zipfile.ZipFile(io.BytesIO(FIRST)).read(
        "model/weights.bin")).hexdigest()}
    assert store.verify("liver")[0].ok

    # A later download of the same URL is checked against the pin, and says so.
    store.remove("liver")
    said.clear()
    store.install(entry, version, progress=said.append)
    assert any("must match" in step.text and pin.sha256[:12] in step.text for step in said if step.stage == "trust")

    # The publisher replaces the file: refused, nothing installed, the pin kept.
    store.remove("liver")
    server.add("/liver-v1.0.0.zip", REPLACED)
    with pytest.raises(ChecksumMismatchError, match="changed since its first download") as raised:
        store.install(entry, version)
    assert "forget-download" in str(raised.value)
    assert store.installed_versions("liver") == []
    assert store.trust.pinned(server.url("/liver-v1.0.0.zip")).sha256 == pin.sha256
    # The user accepts the new file on purpose.
    assert store.trust.forget(server.url("/liver-v1.0.0.zip"))
    store.install(entry, version)
    assert store.trust.pinned(server.url("/liver-v1.0.0.zip")).sha256 == hashlib.sha256(REPLACED).hexdigest()


def test_the_publishers_md5_is_checked_before_anything_is_pinned(server, tmp_path):
    server.add("/m.zip", FIRST)
    store = ModelStore(str(tmp_path / "cache"))
    entry, version = unverified_version(server.url("/m.zip"), md5=hashlib.md5(REPLACED).hexdigest())
    with pytest.raises(ChecksumMismatchError, match="MD5"):
        store.install(entry, version)
    assert store.trust.pins() == [] and store.installed_versions("liver") == []
    assert not [name for name in os.listdir(tmp_path / "cache" / "downloads") if not name.endswith(".lock")]

    entry, version = unverified_version(server.url("/m.zip"), md5=hashlib.md5(FIRST).hexdigest())
    said = []
    store.install(entry, version, progress=said.append)
    assert any("matches the publisher's MD5" in step.text for step in said if step.stage == "trust")
    assert store.trust.pinned(server.url("/m.zip")).sha256 == hashlib.sha256(FIRST).hexdigest()


def test_the_first_download_starts_afresh(server, tmp_path):
    """A .part left by an earlier first download is not joined to a new one: nothing tells the two apart."""
    server.add("/liver-v1.0.0.zip", FIRST)
    store = ModelStore(str(tmp_path / "cache"))
    entry, version = unverified_version(server.url("/liver-v1.0.0.zip"))
    downloads = tmp_path / "cache" / "downloads"
    downloads.mkdir(parents=True)
    key = hashlib.sha256(server.url("/liver-v1.0.0.zip").encode()).hexdigest()
    (downloads / f"unverified-{key}.part").write_bytes(REPLACED[:1000])
    store.install(entry, version)
    assert store.trust.pinned(server.url("/liver-v1.0.0.zip")).sha256 == hashlib.sha256(FIRST).hexdigest()
    assert not server.requests("/liver-v1.0.0.zip")[0].range_start


def test_import_of_an_unverified_file_pins_it_by_name(tmp_path):
    local = tmp_path / "offline" / "liver-v1.0.0.zip"
    local.parent.mkdir()
    local.write_bytes(FIRST)
    store = ModelStore(str(tmp_path / "cache"))
    entry, _ = unverified_version("https://github.com/org/models/releases/download/v1/liver-v1.0.0.zip")
    said = []
    installed = store.import_package(str(local.parent), [entry], progress=said.append)
    assert installed.version == "1.0.0"
    assert any("imported from" in step.text and NOT_VERIFIED in step.text for step in said)
    assert store.trust.pinned(entry.versions[0].files[0].url).sha256 == hashlib.sha256(FIRST).hexdigest()


def test_cards_and_the_command_line_say_not_verified_plainly(server, tmp_path, capsys):
    server.add("/liver-v1.0.0.zip", FIRST)
    index = {"schemaVersion": 1, "models": [{"id": "liver", "title": "Liver", "versions": [
        {"version": "1.0.0", "runtime": "auto3dseg", "files": [{"url": "liver-v1.0.0.zip"}]}]}]}
    server.add("/index.json", json.dumps(index).encode())
    (entry,) = parse_index(index, server.url("/index.json"))
    assert NOT_VERIFIED in card_text(entry) and NOT_VERIFIED in card_html(entry)
    assert "MONAI Auto3DSeg" in card_text(entry) and "size unknown" in card_text(entry)
    common = ["--index", server.url("/index.json"), "--cache-dir", str(tmp_path / "cache")]
    assert main([*common, "list"]) == 0
    assert NOT_VERIFIED in next(line for line in capsys.readouterr().out.splitlines() if line.startswith("liver"))
    assert main([*common, "install", "liver"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and NOT_VERIFIED in warnings[0]
    with open(tmp_path / "cache" / PINS_FILE, encoding="utf-8") as file:
        assert list(json.load(file)) == [server.url("/liver-v1.0.0.zip")]
    assert main([*common, "forget-download", server.url("/liver-v1.0.0.zip")]) == 0
    assert main([*common, "forget-download", server.url("/liver-v1.0.0.zip")]) == 1
    assert capsys.readouterr().err.startswith("error: No sha256 is pinned")


def test_an_unreadable_pins_file_is_an_error_not_a_fresh_start(tmp_path):
    (tmp_path / PINS_FILE).write_text("[1, 2", encoding="utf-8")
    with pytest.raises(Exception, match="remove it to trust every file anew"):
        TrustStore(str(tmp_path)).pins()

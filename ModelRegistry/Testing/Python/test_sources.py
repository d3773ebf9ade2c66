"""ModelRegistryLib.sources: merge order, offline use of cached copies, refresh, folder sources; on a real server."""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request

import pytest
from registry_test_server import RegistryTestServer

from ModelRegistryLib.index import MAX_INDEX_BYTES, file_url, local_path
from ModelRegistryLib.sources import IndexSource, cached_index_path, load_sources

TIMEOUT = 2.0


def version(number: str, url: str = "", data: bytes = b"weights") -> dict:
    url = url or f"https://example.org/{number}.zip"
    return {"version": number, "files": [{"url": url, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}]}


def model(model_id: str, title: str, *versions: dict) -> dict:
    return {"id": model_id, "title": title, "versions": list(versions)}


def index_bytes(*models: dict) -> bytes:
    return json.dumps({"schemaVersion": 1, "models": list(models)}).encode("utf-8")


def write(path, data: bytes) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as file:
        file.write(data)
    return str(path)


@pytest.fixture
def server():
    with RegistryTestServer() as running:
        yield running


def versions_of(models, model_id: str) -> list:
    return [v.version for v in next(m for m in models if m.id == model_id).versions]


def test_first_source_gives_the_card_and_later_ones_add_new_versions(tmp_path, server):
    bundled = write(tmp_path / "bundled.json", index_bytes(model("liver", "Bundled liver", version("1.0.0"))))
    lab = server.add("/lab/index.json", index_bytes(
        model("liver", "Lab liver", version("1.0.0", data=b"lab build"), version("1.1.0")),
        model("brain", "Lab brain", version("0.1.0")),
    ))
    write(tmp_path / "mine" / "index.json", index_bytes(model("brain", "My brain", version("0.2.0"), version("0.1.0"))))
    sources = [IndexSource(bundled), IndexSource(lab, "Lab"), IndexSource(str(tmp_path / "mine"))]

    models, statuses = load_sources(sources, str(tmp_path / "cache"), timeout=TIMEOUT)

    assert [(m.id, m.title) for m in models] == [("liver", "Bundled liver"), ("brain", "Lab brain")]
    assert versions_of(models, "liver") == ["1.0.0", "1.1.0"]
    # The lab's copy of 1.0.0 is ignored: the first source's files stay.
    assert models[0].versions[0].files[0].sha256 == hashlib.sha256(b"weights").hexdigest()
    assert versions_of(models, "brain") == ["0.1.0", "0.2.0"]
    assert [(s.source, s.ok, s.from_cache, s.error, s.model_count) for s in statuses] == [
        (sources[0], True, False, "", 1),
        (sources[1], True, False, "", 2),
        (sources[2], True, False, "", 1),
    ]
    assert statuses[1].fetched_at is not None and statuses[0].fetched_at is None

    models, _ = load_sources(sources[::-1], str(tmp_path / "cache"), timeout=TIMEOUT)
    assert [(m.id, m.title) for m in models] == [("brain", "My brain"), ("liver", "Lab liver")]
    assert versions_of(models, "liver") == ["1.0.0", "1.1.0"]


def test_a_failing_source_hides_no_other(tmp_path, server):
    broken = server.add("/broken.json", b"", status=404)
    good = write(tmp_path / "good.json", index_bytes(model("liver", "Liver", version("1.0.0"))))
    invalid = write(tmp_path / "invalid.json", b'{"schemaVersion": 1, "models": [{"id": "x"}]}')
    (tmp_path / "empty").mkdir()
    sources = [IndexSource(str(tmp_path / "missing")), IndexSource(broken), IndexSource(invalid),
               IndexSource(str(tmp_path / "empty")), IndexSource(good)]

    models, statuses = load_sources(sources, str(tmp_path / "cache"), timeout=TIMEOUT)

    assert [m.id for m in models] == ["liver"]
    assert [s.ok for s in statuses] == [False, False, False, False, True]
    missing = tmp_path / "missing"
    assert statuses[0].error == f"no index at {missing} (neither an index file nor a folder holding index.json)"
    assert "404" in statuses[1].error
    assert "models[0].title" in statuses[2].error
    assert statuses[3].error == f"no index.json in the folder {tmp_path / 'empty'}"


def test_the_cached_copy_lists_models_when_the_server_is_gone(tmp_path):
    cache = str(tmp_path / "cache")
    with RegistryTestServer() as server:
        url = server.add("/index.json", index_bytes(model("liver", "Liver", version("1.0.0"))))
        _, (fresh,) = load_sources([IndexSource(url)], cache, timeout=TIMEOUT)
    assert (fresh.ok, fresh.from_cache) == (True, False)

    models, (status,) = load_sources([IndexSource(url)], cache, timeout=TIMEOUT)

    assert [m.id for m in models] == ["liver"]
    assert (status.ok, status.from_cache, status.fetched_at, status.model_count) == (True, True, fresh.fetched_at, 1)
    assert status.error.startswith("could not refresh")


def test_without_refresh_the_cache_is_used_and_the_network_is_not(tmp_path, server):
    cache = str(tmp_path / "cache")
    url = server.add("/index.json", index_bytes(model("liver", "Liver", version("1.0.0"))))
    _, (unfetched,) = load_sources([IndexSource(url)], cache, refresh=False)
    assert (unfetched.ok, unfetched.model_count) == (False, 0)
    assert "not fetched yet" in unfetched.error
    assert server.requests() == []

    load_sources([IndexSource(url)], cache, timeout=TIMEOUT)
    server.add("/index.json", index_bytes(model("liver", "Liver", version("1.0.0"), version("2.0.0"))))
    models, (status,) = load_sources([IndexSource(url)], cache, refresh=False)

    assert len(server.requests()) == 1
    assert versions_of(models, "liver") == ["1.0.0"]
    assert (status.ok, status.from_cache, status.error) == (True, True, "")


def test_refresh_picks_up_a_new_version(tmp_path, server):
    cache = str(tmp_path / "cache")
    url = server.add("/index.json", index_bytes(model("liver", "Liver", version("1.0.0"))))
    models, _ = load_sources([IndexSource(url)], cache, timeout=TIMEOUT)
    assert models[0].latest.version == "1.0.0"

    server.add("/index.json", index_bytes(model("liver", "Liver", version("1.0.0"), version("1.1.0"))))
    models, (status,) = load_sources([IndexSource(url)], cache, timeout=TIMEOUT)

    assert models[0].latest.version == "1.1.0"
    assert status.from_cache is False
    # The new list is what is kept for offline use now.
    models, _ = load_sources([IndexSource(url)], cache, refresh=False)
    assert models[0].latest.version == "1.1.0"


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (index_bytes(model("liver", "Liver", {"version": "1.1"})), "models[0].versions[0].version"),
        (index_bytes(model("liver", "Liver", version("1.0.0")))[:-7], "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b" " * (MAX_INDEX_BYTES + 1), "limit"),
        # A web index may not make the client read local files (nor learn their size from a checksum error).
        (index_bytes(model("liver", "Liver", version("1.0.0", url="file:///etc/passwd"))),
         "models[0].versions[0].files[0].url: must be an http or https URL"),
        (index_bytes(model("liver", "Liver", version("1.0.0", url="w.zip"), {"version": "2.0.0", "image": {
            "name": "lab/liver", "digest": "sha256:" + 64 * "a",
            "archive": {"url": "file:///dev/zero", "sha256": 64 * "0", "size": 1}}})),
         "models[0].versions[1].image.archive.url: must be an http or https URL"),
        (index_bytes(model("liver", "Liver", version("1.0.0")) | {"inputs": [{"name": "T", "pattern": r"(\w+\s?)+$"}]}),
         "models[0].inputs[0].pattern: is not an allowed name pattern"),
    ],
)
def test_an_invalid_remote_document_keeps_the_good_cached_copy(tmp_path, server, bad, reason):
    cache = str(tmp_path / "cache")
    good = index_bytes(model("liver", "Liver", version("1.0.0")))
    url = server.add("/index.json", good)
    load_sources([IndexSource(url)], cache, timeout=TIMEOUT)
    with open(cached_index_path(cache, url), "rb") as file:
        kept = file.read()

    server.add("/index.json", bad)
    models, (status,) = load_sources([IndexSource(url)], cache, timeout=TIMEOUT)

    assert [m.id for m in models] == ["liver"]
    assert (status.ok, status.from_cache) == (True, True)
    assert reason in status.error
    with open(cached_index_path(cache, url), "rb") as file:
        assert file.read() == kept
    # Nothing but the kept copy in the cache folder: no temporary file left behind.
    kept_path = cached_index_path(cache, url)
    assert os.listdir(os.path.dirname(kept_path)) == [os.path.basename(kept_path)]


def test_an_unreadable_cached_copy_is_reported_not_raised(tmp_path, server):
    cache = str(tmp_path / "cache")
    url = server.add("/index.json", index_bytes(model("liver", "Liver", version("1.0.0"))))
    write(cached_index_path(cache, url), b'{"url": "somewhere else"')

    models, (status,) = load_sources([IndexSource(url)], cache, refresh=False)

    assert (models, status.ok) == ([], False)
    assert "cached copy is unreadable" in status.error
    # A refresh replaces it.
    models, (status,) = load_sources([IndexSource(url)], cache, timeout=TIMEOUT)
    assert ([m.id for m in models], status.ok, status.error) == (["liver"], True, "")


def test_folder_source_resolves_relative_archive_urls_to_file_urls(tmp_path):
    folder = tmp_path / "lab models"
    write(folder / "weights" / "liver-1.0.0.zip", b"weights")
    write(folder / "index.json", index_bytes(model("liver", "Liver", version("1.0.0", url="weights/liver-1.0.0.zip"))))

    for location in (str(folder), file_url(folder), str(folder / "index.json"), file_url(folder / "index.json")):
        models, (status,) = load_sources([IndexSource(location)], str(tmp_path / "cache"))
        (file,) = models[0].latest.files
        assert status.ok, status.error
        assert file.url == file_url(folder / "weights" / "liver-1.0.0.zip")
        assert file.name == "liver-1.0.0.zip"
        with urllib.request.urlopen(file.url) as opened:
            assert opened.read() == b"weights"
        assert local_path(file.url) == str(folder / "weights" / "liver-1.0.0.zip")


def test_remote_relative_urls_resolve_against_the_index_url_also_from_the_cache(tmp_path, server):
    cache = str(tmp_path / "cache")
    url = server.add("/lab/index.json", index_bytes(model("liver", "Liver", version("1.0.0", url="w/liver.zip"))))
    for refresh in (True, False):
        models, _ = load_sources([IndexSource(url)], cache, refresh=refresh, timeout=TIMEOUT)
        assert models[0].latest.files[0].url == server.url("/lab/w/liver.zip")

"""ModelRegistryLib.registry: sources + store, as DeepSegment and the panel use them."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from registry_test_server import RegistryTestServer

from ModelRegistryLib.errors import RegistryError
from ModelRegistryLib.registry import (
    INSTALLED,
    NOT_INSTALLED,
    UNKNOWN,
    UPDATE_AVAILABLE,
    Registry,
    Update,
    bundled_source,
    parse_model_spec,
    save_user_sources,
    user_sources,
)
from ModelRegistryLib.sources import IndexSource


def model(model_id: str, versions: dict, **card) -> dict:
    """An index entry whose versions map version -> (url, data)."""
    return {
        "id": model_id,
        "title": card.pop("title", model_id.title()),
        "versions": [
            {"version": number, "files": [{"url": url, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}]}
            for number, (url, data) in versions.items()
        ],
        **card,
    }


@pytest.fixture()
def served():
    """A server with one index of two models; returns (server, index dict, publish function)."""
    with RegistryTestServer() as server:
        server.add("/liver-1.0.0.bin", b"liver one")
        server.add("/brain-0.1.0.bin", b"brain")
        index = {
            "schemaVersion": 1,
            "models": [
                model("liver", {"1.0.0": ("liver-1.0.0.bin", b"liver one")}, modality="CT", task="segmentation",
                      anatomy=["liver"]),
                model("brain", {"0.1.0": ("brain-0.1.0.bin", b"brain")}, modality="MR", task="segmentation",
                      anatomy=["brain"]),
            ],
        }

        def publish():
            server.add("/index.json", json.dumps(index).encode())

        publish()
        yield server, index, publish


def test_search_filters_and_states(served, tmp_path):
    server, _, _ = served
    registry = Registry([IndexSource(server.url("/index.json"))], str(tmp_path))
    assert all(status.ok for status in registry.refresh())
    assert [m.id for m in registry.search(modality="mr")] == ["brain"]
    assert [m.id for m in registry.search("liver", task="segmentation", anatomy="LIVER")] == ["liver"]
    assert registry.state("liver") == NOT_INSTALLED
    registry.ensure_installed("liver")
    assert registry.state("liver") == INSTALLED
    assert [m.id for m in registry.search(installed=True)] == ["liver"]
    assert [m.id for m in registry.search(installed=False)] == ["brain"]
    assert registry.state("nothing") == UNKNOWN


def test_new_version_is_picked_up_by_refresh_and_pins_hold(served, tmp_path):
    server, index, publish = served
    registry = Registry([IndexSource(server.url("/index.json"))], str(tmp_path))
    registry.refresh()
    registry.ensure_installed("liver")
    server.add("/liver-1.1.0.bin", b"liver two")
    index["models"][0]["versions"].append(model("liver", {"1.1.0": ("liver-1.1.0.bin", b"liver two")})["versions"][0])
    publish()
    assert registry.state("liver") == INSTALLED  # not refreshed yet
    registry.refresh()
    assert registry.state("liver") == UPDATE_AVAILABLE
    assert registry.updates() == [Update("liver", "1.0.0", "1.1.0")]
    registry.pin("liver@1.0.0")
    assert registry.ensure_installed("liver").version == "1.0.0"
    assert registry.installed_model("liver").version == "1.0.0"
    registry.pin("liver")
    assert registry.ensure_installed("liver").version == "1.1.0"
    assert registry.installed_model("liver").version == "1.1.0"
    assert registry.installed_model("liver@1.0").version == "1.0.0"


def test_installed_models_work_offline(served, tmp_path):
    server, _, _ = served
    registry = Registry([IndexSource(server.url("/index.json"))], str(tmp_path))
    registry.refresh()
    path = registry.ensure_installed("brain").path
    server.stop()
    offline = Registry([IndexSource("http://127.0.0.1:9/unreachable.json")], str(tmp_path))
    statuses = offline.refresh(timeout=1)
    assert not statuses[0].ok
    assert offline.ensure_installed("brain").path == path
    with pytest.raises(RegistryError, match="none of the registry indexes"):
        offline.ensure_installed("liver")


def test_remove_and_verify_by_spec(served, tmp_path):
    server, _, _ = served
    registry = Registry([IndexSource(server.url("/index.json"))], str(tmp_path))
    registry.refresh()
    registry.ensure_installed("brain@0.1.0")
    assert [result.ok for result in registry.verify("brain")] == [True]
    assert registry.remove("brain@0.1.0") == ["0.1.0"]
    with pytest.raises(RegistryError, match="not installed"):
        registry.remove("brain")


def test_user_sources_round_trip(tmp_path):
    assert user_sources(str(tmp_path)) == []
    sources = [IndexSource("https://example.org/index.json", name="Lab"), IndexSource(str(tmp_path / "shared"))]
    save_user_sources(str(tmp_path), sources)
    assert user_sources(str(tmp_path)) == sources


def test_bundled_index_is_readable_offline(tmp_path):
    registry = Registry([bundled_source()], str(tmp_path))
    (status,) = registry.refresh(offline=True)
    assert status.ok, status.error


@pytest.mark.parametrize(("spec", "parsed"), [("a", ("a", None)), ("a@1.2.3", ("a", "1.2.3")), (" a@1 ", ("a", "1"))])
def test_model_spec(spec, parsed):
    assert parse_model_spec(spec) == parsed


def test_model_spec_needs_an_id():
    with pytest.raises(RegistryError):
        parse_model_spec("@1.0.0")


def test_sources_file_lives_in_the_cache(tmp_path):
    save_user_sources(str(tmp_path), [IndexSource("x")])
    assert os.path.isfile(tmp_path / "sources.json")


@pytest.mark.parametrize("spec", ["Liver", "liver@v2", "liver@1.2.3.4", "../liver", "liver@1.0.0@2", "liver@"])
def test_specs_that_can_name_no_version_are_refused_before_any_work(spec):
    if spec == "liver@":  # an empty version is no version
        assert parse_model_spec(spec) == ("liver", None)
        return
    with pytest.raises(RegistryError, match="is not a"):
        parse_model_spec(spec)


def test_pin_accepts_only_versions_listed_or_installed(served, tmp_path):
    server, _, _ = served
    registry = Registry([IndexSource(server.url("/index.json"))], str(tmp_path))
    registry.refresh()
    with pytest.raises(LookupError, match=r"no version matching '9\.9\.9'; available: 1\.0\.0"):
        registry.pin("liver@9.9.9")
    with pytest.raises(RegistryError, match="neither in the registry indexes nor installed"):
        registry.pin("kidney@1.0.0")
    assert registry.store.pins() == {}
    registry.pin("liver@1")  # a version spec: the highest 1.x
    assert registry.store.pins() == {"liver": "1"}


def test_a_pin_no_index_satisfies_is_named_in_the_error(served, tmp_path):
    server, _, _ = served
    (tmp_path / "pins.json").write_text('{"liver": "9.9.9"}')  # by hand, or before the version was withdrawn
    registry = Registry([IndexSource(server.url("/index.json"))], str(tmp_path))
    registry.refresh()
    with pytest.raises(RegistryError, match=r"liver is pinned to 9\.9\.9 in .*pins\.json: unpin it"):
        registry.ensure_installed("liver")
    assert registry.ensure_installed("liver@1.0.0").version == "1.0.0"  # an explicit version is not pinned
    offline = Registry([], str(tmp_path))
    with pytest.raises(RegistryError, match=r"pinned to 9\.9\.9"):
        offline.ensure_installed("liver")


@pytest.mark.parametrize("content", ['["liver"]', '{"liver": 1}', '{"liver": null}', "{not json", b"\xff\xfe"])
def test_pins_file_of_the_wrong_shape_is_one_clear_error_naming_it(tmp_path, content):
    path = tmp_path / "pins.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    registry = Registry([], str(tmp_path))
    with pytest.raises(RegistryError, match=r"pins\.json") as raised:
        registry.ensure_installed("liver")
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("content", ['{"location": "x"}', '[{"name": "x"}]', '[{"location": 5}]', '["x"]',
                                     '[{"location": "x", "name": 3}]', "[", b"\xff"])
def test_sources_file_of_the_wrong_shape_is_one_clear_error_naming_it(tmp_path, content):
    (tmp_path / "sources.json").write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(RegistryError, match=r"sources\.json") as raised:
        user_sources(str(tmp_path))
    assert "\n" not in str(raised.value)

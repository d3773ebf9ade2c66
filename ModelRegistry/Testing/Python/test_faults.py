"""Fault injection for the model registry: what survives a killed process, a full disk, a read-only cache.

Each test injects one fault into a real process installing (or removing) a model from a real server on
127.0.0.1, then checks the invariants the store promises: no version is half-installed (a folder under
``models/`` is complete and verifies, or absent), nothing outside the cache folder changed, and the next
ordinary call succeeds without fetching again what was already verified, leaving no leftovers.

- Kills: the child process sends itself SIGKILL at one point of the install (a function of the real code
  wrapped so that it dies on entry, or its progress callback): nothing can be cleaned up by the dying
  process, exactly as after a power cut of the process (not of the disk).
- Full disk: a file-size limit (``RLIMIT_FSIZE``, with SIGXFSZ ignored, as for a FAT32 stick's 4 GB limit:
  writes fail with EFBIG), and a real full file system: a small tmpfs in a private mount namespace
  (``unshare -rm``, no root needed where user namespaces are enabled) filled up while the download runs.
- Read-only cache: the cache bind-mounted read-only in a private mount namespace.

The README's table "Faults we test" lists these and the other fault tests of the registry.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import zipfile

import pytest
from registry_test_server import RegistryTestServer

from ModelRegistryLib.index import ModelEntry, ModelFile, ModelVersion
from ModelRegistryLib.store import ModelStore

MODULE_FOLDER = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WEIGHTS = os.urandom(600_000)


def package(*, compressible: bool = False) -> bytes:
    """A model archive: model.json, then weights/net.pt (random, or 2 MB of zeros compressed to a few kB)."""
    buffer = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compressible else zipfile.ZIP_STORED
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        archive.writestr("model.json", '{"inputs": ["image"]}')
        archive.writestr("weights/net.pt", bytes(2_000_000) if compressible else WEIGHTS)
    return buffer.getvalue()


PACKAGE = package()


@pytest.fixture()
def server():
    with RegistryTestServer() as running:
        yield running


def entry_for(url: str, data: bytes) -> tuple:
    version = ModelVersion("1.0.0", files=(ModelFile(url, hashlib.sha256(data).hexdigest(), len(data),
                                                     "demo-1.0.0.zip"),))
    return ModelEntry("demo", "Demo", (version,)), version


def tree(folder) -> dict:
    """``{relative path: sha256 or 'folder'}`` of everything under ``folder``."""
    found = {}
    for directory, folders, files in os.walk(folder):
        for name in folders:
            found[os.path.relpath(os.path.join(directory, name), folder)] = "folder"
        for name in files:
            with open(os.path.join(directory, name), "rb") as file:
                found[os.path.relpath(os.path.join(directory, name), folder)] = hashlib.sha256(file.read()).hexdigest()
    return found


@pytest.fixture()
def places(tmp_path):
    """``(cache folder, outside tree)``: a cache, and files beside it that no fault may change."""
    outside = tmp_path / "outside"
    (outside / "models" / "demo").mkdir(parents=True)
    (outside / "precious.txt").write_bytes(b"keep me")
    (outside / "models" / "demo" / "1.0.0").write_bytes(b"not a model")
    return str(tmp_path / "cache"), outside


def assert_store_consistent(cache: str) -> ModelStore:
    """No version is half-installed: each folder under models/ is a complete version that verifies."""
    store = ModelStore(cache)
    models = os.path.join(cache, "models")
    present = sorted(
        (model_id, version) for model_id in (os.listdir(models) if os.path.isdir(models) else [])
        for version in os.listdir(os.path.join(models, model_id))
    )
    assert present == [(m.model_id, m.version) for m in store.installed()]
    assert all(result.ok for result in store.verify()), [result.text for result in store.verify()]
    return store


def leftovers(cache: str) -> list:
    return [f"{folder}/{name}" for folder in ("staging", "downloads") if os.path.isdir(os.path.join(cache, folder))
            for name in os.listdir(os.path.join(cache, folder))]


# --- kill -9 at every stage -------------------------------------------------------------------------------

CHILD = """
import os, shutil, signal, sys
sys.path.insert(0, {module_folder!r})
import ModelRegistryLib.archive as archive, ModelRegistryLib.download as download, ModelRegistryLib.store as store
from ModelRegistryLib.index import ModelEntry, ModelFile, ModelVersion

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def die_before(owner, name, when=lambda *arguments, **options: True):
    original = getattr(owner, name)
    def wrapper(*arguments, **options):
        if when(*arguments, **options):
            die()
        return original(*arguments, **options)
    setattr(owner, name, wrapper)

def progress(step):
    pass

{injection}
version = ModelVersion("1.0.0", files=(ModelFile({url!r}, {sha256!r}, {size}, "demo-1.0.0.zip"),))
entry = ModelEntry("demo", "Demo", (version,))
cache = store.ModelStore({cache!r})
{action}
print("finished without being killed")
"""

INSTALL = "cache.install(entry, version, progress=progress)"
REMOVE = "cache.remove('demo')"

# (stage, code arranging the kill, action, whether the next install needs the network, bytes paced per second)
KILL_POINTS = [
    ("while downloading", "def progress(step):\n    if step.stage == 'download' and (step.fraction or 0) > 0.3:"
     "\n        die()", INSTALL, True, 1_500_000),
    ("after the download, before its sha256 is compared", "die_before(download, '_verify')", INSTALL, False, None),
    ("after the check, before the download is renamed", "die_before(download._PartFile, 'commit')", INSTALL, False,
     None),
    ("while unpacking, between two files",
     "die_before(archive, '_write_file', lambda reader, entry, path, *rest: path == 'weights/net.pt')", INSTALL,
     False, None),
    ("while writing the manifest, before its rename",
     "die_before(os, 'replace', lambda source, target: target.endswith(store.MANIFEST_NAME))", INSTALL, False,
     None),
    ("before the version's rename into models/",
     "die_before(os, 'rename', lambda source, target: os.sep + 'models' + os.sep in target)", INSTALL, False, None),
    ("after the rename, before the download is deleted", "die_before(store, '_remove_files')", INSTALL, False, None),
    ("while removing, after the rename out of models/",
     "die_before(shutil, 'rmtree', lambda path, *rest, **options: os.path.isdir(os.path.join(path, 'removed')))",
     REMOVE, False, None),
]


def run_child(script: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "win32", reason="SIGKILL is POSIX")
@pytest.mark.parametrize(("stage", "injection", "action", "refetch", "pace"), KILL_POINTS,
                         ids=[point[0] for point in KILL_POINTS])
def test_a_process_killed_at_any_stage_leaves_a_store_the_next_call_completes(server, places, stage, injection,
                                                                              action, refetch, pace):
    cache, outside = places
    before = tree(outside)
    url = server.add("/demo-1.0.0.zip", PACKAGE, bytes_per_second=pace)
    entry, version = entry_for(url, PACKAGE)
    if action == REMOVE:
        ModelStore(cache).install(entry, version)
    script = CHILD.format(module_folder=MODULE_FOLDER, injection=injection, url=url, sha256=version.files[0].sha256,
                          size=version.files[0].size, cache=cache, action=action)
    killed = run_child(script)
    assert killed.returncode == -9, (killed.stdout, killed.stderr)

    assert_store_consistent(cache)
    requests = len(server.requests())
    installed = ModelStore(cache).install(entry, version)
    assert installed.version == "1.0.0"
    store = assert_store_consistent(cache)
    assert [(m.model_id, m.version) for m in store.installed()] == [("demo", "1.0.0")]
    assert leftovers(cache) == []
    assert tree(outside) == before
    fetched = server.requests()[requests:]
    if refetch:  # the bytes kept in the .part are not fetched again
        assert len(fetched) == 1 and fetched[0].range_start > 0
        assert fetched[0].range_start + fetched[0].sent == len(PACKAGE)
    elif action == INSTALL:  # what was downloaded and verified is used as it is
        assert fetched == []


# --- full disks ---------------------------------------------------------------------------------------------

CLI_WITH_FILE_SIZE_LIMIT = """
import resource, signal, sys
sys.path.insert(0, {module_folder!r})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
from ModelRegistryLib.cli import main
sys.exit(main({arguments!r}))
"""


def serve_index(server, data: bytes, name: str = "demo-1.0.0.zip") -> str:
    index = {"schemaVersion": 1, "models": [{"id": "demo", "title": "Demo", "versions": [{"version": "1.0.0", "files": [
        {"url": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}]}]}]}
    server.add("/" + name, data)
    return server.add("/index.json", json.dumps(index).encode())


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
@pytest.mark.parametrize(("where", "compressible", "limit"), [
    ("the download", False, 200_000),  # the archive (600 kB) cannot be written
    ("the unpacking", True, 1_000_000),  # the archive (a few kB) can, its 2 MB member cannot
])
def test_a_file_size_limit_hit_in_the_middle_fails_in_one_line_and_the_next_install_completes(server, places, where,
                                                                                             compressible, limit):
    cache, outside = places
    before = tree(outside)
    data = package(compressible=compressible)
    index = serve_index(server, data)
    arguments = ["--index", index, "--cache-dir", cache, "install", "demo"]
    failed = run_child(CLI_WITH_FILE_SIZE_LIMIT.format(module_folder=MODULE_FOLDER, limit=limit, arguments=arguments))
    assert failed.returncode == 1
    last_line = failed.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: cannot write") and "File too large" in last_line, failed.stderr
    assert_store_consistent(cache)
    assert ModelStore(cache).installed() == []
    requests = len(server.requests("/demo-1.0.0.zip"))
    finished = run_child(CLI_WITH_FILE_SIZE_LIMIT.format(module_folder=MODULE_FOLDER, limit=10**9,
                                                         arguments=arguments))
    assert finished.returncode == 0, finished.stderr
    assert_store_consistent(cache)
    assert leftovers(cache) == [] and tree(outside) == before
    assert [m.version for m in ModelStore(cache).installed()] == ["1.0.0"]
    fetched = server.requests("/demo-1.0.0.zip")[requests:]
    if where == "the download":  # resumed where the limit stopped it
        assert [r.range_start for r in fetched] == [limit]
    else:  # the verified archive was kept
        assert fetched == []


def namespaces_work() -> bool:
    """Whether this machine lets an unprivileged process mount in a private user and mount namespace."""
    if not shutil.which("unshare") or sys.platform != "linux":
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


needs_namespaces = pytest.mark.skipif(not namespaces_work(), reason="needs unshare -rm (user and mount namespaces)")


def in_namespace(script: str) -> dict:
    """Run a shell script in a private user and mount namespace; ``{name: value}`` of its ``name=value`` lines."""
    finished = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, (finished.stdout, finished.stderr)
    return dict(line.split("=", 1) for line in finished.stdout.splitlines() if "=" in line)


REPORT = """
import json, os, sys
sys.path.insert(0, {module_folder!r})
from ModelRegistryLib.store import ModelStore
store = ModelStore({cache!r})
print("installed=" + json.dumps([m.version for m in store.installed()]))
print("folders=" + json.dumps(os.listdir(os.path.join(store.cache_dir, "models", "demo"))
                               if os.path.isdir(os.path.join(store.cache_dir, "models", "demo")) else []))
print("part=" + str(sum(os.path.getsize(os.path.join(store.cache_dir, "downloads", n))
                         for n in os.listdir(os.path.join(store.cache_dir, "downloads")))))
"""


@needs_namespaces
def test_a_disk_that_fills_up_during_the_download_fails_in_one_line_and_resumes_once_space_is_freed(server, places):
    cache, outside = places
    os.makedirs(cache)
    before = tree(outside)
    data = os.urandom(2_000_000)
    index = serve_index(server, data, "demo-1.0.0.pt")
    server.add("/demo-1.0.0.pt", data, bytes_per_second=1_000_000)
    cli = f"{shlex.quote(sys.executable)} -m ModelRegistryLib --index {shlex.quote(index)} " \
          f"--cache-dir {shlex.quote(cache)}"
    report = f"{shlex.quote(sys.executable)} -c {shlex.quote(REPORT.format(module_folder=MODULE_FOLDER, cache=cache))}"
    quoted = shlex.quote(cache)
    outcome = in_namespace(f"""
        cd {shlex.quote(MODULE_FOLDER)}
        mount -t tmpfs -o size=6m tmpfs {quoted}
        {cli} install demo 2> {quoted}/../first.err &
        installer=$!
        while [ -z "$(ls {quoted}/downloads 2>/dev/null)" ]; do sleep 0.02; done
        sleep 0.3
        dd if=/dev/zero of={quoted}/filler bs=64k 2>/dev/null
        wait $installer; echo first=$?
        echo "error=$(tail -n 1 {quoted}/../first.err)"
        {report}
        rm {quoted}/filler
        {cli} install demo > /dev/null 2>&1; echo second=$?
        {cli} verify demo > /dev/null 2>&1; echo verify=$?
        {report} | sed 's/^/after_/'
    """)
    assert outcome["first"] == "1"
    assert outcome["error"].startswith("error: disk full while writing") and "more needed" in outcome["error"]
    assert (outcome["installed"], outcome["folders"]) == ("[]", "[]")
    assert 0 < int(outcome["part"]) < len(data)  # what arrived before the disk was full is kept
    assert (outcome["second"], outcome["verify"]) == ("0", "0")
    assert (outcome["after_installed"], outcome["after_part"]) == ('["1.0.0"]', "0")
    resumed = server.requests("/demo-1.0.0.pt")[-1]
    assert resumed.range_start == int(outcome["part"])
    assert tree(outside) == before


@needs_namespaces
def test_a_read_only_cache_lists_and_verifies_and_refuses_changes_in_one_line(server, places):
    cache, outside = places
    index = serve_index(server, PACKAGE)
    entry, version = entry_for(server.url("/demo-1.0.0.zip"), PACKAGE)
    ModelStore(cache).install(entry, version)
    (outside / "copy.zip").write_bytes(PACKAGE)
    before = tree(cache)
    cli = f"{shlex.quote(sys.executable)} -m ModelRegistryLib --index {shlex.quote(index)} " \
          f"--cache-dir {shlex.quote(cache)}"
    quoted = shlex.quote(cache)
    commands = {"list": "list", "verify": "verify", "remove": "remove demo", "pin": "pin demo@1.0.0",
                "install": "install demo@1.0.0", "import": f"import {shlex.quote(str(outside / 'copy.zip'))}"}
    script = f"cd {shlex.quote(MODULE_FOLDER)}\nmount --bind {quoted} {quoted}\nmount -o remount,bind,ro {quoted}\n"
    for name, command in commands.items():
        script += f"{cli} {command} >/dev/null 2>{quoted}/../{name}.err; echo {name}=$?\n"
        errors = f"{quoted}/../{name}.err"
        script += f'echo "{name}_error=$(grep -c "^error: " {errors}) $(tail -n 1 {errors})"\n'
    outcome = in_namespace(script)
    assert (outcome["list"], outcome["verify"]) == ("0", "0")
    # Installed already: nothing to write, so it answers (as it does offline) without touching the cache.
    assert outcome["install"] == "0" and outcome["import"] == "0"
    for name in ("remove", "pin"):
        assert outcome[name] == "1"
        count, line = outcome[name + "_error"].split(" ", 1)
        assert count == "1" and "Read-only file system" in line, outcome
    assert tree(cache) == before


# --- hostile indexes through the command line ----------------------------------------------------------------


def test_a_web_index_pointing_at_local_files_installs_nothing_and_reads_nothing(server, places, capsys):
    cache, outside = places
    secret = outside / "precious.txt"
    index = {"schemaVersion": 1, "models": [
        {"id": "demo", "title": "Demo", "inputs": [{"name": "T1", "pattern": "t1"}], "versions": [
            {"version": "1.0.0", "files": [{"url": secret.as_uri(), "sha256": 64 * "0", "size": 7}]}]},
        {"id": "slow", "title": "Slow", "inputs": [{"name": "T1", "pattern": r"^(\w+\s?)+$"}], "versions": [
            {"version": "1.0.0", "files": [{"url": "slow.zip", "sha256": 64 * "0", "size": 7}]}]},
    ]}
    url = server.add("/index.json", json.dumps(index).encode())
    from ModelRegistryLib.cli import main

    code = main(["--index", url, "--cache-dir", cache, "install", "demo"])
    err = capsys.readouterr().err
    assert code == 1
    assert "models[0].versions[0].files[0].url: must be an http or https URL" in err
    assert err.strip().splitlines()[-1].startswith("error: Model 'demo' is in none of the registry indexes")
    assert not os.path.isdir(os.path.join(cache, "downloads"))

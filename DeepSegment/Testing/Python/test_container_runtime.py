"""DeepSegmentLib.container_runtime without a container: the command lines it builds, what it reads from
``<runtime> info``, and how it drives a runtime's command line, played here by small shell scripts that
answer as Docker or Podman would. No container is started here."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time

import pytest

from DeepSegmentLib.container_runtime import (
    OUTPUT_TAIL_LINES,
    RUNTIME_ENVIRONMENT_VARIABLE,
    SUPERVISOR_LABEL,
    ContainerCancelledError,
    ContainerError,
    ContainerRunError,
    ContainerRuntime,
    ContainerRuntimeNotFoundError,
    ContainerTimeoutError,
    _cdi_has_nvidia_gpus,
    find_runtime,
    new_container_name,
    runtime_capabilities,
)

IMAGE = "localhost/liver@sha256:" + "ab" * 32
CDI_GPU = ("--device", "nvidia.com/gpu=all")
PODMAN = ContainerRuntime("podman", "/usr/bin/podman", rootless=False, gpu_arguments=CDI_GPU)
DOCKER = ContainerRuntime("docker", "/usr/bin/docker", rootless=False, gpu_arguments=("--gpus", "all"))
RUNNING_AS_ROOT = os.getuid() == 0
PODMAN_INFO = {"host": {"security": {"rootless": True}}, "store": {}}
DOCKER_INFO = {"SecurityOptions": ["name=seccomp,profile=builtin", "name=rootless", "name=cgroupns"],
               "Runtimes": {"runc": {"path": "runc"}, "nvidia": {"path": "nvidia-container-runtime"}}}
NVIDIA_CDI_SPEC = "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n- name: all\n"

# A runtime's command line as far as these tests need it. Every call is logged to calls.log; 'run'
# plays the image named by its last argument and keeps its process id so that 'kill <name>' stops it.
FAKE_RUNTIME = r"""#!/bin/sh
here=$(dirname "$0")
echo "$*" >> "$here/calls.log"
for last; do :; done
case "$1" in
run)
    previous=""
    for argument; do
        if [ "$previous" = "--name" ]; then name=$argument; fi
        previous=$argument
    done
    echo $$ > "$here/$name.pid"
    case "$last" in
    exit-3) echo "PROGRESS: 0.5 inferring"; echo "warning on stderr" >&2; echo "Error: no liver found"; exit 3 ;;
    many) i=0; while [ $i -lt 100 ]; do echo "line $i"; i=$((i + 1)); done ;;
    hang) echo "started"; exec sleep 30 ;;
    esac ;;
kill)
    if [ -f "$here/$2.pid" ]; then kill "$(cat "$here/$2.pid")" 2>/dev/null; fi ;;
image)
    echo '[{"Id": "0123", "Digest": "sha256:4567", "RepoDigests": ["r/a@sha256:4567", "r/b@sha256:89ab"]}]' ;;
load)
    echo "Getting image source signatures"; echo "Loaded image: localhost/a:1, localhost/b@sha256:cd" ;;
pull)
    echo "Trying to pull $2..."; echo "Error: initializing source: connection refused"; exit 125 ;;
broken)
    echo "partial output"; echo "Error: something broke" >&2; echo "  " >&2; exit 125 ;;
esac
exit 0
"""


def write_script(path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


def option_values(arguments: list, option: str) -> list:
    """The values that follow each occurrence of ``option``."""
    return [arguments[number + 1] for number, argument in enumerate(arguments[:-1]) if argument == option]


@pytest.fixture
def fake_runtime(tmp_path):
    folder = tmp_path / "runtime"
    folder.mkdir()
    return ContainerRuntime("podman", write_script(folder / "podman", FAKE_RUNTIME))


def calls(runtime: ContainerRuntime) -> list:
    log = os.path.join(os.path.dirname(runtime.executable), "calls.log")
    with open(log, encoding="utf-8") as file:
        return file.read().splitlines()


def started_process_id(runtime: ContainerRuntime, name: str) -> int:
    with open(os.path.join(os.path.dirname(runtime.executable), name + ".pid"), encoding="utf-8") as file:
        return int(file.read())


def assert_process_gone(process_id: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(process_id, 0)


# run_arguments


def test_run_arguments_isolate_the_container(tmp_path):
    name = new_container_name()
    arguments = PODMAN.run_arguments(IMAGE, [(str(tmp_path / "input"), "/input", False),
                                             (str(tmp_path / "output"), "/output", True)], name=name)
    assert arguments[0] == "run"
    assert arguments[-1] == IMAGE
    assert arguments.count(IMAGE) == 1
    assert "--rm" in arguments
    assert "--read-only" in arguments
    assert option_values(arguments, "--name") == [name]
    assert option_values(arguments, "--network") == ["none"]
    assert option_values(arguments, "--cap-drop") == ["all"]
    assert option_values(arguments, "--security-opt") == ["no-new-privileges"]
    assert option_values(arguments, "--pull") == ["never"]
    assert option_values(arguments, "--label") == [f"{SUPERVISOR_LABEL}={socket.gethostname()}/{os.getpid()}"]
    assert option_values(arguments, "--volume") == [f"{tmp_path}/input:/input:ro,z", f"{tmp_path}/output:/output:rw,z"]
    for absent in ("--memory", "--env", "--device", "--gpus", "--privileged", "--network=host"):
        assert absent not in arguments
    user = arguments.index("--user")
    assert arguments[user:user + 2] == PODMAN.user_arguments()[-2:]


def test_run_arguments_make_mount_folders_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    arguments = DOCKER.run_arguments(IMAGE, [("run/input", "/input", False)], name="deepsegment-test")
    assert option_values(arguments, "--volume") == [f"{tmp_path}/run/input:/input:ro,z"]


@pytest.mark.parametrize("limit", ["512m", "8g", "8G", "1024", "64k", "100b"])
def test_run_arguments_memory_limit(limit):
    arguments = PODMAN.run_arguments(IMAGE, [], name="deepsegment-test", memory_limit=limit)
    assert option_values(arguments, "--memory") == [limit]
    assert arguments[-1] == IMAGE


@pytest.mark.parametrize("limit", ["8 GB", "-1", "0", "lots", "08g", "1.5g", "8gb", "8t", " 8g", "8g\n"], ids=repr)
def test_run_arguments_refuse_a_malformed_memory_limit(limit):
    with pytest.raises(ValueError, match=re.escape(f"(such as 8g), not {limit!r}")):
        PODMAN.run_arguments(IMAGE, [], name="deepsegment-test", memory_limit=limit)


@pytest.mark.parametrize("runtime", [PODMAN, DOCKER], ids=lambda runtime: runtime.name)
def test_run_arguments_pass_gpus_through(runtime):
    arguments = runtime.run_arguments(IMAGE, [], name="deepsegment-test", gpu=True)
    first = arguments.index(runtime.gpu_arguments[0])
    assert tuple(arguments[first:first + len(runtime.gpu_arguments)]) == runtime.gpu_arguments
    assert arguments[-1] == IMAGE


@pytest.mark.parametrize(("name", "explanation"), [
    ("docker", "install the NVIDIA Container Toolkit and restart Docker"),
    ("podman", "generate a CDI specification ('nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml')"),
])
def test_run_arguments_gpu_without_gpu_support_explains_what_to_install(name, explanation):
    runtime = ContainerRuntime(name, f"/usr/bin/{name}")
    with pytest.raises(ContainerError, match=re.escape(explanation)) as error:
        runtime.run_arguments(IMAGE, [], name="deepsegment-test", gpu=True)
    assert "NVIDIA Container Toolkit" in str(error.value)
    assert "run on the CPU" in str(error.value)


def test_run_arguments_environment():
    arguments = PODMAN.run_arguments(IMAGE, [], name="deepsegment-test",
                                     environment={"OMP_NUM_THREADS": "2", "OPTIONS": "a=b c"})
    assert option_values(arguments, "--env") == ["OMP_NUM_THREADS=2", "OPTIONS=a=b c"]
    assert arguments[-1] == IMAGE


# user_arguments


@pytest.mark.skipif(not RUNNING_AS_ROOT, reason="the root branch needs this process to be root")
@pytest.mark.parametrize("runtime", [PODMAN, DOCKER, ContainerRuntime("podman", "/usr/bin/podman", rootless=True)],
                         ids=["podman", "docker", "rootless podman"])
def test_root_runs_containers_as_nobody(runtime):
    assert runtime.user_arguments() == ["--user", "65534:65534"]


@pytest.mark.skipif(RUNNING_AS_ROOT, reason="the non-root branch needs this process not to be root")
@pytest.mark.parametrize("runtime", [PODMAN, DOCKER], ids=["podman", "docker"])
def test_a_user_runs_containers_as_themselves(runtime):
    assert runtime.user_arguments() == ["--user", f"{os.getuid()}:{os.getgid()}"]


@pytest.mark.skipif(RUNNING_AS_ROOT, reason="the non-root branch needs this process not to be root")
def test_rootless_podman_keeps_the_user_id():
    rootless = ContainerRuntime("podman", "/usr/bin/podman", rootless=True)
    assert rootless.user_arguments() == ["--userns", "keep-id", "--user", f"{os.getuid()}:{os.getgid()}"]


@pytest.mark.skipif(RUNNING_AS_ROOT, reason="the non-root branch needs this process not to be root")
def test_rootless_docker_runs_as_container_root_which_is_the_user():
    rootless = ContainerRuntime("docker", "/usr/bin/docker", rootless=True)
    assert option_values(rootless.user_arguments(), "--user") in ([], ["0:0"])


# runtime_capabilities and CDI specifications


@pytest.mark.parametrize(("info", "rootless"), [
    (PODMAN_INFO, True),
    ({"host": {"security": {"rootless": False}}, "store": {}}, False),
    ({"host": {}, "store": {}}, False),
    ({}, False),
])
def test_podman_capabilities(info, rootless):
    gpu = CDI_GPU if _cdi_has_nvidia_gpus() else ()
    assert runtime_capabilities("podman", info) == (rootless, gpu)


@pytest.mark.parametrize(("info", "expected"), [
    (DOCKER_INFO, (True, ("--gpus", "all"))),
    ({"SecurityOptions": ["name=seccomp,profile=builtin"], "Runtimes": {"runc": {}}}, (False, ())),
    ({"SecurityOptions": None, "Runtimes": None, "CDISpecDirs": None}, (False, ())),
    ({}, (False, ())),
    ({"SecurityOptions": ["name=rootless"], "Runtimes": {"io.containerd.runc.v2": {}}}, (True, ())),
    ({"Runtimes": {"nvidia": {}}}, (False, ("--gpus", "all"))),
])
def test_docker_capabilities(info, expected):
    assert runtime_capabilities("docker", info) == expected


def test_docker_gpus_from_its_cdi_specification_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "nvidia").mkdir()
    (tmp_path / "nvidia" / "nvidia.yaml").write_text(NVIDIA_CDI_SPEC)
    info = {"Runtimes": {"runc": {}}, "CDISpecDirs": [str(tmp_path / "empty"), str(tmp_path / "missing")]}
    assert runtime_capabilities("docker", info) == (False, ())
    info["CDISpecDirs"].append(str(tmp_path / "nvidia"))
    assert runtime_capabilities("docker", info) == (False, ("--gpus", "all"))


@pytest.mark.parametrize(("files", "found"), [
    ({"nvidia.yaml": NVIDIA_CDI_SPEC}, True),
    ({"nvidia.json": json.dumps({"cdiVersion": "0.5.0", "kind": "nvidia.com/gpu", "devices": []})}, True),
    ({"nvidia.yml": NVIDIA_CDI_SPEC, "nvidia.txt": NVIDIA_CDI_SPEC}, False),
    ({"amd.yaml": "cdiVersion: 0.5.0\nkind: amd.com/gpu\n", "vendor.json": '{"kind": "vendor.com/device"}'}, False),
    ({"binary.yaml": b"\xff\xfe kind: nvidia.com/gpu \xff"}, True),
    ({}, False),
], ids=["yaml", "json", "other extensions", "other vendors", "undecodable bytes", "empty"])
def test_cdi_specifications(tmp_path, files, found):
    for name, content in files.items():
        path = tmp_path / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    assert _cdi_has_nvidia_gpus([str(tmp_path)]) is found


def test_cdi_unreadable_entries_are_skipped(tmp_path):
    unreadable, readable = tmp_path / "unreadable", tmp_path / "readable"
    unreadable.mkdir()
    (unreadable / "folder.yaml").mkdir()
    (unreadable / "dangling.json").symlink_to(tmp_path / "nowhere.json")
    assert _cdi_has_nvidia_gpus([str(unreadable), str(tmp_path / "missing")]) is False
    readable.mkdir()
    (readable / "nvidia.yaml").write_text(NVIDIA_CDI_SPEC)
    assert _cdi_has_nvidia_gpus([str(unreadable), str(readable)]) is True


# find_runtime, with PATH holding only what each test puts there


@pytest.fixture
def path_folder(tmp_path, monkeypatch):
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", str(folder))
    monkeypatch.delenv(RUNTIME_ENVIRONMENT_VARIABLE, raising=False)
    return folder


def install(folder, name: str, info: dict | None = None, error: str = "") -> str:
    """An executable ``name`` whose 'info --format json' prints ``info`` or fails with ``error``."""
    if info is None:
        body = f"echo '{error}' >&2\nexit 1\n"
    else:
        body = f"echo \"$*\" > '{folder}/{name}.args'\necho '{json.dumps(info)}'\n"
    return write_script(folder / name, "#!/bin/sh\n" + body)


def test_no_runtime_on_path(path_folder):
    with pytest.raises(ContainerRuntimeNotFoundError) as error:
        find_runtime()
    message = str(error.value)
    assert message.splitlines()[:3] == [
        "No usable container runtime.", "  - podman: not found on PATH", "  - docker: not found on PATH"]
    assert "Install Podman (https://podman.io) or Docker" in message
    assert "in-process" in message


def test_a_runtime_that_is_installed_but_not_usable(path_folder):
    install(path_folder, "docker", error="Cannot connect to the Docker daemon at unix:///var/run/docker.sock.")
    with pytest.raises(ContainerRuntimeNotFoundError) as error:
        find_runtime()
    assert str(error.value).splitlines()[1:3] == [
        "  - podman: not found on PATH",
        "  - docker: installed but not usable (Cannot connect to the Docker daemon at unix:///var/run/docker.sock.)",
    ]


def test_podman_found(path_folder):
    executable = install(path_folder, "podman", PODMAN_INFO)
    gpu = CDI_GPU if _cdi_has_nvidia_gpus() else ()
    assert find_runtime() == ContainerRuntime("podman", executable, rootless=True, gpu_arguments=gpu)
    assert (path_folder / "podman.args").read_text() == "info --format json\n"


def test_docker_found(path_folder):
    executable = install(path_folder, "docker", DOCKER_INFO)
    assert find_runtime() == ContainerRuntime("docker", executable, rootless=True, gpu_arguments=("--gpus", "all"))


def test_a_docker_command_that_is_podman_is_podman(path_folder):
    executable = install(path_folder, "docker", PODMAN_INFO)
    runtime = find_runtime()
    assert (runtime.name, runtime.executable, runtime.rootless) == ("podman", executable, True)


def test_podman_is_preferred_then_docker_when_podman_is_not_usable(path_folder):
    install(path_folder, "docker", DOCKER_INFO)
    install(path_folder, "podman", PODMAN_INFO)
    assert find_runtime().name == "podman"
    install(path_folder, "podman", error="Error: cannot set up namespace using newuidmap")
    assert find_runtime().name == "docker"


def test_preference_by_name_by_path_and_by_environment(path_folder, monkeypatch):
    docker = install(path_folder, "docker", DOCKER_INFO)
    podman = install(path_folder, "podman", PODMAN_INFO)
    assert find_runtime("docker").executable == docker
    assert find_runtime(docker).executable == docker
    monkeypatch.setenv(RUNTIME_ENVIRONMENT_VARIABLE, "docker")
    assert find_runtime().executable == docker
    assert find_runtime("auto").executable == docker
    assert find_runtime("podman").executable == podman  # an explicit preference wins over the variable
    monkeypatch.setenv(RUNTIME_ENVIRONMENT_VARIABLE, "")
    assert find_runtime().executable == podman


def test_a_preferred_runtime_is_the_only_candidate(path_folder):
    install(path_folder, "podman", PODMAN_INFO)
    with pytest.raises(ContainerRuntimeNotFoundError) as error:
        find_runtime("docker")
    assert [line for line in str(error.value).splitlines() if line.startswith("  - ")] == [
        "  - docker: not found on PATH"]


# ContainerRuntime.run against the fake runtime


def test_run_returns_the_exit_code_and_every_line(fake_runtime):
    name = new_container_name()
    lines = []
    exit_code, tail = fake_runtime.run(fake_runtime.run_arguments("exit-3", [], name=name), name=name,
                                       on_line=lines.append, timeout=10)
    expected = ["PROGRESS: 0.5 inferring", "warning on stderr", "Error: no liver found"]
    assert (exit_code, tail, lines) == (3, "\n".join(expected), expected)
    assert f"rm --force {name}" in calls(fake_runtime)  # nothing left behind, even a late container


def test_run_keeps_the_last_lines(fake_runtime):
    name = new_container_name()
    lines = []
    exit_code, tail = fake_runtime.run(["run", "--name", name, "many"], name=name, on_line=lines.append)
    assert exit_code == 0
    assert lines == [f"line {number}" for number in range(100)]
    assert tail.splitlines() == lines[-OUTPUT_TAIL_LINES:]


def test_cancel_stops_and_removes_the_container(fake_runtime):
    name = new_container_name()
    cancel = threading.Event()
    lines = []
    timer = threading.Timer(0.3, cancel.set)
    timer.start()
    start = time.monotonic()
    with pytest.raises(ContainerCancelledError):
        fake_runtime.run(["run", "--name", name, "hang"], name=name, on_line=lines.append, cancel=cancel, timeout=20)
    assert time.monotonic() - start < 3
    assert lines == ["started"]
    assert {f"kill {name}", f"rm --force {name}"} <= set(calls(fake_runtime))
    assert_process_gone(started_process_id(fake_runtime, name))


def test_timeout_stops_and_removes_the_container(fake_runtime):
    name = new_container_name()
    start = time.monotonic()
    with pytest.raises(ContainerTimeoutError, match="ran longer than"):
        fake_runtime.run(["run", "--name", name, "hang"], name=name, timeout=0.5)
    assert 0.5 <= time.monotonic() - start < 3
    assert {f"kill {name}", f"rm --force {name}"} <= set(calls(fake_runtime))
    assert_process_gone(started_process_id(fake_runtime, name))


def test_a_failing_line_handler_still_stops_the_container(fake_runtime):
    name = new_container_name()

    def fail(line: str) -> None:
        raise RuntimeError(f"panel broke on {line!r}")

    with pytest.raises(RuntimeError, match="panel broke on 'started'"):
        fake_runtime.run(["run", "--name", name, "hang"], name=name, on_line=fail, timeout=20)
    assert f"kill {name}" in calls(fake_runtime)
    assert_process_gone(started_process_id(fake_runtime, name))


def test_cancelled_is_not_a_container_error():
    # Callers report ContainerErrors to the user; a cancel is the user's own doing.
    assert not issubclass(ContainerCancelledError, ContainerError)
    assert issubclass(ContainerRunError, ContainerError)


# The other runtime commands against the fake runtime


def test_call_failure_says_which_command_and_why(fake_runtime):
    assert fake_runtime.call(["rm", "--force", "x"]) == ""
    with pytest.raises(ContainerError, match=r"^'podman broken now' failed: Error: something broke$"):
        fake_runtime.call(["broken", "now", "--flag"])


def test_image_identities(fake_runtime):
    assert fake_runtime.image_identities("r/a@sha256:4567") == {"sha256:0123", "sha256:4567", "sha256:89ab"}


def test_load_returns_the_images_the_archive_named(fake_runtime):
    lines = []
    assert fake_runtime.load("/archives/liver.tar", log=lines.append) == ["localhost/a:1", "localhost/b@sha256:cd"]
    assert lines == ["Getting image source signatures", "Loaded image: localhost/a:1, localhost/b@sha256:cd"]
    assert "load --input /archives/liver.tar" in calls(fake_runtime)


def test_pull_failure_shows_the_runtime_s_last_line(fake_runtime):
    with pytest.raises(ContainerError, match=r"^Pulling r/a@sha256:4567 failed: Error: initializing source"):
        fake_runtime.pull("r/a@sha256:4567")


def test_new_container_names_are_unique_and_valid():
    names = {new_container_name() for _ in range(1000)}
    assert len(names) == 1000
    for name in names:
        assert re.fullmatch(r"deepsegment-[0-9a-f]{16}", name)

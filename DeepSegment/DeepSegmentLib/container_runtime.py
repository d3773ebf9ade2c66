"""Docker or Podman, driven through their command lines: finding a usable one, getting an image by
digest (pull, or load from an archive for offline sites), and running a container safely with
progress, cancel and a timeout.

Every container runs with no network, no capabilities, a read-only root file system, a non-root user
where the runtime allows it and only the mounts it is given; it is removed when it ends, is
cancelled or times out. It is labelled with the process that supervises it (:data:`SUPERVISOR_LABEL`): if
that process is killed, the container runs on, and :meth:`ContainerRuntime.remove_orphan_containers` removes
it later.

Example (needs a container runtime; nothing is run when none is usable)::

    >>> try:
    ...     runtime = find_runtime()
    ... except ContainerRuntimeNotFoundError:  # the message says what each candidate lacked
    ...     runtime = None
    >>> runtime is None or runtime.name in ("docker", "podman")
    True
"""

from __future__ import annotations

import glob
import json
import os
import queue
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ModelRegistryLib.jobs import process_exists

RUNTIMES = ("podman", "docker")
RUNTIME_ENVIRONMENT_VARIABLE = "SLICER_DEEPLEARNING_CONTAINER_RUNTIME"
CDI_SPEC_FOLDERS = ("/etc/cdi", "/var/run/cdi")
# The user a container runs as when this process is root: files it writes stay unprivileged.
UNPRIVILEGED_USER = (65534, 65534)
OUTPUT_TAIL_LINES = 40
_MEMORY_LIMIT = re.compile(r"[1-9][0-9]*[bkmg]?", re.IGNORECASE)
_CONTAINER_PREFIX = "deepsegment-"
# Label of every container started here: "<host name>/<process id>" of the process that waits on it.
SUPERVISOR_LABEL = "org.slicer.deeplearning.supervisor"


class ContainerError(RuntimeError):
    """A container runtime or a container failed; the message says what happened and what to do."""


class ContainerRuntimeNotFoundError(ContainerError):
    """Neither Docker nor Podman is installed and usable."""


class ContainerRunError(ContainerError):
    """The container ended with an error; ``exit_code`` and the last lines it printed are kept."""

    def __init__(self, message: str, exit_code: int | None = None, output: str = "") -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.output = output


class ContainerTimeoutError(ContainerError):
    """The container ran longer than allowed and was removed."""


class ContainerCancelledError(Exception):
    """The run was cancelled; the container was removed."""


@dataclass(frozen=True)
class LocalImage:
    """An image in a runtime's store: its ``id`` (the digest of its configuration) and its manifest
    ``digests``, its own first."""

    id: str
    digests: tuple = ()


@dataclass(frozen=True)
class ContainerRuntime:
    """A usable runtime: its ``name`` (docker or podman), ``executable``, whether it runs rootless,
    and the arguments that pass GPUs through (empty when it has no GPU support)."""

    name: str
    executable: str
    rootless: bool = False
    gpu_arguments: tuple = ()

    def call(self, arguments: Sequence[str], timeout: float = 120.0) -> str:
        """Run a runtime command and return its standard output; a failure raises ContainerError."""
        command = [self.executable, *arguments]
        try:
            completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as error:
            raise ContainerError(f"'{self.name} {arguments[0]}' did not answer within {timeout:.0f} s") from error
        if completed.returncode != 0:
            raise ContainerError(f"'{self.name} {' '.join(arguments[:2])}' failed: {_last_line(completed.stderr)}")
        return completed.stdout

    def local_image(self, reference: str) -> LocalImage | None:
        """The local image ``reference`` names, or None when there is none."""
        try:
            output = self.call(["image", "inspect", reference], timeout=60)
        except ContainerError:
            return None
        images = json.loads(output or "[]")
        if not images:
            return None
        image = images[0]
        digests = [image["Digest"]] if image.get("Digest") else []
        digests += [digest.rsplit("@", 1)[-1] for digest in image.get("RepoDigests") or ()]
        return LocalImage(id=_with_algorithm(image.get("Id", "")), digests=tuple(dict.fromkeys(digests)))

    def image_identities(self, reference: str) -> set:
        """Every digest naming a local image (its ID, manifest digests), or an empty set when absent."""
        image = self.local_image(reference)
        return {image.id, *image.digests} - {""} if image is not None else set()

    def pull(self, reference: str, log: Callable[[str], None] | None = None,
             cancel: threading.Event | None = None) -> None:
        """Download ``reference`` (name@sha256:...) from its registry, logging the runtime's progress lines."""
        self._stream(["pull", reference], log, cancel, f"Pulling {reference}")

    def load(self, archive: str, log: Callable[[str], None] | None = None,
             cancel: threading.Event | None = None) -> list:
        """Load an image archive (``docker save`` / ``podman save``); returns the images it named."""
        lines = self._stream(["load", "--input", archive], log, cancel, f"Loading {archive}")
        loaded = []
        for line in lines:
            if line.startswith("Loaded image"):
                loaded.extend(part.strip() for part in line.split(":", 1)[1].split(","))
        return loaded

    def remove_container(self, name: str) -> None:
        """Kill and remove the container ``name`` if it exists (no error when it is already gone)."""
        for arguments in (["kill", name], ["rm", "--force", name]):
            subprocess.run([self.executable, *arguments], capture_output=True, timeout=60)

    def remove_orphan_containers(self) -> list:
        """Remove the containers started here whose supervising process, on this computer, is gone; returns
        their names.

        A container outlives the runtime's client when the process waiting on it is killed (a worker process
        stopped by force or crashed): the next container run of a worker removes it. Containers of live
        processes, and those supervised from another computer (a shared Docker engine), stay.
        """
        try:
            found = self.call(["ps", "--all", "--quiet", "--filter", f"label={SUPERVISOR_LABEL}"], timeout=60).split()
            containers = json.loads(self.call(["container", "inspect", *found], timeout=60)) if found else []
        except (ContainerError, ValueError):  # one went away meanwhile: the next run looks again
            return []
        removed = []
        for container in containers:
            labels = (container.get("Config") or {}).get("Labels") or {}
            host, _, pid = labels.get(SUPERVISOR_LABEL, "").rpartition("/")
            if host == socket.gethostname() and pid.isdigit() and not process_exists(int(pid)):
                name = container.get("Name", "").lstrip("/")  # Docker's names start with /
                self.remove_container(name)
                removed.append(name)
        return removed

    def remove_image(self, reference: str) -> None:
        """Remove an image and all its tags if it exists (no error when it is already gone)."""
        subprocess.run([self.executable, "rmi", "--force", reference], capture_output=True, timeout=120)

    def _stream(self, arguments: list, log, cancel, doing: str) -> list:
        process = subprocess.Popen([self.executable, *arguments], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, errors="replace")
        lines = []
        for line in _lines_until_exit(process, cancel, None):
            lines.append(line)
            if log is not None:
                log(line)
        if cancel is not None and cancel.is_set():
            raise ContainerCancelledError(f"{doing}: cancelled")
        if process.returncode != 0:
            raise ContainerError(f"{doing} failed: {lines[-1] if lines else f'exit code {process.returncode}'}")
        return lines

    def run_arguments(self, image: str, mounts: Sequence[tuple], *, name: str, gpu: bool = False,
                      memory_limit: str | None = None, environment: dict | None = None) -> list:
        """The ``run`` command line: ``mounts`` are (host folder, container folder, writable) triples."""
        arguments = [
            "run", "--rm", "--name", name, "--pull", "never",
            "--network", "none", "--read-only", "--tmpfs", "/tmp",
            "--cap-drop", "all", "--security-opt", "no-new-privileges",
            "--label", f"{SUPERVISOR_LABEL}={socket.gethostname()}/{os.getpid()}",
        ]
        for host_folder, container_folder, writable in mounts:
            # z: on SELinux hosts the container may only read folders labelled for it; ignored elsewhere.
            mode = "rw" if writable else "ro"
            arguments += ["--volume", f"{os.path.abspath(host_folder)}:{container_folder}:{mode},z"]
        arguments += self.user_arguments()
        if memory_limit:
            if not _MEMORY_LIMIT.fullmatch(memory_limit):
                raise ValueError(f"Memory limit must be a number of bytes with an optional unit k, m or g "
                                 f"(such as 8g), not {memory_limit!r}")
            arguments += ["--memory", memory_limit]
        if gpu:
            if not self.gpu_arguments:
                raise ContainerError(_no_gpu_help(self.name))
            arguments += list(self.gpu_arguments)
        for key, value in (environment or {}).items():
            arguments += ["--env", f"{key}={value}"]
        return [*arguments, image]

    def user_arguments(self) -> list:
        """Run as this user (so output files are theirs), or as nobody when this process is root."""
        if not hasattr(os, "getuid") or (self.name == "docker" and self.rootless and os.getuid() != 0):
            # Docker Desktop on Windows maps file ownership itself; rootless Docker maps the container's
            # root to this user, and any other container user to a subordinate id that cannot write here.
            return []
        if os.getuid() == 0:
            return ["--user", "{}:{}".format(*UNPRIVILEGED_USER)]
        arguments = ["--user", f"{os.getuid()}:{os.getgid()}"]
        if self.name == "podman" and self.rootless:
            arguments = ["--userns", "keep-id", *arguments]
        return arguments

    def run(self, arguments: Sequence[str], *, name: str, on_line: Callable[[str], None] | None = None,
            cancel: threading.Event | None = None, timeout: float | None = None) -> tuple:
        """Run a container (``arguments`` from ``run_arguments``) to its end: (exit code, last output lines).

        On cancel or timeout the container is killed and removed before this returns or raises.
        """
        tail = deque(maxlen=OUTPUT_TAIL_LINES)
        deadline = None if timeout is None else time.monotonic() + timeout
        process = subprocess.Popen([self.executable, *arguments], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, errors="replace")
        try:
            for line in _lines_until_exit(process, cancel, deadline):
                tail.append(line)
                if on_line is not None:
                    on_line(line)
        finally:
            stopped = process.poll() is None
            if stopped:
                self._stop(process, name)
            else:
                # The client is gone but a container created at the very last moment may remain.
                self.remove_container(name)
        if stopped:
            if cancel is not None and cancel.is_set():
                raise ContainerCancelledError("Cancelled: the container was stopped and removed")
            raise ContainerTimeoutError(f"The container ran longer than {timeout:g} s and was stopped and removed")
        return process.returncode, "\n".join(tail)

    def _stop(self, process: subprocess.Popen, name: str) -> None:
        """Remove the container until its client exits: the container may appear after a first removal."""
        for _ in range(60):
            self.remove_container(name)
            try:
                process.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            process.kill()
            process.wait()
        self.remove_container(name)


def new_container_name() -> str:
    """A unique container name, so a run can be stopped and checked by name."""
    return _CONTAINER_PREFIX + uuid.uuid4().hex[:16]


def _lines_until_exit(process: subprocess.Popen, cancel: threading.Event | None, deadline: float | None):
    """Yield the process's output lines as they come; stop early when cancelled or past ``deadline``."""
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in process.stdout:
            lines.put(line.rstrip("\r\n"))
        lines.put(None)

    reader = threading.Thread(target=read, name="container output", daemon=True)
    reader.start()
    while True:
        if (cancel is not None and cancel.is_set()) or (deadline is not None and time.monotonic() > deadline):
            return
        try:
            line = lines.get(timeout=0.1)
        except queue.Empty:
            continue
        if line is None:
            process.wait()
            reader.join()
            return
        yield line


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def _with_algorithm(image_id: str) -> str:
    return image_id if not image_id or image_id.startswith("sha256:") else "sha256:" + image_id


def _no_gpu_help(name: str) -> str:
    if name == "docker":
        return ("Docker has no GPU support here: install the NVIDIA Container Toolkit and restart Docker, "
                "or run on the CPU.")
    return ("Podman has no GPU device here: install the NVIDIA Container Toolkit and generate a CDI "
            "specification ('nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml'), or run on the CPU.")


def _cdi_has_nvidia_gpus(folders: Sequence[str] = CDI_SPEC_FOLDERS) -> bool:
    for folder in folders:
        for path in glob.glob(os.path.join(folder, "*.yaml")) + glob.glob(os.path.join(folder, "*.json")):
            try:
                with open(path, encoding="utf-8", errors="replace") as file:
                    if "nvidia.com/gpu" in file.read():
                        return True
            except OSError:
                continue
    return False


def runtime_capabilities(name: str, info: dict) -> tuple:
    """(rootless, GPU arguments) from what ``<runtime> info --format json`` says."""
    if name == "podman":
        rootless = bool(info.get("host", {}).get("security", {}).get("rootless"))
        gpu = ("--device", "nvidia.com/gpu=all") if _cdi_has_nvidia_gpus() else ()
    else:
        rootless = any("rootless" in option for option in info.get("SecurityOptions") or ())
        has_nvidia = "nvidia" in (info.get("Runtimes") or {}) or _cdi_has_nvidia_gpus(info.get("CDISpecDirs") or ())
        gpu = ("--gpus", "all") if has_nvidia else ()
    return rootless, gpu


def find_runtime(preference: str = "auto") -> ContainerRuntime:
    """The first usable runtime: ``preference`` (a name or a path), else $SLICER_DEEPLEARNING_CONTAINER_RUNTIME,
    else Podman, then Docker. Raises ContainerRuntimeNotFoundError saying what each candidate lacked."""
    if preference in ("", "auto"):
        preference = os.environ.get(RUNTIME_ENVIRONMENT_VARIABLE, "auto") or "auto"
    candidates = RUNTIMES if preference == "auto" else (preference,)
    problems = []
    for candidate in candidates:
        executable = shutil.which(candidate)
        if executable is None:
            problems.append(f"{candidate}: not found on PATH")
            continue
        try:
            probe = subprocess.run([executable, "info", "--format", "json"], capture_output=True, text=True,
                                   timeout=60)
        except (OSError, subprocess.TimeoutExpired) as error:
            problems.append(f"{candidate}: {error}")
            continue
        if probe.returncode != 0:
            problems.append(f"{candidate}: installed but not usable ({_last_line(probe.stderr)})")
            continue
        try:
            info = json.loads(probe.stdout)
        except ValueError:
            info = {}
        # A 'docker' command may be Podman's compatibility wrapper; its answer tells which it is.
        name = "podman" if "host" in info and "store" in info else "docker"
        rootless, gpu_arguments = runtime_capabilities(name, info)
        return ContainerRuntime(name, executable, rootless, gpu_arguments)
    raise ContainerRuntimeNotFoundError(
        "No usable container runtime.\n" + "\n".join(f"  - {problem}" for problem in problems)
        + "\nInstall Podman (https://podman.io) or Docker and make sure '<runtime> info' works for this user, "
        "or run the model in-process."
    )

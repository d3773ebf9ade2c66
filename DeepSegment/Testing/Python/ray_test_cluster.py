"""A real Ray cluster on this machine for tests: a head node and worker nodes started with ``ray start``.

Each node is ``ray start --block`` in a session of its own (``start_new_session``), so that every process of a node
(its raylet, agents and Ray worker processes, which Ray puts in process groups of their own) shares that session
id: :meth:`LocalRayCluster.kill_node` SIGKILLs exactly one node's processes, as a machine failing would, and
:meth:`LocalRayCluster.stop` SIGKILLs every process of the cluster's sessions, found by session id in ``/proc``.
Nothing else on the machine is touched: never ``ray stop``, which stops every Ray on the machine, another test's or
user's included.

Addresses: Ray replaces 127.0.0.1 by the machine's network address (``resolve_ip_for_localhost``), so the nodes
use other loopback addresses, still reachable from this machine only: the head 127.0.0.2, worker node k
127.0.0.(3 + k); a node address of its own also keeps the test's driver attached to the head's raylet, never to a
worker node a test kills. Ports: the head's GCS port, its dashboard port and each node's dashboard agent port are
free ports picked here (Ray's defaults, 6379, 8265 and 52365, would collide with another cluster on the machine);
the others are left to Ray's random choice (``--min-worker-port 0 --max-worker-port 0``). Ray's own gRPC servers
listen on every interface, as Ray makes them; nothing outside this machine can reach it here anyway.

Temporary files: each node has its own ``--temp-dir`` (sessions, logs, sockets) under the cluster's folder, and
``TMPDIR`` points there too (where a task unpacks its model), so removing that folder removes everything; nothing is
written to /tmp/ray. Health checks are frequent (every 0.5 s, 3 misses) so that a killed node is declared dead
within seconds rather than Ray's half a minute.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

HEAD_ADDRESS = "127.0.0.2"
OBJECT_STORE_BYTES = 80 * 1024 * 1024  # Ray's minimum is 75 MiB
START_TIMEOUT_SECONDS = 120.0
FAST_HEALTH_CHECKS = {"RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "500",
                      "RAY_health_check_failure_threshold": "3", "RAY_health_check_initial_delay_ms": "500"}


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def session_processes(session: int) -> list:
    """Ids of the processes of a session (``/proc``)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                if os.getsid(int(name)) == session:
                    found.append(int(name))
    return found


def kill_session(session: int) -> None:
    for pid in session_processes(session):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


class LocalRayCluster:
    """A head node and ``workers`` worker nodes of ``cpus`` CPUs each, with their files under ``folder``."""

    def __init__(self, folder: str, workers: int = 2, cpus: int = 1) -> None:
        self.folder = folder
        self.workers = workers
        self.cpus = cpus
        self.port = free_port(HEAD_ADDRESS)
        self.address = f"{HEAD_ADDRESS}:{self.port}"
        self.nodes: list = []  # (node address, Popen of its `ray start --block`)
        temporary = os.path.join(folder, "tmp")
        os.makedirs(temporary, exist_ok=True)
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "TMPDIR": temporary, **FAST_HEALTH_CHECKS}
        self.ray = os.path.join(os.path.dirname(sys.executable), "ray")

    def _start_node(self, host: str, name: str, arguments: list) -> None:
        log = open(os.path.join(self.folder, f"{name}.log"), "wb")  # noqa: SIM115 - the node writes it until stopped
        process = subprocess.Popen(
            [self.ray, "start", "--block", "--node-ip-address", host, "--num-cpus", str(self.cpus),
             "--object-store-memory", str(OBJECT_STORE_BYTES), "--temp-dir", os.path.join(self.folder, name),
             "--dashboard-agent-listen-port", str(free_port(host)), "--min-worker-port", "0", "--max-worker-port",
             "0", "--include-log-monitor", "false", "--disable-usage-stats", *arguments],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        log.close()
        self.nodes.append((host, process))

    def start(self) -> LocalRayCluster:
        """Start the nodes and wait until all of them are alive in the cluster."""
        import ray

        try:
            self._start_node(HEAD_ADDRESS, "head", ["--head", "--port", str(self.port), "--include-dashboard",
                                                    "false", "--dashboard-port", str(free_port(HEAD_ADDRESS))])
            for index in range(self.workers):
                self._start_node(f"127.0.0.{3 + index}", f"worker{index}", ["--address", self.address])
            deadline = time.monotonic() + START_TIMEOUT_SECONDS
            while True:
                try:
                    ray.init(address=self.address, logging_level="ERROR", log_to_driver=False)
                    break
                except (ConnectionError, RuntimeError):
                    if time.monotonic() > deadline:
                        raise
                    self._check_running()
                    time.sleep(0.5)
            try:
                while sum(node["Alive"] for node in ray.nodes()) < 1 + self.workers:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the Ray cluster did not start within {START_TIMEOUT_SECONDS:g} s")
                    self._check_running()
                    time.sleep(0.2)
            finally:
                ray.shutdown()
        except BaseException:
            self.stop()
            raise
        return self

    def _check_running(self) -> None:
        for host, process in self.nodes:
            if process.poll() is not None:
                with open(os.path.join(self.folder, "head.log" if host == HEAD_ADDRESS else "worker0.log"),
                          encoding="utf-8", errors="replace") as file:
                    tail = file.read()[-2000:]
                raise RuntimeError(f"the Ray node at {host} stopped at start-up: {tail}")

    def worker_node_running(self, task_name: str) -> int | None:
        """The index of a worker node whose Ray worker is running ``task_name`` now (Ray names a worker process
        ``ray::<task>`` while it runs one), or None."""
        for index, (_, process) in enumerate(self.nodes[1:]):
            for pid in session_processes(process.pid):
                with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as file:
                    if file.read().startswith(f"ray::{task_name}".encode()):
                        return index
        return None

    def kill_node(self, index: int) -> None:
        """SIGKILL every process of worker node ``index``."""
        _, process = self.nodes[1 + index]
        kill_session(process.pid)
        process.wait()

    def stop(self) -> None:
        """SIGKILL every process of the cluster and remove its files."""
        for _, process in self.nodes:
            kill_session(process.pid)
        for _, process in self.nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(30)
        shutil.rmtree(self.folder, ignore_errors=True)

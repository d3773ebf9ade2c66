"""Job targets for the tests of ModelRegistryLib.jobs: each behaves (or misbehaves) in one way a real job can.

They run in worker processes, with this folder on the worker's ``sys.path``.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import sys
import time

from ModelRegistryLib.index import Label
from ModelRegistryLib.worker import call_when_idle

_CALLS = []


def report_every_way(progress, log):
    """Progress in each form Lib functions use, a log line, and a result the codec has to tag."""
    progress(0.25)
    progress(0.5, "half way")

    class Step:
        fraction = 0.75
        stage = "inferring"

    progress(Step())
    log("a warning", level="warning")
    return {"labels": (Label(1, "Liver", "#dd8259"),), "voxels": {1: 250, 2: 0}, "shape": (3, 4)}


def print_everywhere():
    """Writes to stdout from Python and from C: none of it may reach the protocol."""
    print("printed by Python")
    sys.stdout.flush()
    os.write(1, b"written to fd 1\n")
    ctypes.CDLL(None).puts(b"written by C puts")
    ctypes.CDLL(None).fflush(None)
    return "clean"


def fail(message):
    raise KeyError(message)


def write_until_cancelled(path, progress, cancel):
    """Writes a partial file while running; on cancel it removes it (nothing half-written stays)."""
    partial = path + ".partial"
    with open(partial, "w", encoding="utf-8") as file:
        while not cancel.wait(0.02):
            file.write("x")
            progress(None, "writing")
    os.remove(partial)
    raise RuntimeError("stopped on request")


def ignore_cancel_with_a_child(pid_file, progress):
    """Starts a child process, then runs on whatever happens: only terminating its tree stops both."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(pid_file, "w", encoding="utf-8") as file:
        file.write(f"{os.getpid()} {child.pid}")
    while True:
        progress(None, "ignoring cancel")
        time.sleep(0.05)


def sleep(seconds, progress):
    progress(0.0, "sleeping")
    time.sleep(seconds)
    return seconds


def abort_after_output(progress):
    print("about to abort", file=sys.stderr, flush=True)
    progress(0.1, "aborting soon")
    os.abort()


def count_calls():
    """Module state kept between jobs of one persistent worker."""
    _CALLS.append(os.getpid())
    return len(_CALLS)


def touch_when_idle(path, interval):
    call_when_idle(lambda: open(path, "a").close(), interval)
    return "registered"


def sha256_of(path, progress):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
            progress(None, "hashing")
    return digest.hexdigest()


def hash_blocks(count, block_bytes):
    """What a verify does: sha256 over ``count`` blocks (generated here, so no disk is involved)."""
    block = bytes(range(256)) * (block_bytes // 256)
    digest = hashlib.sha256()
    for _ in range(count):
        digest.update(block)
    return digest.hexdigest()

"""ModelRegistryLib.locking: FileLock excludes other processes, times out, cancels, and dies with its holder."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time

import pytest

from ModelRegistryLib.errors import CancelledError, RegistryError
from ModelRegistryLib.locking import FileLock

# Spawn, as on Windows and macOS and as Slicer must: a fresh interpreter, no inherited lock state.
SPAWN = multiprocessing.get_context("spawn")


def hold_lock(path: str, locked, release) -> None:
    """In a child process: take the lock, say so, hold it until told to release (or until killed)."""
    with FileLock(path):
        locked.set()
        release.wait(60)


def increment_under_lock(path: str, counter: str, times: int, start) -> None:
    """In a child process: read-modify-write a counter file ``times`` times, each under the lock.

    ``start`` is a barrier that lets all workers begin together, so that they contend.
    """
    start.wait(60)
    for _ in range(times):
        with FileLock(path):
            with open(counter, encoding="utf-8") as file:
                value = int(file.read())
            time.sleep(0.001)  # widen the window in which an unlocked writer would lose an update
            with open(counter, "w", encoding="utf-8") as file:
                file.write(str(value + 1))


@pytest.fixture
def holder(tmp_path):
    """A child process holding the lock tmp_path/model.lock; yields (process, release event)."""
    path = str(tmp_path / "model.lock")
    locked, release = SPAWN.Event(), SPAWN.Event()
    process = SPAWN.Process(target=hold_lock, args=(path, locked, release))
    process.start()
    assert locked.wait(60), "the child process did not take the lock"
    yield process, release
    # Setting a multiprocessing Event waits for its sleepers to wake: never after killing one.
    if process.is_alive():
        release.set()
        process.join(10)
    if process.is_alive():
        process.kill()
        process.join()


def test_lock_held_by_another_process_times_out_then_is_taken_after_release(tmp_path, holder):
    process, release = holder
    path = str(tmp_path / "model.lock")
    started = time.monotonic()
    with pytest.raises(RegistryError, match=r"model\.lock is locked by another install.*waited 0\.3 s"):
        FileLock(path, timeout=0.3, poll=0.02).acquire()
    assert 0.3 <= time.monotonic() - started < 2
    release.set()
    with FileLock(path, timeout=30, poll=0.02):
        pass
    process.join(10)
    assert process.exitcode == 0


def test_lock_is_released_when_its_holder_is_killed(tmp_path, holder):
    process, _ = holder
    path = str(tmp_path / "model.lock")
    with pytest.raises(RegistryError):
        FileLock(path, timeout=0).acquire()
    process.kill()
    process.join()
    started = time.monotonic()
    with FileLock(path, timeout=10, poll=0.02):
        assert time.monotonic() - started < 5
    assert os.path.exists(path)  # the lock file stays: deleting it would let two processes lock two files


def test_processes_taking_turns_lose_no_update(tmp_path):
    path, counter = str(tmp_path / "model.lock"), str(tmp_path / "counter")
    with open(counter, "w", encoding="utf-8") as file:
        file.write("0")
    start = SPAWN.Barrier(3)
    workers = [SPAWN.Process(target=increment_under_lock, args=(path, counter, 25, start)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    with open(counter, encoding="utf-8") as file:
        assert int(file.read()) == 75


def test_cancel_ends_the_wait(tmp_path):
    path = str(tmp_path / "model.lock")
    cancel = threading.Event()
    with FileLock(path):
        timer = threading.Timer(0.2, cancel.set)
        timer.start()
        started = time.monotonic()
        with pytest.raises(CancelledError, match="waiting for"):
            FileLock(path, cancel=cancel, poll=5).acquire()
        assert time.monotonic() - started < 2
        timer.join()


def test_separate_locks_in_one_process_exclude_each_other_and_release_is_idempotent(tmp_path):
    path = str(tmp_path / "sub" / "model.lock")
    first = FileLock(path)
    first.acquire()
    with pytest.raises(RegistryError):
        FileLock(path, timeout=0).acquire()
    with pytest.raises(RuntimeError, match="already locked"):
        first.acquire()
    first.release()
    first.release()
    with FileLock(path, timeout=0):
        pass


def test_uncreatable_lock_file_is_a_registry_error(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(RegistryError, match="cannot create the lock file"):
        FileLock(str(tmp_path / "file" / "model.lock")).acquire()

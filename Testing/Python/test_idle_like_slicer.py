"""The stand-in idles as Slicer does: waiting keeps the GIL, so a thread of the GUI process starves.

In Slicer, PythonQt keeps Python's GIL while the GUI idles in Qt's event loop (its thread support is never
enabled): a Python thread then runs only while the GUI happens to run Python. The stand-in reproduces this in
its waiting helpers (``qt.QThread.msleep``, ``QDialog.exec``, ``QEventLoop.exec``), so that a design that
runs long work in a thread of the GUI process fails here as it would crawl in Slicer.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time

import qt

import slicer
from ModelRegistryLib.jobs import start_job

JOB_TARGETS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                           "ModelRegistry", "Testing", "Python")
BLOCK_BYTES = 1 << 20


def idle_like_slicer():
    """One turn of the GUI's event loop, then idle keeping the GIL until the next tick of a panel's timer."""
    slicer.app.processEvents()
    qt.QThread.msleep(50)


class CountingThread(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.count = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.count += 1


def test_qthread_sleeps_keep_the_gil():
    thread = CountingThread()
    thread.start()
    try:
        before = thread.count
        time.sleep(0.2)
        free = thread.count - before
        before = thread.count
        qt.QThread.msleep(200)
        held = thread.count - before
    finally:
        thread.stop.set()
        thread.join()
    assert held * 5 < free, (held, free)


def test_nested_event_loops_run_timers_and_end():
    dialog = qt.QDialog()
    qt.QTimer.singleShot(50, dialog.accept)
    assert dialog.exec() == 1
    loop = qt.QEventLoop()
    qt.QTimer.singleShot(50, lambda: loop.exit(7))
    assert loop.exec() == 7
    slicer.util.delayDisplay("A message shown for 400 ms, as Slicer's self-tests do", 400)


def test_a_thread_job_starves_while_the_same_work_in_a_worker_process_does_not():
    """The reason long jobs run in worker processes; if a thread design came back, its panels would crawl."""
    blocks = 800
    block = bytes(range(256)) * (BLOCK_BYTES // 256)
    hashed = [0]

    def hash_in_a_thread():
        digest = hashlib.sha256()
        for _ in range(blocks):
            digest.update(block)
            hashed[0] += 1

    thread = threading.Thread(target=hash_in_a_thread, daemon=True)
    began = time.monotonic()
    thread.start()
    while thread.is_alive() and time.monotonic() - began < 3.0:
        idle_like_slicer()
    thread_rate = hashed[0] / (time.monotonic() - began)
    thread.join()

    began = time.monotonic()
    job = start_job("job_test_targets:hash_blocks", {"count": blocks, "block_bytes": BLOCK_BYTES},
                    sys_path=[JOB_TARGETS])
    assert job.wait(60, idle=idle_like_slicer) and job.state == "succeeded", job.error
    process_rate = blocks / (time.monotonic() - began)
    assert process_rate > 3 * thread_rate, f"thread {thread_rate:.0f} MiB/s, worker process {process_rate:.0f} MiB/s"

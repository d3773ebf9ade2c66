"""ModelRegistryLib.tasks: background work that a GUI polls."""

from __future__ import annotations

import threading

from ModelRegistryLib.errors import CancelledError
from ModelRegistryLib.tasks import CANCELLED, FAILED, RUNNING, SUCCEEDED, BackgroundTask


def test_result_and_progress():
    task = BackgroundTask(lambda progress, cancel: progress("half") or 42, "answer").start()
    assert task.wait(5)
    assert (task.state, task.result, task.progress) == (SUCCEEDED, 42, "half")


def test_failure_is_kept_for_the_gui():
    def fail(progress, cancel):
        raise ValueError("bad input")

    task = BackgroundTask(fail).start()
    task.wait(5)
    assert task.state == FAILED and str(task.error) == "bad input"


def test_cancel_stops_a_running_task():
    started = threading.Event()

    def wait_for_cancel(progress, cancel):
        started.set()
        if cancel.wait(5):
            raise CancelledError("stopped")
        return "not cancelled"

    task = BackgroundTask(wait_for_cancel).start()
    started.wait(5)
    assert task.state == RUNNING
    task.cancel()
    task.wait(5)
    assert task.state == CANCELLED

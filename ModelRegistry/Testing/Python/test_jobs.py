"""ModelRegistryLib.jobs and .worker: real worker processes, their protocol, cancel, time limits and crashes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
import qt

import slicer

from ModelRegistryLib import jobs
from ModelRegistryLib.index import Label
from ModelRegistryLib.jobs import (
    JobCancelledError,
    JobError,
    JobLog,
    JobProgress,
    WorkerProcess,
    decode_value,
    encode_value,
    start_job,
    worker_python,
)

HERE = os.path.dirname(os.path.abspath(__file__))


def run(target, kwargs=None, **options):
    return start_job(f"job_test_targets:{target}", kwargs, sys_path=[HERE], **options)


def finished(job, timeout=60):
    assert job.wait(timeout), f"{job.description} did not end in {timeout} s"
    return job


def wait_until(condition, timeout=20.0):
    """Wait as Slicer's GUI idles (the GIL held between event loop turns) until ``condition()`` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        slicer.app.processEvents()
        qt.QThread.msleep(10)


def started(job):
    """Wait for the job's first progress report."""
    wait_until(lambda: bool(job.poll() or True) and job.progress is not None)
    return job


def gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture(autouse=True)
def no_worker_left_behind():
    yield
    wait_until(lambda: not jobs.live_workers())
    children = [c for c in psutil.Process().children(recursive=True) if c.status() != psutil.STATUS_ZOMBIE]
    assert not children, f"processes left running: {children}"


def test_progress_log_and_a_tagged_result_arrive():
    job = run("report_every_way", description="Reporting")
    logs = []
    wait_until(lambda: bool(logs.extend(job.poll()) or True) and job.finished)
    assert job.state == "succeeded", job.error
    assert job.result == {"labels": (Label(1, "Liver", "#dd8259"),), "voxels": {1: 250, 2: 0}, "shape": (3, 4)}
    assert job.progress == JobProgress(0.75, "inferring")
    assert JobLog("warning", "a warning") in logs
    assert job.description == "Reporting"


def test_what_a_job_prints_never_corrupts_the_protocol():
    job = finished(run("print_everywhere"))
    assert job.result == "clean"
    printed = {record.text for record in job.poll() if record.level == "output"}
    assert {"printed by Python", "written to fd 1", "written by C puts"} <= printed


def test_an_exception_is_reported_with_its_classes_and_traceback():
    job = finished(run("fail", {"message": "no such case"}))
    assert job.state == "failed"
    assert isinstance(job.error, JobError) and job.error.kind == "builtins:KeyError"
    assert job.error.raised(LookupError) and not job.error.raised(ValueError)
    assert str(job.error) == "'no such case'"
    assert "job_test_targets.py" in job.error.traceback
    with pytest.raises(JobError, match="no such case"):
        job.outcome()


def test_an_unknown_target_fails_clearly():
    job = finished(start_job("no_such_module:function"))
    assert job.error.raised(ImportError) and "no_such_module" in str(job.error)


def test_a_value_that_cannot_be_sent_fails_in_the_caller():
    with pytest.raises(TypeError, match="set cannot be passed"):
        run("sleep", {"seconds": {1, 2}})


def test_cancel_lets_the_job_clean_up_and_nothing_stays(tmp_path):
    path = str(tmp_path / "output.txt")
    job = run("write_until_cancelled", {"path": path}, description="Writing")
    started(job)
    assert os.path.exists(path + ".partial")
    job.cancel()
    finished(job)
    assert job.state == "cancelled"
    assert isinstance(job.error, JobCancelledError) and str(job.error) == "Writing: cancelled."
    assert os.listdir(tmp_path) == []
    wait_until(lambda: gone(job.pid))


def test_a_job_that_ignores_cancel_is_terminated_with_its_children(tmp_path):
    pid_file = tmp_path / "pids"
    job = run("ignore_cancel_with_a_child", {"pid_file": str(pid_file)}, cancel_grace=0.5)
    started(job)
    worker_pid, child_pid = map(int, pid_file.read_text().split())
    job.cancel()
    finished(job, 20)
    assert job.state == "cancelled"
    wait_until(lambda: gone(worker_pid) and gone(child_pid))


def test_a_time_limit_stops_the_job():
    job = finished(run("sleep", {"seconds": 60}, description="Sleeping", timeout=0.5, cancel_grace=0.5), 20)
    assert job.state == "failed" and job.error.kind == "timeout"
    assert str(job.error) == "Sleeping took longer than its time limit of 0.5 s and was stopped."


def test_a_worker_killed_mid_run_is_reported_in_one_sentence():
    job = run("sleep", {"seconds": 60}, name="The test worker")
    started(job)
    os.kill(job.pid, signal.SIGKILL)
    finished(job)
    assert job.error.kind == "crash"
    assert str(job.error) == (
        "The test worker stopped unexpectedly: it was killed (SIGKILL; the system may have run out of memory).")


def test_an_aborting_worker_is_reported_with_its_last_output():
    job = finished(run("abort_after_output"))
    assert job.error.kind == "crash"
    message = str(job.error)
    assert message.startswith("The worker process stopped unexpectedly: it aborted (SIGABRT). Its last output:")
    assert "about to abort" in message


def test_the_abort_hook_crashes_a_named_target_at_its_first_progress():
    job = finished(run("sleep", {"seconds": 60}, env={"SLICER_DEEPLEARNING_WORKER_ABORT": "job_test_targets:sleep"}))
    assert job.error.kind == "crash" and "SIGABRT" in str(job.error)


def test_a_persistent_worker_keeps_its_state_and_idle_work_runs(tmp_path):
    worker = WorkerProcess(sys_path=[HERE], name="The test service")
    try:
        counts = [finished(worker.submit("job_test_targets:count_calls")).result for _ in range(3)]
        assert counts == [1, 2, 3]
        marker = tmp_path / "idle"
        finished(worker.submit("job_test_targets:touch_when_idle", {"path": str(marker), "interval": 0.1}))
        wait_until(marker.exists)
        assert worker.alive and not worker.busy
    finally:
        worker.stop()
    assert not worker.alive and gone(worker.pid)


def test_stopping_a_busy_worker_cancels_its_jobs():
    worker = WorkerProcess(sys_path=[HERE])
    running = worker.submit("job_test_targets:sleep", {"seconds": 60})
    queued = worker.submit("job_test_targets:count_calls")
    worker.stop(grace=0.5)
    assert running.state == queued.state == "cancelled"
    with pytest.raises(JobError, match="has stopped"):
        worker.submit("job_test_targets:count_calls")


def test_a_worker_exits_when_its_parent_dies(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.path[:0] = [{jobs.MODEL_REGISTRY_FOLDER!r}, {HERE!r}]
        from ModelRegistryLib.jobs import start_job
        job = start_job("job_test_targets:write_until_cancelled", {{"path": {str(tmp_path / "out")!r}}},
                        sys_path=[{HERE!r}])
        while job.poll() is not None and job.progress is None:
            time.sleep(0.01)
        print(job.pid, flush=True)
        time.sleep(600)
    """)], stdout=subprocess.PIPE, start_new_session=True)
    worker_pid = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    parent.stdout.close()
    wait_until(lambda: gone(worker_pid))
    assert os.listdir(tmp_path) == [], "the job was cancelled and cleaned up"


def test_when_done_callbacks_may_replace_the_result_or_fail_the_job():
    job = run("count_calls")
    job.when_done(lambda done: setattr(done, "result", done.result * 10))
    assert finished(job).result == 10
    failing = run("count_calls")
    failing.when_done(lambda done: 1 / 0)
    assert finished(failing).state == "failed" and failing.error.raised(ZeroDivisionError)


def test_stop_all_workers_leaves_nothing_running():
    first = run("sleep", {"seconds": 60})
    second = WorkerProcess(sys_path=[HERE])
    finished(second.submit("job_test_targets:count_calls"))
    pids = [first.pid, second.pid]
    jobs.stop_all_workers(grace=0.5)
    assert first.state == "cancelled"
    assert all(gone(pid) for pid in pids)


def test_values_round_trip_through_json():
    value = {"a": (1, [2.5, None], {"x": True}), "keys": {(1, 2): "pair", 3: "three"}, "__tuple__": 1}
    import json

    assert decode_value(json.loads(json.dumps(encode_value(value)))) == value


def test_the_worker_python_is_never_the_gui_application(monkeypatch, tmp_path):
    monkeypatch.delenv(jobs.WORKER_PYTHON_VARIABLE, raising=False)
    assert worker_python() == sys.executable
    assert worker_python("/opt/Slicer/bin/PythonSlicer") == "/opt/Slicer/bin/PythonSlicer"
    application = tmp_path / "SlicerApp-real"
    monkeypatch.setattr(sys, "executable", str(application))
    with pytest.raises(JobError, match="No Python interpreter for worker processes"):
        worker_python()
    beside = tmp_path / "PythonSlicer"
    beside.write_text("")
    assert worker_python() == str(beside)
    monkeypatch.setenv(jobs.WORKER_PYTHON_VARIABLE, "/custom/python3")
    assert worker_python("/opt/Slicer/bin/PythonSlicer") == "/custom/python3"


def test_a_missing_interpreter_is_a_clear_error():
    with pytest.raises(JobError, match="could not be started with /no/such/python"):
        start_job("job_test_targets:count_calls", python="/no/such/python")

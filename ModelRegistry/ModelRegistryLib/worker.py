"""The worker side of ModelRegistryLib.jobs: a process that runs jobs for Slicer and reports on a protocol.

Started by :class:`ModelRegistryLib.jobs.WorkerProcess` (``python -m ModelRegistryLib.worker`` runs the same
loop by hand). It reads requests, one JSON object per line, on stdin:

- ``{"type": "run", "id": 1, "target": "module:function", "kwargs": {...}, "exit": false}``: import the
  function and call it with the decoded keyword arguments (``jobs.decode_value``), plus, where its signature
  takes them, ``progress``, ``log`` and ``cancel``. Requests run one after another, on the main thread;
  ``exit`` ends the worker after this one.
- ``{"type": "cancel", "id": 1}``: set that job's ``cancel`` event (a ``threading.Event``, as every Lib
  function takes), so it stops and cleans up.
- End of input (the parent closed the pipe or is gone): cancel everything and exit; if the running job
  does not stop within :data:`EXIT_GRACE_SECONDS`, exit anyway.

It answers on its stdout, one JSON object per line, and nothing else writes there: before any job runs, file
descriptor 1 is pointed at stderr, so even a C library's ``printf`` cannot corrupt the protocol.

- ``{"id": 1, "type": "started"}``: the worker has begun the job (the jobs before it have ended), before it
  imports the job's code.
- ``{"id": 1, "type": "progress", "fraction": 0.5, "text": "..."}``: at most every
  :data:`PROGRESS_INTERVAL_SECONDS` unless the text changes. ``progress`` accepts what Lib functions report:
  ``progress(fraction)``, ``progress(fraction, text)`` (an export) or ``progress(step)`` where ``step``
  has ``fraction`` and ``text`` or ``stage`` (an install, a segmentation).
- ``{"id": 1, "type": "log", "level": "info", "text": "..."}``: ``log(text, level="info")``.
- ``{"id": 1, "type": "result", "value": <jobs.encode_value of the return value>}``, or
  ``{"id": 1, "type": "error", "kind": "cancelled" | "module:ExceptionClass", "kinds": [...], "message": "...",
  "traceback": "..."}``: a job that raises after its cancel event was set ends as ``cancelled``.

A persistent worker can also do housekeeping while idle: :func:`call_when_idle`.

Test hook: when the environment variable ``SLICER_DEEPLEARNING_WORKER_ABORT`` names a job target, the worker
calls ``os.abort()`` at that job's first progress report, so tests can crash a worker mid-run for real.
When ``SLICER_DEEPLEARNING_WORKER_HOLD`` is ``target@stage text``, that job stops at its first progress report
whose text begins with that text until it is cancelled (at most :data:`HOLD_LIMIT_SECONDS`): a test cancels
mid-run however fast the machine finishes the work (a report's end may vary: "1 of 6 cases; about 2 s left").
"""

from __future__ import annotations

import inspect
import json
import os
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable

from .jobs import CANCELLED_KIND, decode_value, encode_value, exception_kinds, import_target

PROGRESS_INTERVAL_SECONDS = 0.05
EXIT_GRACE_SECONDS = 10.0
EXIT_CODE_PARENT_GONE = 3
ABORT_HOOK_VARIABLE = "SLICER_DEEPLEARNING_WORKER_ABORT"
HOLD_HOOK_VARIABLE = "SLICER_DEEPLEARNING_WORKER_HOLD"
HOLD_LIMIT_SECONDS = 120.0
_STOP = object()
# (function, interval seconds, [next due time]) registered with call_when_idle.
_IDLE_CALLBACKS: list = []


def call_when_idle(function: Callable[[], object], interval: float) -> None:
    """In this worker, call ``function()`` every ``interval`` seconds while no job runs (e.g. unload idle models).

    Outside a worker (a plain import), the function is only registered and never called.
    """
    _IDLE_CALLBACKS.append((function, interval, [time.monotonic() + interval]))


class _Protocol:
    """Writes protocol lines on the saved stdout; safe to call from the job's threads."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()

    def send(self, message: dict) -> None:
        data = json.dumps(message, ensure_ascii=True).encode("ascii") + b"\n"
        with self._lock:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]


def _fraction_and_text(arguments: tuple) -> tuple:
    """What a Lib function's progress call means: (fraction or None, text)."""
    if len(arguments) == 2:
        return arguments[0], str(arguments[1])
    if len(arguments) != 1:
        return None, ""
    (step,) = arguments
    if isinstance(step, str):
        return None, step
    if isinstance(step, (int, float)):
        return step, ""
    text = getattr(step, "text", None) or getattr(step, "stage", None) or ""
    return getattr(step, "fraction", None), str(text)


class _Reporter:
    """The ``progress`` and ``log`` callables of one job."""

    def __init__(self, protocol: _Protocol, job_id: int, target: str, cancel: threading.Event) -> None:
        self.protocol = protocol
        self.job_id = job_id
        self.cancel = cancel
        self.abort_here = os.environ.get(ABORT_HOOK_VARIABLE) == target
        hold_target, _, hold_text = os.environ.get(HOLD_HOOK_VARIABLE, "").partition("@")
        self.hold_at = hold_text if hold_target == target else None
        self._last_text = None
        self._last_time = 0.0

    def progress(self, *arguments) -> None:
        if self.abort_here:
            os.abort()
        fraction, text = _fraction_and_text(arguments)
        now = time.monotonic()
        if text == self._last_text and now - self._last_time < PROGRESS_INTERVAL_SECONDS and fraction != 1:
            return
        self._last_text, self._last_time = text, now
        fraction = None if fraction is None else min(1.0, max(0.0, float(fraction)))
        self.protocol.send({"id": self.job_id, "type": "progress", "fraction": fraction, "text": text})
        if self.hold_at is not None and str(text).startswith(self.hold_at):
            self.hold_at = None
            self.cancel.wait(HOLD_LIMIT_SECONDS)

    def log(self, text: str, level: str = "info") -> None:
        self.protocol.send({"id": self.job_id, "type": "log", "level": level, "text": str(text)})


def _callbacks_for(function, reporter: _Reporter, cancel: threading.Event) -> dict:
    """The callbacks ``function`` takes, by parameter name (all of them when it takes ``**kwargs``)."""
    offered = {"progress": reporter.progress, "log": reporter.log, "cancel": cancel}
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):  # a builtin without a signature: it takes none of them
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return offered
    return {name: value for name, value in offered.items() if name in parameters}


class _Worker:
    def __init__(self, protocol: _Protocol) -> None:
        self.protocol = protocol
        self.requests: queue.Queue = queue.Queue()
        self.cancels: dict = {}
        self.lock = threading.Lock()

    def _cancel_event(self, job_id) -> threading.Event:
        with self.lock:
            return self.cancels.setdefault(job_id, threading.Event())

    def read_requests(self, fd: int) -> None:
        """The stdin reader thread: queue runs, set cancels; at the end of input cancel all and stop."""
        for line in _lines(fd):
            try:
                request = json.loads(line)
            except ValueError:
                print(f"worker: ignored a line that is not JSON: {line[:200]!r}", file=sys.stderr)
                continue
            if request.get("type") == "cancel":
                self._cancel_event(request.get("id")).set()
            elif request.get("type") == "run":
                self._cancel_event(request.get("id"))
                self.requests.put(request)
        with self.lock:
            for event in self.cancels.values():
                event.set()
        self.requests.put(_STOP)
        # The parent is gone or wants us gone: a job that ignores its cancel must not keep the process alive.
        watchdog = threading.Timer(EXIT_GRACE_SECONDS, os._exit, args=(EXIT_CODE_PARENT_GONE,))
        watchdog.daemon = True
        watchdog.start()

    def serve(self) -> None:
        while True:
            try:
                request = self.requests.get(timeout=_seconds_to_next_idle_call())
            except queue.Empty:
                _call_idle_callbacks()
                continue
            if request is _STOP:
                return
            self.run(request)
            if request.get("exit"):
                return

    def run(self, request: dict) -> None:
        job_id = request.get("id")
        target = request.get("target", "")
        cancel = self._cancel_event(job_id)
        reporter = _Reporter(self.protocol, job_id, target, cancel)
        # Said before the job's code is imported, which takes up to a second on a busy machine (NumPy, SimpleITK):
        # the panel can show at once that the job has begun.
        self.protocol.send({"id": job_id, "type": "started"})
        try:
            function = import_target(target)
            kwargs = decode_value(request.get("kwargs") or {})
            value = function(**kwargs, **_callbacks_for(function, reporter, cancel))
            message = {"id": job_id, "type": "result", "value": encode_value(value)}
        except BaseException as error:  # everything, SystemExit included, is reported to the parent
            message = self._error_message(job_id, error, cancel)
        finally:
            with self.lock:
                self.cancels.pop(job_id, None)
        self.protocol.send(message)

    @staticmethod
    def _error_message(job_id, error: BaseException, cancel: threading.Event) -> dict:
        kinds = [CANCELLED_KIND] if cancel.is_set() else exception_kinds(error)
        return {
            "id": job_id, "type": "error", "kind": kinds[0], "kinds": kinds,
            "message": str(error) or type(error).__name__,
            "traceback": "".join(traceback.format_exception(type(error), error, error.__traceback__)),
        }


def _lines(fd: int):
    """Lines read from ``fd`` with plain reads: Python's buffered stdin would hold a lock that delays the
    interpreter's exit while this thread waits in it."""
    pending = b""
    while True:
        data = os.read(fd, 1 << 16)
        if not data:
            return
        *complete, pending = (pending + data).split(b"\n")
        yield from complete


def _seconds_to_next_idle_call() -> float | None:
    if not _IDLE_CALLBACKS:
        return None
    return max(0.0, min(due[0] for _, _, due in _IDLE_CALLBACKS) - time.monotonic())


def _call_idle_callbacks() -> None:
    now = time.monotonic()
    for function, interval, due in _IDLE_CALLBACKS:
        if now >= due[0]:
            due[0] = now + interval
            try:
                function()
            except Exception:  # housekeeping must never end the worker
                traceback.print_exc()


def main() -> None:
    """Serve requests from stdin until its end (see the module description)."""
    protocol = _Protocol(os.dup(1))
    os.dup2(2, 1)  # anything written to fd 1 from now on, by Python or C code, goes to stderr
    sys.stdout = sys.stderr
    if "" in sys.path:  # never import from the folder the worker happened to start in
        sys.path.remove("")
    worker = _Worker(protocol)
    reader = threading.Thread(target=worker.read_requests, args=(sys.stdin.fileno(),), name="requests", daemon=True)
    reader.start()
    worker.serve()


if __name__ == "__main__":
    main()

"""The one supervisor for long work: jobs run in worker processes of Slicer's own Python, followed from the
GUI thread without threads.

Why processes: Slicer never turns on PythonQt's thread support, so its main thread keeps Python's GIL while
the GUI idles in Qt's event loop; a Python thread of the GUI process then runs only while the GUI happens to
run Python (a sha256 thread fell from ~2000 to ~27 MiB/s). A worker process runs at full speed, and a model
that crashes or exhausts memory takes the worker down, not Slicer and the user's scene.

How it works:

- A worker is ``<python> -c <bootstrap>`` running :func:`ModelRegistryLib.worker.main` (the same as
  ``python -m ModelRegistryLib.worker`` with the module folder on ``sys.path``), where ``<python>`` is
  :func:`worker_python`: ``PythonSlicer`` in Slicer (``sys.executable`` is the GUI application there),
  else the current interpreter. It runs in its own process group (session), so its children stop with it.
- The supervisor writes requests as JSON lines on the worker's stdin: run ``module:function`` with JSON
  keyword arguments (:func:`encode_value`: dataclasses and tuples included), or cancel one. The worker
  answers on its stdout, which carries nothing else (what the job prints goes to stderr): ``progress``
  (fraction and text), ``log`` (level and text), then ``result`` (a JSON value) or ``error`` (kind, message,
  traceback). One request runs at a time; a worker may serve many (a persistent service) or exit after one.
- :meth:`Job.poll` (or :meth:`WorkerProcess.poll`) reads what arrived without ever blocking: non-blocking
  pipes on POSIX, ``PeekNamedPipe`` on Windows. A panel calls it from a ``qt.QTimer``; blocking calls loop
  on :meth:`Job.wait`. It also enforces the time limit and the cancel's escalation, and notices a crash.
- Cancel asks first (a line on stdin sets the job's ``threading.Event``, so it can clean up), then
  terminates the worker's process tree after ``cancel_grace`` seconds, then kills it.
- A crash (segfault, abort, killed for memory) fails the job with one plain sentence naming the exit code or
  signal and the last lines of the worker's error output; the next job starts a fresh worker.
- Nothing is left behind: a worker exits when its stdin closes (its parent is gone), and
  :func:`stop_all_workers` (run at interpreter exit; Slicer modules also call it when Slicer quits) stops
  every live one.

Objects here are used from one thread (the GUI's): nothing is locked.

Example (a standard-library function as a job; any importable function taking JSON-able arguments works)::

    >>> job = start_job("statistics:median", {"data": [3, 1, 2]}, description="Median")
    >>> job.wait(60)
    True
    >>> job.state, job.result
    ('succeeded', 2)
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import dataclasses
import importlib
import json
import numbers
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence

from .card import format_duration
from .errors import CancelledError

RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"

# Error kinds the supervisor decides; a failure raised by the job has its exception class as kind.
CANCELLED_KIND = "cancelled"
TIMEOUT_KIND = "timeout"
CRASH_KIND = "crash"

WORKER_PYTHON_VARIABLE = "SLICER_DEEPLEARNING_WORKER_PYTHON"
MODEL_REGISTRY_FOLDER = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# After the worker's process tree was asked to terminate, seconds before it is killed.
KILL_GRACE_SECONDS = 2.0
# Lines of a worker's error output kept for a crash report, and how many of them the message quotes.
STDERR_TAIL_LINES = 20
QUOTED_STDERR_LINES = 3
_READ_SIZE = 1 << 20

# The worker's entry: the module folders first on sys.path (argv[1:]), then the protocol loop.
_BOOTSTRAP = "import sys; sys.path[0:1] = sys.argv[1:]; from ModelRegistryLib.worker import main; main()"


# ------------------------------------------------------------------------------------------------ values


_TUPLE, _ITEMS, _DATACLASS = "__tuple__", "__items__", "__dataclass__"


def encode_value(value):
    """``value`` as a JSON-able structure that :func:`decode_value` turns back into an equal value.

    JSON values pass as they are; tuples, mappings with other keys than strings, and dataclass instances
    (by their importable class) are tagged, so a job's arguments and results can be a registry's
    ``ModelEntry`` or an export's report. NumPy scalars become Python numbers.

    >>> from ModelRegistryLib.index import Label
    >>> encoded = encode_value({"labels": (Label(1, "Liver", "#dd8259"),), "voxels": {1: 250}})
    >>> json.loads(json.dumps(encoded)) == encoded, decode_value(encoded)
    (True, {'labels': (Label(value=1, name='Liver', color='#dd8259', terminology=None),), 'voxels': {1: 250}})
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, list):
        return [encode_value(item) for item in value]
    if isinstance(value, tuple):
        return {_TUPLE: [encode_value(item) for item in value]}
    if isinstance(value, Mapping):
        if all(isinstance(key, str) for key in value) and not {_TUPLE, _ITEMS, _DATACLASS} & set(value):
            return {key: encode_value(item) for key, item in value.items()}
        return {_ITEMS: [[encode_value(key), encode_value(item)] for key, item in value.items()]}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        fields = {f.name: encode_value(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
        return {_DATACLASS: f"{cls.__module__}:{cls.__qualname__}", "fields": fields}
    raise TypeError(f"a {type(value).__name__} cannot be passed to or from a worker process")


def decode_value(data):
    """The value :func:`encode_value` encoded (see there)."""
    if isinstance(data, list):
        return [decode_value(item) for item in data]
    if not isinstance(data, dict):
        return data
    if _TUPLE in data:
        return tuple(decode_value(item) for item in data[_TUPLE])
    if _ITEMS in data:
        return {decode_value(key): decode_value(item) for key, item in data[_ITEMS]}
    if _DATACLASS in data:
        cls = import_target(data[_DATACLASS])
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise TypeError(f"{data[_DATACLASS]} is not a dataclass")
        return cls(**{name: decode_value(item) for name, item in data["fields"].items()})
    return {key: decode_value(item) for key, item in data.items()}


def import_target(target: str):
    """The object ``module:qualified.name`` names, imported (``"statistics:median"``)."""
    module_name, _, name = target.partition(":")
    if not module_name or not name:
        raise ValueError(f"A job target is 'module:function', not {target!r}")
    found = importlib.import_module(module_name)
    for part in name.split("."):
        found = getattr(found, part)
    return found


# ------------------------------------------------------------------------------------------- reports


@dataclasses.dataclass(frozen=True)
class JobProgress:
    """How far a job is: ``fraction`` done (0 to 1; None when unknown) and a line of ``text``."""

    fraction: float | None
    text: str


@dataclasses.dataclass(frozen=True)
class JobLog:
    """A line a job logged (``level`` info, warning, error...), or wrote on its error output (``output``)."""

    level: str
    text: str


class JobError(RuntimeError):
    """A job that did not succeed; ``str(error)`` is the message for the user.

    ``kind`` is ``cancelled``, ``timeout``, ``crash`` (the worker process died), or the exception class the
    job raised (``module:QualifiedName``); ``kinds`` also names its base classes (see :meth:`raised`);
    ``traceback`` is the worker's traceback, or its last error output after a crash.
    """

    def __init__(self, message: str, kind: str, kinds: Sequence[str] = (), traceback: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.kinds = tuple(kinds) or (kind,)
        self.traceback = traceback

    def raised(self, exception_class: type) -> bool:
        """Whether the job raised an ``exception_class`` (or a subclass of it) in the worker."""
        return f"{exception_class.__module__}:{exception_class.__qualname__}" in self.kinds


class JobCancelledError(JobError, CancelledError):
    """The job was cancelled (on request, or when its worker was stopped); nothing to report."""


def exception_kinds(error: BaseException) -> list:
    """``module:QualifiedName`` of the error's class and of each of its base classes."""
    return [f"{cls.__module__}:{cls.__qualname__}" for cls in type(error).__mro__]


def describe_exit(returncode: int) -> str:
    """What a worker's exit code says, in words (negative codes are POSIX signals).

    >>> describe_exit(-9)
    'it was killed (SIGKILL; the system may have run out of memory)'
    >>> describe_exit(3)
    'it exited with code 3'
    """
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            return f"it was stopped by signal {-returncode}"
        meanings = {
            "SIGKILL": "it was killed (SIGKILL; the system may have run out of memory)",
            "SIGSEGV": "it crashed (SIGSEGV, a segmentation fault)",
            "SIGBUS": "it crashed (SIGBUS, a bus error)",
            "SIGABRT": "it aborted (SIGABRT)",
            "SIGTERM": "it was terminated (SIGTERM)",
        }
        return meanings.get(name, f"it was stopped by signal {name}")
    if returncode > 0xFFFF:  # Windows status codes such as 0xC0000005 (access violation)
        return f"it exited with code 0x{returncode:08X}"
    return f"it exited with code {returncode}"


# -------------------------------------------------------------------------------------- interpreter


def worker_python(preferred: str | None = None) -> str:
    """The interpreter that runs workers: Slicer's own Python, never the GUI application.

    In order: the ``SLICER_DEEPLEARNING_WORKER_PYTHON`` environment variable; ``preferred`` (Slicer modules
    pass ``shutil.which("PythonSlicer")``, which Slicer puts on PATH); ``PythonSlicer`` beside the running
    executable; the running executable when it is a Python (outside Slicer). Raises JobError when none is,
    rather than starting a second Slicer.
    """
    configured = os.environ.get(WORKER_PYTHON_VARIABLE, "")
    if configured:
        return configured
    if preferred:
        return preferred
    beside = os.path.join(os.path.dirname(sys.executable), "PythonSlicer" + (".exe" if os.name == "nt" else ""))
    if os.path.isfile(beside):
        return beside
    if "python" in os.path.basename(sys.executable).lower():
        return sys.executable
    raise JobError(
        f"No Python interpreter for worker processes: {sys.executable} is not one and no PythonSlicer was found"
        f" beside it. Set {WORKER_PYTHON_VARIABLE} to Slicer's PythonSlicer.", "no-python",
    )


# -------------------------------------------------------------------------------------------- pipes


if os.name == "nt":
    import _winapi
    import msvcrt

    def _make_non_blocking(fd: int) -> None:
        """Windows pipes stay blocking; :func:`_read_available` reads only what PeekNamedPipe says is there."""

    def _read_available(fd: int) -> bytes | None:
        """Bytes waiting in the pipe (b"" when none), or None at its end."""
        try:
            available, _ = _winapi.PeekNamedPipe(msvcrt.get_osfhandle(fd), 0)
        except OSError:  # ERROR_BROKEN_PIPE: the worker closed its end
            return None
        return os.read(fd, min(available, _READ_SIZE)) if available else b""

    def _terminate_tree(process: subprocess.Popen, kill: bool) -> None:
        # taskkill /T reaches the worker's children too; Windows has no gentler stop for a windowless process.
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True,
                       creationflags=subprocess.CREATE_NO_WINDOW)
        if kill:
            process.kill()

    def _kill_leftovers(process: subprocess.Popen) -> None:
        """Nothing to do: Windows reuses process ids at once, so an exited worker's id names no tree any more."""

    _START_OPTIONS = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW}
else:

    def _make_non_blocking(fd: int) -> None:
        os.set_blocking(fd, False)

    def _read_available(fd: int) -> bytes | None:
        """Bytes waiting in the pipe (b"" when none), or None at its end."""
        try:
            return os.read(fd, _READ_SIZE) or None
        except BlockingIOError:
            return b""

    def _terminate_tree(process: subprocess.Popen, kill: bool) -> None:
        # The worker leads its own process group: the signal reaches its children too.
        with contextlib.suppress(ProcessLookupError, PermissionError):  # the whole group is gone already
            os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGTERM)

    def _kill_leftovers(process: subprocess.Popen) -> None:
        """Kill what the exited worker started and left running (its process group outlives it)."""
        _terminate_tree(process, kill=True)

    _START_OPTIONS = {"start_new_session": True}


class _LineReader:
    """Complete lines from a non-blocking pipe; ``ended`` once the other side closed it."""

    def __init__(self, stream) -> None:
        self.fd = stream.fileno()
        self.ended = False
        self._partial = b""
        _make_non_blocking(self.fd)

    def lines(self) -> list:
        chunks = []
        while not self.ended:
            data = _read_available(self.fd)
            if data is None:
                self.ended = True
            elif data:
                chunks.append(data)
            else:
                break
        data = self._partial + b"".join(chunks)
        *complete, self._partial = data.split(b"\n")
        if self.ended and self._partial:
            complete.append(self._partial)
            self._partial = b""
        return complete


# ---------------------------------------------------------------------------------------------- jobs


class Job:
    """One request running in a :class:`WorkerProcess`; made by :meth:`WorkerProcess.submit` or :func:`start_job`.

    ``progress`` is the latest :class:`JobProgress` (None before the first); ``state`` is ``running``,
    ``succeeded`` (``result`` holds the decoded return value), ``failed`` or ``cancelled`` (``error`` holds a
    :class:`JobError`). Nothing changes between calls of :meth:`poll` (or :meth:`wait`).
    """

    def __init__(self, worker: WorkerProcess, job_id: int, target: str, description: str, timeout: float | None,
                 cancel_grace: float) -> None:
        self.worker = worker
        self.id = job_id
        self.target = target
        self.description = description or target
        self.timeout = timeout
        self.cancel_grace = cancel_grace
        self.progress: JobProgress | None = None
        self.result = None
        self.error: JobError | None = None
        self.started = time.monotonic()
        self.cancel_requested_at: float | None = None
        self.timed_out = False
        self._logs: list = []
        self._done_callbacks: list = []
        self._finished = False

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def state(self) -> str:
        if not self._finished:
            return RUNNING
        if self.error is None:
            return SUCCEEDED
        return CANCELLED if self.error.kind == CANCELLED_KIND else FAILED

    @property
    def cancel_requested(self) -> bool:
        return self.cancel_requested_at is not None

    @property
    def pid(self) -> int | None:
        """The process id of the worker running the job."""
        return self.worker.pid

    def poll(self) -> list:
        """Read what the worker sent (never blocks); returns the :class:`JobLog` records new since the last call."""
        if not self._finished:
            self.worker.poll()
        logs, self._logs = self._logs, []
        return logs

    def cancel(self) -> None:
        """Ask the job to stop; its worker is terminated if it has not stopped ``cancel_grace`` seconds later."""
        if self._finished or self.cancel_requested:
            return
        self.cancel_requested_at = time.monotonic()
        self.worker.send({"type": "cancel", "id": self.id})

    def wait(self, timeout: float | None = None, idle: Callable[[], None] | None = None) -> bool:
        """Poll until the job ends or ``timeout`` seconds pass; True if it ended.

        ``idle()`` is called between polls (default: sleep 10 ms); Slicer passes one that processes GUI events.
        Never call it from a GUI callback: that would freeze the GUI.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if not self._finished:
                self.worker.poll()
            if self._finished:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            (idle or _short_sleep)()

    def outcome(self):
        """The result of a finished job, or its :class:`JobError` raised."""
        if not self._finished:
            raise RuntimeError(f"{self.description} has not finished")
        if self.error is not None:
            raise self.error
        return self.result

    def stop(self, grace: float = 3.0) -> None:
        """Cancel and wait up to ``grace`` seconds (blocking), then stop the worker itself (panel clean-up)."""
        self.cancel()
        if not self.wait(grace):
            self.worker.stop(grace=0.0)

    def when_done(self, callback: Callable[[Job], None]) -> None:
        """Call ``callback(job)`` once when the job ends (at once if it has), on the thread that polls.

        A callback may replace ``job.result``; one that raises fails a succeeded job with its error.
        """
        if self._finished:
            self._run_done_callback(callback)
        else:
            self._done_callbacks.append(callback)

    # -- called by the worker process object --------------------------------------------------------------

    def _message(self, message: dict) -> None:
        kind = message.get("type")
        if kind == "progress":
            self.progress = JobProgress(message.get("fraction"), message.get("text", ""))
        elif kind == "log":
            self._log(JobLog(message.get("level", "info"), message.get("text", "")))
        elif kind == "result":
            try:
                result = decode_value(message.get("value"))
            except Exception as error:  # a class the worker could import and this process cannot
                self._finish(error=JobError(f"{self.description}: its result could not be read: {error}",
                                            "builtins:TypeError"))
            else:
                self._finish(result=result)
        elif kind == "error":
            self._finish(error=self._error_from(message))

    def _error_from(self, message: dict) -> JobError:
        if message.get("kind") == CANCELLED_KIND:
            return self._stopped_error()
        kinds = message.get("kinds") or [message.get("kind", "")]
        return JobError(message.get("message", ""), kinds[0], kinds, message.get("traceback", ""))

    def _stopped_error(self) -> JobError:
        """The error of a job that ended because it was asked to (cancel, time limit, worker stopped)."""
        if self.timed_out:
            return JobError(f"{self.description} took longer than its time limit of {format_duration(self.timeout)}"
                            " and was stopped.", TIMEOUT_KIND)
        return JobCancelledError(f"{self.description}: cancelled.", CANCELLED_KIND)

    def _log(self, record: JobLog) -> None:
        self._logs.append(record)

    def _finish(self, result=None, error: JobError | None = None) -> None:
        if self._finished:
            return
        self.result, self.error, self._finished = result, error, True
        callbacks, self._done_callbacks = self._done_callbacks, []
        for callback in callbacks:
            self._run_done_callback(callback)

    def _run_done_callback(self, callback) -> None:
        try:
            callback(self)
        except Exception as error:
            if self.error is None:
                self.result = None
                self.error = JobError(str(error) or type(error).__name__, exception_kinds(error)[0],
                                      exception_kinds(error))


def _short_sleep() -> None:
    time.sleep(0.01)


# ----------------------------------------------------------------------------------- worker processes


_LIVE_WORKERS: set = set()


class WorkerProcess:
    """A worker process running jobs one after another (see the module description).

    ``python`` is the preferred interpreter (see :func:`worker_python`, which picks one when it is None; the
    environment variable overrides both), resolved when the process starts; ``sys_path`` lists folders the
    jobs import from (the
    ModelRegistry folder is always first); ``env`` adds environment variables; ``name`` is how messages
    call the worker ("The DeepSegment model service"). The process starts with the first :meth:`submit`.
    """

    def __init__(self, python: str | None = None, *, sys_path: Sequence[str] = (), env: Mapping | None = None,
                 name: str = "The worker process") -> None:
        self.python = python
        self.sys_path = [MODEL_REGISTRY_FOLDER, *(p for p in sys_path if p != MODEL_REGISTRY_FOLDER)]
        self.env = dict(env or {})
        self.name = name
        self.process: subprocess.Popen | None = None
        self._jobs: collections.OrderedDict = collections.OrderedDict()  # id -> Job, in the order they run
        self._next_id = 1
        self._stdout: _LineReader | None = None
        self._stderr: _LineReader | None = None
        self._stderr_tail: collections.deque = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._terminating_since: float | None = None
        self._stopping = False
        self._ended_already = False

    # -- state -------------------------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        """Started and not known to have ended (:meth:`poll` notices the end)."""
        return self.process is not None and not self._ended_already and not self._stopping

    @property
    def busy(self) -> bool:
        """Whether a submitted job has not ended yet."""
        return bool(self._jobs)

    # -- starting and submitting ---------------------------------------------------------------------------------

    def start(self) -> WorkerProcess:
        if self.process is not None:
            raise RuntimeError(f"{self.name} was started already; make a new WorkerProcess")
        python = worker_python(self.python)
        try:
            self.process = subprocess.Popen(
                [python, "-c", _BOOTSTRAP, *self.sys_path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, bufsize=0, env={**os.environ, **self.env}, **_START_OPTIONS,
            )
        except OSError as error:
            raise JobError(f"{self.name} could not be started with {python}: {error}", CRASH_KIND) from error
        self._stdout = _LineReader(self.process.stdout)
        self._stderr = _LineReader(self.process.stderr)
        _LIVE_WORKERS.add(self)
        return self

    def submit(self, target: str, kwargs: Mapping | None = None, *, description: str = "",
               timeout: float | None = None, cancel_grace: float = 5.0, exit_after: bool = False) -> Job:
        """Run ``target`` (``module:function``) with ``kwargs`` after the jobs submitted before; returns its Job.

        The function is called with the keyword arguments, plus ``progress``, ``log`` and ``cancel`` where its
        signature takes them (see ModelRegistryLib.worker). ``timeout`` (seconds) stops it when exceeded;
        ``cancel_grace`` is how long a cancelled job may take to stop before its worker is terminated;
        ``exit_after`` makes the worker exit once the job ends.
        """
        encoded = encode_value(dict(kwargs or {}))  # a value that cannot be sent fails here, in the caller
        if self.process is None:
            self.start()
        if not self.alive:
            raise JobError(f"{self.name} has stopped; start a new one", CRASH_KIND)
        job = Job(self, self._next_id, target, description, timeout, cancel_grace)
        self._next_id += 1
        self._jobs[job.id] = job
        self.send({"type": "run", "id": job.id, "target": target, "kwargs": encoded, "exit": exit_after})
        return job

    def send(self, message: dict) -> None:
        """Write one request line; a worker that has gone is noticed by the next :meth:`poll`."""
        if self.process is None or self.process.stdin is None or self.process.stdin.closed:
            return
        with contextlib.suppress(OSError):  # BrokenPipeError included
            self.process.stdin.write(json.dumps(message).encode("ascii") + b"\n")

    # -- following -------------------------------------------------------------------------------------------------

    def poll(self) -> None:
        """Read and dispatch what arrived, enforce time limits and cancels, notice the end of the process."""
        _reap_idle_workers()
        if self.process is None or self._ended_already:
            return
        self._read_stderr()
        for line in self._stdout.lines():
            self._dispatch(line)
        if self._stdout.ended and self.process.poll() is not None:
            self._ended()
        else:
            self._enforce_limits()

    def _read_stderr(self) -> None:
        for line in self._stderr.lines():
            text = line.decode("utf-8", "replace").rstrip()
            self._stderr_tail.append(text[:300])
            if self._jobs and text:
                next(iter(self._jobs.values()))._log(JobLog("output", text))

    def _dispatch(self, line: bytes) -> None:
        try:
            message = json.loads(line)
            job = self._jobs.get(message.get("id"))
        except (ValueError, AttributeError):
            self._stderr_tail.append(f"(not a protocol line: {line[:200]!r})")
            return
        if job is None:
            return
        job._message(message)
        if job.finished:
            del self._jobs[job.id]

    def _enforce_limits(self) -> None:
        now = time.monotonic()
        for job in list(self._jobs.values()):
            if job.timeout is not None and not job.timed_out and now - job.started > job.timeout:
                job.timed_out = True
                job.cancel()
            if job.cancel_requested and self._terminating_since is None and (
                    now - job.cancel_requested_at > job.cancel_grace):
                self.terminate()
        if self._terminating_since is not None and now - self._terminating_since > KILL_GRACE_SECONDS:
            _terminate_tree(self.process, kill=True)

    def _ended(self) -> None:
        """The process has exited: fail what it still owed, make sure none of its children lives on."""
        self._ended_already = True
        _LIVE_WORKERS.discard(self)
        _kill_leftovers(self.process)
        self._read_stderr()
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None and not stream.closed:
                stream.close()
        jobs, self._jobs = list(self._jobs.values()), collections.OrderedDict()
        for job in jobs:
            if job.cancel_requested or self._stopping or self._terminating_since is not None:
                job._finish(error=job._stopped_error())
            else:
                job._finish(error=self._crash_error())

    def _crash_error(self) -> JobError:
        lines = [line for line in self._stderr_tail if line.strip()]
        sentence = f"{self.name} stopped unexpectedly: {describe_exit(self.process.returncode)}."
        if lines:
            sentence += " Its last output: " + " / ".join(lines[-QUOTED_STDERR_LINES:])
        return JobError(sentence, CRASH_KIND, traceback="\n".join(lines))

    # -- stopping -----------------------------------------------------------------------------------------------------

    def terminate(self) -> None:
        """Terminate the worker's process tree now (killed :data:`KILL_GRACE_SECONDS` later if still there)."""
        if self.process is not None and self.process.returncode is None and self._terminating_since is None:
            self._terminating_since = time.monotonic()
            _terminate_tree(self.process, kill=False)

    def close(self) -> None:
        """Ask the worker to exit: it cancels what runs and exits (a worker exits when its stdin closes)."""
        self._stopping = True
        if self.process is not None and self.process.stdin is not None and not self.process.stdin.closed:
            with contextlib.suppress(OSError):
                self.process.stdin.close()

    def stop(self, grace: float = 3.0) -> None:
        """Stop the worker, blocking: ask, wait up to ``grace`` seconds, terminate, kill. Its jobs end cancelled."""
        if self.process is None or self._ended_already:
            return
        self.close()
        deadline = time.monotonic() + grace
        while not self._ended_already and time.monotonic() < deadline:
            self.poll()
            _short_sleep()
        if not self._ended_already:
            self.terminate()
            try:
                self.process.wait(KILL_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                _terminate_tree(self.process, kill=True)
                self.process.wait()
            self._stdout.ended = True  # whatever it still wrote is of no use now
            self._ended()


def _reap_idle_workers() -> None:
    """Notice workers that exited with nothing left to report (one-shot workers after their job)."""
    for worker in list(_LIVE_WORKERS):
        if not worker._jobs and worker.process.poll() is not None:
            worker._ended()


def start_job(target: str, kwargs: Mapping | None = None, *, description: str = "", python: str | None = None,
              sys_path: Sequence[str] = (), env: Mapping | None = None, timeout: float | None = None,
              cancel_grace: float = 5.0, name: str = "The worker process") -> Job:
    """Run one job in a new worker process that exits when it ends (see :meth:`WorkerProcess.submit`)."""
    worker = WorkerProcess(python, sys_path=sys_path, env=env, name=name)
    return worker.submit(target, kwargs, description=description, timeout=timeout, cancel_grace=cancel_grace,
                         exit_after=True)


def live_workers() -> list:
    """The worker processes started and not yet seen to end (tests check that none is left)."""
    _reap_idle_workers()
    return list(_LIVE_WORKERS)


def stop_all_workers(grace: float = 2.0) -> None:
    """Stop every live worker (blocking; at most about ``grace`` seconds plus the kill grace for all of them).

    Run at interpreter exit; Slicer modules call it when Slicer quits and when a panel is cleaned up.
    """
    workers = list(_LIVE_WORKERS)
    for worker in workers:
        worker.close()
    deadline = time.monotonic() + grace
    for worker in workers:
        worker.stop(grace=max(0.0, deadline - time.monotonic()))


atexit.register(stop_all_workers)

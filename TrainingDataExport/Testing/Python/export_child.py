"""Exports in child processes that kill themselves (SIGKILL, as ``kill -9``) at a chosen moment.

The fault-injection tests (test_export_faults.py) start this script once: it imports the
export once, then reads one JSON request per line on standard input, runs each in a forked child, and
answers with the child's exit status on one line (negative: the signal that killed it). A request is::

    {"cases": [[case_id, patient_id, {channel: path}, segmentation], ...], "schema": [[value, name, color], ...],
     "output": DIR, "settings": {ExportSettings fields}, "options": {folds, test_fraction, seed, workers},
     "kill": {"at": "os.replace" | "os.remove" | "os.fsync" | "progress", "call": N}, "file_size_limit": BYTES}

``os.replace``: killed just before the N-th rename of a finished temporary file (every file the export
writes ends with one), so that N = 1, 2, ... stops it between any two files; ``os.remove``: before the N-th
removal (of an index file, an obsolete file, the journal...); ``os.fsync``: before the N-th flush to disk
(a temporary file complete but not renamed, or a journal line not yet durable); ``progress``: at the N-th
progress report. Without "kill", or with N past the last such call, the export runs to its end (status 0).
With "file_size_limit", every write past that size fails (``RLIMIT_FSIZE``, ``SIGXFSZ`` ignored) as on a
full disk: the export raises ``OSError`` (status 1; any other exception: status 2). A killed child leaves
behind exactly what a power cut or ``kill -9`` would.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import sys
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
for module in ("ModelRegistry", "DeepSegment", "TrainingDataExport"):
    sys.path.insert(0, os.path.join(REPOSITORY, module))

from ModelRegistryLib.index import Label  # noqa: E402
from TrainingDataExportLib.caselist import Case  # noqa: E402
from TrainingDataExportLib.export import ExportSettings, export_dataset  # noqa: E402


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_on_call(name: str, call: int) -> None:
    original = getattr(os, name)
    calls = [0]

    def counted(*arguments, **keywords):
        calls[0] += 1
        if calls[0] == call:
            _die()
        return original(*arguments, **keywords)

    setattr(os, name, counted)


def run_request(request: dict) -> None:
    """Run one export as the request says (in this process: the caller forks first)."""
    cases = [Case(case_id, patient, dict(images), segmentation) for case_id, patient, images, segmentation in
             request["cases"]]
    schema = [Label(value, name, color) for value, name, color in request["schema"]]
    settings = dict(request["settings"])
    if settings.get("spacing") is not None:
        settings["spacing"] = tuple(settings["spacing"])
    if request.get("file_size_limit"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (request["file_size_limit"], request["file_size_limit"]))
    progress = None
    kill = request.get("kill")
    if kill and kill["at"].startswith("os."):
        _kill_on_call(kill["at"][len("os."):], kill["call"])
    elif kill and kill["at"] == "progress":
        calls = [0]

        def progress(fraction, message):
            calls[0] += 1
            if calls[0] == kill["call"]:
                _die()

    export_dataset(cases, schema, request["output"], ExportSettings(**settings), progress=progress,
                   **request.get("options", {}))


def _status(request: dict) -> int:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            run_request(request)
        except BaseException as error:
            code = 1 if isinstance(error, OSError) else 2
            # The file-size limit may stop this too (standard error redirected to a file).
            with contextlib.suppress(OSError):
                traceback.print_exc()
                sys.stderr.flush()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def serve() -> None:
    for line in sys.stdin:
        print(_status(json.loads(line)), flush=True)


if __name__ == "__main__":
    serve()

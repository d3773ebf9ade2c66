"""An export in a child process that kills itself (SIGKILL, as ``kill -9``) at a chosen moment.

The fault-injection tests (test_export_faults.py) run this script with one JSON argument::

    {"cases": [[case_id, patient_id, {channel: path}, segmentation], ...], "schema": [[value, name, color], ...],
     "output": DIR, "settings": {ExportSettings fields}, "options": {folds, test_fraction, seed, workers},
     "kill": {"at": "os.replace" | "os.fsync" | "progress", "call": N}}

``os.replace``: killed just before the N-th rename of a finished temporary file (every file the export
writes ends with one), so that N = 1, 2, ... stops it between any two files; ``os.fsync``: before the N-th
flush to disk, while a file is still a temporary one; ``progress``: at the N-th progress report. Without
"kill", the export runs to its end. The exit status is 0 after a complete export, and the child dies by
SIGKILL otherwise, leaving behind exactly what a power cut or ``kill -9`` would.
"""

from __future__ import annotations

import json
import os
import signal
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
for module in ("ModelRegistry", "DeepSegment", "TrainingDataExport"):
    sys.path.insert(0, os.path.join(REPOSITORY, module))

from ModelRegistryLib.index import Label  # noqa: E402
from TrainingDataExportLib.caselist import Case  # noqa: E402
from TrainingDataExportLib.export import ExportSettings, export_dataset  # noqa: E402


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_on_call(module, name: str, call: int) -> None:
    original = getattr(module, name)
    calls = [0]

    def counted(*arguments, **keywords):
        calls[0] += 1
        if calls[0] == call:
            _die()
        return original(*arguments, **keywords)

    setattr(module, name, counted)


def main(request: dict) -> int:
    cases = [Case(case_id, patient, dict(images), segmentation) for case_id, patient, images, segmentation in
             request["cases"]]
    schema = [Label(value, name, color) for value, name, color in request["schema"]]
    settings = dict(request["settings"])
    if settings.get("spacing") is not None:
        settings["spacing"] = tuple(settings["spacing"])
    progress = None
    kill = request.get("kill")
    if kill and kill["at"] in ("os.replace", "os.fsync"):
        _kill_on_call(os, kill["at"].split(".")[1], kill["call"])
    elif kill and kill["at"] == "progress":
        calls = [0]

        def progress(fraction, message):
            calls[0] += 1
            if calls[0] == kill["call"]:
                _die()

    export_dataset(cases, schema, request["output"], ExportSettings(**settings), progress=progress,
                   **request.get("options", {}))
    return 0


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))

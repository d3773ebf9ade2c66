"""A job target whose module takes as long to import as the test wants, as a Lib importing NumPy and SimpleITK on
a busy machine does: its import waits until the file named by $JOB_TEST_IMPORT_GATE exists."""

from __future__ import annotations

import os
import time

while not os.path.exists(os.environ["JOB_TEST_IMPORT_GATE"]):
    time.sleep(0.01)


def report(progress):
    progress(0.5, "working")
    return "imported"

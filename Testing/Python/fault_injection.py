"""Faults for tests: a full disk, a read-only folder, and Python code run in a child process.

- :func:`run_python` runs code in a child Python with the three module folders on ``sys.path``, optionally
  under a file-size limit (``RLIMIT_FSIZE``, with ``SIGXFSZ`` ignored): every write past the limit then fails
  with ``EFBIG``, as a write to a full disk fails with ``ENOSPC``, without needing a small file system.
- :func:`read_only` makes a folder read-only for the duration of a ``with`` block: by its permissions, or, for
  root (whom permissions do not stop), by a read-only bind mount; the test is skipped where neither works.
- :func:`interruptible_children`: children started in its ``with`` block take Ctrl-C (SIGINT) as a terminal's
  foreground program does, even where the test run itself ignores it.

Example::

    >>> run_python("import sys; sys.exit(3)").returncode
    3
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import stat
import subprocess
import sys
import uuid

import pytest

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULE_FOLDERS = [os.path.join(REPOSITORY, name) for name in ("ModelRegistry", "DeepSegment", "TrainingDataExport")]


def child_environment() -> dict:
    """The environment of a child Python that imports the modules' Libs."""
    inherited = [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []  # e.g. a GPU machine's packages
    return {**os.environ, "PYTHONPATH": os.pathsep.join([*MODULE_FOLDERS, *inherited])}


def run_python(code: str, *, file_size_limit: int | None = None, cwd: str | None = None, timeout: float = 300):
    """Run ``code`` in a child Python (see the module description); return the ``CompletedProcess`` (text)."""

    def limit() -> None:
        if file_size_limit is not None:
            # Ignored signals stay ignored across exec: the write fails with EFBIG instead of killing the child.
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.run(
        [sys.executable, "-c", code],
        env=child_environment(),
        cwd=cwd,
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _can_write(folder: str) -> bool:
    probe = os.path.join(folder, f".probe-{uuid.uuid4().hex}")
    try:
        with open(probe, "wb"):
            pass
    except OSError:
        return False
    os.remove(probe)
    return True


@contextlib.contextmanager
def read_only(folder):
    """``folder`` (which exists) cannot be written inside the block (see the module description)."""
    folder = os.fspath(folder)
    mode = stat.S_IMODE(os.stat(folder).st_mode)
    os.chmod(folder, 0o555)
    mounted = False
    try:
        if _can_write(folder):
            mounted = (
                subprocess.run(["mount", "--bind", folder, folder], capture_output=True).returncode == 0
                and subprocess.run(["mount", "-o", "remount,bind,ro", folder], capture_output=True).returncode == 0
            )
            if not mounted or _can_write(folder):
                pytest.skip("cannot make a folder read-only here (root without mount permission)")
        yield folder
    finally:
        if mounted or os.path.ismount(folder):
            subprocess.run(["umount", folder], capture_output=True)
        os.chmod(folder, mode)


@contextlib.contextmanager
def interruptible_children():
    """Children started inside the block get SIGINT's default action, so a test's Ctrl-C reaches them.

    A shell without job control starts background commands with SIGINT ignored, an ignored signal stays ignored
    across ``exec``, and Python then never raises KeyboardInterrupt: a test run started so (``.ci/run &``) would
    see its Ctrl-C tests hang. A handler set here is reset to the default action in the child. Main thread only.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)

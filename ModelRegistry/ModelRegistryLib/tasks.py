"""Long work in a background thread that a GUI polls: progress, cancel, result or error.

Slicer's GUI must never wait on a download or an inference run, and MRML and widgets may only be
touched on the main thread. So the work runs in a thread and only records what happened; the panel
polls ``task`` with a ``qt.QTimer`` and applies results on the main thread. Nothing here needs Qt.

Example::

    >>> def count(progress, cancel):
    ...     for step in range(3):
    ...         progress(step / 3)
    ...     return "counted"
    >>> task = BackgroundTask(count, "Counting").start()
    >>> task.wait(5)
    True
    >>> task.result, task.error, task.state
    ('counted', None, 'succeeded')
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .errors import CancelledError

RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"


class BackgroundTask:
    """Runs ``function(progress, cancel)`` in a daemon thread.

    ``progress`` is a callable the function calls with anything (the latest value is kept in
    ``self.progress``); ``cancel`` is a ``threading.Event`` the function checks. A function that stops
    because of the event raises ``CancelledError``.
    """

    def __init__(self, function: Callable, description: str = "") -> None:
        self.function = function
        self.description = description
        self.cancel_event = threading.Event()
        self.progress = None
        self.result = None
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=description or "BackgroundTask", daemon=True)

    def start(self) -> BackgroundTask:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.result = self.function(self._report, self.cancel_event)
        except BaseException as error:  # handed to the GUI thread, which decides how to show it
            self.error = error
        finally:
            self._done.set()

    def _report(self, value) -> None:
        self.progress = value

    def cancel(self) -> None:
        self.cancel_event.set()

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    @property
    def state(self) -> str:
        if not self.finished:
            return RUNNING
        if isinstance(self.error, CancelledError):
            return CANCELLED
        return FAILED if self.error is not None else SUCCEEDED

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the task ends (tests and scripts; never in a GUI callback). True if it ended."""
        return self._done.wait(timeout)

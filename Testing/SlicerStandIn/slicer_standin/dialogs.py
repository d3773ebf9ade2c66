"""Modal dialogs in the stand-in, where nobody is there to answer them.

In Slicer a modal dialog (a message box, a file, input, color or font dialog) waits for the user. On a test
path that is a bug: the GUI's Reload & Test stops until someone clicks, and Slicer's ctest runs into its
time-out. Slicer's ``slicer.util`` skips its own message boxes in testing mode
(``slicer.app.testingEnabled()``), but in the GUI that mode is off, and no other dialog looks at it.

The stand-in has no user, so a dialog that waits for one fails the test instead of blocking it or passing
silently: ``install()`` makes ``QDialog.exec`` (and so every ``QMessageBox``, ``QFileDialog``,
``QInputDialog``, ``ctkMessageBox``...) and the static ``QMessageBox``, ``QFileDialog``, ``QInputDialog``,
``QColorDialog`` and ``QFontDialog`` helpers record the dialog in ``opened`` and raise
``UnattendedDialogError``. A test that means a dialog to open queues its answer with ``answering(...)``.
As in Qt, a save dialog answered with an existing file then asks whether to replace it (a second
dialog) unless its options hold ``DontConfirmOverwrite``.
A plain ``QDialog`` may run: ``slicer.util.delayDisplay`` shows one that closes itself after a delay; if it
is still open after ``AUTO_CLOSE_LIMIT_MSEC`` it is closed and the error raised.

Example::

    from slicer_standin import dialogs
    with dialogs.answering(qt.QMessageBox.Cancel):
        assert not slicer.util.confirmOkCancelDisplay("Remove the model?")   # testing mode off
    dialogs.opened[-1].text   # 'Remove the model?'
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os

from PySide6 import QtCore, QtWidgets

# slicer.util.messageBox shows its testing-mode popup for 3 s; a self-closing dialog gets some margin more.
AUTO_CLOSE_LIMIT_MSEC = 10000

# The static helpers that open a modal dialog and wait, by class.
_STATIC_HELPERS = {
    QtWidgets.QMessageBox: ("about", "aboutQt", "critical", "information", "question", "warning"),
    QtWidgets.QFileDialog: (
        "getExistingDirectory",
        "getExistingDirectoryUrl",
        "getOpenFileName",
        "getOpenFileNames",
        "getOpenFileUrl",
        "getOpenFileUrls",
        "getSaveFileName",
        "getSaveFileUrl",
    ),
    QtWidgets.QInputDialog: ("getDouble", "getInt", "getItem", "getMultiLineText", "getText"),
    QtWidgets.QColorDialog: ("getColor",),
    QtWidgets.QFontDialog: ("getFont",),
}


class UnattendedDialogError(AssertionError):
    """A modal dialog opened with nobody to answer it (an AssertionError, so unittest counts a failure)."""


@dataclasses.dataclass(frozen=True)
class OpenedDialog:
    """What a test can check of a dialog that opened: its class, its title and its text."""

    kind: str
    title: str
    text: str


# Every dialog opened since the stand-in started, oldest first.
opened: list = []
_answers: list = []


@contextlib.contextmanager
def answering(*answers):
    """Answer the next modal dialogs with ``answers``, in order; fails if some were not asked.

    An answer is what the dialog returns: ``exec()``'s result (``qt.QMessageBox.Yes``,
    ``qt.QDialog.Accepted``...) or the static helper's (``("/data/cases.csv", "")`` for
    ``QFileDialog.getOpenFileName``).
    """
    _answers.extend(answers)
    try:
        yield
        if _answers:
            raise UnattendedDialogError(f"{len(_answers)} expected dialog(s) did not open: {_answers}")
    finally:
        _answers.clear()


def _describe(kind, title, text):
    dialog = OpenedDialog(kind, str(title or ""), str(text or ""))
    opened.append(dialog)
    return dialog


def _answerOrFail(dialog):
    if _answers:
        return _answers.pop(0)
    raise UnattendedDialogError(
        f"A modal {dialog.kind} ({dialog.title!r}: {dialog.text!r}) waited for a user: in Slicer it would block"
        " the test (Reload & Test in the GUI, or ctest until its time-out)."
    )


def _guardExec(originalExec):
    @functools.wraps(originalExec)
    def exec_(dialog, *arguments):
        if type(dialog) is QtWidgets.QDialog and not _answers:
            return _runSelfClosing(dialog, originalExec, arguments)
        # Unbound calls: on the stand-in's PythonQt-like wrappers ``dialog.text`` is the property's value.
        text = QtWidgets.QMessageBox.text(dialog) if isinstance(dialog, QtWidgets.QMessageBox) else ""
        return _answerOrFail(_describe(type(dialog).__name__, QtWidgets.QWidget.windowTitle(dialog), text))

    return exec_


def _runSelfClosing(dialog, originalExec, arguments):
    """A plain QDialog (slicer.util.delayDisplay's popup) runs; one that does not close itself fails."""
    expired = []

    def expire():
        expired.append(True)
        dialog.reject()

    watchdog = QtCore.QTimer()
    watchdog.setSingleShot(True)
    watchdog.timeout.connect(expire)
    watchdog.start(AUTO_CLOSE_LIMIT_MSEC)
    try:
        result = originalExec(dialog, *arguments)
    finally:
        watchdog.stop()
    if expired:
        labels = [QtWidgets.QLabel.text(label) for label in dialog.findChildren(QtWidgets.QLabel)]
        _answerOrFail(_describe("QDialog", QtWidgets.QWidget.windowTitle(dialog), " ".join(labels)))
    return result


def _guardStatic(cls, name):
    def helper(*arguments, **keywords):
        strings = [argument for argument in arguments if isinstance(argument, str)]
        title = strings[0] if strings else keywords.get("title", keywords.get("caption", ""))
        text = strings[1] if len(strings) > 1 else keywords.get("text", keywords.get("label", keywords.get("dir", "")))
        answer = _answerOrFail(_describe(f"{cls.__name__}.{name}", title, text))
        if name in _SAVE_HELPERS:
            _confirmOverwrite(answer, keywords.get("options", _optionsAmong(arguments)))
        return answer

    helper.__name__ = name
    return staticmethod(helper)


_SAVE_HELPERS = ("getSaveFileName", "getSaveFileUrl")


def _optionsAmong(arguments):
    return next((argument for argument in arguments if isinstance(argument, QtWidgets.QFileDialog.Option)), 0)


def _confirmOverwrite(answer, options):
    """QFileDialog's save dialog asks before replacing an existing file, unless DontConfirmOverwrite."""
    path = answer[0] if isinstance(answer, tuple) else answer
    path = path.toLocalFile() if isinstance(path, QtCore.QUrl) else path
    dontConfirm = QtWidgets.QFileDialog.Option.DontConfirmOverwrite
    if path and os.path.isfile(path) and not (QtWidgets.QFileDialog.Option(options) & dontConfirm):
        question = f"{os.path.basename(path)} already exists. Do you want to replace it?"
        _answerOrFail(_describe("QMessageBox", "Confirm Save As", question))


def install():
    """Make every modal dialog of the process fail unless answered (idempotent)."""
    if getattr(QtWidgets.QDialog, "_standInGuarded", False):
        return
    guarded = _guardExec(QtWidgets.QDialog.exec)
    QtWidgets.QDialog.exec = guarded
    QtWidgets.QDialog.exec_ = guarded  # PythonQt's name, which Slicer's util uses
    for cls, names in _STATIC_HELPERS.items():
        for name in names:
            if hasattr(cls, name):
                setattr(cls, name, _guardStatic(cls, name))
    QtWidgets.QDialog._standInGuarded = True

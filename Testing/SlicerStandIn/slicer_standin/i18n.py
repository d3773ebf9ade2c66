"""``slicer.i18n``: the translation functions of Slicer's scripted modules (Base/Python/slicer/i18n.py).

``translate(context, text)`` asks the application (``QCoreApplication.translate``); ``tr(text)`` does the same
with the context Slicer derives from the calling file: the file's name without ``.py``, preceded by its package
folder's name when the folder holds an ``__init__.py`` (``DeepSegment`` for DeepSegment/DeepSegment.py). With
no translation loaded, as in the stand-in, both return the text unchanged. Like Slicer, ``tr`` refuses a
translation whose ``{placeholders}`` differ from the source text's (a wrong translation would otherwise make
``.format(...)`` fail) and returns the source text instead.

Example::

    from slicer.i18n import tr as _
    _("{count} models match.").format(count=3)   # '3 models match.'
"""

from __future__ import annotations

import logging
import os
import re
import sys

_CONTEXTS: dict = {}
_PLACEHOLDER = re.compile(r"(?<!\{)\{([^{}]+)\}(?!\})")


def translate(context: str, text: str) -> str:
    """``text`` in the application's language, looked up in ``context`` (what Qt's lupdate extracts)."""
    try:
        from slicer import app
    except ImportError:
        return text
    return app.translate(context, text)


def getContext(sourceFile: str) -> str:
    """The translation context of the Python file ``sourceFile``."""
    if sourceFile not in _CONTEXTS:
        name = os.path.basename(sourceFile)
        if os.path.isfile(sourceFile):
            name = name[: -len(".py")] if name.endswith(".py") else name
            folder = os.path.dirname(sourceFile)
            if os.path.isfile(os.path.join(folder, "__init__.py")):
                name = os.path.basename(folder) + "." + name
        _CONTEXTS[sourceFile] = name
    return _CONTEXTS[sourceFile]


def tr(text: str) -> str:
    """``text`` translated in the context of the calling file (imported as ``_`` by modules)."""
    context = getContext(sys._getframe(1).f_code.co_filename)
    translated = translate(context, text)
    if set(_PLACEHOLDER.findall(text)) != set(_PLACEHOLDER.findall(translated)):
        logging.warning(f"In context '{context}', the translation of '{text}' to '{translated}' is ignored: its"
                        " placeholders differ")
        return text
    return translated

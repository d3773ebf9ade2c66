"""Every text the modules show is translatable, as in Slicer's scripted modules (Slicer 5.4+): a literal set as a
widget's text, tooltip or title, put in a combo box, a table header, a form row, a message box, a file dialog or a
status line goes through ``_()`` (``slicer.i18n.tr``) or ``translate(context, text)``, so that Qt's lupdate can
extract it and the user's language is shown. .ui files are translated by Qt itself.

The check reads the three module files' syntax trees: a string literal with letters (or an f-string) reaching one
of those places without passing through ``_``/``translate`` is reported with its line. Values that are not text
(format codes) are allowed by name below.
"""

from __future__ import annotations

import ast
import os

import pytest

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULE_FILES = ("ModelRegistry/ModelRegistry.py", "TrainingDataExport/TrainingDataExport.py",
                "DeepSegment/DeepSegment.py")

# Properties whose value is shown to the user.
TEXT_PROPERTIES = {"text", "toolTip", "title", "placeholderText", "windowTitle", "statusTip", "whatsThis", "helpText",
                   "acknowledgementText", "description"}
# Methods (by name) and the positions of their arguments that are shown to the user.
TEXT_METHODS = {"setText": (0,), "setToolTip": (0,), "setPlaceholderText": (0,), "setWindowTitle": (0,),
                "setTitle": (0,), "addItem": (0,), "addItems": (0,), "insertItem": (1,), "setItemText": (1,),
                "setHorizontalHeaderLabels": (0,), "setFormat": (0,), "addRow": (0,), "appendPlainText": (0,),
                "setPlainText": (0,), "errorDisplay": (0,), "warningDisplay": (0,), "infoDisplay": (0,),
                "confirmOkCancelDisplay": (0,), "confirmYesNoDisplay": (0,), "tryWithErrorDisplay": (0,),
                "information": (1, 2), "warning": (1, 2), "critical": (1, 2), "question": (1, 2),
                "getOpenFileName": (1, 3), "getSaveFileName": (1, 3), "getExistingDirectory": (1,),
                # the panels' own ways to show a text
                "_showText": (1,), "_showStage": (0,), "_showError": (0,), "confirm": (0,)}
# Literals that are not text: format codes (time.strftime's, QProgressBar's).
NOT_TEXT = {"%H:%M:%S ", " (%p%)"}
TRANSLATORS = {"_", "translate"}


def _untranslated(expression):
    """The string literals (and f-strings) with letters in ``expression`` that no ``_``/``translate`` call wraps."""
    found = []

    def visit(node):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in TRANSLATORS:
            return
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if any(character.isalpha() for character in node.value) and node.value not in NOT_TEXT:
                found.append(node)
            return
        if isinstance(node, ast.JoinedStr):
            if any(isinstance(part, ast.Constant) and any(c.isalpha() for c in part.value) for part in node.values):
                found.append(node)
            return
        if isinstance(node, ast.Call):  # what a call computes is the callee's business; its arguments are not shown
            visit(node.func)
            return
        if isinstance(node, ast.Compare):  # a condition, not a text
            return
        if isinstance(node, ast.IfExp):
            visit(node.body)
            visit(node.orelse)
            return
        if isinstance(node, ast.Subscript):  # a key or index picks the text, and is not shown
            visit(node.value)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(expression)
    return found


def _callName(call):
    function = call.func
    return function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", None)


def untranslated_texts(source, filename="<source>"):
    """(line, code) of every user-visible literal in ``source`` that is not translatable."""
    tree = ast.parse(source, filename)
    problems = []
    testClasses = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name.endswith("Test")]
    skipped = {id(node) for testClass in testClasses for node in ast.walk(testClass)}  # self-tests talk to developers
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        shown = []
        if isinstance(node, ast.Assign):
            if any(isinstance(target, ast.Attribute) and target.attr in TEXT_PROPERTIES for target in node.targets):
                shown.append(node.value)
        elif isinstance(node, ast.Call) and _callName(node) in TEXT_METHODS:
            positions = TEXT_METHODS[_callName(node)]
            shown.extend(node.args[position] for position in positions if position < len(node.args))
            shown.extend(keyword.value for keyword in node.keywords if keyword.arg in ("windowTitle", "text"))
        for expression in shown:
            problems.extend((literal.lineno, ast.get_source_segment(source, literal)) for literal in
                            _untranslated(expression))
    return sorted(set(problems))


@pytest.mark.parametrize("path", MODULE_FILES)
def test_module_texts_are_translatable(path):
    with open(os.path.join(REPOSITORY, path), encoding="utf-8") as file:
        problems = untranslated_texts(file.read(), path)
    assert not problems, f"{path}: texts shown without _() or translate():\n" + "\n".join(
        f"  line {line}: {code}" for line, code in problems)


def test_the_check_finds_untranslated_texts_and_accepts_translated_ones():
    counterExample = '''
label.text = "Done."
button.text = "Cancel" if busy else _("Apply")
combo.addItem(f"Variant {number}", number)
layout.addRow(name + ":", widget)
slicer.util.errorDisplay("Segmentation failed: " + str(error))
_showText(label, f"Autosave failed: {error}")
self.parent.title = "Deep Segment"
'''
    assert [line for line, _code in untranslated_texts(counterExample)] == [2, 3, 4, 6, 7, 8]
    translated = '''
label.text = _("Done.")
button.text = _("Cancel") if busy else _("Apply")
combo.addItem(_("Variant {number}").format(number=number), number)
layout.addRow(_("{input}:").format(input=name), widget)
slicer.util.errorDisplay(_("Segmentation failed: {error}").format(error=error))
self.parent.categories = [translate("qSlicerAbstractCoreModule", "Deep Learning")]
progressBar.setFormat(text.replace("%", "%%") + " (%p%)")
log.appendPlainText(time.strftime("%H:%M:%S ") + text)
label.text = self.logic.statusText(len(models))
'''
    assert untranslated_texts(translated) == []

"""The module's panel on the Slicer stand-in: the cache folder field, and what follows a failed action.

The stand-in's ctkPathLineEdit emits ``currentPathChanged`` per accepted keystroke, as CTK's does, and Slicer's
own ``slicer.util.tryWithErrorDisplay`` raises again after its error display.
"""

from __future__ import annotations

import ctk
import pytest
import qt
import slicer
from PySide6.QtTest import QTest

from ModelRegistry import ModelRegistryLogic, PathChoiceWatcher
from ModelRegistryLib import RegistryError
from ModelRegistryLib.store import CACHE_ENVIRONMENT_VARIABLE


@pytest.fixture
def widget(tmp_path):
    """A panel of its own on a private cache folder, cleaned up as the application does."""
    panel = slicer.modules.modelregistry.createNewWidgetRepresentation()
    panel.self().logic = ModelRegistryLogic(cacheDir=str(tmp_path / "cache"))
    yield panel.self()
    panel.self().cleanup()
    panel.deleteLater()
    slicer.app.processEvents()


def test_typing_a_cache_folder_reads_the_indexes_once_editing_ends(widget, tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_ENVIRONMENT_VARIABLE)  # else the variable wins over the chosen folder
    refreshes = []
    monkeypatch.setattr(widget, "refresh", lambda offline=False: refreshes.append(widget.logic.cacheDir))
    lineEdit = widget.ui.cacheDirectoryPathLineEdit.comboBox().lineEdit()
    chosen = str(tmp_path / "models")
    try:
        lineEdit.selectAll()
        QTest.keyClicks(lineEdit, chosen)  # every keystroke passes the validator: "/", "/t", ...
        assert refreshes == []
        QTest.keyClick(lineEdit, qt.Qt.Key_Return)
        assert refreshes == [chosen]
    finally:
        qt.QSettings().remove(ModelRegistryLogic.CACHE_DIRECTORY_SETTING)


def test_a_source_that_cannot_be_read_is_listed_after_the_error(widget, tmp_path):
    """tryWithErrorDisplay raises again after its dialog: the source list is refreshed all the same."""
    missing = str(tmp_path / "missing" / "index.json")
    widget.ui.sourceLineEdit.text = missing
    with pytest.raises(RegistryError, match="could not be read"):
        widget.onAddSource()
    listed = [widget.ui.sourceList.item(row).text() for row in range(widget.ui.sourceList.count)]
    assert any(text.startswith(missing) and "unavailable" in text for text in listed), listed


def test_a_path_is_chosen_by_return_not_by_highlighting_completions():
    pathLineEdit = ctk.ctkPathLineEdit()
    pathLineEdit.nameFilters = ["Case lists (*.csv)"]
    chosen = []
    PathChoiceWatcher(pathLineEdit, chosen.append)  # the connections keep it alive, as in a panel
    pathLineEdit.show()
    pathLineEdit.activateWindow()
    lineEdit = pathLineEdit.comboBox().lineEdit()
    lineEdit.setFocus()
    qt.QApplication.processEvents()
    completer = lineEdit.completer()
    completer.setModel(qt.QStringListModel(["/data/cases.csv", "/data/cohort.csv"], completer))
    QTest.keyClicks(lineEdit, "/data/c")
    QTest.keyClick(completer.popup(), qt.Qt.Key_Down)
    QTest.keyClick(completer.popup(), qt.Qt.Key_Down)
    assert lineEdit.text == "/data/cohort.csv" and chosen == []  # each highlight set the text and emitted
    QTest.keyClick(completer.popup(), qt.Qt.Key_Return)
    assert chosen == ["/data/cohort.csv"]
    pathLineEdit.currentPath = "/data/cases.csv"  # set in code (or by the browse dialog): chosen at once
    pathLineEdit.currentPath = ""
    assert chosen == ["/data/cohort.csv", "/data/cases.csv", ""]
    lineEdit.clearFocus()
    pathLineEdit.close()

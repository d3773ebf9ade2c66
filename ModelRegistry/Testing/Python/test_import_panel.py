"""Importing the field's models through the ModelRegistry panel: the model is installed, listed with its card, and
what was not verified by the publisher is said in the panel."""

from __future__ import annotations

import io
import zipfile

import qt
from ModelRegistry import ModelRegistryLogic

import slicer
from ModelRegistryLib import Registry
from ModelRegistryLib.registry import imported_source
from ModelRegistryLib.trust import NOT_VERIFIED

LABELS_CSV = (
    "LabelValue,Name,SegmentedPropertyCategoryCodeSequence.CodingSchemeDesignator,"
    "SegmentedPropertyCategoryCodeSequence.CodeValue,SegmentedPropertyCategoryCodeSequence.CodeMeaning,"
    "SegmentedPropertyTypeCodeSequence.CodingSchemeDesignator,SegmentedPropertyTypeCodeSequence.CodeValue,"
    "SegmentedPropertyTypeCodeSequence.CodeMeaning\n"
    "1,aorta,SCT,123037004,Anatomical Structure,SCT,15825003,Aorta\n"
)


def auto3dseg_archive(path) -> str:
    """A SlicerMONAIAuto3DSeg archive as far as importing reads it (model.pt is not opened before it runs)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("aorta/model.pt", b"weights")
        archive.writestr("aorta/labels.csv", LABELS_CSV)
    path.write_bytes(buffer.getvalue())
    return str(path)


def wait_for(widget) -> None:
    deadline = qt.QTime.currentTime().addSecs(30)
    while widget.poller.busy and qt.QTime.currentTime() < deadline:
        slicer.app.processEvents()
        qt.QThread.msleep(20)
    assert not widget.poller.busy, "the task did not finish in 30 s"


def test_an_archive_imported_in_the_panel_is_listed_with_its_card(tmp_path):
    archive = auto3dseg_archive(tmp_path / "aorta-v1.1.0.zip")
    widget = slicer.modules.modelregistry.widgetRepresentation().self()
    original = widget.logic
    widget.logic = ModelRegistryLogic(cacheDir=str(tmp_path / "cache"))
    try:
        widget.refresh(offline=True)
        widget.ui.sourceLineEdit.text = archive
        widget.ui.importButton.click()
        wait_for(widget)
        assert "Importing aorta-v1.1.0.zip: done" in widget.ui.progressLabel.text
        assert widget.selectModel("aorta")
        card = widget.ui.cardBrowser.toPlainText()
        assert "aorta" in card and "MONAI Auto3DSeg" in card
        sources = [widget.ui.sourceList.item(row).text() for row in range(widget.ui.sourceList.count)]
        assert sources[-1] == "Imported models: 1 models"
        rows = {widget.ui.modelTable.item(row, 0).text(): widget.ui.modelTable.item(row, 4).text()
                for row in range(widget.ui.modelTable.rowCount)}
        assert rows["aorta"] == "installed"
    finally:
        widget.logic = original
        widget.refresh(offline=True)
    # The command line, the console and another Slicer session see the same imported models.
    registry = Registry([], str(tmp_path / "cache"))
    registry.refresh(offline=True)
    assert [model.id for model in registry.models()] == ["aorta"]
    assert registry.statuses[-1].source == imported_source(str(tmp_path / "cache"))


def test_what_was_not_verified_is_said_when_the_install_ends(tmp_path):
    auto3dseg_archive(tmp_path / "liver-v1.0.0.zip")
    index = tmp_path / "index.json"
    index.write_text('{"schemaVersion": 1, "models": [{"id": "liver", "title": "Liver", "versions": [{"version": '
                     '"1.0.0", "runtime": "auto3dseg", "files": [{"url": "liver-v1.0.0.zip"}]}]}]}', encoding="utf-8")
    widget = slicer.modules.modelregistry.widgetRepresentation().self()
    original = widget.logic
    widget.logic = ModelRegistryLogic(cacheDir=str(tmp_path / "cache"))
    try:
        widget.logic.addSource(str(index))
        widget.refresh(offline=True)
        assert widget.selectModel("liver") and NOT_VERIFIED in widget.ui.cardBrowser.toPlainText()
        widget.ui.installButton.click()
        wait_for(widget)
        outcome = widget.ui.progressLabel.text
        assert outcome.startswith("Installing liver 1.0.0: done"), outcome
        assert f"Warning: liver-v1.0.0.zip: {NOT_VERIFIED}" in outcome
    finally:
        widget.logic = original
        widget.refresh(offline=True)

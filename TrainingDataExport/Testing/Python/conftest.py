"""Fixtures shared by TrainingDataExport's panel tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def widget():
    """A panel of its own (with its own logic), cleaned up as the application does."""
    import slicer  # here, not at the top: the Lib tests beside it also run where there is no slicer (Python 3.9)

    panel = slicer.modules.trainingdataexport.createNewWidgetRepresentation()
    yield panel.self()
    panel.self().logic.closeCase()
    panel.self().cleanup()
    panel.deleteLater()
    slicer.app.processEvents()

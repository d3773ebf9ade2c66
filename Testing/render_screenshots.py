"""Render every module panel offscreen to ``<output>/<Module>.png`` (``make screenshots``).

The panels run in the Slicer stand-in on a scene holding one synthetic T1-like volume, with an empty
model cache, so that the pictures in the README and the extension index show panels as a new user sees
them after loading data (entering a panel pre-fills its inputs).

Usage: python Testing/render_screenshots.py OUTPUT_FOLDER
"""

from __future__ import annotations

import os
import sys
import tempfile

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The height every panel must fit in (the test checks it): DeepSegment's, with its collapsed Live and Evaluate
# sections, needs some 640 px in the stand-in, TrainingDataExport's with its Augmentation preview some 595 px.
PANEL_SIZE = (480, 660)


def _add_sample_volume():
    """An ellipsoidal 'head' with a brighter inner ellipsoid, tilted 12 degrees, 1 x 1 x 1.5 mm voxels."""
    import numpy as np

    import slicer

    k, j, i = np.mgrid[0:80, 0:120, 0:100]
    outer = ((i - 50) / 45) ** 2 + ((j - 60) / 55) ** 2 + ((k - 40) / 36) ** 2 <= 1
    inner = ((i - 50) / 32) ** 2 + ((j - 60) / 40) ** 2 + ((k - 40) / 24) ** 2 <= 1
    voxels = (outer * 300 + inner * 400 + np.random.default_rng(1).normal(0, 20, outer.shape)).astype(np.int16)
    angle = np.radians(12)
    ijkToRAS = np.eye(4)
    ijkToRAS[:3, :3] = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    ijkToRAS[:3, :3] = ijkToRAS[:3, :3] @ np.diag([1.0, 1.0, 1.5])
    ijkToRAS[:3, 3] = [-50.0, -60.0, -60.0]
    return slicer.util.addVolumeFromArray(voxels, ijkToRAS=ijkToRAS, name="T1 head (synthetic)")


def render_panels(output_directory: str) -> list:
    """Save a PNG of each module's panel; returns the paths written."""
    sys.path.insert(0, os.path.join(REPOSITORY, "Testing", "SlicerStandIn"))
    # Panels show the models as a new user sees them, whatever this machine has installed.
    os.environ.setdefault("SLICER_DEEPLEARNING_CACHE_DIR", tempfile.mkdtemp(prefix="SlicerDeepLearning-screenshots-"))
    import slicer_standin

    app = slicer_standin.boot()
    modules = slicer_standin.load_modules(slicer_standin.extension_module_paths(REPOSITORY))
    _add_sample_volume()
    os.makedirs(output_directory, exist_ok=True)
    written = []
    for module in modules:
        panel = module.widgetRepresentation()
        # Slicer shows a panel in a scroll area: it is drawn whole, however tall its sections make it.
        hint = panel.minimumSizeHint
        panel.resize(max(PANEL_SIZE[0], hint.width()), max(PANEL_SIZE[1], hint.height()))
        panel.show()
        panel.enter()
        app.processEvents()
        path = os.path.join(output_directory, module.name + ".png")
        if not panel.grab().save(path):
            raise OSError(f"Could not write {path}")
        panel.exit()
        panel.hide()
        written.append(path)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    for written_path in render_panels(sys.argv[1]):
        print(written_path)

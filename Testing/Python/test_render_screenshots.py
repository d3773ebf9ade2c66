"""``make screenshots``: every module panel renders offscreen to a non-blank PNG."""

from __future__ import annotations

import importlib.util
import os

import qt

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_script():
    path = os.path.join(REPOSITORY, "Testing", "render_screenshots.py")
    spec = importlib.util.spec_from_file_location("render_screenshots", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_each_panel_renders_to_a_png(tmp_path):
    script = load_script()
    written = script.render_panels(str(tmp_path))
    names = sorted(os.path.basename(path) for path in written)
    assert names == sorted(name + ".png" for name in ("ModelRegistry", "DeepSegment", "TrainingDataExport"))
    for path in written:
        image = qt.QImage(path)
        # A panel is never drawn smaller than its widgets need.
        assert image.width() >= script.PANEL_SIZE[0] and image.height() >= script.PANEL_SIZE[1]
        # A blank grab is one color; a rendered panel has text, frames and buttons.
        colors = {image.pixel(x, y) for x in range(0, image.width(), 7) for y in range(0, image.height(), 7)}
        assert len(colors) > 5, f"{path} looks blank"

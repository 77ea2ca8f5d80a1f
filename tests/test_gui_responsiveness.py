"""What keeps the window responsive while a batch runs (benchmarks/bench_gui_stall.py measures
the stalls themselves; these check the pieces, on real images)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before pytest-qt makes the QApplication

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PIL import Image
from PySide6.QtGui import QImage

from desktop.engine.loading import make_thumbnail
from desktop.engine.results import THUMBNAIL_SIZE
from desktop.gui.results_model import THUMB_HEIGHT, icon_pixmap

pytestmark = pytest.mark.gui

DATA = Path(__file__).parent / "data"


def _real_thumbnail(name: str) -> tuple[bytes, np.ndarray]:
    path = next(DATA.rglob(name))
    with Image.open(path) as image:
        grey = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    return make_thumbnail(grey, THUMBNAIL_SIZE), grey


def test_icons_are_decoded_at_icon_size_and_look_like_the_scan(qapp):
    """The table decodes the stored 384-px JPEG straight at 48 px (DCT scaling): the icon has
    the scan's aspect and content, not a full-size decode rescaled on the GUI thread."""
    data, grey = _real_thumbnail("*.png")
    pixmap = icon_pixmap(data, THUMB_HEIGHT)
    assert pixmap is not None and pixmap.height() == THUMB_HEIGHT
    height, width = grey.shape
    assert abs(pixmap.width() - width * THUMB_HEIGHT / height) <= 1
    icon = pixmap.toImage().convertToFormat(QImage.Format.Format_Grayscale8)
    shown = np.frombuffer(icon.constBits(), np.uint8, icon.sizeInBytes())
    shown = shown.reshape(icon.height(), icon.bytesPerLine())[:, : icon.width()] / 255.0
    small = Image.fromarray((grey * 255).astype(np.uint8)).resize(
        (icon.width(), icon.height()), Image.Resampling.BOX
    )
    expected = np.asarray(small, dtype=np.float64) / 255.0
    assert np.abs(shown - expected).mean() < 0.04  # JPEG and two resamplings apart


def test_bytes_that_are_no_image_give_no_icon(qapp):
    assert icon_pixmap(b"not an image at all", THUMB_HEIGHT) is None


def test_the_window_process_favours_the_gui_thread(qapp, monkeypatch):
    """0.5 ms GIL switch interval and no Qt GUI thread pool (see desktop/gui/app.py)."""
    from desktop.gui.app import GUI_SWITCH_INTERVAL, create_app

    before = sys.getswitchinterval()
    monkeypatch.delenv("QT_NO_GUI_THREADPOOL", raising=False)
    try:
        assert create_app() is qapp
        assert sys.getswitchinterval() == pytest.approx(GUI_SWITCH_INTERVAL)
        assert GUI_SWITCH_INTERVAL <= 0.001
        assert os.environ["QT_NO_GUI_THREADPOOL"] == "1"
    finally:
        sys.setswitchinterval(before)

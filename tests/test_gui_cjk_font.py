"""A Chinese, Japanese or Korean file name in the window (found dropping a folder with
"pneu 肺炎.jpeg" under Xvfb): with only DejaVu installed (all the Linux package needs) every
CJK character was drawn as the same empty box. The app offers Qt the bundled fallback font."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

#: In a fresh process (create_app makes the QApplication there): each glyph's pixels, drawn
#: in the window's default font, as hex.
_DRAW = """
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QFont, QImage, QPainter
from desktop.gui.app import create_app
app = create_app(["medscreen-test"])
for text in (" ", "肺", "炎"):
    image = QImage(40, 40, QImage.Format.Format_Grayscale8)
    image.fill(QColor("white"))
    painter = QPainter(image)
    painter.setFont(QFont(QFont().family(), 20))
    painter.setPen(QColor("black"))
    painter.drawText(image.rect(), Qt.AlignmentFlag.AlignCenter, text)
    painter.end()
    print(bytes(image.constBits()).hex())
"""


@pytest.mark.gui
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the font is added on Linux")
def test_cjk_characters_are_drawn_as_themselves_not_boxes():
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    out = subprocess.run(
        [sys.executable, "-c", _DRAW], cwd=REPO, env=env, capture_output=True, text=True,
        check=True, timeout=120,
    )  # fmt: skip
    blank, lung, fire = out.stdout.split()
    assert lung != blank and fire != blank  # something is drawn ...
    assert lung != fire  # ... and it is two glyphs, not one missing-glyph box twice

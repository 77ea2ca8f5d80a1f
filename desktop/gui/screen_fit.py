"""Keeping a window inside the screen it opens on, at any display scaling.

A 1280×800 window is larger than a 1366×768 screen at 150 % (911×512 logical pixels): without
this it opens with its bottom and right edges off screen, where no one can reach them.
"""

from __future__ import annotations

from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QWidget


def fit_to_screen(widget: QWidget, min_width: int = 320, min_height: int = 240) -> None:
    """Shrink ``widget`` to the available area of its screen and move it fully onto it.

    The frame (title bar, borders) counts once the window has been shown; before that its
    size is not known and only the client area is fitted, so callers run this again when
    the window is first shown.
    """
    screen = widget.screen() or QGuiApplication.primaryScreen()
    if screen is None:
        return
    area = screen.availableGeometry()
    frame = widget.frameGeometry().size() - widget.geometry().size()
    width = min(widget.width(), max(min_width, area.width() - frame.width()))
    height = min(widget.height(), max(min_height, area.height() - frame.height()))
    if (width, height) != (widget.width(), widget.height()):
        widget.resize(width, height)
    if not area.contains(widget.frameGeometry()):
        x = min(max(widget.x(), area.left()), area.right() - width - frame.width() + 1)
        y = min(max(widget.y(), area.top()), area.bottom() - height - frame.height() + 1)
        widget.move(max(area.left(), x), max(area.top(), y))

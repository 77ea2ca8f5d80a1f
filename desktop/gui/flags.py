"""The flag mark: text plus a drawn shape, so a flag never depends on colour alone.

In the results table a flagged score shows one mark, a small pennant icon, with the word
"flagged" (its tooltip and accessible text name the model and the operating point); an
unflagged one an em dash. The viewer, which draws no icon, writes "⚑ TB". The pennant is
drawn (not an image file) so it is sharp at any device pixel ratio, and it has an outline in
the palette's text colour so it stays visible in light and dark themes; its fill is the only
hard-coded colour in the app, and nothing relies on it.
"""

from __future__ import annotations

from functools import cache

from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import QColor, QGuiApplication, QIcon, QPainter, QPainterPath, QPen, QPixmap

FLAG_FILL = QColor(214, 69, 65)
NOT_FLAGGED_TEXT = "—"
FLAGGED_TEXT = "flagged"  # beside the pennant in the table: the model is in the column header


def flag_text(short_name: str) -> str:
    return f"⚑ {short_name}"


def flag_icon(size: int = 16) -> QIcon:
    return QIcon(flag_pixmap(size))


def flag_pixmap(size: int = 16) -> QPixmap:
    """A pennant on a pole, drawn for the current palette and screen scale.

    Item views draw a QPixmap decoration at its own (device-independent) size, whereas a
    QIcon is scaled up to the view's icon size — which is thumbnail-sized in the results table.
    Drawn once per palette text colour: after a switch between light and dark themes the
    outline follows the new palette.
    """
    app = QGuiApplication.instance()
    ratio = app.devicePixelRatio() if isinstance(app, QGuiApplication) else 1.0
    text = QGuiApplication.palette().windowText().color() if app else QColor("black")
    return _flag_pixmap(size, ratio, text.rgba())


@cache
def _flag_pixmap(size: int, ratio: float, text_rgba: int) -> QPixmap:
    pixmap = QPixmap(int(size * ratio), int(size * ratio))
    pixmap.setDevicePixelRatio(ratio)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    text = QColor.fromRgba(text_rgba)
    pole = QPen(text, max(1.0, size / 10))
    painter.setPen(pole)
    painter.drawLine(QPointF(size * 0.22, size * 0.1), QPointF(size * 0.22, size * 0.92))
    path = QPainterPath(QPointF(size * 0.25, size * 0.12))
    path.lineTo(QPointF(size * 0.9, size * 0.32))
    path.lineTo(QPointF(size * 0.25, size * 0.55))
    path.closeSubpath()
    painter.setPen(QPen(text, max(1.0, size / 16)))
    painter.setBrush(FLAG_FILL)
    painter.drawPath(path)
    painter.end()
    return pixmap

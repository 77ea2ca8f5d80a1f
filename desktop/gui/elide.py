"""Text that must be read, not guessed: cells elided at a word, and the warning mark.

Qt elides a cell character by character ("⚠ TB: adults o…nly"), which cuts words and, in a
warning, meaning. :class:`WordElideDelegate` ends a text that does not fit at the last whole
word that does, with "…"; the whole text stays in the tooltip. The warning mark is the
style's own warning icon, so it follows the platform and the theme.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

from PySide6.QtCore import QModelIndex, QPersistentModelIndex
from PySide6.QtGui import QPainter, QPaintEvent, QPixmap
from PySide6.QtWidgets import (
    QApplication,
    QLabel,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
)

ELLIPSIS = "…"


def elide_words(text: str, width_of: Callable[[str], int], available: int) -> str:
    """``text`` if it fits in ``available`` (as measured by ``width_of``), else its longest
    prefix of whole words that fits with "…" after it (just "…" when not even a word fits)."""
    if width_of(text) <= available:
        return text
    words = text.split(" ")
    best = ""
    line = ""
    for word in words:
        line = f"{line} {word}" if line else word
        candidate = line.rstrip(" ,;:") + ELLIPSIS
        if width_of(candidate) > available:
            break
        best = candidate
    return best or ELLIPSIS


class WordElideDelegate(QStyledItemDelegate):
    """Draws a cell's text cut at a word boundary when it is too long for the column."""

    def initStyleOption(
        self, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex
    ) -> None:
        super().initStyleOption(option, index)
        text = option.text  # type: ignore[attr-defined]
        if not text:
            return
        style = option.widget.style() if option.widget else QApplication.style()  # type: ignore[attr-defined]
        margin = style.pixelMetric(QStyle.PixelMetric.PM_FocusFrameHMargin) + 1
        available = option.rect.width() - 2 * margin - 2  # type: ignore[attr-defined]
        if not option.icon.isNull():  # type: ignore[attr-defined]
            available -= option.decorationSize.width() + 2 * margin  # type: ignore[attr-defined]
        metrics = option.fontMetrics  # type: ignore[attr-defined]
        option.text = elide_words(text, metrics.horizontalAdvance, max(0, available))  # type: ignore[attr-defined]


class WordElidedLabel(QLabel):
    """A one-line label that, when too narrow, shows its text cut at a whole word with "…"
    (:func:`elide_words`, as the table's cells): a plain QLabel clipped the thresholds line
    mid-word ("Pneumonia: adul") with nothing to say it went on (the thresholds line; the
    status bar's models line). ``text()`` stays whole."""

    def shown_text(self) -> str:
        """What is drawn at the label's present width."""
        available = self.contentsRect().width()
        return elide_words(self.text(), self.fontMetrics().horizontalAdvance, max(0, available))

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        self.style().drawItemText(painter, self.contentsRect(), int(self.alignment()),
                                  self.palette(), self.isEnabled(), self.shown_text(),
                                  self.foregroundRole())  # fmt: skip


@cache
def warning_pixmap(size: int = 16) -> QPixmap:
    """The style's warning icon at ``size`` (a pixmap: views draw it at its own size)."""
    icon = QApplication.style().standardIcon(QStyle.StandardPixmap.SP_MessageBoxWarning)
    return icon.pixmap(size, size)

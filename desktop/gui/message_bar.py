"""A message strip at the top of the window: visible, non-blocking, with an optional action.

Used for what a nurse must notice but need not stop for: a dropped file that is not a scan,
an interrupted batch that can be resumed, a finished export. A modal dialog would stop the
work (and a test); a status-bar line is too easy to miss.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QStyle,
    QToolButton,
    QWidget,
)

_ICONS = {
    "info": QStyle.StandardPixmap.SP_MessageBoxInformation,
    "warning": QStyle.StandardPixmap.SP_MessageBoxWarning,
    "error": QStyle.StandardPixmap.SP_MessageBoxCritical,
}


class MessageBar(QFrame):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setAutoFillBackground(True)
        self.setBackgroundRole(self.palette().ColorRole.ToolTipBase)
        self.setForegroundRole(self.palette().ColorRole.ToolTipText)
        self.icon = QLabel(self)
        self.text = QLabel(self)
        self.text.setWordWrap(True)
        self.text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.text.setForegroundRole(self.palette().ColorRole.ToolTipText)
        self.action = QPushButton(self)
        self.action.setVisible(False)
        close = QToolButton(self)
        close.setIcon(self.style().standardIcon(QStyle.StandardPixmap.SP_TitleBarCloseButton))
        close.setToolTip("Dismiss")
        close.setAutoRaise(True)
        close.clicked.connect(self.hide)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(8, 4, 4, 4)
        layout.addWidget(self.icon)
        layout.addWidget(self.text, 1)
        layout.addWidget(self.action)
        layout.addWidget(close)
        self._callback: Callable[[], None] | None = None
        self.action.clicked.connect(self._run_action)
        self.hide()

    def show_message(
        self,
        text: str,
        kind: str = "info",
        action: str | None = None,
        callback: Callable[[], None] | None = None,
    ) -> None:
        size = self.style().pixelMetric(QStyle.PixelMetric.PM_SmallIconSize)
        icon = self.style().standardIcon(_ICONS.get(kind, _ICONS["info"]))
        self.icon.setPixmap(icon.pixmap(size, size))
        self.text.setText(text)
        self._callback = callback
        self.action.setVisible(bool(action and callback))
        self.action.setText(action or "")
        self.show()

    def message(self) -> str:
        return self.text.text() if self.isVisible() else ""

    def _run_action(self) -> None:
        callback = self._callback
        self.hide()
        if callback is not None:
            callback()

"""The running batch: progress (done/total), scans per second, time left, and Cancel."""

from __future__ import annotations

import time

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QStyle,
    QWidget,
)


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "estimating time left…"
    if seconds < 60:
        return f"{max(1, round(seconds))} s left"
    if seconds < 3600:
        return f"{round(seconds / 60)} min left"
    return f"{seconds / 3600:.1f} h left"


MIN_UPDATE_INTERVAL_S = 0.25


class BatchBar(QWidget):
    cancel_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.progress = QProgressBar(self)
        self.progress.setFormat("%v / %m")
        self.progress.setMinimumWidth(240)
        self.rate = QLabel(self)
        # Fixed sizes: text changing width would re-lay out the window several times a second.
        self.rate.setMinimumWidth(
            self.fontMetrics().horizontalAdvance("00000 / 00000 · 000.0 scans/s · 00 min left") + 8
        )
        self.current = QLabel(self)
        self.current.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.current.setForegroundRole(self.palette().ColorRole.PlaceholderText)
        self.cancel = QPushButton(
            self.style().standardIcon(QStyle.StandardPixmap.SP_DialogCancelButton),
            "Cancel (Esc)",
            self,
        )
        self.cancel.setToolTip("Stop after the scans in progress; finished scans are kept")
        self.cancel.clicked.connect(self.cancel_requested)
        self._last_update = 0.0
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.progress, 2)
        layout.addWidget(self.rate)
        layout.addWidget(self.current, 1)
        layout.addWidget(self.cancel)
        self.hide()

    def start(self, text: str = "Finding scans…") -> None:
        self._last_update = 0.0
        self.progress.setRange(0, 0)  # busy until the total is known
        self.rate.setText(text)
        self.current.setText("")
        self.cancel.setEnabled(True)
        self.cancel.setText("Cancel (Esc)")
        self.show()

    def update_progress(
        self, done: int, total: int, rate: float, eta_s: float | None, current: str
    ) -> None:
        """Show the newest figures, at most a few times a second.

        Every Qt call from Python has to win the interpreter lock back from the screening
        threads; a progress bar that changes 4 times a second reads as smooth and leaves the
        event loop free for what the user does.
        """
        now = time.monotonic()
        if done < total and now - self._last_update < MIN_UPDATE_INTERVAL_S:
            return
        self._last_update = now
        if self.progress.maximum() != max(total, 1):
            self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        rate_text = f"{rate:.1f} scans/s" if rate > 0 else "starting…"
        self.rate.setText(f"{done} / {total} · {rate_text} · {format_eta(eta_s)}")
        self.current.setText(current)

    def cancelling(self) -> None:
        self.cancel.setEnabled(False)
        self.cancel.setText("Stopping…")

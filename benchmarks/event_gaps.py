"""How long a Qt event loop went without a turn: a 10 ms timer's largest gap.

The GUI benchmarks (``bench_gui_memory.py``, ``bench_table_sort.py``) measure what a user
feels as a frozen window the same way: a timer due every 10 ms runs while an action and what
it queued run on the GUI thread; every interval between two of its ticks is a gap, and the
call itself counts as one. One definition, so their figures compare.
"""

from __future__ import annotations

import time
from types import TracebackType


class EventLoopGaps:
    """``with EventLoopGaps(app) as gaps: ...`` then :attr:`longest` (seconds)."""

    def __init__(self, app: object) -> None:
        from PySide6.QtCore import QTimer

        self._app = app
        self.gaps: list[float] = []
        self._last = time.perf_counter()
        self._timer = QTimer()
        self._timer.setInterval(10)
        self._timer.timeout.connect(self.tick)

    def __enter__(self) -> EventLoopGaps:
        self._timer.start()
        self._app.processEvents()  # type: ignore[attr-defined]
        self.restart()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._timer.stop()

    def restart(self) -> float:
        """Start the next gap now (before the action); returns the time."""
        self._last = time.perf_counter()
        return self._last

    def tick(self) -> None:
        """End a gap: the timer's tick, or the end of a call that held the loop."""
        now = time.perf_counter()
        self.gaps.append(now - self._last)
        self._last = now

    def settle(self, seconds: float = 0.05) -> None:
        """Turn the loop ``seconds`` more (what the action queued: a relayout, a repaint)."""
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            self._app.processEvents()  # type: ignore[attr-defined]
        self.tick()

    @property
    def longest(self) -> float:
        return max(self.gaps)

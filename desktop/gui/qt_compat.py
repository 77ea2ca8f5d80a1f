"""Work-arounds for defects in the Qt binding, each detected at run time, never assumed.

``SignalInstance.emit()`` in PySide6 6.12 (seen with CPython 3.11) returns ``True`` without
taking a reference to it, so every emit from Python drops the interpreter's count of ``True``
by one. CPython 3.12+ makes ``True`` immortal and nothing happens; on 3.11 the count reaches
zero after a few thousand emits and the process aborts with "Fatal Python error: bool_dealloc"
— a 2,000-scan batch (one signal per scan) or a few minutes of progress updates is enough.
:func:`emit` gives the missing reference back, but only when a probe at first use shows the
binding really leaks, so a fixed PySide needs no change here.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from typing import Any

from PySide6.QtCore import QObject, Signal

log = logging.getLogger(__name__)

PROBE_EMITS = 64


class _Probe(QObject):
    ping = Signal()


def _incref(obj: object, times: int = 1) -> None:
    for _ in range(times):
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))


PROBE_ROUNDS = 5


def _emit_leaks_true() -> bool:
    """Emit a few times and watch True's reference count (once, at import).

    Other threads may already be running when this module is first imported (a batch, or the
    test suite's earlier tests), and they move True's count too. One round's delta can then
    hide the leak, and a missed leak brings the process down later — in any thread that
    touches True. So the verdict is the median of several rounds, and the reference given back
    is exactly what the probe's own emits took, not a measured difference.
    """
    probe = _Probe()
    losses = []
    for _ in range(PROBE_ROUNDS):
        before = sys.getrefcount(True)
        for _ in range(PROBE_EMITS):
            probe.ping.emit()
        losses.append(before - sys.getrefcount(True))
    if sorted(losses)[PROBE_ROUNDS // 2] >= PROBE_EMITS // 2:
        _incref(True, PROBE_ROUNDS * PROBE_EMITS)  # give back what the probe itself took
        log.info("this PySide drops a reference to True on every emit(); compensating")
        return True
    return False


LEAKS_TRUE_ON_EMIT = _emit_leaks_true()


def emit(signal: Any, *args: Any) -> None:
    """``signal.emit(*args)``, safe against the binding's missing reference on the result."""
    result = signal.emit(*args)
    if LEAKS_TRUE_ON_EMIT and isinstance(result, bool):
        _incref(result)

"""The one path for Qt signal emits, and the start-up check for a known-bad Qt binding.

PySide6 6.12.0 returns ``True`` from ``SignalInstance.emit()`` and ``.disconnect()`` without
taking a reference to it, so every such call made from Python drops the interpreter's count
of ``True`` by one (measured: exactly one per call, for every signature, thread and
connection type; 6.8.3, 6.9.3, 6.10.3 and 6.11.3 lose nothing). CPython 3.12+ makes ``True``
immortal; on 3.11 the count reaches zero after a few thousand calls and the process aborts
("Fatal Python error: bool_dealloc") in whichever thread touches ``True`` next — a worker
parsing JSON, say. An earlier version of this module gave a reference back after each emit,
decided by a probe at first import, but ``disconnect()`` (which pytest-qt calls after every
``waitSignal``) was not covered and the probe could be fooled by other threads. The binding
is now pinned below 6.12 (pyproject.toml) and :func:`binding_problem` makes the window refuse
to start, with a clear message, on a binding that still does it.

GUI code emits through :func:`emit` so that a future binding defect has one place to be
worked around.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any

import PySide6
from PySide6.QtCore import QObject, Signal

#: Calls per kind in :func:`true_references_lost`: enough that a leak of one per call
#: stands out from anything else moving ``True``'s count.
PROBE_CALLS = 64


class _Probe(QObject):
    ping = Signal()


def emit(signal: Any, *args: Any) -> None:
    """``signal.emit(*args)``: every emit of the GUI goes through here (see the module doc)."""
    signal.emit(*args)


def true_references_lost() -> dict[str, int]:
    """References to ``True`` each of ``emit()`` and ``disconnect()`` drops in
    :data:`PROBE_CALLS` calls (0 for a sound binding).

    Run it where no other Python thread is running (start-up, or a test): other threads move
    ``True``'s count too. What the calls took is given back, so probing a bad binding does
    not itself bring the process down at exit.
    """
    probe = _Probe()
    lost: dict[str, int] = {}

    def slot() -> None:
        pass

    for name, call in (
        ("emit", probe.ping.emit),
        ("disconnect", lambda: (probe.ping.connect(slot), probe.ping.disconnect(slot))),
    ):
        before = sys.getrefcount(True)
        for _ in range(PROBE_CALLS):
            call()
        lost[name] = before - sys.getrefcount(True)
        for _ in range(max(0, lost[name])):
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(True))
    return lost


def binding_problem() -> str | None:
    """Why this Qt binding cannot run MedScreen, or None when it can."""
    if sys.version_info >= (3, 12):
        return None  # True is immortal: a lost reference to it harms nothing
    lost = true_references_lost()
    leaking = [name for name, count in lost.items() if count >= PROBE_CALLS // 2]
    if not leaking:
        return None
    return (
        f"PySide6 {PySide6.__version__} loses a reference to True on every "
        f"{' and '.join(f'{name}()' for name in leaking)} call, which crashes Python "
        f"{sys.version_info.major}.{sys.version_info.minor} after a few thousand signals. "
        "Install the PySide6-Essentials version MedScreen is built with "
        '(pip install "pyside6-essentials<6.12") or use the installed MedScreen package.'
    )

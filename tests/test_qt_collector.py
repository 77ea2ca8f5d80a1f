"""Qt tests run with Python's cyclic collector paused, and collect when they end.

The collector destroys the Qt objects it frees (a parentless widget held in a reference
cycle, with its children) wherever an allocation triggers it: inside Qt's delivery of an
event to that widget, or in a worker thread while the GUI thread runs the event loop.
Collecting from an application event filter while a dropped cyclic widget still had posted
events crashed in ``QApplicationPrivate::notify_helper`` every time (gdb); one full-suite run
ended in a segmentation fault with the GUI thread in Qt's event loop and the batch reader
thread in ``pickle.loads``. tests/conftest.py therefore pauses the collector for every test
that makes Qt objects and collects on the main thread when the test ends.
"""

from __future__ import annotations

import gc
import os
import weakref

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

pytest.importorskip("pytestqt")

import shiboken6
from PySide6.QtWidgets import QLabel, QWidget

from tests.conftest import collector_paused

pytestmark = pytest.mark.gui


class _Cyclic(QWidget):
    """A parentless widget that refers to itself: only the cyclic collector frees it."""

    def __init__(self) -> None:
        super().__init__()
        self.label = QLabel("child", self)
        self.me = self


def _dropped_cyclic_widget() -> weakref.ref[_Cyclic]:
    widget = _Cyclic()
    widget.label.adjustSize()  # posts events to the pair, as a test's widget has
    return weakref.ref(widget)


def _allocate() -> int:
    """Allocations enough to cross the collector's first threshold many times over."""
    return len([[] for _ in range(50 * max(gc.get_threshold()[0], 1))])


def test_a_dropped_cyclic_widget_outlives_allocations_during_a_qt_test(qtbot) -> None:
    """Inside a Qt test the collector is off: allocations do not destroy a dropped widget
    held in a cycle (with the collector on, the first allocations past the threshold do)."""
    assert not gc.isenabled()
    dropped = _dropped_cyclic_widget()
    _allocate()
    widget = dropped()
    assert widget is not None and shiboken6.isValid(widget) and shiboken6.isValid(widget.label)


def test_paused_collection_frees_the_cycle_on_the_way_out_and_restores_the_collector(
    qtbot,
) -> None:
    """``collector_paused``: nothing is collected inside; on the way out the dropped widget
    is destroyed (here, in this thread) and the collector is on again if it was before."""
    gc.enable()  # as outside a Qt test
    try:
        with collector_paused():
            assert not gc.isenabled()
            dropped = _dropped_cyclic_widget()
            _allocate()
            assert dropped() is not None
        assert dropped() is None
        assert gc.isenabled()
    finally:
        gc.disable()  # as this test's own pause left it


def test_a_finished_worker_is_freed_on_the_gui_thread_without_the_collector(qtbot) -> None:
    """A worker whose thread has ended is freed by reference counting a turn of the event
    loop later, on the GUI thread, its slots that captured it included: it held a cycle
    (its signal object held its bound method), so only the cyclic collector freed it,
    wherever that ran. (The collector is off here.)"""
    import threading

    from desktop.gui.workers import Worker

    def finished_worker(capturing: bool) -> tuple[weakref.ref[Worker], list[str], list[int]]:
        worker = Worker(lambda: 42, name="medscreen-probe")
        returned: list[int] = []
        freed_in: list[str] = []
        worker.returned.connect(returned.append)
        if capturing:  # as MainWindow._keep and the viewer connect theirs
            worker.finished.connect(lambda w=worker: returned.append(len(w.signals.objectName())))
        worker.signals.destroyed.connect(
            lambda *_: freed_in.append(threading.current_thread().name)
        )
        with qtbot.waitSignal(worker.finished, timeout=10_000):
            worker.start()
        return weakref.ref(worker), freed_in, returned

    for capturing in (False, True):
        dropped, freed_in, returned = finished_worker(capturing)
        qtbot.waitUntil(lambda d=dropped: d() is None, timeout=5_000)
        assert freed_in == [threading.main_thread().name]
        assert returned[0] == 42
    never_started = weakref.ref(Worker(lambda: 42, name="medscreen-probe"))
    assert never_started() is None  # freed where it was dropped

"""Worker threads for long engine work, after superqt's ``thread_worker`` design.

A worker is a QObject moved to its own QThread. It runs a plain function, or drains a
generator, and reports through signals that Qt queues onto the GUI thread:

``started`` → ``yielded(object)``… → ``returned(object)`` | ``errored(WorkerError)`` |
``aborted`` → ``finished``.

``finished`` is always last, whatever happened, so a progress display can always close
(the anti-pattern the architecture guide warns about is a worker with no error path).
``quit()`` is cooperative: it sets a flag the worker checks between items and calls an
optional ``on_quit`` hook (the batch runner's thread-safe ``cancel()``), so the generator
itself stops at a clean point and keeps what is done.

Every started worker is kept in :data:`_LIVE` until its thread has ended, so neither the
worker nor its QThread is garbage-collected while running, and :func:`wait_all` can join
them at shutdown (and tests can check that none is left).

A finished worker is freed by reference counting, on the GUI thread, a turn of the event loop
after its thread ended: it holds no reference cycle. Its signal object held a bound method of
the worker (now a weak one), a cycle that left the worker, its QThread and its signal object
to Python's cyclic collector: that runs at whichever allocation crosses its threshold, in
whichever thread makes it (the batch reader unpickling results, a viewer decoding a scan),
and destroyed the Qt objects there, off the GUI thread. It is not released inside the slot
that learns the thread ended either: that slot is a call on the signal object, which must
outlive its own event.
"""

from __future__ import annotations

import logging
import threading
import traceback
import warnings
import weakref
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject, QThread, QTimer, Signal, Slot

from desktop.gui.qt_compat import emit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerError:
    """An exception raised in a worker, carried to the GUI thread with its traceback text."""

    exception: BaseException
    traceback: str

    def __str__(self) -> str:
        return f"{type(self.exception).__name__}: {self.exception}"


class _Signals(QObject):
    started = Signal()
    yielded = Signal(object)
    returned = Signal(object)
    errored = Signal(object)  # WorkerError
    aborted = Signal()
    finished = Signal()

    def __init__(self, on_thread_end: Callable[[], None]) -> None:
        super().__init__()
        #: weak: the worker holds this object, so a strong reference back would be a cycle
        #: (a worker built and never started, too)
        self._on_thread_end = weakref.WeakMethod(on_thread_end)  # type: ignore[arg-type]

    @Slot()
    def _thread_ended(self) -> None:
        """Runs in the GUI thread (this object lives there) once the QThread has ended."""
        on_thread_end = self._on_thread_end()
        if on_thread_end is not None:  # the worker is in _LIVE until this call
            on_thread_end()


_LIVE: set[Worker] = set()
_LIVE_LOCK = threading.Lock()
#: Workers whose threads have ended, held until the next turn of the GUI thread's event loop
#: (see the module doc): dropping the last reference inside ``_thread_ended`` would delete
#: the signal object during the delivery of its own event.
_ENDED: list[Worker] = []


class Worker(QObject):
    """Runs ``func(*args, **kwargs)`` in a QThread; a generator result is drained item by item.

    Signals live on a separate QObject (as in superqt) that stays in the GUI thread, so
    connecting to them from widgets is safe whatever thread the worker object is in.
    """

    def __init__(
        self,
        func: Callable[..., Any],
        *args: Any,
        on_quit: Callable[[], None] | None = None,
        name: str = "medscreen-worker",
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self._func = func
        self._args = args
        self._kwargs = kwargs
        self._on_quit = on_quit
        self._quit = threading.Event()
        self.signals = _Signals(self._forget)
        self._thread = QThread()
        self._thread.setObjectName(name)
        self.moveToThread(self._thread)
        self._thread.started.connect(self._run)
        self._thread.finished.connect(self.signals._thread_ended)

    # -- public API ----------------------------------------------------------------------
    @property
    def started(self) -> Signal:
        return self.signals.started

    @property
    def yielded(self) -> Signal:
        return self.signals.yielded

    @property
    def returned(self) -> Signal:
        return self.signals.returned

    @property
    def errored(self) -> Signal:
        return self.signals.errored

    @property
    def aborted(self) -> Signal:
        return self.signals.aborted

    @property
    def finished(self) -> Signal:
        return self.signals.finished

    def start(self) -> None:
        with _LIVE_LOCK:
            _LIVE.add(self)
        self._thread.start()

    def quit(self) -> None:
        """Ask the work to stop at its next clean point (thread-safe, returns at once)."""
        self._quit.set()
        if self._on_quit is not None:
            try:
                self._on_quit()
            except Exception:  # a failing cancel hook must not take the GUI down
                log.exception("worker quit hook failed")

    @property
    def abort_requested(self) -> bool:
        return self._quit.is_set()

    def is_running(self) -> bool:
        return self._thread.isRunning()

    def wait(self, msecs: int = 30_000) -> bool:
        """Block until the thread has ended (used at shutdown and in tests)."""
        return self._thread.wait(msecs)

    # -- worker thread -------------------------------------------------------------------
    @Slot()
    def _run(self) -> None:
        signals = self.signals
        emit(signals.started)
        try:
            result = self._func(*self._args, **self._kwargs)
            if isinstance(result, Generator):
                result = self._drain(result)
                if result is _ABORTED:
                    emit(signals.aborted)
                    return
            emit(signals.returned, result)
        except Exception as exc:
            log.error("worker %s failed", self._thread.objectName(), exc_info=exc)
            emit(signals.errored, WorkerError(exc, traceback.format_exc()))
        finally:
            emit(signals.finished)
            self._thread.quit()

    def _drain(self, gen: Generator[Any, Any, Any]) -> Any:
        while True:
            try:
                item = next(gen)
            except StopIteration as stop:
                # A generator that handled a quit itself (the batch runner) still returns
                # its summary: it finished at a clean point, so its value is reported.
                return stop.value
            emit(self.signals.yielded, item)
            if self._quit.is_set() and self._on_quit is None:
                gen.close()
                return _ABORTED

    def _forget(self) -> None:
        # Keep the QThread referenced until it has really stopped: destroying a running
        # QThread aborts the process.
        self._thread.wait()
        with _LIVE_LOCK:
            _LIVE.discard(self)
        if not _ENDED:
            QTimer.singleShot(0, _release_ended)
        _ENDED.append(self)


def _release_ended() -> None:
    """Drop the GUI thread's hold on ended workers (a later turn of its event loop): each is
    freed here, or where its last other holder lets it go. Their signals are disconnected
    first (every event they sent has been delivered by now): a slot that captured its worker
    (``lambda w=worker: ...``) is held by Qt's connection, out of Python's sight, and kept the
    worker, its QThread and its signal object for the rest of the session."""
    ended = _ENDED[:]
    _ENDED.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "failed to disconnect": none there
        for worker in ended:
            signals = worker.signals
            for signal in (
                signals.started,
                signals.yielded,
                signals.returned,
                signals.errored,
                signals.aborted,
                signals.finished,
            ):
                signal.disconnect()


_ABORTED = object()


def live_workers() -> list[Worker]:
    """Workers whose threads have not yet ended."""
    with _LIVE_LOCK:
        return [w for w in _LIVE if w.is_running()]


def wait_all(msecs: int = 30_000) -> bool:
    """Ask every live worker to stop and wait for their threads (application shutdown)."""
    workers = live_workers()
    for worker in workers:
        worker.quit()
    return all(worker.wait(msecs) for worker in workers)

"""Runs the engine's batch generator in a worker and feeds the GUI in coalesced chunks.

The runner yields one :class:`Progress` per finished scan. Forwarding each as its own queued
signal that inserts one table row would, on a fast machine and a 2,000-scan folder, flood the
event loop with thousands of tiny model resets and repaints. Instead the worker's ``yielded``
signal only appends to a queue, and a 250 ms timer drains it: one ``beginInsertRows`` per
tick however many scans finished, and one progress update with the newest figures.

The batch itself runs in its own process (:class:`desktop.engine.batch_process.BatchProcess`):
with its decoder and inference threads in the window's process, the GUI thread waited for the
GIL they held and the window stalled over 100 ms several times a batch. The worker thread
here only blocks on the pipe from that process and appends each event to the queue.
:attr:`BatchController.in_process` runs the batch in this process instead, for tests that
patch the engine here (a patched ``Screener.screen`` does not reach a child process); the
application never sets it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections import deque
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, QTimer, Signal

from desktop.gui.qt_compat import emit
from desktop.gui.workers import Worker, WorkerError

if TYPE_CHECKING:
    from desktop.engine.batch_process import BatchProcess, InProcessRun
    from desktop.engine.devices import DeviceReport
    from desktop.engine.registry import ModelSet, ModelSetPlan
    from desktop.engine.runner import BatchSummary, Progress
    from desktop.engine.store import ResultsStore

log = logging.getLogger(__name__)

#: How often finished scans reach the table. Each drain repaints the table, and a repaint is
#: thousands of Qt-to-Python calls: at 100 ms the window spent ~40 % more of its own CPU on a
#: batch than at 250 ms (measured while the batch's threads still shared the window's GIL),
#: which still shows rows and progress four times a second (benchmarks/bench_gui_stall.py).
DRAIN_INTERVAL_MS = 250
#: Milliseconds :meth:`BatchController.wait` gives a batch process after its own wait
#: ran out, before it is killed (what it committed stays).
KILL_GRACE_MS = 5_000


def _lower_thread_priority() -> None:
    """Best effort: make the calling thread (and threads it creates) yield to the GUI thread
    (in-process batches only; the batch process lowers its own priority by the same amount)."""
    from desktop.engine.batch_process import BACKGROUND_NICENESS

    setpriority = getattr(os, "setpriority", None)
    if setpriority is None or not sys.platform.startswith("linux"):
        return  # elsewhere PRIO_PROCESS means the whole process, not this thread
    try:
        tid = threading.get_native_id()
        setpriority(
            os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + BACKGROUND_NICENESS
        )
    except OSError as exc:
        log.debug("cannot lower the batch thread's priority: %s", exc)


def _run_in_background(run: InProcessRun) -> Generator[Progress, None, BatchSummary]:
    _lower_thread_priority()
    return (yield from run.run())


class BatchController(QObject):
    #: A chunk of finished ScanResults, in the order they finished.
    rows_ready = Signal(list)
    #: The same chunk as ``(batch id, [(seq, ScanResult), ...])``: each row's place in the
    #: results store, which the table reads it back from (seq None: not in the store).
    items_ready = Signal(str, list)
    #: The newest Progress (done, total, rate, eta, current file).
    progress = Signal(object)
    #: The batch ended: (BatchSummary or None, cancelled: bool).
    batch_finished = Signal(object, bool)
    #: The batch could not run or failed: WorkerError.
    batch_failed = Signal(object)
    #: Where the running batch's inference really runs (a DeviceReport), as the process
    #: that opened its sessions reported it; once a batch, before its first rows.
    device_reported = Signal(object)
    #: The models the running batch really opened (a ModelSetPlan), when its process could
    #: not open one it was sent and used the bundled alternative (the refusal is among its
    #: problems); once a batch, before ``device_reported``.
    models_reported = Signal(object)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._queue: deque[Progress] = deque()
        self._worker: Worker | None = None
        self._process: BatchProcess | InProcessRun | None = None
        #: The device the last batch's sessions ran on (None until a batch reported one).
        self.last_device: DeviceReport | None = None
        self._device_shown = False
        #: Run batches in this process (a thread), not in a batch process of their own: for
        #: tests that patch the engine in this process only. The window stalls this way.
        self.in_process = False
        self._summary: BatchSummary | None = None
        self._error: WorkerError | None = None
        self._cancel_asked = False
        self.batch_id: str | None = None
        self._timer = QTimer(self)
        self._timer.setInterval(DRAIN_INTERVAL_MS)
        self._timer.timeout.connect(self._drain)

    def is_running(self) -> bool:
        return self._worker is not None

    def start(
        self,
        models: ModelSet | ModelSetPlan,
        store: ResultsStore,
        inputs: Sequence[str | Path] = (),
        resume: str | None = None,
    ) -> None:
        """Start screening ``inputs`` (or continue batch ``resume``) in the batch process,
        read by a worker thread (in that thread itself when :attr:`in_process`, which
        opens the plan's sessions there)."""
        if self._worker is not None:
            raise RuntimeError("a batch is already running")
        self._summary = None
        self._error = None
        self._cancel_asked = False
        self._device_shown = False
        self.batch_id = resume
        if self.in_process:
            from desktop.engine.batch_process import InProcessRun, ScreeningTask

            task = ScreeningTask(tuple(str(p) for p in inputs), resume)
            run = InProcessRun(models, store, task)
            self._process = run
            worker = Worker(_run_in_background, run, on_quit=run.cancel, name="medscreen-batch")
        else:
            from desktop.engine.batch_process import BatchProcess

            process = BatchProcess(models, store.path, list(inputs), resume=resume)
            self._process = process
            worker = Worker(process.run, on_quit=process.cancel, name="medscreen-batch")
        worker.yielded.connect(self._queue.append, type=_direct())
        worker.returned.connect(self._returned)
        worker.errored.connect(self._errored)
        worker.finished.connect(self._finished)
        self._worker = worker
        self._timer.start()
        worker.start()

    def cancel(self) -> None:
        """Stop after the scans in flight; what is finished stays in the table and the store."""
        if self._worker is not None:
            self._cancel_asked = True
            self._worker.quit()

    def wait(self, msecs: int = 30_000) -> bool:
        """Block until the batch has ended (shutdown, tests). A batch process still running
        after ``msecs`` is killed, so closing the window never leaves one behind."""
        worker = self._worker
        if worker is None or worker.wait(msecs):
            return True
        process = self._process
        if process is None or not hasattr(process, "kill"):  # in-process: nothing to kill
            return False
        process.kill()
        return worker.wait(KILL_GRACE_MS)

    @property
    def process_id(self) -> int | None:
        """The running batch process's id (None in-process or between batches)."""
        process = self._process
        pid = getattr(process, "pid", None)  # an in-process run has none
        return pid if self._worker is not None else None

    # -- GUI thread --------------------------------------------------------------------------
    def _drain(self) -> None:
        self._report_device()
        if not self._queue:
            return
        chunk: list[Progress] = []
        while self._queue:
            chunk.append(self._queue.popleft())
        results = [p.result for p in chunk if p.result is not None]
        last = chunk[-1]
        self.batch_id = last.batch_id
        if results:
            emit(self.rows_ready, results)
            items = [(p.seq, p.result) for p in chunk if p.result is not None]
            emit(self.items_ready, last.batch_id, items)
        emit(self.progress, last)

    def _report_device(self) -> None:
        """The batch's device once its process has reported it (before its first event),
        and before it the models it opened when they are not the ones it was sent."""
        process = self._process
        device = process.device if process is not None else None
        if device is not None and not self._device_shown and process.models is not None:
            emit(self.models_reported, process.models)
        if device is None or self._device_shown:
            return
        self._device_shown = True
        self.last_device = device
        emit(self.device_reported, device)

    def _returned(self, summary: BatchSummary) -> None:
        self._summary = summary

    def _errored(self, error: WorkerError) -> None:
        self._error = error

    def _finished(self) -> None:
        self._drain()  # every queued row reaches the table before "finished" is reported
        self._timer.stop()
        self._worker = None
        self._process = None
        if self._error is not None:
            emit(self.batch_failed, self._error)
            return
        cancelled = self._cancel_asked or bool(self._summary and self._summary.cancelled)
        emit(self.batch_finished, self._summary, cancelled)


def _direct() -> object:
    """Append to the deque in the worker thread itself: deque.append is thread-safe, and
    no event per scan is posted to the GUI thread at all."""
    from PySide6.QtCore import Qt

    return Qt.ConnectionType.DirectConnection

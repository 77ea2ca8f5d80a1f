"""A screening batch in its own process, so the window's process keeps only its event loop.

Why: with the batch's decoder and inference threads in the window's process, the GUI thread
waits for Python's GIL (and for a core) whenever they hold it, and the window stalled
120-150 ms several times in a 1,000-scan batch however little the GUI itself did
(README, Performance, "GUI stall"). In a child process the batch's threads hold *its* GIL;
the window's process is left with the event loop and one thread that reads results.

:class:`BatchProcess` starts the ordinary :class:`~desktop.engine.runner.BatchRunner` in a
child Python process started by :mod:`desktop.engine.child_process`: a plain subprocess of
the same interpreter (or of the frozen app's own executable) that talks over its stdin and
stdout, the same on Linux, Windows and macOS. Not multiprocessing's ``spawn``: that also
starts multiprocessing's resource tracker, a third process the app kept for its whole life
(8 MB PSS beside the window), and imports the parent's main module again in the child; and
not ``fork``: from a process with Qt and ONNX Runtime threads it could deadlock, as
:mod:`desktop.engine.sandbox` says. Its :meth:`BatchProcess.run` is a generator with the
runner's own contract (one :class:`~desktop.engine.runner.Progress` per committed scan, then
the :class:`~desktop.engine.runner.BatchSummary`), so a caller drains it exactly as it
drained ``BatchRunner.run``, blocked on the pipe between events:

* **What travels.** The child opens the models the window verified
  (:func:`~desktop.engine.registry.open_model_set` of the window's
  :class:`~desktop.engine.registry.ModelSetPlan`: same manifests, model bytes checked
  against them; the window itself opens no session and imports no ONNX Runtime) and its
  own connection to the same results store, and commits every scan
  there before reporting it, so durability is the runner's (contract 5). Back come small
  pickles: a Progress whose result has no thumbnail (the store has it; the table fetches it
  when a row is drawn), and the summary without the discovered file list (the store has that
  too; a 100,000-path list unpickled at the end would hold the window's GIL for a while).
  Before its first event the child sends the :class:`~desktop.engine.devices.DeviceReport`
  of the sessions it opened (:attr:`BatchProcess.device`): the only device the window may
  state is one a process that runs inference observed. When ONNX Runtime could not open a
  package of the plan and its bundled alternative was opened instead, the child first sends
  the plan of what it opened, the refusal among its problems (:attr:`BatchProcess.models`).
* **Cancel** is cooperative: the control pipe (the child's stdin, which first carried the
  job) carries "cancel" to a thread in the child that calls :meth:`BatchRunner.cancel`; what
  is committed stays, the batch ends ``cancelled``.
* **Errors.** Anything the child raises comes back as its type, message and traceback text,
  raised here as :class:`BatchProcessError` (the traceback is on it and in its notes).
* **Death.** A child killed or crashed mid-batch closes its end of the pipe: :meth:`run`
  raises :class:`BatchProcessError` saying how it ended (signal or exit status). Every
  scan it committed stays; the batch is left ``running`` under a process id that no longer
  exists, which the store reports as interrupted, so it can be resumed.
* **The window closing** (or dying) closes the control pipe; the child then cancels at a
  clean point by itself, so no batch runs on without a window.
* **Priority.** Once its models are open, the child lowers its own CPU priority
  (:data:`BACKGROUND_NICENESS`, every thread), so on a busy PC the window wins the CPU over
  screening, as it did over the batch threads before.

**What the child runs** is a :class:`ProcessTask`: a small picklable object, importable
without Qt, whose ``run(runner)`` is a generator of the runner's Progress events ending in a
value, and whose ``reply(value)`` is what of that value travels back. A plain batch is
:class:`ScreeningTask`; the site-calibration dialog sends a :class:`CalibrationTask` (read
the labels, screen them as a calibration batch, calibrate), so its long work leaves the
window's process the same way, with the same cancel, error and death handling, defined here
once.

The child imports the module a task is defined in (to unpickle it), never the parent's main
module: a task must live in an importable module, not in a script run as ``__main__``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import traceback
from collections.abc import Generator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from desktop.engine import child_process
from desktop.engine.calibration import DEFAULT_TARGET_SENSITIVITY, CalibrationError
from desktop.engine.errors import BatchError, hide_decoder_warnings
from desktop.engine.registry import ModelSet, ModelSetPlan
from desktop.engine.store import BatchKind

if TYPE_CHECKING:
    from desktop.engine.child_process import Receiver, Sender
    from desktop.engine.devices import DeviceReport
    from desktop.engine.labelled import CalibrationOutcome
    from desktop.engine.runner import BatchRunner, BatchSummary, Progress

log = logging.getLogger(__name__)

#: Niceness the batch process adds to its own (POSIX; below-normal priority class on
#: Windows): on a busy 2-core PC the window must win the CPU over screening, or it stutters.
#: 10 rather than 5: with 5 the window still waited 0.5-1.9 s a 1,000-scan batch for a core
#: and stalled up to 139 ms; with 10, 0.3-0.4 s and at most 74 ms, at the same batch speed
#: (quiet 2-core machine, benchmarks/bench_gui_stall.py, 1 December 2026).
BACKGROUND_NICENESS = 10

#: Seconds a child may take to exit after its last message before it is killed.
EXIT_TIMEOUT_S = 30.0

_CANCEL = "cancel"

#: Modules the batch process never uses but would import: pydicom imports ``requests`` (and
#: with it urllib3, charset_normalizer and idna, ~100 modules) only to download its own test
#: files, and falls back to urllib when it is missing; screening is offline. Left out, the
#: child holds 8 MB less (USS, measured with the engine's imports, 2 December 2026).
NOT_IN_BATCH_PROCESS = ("requests",)


class ProcessTask(Protocol):
    """Work for the batch process: picklable, and importable in a process without Qt.

    ``run`` drives the child's :class:`~desktop.engine.runner.BatchRunner` (it may read
    files and compute around the batch) as a generator of the runner's Progress events that
    returns the task's value; ``reply`` is the part of that value sent back to the window
    (drop what the store already has, so little is unpickled on the window's side).
    """

    def run(self, runner: BatchRunner) -> Generator[Progress, None, Any]: ...

    def reply(self, value: Any) -> Any: ...


@dataclass(frozen=True)
class ScreeningTask:
    """A plain batch: screen ``inputs`` (or continue the batch ``resume``) as ``kind``."""

    inputs: tuple[str, ...] = ()
    resume: str | None = None
    kind: str = BatchKind.SCREENING

    def run(self, runner: BatchRunner) -> Generator[Progress, None, BatchSummary]:
        return runner.run(list(self.inputs), resume=self.resume, kind=self.kind)

    def reply(self, value: BatchSummary) -> BatchSummary:
        """The summary without the discovered file list (the store has it; a 100,000-path
        list unpickled at the end would hold the window's GIL for a while)."""
        return replace(value, discovered=replace(value.discovered, files=[]))


@dataclass(frozen=True)
class CalibrationTask:
    """A whole site-calibration run: read the labels, screen them as a calibration batch,
    join and calibrate (:func:`desktop.engine.labelled.run_calibration`).

    The calibration dialog sends it here, so the labels are read, the scans screened and the
    bootstrap computed away from the window's process. It runs in this process as well
    (``run`` with a runner here): the same code either way, so the same scores and the same
    calibration. It is defined in this module, not in :mod:`desktop.engine.labelled`,
    because the dialog builds it on the GUI thread: ``labelled`` pulls in the runner, the
    decoders and pydicom (0.1-0.9 s of imports that froze the dialog as the run began);
    ``run`` imports them in the process that runs it.
    """

    model_id: str
    folders: tuple[str, ...] = ()
    csv_files: tuple[str, ...] = ()
    target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY

    def run(self, runner: BatchRunner) -> Generator[Progress, None, CalibrationOutcome]:
        from desktop.engine.labelled import collect_labels, run_calibration

        if self.model_id not in runner.models.findings:
            known = ", ".join(runner.models.findings) or "none"
            raise CalibrationError(
                f"no finding model {self.model_id!r} is loaded (loaded: {known})"
            )
        manifest = runner.models.findings[self.model_id].manifest
        labelled = collect_labels(
            manifest, [Path(f) for f in self.folders], [Path(c) for c in self.csv_files]
        )
        return (yield from run_calibration(runner, labelled, self.target_sensitivity))

    def reply(self, value: CalibrationOutcome) -> CalibrationOutcome:
        return value  # the labelled set's scores, labels and exclusions: the dialog shows all


@dataclass(frozen=True)
class _Job:
    """Everything the child needs, picklable: no sessions, no open connections."""

    models: ModelSetPlan
    store_path: str
    task: ProcessTask
    niceness: int


@dataclass(frozen=True)
class _Failure:
    """An exception in the child, as text (its object might not pickle)."""

    type_name: str
    message: str
    traceback: str


class BatchProcessError(BatchError):
    """The batch failed in its process, or the process ended without finishing.

    ``child_type`` names the exception raised in the child (empty when the process died),
    ``child_traceback`` is its traceback as the child printed it.
    """

    def __init__(self, message: str, child_type: str = "", child_traceback: str = "") -> None:
        super().__init__(message)
        self.message = str(self.args[0]) if self.args else message
        self.child_type = child_type
        self.child_traceback = child_traceback
        if child_traceback:
            self.add_note(f"In the batch process:\n{child_traceback.rstrip()}")


class BatchProcess:
    """One batch in a child process; :meth:`run` is the runner's generator, read from a pipe.

    Use once: create, drain :meth:`run` (in a worker thread: it blocks between events), and
    call :meth:`cancel` from any thread to stop at a clean point. ``task`` replaces the
    plain batch of ``inputs``/``resume``/``kind`` by other runner work (a
    :class:`ProcessTask`); :meth:`run` then returns the task's reply.
    """

    def __init__(
        self,
        models: ModelSet | ModelSetPlan,
        store_path: str | Path,
        inputs: Sequence[str | Path] = (),
        *,
        resume: str | None = None,
        kind: str = BatchKind.SCREENING,
        niceness: int = BACKGROUND_NICENESS,
        task: ProcessTask | None = None,
    ) -> None:
        if task is None:
            task = ScreeningTask(tuple(str(p) for p in inputs), resume, str(kind))
        elif inputs or resume is not None:
            raise ValueError("give the inputs to the task, not to BatchProcess")
        self._job = _Job(ModelSetPlan.of(models), str(store_path), task, niceness)
        self._process: subprocess.Popen[bytes] | None = None
        self._control: Sender | None = None
        self._lock = threading.Lock()
        self._cancelled = False
        #: What the child's sessions run on, as it reported once they were open (None
        #: before that; set by the thread that drains :meth:`run`).
        self.device: DeviceReport | None = None
        #: The models the child really opened, when they differ from the plan it was sent
        #: (ONNX Runtime could not open a package and its bundled alternative runs; the
        #: refusal is in its problems), reported before :attr:`device`; else None.
        self.models: ModelSetPlan | None = None

    @property
    def pid(self) -> int | None:
        """The child's process id once started (tests kill it to check a crash is handled)."""
        process = self._process
        return process.pid if process is not None else None

    @property
    def exitcode(self) -> int | None:
        """The child's exit status once :meth:`run` has ended (None before; negative: the
        signal that ended it). The frozen app's self-test checks it is 0."""
        process = self._process
        return process.returncode if process is not None else None

    def cancel(self) -> None:
        """Ask the batch to stop after the scans in flight (thread-safe, returns at once)."""
        with self._lock:
            self._cancelled = True
            if self._control is not None:
                with contextlib.suppress(OSError):
                    self._control.send(_CANCEL)

    def kill(self) -> None:
        """End the child at once (shutdown after a cancel that did not end it in time)."""
        process = self._process
        if process is not None and child_process.alive(process):
            log.warning("the batch process %s did not stop; killing it", process.pid)
            process.kill()

    def run(self) -> Generator[Progress, None, Any]:
        """Start the child and yield its progress events; return its summary (the task's
        reply).

        Raises :class:`BatchProcessError` when the batch fails in the child or the child
        ends without finishing. The child is always joined (or killed) before this returns.
        """
        try:
            child = child_process.start("batch")
        except OSError as exc:  # no interpreter or executable to start, no process left
            raise BatchProcessError(
                f"the screening process could not be started ({type(exc).__name__}: {exc})"
            ) from exc
        process, control, results = child.process, child.sender, child.receiver
        self._process = process  # kill() works from here on, while the job is handed over
        log.info("batch process %s started", process.pid)
        try:
            try:
                # The job first, on the pipe that then carries cancels: a cancel asked
                # meanwhile is only noted (it goes once the job is out, below), so it can
                # never be read as the job.
                control.send(self._job)
            except OSError:  # the child died (or was killed) before it took its job
                raise _died(process) from None
            with self._lock:
                self._control = control
                if self._cancelled:  # cancelled before the child had its job
                    with contextlib.suppress(OSError):
                        control.send(_CANCEL)
            while True:
                try:
                    kind, payload = results.recv()
                except (EOFError, OSError):
                    raise _died(process) from None
                if kind == "progress":
                    yield payload
                elif kind == "device":
                    self.device = payload
                elif kind == "models":
                    self.models = payload
                elif kind == "done":
                    return payload
                else:
                    failure: _Failure = payload
                    log.error(
                        "the batch process failed: %s: %s\n%s",
                        failure.type_name,
                        failure.message,
                        failure.traceback,
                    )
                    raise BatchProcessError(
                        failure.message or failure.type_name, failure.type_name, failure.traceback
                    )
        finally:
            # A generator closed early (the caller stopped reading) is a cancel too.
            with self._lock:
                self._control = None
            with contextlib.suppress(OSError):
                control.send(_CANCEL)
            child.close()
            if child_process.wait(process, EXIT_TIMEOUT_S) is None:
                self.kill()
                child_process.wait(process, 5.0)


class InProcessRun:
    """A :class:`ProcessTask` run in a thread of this process, with :class:`BatchProcess`'s
    interface (``run``, ``cancel``, ``device``): the A/B benchmarks' ``--in-process`` way
    and tests that patch the engine here. The window stalls this way (module docstring).

    Given a :class:`ModelSetPlan` (the window's), the sessions are opened by :meth:`run`,
    in the thread that drains it, not in the caller's (the GUI thread), and only for this
    run; a :class:`ModelSet` already open is used as it is.
    """

    def __init__(self, models: ModelSet | ModelSetPlan, store: Any, task: ProcessTask) -> None:
        self._models = models
        self._store = store
        self._task = task
        self._asked = threading.Event()
        self._runner: BatchRunner | None = None
        self.device: DeviceReport | None = None
        self.models: ModelSetPlan | None = None  # as BatchProcess.models

    def cancel(self) -> None:
        """Stop at a clean point (thread-safe); a cancel before the runner exists holds."""
        self._asked.set()
        runner = self._runner
        if runner is not None:
            runner.cancel()

    def run(self) -> Generator[Progress, None, Any]:
        from desktop.engine.registry import open_model_set
        from desktop.engine.runner import BatchRunner

        models = open_model_set(self._models)
        self.models = _replaced(self._models, models)
        self.device = models.device
        runner = BatchRunner(models, self._store)
        self._runner = runner
        gen = self._task.run(runner)
        while True:
            try:
                progress = next(gen)
            except StopIteration as stop:
                return stop.value
            if self._asked.is_set() and not runner.cancelled:
                runner.cancel()  # the runner clears its flag as it begins (see _drive)
            yield progress


def _replaced(asked: ModelSet | ModelSetPlan, opened: ModelSet) -> ModelSetPlan | None:
    """The plan of the models really opened when they are not the ones asked for (an
    alternative replaced a package ONNX Runtime could not open), else None."""
    return opened.plan if opened.key != asked.key else None


def _died(process: subprocess.Popen[bytes]) -> BatchProcessError:
    """The error for a child whose pipe closed before it reported an end."""
    code = child_process.wait(process, 5.0)
    if code is None:
        how = "it stopped answering"
    elif code < 0:
        how = f"it was killed by signal {-code}"
        with contextlib.suppress(ValueError):
            import signal

            how = f"it was killed by {signal.Signals(-code).name}"
    else:
        how = f"it exited with status {code}"
    log.error("the batch process %s ended without finishing the batch: %s", process.pid, how)
    # The window adds that the finished scans are kept (they are: each was committed first).
    return BatchProcessError(f"the screening process ended unexpectedly ({how})")


# -- the child -------------------------------------------------------------------------------
def child_main(control: Receiver, results: Sender) -> int:
    """The batch process's entry (:data:`desktop.engine.child_process.ENTRIES`): take the
    job from the window, then run it; 0 when it finished or stopped cleanly."""
    with contextlib.suppress(ValueError, OSError, AttributeError):
        import signal

        # Ctrl+C in the window's terminal reaches this process too: the window decides, and
        # its going away closes the control pipe, which cancels the batch at a clean point.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The window's rule (it is never verbose): the decoders' warnings about a damaged file
    # reached the terminal that started the window from here.
    hide_decoder_warnings()
    _leave_out_modules()  # before the job's classes are imported to unpickle it
    try:
        job: _Job = control.recv()
    except (EOFError, OSError):  # the window went away before it sent the job
        return 1
    try:
        _child_main(job, results, control)
    except SystemExit as stop:
        return int(stop.code or 0)
    return 0


def _child_main(job: _Job, results: Sender, control: Receiver) -> None:
    """The batch process: screen, report each committed scan, then the summary or the error."""
    store = None
    try:
        from desktop.engine.registry import open_model_set
        from desktop.engine.runner import BatchRunner
        from desktop.engine.store import ResultsStore

        models = open_model_set(job.models)
        replaced = _replaced(job.models, models)
        if replaced is not None:  # a package refused as it was opened: the window says so
            results.send(("models", replaced))
        results.send(("device", models.device))  # before any event: the window shows it
        store = ResultsStore(Path(job.store_path))
        # Start-up (imports, sessions) at the window's priority: the window waits for the
        # first rows then, and under load a lowered start took seconds longer. The batch's
        # threads, all started from here on, inherit the lowered priority.
        _lower_priority(job.niceness)
        runner = BatchRunner(models, store)
        asked = threading.Event()
        threading.Thread(
            target=_watch_control,
            args=(control, runner, asked),
            name="medscreen-batch-control",
            daemon=True,
        ).start()
        value = _drive(runner, job.task, results, asked)
        results.send(("done", job.task.reply(value)))
    except BaseException as exc:  # every failure goes to the window, with its traceback
        failure = _Failure(
            type(exc).__name__,
            str(getattr(exc, "message", "") or exc),
            traceback.format_exc(),
        )
        with contextlib.suppress(OSError):
            results.send(("error", failure))
        if not isinstance(exc, Exception):
            raise
        sys.exit(1)
    finally:
        if store is not None:
            store.close()
        results.close()


def _leave_out_modules() -> None:
    """Make ``import`` of :data:`NOT_IN_BATCH_PROCESS` fail here (an ImportError, which their
    importers handle), before the runner's imports would load them. One already imported
    stays (the child imports nothing but the engine before this)."""
    for name in NOT_IN_BATCH_PROCESS:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


def _drive(runner: BatchRunner, task: ProcessTask, results: Sender, asked: threading.Event) -> Any:
    """Drain the task's generator, sending each event; a window gone means cancel.

    ``asked`` is set once the window has asked for a cancel. ``BatchRunner.run`` clears the
    runner's cancel flag as it begins, so a cancel that came before that (the window's
    Cancel while this process still started, or while a calibration read its labels) was
    lost and the whole batch ran; it is asserted again here at every event until the runner
    has it (its first event comes before any scan is started).
    """
    gen = task.run(runner)
    window_gone = False
    while True:
        try:
            progress = next(gen)
        except StopIteration as stop:
            return stop.value
        if asked.is_set() and not runner.cancelled:
            runner.cancel()
        if window_gone:
            continue
        try:
            results.send(("progress", _slim(progress)))
        except OSError:  # BrokenPipeError: nobody reads any more; stop at a clean point
            window_gone = True
            runner.cancel()


def _slim(progress: Progress) -> Progress:
    """The event without the result's thumbnail: it is committed to the store, which the
    window reads it from when a row is drawn (a result without a sha256 has none)."""
    result = progress.result
    if result is None or not result.thumbnail_png or not result.sha256:
        return progress
    return replace(progress, result=replace(result, thumbnail_png=None))


def _watch_control(
    control: Receiver, runner: BatchRunner, asked: threading.Event | None = None
) -> None:
    """Cancel the batch on the window's word, or when the window's end of the pipe closes
    (the window closed or died: nobody would see the rest)."""
    try:
        while control.recv() != _CANCEL:
            pass
    except (EOFError, OSError):
        pass
    if asked is not None:
        asked.set()
    runner.cancel()


def _lower_priority(niceness: int) -> None:
    """Best effort: make this whole process yield the CPU to the window."""
    if niceness <= 0:
        return
    if sys.platform.startswith("linux"):
        # A niceness belongs to a thread on Linux: lower every thread there is (ONNX
        # Runtime's pools on a big machine); threads started later inherit it.
        try:
            tids = [int(tid) for tid in os.listdir("/proc/self/task")]
        except OSError:
            tids = [0]
        for tid in tids:
            try:
                os.setpriority(
                    os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + niceness
                )
            except OSError as exc:  # a thread that just ended, or no permission
                log.debug("cannot lower thread %s's priority: %s", tid, exc)
        return
    if os.name == "nt":  # pragma: no cover - Windows only
        try:
            import ctypes
            from ctypes import wintypes

            below_normal = 0x4000  # BELOW_NORMAL_PRIORITY_CLASS, processthreadsapi.h
            kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
            # Declared, so the HANDLE travels at pointer width and the BOOL result is read.
            current = kernel32.GetCurrentProcess
            current.argtypes, current.restype = [], wintypes.HANDLE
            set_class = kernel32.SetPriorityClass
            set_class.argtypes = [wintypes.HANDLE, wintypes.DWORD]
            set_class.restype = wintypes.BOOL
            if not set_class(current(), below_normal):
                error = ctypes.get_last_error()  # type: ignore[attr-defined]
                log.debug("cannot lower the batch process's priority: Windows error %s", error)
        except (OSError, AttributeError) as exc:
            log.debug("cannot lower the batch process's priority: %s", exc)
        return
    try:
        os.nice(niceness)  # the whole process (macOS, the BSDs)
    except OSError as exc:
        log.debug("cannot lower the batch process's priority: %s", exc)


__all__ = [
    "BACKGROUND_NICENESS",
    "BatchProcess",
    "BatchProcessError",
    "CalibrationTask",
    "InProcessRun",
    "ProcessTask",
    "ScreeningTask",
]

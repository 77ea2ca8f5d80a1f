"""How long can the window freeze while a large batch fills the table? (Target: < 100 ms.)

Makes N small, distinct real scans (the test chest X-rays and MedNIST images, resized and
given a little noise so each has its own sha256 and nothing is reused from the store),
screens them with the shipped models (``assets/models``; ``--models stand-in`` for the test
suite's small ONNX stand-ins) in the real MainWindow, and records the longest gap between
ticks of a 10 ms QTimer on the GUI thread while the batch runs. A gap is time the event loop
could not run: a stall a user would feel as a frozen window.

    QT_QPA_PLATFORM=offscreen .venv/bin/python benchmarks/bench_gui_stall.py --scans 1000

The batch runs in its own process, as in the app (desktop/engine/batch_process.py);
``--in-process`` runs it in a thread of the window's process instead, as before that change,
so the two can be alternated on the same machine (A/B pairs, same load).

Prints the longest stall, the 99th-percentile tick gap, the same less the time the GUI
thread waited for a core (Linux; what the machine's load, not the window, caused), the batch
time and the rate (from the drop to the last row, and from the first row to the last: the
batch process's start-up, about a CPU-second of interpreter, imports and sessions, is in the
first figure only), and the CPU the batch used per scan (load-independent). ``--calls`` also
counts the table model's ``data()`` calls (each one a Qt-to-Python call that needs the GIL).
It also prints the GUI thread's own CPU time, the time it spent runnable but waiting for a
core (the machine's load) and how often it slept (event-loop waits plus every GIL hand-over
it waited for). To see where the GUI thread is during stalls, sample it from outside, e.g.
``py-spy record --native --threads -p PID`` (faulthandler's dump_traceback_later, tried for
this, reads running threads' frames without the GIL and crashed the process).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the scan maker and the stand-in model factory live in tests/
DATA = REPO / "tests" / "data"

from tests.fixtures import distinct_scans  # noqa: E402

log = logging.getLogger("bench_gui_stall")


def make_scans(folder: Path, count: int, side: int = 256) -> Path:
    """``count`` distinct PNGs from the real test images, in sub-folders of 200."""
    sources = sorted(p for p in DATA.rglob("*") if p.suffix.lower() in (".png", ".jpeg"))
    return distinct_scans(folder, count, sources, side=side, seed=20261122, per_folder=200)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scans", type=int, default=2000)
    parser.add_argument(
        "--models",
        choices=("shipped", "stand-in"),
        default="shipped",
        help="the bundled models (default) or the test suite's stand-ins",
    )
    parser.add_argument("--calls", action="store_true", help="count data() calls per second")
    parser.add_argument(
        "--sort", action="store_true", help="keep the table sorted by TB score while it fills"
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="screen in a thread of the window's process (the way before the batch process)",
    )
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="no window: the same batch in a plain thread beside a bare Qt event loop, to "
        "see how much stall the machine itself (CPU load, the engine's threads) causes",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

    work = Path(tempfile.mkdtemp(prefix="medscreen-stall-"))
    os.environ["MEDSCREEN_HOME"] = str(work / "home")
    if args.models == "stand-in":
        from tests.model_factory import build_model_set

        models = build_model_set(work / "models")
    else:
        models = REPO / "assets" / "models"
    started = time.perf_counter()
    scans = make_scans(work / "scans", args.scans)
    log.warning("made %d scans in %.1f s", args.scans, time.perf_counter() - started)

    from PySide6.QtCore import QEventLoop, Qt

    from desktop.engine.store import ResultsStore
    from desktop.gui.app import create_app
    from desktop.gui.main_window import MainWindow
    from desktop.gui.results_model import Column
    from desktop.gui.settings import AppSettings

    app = create_app(["bench"])
    if args.baseline:
        return _baseline(app, models, scans, args.scans, work)
    window = MainWindow(
        settings=AppSettings(work / "settings.ini"),
        store=ResultsStore(work / "results.sqlite3"),
        model_dirs=[models],
    )
    window.batch.in_process = args.in_process
    window.show()
    loop = QEventLoop()
    window.models_changed.connect(lambda _m: loop.quit())
    window.start()
    loop.exec()
    if args.sort:
        col = window.model.column_of(Column.SCORE, "tb")
        window.view.sortByColumn(col, Qt.SortOrder.DescendingOrder)
    calls = [0]
    if args.calls:
        model_data = type(window.model).data

        def counted(self: object, index: object, role: int = 0) -> object:
            calls[0] += 1
            return model_data(self, index, role)  # type: ignore[arg-type]

        type(window.model).data = counted  # type: ignore[method-assign]

    meter = StallMeter()

    first_row: list[float] = []
    window.batch.rows_ready.connect(
        lambda _rows: first_row.append(time.perf_counter()) if not first_row else None
    )
    done = QEventLoop()
    window.batch.batch_finished.connect(lambda *_a: done.quit())
    window.batch.batch_failed.connect(lambda *_a: done.quit())
    usage0 = _cpu_s(resource_self=True), _cpu_s(resource_self=False)
    cpu0 = time.thread_time()
    queued0 = _run_queue_wait_s()
    sleeps0 = _voluntary_switches()
    t0 = meter.start()
    window.open_paths([scans])
    done.exec()
    elapsed = time.perf_counter() - t0
    gui_cpu = time.thread_time() - cpu0
    window.batch.wait()  # the batch process joined: its CPU is in RUSAGE_CHILDREN
    own = _cpu_s(resource_self=True) - usage0[0]
    children = _cpu_s(resource_self=False) - usage0[1]
    gui_queued = _run_queue_wait_s() - queued0
    gui_sleeps = _voluntary_switches() - sleeps0
    meter.stop()

    rows = window.model.rowCount()
    window.close()
    app.processEvents()
    if rows != args.scans:
        log.error("expected %d rows, got %d", args.scans, rows)
        return 1
    mode = "batch in this process" if args.in_process else "batch process"
    label = f"window, {mode}" + (", table sorted by TB score" if args.sort else "")
    _report(label, rows, elapsed, meter.gaps, meter.when)
    meter.write_less_core_waits()
    if first_row:
        after = t0 + elapsed - first_row[0]
        sys.stdout.write(
            f"first_row_s={first_row[0] - t0:.1f} rate_after_first_row={rows / after:.0f}/s\n"
        )
    # CPU the GUI thread itself used: the window's own work, whatever the load around it.
    sys.stdout.write(
        f"gui_thread_cpu_s={gui_cpu:.1f} ({1000 * gui_cpu / rows:.1f} ms a scan) "
        f"gui_thread_waiting_for_a_core_s={gui_queued:.1f} "
        f"gui_thread_sleeps={gui_sleeps} ({gui_sleeps / max(1, len(meter.gaps)):.1f} a tick)\n"
    )
    # CPU the batch itself used (the child's, or this process's less the GUI thread's):
    # scans per CPU-second is the batch's speed whatever the load around it.
    batch_cpu = children if not args.in_process else own - gui_cpu
    sys.stdout.write(
        f"batch_cpu_s={batch_cpu:.1f} ({1000 * batch_cpu / rows:.1f} ms a scan) "
        f"window_process_cpu_s={own:.1f}\n"
    )
    if args.calls:
        sys.stdout.write(f"data_calls={calls[0]} ({calls[0] / elapsed:.0f}/s)\n")
    sys.stdout.write(f"models={args.models} switch_interval_s={sys.getswitchinterval()}\n")
    return 0


class StallMeter:
    """A 10 ms precise timer on the GUI thread: each gap between its ticks (a stall is a long
    gap), when the gap ended (seconds after :meth:`start`) and, of each gap, the time the GUI
    thread was runnable but waited for a core (the machine's load, not the window's doing)."""

    def __init__(self) -> None:
        from PySide6.QtCore import Qt, QTimer

        self.gaps: list[float] = []
        self.when: list[float] = []
        self.waited: list[float] = []
        self.t0 = self._last = time.perf_counter()
        self._last_wait = _run_queue_wait_s()
        self._timer = QTimer()
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.setInterval(10)
        self._timer.timeout.connect(self._tick)

    def start(self) -> float:
        """Start ticking now; returns the start time (``time.perf_counter``)."""
        self.t0 = self._last = time.perf_counter()
        self._last_wait = _run_queue_wait_s()
        self._timer.start()
        return self.t0

    def stop(self) -> None:
        self._timer.stop()

    def _tick(self) -> None:
        now = time.perf_counter()
        wait_s = _run_queue_wait_s()
        self.gaps.append(now - self._last)
        self.when.append(now - self.t0)
        self.waited.append(wait_s - self._last_wait)
        self._last, self._last_wait = now, wait_s

    def own_ms(self) -> np.ndarray:
        """The gaps less the GUI thread's waits for a core: what is left is the window's own
        work and its waits for the GIL or a lock."""
        return (np.array(self.gaps) - np.nan_to_num(np.array(self.waited))) * 1000

    def write_less_core_waits(self) -> None:
        own_ms = self.own_ms()
        sys.stdout.write(
            f"less_core_waits: longest_ms={own_ms.max():.1f} "
            f"p99_ms={np.percentile(own_ms, 99):.1f} over_100ms={int((own_ms > 100).sum())}\n"
        )


def _cpu_s(resource_self: bool) -> float:
    """User + system CPU seconds of this process (or of its joined children); NaN where
    the resource module is missing (Windows)."""
    try:
        import resource
    except ImportError:
        return float("nan")
    who = resource.RUSAGE_SELF if resource_self else resource.RUSAGE_CHILDREN
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _run_queue_wait_s() -> float:
    """Seconds the calling thread has spent runnable but waiting for a core (Linux
    schedstat; NaN elsewhere): the machine's load, as opposed to waiting for the GIL."""
    import threading

    try:
        path = f"/proc/self/task/{threading.get_native_id()}/schedstat"
        with open(path, encoding="ascii") as stat:
            return int(stat.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return float("nan")


def _voluntary_switches() -> int:
    """Times the calling thread went to sleep (Linux; -1 elsewhere): once per event-loop
    wait, and once more for every GIL hand-over it had to wait for."""
    import threading

    try:
        path = f"/proc/self/task/{threading.get_native_id()}/status"
        with open(path, encoding="ascii") as status:
            for line in status:
                if line.startswith("voluntary_ctxt_switches:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return -1


def _report(label: str, rows: int, elapsed: float, gaps: list[float], when: list[float]) -> None:
    gaps_ms = np.array(gaps) * 1000
    sys.stdout.write(
        f"{label}: scans={rows} batch_s={elapsed:.1f} rate={rows / elapsed:.0f}/s "
        f"ticks={len(gaps)} longest_stall_ms={gaps_ms.max():.1f} "
        f"p99_gap_ms={np.percentile(gaps_ms, 99):.1f} median_gap_ms={np.median(gaps_ms):.1f}\n"
    )
    slow = [f"{w:.1f}s:{g:.0f}ms" for w, g in zip(when, gaps_ms, strict=True) if g > 100]
    sys.stdout.write(f"gaps_over_100ms={len(slow)} at {' '.join(slow[:20])}\n")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    sys.stdout.write(f"load_average_at_end={load} cpus={os.cpu_count()}\n")
    sys.stdout.flush()


def _baseline(app: object, models: Path, scans: Path, count: int, work: Path) -> int:
    import threading

    from PySide6.QtCore import QCoreApplication, Qt, QTimer

    from desktop.engine.registry import load_model_set
    from desktop.engine.runner import BatchRunner, run_to_end
    from desktop.engine.store import ResultsStore

    assert isinstance(app, QCoreApplication)
    store = ResultsStore(work / "baseline.sqlite3")
    runner = BatchRunner(load_model_set([models]), store)
    gaps: list[float] = []
    when: list[float] = []
    t0 = last = time.perf_counter()

    def tick() -> None:
        nonlocal last
        now = time.perf_counter()
        gaps.append(now - last)
        when.append(now - t0)
        last = now

    ticker = QTimer()
    ticker.setTimerType(Qt.TimerType.PreciseTimer)
    ticker.setInterval(10)
    ticker.timeout.connect(tick)
    summary = []
    thread = threading.Thread(
        target=lambda: (summary.append(run_to_end(runner.run([scans]))), app.quit())
    )
    ticker.start()
    thread.start()
    app.exec()
    thread.join()
    _report("baseline (no window)", summary[0].total, time.perf_counter() - t0, gaps, when)
    store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

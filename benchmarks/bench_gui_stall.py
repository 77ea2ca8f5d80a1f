"""How long can the window freeze while a large batch fills the table? (Target: < 100 ms.)

Makes N small, distinct real scans (the test chest X-rays and MedNIST images, resized and
given a little noise so each has its own sha256 and nothing is reused from the store),
screens them with the stand-in ONNX models in the real MainWindow, and records the longest
gap between ticks of a 10 ms QTimer on the GUI thread while the batch runs. A gap is time
the event loop could not run: a stall a user would feel as a frozen window.

    QT_QPA_PLATFORM=offscreen .venv/bin/python benchmarks/bench_gui_stall.py --scans 2000

Prints the longest stall, the 99th-percentile tick gap, the batch time and the rate.
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
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
log = logging.getLogger("bench_gui_stall")


def make_scans(folder: Path, count: int, side: int = 256) -> Path:
    """``count`` distinct PNGs from the real test images, in sub-folders of 200."""
    sources = sorted(p for p in DATA.rglob("*") if p.suffix.lower() in (".png", ".jpeg"))
    bases = []
    for path in sources:
        with Image.open(path) as image:
            grey = image.convert("L")
            grey.thumbnail((side, side))
            bases.append(np.asarray(grey, dtype=np.int16))
    rng = np.random.default_rng(20261122)
    for i in range(count):
        base = bases[i % len(bases)]
        noisy = np.clip(base + rng.integers(-3, 4, size=base.shape), 0, 255).astype(np.uint8)
        sub = folder / f"part{i // 200:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noisy).save(sub / f"scan_{i:05d}.png", compress_level=1)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scans", type=int, default=2000)
    parser.add_argument(
        "--sort", action="store_true", help="keep the table sorted by TB score while it fills"
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
    sys.path.insert(0, str(REPO))  # the stand-in model factory lives in tests/
    from tests.model_factory import build_model_set

    models = build_model_set(work / "models")
    started = time.perf_counter()
    scans = make_scans(work / "scans", args.scans)
    log.warning("made %d scans in %.1f s", args.scans, time.perf_counter() - started)

    from PySide6.QtCore import QEventLoop, Qt, QTimer

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
    window.show()
    loop = QEventLoop()
    window.models_changed.connect(lambda _m: loop.quit())
    window.start()
    loop.exec()
    if args.sort:
        col = window.model.column_of(Column.SCORE, "tb")
        window.view.sortByColumn(col, Qt.SortOrder.DescendingOrder)

    gaps: list[float] = []
    when: list[float] = []
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        when.append(now - t0)
        last[0] = now

    ticker = QTimer()
    ticker.setTimerType(Qt.TimerType.PreciseTimer)
    ticker.setInterval(10)
    ticker.timeout.connect(tick)

    done = QEventLoop()
    window.batch.batch_finished.connect(lambda *_a: done.quit())
    window.batch.batch_failed.connect(lambda *_a: done.quit())
    t0 = time.perf_counter()
    last[0] = t0
    ticker.start()
    window.open_paths([scans])
    done.exec()
    elapsed = time.perf_counter() - t0
    ticker.stop()

    rows = window.model.rowCount()
    window.close()
    app.processEvents()
    if rows != args.scans:
        log.error("expected %d rows, got %d", args.scans, rows)
        return 1
    _report(
        "window" + (" (table sorted by TB score)" if args.sort else ""), rows, elapsed, gaps, when
    )
    return 0


def _report(label: str, rows: int, elapsed: float, gaps: list[float], when: list[float]) -> None:
    gaps_ms = np.array(gaps) * 1000
    sys.stdout.write(
        f"{label}: scans={rows} batch_s={elapsed:.1f} rate={rows / elapsed:.0f}/s "
        f"ticks={len(gaps)} longest_stall_ms={gaps_ms.max():.1f} "
        f"p99_gap_ms={np.percentile(gaps_ms, 99):.1f} median_gap_ms={np.median(gaps_ms):.1f}\n"
    )
    slow = [f"{w:.1f}s:{g:.0f}ms" for w, g in zip(when, gaps_ms, strict=True) if g > 100]
    sys.stdout.write(f"gaps_over_100ms={len(slow)} at {' '.join(slow[:20])}\n")
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

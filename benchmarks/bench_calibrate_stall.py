"""How long can the Calibrate dialog freeze while it calibrates on a labelled set? (< 100 ms.)

Opens the real CalibrateDialog with the shipped models (``assets/models``) and a fresh
results store (nothing reused), points it at a real labelled folder (one sub-folder per
label; by default the NLM TB set in ``shared/data/tb/nlm_299``: 341 normal and 327 TB chest
X-rays, for the ``tb`` model; ``tests/data/calibration/pneumonia`` with ``--model pneumonia``
where the shared data is missing), presses "Screen and calibrate", and records the gaps
between ticks of a 10 ms QTimer on the GUI thread from the press until the ROC curve and the
figures are shown (and half a second after, for the repaint). A gap is time the event loop
could not run: a stall a user would feel.

    QT_QPA_PLATFORM=offscreen .venv/bin/python benchmarks/bench_calibrate_stall.py
    QT_QPA_PLATFORM=offscreen .venv/bin/python benchmarks/bench_calibrate_stall.py --in-process

The run goes to the batch process, as in the app (desktop/engine/batch_process.py with a
batch_process.CalibrationTask); ``--in-process`` runs the same task in a thread of the dialog's
process, as before that change, so the two can be alternated on the same machine (A/B
pairs, same load). Prints the same figures as ``bench_gui_stall.py`` (longest stall, p99,
gaps over 100 ms, the gaps less the GUI thread's waits for a core, the load average) and
the calibration's threshold and AUC, which must not depend on the mode.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED_TB = REPO.parent / "shared" / "data" / "tb" / "nlm_299"

from bench_gui_stall import StallMeter, _report  # noqa: E402

log = logging.getLogger("bench_calibrate_stall")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--labelled", type=Path, default=None, help="folder with one sub-folder per label"
    )
    parser.add_argument("--model", default=None, help="finding model id (tb, pneumonia)")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="calibrate in a thread of the dialog's process (the way before the batch process)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    labelled, model = args.labelled, args.model
    if labelled is None:
        if SHARED_TB.is_dir():
            labelled, model = SHARED_TB, model or "tb"
        else:
            labelled, model = REPO / "tests/data/calibration/pneumonia", model or "pneumonia"
    model = model or "tb"

    work = Path(tempfile.mkdtemp(prefix="medscreen-calstall-"))
    os.environ["MEDSCREEN_HOME"] = str(work / "home")

    from PySide6.QtCore import QEventLoop, QTimer

    from desktop.engine.registry import load_model_set
    from desktop.engine.site_points import SitePointStore
    from desktop.engine.store import ResultsStore
    from desktop.gui.app import create_app
    from desktop.gui.calibrate_dialog import CalibrateDialog

    app = create_app(["bench"])
    models = load_model_set([REPO / "assets" / "models"])
    store = ResultsStore(work / "results.sqlite3")
    dialog = CalibrateDialog(
        models, store, site_store=SitePointStore(work / "site"), record_dir=work / "records"
    )
    dialog.in_process = args.in_process
    dialog.set_model(model)
    dialog.set_source(labelled)
    dialog.show()
    app.processEvents()

    meter = StallMeter()
    outcomes: list[object] = []
    done = QEventLoop()
    dialog.calibrated.connect(lambda outcome: (outcomes.append(outcome), done.quit()))
    failed: list[str] = []
    cpu0 = time.thread_time()
    t0 = meter.start()
    started = time.perf_counter()
    worker = dialog.start()
    start_ms = (time.perf_counter() - started) * 1000
    if worker is None:
        log.error("the dialog did not start")
        return 1
    # an error ends the worker without "calibrated": stop the loop then too
    worker.errored.connect(lambda e: (failed.append(str(e)), done.quit()))
    done.exec()
    shown = time.perf_counter() - t0
    settle = QEventLoop()
    QTimer.singleShot(500, settle.quit)  # the curve's and the figures' repaint
    settle.exec()
    meter.stop()
    gui_cpu = time.thread_time() - cpu0
    while dialog.is_running():
        app.processEvents()
        time.sleep(0.01)
    if failed or not outcomes:
        log.error("calibration failed: %s", failed or "no outcome")
        return 1
    outcome = outcomes[0]
    cal = outcome.calibration  # type: ignore[attr-defined]
    scores = outcome.scores  # type: ignore[attr-defined]
    n = scores.n_positive + scores.n_negative
    mode = "calibration in this process" if args.in_process else "calibration in batch process"
    _report(f"dialog, {mode}", n, shown, meter.gaps, meter.when)
    meter.write_less_core_waits()
    sys.stdout.write(
        f"start_call_ms={start_ms:.1f} gui_thread_cpu_s={gui_cpu:.1f}\n"
        f"labelled={labelled} model={model} used={n} excluded={len(scores.excluded)}\n"
    )
    if cal is None:
        sys.stdout.write(f"no calibration: {outcome.error}\n")  # type: ignore[attr-defined]
    else:
        sys.stdout.write(
            f"threshold={cal.chosen.threshold:.6f} auc={cal.auc:.6f} "
            f"auc_ci=({cal.auc_ci[0]:.4f}, {cal.auc_ci[1]:.4f}) "
            f"scores_sha256={hashlib.sha256(scores.scores.tobytes()).hexdigest()[:16]}\n"
        )
    dialog.close()
    store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How long the results table holds the GUI thread when a big table is sorted or re-sorted.

Opens a stored batch (the 20,000-scan one that ``bench_gui_memory.py --keep DIR`` leaves in
``DIR/run_20000_*/results.sqlite3``, say) in the window's table: ``ResultsModel`` over the
store, ``ResultsProxy`` and ``ResultsView``, offscreen, 1366 px wide, sorted by Attention as
the window starts; the shipped models' manifests. Then it prints the longest event-loop gap
(a 10 ms timer's largest interval) of each explicit sort a header click runs (score, file,
status, attention; both ways) and of each change of operating point (twice) and patient
group (once): the rows are re-derived in slices, then re-sorted and re-filtered.

To compare two versions of the code, run each tree's copy of this script with the same
interpreter (``PYTHONPATH=TREE python TREE/benchmarks/bench_table_sort.py STORE``),
alternating. Usage: ``python benchmarks/bench_table_sort.py STORE [--batch ID]``. Prints
figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from event_gaps import EventLoopGaps  # noqa: E402


def longest_gap(
    app: object, action: Callable[[], object], wait: Callable[[], None]
) -> tuple[float, float]:
    """How long ``action`` held the GUI thread, and the longest the event loop went without
    a turn while it ran, then while ``wait`` ran the loop (a re-derivation in slices), then
    50 ms more (what it queued: a relayout, the repaint of rows not shown before, their
    thumbnails read from the store)."""
    with EventLoopGaps(app) as gaps:
        start = gaps.restart()
        action()
        call = time.perf_counter() - start
        gaps.tick()
        wait()
        gaps.settle()
    return call, gaps.longest


def run(store_path: Path, batch_id: str | None) -> None:
    from PySide6.QtCore import QEventLoop, Qt
    from PySide6.QtWidgets import QApplication

    import desktop.gui.results_model as results_model
    from desktop.engine.inference import choose_device
    from desktop.engine.patients import PatientChoice, PatientGroup
    from desktop.engine.registry import default_model_dirs, load_model_set
    from desktop.engine.results import ThresholdChoice
    from desktop.engine.store import ResultsStore
    from desktop.gui.results_model import Column, ResultsModel, ResultsProxy
    from desktop.gui.results_view import ResultsView

    app = QApplication.instance() or QApplication(["bench"])
    store = ResultsStore(store_path)
    batch_id = batch_id or store.batches(limit=1)[0].id
    models = load_model_set(default_model_dirs(), choose_device("cpu"))
    model = ResultsModel(store=lambda: store)
    model.set_manifests(models.manifests)
    proxy = ResultsProxy()
    proxy.setSourceModel(model)
    view = ResultsView(proxy)
    view.resize(1366, 700)
    view.show()
    model.adopt(model.stored_loader(batch_id)())
    app.processEvents()
    print(
        f"{results_model.__file__}: {model.rowCount()} rows of batch {batch_id}; "
        f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}",
        flush=True,
    )

    def settle() -> None:
        if model.derivation_pending():
            loop = QEventLoop()
            model.derived.connect(loop.quit)
            loop.exec()

    sorts = []
    for kind, mid in (
        (Column.SCORE, model.finding_ids()[0]),
        (Column.FILE, None),
        (Column.STATUS, None),
        (Column.TRIAGE, None),
    ):
        column = model.column_of(kind, mid)
        for order in (Qt.SortOrder.DescendingOrder, Qt.SortOrder.AscendingOrder):
            call, gap = longest_gap(app, lambda c=column, o=order: view.sortByColumn(c, o), settle)
            sorts.append(f"{kind.value} {order.name[:-5].lower()} {call:.3f} / {gap:.3f}")
    print(
        "explicit sorts, the call / the longest event-loop gap (s): " + ", ".join(sorts),
        flush=True,
    )
    changes = []
    for label, change in (
        ("point 0.5", lambda: model.set_choice(ThresholdChoice(threshold=0.5))),
        ("point default", lambda: model.set_choice(ThresholdChoice())),
        ("adults", lambda: model.set_patients(PatientChoice(batch=PatientGroup.ADULT))),
    ):
        t0 = time.perf_counter()
        _call, gap = longest_gap(app, change, settle)
        changes.append(f"{label} {gap:.3f} (done in {time.perf_counter() - t0:.1f} s)")
    print("re-derive + re-sort, longest event-loop gap (s): " + ", ".join(changes), flush=True)
    view.close()
    store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", type=Path)
    parser.add_argument("--batch", default=None)
    args = parser.parse_args()
    run(args.store, args.batch)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

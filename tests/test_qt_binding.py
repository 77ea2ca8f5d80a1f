"""The Qt binding keeps ``True`` alive through signals (PySide6 6.12.0 did not, see qt_compat).

On CPython 3.11 ``True`` is an ordinary object with a reference count. PySide6 6.12.0 drops
one reference to it in every ``emit()`` and ``disconnect()`` made from Python; a long batch
then freed ``True`` and aborted the process in whatever thread touched it next. These tests
fail on such a binding: the probe directly, and a real batch through the window by the drift
of ``True``'s count over a few hundred signals.
"""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before pytest-qt makes the QApplication

import pytest

pytest.importorskip("pytestqt")


from desktop.engine.store import ResultsStore
from desktop.gui import qt_compat
from desktop.gui.main_window import MainWindow
from desktop.gui.settings import AppSettings
from tests.fixtures import distinct_scans

pytestmark = pytest.mark.gui

DATA = Path(__file__).parent / "data"
WAIT_MS = 60_000


def _distinct_scans(folder: Path, count: int, side: int = 96) -> Path:
    """``count`` distinct small PNGs from the real test chest X-rays."""
    sources = sorted((DATA / "tb").rglob("*.png")) + sorted((DATA / "pneumonia").rglob("*.jpeg"))
    return distinct_scans(folder, count, sources, side=side, seed=20261201)


def test_binding_loses_no_reference_on_emit_or_disconnect():
    lost = qt_compat.true_references_lost()
    assert lost["emit"] <= 2 and lost["disconnect"] <= 2, lost
    assert qt_compat.binding_problem() is None


def test_a_gui_batch_leaves_true_referenced(qtbot, tmp_path: Path, stand_in_models: Path):
    """A real batch in the window: every signal path the app uses (worker started/yielded/
    returned/finished from a QThread, the controller's coalesced rows and progress, the
    model's dataChanged, cross-thread queued and direct connections), a few hundred emits."""
    scans = 240
    warm = _distinct_scans(tmp_path / "warm", 12)
    batch = _distinct_scans(tmp_path / "batch", scans)
    store = ResultsStore(tmp_path / "results.sqlite3")
    window = MainWindow(
        settings=AppSettings(tmp_path / "settings.ini"), store=store, model_dirs=[stand_in_models]
    )
    qtbot.addWidget(window)
    try:
        window.show()
        with qtbot.waitSignal(window.models_changed, timeout=WAIT_MS):
            window.start()
        # A first batch fills every cache a batch touches, so the second one only moves
        # True's count by what it keeps (its rows, cleared below) and by what the binding loses.
        with qtbot.waitSignal(window.batch.batch_finished, timeout=WAIT_MS):
            window.open_paths([warm])
        window.model.clear()
        gc.collect()
        before = sys.getrefcount(True)
        yielded: list[object] = []
        window.batch.progress.connect(yielded.append)
        with qtbot.waitSignal(window.batch.batch_finished, timeout=WAIT_MS):
            window.open_paths([batch])
        assert window.model.rowCount() == scans
        assert yielded, "the batch reported no progress"
        yielded.clear()
        window.model.clear()
        gc.collect()
        drift = sys.getrefcount(True) - before
        # 6.12.0 loses one per emit: hundreds here. Objects that merely come and go move it
        # by a few.
        assert drift > -20, f"True lost {-drift} references over a {scans}-scan batch"
    finally:
        window.close()
        store.close()


def test_the_window_refuses_to_start_on_a_binding_that_loses_true(monkeypatch, capsys):
    """A known-bad binding stops the window at start, with what to install, before any
    thread or signal exists (not a crash minutes into a batch)."""
    from desktop.gui import app

    def bad() -> str:
        return "PySide6 6.12.0 loses a reference to True on every emit() call"

    monkeypatch.setattr(qt_compat, "binding_problem", bad)
    assert app.main([]) == 3
    assert "MedScreen cannot start: PySide6 6.12.0 loses" in capsys.readouterr().err

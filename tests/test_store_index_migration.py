"""An older store's missing covering index is built off the window's GUI thread.

``results_screened`` (the screening time without the thumbnail's overflow pages) came after
stores were already in use. Built when such a store was opened, it took ~0.5 s per 20,000
results, on the thread that opened it: the window's GUI thread at start-up. The window now
opens the store with ``defer_indexes`` and builds the index in a worker; reads are correct
without it meanwhile. The CLI and the batch process, which no one watches frozen, build it
as they open the store. Tested on a store of real screened scans whose index was dropped,
watching which thread executes each SQL statement.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from desktop.engine import store as store_module
from desktop.engine.paths import default_db_path
from desktop.engine.registry import load_model_set
from desktop.engine.runner import BatchRunner, run_to_end
from desktop.engine.store import ResultsStore
from desktop.gui.main_window import MainWindow
from desktop.gui.settings import AppSettings

WAIT_MS = 60_000


def _builds(sql: str) -> bool:
    """Whether ``sql`` (a statement, or a script holding it) creates results_screened."""
    return "CREATE INDEX IF NOT EXISTS results_screened ON results" in sql


def _has_index(db: Path) -> bool:
    with sqlite3.connect(db) as plain:
        found = plain.execute(
            "SELECT 1 FROM sqlite_master WHERE type='index' AND name='results_screened'"
        ).fetchone()
    plain.close()
    return found is not None


@pytest.fixture
def old_store(stand_in_models: Path, chest_folder: Path) -> tuple[Path, str]:
    """The user's store (this test's MEDSCREEN_HOME) holding a real batch of 24 chest
    X-rays, made as a MedScreen before ``results_screened`` left it: the index dropped."""
    db = default_db_path()
    db.parent.mkdir(parents=True, exist_ok=True)
    store = ResultsStore(db)
    summary = run_to_end(BatchRunner(load_model_set([stand_in_models], threads=1), store).run(
        [chest_folder]
    ))  # fmt: skip
    store.close()
    assert summary.ok == 24
    with sqlite3.connect(db) as plain:
        plain.execute("DROP INDEX results_screened")
    plain.close()
    assert not _has_index(db)
    return db, summary.batch_id


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """Every SQL statement the store's connections execute, with the executing thread."""
    executed: list[tuple[int, str]] = []
    real_connect = sqlite3.connect

    def traced(*args, **kwargs) -> sqlite3.Connection:
        db = real_connect(*args, **kwargs)
        db.set_trace_callback(lambda sql: executed.append((threading.get_ident(), sql)))
        return db

    monkeypatch.setattr(store_module.sqlite3, "connect", traced)
    return executed


def test_the_window_builds_the_missing_index_in_a_worker(
    qtbot, tmp_path: Path, stand_in_models: Path, old_store, statements
):
    db, batch_id = old_store
    gui = threading.get_ident()
    window = MainWindow(
        settings=AppSettings(tmp_path / "settings.ini"), model_dirs=[stand_in_models]
    )
    qtbot.addWidget(window)
    window.show()
    try:
        with qtbot.waitSignal(window.models_changed, timeout=WAIT_MS):
            window.start()
        store = window.store  # opened on this (the GUI) thread, at start-up
        qtbot.waitUntil(lambda: _has_index(db), timeout=WAIT_MS)
        qtbot.waitUntil(lambda: not window.busy(), timeout=WAIT_MS)
        builds = [ident for ident, sql in statements if _builds(sql)]
        assert builds and gui not in builds  # built, and not by the GUI thread
        assert any(ident == gui for ident, _ in statements)  # the GUI thread did open it
        assert store.has_screened_index()
        rows = [(s, r.screened_at) for s, r in store.batch_rows(batch_id, thumbnails=False)]
        assert len(rows) == 24 and all(t for _, t in rows)
    finally:
        window.close()
        if window._store is not None:
            window._store.close()


def test_reads_are_right_before_the_index_exists_and_the_cli_builds_it(old_store, statements):
    db, batch_id = old_store
    deferred = ResultsStore(db, defer_indexes=True)
    try:
        assert not deferred.has_screened_index() and not _has_index(db)
        without = [(s, r.screened_at) for s, r in deferred.batch_rows(batch_id, thumbnails=False)]
        with_thumbs = [(s, r.screened_at) for s, r in deferred.batch_rows(batch_id)]
        assert without == with_thumbs and len(without) == 24 and all(t for _, t in without)
        assert not any(_builds(sql) for _, sql in statements)

        cli = ResultsStore(db)  # the CLI's and the batch process's way: built at open
        cli.close()
        assert _has_index(db)
        assert deferred.has_screened_index()  # seen from the other connection too
        assert deferred.build_indexes() is False  # nothing left to build
        again = [(s, r.screened_at) for s, r in deferred.batch_rows(batch_id, thumbnails=False)]
        assert again == with_thumbs
    finally:
        deferred.close()

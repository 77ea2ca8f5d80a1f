"""The window's results table keeps its rows in the results store, not in memory.

Per row the table holds where the scan is in the store (batch, seq) and a few numbers
(``results_model.RowColumns``); a row's result is read back when it is shown. These tests
screen real scans with the shipped models and check what that must not change: the rows
read back equal what is stored, a row keeps its identity through sorts, F3 and the viewer
walk the flagged rows in triage order, a new operating point or patient group re-derives
the counts from the store (at once, and in slices for a big table, rows arriving
meanwhile), a stored batch opens without its thumbnails, and the window's report equals
the report of the same rows held in memory (what the window wrote before).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt

from desktop.engine.patients import PatientChoice, PatientGroup
from desktop.engine.registry import default_model_dirs
from desktop.engine.results import (
    BatchCounts,
    ScanResult,
    ScanStatus,
    ScopeRule,
    ThresholdChoice,
    finding_flags,
    operating_points,
)
from desktop.engine.store import ResultsStore
from desktop.engine.triage import triage_key
from desktop.gui.main_window import MainWindow
from desktop.gui.results_model import Column, compact_row
from desktop.gui.settings import AppSettings
from tests.conftest import DATA, screen_mixed_batch

pytestmark = pytest.mark.gui

WAIT_MS = 120_000


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ResultsStore, str, object]]:
    """A real batch screened by the shipped models (both chest sets, DICOM, a hand, a head
    CT and a damaged file), committed to a store."""
    store, batch_id, models = screen_mixed_batch(tmp_path_factory.mktemp("table"))
    yield store, batch_id, models
    store.close()


def _without_maps(result: ScanResult) -> ScanResult:
    from dataclasses import replace

    findings = {k: replace(f, activation=None) for k, f in result.findings.items()}
    return replace(result, findings=findings, thumbnail_png=None)


def test_store_reads_rows_without_maps_and_their_keys(stored) -> None:
    """``batch_rows(maps=False)``: every stored field but the class maps (dropped by SQLite);
    ``batch_keys``: each finished item's seq, file and hash, all or some."""
    store, batch_id, _ = stored
    full = list(store.batch_rows(batch_id, thumbnails=False))
    light = list(store.batch_rows(batch_id, thumbnails=False, maps=False))
    assert len(full) > 20 and any(r.findings for _, r in full)
    assert any(f.activation is not None for _, r in full for f in r.findings.values())
    assert [s for s, _ in light] == [s for s, _ in full]
    assert [r for _, r in light] == [_without_maps(r) for _, r in full]
    keys = list(store.batch_keys(batch_id))
    assert keys == [(s, r.file, r.sha256) for s, r in full]
    some = [full[3][0], full[0][0], full[-1][0]]
    assert list(store.batch_keys(batch_id, some)) == [k for k in keys if k[0] in some]
    with pytest.raises(ValueError, match="at most 500"):
        list(store.batch_keys(batch_id, list(range(501))))


def test_rows_without_thumbnails_take_their_time_from_the_index(stored) -> None:
    """A stored row's screening time sits after its thumbnail (~25 kB): read from the row,
    SQLite walks the thumbnail's overflow pages for every row the table paints (120 rows of a
    20,000-scan store: 46-68 ms against 5 ms). Without thumbnails it comes from the covering
    index ``results_screened``; the values are the row's own."""
    store, batch_id, _ = stored
    with_thumbs = [(s, r.screened_at) for s, r in store.batch_rows(batch_id)]
    without = [(s, r.screened_at) for s, r in store.batch_rows(batch_id, thumbnails=False)]
    assert without == with_thumbs and all(t for _, t in without)
    from desktop.engine.store import _SCREENED_AT_FROM_INDEX

    plan = (
        store._db()
        .execute(f"EXPLAIN QUERY PLAN SELECT {_SCREENED_AT_FROM_INDEX} FROM results r")
        .fetchall()
    )
    assert any("COVERING INDEX results_screened" in str(step[-1]) for step in plan), plan


def _engine_counts(store, batch_id, models, choice, patients=None) -> BatchCounts:
    findings = {k: m.manifest for k, m in models.findings.items()}
    rows = store.batch_results(batch_id, thumbnails=False)
    points = operating_points(findings, choice, strict=False)
    return BatchCounts.tally(rows, points, ScopeRule.of(models.manifests, patients))


def test_table_rederives_from_the_store_at_once_and_in_slices(qtbot, stored, monkeypatch) -> None:
    """A new point or patient group: counts, flags and the triage order re-derived from the
    store by the engine's rules, for a small table at once and for a big one in slices (here
    forced), rows arriving meanwhile included."""
    import desktop.gui.results_model as results_model
    from desktop.gui.results_model import ResultsModel, ResultsProxy

    store, batch_id, models = stored
    items = list(store.batch_rows(batch_id))
    model = ResultsModel(store=lambda: store)
    proxy = ResultsProxy()
    proxy.setSourceModel(model)
    proxy.sort(0)
    model.set_manifests(models.manifests)
    half = len(items) // 2
    model.append_items(batch_id, items[:half])
    assert model.counts() == BatchCounts.tally(
        (r for _, r in items[:half]), model._points, model.scope_rule()
    )

    choice = ThresholdChoice(threshold=0.3)
    model.set_choice(choice)  # small table: at once
    assert not model.derivation_pending()
    model.append_items(batch_id, items[half:])
    assert model.counts() == _engine_counts(store, batch_id, models, choice)
    assert model.counts().flagged_any > 0

    monkeypatch.setattr(results_model, "ASYNC_ROWS", 0)
    monkeypatch.setattr(results_model, "SLICE_ROWS", 5)
    monkeypatch.setattr(results_model, "SLICE_S", 0.0)  # one slice a turn of the event loop
    model.clear()
    model.append_items(batch_id, items[:half])
    children = PatientChoice(batch=PatientGroup.CHILD)
    with qtbot.waitSignal(model.derived, timeout=WAIT_MS):
        model.set_patients(children)
        assert model.derivation_pending()
        model.append_items(batch_id, items[half:])  # arrives while it is derived
    assert not model.derivation_pending()
    expected = _engine_counts(store, batch_id, models, choice, children)
    assert model.counts() == expected and model.counts().total == len(items)
    assert expected.outside_scope_any > 0  # children: the adults-only model is out of scope

    scope = ScopeRule.of(models.manifests, children)
    points = model._points
    stored_rows = [r for _, r in items]
    for row, result in enumerate(stored_rows):
        flags = finding_flags(result, points, scope)
        assert model.row_flagged(row) == any(bool(f) for f in flags.values())
        assert model.triage_key(row) == triage_key(result, points, scope)
    by_key = sorted(range(len(items)), key=lambda r: (triage_key(stored_rows[r], points, scope), r))
    assert model.triage_rows() == by_key
    shown = [proxy.mapToSource(proxy.index(r, 0)).row() for r in range(proxy.rowCount())]
    assert shown == by_key  # the proxy re-sorted once the rows were derived


def test_text_columns_sort_past_the_coded_texts(stored, monkeypatch) -> None:
    """Texts past the table's coded ones are read back from their rows to sort: the order
    is the same as the cells' sort values, whatever is coded."""
    import desktop.gui.results_model as results_model
    from desktop.gui.results_model import ResultsModel, ResultsProxy, SortRole

    store, batch_id, models = stored
    monkeypatch.setattr(results_model, "TEXT_CODES", 2)
    model = ResultsModel(store=lambda: store)
    proxy = ResultsProxy()
    proxy.setSourceModel(model)
    model.set_manifests(models.manifests)
    model.append_items(batch_id, list(store.batch_rows(batch_id, thumbnails=False)))
    assert -2 in model._cols.reason  # some reasons were not coded
    for kind in (Column.REASON, Column.MODALITY, Column.FILE, Column.STATUS):
        column = model.column_of(kind)
        proxy.sort(column, Qt.SortOrder.AscendingOrder)
        values = [proxy.index(r, column).data(SortRole) for r in range(proxy.rowCount())]
        texts = [v for v in values if v is not None]
        assert texts == sorted(texts) and values[: len(texts)] == texts, kind


def test_rows_read_back_equal_the_store_and_stay_bounded(stored) -> None:
    """The rows hold no result: each read back equals the stored one (compact, no maps),
    a page at a time, and the cache stays bounded."""
    import desktop.gui.results_model as results_model
    from desktop.gui.results_model import ResultsModel

    store, batch_id, models = stored
    items = list(store.batch_rows(batch_id, thumbnails=False))
    model = ResultsModel(store=lambda: store)
    model.set_manifests(models.manifests)
    order = items[1::2] + items[0::2]  # arrival order is not the folder's order
    model.append_items(batch_id, order)
    model._cache.clear()
    assert not model._held
    for row, (_, result) in enumerate(order):
        assert model.result(row) == compact_row(_without_maps(result))
        assert model.file_name(row) == result.file
    assert len(model._cache) <= results_model.ROW_CACHE
    assert model.results() == [compact_row(_without_maps(r)) for _, r in order]
    statuses = {model.row_status(r) for r in range(model.rowCount())}
    assert {ScanStatus.OK, ScanStatus.ERROR, ScanStatus.NOT_CHEST_XRAY} <= statuses


@pytest.fixture
def window(qtbot, tmp_path: Path):
    settings = AppSettings(tmp_path / "settings.ini")
    settings.operator = "Dr A. Mwangi"
    store = ResultsStore(tmp_path / "results.sqlite3")
    window = MainWindow(settings=settings, store=store, model_dirs=default_model_dirs())
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    with qtbot.waitSignal(window.models_changed, timeout=WAIT_MS):
        window.start()
    yield window, store
    window.close()
    store.close()


def _current_row(window: MainWindow) -> int:
    return window.proxy.mapToSource(window.view.currentIndex()).row()


def test_window_rows_identity_f3_history_and_report(qtbot, window, tmp_path: Path) -> None:
    """The window screens a folder: rows are places in the store; a row keeps its identity
    through sorts; F3 and the viewer walk the flagged rows in triage order; a stored batch
    opens without thumbnails; the report equals the one from the same rows in memory."""
    from desktop.engine.reports import ReportContext, write_reports

    window, store = window
    root = tmp_path / "folder"
    for sub in ("tb", "pneumonia/pneumonia", "mednist/Hand"):
        shutil.copytree(DATA / sub, root / sub)
    (root / "damaged.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with qtbot.waitSignal(window.batch.batch_finished, timeout=WAIT_MS):
        window.open_paths([root])
    model, proxy = window.model, window.proxy
    batch_id = window.batch.batch_id
    total = model.rowCount()
    assert total == store.item_count(batch_id) > 20
    assert not model._held  # every row is a place in the store
    assert sorted(model._cols.seq) == [s for s, _, _ in store.batch_keys(batch_id)]

    # identity after sorts: the current row stays the same scan
    file_col = model.column_of(Column.FILE)
    window.view.sortByColumn(file_col, Qt.SortOrder.DescendingOrder)
    names = [model.file_name(proxy.mapToSource(proxy.index(r, 0)).row()) for r in range(total)]
    assert [Path(n).name for n in names] == sorted((Path(n).name for n in names), reverse=True)
    window.view.setCurrentIndex(proxy.index(3, file_col))
    row = _current_row(window)
    chosen = model.result(row)
    score_col = model.column_of(Column.SCORE, model.finding_ids()[0])
    window.view.sortByColumn(score_col, Qt.SortOrder.AscendingOrder)
    assert _current_row(window) == row and model.result(row).file == chosen.file
    scores = [
        proxy.data(proxy.index(r, score_col), Qt.ItemDataRole.UserRole + 1) for r in range(total)
    ]
    assert scores == sorted(scores)

    # F3 walks the flagged rows in triage order, whatever the sort, and wraps
    flagged = window.triage_rows(flagged_only=True)
    assert flagged and all(model.row_flagged(r) for r in flagged)
    assert flagged == [r for r in model.triage_rows() if model.row_flagged(r)]
    window.view.setCurrentIndex(proxy.index(0, 0))
    if _current_row(window) in flagged:
        window.view.clearSelection()
        window.view.setCurrentIndex(proxy.index(-1, -1))
    visited = []
    for _ in range(len(flagged) + 1):
        window.goto_flagged(1)
        visited.append(_current_row(window))
    assert visited == [*flagged, flagged[0]]
    points, scope = model._points, model.scope_rule()
    for r in flagged:
        assert any(finding_flags(model.result(r), points, scope).values())

    # a reader's decision: coded per row from one light query, sorted by its words
    from desktop.engine.decisions import Decision

    decided = flagged[0]
    window.record_decision(model.result(decided), Decision.FOLLOW_UP, "")
    decision_col = model.column_of(Column.DECISION)
    window.view.sortByColumn(decision_col, Qt.SortOrder.DescendingOrder)
    assert proxy.mapToSource(proxy.index(0, 0)).row() == decided
    assert proxy.index(0, decision_col).data() == "Needs follow-up"
    assert proxy.index(1, decision_col).data() == ""

    # the viewer steps through the triage order by row; the table follows
    order = window.triage_rows()
    viewer = window.open_viewer(model.result(order[0]))
    window.step_viewer(viewer, 1)
    assert viewer.result.file == model.result(order[1]).file
    assert _current_row(window) == order[1]
    viewer.close()

    # the report from the window equals the report of the same rows held in memory
    ctx = ReportContext.for_batch(
        batch_id, window.models, model.choice(), operator="Dr A. Mwangi", patients=model.patients()
    )
    table = write_reports(model.table_report(), ctx, tmp_path / "table", ["csv", "json"], "r")
    memory = model.report_source(model.results())
    before = write_reports(memory, ctx, tmp_path / "memory", ["csv", "json"], "r")
    for a, b in zip(table, before, strict=True):
        assert a.read_bytes() == b.read_bytes()
    with qtbot.waitSignal(window.export_done, timeout=WAIT_MS) as done:
        window.export_report(tmp_path / "out" / "window.pdf")
    assert {Path(p).suffix for p in done.args[0]} == {".pdf", ".csv"}
    assert (tmp_path / "out" / "window.csv").read_text().count("\n") == total + 1

    # a stored batch opens from the history without its thumbnails
    calls: list[dict[str, object]] = []
    original = store.batch_rows

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    store.batch_rows = spy  # type: ignore[method-assign]
    counts = model.counts()
    with qtbot.waitSignal(window.batch_loaded, timeout=WAIT_MS):
        window.open_batch(batch_id)
    assert model.rowCount() == total and model.counts() == counts
    assert calls and all(c.get("thumbnails") is False for c in calls)
    assert not model._held
    assert model.results() == [
        compact_row(_without_maps(r)) for _, r in original(batch_id, thumbnails=False)
    ]

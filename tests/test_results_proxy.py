"""The results table's proxy sorts and filters with NumPy over the rows' numbers.

``ResultsProxy`` keeps the shown order as an array of source rows; these tests check, on a
real batch screened by the shipped models (both chest sets, DICOM, a hand, a head CT and a
damaged file; stored, arriving in another order than the folder's), that it is the order
of the cells' sort values for every column both ways (ties by source row; scores of models
that did not run -1; no text last), under filters and a file-name search, as rows arrive in
chunks and as a new operating point re-derives them, with the selection and the current
row kept on their scans. Qt's model tester watches the proxy throughout.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QItemSelectionModel, Qt
from PySide6.QtWidgets import QAbstractItemView, QTableView

from desktop.engine.patients import PatientChoice, PatientGroup
from desktop.engine.results import ScanStatus, ThresholdChoice
from desktop.engine.triage import triage_key
from desktop.gui.results_model import Column, Filter, ResultsModel, ResultsProxy, SortRole
from tests.conftest import screen_mixed_batch

pytestmark = pytest.mark.gui

ASC, DESC = Qt.SortOrder.AscendingOrder, Qt.SortOrder.DescendingOrder


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str, Any]]:
    store, batch_id, models = screen_mixed_batch(tmp_path_factory.mktemp("proxy"))
    yield store, batch_id, models
    store.close()


@pytest.fixture(autouse=True)
def _model_tester_content(qtlog: Any) -> Iterator[None]:
    """Qt's model tester reports what it finds wrong as warnings: none may come."""
    yield
    failures = [r.message for r in qtlog.records if "FAIL" in r.message]
    assert not failures


def _arrival(stored: tuple[Any, str, Any]) -> list[tuple[int, Any]]:
    """The batch's ``(seq, result)`` items in an order that is not the folder's."""
    store, batch_id, _ = stored
    items = list(store.batch_rows(batch_id, thumbnails=False))
    return items[1::2] + items[0::2]


def _model(stored: tuple[Any, str, Any]) -> ResultsModel:
    store, _, models = stored
    model = ResultsModel(store=lambda: store)
    model.set_manifests(models.manifests)
    return model


def _proxy(model: ResultsModel, qtmodeltester: Any) -> ResultsProxy:
    proxy = ResultsProxy()
    proxy.setSourceModel(model)
    qtmodeltester.check(proxy)  # Qt's tester follows every change from here on
    return proxy


def _expected(model: ResultsModel, column: int, order: Qt.SortOrder, rows: Any = None) -> list:
    """Source ``rows`` (all) in the order the cells' SortRole values give (None last), ties
    by source row; the Attention column by the engine's triage key, then the batch's order
    (seq: the reports' order), then the row."""
    rows = list(range(model.rowCount()) if rows is None else rows)
    kind = model.column_kind(column)
    if kind is Column.TRIAGE:
        points, scope, cols = model._points, model.scope_rule(), model._cols
        keys = {r: (triage_key(model.result(r), points, scope), cols.batch[r], cols.seq[r], r)
                for r in rows}  # fmt: skip
    elif kind is Column.THUMB:
        keys = {r: r for r in rows}
    else:
        values = {r: model.data(model.index(r, column), SortRole) for r in rows}
        keys = {r: (v is None, "" if v is None else v) for r, v in values.items()}
    return sorted(rows, key=keys.__getitem__, reverse=order == DESC)


def _shown(proxy: ResultsProxy) -> list[int]:
    return [proxy.mapToSource(proxy.index(p, 0)).row() for p in range(proxy.rowCount())]


def _values(model: ResultsModel, kind: Column, model_id: str | None = None) -> list[Any]:
    column = model.column_of(kind, model_id)
    return [model.data(model.index(r, column), SortRole) for r in range(model.rowCount())]


def test_every_column_sorts_as_its_values_both_ways(stored, qtmodeltester) -> None:
    """Each column, each direction, from a fresh proxy: the cells' sort values' order, on a
    batch with ties, scores of models that did not run (-1), scans outside a model's scope
    (children: the adults-only model), refused scans and an unreadable file."""
    model = _model(stored)
    model.append_items(stored[1], _arrival(stored))
    model.set_patients(PatientChoice(batch=PatientGroup.CHILD))
    n = model.rowCount()
    statuses = {model.row_status(r) for r in range(n)}
    assert {ScanStatus.OK, ScanStatus.NOT_CHEST_XRAY, ScanStatus.ERROR} <= statuses
    assert any(model.outside_scope(model.result(r)) for r in range(n))
    scores = _values(model, Column.SCORE, model.finding_ids()[0])
    assert scores.count(-1.0) >= 3 and len(set(scores)) > n // 2  # ties and real scores
    assert None in _values(model, Column.PATIENT)  # no findings: no patient group
    for column in range(model.columnCount()):
        for order in (ASC, DESC):
            proxy = _proxy(model, qtmodeltester)
            proxy.sort(column, order)
            assert _shown(proxy) == _expected(model, column, order), (column, order)
            assert (proxy.sortColumn(), proxy.sortOrder()) == (column, order)


def test_ties_keep_the_source_order_whatever_was_sorted_before(stored, qtmodeltester) -> None:
    """Equal keys stay in source-row order in either direction, not in the order an
    earlier sort left them (QSortFilterProxyModel kept that one: a table sorted by score,
    then by status, showed each status's rows by score)."""
    model = _model(stored)
    model.append_items(stored[1], _arrival(stored))
    proxy = _proxy(model, qtmodeltester)
    score = model.column_of(Column.SCORE, model.finding_ids()[0])
    status = model.column_of(Column.STATUS)
    proxy.sort(score, DESC)
    for order in (ASC, DESC):
        proxy.sort(status, order)
        assert _shown(proxy) == _expected(model, status, order)
    proxy.sort(-1)  # no sort column: the source's order
    assert _shown(proxy) == list(range(model.rowCount()))


def test_filters_and_search_with_a_sort(stored, qtmodeltester) -> None:
    """The filter kinds and the file-name search, with a sort: the rows each keeps, in the
    sort's order; ``accepts_row`` and ``mapFromSource`` agree for every source row."""
    model = _model(stored)
    model.append_items(stored[1], _arrival(stored))
    proxy = _proxy(model, qtmodeltester)
    score = model.column_of(Column.SCORE, model.finding_ids()[0])
    proxy.sort(score, DESC)
    n = model.rowCount()
    names = {r: model.file_name(r).lower() for r in range(n)}
    cases = [
        (Filter.FLAGGED, "", lambda r: model.row_flagged(r)),
        (Filter.FLAGGED, "chn", lambda r: model.row_flagged(r) and "chn" in names[r]),
        (Filter.ERRORS, "", lambda r: model.row_status(r) is ScanStatus.ERROR),
        (Filter.NOT_SCREENED, "", lambda r: model.row_status(r) is ScanStatus.NOT_CHEST_XRAY),
        (Filter.ALL, " CHN ", lambda r: "chn" in names[r]),
        (Filter.ALL, "", lambda r: True),
    ]
    for kind, search, keeps in cases:
        proxy.set_filter(kind)
        proxy.set_search(search)
        kept = [r for r in range(n) if keeps(r)]
        assert 0 < len(kept) <= n
        assert _shown(proxy) == _expected(model, score, DESC, kept), (kind, search)
        for r in range(n):
            assert (
                proxy.accepts_row(r)
                == (r in kept)
                == proxy.mapFromSource(model.index(r, 2)).isValid()
            )


def _table_view(proxy: ResultsProxy) -> QTableView:
    view = QTableView()
    view.setModel(proxy)
    view.setSortingEnabled(True)
    view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    view.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
    view.resize(800, 400)
    return view


def _selected(view: QTableView, proxy: ResultsProxy) -> set[int]:
    return {proxy.mapToSource(i).row() for i in view.selectionModel().selectedRows()}


@pytest.mark.parametrize("runs", [ResultsProxy.MAX_INSERT_RUNS, 0], ids=["inserts", "relayout"])
def test_rows_arriving_in_chunks_land_in_place_and_the_selection_stays(
    stored, qtmodeltester, qtbot, monkeypatch, runs
) -> None:
    """A table sorted by score (the view's header) while a batch runs: each chunk's rows
    are inserted where they belong (as row insertions, or as one layout change when a chunk
    lands in more places than ``MAX_INSERT_RUNS``), the view's rows follow, and the selected
    and current scan stay selected and current."""
    monkeypatch.setattr(ResultsProxy, "MAX_INSERT_RUNS", runs)
    items = _arrival(stored)
    model = _model(stored)
    proxy = _proxy(model, qtmodeltester)
    view = _table_view(proxy)
    qtbot.addWidget(view)
    score = model.column_of(Column.SCORE, model.finding_ids()[0])
    view.sortByColumn(score, DESC)  # the header asks the proxy
    assert (proxy.sortColumn(), proxy.sortOrder()) == (score, DESC)
    inserted: list[int] = []
    layouts: list[int] = []
    proxy.rowsInserted.connect(lambda _p, first, last: inserted.append(last - first + 1))
    proxy.layoutChanged.connect(lambda *_a: layouts.append(1))
    model.append_items(stored[1], items[:6])
    chosen = max(range(6), key=lambda r: (model.result(r).findings != {}, r))
    view.selectRow(proxy.mapFromSource(model.index(chosen, 0)).row())
    assert _selected(view, proxy) == {chosen}
    for start in range(6, len(items), 5):
        before = (sum(inserted), len(layouts))
        model.append_items(stored[1], items[start : start + 5])
        assert _shown(proxy) == _expected(model, score, DESC)
        assert _selected(view, proxy) == {chosen}
        assert proxy.mapToSource(view.currentIndex()).row() == chosen
        assert view.verticalHeader().count() == proxy.rowCount() == model.rowCount()
        new = len(items[start : start + 5])
        if runs:  # announced as insertions only
            assert (sum(inserted), len(layouts)) == (before[0] + new, before[1])
        else:
            assert len(layouts) == before[1] + 1
    view.grab()  # the view paints the rows it has
    assert proxy.rowCount() == len(items)


def test_rows_arriving_under_a_filter_and_a_name_sort(stored, qtmodeltester) -> None:
    """Sorted by file name, flagged only, searching "chn" while chunks arrive: new names are
    ranked among the ones ranked at the sort (no store query per chunk), hidden rows stay
    hidden, and each chunk's shown rows land in name order."""
    items = _arrival(stored)
    model = _model(stored)
    proxy = _proxy(model, qtmodeltester)
    file_col = model.column_of(Column.FILE)
    model.append_items(stored[1], items[:4])
    proxy.sort(file_col, ASC)
    proxy.set_filter(Filter.FLAGGED)
    proxy.set_search("chn")
    for start in range(4, len(items), 7):
        model.append_items(stored[1], items[start : start + 7])
        kept = [
            r
            for r in range(model.rowCount())
            if model.row_flagged(r) and "chn" in model.file_name(r).lower()
        ]
        assert _shown(proxy) == _expected(model, file_col, ASC, kept)
        assert all(proxy.accepts_row(r) == (r in kept) for r in range(model.rowCount()))
    assert len(kept) >= 3
    proxy.sort(file_col, DESC)  # a new sort ranks every name again, from the store
    assert _shown(proxy) == _expected(model, file_col, DESC, kept)


def test_a_new_operating_point_resorts_and_refilters_keeping_the_selection(
    stored, qtmodeltester, qtbot
) -> None:
    """Flagged scans in triage order; a lower threshold flags more (they join in order),
    the default again hides them: a selected scan that stays flagged stays selected, one
    that is hidden leaves the selection, and the view's rows follow."""
    model = _model(stored)
    model.append_items(stored[1], _arrival(stored))
    proxy = _proxy(model, qtmodeltester)
    view = _table_view(proxy)
    qtbot.addWidget(view)
    view.sortByColumn(0, ASC)
    proxy.set_filter(Filter.FLAGGED)
    flagged = [r for r in model.triage_rows() if model.row_flagged(r)]
    assert _shown(proxy) == flagged
    model.set_choice(ThresholdChoice(threshold=0.3))
    low = [r for r in model.triage_rows() if model.row_flagged(r)]
    assert _shown(proxy) == low and set(flagged) < set(low)
    kept, hidden = flagged[-1], next(r for r in low if r not in flagged)
    selection = view.selectionModel()
    for row in (kept, hidden):
        selection.select(
            proxy.mapFromSource(model.index(row, 0)),
            QItemSelectionModel.SelectionFlag.Select | QItemSelectionModel.SelectionFlag.Rows,
        )
    selection.setCurrentIndex(
        proxy.mapFromSource(model.index(kept, 2)), QItemSelectionModel.SelectionFlag.NoUpdate
    )
    assert _selected(view, proxy) == {kept, hidden}
    model.set_choice(ThresholdChoice())
    assert _shown(proxy) == flagged
    assert _selected(view, proxy) == {kept}
    assert proxy.mapToSource(view.currentIndex()).row() == kept
    assert view.verticalHeader().count() == len(flagged)


def test_the_sort_and_filter_survive_a_reset(stored, qtmodeltester) -> None:
    """Cleared and filled again (a new batch), or new models (new columns): the proxy
    keeps its sort column, order and filter."""
    model = _model(stored)
    proxy = _proxy(model, qtmodeltester)
    status = model.column_of(Column.STATUS)
    proxy.sort(status, DESC)
    proxy.set_filter(Filter.NOT_SCREENED)
    model.append_items(stored[1], _arrival(stored)[:10])
    model.clear()
    assert proxy.rowCount() == 0
    model.append_items(stored[1], _arrival(stored))
    refused = [
        r for r in range(model.rowCount()) if model.row_status(r) is ScanStatus.NOT_CHEST_XRAY
    ]
    assert refused and _shown(proxy) == _expected(model, status, DESC, refused)
    model.set_manifests(stored[2].manifests)  # a model reset with the rows kept
    assert _shown(proxy) == _expected(model, status, DESC, refused)
    assert proxy.parent() is None  # the QObject parent: no index asked


def test_a_dropped_proxy_is_freed_at_once_not_by_the_cyclic_collector(qtbot) -> None:
    """The proxy kept its slots as bound methods (a reference cycle through itself), so a
    dropped one waited for Python's cyclic collector, which destroys the Qt object whenever an
    allocation triggers it, possibly inside another object's event handling."""
    import gc
    import weakref

    from desktop.gui.results_model import ResultsModel, ResultsProxy

    model = ResultsModel()
    proxy = ResultsProxy()
    proxy.setSourceModel(model)
    dropped = weakref.ref(proxy)
    gc.disable()
    try:
        del proxy
        assert dropped() is None
    finally:
        gc.enable()

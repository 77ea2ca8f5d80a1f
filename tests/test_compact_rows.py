"""The results table keeps each row compact (``results_model.compact_row``) and unchanged.

Rows arrive unpickled from the batch process, each with its own copies of the same strings
(the model set's key, each finding's model key, dictionary keys). The table interns them: a
row must stay *equal* to what was screened (every score, flag, scope verdict and the triage
key), hold one shared string object for what every row repeats, and take less memory.
Real scans screened by the shipped models, read back from the store as the window gets them.
"""

from __future__ import annotations

import pickle
import tracemalloc
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from desktop.engine.results import (
    ScanResult,
    ScanStatus,
    ScopeRule,
    ThresholdChoice,
    finding_flags,
    operating_points,
)
from desktop.engine.triage import triage_key
from tests.conftest import screen_mixed_batch

pytest.importorskip("PySide6")


@pytest.fixture(scope="module")
def screened(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ScanResult]]:
    """A real batch screened by the shipped models: both chest sets, DICOM, a hand, a head CT
    and a damaged file, as stored results read back with their thumbnails."""
    store, batch_id, models = screen_mixed_batch(tmp_path_factory.mktemp("rows"))
    # each row as the window receives it: a pickled copy, strings of its own
    rows = [pickle.loads(pickle.dumps(r)) for r in store.batch_results(batch_id)]
    yield rows, models, store
    store.close()


def test_compact_rows_equal_the_screened_ones_and_share_their_strings(screened) -> None:
    from desktop.gui.results_model import compact_row

    rows, models, _ = screened
    assert (
        len(rows) > 20
        and any(r.findings for r in rows)
        and any(r.status is ScanStatus.ERROR for r in rows)
    )
    compact = [compact_row(r) for r in rows]
    assert compact == rows  # every field equal, thumbnails included
    chest = [c for c in compact if c.findings]
    assert len({id(c.models_key) for c in chest}) == 1  # one shared string, not one a row
    ids = {k: {id(c.findings[k].model_key) for c in chest} for k in chest[0].findings}
    assert all(len(v) == 1 for v in ids.values())
    assert len({id(next(iter(c.modality_probabilities))) for c in chest}) == 1

    scope = ScopeRule.of(models.manifests)
    points = operating_points(
        {k: m.manifest for k, m in models.findings.items()}, ThresholdChoice()
    )
    for before, after in zip(rows, compact, strict=True):
        assert finding_flags(after, points, scope) == finding_flags(before, points, scope)
        assert triage_key(after, points, scope) == triage_key(before, points, scope)

    stripped = [compact_row(r, strip_thumbnail=True) for r in rows]
    assert all(s.thumbnail_png is None for s in stripped if s.sha256)
    assert [s.findings for s in stripped] == [r.findings for r in rows]


def test_compact_rows_take_less_memory(screened) -> None:
    from desktop.gui.results_model import compact_row

    rows, _, _ = screened
    # as the batch process sends them: no thumbnail (the store has it); a few hundred rows
    blobs = [pickle.dumps(replace(r, thumbnail_png=None)) for r in rows if r.findings] * 10

    def held(make) -> float:
        tracemalloc.start()
        kept = [make(pickle.loads(b)) for b in blobs]
        size = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        assert len(kept) == len(blobs)
        return size / len(blobs)

    plain = held(lambda r: r)
    compact = held(compact_row)
    # measured ~5.0 kB against ~3.4 kB a chest row (the thumbnail not counted in either)
    assert compact < 0.8 * plain, (plain, compact)


def test_window_table_keeps_compact_rows(qtbot, screened, tmp_path: Path) -> None:
    """Rows appended to the window's model are compact and still read the same."""
    from desktop.gui.results_model import Column, ResultsModel

    rows, models, _ = screened
    model = ResultsModel(thumbnail_loader=lambda r: None)
    model.set_manifests(models.manifests)
    model.append(rows)
    chest = [model.result(i) for i in range(model.rowCount()) if model.result(i).findings]
    assert len({id(r.models_key) for r in chest}) == 1
    col = model.column_of(Column.SCORE, "tb")
    for i, row in enumerate(rows):
        shown = model.data(model.index(i, col))
        expected = f"{row.findings['tb'].probability:.2f}" if "tb" in row.findings else ""
        assert shown == expected
        assert model.result(i).findings == row.findings
    assert model.counts().total == len(rows)


def test_table_triage_columns_keep_the_engine_order(qtbot, screened) -> None:
    """The table's triage keys, held as typed arrays, give the engine's keys and order: F3's
    and the viewer's order, and the Attention column's sort (ties: the folder's order)."""
    from desktop.gui.results_model import ResultsModel, ResultsProxy

    rows, models, _ = screened
    rows = rows + rows[:5]  # exact ties: the same scans again, later rows
    model = ResultsModel(thumbnail_loader=lambda r: None)
    model.set_manifests(models.manifests)
    model.append(rows[:10])
    model.append(rows[10:])  # keys arrive in chunks, as the batch drains
    points = operating_points(
        {k: m.manifest for k, m in models.findings.items()}, ThresholdChoice()
    )
    scope = model.scope_rule()
    keys = [triage_key(r, points, scope) for r in rows]
    assert [model.triage_key(i) for i in range(len(rows))] == keys
    expected = sorted(range(len(rows)), key=lambda i: (keys[i], i))
    assert model.triage_rows() == expected
    assert len({keys[i].group for i in expected}) >= 3  # flagged, not flagged, refused/errors

    proxy = ResultsProxy()
    proxy.setSourceModel(model)
    proxy.sort(0)
    assert [proxy.mapToSource(proxy.index(r, 0)).row() for r in range(len(rows))] == expected

    # another operating point re-derives every key, still in the engine's order
    model.set_choice(ThresholdChoice(threshold=0.9))
    points = operating_points(
        {k: m.manifest for k, m in models.findings.items()}, ThresholdChoice(threshold=0.9)
    )
    keys = [triage_key(r, points, scope) for r in rows]
    assert model.triage_rows() == sorted(range(len(rows)), key=lambda i: (keys[i], i))
    model.clear()
    assert model.triage_rows() == []


def test_rows_drop_class_maps_and_fetch_them_from_the_store(qtbot, screened) -> None:
    """With the store as detail loader (the window), rows hold no class activation maps; the
    viewer's and the PDF's copy (``with_thumbnail``, ``report_source(...).detail``) has them again,
    equal to what was screened, with the thumbnail."""
    import numpy as np

    from desktop.engine.reports.source import DetailSource, ThumbnailSource, detail_of
    from desktop.gui.results_model import ResultsModel

    rows, models, store = screened
    model = ResultsModel(
        thumbnail_loader=lambda r: store.thumbnail(r.sha256, r.models_key),
        detail_loader=lambda r: store.cached_result(r.sha256, r.models_key, r.file),
    )
    model.set_manifests(models.manifests)
    model.append(rows)
    chest = [i for i, r in enumerate(rows) if r.findings]
    assert len(chest) > 10
    for i in chest:
        kept = model.result(i)
        assert all(f.activation is None for f in kept.findings.values())
        assert kept.thumbnail_png is None
        assert {k: f.probability for k, f in kept.findings.items()} == {
            k: f.probability for k, f in rows[i].findings.items()
        }
        full = model.with_thumbnail(kept)
        assert full.thumbnail_png == rows[i].thumbnail_png and full.thumbnail_png
        for k, finding in rows[i].findings.items():
            assert finding.activation is not None
            np.testing.assert_array_equal(full.findings[k].activation, finding.activation)
        assert full.file == rows[i].file and full.status is rows[i].status

    source = model.report_source(model.results())
    assert isinstance(source, DetailSource) and isinstance(source, ThumbnailSource)
    first = source.at([chest[0]])[0]
    np.testing.assert_array_equal(
        detail_of(source, first).findings["tb"].activation,
        rows[chest[0]].findings["tb"].activation,
    )
    assert source.thumbnail(first) == rows[chest[0]].thumbnail_png
    # a row whose stored result is gone keeps what it has, and the table still reads it
    gone = replace(model.result(chest[0]), sha256="0" * 64)
    assert model.with_thumbnail(gone).findings == gone.findings


def test_window_report_draws_the_heatmaps_its_rows_dropped(
    qtbot, screened, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The PDF the window writes from its compact rows (``report_source``) draws every flagged
    scan's heatmap, as one written from rows that kept their maps: none says 'no heatmap'."""
    from desktop.engine.reports import ReportContext, write_reports
    from desktop.engine.reports import pdf as pdf_report
    from desktop.gui.results_model import ResultsModel

    rows, models, store = screened
    drawn: list[tuple[int, ...]] = []
    real = pdf_report.activation_to_image

    def counted(activation, *args, **kwargs):  # type: ignore[no-untyped-def]
        drawn.append(activation.shape)
        return real(activation, *args, **kwargs)

    monkeypatch.setattr(pdf_report, "activation_to_image", counted)
    model = ResultsModel(
        thumbnail_loader=lambda r: store.thumbnail(r.sha256, r.models_key),
        detail_loader=lambda r: store.cached_result(r.sha256, r.models_key, r.file),
    )
    model.set_manifests(models.manifests)
    model.append(rows)
    ctx = ReportContext.for_batch(None, models, ThresholdChoice())
    write_reports(model.report_source(model.results()), ctx, tmp_path / "a", ["pdf"], "r")
    from_table = list(drawn)
    drawn.clear()
    write_reports(list(rows), ctx, tmp_path / "b", ["pdf"], "r")
    assert len(from_table) >= 5  # flagged scans' heatmaps drawn
    assert from_table == drawn


def test_table_icons_fetch_the_thumbnail_alone(qtbot, screened) -> None:
    """A painted row's icon asks the store for its thumbnail only, never the whole result
    (class maps, JSON): scrolling 20,000 rows fetches one small blob a row."""
    from desktop.gui.results_model import Column, ResultsModel

    rows, models, store = screened
    asked: list[str] = []

    def thumbnail(r: ScanResult) -> bytes | None:
        asked.append("thumbnail")
        return store.thumbnail(r.sha256, r.models_key)

    def detail(r: ScanResult) -> ScanResult | None:
        asked.append("detail")
        return store.cached_result(r.sha256, r.models_key, r.file)

    model = ResultsModel(thumbnail_loader=thumbnail, detail_loader=detail)
    model.set_manifests(models.manifests)
    model.append(rows)
    col = model.column_of(Column.THUMB)
    shown = [i for i, r in enumerate(rows) if r.thumbnail_png][:10]
    assert len(shown) == 10
    icons = [model.data(model.index(i, col), Qt.ItemDataRole.DecorationRole) for i in shown]
    assert all(icon is not None and not icon.isNull() for icon in icons)
    assert asked == ["thumbnail"] * 10

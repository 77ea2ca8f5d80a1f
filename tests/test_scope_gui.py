"""Scope in the window (issue 12): greyed scores with their reason, the batch's patient group,
a per-scan override from the table's menu, F3 and the counts, the viewer's text.

Real scans (Kermany children, NLM adults, the CR chest DICOM with ages) and stand-in models
whose manifests carry scopes (tests/test_scope.py has the engine's side).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

from desktop.engine.patients import PatientGroup
from desktop.engine.screening import Screener
from desktop.engine.store import ResultsStore
from desktop.gui.elide import elide_words
from desktop.gui.main_window import MainWindow
from desktop.gui.qt_compat import emit
from desktop.gui.results_model import Column, FlaggedRole, short_warning
from desktop.gui.settings import AppSettings
from tests.conftest import DATA
from tests.fixtures import write_cr_variant
from tests.test_gui import _make_window, _run_folder
from tests.test_scope import _models

pytestmark = pytest.mark.gui

WAIT_MS = 30_000


@pytest.fixture(scope="module")
def scoped_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _models(tmp_path_factory.mktemp("scoped"))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "scans"
    shutil.copytree(DATA / "pneumonia" / "normal", root / "children")
    shutil.copytree(DATA / "tb" / "normal", root / "adults")
    write_cr_variant(root / "age_6y.dcm", PatientAge="006Y", ViewPosition="PA")
    write_cr_variant(root / "age_45y.dcm", PatientAge="045Y", ViewPosition="PA")
    return root


@pytest.fixture
def window(qtbot, tmp_path: Path, scoped_models: Path):
    store = ResultsStore(tmp_path / "results.sqlite3")
    win = _make_window(qtbot, AppSettings(tmp_path / "s.ini"), store, scoped_models)
    yield win
    win.close()
    store.close()


def _row(window: MainWindow, name: str) -> int:
    for row in range(window.model.rowCount()):
        if Path(window.model.result(row).file).name == name:
            return row
    raise AssertionError(name)


def _cell(window: MainWindow, row: int, kind: Column, model_id: str | None = None, role=None):
    index = window.model.index(row, window.model.column_of(kind, model_id))
    return index.data(role if role is not None else Qt.ItemDataRole.DisplayRole)


def test_outside_scope_is_greyed_with_its_reason_and_raises_no_flag(qtbot, window, folder):
    _run_folder(qtbot, window, folder)
    child = _row(window, "age_6y.dcm")
    adult = _row(window, "age_45y.dcm")
    assert float(_cell(window, child, Column.SCORE, "tb")) > 0.9  # the score is still shown
    assert _cell(window, child, Column.FLAG, "tb") == "outside scope"
    icon = _cell(window, child, Column.FLAG, "tb", role=Qt.ItemDataRole.DecorationRole)
    assert icon is not None and not icon.isNull()  # the warning icon, not the flag
    tip = _cell(window, child, Column.FLAG, "tb", Qt.ItemDataRole.ToolTipRole)
    assert tip.startswith("TB model: adults only; this scan: child, age 6, from the file")
    grey = window.palette().placeholderText().color()
    assert _cell(window, child, Column.SCORE, "tb", Qt.ItemDataRole.ForegroundRole).color() == grey
    assert _cell(window, adult, Column.FLAG, "tb") == "flagged"
    assert _cell(window, adult, Column.SCORE, "tb", Qt.ItemDataRole.ForegroundRole) is None
    assert _cell(window, child, Column.PATIENT) == "child (file)"
    # the reason column: short forms, each whole; the tooltip holds the whole sentences
    reason = _cell(window, child, Column.REASON)
    assert "TB: adults only" in reason and "Pneumonia: ages 1–5" in reason
    assert "⚠" not in reason  # the cell's warning icon is the one mark
    icon = _cell(window, child, Column.REASON, role=Qt.ItemDataRole.DecorationRole)
    assert icon is not None and not icon.isNull()
    reason_tip = _cell(window, child, Column.REASON, role=Qt.ItemDataRole.ToolTipRole)
    assert "TB model: adults only; this scan: child, age 6" in reason_tip
    # counts and F3 treat it as not flagged
    counts = window.model.counts()
    assert counts.outside_scope["tb"] >= 1
    assert counts.flagged["tb"] == window.model.rowCount() - counts.outside_scope["tb"]
    assert not window.model.index(child, 0).data(FlaggedRole)
    window.view.setCurrentIndex(window.proxy.index(0, 1))
    for _ in range(window.proxy.rowCount()):
        window.goto_flagged(1)
        source = window.proxy.mapToSource(window.view.currentIndex()).row()
        assert window.model.is_row_flagged(window.model.result(source))
        assert source != child


def test_flag_cell_has_one_mark_with_accessible_words_in_light_and_dark(qtbot, window, folder):
    _run_folder(qtbot, window, folder)
    adult = _row(window, "age_45y.dcm")
    # one mark: the drawn pennant, and a word (no second "⚑" glyph beside the icon)
    assert _cell(window, adult, Column.FLAG, "tb") == "flagged"
    for role in (Qt.ItemDataRole.ToolTipRole, Qt.ItemDataRole.AccessibleTextRole):
        assert _cell(window, adult, Column.FLAG, "tb", role).startswith("TB: flagged at ")
    assert "⚑" not in "".join(
        str(_cell(window, row, Column.FLAG, mid) or "")
        for row in range(window.model.rowCount())
        for mid in ("tb", "pneumonia")
    )
    app = QApplication.instance()
    light = app.palette()
    dark = QPalette(light)
    for group in (QPalette.ColorGroup.Active, QPalette.ColorGroup.Inactive):
        dark.setColor(group, QPalette.ColorRole.WindowText, QColor(235, 235, 235))
        dark.setColor(group, QPalette.ColorRole.Window, QColor(40, 40, 40))

    def pole() -> QColor:  # the pennant's pole, below the pennant, in the palette's text colour
        icon = _cell(window, adult, Column.FLAG, "tb", Qt.ItemDataRole.DecorationRole)
        image = icon.toImage()
        ratio = image.devicePixelRatio()
        return image.pixelColor(int(16 * 0.22 * ratio), int(12 * ratio))

    try:
        assert pole().lightness() < 100  # dark outline on the light theme
        app.setPalette(dark)
        assert pole().lightness() > 150  # redrawn light on the dark theme, not the cached one
    finally:
        app.setPalette(light)


def test_batch_group_changes_flags_at_once_without_inference(qtbot, window, folder, monkeypatch):
    _run_folder(qtbot, window, folder)
    calls = []
    original = Screener.screen
    monkeypatch.setattr(Screener, "screen", lambda self, b: calls.append(1) or original(self, b))
    total = window.model.rowCount()
    auto = window.model.counts().flagged["tb"]
    assert 0 < auto < total
    with qtbot.waitSignal(window.model.dataChanged, timeout=1000):
        window.patients_combo.setCurrentIndex(window.patients_combo.findData("adult"))
        emit(window.patients_combo.activated, window.patients_combo.currentIndex())
    assert window.model.counts().flagged["tb"] == total
    assert _cell(window, _row(window, "age_6y.dcm"), Column.PATIENT) == "adult (batch)"
    assert "0 flagged" not in window.counts.text()
    window.set_batch_patients(PatientGroup.CHILD)
    assert window.model.counts().flagged["tb"] == 0
    assert window.model.counts().outside_scope["tb"] == total
    assert window.store.batch_patients(window.batch.batch_id) is PatientGroup.CHILD
    window.set_batch_patients(None)
    assert window.model.counts().flagged["tb"] == auto
    assert calls == []  # nothing was screened again


def test_override_from_the_table_menu_is_recorded(qtbot, window, folder):
    _run_folder(qtbot, window, folder)
    window.settings.operator = "Nurse A"
    adult = _row(window, "age_45y.dcm")
    result = window.model.result(adult)
    assert window.model.is_row_flagged(result)
    window.view.selectRow(window.proxy.mapFromSource(window.model.index(adult, 0)).row())
    texts = [a.text() for a in window.view.actions()]
    assert "Patient group of selected scans: child" in texts
    window.act_scan_groups[1].trigger()  # child
    assert _cell(window, adult, Column.PATIENT) == "child (staff)"
    assert _cell(window, adult, Column.FLAG, "tb") == "outside scope"
    history = window.store.patient_group_history(result.sha256)
    assert [(g, by) for _, g, by in history] == [("child", "Nurse A")]
    viewer = window.open_viewer(result)
    assert "this scan: child, set by staff for this scan" in viewer.warnings.text()
    assert "TB: adults only — outside the scope of this model, not flagged" in viewer.scores.text()
    window.act_scan_groups[2].trigger()  # back to automatic
    assert _cell(window, adult, Column.PATIENT) == "adult (file)"
    assert "TB model: adults only" not in viewer.scores.text()  # the viewer follows
    viewer.close()
    # a batch opened from the history brings its overrides and its group back
    window.act_scan_groups[1].trigger()
    window.set_batch_patients(PatientGroup.ADULT)
    batch_id = window.batch.batch_id
    window.model.clear()
    with qtbot.waitSignal(window.batch_loaded, timeout=WAIT_MS):
        window.open_batch(batch_id)
    assert window.patients_combo.currentData() == "adult"
    assert _cell(window, _row(window, "age_45y.dcm"), Column.PATIENT) == "child (staff)"


@pytest.mark.parametrize(
    ("text", "short"),
    [
        ("DICOM BodyPartExamined is HAND, but the image was judged a chest X-ray",) * 2,
        (
            "DICOM Modality is CT, but the image was judged a chest X-ray: check that this is "
            "the right file",
            "DICOM Modality is CT, but the image was judged a chest X-ray…",
        ),
        (
            "burnt-in text markers detected over most of the lung fields, which may confuse "
            "the model",
            "burnt-in text markers detected over most of the lung fields, which may…",
        ),
    ],
)
def test_short_warnings_never_cut_a_word(text, short):
    got = short_warning(text)
    assert got == short
    assert len(got) <= 73
    words = got.rstrip("…").split()
    assert all(word.strip(",;") in text.split() or word in text for word in words)


def test_word_elide_keeps_whole_words():
    text = "⚠ TB: adults only; ⚠ Pneumonia: ages 1–5"
    assert elide_words(text, len, 100) == text
    assert elide_words(text, len, 20) == "⚠ TB: adults only…"
    assert elide_words(text, len, 3) == "⚠…"
    assert elide_words(text, len, 1) == "…"
    for width in range(1, len(text)):
        shown = elide_words(text, len, width)
        assert len(shown) <= max(width, 1)
        assert all(word in text.split(" ") or word.rstrip(",;:") for word in shown.split(" "))
        assert text.startswith(shown.rstrip("…").rstrip(" ,;:"))

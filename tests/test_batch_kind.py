"""Calibration runs are not clinic batches: the store records each batch's kind (schema 5,
migrated from an older store), and the history — engine rows, ``medscreen history`` and the
window's dialog — labels a calibration run as such and can leave it out.

Real labelled scans (Kermany, tests/data/calibration) calibrated with the shipped models
through ``medscreen calibrate``, beside a real screening batch of NLM chest X-rays.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from desktop.cli import main
from desktop.engine.history import history_rows
from desktop.engine.registry import load_model_set
from desktop.engine.results import ThresholdChoice
from desktop.engine.store import SCHEMA_VERSION, BatchKind, ResultsStore

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
MODELS = REPO / "assets" / "models"


def _labelled(root: Path, per_class: int = 12) -> Path:
    """A small labelled folder (normal/, pneumonia/) from the real calibration set."""
    for label in ("normal", "pneumonia"):
        (root / label).mkdir(parents=True)
        for src in sorted((DATA / "calibration" / "pneumonia" / label).iterdir())[:per_class]:
            shutil.copy(src, root / label / src.name)
    return root


@pytest.fixture
def calibrated_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A version-4 store holding a real screening batch, then a calibration run."""
    db = tmp_path / "r.sqlite3"
    args = ["--db", str(db), "--device", "cpu", "--models", str(MODELS), "--quiet"]
    clinic = tmp_path / "clinic"
    shutil.copytree(DATA / "tb" / "normal", clinic)
    assert main(["classify", str(clinic), "--out", str(tmp_path / "out"), *args]) == 0
    with sqlite3.connect(db) as con:  # what a schema-4 MedScreen left: no kind column
        con.execute("ALTER TABLE batches DROP COLUMN kind")
        con.execute("UPDATE meta SET value='4' WHERE key='schema_version'")
    con.close()
    labelled = _labelled(tmp_path / "labelled")
    code = main(
        ["calibrate", str(labelled), "--model", "pneumonia", "--name", "Kind-Test"]
        + ["--out", str(tmp_path / "calibration"), *args]
    )
    assert code in (0, 1), capsys.readouterr()  # refused as too small or made: a batch ran
    capsys.readouterr()
    return db


def test_an_old_store_migrates_and_calibration_runs_are_recorded(calibrated_store: Path):
    store = ResultsStore(calibrated_store)
    try:
        version = store._db().execute("SELECT value FROM meta").fetchone()[0]
        assert version == str(SCHEMA_VERSION) == "5"
        # the calibration's inputs are its labelled files, the clinic batch's its folder
        batches = {"labelled" in b.inputs[0]: b for b in store.batches()}
        screening, calibration = batches[False], batches[True]
        assert screening.kind == BatchKind.SCREENING  # the batch from before the migration
        assert calibration.kind == BatchKind.CALIBRATION
        assert calibration.done == 24 and screening.done == 6
        models = load_model_set([MODELS])
        rows = history_rows(store, models.manifests, ThresholdChoice.parse("screening"))
        by_kind = {row.kind: row for row in rows}
        assert by_kind.keys() == {BatchKind.SCREENING, BatchKind.CALIBRATION}
        assert by_kind[BatchKind.CALIBRATION].is_calibration
        assert by_kind[BatchKind.CALIBRATION].batch_ids == (calibration.id,)
        assert by_kind[BatchKind.CALIBRATION].counts.screened == 24  # type: ignore[union-attr]
        assert not by_kind[BatchKind.SCREENING].is_calibration
        assert by_kind[BatchKind.CALIBRATION].matches("calibration")
        assert not by_kind[BatchKind.SCREENING].matches("calibration")
    finally:
        store.close()


def test_medscreen_history_marks_and_filters_calibration_runs(calibrated_store: Path, capsys):
    assert main(["history", "--db", str(calibrated_store)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    calibration = next(line for line in lines if "labelled" in line)
    assert calibration.split()[1] == "calibration"
    assert next(line for line in lines if line != calibration).split()[1] == "screening"
    assert main(["history", "--db", str(calibrated_store), "--kind", "screening"]) == 0
    only = capsys.readouterr().out.splitlines()
    assert len(only) == 1 and "labelled" not in only[0]
    assert main(["history", "--db", str(calibrated_store), "--kind", "calibration"]) == 0
    assert capsys.readouterr().out.splitlines() == [calibration]


def test_history_dialog_labels_and_hides_calibration_runs(qtbot, calibrated_store: Path):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    pytest.importorskip("pytestqt")
    from desktop.gui.history_dialog import HistoryDialog

    store = ResultsStore(calibrated_store)
    try:
        rows = history_rows(store)
    finally:
        store.close()
    dialog = HistoryDialog(rows, [("tb", "TB"), ("pneumonia", "Pneumonia")])
    qtbot.addWidget(dialog)
    kind = dialog.columns.index("Kind")
    texts = {dialog.table.item(i, kind).text(): i for i in range(dialog.table.rowCount())}
    assert texts.keys() == {"Screening", "Calibration"}
    row = texts["Calibration"]
    folder = dialog.table.item(row, dialog.columns.index("Folder"))
    assert folder.font().italic() and "not a clinic's screening batch" in folder.toolTip()
    assert not dialog.table.item(texts["Screening"], kind).font().italic()
    assert len(dialog.visible_rows()) == 2
    dialog.show_calibration.setChecked(False)
    assert [r.kind for r in dialog.visible_rows()] == [BatchKind.SCREENING]
    dialog.search.setText("labelled")  # the search keeps the calibration run hidden
    assert dialog.visible_rows() == []
    dialog.show_calibration.setChecked(True)
    assert [r.kind for r in dialog.visible_rows()] == [BatchKind.CALIBRATION]


def test_an_interrupted_calibration_is_not_offered_as_a_batch_to_resume(tmp_path: Path, capsys):
    db = tmp_path / "r.sqlite3"
    store = ResultsStore(db)
    try:  # left "running" by this process: what a killed calibration leaves
        calibration = store.create_batch(
            [str(DATA / "calibration")], "m", "CPU", BatchKind.CALIBRATION
        )
        assert [b.id for b in store.interrupted_batches()] == [calibration]
        assert store.interrupted_batches(BatchKind.SCREENING) == []
    finally:
        store.close()
    args = ["--db", str(db), "--models", str(MODELS), "--device", "cpu", "--quiet"]
    assert main(["resume", "--out", str(tmp_path / "out"), *args]) == 1
    assert "there is no interrupted batch to resume" in capsys.readouterr().err

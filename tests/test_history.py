"""History a programme reads: one row per folder and model version (re-runs merged), counts
at the chosen point, operators, search; deleting a batch frees its thumbnails; retention."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from desktop.engine.history import history_rows
from desktop.engine.inference import choose_device
from desktop.engine.registry import default_model_dirs, load_model_set
from desktop.engine.results import BatchCounts, ThresholdChoice
from desktop.engine.runner import BatchRunner, run_to_end
from desktop.engine.store import ResultsStore

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def models():
    return load_model_set(default_model_dirs(), choose_device("cpu"))


def _folder(root: Path, name: str, subs: tuple[str, ...]) -> Path:
    folder = root / name
    for sub in subs:
        shutil.copytree(DATA / sub, folder / sub)
    return folder


def test_results_stored_under_older_screening_rules_are_screened_again(
    tmp_path: Path, models
) -> None:
    """The results key ends with the engine's rules version: a result an older MedScreen
    stored for the same file and models (before a new refusal rule) is not reused."""
    from desktop.engine.registry import SCREENING_RULES

    assert models.key.split("|")[-1] == SCREENING_RULES
    store = ResultsStore(tmp_path / "s.sqlite3")
    try:
        tb = _folder(tmp_path, "monday", ("tb/normal",))
        runner = BatchRunner(models, store, workers=1)
        first = run_to_end(runner.run([tb]))
        assert first.reused == 0
        older = models.key.rsplit("|", 1)[0] + "|rules@1"
        with store._write() as db:  # as an older MedScreen would have stored them
            db.execute("UPDATE results SET models_key = ?", (older,))
            db.execute("UPDATE batch_items SET models_key = ?", (older,))
            db.execute("UPDATE batches SET models_key = ?", (older,))
        again = run_to_end(runner.run([tb]))
        assert again.reused == 0 and again.ok == first.ok > 0
        assert run_to_end(runner.run([tb])).reused == first.total  # same rules: reused
    finally:
        store.close()


def test_history_merges_reruns_counts_and_deletes(tmp_path: Path, models) -> None:
    store = ResultsStore(tmp_path / "s.sqlite3")
    try:
        tb = _folder(tmp_path, "monday", ("tb/normal", "tb/tuberculosis"))
        other = _folder(tmp_path, "tuesday", ("mednist/Hand", "pneumonia/pneumonia"))
        runner = BatchRunner(models, store, workers=1)
        first = run_to_end(runner.run([tb])).batch_id
        store.set_batch_operator(first, "Nurse Achieng")
        second = run_to_end(runner.run([tb])).batch_id  # a re-run of the same folder
        store.set_batch_operator(second, "Nurse Otieno")
        third = run_to_end(runner.run([other])).batch_id
        choice = ThresholdChoice.parse("screening")
        rows = history_rows(store, models.manifests, choice)
        assert len(rows) == 2  # three batches, two folders: the re-run is merged
        monday = next(r for r in rows if r.folder == str(tb))
        assert monday.batch_ids == (second, first) and monday.runs == 2
        assert monday.operators == ("Nurse Otieno", "Nurse Achieng")
        for manifest in models.manifests.values():  # every model of the set, with its version
            assert f"{manifest.id} {manifest.version}" in monday.model_versions()
        assert "rules" not in monday.model_versions()  # the engine's rules are no model
        expected = BatchCounts.of(store.batch_results(second), models.manifests, choice)
        assert monday.counts == expected and monday.counts.total == 12  # not 24
        tuesday = next(r for r in rows if r.folder == str(other))
        assert tuesday.counts is not None and tuesday.counts.not_chest_xray == 3
        assert [r.folder for r in rows if r.matches("otieno")] == [str(tb)]
        assert [r.folder for r in rows if r.matches("TUESDAY")] == [str(other)]

        pages_before = store._db().execute("PRAGMA page_count").fetchone()[0]
        thumbs = store._db().execute("SELECT COUNT(*) FROM results").fetchone()[0]
        assert store.delete_batches([third]) == 1
        left = store._db().execute("SELECT COUNT(*) FROM results").fetchone()[0]
        assert left == thumbs - 9 == 12  # its 9 scans' results and thumbnails are gone
        assert store.thumbnail(*_key(store, first)) is not None  # the others' stay
        pages = store._db().execute("PRAGMA page_count").fetchone()[0]
        assert pages < pages_before * 0.8  # VACUUM gave the thumbnails' space back
        assert [r.folder for r in history_rows(store, models.manifests, choice)] == [str(tb)]
        # deleting one run of a merged folder keeps the results the other run still lists
        assert store.delete_batches([first]) == 1
        assert store._db().execute("SELECT COUNT(*) FROM results").fetchone()[0] == left
    finally:
        store.close()


def _key(store: ResultsStore, batch_id: str) -> tuple[str, str]:
    result = next(r for r in store.batch_results(batch_id, thumbnails=False) if r.sha256)
    return result.sha256, result.models_key  # type: ignore[return-value]


def test_retention_prunes_batches_older_than_the_setting(tmp_path: Path, models) -> None:
    store = ResultsStore(tmp_path / "s.sqlite3")
    try:
        folder = _folder(tmp_path, "old", ("mednist/Hand",))
        runner = BatchRunner(models, store, workers=1)
        old = run_to_end(runner.run([folder])).batch_id
        new = run_to_end(runner.run([folder])).batch_id
        with store._write() as db:
            db.execute("UPDATE batches SET started_at='2026-08-01T09:00:00+00:00' WHERE id=?",
                       (old,))  # fmt: skip
        assert store.prune(0) == 0  # 0 keeps everything
        assert store.prune(90, now="2026-12-01T09:00:00+00:00") == 1
        assert [b.id for b in store.batches()] == [new]
    finally:
        store.close()


def test_history_dialog_searches_opens_deletes_and_sets_retention(qtbot, tmp_path, models):
    import os

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    pytest.importorskip("pytestqt")
    from desktop.gui.history_dialog import HistoryDialog

    store = ResultsStore(tmp_path / "s.sqlite3")
    try:
        runner = BatchRunner(models, store, workers=1)
        a = _folder(tmp_path, "ward-a", ("mednist/Hand",))
        b = _folder(tmp_path, "ward-b", ("tb/tuberculosis",))
        first = run_to_end(runner.run([a])).batch_id
        second = run_to_end(runner.run([a])).batch_id
        store.set_batch_operator(second, "Nurse Otieno")
        other = run_to_end(runner.run([b])).batch_id
        rows = history_rows(store, models.manifests, ThresholdChoice.parse("screening"))
        names = [("tb", "TB"), ("pneumonia", "Pneumonia")]
        dialog = HistoryDialog(rows, names, 90, confirm=lambda _text: True)
        qtbot.addWidget(dialog)
        assert dialog.table.rowCount() == 2
        cols = dialog.columns
        row_b = next(i for i, r in enumerate(rows) if r.folder == str(b))
        cell = {c: dialog.table.item(row_b, i).text() for i, c in enumerate(cols)}
        assert cell["Folder"] == str(b) and cell["Screened"] == "6" and cell["Runs"] == "1"
        assert cell["Flagged TB"] == str(rows[row_b].counts.flagged["tb"])  # type: ignore[union-attr]
        row_a = 1 - row_b
        assert dialog.table.item(row_a, cols.index("Operator")).text() == "Nurse Otieno"
        assert dialog.table.item(row_a, cols.index("Not chest X-rays")).text() == "3"
        dialog.search.setText("otieno")
        assert [r.folder for r in dialog.visible_rows()] == [str(a)]
        dialog.table.selectRow(row_a)
        with qtbot.waitSignal(dialog.retention_changed) as changed:
            dialog.retention.setValue(30)
        assert changed.args == [30]
        with qtbot.waitSignal(dialog.delete_requested) as deleted:
            dialog._delete()
        assert deleted.args == [[second, first]]
        assert dialog.table.rowCount() == 1
        assert store.delete_batches(deleted.args[0]) == 2
        assert [i.id for i in store.batches()] == [other]
    finally:
        store.close()

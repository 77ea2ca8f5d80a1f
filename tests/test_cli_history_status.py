"""``medscreen history`` and ``resume`` after a batch was stopped (found using the CLI): a
batch whose process was killed (SIGTERM, a crash) was listed as "running" with no process
running it, and ``resume`` with no id, refusing a batch stopped by Ctrl-C, did not say how to
continue that one."""

from __future__ import annotations

import shutil
from pathlib import Path

from desktop.cli import main
from desktop.engine.store import ResultsStore
from tests.conftest import DATA


def test_history_names_a_dead_batch_interrupted_and_resume_explains_ctrl_c(
    tmp_path: Path, stand_in_models: Path, capsys
):
    folder = tmp_path / "scans"
    folder.mkdir()
    for src in sorted((DATA / "tb" / "normal").glob("*.png"))[:3]:
        shutil.copy(src, folder / src.name)
    db = tmp_path / "r.sqlite3"
    common = ["--db", str(db), "--models", str(stand_in_models), "--quiet"]
    assert main(["classify", str(folder), "--out", str(tmp_path / "a"), *common]) == 0
    store = ResultsStore(db)
    (done,) = store.batches()
    # A batch whose process died right after its file list was saved: still marked running.
    dead = store.create_batch([str(folder)], done.models_key, "CPU")
    store.set_items(dead, sorted(str(p) for p in folder.iterdir()))
    assert store.batch(dead).status == "running"
    assert [b.id for b in store.interrupted_batches()] == [dead]
    store.close()
    capsys.readouterr()

    assert main(["history", "--db", str(db)]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines[dead].split()[2] == "interrupted", lines[dead]
    assert lines[done.id].split()[2] == "completed", lines[done.id]

    # resumed (no id): the dead batch is the one picked up; then none is left
    assert main(["resume", "--out", str(tmp_path / "b"), *common]) == 0
    capsys.readouterr()
    assert main(["resume", "--out", str(tmp_path / "c"), *common]) == 1
    err = capsys.readouterr().err
    assert "there is no interrupted batch to resume" in err
    assert "a batch stopped with Ctrl-C is continued by its id" in err

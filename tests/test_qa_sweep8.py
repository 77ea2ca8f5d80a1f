"""Defects found by using MedScreen as a clinic would (session 8's QA sweep: a nurse at the
command line and the window, a radiographer's odd files, an IT person checking the README's
promises), each pinned by a test on real files."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.conftest import DATA

TB_NORMAL = sorted((DATA / "tb" / "normal").glob("*.png"))
CHEST = TB_NORMAL[0]


def _classify(folder: Path | str, tmp_path: Path, *extra: str) -> int:
    from desktop.cli import main

    return main(["classify", str(folder), "--out", str(tmp_path / "out"), "--db",
                 str(tmp_path / "r.sqlite3"), "--quiet", *extra])  # fmt: skip


def _odd_folder(root: Path) -> Path:
    """Real chest X-rays and the files that cannot be screened, in one folder whose names
    sort differently from the order a batch finishes them in."""
    folder = root / "scans"
    folder.mkdir()
    for n, path in enumerate(TB_NORMAL[:3]):
        shutil.copy(path, folder / f"chest_{n}.png")
    (folder / "a_empty.png").write_bytes(b"")
    (folder / "m_truncated.png").write_bytes(CHEST.read_bytes()[:3000])
    (folder / "z_empty.png").write_bytes(b"")
    (folder / "b_truncated.png").write_bytes(CHEST.read_bytes()[:2000])
    return folder


def test_the_window_numbers_tied_scans_as_the_reports_do(tmp_path: Path) -> None:
    """The window's triage order and the PDF's numbering differed for scans of equal key
    (every file not screened; copies of one scan): the table, F3 and the viewer's "10 of 15
    in triage order" took them in the order the decoders finished them, the reports in the
    folder's order, so the viewer's 10th was the PDF's #11. Found screening a folder of odd
    files in the window and reading the PDF beside it. Rows arriving in another order than
    the folder's now take the reports' order."""
    from desktop.engine.inference import choose_device
    from desktop.engine.registry import default_model_dirs, load_model_set
    from desktop.engine.reports import ReportContext, StoredBatch
    from desktop.engine.runner import BatchRunner, run_to_end
    from desktop.engine.store import ResultsStore
    from desktop.engine.triage import triage_order
    from desktop.gui.results_model import ResultsModel

    folder = _odd_folder(tmp_path)
    store = ResultsStore(tmp_path / "r.sqlite3")
    try:
        models = load_model_set(default_model_dirs(), choose_device("cpu"))
        batch_id = run_to_end(BatchRunner(models, store).run([folder])).batch_id
        items = list(store.batch_rows(batch_id, thumbnails=False))
        assert len(items) == 7
        model = ResultsModel(store=lambda: store)
        model.set_manifests(models.manifests)
        arrival = items[::-1]  # the decoders finished them in another order
        model.append_items(batch_id, arrival)
        shown = [Path(model.result(r).file).name for r in model.triage_rows()]
        # the reports' order: the engine's triage order over the batch in its stored order
        ctx = ReportContext.for_batch(batch_id, models, model.choice())
        stored = list(StoredBatch(store, batch_id))
        order = triage_order(stored, dict(ctx.points()), ctx.scope_rule)
        reported = [Path(stored[i].file).name for i in order]
        assert shown == reported
        assert shown[-4:] == ["a_empty.png", "b_truncated.png", "m_truncated.png", "z_empty.png"]
    finally:
        store.close()

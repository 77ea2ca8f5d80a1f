"""Reports that a clinic files must not mislead by what they leave out (found using the
product end to end): a batch stopped by Ctrl-C wrote reports counting only the scans done so
far, with nothing saying the folder held more, and the hint printed to continue it dropped
the report options, so the resumed run left the stopped run's PDF in place; the PDF's
"Models used" table drew a long model name over the next columns.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from desktop import cli
from desktop.cli import main
from desktop.engine.manifest import read_manifest
from desktop.engine.reports import write_pdf
from desktop.engine.runner import Progress
from desktop.engine.store import BatchStatus, ResultsStore
from tests.conftest import REPO
from tests.test_reports import context, manifests, needs_poppler, results

SCANS = 24  # the chest_folder fixture: 6 + 6 NLM PNG, 6 + 6 Kermany JPEG


def _page_text(pdf: Path, page: int = 1) -> str:
    out = subprocess.run(
        ["pdftotext", "-f", str(page), "-l", str(page), "-enc", "UTF-8", str(pdf), "-"],
        capture_output=True,
        check=True,
    )
    return " ".join(out.stdout.decode("utf-8").split())


@needs_poppler
def test_a_stopped_batch_says_so_and_its_resume_hint_rewrites_the_same_reports(
    tmp_path: Path, stand_in_models: Path, chest_folder: Path, monkeypatch, capsys
):
    db = tmp_path / "r.sqlite3"
    out = tmp_path / "out"
    real_update = cli._ProgressBar.update

    def ctrl_c_after_three(self: cli._ProgressBar, event: Progress) -> None:
        real_update(self, event)
        if event.done >= 3:
            raise KeyboardInterrupt  # what Ctrl-C raises in the main thread mid-batch

    monkeypatch.setattr(cli._ProgressBar, "update", ctrl_c_after_three)
    code = main(
        ["classify", str(chest_folder), "--out", str(out), "--models", str(stand_in_models),
         "--db", str(db), "--report", "pdf,json", "--name", "morning", "--clinic", "Kisumu",
         "--quiet", "--workers", "1"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 130, err

    store = ResultsStore(db)
    (info,) = store.batches()
    pending = len(store.pending_items(info.id))
    store.close()
    assert info.status != BatchStatus.COMPLETED
    assert 0 < pending < SCANS

    stopped = json.loads((out / "morning.json").read_text(encoding="utf-8"))
    assert len(stopped["scans"]) == SCANS - pending
    assert stopped["batch"]["files_not_screened"] == pending
    assert (
        json.loads((out / "results.json").read_text("utf-8"))["batch"]["files_not_screened"]
        == pending
    )
    page1 = _page_text(out / "morning.pdf")
    assert "INCOMPLETE BATCH" in page1
    assert f"{pending} more files of this batch were not screened" in page1

    # The printed command continues the batch with the same reports, names and clinic.
    hint = re.search(r"continue with: (medscreen resume .+)$", err.strip(), re.M)
    assert hint is not None, err
    # ... and the filed reports name that same command, with the run's own store (a bare
    # 'medscreen resume ID' looks in the default store: 'no batch' for a --db run)
    assert stopped["batch"]["resume_command"] == hint.group(1)
    assert f"the command {hint.group(1)}) and export the report again" in page1
    words = shlex.split(hint.group(1))
    for option in (["--report", "pdf,json"], ["--name", "morning"], ["--clinic", "Kisumu"],
                   ["--db", str(db)], ["--models", str(stand_in_models)]):  # fmt: skip
        i = words.index(option[0])
        assert words[i : i + 2] == option, words

    monkeypatch.setattr(cli._ProgressBar, "update", real_update)
    assert main([*words[1:], "--quiet"]) == 0
    resumed = json.loads((out / "morning.json").read_text(encoding="utf-8"))
    assert len(resumed["scans"]) == SCANS
    assert resumed["batch"]["files_not_screened"] == 0
    assert resumed["batch"]["resume_command"] == ""  # nothing left to continue
    assert "INCOMPLETE" not in _page_text(out / "morning.pdf")


@needs_poppler
def test_export_of_a_stopped_batch_says_it_is_incomplete(
    tmp_path: Path, stand_in_models: Path, chest_folder: Path, monkeypatch, capsys
):
    db = tmp_path / "r.sqlite3"

    def ctrl_c(self: cli._ProgressBar, event: Progress) -> None:
        if event.done >= 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli._ProgressBar, "update", ctrl_c)
    common = ["--models", str(stand_in_models), "--db", str(db), "--quiet"]
    assert main(["classify", str(chest_folder), "--out", str(tmp_path / "a"), *common]) == 130
    batch = ResultsStore(db).batches()[0]
    export = tmp_path / "b"
    assert main(["export", batch.id, "--out", str(export), "--report", "pdf", "--name", "x",
                 *common]) == 0  # fmt: skip
    pending = batch.total - batch.done
    assert pending > 0
    doc = json.loads((export / "results.json").read_text(encoding="utf-8"))
    assert doc["batch"]["files_not_screened"] == pending
    assert f"{pending} more files of this batch were not screened" in _page_text(export / "x.pdf")


@needs_poppler
def test_models_used_table_keeps_a_long_model_name_inside_its_column(tmp_path: Path):
    agegroup = read_manifest(REPO / "assets" / "models" / "agegroup.json")
    assert len(agegroup.name) > 40  # "Patient group (child/adult) from the image"
    ctx = context(manifests={**manifests(), agegroup.id: agegroup})
    pdf = tmp_path / "r.pdf"
    write_pdf(results(), ctx, pdf)
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True)
    pages = int(re.search(r"Pages:\s+(\d+)", info.stdout).group(1))
    html = subprocess.run(
        ["pdftotext", "-bbox", "-f", str(pages), "-l", str(pages), str(pdf), "-"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    words = [
        (float(x0), float(y0), float(x1), float(y1), text)
        for x0, y0, x1, y1, text in re.findall(
            r'<word xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" yMax="([\d.]+)">([^<]*)</word>',
            html,
        )
    ]
    (sha,) = [w for w in words if w[4] == agegroup.sha256[:16]]
    (version,) = [w for w in words if w[4] == agegroup.version and abs(w[1] - sha[1]) < 1]
    same_line_left = [w for w in words if abs(w[1] - sha[1]) < 1 and w[0] < version[0]]
    assert [w[4] for w in same_line_left][:2] == [agegroup.id, "Patient"]
    assert all(w[2] <= version[0] for w in same_line_left), same_line_left
    assert "image" in {w[4] for w in words}  # the name's end is drawn, on the next line


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(pytest.main([__file__, "-q"]))


@needs_poppler
def test_the_windows_export_of_a_stopped_batch_says_it_is_incomplete(
    qtbot, tmp_path: Path, chest_folder: Path, monkeypatch
):
    """A batch stopped part-way (Ctrl-C in the CLI), opened from the history in the window and
    exported there: its PDF says how many files were not screened, as the CLI's does."""
    from desktop.engine.registry import default_model_dirs
    from desktop.gui.main_window import MainWindow
    from desktop.gui.settings import AppSettings

    db = tmp_path / "r.sqlite3"

    def ctrl_c(self: cli._ProgressBar, event: Progress) -> None:
        if event.done >= 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli._ProgressBar, "update", ctrl_c)
    argv = ["classify", str(chest_folder), "--out", str(tmp_path / "a"), "--db", str(db)]
    assert main([*argv, "--quiet", "--workers", "1"]) == 130
    store = ResultsStore(db)
    (batch,) = store.batches()
    pending = store.files_not_screened(batch.id)
    assert pending == len(store.pending_items(batch.id)) > 0

    settings = AppSettings(tmp_path / "settings.ini")
    window = MainWindow(settings=settings, store=store, model_dirs=default_model_dirs())
    qtbot.addWidget(window)
    try:
        with qtbot.waitSignal(window.models_changed, timeout=120_000):
            window.start()
        with qtbot.waitSignal(window.batch_loaded, timeout=120_000):
            window.open_batch(batch.id)
        with qtbot.waitSignal(window.export_done, timeout=120_000):
            window.export_report(tmp_path / "out" / "window.pdf")
        page1 = _page_text(tmp_path / "out" / "window.pdf")
        assert "INCOMPLETE BATCH" in page1
        assert f"{pending} more files of this batch were not screened" in page1
    finally:
        window.close()
        store.close()

"""Defects found by using MedScreen as a clinic would (session 8's QA sweep: a nurse at the
command line and the window, a radiographer's odd files, an IT person checking the README's
promises), each pinned by a test on real files."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DATA, REPO, csv_rows

TB_NORMAL = sorted((DATA / "tb" / "normal").glob("*.png"))
CHEST = TB_NORMAL[0]


def _classify(folder: Path | str, tmp_path: Path, *extra: str) -> int:
    from desktop.cli import main

    return main(["classify", str(folder), "--out", str(tmp_path / "out"), "--db",
                 str(tmp_path / "r.sqlite3"), "--quiet", *extra])  # fmt: skip


def _one_chest_batch(tmp_path: Path) -> Any:
    """Screen one real chest X-ray with the CLI into ``tmp_path``'s store; its BatchInfo."""
    from desktop.engine.store import ResultsStore

    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(CHEST, folder / "chest.png")
    assert _classify(folder, tmp_path) == 0
    store = ResultsStore(tmp_path / "r.sqlite3")
    (info,) = store.batches()
    store.close()
    return info


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


def test_every_argument_of_every_command_says_what_it_is() -> None:
    """'medscreen classify --help' listed PATH with no word, 'history --help' a bare --db,
    'site export --help' bare name and file: a user reading the help could not tell what to
    give. Every argument of every command (and of every 'site' action) now has its line."""
    import argparse

    from desktop.cli import build_parser

    def parsers(parser: argparse.ArgumentParser, prog: str) -> list[tuple[str, Any]]:
        found = [(prog, parser)]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found += parsers(sub, f"{prog} {name}")
        return found

    bare = [f"{prog}: {action.dest}"
            for prog, parser in parsers(build_parser(), "medscreen")
            for action in parser._actions
            if not isinstance(action, argparse._SubParsersAction) and not action.help]  # fmt: skip
    assert bare == []


def test_export_help_lists_only_what_export_uses(capsys: pytest.CaptureFixture[str]) -> None:
    """'medscreen export --help' offered '--workers: decoder threads' and '--device: where
    inference runs' for a command that screens nothing; they are still accepted."""
    from desktop.cli import main

    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = capsys.readouterr().out
    assert "--workers" not in text and "--device" not in text and "--quiet" not in text
    assert "--operating-point" in text and "first eight" in text


def test_a_batch_is_found_by_the_start_of_its_id_in_the_report_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Reports are named medscreen-<date>-<first 8 characters of the batch id>.pdf; a user
    who typed those 8 characters into 'medscreen export' got "no batch 'd34a6e1d'" (the
    history lists 12). The start of an id (6 characters or more) that only one batch has
    names that batch; a resume with an id the store lacks says which store it looked in,
    before any model is loaded."""
    from desktop.cli import main

    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(CHEST, folder / "chest.png")
    assert _classify(folder, tmp_path, "--report", "csv") == 0
    report = next((tmp_path / "out").glob("medscreen-*.csv"))
    short = report.stem.rsplit("-", 1)[1]
    assert len(short) == 8
    capsys.readouterr()
    again = tmp_path / "again"
    db = str(tmp_path / "r.sqlite3")
    assert main(["export", short, "--db", db, "--out", str(again), "--report", "csv"]) == 0
    assert [row["file"] for row in csv_rows(again / "results.csv")] == [str(folder / "chest.png")]
    assert main(["export", short[:3], "--db", db, "--out", str(again)]) == 1
    assert f"no batch '{short[:3]}' in the results store {db}" in capsys.readouterr().err
    assert main(["resume", "0000000000ff", "--db", db, "--out", str(again)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"medscreen: error: no batch '0000000000ff' in the results store {db}")


def test_a_mistyped_store_is_said_so_and_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """'medscreen history --db typo.sqlite3' printed nothing at all (exit 0) and left an
    empty store there; 'export ID --db typo' answered "no batch" and left one too. History
    now says there is no store (or no batches in it), export and resume that the store does
    not exist; none is created."""
    from desktop.cli import main

    typo = tmp_path / "reslts.sqlite3"
    assert main(["history", "--db", str(typo)]) == 0
    assert capsys.readouterr().out == (
        f"no batches: there is no results store {typo} (nothing screened with it)\n"
    )
    for command in (["export", "d34a6e1df589"], ["resume"], ["resume", "d34a6e1df589"]):
        assert main([*command, "--db", str(typo), "--out", str(tmp_path / "out")]) == 1
        assert f"there is no results store {typo}" in capsys.readouterr().err
    assert not typo.exists() and list(tmp_path.iterdir()) == [tmp_path / "out"]
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(CHEST, folder / "chest.png")
    assert _classify(folder, tmp_path) == 0
    capsys.readouterr()
    assert main(["history", "--db", str(tmp_path / "r.sqlite3"), "--kind", "calibration"]) == 0
    assert capsys.readouterr().out == (
        f"no calibration batches in the results store {tmp_path / 'r.sqlite3'}\n"
    )


def test_the_summary_names_a_path_that_does_not_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """'medscreen classify scnas/ --out DIR' (a typo) ended '1 file: 0 screened, 0 not chest
    X-rays, 1 could not be read' and exit 0: the reason was only in results.csv. The
    summary now names each path given that does not exist."""
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(CHEST, folder / "chest.png")
    typo = tmp_path / "scnas"
    from desktop.cli import main

    assert main(["classify", str(folder), str(typo), "--out", str(tmp_path / "out"), "--db",
                 str(tmp_path / "r.sqlite3"), "--quiet"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "2 files: 1 screened, 0 not chest X-rays, 1 error" in err
    assert f"  not found: {typo}" in err


def test_results_reused_are_not_said_to_come_from_earlier_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A result reused is one the store holds for the same content and models: an earlier
    run's, or a copy screened earlier in the same batch (three copies of one scan in a new
    store printed '3 reused from earlier runs', although there had been none). The
    summary now says what it is."""
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(CHEST, folder / "chest.png")
    assert _classify(folder, tmp_path) == 0
    shutil.copy(CHEST, folder / "copy of chest.png")
    capsys.readouterr()
    assert _classify(folder, tmp_path) == 0
    err = capsys.readouterr().err
    assert "  2 already screened with these models (results reused)" in err
    assert "earlier runs" not in err


def _screened_window(qtbot: Any, tmp_path: Path, folder: Path) -> tuple[Any, Any]:
    """The real window with the shipped models, ``folder`` screened in it; (window, store)."""
    from desktop.engine.store import ResultsStore
    from desktop.gui.main_window import MainWindow
    from desktop.gui.settings import AppSettings

    store = ResultsStore(tmp_path / "w.sqlite3")
    window = MainWindow(settings=AppSettings(tmp_path / "s.ini"), store=store,
                        model_dirs=[REPO / "assets" / "models"])  # fmt: skip
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    with qtbot.waitSignal(window.models_changed, timeout=60_000):
        window.start()
    with qtbot.waitSignal(window.batch.batch_finished, timeout=120_000):
        window.open_paths([folder])
    return window, store


@pytest.mark.gui
def test_the_keyboard_can_leave_the_table_and_reach_the_search(qtbot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Tab in the results table moved an invisible current cell along the selected row (a
    QTableView's default), so a keyboard user who reached the table never left it: 14 Tabs
    kept the focus there (found driving the window under Xvfb). Tab now goes on to the next
    control; Ctrl+F goes to the file-name search, which says so in its tooltip; the "Show:"
    label names its list; the batch's time reads "under 1 s", not "0 s"."""
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QApplication

    folder = tmp_path / "scans"
    folder.mkdir()
    for n, path in enumerate(TB_NORMAL[:3]):
        shutil.copy(path, folder / f"chest_{n}.png")
    window, store = _screened_window(qtbot, tmp_path, folder)
    try:
        window.activateWindow()
        window.view.setFocus()
        qtbot.waitUntil(lambda: QApplication.focusWidget() is window.view)
        qtbot.keyClick(window.view, Qt.Key.Key_Tab)
        qtbot.waitUntil(lambda: QApplication.focusWidget() is not window.view)
        qtbot.keyClick(
            QApplication.focusWidget(), Qt.Key.Key_F, Qt.KeyboardModifier.ControlModifier
        )
        qtbot.waitUntil(lambda: QApplication.focusWidget() is window.search)
        assert "Ctrl+F" in window.search.toolTip()
        assert not window.act_settings.shortcut().isEmpty()  # none on Linux before (Ctrl+,)
        shows = [label for label in window.findChildren(type(window.counts))
                 if label.text() == "Show:"]  # fmt: skip
        assert [label.buddy() for label in shows] == [window.filter_combo]
        bar = window.statusBar()
        message = bar.toolTip() or bar.currentMessage()  # the whole text when it was cut
        assert re.search(r" in (under 1 s|[1-9]\d* s|\d+ min( \d+ s)?)$", message), message
    finally:
        window.close()
        store.close()


@pytest.mark.gui
def test_a_name_with_a_line_break_is_shown_whole_in_the_table(qtbot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A scan named 'new\\nline.png' (a name a script can make) read "new…" in the File
    column, the rest cut at the line break; the PDF shows "new line.png". The table now shows
    control characters as spaces, like the report; the tooltip keeps the exact path. Every
    heading says what its column holds; the score's names its model and version."""
    from PySide6.QtCore import Qt

    from desktop.gui.results_model import Column

    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(CHEST, folder / "new\nline.png")
    window, store = _screened_window(qtbot, tmp_path, folder)
    try:
        model = window.model
        column = model.column_of(Column.FILE)
        index = model.index(0, column)
        assert model.data(index) == "new line.png"
        assert model.data(index, Qt.ItemDataRole.ToolTipRole) == str(folder / "new\nline.png")
        viewer = window.open_viewer(model.result(0))
        assert viewer.windowTitle() == "new line.png — MedScreen"
        viewer.close()
        tip, thumb = Qt.ItemDataRole.ToolTipRole, model.column_of(Column.THUMB)
        tips = {model.column_kind(c): model.headerData(c, Qt.Orientation.Horizontal, tip)
                for c in range(model.columnCount()) if c != thumb}  # fmt: skip
        assert all(tips.values()), tips
        score = model.column_of(Column.SCORE, "tb")
        assert model.headerData(score, Qt.Orientation.Horizontal, Qt.ItemDataRole.ToolTipRole) == (
            "Probability of tuberculosis from the Tuberculosis model 2.0.0"
        )
    finally:
        window.close()
        store.close()


def test_durations_read_as_people_say_them() -> None:
    """The window's "Finished: … in 0 s" (a batch under a second) and "in 3725 s"."""
    from desktop.engine.vocabulary import duration

    assert [duration(s) for s in (0.04, 0.6, 1.4, 42, 60, 185, 3725, 7200)] == [
        "under 1 s", "under 1 s", "1 s", "42 s", "1 min", "3 min 5 s", "1 h 2 min", "2 h 0 min"
    ]  # fmt: skip


def test_the_summary_counts_errors_as_every_other_face_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI summary said '2 could not be read' for an image too small to screen and a DICOM
    report without an image, both read without trouble; the window, the PDF and the JSON
    call them errors. It now says '2 errors' too."""
    from PIL import Image

    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(CHEST, folder / "chest.png")
    Image.open(CHEST).resize((40, 40)).save(folder / "tiny.png")
    shutil.copy(DATA.parent / "data" / "dicom" / "CR-MONO1-10-chest.dcm", folder / "cr.dcm")
    import pydicom

    ds = pydicom.dcmread(folder / "cr.dcm", force=True)
    del ds.PixelData  # a DICOM file with no image: a report, a structured document
    ds.save_as(folder / "report.dcm")
    (folder / "cr.dcm").unlink()
    assert _classify(folder, tmp_path) == 0
    err = capsys.readouterr().err
    assert "3 files: 1 screened, 0 not chest X-rays, 2 errors\n" in err
    rows = {Path(r["file"]).name: r for r in csv_rows(tmp_path / "out" / "results.csv")}
    assert rows["tiny.png"]["error_code"] == "too_small"
    assert rows["report.dcm"]["error_code"] == "no_pixel_data"


@pytest.mark.gui
def test_the_settings_note_names_every_report_identifiers_stay_out_of(
    qtbot, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The Settings note said identifiers stay out of 'PDF and CSV reports'; the JSON report
    (and results.json) keep them out as well, and the study date and description count."""
    from PySide6.QtWidgets import QLabel

    from desktop.gui.settings import AppSettings
    from desktop.gui.settings_dialog import SettingsDialog

    dialog = SettingsDialog(AppSettings(tmp_path / "s.ini"))
    qtbot.addWidget(dialog)
    notes = [
        label.text() for label in dialog.findChildren(QLabel) if "Off by default" in label.text()
    ]
    assert len(notes) == 1
    assert "every report (PDF, CSV, JSON)" in notes[0] and "study dates" in notes[0]


def test_the_progress_bar_stays_on_one_line_for_a_name_with_a_line_break(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The progress bar printed the current file's name as it is: 'new\\nline.png' broke the
    bar over two lines (on a terminal, the redrawn line went astray). It shows the name on
    one line, as the table and the PDF do."""
    from desktop.cli import main

    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(CHEST, folder / "new\nline.png")
    assert main(["classify", str(folder), "--out", str(tmp_path / "out"), "--db",
                 str(tmp_path / "r.sqlite3")]) == 0  # fmt: skip
    bars = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[")]
    assert bars and bars[-1].endswith("  new line.png")


@pytest.mark.gui
def test_a_report_of_selected_rows_says_it_is_a_selection(
    qtbot, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """*Export selected rows* of 2 rows out of a batch of 7 wrote a page 1 that read as the
    whole batch: 'Scans 2', its folder and batch id, 'Scans needing attention (0)' while the
    batch had flagged scans; a programme filing it would count 2 scans. Page 1 now says it
    holds a selection of how many, and the JSON (batch.selected_from) too. With no row
    selected the window said 'Nothing to export yet' only after the save dialog; it now
    says to select rows first, and proposes '…-selection.pdf' for a selection."""
    import subprocess

    from PySide6.QtCore import QItemSelectionModel
    from PySide6.QtWidgets import QFileDialog

    from desktop.engine.reports import write_reports

    asked: list[str] = []
    monkeypatch.setattr(QFileDialog, "getSaveFileName",
                        lambda *a, **k: (asked.append(a[2]), ("", ""))[1])  # fmt: skip
    window, store = _screened_window(qtbot, tmp_path, _odd_folder(tmp_path))
    try:
        window.choose_export(selected_only=True)
        assert asked == [] and "Select the rows to export first" in window.messages.message()
        flags = QItemSelectionModel.SelectionFlag.Select | QItemSelectionModel.SelectionFlag.Rows
        for row in (3, 5):  # not the top row (the flagged ones sort first)
            window.view.selectionModel().select(window.proxy.index(row, 0), flags)
        window.choose_export(selected_only=True)
        assert len(asked) == 1 and asked[0].endswith("-selection.pdf")
        pdf = tmp_path / "sel.pdf"
        with qtbot.waitSignal(window.export_done, timeout=60_000):
            window.export_report(pdf, selected_only=True)
        page1 = subprocess.run(["pdftotext", "-f", "1", "-l", "1", str(pdf), "-"],
                               capture_output=True, text=True, check=True).stdout  # fmt: skip
        text = " ".join(page1.split())
        assert "SELECTED SCANS ONLY this report holds 2 of the 7 scans of this batch" in text
        results = window.model.table_report(window.view.selected_rows())
        from desktop.engine.reports import ReportContext

        ctx = ReportContext.for_batch(window.batch.batch_id, window.models, window.model.choice(),
                                      selected_from=7)  # fmt: skip
        (json_path,) = write_reports(results, ctx, tmp_path / "j", ["json"], "sel")
        import json

        head = json.loads(json_path.read_text(encoding="utf-8"))
        assert head["batch"]["selected_from"] == 7 and head["counts"]["total"] == 2
    finally:
        window.close()
        store.close()


def test_calibration_counts_each_file_left_out_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """'medscreen calibrate' summed a folder's non-scan files as one item and printed it as
    '1 1 file that is not a scan' ('1 2 files that are not scans' for two), and counted the
    folder as one file left out. Found calibrating a folder with a text file beside the
    scans. Each file is counted: '3 left out', 'left out: 3 not a scan'."""
    from desktop.cli import main

    root = tmp_path / "labelled"
    for label, sub in (("normal", "normal"), ("tuberculosis", "tuberculosis")):
        shutil.copytree(DATA / "tb" / sub, root / label)
    (root / "normal" / "notes.txt").write_text("read by Dr A", encoding="utf-8")
    (root / "normal" / "list.xlsx").write_bytes(b"PK\x03\x04")
    (root / "tuberculosis" / "readme.txt").write_text("TB", encoding="utf-8")
    code = main(["calibrate", str(root), "--model", "tb", "--name", "qa8", "--no-save",
                 "--db", str(tmp_path / "r.sqlite3"), "--out", str(tmp_path / "cal"),
                 "--quiet"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1  # 6 and 6 scans: too few to calibrate, after the summary
    assert "12 labelled scans used (6 tuberculosis, 6 other); 3 left out" in out
    assert "left out: 3 not a scan\n" in out
    assert f"    {root / 'normal'}: not a scan (2 files in it)" in out


def test_copies_of_one_scan_in_a_batch_are_said_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same scan exported twice (or copied under another name) is screened and counted
    twice, with nothing to say so: a programme adding up '4 screened, 2 flagged' counted
    one patient's film twice. The summary, page 1 of the PDF and the JSON
    (batch.same_content_copies) now say how many files are copies of another."""
    import json
    import subprocess

    folder = tmp_path / "scans"
    folder.mkdir()
    flagged = sorted((DATA / "tb" / "tuberculosis").glob("*.png"))[0]
    shutil.copy(flagged, folder / "IM0001.png")
    shutil.copy(flagged, folder / "IM0001 (copy).png")
    shutil.copy(flagged, folder / "export.png")
    shutil.copy(CHEST, folder / "IM0002.png")
    assert _classify(folder, tmp_path, "--report", "pdf,json", "--name", "day") == 0
    err = capsys.readouterr().err
    assert "4 files: 4 screened" in err
    assert "  2 files have the same content as another file of this batch" in err
    head = json.loads((tmp_path / "out" / "day.json").read_text(encoding="utf-8"))
    assert head["batch"]["same_content_copies"] == 2 and head["counts"]["total"] == 4
    page1 = subprocess.run(["pdftotext", "-f", "1", "-l", "1", str(tmp_path / "out" / "day.pdf"),
                            "-"], capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "Copies 2 files of this batch have the same content as another" in " ".join(
        page1.split()
    )


@pytest.mark.skipif(not hasattr(__import__("time"), "tzset"), reason="POSIX time zones")
def test_history_shows_times_on_the_clinics_clock_with_the_offset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """'medscreen history' printed a batch's start in UTC with no zone ('2026-12-02 07:41'
    for a batch run at 10:41 in Kisumu) while the PDF says '10:41 (UTC+03:00)' and the
    window's history '07:41 UTC'. Every face now shows local time with the offset."""
    import time
    from datetime import UTC, datetime

    from desktop.cli import main

    info = _one_chest_batch(tmp_path)
    started = datetime.fromisoformat(info.started_at).astimezone(UTC)
    monkeypatch.setenv("TZ", "Africa/Nairobi")  # UTC+3, no daylight saving
    time.tzset()
    try:
        capsys.readouterr()
        assert main(["history", "--db", str(tmp_path / "r.sqlite3")]) == 0
        out = capsys.readouterr().out
    finally:
        monkeypatch.undo()
        time.tzset()
    nairobi = started.timestamp() + 3 * 3600
    assert f"{datetime.fromtimestamp(nairobi, UTC):%Y-%m-%d %H:%M} (UTC+03:00) — " in out


def test_verbose_logs_do_not_quote_names_from_image_tags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With -v (what support asks a clinic to run), Pillow's debug lines quoted every TIFF
    and EXIF tag whole: 'tag: ImageDescription (270) … value: b'Patient Nakato Grace
    KS-884211'' and the Artist went to the console and into the log file, where the README
    promises no identifier ever goes. Found screening a TIFF and a JPEG whose description
    a scanner filled with the patient's name."""
    from PIL import Image, TiffImagePlugin

    from desktop.cli import main

    monkeypatch.setenv("MEDSCREEN_HOME", str(tmp_path / "home"))
    folder = tmp_path / "scans"
    folder.mkdir()
    image = Image.open(CHEST).convert("L")
    tags = TiffImagePlugin.ImageFileDirectory_v2()
    tags[270] = "Patient Nakato Grace KS-884211"  # ImageDescription
    tags[315] = "Dr Okello"  # Artist
    image.save(folder / "chest.tif", tiffinfo=tags)
    exif = Image.Exif()
    exif[0x010E], exif[0x013B] = "Patient Nakato Grace KS-884211", "Dr Okello"
    image.save(folder / "chest.jpg", exif=exif.tobytes())
    code = main(["-v", "classify", str(folder), "--out", str(tmp_path / "out"), "--db",
                 str(tmp_path / "r.sqlite3"), "--quiet"])  # fmt: skip
    assert code == 0
    console = capsys.readouterr()
    logged = (tmp_path / "home" / "logs" / "medscreen.log").read_text(encoding="utf-8")
    assert "DEBUG" in logged  # verbose indeed
    for text in (console.out, console.err, logged):
        assert "Nakato" not in text and "KS-884211" not in text and "Okello" not in text


@pytest.mark.skipif(os.name != "posix", reason="symbolic links")
def test_a_folder_given_twice_by_another_path_is_screened_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """'medscreen classify scans today' where 'today' is a link to 'scans' (or the same share
    mounted twice) walked the folder twice: every scan a row twice, 30 files for 15 and every
    flag counted twice. Each folder is now walked once per batch, across the paths given, and
    the summary says one was given twice; a folder inside another one given, in either
    order, is neither walked twice nor called a loop."""
    from desktop.cli import main

    folder = _odd_folder(tmp_path)
    (folder / "sub").mkdir()
    shutil.copy(TB_NORMAL[4], folder / "sub" / "inner.png")
    (tmp_path / "today").symlink_to(folder)
    args = ["--out", str(tmp_path / "out"), "--db", str(tmp_path / "r.sqlite3"), "--quiet"]
    assert main(["classify", str(folder), str(tmp_path / "today"), *args]) == 0
    err = capsys.readouterr().err
    assert "8 files: 4 screened, 0 not chest X-rays, 4 errors" in err
    assert "1 folder given twice (by a link, or inside another folder given) screened once" in err
    rows = csv_rows(tmp_path / "out" / "results.csv")
    assert len(rows) == 8 and len({row["file"] for row in rows}) == 8
    assert main(["classify", str(folder / "sub"), str(folder), *args]) == 0
    err = capsys.readouterr().err
    assert "8 files: 4 screened" in err and "loop" not in err


@pytest.mark.skipif(not hasattr(__import__("time"), "tzset"), reason="POSIX time zones")
def test_a_reader_decision_is_timed_on_the_clinics_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader's decision read '… Dr Chen, 2026-12-02 07:41 UTC' in the table, the viewer
    and the PDF, under a page 1 'created 10:45 (UTC+03:00)' in Nairobi: two clocks in one
    report. It now shows the clinic's time with the offset, as the report does."""
    import time

    from desktop.engine.decisions import Decision, ReaderDecision

    decision = ReaderDecision(Decision.FOLLOW_UP, "old films", "Dr Chen",
                              "2026-12-02T07:41:09+00:00")  # fmt: skip
    monkeypatch.setenv("TZ", "Africa/Nairobi")
    time.tzset()
    try:
        text = decision.summary()
    finally:
        monkeypatch.undo()
        time.tzset()
    assert text == "Needs follow-up — Dr Chen, 2026-12-02 10:41 (UTC+03:00): old films"


@pytest.mark.gui
def test_a_reader_can_decide_from_the_keyboard(qtbot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The viewer's Next/Previous had keys (Page Down, Alt+→) but its four decisions had
    none: a reader stepping through a morning's scans with Page Down reached for the mouse
    for every one. Alt+1…Alt+4 record Agree, Disagree, Needs follow-up, Image quality too
    poor (again: clear), and the buttons' tooltips say so."""
    from PySide6.QtCore import Qt

    from desktop.engine.decisions import Decision

    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(CHEST, folder / "chest.png")
    window, store = _screened_window(qtbot, tmp_path, folder)
    try:
        viewer = window.open_viewer(window.model.result(0))
        qtbot.waitExposed(viewer)
        made: list[object] = []
        viewer.decision_made.connect(lambda _r, d, _n: made.append(d))
        viewer.activateWindow()
        qtbot.waitUntil(viewer.isActiveWindow)  # shortcuts go to the active window
        qtbot.keyClick(viewer, Qt.Key.Key_3, Qt.KeyboardModifier.AltModifier)
        qtbot.waitUntil(lambda: made == [Decision.FOLLOW_UP])
        assert viewer.decision_buttons[Decision.FOLLOW_UP].isChecked()
        qtbot.keyClick(viewer, Qt.Key.Key_3, Qt.KeyboardModifier.AltModifier)
        qtbot.waitUntil(lambda: made == [Decision.FOLLOW_UP, None])
        assert "Alt+1" in viewer.decision_buttons[Decision.AGREE].toolTip()
        viewer.close()
    finally:
        window.close()
        store.close()


@pytest.mark.gui
def test_a_batch_left_by_a_window_that_died_is_offered_at_the_next_start(
    qtbot, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A window killed mid-batch (kill -9, a crash) takes its batch process down at a clean
    point, which records the batch 'cancelled': the next start offered nothing (only a batch
    whose process died is 'interrupted'), against the README's 'A batch interrupted by a
    crash … is offered for resumption at the next start'. Found killing the window 5 s into
    668 scans and starting it again: 78 done, 590 left, no word. The latest screening batch
    stopped before its end is now offered, and Resume finishes it."""
    from desktop.engine.discovery import discover
    from desktop.engine.store import BatchStatus, ResultsStore
    from desktop.gui.main_window import MainWindow
    from desktop.gui.settings import AppSettings

    folder = tmp_path / "scans"
    folder.mkdir()
    for n, path in enumerate(TB_NORMAL[:4]):
        shutil.copy(path, folder / f"chest_{n}.png")
    files = [str(p) for p in discover([folder]).files]
    store = ResultsStore(tmp_path / "w.sqlite3")
    batch_id = store.create_batch([str(folder)], "old-key", "CPU")
    store.set_items(batch_id, files)
    store.finish_batch(batch_id, BatchStatus.CANCELLED)  # what the batch process leaves
    window = MainWindow(settings=AppSettings(tmp_path / "s.ini"), store=store,
                        model_dirs=[REPO / "assets" / "models"])  # fmt: skip
    qtbot.addWidget(window)
    try:
        window.show()
        with qtbot.waitSignal(window.models_changed, timeout=60_000):
            window.start()
        qtbot.waitUntil(lambda: "stopped before its end" in window.messages.message())
        assert "with 0 of 4 scans done (4 left)" in window.messages.message()
        with qtbot.waitSignal(window.batch.batch_finished, timeout=120_000):
            window.messages.action.click()
        assert window.model.rowCount() == 4
        assert store.batch(batch_id).status == BatchStatus.COMPLETED
    finally:
        window.close()
        store.close()


def test_history_says_when_older_batches_are_not_listed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """'medscreen history' listed the latest 200 batches and stopped without a word: a
    clinic screening daily for a year could not find an older batch's id. A line now says
    older ones are kept, and --all lists every one."""
    from desktop.cli import main
    from desktop.engine.store import ResultsStore

    store = ResultsStore(tmp_path / "r.sqlite3")
    for day in range(201):
        store.create_batch([f"/data/day-{day:03d}"], "key", "CPU")
    store.close()
    assert main(["history", "--db", str(tmp_path / "r.sqlite3")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 201 and "/data/day-000" not in "\n".join(lines)
    assert lines[-1].startswith("(the latest 200 batches; older ones are kept")
    assert main(["history", "--db", str(tmp_path / "r.sqlite3"), "--all"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 201 and lines[-1].endswith(" — /data/day-000")


def test_resuming_a_finished_batch_says_there_is_nothing_left(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """'medscreen resume ID' of a batch that had completed rewrote its outputs and said
    'batch … in 0.0 s', as if it had screened; it now says nothing was left to screen."""
    from desktop.cli import main

    batch_id = _one_chest_batch(tmp_path).id
    capsys.readouterr()
    assert main(["resume", batch_id, "--db", str(tmp_path / "r.sqlite3"), "--out",
                 str(tmp_path / "again"), "--quiet"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert f"note: batch {batch_id} had already completed: nothing is left to screen" in err
    assert (tmp_path / "again" / "results.csv").exists()

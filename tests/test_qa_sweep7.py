"""Defects found by using MedScreen as a clinic would (session 7's QA sweep), each pinned by a
test on real files: the mixed folder, the CLI end to end, the reports."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from desktop.engine.errors import ScanErrorCode
from desktop.engine.quality import QualityCode, quality_of
from desktop.engine.results import ScanResult, ScanStatus
from tests.conftest import DATA, REPO, classify_rows, csv_rows

TB_NORMAL = sorted((DATA / "tb" / "normal").glob("*.png"))[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX named pipes")
def test_a_file_that_cannot_be_opened_is_not_called_damaged(tmp_path: Path) -> None:
    """A file MedScreen cannot open (here a named pipe called like a scan; equally a file
    without read permission, a path too long, an I/O error) was reported as "damaged file" in
    the table, the viewer and every report: staff would take an intact scan for a corrupt one
    and never look at the folder's permissions. Found by screening a folder with a file of
    mode 000 (permission denied) as a user without CAP_DAC_OVERRIDE."""
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(TB_NORMAL, folder / "chest.png")
    os.mkfifo(folder / "pipe.png")
    rows = classify_rows(folder, tmp_path)
    pipe = rows["pipe.png"]
    assert pipe["status"] == "error" and pipe["error_code"] == "unreadable"
    assert pipe["reason"].startswith("not a regular file")
    assert pipe["quality"] == "unreadable"
    assert pipe["quality_text"] == "file cannot be opened"
    assert rows["chest.png"]["status"] == "ok"  # the batch went on


def test_every_unreadable_reason_reads_as_cannot_be_opened() -> None:
    """The same words for each way read_file reports UNREADABLE; a damaged image keeps
    "damaged file"."""

    def error(code: ScanErrorCode, reason: str) -> ScanResult:
        return ScanResult(file="f", sha256=None, status=ScanStatus.ERROR, reason=reason,
                          error_code=str(code))  # fmt: skip

    for reason in (
        "permission denied: the file cannot be opened for reading",
        "file could not be read: Input/output error (EIO)",
        "this is a folder, not a file",
    ):
        quality = quality_of(error(ScanErrorCode.UNREADABLE, reason))
        assert quality is not None and quality.code is QualityCode.UNREADABLE
        assert quality.text == "file cannot be opened" and quality.detail == reason
    damaged = quality_of(error(ScanErrorCode.TRUNCATED, "image data is truncated"))
    assert damaged is not None and damaged.text == "damaged file"


def _classify_command(folder: Path, tmp_path: Path) -> list[str]:
    """``python -m desktop.cli classify FOLDER`` into ``tmp_path/out`` with its own store."""
    return [sys.executable, "-m", "desktop.cli", "classify", str(folder), "--out",
            str(tmp_path / "out"), "--db", str(tmp_path / "r.sqlite3"), "--quiet"]  # fmt: skip


def _as_a_user_denied(command: list[str], path: Path, skip_reason: str) -> list[str]:
    """``command`` run by a user ``path`` may deny: as root, with the capabilities that read
    past permissions dropped (setpriv) and ``path`` owned by nobody."""
    if os.geteuid() != 0:
        return command
    if not shutil.which("setpriv"):
        pytest.skip(skip_reason)
    os.chown(path, 65534, 65534)  # nobody
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *command]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_permission_denied_as_found(tmp_path: Path) -> None:
    """The case as found: a file of mode 000, screened by a user who may not read it (root:
    capabilities dropped with setpriv, the file owned by nobody), in a subprocess."""
    folder = tmp_path / "scans"
    folder.mkdir()
    locked = folder / "locked.png"
    shutil.copy(TB_NORMAL, locked)
    command = _as_a_user_denied(_classify_command(folder, tmp_path), locked,
                                "root without setpriv reads a file of mode 000")  # fmt: skip
    locked.chmod(0)
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    finally:
        locked.chmod(0o600)
    assert done.returncode == 0, done.stderr
    (row,) = csv_rows(tmp_path / "out" / "results.csv")
    assert row["reason"].startswith("permission denied")
    assert (row["quality"], row["quality_text"]) == ("unreadable", "file cannot be opened")


def test_the_command_printed_after_a_failed_write_writes_the_same_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """When the outputs cannot be written (a full disk), the CLI prints the command that
    writes them later. It was 'medscreen export ID --out DIR' whatever the run asked for:
    run as printed, it looked in the default results store (a run with --db: "no batch"), and
    without --report, --clinic or --operating-point it wrote no PDF, no clinic and other flags.
    Found by filling a 2 MB tmpfs output folder, then following the message."""
    from desktop.cli import main

    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(TB_NORMAL, folder / "chest.png")
    shutil.copy(sorted((DATA / "mednist" / "Hand").glob("*.jpeg"))[0], folder / "hand.jpeg")
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").mkdir()  # a folder where a result file goes: its write fails
    db = tmp_path / "clinic.sqlite3"  # not the default store
    asked = ["--out", str(out), "--db", str(db), "--report", "pdf,csv", "--clinic", "Kisumu",
             "--operating-point", "balanced", "--quiet"]  # fmt: skip
    assert main(["classify", str(folder), *asked]) == 1
    err = capsys.readouterr().err
    match = re.search(r"with: (medscreen export .+)$", err, re.M)
    assert match is not None, err
    words = shlex.split(match.group(1))
    for option in ("--db", "--report", "--clinic", "--operating-point"):
        assert words[words.index(option) + 1] == asked[asked.index(option) + 1]

    (out / "results.json").rmdir()  # room again
    assert main(words[1:]) == 0, capsys.readouterr().err
    (report,) = out.glob("medscreen-kisumu-*.csv")
    rows = {Path(r["file"]).name: r for r in csv_rows(report)}
    assert rows["chest.png"]["status"] == "ok" and rows["hand.jpeg"]["status"] == "not_chest_xray"
    assert rows["chest.png"]["operating_point"].startswith("balanced")
    assert len(list(out.glob("medscreen-kisumu-*.pdf"))) == 1


def test_adult_batch_reports_the_adult_thresholds_figures_not_the_pooled_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The pneumonia model sets its screening threshold per patient group (adult 0.694:
    validation sensitivity 0.74, held-out test 0.66; child 0.390: 0.95 / 0.96). The CLI summary
    and the PDF's page 1 — what a programme files — named the three thresholds, then one
    "sensitivity 0.90, specificity 0.81" (validation) and "at screening: sensitivity 0.90,
    specificity 0.79" (test): the pooled figures of the group-unknown threshold, read by a
    clinic screening adults as the adult point's. Found by comparing a --patients adult PDF
    with the viewer, which showed 0.74 for the same scans."""
    from desktop.cli import main

    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(TB_NORMAL, folder / "adult.png")
    out = tmp_path / "out"
    code = main(["classify", str(folder), "--out", str(out), "--db", str(tmp_path / "r.sqlite3"),
                 "--patients", "adult", "--report", "pdf", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    (line,) = [x for x in err.splitlines() if x.strip().startswith("pneumonia:")]
    assert "adult 0.74 / 0.75" in line and "child 0.95 / 0.95" in line, line
    assert "group unknown 0.90 / 0.81" in line
    assert "validation sensitivity 0.90, specificity 0.81" not in line

    (pdf,) = out.glob("medscreen-*.pdf")
    text = " ".join(
        subprocess.run(["pdftotext", "-l", "1", str(pdf), "-"], capture_output=True,
                       text=True, check=True).stdout.split()
    )  # fmt: skip
    assert "adult 0.74 / 0.75" in text  # validation, the adult threshold's own
    assert "adult 0.66 / 0.75" in text  # held-out test, the adult threshold's own
    assert "child 0.96 / 0.91" in text
    assert "at screening: sensitivity 0.90, specificity 0.79" not in text
    # the JSON report: each group's validation figures beside its threshold
    point = json.loads((out / "results.json").read_text("utf-8"))["operating_point"]
    pneumonia = point["models"]["pneumonia"]
    assert pneumonia["by_group"]["adult"] == pytest.approx(0.6935, abs=1e-4)
    adult = pneumonia["by_group_validation"]["adult"]
    assert (round(adult["sensitivity"], 2), round(adult["specificity"], 2)) == (0.74, 0.75)
    assert round(pneumonia["by_group_validation"]["child"]["sensitivity"], 2) == 0.95
    assert "by_group_validation" not in point["models"]["tb"]  # one threshold: as before


_SLOW_CLI = """
import sys, time
from desktop.engine import screening
real = screening.Screener.screen
def slow(self, prepared):
    time.sleep(0.2)  # a slow PC: the batch is still running when the second command starts
    return real(self, prepared)
screening.Screener.screen = slow
from desktop.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def _running_batch(db: Path, proc: subprocess.Popen[bytes]) -> str:
    """The id of the batch a running ``medscreen`` process has begun committing scans of."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        try:
            with sqlite3.connect(db) as con:
                row = con.execute(
                    "SELECT batch_id FROM batch_items WHERE status IS NOT NULL LIMIT 1"
                ).fetchone()
            con.close()
        except sqlite3.Error:
            continue
        if row:
            return str(row[0])
    raise AssertionError("the batch ended or never started")


def test_resume_refuses_a_batch_another_live_process_is_screening(
    tmp_path: Path, chest_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """'medscreen resume ID' of a batch that another medscreen process was still screening
    ran the same batch a second time beside it: both processes decoded and scored every
    pending scan (two resumes of a 3,875-scan batch each took 53 s, the work done twice).
    Found by resuming a killed batch from two terminals; the second resume without an id
    already refused (the batch is not interrupted while its process lives)."""
    from desktop.cli import main

    db = tmp_path / "r.sqlite3"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_CLI, "classify", str(chest_folder), "--out",
         str(tmp_path / "first"), "--db", str(db), "--quiet", "--workers", "1"],
        cwd=REPO, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        batch_id = _running_batch(db, proc)
        code = main(["resume", batch_id, "--out", str(tmp_path / "second"), "--db", str(db),
                     "--quiet"])  # fmt: skip
        err = capsys.readouterr().err
        assert proc.poll() is None, "the first process ended before the resume was tried"
        assert code == 1, err
        assert f"batch {batch_id} is being screened by another MedScreen process" in err
        assert f"(pid {proc.pid})" in err
        assert not (tmp_path / "second" / "results.csv").exists()
    finally:
        proc.kill()
        proc.wait(timeout=30)
    # once that process is gone, the same command continues the batch
    assert main(["resume", batch_id, "--out", str(tmp_path / "second"), "--db", str(db),
                 "--quiet"]) == 0  # fmt: skip
    rows = csv_rows(tmp_path / "second" / "results.csv")
    assert len(rows) == len(list(chest_folder.rglob("*.*")))
    assert all(r["status"] == "ok" for r in rows)


def test_placeholder_dicom_ages_do_not_take_the_flags_away(tmp_path: Path) -> None:
    """A DICOM age is trusted before the image's estimate, and a scan outside a model's ages
    raises no flag. Placeholder ages that systems write for "unknown" were taken as real:
    PatientAge 000Y made the real adult chest CR a child of 0 months (outside both models:
    pneumonia 0.78, above the adult threshold 0.694, not flagged), 999Y and a birth date of
    1900-01-01 made it 999 and 126 years old (outside pneumonia's ages 1-85: not flagged).
    Found screening copies of the CR with such headers. An age of 0 is written in days,
    weeks or months (DICOM AS), and nobody is over 120: such values now count as no age."""
    import pydicom

    folder = tmp_path / "scans"
    folder.mkdir()
    cr = DATA / "dicom" / "CR-MONO1-10-chest.dcm"
    headers = {"age000Y": {"PatientAge": "000Y"}, "age999Y": {"PatientAge": "999Y"},
               "born1900": {"PatientBirthDate": "19000101", "StudyDate": "20261201"},
               "age045Y": {"PatientAge": "045Y"}, "age010D": {"PatientAge": "010D"}}  # fmt: skip
    for name, elements in headers.items():
        ds = pydicom.dcmread(cr, force=True)
        for keyword, value in elements.items():
            setattr(ds, keyword, value)
        ds.save_as(folder / f"{name}.dcm")
    rows = classify_rows(folder, tmp_path)
    for name in ("age000Y", "age999Y", "born1900"):
        row = rows[f"{name}.dcm"]
        assert row["patient_group"] == "adult" and row["patient_group_source"] == "image", row
        assert row["outside_scope"] == ""
        assert float(row["pneumonia_score"]) > 0.694 and row["pneumonia_flag"] == "yes"
    assert rows["age045Y.dcm"]["patient_group_source"] == "file"  # real ages still count
    assert rows["age045Y.dcm"]["pneumonia_flag"] == "yes"
    newborn = rows["age010D.dcm"]
    assert (newborn["patient_group"], newborn["patient_group_source"]) == ("child", "file")
    assert "age 0 months" in newborn["outside_scope"]


def test_the_thresholds_line_is_cut_at_a_word_with_an_ellipsis(qtbot) -> None:  # type: ignore[no-untyped-def]
    """On a 1366×768 screen at 150 % scaling (911 logical pixels) the window's thresholds
    line read "TB ≥ 0.22 (sens 0.96, spec 0.90) · Pneumonia: adul": clipped in the middle of
    a word with nothing to say it goes on, the pneumonia thresholds gone. Found in
    `scripts/screenshots --reading --scale 1.5`. It is now cut at a whole word with "…"
    (as the table's cells are), the whole line still its text and tooltip."""
    from desktop.engine.manifest import read_manifest
    from desktop.gui.operating_point import OperatingPointPicker

    shipped = REPO / "assets" / "models"
    manifests = {m: read_manifest(shipped / f"{m}.json") for m in ("tb", "pneumonia")}
    picker = OperatingPointPicker()
    qtbot.addWidget(picker)
    picker.set_manifests(manifests, "screening")
    picker.resize(560, 30)
    picker.show()
    qtbot.waitExposed(picker)
    full = picker.detail.text()
    assert "Pneumonia: adult ≥ 0.69" in full  # the whole line stays the label's text
    shown = picker.detail.shown_text()
    width = picker.detail.fontMetrics().horizontalAdvance
    assert width(full) > picker.detail.contentsRect().width()  # it does not fit here
    assert shown.endswith("…") and width(shown) <= picker.detail.contentsRect().width()
    kept = shown[:-1].rstrip(" ,;:")
    assert full.startswith(kept) and full[len(kept)] in " ,;:·"  # a whole word, never "adul"
    picker.resize(2400, 30)  # room for it all: shown whole
    qtbot.waitUntil(lambda: picker.detail.shown_text() == full)


def test_a_folder_given_relative_is_one_history_folder_with_its_full_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`medscreen classify big2` stored the batch's input as typed, "big2": the history (CLI
    and window) showed "big2" where it promises the full path, and the window's drop of the
    same folder (/tmp/qa/big2) or `classify ./big2/` were other "folders", their re-runs never
    merged; a batch killed before its file list was saved, resumed from another directory,
    would have looked for "big2" there. Found reading `medscreen history` after classify and
    kill tests run from /tmp/qa."""
    from desktop.cli import main
    from desktop.engine.history import history_rows
    from desktop.engine.store import ResultsStore

    folder = tmp_path / "morning scans"
    folder.mkdir()
    shutil.copy(TB_NORMAL, folder / "chest.png")
    db = tmp_path / "r.sqlite3"
    monkeypatch.chdir(tmp_path)
    for given in ("morning scans", "./morning scans/", str(folder)):
        assert main(["classify", given, "--out", str(tmp_path / "out"), "--db", str(db),
                     "--quiet"]) == 0  # fmt: skip
    assert main(["history", "--db", str(db)]) == 0
    listed = capsys.readouterr().out
    assert listed.count(f"— {folder}") == 3, listed
    store = ResultsStore(db)
    try:
        (row,) = history_rows(store)
        assert row.folder == str(folder) and row.runs == 3
    finally:
        store.close()


def test_the_batch_message_is_not_squeezed_out_by_the_device_line(qtbot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """At 1366×768 and 150 % (911 logical pixels) the status bar read "Finished: 1.." beside
    the whole models line ("Models ready — device: CPU via CPUExecutionProvider — CUDA not
    used: …"): the batch's counts cut to what reads as "1". Found in `scripts/screenshots
    --reading --scale 1.5`. The models line now gives way (cut at a word with "…", its
    tooltip whole) so the batch's message is shown whole."""
    from desktop.engine.store import ResultsStore
    from desktop.gui.main_window import MainWindow
    from desktop.gui.settings import AppSettings

    store = ResultsStore(tmp_path / "r.sqlite3")
    window = MainWindow(settings=AppSettings(tmp_path / "s.ini"), store=store,
                        model_dirs=[REPO / "assets" / "models"])  # fmt: skip
    qtbot.addWidget(window)
    try:
        window.resize(911, 512)
        window.show()
        qtbot.waitExposed(window)
        device = ("Models ready — device: CPU via CPUExecutionProvider — CUDA not used: no "
                  "NVIDIA GPU driver found (as the batch process reported)")  # fmt: skip
        window.models_label.setText(device)
        qtbot.waitUntil(lambda: window.models_label.width() > 600)  # laid out: it takes the bar
        message = "Finished: 18 screened, 2 not chest X-rays, 1 error in 0 s"
        window.show_status(message)
        bar = window.statusBar()
        assert bar.currentMessage() == message
        qtbot.waitUntil(lambda: window.models_label.shown_text() != device)
        assert window.models_label.shown_text().endswith("…")
        assert window.models_label.text() == device  # whole, for the tooltip and tests
        room = bar.width() - window.models_label.width()
        assert bar.fontMetrics().horizontalAdvance(message) < room
    finally:
        window.close()
        store.close()


def test_export_of_a_batch_still_being_screened_says_so(
    tmp_path: Path, chest_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`medscreen export` of a batch another process was still screening wrote a PDF saying
    "stopped before the end … Resume the batch" and printed "'medscreen resume ID …'
    continues it": the batch had not stopped, and that command refuses a batch a live
    process holds. Found exporting a 3,875-scan batch from a second terminal mid-run. Both now
    say it is still being screened and to export again when it has finished."""
    from desktop.cli import main

    db = tmp_path / "r.sqlite3"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_CLI, "classify", str(chest_folder), "--out",
         str(tmp_path / "first"), "--db", str(db), "--quiet", "--workers", "1"],
        cwd=REPO, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    out = tmp_path / "partial"
    try:
        batch_id = _running_batch(db, proc)
        code = main(["export", batch_id, "--out", str(out), "--db", str(db), "--report",
                     "pdf,json", "--quiet"])  # fmt: skip
        err = capsys.readouterr().err
        assert proc.poll() is None, "the batch ended before the export"
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert code == 0, err
    assert f"batch {batch_id} is still being screened" in err
    assert "medscreen resume" not in err
    (pdf,) = out.glob("medscreen-*.pdf")
    page1 = " ".join(
        subprocess.run(["pdftotext", "-l", "1", str(pdf), "-"], capture_output=True,
                       text=True, check=True).stdout.split()
    )  # fmt: skip
    assert "still being screened" in page1 and "Resume the batch" not in page1
    (report,) = out.glob("medscreen-*.json")
    head = json.loads(report.read_text("utf-8"))["batch"]
    assert head["files_not_screened"] > 0 and head["still_being_screened"] is True


def test_a_character_no_report_font_has_is_named_not_drawn_as_a_box(tmp_path: Path) -> None:
    """A file named "x-ray 🫁 émile.png" was listed in the PDF as "x-ray □ émile.png": neither
    DejaVu Sans nor the CJK fallback has the emoji, so two scans whose names differ only there
    read the same. Found screening the mixed folder with an emoji file name. Such a character
    is now written as its code point, "[U+1FAC1]"; CJK still prints in the fallback font."""
    from desktop.cli import main

    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(TB_NORMAL, folder / "x-ray 🫁 émile.png")
    shutil.copy(TB_NORMAL, folder / "x-ray 🦴 émile.png")
    shutil.copy(TB_NORMAL, folder / "患者_胸部.png")
    out = tmp_path / "out"
    assert main(["classify", str(folder), "--out", str(out), "--db", str(tmp_path / "r.sqlite3"),
                 "--report", "pdf", "--operating-point", "0", "--quiet"]) == 0  # fmt: skip
    (pdf,) = out.glob("medscreen-*.pdf")
    text = subprocess.run(["pdftotext", "-enc", "UTF-8", str(pdf), "-"], capture_output=True,
                          check=True).stdout.decode("utf-8")  # fmt: skip
    assert "x-ray [U+1FAC1] émile.png" in text and "x-ray [U+1F9B4] émile.png" in text
    assert "患者_胸部.png" in text


def test_python_m_desktop_cli_runs_the_command(tmp_path: Path) -> None:
    """`python -m desktop.cli classify FOLDER --out DIR` (the module ARCHITECTURE.md names as
    the `medscreen` command) imported the module, screened nothing, printed nothing and
    exited 0: a script or a scheduled task took it for a finished batch. Found running the
    QA sweep's CLI checks that way. It now runs main(), as `python -m desktop` does."""
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(TB_NORMAL, folder / "chest.png")
    out = tmp_path / "out"
    done = subprocess.run(
        _classify_command(folder, tmp_path), cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "1 file: 1 screened" in done.stderr
    (row,) = csv_rows(out / "results.csv")
    assert row["status"] == "ok" and Path(row["file"]).name == "chest.png"
    bad = subprocess.run([sys.executable, "-m", "desktop.cli", "clasify"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "invalid choice" in bad.stderr  # a typo is not a success


def test_decoder_library_warnings_do_not_reach_the_console(tmp_path: Path) -> None:
    """`medscreen classify` printed Pillow's and pydicom's own warnings among its output
    ("…/PIL/TiffImagePlugin.py:982: UserWarning: Corrupt EXIF data. Expecting to read 12
    bytes but only got 5." and "…/pydicom/filereader.py:402: UserWarning: Expected explicit
    VR, but found implicit VR"): library paths that name no scan, read as a crash, while the
    file's own row already says what is wrong. Found screening the mixed folder (a damaged
    TIFF header; pydicom's SC_rgb_jpeg.dcm). Not in -v (debug) runs."""
    from tests.fixtures import pydicom_test_file

    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "bad.tiff").write_bytes(b"MM\x00\x2a\x00\x00\x00\x08garbage")
    shutil.copy(pydicom_test_file("SC_rgb_jpeg.dcm"), folder / "sc.dcm")
    shutil.copy(TB_NORMAL, folder / "chest.png")
    out = tmp_path / "out"
    done = subprocess.run(
        _classify_command(folder, tmp_path), cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, done.stderr
    rows = {Path(r["file"]).name: r for r in csv_rows(out / "results.csv")}
    assert rows["bad.tiff"]["quality_text"] == "damaged file"  # the file's row says it
    assert rows["sc.dcm"]["status"] == "not_chest_xray" and rows["chest.png"]["status"] == "ok"


def test_a_folder_that_cannot_be_read_is_a_row_of_every_report(tmp_path: Path) -> None:
    """A sub-folder MedScreen may not list (permission denied) was left out silently: its
    scans were in no row, the PDF, CSV and JSON counted the rest as the whole folder, and the
    window said nothing (only the CLI's summary named it, on stderr). Found screening a
    folder with a mode-000 sub-folder as a user without CAP_DAC_OVERRIDE. It is now a row of
    its own: 'folder could not be read (Permission denied): the scans in it were not
    screened'. Run as another user (root: capabilities dropped with setpriv, the folder
    owned by nobody), in a subprocess, as the real case."""
    folder = tmp_path / "scans"
    locked = folder / "ward B"
    locked.mkdir(parents=True)
    shutil.copy(TB_NORMAL, folder / "chest.png")
    shutil.copy(TB_NORMAL, locked / "hidden.png")
    command = _as_a_user_denied(_classify_command(folder, tmp_path), locked,
                                "root without setpriv cannot be denied a folder")  # fmt: skip
    locked.chmod(0o700 if os.geteuid() == 0 else 0)
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    finally:
        locked.chmod(0o700)
    assert done.returncode == 0, done.stderr
    assert "2 files: 1 screened, 0 not chest X-rays, 1 error" in done.stderr
    rows = {Path(r["file"]).name: r for r in csv_rows(tmp_path / "out" / "results.csv")}
    assert rows["chest.png"]["status"] == "ok"
    row = rows["ward B"]
    assert row["status"] == "error" and row["error_code"] == "unreadable"
    assert row["reason"] == (
        "folder could not be read (Permission denied): the scans in it were not screened"
    )
    assert (row["quality"], row["quality_text"]) == ("unreadable", "folder cannot be opened")


def test_classify_of_a_folder_without_scans_warns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`medscreen classify` of a folder holding no scan (an empty USB mount point, notes
    only) wrote a report of 0 scans and said nothing more than "0 files: 0 screened", exit
    0, where the window warns "No scans found to screen". Found classifying an empty folder.
    The batch still ran (exit 0, its empty reports written); a warning now names the inputs."""
    from desktop.cli import main

    folder = tmp_path / "usb stick"
    folder.mkdir()
    (folder / "notes.txt").write_text("ward round", encoding="utf-8")
    code = main(["classify", str(folder), "--out", str(tmp_path / "out"), "--db",
                 str(tmp_path / "r.sqlite3"), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0
    assert (
        f"medscreen: warning: no scans found to screen in {folder} "
        "(PNG, JPEG, TIFF, BMP, DICOM); 1 non-scan file skipped"
    ) in err
    assert csv_rows(tmp_path / "out" / "results.csv") == []

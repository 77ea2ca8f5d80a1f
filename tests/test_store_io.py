"""Outputs and the store when the disk, the database or the user get in the way (issue 9
defects 6, 8, 9; issue 15's resume + Ctrl-C): a clear message and a non-zero exit, never a
traceback; a batch whose outputs could not be written is exported again later.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from desktop.cli import main
from desktop.engine.registry import load_model_set
from desktop.engine.reports import ReportContext, write_csv, write_json, write_pdf
from desktop.engine.reports._common import EXCEL_CELL_CHARS, atomic_open
from desktop.engine.results import ScanResult, ScanStatus, ThresholdChoice
from desktop.engine.store import BatchStatus, ResultsStore
from tests.conftest import DATA, REPO, csv_rows
from tests.fixtures import damage_tables

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
UNSIGNED_OK = {"MEDSCREEN_ALLOW_UNSIGNED_MODELS": "1"}


def _cli(tmp_path: Path, models: Path, command: str, *args: str, out: Path | None = None) -> int:
    return main(
        [
            command,
            *args,
            "--out",
            str(out or tmp_path / "out"),
            "--models",
            str(models),
            "--db",
            str(tmp_path / "r.sqlite3"),
            "--quiet",
        ]
    )


@contextlib.contextmanager
def _tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A real small file system at ``folder`` (root only: skips otherwise)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


# -- issue 9 defect 8: a full output disk --------------------------------------------------


def test_full_output_disk_is_a_message_and_the_batch_can_be_exported_later(
    tmp_path, stand_in_models, chest_folder, monkeypatch, capsys
):
    real_fdopen = os.fdopen

    def full_disk(fd, *args, **kwargs):  # every report file hits ENOSPC when written
        handle = real_fdopen(fd, *args, **kwargs)

        def write(_data):
            raise OSError(errno.ENOSPC, "No space left on device")

        handle.write = write
        return handle

    monkeypatch.setattr(os, "fdopen", full_disk)
    code = _cli(tmp_path, stand_in_models, "classify", str(chest_folder), "--report", "pdf")
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err
    assert "could not write the results" in err and "No space left on device (ENOSPC)" in err
    assert not list((tmp_path / "out").glob("*.csv"))
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".part")]

    # the batch is complete in the store ...
    store = ResultsStore(tmp_path / "r.sqlite3")
    (batch,) = store.batches()
    assert batch.status == BatchStatus.COMPLETED and batch.done == 24
    assert batch.id in err and f"medscreen export {batch.id}" in err
    # ... resume says where to look instead of only refusing ...
    assert _cli(tmp_path, stand_in_models, "resume") == 1
    assert "medscreen export BATCH" in capsys.readouterr().err
    # ... and export writes it, once there is room, with every requested format
    again = tmp_path / "elsewhere"
    code = _cli(tmp_path, stand_in_models, "export", batch.id, "--report", "pdf", out=again)
    assert code == 0, capsys.readouterr().err
    rows = csv_rows(again / "results.csv")
    assert len(rows) == 24 and all(r["status"] == "ok" for r in rows)
    assert json.loads((again / "results.json").read_text())["batch"]["id"] == batch.id
    (pdf,) = again.glob("medscreen-*.pdf")  # the default report name
    assert pdf.read_bytes().startswith(b"%PDF")
    assert store.batch(batch.id).status == BatchStatus.COMPLETED  # nothing was re-screened


def test_really_full_tmpfs_output_disk(tmp_path, stand_in_models, chest_folder, capsys):
    """The same on a real 64 KiB file system (root only: it mounts a tmpfs)."""
    with _tmpfs(tmp_path / "tiny", "64k") as out:
        (out / "filler").write_bytes(b"\0" * 40_000)  # the writable check still passes
        code = _cli(tmp_path, stand_in_models, "classify", str(chest_folder), out=out)
        err = capsys.readouterr().err
        assert code == 1 and "Traceback" not in err
        assert "No space left on device" in err
        assert not [p.name for p in out.iterdir() if p.name.endswith(".part")]


def test_command_line_with_a_name_that_is_not_utf8(tmp_path, stand_in_models, capsys):
    folder = tmp_path / "usb"
    folder.mkdir()
    raw = os.path.join(os.fsencode(folder), b"caf\xe9.png")
    try:
        with open(raw, "wb") as handle:
            handle.write((DATA / "tb" / "normal" / "CHNCXR_0001_0.png").read_bytes())
    except (OSError, UnicodeError):
        pytest.skip("this file system only takes Unicode names")
    assert _cli(tmp_path, stand_in_models, "classify", str(folder), "--report", "pdf") == 0
    (row,) = csv_rows(tmp_path / "out" / "results.csv")
    assert row["file"].endswith("caf\ufffd.png") and row["status"] == "ok"
    capsys.readouterr()
    assert main(["history", "--db", str(tmp_path / "r.sqlite3")]) == 0
    assert "1/1 done" in capsys.readouterr().out


def test_export_of_an_unknown_batch_is_a_clear_error(tmp_path, stand_in_models, capsys):
    ResultsStore(tmp_path / "r.sqlite3").close()  # a store without it (none: test_qa_sweep8)
    assert _cli(tmp_path, stand_in_models, "export", "nosuchbatch") == 1
    assert "no batch 'nosuchbatch'" in capsys.readouterr().err


# -- issue 9 defect 8: read-only and damaged databases ------------------------------------


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions or a tmpfs")
def test_read_only_database_is_a_clear_message(tmp_path, stand_in_models, chest_folder):
    """A store on a read-only file system (as root: a tmpfs remounted read-only) or a file
    without write permission (as a user)."""
    env = {**os.environ, **UNSIGNED_OK}
    with contextlib.ExitStack() as stack:
        folder = stack.enter_context(_tmpfs(tmp_path / "ro", "4m")) if IS_ROOT else tmp_path / "ro"
        run = _classify_on_read_only_store(folder, env, stand_in_models, chest_folder, tmp_path)
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    assert "read-only" in run.stderr and "r.sqlite3" in run.stderr


def _classify_on_read_only_store(
    folder: Path, env: dict[str, str], models: Path, scans: Path, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    db = folder / "r.sqlite3"
    store = ResultsStore(db)
    store.create_batch([str(scans)], "k", "CPU")
    store.close()
    if IS_ROOT:
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    else:
        db.chmod(0o444)
        folder.chmod(0o555)
    try:
        run = subprocess.run(
            [sys.executable, "-m", "desktop", "classify", str(scans), "--db", str(db),
             "--models", str(models), "--out", str(tmp_path / "out"), "--quiet"],
            capture_output=True, text=True, cwd=REPO, env=env, timeout=120,
        )  # fmt: skip
    finally:
        if not IS_ROOT:
            folder.chmod(0o755)
    return run


def test_damaged_database_exits_non_zero_not_with_internal_error_rows(
    tmp_path, stand_in_models, chest_folder, capsys
):
    assert _cli(tmp_path, stand_in_models, "classify", str(chest_folder)) == 0
    db = tmp_path / "r.sqlite3"
    with sqlite3.connect(db) as con:  # everything in the main file, as after a clean exit
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    damage_tables(db, "results", "file_index", fill=0xA5, length=1024)  # real pages
    capsys.readouterr()
    code = _cli(tmp_path, stand_in_models, "classify", str(chest_folder), out=tmp_path / "o2")
    err = capsys.readouterr().err
    assert code == 1
    assert "is damaged" in err and "Traceback" not in err
    assert not (tmp_path / "o2" / "results.csv").exists()


# -- issue 15: resume + Ctrl-C reports the resumed batch --------------------------------------

_SLOW_CLI = """
import sys, time
from desktop.engine import screening
real = screening.Screener.screen
def slow(self, prepared):
    time.sleep(0.3)  # a slow PC: time to press Ctrl-C mid-batch
    return real(self, prepared)
screening.Screener.screen = slow
from desktop.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


#: The command line with a gate in inference: scans pass until two have gone through, then
#: every later call writes how many passed to ``<gate>/blocked`` and is held until Ctrl-C has
#: reached the main thread (its handler marks ``<gate>/interrupted`` just before it raises
#: KeyboardInterrupt there, where all commits happen). So the test presses Ctrl-C while the
#: batch is certainly mid-way, and nothing held is committed after it, however loaded the machine.
_GATED_CLI = """
import os, signal, sys, threading, time
from pathlib import Path
from desktop.engine import screening
gate = Path(os.environ["MEDSCREEN_TEST_GATE"])
def interrupted(signum, frame):
    (gate / "interrupted").touch()
    raise KeyboardInterrupt
signal.signal(signal.SIGINT, interrupted)
real = screening.Screener.screen
lock = threading.Lock()
passed = 0
def gated(self, prepared):
    global passed
    with lock:
        through = passed < 2
        if through:
            passed += len(prepared)
        else:
            (gate / "blocked.tmp").write_text(str(passed))
            os.replace(gate / "blocked.tmp", gate / "blocked")
    if not through:
        deadline = time.monotonic() + 120
        while not (gate / "interrupted").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    return real(self, prepared)
screening.Screener.screen = gated
from desktop.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def _done(db: Path, batch_id: str) -> int:
    with sqlite3.connect(db) as con:
        row = con.execute(
            "SELECT COUNT(*) FROM batch_items WHERE batch_id=? AND status IS NOT NULL", (batch_id,)
        ).fetchone()
    con.close()
    return int(row[0])


def _batch_with_done(db: Path, proc: subprocess.Popen, at_least: int) -> str | None:
    """The id of the batch a running ``medscreen`` process has committed ``at_least`` scans
    of, polled from its store (None if it ended first or after a minute)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        if not db.exists():
            continue
        try:
            with sqlite3.connect(db) as con:
                row = con.execute("SELECT id FROM batches").fetchone()
            con.close()
        except sqlite3.Error:
            continue
        if row and _done(db, row[0]) >= at_least:
            return str(row[0])
    return None


def test_ctrl_c_during_resume_writes_the_resumed_batch(tmp_path, stand_in_models, chest_folder):
    db = tmp_path / "r.sqlite3"
    models = load_model_set([stand_in_models])
    store = ResultsStore(db)
    # batch A: interrupted after its file list was saved
    from desktop.engine.runner import BatchRunner, run_to_end

    runner = BatchRunner(models, store, workers=1, batch_size=2)
    gen = runner.run([chest_folder / "tb"])
    first = next(gen)
    next(gen)
    runner.cancel()
    run_to_end(gen)
    batch_a = first.batch_id
    # batch B: started later, finished
    time.sleep(1.1)
    later = run_to_end(runner.run([chest_folder / "pneumonia"]))
    assert store.batches()[0].id == later.batch_id != batch_a
    before = _done(db, batch_a)
    store.close()

    assert before <= 6, before  # room left for the resumed part to be cut short below

    out = tmp_path / "out"
    gate = tmp_path / "gate"
    gate.mkdir()
    env = {**os.environ, **UNSIGNED_OK, "MEDSCREEN_TEST_GATE": str(gate)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _GATED_CLI, "resume", batch_a, "--out", str(out), "--db", str(db),
         "--models", str(stand_in_models), "--quiet", "--workers", "1"],
        cwd=REPO, env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    # Ctrl-C once the scans let through are committed and inference is held at the gate
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        blocked = gate / "blocked"
        if blocked.exists() and _done(db, batch_a) >= before + int(blocked.read_text()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the resumed batch ended before it could be interrupted"
    passed = int((gate / "blocked").read_text())
    assert 2 <= passed <= 5
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert (gate / "interrupted").exists()
    assert proc.returncode == 130, err
    done = _done(db, batch_a)
    assert before + 2 <= done < 12  # interrupted mid-batch
    report = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert report["batch"]["id"] == batch_a
    assert len(report["scans"]) == done
    assert all("/tb/" in s["file"] for s in report["scans"])
    assert f"medscreen resume {batch_a}" in err


def test_kill_9_of_medscreen_classify_then_resume_from_the_command_line(
    tmp_path, stand_in_models, chest_folder, capsys
):
    db = tmp_path / "r.sqlite3"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_CLI, "classify", str(chest_folder), "--out",
         str(tmp_path / "first"), "--db", str(db), "--models", str(stand_in_models), "--quiet",
         "--workers", "1"],
        cwd=REPO, env={**os.environ, **UNSIGNED_OK}, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    batch_id = _batch_with_done(db, proc, 4)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert batch_id is not None and proc.returncode == -signal.SIGKILL
    killed_at = _done(db, batch_id)
    assert 4 <= killed_at < 24

    capsys.readouterr()
    assert _cli(tmp_path, stand_in_models, "resume") == 0  # finds the dead batch itself
    err = capsys.readouterr().err
    assert f"{killed_at} finished before this resume" in err
    rows = csv_rows(tmp_path / "out" / "results.csv")
    assert len(rows) == 24 and len({r["file"] for r in rows}) == 24
    assert all(r["status"] == "ok" for r in rows)
    assert json.loads((tmp_path / "out" / "results.json").read_text())["batch"]["id"] == batch_id


# -- issue 9 defect 9: temporary files of a killed writer ------------------------------------

_KILLED_WRITER = """
import sys, time
from pathlib import Path
from desktop.engine.atomic import atomic_open
with atomic_open(Path(sys.argv[1]), "w") as handle:
    handle.write("half a report")
    handle.flush()
    print("writing", flush=True)
    time.sleep(60)
"""


def test_part_file_of_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "results.csv"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(target)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "writing\n"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".results.csv.") and left[0].endswith(".part")
    # a live writer's temporary file is never touched ...
    live = tmp_path / f".results.csv.{os.getpid()}.abcdef.part"
    live.write_text("in progress")
    # ... nor another report's
    other = tmp_path / ".report.pdf.999999999.abcdef.part"
    other.write_text("x")
    with atomic_open(target, "w") as handle:
        handle.write("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["results.csv", live.name, other.name]
    )
    assert target.read_text() == "new"


# -- issue 9 defect 6: reports never fail on text length -------------------------------------


def test_a_40000_character_reason_neither_breaks_the_pdf_nor_thecsv_rows(tmp_path, stand_in_models):
    models = load_model_set([stand_in_models])
    ctx = ReportContext("b1", datetime.now(UTC), "test", models.manifests, ThresholdChoice(), "CPU")
    dicom = str(DATA / "dicom" / "CR-MONO1-10-chest.dcm")
    results = [
        ScanResult(
            file=dicom,
            sha256="ab" * 32,
            status=ScanStatus.ERROR,
            reason="unsupported PhotometricInterpretation " + "Y" * 40_000,  # one long word
            error_code="unsupported_image",
        ),
        ScanResult(
            file=dicom + ".2",
            sha256="cd" * 32,
            status=ScanStatus.ERROR,
            reason="words " * 8_000,
            error_code="unsupported_image",
            warnings=("w" * 50_000,),
        ),
    ]
    pdf = write_pdf(results, ctx, tmp_path / "report.pdf")
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True).stdout
    assert "unsupported PhotometricInterpretation" in text and "characters in all" in text
    rows = csv_rows(write_csv(results, ctx, tmp_path / "r.csv"))
    assert len(rows) == 2
    assert all(len(v) <= EXCEL_CELL_CHARS for row in rows for v in row.values())
    assert rows[0]["reason"].startswith("unsupported PhotometricInterpretation YYY")
    assert rows[0]["reason"].endswith("[cut: 40,038 characters in all]")
    # the JSON, for programs, keeps the text as the engine gave it
    doc = json.loads(write_json(results, ctx, tmp_path / "r.json").read_text())
    assert len(doc["scans"][0]["reason"]) == 40_038


def test_log_file_takes_a_name_that_is_not_utf8(tmp_path, capsys, monkeypatch):
    """A surrogate-escaped name in a log message is escaped, not a '--- Logging error ---'."""
    import logging

    from desktop.app_logging import configure_logging, log_file_path

    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # only this test's handler
    configure_logging(console=False)
    try:
        logging.getLogger("medscreen.test").warning("skipped %s", os.fsdecode(b"caf\xe9.png"))
    finally:
        for handler in logging.getLogger().handlers[:]:
            if isinstance(handler, logging.FileHandler):
                handler.close()
                logging.getLogger().removeHandler(handler)
    assert "Logging error" not in capsys.readouterr().err
    assert "skipped caf\\udce9.png" in log_file_path().read_text(encoding="utf-8")


def test_sigterm_of_medscreen_classify_writes_the_reports_of_what_was_done(
    tmp_path, stand_in_models, chest_folder
):
    """A shutdown or a service manager stops a batch with SIGTERM: it ends as Ctrl-C does,
    with the finished scans kept, their reports written and marked incomplete, and the command
    to continue printed (it wrote no report at all before), exit status 143 (128 + 15)."""
    db, out = tmp_path / "r.sqlite3", tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_CLI, "classify", str(chest_folder), "--out", str(out),
         "--db", str(db), "--models", str(stand_in_models), "--quiet", "--workers", "1"],
        cwd=REPO, env={**os.environ, **UNSIGNED_OK}, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    batch_id = _batch_with_done(db, proc, 2)
    assert batch_id is not None and proc.poll() is None, "the batch ended before SIGTERM"
    proc.terminate()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    done = _done(db, batch_id)
    report = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert report["batch"]["id"] == batch_id and len(report["scans"]) == done
    assert report["batch"]["files_not_screened"] == 24 - done > 0
    assert f"medscreen resume {batch_id}" in err

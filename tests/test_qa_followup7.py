"""Follow-ups to session 7's QA sweep (tests/test_qa_sweep7.py), each pinned by a test on real
files: a stop signal inside a store write, the full-disk message, the reports' privacy."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sqlite3
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from desktop.engine import store as store_mod
from tests.conftest import DATA, csv_rows

SCANS = sorted((DATA / "pneumonia" / "normal").glob("*.jpeg")) + sorted(
    (DATA / "tb" / "normal").glob("*.png")
)


def _scans(folder: Path) -> Path:
    folder.mkdir()
    for scan in SCANS:
        shutil.copy(scan, folder)
    return folder


class _Interrupting:
    """The main thread's store connection, with a Ctrl-C (KeyboardInterrupt, as the CLI turns
    SIGTERM and SIGHUP into) at one chosen point of the ``at``-th write transaction: where a
    real signal lands by chance (1 in 17 real ``kill -HUP`` runs), here every time."""

    def __init__(self, db: sqlite3.Connection, point: str, state: dict[str, Any]) -> None:
        self._db = db
        self._point = point
        self._state = state

    def execute(self, sql: str, *args: Any) -> Any:
        state, point = self._state, self._point
        if sql == "BEGIN IMMEDIATE":
            state["begins"] += 1
        armed = state["begins"] == state["at"]
        if armed and not state["fired"] and point == "before COMMIT" and sql == "COMMIT":
            state["fired"] = True
            raise KeyboardInterrupt  # the COMMIT never ran
        second = point == "in ROLLBACK" and state["fired"] and not state["rollback_skipped"]
        if armed and second and sql == "ROLLBACK":
            state["rollback_skipped"] = True
            raise KeyboardInterrupt  # a second signal: the ROLLBACK never ran
        result = self._db.execute(sql, *args)
        first = (point in {"after BEGIN", "in ROLLBACK"} and sql == "BEGIN IMMEDIATE") or (
            point == "mid-write" and sql.startswith(("INSERT", "UPDATE"))
        )
        if armed and first and not state["fired"]:
            state["fired"] = True
            raise KeyboardInterrupt
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


@pytest.fixture
def interrupt_write(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Arm :class:`_Interrupting` on the main thread's connection: set ``point`` and ``at``."""
    state: dict[str, Any] = {"begins": 0, "fired": False, "rollback_skipped": False}
    real = store_mod.ResultsStore._db

    def db(self: store_mod.ResultsStore) -> Any:
        connection = real(self)
        if threading.current_thread() is not threading.main_thread():
            return connection
        return _Interrupting(connection, state["point"], state)

    monkeypatch.setattr(store_mod.ResultsStore, "_db", db)
    yield state


@pytest.mark.parametrize("point", ["after BEGIN", "mid-write", "before COMMIT", "in ROLLBACK"])
def test_a_stop_signal_inside_a_store_write_still_cancels_the_batch(
    tmp_path: Path, interrupt_write: dict[str, Any], point: str
) -> None:
    """Ctrl-C, SIGTERM or SIGHUP just after ResultsStore._write's BEGIN IMMEDIATE left the
    connection inside a transaction (the BEGIN ran outside the ``try``): the clean-up that
    marks the batch cancelled failed with 'cannot start a transaction within a transaction',
    exit 1, no reports. Found in 1 of ~17 real ``kill -HUP`` runs of a 3,875-scan classify
    (/tmp/qa/repro/sigint_in_transaction.py). At every point of a write, including a second
    signal that stops the rollback: exit 130, reports written, batch cancelled, store usable,
    and report and store agree on what was screened."""
    from desktop.cli import main

    interrupt_write.update(point=point, at=6)  # a few scans in
    folder = _scans(tmp_path / "scans")
    db_path = tmp_path / "r.sqlite3"
    out = tmp_path / "out"
    code = main(["classify", str(folder), "--out", str(out), "--db", str(db_path),
                 "--report", "csv", "--quiet"])  # fmt: skip
    assert interrupt_write["fired"], "the interruption never happened: move 'at'"
    assert interrupt_write["rollback_skipped"] == (point == "in ROLLBACK")
    assert code == 130
    rows = csv_rows(out / "results.csv")
    with sqlite3.connect(db_path, timeout=0) as db:
        db.execute("BEGIN IMMEDIATE")  # no transaction left holding the write lock
        db.execute("ROLLBACK")
        (status,) = db.execute("SELECT status FROM batches").fetchone()
        stored = {
            Path(file).name
            for (file,) in db.execute("SELECT file FROM batch_items WHERE done_at IS NOT NULL")
        }
    assert status == "cancelled"
    reported = {Path(row["file"]).name for row in rows if row["status"] in {"ok", "error"}}
    assert reported == stored
    assert 0 < len(stored) < len(SCANS)


def test_a_transaction_an_interrupted_rollback_left_is_not_read_nor_kept(tmp_path: Path) -> None:
    """A second signal during the rollback leaves this thread's connection in a transaction
    holding an unfinished write: a read on the thread must not report it (the caller saw the
    write fail), nor keep the write lock from another process; the next write works."""
    path = tmp_path / "r.sqlite3"
    store = store_mod.ResultsStore(path)
    try:
        batch_id = store.create_batch([str(tmp_path)], "models", "cpu")
        db = store._db()
        db.execute("BEGIN IMMEDIATE")  # the interrupted write, its ROLLBACK never ran
        db.execute("UPDATE batches SET status='completed' WHERE id=?", (batch_id,))
        info = store.batch(batch_id)
        assert info is not None and info.status == "running"
        with sqlite3.connect(path, timeout=0) as other:
            other.execute("BEGIN IMMEDIATE")  # the write lock is free
            other.execute("ROLLBACK")
        store.finish_batch(batch_id, "cancelled")
        info = store.batch(batch_id)
        assert info is not None and info.status == "cancelled"
    finally:
        store.close()


def _printed_command(err: str, verb: str) -> list[str]:
    """The ``medscreen VERB ...`` command a message ends a line with, as a shell splits it."""
    match = re.search(rf"(medscreen {verb} .+)$", err, re.M)
    assert match is not None, err
    return shlex.split(match.group(1))


def test_the_command_printed_when_the_store_disk_is_full_continues_the_batch_in_that_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The results store's disk filled mid-batch (a --db on a small tmpfs): the message said
    "resume the batch ('medscreen resume')", without the run's --db, so the command as
    printed looked in the default store. It now prints the resume command with the run's
    options; a folder named with a quote ("clinic's") survives a shell, where the hints
    wrapped the command in '…' by hand. SQLite's own SQLITE_FULL, from max_page_count once
    the first scans are in."""
    from desktop.cli import main

    real_record = store_mod.ResultsStore.record_many
    calls = {"n": 0}

    def record_then_fill(self: store_mod.ResultsStore, *args: Any, **kwargs: Any) -> Any:
        done = real_record(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:  # the first scans are in: the disk is full from now on
            db = self._db()
            (pages,) = db.execute("PRAGMA page_count").fetchone()
            db.execute(f"PRAGMA max_page_count={pages}")
        return done

    monkeypatch.setattr(store_mod.ResultsStore, "record_many", record_then_fill)
    folder = _scans(tmp_path / "scans")
    place = tmp_path / "clinic's store"
    place.mkdir()
    db_path, out = place / "r.sqlite3", place / "out"
    code = main(["classify", str(folder), "--out", str(out), "--db", str(db_path),
                 "--report", "csv", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert f"the disk holding the results store {db_path} is full" in err
    words = _printed_command(err, "resume")
    assert words[words.index("--db") + 1] == str(db_path)
    assert words[words.index("--out") + 1] == str(out)
    with sqlite3.connect(db_path) as db:
        (batch_id,) = db.execute("SELECT id FROM batches").fetchone()
        (done,) = db.execute(
            "SELECT count(*) FROM batch_items WHERE done_at IS NOT NULL"
        ).fetchone()
    assert words[2] == batch_id and 0 < done < len(SCANS)

    monkeypatch.setattr(store_mod.ResultsStore, "record_many", real_record)  # room again
    assert main(words[1:]) == 0, capsys.readouterr().err
    with sqlite3.connect(db_path) as db:
        assert db.execute("SELECT status FROM batches").fetchall() == [("completed",)]
    (report,) = out.glob("medscreen-*.csv")
    assert len(csv_rows(report)) == len(SCANS)


def test_the_printed_commands_survive_a_quote_in_a_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The Ctrl-C and export hints printed the command inside '…' by hand: with a path
    holding a quote the text between the quotes was no longer the command. Each hint now
    ends its line with the command, quoted for a shell (shlex), which runs as printed."""
    from desktop.cli import main

    folder = _scans(tmp_path / "scans")
    place = tmp_path / "O'Brien clinic"
    place.mkdir()
    db_path, out = place / "r.sqlite3", place / "out"
    out.mkdir()
    (out / "results.json").mkdir()  # the outputs cannot be written: the export hint
    code = main(["classify", str(folder), "--out", str(out), "--db", str(db_path),
                 "--report", "csv", "--clinic", "O'Brien", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    words = _printed_command(err, "export")
    assert words[words.index("--db") + 1] == str(db_path)
    assert words[words.index("--clinic") + 1] == "O'Brien"
    (out / "results.json").rmdir()
    assert main(words[1:]) == 0, capsys.readouterr().err
    assert len(csv_rows(next(out.glob("medscreen-o*.csv")))) == len(SCANS)


def test_on_windows_the_printed_command_is_quoted_as_windows_programs_read_it() -> None:
    """cmd.exe and PowerShell do not remove POSIX single quotes: there the command is quoted
    with double quotes (a quote in a name stays as it is, a space is inside the quotes)."""
    from desktop.cli import _shell_join

    words = ["medscreen", "resume", "abc", "--out", r"C:\O'Brien clinic\out", "--db", r"D:\r.db"]
    assert _shell_join(words, windows=True) == (
        r"""medscreen resume abc --out "C:\O'Brien clinic\out" --db D:\r.db"""
    )
    assert shlex.split(_shell_join(words, windows=False)) == words


def _pdf_text(pdf: Path) -> str:
    out = subprocess.run(["pdftotext", "-enc", "UTF-8", str(pdf), "-"], capture_output=True,
                         check=True)  # fmt: skip
    return " ".join(out.stdout.decode("utf-8").split())


@pytest.mark.parametrize("identifiers", [False, True])
def test_study_date_and_description_only_with_identifiers(
    tmp_path: Path, identifiers: bool
) -> None:
    """With identifiers off the JSON report still carried the DICOM study date and study
    description (free text: here 'Non-ossifying fibroma of distal tibia', elsewhere a name).
    They now go with the identifiers; sex and age stay (age decides a model's scope). The
    CSV and PDF carry neither either way (checked too). Real file: pydicom's RG3_J2KI.dcm."""
    from desktop.cli import main

    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(DATA / "dicom" / "RG3_J2KI.dcm", folder / "knee.dcm")
    shutil.copy(SCANS[0], folder)
    out = tmp_path / "out"
    opt_in = ["--include-identifiers"] if identifiers else []
    code = main(["classify", str(folder), "--out", str(out), "--db", str(tmp_path / "r.sqlite3"),
                 "--report", "pdf,csv,json", "--quiet", *opt_in])  # fmt: skip
    assert code == 0
    report = json.loads((out / "results.json").read_text(encoding="utf-8"))
    (knee,) = [s for s in report["scans"] if s["file"].endswith("knee.dcm")]
    metadata = knee["metadata"]
    assert metadata["patient_sex"] == "F" and metadata["modality"] == "CR"
    private = {"study_date": "20040826", "study_description": "Non-ossifying fibroma of distal "
               "tibia", "patient_name": "CompressedSamples^RG3"}  # fmt: skip
    if identifiers:
        assert {k: metadata.get(k) for k in private} == private
    else:
        assert not set(private) & set(metadata)
        everything = [(out / "results.json").read_text(encoding="utf-8")]
        everything += [p.read_text(encoding="utf-8-sig") for p in out.glob("*.csv")]
        everything += [_pdf_text(p) for p in out.glob("*.pdf")]
        for text in everything:
            assert "fibroma" not in text and "20040826" not in text and "2004-08-26" not in text
            assert "RG3" not in text.replace("RG3_J2KI", "")


@pytest.mark.skipif(os.name == "nt", reason="POSIX file modes")
@pytest.mark.parametrize("identifiers", [False, True])
def test_reports_with_identifiers_are_owner_only(
    tmp_path: Path, identifiers: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """Reports written with --include-identifiers were created 0644 (readable by every user
    of the PC), while the results store holding the same names is 0600. They are now 0600,
    also over an older report of that name, and the CLI says so; reports without identifiers
    keep the mode any file the user saves gets (umask 022: 0644)."""
    from desktop.cli import main

    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(DATA / "dicom" / "RG3_J2KI.dcm", folder / "knee.dcm")
    shutil.copy(SCANS[0], folder)
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.csv").write_text("an older report, 0644\n")
    os.chmod(out / "results.csv", 0o644)
    opt_in = ["--include-identifiers"] if identifiers else []
    old_umask = os.umask(0o022)
    try:
        code = main(["classify", str(folder), "--out", str(out), "--db",
                     str(tmp_path / "r.sqlite3"), "--report", "pdf,csv,json", "--quiet",
                     *opt_in])  # fmt: skip
    finally:
        os.umask(old_umask)
    err = capsys.readouterr().err
    assert code == 0, err
    reports = sorted(p.name for p in out.iterdir())
    assert len(reports) == 5, reports  # results.csv/json and the named pdf, csv, json
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert set(modes.values()) == ({0o600} if identifiers else {0o644}), modes
    said = "patient identifiers: written readable by this user only (mode 0600)"
    assert (said in err) == identifiers, err


def test_a_policy_file_named_but_missing_keeps_the_thresholds_locked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """MEDSCREEN_POLICY naming a file that is not there (an unmounted share, a typo) meant
    "no policy": the administrator's lock fell away and any --operating-point was taken.
    It now fails closed, as a file that exists but cannot be read always did: the command
    line screens nothing and says the policy file cannot be read."""
    from desktop.cli import main
    from desktop.engine.policy import PolicyError, load_policy

    share = tmp_path / "share"  # the share is not mounted: its folder is empty
    share.mkdir()
    monkeypatch.setenv("MEDSCREEN_POLICY", str(share / "policy.ini"))
    with pytest.raises(PolicyError, match=r"policy file .*policy\.ini cannot be read"):
        load_policy()
    folder = _scans(tmp_path / "scans")
    out = tmp_path / "out"
    code = main(["classify", str(folder), "--out", str(out), "--db", str(tmp_path / "r.sqlite3"),
                 "--operating-point", "0.01", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert f"the policy file {share / 'policy.ini'} cannot be read" in err
    assert (
        "does not exist" in err
        and "MEDSCREEN_POLICY" in err
        and "The thresholds stay locked" in err
    )
    assert not (out / "results.csv").exists()  # nothing screened at an unlocked point


def test_a_policy_location_that_cannot_be_checked_is_an_error_not_no_policy(
    tmp_path: Path,
) -> None:
    """Among the usual places, a missing policy.ini is no policy; one whose presence cannot be
    checked (here a name too long for the file system: ENAMETOOLONG; equally EACCES on a
    share's folder) raised a bare OSError (the window: a traceback). It is a PolicyError
    naming the file, which the window shows with the thresholds locked."""
    from desktop.engine.policy import PolicyError, load_policy

    assert load_policy([tmp_path / "policy.ini"]).source is None  # absent: no policy
    odd = tmp_path / ("p" * 300) / "policy.ini"
    with pytest.raises(PolicyError, match="cannot be read"):
        load_policy([odd, tmp_path / "policy.ini"])


def test_the_window_keeps_the_thresholds_locked_when_the_named_policy_is_missing(
    qtbot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """The window with MEDSCREEN_POLICY naming a missing file: the picker is locked (the PIN
    cannot open it) and the message says the policy file cannot be read."""
    from desktop.engine.registry import default_model_dirs
    from desktop.engine.store import ResultsStore
    from desktop.gui.main_window import MainWindow
    from desktop.gui.settings import AppSettings

    missing = tmp_path / "share" / "policy.ini"
    monkeypatch.setenv("MEDSCREEN_POLICY", str(missing))
    store = ResultsStore(tmp_path / "r.sqlite3")
    try:
        window = MainWindow(settings=AppSettings(tmp_path / "settings.ini"), store=store,
                            model_dirs=default_model_dirs())  # fmt: skip
        qtbot.addWidget(window)
        window.show()
        with qtbot.waitSignal(window.models_changed, timeout=60_000):
            window.start()
        picker = window.op_picker
        assert picker.is_locked() and not picker.combo.isEnabled()
        assert not picker.lock_button.isEnabled()
        text = window.messages.text.text()
        assert f"the policy file {missing} cannot be read" in text
        assert "MEDSCREEN_POLICY" in text and "The thresholds stay locked" in text
        window.close()
    finally:
        store.close()

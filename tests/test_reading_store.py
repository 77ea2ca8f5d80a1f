"""The reader's decisions and typed patient IDs in the results store (schema 4)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from desktop.engine.decisions import (
    DECISION_TEXT,
    Decision,
    parse_decision,
    scan_key,
)
from desktop.engine.store import SCHEMA_VERSION, ResultsStore


def test_decisions_are_appended_and_the_latest_counts(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "s.sqlite3")
    try:
        a, b = scan_key("a" * 64, "/x/a.png"), scan_key(None, "/x/broken.png")
        assert b == "file:/x/broken.png"
        store.set_decision(a, Decision.AGREE, "clear cavity", reader="Dr Amani", batch_id="b1")
        second = store.set_decision(a, Decision.FOLLOW_UP, "  CT advised ", reader="Dr Chen")
        store.set_decision(b, Decision.POOR_QUALITY, reader="Dr Chen")
        got = store.decisions()
        assert set(got) == {a, b}
        assert got[a] == second
        assert got[a].decision is Decision.FOLLOW_UP and got[a].note == "CT advised"
        assert got[a].reader == "Dr Chen" and got[a].decided_at.endswith("+00:00")
        assert got[a].summary().startswith("Needs follow-up — Dr Chen, ")
        assert store.decisions([b]) == {b: got[b]}
        # None clears: the scan has no decision, the history keeps all three records
        assert store.set_decision(a, None, reader="Dr Chen") is None
        assert a not in store.decisions()
        rows = store._db().execute("SELECT COUNT(*) FROM reader_decisions").fetchone()[0]
        assert rows == 4
        long_note = "x" * 2000
        assert len(store.set_decision(a, Decision.AGREE, long_note).note) == 500  # type: ignore[union-attr]
    finally:
        store.close()


def test_typed_patient_ids(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "s.sqlite3")
    try:
        store.set_typed_patient_id("k1", " TB-0042 ", by="nurse")
        store.set_typed_patient_id("k2", "P2")
        store.set_typed_patient_id("k2", "")  # cleared
        assert store.typed_patient_ids() == {"k1": "TB-0042"}
    finally:
        store.close()


def test_a_version_3_store_migrates_to_4(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    ResultsStore(path).close()
    with sqlite3.connect(path) as con:  # make it what a schema-3 MedScreen left
        con.execute("DROP TABLE reader_decisions")
        con.execute("DROP TABLE typed_patient_ids")
        con.execute("ALTER TABLE batches DROP COLUMN operator")
        con.execute("ALTER TABLE batches DROP COLUMN kind")  # schema 5's
        con.execute("UPDATE meta SET value='3' WHERE key='schema_version'")
    con.close()
    store = ResultsStore(path)
    try:
        version = store._db().execute("SELECT value FROM meta").fetchone()[0]
        assert version == str(SCHEMA_VERSION)  # 4, then on to every later version
        store.set_decision("k", Decision.DISAGREE, reader="r")
        assert store.decisions()["k"].decision is Decision.DISAGREE
        batch = store.create_batch(["/x"], "m@1", "CPU")
        store.set_batch_operator(batch, "Nurse Achieng")  # the column the migration added
        assert store.batch_operators() == {batch: "Nurse Achieng"}
    finally:
        store.close()


def test_decision_words() -> None:
    assert DECISION_TEXT[Decision.POOR_QUALITY] == "Image quality too poor"
    assert parse_decision("needs follow-up") is Decision.FOLLOW_UP
    assert parse_decision("AGREE") is Decision.AGREE
    with pytest.raises(ValueError, match="unknown decision"):
        parse_decision("maybe")


def test_report_time_is_local_with_the_offset_and_the_default_name(monkeypatch) -> None:
    import time
    from datetime import UTC, datetime

    from desktop.engine.reports.context import ReportContext, report_file_stem
    from desktop.engine.results import ThresholdChoice

    monkeypatch.setenv("TZ", "Africa/Nairobi")  # UTC+3, no daylight saving
    time.tzset()
    try:
        made = datetime(2026, 12, 1, 22, 15, tzinfo=UTC)
        ctx = ReportContext("b1", made, "0.1.0", {}, ThresholdChoice(), "CPU")
        assert ctx.local_time_text() == "2026-12-02 01:15 (UTC+03:00)"
        # the local date names the file; odd characters leave the clinic's name
        stem = report_file_stem("Clínica São João / Kisumu!", made, "2ceab7916359ab")
        assert stem == "medscreen-clinica-sao-joao-kisumu-2026-12-02-2ceab791"
        assert report_file_stem("", made, None) == "medscreen-2026-12-02"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()

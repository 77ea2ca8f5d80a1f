"""The results store on real scans: lossless file names, no stale reuse, migration, privacy,
durability (kill -9 and a power-loss snapshot of the WAL), damaged files.

Every test here failed before the behaviour it checks was built (issue 9 defects 2, 7, 8 and
9; issue 15's durability and folder-as-file defects).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from desktop.engine.loading import load_scan
from desktop.engine.paths import display_path
from desktop.engine.registry import load_model_set
from desktop.engine.reports import ReportContext, write_csv, write_json, write_pdf
from desktop.engine.results import ScanStatus, ThresholdChoice
from desktop.engine.runner import BatchRunner, run_to_end
from desktop.engine.store import (
    SCHEMA_VERSION,
    BatchStatus,
    FileIdentity,
    ResultsStore,
    StoreError,
    content_probe,
    file_probe,
)
from tests.conftest import DATA, REPO
from tests.fixtures import damage_tables

CHEST = DATA / "tb" / "normal" / "CHNCXR_0001_0.png"
#: ``café.png`` as an old (Latin-1) system writes it: not valid UTF-8.
LATIN1_NAME = b"caf\xe9.png"


@pytest.fixture
def models(stand_in_models: Path):
    return load_model_set([stand_in_models])


def _runner(models, db: Path) -> BatchRunner:
    return BatchRunner(models, ResultsStore(db), workers=2, batch_size=4)


def _latin1_file(folder: Path) -> Path:
    """A real chest X-ray under a name that is not UTF-8 (skips where names must be Unicode)."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = os.path.join(os.fsencode(folder), LATIN1_NAME)
    try:
        with open(raw, "wb") as handle:
            handle.write(CHEST.read_bytes())
    except (OSError, UnicodeError):
        pytest.skip("this file system only takes Unicode names (Windows, macOS APFS)")
    return Path(os.fsdecode(raw))


# -- issue 9 defect 2: file names that are not UTF-8 --------------------------------------


def test_non_utf8_name_is_screened_stored_losslessly_and_reported_readably(models, tmp_path):
    folder = tmp_path / "usb"
    odd = _latin1_file(folder)
    shutil.copy(sorted((DATA / "tb" / "tuberculosis").glob("*.png"))[0], folder / "plain.png")
    db = tmp_path / "r.sqlite3"
    runner = _runner(models, db)
    summary = run_to_end(runner.run([folder]))
    assert summary.total == 2 and summary.errors == 0 and summary.ok == 2

    by_name = {r.file: r for r in runner.store.batch_results(summary.batch_id)}
    assert str(odd) in by_name  # the exact name comes back, and opens
    assert by_name[str(odd)].sha256 == hashlib.sha256(CHEST.read_bytes()).hexdigest()
    assert Path(by_name[str(odd)].file).read_bytes() == CHEST.read_bytes()
    with sqlite3.connect(db) as con:  # stored as its exact bytes, the valid name as text
        stored = dict(con.execute("SELECT file, typeof(file) FROM batch_items").fetchall())
    assert stored[os.fsencode(odd)] == "blob"
    assert stored[str(folder / "plain.png")] == "text"

    ctx = ReportContext(
        summary.batch_id, datetime.now(UTC), "test", models.manifests, ThresholdChoice(), "CPU"
    )
    results = list(runner.store.batch_results(summary.batch_id))
    shown = display_path(odd)
    assert shown.endswith("caf\ufffd.png")
    csv_text = write_csv(results, ctx, tmp_path / "r.csv").read_text(encoding="utf-8-sig")
    assert shown in csv_text
    doc = json.loads(write_json(results, ctx, tmp_path / "r.json").read_text(encoding="utf-8"))
    scan = next(s for s in doc["scans"] if s["file"] == shown)
    assert os.fsdecode(bytes.fromhex(scan["file_bytes"])) == str(odd)  # lossless for programs
    assert next(s for s in doc["scans"] if s["file"] != shown)["file_bytes"] is None
    pdf = write_pdf(results, ctx, tmp_path / "r.pdf")
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True).stdout
    assert "caf\ufffd.png" in text or "caf�.png" in text


def test_non_utf8_name_survives_an_interrupted_batch_and_resume(models, tmp_path):
    folder = tmp_path / "usb"
    odd = _latin1_file(folder)
    for src in sorted((DATA / "tb" / "normal").glob("*.png"))[:3]:
        shutil.copy(src, folder / src.name)
    store = ResultsStore(tmp_path / "r.sqlite3")
    # The batch died right after its file list was saved (where the old store crashed).
    batch_id = store.create_batch([str(folder)], models.key, "CPU")
    store.set_items(batch_id, sorted(str(p) for p in folder.iterdir()))
    assert str(odd) in [f for _, f in store.pending_items(batch_id)]
    summary = run_to_end(BatchRunner(models, store, workers=2).run(resume=batch_id))
    assert summary.total == 4 and summary.errors == 0
    assert {r.file for r in store.batch_results(batch_id)} == {str(p) for p in folder.iterdir()}
    # History is printable on any terminal: the label shows the readable name.
    single = store.create_batch([str(odd)], models.key, "CPU")
    store.set_items(single, [str(odd)])
    assert store.batch(single).label.endswith("caf\ufffd.png")


# -- issue 9 defect 7: stale results --------------------------------------------------------


def _same_size(data: bytes, size: int) -> bytes:
    """``data`` padded after its end marker to ``size`` bytes (decoders ignore the tail)."""
    assert len(data) <= size
    return data + b"\0" * (size - len(data))


def test_rewritten_file_with_same_size_and_mtime_is_screened_again(models, tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    target = folder / "IM000001.png"
    shutil.copy(CHEST, target)
    runner = _runner(models, tmp_path / "r.sqlite3")
    first = run_to_end(runner.run([folder]))
    old = next(runner.store.batch_results(first.batch_id))
    assert old.status is ScanStatus.OK

    # Another patient's export reuses the name; a copy tool keeps size and mtime.
    info = target.stat()
    new_bytes = _same_size((DATA / "mednist" / "Hand" / "000000.jpeg").read_bytes(), info.st_size)
    target.write_bytes(new_bytes)
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (info.st_size, info.st_mtime_ns)

    second = run_to_end(runner.run([folder]))
    assert second.reused == 0
    new = next(runner.store.batch_results(second.batch_id))
    assert new.sha256 == hashlib.sha256(new_bytes).hexdigest() != old.sha256
    assert new.findings.get("tb") is None or (
        new.findings["tb"].probability != old.findings["tb"].probability
    )
    # unchanged files are still reused without being hashed again
    third = run_to_end(runner.run([folder]))
    assert third.reused == 1


def test_file_index_trusts_a_hash_only_when_the_content_probe_matches(models, tmp_path):
    """Where the file system keeps the change time (Windows' ctime is creation time), the
    head/tail probe alone must catch the rewrite."""
    target = tmp_path / "scan.png"
    data = CHEST.read_bytes()
    target.write_bytes(data)
    store = ResultsStore(tmp_path / "r.sqlite3")
    identity = FileIdentity.of(target.stat())
    sha = hashlib.sha256(data).hexdigest()
    store.remember_file(str(target), identity, content_probe(data), sha)
    assert file_probe(target) == content_probe(data)
    assert store.known_sha(str(target), identity) == sha

    # same size, same identity as far as stat goes, one byte changed in the last 64 KiB
    changed = bytearray(data)
    changed[-100] ^= 0xFF
    store.remember_file(str(target), identity, content_probe(bytes(changed)), sha)
    assert store.known_sha(str(target), identity) is None
    # and any stat difference is a miss before anything is read
    store.remember_file(str(target), identity, content_probe(data), sha)
    moved = FileIdentity(identity.size, identity.mtime_ns, identity.ino, identity.ctime_ns + 1)
    assert store.known_sha(str(target), moved) is None


# -- schema migration ------------------------------------------------------------------------

#: The schema MedScreen 0.1 shipped (version 1), verbatim.
V1_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    sha256 TEXT NOT NULL, models_key TEXT NOT NULL, status TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '', modality TEXT, modality_score REAL, ood_score REAL,
    detail TEXT NOT NULL, thumbnail BLOB, screened_at TEXT NOT NULL,
    PRIMARY KEY (sha256, models_key)
);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY, started_at TEXT NOT NULL, finished_at TEXT, status TEXT NOT NULL,
    inputs TEXT NOT NULL, models_key TEXT NOT NULL, device TEXT NOT NULL DEFAULT '',
    total INTEGER, pid INTEGER, host TEXT
);
CREATE TABLE IF NOT EXISTS batch_items (
    batch_id TEXT NOT NULL REFERENCES batches(id) ON DELETE CASCADE, seq INTEGER NOT NULL,
    file TEXT NOT NULL, sha256 TEXT, status TEXT, reason TEXT NOT NULL DEFAULT '',
    error_code TEXT, models_key TEXT, done_at TEXT, PRIMARY KEY (batch_id, seq)
);
CREATE INDEX IF NOT EXISTS batch_items_pending ON batch_items(batch_id, status);
CREATE TABLE IF NOT EXISTS file_index (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL
);
INSERT INTO meta(key, value) VALUES ('schema_version', '1');
"""


def test_version_1_database_is_migrated_and_keeps_its_history(models, tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    scan = folder / "a.png"
    shutil.copy(CHEST, scan)
    # A real v2 run provides genuine rows; they are copied into a database of the v1 schema.
    source = _runner(models, tmp_path / "source.sqlite3")
    done = run_to_end(source.run([folder]))
    source.store.close()
    old_db = tmp_path / "v1.sqlite3"
    with sqlite3.connect(old_db) as con:
        con.executescript(V1_SCHEMA)
        con.execute("ATTACH DATABASE ? AS src", (str(tmp_path / "source.sqlite3"),))
        con.execute("INSERT INTO results SELECT * FROM src.results")
        con.execute(  # the v1 columns of the batches table
            "INSERT INTO batches SELECT id, started_at, finished_at, status, inputs, "
            "models_key, device, total, pid, host FROM src.batches"
        )
        con.execute("INSERT INTO batch_items SELECT * FROM src.batch_items")
        con.execute(  # the v1 index: size+mtime only, the hash of the *old* content
            "INSERT INTO file_index VALUES (?, ?, ?, ?)",
            (str(scan), scan.stat().st_size, scan.stat().st_mtime_ns, "0" * 64),
        )
    con.close()

    store = ResultsStore(old_db)
    with sqlite3.connect(old_db) as con:
        assert con.execute("SELECT value FROM meta").fetchone() == (str(SCHEMA_VERSION),)
        columns = [row[1] for row in con.execute("PRAGMA table_info(file_index)")]
        assert columns[-3:] == ["ino", "ctime_ns", "probe"]
        assert con.execute("SELECT COUNT(*) FROM file_index").fetchone() == (0,)
    con.close()
    assert [b.id for b in store.batches()] == [done.batch_id]
    kept = list(store.batch_results(done.batch_id))
    assert len(kept) == 1 and kept[0].findings["tb"].probability > 0
    # the migrated store works: the same scan is found by content, not by the v1 index
    again = run_to_end(BatchRunner(models, store).run([folder]))
    assert again.reused == 1
    assert next(store.batch_results(again.batch_id)).sha256 == kept[0].sha256
    store.close()
    ResultsStore(old_db).close()  # opening a migrated store again changes nothing


def test_database_from_a_newer_version_is_refused_clearly(tmp_path):
    db = tmp_path / "r.sqlite3"
    ResultsStore(db).close()
    with sqlite3.connect(db) as con:
        con.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    con.close()
    with pytest.raises(StoreError, match="schema version 99, from a newer MedScreen"):
        ResultsStore(db)


# -- issue 9 defect 9: a private database ---------------------------------------------------


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_database_is_owner_only_in_an_owner_only_folder(tmp_path, models):
    folder = tmp_path / "new" / "medscreen"
    store = ResultsStore(folder / "results.sqlite3")
    store.create_batch(["x"], "k", "CPU")  # a write: the -wal and -shm files exist now
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in ("results.sqlite3", "results.sqlite3-wal", "results.sqlite3-shm"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600, name
    store.close()

    old = tmp_path / "old.sqlite3"  # a store an older MedScreen left world-readable
    ResultsStore(old).close()
    os.chmod(old, 0o644)
    ResultsStore(old).close()
    assert stat.S_IMODE(old.stat().st_mode) == 0o600


# -- issue 15: durability --------------------------------------------------------------------


def test_every_connection_commits_with_synchronous_full(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite3")
    assert store._db().execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert store._db().execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    # the file index's own commit skips its fsync (a cache), and FULL is back right after
    target = tmp_path / "scan.png"
    target.write_bytes(CHEST.read_bytes())
    identity = FileIdentity.of(target.stat())
    store.remember_file(str(target), identity, file_probe(target), "0" * 64)
    assert store._db().execute("PRAGMA synchronous").fetchone() == (2,)
    assert store.known_sha(str(target), identity) == "0" * 64
    seen: list[int] = []
    worker = threading.Thread(
        target=lambda: seen.append(store._db().execute("PRAGMA synchronous").fetchone()[0]),
        name="medscreen-test",
    )
    worker.start()
    worker.join()
    assert seen == [2]


_RUN_SCRIPT = """
import sys
from pathlib import Path
from desktop.engine.registry import load_model_set
from desktop.engine.runner import BatchRunner
from desktop.engine.store import ResultsStore
runner = BatchRunner(load_model_set([Path(sys.argv[1])]), ResultsStore(Path(sys.argv[2])),
                     workers=2, batch_size=2)
for event in runner.run([Path(sys.argv[3])]):
    if event.result is not None:
        print(event.done, event.result.file, event.result.sha256, flush=True)
"""


def _unique_copies(folder: Path, copies: int) -> list[Path]:
    out = []
    for i in range(copies):
        for src in sorted((DATA / "tb").rglob("*.png")):
            dst = folder / f"copy{i}" / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes() + bytes([i]))
            out.append(dst)
    return out


def test_power_loss_snapshot_of_db_and_wal_holds_every_reported_scan(stand_in_models, tmp_path):
    """Freeze the writer mid-batch, copy the database and its WAL (no -shm) elsewhere — the
    files as a power cut would leave them — and open the copy: every scan the runner had
    reported as committed is there, with its result."""
    folder = tmp_path / "scans"
    _unique_copies(folder, 4)
    db = tmp_path / "live" / "results.sqlite3"
    env = {**os.environ, "MEDSCREEN_ALLOW_UNSIGNED_MODELS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", _RUN_SCRIPT, str(stand_in_models), str(db), str(folder)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )
    reported: dict[str, str] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        done, file, sha = line.split()
        reported[file] = sha
        if int(done) >= 20:
            os.kill(proc.pid, signal.SIGSTOP)  # the instant of the power cut
            break
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    for suffix in ("", "-wal"):
        source = Path(f"{db}{suffix}")
        if source.exists():
            shutil.copyfile(source, snapshot / f"results.sqlite3{suffix}")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)

    copy = ResultsStore(snapshot / "results.sqlite3")
    (batch,) = copy.batches()
    assert batch.status == BatchStatus.RUNNING and batch.total == 48
    stored = {r.file: r for r in copy.batch_results(batch.id)}
    assert len(reported) >= 20
    for file, sha in reported.items():
        assert file in stored, file
        assert stored[file].sha256 == sha and stored[file].findings["tb"].probability > 0
    # and the snapshot resumes like any interrupted batch
    summary = run_to_end(BatchRunner(load_model_set([stand_in_models]), copy).run(resume=batch.id))
    assert summary.already_done == len(stored) and summary.total == 48


# -- issue 9 defect 8: a damaged database -----------------------------------------------------


def test_damaged_pages_stop_the_batch_with_a_clear_error(models, chest_folder, tmp_path):
    db = tmp_path / "r.sqlite3"
    runner = _runner(models, db)
    run_to_end(runner.run([chest_folder]))
    runner.store.close()  # checkpointed into the main file
    assert len(damage_tables(db, "results", fill=0x5A)) > 3  # every page, whole

    damaged = _runner(models, db)
    with pytest.raises(StoreError, match="is damaged"):
        run_to_end(damaged.run([chest_folder]))  # not 24 rows of internal_error
    rows = sqlite3.connect(db).execute(
        "SELECT COUNT(*) FROM batch_items WHERE error_code='internal_error'"
    )
    assert rows.fetchone() == (0,)


def test_database_that_is_not_a_database_is_refused_clearly(tmp_path):
    db = tmp_path / "r.sqlite3"
    db.write_bytes(CHEST.read_bytes())  # someone's image saved over it
    with pytest.raises(StoreError, match=r"r\.sqlite3 is damaged"):
        ResultsStore(db)


# -- issue 15: a folder passed as a file --------------------------------------------------


def test_folder_in_place_of_a_file_gets_the_loaders_one_code_and_reason(models, tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    victim = folder / "b.png"
    shutil.copy(CHEST, folder / "a.png")
    shutil.copy(CHEST, victim)
    runner = _runner(models, tmp_path / "r.sqlite3")
    gen = runner.run([folder])
    next(gen)  # the file list is fixed; now the file becomes a folder
    victim.unlink()
    victim.mkdir()
    summary = run_to_end(gen)
    row = next(r for r in runner.store.batch_results(summary.batch_id) if r.file == str(victim))
    with pytest.raises(Exception) as loading:
        load_scan(victim)
    assert row.status is ScanStatus.ERROR
    assert (row.error_code, row.reason) == (loading.value.code.value, loading.value.message)

"""The results store: SQLite, every finished scan committed before it is reported (contract 5).

Three things are kept:

* ``results`` — what screening found for a scan's *content* (sha256) under one exact set of
  model versions (``models_key``). The same image under another name, or screened again
  later, is found here and not recomputed.
* ``batches`` and ``batch_items`` — the history: which files a batch covered, in order, with
  each file's outcome (including per-file errors, which are not cached as results). A batch
  killed halfway stays ``running`` with a dead pid; :meth:`ResultsStore.interrupted_batches`
  finds it and the runner resumes it without redoing a finished item.
* ``file_index`` — path → sha256 with the file's size, mtime, inode, change time and a hash
  of its first and last 64 KiB, so a resumed or repeated batch can skip re-reading a finished
  file. A stored hash is trusted only when all of these still match: a file rewritten with
  new content but the same size and mtime (a copy tool that keeps times, a PACS export that
  reuses ``IM000001``) changes its change time and, nearly always, its head or tail, and is
  hashed again rather than given another image's result.

Durability: every write is its own short transaction, committed in WAL mode with
``synchronous=FULL``, so each committed scan has been flushed to disk (fsync) before the
runner reports it; the scans that finish together (an inference batch) share one transaction
(:meth:`ResultsStore.record_many`), so one fsync. A crash, ``kill -9`` or power cut loses at
most the scans in flight (not yet reported), never a committed one. (``NORMAL`` would be
faster but may roll back the last commits on power loss; the cost of ``FULL`` is measured by
``benchmarks/bench_store_sync.py``.)

File names are stored losslessly: a name that is valid Unicode is stored as text, one that is
not (POSIX names are bytes: ``caf\\xe9.png`` from an old USB stick) as its raw bytes (a BLOB),
and read back to the same ``str`` Python uses for it (surrogate escapes), so the file can be
opened again on resume. :func:`desktop.engine.paths.display_path` shows such names readably.

The database holds file paths, content hashes, scores, thumbnails and DICOM metadata
(patient identifiers included, for the opt-in reports), so it is created with mode 0600 and
a folder MedScreen creates for it with mode 0700. Connections are per thread (SQLite objects
must not cross threads); WAL lets decoder threads read while the main thread writes. A
thread's connection is closed when that thread ends (a batch's decoder threads, a window
worker's thread), and every one still open when the store closes. An index an older store
lacks is built as the store opens, except by the window, whose GUI thread opens it: there a
worker builds it (``defer_indexes``, :meth:`ResultsStore.build_indexes`) and reads do without.

Any SQLite failure (damaged file, read-only file, full disk) becomes a :class:`StoreError`
that names the file and says what to do: the batch stops with that message, never with a
traceback and never by recording the failure as if it were one scan's problem.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import os
import socket
import sqlite3
import stat
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from desktop.engine.clock import local_text, now_iso  # not screening: it pulls ONNX Runtime in
from desktop.engine.decisions import MAX_NOTE_CHARS, Decision, ReaderDecision
from desktop.engine.errors import BatchError
from desktop.engine.paths import display_path, user_data_dir
from desktop.engine.patients import GroupEstimate, PatientChoice, PatientGroup, parse_group
from desktop.engine.processes import pid_alive
from desktop.engine.results import FindingResult, ScanResult, ScanStatus

log = logging.getLogger(__name__)

SCHEMA_VERSION = 5

#: Bytes hashed at each end of a file for the file index's cheap content check.
PROBE_BYTES = 64 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    sha256 TEXT NOT NULL,
    models_key TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    modality TEXT,
    modality_score REAL,
    ood_score REAL,
    detail TEXT NOT NULL,
    thumbnail BLOB,
    screened_at TEXT NOT NULL,
    PRIMARY KEY (sha256, models_key)
);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    status TEXT NOT NULL,
    inputs TEXT NOT NULL,
    models_key TEXT NOT NULL,
    device TEXT NOT NULL DEFAULT '',
    total INTEGER,
    pid INTEGER,
    host TEXT,
    patients TEXT,
    operator TEXT,
    kind TEXT NOT NULL DEFAULT 'screening'
);
CREATE TABLE IF NOT EXISTS batch_items (
    batch_id TEXT NOT NULL REFERENCES batches(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    file TEXT NOT NULL,
    sha256 TEXT,
    status TEXT,
    reason TEXT NOT NULL DEFAULT '',
    error_code TEXT,
    models_key TEXT,
    done_at TEXT,
    PRIMARY KEY (batch_id, seq)
);
CREATE INDEX IF NOT EXISTS batch_items_pending ON batch_items(batch_id, status);
CREATE TABLE IF NOT EXISTS patient_groups (
    sha256 TEXT NOT NULL,
    patient_group TEXT,
    set_at TEXT NOT NULL,
    set_by TEXT NOT NULL DEFAULT '',
    batch_id TEXT
);
CREATE INDEX IF NOT EXISTS patient_groups_sha ON patient_groups(sha256);
CREATE TABLE IF NOT EXISTS reader_decisions (
    batch_id TEXT,
    scan_key TEXT NOT NULL,
    decision TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT '',
    reader TEXT NOT NULL DEFAULT '',
    decided_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS reader_decisions_scan ON reader_decisions(scan_key);
CREATE TABLE IF NOT EXISTS typed_patient_ids (
    scan_key TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    set_at TEXT NOT NULL,
    set_by TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS typed_patient_ids_scan ON typed_patient_ids(scan_key);
CREATE TABLE IF NOT EXISTS file_index (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    ino INTEGER,
    ctime_ns INTEGER,
    probe TEXT
);
"""

#: Steps from each older schema version to the next, run in one transaction on open.
#: screened_at is stored after the thumbnail: reading it from the row walks the thumbnail's
#: overflow pages (~25 kB a row). Readers that want no thumbnail take it from this index. A
#: store made before it existed builds it once, ~0.5 s per 20,000 results: where that would
#: block a window (its start-up opens the store on the GUI thread) the store is opened with
#: ``defer_indexes`` and :meth:`ResultsStore.build_indexes` runs in a worker; readers do
#: without it meanwhile (:meth:`ResultsStore.batch_rows`).
_SCREENED_INDEX = "results_screened"
_CREATE_SCREENED_INDEX = (
    f"CREATE INDEX IF NOT EXISTS {_SCREENED_INDEX} ON results(sha256, models_key, screened_at)"
)

_MIGRATIONS: dict[int, tuple[str, ...]] = {
    # 1 → 2: the file index gains the cheap content check (inode, change time, head/tail
    # hash). Version-1 entries cannot be checked, so they are dropped: they are only a
    # shortcut — those files are hashed once more, and their results are still found by hash.
    1: (
        "ALTER TABLE file_index ADD COLUMN ino INTEGER",
        "ALTER TABLE file_index ADD COLUMN ctime_ns INTEGER",
        "ALTER TABLE file_index ADD COLUMN probe TEXT",
        "DELETE FROM file_index",
    ),
    # 2 → 3: the staff's patient group for a batch (NULL = automatic); the per-scan
    # overrides live in the new patient_groups table (created by the schema script).
    2: ("ALTER TABLE batches ADD COLUMN patients TEXT",),
    # 3 → 4: the reader's decision per scan and the patient ID typed for a non-DICOM file
    # (issue 14), new tables created by the schema script; and who ran each batch (history).
    3: ("ALTER TABLE batches ADD COLUMN operator TEXT",),
    # 4 → 5: what a batch was run for (BatchKind): a site calibration's labelled scans must
    # not pass for a clinic's batch in the history. Older batches were screening runs, as
    # far as the store can tell (a calibration run then left no mark).
    4: ("ALTER TABLE batches ADD COLUMN kind TEXT NOT NULL DEFAULT 'screening'",),
}


class StoreError(BatchError):
    """The results store itself failed (damaged, read-only, full): the batch cannot go on.

    ``disk_full`` is SQLite's words when the store's disk was full (else ``None``): the
    batch can go on once there is room, and a command line knows the command that continues
    it with this store (:func:`disk_full_message`), which the store does not.
    """

    def __init__(self, message: str, *, path: Path | None = None, disk_full: str | None = None):
        super().__init__(message)
        self.path = path
        self.disk_full = disk_full


def disk_full_message(path: Path, detail: str, then: str = "resume the batch") -> str:
    """What to say when the disk holding the store at ``path`` is full: ``then`` is what to
    do once there is room (the CLI gives the exact command, with the run's ``--db``)."""
    return (
        f"the disk holding the results store {path} is full ({detail}): free some space, "
        f"then {then}"
    )


def _store_error(path: Path, exc: sqlite3.Error) -> StoreError:
    """A message that names the file, says what went wrong in plain words and what to do."""
    name = str(getattr(exc, "sqlite_errorname", "") or "")
    detail = str(exc) or type(exc).__name__
    text = detail.lower()
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in text:
        return StoreError(
            f"the results store {path} is damaged ({detail}). Move it aside and start again "
            "(or choose another file with --db); 'sqlite3 FILE .recover' may rescue its "
            "history."
        )
    if name.startswith("SQLITE_READONLY") or "readonly" in text or not _writable(path):
        return StoreError(
            f"the results store {path} is read-only ({detail}): MedScreen must write to it "
            "and to its folder. Check their permissions, or choose another file with --db."
        )
    if name.startswith("SQLITE_FULL") or "disk is full" in text:
        return StoreError(disk_full_message(path, detail), path=path, disk_full=detail)
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        return StoreError(
            f"the results store {path} stayed locked by another program ({detail}); "
            "try again, or choose another file with --db."
        )
    if name.startswith("SQLITE_CANTOPEN") or "unable to open" in text:
        return StoreError(
            f"cannot open the results store {path} ({detail}): check that its folder "
            "exists and is writable, or choose another file with --db."
        )
    return StoreError(f"the results store {path} failed: {detail}")


def _writable(path: Path) -> bool:
    """Whether the database file (if it exists) and its folder can be written (SQLite needs
    both: the ``-wal`` and ``-shm`` files live beside it)."""
    try:
        folder_ok = os.access(path.parent, os.W_OK)
        return folder_ok and (not path.exists() or os.access(path, os.W_OK))
    except OSError:
        return True  # nothing known: let the generic message speak


_F = TypeVar("_F", bound=Callable[..., Any])


def _guarded(method: _F) -> _F:
    """Turn any :class:`sqlite3.Error` raised by a store method into a :class:`StoreError`.

    Generator methods are guarded while they are iterated, not only when they are called.
    """
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def generator(self: ResultsStore, *args: Any, **kwargs: Any) -> Any:
            try:
                return (yield from method(self, *args, **kwargs))
            except sqlite3.Error as exc:
                raise _store_error(self.path, exc) from exc

        return generator  # type: ignore[return-value]

    @functools.wraps(method)
    def wrapper(self: ResultsStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise _store_error(self.path, exc) from exc

    return wrapper  # type: ignore[return-value]


def _path_param(path: str) -> str | bytes:
    """A file name as SQLite stores it: text when it is valid Unicode, else its raw bytes.

    POSIX names are bytes; Python holds undecodable ones with surrogate escapes, which
    SQLite's UTF-8 text cannot carry. Their exact bytes (``os.fsencode``) go in as a BLOB, so
    the name is kept losslessly and the file can be found again.
    """
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path)
    return path


def _path_value(value: object) -> str:
    """The ``str`` Python uses for a stored name (see :func:`_path_param`)."""
    if isinstance(value, bytes):
        return os.fsdecode(value)
    return str(value)


def content_probe(data: bytes) -> str:
    """The file index's cheap content check, from a file's whole content.

    sha256 of the size and the first and last :data:`PROBE_BYTES`: equal to
    :func:`file_probe` of the same file, which reads only those bytes.
    """
    head = data[:PROBE_BYTES]
    tail = data[-PROBE_BYTES:] if len(data) > PROBE_BYTES else b""
    return _probe(len(data), head, tail)


def file_probe(path: str | Path) -> str:
    """:func:`content_probe` of the file at ``path``, reading at most 2 × PROBE_BYTES."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"not a regular file: {path}")
        head = os.pread(fd, PROBE_BYTES, 0) if hasattr(os, "pread") else os.read(fd, PROBE_BYTES)
        tail = b""
        if info.st_size > PROBE_BYTES:
            os.lseek(fd, info.st_size - PROBE_BYTES, os.SEEK_SET)
            tail = os.read(fd, PROBE_BYTES)
        return _probe(info.st_size, head, tail)
    finally:
        os.close(fd)


def _probe(size: int, head: bytes, tail: bytes) -> str:
    digest = hashlib.sha256(str(size).encode("ascii") + b"\0")
    digest.update(head)
    digest.update(tail)
    return digest.hexdigest()


@dataclass(frozen=True)
class FileIdentity:
    """What must match before the file index trusts a stored hash without reading the file.

    ``ctime_ns`` is the inode change time on POSIX: writing a file changes it and no user tool
    can set it back, so a rewrite that restores size and mtime is still seen. (On Windows it
    is the creation time; the head/tail probe covers that case.)
    """

    size: int
    mtime_ns: int
    ino: int
    ctime_ns: int

    @classmethod
    def of(cls, info: os.stat_result) -> FileIdentity:
        return cls(info.st_size, info.st_mtime_ns, info.st_ino, info.st_ctime_ns)


class BatchKind:
    """What a batch was run for: screening a clinic's scans, or a site calibration's
    labelled scans (``medscreen calibrate``, Tools → Calibrate), which the history labels."""

    SCREENING = "screening"
    CALIBRATION = "calibration"


class BatchStatus:
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclass(frozen=True)
class BatchInfo:
    id: str
    started_at: str
    finished_at: str | None
    status: str
    inputs: list[str]
    models_key: str
    device: str
    total: int | None
    done: int
    errors: int
    pid: int | None
    host: str | None
    kind: str = BatchKind.SCREENING

    @property
    def label(self) -> str:
        first = display_path(self.inputs[0]) if self.inputs else "(no input)"
        more = f" +{len(self.inputs) - 1}" if len(self.inputs) > 1 else ""
        return f"{local_text(self.started_at)} — {first}{more}"


class _Connections:
    """A store's open SQLite connections, one per thread that used it.

    Why: a connection kept until the store closed outlived the thread that opened it — each
    batch's decoder and inference threads, each window worker's thread — holding its file
    handles (the database and its ``-wal``) for the life of the window. Each connection is
    tied to a token kept only in its thread's local storage: Python drops a thread's locals
    when the thread ends, and the token's finaliser then closes the connection (every commit
    was already fsynced: nothing is lost). :meth:`close_all` closes those still open.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: set[sqlite3.Connection] = set()

    def add(self, db: sqlite3.Connection) -> _Token:
        """Track ``db``; keep the returned token in the thread's local storage only."""
        token = _Token(db)
        with self._lock:
            self._open.add(db)
        # Not at interpreter exit: a daemon thread may still be in a query then, and the
        # process's end closes the files anyway (as it did before, nothing is lost).
        weakref.finalize(token, self._release, db).atexit = False
        return token

    def _release(self, db: sqlite3.Connection) -> None:
        with self._lock:
            if db not in self._open:  # closed with the store already
                return
            self._open.discard(db)
        _close_quietly(db)

    def close_all(self) -> None:
        with self._lock:
            dbs = list(self._open)
            self._open.clear()
        for db in dbs:
            _close_quietly(db)

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)


class _Token:
    """A thread's connection, held in that thread's local storage (see :class:`_Connections`)."""

    __slots__ = ("__weakref__", "db")

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db


def _roll_back(db: sqlite3.Connection) -> None:
    """Roll back ``db``'s open transaction; a rollback that fails is logged, not raised (the
    caller keeps its own error; SQLite ends the transaction itself on the errors where
    ROLLBACK fails, and the next ``BEGIN`` reports what is left)."""
    try:
        db.execute("ROLLBACK")
    except sqlite3.Error as exc:
        log.warning("rolling back a results store transaction failed: %s", exc)


def _close_quietly(db: sqlite3.Connection) -> None:
    try:
        db.close()
    except sqlite3.Error as exc:  # nothing left to save: every commit was already durable
        log.warning("closing a results store connection failed: %s", exc)


class ResultsStore:
    """Thread-safe access to one SQLite results file."""

    #: Every result commit is fsynced before it returns (see the module docstring); the
    #: durability benchmark compares a subclass with ``NORMAL``.
    SYNCHRONOUS = "FULL"

    def __init__(self, path: Path, *, defer_indexes: bool = False) -> None:
        """Open (or create) the store at ``path``.

        ``defer_indexes``: an index that an older store lacks and that takes a while to
        build over its results (``results_screened``) is left to :meth:`build_indexes`, for
        a caller that must not wait (the window, on its GUI thread, then builds it in a
        worker). A new or empty store gets it at once either way.
        """
        self.path = Path(path)
        _private_file(self.path)
        self._local = threading.local()
        self._connections = _Connections()
        self._screened_index = False
        self._open_schema()
        if not defer_indexes or not self._has_results():
            self.build_indexes()

    @_guarded
    def _has_results(self) -> bool:
        return self._db().execute("SELECT 1 FROM results LIMIT 1").fetchone() is not None

    @_guarded
    def build_indexes(self) -> bool:
        """Build the indexes an older store lacks (the one-time migration that
        ``defer_indexes`` left; idempotent: the readers use it once it exists, whichever
        process built it). Returns whether it built one."""
        if self.has_screened_index():
            return False
        started = time.perf_counter()
        self._db().execute(_CREATE_SCREENED_INDEX)
        self._screened_index = True
        log.info(
            "results store %s: index %s built in %.2f s",
            self.path,
            _SCREENED_INDEX,
            time.perf_counter() - started,
        )
        return True

    @_guarded
    def has_screened_index(self) -> bool:
        """Whether the covering index ``results_screened`` exists (checked in the file until
        it does: the batch process, or a worker, may build it meanwhile)."""
        if not self._screened_index:
            found = self._db().execute(
                "SELECT 1 FROM sqlite_master WHERE type='index' AND name=?", (_SCREENED_INDEX,)
            )
            self._screened_index = found.fetchone() is not None
        return self._screened_index

    @_guarded
    def _open_schema(self) -> None:
        """Create the tables, or bring an older database up to :data:`SCHEMA_VERSION`."""
        db = self._db()
        db.executescript(_SCHEMA)  # idempotent; executescript manages its own transaction
        with self._write() as db:
            db.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            found = int(
                db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
            )
            if found > SCHEMA_VERSION:
                raise StoreError(
                    f"results store {self.path} has schema version {found}, from a newer "
                    f"MedScreen; this one understands {SCHEMA_VERSION}. Use --db to choose "
                    "another file."
                )
            for version in range(found, SCHEMA_VERSION):
                for statement in _MIGRATIONS[version]:
                    db.execute(statement)
                log.info("results store migrated from schema %d to %d", version, version + 1)
            db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))

    # -- connections ---------------------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        token: _Token | None = getattr(self._local, "token", None)
        db = token.db if token is not None else None
        if db is None:
            try:
                # Each thread uses its own connection; check_same_thread is off only so that
                # close(), or the finaliser of a thread that ended, may close it.
                db = sqlite3.connect(
                    self.path, timeout=30.0, isolation_level=None, check_same_thread=False
                )
                db.execute("PRAGMA journal_mode=WAL")
                # FULL: each commit is fsynced before it returns, so a scan the runner has
                # reported survives a power cut (WAL + NORMAL may roll the last ones back).
                db.execute(f"PRAGMA synchronous={self.SYNCHRONOUS}")
                db.execute("PRAGMA foreign_keys=ON")
            except sqlite3.Error as exc:
                raise _store_error(self.path, exc) from exc
            self._local.token = self._connections.add(db)
        elif db.in_transaction and not getattr(self._local, "writing", False):
            _roll_back(db)  # what a write interrupted mid-rollback left (see _write)
        return db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction on this thread's connection, committed or rolled back.

        Why every step is inside the ``try``: Ctrl-C, SIGTERM and SIGHUP become a
        KeyboardInterrupt between any two bytecodes (the CLI makes the last two so). One that
        landed after ``BEGIN IMMEDIATE`` but outside the ``try`` left the connection inside a
        transaction, and the batch's clean-up (marking it cancelled) then failed with "cannot
        start a transaction within a transaction": exit 1, no reports. A transaction still
        open when a write starts (a second signal during the rollback, a COMMIT that failed)
        is rolled back first: it belongs to a write whose caller saw it fail, so nothing it
        did was reported. Reads on this thread roll such a transaction back too (:meth:`_db`),
        so they neither see its uncommitted rows nor hold the write lock.
        """
        db = self._db()
        try:
            self._local.writing = True
            if db.in_transaction:
                _roll_back(db)
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                _roll_back(db)  # keeps the original error, not a failed rollback's
            raise
        finally:
            self._local.writing = False

    def close(self) -> None:
        """Close every connection still open (a thread's is closed when the thread ends);
        using the store afterwards opens new ones."""
        self._connections.close_all()
        self._local = threading.local()

    @property
    def open_connections(self) -> int:
        """How many connections are open: one per live thread that used the store."""
        return len(self._connections)

    # -- batches -------------------------------------------------------------------------
    @_guarded
    def create_batch(
        self,
        inputs: Sequence[str],
        models_key: str,
        device: str,
        kind: str = BatchKind.SCREENING,
    ) -> str:
        batch_id = uuid.uuid4().hex[:12]
        with self._write() as db:
            db.execute(
                "INSERT INTO batches(id, started_at, status, inputs, models_key, device, pid,"
                " host, kind) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    batch_id,
                    now_iso(),
                    BatchStatus.RUNNING,
                    json.dumps(list(inputs)),
                    models_key,
                    device,
                    os.getpid(),
                    socket.gethostname(),
                    kind,
                ),
            )
        return batch_id

    @_guarded
    def claim_batch(self, batch_id: str, models_key: str, device: str) -> None:
        """Mark an interrupted batch as running again in this process (resume)."""
        with self._write() as db:
            db.execute(
                "UPDATE batches SET status=?, finished_at=NULL, pid=?, host=?, models_key=?,"
                " device=? WHERE id=?",
                (
                    BatchStatus.RUNNING,
                    os.getpid(),
                    socket.gethostname(),
                    models_key,
                    device,
                    batch_id,
                ),
            )

    @_guarded
    def set_items(self, batch_id: str, files: Sequence[str]) -> None:
        """Record the batch's file list (once, after discovery); keeps finished items."""
        with self._write() as db:
            db.executemany(
                "INSERT OR IGNORE INTO batch_items(batch_id, seq, file) VALUES (?, ?, ?)",
                ((batch_id, i, _path_param(f)) for i, f in enumerate(files)),
            )
            db.execute("UPDATE batches SET total=? WHERE id=?", (len(files), batch_id))

    @_guarded
    def finish_batch(self, batch_id: str, status: str) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE batches SET status=?, finished_at=? WHERE id=?",
                (status, now_iso(), batch_id),
            )

    @_guarded
    def batch(self, batch_id: str) -> BatchInfo | None:
        rows = self._batch_rows("WHERE b.id = ?", (batch_id,))
        return rows[0] if rows else None

    @_guarded
    def batch_ids_starting(self, prefix: str, limit: int = 20) -> list[str]:
        """The ids of stored batches that begin with ``prefix`` (newest first): a report's
        file name carries the first eight characters of its batch's id."""
        rows = self._db().execute(
            "SELECT id FROM batches WHERE substr(id, 1, ?) = ? "
            "ORDER BY started_at DESC, rowid DESC LIMIT ?",
            (len(prefix), prefix.lower(), limit),
        )
        return [row[0] for row in rows]

    @_guarded
    def batches(self, limit: int = 200) -> list[BatchInfo]:
        # rowid breaks ties: two batches started within one second keep their order
        return self._batch_rows("ORDER BY b.started_at DESC, b.rowid DESC LIMIT ?", (limit,))

    def _batch_rows(self, tail: str, args: tuple[object, ...]) -> list[BatchInfo]:
        query = (
            "SELECT b.id, b.started_at, b.finished_at, b.status, b.inputs, b.models_key,"
            " b.device, b.total, b.pid, b.host,"
            " (SELECT COUNT(*) FROM batch_items i WHERE i.batch_id=b.id AND i.status IS NOT NULL),"
            " (SELECT COUNT(*) FROM batch_items i WHERE i.batch_id=b.id AND i.status='error'),"
            " b.kind"
            f" FROM batches b {tail}"
        )
        out = []
        for row in self._db().execute(query, args):
            out.append(
                BatchInfo(
                    id=row[0],
                    started_at=row[1],
                    finished_at=row[2],
                    status=row[3],
                    inputs=json.loads(row[4]),
                    models_key=row[5],
                    device=row[6],
                    total=row[7],
                    pid=row[8],
                    host=row[9],
                    done=row[10],
                    errors=row[11],
                    kind=row[12],
                )
            )
        return out

    @_guarded
    def interrupted_batches(self, kind: str | None = None) -> list[BatchInfo]:
        """Batches left ``running`` by a process that no longer exists (crash, kill -9);
        only those of ``kind`` (:class:`BatchKind`) when given: the window and ``medscreen
        resume`` offer screening batches, never an interrupted calibration's labelled scans."""
        host = socket.gethostname()
        out = []
        for info in self._batch_rows(
            "WHERE b.status = ? ORDER BY b.started_at DESC", (BatchStatus.RUNNING,)
        ):
            if kind is not None and info.kind != kind:
                continue
            alive = info.host == host and info.pid is not None and pid_alive(info.pid)
            if not alive or info.pid == os.getpid():
                out.append(info)
        return out

    @_guarded
    def pending_items(self, batch_id: str) -> list[tuple[int, str]]:
        rows = self._db().execute(
            "SELECT seq, file FROM batch_items WHERE batch_id=? AND status IS NULL ORDER BY seq",
            (batch_id,),
        )
        return [(int(seq), _path_value(file)) for seq, file in rows]

    @_guarded
    @_guarded
    def same_content_copies(self, batch_id: str) -> int:
        """Files of the batch whose content another file of it has (the same scan copied or
        exported twice): each is a row of its own and counted, which a programme adding up
        scans should know. Files never hashed (missing, unreadable) do not count."""
        row = (
            self._db()
            .execute(
                "SELECT COUNT(*) - COUNT(DISTINCT sha256) FROM batch_items"
                " WHERE batch_id=? AND sha256 IS NOT NULL",
                (batch_id,),
            )
            .fetchone()
        )
        return int(row[0] or 0)

    def files_not_screened(self, batch_id: str) -> int:
        """How many files of the batch are still to screen: 0 once it has completed. A report
        of a stopped (or still running) batch states it, from the CLI and the window alike."""
        info = self.batch(batch_id)
        if info is None or info.status == BatchStatus.COMPLETED:
            return 0
        row = (
            self._db()
            .execute(
                "SELECT COUNT(*) FROM batch_items WHERE batch_id=? AND status IS NULL", (batch_id,)
            )
            .fetchone()
        )
        return int(row[0])

    @_guarded
    def item_count(self, batch_id: str) -> int:
        row = (
            self._db()
            .execute("SELECT COUNT(*) FROM batch_items WHERE batch_id=?", (batch_id,))
            .fetchone()
        )
        return int(row[0])

    # -- patient groups (the staff's say; scope, issue 12) -----------------------------------
    @_guarded
    def set_batch_patients(self, batch_id: str, group: PatientGroup | None) -> None:
        """Record the staff's patient group for a whole batch (None: automatic)."""
        with self._write() as db:
            db.execute(
                "UPDATE batches SET patients=? WHERE id=?",
                (None if group is None else group.value, batch_id),
            )

    @_guarded
    def batch_patients(self, batch_id: str) -> PatientGroup | None:
        row = self._db().execute("SELECT patients FROM batches WHERE id=?", (batch_id,)).fetchone()
        return None if row is None or row[0] is None else parse_group(str(row[0]))

    @_guarded
    def set_patient_group(
        self,
        sha256: str,
        group: PatientGroup | None,
        *,
        batch_id: str | None = None,
        by: str = "",
    ) -> str:
        """Record a staff override of one scan's patient group (None: back to automatic).

        Overrides are appended, never updated, so the record shows who set what and when;
        the latest one for a scan's content counts. Returns the time it was recorded.
        """
        stamp = now_iso()
        with self._write() as db:
            db.execute(
                "INSERT INTO patient_groups(sha256, patient_group, set_at, set_by, batch_id)"
                " VALUES (?, ?, ?, ?, ?)",
                (sha256, None if group is None else group.value, stamp, by, batch_id),
            )
        return stamp

    @_guarded
    def patient_overrides(self, sha256s: Iterable[str] | None = None) -> dict[str, PatientGroup]:
        """The current staff override of each scan that has one (latest record wins)."""
        wanted = None if sha256s is None else set(sha256s)
        latest: dict[str, str | None] = {}
        for sha, group in self._db().execute(
            "SELECT sha256, patient_group FROM patient_groups ORDER BY rowid"
        ):
            if wanted is None or sha in wanted:
                latest[sha] = group
        return {sha: PatientGroup(g) for sha, g in latest.items() if g is not None}

    @_guarded
    def patient_group_history(self, sha256: str) -> list[tuple[str, str | None, str]]:
        """``(set_at, group or None, set_by)`` of every override of one scan, oldest first."""
        return [
            (str(at), None if g is None else str(g), str(by))
            for at, g, by in self._db().execute(
                "SELECT set_at, patient_group, set_by FROM patient_groups WHERE sha256=?"
                " ORDER BY rowid",
                (sha256,),
            )
        ]

    @_guarded
    def patient_choice(self, batch_id: str | None) -> PatientChoice:
        """The staff's say for a batch: its group and the overrides of its scans."""
        if batch_id is None:
            return PatientChoice(overrides=self.patient_overrides())
        shas = [
            str(r[0])
            for r in self._db().execute(
                "SELECT DISTINCT sha256 FROM batch_items WHERE batch_id=? AND sha256 IS NOT NULL",
                (batch_id,),
            )
        ]
        return PatientChoice(
            batch=self.batch_patients(batch_id), overrides=self.patient_overrides(shas)
        )

    # -- history: who ran a batch, deleting batches, retention (issue 14) --------------------
    @_guarded
    def set_batch_operator(self, batch_id: str, operator: str) -> None:
        """Record who ran (or resumed) a batch: the history and the reports name them."""
        with self._write() as db:
            db.execute("UPDATE batches SET operator=? WHERE id=?", (operator, batch_id))

    @_guarded
    def batch_operators(self) -> dict[str, str]:
        """Every batch's operator (batches without one are left out)."""
        return {
            str(bid): str(op)
            for bid, op in self._db().execute(
                "SELECT id, operator FROM batches WHERE operator IS NOT NULL AND operator != ''"
            )
        }

    @_guarded
    def delete_batches(self, batch_ids: Iterable[str], *, compact: bool = True) -> int:
        """Delete batches, their items, and the results and thumbnails no other batch uses.

        A running batch is never deleted (its runner is still writing to it). Results are
        shared by content: one another batch still lists stays. Decisions and the file index
        stay (they are small and keyed by content). With ``compact`` the file is then
        rewritten (VACUUM) so the disk space really comes back. Returns the batches deleted.
        """
        ids = list(dict.fromkeys(batch_ids))
        deleted = 0
        with self._write() as db:
            for batch_id in ids:
                row = db.execute(
                    "SELECT status, pid, host FROM batches WHERE id=?", (batch_id,)
                ).fetchone()
                if row is None:
                    continue
                status, pid, host = row
                if (
                    status == BatchStatus.RUNNING
                    and host == socket.gethostname()
                    and (pid is not None and pid_alive(int(pid)))
                ):
                    log.info("batch %s is running: not deleted", batch_id)
                    continue
                db.execute("DELETE FROM batch_items WHERE batch_id=?", (batch_id,))
                db.execute("DELETE FROM batches WHERE id=?", (batch_id,))
                deleted += 1
            if deleted:
                db.execute(
                    "DELETE FROM results WHERE NOT EXISTS (SELECT 1 FROM batch_items i"
                    " JOIN batches b ON b.id = i.batch_id WHERE i.sha256 = results.sha256"
                    " AND COALESCE(i.models_key, b.models_key) = results.models_key)"
                )
        if deleted and compact:
            self._db().execute("VACUUM")
        log.info("deleted %d batch(es) and the results no other batch uses", deleted)
        return deleted

    @_guarded
    def prune(self, keep_days: int, *, now: str | None = None) -> int:
        """Delete the batches started more than ``keep_days`` days ago (0: keep everything).

        The retention setting (e.g. 90 days) runs this at start-up, so a clinic's store
        does not grow without end.
        """
        if keep_days <= 0:
            return 0
        from datetime import datetime, timedelta

        stamp = datetime.fromisoformat(now or now_iso()) - timedelta(days=keep_days)
        old = [
            str(r[0])
            for r in self._db().execute(
                "SELECT id FROM batches WHERE started_at < ?", (stamp.isoformat(),)
            )
        ]
        return self.delete_batches(old) if old else 0

    # -- reading: the reader's decisions and typed patient IDs (issue 14) -------------------
    @_guarded
    def set_decision(
        self,
        key: str,
        decision: Decision | None,
        note: str = "",
        *,
        reader: str = "",
        batch_id: str | None = None,
    ) -> ReaderDecision | None:
        """Record the reader's decision on a scan (``decisions.scan_key``); None clears it.

        Appended, never updated: the record keeps who decided what and when; the latest
        record of a scan counts. Returns what was recorded.
        """
        note = note.strip()[:MAX_NOTE_CHARS]
        stamp = now_iso()
        with self._write() as db:
            db.execute(
                "INSERT INTO reader_decisions(batch_id, scan_key, decision, note, reader,"
                " decided_at) VALUES (?, ?, ?, ?, ?, ?)",
                (batch_id, key, "" if decision is None else decision.value, note, reader, stamp),
            )
        return None if decision is None else ReaderDecision(decision, note, reader, stamp)

    @_guarded
    def decisions(self, keys: Iterable[str] | None = None) -> dict[str, ReaderDecision]:
        """The current decision of each scan that has one (latest record wins)."""
        wanted = None if keys is None else set(keys)
        latest: dict[str, tuple[str, str, str, str]] = {}
        for key, decision, note, reader, at in self._db().execute(
            "SELECT scan_key, decision, note, reader, decided_at FROM reader_decisions"
            " ORDER BY rowid"
        ):
            if wanted is None or key in wanted:
                latest[key] = (decision, note, reader, at)
        return {
            key: ReaderDecision(Decision(d), note, reader, at)
            for key, (d, note, reader, at) in latest.items()
            if d
        }

    @_guarded
    def set_typed_patient_id(self, key: str, patient_id: str, *, by: str = "") -> None:
        """Keep a patient ID typed for a file that carries none (PNG/JPEG), with the other
        identifiers: shown in the viewer, in reports only when identifiers are opted in."""
        with self._write() as db:
            db.execute(
                "INSERT INTO typed_patient_ids(scan_key, patient_id, set_at, set_by)"
                " VALUES (?, ?, ?, ?)",
                (key, patient_id.strip()[:64], now_iso(), by),
            )

    @_guarded
    def typed_patient_ids(self, keys: Iterable[str] | None = None) -> dict[str, str]:
        """The typed patient ID of each scan that has one (latest wins; "" clears)."""
        wanted = None if keys is None else set(keys)
        latest: dict[str, str] = {}
        for key, pid in self._db().execute(
            "SELECT scan_key, patient_id FROM typed_patient_ids ORDER BY rowid"
        ):
            if wanted is None or key in wanted:
                latest[key] = str(pid)
        return {k: v for k, v in latest.items() if v}

    # -- results -------------------------------------------------------------------------
    @_guarded
    def record(self, batch_id: str, seq: int, result: ScanResult) -> None:
        """Commit one finished item (and its result, if screened) in one transaction."""
        with self._write() as db:
            _record_row(db, batch_id, seq, result)

    @_guarded
    def record_many(
        self,
        batch_id: str,
        items: Sequence[tuple[int, ScanResult]],
        files: Sequence[tuple[str, FileIdentity, str, str]] = (),
    ) -> None:
        """Commit several finished items, and index their files, in one transaction.

        What the runner uses for the scans that finish together (an inference batch): one
        ``FULL`` commit, so one fsync, for all of them instead of one each, and the same
        promise, since the runner reports none of them before this returns. ``files`` are
        :meth:`remember_file`'s arguments (path, identity, probe, sha256).
        """
        with self._write() as db:
            for path, identity, probe, sha256 in files:
                _index_row(db, path, identity, probe, sha256)
            for seq, result in items:
                _record_row(db, batch_id, seq, result)

    @_guarded
    def remember_file(self, path: str, identity: FileIdentity, probe: str, sha256: str) -> None:
        """Index a file just hashed: ``identity`` from the stat taken *before* it was read and
        ``probe`` (:func:`content_probe`) from the bytes that were hashed.

        The index is only a shortcut, so this commit skips its own fsync (``NORMAL``): the
        next result's ``FULL`` commit flushes the WAL, this entry with it, and a power cut in
        between costs one re-read. (The runner indexes its files in :meth:`record_many`.)
        """
        db = self._db()
        db.execute("PRAGMA synchronous=NORMAL")
        try:
            with self._write() as db:
                _index_row(db, path, identity, probe, sha256)
        finally:
            db.execute(f"PRAGMA synchronous={self.SYNCHRONOUS}")

    @_guarded
    def known_sha(self, path: str, identity: FileIdentity) -> str | None:
        """The stored content hash of ``path``, if the file is provably unchanged since.

        Size, mtime, inode and change time must all match, and then the hash of the file's
        first and last 64 KiB (read now) must match too; otherwise None, and the caller
        reads and hashes the whole file.
        """
        row = (
            self._db()
            .execute(
                "SELECT sha256, probe FROM file_index WHERE path=? AND size=? AND mtime_ns=?"
                " AND ino=? AND ctime_ns=?",
                (
                    _path_param(path),
                    identity.size,
                    identity.mtime_ns,
                    identity.ino,
                    identity.ctime_ns,
                ),
            )
            .fetchone()
        )
        if row is None or row[1] is None:
            return None
        try:
            probe = file_probe(path)
        except OSError:
            return None  # reading it properly will give the right error
        return str(row[0]) if probe == row[1] else None

    @_guarded
    def cached_result(self, sha256: str, models_key: str, file: str) -> ScanResult | None:
        row = (
            self._db()
            .execute(
                "SELECT status, reason, modality, modality_score, ood_score, detail, thumbnail,"
                " screened_at FROM results WHERE sha256=? AND models_key=?",
                (sha256, models_key),
            )
            .fetchone()
        )
        if row is None:
            return None
        return _result_from_row(file, sha256, models_key, row)

    @_guarded
    def thumbnail(self, sha256: str, models_key: str) -> bytes | None:
        """One result's stored thumbnail: views fetch it when a row is shown, so a table of
        10,000 results does not hold 10,000 images."""
        row = (
            self._db()
            .execute(
                "SELECT thumbnail FROM results WHERE sha256=? AND models_key=?",
                (sha256, models_key),
            )
            .fetchone()
        )
        return None if row is None or row[0] is None else bytes(row[0])

    @_guarded
    def batch_results(self, batch_id: str, *, thumbnails: bool = True) -> Iterator[ScanResult]:
        """Every finished item of a batch in input order, errors included (streamed).

        Each item is joined with the result of the model versions that screened *it*: a batch
        resumed after a model update holds items of both versions, and keeps both. With
        ``thumbnails=False`` the thumbnails stay in the store (fetch one with
        :meth:`thumbnail`): what report writers and tables use, so a large batch is never in
        memory with its images.
        """
        for _, result in self.batch_rows(batch_id, thumbnails=thumbnails):
            yield result

    @_guarded
    def batch_rows(
        self,
        batch_id: str,
        *,
        thumbnails: bool = True,
        seqs: Sequence[int] | None = None,
        maps: bool = True,
    ) -> Iterator[tuple[int, ScanResult]]:
        """:meth:`batch_results` with each item's ``seq`` (its row in the batch), in seq order;
        with ``seqs``, only those items (at most 500 at once): a report that ranked the batch
        by compact keys fetches each page's scans again by their rows.

        With ``maps=False`` the findings come without their class activation maps, dropped
        by SQLite before Python parses the JSON (two thirds of a stored result's text: a
        20,000-scan batch streamed in ~1.5 s of CPU instead of ~2.2 s): what the results
        table re-derives its flags and counts from. :meth:`cached_result` has the maps."""
        thumbnail = "r.thumbnail" if thumbnails else "NULL"
        # Without the thumbnail, the time comes from an index that holds it: read from the row,
        # it sits past the thumbnail, whose overflow pages SQLite then walks (120 rows of a
        # 20,000-scan store: 46-68 ms against 5 ms; the table paints such pages).
        # (A store opened before its index was built reads the row: slower, same values.)
        from_index = not thumbnails and self.has_screened_index()
        screened = _SCREENED_AT_FROM_INDEX if from_index else "r.screened_at"
        detail = "r.detail" if maps else _DETAIL_WITHOUT_MAPS
        only, some = _only_seqs("i.seq", seqs)
        args: tuple[object, ...] = (batch_id, *some)
        cursor = self._db().execute(
            "SELECT i.file, i.sha256, i.status, i.reason, i.error_code, r.status, r.reason,"
            f" r.modality, r.modality_score, r.ood_score, {detail}, {thumbnail}, {screened},"
            " i.done_at, COALESCE(i.models_key, b.models_key), i.seq"
            " FROM batch_items i JOIN batches b ON b.id = i.batch_id"
            " LEFT JOIN results r"
            " ON r.sha256 = i.sha256 AND r.models_key = COALESCE(i.models_key, b.models_key)"
            f" WHERE i.batch_id = ? AND i.status IS NOT NULL{only} ORDER BY i.seq",
            args,
        )
        for row in cursor:
            file, sha, status, reason, code = row[:5]
            file = _path_value(file)
            models_key = row[14]
            if row[5] is not None and status != ScanStatus.ERROR.value:
                yield row[15], _result_from_row(file, sha, models_key, row[5:13])
            else:
                yield (
                    row[15],
                    ScanResult(
                        file=file,
                        sha256=sha,
                        status=ScanStatus(status),
                        reason=reason,
                        error_code=code,
                        models_key=models_key,
                        screened_at=row[13] or "",
                    ),
                )

    @_guarded
    def batch_keys(
        self, batch_id: str, seqs: Sequence[int] | None = None
    ) -> Iterator[tuple[int, str, str | None]]:
        """Each finished item's ``(seq, file, sha256)`` in seq order, with nothing parsed:
        what the results table sorts and searches file names by, and matches decisions
        with, without reading 20,000 results. With ``seqs``, only those (at most 500)."""
        only, some = _only_seqs("seq", seqs)
        args: tuple[object, ...] = (batch_id, *some)
        cursor = self._db().execute(
            "SELECT seq, file, sha256 FROM batch_items"
            f" WHERE batch_id = ? AND status IS NOT NULL{only} ORDER BY seq",
            args,
        )
        for seq, file, sha in cursor:
            yield int(seq), _path_value(file), None if sha is None else str(sha)


def _only_seqs(column: str, seqs: Sequence[int] | None) -> tuple[str, tuple[int, ...]]:
    """The SQL that keeps only ``seqs`` of a batch's items (none: all), and its parameters:
    at most 500 at once, well under SQLite's limit on parameters."""
    if seqs is None:
        return "", ()
    if len(seqs) > 500:
        raise ValueError(f"at most 500 items at once, not {len(seqs)}")
    return f" AND {column} IN ({','.join('?' * len(seqs))})", tuple(int(seq) for seq in seqs)


#: A stored result's screening time read from the ``results_screened`` index, not from
#: the row past its thumbnail (see :meth:`ResultsStore.batch_rows`).
_SCREENED_AT_FROM_INDEX = (
    "(SELECT t.screened_at FROM results t INDEXED BY results_screened"
    " WHERE t.sha256 = r.sha256 AND t.models_key = r.models_key)"
)
#: A stored result's detail JSON without the findings' class activation maps (see
#: :meth:`ResultsStore.batch_rows`); ``json()`` keeps the rebuilt findings an object.
_DETAIL_WITHOUT_MAPS = (
    "json_set(r.detail, '$.findings', json((SELECT json_group_object(f.key,"
    " json_remove(f.value, '$.activation')) FROM json_each(r.detail, '$.findings') f)))"
)


def _private_file(path: Path) -> None:
    """Create the database file owner-only (0600), in an owner-only (0700) folder if new.

    The store holds file paths, thumbnails and (for the opt-in reports) patient identifiers:
    other accounts on a shared clinic PC must not read it. SQLite gives its ``-wal`` and
    ``-shm`` files the database file's mode. An existing database made readable by an
    older version is tightened; a folder the user chose that already exists is left alone,
    except MedScreen's own data folder.
    """
    folder = path.parent
    try:
        if not folder.exists():
            folder.mkdir(mode=0o700, parents=True)
        elif folder.resolve() == user_data_dir().resolve() and os.name == "posix":
            os.chmod(folder, 0o700)
    except OSError as exc:
        raise StoreError(
            f"cannot create the results folder {folder}: {exc.strerror or exc}"
        ) from exc
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o600)
    except OSError as exc:
        if not path.exists():
            raise StoreError(
                f"cannot create the results store {path}: {exc.strerror or exc}; "
                "choose another file with --db"
            ) from exc
        return  # exists but cannot be opened for writing: SQLite explains it next
    try:
        if os.name == "posix" and stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
            os.fchmod(fd, 0o600)
    except OSError:
        log.warning("could not make the results store owner-only: %s", path.name)
    finally:
        os.close(fd)


def _record_row(db: sqlite3.Connection, batch_id: str, seq: int, result: ScanResult) -> None:
    """One finished item's rows (its result, if screened), inside the caller's transaction."""
    if result.sha256 and result.status is not ScanStatus.ERROR:
        db.execute(
            "INSERT OR REPLACE INTO results(sha256, models_key, status, reason, modality,"
            " modality_score, ood_score, detail, thumbnail, screened_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                result.sha256,
                result.models_key,
                result.status.value,
                result.reason,
                result.modality,
                result.modality_score,
                result.ood_score,
                _detail_json(result),
                result.thumbnail_png,
                result.screened_at,
            ),
        )
    db.execute(
        "UPDATE batch_items SET sha256=?, status=?, reason=?, error_code=?, models_key=?,"
        " done_at=? WHERE batch_id=? AND seq=?",
        (
            result.sha256,
            result.status.value,
            result.reason,
            result.error_code,
            result.models_key,
            now_iso(),
            batch_id,
            seq,
        ),
    )


def _index_row(
    db: sqlite3.Connection, path: str, identity: FileIdentity, probe: str, sha256: str
) -> None:
    """One file index entry, inside the caller's transaction."""
    db.execute(
        "INSERT OR REPLACE INTO file_index(path, size, mtime_ns, sha256, ino,"
        " ctime_ns, probe) VALUES (?,?,?,?,?,?,?)",
        (
            _path_param(path),
            identity.size,
            identity.mtime_ns,
            sha256,
            identity.ino,
            identity.ctime_ns,
            probe,
        ),
    )


def _detail_json(result: ScanResult) -> str:
    return json.dumps(
        {
            "modality_probabilities": result.modality_probabilities,
            "findings": {
                k: {
                    "model_key": f.model_key,
                    "probability": f.probability,
                    "probabilities": f.probabilities,
                    "activation": None
                    if f.activation is None
                    else np.round(f.activation.astype(np.float64), 5).tolist(),
                }
                for k, f in result.findings.items()
            },
            "warnings": list(result.warnings),
            "metadata": result.metadata,
            "group_estimate": None
            if result.group_estimate is None
            else result.group_estimate.as_dict(),
        },
        ensure_ascii=False,
    )


def _result_from_row(file: str, sha256: str, models_key: str, row: Sequence[object]) -> ScanResult:
    status, reason, modality, modality_score, ood_score, detail, thumbnail, screened_at = row
    data = json.loads(str(detail))
    findings = {
        k: FindingResult(
            model_id=k,
            model_key=v["model_key"],
            probability=float(v["probability"]),
            probabilities={lk: float(lv) for lk, lv in v["probabilities"].items()},
            activation=None
            if v.get("activation") is None
            else np.asarray(v["activation"], dtype=np.float32),
        )
        for k, v in data["findings"].items()
    }
    return ScanResult(
        file=file,
        sha256=sha256,
        status=ScanStatus(str(status)),
        reason=str(reason or ""),
        modality=None if modality is None else str(modality),
        modality_score=None if modality_score is None else float(modality_score),  # type: ignore[arg-type]
        modality_probabilities={k: float(v) for k, v in data["modality_probabilities"].items()},
        ood_score=None if ood_score is None else float(ood_score),  # type: ignore[arg-type]
        findings=findings,
        warnings=tuple(data.get("warnings", ())),
        metadata=dict(data.get("metadata", {})),
        models_key=models_key,
        screened_at=str(screened_at),
        thumbnail_png=None if thumbnail is None else bytes(thumbnail),  # type: ignore[arg-type]
        group_estimate=None
        if not data.get("group_estimate")
        else GroupEstimate.from_dict(data["group_estimate"]),
    )

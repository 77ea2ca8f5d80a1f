"""The results store: SQLite in WAL mode, one commit per finished scan (contract 5).

Three things are kept:

* ``results`` — what screening found for a scan's *content* (sha256) under one exact set of
  model versions (``models_key``). The same image under another name, or screened again
  later, is found here and not recomputed.
* ``batches`` and ``batch_items`` — the history: which files a batch covered, in order, with
  each file's outcome (including per-file errors, which are not cached as results). A batch
  killed halfway stays ``running`` with a dead pid; :meth:`ResultsStore.interrupted_batches`
  finds it and the runner resumes it without redoing a finished item.
* ``file_index`` — (path, size, mtime) → sha256, so a resumed or repeated batch can skip a
  finished file without reading it again.

Every write is its own short transaction, so a power cut loses at most the scan in flight.
Connections are per thread (SQLite objects must not cross threads); WAL lets decoder threads
read while the main thread writes.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from desktop.engine.errors import BatchError
from desktop.engine.results import FindingResult, ScanResult, ScanStatus
from desktop.engine.screening import now_iso

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

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
    host TEXT
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
CREATE TABLE IF NOT EXISTS file_index (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL
);
"""


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

    @property
    def label(self) -> str:
        first = self.inputs[0] if self.inputs else "(no input)"
        more = f" +{len(self.inputs) - 1}" if len(self.inputs) > 1 else ""
        return f"{self.started_at[:16].replace('T', ' ')} — {first}{more}"


class ResultsStore:
    """Thread-safe access to one SQLite results file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BatchError(
                f"cannot create the results folder {self.path.parent}: {exc.strerror or exc}"
            ) from exc
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        db = self._db()
        db.executescript(_SCHEMA)  # idempotent; executescript manages its own transaction
        with self._write() as db:
            db.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
        version = self._db().execute("SELECT value FROM meta WHERE key='schema_version'")
        found = int(version.fetchone()[0])
        if found != SCHEMA_VERSION:
            raise BatchError(
                f"results store {self.path} has schema version {found}; this MedScreen "
                f"understands {SCHEMA_VERSION}. Use --db to choose another file."
            )

    # -- connections ---------------------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                # Each thread uses its own connection; check_same_thread is off only so that
                # close() may run from the owning object's thread at the end.
                db = sqlite3.connect(
                    self.path, timeout=30.0, isolation_level=None, check_same_thread=False
                )
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across crashes
                db.execute("PRAGMA foreign_keys=ON")
            except sqlite3.Error as exc:
                raise BatchError(f"cannot open the results store {self.path}: {exc}") from exc
            self._local.db = db
            with self._lock:
                self._connections.append(db)
        return db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        else:
            db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()

    # -- batches -------------------------------------------------------------------------
    def create_batch(self, inputs: Sequence[str], models_key: str, device: str) -> str:
        batch_id = uuid.uuid4().hex[:12]
        with self._write() as db:
            db.execute(
                "INSERT INTO batches(id, started_at, status, inputs, models_key, device, pid, host)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    batch_id,
                    now_iso(),
                    BatchStatus.RUNNING,
                    json.dumps(list(inputs)),
                    models_key,
                    device,
                    os.getpid(),
                    socket.gethostname(),
                ),
            )
        return batch_id

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

    def set_items(self, batch_id: str, files: Sequence[str]) -> None:
        """Record the batch's file list (once, after discovery); keeps finished items."""
        with self._write() as db:
            db.executemany(
                "INSERT OR IGNORE INTO batch_items(batch_id, seq, file) VALUES (?, ?, ?)",
                ((batch_id, i, f) for i, f in enumerate(files)),
            )
            db.execute("UPDATE batches SET total=? WHERE id=?", (len(files), batch_id))

    def finish_batch(self, batch_id: str, status: str) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE batches SET status=?, finished_at=? WHERE id=?",
                (status, now_iso(), batch_id),
            )

    def batch(self, batch_id: str) -> BatchInfo | None:
        rows = self._batch_rows("WHERE b.id = ?", (batch_id,))
        return rows[0] if rows else None

    def batches(self, limit: int = 200) -> list[BatchInfo]:
        return self._batch_rows("ORDER BY b.started_at DESC LIMIT ?", (limit,))

    def _batch_rows(self, tail: str, args: tuple[object, ...]) -> list[BatchInfo]:
        query = (
            "SELECT b.id, b.started_at, b.finished_at, b.status, b.inputs, b.models_key,"
            " b.device, b.total, b.pid, b.host,"
            " (SELECT COUNT(*) FROM batch_items i WHERE i.batch_id=b.id AND i.status IS NOT NULL),"
            " (SELECT COUNT(*) FROM batch_items i WHERE i.batch_id=b.id AND i.status='error')"
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
                )
            )
        return out

    def interrupted_batches(self) -> list[BatchInfo]:
        """Batches left ``running`` by a process that no longer exists (crash, kill -9)."""
        host = socket.gethostname()
        out = []
        for info in self._batch_rows(
            "WHERE b.status = ? ORDER BY b.started_at DESC", (BatchStatus.RUNNING,)
        ):
            alive = info.host == host and info.pid is not None and _pid_alive(info.pid)
            if not alive or info.pid == os.getpid():
                out.append(info)
        return out

    def pending_items(self, batch_id: str) -> list[tuple[int, str]]:
        rows = self._db().execute(
            "SELECT seq, file FROM batch_items WHERE batch_id=? AND status IS NULL ORDER BY seq",
            (batch_id,),
        )
        return [(int(seq), file) for seq, file in rows]

    def item_count(self, batch_id: str) -> int:
        row = (
            self._db()
            .execute("SELECT COUNT(*) FROM batch_items WHERE batch_id=?", (batch_id,))
            .fetchone()
        )
        return int(row[0])

    # -- results -------------------------------------------------------------------------
    def record(self, batch_id: str, seq: int, result: ScanResult) -> None:
        """Commit one finished item (and its result, if screened) in one transaction."""
        with self._write() as db:
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

    def remember_file(self, path: str, size: int, mtime_ns: int, sha256: str) -> None:
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO file_index(path, size, mtime_ns, sha256) VALUES (?,?,?,?)",
                (path, size, mtime_ns, sha256),
            )

    def known_sha(self, path: str, size: int, mtime_ns: int) -> str | None:
        row = (
            self._db()
            .execute(
                "SELECT sha256 FROM file_index WHERE path=? AND size=? AND mtime_ns=?",
                (path, size, mtime_ns),
            )
            .fetchone()
        )
        return None if row is None else str(row[0])

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

    def batch_results(self, batch_id: str) -> Iterator[ScanResult]:
        """Every finished item of a batch in input order, errors included (streamed).

        Each item is joined with the result of the model versions that screened *it*: a batch
        resumed after a model update holds items of both versions, and keeps both.
        """
        cursor = self._db().execute(
            "SELECT i.file, i.sha256, i.status, i.reason, i.error_code, r.status, r.reason,"
            " r.modality, r.modality_score, r.ood_score, r.detail, r.thumbnail, r.screened_at,"
            " i.done_at, COALESCE(i.models_key, b.models_key)"
            " FROM batch_items i JOIN batches b ON b.id = i.batch_id"
            " LEFT JOIN results r"
            " ON r.sha256 = i.sha256 AND r.models_key = COALESCE(i.models_key, b.models_key)"
            " WHERE i.batch_id = ? AND i.status IS NOT NULL ORDER BY i.seq",
            (batch_id,),
        )
        for row in cursor:
            file, sha, status, reason, code = row[:5]
            models_key = row[14]
            if row[5] is not None and status != ScanStatus.ERROR.value:
                yield _result_from_row(file, sha, models_key, row[5:13])
            else:
                yield ScanResult(
                    file=file,
                    sha256=sha,
                    status=ScanStatus(status),
                    reason=reason,
                    error_code=code,
                    models_key=models_key,
                    screened_at=row[13] or "",
                )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


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
    )

"""The results store closes a thread's SQLite connection when that thread ends.

Connections are per thread (SQLite objects must not cross threads). They were kept until
the store closed, so every batch run in a process whose store stays open (the window's
in-process runs and workers) left one connection per decoder and inference thread behind:
its ``-wal`` file handle, its page cache, and a database handle, a few more every batch.
Each connection now closes when its thread ends; :meth:`ResultsStore.close` closes the rest.
Checked on the process's real file descriptors (``/proc/self/fd``, Linux).
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from desktop.engine.registry import load_model_set
from desktop.engine.runner import BatchRunner, run_to_end
from desktop.engine.store import ResultsStore
from desktop.gui.workers import Worker

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="counts descriptors in /proc/self/fd"
)


def _open_files(db: Path) -> list[str]:
    """Names of the store's files (database, -wal, -shm) this process has open, one per
    file descriptor."""
    names = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own descriptor, gone already
            continue
        if target.startswith(str(db)):
            names.append(Path(target).name)
    return sorted(names)


def _wal_handles(db: Path) -> int:
    """One ``-wal`` descriptor per open connection (SQLite closes it with the connection)."""
    return sum(name.endswith("-wal") for name in _open_files(db))


def test_a_batchs_threads_leave_no_connection_behind(stand_in_models: Path, chest_folder):
    """Three batches with four decoder threads each on one open store: after each, only
    this thread's connection is open; after close(), not one of the store's files."""
    db = Path(chest_folder.parent / "results.sqlite3")
    store = ResultsStore(db)
    models = load_model_set([stand_in_models], threads=1)
    runner = BatchRunner(models, store, workers=4)
    assert store.open_connections == 1 and _wal_handles(db) == 1  # this thread's
    for _ in range(3):
        summary = run_to_end(runner.run([chest_folder]))
        assert summary.total == 24 and summary.ok == 24
        assert store.open_connections == 1
        assert _wal_handles(db) == 1
        # SQLite keeps a closed connection's database descriptor while another connection
        # holds a lock on the file, and reuses it for the next one: bounded, not growing
        assert _open_files(db).count("results.sqlite3") <= 1 + 4 + runner.inference_slots
    store.close()
    assert store.open_connections == 0
    assert _open_files(db) == []
    # every result committed by a thread that has ended is there for a new connection
    store = ResultsStore(db)
    try:
        assert [b.done for b in store.batches()] == [24, 24, 24]
    finally:
        store.close()


def test_a_thread_that_wrote_and_ended_closes_its_connection(tmp_path: Path):
    db = tmp_path / "results.sqlite3"
    store = ResultsStore(db)
    made: list[str] = []
    writer = threading.Thread(
        target=lambda: made.append(store.create_batch(["scans"], "models@1", "cpu")),
        name="medscreen-test-writer",
    )
    writer.start()
    writer.join()
    assert store.open_connections == 1 and _wal_handles(db) == 1
    (info,) = store.batches()  # its commit is durable and visible here
    assert [info.id] == made and info.models_key == "models@1"
    store.close()
    assert _open_files(db) == []


def test_a_window_worker_closes_its_connection_when_its_thread_ends(qtbot, tmp_path: Path):
    """The window's workers run in QThreads: the same holds for them."""
    db = tmp_path / "results.sqlite3"
    store = ResultsStore(db)
    store.create_batch(["scans"], "models@1", "cpu")
    try:
        worker = Worker(store.batches, name="medscreen-test-worker")
        with qtbot.waitSignal(worker.returned, timeout=10_000) as got:
            worker.start()
        assert len(got.args[0]) == 1
        qtbot.waitUntil(lambda: store.open_connections == 1, timeout=10_000)
        assert _wal_handles(db) == 1
    finally:
        store.close()
    assert _open_files(db) == []

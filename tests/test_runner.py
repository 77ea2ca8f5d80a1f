"""The batch runner and results store on real scans, with the ONNX stand-in models."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from desktop.engine import trust
from desktop.engine.preprocess import load_working, preprocess
from desktop.engine.registry import load_model_set
from desktop.engine.results import ScanStatus
from desktop.engine.runner import BatchRunner, run_to_end
from desktop.engine.store import BatchStatus, ResultsStore
from tests.conftest import DATA, REPO
from tests.model_factory import TEST_KEY, expected_probability


@pytest.fixture
def runner(stand_in_models: Path, tmp_path: Path) -> BatchRunner:
    store = ResultsStore(tmp_path / "results.sqlite3")
    return BatchRunner(load_model_set([stand_in_models]), store, workers=2, batch_size=4)


def _rows(db: Path, batch_id: str) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute(
            "SELECT seq, file, status, error_code FROM batch_items WHERE batch_id=? ORDER BY seq",
            (batch_id,),
        ).fetchall()


def test_batch_screens_real_scans_and_gates_non_chest(runner: BatchRunner, mixed_folder: Path):
    events = []
    gen = runner.run([mixed_folder])
    summary = None
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            summary = stop.value
            break
    files = sorted(p for p in mixed_folder.rglob("*") if p.is_file())
    assert summary.total == len(files) == 24 + 18 + 2
    assert events[0].done == 0 and events[-1].done == summary.total
    assert [e.done for e in events] == list(range(summary.total + 1))
    assert summary.ok + summary.not_chest_xray + summary.errors == summary.total
    results = {r.file: r for r in runner.store.batch_results(summary.batch_id)}
    assert len(results) == summary.total

    # The stand-in gate calls bright images chest X-rays, so its verdicts follow the pixels.
    for name, result in results.items():
        if result.status is ScanStatus.ERROR:
            continue
        scan = load_working(Path(result.file))
        grey = preprocess(scan.pixels, runner.models.modality.manifest.preprocessing).mean()
        if result.status is ScanStatus.OK:
            assert grey > 0.3 - 1e-3, name
            tb = runner.models.findings["tb"].manifest.preprocessing
            mean = (preprocess(scan.pixels, tb).mean() - tb.offset) / tb.scale
            assert result.findings["tb"].probability == pytest.approx(
                expected_probability(mean, 0.5), abs=2e-4
            )
            assert result.findings["tb"].activation.shape == (7, 7)
        else:
            assert result.findings == {}  # a non-chest scan never gets a TB score
            assert result.reason.startswith(("predicted", "not recognised", "not confidently"))
    assert runner.store.batch(summary.batch_id).status == BatchStatus.COMPLETED


def test_rerun_reuses_every_result_without_reading(runner: BatchRunner, chest_folder: Path):
    first = run_to_end(runner.run([chest_folder]))
    second = run_to_end(runner.run([chest_folder]))
    assert first.total == second.total == 24
    assert second.reused == 24 and first.reused == 0
    a = [r.findings["tb"].probability for r in runner.store.batch_results(first.batch_id)]
    b = [r.findings["tb"].probability for r in runner.store.batch_results(second.batch_id)]
    assert a == b


def test_renamed_copy_is_found_by_content(runner: BatchRunner, chest_folder: Path, tmp_path):
    run_to_end(runner.run([chest_folder]))
    copy = tmp_path / "renamed.png"
    shutil.copy(next(chest_folder.rglob("*.png")), copy)
    summary = run_to_end(runner.run([copy]))
    assert summary.reused == 1


def test_new_model_version_rescreens(stand_in_models, chest_folder, tmp_path):
    from tests.model_factory import build_model_set

    store = ResultsStore(tmp_path / "r.sqlite3")
    run_to_end(BatchRunner(load_model_set([stand_in_models]), store).run([chest_folder]))
    newer = build_model_set(tmp_path / "v2", version="0.2.0")
    summary = run_to_end(BatchRunner(load_model_set([newer]), store).run([chest_folder]))
    assert summary.reused == 0 and summary.ok == 24


def test_bad_files_get_reasons_and_the_batch_goes_on(runner: BatchRunner, chest_folder: Path):
    good = (DATA / "tb" / "normal" / "CHNCXR_0001_0.png").read_bytes()
    bad = chest_folder / "bad"
    bad.mkdir()
    (bad / "empty.png").write_bytes(b"")
    (bad / "notes.png").write_text("Patient notes: not an image\n" * 20)
    (bad / "truncated.png").write_bytes(good[: len(good) // 2])
    summary = run_to_end(runner.run([chest_folder]))
    assert summary.total == 27 and summary.errors == 3 and summary.ok + summary.not_chest_xray == 24
    by_name = {Path(r.file).name: r for r in runner.store.batch_results(summary.batch_id)}
    assert by_name["empty.png"].error_code == "empty_file"
    assert by_name["notes.png"].error_code == "not_an_image"
    assert by_name["truncated.png"].error_code == "truncated"
    assert all(by_name[n].reason for n in ("empty.png", "notes.png", "truncated.png"))


def test_a_failed_inference_is_each_scans_capped_type_only_error(
    runner: BatchRunner, chest_folder: Path, monkeypatch: pytest.MonkeyPatch, caplog
):
    from desktop.engine.screening import Screener

    secret = "QUIXOTE^ALONSO " + "x" * 5000  # an exception text that quotes input, unbounded

    def failing(self, batch):
        raise RuntimeError(f"bad input '{secret}'")

    monkeypatch.setattr(Screener, "screen", failing)
    summary = run_to_end(runner.run([chest_folder]))
    assert summary.total == 24 and summary.errors == 24  # every scan a row, none lost
    rows = list(runner.store.batch_results(summary.batch_id))
    assert {r.error_code for r in rows} == {"internal_error"}
    assert {r.reason for r in rows} == {"inference failed (RuntimeError)"}
    assert "QUIXOTE" not in caplog.text and "inference failed for" in caplog.text


def test_file_deleted_during_batch(runner: BatchRunner, chest_folder: Path):
    victim = sorted(chest_folder.rglob("*.png"))[-1]
    gen = runner.run([chest_folder])
    next(gen)  # discovery is done: the file list is fixed
    victim.unlink()
    summary = None
    while summary is None:
        try:
            next(gen)
        except StopIteration as stop:
            summary = stop.value
    result = next(r for r in runner.store.batch_results(summary.batch_id) if r.file == str(victim))
    assert result.status is ScanStatus.ERROR and result.error_code == "vanished"
    assert summary.errors == 1 and summary.total == 24


def test_scans_finishing_together_share_a_commit_made_before_any_is_reported(
    runner: BatchRunner, chest_folder: Path, monkeypatch: pytest.MonkeyPatch
):
    """One FULL commit (one fsync) per group of scans that finished together, never one
    per scan, and every scan reported is already in the store (contract 5)."""
    commits: list[int] = []
    record_many = runner.store.record_many

    def counting(batch_id, items, files=()):
        commits.append(len(items))
        assert len(files) == sum(r.status is not ScanStatus.ERROR for _, r in items)
        record_many(batch_id, items, files)

    monkeypatch.setattr(runner.store, "record_many", counting)
    gen = runner.run([chest_folder])
    first = next(gen)
    for event in gen:
        rows = _rows(runner.store.path, first.batch_id)
        committed = {seq for seq, _, status, _ in rows if status is not None}
        assert len(committed) >= event.done  # this scan and those before it
    assert sum(commits) == 24 and max(commits) > 1 and len(commits) < 24
    # the files were indexed in those same commits
    with sqlite3.connect(runner.store.path) as con:
        assert con.execute("SELECT COUNT(*) FROM file_index").fetchone()[0] == 24


def test_cancel_keeps_finished_scans(runner: BatchRunner, chest_folder: Path):
    gen = runner.run([chest_folder])
    done = 0
    for event in gen:
        done = event.done
        if done == 5:
            runner.cancel()
    info = runner.store.batch(event.batch_id)
    assert info.status == BatchStatus.CANCELLED
    assert 5 <= info.done < 24  # the scans in flight may finish, nothing more starts
    assert info.done == done == len(list(runner.store.batch_results(info.id)))
    # resuming finishes the rest without redoing what was done
    summary = run_to_end(runner.run(resume=info.id))
    assert summary.already_done == info.done
    assert summary.ok + summary.not_chest_xray + summary.errors == 24 - info.done
    assert runner.store.batch(info.id).status == BatchStatus.COMPLETED


def test_pillow_keeps_a_block_per_decoder_during_a_batch_and_not_after(
    runner: BatchRunner, chest_folder: Path
):
    """Decoded image blocks are reused while a batch runs (no fresh pages a scan), and the
    process-wide setting is back, its kept blocks freed, when it ends or is closed early."""
    from PIL import Image

    assert Image.core.get_blocks_max() == 0
    during = []
    for _ in runner.run([chest_folder]):
        during.append(Image.core.get_blocks_max())
    assert len(during) > 2 and set(during[1:]) == {runner.workers}  # [0]: before decoding
    assert Image.core.get_blocks_max() == 0
    gen = runner.run([chest_folder])
    next(gen)
    next(gen)
    assert Image.core.get_blocks_max() == runner.workers
    gen.close()  # a GUI closing the batch
    assert Image.core.get_blocks_max() == 0


def test_symlink_loops_hidden_and_non_image_files(runner: BatchRunner, chest_folder: Path):
    (chest_folder / "tb" / "loop").symlink_to(chest_folder, target_is_directory=True)
    (chest_folder / ".hidden.png").write_bytes(b"x")
    (chest_folder / "notes.txt").write_text("hello")
    (chest_folder / "Thumbs.db").write_bytes(b"\0" * 10)
    summary = run_to_end(runner.run([chest_folder]))
    assert summary.total == 24
    assert summary.discovered.loops >= 1
    assert summary.discovered.skipped_hidden == 2  # .hidden.png and Thumbs.db
    assert summary.discovered.skipped_non_scans == 1


def test_unicode_and_long_paths(runner: BatchRunner, tmp_path: Path):
    deep = tmp_path / "Clínica São José" / ("très-long-dossier-" * 6) / "患者"
    deep.mkdir(parents=True)
    src = next((DATA / "tb" / "tuberculosis").glob("*.png"))
    target = deep / ("radiografía_tórax_" + "x" * 150 + ".png")
    shutil.copy(src, target)
    summary = run_to_end(runner.run([tmp_path]))
    assert summary.total == 1 and summary.errors == 0
    assert next(runner.store.batch_results(summary.batch_id)).file == str(target)


_KILL_SCRIPT = """
import sys
from pathlib import Path
from desktop.engine import trust
from desktop.engine.registry import load_model_set
from desktop.engine.runner import BatchRunner
from desktop.engine.store import ResultsStore
trust.TRUSTED_KEYS["test"] = sys.argv[4]  # the parent's throw-away key signed the stand-ins
runner = BatchRunner(load_model_set([Path(sys.argv[1])]), ResultsStore(Path(sys.argv[2])),
                     workers=2, batch_size=2)
for event in runner.run([Path(sys.argv[3])]):
    print(event.done, flush=True)
"""


def test_kill_9_halfway_then_resume(stand_in_models: Path, tmp_path: Path):
    folder = tmp_path / "scans"
    for i in range(4):  # 48 real chest X-rays (4 copies of 12, made unique by one byte)
        for src in sorted((DATA / "tb").rglob("*.png")):
            dst = folder / f"copy{i}" / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes() + bytes([i]))
    db = tmp_path / "results.sqlite3"
    test_key = trust.public_raw(TEST_KEY).hex()  # the subprocess trusts it too
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_SCRIPT, str(stand_in_models), str(db), str(folder), test_key],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    for line in proc.stdout:  # kill -9 once a third is committed
        if int(line) >= 16:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    store = ResultsStore(db)
    interrupted = store.interrupted_batches()
    assert len(interrupted) == 1
    batch = interrupted[0]
    assert batch.status == BatchStatus.RUNNING and 16 <= batch.done < 48
    runner = BatchRunner(load_model_set([stand_in_models]), store)
    summary = run_to_end(runner.run(resume=batch.id))
    assert summary.already_done == batch.done
    assert summary.ok + summary.errors + summary.not_chest_xray == 48 - batch.done
    rows = _rows(db, batch.id)
    assert [r[0] for r in rows] == list(range(48))  # every item exactly once, in order
    assert all(r[2] in ("ok", "not_chest_xray") for r in rows)
    assert store.interrupted_batches() == []

    # identical to an uninterrupted run of the same folder
    fresh = ResultsStore(tmp_path / "fresh.sqlite3")
    clean = run_to_end(BatchRunner(load_model_set([stand_in_models]), fresh).run([folder]))
    a = [(r.file, r.status, r.findings.get("tb")) for r in store.batch_results(batch.id)]
    b = [(r.file, r.status, r.findings.get("tb")) for r in fresh.batch_results(clean.batch_id)]
    assert [(f, s, t and round(t.probability, 6)) for f, s, t in a] == [
        (f, s, t and round(t.probability, 6)) for f, s, t in b
    ]


def test_progress_reports_rate_and_eta(runner: BatchRunner, chest_folder: Path):
    events = list(runner.run([chest_folder]))
    late = events[-5]
    assert late.rate > 0 and late.eta_s is not None and late.eta_s >= 0
    assert late.current and Path(late.current).exists()
    assert np.isclose(events[-1].fraction, 1.0)


class _CountingRunner(BatchRunner):
    """A runner that counts scans being prepared (decoded, held) and not yet handed out."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lock = threading.Lock()
        self.started = 0
        self.yielded = 0
        self.high_water = 0

    def _prepare(self, seq: int, file: str):
        with self.lock:
            self.started += 1
            self.high_water = max(self.high_water, self.started - self.yielded)
        return super()._prepare(seq, file)

    def consume_slowly(self, folder: Path, pause_s: float = 0.03) -> int:
        """Take the events like a busy GUI would; return the most scans held at once."""
        for event in self.run([folder]):
            if event.result is not None:
                with self.lock:
                    self.yielded += 1
                time.sleep(pause_s)  # decoders would race ahead here without the bound
        return self.high_water


def test_memory_of_in_flight_work_is_bounded(stand_in_models, mixed_folder, tmp_path):
    """However slowly events are taken, the runner holds at most ``max_in_flight`` scans."""
    total = sum(1 for p in mixed_folder.rglob("*") if p.is_file())
    models = load_model_set([stand_in_models])
    bounded = _CountingRunner(models, ResultsStore(tmp_path / "a.sqlite3"), workers=2, batch_size=2)
    assert bounded.max_in_flight < total // 2  # a bound small enough to be tested here
    high = bounded.consume_slowly(mixed_folder)
    assert bounded.yielded == total
    assert 2 <= high <= bounded.max_in_flight
    # The same measurement on a runner without the bound sees the decoders run ahead: this
    # test fails if the bound stops holding.
    unbounded = _CountingRunner(
        models, ResultsStore(tmp_path / "b.sqlite3"), workers=2, batch_size=2
    )
    unbounded.max_in_flight = 10 * total
    assert unbounded.consume_slowly(mixed_folder) > bounded.max_in_flight


def test_store_survives_time(stand_in_models: Path, chest_folder: Path, tmp_path: Path):
    """History: batches are listed newest first with their counts."""
    store = ResultsStore(tmp_path / "h.sqlite3")
    runner = BatchRunner(load_model_set([stand_in_models]), store)
    first = run_to_end(runner.run([chest_folder / "tb"]))
    time.sleep(1.1)
    second = run_to_end(runner.run([chest_folder / "pneumonia"]))
    listed = store.batches()
    assert [b.id for b in listed] == [second.batch_id, first.batch_id]
    assert [b.done for b in listed] == [12, 12]
    assert listed[0].label.endswith("pneumonia")


def test_batch_resumed_under_new_models_keeps_both_versions(
    stand_in_models, chest_folder, tmp_path
):
    from tests.model_factory import build_model_set

    store = ResultsStore(tmp_path / "r.sqlite3")
    old = BatchRunner(load_model_set([stand_in_models]), store)
    for event in (gen := old.run([chest_folder])):
        if event.done == 6:
            old.cancel()
    batch_id = event.batch_id
    newer = BatchRunner(load_model_set([build_model_set(tmp_path / "v2", version="0.2.0")]), store)
    run_to_end(newer.run(resume=batch_id))
    results = list(store.batch_results(batch_id))
    assert len(results) == 24
    assert all(r.findings for r in results)  # no item lost its scores
    versions = {r.findings["tb"].model_key.split("#")[0] for r in results}
    assert versions == {"tb@0.1.0", "tb@0.2.0"}
    del gen

"""The batch runner: long work as a generator of progress events (ARCHITECTURE.md, contract 4).

Decoding and preprocessing run in a small thread pool (Pillow, NumPy and ONNX Runtime release
the GIL), inference runs in batches on the calling thread, and every finished scan is
committed to the store before the next event is yielded (contract 5). At most a bounded
number of scans are in flight, so memory stays flat however large the folder.

The CLI iterates the generator and draws a progress bar; the GUI runs the same generator in a
worker thread. Either may call :meth:`BatchRunner.cancel` (or close the generator): the runner
stops submitting work, keeps every committed scan, and marks the batch ``cancelled``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Generator, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from desktop.engine.budget import PixelBudget
from desktop.engine.clock import now_iso
from desktop.engine.discovery import Discovered, discover
from desktop.engine.errors import BatchError, ScanError, ScanErrorCode, exception_summary, is_fatal
from desktop.engine.loading import charging, read_file
from desktop.engine.preprocess import decode_working
from desktop.engine.registry import ModelSet
from desktop.engine.results import ScanResult, ScanStatus
from desktop.engine.screening import PreparedScan, Screener
from desktop.engine.store import (
    BatchStatus,
    FileIdentity,
    ResultsStore,
    StoreError,
    content_probe,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    """One step of a batch: emitted after each scan is committed (and once at the start)."""

    batch_id: str
    done: int
    total: int
    current: str | None = None
    rate: float = 0.0  # scans per second over the recent window
    eta_s: float | None = None
    result: ScanResult | None = None
    reused: bool = False  # the result came from the store, nothing was recomputed

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


@dataclass
class BatchSummary:
    batch_id: str
    total: int = 0
    ok: int = 0
    not_chest_xray: int = 0
    errors: int = 0
    reused: int = 0
    already_done: int = 0  # items finished by an earlier run of a resumed batch
    cancelled: bool = False
    elapsed_s: float = 0.0
    device: str = ""
    discovered: Discovered = field(default_factory=Discovered)

    def count(self, status: ScanStatus) -> None:
        if status is ScanStatus.OK:
            self.ok += 1
        elif status is ScanStatus.NOT_CHEST_XRAY:
            self.not_chest_xray += 1
        else:
            self.errors += 1


@dataclass(frozen=True)
class _Reused:
    seq: int
    result: ScanResult


@dataclass(frozen=True)
class _Failed:
    seq: int
    result: ScanResult


@dataclass(frozen=True)
class _Ready:
    seq: int
    prepared: PreparedScan
    identity: FileIdentity  # the stat taken before the file was read
    probe: str  # store.content_probe of the bytes that were hashed


_Outcome = _Reused | _Failed | _Ready


class _Rate:
    """Scans per second over the last ``window`` completions: honest for a changing mix."""

    def __init__(self, window: int = 64) -> None:
        self._times: deque[float] = deque(maxlen=window)

    def tick(self) -> None:
        self._times.append(time.perf_counter())

    def value(self) -> float:
        if len(self._times) < 2:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0


class BatchRunner:
    def __init__(
        self,
        models: ModelSet,
        store: ResultsStore,
        *,
        workers: int | None = None,
        batch_size: int = 8,
    ) -> None:
        self.models = models
        self.store = store
        self.screener = Screener(models)
        self.workers = workers or min(4, os.cpu_count() or 1)
        self.batch_size = batch_size
        self.pixel_budget = PixelBudget()  # decoded pixels all decoder threads may hold
        self._cancel = threading.Event()

    def cancel(self) -> None:
        """Ask the running batch to stop after the scans in flight (thread-safe)."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    # -- the generator -------------------------------------------------------------------
    def run(
        self, inputs: Sequence[str | Path] = (), *, resume: str | None = None
    ) -> Generator[Progress, None, BatchSummary]:
        """Screen ``inputs`` as a new batch, or continue the batch ``resume``."""
        self._cancel.clear()
        device = self.models.device.describe()
        if resume is not None:
            info = self.store.batch(resume)
            if info is None:
                raise BatchError(f"no batch {resume!r} in the results store")
            batch_id = info.id
            self.store.claim_batch(batch_id, self.models.key, device)
            discovered = Discovered()
            if self.store.item_count(batch_id) == 0:  # died before its file list was saved
                discovered = discover(info.inputs)
                self.store.set_items(batch_id, [str(p) for p in discovered.files])
        else:
            discovered = discover(inputs)
            batch_id = self.store.create_batch([str(p) for p in inputs], self.models.key, device)
            self.store.set_items(batch_id, [str(p) for p in discovered.files])

        total = self.store.item_count(batch_id)
        pending = self.store.pending_items(batch_id)
        summary = BatchSummary(batch_id, total=total, device=device, discovered=discovered)
        summary.already_done = total - len(pending)
        started = time.perf_counter()
        done = summary.already_done
        rate = _Rate()
        yield Progress(batch_id, done, total)

        finished = False
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="medscreen-decode")
        try:
            for seq, result, reused in self._results(pool, pending):
                self.store.record(batch_id, seq, result)
                summary.count(result.status)
                summary.reused += int(reused)
                done += 1
                rate.tick()
                per_second = rate.value()
                eta = (total - done) / per_second if per_second > 0 else None
                yield Progress(batch_id, done, total, result.file, per_second, eta, result, reused)
            finished = not self._cancel.is_set()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            summary.cancelled = not finished
            summary.elapsed_s = time.perf_counter() - started
            status = BatchStatus.COMPLETED if finished else BatchStatus.CANCELLED
            self.store.finish_batch(batch_id, status)
        return summary

    def _results(
        self, pool: ThreadPoolExecutor, pending: Iterable[tuple[int, str]]
    ) -> Generator[tuple[int, ScanResult, bool], None, None]:
        """Yield (seq, result, reused) in roughly input order, screening in batches."""
        todo = iter(pending)
        in_flight: deque[Future[_Outcome]] = deque()
        limit = self.workers * 2 + self.batch_size
        ready: list[_Ready] = []

        def refill() -> None:
            while len(in_flight) < limit and not self._cancel.is_set():
                item = next(todo, None)
                if item is None:
                    return
                in_flight.append(pool.submit(self._prepare, *item))

        refill()
        while in_flight or ready:
            if self._cancel.is_set():
                for future in in_flight:
                    future.cancel()
                return
            if in_flight and (len(ready) < self.batch_size):
                outcome = in_flight.popleft().result()
                refill()
                if isinstance(outcome, _Ready):
                    ready.append(outcome)
                else:
                    yield outcome.seq, outcome.result, isinstance(outcome, _Reused)
                # Screen when the batch is full or nothing else is ready to join it.
                if ready and (
                    len(ready) >= self.batch_size or not in_flight or not in_flight[0].done()
                ):
                    yield from self._screen(ready)
                    ready = []
            else:
                yield from self._screen(ready)
                ready = []

    def _screen(self, ready: list[_Ready]) -> Generator[tuple[int, ScanResult, bool], None, None]:
        try:
            results = self.screener.screen([r.prepared for r in ready])
        except Exception as exc:  # a model failure on one batch must not lose the batch
            log.exception("inference failed for %d scans", len(ready))
            results = [
                _error_result(
                    r.prepared.file,
                    r.prepared.sha256,
                    ScanErrorCode.INTERNAL,
                    f"inference failed: {type(exc).__name__}: {exc}",
                    self.models.key,
                )
                for r in ready
            ]
        for item, result in zip(ready, results, strict=True):
            if result.status is not ScanStatus.ERROR:
                self.store.remember_file(
                    item.prepared.file, item.identity, item.probe, item.prepared.sha256
                )
            yield item.seq, result, False

    # -- worker side ---------------------------------------------------------------------
    def _prepare(self, seq: int, file: str) -> _Outcome:
        """Runs in a decoder thread: reuse a stored result, or read, decode and preprocess."""
        path = Path(file)
        key = self.models.key
        sha: str | None = None
        try:
            try:
                stat = path.stat()
            except FileNotFoundError:
                reason = (
                    "broken link: its target does not exist"
                    if os.path.lexists(path)
                    else "no such file: it was deleted or moved, or never existed"
                )
                raise ScanError(ScanErrorCode.VANISHED, reason) from None
            except OSError as exc:
                raise ScanError(
                    ScanErrorCode.UNREADABLE, f"cannot access the file: {exc.strerror or exc}"
                ) from exc
            # A folder passed as a file is refused by read_file, with the loader's one code
            # and wording (UNREADABLE, "this is a folder, not a file").
            identity = FileIdentity.of(stat)
            known = self.store.known_sha(file, identity)
            if known:
                cached = self.store.cached_result(known, key, file)
                if cached is not None:
                    return _Reused(seq, cached)
            data, sha = read_file(path)
            probe = content_probe(data)
            cached = self.store.cached_result(sha, key, file)
            if cached is not None:
                return _Reused(seq, cached)
            # The decoded pixels are charged to the shared budget from the header on, until
            # the scan is reduced to model inputs (budget.py): 4 threads, 1 big image each,
            # cannot add up.
            with self.pixel_budget.lease() as lease, charging(lease):
                scan = decode_working(path, data, sha)
                del data
                prepared = self.screener.prepare(scan)
                del scan
            return _Ready(seq, prepared, identity, probe)
        except StoreError:
            raise  # the store itself failed: that stops the batch, it is no file's fault
        except ScanError as exc:
            return _Failed(seq, _error_result(file, sha, exc.code, exc.message, key))
        except BaseException as exc:  # never let one odd file stop the batch (Rust panics too)
            if is_fatal(exc):
                raise
            # The exception's message may quote file content: type and frames only.
            log.error("unexpected error preparing item %d: %s", seq, exception_summary(exc))
            return _Failed(
                seq,
                _error_result(
                    file,
                    sha,
                    ScanErrorCode.INTERNAL,
                    f"unexpected error while preparing the scan ({type(exc).__name__})",
                    key,
                ),
            )


def _error_result(
    file: str, sha: str | None, code: ScanErrorCode, message: str, models_key: str
) -> ScanResult:
    return ScanResult(
        file=file,
        sha256=sha,
        status=ScanStatus.ERROR,
        reason=message,
        error_code=code.value,
        models_key=models_key,
        screened_at=now_iso(),
    )


def run_to_end(gen: Generator[Progress, None, BatchSummary]) -> BatchSummary:
    """Drain a runner generator and return its summary (for tests and scripts)."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value

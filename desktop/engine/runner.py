"""The batch runner: long work as a generator of progress events (ARCHITECTURE.md, contract 4).

A pipeline of two stages that overlap, so the slower one sets the pace:

* **decoding** — read, hash, decode to the working image, preprocess, thumbnail — runs in a
  pool of decoder threads, one per core (Pillow, pydicom and NumPy release the GIL);
* **inference** runs in batches in a few inference threads (ONNX Runtime releases the GIL),
  each batch taking *every* scan that is ready, up to ``batch_size``: when decoding runs
  ahead the batches grow and inference gets cheaper per scan, and when inference is ahead it
  gets each scan as soon as a few are ready.

Both stages draw on one :class:`~desktop.engine.cores.CoreBudget` of the process's cores, so
decoder threads and ONNX Runtime's threads never oversubscribe them (inference is served
first when both wait); it admits one task beyond the cores, which takes the core of a thread
that waits for Python's GIL (cores.py measured why). The calling thread only commits: every
finished scan is committed to the store before its event is yielded (contract 5), the scans
that finish together in one transaction. At most :attr:`BatchRunner.max_in_flight` scans
are between the file list and the store at any time, so memory stays flat however large the
folder.

The CLI iterates the generator and draws a progress bar; the GUI runs the same generator in a
worker thread. Either may call :meth:`BatchRunner.cancel` (or close the generator): the runner
stops submitting work, keeps every committed scan, and marks the batch ``cancelled``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Generator, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from queue import SimpleQueue
from stat import S_ISDIR

from desktop.engine.budget import PixelBudget
from desktop.engine.clock import now_iso
from desktop.engine.cores import GIL_SPARE, CoreBudget, available_cores, release_free_memory
from desktop.engine.discovery import Discovered, discover
from desktop.engine.errors import (
    BatchError,
    ScanError,
    ScanErrorCode,
    cap_reason,
    exception_summary,
    is_fatal,
)
from desktop.engine.inference import CUDA, default_threads, inference_slots
from desktop.engine.loading import charging, read_file, reused_image_buffers
from desktop.engine.preprocess import decode_working
from desktop.engine.processes import pid_alive
from desktop.engine.progress import BatchSummary, Progress  # defined there: see its docstring
from desktop.engine.quality import UNLISTED_FOLDER_REASON
from desktop.engine.registry import ModelSet
from desktop.engine.results import ScanResult, ScanStatus
from desktop.engine.screening import PreparedScan, Screener
from desktop.engine.store import (
    BatchInfo,
    BatchKind,
    BatchStatus,
    FileIdentity,
    ResultsStore,
    StoreError,
    content_probe,
)

log = logging.getLogger(__name__)


def _refuse_unlisted_folder(path: Path) -> None:
    """Raise the row's error for a folder of the batch that cannot be listed; return for one
    that can (read_file then says it is a folder, not a file)."""
    try:
        os.listdir(path)
    except OSError as exc:
        raise ScanError(
            ScanErrorCode.UNREADABLE,
            f"{UNLISTED_FOLDER_REASON} ({exc.strerror or exc}): the scans in it were not screened",
        ) from exc


def _items(discovered: Discovered) -> list[str]:
    """A batch's items: the files found, then each folder that could not be listed (a row of
    its own: its scans were not screened, which every report and the window must show)."""
    return [str(p) for p in (*discovered.files, *discovered.unreadable_paths)]


def _refuse_if_held(info: BatchInfo) -> None:
    """Refuse to resume a batch another live process on this machine is screening: both
    would decode and score every pending scan (the work done twice, two processes writing
    the same items). A batch whose process is gone (kill -9, a crash) is taken over, and so
    is one left by this process or the one that started it (the window hands a batch its own
    process recorded to its batch process, as :meth:`ResultsStore.interrupted_batches` does)."""
    if info.status != BatchStatus.RUNNING or info.pid in (None, os.getpid(), os.getppid()):
        return
    if info.host == socket.gethostname() and pid_alive(info.pid):
        raise BatchError(
            f"batch {info.id} is being screened by another MedScreen process (pid {info.pid}) "
            "right now; wait for it to finish, or stop that process first and resume then"
        )


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


@dataclass(frozen=True)
class _Done:
    """A finished item on its way to the store, with its file index entry when screened
    (path, stat identity, content probe, sha256: :meth:`ResultsStore.remember_file`'s)."""

    seq: int
    result: ScanResult
    reused: bool = False
    index: tuple[str, FileIdentity, str, str] | None = None


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


#: Largest inference batch on the CPU: the shipped models cost the same per scan from batches
#: of 2 up (measured 14.1 vs 14.9 ms a scan end to end for 4 vs 8), while each batch's ONNX
#: Runtime buffers add to the peak memory: two batches of 8 in flight raised it by ~60 MB, and
#: since the spare task (cores.GIL_SPARE) lets both inference slots run beside the decoders,
#: two batches of 4 made most of the screening peak (2,000-scan classify with reports, 2
#: cores: 277-310 MB with batches of 4, 187-213 MB with 2; the same 38-40 s; JPEG and DICOM
#: batches as fast or faster, 3 alternated pairs each).
CPU_BATCH = 2
#: Largest inference batch on a GPU.
GPU_BATCH = 32
#: Committed scans between two returns of freed heap to the system (``malloc_trim``): glibc
#: keeps what the decoder and inference threads free in their arenas, and a 20,000-scan
#: batch's resident memory crept up to ~316 MB without it (measured; 175 MB once trimmed).
#: A trim costs milliseconds, so every few hundred scans costs nothing measurable.
TRIM_EVERY = 256


class BatchRunner:
    """Screens folders as a generator of :class:`Progress` events (see the module docstring).

    ``workers`` decoder threads (default: one per available core); inference batches of
    ``min_batch`` to ``batch_size`` scans (a lone scan still goes when nothing else is coming);
    ``cores`` the size of the shared core budget (default: the process's CPU affinity).

    ``batch_size`` defaults to :data:`CPU_BATCH` on the CPU, where larger batches are no
    cheaper per scan but each concurrent batch's buffers add to the peak memory, and to
    :data:`GPU_BATCH` on a GPU, where the per-call overhead dominates.
    """

    def __init__(
        self,
        models: ModelSet,
        store: ResultsStore,
        *,
        workers: int | None = None,
        batch_size: int | None = None,
        min_batch: int = 2,
        cores: int | None = None,
    ) -> None:
        self.models = models
        self.store = store
        self.screener = Screener(models)
        available = cores or available_cores()
        # Tasks beyond the cores fill the core a thread leaves idle while it waits for the
        # GIL (cores.GIL_SPARE); decoder threads and inference slots stay per core.
        self.cores = CoreBudget(available, spare=GIL_SPARE if available > 1 else 0)
        self.workers = workers or self.cores.cores
        on_gpu = models.device.provider == CUDA
        self.batch_size = max(1, batch_size or (GPU_BATCH if on_gpu else CPU_BATCH))
        self.min_batch = max(1, min(min_batch, self.batch_size))
        # A GPU runs one batch at a time and needs no CPU core for it; on the CPU, a few
        # single-threaded batches side by side (inference.py explains why).
        self.inference_slots = 1 if on_gpu else inference_slots(self.cores.cores)
        self._inference_cores = 0 if on_gpu else default_threads(self.cores.cores)
        #: Scans decoding, waiting for inference or in inference, at most: the memory bound.
        self.max_in_flight = self.workers * 2 + self.batch_size * (self.inference_slots + 1)
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
        self,
        inputs: Sequence[str | Path] = (),
        *,
        resume: str | None = None,
        kind: str = BatchKind.SCREENING,
    ) -> Generator[Progress, None, BatchSummary]:
        """Screen ``inputs`` as a new batch of ``kind`` (:class:`BatchKind`), or continue
        the batch ``resume`` (which keeps its own kind)."""
        self._cancel.clear()
        device = self.models.device.describe()
        if resume is not None:
            info = self.store.batch(resume)
            if info is None:
                raise BatchError(f"no batch {resume!r} in the results store")
            batch_id = info.id
            _refuse_if_held(info)
            self.store.claim_batch(batch_id, self.models.key, device)
            discovered = Discovered()
            if self.store.item_count(batch_id) == 0:  # died before its file list was saved
                discovered = discover(info.inputs)
                self.store.set_items(batch_id, _items(discovered))
        else:
            discovered = discover(inputs)
            # Stored as full paths, as discover() reads them: "big2" typed in a terminal was
            # another history folder than the window's /data/big2, shown without its path.
            batch_id = self.store.create_batch(
                [str(Path(p).expanduser().absolute()) for p in inputs], self.models.key, device,
                kind,
            )  # fmt: skip
            self.store.set_items(batch_id, _items(discovered))

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
        inference = ThreadPoolExecutor(
            max_workers=self.inference_slots, thread_name_prefix="medscreen-infer"
        )
        # One kept image block per decoder thread: the next scan's decode reuses it instead
        # of faulting in fresh pages (loading.reused_image_buffers says why and what it costs).
        buffers = ExitStack()
        buffers.enter_context(reused_image_buffers(self.workers))
        try:
            for group in self._results(pool, inference, pending):
                # The scans that finished together (an inference batch) share one commit, so
                # one fsync, and none is reported before it returns (contract 5): a per-scan
                # fsync (~7 ms on the development VM, more on a clinic PC's disk) held this
                # thread for half of each scan at 70 scans/s, and capped a slow disk's rate.
                self.store.record_many(
                    batch_id,
                    [(d.seq, d.result) for d in group],
                    [d.index for d in group if d.index is not None],
                )
                for item in group:
                    result, reused = item.result, item.reused
                    if (done + 1) % TRIM_EVERY == 0:
                        release_free_memory()
                    summary.count(result.status)
                    summary.reused += int(reused)
                    done += 1
                    rate.tick()
                    per_second = rate.value()
                    eta = (total - done) / per_second if per_second > 0 else None
                    yield Progress(
                        batch_id,
                        done,
                        total,
                        result.file,
                        per_second,
                        eta,
                        result,
                        reused,
                        item.seq,
                    )
            finished = not self._cancel.is_set()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            inference.shutdown(wait=True, cancel_futures=True)
            buffers.close()
            release_free_memory()  # the reports written next need not sit on the batch's heap
            summary.cancelled = not finished
            summary.elapsed_s = time.perf_counter() - started
            status = BatchStatus.COMPLETED if finished else BatchStatus.CANCELLED
            self.store.finish_batch(batch_id, status)
        return summary

    def _results(
        self,
        pool: ThreadPoolExecutor,
        inference: ThreadPoolExecutor,
        pending: Iterable[tuple[int, str]],
    ) -> Generator[list[_Done], None, None]:
        """Yield every pending item once, in roughly input order, in groups that finished
        together.

        Runs on the calling thread and never computes: it keeps the decoders fed, hands every
        ready scan to a free inference slot, and yields what has finished (the caller commits
        each group before asking for the next).

        Every future reports itself, when done, on one queue that this thread blocks on; so a
        wake-up costs one queue read, where waiting on all the futures in flight at once
        (``concurrent.futures.wait``) took and released each one's lock, and registered and
        removed a waiter on each, at every wake-up: ~1 ms of GIL-holding bookkeeping a scan
        that the decoder and inference threads queued behind.
        """
        todo = iter(pending)
        exhausted = False
        completed: SimpleQueue[Future] = SimpleQueue()
        decoding: set[Future[_Outcome]] = set()
        ready: deque[_Ready] = deque()
        screening: dict[Future[list[ScanResult]], list[_Ready]] = {}
        held = 0  # scans decoding, ready or screening

        def dispatch() -> None:
            # A free slot takes every ready scan (up to batch_size). A small batch waits for
            # more while decoders are still busy: a lone scan costs inference far more.
            while (
                ready
                and len(screening) < self.inference_slots
                and (len(ready) >= self.min_batch or not decoding)
            ):
                batch = [ready.popleft() for _ in range(min(len(ready), self.batch_size))]
                future = inference.submit(self._infer_on_cores, batch)
                screening[future] = batch
                future.add_done_callback(completed.put)

        while True:
            if self._cancel.is_set():
                for future in (*decoding, *screening):
                    future.cancel()
                return
            while not exhausted and held < self.max_in_flight:
                item = next(todo, None)
                if item is None:
                    exhausted = True
                    break
                future = pool.submit(self._prepare_on_a_core, *item)
                decoding.add(future)
                future.add_done_callback(completed.put)
                held += 1

            dispatch()

            if not (decoding or ready or screening):
                if exhausted:
                    return
                continue

            # Block for one finished future, then take every other one already finished.
            done = [completed.get()]
            while not completed.empty():
                done.append(completed.get())
            group: list[_Done] = []
            for future in done:
                batch = screening.pop(future, None)
                if batch is not None:
                    held -= len(batch)
                    group.extend(self._screened(batch, future.result()))
                    continue
                decoding.discard(future)
                outcome = future.result()
                if isinstance(outcome, _Ready):
                    ready.append(outcome)
                else:
                    held -= 1
                    group.append(_Done(outcome.seq, outcome.result, isinstance(outcome, _Reused)))
            if group:
                dispatch()  # ready scans go to a free slot before the caller commits
                yield group

    def _prepare_on_a_core(self, seq: int, file: str) -> _Outcome:
        """Runs in a decoder thread: :meth:`_prepare` once a core of the budget is free."""
        with self.cores.use(1):
            return self._prepare(seq, file)

    def _infer_on_cores(self, ready: list[_Ready]) -> list[ScanResult]:
        """Runs in an inference thread: screen one batch on the session's share of cores.

        A model failure on one batch becomes an error row for each of its scans, never lost.
        """
        try:
            if self._inference_cores:
                with self.cores.use(self._inference_cores, urgent=True):
                    return self.screener.screen([r.prepared for r in ready])
            return self.screener.screen([r.prepared for r in ready])
        except Exception as exc:
            # As for a failed decode: the message may quote input (and is unbounded), so the
            # log gets the type and frames and each row a capped, type-only reason.
            log.error("inference failed for %d scans: %s", len(ready), exception_summary(exc))
            reason = cap_reason(f"inference failed ({type(exc).__name__})")
            return [
                _error_result(
                    r.prepared.file,
                    r.prepared.sha256,
                    ScanErrorCode.INTERNAL,
                    reason,
                    self.models.key,
                )
                for r in ready
            ]

    @staticmethod
    def _screened(ready: list[_Ready], results: list[ScanResult]) -> list[_Done]:
        """A screened batch's items to record, each file to be indexed unless it failed."""
        return [
            _Done(
                item.seq,
                result,
                index=None
                if result.status is ScanStatus.ERROR
                else (item.prepared.file, item.identity, item.probe, item.prepared.sha256),
            )
            for item, result in zip(ready, results, strict=True)
        ]

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
            # and wording (UNREADABLE, "this is a folder, not a file"); one that discovery
            # could not list is said so here, with the reason it cannot be listed.
            if S_ISDIR(stat.st_mode):
                _refuse_unlisted_folder(path)
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

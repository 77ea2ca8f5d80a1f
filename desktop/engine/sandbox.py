"""Native image decoders run in small child processes, where a crash costs one file.

Compressed DICOM pixel data (RLE, JPEG, JPEG-LS, JPEG 2000, HTJ2K) is decoded by native
plugins (pylibjpeg-rle in Rust, libjpeg and OpenJPEG in C/C++). Fuzzing found that a single
damaged byte makes pylibjpeg-rle raise a Rust ``PanicException``, which is a
``BaseException`` and escapes every ``except Exception``; a C decoder can do worse and take
the whole process down with a segfault. Either must cost one file, never the batch, so those
decoders run here, in a :class:`DecoderPool` of persistent worker processes:

* The parent sends only what pixel decoding needs (the pixel module attributes and the
  encapsulated Pixel Data, never the patient elements) and receives the stored pixel array.
* A worker that dies (segfault, abort, killed for memory) is replaced on the next call; the
  file whose decode killed it gets a DECODER_CRASHED row. A worker that does not answer
  within :data:`DECODE_TIMEOUT_S` is killed (DECODER_TIMEOUT).
* Workers are started lazily, as fresh interpreters (:mod:`desktop.engine.child_process`:
  a subprocess talking over its stdin and stdout, not multiprocessing, whose ``spawn`` also
  starts a resource tracker that would live as long as the app; ``fork`` from a process
  with decoder and ONNX Runtime threads can deadlock the child), and reused: starting one
  costs about a second, a call a few milliseconds on top of the decode (see
  ``benchmarks/bench_isolation.py``).
* On Linux each worker's address space is capped (:data:`WORKER_MEMORY_BYTES` above what it
  uses after start-up), so a decoder that tries to allocate without bound fails with a
  MemoryError there instead of pushing the machine into swap.
* Each worker owns its process and runs one decode at a time, so it can silence warnings
  process-wide (``warnings.simplefilter``) without the thread-safety problem that
  ``warnings.catch_warnings`` has in the multi-threaded parent.

A worker imports the module of the function it runs (sent by name), never the parent's main
module: the function must live in an importable module.

Plain rasters and uncompressed DICOM stay in the parent: Pillow and NumPy have no such
history in the fuzzing runs, and shipping their pixels to a child would cost throughput.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from desktop.engine import child_process
from desktop.engine.child_process import Receiver, Sender
from desktop.engine.errors import ScanError, ScanErrorCode, is_fatal

logger = logging.getLogger(__name__)

#: Seconds one isolated decode may take before its worker is killed (a 4,000² JPEG 2000
#: decodes in about a second on a slow laptop core).
DECODE_TIMEOUT_S: float = 60.0

#: Seconds a new worker may take to start (a Python interpreter importing NumPy and pydicom;
#: slow on a busy machine, but paid once per worker).
STARTUP_TIMEOUT_S: float = 120.0

#: Address space a worker may add after start-up (Linux only): enough for the largest image
#: the loader accepts, decoded, plus the decoder's own buffers.
WORKER_MEMORY_BYTES: int = 3 << 30

#: Pixel module elements a decoder needs, copied into the request (nothing else is sent).
PIXEL_KEYWORDS: tuple[str, ...] = (
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "NumberOfFrames",
)

Request = dict[str, Any]
WorkerFunction = Callable[[Request], np.ndarray]


def decode_pixel_request(request: Request) -> np.ndarray:
    """Decode the pixel data in ``request`` with pydicom's decoders (runs in a worker)."""
    from pydicom.dataset import Dataset, FileMetaDataset

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = request["transfer_syntax"]
    for keyword, value in request["elements"].items():
        setattr(ds, keyword, value)
    ds.PixelData = request["pixel_data"]
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds.pixel_array


@dataclass
class _Reply:
    """What a worker answers: an array, or the kind of failure and its exception type."""

    kind: str  # "ok", "truncated", "undecodable", "panic", "memory"
    detail: str = ""
    dtype: str = ""
    shape: tuple[int, ...] = field(default_factory=tuple)


def _classify(exc: BaseException) -> _Reply:
    name = type(exc).__name__
    if isinstance(exc, MemoryError):
        return _Reply("memory", name)
    if not isinstance(exc, Exception):  # a Rust panic (pyo3 PanicException) or the like
        return _Reply("panic", name)
    lowered = str(exc).lower()
    if any(s in lowered for s in ("less than expected", "truncat", "end of", "insufficient")):
        return _Reply("truncated", name)
    return _Reply("undecodable", name)


def _limit_memory(extra_bytes: int) -> None:
    """Cap this process's address space at what it uses now plus ``extra_bytes`` (Linux)."""
    try:
        import resource

        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[0])
        limit = pages * os.sysconf("SC_PAGE_SIZE") + extra_bytes
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ImportError, OSError, ValueError, AttributeError):
        pass  # not Linux: no cap, the header checks still bound what is decoded


def _quiet_stderr() -> None:
    """Send this worker's stderr to the null device (after start-up, so import errors show).

    Native decoders print their own failure text there (a Rust panic prints "thread panicked
    at ..."); the parent already turns every failure into the file's row with fixed text.
    """
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
    except OSError:
        pass


def child_main(requests: Receiver, replies: Sender) -> int:
    """A decoder worker's entry (:data:`desktop.engine.child_process.ENTRIES`): the function
    to run and the memory cap come first, then requests until the parent closes the pipe."""
    try:
        function, memory_bytes = requests.recv()
    except (EOFError, OSError):
        return 1
    _serve(requests, replies, function, memory_bytes)
    return 0


def _serve(
    requests: Receiver, replies: Sender, function: WorkerFunction, memory_bytes: int
) -> None:
    """A worker's loop: one request at a time until the parent closes the pipe."""
    os.environ["RUST_BACKTRACE"] = "0"  # a panic prints one line, not a backtrace
    warnings.simplefilter("ignore")  # this process is ours alone: safe, unlike in the parent
    import pydicom
    import pydicom.pixels  # noqa: F401

    # The parent reports every failure with fixed text; pydicom's own log lines (tracebacks
    # whose messages may quote values) have no reader here.
    logging.getLogger("pydicom").setLevel(logging.CRITICAL + 1)

    _limit_memory(memory_bytes)
    _quiet_stderr()
    replies.send(_Reply("ready"))
    while True:
        try:
            request = requests.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        try:
            array = np.ascontiguousarray(function(request))
        except BaseException as exc:
            if is_fatal(exc):
                return
            replies.send(_classify(exc))
            continue
        replies.send(_Reply("ok", dtype=array.dtype.str, shape=tuple(array.shape)))
        replies.send_bytes(memoryview(array).cast("B"))


class _Expired(Exception):
    """A worker did not answer in time and was killed."""


class _Worker:
    """One child process and the parent's ends of its pipes."""

    def __init__(self, function: WorkerFunction, memory_bytes: int) -> None:
        self.child = child_process.start("decoder")
        self.process = self.child.process
        self.started = False
        try:
            self.child.sender.send((function, memory_bytes))
        except BaseException:
            self.kill()
            raise

    def _within(self, seconds: float, read: Callable[[], Any]) -> Any:
        """``read()`` from the worker, killing it if that takes over ``seconds``: its pipe
        then closes and the read ends (:class:`_Expired`). A timer, not a poll of the pipe,
        because Windows cannot wait on an anonymous pipe with a timeout."""
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            with contextlib.suppress(OSError):
                self.process.kill()

        timer = threading.Timer(seconds, expire)
        timer.daemon = True
        timer.start()
        try:
            return read()
        except (EOFError, OSError):
            if expired.is_set():
                raise _Expired from None
            raise
        finally:
            timer.cancel()

    def _wait_started(self) -> None:
        """Wait for the worker's "ready" (imports done), so timeouts measure decodes only."""
        if self.started:
            return
        try:
            reply: _Reply = self._within(STARTUP_TIMEOUT_S, self.child.receiver.recv)
        except _Expired:
            raise RuntimeError("the decoder worker process did not start") from None
        if reply.kind != "ready":
            raise RuntimeError("the decoder worker process did not start")
        self.started = True

    def alive(self) -> bool:
        return child_process.alive(self.process)

    def _read_reply(self) -> tuple[_Reply, bytearray | None]:
        reply: _Reply = self.child.receiver.recv()
        payload = self.child.receiver.recv_bytes() if reply.kind == "ok" else None
        return reply, payload

    def call(self, request: Request, timeout_s: float) -> np.ndarray:
        try:
            self._wait_started()
        except (EOFError, OSError, RuntimeError) as exc:
            self.kill()
            raise _not_started(exc) from exc
        try:
            self.child.sender.send(request)
            reply, payload = self._within(timeout_s, self._read_reply)
        except _Expired:
            self.kill()
            raise ScanError(
                ScanErrorCode.DECODER_TIMEOUT,
                f"the image decoder did not finish within {timeout_s:.0f} s on this file "
                "and was stopped: the compressed pixel data is probably damaged",
            ) from None
        except (EOFError, OSError):
            raise self._crashed() from None
        if payload is not None:
            return np.frombuffer(payload, dtype=np.dtype(reply.dtype)).reshape(reply.shape)
        raise _failure(reply)

    def _crashed(self) -> ScanError:
        code = child_process.wait(self.process, 2.0)
        self.kill()
        how = "it stopped"
        if code is not None and code < 0:
            how = f"it was killed by signal {-code}"
            try:
                import signal

                how = f"it was killed by {signal.Signals(-code).name}"
            except ValueError:
                pass
        elif code is not None:
            how = f"it exited with status {code}"
        logger.warning("decoder worker died on a file (%s); a new one will be started", how)
        return ScanError(
            ScanErrorCode.DECODER_CRASHED,
            f"the decoder crashed on this file ({how}): its compressed pixel data is damaged "
            "or not supported; the rest of the batch was not affected",
        )

    def kill(self) -> None:
        self.child.close()
        if self.alive():
            with contextlib.suppress(OSError):
                self.process.kill()
        child_process.wait(self.process, 5.0)


def _not_started(exc: BaseException) -> ScanError:
    logger.error("cannot start a decoder worker process: %s", type(exc).__name__)
    return ScanError(
        ScanErrorCode.DECODER_CRASHED,
        f"the decoder process for compressed DICOM could not be started "
        f"({type(exc).__name__}); the file was not decoded",
    )


def _failure(reply: _Reply) -> ScanError:
    if reply.kind == "panic":
        logger.debug("decoder panicked (%s) on a file", reply.detail)
        return ScanError(
            ScanErrorCode.DECODER_CRASHED,
            f"the decoder crashed on this file (internal decoder error {reply.detail}): its "
            "compressed pixel data is damaged",
        )
    if reply.kind == "memory":
        return ScanError(
            ScanErrorCode.TOO_LARGE,
            "not enough memory to decode this file's compressed pixel data",
        )
    if reply.kind == "truncated":
        return ScanError(
            ScanErrorCode.TRUNCATED,
            "DICOM pixel data is truncated (file is incomplete or damaged)",
        )
    return ScanError(
        ScanErrorCode.UNSUPPORTED_IMAGE,
        f"DICOM compressed pixel data could not be decoded ({reply.detail}): the file may be "
        "damaged",
    )


class DecoderPool:
    """Up to ``size`` worker processes, started on demand and replaced when they die.

    Thread-safe: each call checks a worker out, so ``size`` decoder threads can decode at
    once. ``function`` must be a module-level function of an importable module (it is sent
    to the workers by name); the default decodes DICOM pixel data.
    """

    def __init__(
        self,
        size: int | None = None,
        *,
        function: WorkerFunction = decode_pixel_request,
        timeout_s: float = DECODE_TIMEOUT_S,
        memory_bytes: int = WORKER_MEMORY_BYTES,
    ) -> None:
        self.size = max(1, size or min(4, os.cpu_count() or 1))
        self.function = function
        self.timeout_s = timeout_s
        self.memory_bytes = memory_bytes
        self._idle: list[_Worker] = []
        self._count = 0
        self._closed = False
        self._ready = threading.Condition()

    def run(self, request: Request) -> np.ndarray:
        """Decode one request in a worker; raises :class:`ScanError` for every failure."""
        try:
            worker = self._checkout()
        except (OSError, RuntimeError, EOFError) as exc:
            raise _not_started(exc) from exc
        healthy = False
        try:
            result = worker.call(request, self.timeout_s)
            healthy = True
            return result
        except ScanError as err:
            healthy = (
                err.code
                not in (
                    ScanErrorCode.DECODER_CRASHED,
                    ScanErrorCode.DECODER_TIMEOUT,
                )
                or worker.alive()
            )
            raise
        except BaseException:
            healthy = False  # interrupted mid-call: the pipe may hold half a reply
            worker.kill()
            raise
        finally:
            self._checkin(worker, healthy and worker.alive())

    def _checkout(self) -> _Worker:
        with self._ready:
            while True:
                if self._closed:
                    raise RuntimeError("the decoder pool is closed")
                while self._idle:
                    worker = self._idle.pop()
                    if worker.alive():
                        return worker
                    worker.kill()
                    self._count -= 1
                if self._count < self.size:
                    self._count += 1
                    break
                self._ready.wait()
        try:
            return _Worker(self.function, self.memory_bytes)
        except BaseException:
            with self._ready:
                self._count -= 1
                self._ready.notify()
            raise

    def _checkin(self, worker: _Worker, healthy: bool) -> None:
        with self._ready:
            if healthy and not self._closed:
                self._idle.append(worker)
            else:
                worker.kill()
                self._count -= 1
            self._ready.notify()

    def close(self) -> None:
        """Stop every idle worker (busy ones stop when their call returns)."""
        with self._ready:
            self._closed = True
            idle, self._idle = self._idle, []
            self._count -= len(idle)
            self._ready.notify_all()
        for worker in idle:
            worker.kill()


_default: DecoderPool | None = None
_default_lock = threading.Lock()


def default_pool() -> DecoderPool:
    """The process's shared pool, created on first use (never at import)."""
    global _default
    with _default_lock:
        if _default is None or _default._closed:
            _default = DecoderPool()
        return _default


def decode_isolated(request: Request) -> np.ndarray:
    """Decode compressed DICOM pixel data in the shared pool (see :func:`build_request`)."""
    return default_pool().run(request)


def build_request(ds: Any, transfer_syntax: str) -> Request:
    """The pixel module of ``ds`` and its encapsulated Pixel Data: all a worker receives."""
    elements: dict[str, Any] = {}
    for keyword in PIXEL_KEYWORDS:
        if keyword in ds:
            value = ds.get(keyword)
            elements[keyword] = str(value) if keyword == "PhotometricInterpretation" else int(value)
    return {
        "transfer_syntax": str(transfer_syntax),
        "elements": elements,
        "pixel_data": bytes(ds.PixelData),
    }


__all__ = [
    "DECODE_TIMEOUT_S",
    "DecoderPool",
    "build_request",
    "decode_isolated",
    "decode_pixel_request",
    "default_pool",
]

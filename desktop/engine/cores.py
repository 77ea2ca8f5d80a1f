"""How many cores this process may use, and a budget that shares them between decoding and
inference without oversubscribing them.

Why a budget: on a 2-core clinic PC the batch runner has decoder threads (Pillow, pydicom,
NumPy; they release the GIL) and inference threads (ONNX Runtime). Left to the operating
system, four busy threads on two cores time-slice each other: every image's working set is
evicted and re-fetched, and a multi-threaded ONNX Runtime operator waits at its barrier for
the thread that was descheduled. With the budget, at most ``cores`` CPU-heavy tasks run at
once, so each runs at full speed, and whichever stage is slower simply gets the cores more
often: the slower stage sets the pace.

Inference asks *urgently*: a free core goes to a waiting inference task before another decode
starts, so scans that are ready do not wait behind the next decodes (and their memory is
released sooner); decoding keeps every core that inference does not need.

**One spare task** (:data:`GIL_SPARE`): the batch runner's budget admits one task more than
there are cores. Its threads run Python between their GIL-free stretches (decoding, resizing,
ONNX Runtime), and a thread that holds a core of the budget while it waits for Python's GIL
leaves that core idle: on the 2-core development VM the tasks holding the two cores were off
the CPU ~30 % of the time they held them (8-bit JPEG batch: 7.3 ms a scan, measured with
``time.thread_time`` against the wall clock), and the cores were busy 0.70 of the batch. With
one spare task a third thread takes the core while one waits: busy 0.88-0.92, 72-89 → 91-103
scans/s (alternated runs). Decoder threads and inference slots stay one per core; since
both slots now run beside the decoders, the runner's CPU batches are smaller (runner.py
``CPU_BATCH`` says why), so no more buffers are held at once than before.

**Two spare tasks** since 2 December: on a 2-core Intel Sapphire Rapids VM the threads
holding the budget still slept ~2 ms a JPEG scan while holding a core (GIL waits: 1.5 ms in
the decoder threads, 0.6 ms in inference, per-thread ``schedstat``), and with a second spare
(on two cores: both decoders and both inference slots at once) JPEG batches ran faster in 10
of 11 alternated pairs (median +6 %, busy 0.72 → 0.77 with other work on the machine), DICOM
and 16-bit PNG the same (9 and 3 pairs), CPU a scan and peak RSS unchanged. On the 2-core
AMD VM of 1 December a second spare had made no difference; more cores were not measured.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


def release_free_memory() -> None:
    """Give the heap memory freed by a finished batch back to the system (glibc only).

    glibc keeps freed memory in each thread's arena for reuse; after a batch, decoder and
    inference threads' arenas can hold tens of MB that the reports written next would sit
    on top of. ``malloc_trim(0)`` returns whole free pages. A no-op elsewhere.
    """
    if not sys.platform.startswith("linux"):
        return
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, looked up once: ``ctypes.util.find_library`` runs
    ``ldconfig -p`` in a child process at every call (a vfork of a 230 MB batch process
    every 256 scans). The C library is already loaded: ``CDLL(None)`` finds its symbols."""
    try:
        return ctypes.CDLL(None).malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        log.debug("malloc_trim is not available")
        return None


def available_cores() -> int:
    """CPUs this process may run on: its affinity mask (``taskset``, containers, job
    objects), not the machine's count, which overstates it on a shared or pinned machine."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


#: Tasks the batch runner's budget admits beyond the cores (module docstring): two, on two
#: cores or more (on one core a thread waiting for the GIL idles no core: the holder runs).
GIL_SPARE: int = 2


class CoreBudget:
    """A counting budget of cores: :meth:`use` blocks until ``n`` cores are free.

    Thread-safe. ``n`` is capped at the number of cores (a task never waits for more cores
    than exist). Urgent users are served before any non-urgent one starts. ``spare`` admits
    that many tasks beyond the cores (:data:`GIL_SPARE`); ``cores`` stays the machine's count.
    """

    def __init__(self, cores: int | None = None, *, spare: int = 0) -> None:
        self.cores = max(1, cores if cores is not None else available_cores())
        self.capacity = self.cores + max(0, spare)
        self._free = self.capacity
        self._urgent_waiting = 0
        self._cond = threading.Condition()

    @property
    def free(self) -> int:
        with self._cond:
            return self._free

    @contextmanager
    def use(self, n: int = 1, *, urgent: bool = False) -> Iterator[int]:
        """Hold ``n`` cores (at most all of them) for the ``with`` block; yields the count."""
        need = max(1, min(n, self.cores))
        with self._cond:
            if urgent:
                self._urgent_waiting += 1
            try:
                while self._free < need or (not urgent and self._urgent_waiting):
                    self._cond.wait()
            finally:
                if urgent:
                    self._urgent_waiting -= 1
            self._free -= need
        try:
            yield need
        finally:
            with self._cond:
                self._free += need
                self._cond.notify_all()

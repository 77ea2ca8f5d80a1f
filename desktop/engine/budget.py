"""A shared budget of decoded pixels, so the decoder threads cannot hold too much at once.

Each decoder thread checks an image's size against the per-image limit from its header,
but four threads that each decode an image just under that limit would hold four times
it. The runner gives every file a :class:`PixelLease` on one :class:`PixelBudget`; the
loader charges the lease with the image's pixel count once the header is known and before
any pixel is decoded, and the lease is returned when the file's scan has been reduced to
model inputs. Threads wait for budget rather than fail; an image larger than the whole
budget waits until it is alone (it is never refused by the budget, only by the per-image
limit), so nothing deadlocks.
"""

from __future__ import annotations

import threading
from types import TracebackType

#: Decoded pixels the decoder threads may hold at once: one image at the 60-megapixel limit,
#: or four 15-megapixel radiographs (ordinary scans never wait). The worst case measured is a
#: 16-bit PNG (stored values, their array, the float32 copy): four 59-megapixel ones decoded
#: by four threads peaked at 1,812 MiB resident with no budget and 1,033 MiB with this one
#: (``benchmarks/bench_pixel_budget.py``), in the same time.
DEFAULT_PIXEL_BUDGET: int = 64_000_000


class PixelBudget:
    """A counting budget of pixels in flight, shared by threads (a weighted semaphore)."""

    def __init__(self, capacity: int = DEFAULT_PIXEL_BUDGET) -> None:
        if capacity <= 0:
            raise ValueError(f"pixel budget must be positive, got {capacity}")
        self.capacity = capacity
        self.in_use = 0
        self.peak = 0  # the most ever held at once (for tests and benchmarks)
        self._holders = 0
        self._changed = threading.Condition()

    def lease(self) -> PixelLease:
        """A lease for one file: use it as a context manager around decode and preprocess."""
        return PixelLease(self)

    def _acquire(self, pixels: int) -> None:
        with self._changed:
            # An image larger than the whole budget runs alone: it waits for an empty pool.
            while self.in_use and self.in_use + pixels > self.capacity:
                self._changed.wait()
            self.in_use += pixels
            self._holders += 1
            self.peak = max(self.peak, self.in_use)

    def _release(self, pixels: int) -> None:
        with self._changed:
            self.in_use -= pixels
            self._holders -= 1
            self._changed.notify_all()


class PixelLease:
    """One file's claim on a :class:`PixelBudget`; released when the ``with`` block ends."""

    def __init__(self, budget: PixelBudget) -> None:
        self._budget = budget
        self.pixels = 0

    def reserve(self, pixels: int) -> None:
        """Wait until ``pixels`` more fit in the budget, then hold them (called by the loader).

        A second call adds to the first only after releasing it, so one file never waits for
        itself.
        """
        if pixels <= 0:
            return
        if self.pixels:
            total = self.pixels + pixels
            self.release()
            pixels = total
        self._budget._acquire(pixels)
        self.pixels = pixels

    def release(self) -> None:
        if self.pixels:
            self._budget._release(self.pixels)
            self.pixels = 0

    def __enter__(self) -> PixelLease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

"""What a batch reports: :class:`Progress` after each scan and the :class:`BatchSummary` at the
end (the runner's generator contract; :mod:`desktop.engine.runner` re-exports both).

Why a module of their own: the window's batch runs in a child process and these travel
back as pickles, and unpickling an object imports the module its class is defined in. While
they lived in :mod:`desktop.engine.runner`, the window's first event imported the runner and
with it ONNX Runtime, the screening pipeline, pydicom, Pillow's decoders and ``requests``
(+44 MB RSS in the window, measured import by import on 2 December 2026) — though the window
opens no session. This module imports only the results and the (light) discovery types.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from desktop.engine.discovery import Discovered
from desktop.engine.results import ScanResult, ScanStatus


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
    #: The item's ``seq`` in the batch (its row in the store): the window's table keeps
    #: only this per row and reads the result back from the store when it needs it.
    seq: int | None = None

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


__all__ = ["BatchSummary", "Progress"]

"""Helpers shared by the report writers: atomic files, number formatting.

The status words, the flag rule and the counts are the engine's (``desktop.engine.results``);
the names below hand them to the writers, they define nothing of their own.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from desktop.engine.reports.context import ReportContext
from desktop.engine.results import STATUS_TEXT as STATUS_TEXT  # the one wording
from desktop.engine.results import BatchCounts, ScanResult, flags_for

#: The engine's batch totals under the name the writers use.
Counts = BatchCounts


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success move it over ``path`` in one step.

    A clinic PC can lose power mid-write: ``os.replace`` within one folder is atomic, so the
    report is either the old one, the complete new one, or absent — never half written. On
    any error the temporary file is removed and ``path`` is left untouched. The temporary
    file is created with the user's umask (not ``mkstemp``'s owner-only mode), so the report
    gets the permissions any other file the user saves there would get.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_atomic(path: Path, produce: Callable[[IO[bytes]], None]) -> Path:
    """Let ``produce`` write binary content, atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "wb") as handle:
        produce(handle)
    return Path(path)


def fmt_score(value: float | None) -> str:
    """A probability as a 4-digit decimal; empty when absent or not a number."""
    if value is None or not math.isfinite(value):
        return ""
    return f"{value:.4f}"


def json_number(value: float | None) -> float | None:
    """JSON has no NaN/Infinity: absent or non-finite numbers become null."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def scan_flags(result: ScanResult, ctx: ReportContext) -> dict[str, bool | None]:
    """Each finding model's flag (None where it did not run), in the report's column order."""
    flags = flags_for(result, ctx.finding_manifests, ctx.choice)
    return {mid: flags.get(mid) for mid in ctx.finding_ids}


def count(results: Iterable[ScanResult], ctx: ReportContext) -> BatchCounts:
    """The batch totals at the report's operating point (the engine's :class:`BatchCounts`)."""
    return BatchCounts.of(results, ctx.finding_manifests, ctx.choice)


def identifiers(result: ScanResult) -> tuple[str, str]:
    """(patient name, patient id) as text; only call when the user opted in."""
    name = result.metadata.get("patient_name")
    pid = result.metadata.get("patient_id")
    return ("" if name is None else str(name), "" if pid is None else str(pid))

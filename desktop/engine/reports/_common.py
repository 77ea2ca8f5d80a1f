"""Helpers shared by the report writers: atomic files, number formatting.

The status words, the flag rule and the counts are the engine's (``desktop.engine.results``);
the names below hand them to the writers, they define nothing of their own.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from desktop.engine.patients import GroupDecision, ScopeVerdict
from desktop.engine.processes import pid_alive
from desktop.engine.reports.context import ReportContext
from desktop.engine.results import STATUS_TEXT as STATUS_TEXT  # the one wording
from desktop.engine.results import BatchCounts, ScanResult, finding_flags, operating_points

#: The engine's batch totals under the name the writers use.
Counts = BatchCounts


logger = logging.getLogger(__name__)

#: Age after which a temporary report file whose writer cannot be identified is removed.
STALE_PART_S = 24 * 3600

#: Excel's (and LibreOffice's) limit on the characters of one cell: longer cells are cut
#: or spill into the next row, shifting every column after them.
EXCEL_CELL_CHARS = 32_767

#: Longest text one PDF paragraph shows. A table row taller than a page makes reportlab
#: give up (``LayoutError``) and the whole report is lost; 1,000 characters always fit.
PDF_TEXT_CHARS = 1_000


def clip_text(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, saying how long it was.

    Reasons are capped where they are made; this is the writers' own guard, so no text from
    a result (a reason, a warning, a DICOM value) can make a report fail or mis-parse.
    """
    if len(text) <= limit:
        return text
    marker = f"… [cut: {len(text):,} characters in all]"
    return text[: max(0, limit - len(marker))] + marker


def _remove_stale_parts(path: Path) -> None:
    """Delete temporary files a killed writer left beside ``path`` (see :func:`atomic_open`).

    A ``.part`` file is stale when the process that made it is gone (its pid is in the name)
    or, for one from another machine or an older version, when it is a day old: a live
    writer on this machine is never disturbed.
    """
    prefix = f".{path.name}."
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(".part")):
            continue
        middle = name[len(prefix) : -len(".part")].split(".")
        pid = int(middle[0]) if len(middle) == 2 and middle[0].isdigit() else None
        try:
            age = time.time() - entry.stat(follow_symlinks=False).st_mtime
            if (pid is not None and pid != os.getpid() and not pid_alive(pid)) or (
                age > STALE_PART_S
            ):
                os.unlink(entry.path)
                logger.info("removed a temporary file left by an interrupted write: %s", name)
        except OSError:
            continue


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success move it over ``path`` in one step.

    A clinic PC can lose power mid-write: ``os.replace`` within one folder is atomic, so the
    report is either the old one, the complete new one, or absent — never half written. On
    any error the temporary file is removed and ``path`` is left untouched; one left by a
    writer that was killed (its pid is in the name) is removed by the next write. The temporary
    file is created with the user's umask (not ``mkstemp``'s owner-only mode), so the report
    gets the permissions any other file the user saves there would get.
    """
    path = Path(path)
    _remove_stale_parts(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.part")
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
    points = operating_points(ctx.finding_manifests, ctx.choice)
    flags = finding_flags(result, points, ctx.scope_rule)
    return {mid: flags.get(mid) for mid in ctx.finding_ids}


def scan_scope(result: ScanResult, ctx: ReportContext) -> dict[str, ScopeVerdict]:
    """The models that ran on ``result`` outside their scope, with the reason (engine rule)."""
    return ctx.scope_rule.verdicts(result)


def scan_group(result: ScanResult, ctx: ReportContext) -> GroupDecision:
    """The scan's patient group and where it came from (staff, file, image)."""
    return ctx.scope_rule.group(result)


def count(results: Iterable[ScanResult], ctx: ReportContext) -> BatchCounts:
    """The batch totals at the report's operating point (the engine's :class:`BatchCounts`)."""
    return BatchCounts.tally(
        results, operating_points(ctx.finding_manifests, ctx.choice), ctx.scope_rule
    )


def identifiers(result: ScanResult) -> tuple[str, str]:
    """(patient name, patient id) as text; only call when the user opted in."""
    name = result.metadata.get("patient_name")
    pid = result.metadata.get("patient_id")
    return ("" if name is None else str(name), "" if pid is None else str(pid))

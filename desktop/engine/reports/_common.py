"""Helpers shared by the report writers: number formatting, text limits (atomic files are
:mod:`desktop.engine.atomic`'s, re-exported here).

The status words, the flag rule and the counts are the engine's (``desktop.engine.results``);
the names below hand them to the writers, they define nothing of their own.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from desktop.engine.atomic import atomic_open as atomic_open  # the writers' name for it
from desktop.engine.atomic import write_atomic as write_atomic
from desktop.engine.patients import GroupDecision, ScopeVerdict
from desktop.engine.reports.context import ReportContext
from desktop.engine.results import STATUS_TEXT as STATUS_TEXT  # the one wording
from desktop.engine.results import BatchCounts, ScanResult, finding_flags, operating_points

#: The engine's batch totals under the name the writers use.
Counts = BatchCounts


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

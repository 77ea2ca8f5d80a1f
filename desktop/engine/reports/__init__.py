"""Screening reports (PDF, CSV, JSON), the same from the app and from the command line.

The writers live in the engine — no Qt, no TensorFlow — so ``medscreen classify --report
pdf,csv,json`` and the GUI's "Export report" produce identical files headless. Every writer
replaces its file atomically, and none writes patient identifiers (name, ID, birth date)
unless :attr:`ReportContext.include_identifiers` is set.

Usage::

    ctx = ReportContext(batch_id, datetime.now(UTC), __version__, manifests,
                        ThresholdChoice.parse("screening"), "CPU (CPUExecutionProvider)")
    write_reports(results, ctx, out_dir, ["pdf", "csv", "json"])  # medscreen-<clinic>-<date>-…
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from desktop.engine.reports.context import ReportContext, report_file_stem
from desktop.engine.reports.pdf import write_pdf, write_pdf_files
from desktop.engine.reports.source import StoredBatch, reiterable
from desktop.engine.reports.tabular import CSV_COLUMNS, csv_columns, write_csv, write_json
from desktop.engine.results import ScanResult

logger = logging.getLogger(__name__)

#: Report formats by name, in the order ``write_reports`` writes them.
FORMATS = ("csv", "json", "pdf")


def parse_formats(formats: Iterable[str]) -> list[str]:
    """Normalise ``["PDF", "csv,json"]``-style input; raise ValueError on an unknown name."""
    wanted: list[str] = []
    for item in formats:
        for name in str(item).split(","):
            name = name.strip().lower()
            if not name:
                continue
            if name not in FORMATS:
                raise ValueError(
                    f"unknown report format {name!r}; choose from {', '.join(FORMATS)}"
                )
            if name not in wanted:
                wanted.append(name)
    return [name for name in FORMATS if name in wanted]


def default_stem(ctx: ReportContext) -> str:
    """The default file name (no extension) of ``ctx``'s reports: the one rule,
    :func:`~desktop.engine.reports.context.report_file_stem`, on its clinic, time and batch."""
    return report_file_stem(ctx.clinic_name, ctx.created_at, ctx.batch_id)


def write_reports(
    results: Iterable[ScanResult],
    ctx: ReportContext,
    out_dir: Path,
    formats: Iterable[str],
    stem: str | None = None,
) -> list[Path]:
    """Write each requested format as ``out_dir/<stem>.<ext>``; returns the paths written.

    ``stem`` defaults to :func:`default_stem` (``medscreen-<clinic>-<date>-<batch>``, the
    name the window proposes too), so the command line and the window name a batch's
    reports alike; an explicit name (the window's save dialog, ``--name``) replaces it.
    Formats are checked before anything is written, so a typo does not leave a partial set.
    The file names come from ``stem`` or the context only — never from patient data.
    """
    if stem is None:
        stem = default_stem(ctx)
    names = parse_formats(formats)
    if not names:
        raise ValueError("no report format requested")
    if not stem or Path(stem).name != stem:
        raise ValueError(f"report name {stem!r} must be a plain file name without folders")
    ctx.points()  # an unknown operating point fails here, before any file is written
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = reiterable(results)  # each writer makes its own passes (reports/source.py)
    written: list[Path] = []
    for name in names:
        target = out_dir / f"{stem}.{name}"
        if name == "pdf":  # a report with many flagged scans continues in more files
            written += write_pdf_files(results, ctx, target)
        else:
            written.append({"csv": write_csv, "json": write_json}[name](results, ctx, target))
    return written


__all__ = [
    "CSV_COLUMNS",
    "FORMATS",
    "ReportContext",
    "StoredBatch",
    "csv_columns",
    "default_stem",
    "parse_formats",
    "write_csv",
    "write_json",
    "write_pdf",
    "write_reports",
]

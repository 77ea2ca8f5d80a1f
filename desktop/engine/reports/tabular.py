"""CSV and JSON reports: one row / one object per scan, for spreadsheets and other programs."""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from desktop.engine.manifest import ModelManifest
from desktop.engine.paths import display_path
from desktop.engine.quality import quality_of, shown_modality, shown_modality_score
from desktop.engine.reports._common import (
    EXCEL_CELL_CHARS,
    atomic_open,
    clip_text,
    count,
    fmt_score,
    identifiers,
    json_number,
    scan_flags,
    scan_group,
    scan_scope,
)
from desktop.engine.reports.context import ReportContext
from desktop.engine.reports.source import reiterable
from desktop.engine.results import ScanResult

logger = logging.getLogger(__name__)

_HEAD = ("file", "sha256", "status", "reason", "error_code", "modality", "modality_score")
#: the scan's patient group, where it came from, and every model it was outside the scope of
_SCOPE = ("patient_group", "patient_group_source", "outside_scope")
#: the plain quality code and words of a refused or failed scan, and the reader's decision
_READING = ("quality", "quality_text", "reader_decision", "reader_note", "reader", "decided_at")
_TAIL = ("operating_point", "warnings", "screened_at", "models")
_IDENTIFIER_COLUMNS = ("patient_name", "patient_id")

#: The CSV header with today's finding models (``tb``, ``pneumonia``) and no identifiers.
#: The command line's ``results.csv`` is this same file. Other finding models get their own
#: ``<id>_score``/``<id>_flag`` pair in manifest order: see :func:`csv_columns`.
CSV_COLUMNS: tuple[str, ...] = (
    *_HEAD,
    "tb_score",
    "tb_flag",
    "pneumonia_score",
    "pneumonia_flag",
    *_SCOPE,
    *_READING,
    *_TAIL,
)

#: Characters that make Excel, LibreOffice and Google Sheets treat a cell as a formula.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

JSON_SCHEMA = "medscreen.report"
JSON_SCHEMA_VERSION = 1


def csv_columns(ctx: ReportContext) -> tuple[str, ...]:
    """The CSV header for ``ctx``: a score and flag column per finding model, in order."""
    findings = tuple(col for mid in ctx.finding_ids for col in (f"{mid}_score", f"{mid}_flag"))
    extra = _IDENTIFIER_COLUMNS if ctx.include_identifiers else ()
    # developer option only: the column is there exactly when a model was not verified
    unsigned = ("unsigned_models",) if ctx.unsigned_models else ()
    return (*_HEAD, *findings, *_SCOPE, *_READING, *_TAIL, *extra, *unsigned)


def safe_cell(text: str) -> str:
    """Neutralise spreadsheet formula injection in a text cell.

    A scan named ``=HYPERLINK("http://…")`` or ``@SUM(…)`` would otherwise run as a formula
    when the CSV is opened in a spreadsheet (OWASP "CSV injection"). A leading apostrophe makes
    every common spreadsheet show the text as typed; only cells that would start a formula
    are touched, so ordinary names and numbers are unchanged. A cell longer than Excel's
    32,767 characters is cut (saying so), since Excel would otherwise break the row.
    """
    text = "'" + text if text.startswith(_FORMULA_START) else text
    return clip_text(text, EXCEL_CELL_CHARS)


def _flag_text(flag: bool | None) -> str:
    return "" if flag is None else ("yes" if flag else "no")


def _row_point_label(result: ScanResult, ctx: ReportContext, op_label: str) -> str:
    """The batch's operating point, plus the threshold this scan was judged at wherever a
    model's point is chosen per patient group (the scan's group's own, or the default when
    its group is unknown)."""
    if not result.findings:
        return op_label
    own = [
        f"{mid} {p.group or 'group unknown'} {p.threshold:.3f}"
        for mid, p in ctx.scan_points(result).items()
        if p.group or p.by_group
    ]
    return f"{op_label} ({'; '.join(own)})" if own else op_label


def _csv_row(result: ScanResult, ctx: ReportContext, op_label: str) -> list[str]:
    flags = scan_flags(result, ctx)
    row: list[str] = [
        safe_cell(display_path(result.file)),
        result.sha256 or "",
        str(result.status),
        safe_cell(result.reason),
        result.error_code or "",
        safe_cell(shown_modality(result)),  # the window's and the PDF's (quality.py)
        fmt_score(shown_modality_score(result)),
    ]
    for mid in ctx.finding_ids:
        finding = result.findings.get(mid)
        row.append(fmt_score(None if finding is None else finding.probability))
        row.append(_flag_text(flags[mid]))
    group = scan_group(result, ctx) if result.findings else None
    row += [
        "" if group is None or group.group is None else group.group.value,
        "" if group is None or group.group is None else group.source.value,
        safe_cell("; ".join(v.reason for v in scan_scope(result, ctx).values())),
    ]
    quality = quality_of(result)
    decision = ctx.decision_of(result)
    row += [
        "" if quality is None else str(quality.code),
        "" if quality is None else quality.text,
        "" if decision is None else str(decision.decision),
        "" if decision is None else safe_cell(decision.note),
        "" if decision is None else safe_cell(decision.reader),
        "" if decision is None else decision.decided_at,
    ]
    row += [
        _row_point_label(result, ctx, op_label),
        safe_cell("; ".join(result.warnings)),
        result.screened_at,
        safe_cell(result.models_key),
    ]
    if ctx.include_identifiers:
        name, _ = identifiers(result)
        row += [safe_cell(name), safe_cell(ctx.patient_id_of(result))]  # typed ID if none
    if ctx.unsigned_models:
        row.append("; ".join(ctx.unsigned_models))
    return row


def write_csv(results: Iterable[ScanResult], ctx: ReportContext, path: Path) -> Path:
    """Write one row per scan to ``path`` (atomically); returns ``path``.

    The file is UTF-8 *with* a byte-order mark: without it Excel on Windows — what most
    clinics open CSVs with — guesses the legacy ANSI code page and shows "JosÃ©" for "José";
    with it every spreadsheet and Python's ``utf-8-sig`` read the text right. Rows end in
    CRLF, as RFC 4180 and Excel expect. Rows are streamed, so a generator of results works.
    """
    path = Path(path)
    op_label = ctx.operating_point_label()  # also fails early on an unknown operating point
    sites = ctx.site_calibration_lines()  # issue 13: a site threshold's date, n and CIs
    if sites:
        op_label = f"{op_label} (site threshold: {'; '.join(sites)})"
    private = ctx.include_identifiers  # names patients: owner-only, as the store
    with atomic_open(path, "w", private=private, encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(csv_columns(ctx))
        rows = 0
        for result in results:
            writer.writerow(_csv_row(result, ctx, op_label))
            rows += 1
    logger.info("wrote CSV report with %d scans to %s", rows, path.name)
    return path


# --- JSON -------------------------------------------------------------------------------


def _probabilities(values: dict[str, float]) -> dict[str, float | None]:
    return {str(k): json_number(v) for k, v in values.items()}


def _model_info(manifest: ModelManifest) -> dict[str, Any]:
    return {
        "id": manifest.id,
        "name": manifest.name,
        "version": manifest.version,
        "role": manifest.role,
        "task": manifest.task,
        "labels": list(manifest.labels),
        "positive_label": manifest.positive_label,
        "sha256": manifest.sha256,
        "key": manifest.key,
        "manifest_sha256": manifest.manifest_sha256,
        "signed": not manifest.unsigned,
        "metrics": _jsonable(manifest.metrics),
        "scope": None
        if manifest.scope is None
        else {
            "age_years": [manifest.scope.age_min, manifest.scope.age_max],
            "views": list(manifest.scope.views),
            "summary": manifest.scope.summary,
        },
    }


def _jsonable(value: object) -> object:
    """Metadata values as JSON: tuples become lists, numpy scalars numbers, the rest text."""
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return json_number(value)
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def _scan_json(result: ScanResult, ctx: ReportContext) -> dict[str, Any]:
    flags = scan_flags(result, ctx)
    points = ctx.scan_points(result)  # the scan's patient group's own thresholds
    findings: dict[str, Any] = {}
    for mid, finding in result.findings.items():
        point = points.get(mid)
        findings[mid] = {
            "model_key": finding.model_key,
            "probability": json_number(finding.probability),
            "probabilities": _probabilities(finding.probabilities),
            "threshold": None if point is None else point.threshold,
            "threshold_group": None if point is None else point.group,
            "flag": flags.get(mid),
        }
    metadata = result.metadata if ctx.include_identifiers else result.public_metadata()
    if ctx.include_identifiers and ctx.patient_id_of(result) and not metadata.get("patient_id"):
        metadata = {**metadata, "patient_id": ctx.patient_id_of(result)}  # typed in the viewer
    group = scan_group(result, ctx)
    outside = scan_scope(result, ctx)
    for mid, verdict in outside.items():
        if mid in findings:
            findings[mid]["outside_scope"] = verdict.reason
    estimate = result.group_estimate
    quality = quality_of(result)
    decision = ctx.decision_of(result)
    return {
        "file": display_path(result.file),
        # The exact bytes of a name that is not valid Unicode (hex), so a program can open it.
        "file_bytes": None if display_path(result.file) == result.file else _raw_name(result.file),
        "sha256": result.sha256,
        "status": str(result.status),
        "reason": result.reason,
        "error_code": result.error_code,
        "modality": shown_modality(result) or None,  # what the window and the PDF show
        "modality_score": json_number(shown_modality_score(result)),
        "modality_probabilities": _probabilities(result.modality_probabilities),
        "ood_score": json_number(result.ood_score),
        "findings": findings,
        "flags": flags,
        "patient_group": {
            "group": None if group.group is None else group.group.value,
            "source": group.source.value,
            "age_years": json_number(group.age_years),
            "detail": group.detail,
            "image_estimate": None
            if estimate is None
            else {**estimate.as_dict(), "group": estimate.group.value},
        },
        "outside_scope": {mid: v.reason for mid, v in outside.items()},
        "quality": None if quality is None else {"code": str(quality.code), "text": quality.text},
        "reader_decision": None
        if decision is None
        else {
            "decision": str(decision.decision),
            "text": decision.text,
            "note": decision.note,
            "reader": decision.reader,
            "decided_at": decision.decided_at,
        },
        "warnings": list(result.warnings),
        "metadata": _jsonable(metadata),
        "models_key": result.models_key,
        "screened_at": result.screened_at,
    }


def _raw_name(file: str) -> str:
    """The name's bytes as the file system holds them, in hex (``bytes.fromhex`` reverses)."""
    return os.fsencode(file).hex()


def report_document(results: Iterable[ScanResult], ctx: ReportContext) -> dict[str, Any]:
    """The whole JSON report as a dict (no image data: thumbnails and maps stay out)."""
    results = reiterable(results)
    document = _report_head(results, ctx)
    document["scans"] = [_scan_json(r, ctx) for r in results]
    return document


def _report_head(results: Iterable[ScanResult], ctx: ReportContext) -> dict[str, Any]:
    """Everything in the JSON report but its ``scans`` (one pass over ``results``, counting)."""
    from desktop import DISCLAIMER

    points = ctx.points()
    sites = ctx.site_calibrations()
    counts = count(results, ctx)
    return {
        "schema": JSON_SCHEMA,
        "schema_version": JSON_SCHEMA_VERSION,
        "title": ctx.title,
        "disclaimer": DISCLAIMER,
        "batch": {
            "id": ctx.batch_id,
            "created_at": ctx.created_at.isoformat(),
            "app_version": ctx.app_version,
            "device": ctx.device,
            "clinic_name": ctx.clinic_name,
            "operator": ctx.operator,
            "include_identifiers": ctx.include_identifiers,
            "unsigned_models": list(ctx.unsigned_models),
            # a batch stopped before the end: these files are in no row of this report
            "files_not_screened": ctx.files_not_screened,
            # ... because it is still being screened (an export mid-run), not stopped
            "still_being_screened": ctx.still_being_screened,
            # the command that continues it with the same store and outputs ("" if not given)
            "resume_command": ctx.resume_command,
            # the scans are a selection out of this many of the batch (0: all of them)
            "selected_from": ctx.selected_from,
            # files with the same content as another file of the batch (each is counted)
            "same_content_copies": ctx.same_content_copies,
        },
        "operating_point": {
            "label": ctx.operating_point_label(),
            "name": ctx.choice.name,
            "custom_threshold": ctx.choice.threshold,
            "models": {
                mid: {
                    "name": p.name,
                    "threshold": p.threshold,
                    # the manifest's per-patient-group thresholds (threshold: group unknown)
                    **(
                        {"by_group": {g: gp.threshold for g, gp in p.by_group}}
                        if p.by_group
                        else {}
                    ),
                    # each group's threshold with its own validation figures: the pooled
                    # ones below belong to the group-unknown threshold only
                    **(
                        {
                            "by_group_validation": {
                                g: {"sensitivity": gp.sensitivity, "specificity": gp.specificity}
                                for g, gp in p.by_group
                            }
                        }
                        if p.by_group and mid not in sites
                        else {}
                    ),
                    # a site point's figures are the site's, stated in site_calibration
                    "validation_sensitivity": None if mid in sites else p.sensitivity,
                    "validation_specificity": None if mid in sites else p.specificity,
                    "site_calibration": sites[mid].to_dict() if mid in sites else None,
                }
                for mid, p in points.items()
            },
        },
        "models": {mid: _model_info(m) for mid, m in ctx.manifests.items()},
        "patients": {
            "batch": ctx.patients.label(),
            "overrides": {sha: g.value for sha, g in ctx.patients.overrides.items()},
        },
        "counts": {
            "total": counts.total,
            "screened": counts.screened,
            "not_chest_xray": counts.not_chest_xray,
            "errors": counts.errors,
            "flagged": counts.flagged,
            "flagged_any": counts.flagged_any,
            "outside_scope": counts.outside_scope,
            "outside_scope_any": counts.outside_scope_any,
        },
    }


def write_json(results: Iterable[ScanResult], ctx: ReportContext, path: Path) -> Path:
    """Write the full-detail JSON report to ``path`` (atomically, UTF-8); returns ``path``.

    Streamed: one pass counts, a second writes one scan at a time, so memory does not grow
    with the batch. The text is exactly ``json.dumps(report_document(...), indent=2)``.
    """
    path = Path(path)
    results = reiterable(results)
    head = json.dumps(_report_head(results, ctx), ensure_ascii=False, indent=2, allow_nan=False)
    scans = 0
    private = ctx.include_identifiers  # names patients: owner-only, as the store
    with atomic_open(path, "w", private=private, encoding="utf-8", newline="\n") as handle:
        handle.write(head[: -len("\n}")])  # reopen the object to append "scans" last
        handle.write(',\n  "scans": [')
        for result in results:
            item = json.dumps(
                _scan_json(result, ctx), ensure_ascii=False, indent=2, allow_nan=False
            )
            handle.write(("," if scans else "") + "\n    " + item.replace("\n", "\n    "))
            scans += 1
        handle.write("\n  ]\n}\n" if scans else "]\n}\n")
    logger.info("wrote JSON report with %d scans to %s", scans, path.name)
    return path

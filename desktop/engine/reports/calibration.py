"""The record of a site calibration: a ROC figure (PNG), a one-page PDF and a JSON file.

What a programme files when it sets a site threshold: which model version, which labelled
scans (and which were left out, and why), the curve with the chosen point on it, the
figures with their confidence intervals, and what the threshold means per 1,000 screened.
Drawn with Pillow and reportlab — matplotlib is a training tool, not a runtime dependency.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from PIL import Image, ImageDraw, ImageFont
from reportlab.graphics.shapes import Circle, Drawing, Group, Line, PolyLine, String
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from desktop.engine.calibration import Calibration, PointStats
from desktop.engine.reports._common import atomic_open, write_atomic
from desktop.engine.reports.pdf import fonts_dir, register_fonts
from desktop.engine.site_points import SITE_PREFIX, SiteCalibration

log = logging.getLogger(__name__)

JSON_SCHEMA = "medscreen-site-calibration"
_CURVE = (31, 94, 168)
_POINT = (214, 69, 30)
_MAX_EXCLUDED_LISTED = 60


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _ci(pair: tuple[float, float]) -> str:
    return f"{pair[0]:.2f}–{pair[1]:.2f}"


def figure_lines(cal: SiteCalibration, point: PointStats, prevalence: float) -> list[str]:
    """The figures in words, the same lines for the CLI, the PDF and the dialog."""
    per = point.per_thousand(prevalence)
    how = (
        f"the highest threshold reaching the target sensitivity {cal.target_sensitivity:.2f}"
        if cal.chosen_by == "target" and cal.target_sensitivity is not None
        else "chosen by hand on the curve"
    )
    return [
        f"labelled scans used: {cal.n} ({cal.n_positive} with the disease, {cal.n_negative} "
        f"without); left out: {cal.n_excluded}",
        f"AUC {cal.auc:.3f} (95% CI {_ci(cal.auc_ci)}, stratified bootstrap, "
        f"{cal.bootstrap_resamples} resamples)",
        f"threshold {cal.threshold:.4f} ({how})",
        f"sensitivity {cal.sensitivity:.3f} (95% CI {_ci(cal.sensitivity_ci)}), "
        f"specificity {cal.specificity:.3f} (95% CI {_ci(cal.specificity_ci)}) — Wilson intervals",
        f"confusion: {cal.tp} true positives, {cal.fn} missed, {cal.fp} false alarms, "
        f"{cal.tn} true negatives",
        f"per 1,000 screened at the labelled prevalence ({_pct(prevalence)}): "
        f"{per.flagged:.0f} flagged, {per.true_positive:.0f} cases found, "
        f"{per.false_negative:.0f} missed, {per.false_positive:.0f} false alarms",
    ]


# --- PNG ---------------------------------------------------------------------------------


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.truetype(str(fonts_dir() / "DejaVuSans.ttf"), size)
    except OSError:
        return ImageFont.load_default()


def roc_image(
    calibration: Calibration, point: PointStats, title: str, size: int = 640
) -> Image.Image:
    """The ROC curve with the diagonal, the chosen point and its sensitivity/specificity."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = 70, 50, size - 25, size - 60
    w, h = right - left, bottom - top

    def xy(fpr: float, tpr: float) -> tuple[float, float]:
        return left + fpr * w, bottom - tpr * h

    small, label = _font(12), _font(14)
    for i in range(11):
        v = i / 10
        x, y = xy(v, v)
        draw.line([(x, top), (x, bottom)], fill=(232, 232, 232))
        draw.line([(left, y), (right, y)], fill=(232, 232, 232))
        if i % 2 == 0:
            draw.text((x, bottom + 6), f"{v:.1f}", fill="black", font=small, anchor="mt")
            draw.text((left - 6, y), f"{v:.1f}", fill="black", font=small, anchor="rm")
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.line([xy(0, 0), xy(1, 1)], fill=(170, 170, 170), width=1)
    fpr, tpr = calibration.roc.points()
    curve = [xy(float(f), float(t)) for f, t in zip(fpr, tpr, strict=True)]
    curve.append(xy(1.0, 1.0))
    draw.line(curve, fill=_CURVE, width=3, joint="curve")
    px, py = xy(1.0 - point.specificity, point.sensitivity)
    draw.ellipse([px - 7, py - 7, px + 7, py + 7], fill=_POINT, outline="black")
    draw.text(
        (px + 10, py + 10),
        f"threshold {point.threshold:.3f}\nsens {point.sensitivity:.2f}, spec "
        f"{point.specificity:.2f}",
        fill=_POINT,
        font=small,
    )
    draw.text((size / 2, 18), title, fill="black", font=label, anchor="mm")
    draw.text(
        (left + 8, bottom - 8),
        f"AUC {calibration.auc:.3f} ({_ci(calibration.auc_ci)})",
        fill="black",
        font=label,
        anchor="ld",
    )
    draw.text((left + w / 2, size - 22), "1 − specificity", fill="black", font=label, anchor="mm")
    vertical = Image.new("RGB", (160, 20), "white")
    ImageDraw.Draw(vertical).text((80, 10), "sensitivity", fill="black", font=label, anchor="mm")
    vertical = vertical.rotate(90, expand=True)
    image.paste(vertical, (8, top + h // 2 - 80))
    return image


def write_roc_png(calibration: Calibration, point: PointStats, title: str, path: Path) -> Path:
    image = roc_image(calibration, point, title)
    return write_atomic(Path(path), lambda handle: image.save(handle, format="PNG"))


# --- PDF ---------------------------------------------------------------------------------


def _roc_drawing(calibration: Calibration, point: PointStats, side: float, font: str) -> Drawing:
    pad = 28.0
    d = Drawing(side + pad + 10, side + pad + 10)

    def xy(fpr: float, tpr: float) -> tuple[float, float]:
        return pad + fpr * side, pad + tpr * side

    grey = colors.HexColor("#E6E6E6")
    for i in range(11):
        x, y = xy(i / 10, i / 10)
        d.add(Line(x, pad, x, pad + side, strokeColor=grey, strokeWidth=0.4))
        d.add(Line(pad, y, pad + side, y, strokeColor=grey, strokeWidth=0.4))
        if i % 2 == 0:
            d.add(String(x, pad - 10, f"{i / 10:.1f}", fontName=font, fontSize=7,
                         textAnchor="middle"))  # fmt: skip
            d.add(String(pad - 4, y - 2.5, f"{i / 10:.1f}", fontName=font, fontSize=7,
                         textAnchor="end"))  # fmt: skip
    d.add(Line(pad, pad, pad + side, pad + side, strokeColor=colors.grey, strokeWidth=0.5))
    fpr, tpr = calibration.roc.points()
    pts: list[float] = []
    for f, t in [*zip(fpr, tpr, strict=True), (1.0, 1.0)]:
        pts += list(xy(float(f), float(t)))
    d.add(PolyLine(pts, strokeColor=colors.Color(*[c / 255 for c in _CURVE]), strokeWidth=1.6))
    px, py = xy(1.0 - point.specificity, point.sensitivity)
    d.add(Circle(px, py, 3.5, fillColor=colors.Color(*[c / 255 for c in _POINT]),
                 strokeColor=colors.black, strokeWidth=0.5))  # fmt: skip
    d.add(String(pad + side / 2, 2, "1 − specificity", fontName=font, fontSize=8,
                 textAnchor="middle"))  # fmt: skip
    label = String(0, 0, "sensitivity", fontName=font, fontSize=8, textAnchor="middle")
    group = Group(label)
    group.transform = (0, 1, -1, 0, 8, pad + side / 2)
    d.add(group)
    d.add(Line(pad, pad, pad + side, pad, strokeColor=colors.black, strokeWidth=0.6))
    d.add(Line(pad, pad, pad, pad + side, strokeColor=colors.black, strokeWidth=0.6))
    return d


def write_calibration_pdf(
    path: Path,
    site_name: str,
    cal: SiteCalibration,
    calibration: Calibration,
    point: PointStats,
    excluded: Sequence[tuple[str, str]],
) -> Path:
    """One page (two with a long exclusion list): what the site threshold rests on."""
    from desktop import DISCLAIMER

    regular, bold = register_fonts()
    base = ParagraphStyle("cal", fontName=regular, fontSize=9, leading=11.5)
    title = ParagraphStyle("cal_title", parent=base, fontName=bold, fontSize=16, leading=20)
    h2 = ParagraphStyle("cal_h2", parent=base, fontName=bold, fontSize=10.5, leading=13,
                        spaceBefore=6, spaceAfter=3)  # fmt: skip
    small = ParagraphStyle("cal_small", parent=base, fontSize=7.5, leading=9.5)
    story: list[Any] = [
        Paragraph(escape(f"Site calibration {SITE_PREFIX}{site_name}"), title),
        Paragraph(escape(f"{cal.model_name or cal.model_id}: {cal.model_label()}"), base),
        Spacer(1, 3 * mm),
    ]
    by = f" by {cal.calibrated_by}" if cal.calibrated_by else ""
    details = [
        ("Calibrated", f"{cal.calibrated_when()}{by}"),
        ("Labelled scans", cal.source or "—"),
        ("MedScreen version", cal.app_version or "—"),
    ]
    table = Table(
        [[Paragraph(escape(k), base), Paragraph(escape(v), base)] for k, v in details],
        colWidths=[35 * mm, 135 * mm],
    )
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP")]))
    story += [table, Paragraph("Result", h2)]
    story += [
        Paragraph("• " + escape(line), base)
        for line in figure_lines(cal, point, calibration.prevalence)
    ]
    story.append(Spacer(1, 3 * mm))
    story.append(_roc_drawing(calibration, point, 80 * mm, regular))
    if cal.warnings:
        story.append(Paragraph("Warnings", h2))
        story += [Paragraph("• " + escape(w), base) for w in cal.warnings]
    story.append(Paragraph("How to read this", h2))
    story.append(
        Paragraph(
            escape(
                "The figures were measured on the same scans the threshold was chosen on; on "
                "new scans from this site expect the sensitivity to vary within its interval. "
                "The per-1,000 counts assume the share of disease in the labelled set; at a "
                "lower prevalence there are fewer cases and more of the flags are false "
                "alarms. This threshold applies only to the model version named above."
            ),
            small,
        )
    )
    if excluded:
        story.append(Paragraph(f"Left out ({len(excluded)})", h2))
        for file, reason in list(excluded)[:_MAX_EXCLUDED_LISTED]:
            story.append(Paragraph(escape(f"{Path(file).name}: {reason}"), small))
        if len(excluded) > _MAX_EXCLUDED_LISTED:
            rest = len(excluded) - _MAX_EXCLUDED_LISTED
            story.append(Paragraph(escape(f"… and {rest} more (see the JSON record)"), small))
    story += [Spacer(1, 4 * mm), Paragraph(escape(DISCLAIMER), small)]

    def build(handle: Any) -> None:
        doc = SimpleDocTemplate(
            handle,
            pagesize=A4,
            leftMargin=18 * mm,
            rightMargin=18 * mm,
            topMargin=16 * mm,
            bottomMargin=16 * mm,
            title=f"Site calibration {site_name}",
            author="MedScreen",
        )
        doc.build(story)

    return write_atomic(Path(path), build)


# --- JSON --------------------------------------------------------------------------------


def calibration_record(
    site_name: str,
    cal: SiteCalibration,
    calibration: Calibration,
    excluded: Sequence[tuple[str, str]],
) -> dict[str, Any]:
    """Everything needed to audit the calibration later, curve included (no image data)."""
    roc = calibration.roc
    return {
        "schema": JSON_SCHEMA,
        "schema_version": 1,
        "site_point": SITE_PREFIX + site_name,
        "calibration": cal.to_dict(),
        "prevalence_in_labelled_set": calibration.prevalence,
        "roc": {
            "thresholds": [round(float(t), 6) for t in roc.thresholds],
            "sensitivity": [round(float(t), 6) for t in roc.tpr],
            "one_minus_specificity": [round(float(f), 6) for f in roc.fpr],
        },
        "excluded": [{"file": f, "reason": r} for f, r in excluded],
    }


def write_calibration_files(
    out_dir: Path,
    site_name: str,
    cal: SiteCalibration,
    calibration: Calibration,
    point: PointStats,
    excluded: Sequence[tuple[str, str]] = (),
) -> list[Path]:
    """``calibration-<site>-<model>.{png,pdf,json}`` in ``out_dir``; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"calibration-{site_name}-{cal.model_id}"
    title = f"{cal.model_name or cal.model_id} {cal.model_version} at {site_name}"
    png = write_roc_png(calibration, point, title, out_dir / f"{stem}.png")
    pdf = write_calibration_pdf(
        out_dir / f"{stem}.pdf", site_name, cal, calibration, point, excluded
    )
    record = calibration_record(site_name, cal, calibration, excluded)
    with atomic_open(out_dir / f"{stem}.json", "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    log.info("wrote the calibration record %s.{png,pdf,json}", stem)
    return [png, pdf, out_dir / f"{stem}.json"]

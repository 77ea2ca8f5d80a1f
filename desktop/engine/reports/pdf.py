"""The printable PDF report: cover, summary table, one section per flagged scan, problems.

Built with reportlab's platypus, which needs neither Qt nor a display, so the GUI and
``medscreen classify --report pdf`` produce the same file. Images are embedded as small
JPEGs (the thumbnails are at most 384 px; we shrink them further to what prints sharply at
the size shown), which keeps a 500-scan report to a few megabytes and a few seconds.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import io
import logging
import os
import threading
import types
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePath
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image as PILImage
from reportlab import rl_config
from reportlab.lib import colors
from reportlab.lib.enums import TA_RIGHT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfdoc, pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen import canvas as rl_canvas
from reportlab.platypus import (
    BaseDocTemplate,
    Flowable,
    Frame,
    Image,
    KeepTogether,
    LongTable,
    PageBreak,
    PageTemplate,
    Paragraph,
    Spacer,
    Table,
    TableStyle,
)

from desktop.engine.cores import release_free_memory
from desktop.engine.decisions import ReaderDecision
from desktop.engine.manifest import ModelManifest, OperatingPoint, threshold_text
from desktop.engine.overlay import INFERNO_LUT, decode_thumbnail, overlay
from desktop.engine.paths import assets_dir, display_path
from desktop.engine.preprocess import activation_to_image
from desktop.engine.quality import quality_of, shown_modality
from desktop.engine.reports._common import (
    PDF_TEXT_CHARS,
    STATUS_TEXT,
    Counts,
    clip_text,
    count,
    fmt_score,
    identifiers,
    scan_flags,
    scan_group,
    scan_scope,
    write_atomic,
)
from desktop.engine.reports.context import ReportContext
from desktop.engine.reports.source import (
    detail_of,
    iter_rows,
    reiterable,
    results_at,
    thumbnail_of,
)
from desktop.engine.results import ScanResult, ScanStatus
from desktop.engine.triage import (
    TriageGroup,
    TriageIndex,
    TriageKey,
    attention,
    key_at,
    margin,
    triage_key,
)

logger = logging.getLogger(__name__)

PAGE = A4
MARGIN = 15 * mm
FOOTER_HEIGHT = 20 * mm
#: Longest side in pixels of an embedded image: ~190 dpi at the 40 mm it is printed at.
IMAGE_PIXELS = 300
JPEG_QUALITY = 80
#: Heatmap opacity where the activation peaks, in print. Stronger than the viewer's default
#: (DEFAULT_OPACITY): a 40 mm image on office paper loses contrast, and the blend is weighted
#: by activation, so cold regions stay plain grey whatever this is.
REPORT_OPACITY = 0.6
#: Longest file name shown in a table cell; longer ones keep their start and end.
MAX_NAME_CHARS = 90

_FONT = "DejaVuSans"
_FONT_BOLD = "DejaVuSans-Bold"
#: For what DejaVu Sans lacks (Chinese, Japanese, Korean): see :func:`_with_fallback_font`.
_FALLBACK_FONT = "DroidSansFallback"
_font_lock = threading.Lock()
_build_lock = threading.Lock()
_fonts: tuple[str, str] | None = None
#: The code points DejaVu Sans and the fallback draw, each read when first needed.
_primary: frozenset[int] | None = None
_fallback: frozenset[int] | None = None

_FLAG_BG = colors.HexColor("#FDE2CF")
_HEAD_BG = colors.HexColor("#E6EAF0")
_GRID = colors.HexColor("#B8BEC8")
_MUTED = colors.HexColor("#555B66")
_PAGE_TOTAL_FORM = "MedScreenPageTotal"
#: Rows per table in the long lists (every scan, problems, outside scope): reportlab keeps a
#: table's every cell until it is drawn, so a 20,000-row table alone took gigabytes. Tables of
#: this many rows are made one after the other, each when the previous one has been drawn.
TABLE_CHUNK = 250
#: Flagged scans per PDF file. reportlab assembles a whole file in memory before writing it
#: (about 2.7 times the file's size: 148 MB for a 1,000-scan, 16 MB report), so a batch with
#: thousands of flagged scans continues in report-2.pdf, report-3.pdf… of this many each.
FLAGGED_PER_FILE = 400
_OUT_OF_SCOPE = colors.HexColor("#8A8F98")  # a score outside the model's scope: greyed


# --- fonts ------------------------------------------------------------------------------


def fonts_dir() -> Path:
    return assets_dir() / "fonts"


def register_fonts() -> tuple[str, str]:
    """Register DejaVu Sans with reportlab once; returns (regular, bold) font names.

    reportlab's built-in Helvetica only covers Latin-1: "Łukasiewicz" or "Nguyễn" would
    print as black boxes. DejaVu Sans (shipped in ``assets/fonts``) covers Latin, Greek and
    Cyrillic. If the fonts are missing (a damaged install) the report still comes out, in
    Helvetica, with a warning in the log.
    """
    global _fonts
    with _font_lock:
        if _fonts is not None:
            return _fonts
        folder = fonts_dir()
        regular, bold = folder / "DejaVuSans.ttf", folder / "DejaVuSans-Bold.ttf"
        try:
            pdfmetrics.registerFont(TTFont(_FONT, str(regular)))
            pdfmetrics.registerFont(TTFont(_FONT_BOLD, str(bold)))
            pdfmetrics.registerFontFamily(
                _FONT, normal=_FONT, bold=_FONT_BOLD, italic=_FONT, boldItalic=_FONT_BOLD
            )
            _fonts = (_FONT, _FONT_BOLD)
        except Exception as exc:  # reportlab raises TTFError or OSError variants
            logger.warning(
                "report fonts not found in %s (%s); names outside Latin-1 may not print",
                folder,
                exc,
            )
            _fonts = ("Helvetica", "Helvetica-Bold")
        return _fonts


@contextlib.contextmanager
def _binary_streams() -> Iterator[None]:
    """Build with binary PDF streams instead of reportlab's default ASCII85 text encoding.

    ASCII85 makes every embedded JPEG 25% bigger and, without reportlab's optional C
    accelerator, costs most of the rendering time (pure-Python encoding). Binary streams are
    standard PDF. The switch is a reportlab global, so it is set only for the duration of
    our own build, under a lock, and restored afterwards.
    """
    with _build_lock:
        saved = rl_config.useA85
        rl_config.useA85 = 0
        try:
            yield
        finally:
            rl_config.useA85 = saved


# --- text helpers -----------------------------------------------------------------------


def _styles(regular: str, bold: str) -> dict[str, ParagraphStyle]:
    base = ParagraphStyle("base", fontName=regular, fontSize=9, leading=11.5)
    return {
        "base": base,
        "small": ParagraphStyle("small", parent=base, fontSize=8, leading=10),
        "cell": ParagraphStyle("cell", parent=base, fontSize=7.5, leading=9),
        "cell_head": ParagraphStyle("cell_head", parent=base, fontName=bold, fontSize=7.5,
                                    leading=9),
        "muted": ParagraphStyle("muted", parent=base, fontSize=8, leading=10, textColor=_MUTED),
        "title": ParagraphStyle("title", parent=base, fontName=bold, fontSize=20, leading=24,
                                spaceAfter=4),
        "subtitle": ParagraphStyle("subtitle", parent=base, fontSize=11, leading=14,
                                   textColor=_MUTED, spaceAfter=10),
        "h1": ParagraphStyle("h1", parent=base, fontName=bold, fontSize=14, leading=17,
                             spaceBefore=6, spaceAfter=6),
        "h2": ParagraphStyle("h2", parent=base, fontName=bold, fontSize=10.5, leading=13,
                             spaceBefore=8, spaceAfter=4),
        "footer": ParagraphStyle("footer", parent=base, fontSize=7, leading=8.5,
                                 textColor=_MUTED),
        "tiny": ParagraphStyle("tiny", parent=base, fontSize=6.5, leading=7.5,
                               textColor=_MUTED),
        "right": ParagraphStyle("right", parent=base, fontSize=7, alignment=TA_RIGHT),
    }  # fmt: skip


def _t(text: object) -> str:
    """Plain text made safe for a reportlab Paragraph (which parses a small XML dialect).

    Also cut to :data:`PDF_TEXT_CHARS` and shown readably when it is a file name that is not
    valid Unicode: no text from a result can make a paragraph taller than a page (reportlab's
    ``LayoutError`` loses the whole report) or fail to encode. Characters DejaVu Sans lacks
    are drawn in the fallback font (:func:`_with_fallback_font`).
    """
    safe = escape(clip_text(display_path(str(text)), PDF_TEXT_CHARS))
    return safe if safe.isascii() else _with_fallback_font(safe)


def _primary_coverage() -> frozenset[int]:
    """The code points the report font draws (empty when it is Helvetica: nothing known)."""
    global _primary
    with _font_lock:
        if _primary is None:
            try:
                font = pdfmetrics.getFont(_FONT)
                _primary = frozenset(font.face.charToGlyph)  # type: ignore[attr-defined]
            except Exception:  # DejaVu not registered (a damaged install): Helvetica
                _primary = frozenset()
        return _primary


def _fallback_coverage() -> frozenset[int]:
    """The code points the fallback font draws; registers it on first use (3.4 MB: read
    only for a report with a character DejaVu Sans lacks). Empty when it is missing."""
    global _fallback
    with _font_lock:
        if _fallback is None:
            try:
                font = TTFont(_FALLBACK_FONT, str(fonts_dir() / f"{_FALLBACK_FONT}.ttf"))
                pdfmetrics.registerFont(font)
                _fallback = frozenset(font.face.charToGlyph)
            except Exception as exc:  # reportlab raises TTFError or OSError variants
                logger.warning(
                    "no fallback font for the report (%s): some names may not print", exc
                )
                _fallback = frozenset()
        return _fallback


def _with_fallback_font(text: str) -> str:
    """``text`` (already escaped) with each run of characters DejaVu Sans lacks, but the
    fallback font has, put in the fallback font: a Chinese, Japanese or Korean file, clinic or
    patient name printed as empty boxes, which a reader cannot match to the scan."""
    primary = _primary_coverage()
    if not primary or all(ord(char) in primary for char in text):
        return text
    fallback = _fallback_coverage()
    out: list[str] = []
    run: list[str] = []
    for char in text:
        code = ord(char)
        if code not in primary and code in fallback:
            run.append(char)
            continue
        if run:
            out.append(f'<font name="{_FALLBACK_FONT}">{"".join(run)}</font>')
            run = []
        out.append(char if code in primary or not fallback else _unprintable(char))
    if run:
        out.append(f'<font name="{_FALLBACK_FONT}">{"".join(run)}</font>')
    return "".join(out)


def _unprintable(char: str) -> str:
    """A character neither report font draws (an emoji in a file name), as its code point:
    ``[U+1FAC1]``. Drawn, it was an empty box, and two scans whose names differed only
    there read the same. Spaces, controls, format characters and combining marks (a
    zero-width joiner, a variation selector) stay as they were: they draw nothing."""
    if char.isspace() or unicodedata.category(char)[0] in "CM":
        return char
    return f"[U+{ord(char):04X}]"


def shorten(name: str, limit: int = MAX_NAME_CHARS) -> str:
    """Keep the start and the end (with the extension) of a very long name."""
    if len(name) <= limit:
        return name
    keep_end = limit // 3
    return name[: limit - keep_end - 1] + "…" + name[-keep_end:]


def _common_folder(files: Sequence[str]) -> str | None:
    """The folder all scans share, so tables can show shorter relative names."""
    if len(files) < 2:
        return None
    try:
        parents = [str(PurePath(f).parent) for f in files]
        common = os.path.commonpath(parents)
    except ValueError:  # mixed absolute/relative or drives
        return None
    return common if common not in ("", ".", os.sep) else None


def _display_name(file: str, common: str | None) -> str:
    if common:
        try:
            return str(PurePath(file).relative_to(common))
        except ValueError:
            return file
    return file


def _score_text(value: float | None) -> str:
    return fmt_score(value) or "–"


def _flag_word(flag: bool | None) -> str:
    """Flags in words, so they read on a grey printout and for colour-blind readers."""
    return "" if flag is None else ("YES" if flag else "no")


# --- images -----------------------------------------------------------------------------


def _print_size(grey: np.ndarray) -> np.ndarray:
    """Shrink a grey [0, 1] image to at most IMAGE_PIXELS a side (less work per overlay)."""
    if max(grey.shape) <= IMAGE_PIXELS:
        return grey
    image = PILImage.fromarray(np.rint(grey * 255).astype(np.uint8))
    image.thumbnail((IMAGE_PIXELS, IMAGE_PIXELS), PILImage.Resampling.BOX)
    return np.asarray(image, dtype=np.float32) / np.float32(255.0)


def _jpeg(array: np.ndarray) -> bytes:
    """Encode an image array (shrunk to IMAGE_PIXELS if larger) as a compact JPEG."""
    image = PILImage.fromarray(array)
    if max(image.size) > IMAGE_PIXELS:
        image.thumbnail((IMAGE_PIXELS, IMAGE_PIXELS), PILImage.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=False)
    return buffer.getvalue()


@functools.cache
def _legend_png() -> bytes:
    strip = PILImage.fromarray(np.repeat(INFERNO_LUT[None, :, :], 6, axis=0))
    buffer = io.BytesIO()
    strip.save(buffer, format="PNG")
    return buffer.getvalue()


def _legend(st: dict[str, ParagraphStyle], width: float) -> Table:
    """A small "low → high" colour scale, so the heatmap colours can be read without a key.

    Every legend uses identical image data, which reportlab embeds only once.
    """
    bar = Image(io.BytesIO(_legend_png()), width=width - 22 * mm, height=2.2 * mm)
    table = Table(
        [[Paragraph("low", st["tiny"]), bar, Paragraph("high", st["tiny"])]],
        colWidths=[8 * mm, width - 22 * mm, 12 * mm],
        hAlign="LEFT",
    )
    table.setStyle(
        TableStyle(
            [
                ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
                ("LEFTPADDING", (0, 0), (-1, -1), 0),
                ("RIGHTPADDING", (0, 0), (-1, -1), 1),
                ("LEFTPADDING", (2, 0), (2, 0), 1.5 * mm),
                ("TOPPADDING", (0, 0), (-1, -1), 0),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 0),
            ]
        )
    )
    return table


class _JpegImage(Flowable):
    """A JPEG drawn as is: its bytes become the PDF image (DCTDecode), nothing is decoded.

    reportlab's own ``Image`` decodes every JPEG to raw RGB to name it, and kept hundreds of
    those decoded copies alive in a long report (49 MB for 1,000 scans, measured); here the
    name is the hash of the JPEG bytes, and the flowable lets go of them once drawn.
    """

    def __init__(self, jpeg: bytes, size: tuple[int, int], width: float, height: float) -> None:
        super().__init__()
        self._jpeg: bytes | None = jpeg
        self._pixels = size
        self._name = self._registered = ""
        self.drawWidth, self.drawHeight = width, height

    def wrap(self, avail_width: float, avail_height: float) -> tuple[float, float]:
        return self.drawWidth, self.drawHeight

    def draw(self) -> None:
        canv = self.canv
        if self._jpeg is not None:  # first drawing: register the image once, then let go
            doc = canv._doc  # the XObject registry reportlab's drawImage uses
            name = "jpeg" + hashlib.sha1(self._jpeg, usedforsecurity=False).hexdigest()
            self._name = name
            self._registered = doc.getXObjectName(name)
            if not doc.idToObject.get(self._registered):
                image = pdfdoc.PDFImageXObject(name)
                if not image.loadImageFromJPEG(io.BytesIO(self._jpeg)):
                    raise ValueError("not a JPEG image")
                image.name = name
                canv._setXObjects(image)
                doc.Reference(image, self._registered)
                doc.addForm(name, image)
            self._jpeg = None
        canv.saveState()
        canv.scale(self.drawWidth, self.drawHeight)
        canv._code.append(f"/{self._registered} Do")
        canv.restoreState()
        canv._formsinuse.append(self._name)  # the page's resources list it (as drawImage does)
        canv._currentPageHasImages = 1


def _image_flowable(jpeg: bytes, box_w: float, box_h: float) -> Flowable:
    """A JPEG scaled to fit ``box_w`` x ``box_h`` points, aspect ratio kept.

    The JPEG data is embedded as is (no re-encoding, no decoding), which keeps rendering fast
    and memory flat (:class:`_JpegImage`).
    """
    with PILImage.open(io.BytesIO(jpeg)) as probe:
        width, height = probe.size
    scale = min(box_w / width, box_h / height)
    return _JpegImage(jpeg, (width, height), width * scale, height * scale)


# --- page furniture ---------------------------------------------------------------------


class _FileSink(pdfdoc.PDFFile):
    """reportlab's output collector, writing each formatted object to the file as it is
    made instead of keeping them all to join at the end (offsets counted the same way)."""

    def __init__(self, sink: Any, pdf_version: Any = pdfdoc.PDF_VERSION_DEFAULT) -> None:
        self.strings: list[bytes] = []
        self.write = sink.write
        self.offset = 0
        header = pdfdoc.PDFFile(pdf_version).strings[0]  # reportlab's own header bytes
        self.add(header)

    def format(self, document: Any) -> bytes:
        return b""  # everything is in the file already


class _StreamingPDFDocument(pdfdoc.PDFDocument):
    """A reportlab document whose save streams into the open file.

    reportlab formats every object of the file into a list of strings and then joins them,
    so saving held the file twice in memory on top of the document (22 MB more for an
    11 MB report, measured), the largest step of a report's memory. Here the same formatting
    code (reportlab's ``PDFDocument.format``, run with :class:`_FileSink` as its collector)
    writes each object as it is made: the same bytes, the file never in memory.
    """

    _sink: Any = None

    def SaveToFile(self, filename: Any, canvas: Any) -> None:  # reportlab names it so
        if callable(getattr(filename, "write", None)) and not getattr(self, "_digiSigs", None):
            self._sink = filename
        try:
            super().SaveToFile(filename, canvas)
        finally:
            self._sink = None

    def format(self) -> bytes:
        if self._sink is None:
            return super().format()
        sink = self._sink
        names = dict(vars(pdfdoc), PDFFile=lambda version: _FileSink(sink, version))
        code = pdfdoc.PDFDocument.format.__code__
        return types.FunctionType(code, names, "format")(self)


def _canvas_class(ctx: ReportContext, footer_style: ParagraphStyle) -> type[rl_canvas.Canvas]:
    """A canvas that draws each page's footer as the page ends ("page N of M").

    The total M is a PDF form drawn on every page and defined once the document is complete
    (a forward reference), so no page is kept in memory to be finished later: a report of
    thousands of pages costs the memory of one.
    """
    from desktop import DISCLAIMER

    stamp = ctx.local_time_text()
    disclaimer = Paragraph(_t(DISCLAIMER), footer_style)
    left_text = f"{ctx.title} · {stamp}"
    if ctx.unsigned_models:  # developer option: on every page, not only the cover
        left_text += " · UNSIGNED MODELS"

    class NumberedCanvas(rl_canvas.Canvas):
        def showPage(self) -> None:  # reportlab names it so
            self._footer(self.getPageNumber())
            super().showPage()

        def save(self) -> None:
            total = self.getPageNumber() - 1  # the number the next page would have
            self.beginForm(_PAGE_TOTAL_FORM)
            self.setFont(footer_style.fontName, 7.5)
            self.setFillColor(_MUTED)
            self.drawString(0, 0, str(total))
            self.endForm()
            self._doc.__class__ = _StreamingPDFDocument  # saved straight into the file
            super().save()

        def _footer(self, number: int) -> None:
            width = PAGE[0] - 2 * MARGIN
            self.saveState()
            self.setStrokeColor(_GRID)
            self.setLineWidth(0.5)
            top = MARGIN + FOOTER_HEIGHT - 4 * mm
            self.line(MARGIN, top, MARGIN + width, top)
            _, h = disclaimer.wrap(width, FOOTER_HEIGHT)
            disclaimer.drawOn(self, MARGIN, top - 2 * mm - h)
            self.setFont(footer_style.fontName, 7.5)
            self.setFillColor(_MUTED)
            self.drawString(MARGIN, MARGIN, left_text)
            # "page N of " right-aligned before a slot wide enough for any total
            slot = self.stringWidth("00000", footer_style.fontName, 7.5)
            self.drawRightString(MARGIN + width - slot, MARGIN, f"page {number} of ")
            self.translate(MARGIN + width - slot, MARGIN)
            self.doForm(_PAGE_TOTAL_FORM)
            self.restoreState()

    return NumberedCanvas


# --- content ----------------------------------------------------------------------------


def _kv_table(rows: list[tuple[str, str]], st: dict[str, ParagraphStyle]) -> Table:
    data = [[Paragraph(_t(k), st["small"]), Paragraph(_t(v), st["small"])] for k, v in rows]
    table = Table(data, colWidths=[45 * mm, PAGE[0] - 2 * MARGIN - 45 * mm], hAlign="LEFT")
    table.setStyle(
        TableStyle(
            [
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("TEXTCOLOR", (0, 0), (0, -1), _MUTED),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
                ("TOPPADDING", (0, 0), (-1, -1), 2),
            ]
        )
    )
    return table


def _grid_style(font: str, bold: str, size: float = 8) -> list[tuple[Any, ...]]:
    return [
        ("FONT", (0, 0), (-1, -1), font, size),
        ("FONT", (0, 0), (-1, 0), bold, size),
        ("BACKGROUND", (0, 0), (-1, 0), _HEAD_BG),
        ("GRID", (0, 0), (-1, -1), 0.4, _GRID),
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
        ("TOPPADDING", (0, 0), (-1, -1), 2),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 2.5),
        ("LEFTPADDING", (0, 0), (-1, -1), 3),
        ("RIGHTPADDING", (0, 0), (-1, -1), 3),
    ]


def _list_style(regular: str, bold: str) -> list[tuple[Any, ...]]:
    """The plain lists' style (scans not screened, outside a scope): text from the top."""
    return [*_grid_style(regular, bold, 7.5), ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ("ALIGN", (0, 1), (0, -1), "RIGHT")]  # fmt: skip


def _chunked_table(
    heads: Sequence[str],
    widths: Sequence[float],
    rows: Iterable[list[Any]],
    st: dict[str, ParagraphStyle],
    style: Sequence[tuple[Any, ...]],
) -> Iterator[LongTable]:
    """``rows`` under one header row (repeated on each page), as tables of
    :data:`TABLE_CHUNK` rows made while the pages fill: one table of 16,000 rows made at once
    held hundreds of MB of cells (20,000-scan batch, measured). ``rows`` is read lazily."""

    def table(body: list[list[Any]]) -> LongTable:
        header = [Paragraph(h, st["cell_head"]) for h in heads]  # flowables are not shared
        made = LongTable([header, *body], colWidths=list(widths), repeatRows=1, hAlign="LEFT")
        made.setStyle(TableStyle(list(style)))
        return made

    body: list[list[Any]] = []
    for row in rows:
        body.append(row)
        if len(body) >= TABLE_CHUNK:
            yield table(body)
            body = []
    if body:
        yield table(body)


def _cover(
    ctx: ReportContext,
    counts: Counts,
    ranked: _Ranking,
    common: str | None,
    st: dict[str, ParagraphStyle],
    fonts: tuple[str, str],
) -> list[Flowable]:
    """Page 1, what a programme files: who/when, counts, the models and their thresholds,
    the sign-off fields, then the ranked list of scans needing attention (one line each)."""
    regular, bold = fonts
    story: list[Flowable] = [
        Paragraph(_t(ctx.title), st["title"]),
        Paragraph("Decision support only — not a diagnosis", st["subtitle"]),
    ]
    details = [
        ("Clinic", ctx.clinic_name or "—"),
        ("Operator", ctx.operator or "—"),
        ("Report created", f"{ctx.local_time_text()} · MedScreen {ctx.app_version}"),
    ]
    if ctx.batch_id or common:
        where = " · ".join(x for x in (common or "", f"batch {ctx.batch_id}" if ctx.batch_id
                                       else "") if x)  # fmt: skip
        details.append(("Folder", where))
    details += [
        ("Device used", ctx.device),
        (
            "Patient identifiers",
            "included (opted in)" if ctx.include_identifiers else "not included",
        ),
        ("Patient group", _patients_text(ctx)),
    ]
    if ctx.unsigned_models:
        details.append(
            (
                "UNSIGNED MODELS",
                f"{', '.join(ctx.unsigned_models)}: loaded without a verified signature "
                f"(developer option MEDSCREEN_ALLOW_UNSIGNED_MODELS); not a released model, "
                f"not for clinical use",
            )
        )
    if ctx.files_not_screened and ctx.still_being_screened:
        details.append(
            (
                "INCOMPLETE BATCH",
                f"still being screened: {ctx.files_not_screened:,} more "
                f"file{'s' if ctx.files_not_screened != 1 else ''} of this batch "
                "were not screened yet when this report was written and are not in it. "
                "Export the report again when the batch has finished",
            )
        )
    elif ctx.files_not_screened:
        details.append(
            (
                "INCOMPLETE BATCH",
                f"stopped before the end: {ctx.files_not_screened:,} more "
                f"file{'s' if ctx.files_not_screened != 1 else ''} of this batch "
                "were not screened and are not in this report. Resume the batch (History, or "
                f"{_resume_words(ctx)}) and export the report again",
            )
        )
    if ctx.selected_from:
        details.append(
            (
                "SELECTED SCANS ONLY",
                f"this report holds {counts.total:,} of the {ctx.selected_from:,} scans of "
                "this batch, selected by hand; its counts and lists are of these only. "
                "Export the whole batch for its counts",
            )
        )
    if ctx.same_content_copies:
        n = ctx.same_content_copies
        details.append(
            (
                "Copies",
                f"{n:,} file{'s' if n != 1 else ''} of this batch "
                f"{'have' if n != 1 else 'has'} the same content as another of its files "
                "(the same scan twice); each is counted and listed",
            )
        )
    story += [_kv_table(details, st), Spacer(1, 2 * mm)]

    # Counts in one row: the totals a programme adds up across clinics.
    heads = ["Scans", "Screened"]
    values = [str(counts.total), str(counts.screened)]
    for mid, manifest in ctx.finding_manifests.items():
        heads.append(f"Flagged {_short(manifest)}")
        values.append(str(counts.flagged[mid]))
    if len(ctx.finding_ids) > 1:
        heads.append("Flagged (any)")
        values.append(str(counts.flagged_any))
    heads += ["Not a chest X-ray", "Errors"]
    values += [str(counts.not_chest_xray), str(counts.errors)]
    if counts.outside_scope_any:
        heads.append("Outside a scope")
        values.append(str(counts.outside_scope_any))
    decided = ranked.decided
    heads.append("Reader decisions")
    values.append(str(decided))
    width = PAGE[0] - 2 * MARGIN
    table = Table(
        [[Paragraph(h, st["cell_head"]) for h in heads], values],
        colWidths=[width / len(heads)] * len(heads),
        hAlign="LEFT",
    )
    table.setStyle(TableStyle([*_grid_style(regular, bold, 9), ("ALIGN", (0, 1), (-1, -1),
                                                                  "CENTER")]))  # fmt: skip
    story += [Paragraph("Counts", st["h2"]), table]
    story += _scope_note(ctx, counts, st)
    story += _models_and_thresholds(ctx, st, fonts)
    story += _sign_off(st, fonts)
    return story  # the ranked list follows (iter_story), made a table chunk at a time


def _short(manifest: ModelManifest) -> str:
    return manifest.short_name if hasattr(manifest, "short_name") else manifest.name


def _first_sentences(text: str, limit: int) -> str:
    """Whole sentences of ``text`` up to ``limit`` characters (at least the first, capped)."""
    out = ""
    for sentence in text.replace("\n", " ").split(". "):
        candidate = f"{out} {sentence.rstrip('.')}." if out else f"{sentence.rstrip('.')}."
        if out and len(candidate) > limit:
            break
        out = candidate
    return clip_text(out.strip(), limit + 40)


def _test_figures(manifest: ModelManifest, point_name: str) -> str:
    """The held-out test figures of ``manifest`` at ``point_name``, in one line."""
    test = manifest.metrics.get("test") if isinstance(manifest.metrics, dict) else None
    if not isinstance(test, dict) or not test.get("n"):
        return "no held-out test figures in the manifest"
    parts = [f"n = {test['n']}"]
    auc, ci = test.get("auc"), test.get("auc_ci95")
    if isinstance(auc, int | float):
        text = f"AUC {auc:.2f}"
        if isinstance(ci, list | tuple) and len(ci) == 2:
            text += f" (95 % CI {ci[0]:.2f}–{ci[1]:.2f})"
        parts.append(text)
    groups = _group_test_figures(test, point_name)
    at = (test.get("operating_points") or {}).get(point_name)
    if groups:
        parts.append(f"at {point_name}: sensitivity / specificity {groups}")
    elif isinstance(at, dict) and "sensitivity" in at and "specificity" in at:
        parts.append(
            f"at {point_name}: sensitivity {at['sensitivity']:.2f}, "
            f"specificity {at['specificity']:.2f}"
        )
    else:
        parts.append(f"not measured at {point_name}")
    return ", ".join(parts)


def _group_test_figures(test: dict[str, Any], point_name: str) -> str:
    """Each patient group's test sensitivity / specificity at its own threshold of
    ``point_name`` (``adult 0.66 / 0.75, child 0.96 / 0.91, group unknown 0.90 / 0.79``);
    empty when the manifest measured none per group. The pooled figures alone belonged to
    the group-unknown threshold but read as the adult point's."""
    figures = []
    by_group = test.get("by_group")
    for group, data in by_group.items() if isinstance(by_group, dict) else ():
        at = (
            (data.get("operating_points") or {}).get(point_name) if isinstance(data, dict) else None
        )
        if isinstance(at, dict) and "sensitivity" in at and "specificity" in at:
            figures.append(f"{group} {at['sensitivity']:.2f} / {at['specificity']:.2f}")
    pooled = (test.get("operating_points") or {}).get(point_name)
    if figures and isinstance(pooled, dict) and "sensitivity" in pooled and "specificity" in pooled:
        figures.append(f"group unknown {pooled['sensitivity']:.2f} / {pooled['specificity']:.2f}")
    return ", ".join(figures)


def _threshold_source(ctx: ReportContext, mid: str) -> str:
    """Where a model's threshold comes from, in words."""
    point = ctx.points()[mid]
    calibration = ctx.site_calibrations().get(mid)
    if calibration is not None:
        return (
            f"site threshold calibrated {calibration.calibrated_at[:10]} on {calibration.n} "
            "labelled scans of this site (see Site threshold below)"
        )
    if point.name == "custom":
        return "custom threshold entered in MedScreen (no validation figures)"
    groups = [*point.by_group, ("group unknown", point)] if point.by_group else []
    if groups and all(p.sensitivity is not None and p.specificity is not None for _, p in groups):
        figures = ", ".join(f"{g} {p.sensitivity:.2f} / {p.specificity:.2f}" for g, p in groups)
        return (
            "model manifest, set on each patient group's validation data "
            f"(sensitivity / specificity {figures})"
        )
    sens = "—" if point.sensitivity is None else f"{point.sensitivity:.2f}"
    spec = "—" if point.specificity is None else f"{point.specificity:.2f}"
    return f"model manifest, set on validation data (sensitivity {sens}, specificity {spec})"


def _models_and_thresholds(
    ctx: ReportContext, st: dict[str, ParagraphStyle], fonts: tuple[str, str]
) -> list[Flowable]:
    regular, bold = fonts
    points = ctx.points()
    rows: list[list[Any]] = [
        [Paragraph(h, st["cell_head"]) for h in
         ("Model", "Threshold and its source", "Held-out test figures", "Known limits")]
    ]  # fmt: skip
    for mid, manifest in ctx.finding_manifests.items():
        point = points[mid]
        limits = manifest.intended_use
        rows.append(
            [
                Paragraph(f"{_t(manifest.name)}<br/>{_t(manifest.version)}", st["cell"]),
                Paragraph(
                    f"<b>{_t(threshold_text(point))}</b> ({_t(point.name)}): "
                    f"{_t(_threshold_source(ctx, mid))}",
                    st["cell"],
                ),
                Paragraph(_t(_test_figures(manifest, point.name)), st["cell"]),
                Paragraph(_t(_first_sentences(limits, 170) or "see the model card"), st["cell"]),
            ]
        )
    width = PAGE[0] - 2 * MARGIN
    table = Table(rows, colWidths=[28 * mm, 52 * mm, 45 * mm, width - 125 * mm], hAlign="LEFT")
    table.setStyle(TableStyle([*_grid_style(regular, bold, 7.5), ("VALIGN", (0, 0), (-1, -1),
                                                                   "TOP")]))  # fmt: skip
    note = (
        "A scan is flagged when a model's score reaches that model's threshold. The test "
        "figures were measured on each model's held-out test data, not on this clinic's "
        "patients and equipment; the model cards list every limit."
    )
    # issue 13: every report says a site threshold was used, with its date, n and CIs
    sites = [
        Paragraph(f"<b>Site threshold</b> — {_t(line)}", st["muted"])
        for line in ctx.site_calibration_lines()
    ]
    return [Paragraph("Models, thresholds and held-out test figures", st["h2"]), table,
            Spacer(1, 1 * mm), *sites, Paragraph(note, st["muted"])]  # fmt: skip


def _sign_off(st: dict[str, ParagraphStyle], fonts: tuple[str, str]) -> list[Flowable]:
    """Blank fields the reader fills in by hand: name, date, signature."""
    _regular, bold = fonts
    width = PAGE[0] - 2 * MARGIN
    cells = [["Reader (name)", "", "Date", "", "Signature", ""]]
    table = Table(
        cells,
        colWidths=[24 * mm, 52 * mm, 12 * mm, 28 * mm, 18 * mm, width - 134 * mm],
        rowHeights=[10 * mm],
        hAlign="LEFT",
    )
    table.setStyle(
        TableStyle(
            [
                ("FONT", (0, 0), (-1, -1), bold, 8.5),
                ("VALIGN", (0, 0), (-1, -1), "BOTTOM"),
                ("LINEBELOW", (1, 0), (1, 0), 0.7, colors.black),
                ("LINEBELOW", (3, 0), (3, 0), 0.7, colors.black),
                ("LINEBELOW", (5, 0), (5, 0), 0.7, colors.black),
            ]
        )
    )
    note = Paragraph("I have read the scans listed as needing attention.", st["muted"])
    return [Paragraph("Sign-off", st["h2"]), table, note]


def _ranked_list(
    ctx: ReportContext,
    ranked: _Ranking,
    common: str | None,
    st: dict[str, ParagraphStyle],
    fonts: tuple[str, str],
) -> Iterator[Flowable]:
    """The flagged scans in triage order, one line each: rank, file, flags, decision.

    Made :data:`TABLE_CHUNK` rows per table as the pages fill: a table of 16,000 flagged
    scans made at once held hundreds of MB of cells (20,000-scan batch, measured).
    """
    regular, bold = fonts
    flagged = ranked.flagged
    yield Paragraph(f"Scans needing attention ({flagged}), in triage order", st["h2"])
    if not flagged:
        yield Paragraph(
            "No scan reached a threshold. This does not rule out disease: every scan "
            "still needs a clinician's reading.",
            st["base"],
        )
        return
    yield Paragraph(
        "Flagged scans, the furthest past a threshold first: “+75 %” means the score has "
        "gone 75 % of the way from the model's threshold to 1. The numbers (#) are the "
        "triage order; the per-scan pages that follow use them.",
        st["muted"],
    )
    width = PAGE[0] - 2 * MARGIN
    rows = (
        [
            str(line.rank),
            Paragraph(_t(shorten(_display_name(line.result.file, common), 56)), st["cell"]),
            Paragraph(_t(line.flag_text(ctx)), st["cell"]),
            Paragraph(_t(line.decision.text if line.decision else "—"), st["cell"]),
        ]
        for line in ranked.lines(0, flagged)
    )
    yield from _chunked_table(
        ("#", "File", "Flagged by", "Reader decision"),
        [9 * mm, 86 * mm, 61 * mm, width - 156 * mm],
        rows,
        st,
        [*_grid_style(regular, bold, 7.5), ("ALIGN", (0, 1), (0, -1), "RIGHT"),
         ("TOPPADDING", (0, 0), (-1, -1), 1), ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5)],
    )  # fmt: skip


@dataclass
class _Ranked:
    """One scan's place in the triage order, with the scan as fetched to print it.

    Made a chunk at a time while a table or the flagged pages are drawn
    (:meth:`_Ranking.lines`) and let go with it: the batch's order itself is held as compact
    keys, never as records.
    """

    key: TriageKey
    result: ScanResult
    decision: ReaderDecision | None
    rank: int = 0

    def flag_text(self, ctx: ReportContext) -> str:
        """The ranked list's flags: the engine's :func:`attention` (in-scope flags only)."""
        flags = attention(self.result, ctx.points(), ctx.scope_rule)
        return ", ".join(
            f"{_short(ctx.manifests[a.model_id])} {a.probability:.2f} (+{a.margin * 100:.0f} %)"
            for a in flags
        )


#: Scans fetched again at once (one store query) while the report prints them in order.
FETCH_CHUNK = TABLE_CHUNK


class _CommonFolder:
    """The folder all scans share (:func:`_common_folder`), gathered one file at a time."""

    def __init__(self) -> None:
        self._common: str | None = None
        self._files = 0
        self._mixed = False

    def add(self, file: str) -> None:
        if self._mixed:
            return
        parent = str(PurePath(file).parent)
        try:
            self._common = (
                parent if self._common is None else os.path.commonpath([self._common, parent])
            )
        except ValueError:  # mixed absolute/relative or drives
            self._mixed = True
        self._files += 1

    def value(self) -> str | None:
        if self._mixed or self._files < 2 or self._common in (None, "", ".", os.sep):
            return None
        return self._common


class _Ranking:
    """Every scan's place in the engine's triage order, and its scans fetched as printed.

    Held per scan: one :data:`~desktop.engine.triage.TRIAGE_DTYPE` key (group, strength,
    flagged models, row: 19 bytes) and whether a model ran outside its scope (1 byte). The
    scans themselves are fetched again from ``results`` by row, :data:`FETCH_CHUNK` at a
    time, when a table or page prints them (:func:`~desktop.engine.reports.source.results_at`).
    The records of every scan this replaced took ~2 KB a scan (40 MB for 20,000, measured).
    """

    def __init__(self, results: Iterable[ScanResult], ctx: ReportContext) -> None:
        points: dict[str, OperatingPoint | None] = dict(ctx.points())
        index = TriageIndex()
        outside: list[int] = []  # rows with a model outside its scope (few, usually)
        common = _CommonFolder()
        decided = 0
        for row, result in iter_rows(results):
            index.add(triage_key(result, points, ctx.scope_rule), row)
            if scan_scope(result, ctx):
                outside.append(row)
            common.add(result.file)
            decided += ctx.decision_of(result) is not None
        self.results = results
        self.ctx = ctx
        self.keys = index.ordered()
        self.outside = np.isin(self.keys["row"], np.asarray(outside, dtype=np.int64))
        self.common = common.value()
        self.decided = decided
        groups = self.keys["group"]
        self.flagged = int(np.count_nonzero(groups == TriageGroup.FLAGGED))
        #: Where the scans not screened (refused, errors) begin: they sort last.
        self.screened = int(np.count_nonzero(groups <= TriageGroup.NOT_FLAGGED))

    def __len__(self) -> int:
        return len(self.keys)

    def lines(self, start: int = 0, stop: int | None = None) -> Iterator[_Ranked]:
        """The scans ranked ``start + 1`` to ``stop``, fetched a chunk at a time."""
        stop = len(self.keys) if stop is None else min(stop, len(self.keys))
        return self._lines(np.arange(start, max(start, stop)))

    def outside_lines(self) -> Iterator[_Ranked]:
        """The scans a model ran on outside its scope, in triage order."""
        return self._lines(np.flatnonzero(self.outside))

    def _lines(self, positions: np.ndarray) -> Iterator[_Ranked]:
        for begin in range(0, len(positions), FETCH_CHUNK):
            chunk = [int(p) for p in positions[begin : begin + FETCH_CHUNK]]
            fetched = results_at(self.results, [int(self.keys["row"][p]) for p in chunk])
            for position, result in zip(chunk, fetched, strict=True):
                key = key_at(self.keys, position)
                yield _Ranked(key, result, self.ctx.decision_of(result), position + 1)


def _rank(results: Iterable[ScanResult], ctx: ReportContext) -> _Ranking:
    """Every scan in the engine's triage order (one pass over ``results``), as compact keys."""
    return _Ranking(results, ctx)


def _patients_text(ctx: ReportContext) -> str:
    """How each scan's patient group was decided, in one line for the cover."""
    batch = ctx.patients.batch
    text = (
        f"all {batch.value}s (set by staff for the batch)"
        if batch is not None
        else "from the file (DICOM age), else estimated from the image"
    )
    if ctx.patients.overrides:
        n = len(ctx.patients.overrides)
        text += f"; {n} scan{'s' if n != 1 else ''} set by staff one by one"
    return text


def _scope_note(
    ctx: ReportContext, counts: Counts, st: dict[str, ParagraphStyle]
) -> list[Flowable]:
    """First-page statement of how many scans were outside a model's scope, and the scopes."""
    scoped = {mid: m for mid, m in ctx.finding_manifests.items() if m.scope and m.scope.restricts}
    if not scoped and not counts.outside_scope_any:
        return []
    n = counts.outside_scope_any
    lines = [
        f"<b>{n} scan{' was' if n == 1 else 's were'} outside a model's scope</b>: "
        "the score is shown (greyed) but raises no flag; the reason is listed under "
        "“Scans outside a model's scope”."
        if n
        else "No scan was outside a model's scope."
    ]
    for manifest in scoped.values():
        assert manifest.scope is not None
        lines.append(f"{_t(manifest.name)}: {_t(manifest.scope.summary or 'restricted scope')}")
    return [Paragraph("Model scope", st["h2"]), *(Paragraph(line, st["base"]) for line in lines),
            Spacer(1, 3 * mm)]  # fmt: skip


def _summary(
    ranked: _Ranking,
    total: int,
    ctx: ReportContext,
    common: str | None,
    st: dict[str, ParagraphStyle],
    fonts: tuple[str, str],
) -> Iterator[Flowable]:
    """The table of every scan, made :data:`TABLE_CHUNK` rows at a time while it is drawn."""
    regular, bold = fonts
    finding = ctx.finding_manifests
    width = PAGE[0] - 2 * MARGIN
    # Two header rows: each finding model's name spans its "score" and "flag" columns, so a
    # long model name never has to squeeze into one narrow column.
    lead = [9 * mm]
    tail = [26 * mm, 17 * mm]  # status, modality (room for "not a chest X-ray")
    per_model = [16 * mm, 11 * mm]  # score, flag
    patient_w = 34 * mm if ctx.include_identifiers else 0
    file_w = max(40 * mm, width - sum(lead) - sum(tail) - sum(per_model) * len(finding) - patient_w)
    widths = [*lead, file_w, *([patient_w] if patient_w else []), *tail]
    widths += per_model * len(finding)
    first_model_col = len(widths) - 2 * len(finding)

    def head(text: str) -> Paragraph:
        return Paragraph(text, st["cell_head"])

    def header() -> tuple[list[list[Any]], list[tuple[Any, ...]]]:
        """A new table's two header rows and its base style (flowables are not shared)."""
        top: list[Any] = [head("#"), head("File")]
        if patient_w:
            top.append(head("Patient (name, ID)"))
        top += [head("Status"), head("Modality")]
        second: list[Any] = [""] * len(top)
        style = _grid_style(regular, bold, 7.5)
        style += [("BACKGROUND", (0, 1), (-1, 1), _HEAD_BG), ("FONT", (0, 1), (-1, 1), bold, 7.5)]
        for col in range(first_model_col):
            style.append(("SPAN", (col, 0), (col, 1)))
        for index, manifest in enumerate(finding.values()):
            col = first_model_col + 2 * index
            top += [head(_t(manifest.name)), ""]
            second += ["score", "flag"]
            style += [("SPAN", (col, 0), (col + 1, 0)), ("ALIGN", (col, 0), (col + 1, 0), "CENTER")]
        return [top, second], style

    def table(rows: list[list[Any]], style: list[tuple[Any, ...]]) -> LongTable:
        style += [("ALIGN", (first_model_col, header_rows), (-1, -1), "RIGHT"),
                  ("ALIGN", (0, header_rows), (0, -1), "RIGHT")]  # fmt: skip
        made = LongTable(rows, colWidths=widths, repeatRows=header_rows, hAlign="LEFT")
        made.setStyle(TableStyle(style))
        return made

    yield Paragraph(f"All scans ({total}), in triage order", st["h1"])
    yield Paragraph(
        "Flags are written out (YES / no) and also shaded. An empty flag means the model "
        "did not run on that scan (see “Scans not screened”); “outside” means the scan "
        "was outside the model's scope: the score (greyed) raises no flag (see “Scans "
        "outside a model's scope”).",
        st["muted"],
    )
    yield Spacer(1, 2 * mm)
    rows, style = header()
    header_rows = len(rows)
    for line_item in ranked.lines():
        number, result = line_item.rank, line_item.result
        flags = scan_flags(result, ctx)
        row: list[Any] = [
            str(number),
            Paragraph(_t(shorten(_display_name(result.file, common))), st["cell"]),
        ]
        if patient_w:
            name, _ = identifiers(result)
            pid = ctx.patient_id_of(result)
            row.append(Paragraph(_t(", ".join(x for x in (name, pid) if x)), st["cell"]))
        status_text = STATUS_TEXT.get(result.status, str(result.status))
        # Plain strings draw much faster than Paragraphs; only text that may wrap gets one.
        row.append(status_text if result.status == ScanStatus.OK else Paragraph(
            _t(status_text), st["cell"]))  # fmt: skip
        modality = shown_modality(result)
        row.append(Paragraph(_t(modality), st["cell"]) if modality else "–")
        line = len(rows)
        outside = scan_scope(result, ctx)
        for index, mid in enumerate(finding):
            found = result.findings.get(mid)
            row += [
                _score_text(None if found is None else found.probability),
                "outside" if mid in outside else _flag_word(flags[mid]),
            ]
            if mid in outside:
                col = first_model_col + 2 * index
                style.append(("TEXTCOLOR", (col, line), (col + 1, line), _OUT_OF_SCOPE))
            if flags[mid]:
                col = first_model_col + 2 * index
                style += [
                    ("BACKGROUND", (col, line), (col + 1, line), _FLAG_BG),
                    ("FONT", (col + 1, line), (col + 1, line), bold, 7.5),
                ]
        rows.append(row)
        if len(rows) - header_rows >= TABLE_CHUNK:
            yield table(rows, style)
            rows, style = header()
    if len(rows) > header_rows:
        yield table(rows, style)


def _flagged_section(
    line: _Ranked,
    thumbnail: bytes | None,
    ctx: ReportContext,
    common: str | None,
    st: dict[str, ParagraphStyle],
    fonts: tuple[str, str],
) -> Flowable:
    """One flagged scan in a compact block (several a page): the scan and the heatmap of
    each model that flagged it side by side, then its scores, thresholds and the reader's
    decision."""
    regular, bold = fonts
    number, result = line.rank, line.result
    flags = scan_flags(result, ctx)
    points = ctx.scan_points(result)  # the scan's patient group's own thresholds
    flagged_ids = [mid for mid, flag in flags.items() if flag]
    width = PAGE[0] - 2 * MARGIN
    box = 31 * mm  # six scans with two heatmaps each fit on a page
    images: list[Any] = []
    grey = None
    if thumbnail is not None:
        try:
            grey = _print_size(decode_thumbnail(thumbnail))
        except (OSError, ValueError) as exc:
            logger.warning("scan #%d: stored thumbnail cannot be decoded: %s", number, exc)
    if grey is not None:
        scan_jpeg = _jpeg(np.rint(grey * 255).astype(np.uint8))
        images.append([_image_flowable(scan_jpeg, box, box), Paragraph("Scan", st["tiny"])])
        for mid in flagged_ids:
            manifest: ModelManifest = ctx.manifests[mid]
            finding = result.findings[mid]
            caption = Paragraph(f"{_t(_short(manifest))}: where the model looked", st["tiny"])
            if finding.activation is None:
                images.append([Paragraph("no heatmap available", st["muted"]), caption])
                continue
            cam = activation_to_image(finding.activation, manifest.preprocessing, grey.shape)
            heat = _jpeg(overlay(grey, cam, REPORT_OPACITY))
            images.append([_image_flowable(heat, box, box), caption])
    else:
        images.append([Paragraph("no thumbnail stored", st["muted"])])

    title = Paragraph(
        f"<b>#{number}</b> · {_t(shorten(_display_name(result.file, common), 110))}", st["base"]
    )
    text: list[Flowable] = []
    if ctx.include_identifiers:
        name, _ = identifiers(result)
        pid = ctx.patient_id_of(result)
        text.append(Paragraph(f"Patient: {_t(name or '—')} · ID: {_t(pid or '—')}", st["small"]))
    score_rows: list[list[str]] = [["Model", "Score", "Threshold", "Flag"]]
    style = _grid_style(regular, bold, 7.5)
    outside = scan_scope(result, ctx)  # a score past its threshold but outside: not "no"
    for row, (mid, manifest) in enumerate(ctx.finding_manifests.items(), start=1):
        found = result.findings.get(mid)
        flag = {True: "YES", False: "no", None: "not run"}[flags[mid]]
        if mid in outside:
            flag = "outside scope"
        if flags[mid] and found is not None:
            flag += f" (+{margin(found.probability, points[mid].threshold) * 100:.0f} %)"
        score_rows.append(
            [
                _short(manifest),
                _score_text(None if found is None else found.probability),
                f"{points[mid].threshold:.3f}"
                + (f" ({points[mid].group})" if points[mid].group else ""),
                flag,
            ]
        )
        if flags[mid]:
            style += [("BACKGROUND", (0, row), (-1, row), _FLAG_BG),
                      ("FONT", (3, row), (3, row), bold, 7.5)]  # fmt: skip
    text_w = width - len(images) * (box + 2 * mm)
    inner = text_w - 4 * mm  # the cell's own padding
    table = Table(
        score_rows,
        # the threshold column holds "0.694 (adult)"; the flag column "outside scope"
        colWidths=[inner * 0.24, inner * 0.17, inner * 0.3, inner * 0.29],
        hAlign="LEFT",
    )
    table.setStyle(TableStyle([*style, ("ALIGN", (1, 1), (2, -1), "RIGHT")]))
    text.append(table)
    decision = line.decision
    if decision is not None:
        text.append(Paragraph(f"<b>Reader: {_t(decision.summary())}</b>", st["small"]))
    else:
        text.append(Paragraph("Reader decision: ______________________", st["small"]))
    if result.warnings:
        text.append(Paragraph("Warnings: " + _t("; ".join(result.warnings)), st["tiny"]))
    block = Table(
        [[*images, text]],
        colWidths=[box + 2 * mm] * len(images) + [text_w],
        hAlign="LEFT",
    )
    block.setStyle(
        TableStyle(
            [
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LEFTPADDING", (0, 0), (-1, -1), 0),
                ("RIGHTPADDING", (0, 0), (-1, -1), 2),
                ("TOPPADDING", (0, 0), (-1, -1), 1),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 3),
                ("LINEBELOW", (0, 0), (-1, 0), 0.4, _GRID),
            ]
        )
    )
    return KeepTogether([title, Spacer(1, 0.8 * mm), block, Spacer(1, 1.5 * mm)])


def _problems(
    ranked: _Ranking,
    total: int,
    ctx: ReportContext,
    common: str | None,
    st: dict[str, ParagraphStyle],
    fonts: tuple[str, str],
) -> Iterator[Flowable]:
    """The scans not screened (``total`` of them), :data:`TABLE_CHUNK` rows per table."""
    regular, bold = fonts
    yield Paragraph(f"Scans not screened ({total})", st["h1"])
    if not total:
        yield Paragraph("Every scan was screened.", st["base"])
        return
    width = PAGE[0] - 2 * MARGIN

    def rows() -> Iterator[list[Any]]:
        for line_item in ranked.lines(ranked.screened):  # they sort last
            number, result = line_item.rank, line_item.result
            if result.status == ScanStatus.OK:
                continue
            quality = quality_of(result)
            detail = result.reason or ""
            if result.error_code:
                detail += f" [{result.error_code}]"
            words = f"<b>{_t(quality.text)}</b>" if quality is not None else ""
            reason = "<br/>".join(x for x in (words, _t(detail)) if x) or "—"
            yield [
                str(number),
                Paragraph(_t(shorten(_display_name(result.file, common))), st["cell"]),
                STATUS_TEXT.get(result.status, str(result.status)),
                Paragraph(reason, st["cell"]),
            ]

    yield from _chunked_table(
        ("#", "File", "Status", "Reason"),
        [10 * mm, 70 * mm, 25 * mm, width - 105 * mm],
        rows(),
        st,
        _list_style(regular, bold),
    )


def _outside_scope(
    ranked: _Ranking,
    total: int,
    ctx: ReportContext,
    common: str | None,
    st: dict[str, ParagraphStyle],
    fonts: tuple[str, str],
) -> Iterator[Flowable]:
    """Every scan a model ran on outside its scope (``total``), with the whole reason."""
    regular, bold = fonts
    if not total:
        return
    width = PAGE[0] - 2 * MARGIN

    def rows() -> Iterator[list[Any]]:
        for line_item in ranked.outside_lines():
            outside = scan_scope(line_item.result, ctx)
            if not outside:
                continue
            reasons = (_t(clip_text(v.reason, PDF_TEXT_CHARS)) for v in outside.values())
            yield [
                str(line_item.rank),
                Paragraph(_t(shorten(_display_name(line_item.result.file, common))), st["cell"]),
                Paragraph(_t(scan_group(line_item.result, ctx).describe()), st["cell"]),
                Paragraph("<br/>".join(reasons), st["cell"]),
            ]

    yield PageBreak()
    yield Paragraph(f"Scans outside a model's scope ({total})", st["h1"])
    yield Paragraph(
        "The model's score is shown but raises no flag: the model was not trained on such "
        "patients or views. The patient group comes from the staff, the file (DICOM age) "
        "or an estimate from the image, as stated.",
        st["muted"],
    )
    yield Spacer(1, 2 * mm)
    yield from _chunked_table(
        ("#", "File", "Patient group", "Reason"),
        [10 * mm, 55 * mm, 45 * mm, width - 110 * mm],
        rows(),
        st,
        _list_style(regular, bold),
    )


def _resume_words(ctx: ReportContext) -> str:
    """How page 1 names the command that continues a stopped batch: the run's own (its store,
    outputs and report options) when the command line gave it, else the bare command."""
    if ctx.resume_command:
        return f"the command {ctx.resume_command}"
    return f"'medscreen resume {ctx.batch_id or 'BATCH'}'"


def _section(
    results: Iterable[ScanResult],
    line: _Ranked,
    ctx: ReportContext,
    common: str | None,
    st: dict[str, ParagraphStyle],
    fonts: tuple[str, str],
) -> Flowable:
    """A flagged scan's block, from the scan fetched again in full (maps, image) and let go."""
    full = detail_of(results, line.result)
    shown = line if full is line.result else replace(line, result=full)
    return _flagged_section(shown, thumbnail_of(results, full), ctx, common, st, fonts)


def _volume_name(path: Path, number: int) -> Path:
    """``report.pdf`` for the first file, ``report-2.pdf``, ``report-3.pdf``… for the next."""
    return path if number == 1 else path.with_name(f"{path.stem}-{number}{path.suffix}")


def iter_story(
    results: Iterable[ScanResult],
    ctx: ReportContext,
    *,
    volumes: Sequence[str] = (),
    ranked: _Ranking | None = None,
) -> Iterator[Flowable]:
    """The report's flowables, made as they are drawn (see :func:`write_pdf`).

    Page 1 is what a programme files (counts, models and thresholds, sign-off, the ranked
    list); then compact pages of the flagged scans, then every scan, then the scans outside a
    scope and those not screened, all in the engine's triage order and numbered by it.

    ``results`` is read twice (counts; the triage order), then its scans are fetched again
    by row, a chunk at a time, as each table and page prints them (:class:`_Ranking`), and
    each flagged scan's thumbnail when its block is made
    (:func:`~desktop.engine.reports.source.thumbnail_of`). The order itself needs every
    scan's key at once: the report holds 20 bytes a scan for it, never a scan's record.
    """
    results = reiterable(results)
    fonts = register_fonts()
    st = _styles(*fonts)
    counts = count(results, ctx)
    ranked = _rank(results, ctx) if ranked is None else ranked
    common = ranked.common
    yield from _cover(ctx, counts, ranked, common, st, fonts)
    yield from _ranked_list(ctx, ranked, common, st, fonts)
    flagged = ranked.flagged
    shown = min(flagged, FLAGGED_PER_FILE) if volumes else flagged
    if flagged:
        yield PageBreak()
        yield Paragraph(f"Flagged scans ({flagged}), in triage order", st["h1"])
        yield Paragraph(
            "Each flagged scan with the heatmap of every model that flagged it. A heatmap "
            "shows which regions weighed most in the model's score; it is not an outline "
            "of a lesion.",
            st["muted"],
        )
        yield _legend(st, 80 * mm)
        yield Spacer(1, 2 * mm)
        for line in ranked.lines(0, shown):
            yield _section(results, line, ctx, common, st, fonts)
        if shown < flagged:
            yield Paragraph(
                f"Flagged scans #{shown + 1}–#{flagged} continue in "
                + ", ".join(_t(name) for name in volumes)
                + f" ({FLAGGED_PER_FILE:,} a file), in the same folder.",
                st["h2"],
            )
    yield PageBreak()
    yield from _summary(ranked, counts.total, ctx, common, st, fonts)
    yield from _outside_scope(ranked, counts.outside_scope_any, ctx, common, st, fonts)
    if counts.not_chest_xray or counts.errors:
        yield PageBreak()
    yield from _problems(ranked, counts.not_chest_xray + counts.errors, ctx, common, st, fonts)
    yield from _model_details(ctx, st, fonts)


def _model_details(
    ctx: ReportContext, st: dict[str, ParagraphStyle], fonts: tuple[str, str]
) -> list[Flowable]:
    """The exact models (ids, versions, hashes) that produced this report."""
    regular, bold = fonts
    rows: list[list[Any]] = [["Id", "Model", "Version", "Role", "SHA-256 (first 16)"]]
    for mid, manifest in ctx.manifests.items():
        # The name wraps in its cell: a plain string is drawn on one line whatever its
        # length and ran over the next columns ("Patient group (child/adult) from the image").
        name = Paragraph(_t(manifest.name), st["cell"])
        rows.append([mid, name, manifest.version, manifest.role, manifest.sha256[:16]])
    table = Table(rows, colWidths=[22 * mm, 60 * mm, 18 * mm, 24 * mm, 40 * mm], hAlign="LEFT")
    table.setStyle(TableStyle(_grid_style(regular, bold)))
    return [Spacer(1, 4 * mm), Paragraph("Models used", st["h2"]), table]


def _iter_volume(
    results: Iterable[ScanResult],
    ctx: ReportContext,
    lines: Sequence[_Ranked],
    number: int,
    of: int,
    main: str,
    total: int,
) -> Iterator[Flowable]:
    """A continuation file: flagged scans ``lines`` (their triage numbers kept; at most
    :data:`FLAGGED_PER_FILE` of them, fetched for this file only)."""
    fonts = register_fonts()
    st = _styles(*fonts)
    common = _common_folder([line.result.file for line in lines])
    yield Paragraph(
        f"Flagged scans #{lines[0].rank}–#{lines[-1].rank} of {total} "
        f"(file {number} of {of}; counts, thresholds and every scan are in {_t(main)})",
        st["h1"],
    )
    yield _legend(st, 80 * mm)
    yield Spacer(1, 2 * mm)
    for line in lines:
        yield _section(results, line, ctx, common, st, fonts)


def build_story(results: Iterable[ScanResult], ctx: ReportContext) -> list[Flowable]:
    """The whole story as a list (small reports and tests; :func:`write_pdf` streams it)."""
    return list(iter_story(results, ctx))


class _StreamingDoc(BaseDocTemplate):
    """A document that pulls its flowables from an iterator as the pages are laid out.

    reportlab's ``build`` works on a list it consumes from the front; :meth:`filterFlowables`
    runs before each flowable is handled, and keeps a few flowables queued from the iterator
    (enough for keep-with-next look-ahead). What has been drawn is dropped, so the story never
    exists in memory at once.
    """

    AHEAD = 8

    def __init__(self, *args: Any, more: Iterator[Flowable], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._more = more
        self.story: list[Flowable] = []  # the list build() consumes
        self.top_up(self.story)

    def top_up(self, flowables: list[Flowable]) -> None:
        while len(flowables) < self.AHEAD:
            following = next(self._more, None)
            if following is None:
                return
            flowables.append(following)

    def filterFlowables(self, flowables: list[Flowable]) -> None:  # reportlab names it so
        if flowables is self.story:  # not reportlab's own list of page-start actions
            self.top_up(flowables)


def write_pdf(results: Iterable[ScanResult], ctx: ReportContext, path: Path) -> Path:
    """Render the PDF report to ``path`` (atomically); returns ``path``.

    A report with more than :data:`FLAGGED_PER_FILE` flagged scans continues in
    ``<stem>-2.pdf``, ``<stem>-3.pdf``… (:func:`write_pdf_files` returns them all).
    """
    return write_pdf_files(results, ctx, path)[0]


def write_pdf_files(results: Iterable[ScanResult], ctx: ReportContext, path: Path) -> list[Path]:
    """Render the PDF report: ``path``, then one file per further :data:`FLAGGED_PER_FILE`
    flagged scans. Returns every path written.

    Streamed: the flowables are made while the pages are laid out and every page's footer is
    drawn as the page ends. reportlab still assembles each *file* in memory before writing it
    (its pages and images, about 2.7 times the file's size, measured), so the flagged scans'
    pages, the bulk of a large report, are split over files of bounded size: memory depends
    on :data:`FLAGGED_PER_FILE`, not on the batch.
    """
    path = Path(path)
    results = reiterable(results)
    ranked = _rank(results, ctx)
    flagged = ranked.flagged
    starts = range(0, flagged, FLAGGED_PER_FILE)
    paths = [_volume_name(path, n) for n in range(1, max(1, len(starts)) + 1)]
    names = [p.name for p in paths[1:]]
    main = iter_story(results, ctx, volumes=names, ranked=ranked)
    _write_story(main, ctx, paths[0])
    del main
    _let_go()
    for number, start in enumerate(starts[1:], start=2):
        lines = list(ranked.lines(start, min(start + FLAGGED_PER_FILE, flagged)))
        story = _iter_volume(results, ctx, lines, number, len(paths), path.name, flagged)
        _write_story(story, ctx, paths[number - 1])
        del lines, story
        _let_go()
    for stale in path.parent.glob(f"{path.stem}-*{path.suffix}"):  # an earlier, longer run's
        if stale.stem[len(path.stem) + 1 :].isdigit() and stale not in paths:
            stale.unlink(missing_ok=True)
    logger.info("wrote PDF report to %s (%d file(s))", path.name, len(paths))
    return paths


def _let_go() -> None:
    """Free a written file's document now, and give the freed heap back to the system.

    A reportlab document is a web of reference cycles (its fonts keep per-document state), so
    only the cycle collector frees it: without a collection here each file of a 20,000-scan
    report left ~1.5 MB behind (41 files, measured), with it memory stays flat.
    """
    gc.collect()
    release_free_memory()


def _write_story(story: Iterator[Flowable], ctx: ReportContext, path: Path) -> None:
    """Lay out ``story`` page by page into ``path`` (atomically)."""
    fonts = register_fonts()
    footer_style = _styles(*fonts)["footer"]

    def produce(handle: Any) -> None:
        doc = _StreamingDoc(
            handle,
            more=story,
            pagesize=PAGE,
            leftMargin=MARGIN,
            rightMargin=MARGIN,
            topMargin=MARGIN,
            bottomMargin=MARGIN + FOOTER_HEIGHT,
            title=ctx.title,
            author=ctx.clinic_name or "MedScreen",
            creator=f"MedScreen {ctx.app_version}",
            subject="Chest X-ray screening (decision support, not a diagnosis)",
        )
        frame = Frame(
            doc.leftMargin, doc.bottomMargin, doc.width, doc.height, id="body", showBoundary=0
        )
        doc.addPageTemplates([PageTemplate(id="page", frames=[frame])])
        with _binary_streams():
            doc.build(doc.story, canvasmaker=_canvas_class(ctx, footer_style))

    write_atomic(path, produce, private=ctx.include_identifiers)  # names patients: owner-only

"""Chinese, Japanese and Korean names in the PDF (found screening a folder with a file named
"pneu 肺炎.jpeg"): DejaVu Sans has no CJK glyphs, so such file, clinic and patient names
printed as empty boxes a reader cannot match to a scan. They are now drawn in the bundled
fallback font (Droid Sans Fallback), embedded only when a report uses it."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

from desktop.engine.reports import write_pdf
from tests.test_reports import ACCENTED_NAME, context, needs_poppler, results

CJK_FILE = "肺炎-患者.jpeg"
CLINIC = "深圳市第三人民医院 · 서울 진료소 · 東京クリニック"


def _fonts(pdf: Path) -> str:
    return subprocess.run(["pdffonts", str(pdf)], capture_output=True, text=True, check=True).stdout


def _text(pdf: Path) -> str:
    out = subprocess.run(["pdftotext", "-enc", "UTF-8", str(pdf), "-"], capture_output=True)
    return out.stdout.decode("utf-8")


@needs_poppler
def test_cjk_file_and_clinic_names_are_drawn_in_the_fallback_font(tmp_path: Path):
    scans = results()
    first = scans[0]
    scans[0] = replace(first, file=str(Path(first.file).with_name(CJK_FILE)))
    pdf = write_pdf(scans, context(clinic_name=CLINIC), tmp_path / "r.pdf")
    fonts = _fonts(pdf)
    assert "DroidSansFallback" in fonts  # embedded (a subset) ...
    text = _text(pdf)
    assert CJK_FILE in text  # ... and the names come back out of the PDF as written
    assert "深圳市第三人民医院" in text and "서울 진료소" in text and "東京クリニック" in text
    assert ACCENTED_NAME not in text  # identifiers still off by default


@needs_poppler
def test_a_report_without_cjk_does_not_embed_the_fallback(tmp_path: Path):
    pdf = write_pdf(results(), context(), tmp_path / "r.pdf")  # Latin names with accents
    fonts = _fonts(pdf)
    assert "DejaVuSans" in fonts
    assert "DroidSansFallback" not in fonts

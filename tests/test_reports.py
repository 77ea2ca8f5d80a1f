"""The screening reports (CSV, JSON, PDF) on realistic results built from real images.

No trained model exists in the test suite, so the probabilities and 7x7 activation maps are
made up — but plausible — while the thumbnails come from real chest X-rays, MedNIST images
and the real DICOM file, made by the app's own loader and ``make_thumbnail``. The PDF is
checked through poppler's tools (pdftotext, pdfinfo, pdfimages): what a reader sees.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
import shutil
import subprocess
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from desktop import DISCLAIMER
from desktop.engine.errors import ModelError
from desktop.engine.loading import make_thumbnail
from desktop.engine.manifest import ModelManifest
from desktop.engine.preprocess import load_working
from desktop.engine.reports import (
    CSV_COLUMNS,
    ReportContext,
    csv_columns,
    parse_formats,
    write_csv,
    write_json,
    write_pdf,
    write_reports,
)
from desktop.engine.reports._common import atomic_open
from desktop.engine.reports.pdf import shorten
from desktop.engine.reports.tabular import safe_cell
from desktop.engine.results import (
    THUMBNAIL_SIZE,
    FindingResult,
    ScanResult,
    ScanStatus,
    ThresholdChoice,
)

DATA = Path(__file__).resolve().parent / "data"
DICOM = DATA / "dicom" / "CR-MONO1-10-chest.dcm"

ACCENTED_NAME = "José Müller-Łukasiewicz"
ACCENTED_NAME_2 = "Nguyễn Thị Ánh"
PATIENT_ID = "MRN-004417"
BIRTH_DATE = "19570312"


def _finding_manifest(mid: str, name: str, labels: list[str], sha_seed: str, points: dict) -> dict:
    return {
        "schema_version": 1,
        "id": mid,
        "version": "1.2.0",
        "name": name,
        "role": "finding",
        "task": "binary",
        "labels": labels,
        "positive_label": labels[1],
        "file": f"{mid}.onnx",
        "sha256": hashlib.sha256(sha_seed.encode()).hexdigest(),
        "input": {"name": "image", "shape": [None, 224, 224, 3], "layout": "NHWC"},
        "preprocessing": {"size": [224, 224], "channels": 3, "fit": "pad", "scale": 2.0,
                          "offset": -1.0},
        "outputs": {"probabilities": "probabilities", "activation_map": "activation_map"},
        "operating_points": points,
        "default_operating_point": "screening",
        "metrics": {"test": {"auc": 0.93, "sensitivity": 0.9, "specificity": 0.81}},
        "training": {"data": ["NLM Shenzhen/Montgomery"], "date": "2026-11-22"},
    }  # fmt: skip


def manifests() -> dict[str, ModelManifest]:
    modality = {
        "schema_version": 1,
        "id": "modality",
        "version": "1.0.3",
        "name": "Modality check",
        "role": "modality",
        "task": "multiclass",
        "labels": ["AbdomenCT", "BreastMRI", "CXR", "ChestCT", "Hand", "HeadCT"],
        "positive_label": None,
        "file": "modality.onnx",
        "sha256": hashlib.sha256(b"modality").hexdigest(),
        "input": {"name": "image", "shape": [None, 64, 64, 1]},
        "preprocessing": {"size": [64, 64], "channels": 1, "fit": "stretch"},
        "outputs": {"probabilities": "probabilities"},
        "operating_points": {},
        "default_operating_point": None,
        "gate": {"chest_label": "CXR", "min_probability": 0.5},
        "ood": {"output": "ood_score", "threshold": 3.2, "method": "energy"},
    }
    tb = _finding_manifest(
        "tb", "Tuberculosis", ["normal", "tuberculosis"], "tb",
        {"screening": {"threshold": 0.31, "sensitivity": 0.92, "specificity": 0.78},
         "balanced": {"threshold": 0.52, "sensitivity": 0.86, "specificity": 0.88}},
    )  # fmt: skip
    pn = _finding_manifest(
        "pneumonia", "Pneumonia", ["normal", "pneumonia"], "pneumonia",
        {"screening": {"threshold": 0.42, "sensitivity": 0.95, "specificity": 0.71},
         "balanced": {"threshold": 0.63, "sensitivity": 0.9, "specificity": 0.84}},
    )  # fmt: skip
    out = {}
    for data in (modality, tb, pn):
        out[data["id"]] = ModelManifest.from_dict(data)
    return out


def thumbnail_of(path: Path) -> bytes:
    """The stored thumbnail, made exactly as the app makes it (loader + make_thumbnail)."""
    return make_thumbnail(load_working(path).pixels, THUMBNAIL_SIZE)


def cam(peak: tuple[int, int], seed: int) -> np.ndarray:
    """A plausible 7x7 class activation map: a smooth blob around ``peak`` plus noise."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:7, 0:7]
    blob = np.exp(-((rows - peak[0]) ** 2 + (cols - peak[1]) ** 2) / 2.5)
    return (blob * 6.0 + rng.normal(0, 0.3, (7, 7))).astype(np.float32)


def finding(mid: str, labels: tuple[str, str], p: float, peak: tuple[int, int], seed: int,
            version: str = "1.2.0") -> FindingResult:  # fmt: skip
    return FindingResult(
        model_id=mid,
        model_key=f"{mid}@{version}#{hashlib.sha256(mid.encode()).hexdigest()[:12]}",
        probability=p,
        probabilities={labels[0]: round(1 - p, 6), labels[1]: p},
        activation=cam(peak, seed),
    )


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


MODELS_KEY = "modality@1.0.3#a1b2c3d4e5f6;tb@1.2.0#f1e2d3c4b5a6;pneumonia@1.2.0#0a1b2c3d4e5f"


def ok(path: Path, tb: float, pn: float, seed: int, **extra: Any) -> ScanResult:
    return ScanResult(
        file=str(path),
        sha256=_sha(path),
        status=ScanStatus.OK,
        modality="CXR",
        modality_score=0.9731 + seed * 1e-4,
        modality_probabilities={"CXR": 0.9731, "ChestCT": 0.0152, "Hand": 0.0117},
        ood_score=1.12 + seed / 10,
        findings={
            "tb": finding("tb", ("normal", "tuberculosis"), tb, (1, 5), seed),
            "pneumonia": finding("pneumonia", ("normal", "pneumonia"), pn, (4, 2), seed + 99),
        },
        metadata={"source_format": path.suffix.lstrip(".").lower(), "width": 299, "height": 299},
        models_key=MODELS_KEY,
        screened_at=f"2026-11-22T09:{10 + seed:02d}:00+00:00",
        thumbnail_png=thumbnail_of(path),
        **extra,
    )


def results() -> list[ScanResult]:
    """Nine results: flagged TB, flagged pneumonia, both, clean, refused, errors, DICOM."""
    tb_dir, pn_dir = DATA / "tb", DATA / "pneumonia"
    out = [
        ok(tb_dir / "tuberculosis" / "CHNCXR_0331_1.png", 0.8734, 0.2210, 1),
        ok(tb_dir / "normal" / "CHNCXR_0001_0.png", 0.0412, 0.1033, 2),
        ok(pn_dir / "pneumonia" / "person1000_bacteria_2931.jpeg", 0.1877, 0.9312, 3),
        ok(tb_dir / "tuberculosis" / "MCUCXR_0104_1.png", 0.6620, 0.5525, 4,
           warnings=("burnt-in text markers detected",)),
        ok(pn_dir / "normal" / "IM-0115-0001.jpeg", 0.0921, 0.2870, 5),
    ]  # fmt: skip
    hand = DATA / "mednist" / "Hand" / "000000.jpeg"
    out.append(
        ScanResult(
            file=str(hand),
            sha256=_sha(hand),
            status=ScanStatus.NOT_CHEST_XRAY,
            reason="looks like a hand radiograph (Hand 0.9870), not a chest X-ray",
            modality="Hand",
            modality_score=0.9870,
            modality_probabilities={"Hand": 0.987, "CXR": 0.004},
            ood_score=1.9,
            models_key=MODELS_KEY,
            screened_at="2026-11-22T09:20:00+00:00",
            thumbnail_png=thumbnail_of(hand),
        )
    )
    out.append(
        ScanResult(
            file=str(DATA / "broken" / "=cmd|' /C calc'!A0.png"),
            sha256=None,
            status=ScanStatus.ERROR,
            reason="the file ends early (truncated download or copy?)",
            error_code="truncated",
            screened_at="2026-11-22T09:21:00+00:00",
        )
    )
    long_name = DATA / ("scan_from_the_district_hospital_radiology_archive_" * 3 + "final.png")
    out.append(
        ScanResult(
            file=str(long_name),
            sha256=None,
            status=ScanStatus.ERROR,
            reason="not an image file PNG, JPEG, TIFF, BMP or DICOM can read",
            error_code="not_an_image",
            screened_at="2026-11-22T09:22:00+00:00",
        )
    )
    dicom = ok(DICOM, 0.7102, 0.4800, 6)
    out.append(
        replace(
            dicom,
            metadata={
                "source_format": "dicom",
                "width": 440,
                "height": 440,
                "bits_stored": 10,
                "photometric": "MONOCHROME1",
                "modality": "CR",
                "body_part": "CHEST",
                "patient_sex": "M",
                "patient_name": ACCENTED_NAME,
                "patient_id": PATIENT_ID,
                "patient_birth_date": BIRTH_DATE,
            },
        )
    )
    return out


def context(**overrides: Any) -> ReportContext:
    values: dict[str, Any] = {
        "batch_id": "batch-2026-11-22-0907",
        "created_at": datetime(2026, 11, 22, 9, 30, tzinfo=UTC),
        "app_version": "0.1.0",
        "manifests": manifests(),
        "choice": ThresholdChoice.parse("screening"),
        "device": "CPU (CPUExecutionProvider)",
        "clinic_name": "Clínica São João de Deus",
        "operator": ACCENTED_NAME_2,
    }
    values.update(overrides)
    return ReportContext(**values)


# --- helpers ----------------------------------------------------------------------------

POPPLER = all(shutil.which(t) for t in ("pdftotext", "pdfinfo", "pdfimages", "pdftoppm"))
needs_poppler = pytest.mark.skipif(
    not POPPLER, reason="poppler-utils (pdftotext, pdfinfo, pdfimages) not installed"
)
IDENTIFYING = (ACCENTED_NAME, "Müller", "Łukasiewicz", PATIENT_ID, BIRTH_DATE)


@pytest.fixture(scope="module")
def scan_results() -> list[ScanResult]:
    return results()


def _pdf_text(path: Path) -> str:
    out = subprocess.run(
        ["pdftotext", "-enc", "UTF-8", str(path), "-"], capture_output=True, check=True
    )
    return out.stdout.decode("utf-8")


def _pdf_pages(path: Path) -> int:
    info = subprocess.run(["pdfinfo", str(path)], capture_output=True, check=True, text=True)
    return int(re.search(r"^Pages:\s+(\d+)", info.stdout, re.M).group(1))


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle))


# --- CSV --------------------------------------------------------------------------------


def test_csv_has_the_documented_columns_and_values(scan_results, tmp_path):
    path = write_csv(scan_results, context(), tmp_path / "results.csv")
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # BOM: Excel reads the UTF-8 right
    assert b"\r\n" in raw
    with path.open(encoding="utf-8-sig", newline="") as handle:
        header = next(csv.reader(handle))
    assert tuple(header) == CSV_COLUMNS
    assert CSV_COLUMNS == (
        "file", "sha256", "status", "reason", "error_code", "modality", "modality_score",
        "tb_score", "tb_flag", "pneumonia_score", "pneumonia_flag", "patient_group",
        "patient_group_source", "outside_scope", "quality", "quality_text", "reader_decision",
        "reader_note", "reader", "decided_at", "operating_point", "warnings", "screened_at",
        "models",
    )  # fmt: skip
    rows = _read_csv(path)
    assert len(rows) == len(scan_results) == 9
    first = rows[0]
    assert first["file"].endswith("CHNCXR_0331_1.png")
    assert first["sha256"] == hashlib.sha256(Path(first["file"]).read_bytes()).hexdigest()
    assert (first["status"], first["modality"], first["modality_score"]) == ("ok", "CXR", "0.9732")
    assert (first["tb_score"], first["tb_flag"]) == ("0.8734", "yes")
    assert (first["pneumonia_score"], first["pneumonia_flag"]) == ("0.2210", "no")
    assert first["operating_point"] == "screening"
    assert first["models"] == MODELS_KEY
    assert rows[3]["warnings"] == "burnt-in text markers detected"
    hand = rows[5]
    assert hand["status"] == "not_chest_xray" and "hand radiograph" in hand["reason"]
    assert hand["tb_score"] == hand["tb_flag"] == hand["pneumonia_flag"] == ""
    error = rows[6]
    assert (error["status"], error["error_code"], error["sha256"]) == ("error", "truncated", "")
    assert rows[8]["tb_flag"] == "yes" and rows[8]["pneumonia_flag"] == "yes"  # 0.48 >= 0.42


def test_csv_neutralises_formula_injection(tmp_path):
    evil = [
        ScanResult(file=name, sha256=None, status=ScanStatus.ERROR, reason=reason)
        for name, reason in [
            ('=HYPERLINK("http://x")', "-2+3"),
            ("+1.png", "@SUM(A1)"),
            ("-x.png", "ok"),
            ("@cmd.png", "\tspace"),
            ("plain=name.png", "fine"),
        ]
    ]
    rows = _read_csv(write_csv(evil, context(), tmp_path / "r.csv"))
    assert [r["file"] for r in rows] == [
        "'=HYPERLINK(\"http://x\")", "'+1.png", "'-x.png", "'@cmd.png", "plain=name.png"
    ]  # fmt: skip
    assert [r["reason"] for r in rows] == ["'-2+3", "'@SUM(A1)", "ok", "'\tspace", "fine"]
    assert safe_cell("0.5") == "0.5"


def test_csv_identifiers_only_when_opted_in(scan_results, tmp_path):
    off = write_csv(scan_results, context(), tmp_path / "off.csv").read_text("utf-8-sig")
    for secret in IDENTIFYING:
        assert secret not in off
    on_path = write_csv(scan_results, context(include_identifiers=True), tmp_path / "on.csv")
    rows = _read_csv(on_path)
    assert list(rows[0])[-2:] == ["patient_name", "patient_id"]
    assert (rows[8]["patient_name"], rows[8]["patient_id"]) == (ACCENTED_NAME, PATIENT_ID)
    assert rows[0]["patient_name"] == ""


def test_csv_columns_follow_the_finding_models_and_a_custom_threshold(scan_results, tmp_path):
    only_tb = {k: v for k, v in manifests().items() if k != "pneumonia"}
    ctx = context(manifests=only_tb, choice=ThresholdChoice.parse("0.5"))
    assert csv_columns(ctx) == tuple(c for c in CSV_COLUMNS if not c.startswith("pneumonia"))
    rows = _read_csv(write_csv(iter(scan_results), ctx, tmp_path / "tb.csv"))  # a generator
    assert rows[0]["operating_point"] == "custom 0.5"
    assert [r["tb_flag"] for r in rows] == ["yes", "no", "no", "yes", "no", "", "", "", "yes"]


# --- JSON -------------------------------------------------------------------------------


def test_json_has_batch_models_points_and_every_probability(scan_results, tmp_path):
    path = write_json(scan_results, context(), tmp_path / "r.json")
    doc = json.loads(path.read_text("utf-8"))
    assert doc["schema"] == "medscreen.report" and doc["schema_version"] == 1
    assert doc["disclaimer"] == DISCLAIMER
    batch = doc["batch"]
    assert batch["app_version"] == "0.1.0"
    assert batch["device"] == "CPU (CPUExecutionProvider)"
    assert batch["created_at"] == "2026-11-22T09:30:00+00:00"
    assert batch["operator"] == ACCENTED_NAME_2 and batch["include_identifiers"] is False
    tb_point = doc["operating_point"]["models"]["tb"]
    assert tb_point == {
        "name": "screening",
        "threshold": 0.31,
        "validation_sensitivity": 0.92,
        "validation_specificity": 0.78,
        "site_calibration": None,  # a manifest point, not a site calibration
    }
    assert set(doc["models"]) == {"modality", "tb", "pneumonia"}
    assert doc["models"]["tb"]["version"] == "1.2.0"
    assert doc["models"]["tb"]["sha256"] == hashlib.sha256(b"tb").hexdigest()
    assert doc["counts"] == {
        "total": 9, "screened": 6, "not_chest_xray": 1, "errors": 2,
        "flagged": {"tb": 3, "pneumonia": 3}, "flagged_any": 4,
        "outside_scope": {"tb": 0, "pneumonia": 0}, "outside_scope_any": 0,
    }  # fmt: skip
    first = doc["scans"][0]
    assert first["findings"]["tb"]["probabilities"] == {"normal": 0.1266, "tuberculosis": 0.8734}
    assert first["findings"]["tb"]["flag"] is True and first["flags"]["pneumonia"] is False
    assert first["findings"]["tb"]["threshold"] == 0.31
    assert first["modality_probabilities"]["CXR"] == 0.9731
    assert first["ood_score"] == pytest.approx(1.22)
    hand = doc["scans"][5]
    assert hand["status"] == "not_chest_xray" and hand["findings"] == {}
    assert hand["flags"] == {"tb": None, "pneumonia": None}
    text = path.read_text("utf-8")
    assert "thumbnail" not in text and "activation" not in text  # no image data
    for secret in IDENTIFYING:
        assert secret not in text
    assert doc["scans"][8]["metadata"]["photometric"] == "MONOCHROME1"  # public metadata kept


def test_json_identifiers_when_opted_in(scan_results, tmp_path):
    ctx = context(include_identifiers=True)
    doc = json.loads(write_json(scan_results, ctx, tmp_path / "r.json").read_text("utf-8"))
    meta = doc["scans"][8]["metadata"]
    assert (meta["patient_name"], meta["patient_id"]) == (ACCENTED_NAME, PATIENT_ID)
    assert meta["patient_birth_date"] == BIRTH_DATE


def test_json_turns_nan_into_null(tmp_path):
    odd = replace(results()[1], ood_score=float("nan"), modality_score=float("inf"))
    doc = json.loads(write_json([odd], context(), tmp_path / "r.json").read_text("utf-8"))
    assert doc["scans"][0]["ood_score"] is None and doc["scans"][0]["modality_score"] is None


# --- writing safely ---------------------------------------------------------------------


def test_a_failed_write_leaves_the_old_report_and_no_temp_file(tmp_path):
    target = tmp_path / "report.csv"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(RuntimeError), atomic_open(target, "w", encoding="utf-8") as handle:
        handle.write("half a report")
        raise RuntimeError("power cut")
    assert target.read_text(encoding="utf-8") == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.csv"]


def test_write_reports_checks_everything_before_writing(scan_results, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="unknown report format 'docx'"):
        write_reports(scan_results, context(), out, ["pdf,docx"])
    with pytest.raises(ValueError, match="plain file name"):
        write_reports(scan_results, context(), out, ["csv"], stem="../elsewhere")
    with pytest.raises(ModelError, match="no operating point 'strict'"):
        write_reports(scan_results, context(choice=ThresholdChoice.parse("strict")), out, ["csv"])
    assert not out.exists()
    with pytest.raises(ValueError, match="timezone-aware"):
        context(created_at=datetime(2026, 11, 22, 9, 30))
    assert parse_formats(["PDF", " json,csv", "pdf"]) == ["csv", "json", "pdf"]


def test_write_reports_writes_each_format_without_identifiers_in_names_or_logs(
    scan_results, tmp_path, caplog
):
    caplog.set_level(logging.DEBUG)
    paths = write_reports(scan_results, context(), tmp_path, ["pdf", "csv", "json"], "batch-1")
    assert [p.name for p in paths] == ["batch-1.csv", "batch-1.json", "batch-1.pdf"]
    assert all(p.stat().st_size > 0 for p in paths)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)
    for secret in IDENTIFYING:
        assert secret not in caplog.text
    # Even with identifiers in the reports, they stay out of the log.
    caplog.clear()
    write_reports(scan_results, context(include_identifiers=True), tmp_path, ["pdf"], "ids")
    for secret in IDENTIFYING:
        assert secret not in caplog.text


# --- PDF --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pdf_off(scan_results, tmp_path_factory) -> Path:
    return write_pdf(scan_results, context(), tmp_path_factory.mktemp("pdf") / "off.pdf")


@pytest.fixture(scope="module")
def pdf_on(scan_results, tmp_path_factory) -> Path:
    ctx = context(include_identifiers=True)
    return write_pdf(scan_results, ctx, tmp_path_factory.mktemp("pdf") / "on.pdf")


@needs_poppler
def test_pdf_is_streamed_into_the_file_with_reportlab_s_own_bytes(
    scan_results, tmp_path, monkeypatch
):
    """The save writes each object as reportlab formats it: the bytes reportlab's own save
    writes, never the whole file in one piece (reportlab's own save formats every object,
    joins them and writes the join: 22 MB held for an 11 MB report, 1 MB streamed, measured
    with tracemalloc on a 1,000-scan report)."""
    from reportlab import rl_config
    from reportlab.pdfbase import pdfdoc

    from desktop.engine.reports import pdf as pdf_module

    monkeypatch.setattr(rl_config, "invariant", 1)  # fixed ID and dates: comparable bytes
    streaming_save = pdf_module._StreamingPDFDocument.SaveToFile
    writes: list[list[int]] = []

    class Recorder:  # the open report file, noting the size of every write
        def __init__(self, handle: Any) -> None:
            self.handle, self.name, self.sizes = handle, "report.pdf", []
            writes.append(self.sizes)

        def write(self, data: bytes) -> int:
            self.sizes.append(len(data))
            return self.handle.write(data)

    def recorded(self: Any, filename: Any, canvas: Any) -> None:
        streaming_save(self, Recorder(filename), canvas)

    monkeypatch.setattr(pdf_module._StreamingPDFDocument, "SaveToFile", recorded)
    streamed = write_pdf(scan_results, context(), tmp_path / "streamed.pdf")
    # reportlab's own save: format the whole file into memory, then write it
    monkeypatch.setattr(pdf_module._StreamingPDFDocument, "format", pdfdoc.PDFDocument.format)
    joined = write_pdf(scan_results, context(), tmp_path / "joined.pdf")

    size = streamed.stat().st_size
    assert size > 100_000  # real thumbnails and heatmaps in it
    assert streamed.read_bytes() == joined.read_bytes()
    streamed_writes, joined_writes = writes
    assert max(joined_writes) == size  # the whole file held, then written at once
    assert sum(streamed_writes) == size
    assert len(streamed_writes) > 30  # one write per object (pages, images, fonts)
    assert max(streamed_writes) < size / 4  # never more than one object at a time


def test_pdf_cover_states_counts_models_and_operating_point(pdf_off):
    text = _pdf_text(pdf_off)
    cover = text.split("\f")[0]
    for expected in (
        "Chest X-ray screening report",
        "Clínica São João de Deus",
        ACCENTED_NAME_2,  # rendered with DejaVu Sans, not boxes
        # local time with the UTC offset written out (issue 14)
        _local_stamp(datetime(2026, 11, 22, 9, 30, tzinfo=UTC)),
        "0.1.0",
        "CPU (CPUExecutionProvider)",
        "batch-2026-11-22-0907",
        "set on validation data",
        "0.310",
        "0.92",
        "0.78",
        "0.420",
        "0.95",
        "0.71",
        "not included",
    ):
        assert expected in cover, expected
    assert hashlib.sha256(b"tb").hexdigest()[:16] in text  # "Models used", at the end
    compact = re.sub(r"\s+", " ", cover)
    # one row of counts: scans, screened, flagged per model, any, not a chest X-ray, errors,
    # reader decisions (read with the layout kept, so the row reads left to right)
    layout = subprocess.run(
        ["pdftotext", "-layout", "-f", "1", "-l", "1", "-enc", "UTF-8", str(pdf_off), "-"],
        capture_output=True, check=True,
    ).stdout.decode("utf-8")  # fmt: skip
    assert re.search(r"^\s*9\s+6\s+3\s+3\s+\d+\s+1\s+2\s+0\s*$", layout, re.M), layout
    assert "Screened" in compact and "Flagged Tuberculosis" in compact


def _local_stamp(when: datetime) -> str:
    local = when.astimezone()
    offset = local.strftime("%z")
    return f"{local:%Y-%m-%d %H:%M} (UTC{offset[:3]}:{offset[3:]})"


@needs_poppler
def test_pdf_lists_scores_flags_reasons_and_numbers_every_page(pdf_off):
    text = _pdf_text(pdf_off)
    pages = _pdf_pages(pdf_off)
    assert 3 <= pages <= 8
    page_texts = text.split("\f")[:pages]
    for number, page in enumerate(page_texts, start=1):
        assert f"page {number} of {pages}" in page
        assert "decision-support tool" in page  # the disclaimer on every page
    for score in ("0.8734", "0.0412", "0.9312", "0.6620", "0.5525", "0.7102", "0.4800"):
        assert score in text
    assert "YES" in text and re.search(r"YES \(\+\d+ %\)", text)  # the flag and its margin
    assert "Flagged scans (4), in triage order" in text and "Scans not screened (3)" in text
    assert "looks like a hand radiograph" in text
    assert "the file ends early" in text and "[truncated]" in text
    assert "…" in text  # the very long file name is shortened, not overflowing
    assert "burnt-in text markers detected" in text
    for secret in IDENTIFYING:
        assert secret not in text


@needs_poppler
def test_pdf_shows_identifiers_only_when_opted_in(pdf_on):
    text = _pdf_text(pdf_on)
    assert "Patient: José Müller-Łukasiewicz · ID: MRN-004417" in text
    assert "included (opted in)" in text
    assert BIRTH_DATE not in text  # only name and ID are shown, even when opted in


@needs_poppler
def test_pdf_embeds_small_jpegs_for_each_flagged_scan(pdf_off):
    listing = subprocess.run(
        ["pdfimages", "-list", str(pdf_off)], capture_output=True, check=True, text=True
    ).stdout.splitlines()[2:]
    rows = [line.split() for line in listing if line.strip()]
    # columns: page num type width height color comp bpc enc interp object-id ...
    legends = [row for row in rows if (row[3], row[4]) == ("256", "6")]
    images = [row for row in rows if row not in legends]
    # Flagged: #1 TB (scan + 1 heatmap), #3 pneumonia (2), #4 both (3), #9 DICOM both (3).
    assert len(images) == 10
    assert len(legends) == 1  # one colour scale above the flagged scans (issue 14)
    assert {row[8] for row in images} == {"jpeg"}  # columns: page num type w h color comp bpc enc
    assert max(max(int(row[3]), int(row[4])) for row in images) <= 300
    assert {row[5] for row in images} == {"gray", "rgb"}  # plain scans grey, heatmaps colour
    assert pdf_off.stat().st_size < 400_000


@needs_poppler
def test_pdf_pages_render(pdf_off, tmp_path):
    subprocess.run(
        ["pdftoppm", "-r", "30", "-png", "-f", "1", "-l", "1", str(pdf_off), str(tmp_path / "p")],
        check=True,
        capture_output=True,
    )
    (page,) = tmp_path.glob("p*.png")
    with Image.open(page) as image:
        assert image.size[1] > image.size[0]  # A4 portrait
        assert image.convert("L").getextrema()[0] < 50  # there is dark text on it


def test_pdf_with_no_flags_and_no_thumbnails_still_renders(tmp_path):
    quiet = [replace(r, thumbnail_png=None) for r in results()[:2]]
    path = write_pdf(quiet, context(choice=ThresholdChoice.parse("0.99")), tmp_path / "q.pdf")
    assert path.read_bytes().startswith(b"%PDF")
    if POPPLER:
        text = _pdf_text(path)
        assert "Scans needing attention (0)" in text and "Every scan was screened." in text
        assert "No scan reached a threshold" in text


def test_long_names_keep_their_start_and_extension():
    name = "district_hospital_" * 10 + "scan.png"
    short = shorten(name, 60)
    assert len(short) == 60 and short.startswith("district_hospital_")
    assert short.endswith("scan.png") and "…" in short
    assert shorten("short.png") == "short.png"


# --- streaming sources (reports/source.py) ------------------------------------------------


def test_json_is_streamed_with_the_same_text_as_the_whole_document(scan_results, tmp_path):
    path = write_json(iter(scan_results), context(), tmp_path / "r.json")  # a one-shot iterator
    from desktop.engine.reports.tabular import report_document

    whole = json.dumps(report_document(scan_results, context()), ensure_ascii=False, indent=2)
    assert path.read_text(encoding="utf-8") == whole + "\n"
    empty = write_json([], context(), tmp_path / "e.json")
    assert json.loads(empty.read_text(encoding="utf-8"))["scans"] == []


@needs_poppler
def test_pdf_fetches_each_flagged_thumbnail_from_the_source(scan_results, tmp_path):
    """Rows without images (a table, the store) and a lookup: the same images are drawn, each
    fetched once, and only for the flagged scans."""
    from desktop.engine.reports.source import WithThumbnails

    by_sha = {r.sha256: r.thumbnail_png for r in scan_results}
    asked: list[str] = []

    def lookup(result: ScanResult) -> bytes | None:
        asked.append(result.file)
        return by_sha[result.sha256]

    rows = [replace(r, thumbnail_png=None) for r in scan_results]
    path = write_pdf(WithThumbnails(rows, lookup), context(), tmp_path / "s.pdf")
    listing = subprocess.run(
        ["pdfimages", "-list", str(path)], capture_output=True, check=True, text=True
    ).stdout.splitlines()[2:]
    images = [line for line in listing if line.split() and line.split()[3:5] != ["256", "6"]]
    assert len(images) == 10  # as test_pdf_embeds_small_jpegs_for_each_flagged_scan
    assert len(asked) == len(set(asked)) == 4  # the four flagged scans, once each


@needs_poppler
def test_long_tables_are_made_in_chunks_and_every_row_is_listed(tmp_path, monkeypatch):
    from desktop.engine.reports import pdf as pdf_module

    monkeypatch.setattr(pdf_module, "TABLE_CHUNK", 3)
    many = [replace(r, file=f"{r.file}.{i}") for i in range(3) for r in results()]
    path = write_pdf(many, context(), tmp_path / "m.pdf")
    text = subprocess.run(
        ["pdftotext", "-layout", "-enc", "UTF-8", str(path), "-"], capture_output=True, check=True
    ).stdout.decode("utf-8")
    table = text[text.index(f"All scans ({len(many)})") : text.index("Scans not screened (")]
    numbers = [int(n) for n in re.findall(r"^\s{2,}(\d+)\s", table, re.M)]
    assert numbers == list(range(1, len(many) + 1))  # every row once, across 9 chunk tables
    assert table.count("Modality") >= len(many) // 3  # each chunk has its header
    pages = _pdf_pages(path)
    assert re.search(rf"page {pages} of\s+{pages}\b", text)  # the total, drawn as a form


@needs_poppler
def test_many_flagged_scans_continue_in_further_files(tmp_path, monkeypatch):
    """reportlab holds a whole file in memory, so flagged pages are split over files."""
    from desktop.engine.reports import pdf as pdf_module

    monkeypatch.setattr(pdf_module, "FLAGGED_PER_FILE", 3)
    many = [replace(r, file=f"{r.file}.{i}") for i in range(3) for r in results()]
    (tmp_path / "report-9.pdf").write_bytes(b"%PDF- an earlier, longer report's file")
    paths = write_reports(many, context(), tmp_path, ["pdf"], "report")
    flagged = 4 * 3  # four flagged scans in each copy of the fixture set
    assert [p.name for p in paths] == ["report.pdf"] + [f"report-{n}.pdf" for n in (2, 3, 4)]
    assert not (tmp_path / "report-9.pdf").exists()
    main = _pdf_text(paths[0])
    assert "Flagged scans #4–#12 continue in report-2.pdf, report-3.pdf, report-4.pdf" in (
        " ".join(main.split())
    )
    second = " ".join(_pdf_text(paths[1]).split())
    assert f"Flagged scans #4–#6 of {flagged} (file 2 of 4" in second
    assert f"Flagged scans #10–#12 of {flagged} (file 4 of 4" in " ".join(
        _pdf_text(paths[3]).split()
    )


@needs_poppler
def test_the_last_continuation_file_holds_only_the_remaining_flagged_scans(tmp_path, monkeypatch):
    """12 flagged scans at 5 a file: the third file has #11-#12, not the next unflagged scans."""
    from desktop.engine.reports import pdf as pdf_module

    monkeypatch.setattr(pdf_module, "FLAGGED_PER_FILE", 5)
    many = [replace(r, file=f"{r.file}.{i}") for i in range(3) for r in results()]
    paths = write_reports(many, context(), tmp_path, ["pdf"], "report")
    assert [p.name for p in paths] == ["report.pdf", "report-2.pdf", "report-3.pdf"]
    last = " ".join(_pdf_text(paths[2]).split())
    assert "Flagged scans #11–#12 of 12 (file 3 of 3" in last
    assert "CHNCXR_0001_0" not in last and "IM-0115-0001" not in last  # the unflagged scans


@needs_poppler
def test_pdf_from_the_store_fetches_class_maps_per_flagged_scan(scan_results, pdf_off, tmp_path):
    """A stored batch's triage order holds compact keys, no scans (20,000 are ranked at once);
    each table chunk and flagged block fetches its scans again, so the PDF has the same
    heatmaps as from results in memory."""
    from desktop.engine.reports import StoredBatch
    from desktop.engine.reports.pdf import _rank
    from desktop.engine.store import ResultsStore
    from desktop.engine.triage import TRIAGE_DTYPE

    store = ResultsStore(tmp_path / "r.sqlite3")
    batch = store.create_batch([str(DATA)], MODELS_KEY, "CPU")
    store.set_items(batch, [r.file for r in scan_results])
    for seq, result in enumerate(scan_results):
        store.record(batch, seq, result)
    stored = StoredBatch(store, batch)
    ranked = _rank(stored, context())
    assert len(ranked) == len(scan_results) and ranked.keys.dtype == TRIAGE_DTYPE
    assert sorted(ranked.keys["row"].tolist()) == list(range(len(scan_results)))  # seqs
    fetched = list(ranked.lines())  # rows fetched without images, a chunk at a time
    assert [line.rank for line in fetched] == list(range(1, len(scan_results) + 1))
    assert all(line.result.thumbnail_png is None for line in fetched)
    path = write_pdf(stored, context(), tmp_path / "stored.pdf")

    def images(pdf: Path) -> list[tuple[str, str, str]]:
        listing = subprocess.run(
            ["pdfimages", "-list", str(pdf)], capture_output=True, check=True, text=True
        ).stdout.splitlines()[2:]
        return [tuple(line.split()[3:6]) for line in listing if line.strip()]

    # the scans and their heatmaps (10 images + the colour scale), as from results in memory
    assert images(path) == images(pdf_off) and len(images(path)) == 11
    store.close()

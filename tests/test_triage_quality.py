"""Triage order and plain quality codes (engine), on hand-made results and on real scans
screened by the shipped models (a hand, a cat photo, blank images, damaged files)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from desktop.engine.errors import ScanErrorCode
from desktop.engine.manifest import OperatingPoint
from desktop.engine.quality import (
    QualityCode,
    label_words,
    quality_of,
    reason_text,
    shown_modality,
)
from desktop.engine.results import FindingResult, ScanResult, ScanStatus
from desktop.engine.triage import TriageGroup, margin, margin_text, triage_key, triage_order

DATA = Path(__file__).parent / "data"
POINTS = {
    "tb": OperatingPoint(name="screening", threshold=0.2),
    "pneumonia": OperatingPoint(name="screening", threshold=0.8),
}


def _ok(name: str, tb: float, pneumonia: float) -> ScanResult:
    return ScanResult(
        file=name,
        sha256=name,
        status=ScanStatus.OK,
        findings={
            "tb": FindingResult("tb", "tb@1", tb, {}),
            "pneumonia": FindingResult("pneumonia", "pn@1", pneumonia, {}),
        },
    )


def test_margin_is_the_share_of_the_way_from_threshold_to_certainty() -> None:
    assert margin(0.2, 0.2) == 0.0
    assert margin(0.6, 0.2) == pytest.approx(0.5)  # halfway from 0.2 to 1
    assert margin(0.9, 0.8) == pytest.approx(0.5)  # halfway from 0.8 to 1
    assert margin(0.1, 0.2) == pytest.approx(-0.5)  # halfway from 0.2 down to 0
    assert margin(1.0, 1.0) == 0.0 and margin(0.0, 0.0) == 0.0
    assert margin_text(0.6, 0.2) == "50 % of the way from its threshold 0.20 to 1"
    assert margin_text(0.1, 0.2) == "50 % of the way from its threshold 0.20 down to 0"


def test_triage_order_flagged_by_margin_then_near_misses_then_refusals_and_errors() -> None:
    results = [
        ScanResult(file="err", sha256=None, status=ScanStatus.ERROR, reason="x"),
        _ok("quiet", 0.02, 0.10),  # tb margin -0.9, pneumonia -0.875
        ScanResult(file="hand", sha256="h", status=ScanStatus.NOT_CHEST_XRAY, modality="Hand"),
        # tb 0.30 is past 0.2 by 0.125 of the way; pneumonia 0.95 by 0.75: the larger counts,
        # although 0.30 - 0.2 and 0.95 - 0.8 are almost the same raw distance.
        _ok("pneumonia_strong", 0.05, 0.95),
        _ok("tb_weak", 0.30, 0.10),
        _ok("near_miss", 0.18, 0.10),  # tb margin -0.1
        _ok("both", 0.60, 0.90),  # margins 0.5 and 0.5: two flags beat one at equal margin
        _ok("tb_half", 0.60, 0.10),  # 0.5
    ]
    order = [results[i].file for i in triage_order(results, POINTS)]
    assert order == [
        "pneumonia_strong",
        "both",
        "tb_half",
        "tb_weak",
        "near_miss",
        "quiet",
        "hand",
        "err",
    ]
    assert triage_key(results[0], POINTS).group is TriageGroup.ERROR
    assert triage_key(results[2], POINTS).group is TriageGroup.REFUSED
    # a model without a point (the window's "not available") does not rank the scan
    no_tb = {"tb": None, "pneumonia": POINTS["pneumonia"]}
    assert triage_key(_ok("x", 0.99, 0.1), no_tb).group is TriageGroup.NOT_FLAGGED


def test_label_words() -> None:
    assert label_words("HeadCT") == "head CT"
    assert label_words("Hand") == "hand"
    assert label_words("BreastMRI") == "breast MRI"
    assert label_words("CXR") == "CXR"


def test_error_codes_map_to_the_fixed_vocabulary() -> None:
    def err(code: ScanErrorCode | None, reason: str = "detail") -> ScanResult:
        return ScanResult(file="f", sha256=None, status=ScanStatus.ERROR, reason=reason,
                          error_code=None if code is None else str(code))  # fmt: skip

    texts = {
        code: quality_of(err(code)).text  # type: ignore[union-attr]
        for code in ScanErrorCode
    }
    assert texts[ScanErrorCode.TRUNCATED] == "damaged file"
    assert texts[ScanErrorCode.DECODER_CRASHED] == "damaged file"
    assert texts[ScanErrorCode.UNSUPPORTED_TRANSFER_SYNTAX] == "unsupported DICOM"
    assert texts[ScanErrorCode.EMPTY_FILE] == "empty file"
    assert texts[ScanErrorCode.VANISHED] == "file moved or deleted"
    assert all(len(t) <= 40 for t in texts.values()), texts
    assert quality_of(err(ScanErrorCode.TRUNCATED, "image data is truncated")).detail == (
        "image data is truncated"
    )
    assert quality_of(_ok("x", 0.1, 0.1)) is None


@pytest.fixture(scope="module")
def screened(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ScanResult]:
    """Real files screened by the shipped models, by file name."""
    from desktop.engine.inference import choose_device
    from desktop.engine.registry import default_model_dirs, load_model_set
    from desktop.engine.runner import BatchRunner, run_to_end
    from desktop.engine.store import ResultsStore

    folder = tmp_path_factory.mktemp("quality")
    shutil.copy(DATA / "mednist" / "Hand" / "000000.jpeg", folder / "hand.jpeg")
    shutil.copy(DATA / "mednist" / "HeadCT" / "000000.jpeg", folder / "head.jpeg")
    shutil.copy(DATA / "photos" / "chelsea.jpg", folder / "cat.jpg")
    chest = sorted((DATA / "tb" / "normal").glob("*.png"))[0]
    shutil.copy(chest, folder / "chest.png")
    Image.fromarray(np.full((256, 256), 128, np.uint8)).save(folder / "blank.png")
    (folder / "damaged.png").write_bytes(chest.read_bytes()[:3000])
    (folder / "empty.png").write_bytes(b"")
    models = load_model_set(default_model_dirs(), choose_device("cpu"))
    store = ResultsStore(folder / "store.sqlite3")
    try:
        summary = run_to_end(BatchRunner(models, store, workers=1).run([folder]))
        return {Path(r.file).name: r for r in store.batch_results(summary.batch_id)}
    finally:
        store.close()


def test_real_refusals_and_errors_read_plainly(screened: dict[str, ScanResult]) -> None:
    text = {name: reason_text(r) for name, r in screened.items()}
    assert text["hand.jpeg"] == "not a chest X-ray: hand"
    assert text["head.jpeg"] == "not a chest X-ray: head CT"
    assert text["cat.jpg"] == "photo or document"
    assert text["blank.png"] == "blank or nearly blank image"
    assert text["damaged.png"] == "damaged file"
    assert text["empty.png"] == "empty file"
    assert text["chest.png"] == ""
    # the gate's nearest class of a photo is no modality: shown empty; a hand stays a hand
    assert screened["cat.jpg"].modality and shown_modality(screened["cat.jpg"]) == ""
    assert shown_modality(screened["blank.png"]) == ""
    assert shown_modality(screened["hand.jpeg"]) == "Hand"
    assert shown_modality(screened["chest.png"]) == "CXR"
    cat = quality_of(screened["cat.jpg"])
    assert cat is not None and cat.code is QualityCode.NOT_MEDICAL
    assert "out-of-distribution score" in cat.detail


def test_the_report_ranks_and_flags_a_scan_outside_scope_the_same_everywhere(tmp_path) -> None:
    """A child's scan with a TB score past the threshold: TB is adults-only, so no TB flag in
    the triage order, the ranked list, the table of every scan or the counts."""
    import shutil as _shutil
    import subprocess
    from datetime import UTC, datetime

    from desktop.engine.manifest import read_manifest
    from desktop.engine.reports import ReportContext, write_pdf
    from desktop.engine.results import ThresholdChoice

    if _shutil.which("pdftotext") is None:
        pytest.skip("pdftotext (poppler) is needed to read the report")
    assets = Path(__file__).resolve().parents[1] / "assets" / "models"
    manifests = {m: read_manifest(assets / f"{m}.json") for m in ("modality", "tb", "pneumonia")}
    child = ScanResult(
        file="/clinic/child_PA.png",
        sha256="c" * 64,
        status=ScanStatus.OK,
        modality="CXR",
        findings={
            "tb": FindingResult("tb", "tb@1", 0.95, {}),
            "pneumonia": FindingResult("pneumonia", "pn@1", 0.05, {}),
        },
        metadata={"patient_age": "004Y", "view_position": "PA"},
    )
    adult = replace_file(child, "/clinic/adult_PA.png", age="045Y", tb=0.90)
    ctx = ReportContext("b", datetime(2026, 12, 1, tzinfo=UTC), "t", manifests,
                        ThresholdChoice.parse("screening"), "CPU")  # fmt: skip
    path = write_pdf([child, adult], ctx, tmp_path / "r.pdf")
    text = subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True,
                          text=True, check=True).stdout  # fmt: skip
    assert "Scans needing attention (1)" in text
    ranked = text[text.index("Scans needing attention") : text.index("Flagged scans (1)")]
    assert "adult_PA.png" in ranked and "child_PA.png" not in ranked
    table = text[text.index("All scans (2)") :]
    child_line = next(line for line in table.splitlines() if "child_PA.png" in line)
    assert "outside" in child_line and "YES" not in child_line


def replace_file(result: ScanResult, file: str, age: str, tb: float) -> ScanResult:
    from dataclasses import replace

    findings = dict(result.findings)
    findings["tb"] = FindingResult("tb", "tb@1", tb, {})
    return replace(result, file=file, sha256="a" * 64, findings=findings,
                   metadata={"patient_age": age, "view_position": "PA"})  # fmt: skip

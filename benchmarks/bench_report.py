"""How long a 500-scan PDF/CSV/JSON report takes, and how big it is.

Thumbnails come from real chest X-rays (the NLM TB and Kermany pneumonia sets in
``shared/data``, or ``tests/data`` if those are absent), made by the app's own loader and
``make_thumbnail``. Scores and 7x7 activation maps are random but realistic: about a third of
the scans are flagged, a few are refused as not chest X-rays and a few are unreadable.
Building the results (decoding images) is screening's work and is timed separately.

    .venv/bin/python benchmarks/bench_report.py [--scans 500] [--out DIR] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from desktop.engine.loading import load_scan, make_thumbnail
from desktop.engine.manifest import ModelManifest
from desktop.engine.reports import ReportContext, write_csv, write_json, write_pdf
from desktop.engine.results import (
    THUMBNAIL_SIZE,
    FindingResult,
    ScanResult,
    ScanStatus,
    ThresholdChoice,
)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
MODELS_KEY = "modality@1.0.0#000000000000;tb@1.0.0#111111111111;pneumonia@1.0.0#222222222222"


def _manifest(mid: str, role: str, labels: list[str], threshold: float) -> ModelManifest:
    data: dict[str, object] = {
        "schema_version": 1,
        "id": mid,
        "version": "1.0.0",
        "name": {"tb": "Tuberculosis", "pneumonia": "Pneumonia"}.get(mid, "Modality check"),
        "role": role,
        "task": "binary" if role == "finding" else "multiclass",
        "labels": labels,
        "positive_label": labels[-1] if role == "finding" else None,
        "file": f"{mid}.onnx",
        "sha256": hashlib.sha256(mid.encode()).hexdigest(),
        "input": {"name": "image", "shape": [None, 224, 224, 3]},
        "preprocessing": {"size": [224, 224], "channels": 3, "fit": "pad"},
        "outputs": {"probabilities": "probabilities", "activation_map": "activation_map"},
        "operating_points": (
            {"screening": {"threshold": threshold, "sensitivity": 0.92, "specificity": 0.8}}
            if role == "finding"
            else {}
        ),
        "default_operating_point": "screening" if role == "finding" else None,
    }
    if role == "modality":
        data["gate"] = {"chest_label": "CXR"}
    return ModelManifest.from_dict(data)


def _images(limit: int) -> list[Path]:
    roots = [SHARED / "tb" / "nlm_299", SHARED / "pneumonia" / "kermany224_train"]
    if not all(r.is_dir() for r in roots):
        roots = [REPO / "tests" / "data" / "tb", REPO / "tests" / "data" / "pneumonia"]
    files = sorted(p for r in roots for p in r.rglob("*") if p.suffix in (".png", ".jpeg"))
    rng = np.random.default_rng(0)
    rng.shuffle(files)
    return files[:limit]


def build_results(n: int) -> list[ScanResult]:
    rng = np.random.default_rng(1)
    files = _images(n)
    thumbs = {p: make_thumbnail(load_scan(p).pixels, THUMBNAIL_SIZE) for p in files}
    out: list[ScanResult] = []
    for i in range(n):
        path = files[i % len(files)]
        name = f"clinic_day_{i // 100:02d}/{path.name}"
        roll = rng.random()
        if roll < 0.02:
            out.append(ScanResult(name, None, ScanStatus.ERROR, "the file ends early", "truncated"))
            continue
        if roll < 0.05:
            out.append(
                ScanResult(name, "0" * 64, ScanStatus.NOT_CHEST_XRAY,
                           "looks like a hand radiograph, not a chest X-ray",
                           modality="Hand", modality_score=0.97)
            )  # fmt: skip
            continue
        findings = {}
        for mid, labels in (("tb", ("normal", "tuberculosis")), ("pneumonia", ("normal", "pn"))):
            p = float(rng.beta(0.6, 1.4))
            findings[mid] = FindingResult(
                mid, f"{mid}@1.0.0", p, {labels[0]: 1 - p, labels[1]: p},
                rng.normal(0, 1, (7, 7)).astype(np.float32),
            )  # fmt: skip
        out.append(
            ScanResult(
                name, hashlib.sha256(name.encode()).hexdigest(), ScanStatus.OK,
                modality="CXR", modality_score=0.98, findings=findings,
                models_key=MODELS_KEY, screened_at="2026-11-22T09:00:00+00:00",
                thumbnail_png=thumbs[path],
            )
        )  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=500)
    parser.add_argument("--out", type=Path, default=None, help="folder for the reports")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    manifests = {
        "modality": _manifest("modality", "modality", ["CXR", "Hand"], 0.5),
        "tb": _manifest("tb", "finding", ["normal", "tuberculosis"], 0.31),
        "pneumonia": _manifest("pneumonia", "finding", ["normal", "pn"], 0.42),
    }
    ctx = ReportContext(
        batch_id="bench",
        created_at=datetime.now(UTC),
        app_version="bench",
        manifests=manifests,
        choice=ThresholdChoice(),
        device="CPU (CPUExecutionProvider)",
        clinic_name="Benchmark clinic",
    )
    start = time.perf_counter()
    results = build_results(args.scans)
    built = time.perf_counter() - start
    flagged = sum(
        any(f.probability >= (0.31 if m == "tb" else 0.42) for m, f in r.findings.items())
        for r in results
    )
    print(f"built {len(results)} results ({flagged} flagged) in {built:.2f} s")

    out = args.out or Path(tempfile.mkdtemp(prefix="medscreen-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    for writer, name in ((write_pdf, "report.pdf"), (write_csv, "report.csv"),
                         (write_json, "report.json")):  # fmt: skip
        start, cpu = time.perf_counter(), time.process_time()
        path = writer(results, ctx, out / name)
        took, cpu = time.perf_counter() - start, time.process_time() - cpu
        size = path.stat().st_size / 1e6
        # CPU time is what to compare on a busy machine; wall time is what a user waits.
        print(f"{name:12s} {took:6.2f} s wall  {cpu:6.2f} s CPU  {size:6.2f} MB  {path}")


if __name__ == "__main__":
    main()

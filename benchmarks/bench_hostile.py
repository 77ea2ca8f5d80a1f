"""Peak memory and outcome of one batch mixing every issue-9 hostile file with real scans.

Builds a folder of real chest X-rays (tests/data PNG, JPEG, the CR chest, the JPEG 2000 CR)
plus the hostile files of tests/hostile.py (damaged RLE, a 1 MB deflated DICOM that inflates
to 1 GiB, an 8900² PNG bomb, elements that swallow the patient identifiers, NaN TIFF, a
40,000-character Photometric Interpretation) and four 59-megapixel PNGs (just under the
per-image limit, the case where four decoder threads could each hold one), then runs
``medscreen classify`` on it in a child process with the shipped models and 4 decoder
threads. The resident memory of the whole process tree (the CLI and its decoder workers) is
sampled every 20 ms; the peak is printed with the exit code and the error codes.

Usage: ``python benchmarks/bench_hostile.py [--real 60] [--deep] [--models DIR]``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fixtures import CR_CHEST, CR_J2K, TB_PNG, write_cr_variant, write_png_bomb  # noqa: E402
from tests.hostile import (  # noqa: E402
    IDENTIFIERS,
    PATIENT_NAME,
    write_damaged_rle,
    write_deflate_bomb,
    write_nan_tiff,
    write_rle,
    write_swallowing,
)


def build(folder: Path, real: int, deep: bool = False) -> None:
    folder.mkdir(parents=True)
    sources = sorted(
        p
        for p in (REPO / "tests" / "data").rglob("*")
        if p.suffix in (".png", ".jpeg") and ("tb" in p.parts or "pneumonia" in p.parts)
    )
    for i in range(real):
        src = sources[i % len(sources)]
        (folder / f"real_{i:03d}{src.suffix}").write_bytes(src.read_bytes() + b"%d" % i)
    for src in (CR_CHEST, CR_J2K):
        (folder / f"real_{src.name}").write_bytes(src.read_bytes())
    write_damaged_rle(folder / "damaged_rle.dcm")
    write_rle(folder / "rle.dcm")
    write_deflate_bomb(folder / "deflate_bomb.dcm", 1024)
    write_png_bomb(folder / "png_bomb_8900.png", 8900, 8900)
    for keyword in ("Modality", "ManufacturerModelName", "SOPInstanceUID"):
        write_swallowing(folder / f"swallow_{keyword}.dcm", keyword)
    write_nan_tiff(folder / "nan.tif")
    write_cr_variant(
        folder / "long_photometric.dcm",
        PhotometricInterpretation="MONOCHROME2 " + (PATIENT_NAME + " ") * 1500,
    )
    with Image.open(TB_PNG) as image:
        huge = image.convert("L").resize((7700, 7700), Image.Resampling.BILINEAR)
    if deep:  # 16 bits: the costliest path (stored values, their array, a float32 copy)
        huge = Image.fromarray(np.asarray(huge).astype(np.uint16) * np.uint16(257))
    for i in range(4):
        path = folder / f"huge_59mp_{i}.png"
        huge.save(path, format="PNG", compress_level=1)
        with path.open("ab") as fh:
            fh.write(b"%d" % i)  # unique content, so no result is reused


def run(folder: Path, out: Path, db: Path, models: list[Path]) -> tuple[int, float, str, float]:
    command = [
        sys.executable,
        "-c",
        "import sys; from desktop.cli import main; sys.exit(main(sys.argv[1:]))",
        "classify",
        str(folder),
        "--out",
        str(out),
        "--db",
        str(db),
        "--report",
        "pdf",
        "--workers",
        "4",
        "--quiet",
    ]
    for model in models:
        command += ["--models", str(model)]
    start = time.perf_counter()
    proc = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            total = 0
            for p in tree:
                with contextlib.suppress(psutil.NoSuchProcess):
                    total += p.memory_info().rss
            peak = max(peak, total)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    stdout, stderr = proc.communicate()
    return proc.returncode, peak / 2**20, stdout + stderr, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=int, default=60)
    parser.add_argument("--models", type=Path, action="append", default=None)
    parser.add_argument("--deep", action="store_true", help="the 59 MP PNGs in 16 bits")
    args = parser.parse_args()
    models = args.models or [REPO / "assets" / "models"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "scans"
        with warnings.catch_warnings():  # pydicom warns, quoting them, about the planted values
            warnings.simplefilter("ignore")
            build(folder, args.real, args.deep)
        count = sum(1 for _ in folder.iterdir())
        code, peak_mb, output, seconds = run(folder, Path(tmp) / "out", Path(tmp) / "r.db", models)
        print(f"{count} files ({args.real + 2} real scans), exit code {code}, {seconds:.0f} s")
        print(f"peak resident memory of the process tree: {peak_mb:,.0f} MiB")
        rows = list(csv.DictReader((Path(tmp) / "out" / "results.csv").open(encoding="utf-8-sig")))
        print(f"rows: {len(rows)}; statuses: {dict(Counter(r['status'] for r in rows))}")
        codes = Counter(
            r.get("error_code") or r["reason"][:40] for r in rows if r["status"] == "error"
        )
        print(f"errors: {dict(codes)}")
        outputs = [output] + [
            p.read_bytes().decode("latin-1") for p in (Path(tmp) / "out").rglob("*") if p.is_file()
        ]
        leaks = [i for i in IDENTIFIERS for text in outputs if i in text]
        pdf = list((Path(tmp) / "out").rglob("*.pdf"))
        print(f"PDF written: {bool(pdf)}; identifiers found in outputs or logs: {len(leaks)}")


if __name__ == "__main__":
    main()

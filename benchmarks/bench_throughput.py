"""Throughput and memory of a clinic-like batch: end-to-end vs decoding alone.

Builds a corpus from real chest X-rays upscaled to 2048×2048 — a third 8-bit JPEG, a third
16-bit PNG, a third uncompressed 16-bit DICOM (the sizes a clinic's CR/DR exports have) —
then, in one run, measures:

* decode-only: read + sha256 + decode + preprocess for every model + thumbnail, on the same
  thread pool the runner uses (the practical limit of a batch);
* end-to-end: the real batch runner (models, store commits) on the same files;
* their ratio, and the peak resident memory of each end-to-end run for two corpus sizes,
  each in a fresh process, to show memory stays flat as the folder grows.

Usage: ``python benchmarks/bench_throughput.py [--small 60] [--large 240] [--models DIR]``.
It prints figures; it asserts nothing (timings on shared machines are not tests).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted((REPO / "tests" / "data" / "tb").rglob("*.png"))
SIDE = 2048


def _upscaled(src: Path) -> np.ndarray:
    grey = Image.open(src).convert("L").resize((SIDE, SIDE), Image.Resampling.BICUBIC)
    rng = np.random.default_rng(len(src.name))
    # 12-bit detector values with a little noise, like a real CR export
    values = np.asarray(grey, dtype=np.float32) * 16 + rng.normal(0, 6, (SIDE, SIDE))
    return np.clip(values, 0, 4095).astype(np.uint16)


def _dicom(pixels: np.ndarray, path: Path) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)


def build_corpus(folder: Path, count: int) -> list[Path]:
    """``count`` unique files (distinct content hashes), a third of each format."""
    folder.mkdir(parents=True, exist_ok=True)
    bases: dict[str, bytes] = {}
    files: list[Path] = []
    for i in range(count):
        src = SOURCES[i % len(SOURCES)]
        fmt = ("jpg", "png", "dcm")[i % 3]
        key = f"{src.name}.{fmt}"
        path = folder / f"scan_{i:05d}.{fmt}"
        if fmt == "dcm":
            pixels = _upscaled(src)
            pixels[0, 0] = i % 4096  # unique content, clinically irrelevant corner pixel
            _dicom(pixels, path)
        else:
            if key not in bases:
                buf = io.BytesIO()
                pixels = _upscaled(src)
                if fmt == "png":
                    Image.fromarray(pixels).save(buf, format="PNG", compress_level=6)
                else:
                    Image.fromarray((pixels >> 4).astype(np.uint8)).save(buf, "JPEG", quality=92)
                bases[key] = buf.getvalue()
            # trailing bytes after IEND/EOI are ignored by decoders but change the hash
            path.write_bytes(bases[key] + f"medscreen-bench-{i}".encode())
        files.append(path)
    return files


# Each measurement runs in a fresh process, so peak memory is that run's alone.
_CHILD = """
import json, resource, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from desktop.engine.discovery import discover
from desktop.engine.inference import Device
from desktop.engine.loading import decode_scan, read_file
from desktop.engine.registry import load_model_set
from desktop.engine.runner import BatchRunner, run_to_end
from desktop.engine.store import ResultsStore
mode, folder, db, workers = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
models = load_model_set([Path(p) for p in json.loads(sys.argv[5])], Device.CPU)
runner = BatchRunner(models, ResultsStore(db), workers=workers)
start = time.perf_counter()
if mode == "decode":
    files = discover([folder]).files
    def one(path):
        data, sha = read_file(path)
        return len(runner.screener.prepare(decode_scan(path, data, sha)).inputs)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        total = sum(1 for _ in pool.map(one, files))
    ok, errors = total, 0
else:
    summary = run_to_end(runner.run([folder]))
    total, ok, errors = summary.total, summary.ok, summary.errors
elapsed = time.perf_counter() - start
print(json.dumps({"scans": total, "ok": ok, "errors": errors, "seconds": elapsed,
                  "scans_per_s": total / elapsed,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(mode: str, folder: Path, db: Path, models_dirs: list[Path], workers: int) -> dict:
    """Run one mode ("decode" or "e2e") over ``folder`` in a fresh process."""
    db.unlink(missing_ok=True)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHILD,
            mode,
            str(folder),
            str(db),
            str(workers),
            json.dumps([str(d) for d in models_dirs]),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=60)
    parser.add_argument("--large", type=int, default=240)
    parser.add_argument("--models", type=Path, action="append", default=None)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--keep", type=Path, default=None, help="build the corpus here")
    args = parser.parse_args()
    models = args.models or [REPO / "assets" / "models"]
    root = args.keep or Path(tempfile.mkdtemp(prefix="medscreen-bench-"))
    print(
        f"cores: {os.cpu_count()}, decoder threads: {args.workers}, models: "
        f"{', '.join(str(m) for m in models)}"
    )
    t0 = time.perf_counter()
    small = build_corpus(root / "small", args.small)
    large = build_corpus(root / "large", args.large)
    size_mb = sum(p.stat().st_size for p in large) / 2**20
    print(
        f"corpus: {len(small)} + {len(large)} files of {SIDE}×{SIDE} "
        f"(JPEG 8-bit, PNG 16-bit, DICOM 16-bit); large set {size_mb:.0f} MB; "
        f"built in {time.perf_counter() - t0:.0f} s"
    )

    # Alternate the two modes so a busy neighbour on a shared machine hits both alike.
    decode_rates: list[float] = []
    e2e_rates: list[float] = []
    run_large: dict = {}
    for _ in range(args.rounds):
        decode = measure("decode", root / "large", root / "d.sqlite3", models, args.workers)
        decode_rates.append(decode["scans_per_s"])
        run_large = measure("e2e", root / "large", root / "e.sqlite3", models, args.workers)
        e2e_rates.append(run_large["scans_per_s"])
    run_small = measure("e2e", root / "small", root / "s.sqlite3", models, args.workers)
    decode_rate, e2e_rate = float(np.median(decode_rates)), float(np.median(e2e_rates))
    print(
        f"decode + preprocess only : {decode_rate:6.2f} scans/s ({len(large)} scans; median of "
        f"{args.rounds} alternating rounds: " + ", ".join(f"{r:.2f}" for r in decode_rates) + ")"
    )
    print(
        f"end-to-end (runner)      : {e2e_rate:6.2f} scans/s ({run_large['ok']} screened, "
        f"{run_large['errors']} errors; rounds: " + ", ".join(f"{r:.2f}" for r in e2e_rates) + ")"
    )
    print(f"ratio end-to-end/decode  : {e2e_rate / decode_rate:6.2f}  (goal ≥ 0.80)")
    print(f"peak RSS, {run_small['scans']:>4} scans   : {run_small['peak_rss_mb']:6.0f} MB")
    print(
        f"peak RSS, {run_large['scans']:>4} scans   : {run_large['peak_rss_mb']:6.0f} MB "
        f"(growth {run_large['peak_rss_mb'] - run_small['peak_rss_mb']:+.0f} MB for "
        f"{run_large['scans'] - run_small['scans']} more scans)"
    )
    dicom_check = pydicom.dcmread(large[2], stop_before_pixels=True)
    assert dicom_check.Rows == SIDE


if __name__ == "__main__":
    main()

"""Throughput per format against the two honest limits: plain decoding and inference alone.

Builds a clinic-like corpus per format from real adult chest X-rays (the NIH set under
``/work/shared/data``, or the TB fixtures of ``tests/data``), enlarged to 2048×2048 as clinic
CR/DR exports are, as 12-bit detector values with a little noise:

* ``jpeg8`` — 8-bit JPEG (quality 92);
* ``png16`` — 16-bit grey PNG;
* ``dicom`` — uncompressed 16-bit DICOM (explicit VR little endian);
* ``dicom-j2k`` — JPEG 2000 lossless DICOM.

Copies are made unique (trailing bytes, or a new SOP Instance UID) so no result is reused.
Then, per format and in one run, each in a fresh process:

(a) **MedScreen end-to-end**: the real batch runner with the shipped models and the results
    store (its default threads), from the folder to committed results;
(b) **the plain Pillow/pydicom limit**: a straightforward script with no MedScreen code —
    open, decode, convert to grey, resize to the model size (224², area) — over a process
    pool on all cores;
(c) **inference only**: the models (gate + every finding model) on ready arrays, ONNX
    Runtime with all cores, best of 1 and all intra-op threads, batches of 32;

and prints ``(a) / min((b), (c))``, the share of what the machine allows that MedScreen
reaches (goal ≥ 0.8). On 8-bit JPEG it also prints (a) / (b) against the *full* decode:
MedScreen decodes JPEGs at reduced scale (DCT scaling), so it can beat a full decode.

Usage: ``python benchmarks/bench_throughput.py [--formats jpeg8,png16] [--rounds 3]
[--models DIR] [--keep DIR]``; ``taskset -c 0 python ...`` measures one core (every figure
follows the process's CPU affinity). It prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

REPO = Path(__file__).resolve().parents[1]
NIH = Path("/work/shared/data/pneumonia/nih_adult_1000")
SIDE = 2048
FORMATS = ("jpeg8", "png16", "dicom", "dicom-j2k")
#: Files per format: enough for a few seconds of work each on a 2-core machine.
DEFAULT_COUNTS = {"jpeg8": 480, "png16": 64, "dicom": 160, "dicom-j2k": 24}
SUFFIX = {"jpeg8": ".jpg", "png16": ".png", "dicom": ".dcm", "dicom-j2k": ".dcm"}
MODEL_SIZE = 224


def cores() -> int:
    """CPUs this process may run on (follows ``taskset``), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def sources(limit: int = 8) -> list[Path]:
    """Real chest X-rays to enlarge: NIH adults (512²) when present, else the fixtures."""
    found = sorted(NIH.rglob("*.jpg"))[:limit] if NIH.is_dir() else []
    return found or sorted((REPO / "tests" / "data" / "tb").rglob("*.png"))[:limit]


def detector_values(src: Path) -> np.ndarray:
    """A 2048² 12-bit image from a real X-ray: bicubic enlargement plus detector-like noise."""
    grey = Image.open(src).convert("L").resize((SIDE, SIDE), Image.Resampling.BICUBIC)
    rng = np.random.default_rng(sum(src.name.encode()))
    values = np.asarray(grey, dtype=np.float32) * 16 + rng.normal(0, 6, (SIDE, SIDE))
    return np.clip(values, 0, 4095).astype(np.uint16)


def _dicom(pixels: np.ndarray, j2k: bool) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("bench.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    if j2k:
        ds.compress(JPEG2000Lossless, pixels)
    else:
        ds.PixelData = pixels.tobytes()
    return ds


def build_corpus(folder: Path, fmt: str, count: int) -> list[Path]:
    """``count`` files of one format with distinct content hashes."""
    folder.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    bases: list[bytes | FileDataset] = []
    for src in sources():
        pixels = detector_values(src)
        if fmt in ("dicom", "dicom-j2k"):
            bases.append(_dicom(pixels, fmt == "dicom-j2k"))
            continue
        buf = io.BytesIO()
        if fmt == "png16":
            Image.fromarray(pixels).save(buf, format="PNG", compress_level=6)
        else:
            Image.fromarray((pixels >> 4).astype(np.uint8)).save(buf, "JPEG", quality=92)
        bases.append(buf.getvalue())
    for i in range(count):
        path = folder / f"scan_{i:05d}{SUFFIX[fmt]}"
        base = bases[i % len(bases)]
        if isinstance(base, FileDataset):
            base.SOPInstanceUID = base.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            base.save_as(path, enforce_file_format=True)
        else:  # trailing bytes after IEND/EOI are ignored by decoders but change the hash
            path.write_bytes(base + f"medscreen-bench-{i}".encode())
        files.append(path)
    return files


# -- the three measurements, each run in a fresh process --------------------------------------

_E2E = """
import json, os, resource, sys, time
from pathlib import Path
from desktop.engine.inference import Device, default_threads
from desktop.engine.registry import load_model_set
from desktop.engine.runner import BatchRunner, run_to_end
from desktop.engine.store import ResultsStore
folder, db, dirs = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
models = load_model_set([Path(p) for p in dirs], Device.CPU)
runner = BatchRunner(models, ResultsStore(db))
cpu0, start = os.times(), time.perf_counter()
summary = run_to_end(runner.run([folder]))
elapsed, cpu1 = time.perf_counter() - start, os.times()
cpu = (cpu1.user + cpu1.system + cpu1.children_user + cpu1.children_system
       - cpu0.user - cpu0.system - cpu0.children_user - cpu0.children_system)
print(json.dumps({"scans": summary.total, "ok": summary.ok, "errors": summary.errors,
                  "seconds": elapsed, "rate": summary.total / elapsed,
                  "cpu_ms_per_scan": 1000 * cpu / max(1, summary.total),
                  "busy": cpu / elapsed / len(os.sched_getaffinity(0)),
                  "workers": runner.workers, "threads": default_threads(),
                  "slots": getattr(runner, "inference_slots", 1),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

# The plain limit: what any straightforward script on this machine gets. No MedScreen code.
_PLAIN = """
import json, os, sys, time
from multiprocessing import Pool
from pathlib import Path
import numpy as np, pydicom
from PIL import Image

SIZE = int(sys.argv[2])

def unit_float(values):
    values = np.asarray(values, dtype=np.float32)
    lo, hi = float(values.min()), float(values.max())
    return (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)

def one(path):
    cpu = time.thread_time()
    if path.endswith(".dcm"):
        grey = Image.fromarray(unit_float(pydicom.dcmread(path).pixel_array), mode="F")
    else:
        image = Image.open(path)
        if image.mode.startswith("I"):  # 16-bit grey
            grey = Image.fromarray(unit_float(np.asarray(image)), mode="F")
        else:
            grey = image.convert("L")
    small = grey.resize((SIZE, SIZE), Image.Resampling.BOX)
    float(np.asarray(small, dtype=np.float32).mean())
    return time.thread_time() - cpu  # the CPU this scan's decode and resize took

if __name__ == "__main__":
    files = sorted(str(p) for p in Path(sys.argv[1]).iterdir())
    procs = len(os.sched_getaffinity(0))
    with Pool(procs) as pool:
        pool.map(one, files[:procs])  # start and warm the workers before timing
        start = time.perf_counter()
        cpu = sum(pool.map(one, files, chunksize=2))
        elapsed = time.perf_counter() - start
    print(json.dumps({"scans": len(files), "seconds": elapsed, "rate": len(files) / elapsed,
                      "processes": procs, "cpu_ms_per_scan": 1000 * cpu / len(files),
                      "busy": cpu / elapsed / procs}))
"""

_INFER = """
import json, os, sys, time
from pathlib import Path
import numpy as np, onnxruntime as ort
from desktop.engine.manifest import load_verified_model, read_manifest
dirs, batch = json.loads(sys.argv[1]), int(sys.argv[2])
manifests = [read_manifest(p) for d in dirs for p in sorted(Path(d).glob("*.json"))]
procs = len(os.sched_getaffinity(0))
rng = np.random.default_rng(0)
best = None
for threads in sorted({1, procs}):
    total = 0.0
    for m in manifests:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(load_verified_model(m), options,
                                       providers=["CPUExecutionProvider"])
        x = rng.random((batch, *m.preprocessing.input_shape), dtype=np.float32)
        names = [o.name for o in session.get_outputs()]
        session.run(names, {m.input_name: x})
        runs, start = 0, time.perf_counter()
        while runs < 3 or time.perf_counter() - start < 1.5:
            session.run(names, {m.input_name: x})
            runs += 1
        total += (time.perf_counter() - start) / (runs * batch)
    if best is None or 1 / total > best["rate"]:
        best = {"rate": 1 / total, "threads": threads, "models": [m.id for m in manifests]}
print(json.dumps(best))
"""


def _child(code: str, *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def end_to_end(folder: Path, db: Path, models: list[Path]) -> dict:
    db.unlink(missing_ok=True)
    for extra in ("-wal", "-shm"):
        Path(f"{db}{extra}").unlink(missing_ok=True)
    return _child(_E2E, str(folder), str(db), json.dumps([str(m) for m in models]))


def plain_limit(folder: Path) -> dict:
    return _child(_PLAIN, str(folder), str(MODEL_SIZE))


def inference_limit(models: list[Path], batch: int = 32) -> dict:
    return _child(_INFER, json.dumps([str(m) for m in models]), str(batch))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--count", type=int, default=None, help="files per format")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", type=Path, action="append", default=None)
    parser.add_argument("--keep", type=Path, default=None, help="build/reuse the corpus here")
    args = parser.parse_args()
    formats = [f for f in args.formats.split(",") if f]
    unknown = set(formats) - set(FORMATS)
    if unknown:
        parser.error(f"unknown formats {sorted(unknown)}; choose from {', '.join(FORMATS)}")
    models = args.models or [REPO / "assets" / "models"]
    root = args.keep or Path(tempfile.mkdtemp(prefix="medscreen-bench-"))
    print(
        f"machine: {cores()} cores available ({platform.processor() or platform.machine()}), "
        f"no GPU used; models: {', '.join(str(m) for m in models)}; rounds: {args.rounds}"
    )
    infer = inference_limit(models)
    print(
        f"(c) inference only: {infer['rate']:.1f} scans/s ({'+'.join(infer['models'])}, "
        f"batch 32, best with {infer['threads']} intra-op thread(s))"
    )
    rows = []
    for fmt in formats:
        folder = root / fmt
        count = args.count or DEFAULT_COUNTS[fmt]
        if not folder.is_dir() or len(list(folder.iterdir())) != count:
            start = time.perf_counter()
            files = build_corpus(folder, fmt, count)
            size = sum(p.stat().st_size for p in files) / len(files) / 2**20
            print(
                f"corpus {fmt}: {count} files of {SIDE}×{SIDE}, {size:.1f} MB each "
                f"(built in {time.perf_counter() - start:.0f} s)"
            )
        # Alternate the measurements so a busy neighbour on a shared machine hits all alike.
        e2e, plain, cpu, busy, plain_cpu, plain_busy = [], [], [], [], [], []
        last: dict = {}
        for _ in range(args.rounds):
            limit = plain_limit(folder)
            plain.append(limit["rate"])
            plain_cpu.append(limit["cpu_ms_per_scan"])
            plain_busy.append(limit["busy"])
            last = end_to_end(folder, root / "bench.sqlite3", models)
            e2e.append(last["rate"])
            cpu.append(last["cpu_ms_per_scan"])
            busy.append(last["busy"])
        a, b = float(np.median(e2e)), float(np.median(plain))
        c = infer["rate"]
        rows.append((fmt, a, b, c, a / min(b, c), last))
        print(
            f"{fmt:10s} (a) end-to-end {a:6.1f}/s [{', '.join(f'{r:.1f}' for r in e2e)}]  "
            f"(b) plain decode {b:6.1f}/s [{', '.join(f'{r:.1f}' for r in plain)}]  "
            f"(a)/min(b,c) = {a / min(b, c):.2f}  (errors {last['errors']}, "
            f"{last['workers']} decoder threads, {last['threads']} ORT threads, "
            f"peak RSS {last['peak_rss_mb']:.0f} MB)"
        )
        # Where (a) stands: CPU a scan (all threads) and the share of the cores kept busy.
        print(
            f"{'':10s} (a) CPU per scan [{', '.join(f'{c:.1f}' for c in cpu)}] ms, cores busy "
            f"[{', '.join(f'{b:.2f}' for b in busy)}]"
        )
        # The same for (b), counted in its workers around each scan's decode and resize (the
        # pool's hand-over not included): (a) / (b) in scans/s is about their CPU-per-scan
        # ratio times their busy ratio, so these say which of the two sets the gap.
        print(
            f"{'':10s} (b) CPU per scan [{', '.join(f'{c:.1f}' for c in plain_cpu)}] ms, "
            f"cores busy [{', '.join(f'{b:.2f}' for b in plain_busy)}]"
        )
    print()
    print("| format | (a) MedScreen end-to-end | (b) plain decode limit | (c) inference only "
          "| (a) / min(b, c) |")  # fmt: skip
    print("|---|---|---|---|---|")
    for fmt, a, b, c, ratio, _ in rows:
        print(f"| {fmt} | {a:.1f} scans/s | {b:.1f} scans/s | {c:.1f} scans/s | **{ratio:.2f}** |")
    for fmt, a, b, _, _, _ in rows:
        if fmt == "jpeg8":
            print(f"\njpeg8: (a) / (b) = {a / b:.2f} against the plain *full* JPEG decode")


if __name__ == "__main__":
    main()

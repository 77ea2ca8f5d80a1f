"""Model inference time per scan: every model in a folder, ONNX Runtime, 2 CPU threads.

The budget (issue "Models that hold up at a clinic they have never seen"): all models together
≤ 60 ms per scan on 2 CPU cores. This measures what that budget is about: the models alone,
on ready inputs made by the engine from a real chest X-ray (``prepare_file`` per model spec),
one scan at a time (batch 1, the worst case for per-call overhead) and in batches of 16 (what
the batch runner does), each session with ``intra_op_num_threads=2``, after warm-up. Decoding
and preprocessing are measured by ``bench_throughput.py``.

Usage: ``python benchmarks/bench_models.py [--models assets/models] [--repeats 30]``.
It prints a table and the sum over models; it asserts nothing. The median is reported
(other engineers' jobs share these cores; the spread is printed too).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from desktop.engine.manifest import load_verified_model, read_manifest
from desktop.engine.preprocess import prepare_file

REPO = Path(__file__).resolve().parents[1]
SCAN = REPO / "tests" / "data" / "tb" / "normal"


def _session(model: bytes, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def _time(sess: ort.InferenceSession, x: np.ndarray, repeats: int) -> list[float]:
    name = sess.get_inputs()[0].name
    for _ in range(3):
        sess.run(None, {name: x})
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, {name: x})
        out.append((time.perf_counter() - t) / len(x) * 1000)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", type=Path, default=REPO / "assets" / "models")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    scan = sorted(SCAN.iterdir())[0]
    print(
        f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} logical CPUs, "
        f"onnxruntime {ort.__version__}, {args.threads} intra-op threads; scan {scan.name}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'model':<12} {'version':<8} {'input':<12} {'MB':>5} {'ms/scan b1':>11} "
        f"{'(p10-p90)':>14} {'ms/scan b16':>12}"
    )
    total1 = total16 = 0.0
    for mpath in sorted(args.models.glob("*.json")):
        manifest = read_manifest(mpath)
        data = load_verified_model(manifest)
        sess = _session(data, args.threads)
        x = prepare_file(scan, manifest.preprocessing)[None]
        one = _time(sess, x, args.repeats)
        many = _time(sess, np.repeat(x, 16, axis=0), max(3, args.repeats // 5))
        med1, med16 = statistics.median(one), statistics.median(many)
        q = statistics.quantiles(one, n=10)
        total1 += med1
        total16 += med16
        size = "x".join(str(v) for v in manifest.preprocessing.input_shape)
        print(
            f"{manifest.id:<12} {manifest.version:<8} {size:<12} {len(data) / 1e6:>5.1f} "
            f"{med1:>11.1f} {f'({q[0]:.1f}-{q[-1]:.1f})':>14} {med16:>12.1f}"
        )
    print(f"{'all models':<12} {'':<8} {'':<12} {'':>5} {total1:>11.1f} {'':>14} {total16:>12.1f}")
    print("budget: all models together <= 60 ms per scan")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

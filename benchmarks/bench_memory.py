"""Peak memory of the batch runner as a folder grows to 10,000 scans.

Copies the real chest X-rays of ``tests/data`` (224–299 px, PNG and JPEG) into folders of
``--small`` and ``--large`` files, each copy made unique by trailing bytes so the store cannot
reuse a result, then screens each folder end-to-end in a fresh process and prints its peak
resident memory. Flat memory means the runner streams: nothing per scan is kept.

Usage: ``python benchmarks/bench_memory.py [--small 1000] [--large 10000] [--models DIR]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench_throughput import REPO, measure


def build(folder: Path, count: int) -> None:
    sources = sorted(
        p
        for p in (REPO / "tests" / "data").rglob("*")
        if p.suffix in (".png", ".jpeg") and ("tb" in p.parts or "pneumonia" in p.parts)
    )
    blobs = [(p.suffix, p.read_bytes()) for p in sources]
    for i in range(count):
        suffix, data = blobs[i % len(blobs)]
        sub = folder / f"d{i // 500:03d}"  # clinics keep exports in many sub-folders
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"scan_{i:05d}{suffix}").write_bytes(data + f"medscreen-bench-{i}".encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=10000)
    parser.add_argument("--models", type=Path, action="append", default=None)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    models = args.models or [REPO / "assets" / "models"]
    root = Path(tempfile.mkdtemp(prefix="medscreen-mem-"))
    for label, count in (("small", args.small), ("large", args.large)):
        build(root / label, count)
    print(f"cores: {os.cpu_count()}, decoder threads: {args.workers}")
    runs = {}
    for label in ("small", "large"):
        start = time.perf_counter()
        runs[label] = measure("e2e", root / label, root / f"{label}.sqlite3", models, args.workers)
        run = runs[label]
        print(
            f"{run['scans']:>6} scans: {run['scans_per_s']:6.1f} scans/s, "
            f"peak RSS {run['peak_rss_mb']:6.0f} MB ({time.perf_counter() - start:.0f} s)"
        )
    growth = runs["large"]["peak_rss_mb"] - runs["small"]["peak_rss_mb"]
    extra = runs["large"]["scans"] - runs["small"]["scans"]
    print(
        f"peak RSS growth: {growth:+.0f} MB for {extra} more scans "
        f"({growth * 1024 / max(extra, 1):+.1f} kB per scan)"
    )


if __name__ == "__main__":
    main()

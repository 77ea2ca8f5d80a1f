"""What reading the models' graph names costs the window: resident memory and time.

The window verifies the models without ONNX Runtime; the graph's input and output names come
from :mod:`desktop.engine.onnx_io`, which parses each ``.onnx`` file with protobuf's runtime
through the one schema of ONNX fields MedScreen reads (the merge in
:mod:`desktop.engine.joint` uses it too). The window imports neither protobuf nor ONNX
Runtime at start-up, so the reader's first use brings ``google.protobuf`` in. This measures
that: in a fresh process per run, the window's modules are imported (offscreen
QApplication) and the four shipped models' bytes read; then ``onnx_io`` reads their names
(``onnx_io``) or nothing is read (``none``), and ``VmRSS`` before and after is printed.
Runs alternate so machine load falls on both alike.

Before the one schema, ``onnx_io`` was a hand-written wire-format reader: +0.01-0.02 MiB,
2-5 ms, against +1.29-1.30 MiB, 11-42 ms for protobuf's runtime (4 alternated pairs, 2 December
2026 05:09 UTC, load 12, 2-core VM); unified because the cost stayed under 2 MB.

Usage: ``python benchmarks/bench_onnx_reader_rss.py [--pairs 3]``. Linux only (``/proc``).
It prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_RUN = """
import gc, json, sys, time
from pathlib import Path
from PySide6.QtWidgets import QApplication
app = QApplication([])
import desktop.gui.main_window  # everything the window imports

def rss_kib():
    with open("/proc/self/status") as status:
        return int(next(l for l in status if l.startswith("VmRSS")).split()[1])

models = sorted(Path("assets/models").glob("*.onnx"))
data = [p.read_bytes() for p in models]
gc.collect()
before = rss_kib()
started = time.perf_counter()
names = []
if sys.argv[1] == "onnx_io":
    from desktop.engine.onnx_io import graph_io_names
    names = [graph_io_names(d) for d in data]
elapsed = time.perf_counter() - started
gc.collect()
after = rss_kib()
print(json.dumps({"rss_kib": after - before, "ms": elapsed * 1000,
                  "protobuf": "google.protobuf" in sys.modules, "names": names}))
"""


def run(variant: str) -> dict:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", _RUN, variant],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    seen: dict[str, list[dict]] = {"none": [], "onnx_io": []}
    for _ in range(args.pairs):
        for variant in seen:
            result = run(variant)
            seen[variant].append(result)
            print(
                f"{variant:9s} +{result['rss_kib'] / 1024:5.2f} MiB resident, "
                f"{result['ms']:6.1f} ms, protobuf imported: {result['protobuf']}",
                flush=True,
            )
    for variant, results in seen.items():
        rss = sorted(r["rss_kib"] / 1024 for r in results)
        ms = sorted(r["ms"] for r in results)
        print(f"{variant}: {rss[0]:.2f}-{rss[-1]:.2f} MiB, {ms[0]:.1f}-{ms[-1]:.1f} ms")


if __name__ == "__main__":
    main()

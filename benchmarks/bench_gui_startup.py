"""Time from starting ``python -m desktop`` to the main window on screen (target: < 2 s).

Each run starts a fresh process with ``MEDSCREEN_SMOKE=1``: the app shows its window, writes
``shown_after_s=<seconds since its process started>`` (from /proc on Linux) once the event
loop has painted it, and quits. The script also times from just before ``Popen`` to that
line, which adds the interpreter's own start.

    QT_QPA_PLATFORM=offscreen .venv/bin/python benchmarks/bench_gui_startup.py --runs 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    env = dict(os.environ, MEDSCREEN_SMOKE="1")
    env.setdefault("QT_QPA_PLATFORM", "offscreen")
    inside: list[float] = []
    outside: list[float] = []
    for _ in range(args.runs):
        env["MEDSCREEN_HOME"] = tempfile.mkdtemp(prefix="medscreen-start-")
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "desktop"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("shown_after_s="):
                outside.append(time.perf_counter() - t0)
                inside.append(float(line.split("=", 1)[1]))
                break
        proc.wait(timeout=120)
    if not inside:
        sys.stderr.write("the window never reported being shown\n")
        return 1
    sys.stdout.write(
        f"runs={len(inside)} shown_after_s median={statistics.median(inside):.2f} "
        f"max={max(inside):.2f} (from Popen: median={statistics.median(outside):.2f} "
        f"max={max(outside):.2f})\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

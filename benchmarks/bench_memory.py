"""Peak memory of ``medscreen classify`` with every report, as a folder grows to 20,000 scans.

Copies small real chest X-ray PNGs (the NLM tuberculosis sets, 299×299, from
``/work/shared/data``, or the fixtures in ``tests/data``) into folders of each size, every copy
made unique by trailing bytes so the store cannot reuse a result, then runs, each in a fresh
process, and prints the peak resident memory (the kernel's ``ru_maxrss`` of that process):

* ``classify FOLDER --report pdf,csv,json`` — screening, then results.csv/json and the three
  reports, the whole command a clinic runs;
* ``export BATCH --report pdf,csv,json`` — the same outputs written again from the store
  alone, the report writers' own peak.

Flat memory means nothing per scan is kept: the figures should not grow with the folder.

Usage: ``python benchmarks/bench_memory.py [--sizes 1000,5000,20000] [--models DIR]``.
It prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NLM = Path("/work/shared/data/tb/nlm_299")


def sources() -> list[Path]:
    found = sorted(NLM.rglob("*.png")) if NLM.is_dir() else []
    return found or sorted((REPO / "tests" / "data" / "tb").rglob("*.png"))


def build(folder: Path, count: int) -> None:
    blobs = [p.read_bytes() for p in sources()]
    for i in range(count):
        sub = folder / f"d{i // 500:03d}"  # clinics keep exports in many sub-folders
        sub.mkdir(parents=True, exist_ok=True)
        data = blobs[i % len(blobs)] + f"medscreen-bench-{i}".encode()
        (sub / f"scan_{i:05d}.png").write_bytes(data)


def run(args: list[str]) -> tuple[float, float, str]:
    """Run ``medscreen ARGS`` in a fresh process: (peak RSS in MB, seconds, stdout+stderr).

    Also prints the process's CPU time (user + system) and the load average: the peak moves
    with the load (more scans wait between the stages on a busy machine), so a figure
    without the load it was measured under cannot be compared with another."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "desktop", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    output = proc.stdout.read() if proc.stdout else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"medscreen {' '.join(args)} failed:\n{output[-3000:]}")
    print(
        f"  medscreen {args[0]}: CPU {usage.ru_utime:.0f} s user + {usage.ru_stime:.0f} s "
        f"system; load average {os.getloadavg()[0]:.1f} at the end",
        flush=True,
    )
    return usage.ru_maxrss / 1024, time.perf_counter() - start, output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,5000,20000")
    parser.add_argument("--models", type=Path, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="build/reuse folders here")
    parser.add_argument("--no-export", action="store_true", help="skip the export runs")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    root = args.keep or Path(tempfile.mkdtemp(prefix="medscreen-mem-"))
    models = ["--models", str(args.models)] if args.models else []
    print(
        f"cores: {len(os.sched_getaffinity(0))}; scans: {len(sources())} real 299×299 chest "
        f"X-ray PNGs, copied; reports: pdf, csv, json (plus results.csv/json); load average "
        f"{os.getloadavg()[0]:.1f} at the start"
    )
    print(f"{'scans':>7} {'classify peak':>14} {'time':>8} {'export peak':>12} {'time':>7}  pdf")
    for size in sizes:
        folder = root / f"scans_{size}"
        if not folder.is_dir():
            build(folder, size)
        db, out = root / f"results_{size}.sqlite3", root / f"out_{size}"
        for stale in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            stale.unlink(missing_ok=True)
        shutil.rmtree(out, ignore_errors=True)
        common = ["--db", str(db), "--report", "pdf,csv,json", "--name", "report", "--quiet"]
        common += models
        peak, seconds, _ = run(["classify", str(folder), "--out", str(out), *common])
        history = subprocess.run(
            [sys.executable, "-m", "desktop", "history", "--db", str(db)],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        batch = next(line.split()[0] for line in history.splitlines() if line.strip())
        again = root / f"again_{size}"
        shutil.rmtree(again, ignore_errors=True)
        export_peak = export_s = float("nan")
        if not args.no_export:
            export_peak, export_s, _ = run(["export", batch, "--out", str(again), *common])
        pdf = out / "report.pdf"
        volumes = len(list(out.glob("report*.pdf")))
        print(
            f"{size:>7,} {peak:>11.0f} MB {seconds:>7.0f}s {export_peak:>9.0f} MB "
            f"{export_s:>6.0f}s  {pdf.stat().st_size / 2**20:.1f} MB"
            + (f" + {volumes - 1} continuation files" if volumes > 1 else "")
        )
        shutil.rmtree(again, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Where an 8-bit JPEG scan's CPU goes in MedScreen, against the plain full decode, per scan.

Issue #10 asks MedScreen to screen 8-bit JPEGs faster than a plain script *fully* decodes
them (``bench_throughput.py``'s (b)). Both use all cores, so at equal busy shares the ratio
of their rates is the inverse ratio of their CPU a scan. This measures that CPU in one
thread, with nothing overlapping, on ``bench_throughput.py``'s 2048² JPEG corpus:

* **MedScreen**: the batch runner's own steps on each file — ``BatchRunner._prepare``
  (stat, file-index look-ups, read and SHA-256, content probe, decode to the working image
  at ¼ DCT scale, the models' planes, the thumbnail), ``_infer_on_cores`` on batches of
  ``--batch`` (the runner's CPU batch) and the store's commit of each batch — with the
  thread CPU of every stage (``time.thread_time`` around the engine's functions);
* **plain**: ``bench_throughput.py``'s plain script (open, full decode, grey, area resize
  to 224²) on the same files;

in alternating rounds, and ``--batches 1,2,4,...`` also times the screening step alone per
inference batch size (the four models through the runner's ``Screener.screen``).

The stages' sum is what the runner must spend a scan whatever its threads do: if it is
above the plain script's CPU a scan, no hand-off or batching can put MedScreen above the
plain full decode on this CPU without changing what is computed (model inputs, thumbnail).

Usage: ``python benchmarks/profile_jpeg_cpu.py [--scans 240] [--rounds 3] [--batch 2]
[--batches 1,2,4,8,16,32] [--keep DIR]``. It prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import functools
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_throughput import MODEL_SIZE, build_corpus  # noqa: E402
from desktop.engine import joint, loading, runner, screening, store  # noqa: E402
from desktop.engine.inference import Device, OnnxModel  # noqa: E402
from desktop.engine.preprocess import decode_working  # noqa: E402
from desktop.engine.registry import load_model_set  # noqa: E402

#: (module or class, function name, stage) timed in the MedScreen rounds.
STAGES: tuple[tuple[Any, str, str], ...] = (
    (runner, "read_file", "read + SHA-256"),
    (runner, "content_probe", "content probe"),
    (store.ResultsStore, "known_sha", "file-index look-ups"),
    (store.ResultsStore, "cached_result", "file-index look-ups"),
    (runner, "decode_working", "decode (¼ DCT scale) to the working image"),
    (screening, "preprocess_planes", "model planes (3 specs)"),
    (screening, "make_thumbnail", "thumbnail"),
    (OnnxModel, "run", "ONNX Runtime: modality gate"),
    (joint.JointModel, "run", "ONNX Runtime: chest models (joint sessions)"),
    (store.ResultsStore, "record_many", "store commit"),
)


class StageClock:
    """Thread CPU per stage, by wrapping the engine's functions (this thread only)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._originals: list[tuple[Any, str, Callable[..., Any]]] = []

    def install(self) -> None:
        for owner, name, stage in STAGES:
            original = getattr(owner, name)
            self._originals.append((owner, name, original))
            setattr(owner, name, self._timed(original, stage))

    def remove(self) -> None:
        for owner, name, original in reversed(self._originals):
            setattr(owner, name, original)
        self._originals.clear()

    def _timed(self, function: Callable[..., Any], stage: str) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                spent = time.thread_time() - start
                self.seconds[stage] = self.seconds.get(stage, 0.0) + spent

        return timed


def medscreen_round(files: list[Path], models: Any, work: Path, batch: int) -> dict[str, float]:
    """One pass of the runner's steps over ``files`` in this thread: ms a scan per stage."""
    db = work / "profile.sqlite3"
    for extra in ("", "-wal", "-shm"):
        Path(f"{db}{extra}").unlink(missing_ok=True)
    results = store.ResultsStore(db)
    batch_runner = runner.BatchRunner(models, results)
    batch_id = results.create_batch([str(files[0].parent)], models.key, "cpu", "screening")
    results.set_items(batch_id, [str(f) for f in files])
    pending = list(results.pending_items(batch_id))
    clock = StageClock()
    clock.install()
    try:
        start = time.thread_time()
        for i in range(0, len(pending), batch):
            ready = [batch_runner._prepare(seq, file) for seq, file in pending[i : i + batch]]
            if not all(isinstance(r, runner._Ready) for r in ready):
                raise RuntimeError(f"a corpus file did not decode: {ready}")
            done = batch_runner._screened(ready, batch_runner._infer_on_cores(ready))
            results.record_many(
                batch_id, [(d.seq, d.result) for d in done], [d.index for d in done if d.index]
            )
        total = time.thread_time() - start
    finally:
        clock.remove()
        results.close()
    per_scan = {stage: 1000 * s / len(pending) for stage, s in clock.seconds.items()}
    per_scan["everything else (Python between the stages)"] = 1000 * total / len(pending) - sum(
        per_scan.values()
    )
    per_scan["total"] = 1000 * total / len(pending)
    return per_scan


def plain_one(path: Path) -> None:
    """bench_throughput.py's plain script for one 8-bit file (no MedScreen code)."""
    grey = Image.open(path).convert("L")
    small = grey.resize((MODEL_SIZE, MODEL_SIZE), Image.Resampling.BOX)
    float(np.asarray(small, dtype=np.float32).mean())


def plain_round(files: list[Path]) -> float:
    start = time.thread_time()
    for path in files:
        plain_one(path)
    return 1000 * (time.thread_time() - start) / len(files)


def screening_by_batch(files: list[Path], models: Any, sizes: list[int]) -> dict[int, float]:
    """The four models through ``Screener.screen``: ms of thread CPU a scan per batch size."""
    screener = screening.Screener(models)
    prepared = [screener.prepare(decode_working(p, *loading.read_file(p))) for p in files]
    out: dict[int, float] = {}
    for size in sizes:
        screener.screen(prepared[:size])  # first run of this shape
        usable = len(prepared) - len(prepared) % size
        start = time.thread_time()
        for i in range(0, usable, size):
            screener.screen(prepared[i : i + size])
        out[size] = 1000 * (time.thread_time() - start) / usable
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=240)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=runner.CPU_BATCH)
    parser.add_argument("--batches", default="", help="e.g. 1,2,4,8,16,32")
    parser.add_argument("--keep", type=Path, default=None, help="build/reuse the corpus here")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="medscreen-profile-"))
    folder = root / "jpeg8"
    if not folder.is_dir() or len(list(folder.iterdir())) < args.scans:
        build_corpus(folder, "jpeg8", max(args.scans, 480))
    files = sorted(folder.iterdir())[: args.scans]
    models = load_model_set([REPO / "assets" / "models"], Device.CPU)
    print(
        f"{platform.processor() or platform.machine()}; {len(files)} 2048² 8-bit JPEGs; "
        f"one thread; MedScreen batches of {args.batch}; rounds alternate"
    )
    ours: list[dict[str, float]] = []
    plain: list[float] = []
    for _ in range(args.rounds):
        ours.append(medscreen_round(files, models, root, args.batch))
        plain.append(plain_round(files))
    print("\nMedScreen, ms of CPU a scan (median of the rounds; the rounds):")
    for stage in ours[0]:
        values = [r.get(stage, 0.0) for r in ours]
        print(
            f"  {stage:48s} {statistics.median(values):6.2f}  "
            f"[{', '.join(f'{v:.2f}' for v in values)}]"
        )
    ms = statistics.median(r["total"] for r in ours)
    pl = statistics.median(plain)
    rounds = ", ".join(f"{v:.2f}" for v in plain)
    print(f"plain full decode + grey + 224² resize: {pl:.2f} ms a scan [{rounds}]")
    print(
        f"\nat equal busy shares, MedScreen / plain full decode in scans/s would be "
        f"{pl / ms:.2f} (CPU a scan {pl:.2f} / {ms:.2f})"
    )
    if args.batches:
        sizes = [int(s) for s in args.batches.split(",") if s]
        print("\nscreening alone (4 models, Screener.screen), ms of CPU a scan by batch size:")
        for size, value in screening_by_batch(files, models, sizes).items():
            print(f"  batch {size:3d}: {value:.2f}")


if __name__ == "__main__":
    main()

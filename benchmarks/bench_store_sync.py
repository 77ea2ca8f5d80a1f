"""What ``synchronous=FULL`` costs: the same batch with the store's FULL and with NORMAL.

The results store commits every finished scan in WAL mode. With ``synchronous=NORMAL`` SQLite
fsyncs only at checkpoints, so after a power cut the last commits can roll back; with ``FULL``
(MedScreen's setting) each commit is fsynced before the runner reports the scan. This prints,
in one run on the same files and disk:

* end-to-end scans/s of the real batch runner (stand-in ONNX models from the test suite, real
  chest X-rays made unique) with FULL and with NORMAL, alternating, each on a fresh database;
* bare commit rate: ``ResultsStore.record`` of one real result (thumbnail included) per commit.

Usage: ``python benchmarks/bench_store_sync.py [--scans 240] [--commits 500] [--rounds 2]
[--dir DIR] [--models DIR]``: ``--models assets/models`` for the shipped models, ``--dir`` for
the disk to measure (default: a temporary folder). It prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # a script run from the checkout, not an installed package

from desktop.engine.registry import load_model_set  # noqa: E402
from desktop.engine.runner import BatchRunner, run_to_end  # noqa: E402
from desktop.engine.store import ResultsStore  # noqa: E402
from tests.model_factory import build_model_set, trust_test_key  # noqa: E402


class NormalSyncStore(ResultsStore):
    """The store as it was before: WAL with ``synchronous=NORMAL`` on every connection."""

    SYNCHRONOUS = "NORMAL"


def _corpus(folder: Path, count: int) -> Path:
    sources = sorted((REPO / "tests" / "data" / "tb").rglob("*.png"))
    sources += sorted((REPO / "tests" / "data" / "pneumonia").rglob("*.jpeg"))
    for i in range(count):
        src = sources[i % len(sources)]
        dst = folder / f"scan_{i:05d}{src.suffix}"
        dst.write_bytes(src.read_bytes() + i.to_bytes(4, "little"))  # unique content
    return folder


def _batch(store_cls: type[ResultsStore], db: Path, models_dir: Path, scans: Path) -> float:
    store = store_cls(db)
    mode = store._db().execute("PRAGMA synchronous").fetchone()[0]
    assert mode == (2 if store_cls is ResultsStore else 1), mode
    runner = BatchRunner(load_model_set([models_dir]), store)
    started = time.perf_counter()
    summary = run_to_end(runner.run([scans]))
    elapsed = time.perf_counter() - started
    store.close()
    return summary.total / elapsed


def _commits(store_cls: type[ResultsStore], db: Path, template_db: Path, count: int) -> float:
    source = ResultsStore(template_db)
    (batch,) = source.batches(limit=1)
    result = next(source.batch_results(batch.id))
    source.close()
    store = store_cls(db)
    batch_id = store.create_batch(["bench"], result.models_key, "CPU")
    store.set_items(batch_id, [f"scan_{i}" for i in range(count)])
    started = time.perf_counter()
    for i in range(count):
        store.record(batch_id, i, replace(result, file=f"scan_{i}", sha256=f"{i:064x}"))
    elapsed = time.perf_counter() - started
    store.close()
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=240)
    parser.add_argument("--commits", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument(
        "--models", type=Path, default=None, help="real model folder (default: stand-ins)"
    )
    args = parser.parse_args()
    trust_test_key()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        models_dir = args.models or build_model_set(root / "models")
        scans = root / "scans"
        scans.mkdir()
        _corpus(scans, args.scans)
        rates: dict[str, list[float]] = {"FULL": [], "NORMAL": []}
        commit_rates: dict[str, list[float]] = {"FULL": [], "NORMAL": []}
        template = root / "template.sqlite3"
        _batch(ResultsStore, template, models_dir, scans)  # warm-up: caches, ONNX sessions
        for r in range(args.rounds):
            for name, cls in (("NORMAL", NormalSyncStore), ("FULL", ResultsStore)):
                rates[name].append(_batch(cls, root / f"{name}{r}.sqlite3", models_dir, scans))
                commit_rates[name].append(
                    _commits(cls, root / f"c{name}{r}.sqlite3", template, args.commits)
                )
        kind = f"models in {args.models}" if args.models else "stand-in models"
        print(f"{args.scans} scans ({kind}), {args.rounds} rounds, disk of {root}")
        for name in ("NORMAL", "FULL"):
            batch = ", ".join(f"{v:.1f}" for v in rates[name])
            commit = ", ".join(f"{v:.0f}" for v in commit_rates[name])
            print(f"  synchronous={name:<6}  batch: {batch} scans/s   bare commits: {commit} /s")
        best = {k: max(v) for k, v in rates.items()}
        best_c = {k: max(v) for k, v in commit_rates.items()}
        print(
            f"  FULL / NORMAL: batch {best['FULL'] / best['NORMAL']:.2f}×, "
            f"bare commits {best_c['FULL'] / best_c['NORMAL']:.2f}× (best of each)"
        )


if __name__ == "__main__":
    main()

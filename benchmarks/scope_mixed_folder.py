"""A clinic's mixed folder of children and adults, no DICOM ages: how many healthy children does
the TB model flag, with and without the scope rule? (issue 12)

    python -m benchmarks.scope_mixed_folder --data /work/shared/data \\
        [--split runs/agegroup/split.csv] [--children 200] [--adults 200]

Builds a folder of PNG/JPEG chest X-rays (no ages in them): healthy Kermany children
(NORMAL), NIH children (ages from ``metadata.csv``; another hospital) and healthy adults (NIH
"No Finding" aged 18+, NLM normals). With ``--split`` (the ``split.csv`` of the agegroup run)
only images held out of that model's training and validation are used; without it the
figures flatter the estimate. Screens the folder with the bundled models (gate, TB,
pneumonia, agegroup) through the real runner, then prints, per source and group: how many
were placed in the right group from the image, how many the TB model flags by its threshold
alone, and how many it flags under the scope rule (the app's behaviour). Nothing is timed.
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
import tempfile
from collections import Counter
from pathlib import Path

from desktop.engine.patients import PatientGroup
from desktop.engine.registry import load_model_set
from desktop.engine.results import ScanStatus, ScopeRule, ThresholdChoice, finding_flags
from desktop.engine.results import operating_points as resolve_points
from desktop.engine.runner import BatchRunner, run_to_end
from desktop.engine.store import ResultsStore


def _held_out(split: Path | None) -> set[str] | None:
    if split is None:
        return None
    with split.open(newline="") as handle:
        return {r["file"] for r in csv.DictReader(handle) if r["split"] in ("test", "fixture")}


def _pick(files: list[Path], n: int, keep: set[str] | None, rng: random.Random) -> list[Path]:
    files = sorted(f for f in files if keep is None or f.name in keep)
    rng.shuffle(files)
    return files[:n]


def build_folder(data: Path, out: Path, args: argparse.Namespace) -> dict[str, tuple[str, str]]:
    """Copy the chosen images into ``out``; returns name → (source, true group)."""
    rng = random.Random(args.seed)
    keep = _held_out(args.split)
    truth: dict[str, tuple[str, str]] = {}

    def add(files: list[Path], source: str, group: str) -> None:
        for f in files:
            name = f"{source}_{f.name}"
            shutil.copy(f, out / name)
            truth[name] = (source, group)

    kermany = data / "pneumonia" / "kermany224_train" / "NORMAL"
    add(_pick(list(kermany.glob("*.jpeg")), args.children, keep, rng), "kermany", "child")
    nih = data / "pneumonia" / "nih_adult_1000"
    with (nih / "metadata.csv").open(newline="") as handle:
        meta = [r for r in csv.DictReader(handle)]
    nih_children = [nih / r["file"] for r in meta if int(r["age"]) < 18]
    nih_adults = [
        nih / r["file"] for r in meta if int(r["age"]) >= 18 and r["folder_label"] == "No_findings"
    ]
    add(_pick(nih_children, args.children, keep, rng), "nih", "child")
    add(_pick(nih_adults, args.adults // 2, keep, rng), "nih", "adult")
    nlm = data / "tb" / "nlm_299" / "Normal"
    add(_pick(list(nlm.glob("*.png")), args.adults - args.adults // 2, keep, rng), "nlm", "adult")
    return truth


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--split", type=Path, default=None)
    p.add_argument("--children", type=int, default=200)
    p.add_argument("--adults", type=int, default=200)
    p.add_argument("--seed", type=int, default=12)
    args = p.parse_args(argv)
    models = load_model_set()
    if models.patient_group is None:
        print("no patient-group model is loaded: every scan without a DICOM age is 'unknown'")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "scans"
        folder.mkdir()
        truth = build_folder(args.data, folder, args)
        store = ResultsStore(Path(tmp) / "results.sqlite3")
        summary = run_to_end(BatchRunner(models, store).run([folder]))
        results = list(store.batch_results(summary.batch_id))
        store.close()
    points = resolve_points(models.manifests, ThresholdChoice())
    rule = ScopeRule.of(models.manifests)
    rows: Counter[tuple[str, str, str]] = Counter()
    for r in results:
        source, group = truth[Path(r.file).name]
        key = (source, group)
        rows[(*key, "n")] += 1
        if r.status is not ScanStatus.OK:
            rows[(*key, "not screened")] += 1
            continue
        decided = rule.group(r).group
        rows[(*key, "placed right")] += decided is PatientGroup(group)
        rows[(*key, "tb flag by threshold")] += bool(finding_flags(r, points)["tb"])
        rows[(*key, "tb flag with scope")] += bool(finding_flags(r, points, rule)["tb"])
    print(f"models: {models.key}")
    print(f"{'source/group':16} {'n':>4} {'screened':>8} {'placed right':>12} "
          f"{'TB flag: threshold':>18} {'TB flag: scope':>15}")  # fmt: skip
    for source, group in sorted({(s, g) for s, g, _ in rows}):
        n = rows[(source, group, "n")]
        ok = n - rows[(source, group, "not screened")]
        right = rows[(source, group, "placed right")]
        thr = rows[(source, group, "tb flag by threshold")]
        scoped = rows[(source, group, "tb flag with scope")]
        print(
            f"{source + '/' + group:16} {n:4d} {ok:8d} {right:6d} ({right / max(ok, 1):5.1%}) "
            f"{thr:8d} ({thr / max(ok, 1):5.1%}) {scoped:6d} ({scoped / max(ok, 1):5.1%})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

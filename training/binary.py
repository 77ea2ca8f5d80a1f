"""The shared recipe of the two finding models (TB, pneumonia): one function, two datasets.

Both use the same default recipe (ImageNet MobileNet v1 alpha 0.25, head then fine-tune,
class weights, radiograph augmentation) so that what we learn about one transfers to the
other; the seed-article recipes are selectable for comparison runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from desktop.engine.preprocess import PreprocessSpec
from training import data as D
from training.runs import finish_binary, limit_per_class

log = logging.getLogger(__name__)

WEIGHTS_NAME = "mobilenet_2_5_224_tf_no_top.h5"
DEFAULT_WEIGHTS = (Path(__file__).resolve().parents[1] / "../shared/data/weights").resolve()
MOBILENET_SPEC = PreprocessSpec(224, 224, 3, "stretch", "area", 2.0, -1.0)

MOBILENET_RECIPE = (
    "MobileNet v1 alpha 0.25 (ImageNet weights, batch-norm statistics frozen) + GAP + Dense "
    "softmax, {size}x{size}x3 in [-1,1]; {e1} epochs head only (lr 1e-3), then all layers "
    "(lr {lr2:g}) with early stopping on validation loss; class-weighted cross-entropy; "
    "augmentation rotation ±7°, shift 5%, zoom 8%, brightness ±0.08, contrast ±12%, no flip"
)


def run_binary(
    args: argparse.Namespace,
    *,
    model_id: str,
    name: str,
    labels: list[str],
    records: Sequence[D.Record],
    seed_recipe: tuple[str, PreprocessSpec, Callable[..., Any], str],
    citation: str,
    split_method: str,
    intended_use: str,
    limitations: Callable[[dict[str, Any]], list[str]],
    e1: int = 8,
    e2: int = 25,
    lr2: float = 2e-4,
) -> dict[str, Any]:
    """Split, build arrays with the engine, train, calibrate, evaluate, write the run."""
    started = time.time()
    from training.fit import configure_tf, fit

    configure_tf(args.seed)
    run: Path = args.out
    run.mkdir(parents=True, exist_ok=True)
    recs = D.split_records(
        limit_per_class(records, args.limit, args.seed),
        args.fractions or (0.7, 0.15, 0.15),
        seed=args.seed,
    )
    D.write_split_csv(recs, run / "split.csv", labels)
    seed_id, seed_spec, seed_builder, seed_desc = seed_recipe
    spec = seed_spec if args.recipe == seed_id else MOBILENET_SPEC
    if args.recipe == "mobilenet" and args.input_size != MOBILENET_SPEC.height:
        spec = replace(MOBILENET_SPEC, height=args.input_size, width=args.input_size)
    cache = args.cache or D.default_cache_dir()
    arrays = {}
    for split in D.SPLITS:
        rows = D.by_split(recs, split)
        arrays[split] = (
            D.build_array([r.path for r in rows], spec, cache),
            np.array([r.label for r in rows], dtype=np.int64),
        )
        log.info("%s: %d images", split, len(rows))
    cw = D.class_weights(arrays["train"][1], 2)
    common = {"class_weight": cw, "batch": args.batch}
    if args.recipe == "mobilenet":
        from training.models import mobilenet_transfer

        weights = args.weights or DEFAULT_WEIGHTS / WEIGHTS_NAME
        if str(weights).lower() == "none":  # smoke tests on machines without the weights
            weights = None
        model, backbone = mobilenet_transfer(weights, spec.input_shape, 2)
        backbone.trainable = False
        e1 = args.epochs or e1
        fit(
            model,
            arrays["train"],
            arrays["val"],
            spec,
            run,
            epochs=e1,
            lr=1e-3,
            seed=args.seed,
            stage="head",
            patience=4,
            **common,
        )
        backbone.trainable = True
        lr2 = args.lr2 or lr2
        fit(
            model,
            arrays["train"],
            arrays["val"],
            spec,
            run,
            epochs=args.epochs or e2,
            lr=lr2,
            seed=args.seed + 1,
            stage="finetune",
            patience=6,
            **common,
        )
        recipe = MOBILENET_RECIPE.format(e1=e1, lr2=lr2, size=spec.height)
        pretrained = (
            f"ImageNet MobileNet v1 alpha 0.25 ({Path(weights).name}, Keras Applications)"
            if weights
            else "none (random initialisation: smoke run)"
        )
    else:
        model = seed_builder(spec.input_shape, 2)
        fit(
            model,
            arrays["train"],
            arrays["val"],
            spec,
            run,
            epochs=args.epochs or 30,
            lr=1e-3,
            seed=args.seed,
            stage=seed_id,
            patience=5,
            **common,
        )
        recipe, pretrained = seed_desc, "none (from scratch)"
    save_curves(run)
    provenance = {
        "data": [citation],
        "data_path": str(args.data),
        "recipe": recipe,
        "recipe_id": args.recipe,
        "pretrained": pretrained,
        "split": {
            "file": "split.csv",
            "method": split_method,
            "seed": args.seed,
            "counts": D.split_summary(recs, labels),
        },
        "class_weights": cw,
        "epochs_run": epochs_run(run),
        "fit_duration_s": fit_duration(run),
    }
    return finish_binary(
        run=run,
        model=model,
        model_id=model_id,
        name=name,
        labels=labels,
        spec=spec,
        val=arrays["val"],
        test=arrays["test"],
        test_sources=[r.source for r in D.by_split(recs, "test")],
        provenance=provenance,
        intended_use=intended_use,
        limitations=limitations,
        started=started,
        seed=args.seed,
    )


def add_binary_args(p: argparse.ArgumentParser, seed_id: str) -> None:
    p.add_argument(
        "--recipe",
        choices=["transfer", "mobilenet", seed_id],
        default="transfer",
        help="transfer: frozen backbone + linear head (training.transfer, the 2.x models); "
        "mobilenet: the 1.x fine-tuned MobileNet 0.25; the seed article's CNN",
    )
    from training.transfer import add_transfer_args

    add_transfer_args(p)
    p.add_argument(
        "--weights", type=Path, default=None, help="MobileNet 0.25 ImageNet .h5, or 'none'"
    )
    p.add_argument("--batch", type=int, default=32)
    p.add_argument(
        "--input-size", type=int, default=224, help="MobileNet input side (weights are for 224)"
    )
    p.add_argument("--lr2", type=float, default=None, help="fine-tuning learning rate")


def epochs_run(run: Path) -> dict[str, int]:
    out = {}
    for h in sorted(run.glob("history_*.json")):
        out[h.stem.removeprefix("history_")] = len(json.loads(h.read_text())["loss"])
    return out


def fit_duration(run: Path) -> float:
    """Seconds spent in ``model.fit`` over all stages (from the history files)."""
    total = 0.0
    for h in sorted(run.glob("history_*.json")):
        total += float(json.loads(h.read_text()).get("duration_s", [0.0])[0])
    return round(total, 1)


def save_curves(run: Path) -> None:
    """One PNG of loss/accuracy curves per training stage."""
    from training.evaluate import plot_history

    try:
        for h in sorted(run.glob("history_*.json")):
            hist = {k: v for k, v in json.loads(h.read_text()).items() if k != "duration_s"}
            plot_history(hist, run / f"curves_{h.stem.removeprefix('history_')}.png", h.stem)
    except ImportError:
        log.warning("matplotlib is not installed: no training curves")

"""Frozen-backbone ensembles and test-time views, exported as one graph (TB 2.x candidates).

    python -m training.train_tb --data $DATA/tb/nlm_299 --nih $DATA/pneumonia/nih_adult_1000 \
        --branch mobilenet025@224:mean:6:tta --branch lite0@224:sqrt:6 \
        --tta-crops 202,180 --out runs/tb_cmp_ens_lite0_224_tta

Why: a frozen backbone + linear head (:mod:`training.transfer`) ranks an unseen split of a
training hospital well but loses ~0.1-0.2 AUC at the other hospital. Two cheap ways to make a
score less dependent on one framing and one feature space, with no new training data:

- *test-time views*: each scan is also seen as centre crops (a tighter field of view, resized
  back to the input side), and the views' logits are averaged. The crops are computed
  **inside the exported graph** (Keras ``Cropping2D`` + ``Resizing``, which tf2onnx turns into
  ``Slice`` + ``Resize``), so the app's preprocessing stays the one engine definition and
  training and the app cannot differ.
- *a second backbone*: each branch's head is fitted exactly as the frozen recipe fits one
  (L2 on validation, (class, source) cells weighted equally), divided by its own validation
  temperature, and the calibrated logits are averaged with equal weights.

Everything stays linear after the feature maps: averaging logits over views and branches is
one ``Dense`` layer on the concatenation (over branches) of the view-averaged feature maps,
so the exported model keeps the ``features → gap → logits`` ending that export and the exact
class activation map rely on. (The map of a cropped view is averaged cell by cell with the
full view's, so it is spatially blurred by at most the crop margin: 11 and 22 of 224 pixels,
under one 32-pixel cell.) All branches take the first branch's engine input; another
backbone's input scaling is an exact affine ``Rescaling`` in the graph.

Validation designs are :mod:`training.transfer`'s (test per source, leave-one-source-out,
NIH flag rates) plus :mod:`training.finetune`'s cross-source validation AUC, with the
frozen MobileNet 2.0.0 recipe's figure of the same design recorded beside it
(``auc_linear_probe``, the card's bracketed column).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from desktop.engine.preprocess import PreprocessSpec, prepare_file
from training import data as D
from training import evaluate as ev
from training.augment import ScanAugment
from training.features import (
    Backbone,
    _key,
    _run,
    _session,
    extract,
    onnx_backbone,
    parse_backbone,
    select,
)
from training.heads import LinearHead
from training.transfer import (
    L2_GRID,
    Task,
    _fit_head,
    _json,
    _pretrained,
    _two,
    _write_split,
    cross_source_mean,
    evaluate_head,
    finding_info,
    loso_fold_figures,
    loso_folds,
    operating_rule,
    save_judgement,
    training_record,
    write_run_record,
)

log = logging.getLogger(__name__)

#: the 2.0.0 recipe: the reference every candidate's cross-source validation AUC is set against
REFERENCE = ("mobilenet025@224", "mean", 6)


@dataclass(frozen=True)
class Branch:
    """One frozen backbone of the ensemble: pooling, training views, test-time views or not."""

    bb: Backbone
    pool: str
    views: int
    tta: bool

    @property
    def key(self) -> str:
        return f"{self.bb.key}:{self.pool}:{self.views}" + (":tta" if self.tta else "")


def parse_branch(text: str) -> Branch:
    """``mobilenet025@224:mean:6:tta`` → Branch (the ``tta`` suffix is optional)."""
    parts = text.split(":")
    if len(parts) not in (3, 4) or parts[1] not in ("mean", "sqrt") or not parts[2].isdigit():
        raise ValueError(f"branch {text!r}: expected NAME@SIDE:mean|sqrt:VIEWS[:tta]")
    if len(parts) == 4 and parts[3] != "tta":
        raise ValueError(f"branch {text!r}: the optional fourth part must be 'tta'")
    return Branch(parse_backbone(parts[0]), parts[1], int(parts[2]), len(parts) == 4)


def add_ensemble_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--branch",
        action="append",
        default=None,
        help="NAME@SIDE:POOL:VIEWS[:tta], repeatable: an ensemble / test-time-view candidate "
        "(the first branch's engine input is the model's); omitted: the frozen recipe",
    )
    p.add_argument(
        "--tta-crops",
        default="202,180",
        help="test-time centre crops (pixels kept of each side of the input), resized back",
    )


# --------------------------------------------------------------------------- the views


def crops_of(args: argparse.Namespace) -> list[int]:
    return [int(v) for v in str(args.tta_crops).split(",") if v.strip()]


def view_names(branch: Branch, crops: Sequence[int]) -> list[str]:
    return ["full", *[f"crop{c}" for c in crops]] if branch.tta else ["full"]


def _rescale(src: PreprocessSpec, dst: PreprocessSpec) -> tuple[float, float]:
    """Scale/offset taking ``src``'s input to ``dst``'s (both affine maps of grey in [0, 1])."""
    a = dst.scale / src.scale
    return a, dst.offset - a * src.offset


def view_layers(side: int, name: str):  # noqa: ANN201
    """The Keras layers of one test-time view (identity for ``full``)."""
    from keras import layers

    if name == "full":
        return []
    keep = int(name.removeprefix("crop"))
    m = (side - keep) // 2
    return [
        layers.Cropping2D(((m, side - keep - m), (m, side - keep - m)), name=f"tta_{name}_crop"),
        layers.Resizing(side, side, interpolation="bilinear", name=f"tta_{name}_resize"),
    ]


def _apply(layers_: list[Any], x: Any) -> Any:
    for layer in layers_:
        x = layer(x)
    return x


def view_features(
    paths: Sequence[Path],
    branch: Branch,
    spec: PreprocessSpec,
    view: str,
    cache: Path,
    batch: int = 32,
) -> np.ndarray:
    """(N, D) pooled features of one test-time view, computed as the exported graph does:
    the model input (``prepare_file`` with the model's ``spec``) → the view's Keras layers →
    the branch's input scaling → the backbone (ONNX Runtime, as :mod:`training.features`)."""
    own = branch.bb.spec()
    extra = {"ensemble_view": view, "input_spec": spec.to_manifest(), "version": 1}
    path = cache / "features" / f"ens_{_key(paths, own, branch.bb, 0, extra)}.npy"
    if not path.exists():
        import keras

        started = time.time()
        inp = keras.Input((spec.height, spec.width, 3))
        x = _apply(view_layers(spec.width, view), inp)
        a, b = _rescale(spec, own)
        if (a, b) != (1.0, 0.0):
            x = keras.layers.Rescaling(a, b)(x)
        pre = keras.Model(inp, x)
        sess = _session(str(onnx_backbone(branch.bb, cache)))
        out = []
        for i in range(0, len(paths), batch):
            xb = np.stack([prepare_file(p, spec) for p in paths[i : i + batch]])
            xb = np.asarray(pre(xb, training=False), dtype=np.float32)
            out.append(_run(sess, xb))
        arr = np.concatenate(out).astype(np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, arr)
        tmp.replace(path)
        log.info(
            "%s view %s: %d images in %.0f s", branch.key, view, len(paths), time.time() - started
        )
    return select(np.load(path), branch.pool)


# --------------------------------------------------------------------------- the heads


def combine(heads: Sequence[LinearHead], temperatures: Sequence[float]) -> LinearHead:
    """One head on the concatenated branch features whose logit is the mean of the branches'
    calibrated logits: sum_k head_k(x_k) / (K T_k)."""
    k = len(heads)
    c = [1.0 / (k * t) for t in temperatures]
    return LinearHead(
        np.concatenate([h.w * ci for h, ci in zip(heads, c, strict=True)]),
        float(sum(h.b * ci for h, ci in zip(heads, c, strict=True))),
        np.concatenate([h.mean for h in heads]),
        np.concatenate([h.std for h in heads]),
    )


def fit_branches(
    train_feats: Sequence[np.ndarray],
    y: np.ndarray,
    s: np.ndarray,
    val_feats: Sequence[np.ndarray],
    y_val: np.ndarray,
    val: Sequence[D.Record],
) -> tuple[LinearHead, list[float], list[float], dict[str, dict[str, float]]]:
    """Each branch's head by the frozen recipe (L2 on validation AUC, mean over sources; the
    validation features are the branch's test-time-view averages), its validation
    temperature, and the combined head."""
    heads, l2s, temps, tables = [], [], [], {}
    for i, (xt, xv) in enumerate(zip(train_feats, val_feats, strict=True)):
        head, l2, table = _fit_head(xt, y, s, xv, y_val, val)
        heads.append(head)
        l2s.append(l2)
        temps.append(ev.fit_temperature(_two(head.logit(xv)), y_val))
        tables[str(i)] = table
    return combine(heads, temps), l2s, temps, tables


# --------------------------------------------------------------------------- the run


def run_ensemble(args: argparse.Namespace, task: Task) -> dict[str, Any]:
    """Branch features → heads → combined head → calibration → operating points → every
    design of :mod:`training.transfer` → run folder that export converts."""
    started = time.time()
    run: Path = args.out
    run.mkdir(parents=True, exist_ok=True)
    branches = [parse_branch(b) for b in args.branch]
    sides = {b.bb.side for b in branches}
    if len(sides) != 1:
        raise ValueError(f"every branch must take the same input side, got {sorted(sides)}")
    spec = branches[0].bb.spec()
    crops = crops_of(args)
    cache = args.cache or D.default_cache_dir()
    aug = ScanAugment()
    recs = task.records
    _write_split(recs, run / "split.csv", task.labels)
    train, val, test = (D.by_split(recs, k) for k in ("train", "val", "test"))
    every = [*train, *val, *test]
    y_train, y_val, y_test = (np.array([r.label for r in rows]) for rows in (train, val, test))
    s_train = np.array([r.source for r in train])

    def train_feats(b: Branch, rows: Sequence[D.Record]) -> np.ndarray:
        x = extract(
            [r.path for r in rows], b.bb, b.bb.spec(), b.views, seed=args.seed, aug=aug, cache=cache
        )
        return select(x, b.pool)

    def eval_feats(b: Branch, rows: Sequence[D.Record]) -> np.ndarray:
        paths = [r.path for r in rows]
        return np.mean(
            [view_features(paths, b, spec, v, cache) for v in view_names(b, crops)], axis=0
        )

    tr = [train_feats(b, train) for b in branches]
    ev_all = [eval_feats(b, every) for b in branches]  # train, val, test parts in that order
    n_tr, n_va = len(train), len(val)
    va = [x[n_tr : n_tr + n_va] for x in ev_all]
    te = [x[n_tr + n_va :] for x in ev_all]

    head, l2s, temps, l2_tables = fit_branches(tr, y_train, s_train, va, y_val, val)
    x_val, x_test = np.concatenate(va, axis=1), np.concatenate(te, axis=1)
    judged = evaluate_head(
        task,
        (val, test),
        (y_val, y_test),
        (head.logit(x_val), head.logit(x_test)),
        lambda rows: head.logit(np.concatenate([eval_feats(b, rows) for b in branches], axis=1)),
        args.seed,
    )
    metrics = judged.metrics

    ref = _reference(args, train, every, aug, cache)
    loso, cross = _loso(tr, ev_all, ref, train, val, test, args.seed)
    if task.loso:
        metrics["leave_one_source_out"] = loso["figures"]
    metrics["cross_source_validation"] = cross

    # one branch without test-time views is the frozen recipe itself (with this module's
    # cross-source validation figure added)
    ens, tta = len(branches) > 1, any(b.tta for b in branches)
    recipe_id = "frozen" + ("_ens" if ens else "") + ("_tta" if tta else "")
    if not (ens or tta):
        recipe_id = "frozen_lr"
    recipe = _describe(branches, l2s, temps, crops, spec)
    info = finding_info(
        task,
        args,
        spec,
        judged.temperature,
        judged.points,
        metrics,
        rule=operating_rule(task),
        comparison={
            "backbone": "+".join(b.bb.key for b in branches),
            "recipe_id": recipe_id,
            "views": "+".join(str(b.views) for b in branches),
            "contrast": "none",
            "pool": "+".join(b.pool for b in branches),
            "l2": l2s[0],
            "l2_branches": l2s,
            "branch_temperatures": temps,
            "l2_validation_auc": l2_tables,
            "branches": [b.key for b in branches],
            "tta_views": {b.key: view_names(b, crops) for b in branches},
            "selection": args.selection,
        },
        training=training_record(
            task,
            args,
            recs,
            recipe=recipe,
            recipe_id=recipe_id,
            pretrained="; ".join(dict.fromkeys(_pretrained(b.bb) for b in branches)),
            augmentation=aug.to_json(),
        ),
    )
    save_judgement(run, task, (val, test), (y_val, y_test), judged, head, x_test, loso)
    if not args.no_model:
        save_model(run, branches, crops, spec, head, test, judged.t_probs[:, 1])
    write_run_record(run, info, started)
    print(f"  cross-source validation: {json.dumps(cross)}", flush=True)
    return info


def _describe(
    branches: Sequence[Branch],
    l2s: Sequence[float],
    temps: Sequence[float],
    crops: Sequence[int],
    spec: PreprocessSpec,
) -> str:
    parts = []
    for b, l2, t in zip(branches, l2s, temps, strict=True):
        parts.append(
            f"{b.bb.describe()}, frozen (ImageNet batch-norm statistics), every training image "
            f"seen as {b.views} versions (the engine input + {b.views - 1} simulated other-site "
            "scans, as the frozen recipe), "
            + ("GAP of the square-rooted feature maps" if b.pool == "sqrt" else "GAP features")
            + f" → L2 logistic regression (L2 {l2:g} chosen on validation AUC from "
            f"{list(L2_GRID)}, each (class, source) cell weighted equally), validation "
            f"temperature {t:.3f}"
            + (
                "; at test time the scan is also seen as centre crops keeping "
                + " and ".join(f"{c}" for c in crops)
                + f" of {spec.width} pixels a side, resized back (bilinear) inside the graph, "
                "and the views' logits averaged"
                if b.tta
                else ""
            )
        )
    if len(branches) == 1:
        return parts[0] + "; temperature and operating points on validation"
    return (
        f"ensemble of {len(branches)} frozen backbones on one engine input "
        f"({spec.width}x{spec.height}; a branch's own input scaling is an affine layer in the "
        "graph): "
        + "; ".join(f"({i + 1}) {p}" for i, p in enumerate(parts))
        + "; the branches' logits, each divided by its validation temperature, averaged with "
        "equal weights; temperature and operating points of the ensemble on validation"
    )


def _reference(
    args: argparse.Namespace,
    train: Sequence[D.Record],
    every: Sequence[D.Record],
    aug: ScanAugment,
    cache: Path,
) -> tuple[np.ndarray, np.ndarray]:
    """The 2.0.0 recipe's features (training views, single-view evaluation features)."""
    bb = parse_backbone(REFERENCE[0])
    spec = bb.spec()
    xt = select(
        extract(
            [r.path for r in train], bb, spec, REFERENCE[2], seed=args.seed, aug=aug, cache=cache
        ),
        REFERENCE[1],
    )
    xe = select(
        extract([r.path for r in every], bb, spec, 1, seed=args.seed, aug=aug, cache=cache),
        REFERENCE[1],
    )[:, 0]
    return xt, xe


def _loso(
    tr: Sequence[np.ndarray],
    ev_all: Sequence[np.ndarray],
    ref: tuple[np.ndarray, np.ndarray],
    train: Sequence[D.Record],
    val: Sequence[D.Record],
    test: Sequence[D.Record],
    seed: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per source: every branch fitted on its training part (L2, temperatures, thresholds from
    its own validation part), tested on every image of the other source; the cross-source
    validation AUC on the other source's validation part alone, with the 2.0.0 recipe's."""
    y_all, folds = loso_folds(train, val, test)
    y_train = y_all[: len(train)]
    x_all = np.concatenate(ev_all, axis=1)
    figures, curves, cross = {}, {}, {}
    for f in folds:
        s_src = np.array([f.source] * int(f.train.sum()))
        head, l2s, _, _ = fit_branches(
            [x[f.train] for x in tr],
            y_train[f.train],
            s_src,
            [x[f.val] for x in ev_all],
            y_all[f.val],
            f.val_rows,
        )
        figures[f.key], curves[f.key] = loso_fold_figures(
            f,
            y_all,
            head.logit(x_all[f.val]),
            head.logit(x_all[f.other]),
            seed,
            {"l2": l2s[0], "l2_branches": l2s},
        )
        ref_head, _, _ = _fit_head(
            ref[0][f.train], y_train[f.train], s_src, ref[1][f.val], y_all[f.val], f.val_rows
        )
        ov = f.other_val
        cross[f.key] = {
            "n": int(ov.sum()),
            "n_positive": int(y_all[ov].sum()),
            "auc": ev.roc_auc(y_all[ov], head.logit(x_all[ov])),
            "auc_linear_probe": ev.roc_auc(y_all[ov], ref_head.logit(ref[1][ov])),
        }
    if cross:
        cross["mean"] = cross_source_mean(cross)
    return {"figures": figures, "curves": curves}, cross


# --------------------------------------------------------------------------- the model


def build_model(
    branches: Sequence[Branch], crops: Sequence[int], spec: PreprocessSpec, head: LinearHead
) -> Any:
    """The Keras model export converts: input → (views → backbone → view-mean of the maps)
    per branch → concatenated maps (``features``) → GAP → Dense(2) → softmax."""
    import keras
    from keras import layers

    from training.features import keras_backbone
    from training.models import FEATURES, GAP, LOGITS, PROBS, Sqrt

    inputs = keras.Input(shape=spec.input_shape, name="image")
    maps = []
    for i, b in enumerate(branches):
        net = keras_backbone(b.bb)
        a, off = _rescale(spec, b.bb.spec())
        x = inputs if (a, off) == (1.0, 0.0) else layers.Rescaling(a, off, name=f"b{i}_in")(inputs)
        per_view = []
        for v in view_names(b, crops):
            fm = net(_apply(view_layers(spec.width, v), x), training=False)
            if b.pool == "sqrt":
                fm = Sqrt(name=f"b{i}_{v}_sqrt")(fm)
            per_view.append(fm)
        maps.append(
            per_view[0] if len(per_view) == 1 else layers.Average(name=f"b{i}_views")(per_view)
        )
    fmap = maps[0] if len(maps) == 1 else layers.Concatenate(axis=-1)(maps)
    fmap = layers.Identity(name=FEATURES)(fmap)
    g = layers.GlobalAveragePooling2D(name=GAP)(fmap)
    logits = layers.Dense(2, name=LOGITS)(g)
    probs = layers.Activation("softmax", name=PROBS, dtype="float32")(logits)
    model = keras.Model(inputs, probs, name="tb_ensemble")
    model.get_layer(LOGITS).set_weights(list(head.dense_weights()))
    return model


def save_model(
    run: Path,
    branches: Sequence[Branch],
    crops: Sequence[int],
    spec: PreprocessSpec,
    head: LinearHead,
    test: Sequence[D.Record],
    p: np.ndarray,
) -> None:
    model = build_model(branches, crops, spec, head)
    model.save(run / "model.keras")
    y = np.array([r.label for r in test])
    pick = np.r_[np.where(y == 0)[0][:8], np.where(y == 1)[0][:8]]
    x = np.stack([prepare_file(test[i].path, spec) for i in pick])
    np.save(run / "parity_inputs.npy", x)
    np.save(run / "parity_scores.npy", p[pick])  # what the run's figures used, for export
    digest = hashlib.sha256(x.tobytes()).hexdigest()[:12]
    log.info("model saved; parity inputs %s", digest)


# --------------------------------------------------------------------------- the judgement


def judge(
    shipped: Path, candidates: Sequence[Path], gain: float = 0.02, drop: float = 0.01
) -> dict[str, str]:
    """Apply the pre-stated rule's validation parts to finished candidate runs and record the
    verdict in each run's record (``comparison.verdict``, shown by the card): (1) cross-source
    validation AUC ≥ the shipped recipe's figure of the same design + ``gain``; (2) validation
    AUC no more than ``drop`` below the shipped run's, pooled and as the mean over sources.
    Only validation figures are read. Part (3) of the rule, the time budget, is measured with
    ``benchmarks/bench_models.py`` on a candidate that passes (1) and (2)."""
    ref = json.loads((shipped / "run.json").read_text())["metrics"]["validation"]
    ref_pooled, ref_mean = ref["auc"], _mean_by_source(ref)
    out, passing = {}, []
    for run in candidates:
        info = json.loads((run / "run.json").read_text())
        v, cross = info["metrics"]["validation"], info["metrics"]["cross_source_validation"]
        got, base = cross["mean"]["auc"], cross["mean"]["auc_linear_probe"]
        fails = []
        if got < base + gain - 1e-12:
            fails.append(
                f"cross-source validation AUC {got:.3f}, needed ≥ {base + gain:.3f} "
                f"({base:.3f} + {gain:g})"
            )
        for what, have, want in (
            ("pooled", v["auc"], ref_pooled),
            ("mean over sources", _mean_by_source(v), ref_mean),
        ):
            if have < want - drop - 1e-12:
                fails.append(f"validation AUC ({what}) {have:.3f}, needed ≥ {want - drop:.3f}")
        if fails:
            verdict = "does not meet the rule: " + "; ".join(fails) + "; not shipped"
        else:
            verdict = (
                f"meets the rule's validation parts (cross-source validation AUC {got:.3f} ≥ "
                f"{base + gain:.3f}; validation AUC {v['auc']:.3f} pooled, "
                f"{_mean_by_source(v):.3f} mean over sources)"
            )
            passing.append((got, run.name))
        out[run.name] = verdict
    if passing:
        best = max(passing)[1]
        out[best] += "; the highest cross-source validation AUC among those that meet it"
    for run in candidates:
        info = json.loads((run / "run.json").read_text())
        info["comparison"]["verdict"] = out[run.name]
        (run / "run.json").write_text(json.dumps(info, indent=1, default=_json))
    return out


def _mean_by_source(v: dict[str, Any]) -> float:
    aucs = [s["auc"] for s in v.get("by_source", {}).values() if s.get("auc") is not None]
    return float(np.mean(aucs)) if aucs else float(v["auc"])


def main(argv: list[str] | None = None) -> int:
    """``python -m training.ensemble judge --shipped runs/tb runs/tb_cmp_...``"""
    p = argparse.ArgumentParser(description=judge.__doc__)
    p.add_argument("command", choices=["judge"])
    p.add_argument("--shipped", type=Path, required=True, help="the shipped run folder")
    p.add_argument("--gain", type=float, default=0.02)
    p.add_argument("--drop", type=float, default=0.01)
    p.add_argument("runs", type=Path, nargs="+", help="candidate run folders")
    args = p.parse_args(argv)
    for name, verdict in judge(args.shipped, args.runs, args.gain, args.drop).items():
        print(f"{name}: {verdict}")
    return 0


__all__ = [
    "Branch",
    "add_ensemble_args",
    "build_model",
    "combine",
    "judge",
    "parse_branch",
    "run_ensemble",
    "view_layers",
]

if __name__ == "__main__":
    raise SystemExit(main())

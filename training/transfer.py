"""The frozen-backbone recipe of the finding models (TB, pneumonia) and their validation designs.

One command = one run folder, reproducible from its seed and ``split.csv``::

    python -m training.train_tb --data $DATA/tb/nlm_299 --nih $DATA/pneumonia/nih_adult_1000 \
        --backbone lite0@320 --views 6 --out runs/tb

Recipe: an ImageNet backbone (EfficientNet-Lite port or MobileNet 0.25) is frozen; every image
of the training split is seen as ``--views`` versions (the engine's input, plus simulated
other-site scans: crop, field of view, rotation, low resolution, exposure, contrast, noise;
:mod:`training.augment`); a logistic-regression head (:mod:`training.heads`) is fitted on the
pooled features, its L2 strength chosen on the validation split; a temperature is fitted on
validation; operating points are chosen on validation. The model is ``backbone → GAP →
Dense(2) → softmax``, so the class activation map is exact.

Validation designs (every figure goes into ``run.json`` and from there into the manifest and
the card): the held-out test split per source and per subgroup, with bootstrap CIs;
leave-one-source-out (fit on one source, tune on its own validation part, test on every image
of the other source); flag rates on external sets that the model never saw (e.g. NIH
"no finding" adults for TB) with Wilson CIs. The test split and the external sets are never
used to choose anything.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from training import data as D
from training import evaluate as ev
from training.augment import FieldOfView, ScanAugment
from training.evaluate import MIN_SENSITIVITY, OPERATING_RULE
from training.features import Backbone, extract, parse_backbone, select
from training.heads import LinearHead, balanced_weights, fit_logistic
from training.runs import machine, save_scores

if TYPE_CHECKING:
    from desktop.engine.preprocess import PreprocessSpec

log = logging.getLogger(__name__)

L2_GRID = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
SELECTION = (
    "validation split only (AUC); test, leave-one-source-out and external figures are "
    "reported, never used to fit or choose"
)


@dataclass
class Task:
    """What differs between the TB and the pneumonia model (data, designs, wording)."""

    model_id: str
    name: str
    labels: list[str]
    records: list[D.Record]  # with .split assigned
    citation: list[str]
    split_method: str
    intended_use: str
    not_for: list[str]
    scope: dict[str, Any]
    data_path: str
    # external sets: name → (records, what the set is); never used to choose anything
    external: dict[str, tuple[list[D.Record], str]] = field(default_factory=dict)
    loso: bool = False
    # subgroup name → function(record) → group value or None (e.g. age band, view)
    subgroups: dict[str, Callable[[D.Record], str | None]] = field(default_factory=dict)
    # healthy adults for the flag-rate figure: which test-split records, which external sets
    healthy_test: Callable[[D.Record], bool] | None = None
    healthy_external: tuple[str, ...] = ()
    # the targets, measured: metrics → [{"target", "measured", "met", "gap"}]
    targets: Callable[[dict[str, Any]], list[dict[str, Any]]] | None = None
    # limitations that follow from the data and the figures: metrics → sentences
    limitations: Callable[[dict[str, Any]], list[str]] | None = None
    # the patient group ("child"/"adult", the app's groups) of a record: when set, every
    # operating point is also chosen per group, by the same rule on that group's validation
    # images (``by_group`` in the manifest), and the healthy-adult figure uses the adult one
    point_group: Callable[[D.Record], str | None] | None = None
    # a validation specificity floor for the screening point that wins over the sensitivity
    # floor (None: none; see evaluate.operating_points)
    min_specificity: float | None = None


def add_transfer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backbone",
        default="lite0@320",
        help="NAME[+NAME]@SIDE: lite0/1/2, mobilenet025 (+: joined)",
    )
    p.add_argument("--views", type=int, default=6, help="versions of each training image")
    p.add_argument(
        "--fov-views",
        type=int,
        default=0,
        help="field-of-view versions of each training image on top of --views (content padded "
        "to 0.75-1.0 of each side, or cropped tighter; training.augment.FieldOfView)",
    )
    p.add_argument("--contrast", default=None, help="engine contrast normalisation (manifest key)")
    p.add_argument(
        "--pool",
        choices=["mean", "sqrt"],
        default="sqrt",
        help="average the feature maps (mean) or their square roots (sqrt)",
    )
    p.add_argument(
        "--l2-by",
        choices=["sources", "groups"],
        default="sources",
        help="the head's L2 strength maximises the mean validation AUC over sources, or over "
        "patient groups (whose validation images include sources never trained on)",
    )
    p.add_argument("--no-model", action="store_true", help="comparison run: figures only")
    p.add_argument("--version", default="2.0.0")
    p.add_argument(
        "--selection",
        default=SELECTION,
        help="how this configuration was chosen among the comparison runs (for the card)",
    )


def run_transfer(args: argparse.Namespace, task: Task) -> dict[str, Any]:
    """Features → head → calibration → operating points → every design → run folder."""
    started = time.time()
    run: Path = args.out
    run.mkdir(parents=True, exist_ok=True)
    bb = parse_backbone(args.backbone)
    spec = bb.spec(**({"contrast": args.contrast} if args.contrast else {}))
    cache = args.cache or D.default_cache_dir()
    aug = ScanAugment()
    recs = task.records
    _write_split(recs, run / "split.csv", task.labels)

    def feats(rows: Sequence[D.Record], views: int = 1) -> np.ndarray:
        x = extract([r.path for r in rows], bb, spec, views, seed=args.seed, aug=aug, cache=cache)
        return select(x, args.pool)

    train = D.by_split(recs, "train")
    val, test = D.by_split(recs, "val"), D.by_split(recs, "test")
    x_train = feats(train, args.views)  # (N, V, D)
    fov_views = getattr(args, "fov_views", 0)
    if fov_views:  # field-of-view views beside the others, without view 0 twice
        fov = extract(
            [r.path for r in train],
            bb,
            spec,
            1 + fov_views,
            seed=args.seed,
            aug=FieldOfView(),
            cache=cache,
            first_view=1,
        )
        x_train = np.concatenate([x_train, select(fov, args.pool)], axis=1)
    x_val, x_test = feats(val)[:, 0], feats(test)[:, 0]
    y_train, y_val, y_test = (np.array([r.label for r in rows]) for rows in (train, val, test))
    s_train = np.array([r.source for r in train])

    by_group = getattr(args, "l2_by", "sources") == "groups"
    if by_group and task.point_group is None:
        raise SystemExit("--l2-by groups needs a task with patient groups")
    head, l2, l2_table = _fit_head(
        x_train,
        y_train,
        s_train,
        x_val,
        y_val,
        val,
        val_groups=np.array([task.point_group(r) or "" for r in val]) if by_group else None,
    )
    judged = evaluate_head(
        task,
        (val, test),
        (y_val, y_test),
        (head.logit(x_val), head.logit(x_test)),
        lambda rows: head.logit(feats(rows)[:, 0]),
        args.seed,
    )
    metrics = judged.metrics
    loso = _loso(x_train, y_train, train, val, test, x_val, x_test, args.seed) if task.loso else {}
    if loso:
        metrics["leave_one_source_out"] = loso["figures"]

    recipe = (
        f"{bb.describe()}, frozen (ImageNet batch-norm statistics); every training image seen "
        f"as {args.views} versions (the engine input + {args.views - 1} simulated other-site "
        "scans: tighter/wider crop, rotation ±8°, low-resolution export, black/white point, "
        "gamma 0.6-1.6, brightness, noise, blur)"
        + (
            f" + {fov_views} field-of-view versions (content padded to a random 0.75-1.0 "
            "of the frame's width and of its height, or cropped tighter to 0.85-1.0; grey "
            "levels untouched)"
            if fov_views
            else ""
        )
        + "; "
        + ("GAP of the square-rooted feature maps" if args.pool == "sqrt" else "GAP features")
        + " → L2 logistic regression "
        f"(exact Newton fit, L2 {l2:g} chosen on validation AUC from {list(L2_GRID)}, "
        + ("mean over patient groups" if by_group else "mean over sources")
        + "), each "
        "(class, source) cell weighted equally; temperature and operating points on validation"
        + (f"; contrast normalisation '{args.contrast}'" if args.contrast else "")
    )
    info = finding_info(
        task,
        args,
        spec,
        judged.temperature,
        judged.points,
        metrics,
        rule=operating_rule(task),
        comparison={
            "backbone": bb.key,
            "recipe_id": "frozen_lr",
            "views": args.views,
            **({"fov_views": fov_views} if fov_views else {}),
            "contrast": args.contrast or "none",
            "pool": args.pool,
            "l2": l2,
            "l2_validation_auc": l2_table,
            "l2_by": "groups" if by_group else "sources",
            "selection": args.selection,
        },
        training=training_record(
            task,
            args,
            recs,
            recipe=recipe,
            recipe_id="frozen_lr",
            pretrained=_pretrained(bb),
            augmentation=(
                {**aug.to_json(), "field_of_view": FieldOfView().to_json()}
                if fov_views
                else aug.to_json()
            ),
        ),
    )
    save_judgement(run, task, (val, test), (y_val, y_test), judged, head, x_test, loso)
    if not args.no_model:
        _save_model(run, bb, head, spec, test, judged.t_probs[:, 1], args.pool)
    write_run_record(run, info, started)
    return info


# --------------------------------------------------------------------------- pieces


def _two(z: np.ndarray) -> np.ndarray:
    """Binary logit → the two softmax logits the exported Dense(2) layer produces."""
    return np.stack([-z / 2, z / 2], axis=1)


def _src(rows: Sequence[D.Record]) -> list[str]:
    return [r.source for r in rows]


def _fit_head(
    x_train: np.ndarray,
    y_train: np.ndarray,
    s_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    val: Sequence[D.Record],
    *,
    val_groups: np.ndarray | None = None,
) -> tuple[LinearHead, float, dict[str, float]]:
    """Fit one head per L2 strength; keep the best by validation AUC (mean over sources, or
    over ``val_groups``: e.g. the patient groups whose operating points the model must hold,
    so that a group's validation images from a site the model never trains on count)."""
    n, v, d = x_train.shape
    xt = x_train.reshape(n * v, d)
    yt, st = np.repeat(y_train, v), np.repeat(s_train, v)
    w = balanced_weights(yt, st)
    sv = np.array(_src(val)) if val_groups is None else np.asarray(val_groups)
    table: dict[str, float] = {}
    best: tuple[float, float, LinearHead] | None = None
    for l2 in L2_GRID:
        head = fit_logistic(xt, yt, l2, w)
        z = head.logit(x_val)
        aucs = [
            ev.roc_auc(y_val[sv == s], z[sv == s])
            for s in sorted(set(sv.tolist()))
            if len(set(y_val[sv == s].tolist())) == 2
        ]
        score = float(np.mean(aucs)) if aucs else ev.roc_auc(y_val, z)
        table[f"{l2:g}"] = score
        if best is None or score > best[0] + 1e-9:
            best = (score, l2, head)
    assert best is not None
    return best[2], best[1], table


def _loso(
    x_train: np.ndarray,
    y_train: np.ndarray,
    train: Sequence[D.Record],
    val: Sequence[D.Record],
    test: Sequence[D.Record],
    x_val: np.ndarray,
    x_test: np.ndarray,
    seed: int,
) -> dict[str, Any]:
    """Leave one source out: fit on one source's train part (L2 from its validation part),
    test on *every* image of the other source (train, val and test parts alike)."""
    x0 = np.concatenate([x_train[:, 0], x_val, x_test])
    y_all, folds = loso_folds(train, val, test)
    figures, curves = {}, {}
    for f in folds:
        head, l2, _ = _fit_head(
            x_train[f.train],
            y_train[f.train],
            np.array([f.source] * int(f.train.sum())),
            x0[f.val],
            y_all[f.val],
            f.val_rows,
        )
        figures[f.key], curves[f.key] = loso_fold_figures(
            f, y_all, head.logit(x0[f.val]), head.logit(x0[f.other]), seed, {"l2": l2}
        )
    return {"figures": figures, "curves": curves}


@dataclass(frozen=True)
class LosoFold:
    """One leave-one-source-out fold over the rows ``[*train, *val, *test]``: fit on one
    source's training part (choices from its own validation part), test on every image of
    the other sources. Masks over the training rows or over all rows, as named."""

    source: str
    key: str
    train: np.ndarray  # over the training rows: this source's
    val: np.ndarray  # over all rows: this source's validation part
    other: np.ndarray  # over all rows: every image of the other sources
    other_val: np.ndarray  # over all rows: the other sources' validation part
    val_rows: list[D.Record]


def loso_folds(
    train: Sequence[D.Record], val: Sequence[D.Record], test: Sequence[D.Record]
) -> tuple[np.ndarray, list[LosoFold]]:
    """The labels of all rows and one fold per source, in source order — the one set-up of
    the frozen, ensemble and fine-tuned recipes' leave-one-source-out designs."""
    every = [*train, *val, *test]
    y_all = np.array([r.label for r in every])
    s_all = np.array([r.source for r in every])
    part = np.array(["train"] * len(train) + ["val"] * len(val) + ["test"] * len(test))
    folds = []
    for src in sorted(set(s_all.tolist())):
        va = (s_all == src) & (part == "val")
        other = s_all != src
        folds.append(
            LosoFold(
                source=src,
                key=f"train {src} → test {'+'.join(sorted(set(s_all[other].tolist())))}",
                train=s_all[: len(train)] == src,
                val=va,
                other=other,
                other_val=other & (part == "val"),
                val_rows=[r for r, m in zip(every, va, strict=True) if m],
            )
        )
    return y_all, folds


def loso_fold_figures(
    fold: LosoFold,
    y_all: np.ndarray,
    z_val: np.ndarray,
    z_other: np.ndarray,
    seed: int,
    extra: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray]]:
    """A fold's test figures from binary logits: temperature and operating points from the
    source's own validation part (``z_val``), applied to the other sources (``z_other``).
    Returns the figures (``extra`` recorded first) and the (labels, scores) curve."""
    y_val, y_other = y_all[fold.val], y_all[fold.other]
    t = ev.fit_temperature(_two(z_val), y_val)
    p_val = ev.softmax(_two(z_val), t)
    p_other = ev.softmax(_two(z_other), t)
    pts = ev.operating_points(y_val, p_val[:, 1])
    res = ev.evaluate_binary(y_other, p_other, pts, seed=seed)
    res.update(extra or {})
    res["n_train_images"] = int(fold.train.sum())
    res["median_score_positive"] = float(np.median(p_other[y_other == 1, 1]))
    return res, (y_other, p_other[:, 1])


def rate(mask: np.ndarray, z: float = 1.959964) -> dict[str, Any]:
    """A proportion with its Wilson score 95% interval (sound at 0% or 100%)."""
    m = np.asarray(mask, dtype=bool)
    k, n = int(m.sum()), int(m.size)
    if n == 0:
        return {"n": 0, "k": 0, "rate": None, "ci95": [None, None]}
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return {"n": n, "k": k, "rate": p, "ci95": [max(0.0, centre - half), min(1.0, centre + half)]}


def _healthy(
    task: Task,
    test: Sequence[D.Record],
    t_score: np.ndarray,
    ext_scores: dict[str, np.ndarray],
    points: dict[str, dict[str, float]],
) -> dict[str, Any]:
    """Share of healthy adults flagged at each operating point: the test split's healthy
    adults, each external healthy set, and all of them together."""
    assert task.healthy_test is not None
    m = np.array([task.healthy_test(r) for r in test])
    parts = {"test split": t_score[m], **{k: ext_scores[k] for k in task.healthy_external}}
    out: dict[str, Any] = {}
    for point, v in points.items():
        thr = v.get("by_group", {}).get("adult", v)["threshold"]
        out[point] = {k: rate(s >= thr) for k, s in parts.items()}
        out[point]["all"] = rate(np.concatenate(list(parts.values())) >= thr)
    return out


def _add_group_points(
    points: dict[str, Any],
    val: Sequence[D.Record],
    y_val: np.ndarray,
    v_score: np.ndarray,
    task: Task,
) -> None:
    """Each point's ``by_group``: the same rule (:func:`operating_rule`) applied to each
    patient group's validation images alone; the pooled point stays the default for a scan
    whose group is unknown. Why: one pooled threshold is set by the majority group (Kermany
    children) and lands wherever it lands for the other (adults)."""
    assert task.point_group is not None
    groups = np.array([task.point_group(r) or "" for r in val])
    for g in sorted(set(groups.tolist()) - {""}):
        m = groups == g
        if len(set(y_val[m].tolist())) < 2:
            continue
        own = ev.operating_points(y_val[m], v_score[m], MIN_SENSITIVITY, task.min_specificity)
        for name, v in own.items():
            points[name].setdefault("by_group", {})[g] = {
                **v,
                "n": int(m.sum()),
                "n_positive": int(y_val[m].sum()),
            }


def finding_info(
    task: Task,
    args: argparse.Namespace,
    spec: PreprocessSpec,
    temperature: float,
    points: dict[str, Any],
    metrics: dict[str, Any],
    *,
    rule: str,
    comparison: dict[str, Any],
    training: dict[str, Any],
) -> dict[str, Any]:
    """The run record's manifest fields, the same for every finding-model recipe (frozen
    features + head here, fine-tuning in :mod:`training.finetune`): only the rule's words,
    the comparison row and the training block differ between recipes."""
    return {
        "id": task.model_id,
        "name": task.name,
        "version": args.version,
        "role": "finding",
        "task": "binary",
        "labels": task.labels,
        "positive_label": task.labels[1],
        "preprocessing": spec.to_manifest(),
        "temperature": temperature,
        "operating_points": points,
        "metrics": metrics,
        "intended_use": task.intended_use,
        "not_for": task.not_for,
        "scope": task.scope,
        "operating_rule": rule,
        "targets": task.targets(metrics) if task.targets else [],
        "limitations": task.limitations(metrics) if task.limitations else [],
        "comparison": comparison,
        "training": training,
    }


def training_record(
    task: Task,
    args: argparse.Namespace,
    recs: Sequence[Any],
    *,
    recipe: str,
    recipe_id: str,
    pretrained: Any,
    augmentation: dict[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    """The ``training`` block of a run record: data, recipe, split (file, method, seed,
    counts), augmentation, ``extra`` recipe facts, and how to reproduce the run."""
    return {
        "data": task.citation,
        "data_path": task.data_path,
        "recipe": recipe,
        "recipe_id": recipe_id,
        "pretrained": pretrained,
        "split": {
            "file": "split.csv",
            "method": task.split_method,
            "seed": args.seed,
            "counts": D.split_summary(recs, task.labels),
        },
        "augmentation": augmentation,
        **extra,
        "command": f"python -m training.{Path(sys.argv[0]).stem} {shlex.join(sys.argv[1:])}",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "seed": args.seed,
        "framework": _framework(),
        "machine": machine(),
    }


def operating_rule(task: Task) -> str:
    """The rule that chose the operating points, in words, from the task's settings."""
    rule = OPERATING_RULE
    if task.min_specificity is not None:
        rule += (
            f" A validation specificity floor of {task.min_specificity:.2f} wins over the "
            "sensitivity floor: where no threshold holds both, `screening` is the most "
            "sensitive threshold whose validation specificity reaches the floor."
        )
    if task.point_group is not None:
        rule += (
            " The rule is applied to each patient group's validation images on their own "
            "(`by_group`: the threshold for a scan of that group); the pooled threshold is "
            "used when a scan's group is not known."
        )
    return rule


def _by_group(
    group_of: Callable[[D.Record], str | None],
    rows: Sequence[D.Record],
    y: np.ndarray,
    probs: np.ndarray,
    points: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    """Figures per patient group, each at its own group's operating points."""
    groups = np.array([group_of(r) or "" for r in rows])
    out: dict[str, Any] = {}
    for g in sorted(set(groups.tolist()) - {""}):
        m = groups == g
        own = {k: v.get("by_group", {}).get(g, v) for k, v in points.items()}
        src = [r.source for r, keep in zip(rows, m, strict=True) if keep]
        out[g] = ev.evaluate_binary(y[m], probs[m], own, groups=src, seed=seed)
    return out


def _subgroups(
    task: Task,
    rows: Sequence[D.Record],
    y: np.ndarray,
    probs: np.ndarray,
    points: dict[str, dict[str, float]],
    seed: int,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, fn in task.subgroups.items():
        values = np.array([fn(r) or "" for r in rows])
        for value in sorted(set(values.tolist()) - {""}):
            m = values == value
            own = points
            if task.point_group is not None:  # one patient group: that group's points
                gs = {task.point_group(r) for r, keep in zip(rows, m, strict=True) if keep}
                if len(gs) == 1 and None not in gs:
                    g = gs.pop()
                    own = {k: v.get("by_group", {}).get(g, v) for k, v in points.items()}
            res = ev.evaluate_binary(y[m], probs[m], own, seed=seed)
            out[f"{name}={value}"] = res
    return out


def _pretrained(bb: Backbone) -> str:
    if "+" in bb.name:
        return "; ".join(_pretrained(part) for part in bb.parts)
    if bb.name == "mobilenet025":
        return (
            "ImageNet MobileNet v1 alpha 0.25 (Keras Applications, mobilenet_2_5_224_tf_no_top.h5)"
        )
    return (
        f"ImageNet EfficientNet-{bb.name.capitalize()} (Google's official checkpoint via "
        f"efficientnet_{bb.name}_imagenet_f16.npz, ported in training/efficientnet_lite.py)"
    )


def _framework() -> str:
    import onnxruntime

    try:
        import keras
        import tensorflow as tf

        return (
            f"tensorflow {tf.__version__}, keras {keras.__version__}, "
            f"onnxruntime {onnxruntime.__version__} (features)"
        )
    except ImportError:  # pragma: no cover
        return f"onnxruntime {onnxruntime.__version__}"


def write_run_record(run: Path, info: dict[str, Any], started: float) -> None:
    """The last step of every frozen-feature and fine-tune run: the wall time since
    ``started``, ``run.json`` (the record export and the model card read) and its summary in the
    log. One writer, so the record's keys stay in the same order whichever recipe made it."""
    info["training"]["duration_s"] = round(time.time() - started, 1)
    (run / "run.json").write_text(json.dumps(info, indent=1, default=_json))
    _log_summary(info)


def split_metrics(
    task: Task,
    val: Sequence[D.Record],
    test: Sequence[D.Record],
    y_val: np.ndarray,
    y_test: np.ndarray,
    v_probs: np.ndarray,
    t_probs: np.ndarray,
    test_logit: np.ndarray,
    points: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    """Validation and test figures per source, the uncalibrated test ECE and the subgroups:
    one definition for the frozen, ensemble and fine-tuned recipes (``test_logit`` is the
    head's logit before temperature scaling)."""
    metrics: dict[str, Any] = {
        "validation": ev.evaluate_binary(y_val, v_probs, points, groups=_src(val), seed=seed),
        "test": ev.evaluate_binary(y_test, t_probs, points, groups=_src(test), seed=seed),
    }
    metrics["test"]["ece_uncalibrated"] = ev.expected_calibration_error(
        ev.softmax(_two(test_logit)), y_test
    )
    metrics["test"]["subgroups"] = _subgroups(task, test, y_test, t_probs, points, seed)
    metrics["validation"]["subgroups"] = _subgroups(task, val, y_val, v_probs, points, seed)
    if task.point_group is not None:
        for part, rows, y, pr in (
            ("validation", val, y_val, v_probs),
            ("test", test, y_test, t_probs),
        ):
            metrics[part]["by_group"] = _by_group(task.point_group, rows, y, pr, points, seed)
    return metrics


@dataclass(frozen=True)
class HeadEvaluation:
    """A trained head judged the one way every recipe is: its temperature fitted on the
    validation split, the operating points from the validation scores, the split figures and
    the external sets' figures (``metrics`` holds them all, as the run record stores them)."""

    temperature: float
    v_probs: np.ndarray  # validation, calibrated, (n, 2)
    t_probs: np.ndarray  # test, calibrated, (n, 2)
    points: dict[str, Any]
    metrics: dict[str, Any]
    ext_scores: dict[str, np.ndarray]  # each external set's calibrated scores


def evaluate_head(
    task: Task,
    splits: tuple[Sequence[D.Record], Sequence[D.Record]],
    labels: tuple[np.ndarray, np.ndarray],
    logits: tuple[np.ndarray, np.ndarray],
    logits_of: Callable[[Sequence[D.Record]], np.ndarray],
    seed: int,
) -> HeadEvaluation:
    """Calibrate, choose the points and measure a head from its validation and test logits
    (``logits_of`` computes an external set's): one definition for the frozen, ensemble and
    fine-tuned recipes, which differ only in how they produce logits, so no recipe can be
    judged by a rule of its own."""
    (val, test), (y_val, y_test), (z_val, z_test) = splits, labels, logits
    temperature = ev.fit_temperature(_two(z_val), y_val)
    v_probs = ev.softmax(_two(z_val), temperature)
    t_probs = ev.softmax(_two(z_test), temperature)
    points = screening_points(task, val, y_val, v_probs[:, 1])
    metrics = split_metrics(task, val, test, y_val, y_test, v_probs, t_probs, z_test, points, seed)
    external, ext_scores, healthy = external_figures(
        task, test, t_probs[:, 1], points, temperature, logits_of
    )
    metrics["external"] = external
    if healthy is not None:
        metrics["healthy_adults"] = healthy
    return HeadEvaluation(temperature, v_probs, t_probs, points, metrics, ext_scores)


def screening_points(
    task: Task, val: Sequence[D.Record], y_val: np.ndarray, v_score: np.ndarray
) -> dict[str, Any]:
    """The run's operating points from its validation scores, by the task's rule
    (:func:`operating_rule`): the sensitivity floor, the task's specificity floor if it has
    one, and each patient group's own points if it has groups — one definition for the
    frozen, ensemble and fine-tuned recipes, so a candidate is judged at the points the card
    says."""
    points: dict[str, Any] = ev.operating_points(
        y_val, v_score, MIN_SENSITIVITY, task.min_specificity
    )
    if task.point_group is not None:
        _add_group_points(points, val, y_val, v_score, task)
    return points


def external_figures(
    task: Task,
    test: Sequence[D.Record],
    t_score: np.ndarray,
    points: dict[str, Any],
    temperature: float,
    logits_of: Callable[[Sequence[D.Record]], np.ndarray],
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any] | None]:
    """Each external set's flag rates and median score, and the healthy-adult figures.

    One definition for every recipe (frozen, ensemble, fine-tuned), which differ only in how
    a set's logits are computed (``logits_of``). Returns the ``external`` block, the scores per
    set (saved in ``scores.npz``) and the ``healthy_adults`` block (None without healthy sets).
    """
    external: dict[str, Any] = {}
    ext_scores: dict[str, np.ndarray] = {}
    for name, (rows, what) in task.external.items():
        p = ev.softmax(_two(logits_of(rows)), temperature)[:, 1]
        ext_scores[name] = p
        external[name] = {
            "description": what,
            "n": len(rows),
            "flag_rate": {k: rate(p >= v["threshold"]) for k, v in points.items()},
            "median_score": float(np.median(p)),
        }
    healthy = (
        _healthy(task, test, t_score, ext_scores, points) if task.healthy_test is not None else None
    )
    return external, ext_scores, healthy


def cross_source_mean(cross: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The mean over the held-out sources of ``auc`` and ``auc_linear_probe`` — the one
    cross-source figure candidates are ranked by and the card reports."""
    return {
        "auc": float(np.mean([v["auc"] for v in cross.values()])),
        "auc_linear_probe": float(np.mean([v["auc_linear_probe"] for v in cross.values()])),
    }


def _json(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(type(v))


def _write_split(records: Sequence[D.Record], path: Path, labels: Sequence[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "label", "label_name", "group", "source", "split", "age", "view"])
        for r in records:
            w.writerow(
                [
                    str(Path(r.path.parent.name) / r.path.name),
                    r.label,
                    labels[r.label],
                    r.group,
                    r.source,
                    r.split,
                    META.get(r.path, {}).get("age", ""),
                    META.get(r.path, {}).get("view", ""),
                ]
            )


# metadata of records that have it (NIH age/view), by path; filled by the task builders
META: dict[Path, dict[str, Any]] = {}


def _save_model(
    run: Path,
    bb: Backbone,
    head: LinearHead,
    spec: Any,
    test: Sequence[D.Record],
    p: np.ndarray,
    pool: str,
) -> None:
    """The Keras model that export converts: backbone → features → GAP → Dense → softmax."""
    import keras
    from keras import layers

    from desktop.engine.preprocess import prepare_file
    from training.features import keras_backbone
    from training.models import FEATURES, GAP, LOGITS, PROBS, Mirror, Sqrt

    backbone = keras_backbone(bb)
    inputs = keras.Input(shape=spec.input_shape, name="image")
    maps = backbone(inputs, training=False)
    if bb.mirror:  # test-time augmentation: mean of the maps of the scan and its mirror image

        def pooled(t: Any) -> Any:
            return Sqrt()(t) if pool == "sqrt" else t

        mirrored = backbone(Mirror(name="mirror_input")(inputs), training=False)
        both = [pooled(maps), Mirror(name="mirror_back")(pooled(mirrored))]
        fmap = layers.Average(name=FEATURES)(both)
    elif pool == "sqrt":
        fmap = Sqrt(name=FEATURES)(maps)
    else:
        fmap = layers.Identity(name=FEATURES)(maps)
    x = layers.GlobalAveragePooling2D(name=GAP)(fmap)
    logits = layers.Dense(2, name=LOGITS)(x)
    probs = layers.Activation("softmax", name=PROBS, dtype="float32")(logits)
    model = keras.Model(inputs, probs, name=f"{bb.name.replace('+', '_')}_{bb.side}_linear")
    kernel, bias = head.dense_weights()
    model.get_layer(LOGITS).set_weights([kernel, bias])
    model.save(run / "model.keras")
    y = np.array([r.label for r in test])
    pick = np.r_[np.where(y == 0)[0][:8], np.where(y == 1)[0][:8]]
    x = np.stack([prepare_file(test[i].path, spec) for i in pick])
    np.save(run / "parity_inputs.npy", x)
    np.save(run / "parity_scores.npy", p[pick])  # what the run's figures used, for export


def save_judgement(
    run: Path,
    task: Task,
    splits: tuple[Sequence[D.Record], Sequence[D.Record]],
    labels: tuple[np.ndarray, np.ndarray],
    judged: HeadEvaluation,
    head: LinearHead,
    x_test: np.ndarray,
    loso: dict[str, Any],
) -> None:
    """A linear head's judgement on disk: its scores (``scores.npz``, external sets too) and
    its figures, the same for the frozen and the ensemble recipes."""
    (val, test), (y_val, y_test) = splits, labels
    save_scores(run, judged.v_probs[:, 1], judged.t_probs[:, 1], y_val, y_test, judged.ext_scores)
    _plots(
        run,
        task,
        val,
        test,
        y_val,
        y_test,
        judged.v_probs,
        judged.t_probs,
        head,
        x_test,
        judged.points,
        loso,
    )


def _plots(
    run: Path,
    task: Task,
    val: Sequence[D.Record],
    test: Sequence[D.Record],
    y_val: np.ndarray,
    y_test: np.ndarray,
    v_probs: np.ndarray,
    t_probs: np.ndarray,
    head: LinearHead,
    x_test: np.ndarray,
    points: dict[str, dict[str, float]],
    loso: dict[str, Any],
) -> None:
    try:
        src = np.array(_src(test))
        curves = {"validation": (y_val, v_probs[:, 1]), "test (all)": (y_test, t_probs[:, 1])}
        for s in sorted(set(src.tolist())):
            if len(set(y_test[src == s].tolist())) == 2:
                curves[f"test {s}"] = (y_test[src == s], t_probs[src == s, 1])
        marks = {f"{k} (val)": (1 - v["specificity"], v["sensitivity"]) for k, v in points.items()}
        ev.plot_roc(curves, run / "roc.png", f"{task.name}: ROC", marks)
        if loso:
            ev.plot_roc(loso["curves"], run / "loso_roc.png", f"{task.name}: leave one source out")
        ev.plot_reliability(
            y_test,
            ev.softmax(_two(head.logit(x_test))),
            t_probs,
            run / "reliability.png",
            f"{task.name}: test",
        )
    except ImportError:
        log.warning("matplotlib is not installed: no plots")


def _log_summary(info: dict[str, Any]) -> None:
    m = info["metrics"]
    lines = [
        f"{info['id']} {info['comparison']['backbone']} views={info['comparison']['views']} "
        f"pool={info['comparison']['pool']} "
        f"contrast={info['comparison']['contrast']} l2={info['comparison']['l2']:g}: "
        f"val AUC {m['validation']['auc']:.3f}, test AUC {m['test']['auc']:.3f}"
    ]
    for k, s in m["test"].get("by_source", {}).items():
        lines.append(f"  test {k}: AUC {s['auc']:.3f} n={s['n']}")
    sp = m["test"]["operating_points"]["screening"]
    lines.append(f"  test screening sens {sp['sensitivity']:.3f} spec {sp['specificity']:.3f}")
    for k, s in m.get("leave_one_source_out", {}).items():
        lines.append(
            f"  LOSO {k}: AUC {s['auc']:.3f} (median TB score {s['median_score_positive']:.2f})"
        )
    for k, s in m.get("external", {}).items():
        fr = s["flag_rate"]["screening"]
        lines.append(f"  external {k}: flagged {fr['rate']:.3f} of {fr['n']} at screening")
    for k, s in m.get("healthy_adults", {}).get("screening", {}).items():
        lines.append(f"  healthy adults {k}: flagged {s['rate']:.3f} of {s['n']} at screening")
    for k, s in m["test"].get("subgroups", {}).items():
        lines.append(f"  test {k}: AUC {s['auc']:.3f} n={s['n']}")
    for g in info.get("targets", []):
        lines.append(
            f"  target {g['target']}: {g['measured']} -> {'met' if g['met'] else g['gap']}"
        )
    log.info("\n".join(lines))
    print("\n".join(lines), flush=True)


def target(
    name: str, value: float | None, goal: float, at_least: bool, text: str
) -> dict[str, Any]:
    """One target row: met or missed, and by how much (for the manifest and the card)."""
    met = value is not None and (value >= goal if at_least else value <= goal)
    gap = (
        ""
        if met or value is None
        else f"{'short' if at_least else 'over'} by {abs(value - goal):.3f}"
    )
    return {"target": name, "measured": text, "value": value, "goal": goal, "met": met, "gap": gap}


def with_split(
    records: Sequence[D.Record], seed: int, fractions: tuple[float, float, float] | None = None
) -> list[D.Record]:
    """Patient-disjoint split stratified by (class, source): 70/15/15 unless told otherwise."""
    return D.split_records(records, fractions or (0.7, 0.15, 0.15), seed=seed)


__all__ = ["Task", "add_transfer_args", "rate", "run_transfer", "target", "with_split"]

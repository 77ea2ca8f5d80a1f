"""Fine-tuned finding models: the frozen recipe's linear head, then the backbone trained too.

    python -m training.train_tb --data $DATA/tb/nlm_299 --nih $DATA/pneumonia/nih_adult_1000 \
        --backbone mobilenet025@224 --views 6 --pool mean --finetune all --out runs/tb_ft

Why "linear probe, then fine-tune" (LP-FT): with a few hundred images, fine-tuning from a
random head first destroys the pretrained features the head cannot use yet, and the distorted
features transfer worse to other hospitals (Kumar et al., ICLR 2022). So the exact
:mod:`training.transfer` head (same cached features, same L2 choice on validation) is the
starting Dense layer, and the backbone is then trained with a small learning rate on scans
seen as simulated other-site versions (stronger than the frozen recipe's: tighter/wider
crops, 112-224 px low-resolution round trips, exposure/gamma, JPEG re-encoding). Batch-norm
statistics stay ImageNet's (the backbone runs in inference mode), class × source cells are
weighted equally, and the epoch kept is the best by validation AUC (mean over sources). The
frozen model itself (epoch 0) is not a candidate inside a run: it is what the fine-tuned run is
compared with, by the selection rule the run records.

Inputs are the engine's: validation, test and external arrays are ``prepare_file`` exactly
(float32); an augmented training view is the engine's ``preprocess`` of an augmented working
image, stored in float16 in the cache (training only). Every draw is seeded by
(seed, image, view), so one command and its ``split.csv`` rebuild the run.

Validation designs are those of :mod:`training.transfer` (test per source with bootstrap
CIs, leave-one-source-out with a model fine-tuned on one source only, NIH external flag
rates), plus the *cross-source validation AUC*: each leave-one-source-out model scored on the
other source's validation part only, which is validation data and so may be used to choose a
recipe (the frozen head's figure of the same design is recorded next to it).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from desktop.engine.preprocess import PreprocessSpec, load_working, preprocess
from training import data as D
from training import evaluate as ev
from training.augment import ScanAugment, augment_scan
from training.features import Backbone, extract, parse_backbone, select
from training.heads import LinearHead, balanced_weights
from training.runs import save_scores
from training.transfer import (
    Task,
    _fit_head,
    _pretrained,
    _two,
    _write_split,
    cross_source_mean,
    evaluate_head,
    finding_info,
    loso_fold_figures,
    loso_folds,
    operating_rule,
    training_record,
    write_run_record,
)

log = logging.getLogger(__name__)

#: Other-site simulation for fine-tuning: wider ranges than the frozen recipe's default.
FT_AUGMENT = ScanAugment(
    crop_tight=0.72,
    crop_wide=0.2,
    p_wide=0.35,
    rotation_deg=10.0,
    p_lowres=0.5,
    lowres_side=(112, 224),
    gamma=(0.5, 1.8),
    window_low=0.12,
    window_high=0.12,
    brightness=0.08,
    noise=0.02,
    p_blur=0.25,
    version=1,
)
P_JPEG, JPEG_QUALITY = 0.5, (30, 90)  # re-encoded as 8-bit JPEG: what exports often are


def add_finetune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--finetune",
        default=None,
        help="LP-FT: 'all' trains the whole backbone, N the last N MobileNet blocks (1-13); "
        "omitted: the frozen recipe",
    )
    p.add_argument("--ft-views", type=int, default=8, help="versions of each training image")
    p.add_argument("--ft-epochs", type=int, default=12)
    p.add_argument("--ft-lr", type=float, default=1e-4)
    p.add_argument("--ft-patience", type=int, default=3)
    p.add_argument("--ft-batch", type=int, default=32)
    p.add_argument(
        "--ft-erase-corners",
        type=float,
        default=0.0,
        help="probability of flattening a patch in each top corner (burnt-in markers)",
    )
    p.add_argument(
        "--ft-calibrated-head",
        action="store_true",
        help="start from the linear probe divided by its validation temperature",
    )


# --------------------------------------------------------------------------- inputs


def _jpeg(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if rng.random() >= P_JPEG:
        return img
    q = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
    buf = io.BytesIO()
    Image.fromarray(np.round(img * 255).astype(np.uint8), mode="L").save(buf, "JPEG", quality=q)
    buf.seek(0)
    return np.asarray(Image.open(buf), dtype=np.float32) / 255.0


def engine_grey(paths: Sequence[Path], spec: PreprocessSpec, cache: Path) -> np.ndarray:
    """(N, H, W) float32: channel 0 of ``prepare_file`` for each file (the app's input)."""
    one = dataclasses.replace(spec, channels=1)
    return D.build_array(paths, one, cache / "arrays")[..., 0]


def augmented_views(
    paths: Sequence[Path], spec: PreprocessSpec, views: int, seed: int, cache: Path
) -> np.ndarray:
    """(N, views - 1, H, W) float16: simulated other-site versions, view v of image i drawn
    from ``default_rng([seed, i, v])`` (cached; keyed by files, spec, ranges and seed)."""
    one = dataclasses.replace(spec, channels=1)
    key = hashlib.sha256(
        json.dumps(
            {
                "files": [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths],
                "spec": one.to_manifest(),
                "aug": FT_AUGMENT.to_json(),
                "jpeg": [P_JPEG, *JPEG_QUALITY],
                "views": views,
                "seed": seed,
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()[:24]
    path = cache / "ft_views" / f"{key}.npy"
    if path.exists():
        return np.load(path)
    out = np.empty((len(paths), views - 1, spec.height, spec.width), dtype=np.float16)
    started = time.time()
    for i, p in enumerate(paths):
        working = load_working(p).pixels
        for v in range(1, views):
            rng = np.random.default_rng([seed, i, v])
            img = _jpeg(augment_scan(working, rng, FT_AUGMENT), rng)
            out[i, v - 1] = preprocess(img, one)[..., 0]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, out)
    tmp.replace(path)
    log.info("%d images x %d views in %.0f s", len(paths), views - 1, time.time() - started)
    return out


def _aug_text() -> str:
    a = FT_AUGMENT
    return (
        f"crop keeping {a.crop_tight:g}-1 of each side or up to {a.crop_wide:g} wider, "
        f"rotation ±{a.rotation_deg:g}°, {a.lowres_side[0]}-{a.lowres_side[1]} px "
        f"low-resolution round trip (p {a.p_lowres:g}), black/white point, gamma "
        f"{a.gamma[0]:g}-{a.gamma[1]:g}, brightness, noise, blur, JPEG q{JPEG_QUALITY[0]}-"
        f"{JPEG_QUALITY[1]} (p {P_JPEG:g})"
    )


def _start_head(head: LinearHead, x_val: np.ndarray, y_val: np.ndarray, on: bool) -> LinearHead:
    """The head fine-tuning starts from: the linear probe, optionally divided by its validation
    temperature. Why: a probe fitted on few images (Montgomery alone: 97) can be nearly
    separating, with large logits, and a saturated softmax passes little gradient to the
    backbone for most images. The calibrated head ranks identically and starts from
    calibrated probabilities."""
    if not on:
        return head
    t = ev.fit_temperature(_two(head.logit(x_val)), y_val)
    return dataclasses.replace(head, w=head.w / t, b=head.b / t)


def _erase_corners(x: np.ndarray, rng: np.random.Generator, p: float) -> np.ndarray:
    """With probability ``p`` per image, flatten a random patch in each top corner (6-18% of
    the height, 12-25% of the width, near the edge) to its median grey. Why: Montgomery films
    carry burnt-in markers there ("PA/ERECT", "R") and the class activation maps of the
    Montgomery scans put more of their evidence there than Shenzhen's do; a network that cannot
    rely on that corner has to look at the lungs."""
    x = np.array(x, dtype=np.float32)
    n, h, w = x.shape
    for k in range(n):
        if rng.random() >= p:
            continue
        for right in (False, True):
            eh, ew = int(h * rng.uniform(0.06, 0.18)), int(w * rng.uniform(0.12, 0.25))
            y0, dx = int(rng.integers(0, h // 10 + 1)), int(rng.integers(0, w // 10 + 1))
            x0 = w - ew - dx if right else dx
            patch = x[k, y0 : y0 + eh, x0 : x0 + ew]
            patch[...] = float(np.median(patch))
    return x


def _rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(grey, dtype=np.float32)[..., None], 3, axis=-1)


# --------------------------------------------------------------------------- training


def _build(bb: Backbone, head: LinearHead, unfreeze: str):
    """MobileNet 0.25 → features → GAP → Dense(2) (initialised from the linear head) →
    softmax; the layers named as export expects."""
    import keras

    from training.efficientnet_lite import DEFAULT_WEIGHTS_DIR
    from training.features import MOBILENET_WEIGHTS
    from training.models import LOGITS, mobilenet_transfer

    if bb.name != "mobilenet025":
        raise ValueError(f"fine-tuning is implemented for mobilenet025, not {bb.name}")
    model, backbone = mobilenet_transfer(
        DEFAULT_WEIGHTS_DIR / MOBILENET_WEIGHTS, (bb.side, bb.side, 3), 2, dropout=0.0
    )
    backbone.trainable = True
    if unfreeze != "all":
        first = 14 - int(unfreeze)  # MobileNet v1 blocks are conv_dw_1 .. conv_dw_13
        for layer in backbone.layers:
            parts = layer.name.split("_")
            block = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else 0
            layer.trainable = parts[0] == "conv" and parts[1] in ("dw", "pw") and block >= first
    model.get_layer(LOGITS).set_weights(list(head.dense_weights()))
    logits = keras.Model(model.input, model.get_layer(LOGITS).output)
    return model, logits


def _auc_by_source(y: np.ndarray, z: np.ndarray, s: np.ndarray) -> float:
    aucs = [
        ev.roc_auc(y[s == k], z[s == k])
        for k in sorted(set(s.tolist()))
        if len(set(y[s == k].tolist())) == 2
    ]
    return float(np.mean(aucs)) if aucs else ev.roc_auc(y, z)


def _predict(logits_model: Any, grey: np.ndarray, batch: int = 64) -> np.ndarray:
    """Binary logit z (softmax([-z/2, z/2]) is the model's output)."""
    out = [
        logits_model(_rgb(grey[i : i + batch]), training=False) for i in range(0, len(grey), batch)
    ]
    two = np.concatenate([np.asarray(o) for o in out])
    return (two[:, 1] - two[:, 0]).astype(np.float64)


def finetune(
    bb: Backbone,
    head: LinearHead,
    clean: np.ndarray,
    views: np.ndarray,
    y: np.ndarray,
    s: np.ndarray,
    val: np.ndarray,
    y_val: np.ndarray,
    s_val: np.ndarray,
    args: argparse.Namespace,
    tag: str,
) -> tuple[Any, Any, dict[str, Any]]:
    """Train; keep the epoch (1..) with the best validation AUC (mean over sources). Epoch e
    shows each image as view e mod V (view 0 = the clean input)."""
    import keras

    from training.fit import configure_tf

    configure_tf(args.seed)
    model, logits = _build(bb, head, args.finetune)
    model.compile(
        optimizer=keras.optimizers.Adam(args.ft_lr),
        loss="sparse_categorical_crossentropy",
        weighted_metrics=[],
    )
    w = balanced_weights(y, s).astype(np.float32)
    rng = np.random.default_rng([args.seed, 7])
    n_views = views.shape[1] + 1
    history: dict[str, list[float]] = {"loss": [], "val_auc": []}
    # epoch 0 (the linear probe, i.e. the frozen recipe) is recorded but not a candidate: the
    # frozen recipe is compared with the fine-tuned one by the run's selection rule instead
    best: tuple[float, int, Any] = (-1.0, 0, None)
    history["val_auc"].append(_auc_by_source(y_val, _predict(logits, val), s_val))
    history["loss"].append(float("nan"))
    log.info("%s epoch 0 (linear probe): val AUC %.4f", tag, history["val_auc"][0])
    started, waited = time.time(), 0
    for epoch in range(1, args.ft_epochs + 1):
        v = epoch % n_views
        order = rng.permutation(len(y))
        losses = []
        for i in range(0, len(order), args.ft_batch):
            idx = np.sort(order[i : i + args.ft_batch])
            x = clean[idx] if v == 0 else views[idx, v - 1]
            if args.ft_erase_corners:
                x = _erase_corners(x, rng, args.ft_erase_corners)
            r = model.train_on_batch(_rgb(x), y[idx], sample_weight=w[idx])
            losses.append(float(np.ravel(r)[0]))
        auc = _auc_by_source(y_val, _predict(logits, val), s_val)
        history["loss"].append(float(np.mean(losses)))
        history["val_auc"].append(auc)
        log.info("%s epoch %d view %d: loss %.4f val AUC %.4f", tag, epoch, v, np.mean(losses), auc)
        if auc > best[0] + 1e-4:
            best, waited = (auc, epoch, model.get_weights()), 0
        else:
            waited += 1
            if waited >= args.ft_patience:
                break
    model.set_weights(best[2])
    info = {
        "best_epoch": best[1],
        "best_val_auc": best[0],
        "epochs_run": len(history["loss"]) - 1,
        "history": history,
        "duration_s": round(time.time() - started, 1),
    }
    return model, logits, info


# --------------------------------------------------------------------------- the run


def run_finetune(args: argparse.Namespace, task: Task) -> dict[str, Any]:
    """Linear probe (exactly the frozen recipe) → fine-tune → calibration → operating points →
    every design of :mod:`training.transfer` → run folder that export converts."""
    started = time.time()
    run: Path = args.out
    run.mkdir(parents=True, exist_ok=True)
    bb = parse_backbone(args.backbone)
    if args.contrast:
        raise ValueError("--finetune does not take --contrast")
    spec = bb.spec()
    cache = args.cache or D.default_cache_dir()
    recs = task.records
    _write_split(recs, run / "split.csv", task.labels)
    train, val, test = (D.by_split(recs, k) for k in ("train", "val", "test"))
    y_train, y_val, y_test = (np.array([r.label for r in rows]) for rows in (train, val, test))
    s_train, s_val, s_test = (np.array([r.source for r in rows]) for rows in (train, val, test))

    def feats(rows: Sequence[D.Record], views: int = 1) -> np.ndarray:
        x = extract([r.path for r in rows], bb, spec, views, seed=args.seed, cache=cache)
        return select(x, args.pool)

    f_train, f_val, f_test = feats(train, args.views), feats(val)[:, 0], feats(test)[:, 0]
    g_train = engine_grey([r.path for r in train], spec, cache)
    g_val, g_test = (engine_grey([r.path for r in rows], spec, cache) for rows in (val, test))
    a_train = augmented_views([r.path for r in train], spec, args.ft_views, args.seed, cache)

    # main model: the frozen recipe's head, then fine-tuned on every source
    lp, l2, l2_table = _fit_head(f_train, y_train, s_train, f_val, y_val, val)
    start = _start_head(lp, f_val, y_val, args.ft_calibrated_head)
    model, logits, ft = finetune(
        bb, start, g_train, a_train, y_train, s_train, g_val, y_val, s_val, args, "pooled"
    )
    z_val, z_test = _predict(logits, g_val), _predict(logits, g_test)
    judged = evaluate_head(
        task,
        (val, test),
        (y_val, y_test),
        (z_val, z_test),
        lambda rows: _predict(logits, engine_grey([r.path for r in rows], spec, cache)),
        args.seed,
    )
    metrics = judged.metrics

    loso, cross = _loso(
        args,
        bb,
        task,
        (train, val, test),
        (f_train, f_val, f_test),
        (g_train, g_val, g_test),
        a_train,
    )
    if task.loso:
        metrics["leave_one_source_out"] = loso["figures"]
    metrics["cross_source_validation"] = cross

    recipe = (
        f"{bb.describe()}: linear probe first (the frozen recipe: ImageNet batch-norm "
        f"statistics, {args.views} views, "
        + ("GAP of the square-rooted feature maps" if args.pool == "sqrt" else "GAP features")
        + f", L2 logistic regression with L2 {l2:g} chosen on validation AUC"
        + (", divided by its validation temperature" if args.ft_calibrated_head else "")
        + "), then "
        + (
            "the whole backbone"
            if args.finetune == "all"
            else f"the last {args.finetune} MobileNet blocks"
        )
        + f" and the head fine-tuned (Adam lr {args.ft_lr:g}, batch {args.ft_batch}, "
        f"batch-norm statistics kept) on {args.ft_views} versions of each training image "
        f"(the engine input + {args.ft_views - 1} simulated other-site scans: {_aug_text()}), "
        + (
            f"a patch in each top corner (burnt-in markers) flattened with p "
            f"{args.ft_erase_corners:g}, "
            if args.ft_erase_corners
            else ""
        )
        + "one version per epoch, each (class, source) cell weighted equally; the epoch kept "
        f"(of 1-{args.ft_epochs}, patience {args.ft_patience}) is the best by validation AUC "
        f"(mean over sources): epoch {ft['best_epoch']}; "
        "temperature and operating points on validation"
    )
    recipe_id = (
        f"lpft_{args.finetune}"
        + ("_t" if args.ft_calibrated_head else "")
        + ("_erase" if args.ft_erase_corners else "")
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
            "recipe_id": recipe_id,
            "views": args.ft_views,
            "contrast": "none",
            "pool": args.pool,
            "l2": l2,
            "l2_validation_auc": l2_table,
            "best_epoch": ft["best_epoch"],
            "selection": args.selection,
        },
        training=training_record(
            task,
            args,
            recs,
            recipe=recipe,
            recipe_id=recipe_id,
            pretrained=_pretrained(bb),
            augmentation={
                **FT_AUGMENT.to_json(),
                "p_jpeg": P_JPEG,
                "jpeg_quality": list(JPEG_QUALITY),
            },
            finetune={k: v for k, v in ft.items() if k != "history"},
        ),
    )
    (run / "history_finetune.json").write_text(json.dumps(ft["history"]))
    save_scores(run, judged.v_probs[:, 1], judged.t_probs[:, 1], y_val, y_test, judged.ext_scores)
    _plots(run, task, s_test, y_val, y_test, judged.v_probs, judged.t_probs, z_test, loso)
    if not args.no_model:
        model.save(run / "model.keras")
        pick = np.r_[np.where(y_test == 0)[0][:8], np.where(y_test == 1)[0][:8]]
        np.save(run / "parity_inputs.npy", _rgb(g_test[pick]))
        np.save(run / "parity_scores.npy", judged.t_probs[pick, 1])
    write_run_record(run, info, started)
    print(f"  cross-source validation: {json.dumps(cross)}", flush=True)
    return info


def _loso(
    args: argparse.Namespace,
    bb: Backbone,
    task: Task,
    rows: tuple[list[D.Record], list[D.Record], list[D.Record]],
    feats: tuple[np.ndarray, np.ndarray, np.ndarray],
    greys: tuple[np.ndarray, np.ndarray, np.ndarray],
    a_train: np.ndarray,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per source: linear probe and fine-tune on its training part (epoch, L2, temperature and
    thresholds from its own validation part); test on every image of the other source; the
    cross-source validation AUC on the other source's validation part alone, for this recipe
    and for its linear probe (the frozen recipe)."""
    train, val, test = rows
    f_train, f_val, f_test = feats
    f0 = np.concatenate([f_train[:, 0], f_val, f_test])
    g0 = np.concatenate(greys)
    y_all, folds = loso_folds(train, val, test)
    s_all = np.array([r.source for r in [*train, *val, *test]])
    y_train = y_all[: len(train)]
    figures, curves, cross = {}, {}, {}
    for f in folds:
        tr, va, ov = f.train, f.val, f.other_val
        lp, l2, _ = _fit_head(
            f_train[tr],
            y_train[tr],
            np.array([f.source] * int(tr.sum())),
            f0[va],
            y_all[va],
            f.val_rows,
        )
        lp_auc = ev.roc_auc(y_all[ov], lp.logit(f0[ov]))
        if not task.loso:
            continue
        _, logits, ft = finetune(
            bb,
            _start_head(lp, f0[va], y_all[va], args.ft_calibrated_head),
            g0[: len(train)][tr],
            a_train[tr],
            y_train[tr],
            s_all[: len(train)][tr],
            g0[va],
            y_all[va],
            s_all[va],
            args,
            f"loso {f.source}",
        )
        figures[f.key], curves[f.key] = loso_fold_figures(
            f,
            y_all,
            _predict(logits, g0[va]),
            _predict(logits, g0[f.other]),
            args.seed,
            {"l2": l2, "best_epoch": ft["best_epoch"]},
        )
        cross[f.key] = {
            "n": int(ov.sum()),
            "n_positive": int(y_all[ov].sum()),
            "auc": ev.roc_auc(y_all[ov], _predict(logits, g0[ov])),
            "auc_linear_probe": lp_auc,
        }
    if cross:
        cross["mean"] = cross_source_mean(cross)
    return {"figures": figures, "curves": curves}, cross


def _plots(
    run: Path,
    task: Task,
    src: np.ndarray,
    y_val: np.ndarray,
    y_test: np.ndarray,
    v_probs: np.ndarray,
    t_probs: np.ndarray,
    z_test: np.ndarray,
    loso: dict[str, Any],
) -> None:
    try:
        curves = {"validation": (y_val, v_probs[:, 1]), "test (all)": (y_test, t_probs[:, 1])}
        for s in sorted(set(src.tolist())):
            if len(set(y_test[src == s].tolist())) == 2:
                curves[f"test {s}"] = (y_test[src == s], t_probs[src == s, 1])
        ev.plot_roc(curves, run / "roc.png", f"{task.name}: ROC")
        if loso.get("curves"):
            ev.plot_roc(loso["curves"], run / "loso_roc.png", f"{task.name}: leave one source out")
        ev.plot_reliability(
            y_test, ev.softmax(_two(z_test)), t_probs, run / "reliability.png", f"{task.name}: test"
        )
    except ImportError:
        log.warning("matplotlib is not installed: no plots")


__all__ = ["FT_AUGMENT", "add_finetune_args", "augmented_views", "engine_grey", "run_finetune"]

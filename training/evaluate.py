"""Evaluation, calibration and operating points — NumPy only (no TensorFlow).

Kept free of TensorFlow so that export and tests can reuse it cheaply. Binary figures are on
the positive-class probability; thresholds mean "flag when p >= threshold".
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- calibration


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature minimising validation NLL (golden-section search on log T in [-3, 3]).

    One scalar cannot change the ranking (AUC) — it only makes the probabilities honest, which
    matters because the app shows them to clinicians.
    """
    lo, hi = -3.0, 3.0
    golden = (math.sqrt(5) - 1) / 2
    a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
    fa, fb = nll(logits, labels, math.exp(a)), nll(logits, labels, math.exp(b))
    for _ in range(80):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - golden * (hi - lo)
            fa = nll(logits, labels, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + golden * (hi - lo)
            fb = nll(logits, labels, math.exp(b))
    return float(math.exp((lo + hi) / 2))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE with equal-width confidence bins."""
    conf = probs.max(axis=1)
    pred = probs.argmax(axis=1)
    correct = (pred == labels).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(ece)


# --------------------------------------------------------------------------- ROC


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney U, ties counted half)."""
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    s = np.asarray(score)[order]
    ranks = np.empty(len(s), dtype=float)
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[i : j + 1] = (i + j) / 2 + 1
        i = j + 1
    full = np.empty(len(s), dtype=float)
    full[order] = ranks
    return float((full[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), thresholds descending; flag when score >= threshold."""
    y = np.asarray(y).astype(bool)
    thr = np.unique(score)[::-1]
    pos, neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    tpr = np.array([(score[y] >= t).sum() / pos for t in thr])
    fpr = np.array([(score[~y] >= t).sum() / neg for t in thr])
    return np.r_[0.0, fpr], np.r_[0.0, tpr], np.r_[np.inf, thr]


def bootstrap_auc_ci(
    y: np.ndarray, score: np.ndarray, n: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile 95% CI of the AUC, resampling positives and negatives separately."""
    rng = np.random.default_rng(seed)
    y = np.asarray(y).astype(bool)
    pos, neg = np.asarray(score)[y], np.asarray(score)[~y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan"), float("nan")
    aucs = np.empty(n)
    for i in range(n):
        p = rng.choice(pos, len(pos))
        q = rng.choice(neg, len(neg))
        # AUC = P(p > q) + 0.5 P(p == q), computed via sorting
        qs = np.sort(q)
        lt = np.searchsorted(qs, p, side="left")
        le = np.searchsorted(qs, p, side="right")
        aucs[i] = (lt.sum() + 0.5 * (le - lt).sum()) / (len(p) * len(q))
    return float(np.percentile(aucs, 2.5)), float(np.percentile(aucs, 97.5))


# --------------------------------------------------------------------------- operating points


MIN_SENSITIVITY = 0.90  # the screening point's validation sensitivity floor
#: :func:`operating_points`' rule in words: run records carry it, model cards print it.
OPERATING_RULE = (
    f"`screening` is the highest threshold with validation sensitivity ≥ {MIN_SENSITIVITY:.2f} "
    "(the best specificity under that floor), but never less sensitive than `balanced`; "
    "`balanced` maximises Youden's J (sensitivity + specificity - 1) on validation."
)


def operating_points(
    y: np.ndarray,
    score: np.ndarray,
    min_sensitivity: float = MIN_SENSITIVITY,
    min_specificity: float | None = None,
) -> dict[str, dict[str, float]]:
    """``screening``: the highest threshold with validation sensitivity >= ``min_sensitivity``
    (so the best specificity under that constraint), but never above the ``balanced``
    threshold; ``balanced``: Youden's J maximum.

    Why the cap: a very confident model (the paediatric pneumonia one) reaches 0.90 sensitivity
    at a threshold above its Youden point, which would make the point named "screening" *less*
    sensitive than "balanced" — and sit exactly on the 0.90 boundary, so held-out sensitivity
    falls just under it. A triage point must be at least as sensitive as the balanced one.

    ``min_specificity`` (optional) is a floor that wins over the sensitivity floor: where no
    threshold holds both, ``screening`` is the most sensitive threshold whose validation
    specificity still reaches it. Why: for a group the model separates less well (adults:
    AUC ~0.9 on text-mined labels) a 0.90-sensitivity point flags most healthy patients, and
    a screening tool that flags nearly everyone is worse than none (issue 11).
    """
    fpr, tpr, thr = roc_curve(y, score)
    ok = np.where(tpr[1:] >= min_sensitivity)[0] + 1
    i_s = int(ok[0]) if len(ok) else len(thr) - 1
    j = tpr[1:] - fpr[1:]
    i_b = int(np.argmax(j)) + 1
    if thr[i_s] > thr[i_b]:
        i_s = i_b
    if min_specificity is not None and 1 - fpr[i_s] < min_specificity:
        spec_ok = np.where(1 - fpr[1:] >= min_specificity)[0] + 1
        i_s = int(spec_ok[-1]) if len(spec_ok) else 1  # the most sensitive above the floor
    return {
        "screening": {
            "threshold": float(thr[i_s]),
            "sensitivity": float(tpr[i_s]),
            "specificity": float(1 - fpr[i_s]),
        },
        "balanced": {
            "threshold": float(thr[i_b]),
            "sensitivity": float(tpr[i_b]),
            "specificity": float(1 - fpr[i_b]),
        },
    }


def reselect_operating_points(run: Path, seed: int, version: str) -> dict[str, Any]:
    """Recompute a finished binary run's operating points and metrics from its saved scores.

    For a change of the selection rule only: the model, its temperature and its scores are
    unchanged, so nothing is retrained. Only single-source runs (pneumonia) can be redone so.
    """
    info = json.loads((run / "run.json").read_text())
    saved = np.load(run / "scores.npz")

    def two_columns(p: np.ndarray) -> np.ndarray:
        return np.stack([1.0 - p, p], axis=1)

    points = operating_points(saved["y_val"], saved["val"])
    groups = None
    if "by_source" in info["metrics"]["test"]:
        import csv

        with (run / "split.csv").open(newline="") as fh:
            groups = [r["source"] for r in csv.DictReader(fh) if r["split"] == "test"]
        if len(groups) != len(saved["y_test"]) or len(set(groups)) > 1:
            # scores.npz does not record which source each test score came from
            raise ValueError(f"{run}: per-source figures need the run's arrays; retrain instead")
    metrics = {
        "validation": evaluate_binary(saved["y_val"], two_columns(saved["val"]), points, seed=seed),
        "test": evaluate_binary(
            saved["y_test"], two_columns(saved["test"]), points, groups=groups, seed=seed
        ),
    }
    metrics["test"]["ece_uncalibrated"] = info["metrics"]["test"].get("ece_uncalibrated")
    info["operating_points"] = points
    info["metrics"] = metrics
    info["version"] = version  # new thresholds: a new model version (ARCHITECTURE.md, contract 2)
    (run / "run.json").write_text(json.dumps(info, indent=1))
    return info


def binary_metrics(y: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, Any]:
    """Confusion matrix and the usual rates at one threshold."""
    y = np.asarray(y).astype(bool)
    pred = np.asarray(score) >= threshold
    tp, fn = int((pred & y).sum()), int((~pred & y).sum())
    fp, tn = int((pred & ~y).sum()), int((~pred & ~y).sum())

    def ratio(a: int, b: int) -> float | None:
        return float(a / b) if b else None

    sens, prec = ratio(tp, tp + fn), ratio(tp, tp + fp)
    f1 = 2 * prec * sens / (prec + sens) if prec and sens else 0.0
    return {
        "threshold": float(threshold),
        "confusion": {"tp": tp, "fn": fn, "fp": fp, "tn": tn},
        "accuracy": ratio(tp + tn, len(y)),
        "sensitivity": sens,
        "specificity": ratio(tn, tn + fp),
        "precision": prec,
        "f1": float(f1),
    }


def evaluate_binary(
    y: np.ndarray,
    probs: np.ndarray,
    points: dict[str, dict[str, float]],
    groups: Sequence[str] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Held-out figures: AUC with bootstrap CI, ECE, metrics at each operating point and at
    0.5, optionally broken down by ``groups`` (e.g. source hospital)."""
    score = probs[:, 1]
    lo, hi = bootstrap_auc_ci(y, score, seed=seed)
    out: dict[str, Any] = {
        "n": len(y),
        "n_positive": int(np.sum(y)),
        "auc": roc_auc(y, score),
        "auc_ci95": [lo, hi],
        "ece": expected_calibration_error(probs, np.asarray(y)),
        "at_0.5": binary_metrics(y, score, 0.5),
        "operating_points": {
            k: binary_metrics(y, score, v["threshold"]) for k, v in points.items()
        },
    }
    if groups is not None:
        garr = np.asarray(groups)
        out["by_source"] = {
            str(g): evaluate_binary(np.asarray(y)[garr == g], probs[garr == g], points, seed=seed)
            for g in sorted(set(garr.tolist()))
        }
    return out


def evaluate_multiclass(y: np.ndarray, probs: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, confusion matrix, per-class recall/precision, one-vs-rest AUC, ECE."""
    pred = probs.argmax(axis=1)
    k = len(labels)
    cm = np.zeros((k, k), dtype=int)
    for t, p in zip(y, pred, strict=True):
        cm[t, p] += 1
    per_class = {}
    for i, name in enumerate(labels):
        per_class[name] = {
            "n": int(cm[i].sum()),
            "recall": float(cm[i, i] / cm[i].sum()) if cm[i].sum() else None,
            "precision": float(cm[i, i] / cm[:, i].sum()) if cm[:, i].sum() else None,
            "auc_ovr": roc_auc(np.asarray(y) == i, probs[:, i]),
        }
    return {
        "n": len(y),
        "accuracy": float((pred == y).mean()),
        "errors": int((pred != y).sum()),
        "confusion": {"labels": list(labels), "matrix": cm.tolist()},
        "per_class": per_class,
        "ece": expected_calibration_error(probs, np.asarray(y)),
    }


# --------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    path: Path,
    title: str,
    points: dict[str, tuple[float, float]] | None = None,
) -> None:
    """ROC curves (name → (y, score)) with operating points (name → (fpr, tpr))."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (y, score) in curves.items():
        fpr, tpr, _ = roc_curve(y, score)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc(y, score):.3f}, n={len(y)})")
    for name, (fx, ty) in (points or {}).items():
        ax.plot([fx], [ty], "o", label=name)
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reliability(
    y: np.ndarray, probs_before: np.ndarray, probs_after: np.ndarray, path: Path, title: str
) -> None:
    """Reliability diagram (top-label confidence vs accuracy) before/after temperature."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    edges = np.linspace(0, 1, 11)
    for name, probs in (("uncalibrated", probs_before), ("temperature-scaled", probs_after)):
        conf, correct = probs.max(axis=1), (probs.argmax(axis=1) == y)
        xs, ys = [], []
        for lo, hi in itertools.pairwise(edges):
            m = (conf > lo) & (conf <= hi)
            if m.sum() >= 3:
                xs.append(conf[m].mean())
                ys.append(correct[m].mean())
        ece = expected_calibration_error(probs, y)
        ax.plot(xs, ys, "o-", label=f"{name} (ECE {ece:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="confidence", ylabel="accuracy", title=title, xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_history(history: dict[str, list[float]], path: Path, title: str) -> None:
    """Training curves: loss and every other metric, train vs validation."""
    plt = _plt()
    names = [k for k in history if not k.startswith("val_") and k not in ("learning_rate", "lr")]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        ax.plot(history[name], label="train")
        if f"val_{name}" in history:
            ax.plot(history[f"val_{name}"], label="validation")
        ax.set(title=name, xlabel="epoch")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def proportion_ci(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion (sensible at 0 or n successes, unlike the
    normal approximation, which matters for acceptance rates near 100% on small sets)."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion(mask: np.ndarray) -> dict[str, Any]:
    """``{"n", "k", "rate", "ci95"}`` of a boolean array: a rate with its Wilson interval."""
    m = np.asarray(mask, dtype=bool)
    k, n = int(m.sum()), int(m.size)
    lo, hi = proportion_ci(k, n)
    return {"n": n, "k": k, "rate": k / n if n else float("nan"), "ci95": [lo, hi]}

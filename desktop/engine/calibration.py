"""Site calibration arithmetic: ROC, AUC with a bootstrap CI, and a threshold for a target
sensitivity, from scores of scans whose true labels a clinic knows.

Why this exists: a threshold chosen on one population does not carry over to another (WHO's
guidance on CAD for TB asks every programme to set its own on local scans with known
outcomes). A model's *ranking* often survives a change of site while its *scores* shift, so
the threshold is what a site must re-learn.

Pure NumPy, no scikit-learn. Conventions, the same everywhere in MedScreen:

* a scan is flagged when its score *reaches* the threshold (``score >= threshold``, as
  :func:`desktop.engine.results.is_flagged`);
* a threshold sits halfway between two neighbouring distinct scores, so the counts it gives on
  the calibration set do not depend on floating-point equality, and a new scan scoring between
  the two is not decided by an accident of where the sample happened to fall;
* AUC is the Mann–Whitney probability that a positive outscores a negative, ties counting
  one half (equal to the trapezoidal area under the ROC curve);
* its 95% CI is a stratified percentile bootstrap (positives and negatives resampled
  separately, so every resample keeps the labelled prevalence) with a fixed seed, so the same
  labelled set always gives the same figures;
* sensitivity and specificity at a threshold get Wilson score intervals (they behave at
  proportions near 1, where the plain normal interval runs past 100%).

The CI of the sensitivity at the chosen threshold is measured on the same scans the threshold
was chosen on; on new scans the sensitivity is expected to fall somewhat below the target as
often as above it. The interval says how far.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from desktop.engine.errors import MedScreenError

#: WHO's minimum sensitivity for a TB triage test, the default target.
DEFAULT_TARGET_SENSITIVITY = 0.90
#: Fewer labelled positives (or negatives) than this and the figures are refused.
MIN_PER_CLASS = 20
#: A 95% CI wider than this (in sensitivity, specificity or AUC) earns a warning.
WIDE_CI = 0.20
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20261201
_Z95 = 1.959963984540054


class CalibrationError(MedScreenError):
    """The labelled set cannot support a calibration (too few cases, one class only...)."""


@dataclass(frozen=True)
class RocCurve:
    """The empirical ROC curve, one vertex per candidate threshold.

    ``thresholds[k]`` flags exactly the scans scoring at least the k-th highest distinct score;
    ``tpr[k]``/``fpr[k]`` are what it gives. The curve is read from (0, 0) (nothing flagged,
    not stored) through these vertices to (1, 1) (the last vertex flags every scan).
    """

    thresholds: np.ndarray  # descending
    values: np.ndarray  # the distinct scores, descending: vertex k flags scores >= values[k]
    tpr: np.ndarray  # ascending (non-decreasing)
    fpr: np.ndarray
    tp: np.ndarray  # counts behind tpr / fpr
    fp: np.ndarray
    n_positive: int
    n_negative: int

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        """FPR and TPR with the (0, 0) origin prepended: the polyline to draw."""
        return np.concatenate([[0.0], self.fpr]), np.concatenate([[0.0], self.tpr])


@dataclass(frozen=True)
class Confusion:
    """Counts at one threshold: rows are truth, columns the flag."""

    tp: int
    fn: int
    fp: int
    tn: int

    @property
    def n_positive(self) -> int:
        return self.tp + self.fn

    @property
    def n_negative(self) -> int:
        return self.fp + self.tn

    @property
    def sensitivity(self) -> float:
        return self.tp / self.n_positive if self.n_positive else math.nan

    @property
    def specificity(self) -> float:
        return self.tn / self.n_negative if self.n_negative else math.nan


@dataclass(frozen=True)
class PerThousand:
    """What a threshold means for 1,000 scans screened at a given prevalence."""

    prevalence: float
    flagged: float
    true_positive: float  # cases found
    false_negative: float  # cases missed
    false_positive: float  # flagged without disease
    true_negative: float


@dataclass(frozen=True)
class PointStats:
    """Sensitivity and specificity at one threshold, with Wilson 95% intervals."""

    threshold: float
    confusion: Confusion
    sensitivity: float
    sensitivity_ci: tuple[float, float]
    specificity: float
    specificity_ci: tuple[float, float]

    def per_thousand(self, prevalence: float) -> PerThousand:
        """Expected counts among 1,000 scans with ``prevalence`` disease (0..1)."""
        pos = 1000.0 * prevalence
        neg = 1000.0 - pos
        tp, fp = pos * self.sensitivity, neg * (1.0 - self.specificity)
        return PerThousand(prevalence, tp + fp, tp, pos - tp, fp, neg - fp)


@dataclass(frozen=True)
class Calibration:
    """A finished calibration: the curve, its AUC, and the chosen operating point."""

    roc: RocCurve
    auc: float
    auc_ci: tuple[float, float]
    target_sensitivity: float
    chosen: PointStats
    #: Index into ``roc.thresholds`` of the chosen threshold.
    chosen_index: int
    warnings: tuple[str, ...] = ()
    resamples: int = BOOTSTRAP_RESAMPLES
    seed: int = BOOTSTRAP_SEED
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    positive: np.ndarray = field(default_factory=lambda: np.zeros(0, bool), repr=False)

    @property
    def n_positive(self) -> int:
        return self.roc.n_positive

    @property
    def n_negative(self) -> int:
        return self.roc.n_negative

    @property
    def prevalence(self) -> float:
        """The share of positives in the labelled set (not necessarily the site's)."""
        return self.n_positive / (self.n_positive + self.n_negative)

    def at_index(self, index: int) -> PointStats:
        """Figures at the ROC vertex ``index`` (as the GUI moves the point along the curve)."""
        if not 0 <= index < len(self.roc.thresholds):
            raise IndexError(f"ROC vertex {index} out of range")
        return point_stats(self.scores, self.positive, float(self.roc.thresholds[index]))

    def at_threshold(self, threshold: float) -> PointStats:
        return point_stats(self.scores, self.positive, threshold)

    def index_of(self, threshold: float) -> int:
        """The ROC vertex whose counts ``threshold`` reproduces (0 if it flags nothing)."""
        return max(0, int(np.sum(self.roc.values >= threshold)) - 1)


def _as_arrays(
    scores: Sequence[float] | np.ndarray, positive: Sequence[bool] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(positive, dtype=bool).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite numbers")
    return s, y


def roc_curve(
    scores: Sequence[float] | np.ndarray, positive: Sequence[bool] | np.ndarray
) -> RocCurve:
    """The ROC curve with midpoint thresholds (see the module docstring)."""
    s, y = _as_arrays(scores, positive)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise CalibrationError("a ROC curve needs both positive and negative scans")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    # The last index of each run of equal scores: a threshold flags a whole run or none of it.
    distinct = np.flatnonzero(np.diff(s_sorted) != 0)
    ends = np.concatenate([distinct, [s_sorted.size - 1]])
    tp = np.cumsum(y_sorted)[ends]
    fp = np.cumsum(~y_sorted)[ends]
    values = s_sorted[ends]  # distinct scores, descending
    below = np.concatenate([values[1:], [values[-1]]])
    thresholds = (values + below) / 2.0
    thresholds[-1] = values[-1]  # the last vertex flags everything
    return RocCurve(
        thresholds=thresholds,
        values=values,
        tpr=tp / n_pos,
        fpr=fp / n_neg,
        tp=tp.astype(np.int64),
        fp=fp.astype(np.int64),
        n_positive=n_pos,
        n_negative=n_neg,
    )


def auc_score(scores: Sequence[float] | np.ndarray, positive: Sequence[bool] | np.ndarray) -> float:
    """Mann–Whitney AUC with ties counted one half."""
    s, y = _as_arrays(scores, positive)
    values, inverse = np.unique(s, return_inverse=True)
    pos = np.bincount(inverse[y], minlength=values.size).astype(np.float64)
    neg = np.bincount(inverse[~y], minlength=values.size).astype(np.float64)
    return float(_auc_from_counts(pos[None, :], neg[None, :])[0])


def _auc_from_counts(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUC for each row of per-distinct-score counts (scores ascending along axis 1)."""
    neg_below = np.cumsum(neg, axis=1) - neg
    wins = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
    return wins / (pos.sum(axis=1) * neg.sum(axis=1))


def bootstrap_auc_ci(
    scores: Sequence[float] | np.ndarray,
    positive: Sequence[bool] | np.ndarray,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile CI of the AUC, resampling positives and negatives separately.

    Each resample is reduced to counts per distinct score, so the AUC of a resample costs one
    cumulative sum instead of a sort; resamples run in chunks to bound memory on large sets.
    """
    s, y = _as_arrays(scores, positive)
    values, inverse = np.unique(s, return_inverse=True)
    pos_idx, neg_idx = inverse[y], inverse[~y]
    if pos_idx.size == 0 or neg_idx.size == 0:
        raise CalibrationError("an AUC needs both positive and negative scans")
    rng = np.random.default_rng(seed)
    width = values.size
    aucs = np.empty(resamples)
    chunk = max(1, min(resamples, 4_000_000 // max(width, 1)))
    for start in range(0, resamples, chunk):
        n = min(chunk, resamples - start)
        rows = np.arange(n)[:, None] * width
        picks_p = pos_idx[rng.integers(0, pos_idx.size, (n, pos_idx.size))] + rows
        picks_n = neg_idx[rng.integers(0, neg_idx.size, (n, neg_idx.size))] + rows
        pos = np.bincount(picks_p.ravel(), minlength=n * width).reshape(n, width)
        neg = np.bincount(picks_n.ravel(), minlength=n * width).reshape(n, width)
        aucs[start : start + n] = _auc_from_counts(pos.astype(np.float64), neg.astype(np.float64))
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(aucs, [tail, 1.0 - tail])
    return float(lo), float(hi)


def wilson_interval(successes: int, total: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion (95% by default)."""
    if total <= 0:
        return (math.nan, math.nan)
    p = successes / total
    denom = 1.0 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def confusion_at(
    scores: Sequence[float] | np.ndarray, positive: Sequence[bool] | np.ndarray, threshold: float
) -> Confusion:
    s, y = _as_arrays(scores, positive)
    flagged = s >= threshold
    return Confusion(
        tp=int(np.sum(flagged & y)),
        fn=int(np.sum(~flagged & y)),
        fp=int(np.sum(flagged & ~y)),
        tn=int(np.sum(~flagged & ~y)),
    )


def point_stats(
    scores: Sequence[float] | np.ndarray, positive: Sequence[bool] | np.ndarray, threshold: float
) -> PointStats:
    c = confusion_at(scores, positive, threshold)
    return PointStats(
        threshold=float(threshold),
        confusion=c,
        sensitivity=c.sensitivity,
        sensitivity_ci=wilson_interval(c.tp, c.n_positive),
        specificity=c.specificity,
        specificity_ci=wilson_interval(c.tn, c.n_negative),
    )


def threshold_for_sensitivity(roc: RocCurve, target: float) -> int:
    """Index of the vertex reaching ``target`` sensitivity with the best specificity.

    Specificity only falls as the threshold falls, so this is the highest threshold whose
    sensitivity reaches the target. A tiny tolerance keeps 9/10 ≥ 0.9 true in floating point.
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity must lie in (0, 1], got {target}")
    reaching = np.flatnonzero(roc.tpr >= target - 1e-12)
    return int(reaching[0])  # the last vertex has tpr 1, so there is always one


def calibrate(
    scores: Sequence[float] | np.ndarray,
    positive: Sequence[bool] | np.ndarray,
    target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY,
    *,
    min_per_class: int = MIN_PER_CLASS,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> Calibration:
    """Everything a site needs to set a threshold; refuses a set too small to trust."""
    s, y = _as_arrays(scores, positive)
    if not 0.0 < target_sensitivity < 1.0:
        raise CalibrationError(
            f"the target sensitivity must be greater than 0 and less than 1, got "
            f"{target_sensitivity:g}"
        )
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos < min_per_class or n_neg < min_per_class:
        raise CalibrationError(
            f"too few labelled scans to calibrate: {n_pos} with the disease and {n_neg} "
            f"without; at least {min_per_class} of each are needed (a threshold set on fewer "
            "would move by a wide margin with every case added)"
        )
    roc = roc_curve(s, y)
    auc = auc_score(s, y)
    auc_ci = bootstrap_auc_ci(s, y, resamples=resamples, seed=seed)
    index = threshold_for_sensitivity(roc, target_sensitivity)
    chosen = point_stats(s, y, float(roc.thresholds[index]))
    return Calibration(
        roc=roc,
        auc=auc,
        auc_ci=auc_ci,
        target_sensitivity=target_sensitivity,
        chosen=chosen,
        chosen_index=index,
        warnings=tuple(ci_warnings(auc, auc_ci, chosen)),
        resamples=resamples,
        seed=seed,
        scores=s,
        positive=y,
    )


def ci_warnings(auc: float, auc_ci: tuple[float, float], point: PointStats) -> list[str]:
    """Plain warnings where an interval is too wide to rely on, or the model barely ranks."""
    out = []
    for what, value, (lo, hi), n in (
        ("sensitivity", point.sensitivity, point.sensitivity_ci, point.confusion.n_positive),
        ("specificity", point.specificity, point.specificity_ci, point.confusion.n_negative),
        ("AUC", auc, auc_ci, None),
    ):
        if hi - lo > WIDE_CI:
            more = ""
            if n:
                # Wilson width shrinks roughly with 1/sqrt(n): four times the cases halve it.
                more = f"; about {4 * n} cases of that kind would halve it"
            out.append(
                f"the 95% CI of the {what} is wide ({value:.2f}, {lo:.2f}–{hi:.2f}){more}: "
                "label more scans before relying on this threshold"
            )
    if auc_ci[0] <= 0.5:
        out.append(
            f"the model does not reliably rank this site's scans (AUC {auc:.2f}, 95% CI "
            f"{auc_ci[0]:.2f}–{auc_ci[1]:.2f} includes 0.5): no threshold will make it useful here"
        )
    return out

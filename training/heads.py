"""Linear heads on frozen features: L2 logistic regression, fitted exactly (Newton / IRLS).

Why a hand-written solver: the train extra has no scikit-learn or SciPy, and for a few
thousand rows of 1280 features Newton's method converges in ~10 steps to the unique optimum,
with no learning rate or epoch count to tune (and so nothing to tune on the test split by
accident). The fitted head becomes the exported model's ``Dense(2)`` layer exactly
(:meth:`LinearHead.dense_weights`), so the class activation map stays exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LinearHead:
    """``logit = ((x - mean) / std) · w + b``; p(positive) = sigmoid(logit)."""

    w: np.ndarray
    b: float
    mean: np.ndarray
    std: np.ndarray

    def logit(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float64) - self.mean) / self.std) @ self.w + self.b

    def dense_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """Kernel (D, 2) and bias (2,) of a softmax Dense layer with the same probabilities.

        softmax([-z/2, z/2]) = [1 - sigmoid(z), sigmoid(z)], with the standardisation folded
        into the weights.
        """
        w_raw = self.w / self.std
        b_raw = self.b - float(np.sum(self.w * self.mean / self.std))
        kernel = np.stack([-w_raw / 2, w_raw / 2], axis=1).astype(np.float32)
        bias = np.array([-b_raw / 2, b_raw / 2], dtype=np.float32)
        return kernel, bias


def fit_logistic(
    x: np.ndarray,
    y: np.ndarray,
    l2: float,
    sample_weight: np.ndarray | None = None,
    iterations: int = 25,
) -> LinearHead:
    """Minimise mean weighted log-loss + ``l2``/2 · |w|² on standardised features.

    ``sample_weight`` is normalised to mean 1 (so ``l2`` means the same for any data size).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    mean = x.mean(axis=0)
    std = x.std(axis=0) + 1e-6
    z = (x - mean) / std
    n, d = z.shape
    sw = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    sw = sw / sw.mean()
    za = np.hstack([z, np.ones((n, 1))])  # last column: the bias (not regularised)
    theta = np.zeros(d + 1)
    reg = np.full(d + 1, l2)
    reg[-1] = 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(za @ theta, -30, 30)))
        grad = za.T @ (sw * (p - y)) / n + reg * theta
        h = (za * (sw * p * (1 - p))[:, None]).T @ za / n
        h[np.diag_indices_from(h)] += reg + 1e-9
        step = np.linalg.solve(h, grad)
        theta -= step
        if np.max(np.abs(step)) < 1e-7:
            break
    return LinearHead(theta[:-1], float(theta[-1]), mean, std)


def balanced_weights(y: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """Weights giving every (class, group) cell the same total weight.

    Why per group: TB prevalence and image count differ by hospital; without this the head
    can learn "Shenzhen-looking ⇒ more likely TB" from the mix instead of the disease.
    """
    y = np.asarray(y)
    keys = y.astype(str) if groups is None else np.char.add(y.astype(str), np.asarray(groups))
    cells, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    return (len(y) / (len(cells) * counts))[inverse]

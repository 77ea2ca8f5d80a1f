"""Finishing a run: calibrate, choose operating points, evaluate on test, write the run folder.

The run folder is the contract between training and export:

- ``model.keras`` — the trained Functional model;
- ``run.json`` — id, labels, preprocessing, temperature, operating points, test metrics,
  provenance (data, split summary, seed, recipe, durations): export copies it into the
  manifest;
- ``split.csv`` — every image with its split; ``*.png`` — curves, ROC, reliability.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from desktop.engine.preprocess import PreprocessSpec
from training import evaluate as ev

log = logging.getLogger(__name__)


def common_args(description: str, default_out: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", type=Path, required=True, help="dataset folder")
    p.add_argument("--out", type=Path, default=Path(default_out), help="run folder to write")
    p.add_argument("--seed", type=int, default=20261122)
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    p.add_argument(
        "--limit", type=int, default=None, help="use at most N images per class (smoke runs)"
    )
    p.add_argument("--cache", type=Path, default=None, help="folder for cached input arrays")
    p.add_argument(
        "--fractions",
        type=_fractions,
        default=None,
        help="train,val,test shares (default 0.7,0.15,0.15; MedNIST 0.8,0.1,0.1)",
    )
    return p


def _fractions(text: str) -> tuple[float, float, float]:
    parts = tuple(float(v) for v in text.split(","))
    if len(parts) != 3:
        raise argparse.ArgumentTypeError("expected three comma-separated numbers")
    return parts  # type: ignore[return-value]


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")


def limit_per_class(records: Sequence[Any], limit: int | None, seed: int) -> list[Any]:
    """Deterministic subset of at most ``limit`` images per (class, source) — for smoke runs."""
    if not limit:
        return list(records)
    rng = np.random.default_rng(seed)
    out: list[Any] = []
    keys = sorted({(r.label, r.source) for r in records})
    for key in keys:
        rows = [r for r in records if (r.label, r.source) == key]
        idx = rng.permutation(len(rows))[:limit]
        out.extend(rows[i] for i in sorted(idx))
    return out


def finish_binary(
    *,
    run: Path,
    model: Any,
    model_id: str,
    name: str,
    labels: list[str],
    spec: PreprocessSpec,
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    test_sources: Sequence[str],
    provenance: dict[str, Any],
    intended_use: str,
    limitations: Callable[[dict[str, Any]], list[str]],
    started: float,
    seed: int,
) -> dict[str, Any]:
    """Temperature on validation, operating points on validation, figures on test;
    ``limitations`` turns the figures into the card's limitations (run record → manifest)."""
    from training.fit import predict_heads

    v_logits = predict_heads(model, val[0])["logits"]
    t_logits = predict_heads(model, test[0])["logits"]
    temperature = ev.fit_temperature(v_logits, val[1])
    v_probs = ev.softmax(v_logits, temperature)
    t_probs = ev.softmax(t_logits, temperature)
    points = ev.operating_points(val[1], v_probs[:, 1])
    metrics = {
        "validation": ev.evaluate_binary(val[1], v_probs, points, seed=seed),
        "test": ev.evaluate_binary(test[1], t_probs, points, groups=list(test_sources), seed=seed),
    }
    metrics["test"]["ece_uncalibrated"] = ev.expected_calibration_error(
        ev.softmax(t_logits), test[1]
    )
    _plots(run, name, labels, val, test, test_sources, v_probs, t_probs, t_logits, points)
    save_scores(run, v_probs[:, 1], t_probs[:, 1], val[1], test[1])
    info = {
        "id": model_id,
        "name": name,
        "role": "finding",
        "task": "binary",
        "labels": labels,
        "positive_label": labels[1],
        "preprocessing": spec.to_manifest(),
        "temperature": temperature,
        "operating_points": points,
        "operating_rule": ev.OPERATING_RULE,
        "metrics": metrics,
        "intended_use": intended_use,
        "limitations": limitations(metrics),
        "training": _training_info(provenance, started, seed),
    }
    pick = np.r_[np.where(test[1] == 0)[0][:8], np.where(test[1] == 1)[0][:8]]
    np.save(run / "parity_inputs.npy", test[0][pick])  # real held-out images for export parity
    model.save(run / "model.keras")
    (run / "run.json").write_text(json.dumps(info, indent=1))
    _log_summary(info)
    return info


def save_scores(
    run: Path,
    val: np.ndarray,
    test: np.ndarray,
    y_val: np.ndarray,
    y_test: np.ndarray,
    external: dict[str, np.ndarray] | None = None,
) -> None:
    """Write ``scores.npz``: the calibrated positive-class scores and labels of validation and
    test (``external_<name>`` for each external set). One writer, so every recipe leaves the
    layout that ``evaluate.reselect_operating_points`` reads back without retraining."""
    np.savez(
        run / "scores.npz",
        val=val,
        test=test,
        y_val=y_val,
        y_test=y_test,
        **{f"external_{k}": v for k, v in (external or {}).items()},
    )


def _plots(
    run: Path,
    name: str,
    labels: list[str],
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    test_sources: Sequence[str],
    v_probs: np.ndarray,
    t_probs: np.ndarray,
    t_logits: np.ndarray,
    points: dict[str, dict[str, float]],
) -> None:
    try:
        src = np.asarray(test_sources)
        curves = {"validation": (val[1], v_probs[:, 1]), "test (all)": (test[1], t_probs[:, 1])}
        if len(set(src.tolist())) > 1:
            for s in sorted(set(src.tolist())):
                curves[f"test {s}"] = (test[1][src == s], t_probs[src == s, 1])
        marks = {f"{k} (val)": (1 - v["specificity"], v["sensitivity"]) for k, v in points.items()}
        ev.plot_roc(curves, run / "roc.png", f"{name}: ROC", marks)
        ev.plot_reliability(
            test[1], ev.softmax(t_logits), t_probs, run / "reliability.png", f"{name}: test"
        )
    except ImportError:
        log.warning("matplotlib is not installed: no plots")


def _training_info(provenance: dict[str, Any], started: float, seed: int) -> dict[str, Any]:
    import sys

    import keras
    import tensorflow as tf

    module = Path(sys.argv[0]).stem
    return {
        **provenance,
        "command": " ".join([f"python -m training.{module}", *sys.argv[1:]]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "duration_s": round(time.time() - started, 1),
        "seed": seed,
        "framework": f"tensorflow {tf.__version__}, keras {keras.__version__}",
        "machine": machine(),
    }


def machine() -> str:
    """Where the run trained, as the model card prints it: the CPU's architecture and cores,
    the GPUs TensorFlow sees if it is loaded, the OS. Every recipe records it this one way, so
    no card states a machine of its own."""
    tf = sys.modules.get("tensorflow")
    gpus = tf.config.list_physical_devices("GPU") if tf is not None else []
    return (
        f"{platform.machine()} CPU ({os.cpu_count()} cores)"
        + (f", {len(gpus)} GPU" if gpus else ", no GPU")
        + f", {platform.system()}"
    )


def _log_summary(info: dict[str, Any]) -> None:
    test = info["metrics"]["test"]
    msg = [f"{info['id']}: test AUC {test['auc']:.4f} CI {test['auc_ci95']}"]
    for k, v in test["operating_points"].items():
        msg.append(
            f"  {k}: thr {v['threshold']:.3f} acc {v['accuracy']:.3f} "
            f"sens {v['sensitivity']:.3f} spec {v['specificity']:.3f}"
        )
    for s, sub in test.get("by_source", {}).items():
        msg.append(f"  {s}: AUC {sub['auc']:.4f} n={sub['n']}")
    log.info("\n".join(msg))
    print("\n".join(msg))

"""The shared Keras training loop: augmentation, class weights, callbacks, curves.

Augmentation suits radiographs: small rotations (±7°), shifts, zoom, brightness/contrast —
and *no* horizontal flip by default, because the heart's side is anatomy, not noise.
It runs in the [0, 1] grey domain (undoing the spec's scale/offset) so the same parameters
mean the same thing for every model, and it lives in the tf.data pipeline, never in the
exported graph.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from desktop.engine.preprocess import PreprocessSpec

log = logging.getLogger(__name__)


def configure_tf(seed: int, threads: int | None = None) -> None:
    """Fixed seeds and a bounded thread count (the build machines have 2 cores)."""
    import keras
    import tensorflow as tf

    n = threads or int(os.environ.get("MEDSCREEN_TF_THREADS", "2"))
    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # already initialised (tests run several models in one process)
        pass
    keras.utils.set_random_seed(seed)


@dataclass(frozen=True)
class AugmentConfig:
    rotation_deg: float = 7.0
    shift: float = 0.05
    zoom: float = 0.08
    brightness: float = 0.08
    contrast: float = 0.12
    horizontal_flip: bool = False


def _augmenter(cfg: AugmentConfig, seed: int):
    import keras
    from keras import layers

    steps: list[Any] = [
        layers.RandomRotation(cfg.rotation_deg / 360.0, fill_mode="constant", seed=seed),
        layers.RandomTranslation(cfg.shift, cfg.shift, fill_mode="constant", seed=seed + 1),
        layers.RandomZoom(cfg.zoom, fill_mode="constant", seed=seed + 2),
    ]
    if cfg.horizontal_flip:
        steps.append(layers.RandomFlip("horizontal", seed=seed + 3))
    return keras.Sequential(steps, name="augment")


def make_dataset(
    x: np.ndarray,
    y: np.ndarray,
    spec: PreprocessSpec,
    batch: int,
    augment: AugmentConfig | None,
    seed: int,
    sample_weight: np.ndarray | None = None,
) -> Any:
    """A tf.data pipeline; augmented and shuffled only when ``augment`` is given."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(
        (x, y) if sample_weight is None else (x, y, sample_weight)
    )
    if augment is None:
        return ds.batch(batch).prefetch(2)
    aug = _augmenter(augment, seed)
    scale, offset = np.float32(spec.scale), np.float32(offset_of(spec))
    gen = tf.random.Generator.from_seed(seed)

    def apply(xb, *rest):  # noqa: ANN001
        g = (xb - offset) / scale  # back to [0, 1] grey
        g = aug(g, training=True)
        n = tf.shape(g)[0]
        b = gen.uniform([n, 1, 1, 1], -augment.brightness, augment.brightness)
        c = gen.uniform([n, 1, 1, 1], 1 - augment.contrast, 1 + augment.contrast)
        mean = tf.reduce_mean(g, axis=[1, 2, 3], keepdims=True)
        g = tf.clip_by_value((g - mean) * c + mean + b, 0.0, 1.0)
        return (g * scale + offset, *rest)

    return (
        ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        .batch(batch)
        .map(apply, num_parallel_calls=1)
        .prefetch(2)
    )


def offset_of(spec: PreprocessSpec) -> float:
    return spec.offset


def fit(
    model: Any,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    spec: PreprocessSpec,
    run: Path,
    *,
    epochs: int,
    lr: float,
    batch: int = 32,
    class_weight: dict[int, float] | None = None,
    augment: AugmentConfig | None = AugmentConfig(),
    patience: int = 4,
    seed: int = 0,
    stage: str = "train",
) -> dict[str, list[float]]:
    """Compile and fit with checkpoint-on-best-val-loss, early stopping and LR decay.

    The best weights (by validation loss) are restored at the end, and the history is
    written to ``<run>/history_<stage>.json``.
    """
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    ckpt = run / f"best_{stage}.weights.h5"
    callbacks = [
        keras.callbacks.ModelCheckpoint(
            str(ckpt), monitor="val_loss", save_best_only=True, save_weights_only=True
        ),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience),
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=0.3, patience=max(1, patience // 2), min_lr=1e-6
        ),
    ]
    sw = None
    if class_weight is not None:  # sample weights: works for every Keras data path
        sw = np.array([class_weight[int(t)] for t in train[1]], dtype=np.float32)
    ds_train = make_dataset(train[0], train[1], spec, batch, augment, seed, sw)
    ds_val = make_dataset(val[0], val[1], spec, 64, None, seed)
    start = time.time()
    hist = model.fit(
        ds_train, validation_data=ds_val, epochs=epochs, callbacks=callbacks, verbose=2
    )
    if ckpt.exists():
        model.load_weights(str(ckpt))
        ckpt.unlink()
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    history["duration_s"] = [time.time() - start]  # type: ignore[list-item]
    (run / f"history_{stage}.json").write_text(json.dumps(history, indent=1))
    log.info("%s: %d epochs in %.0f s", stage, len(history["loss"]), time.time() - start)
    return history


def predict_heads(model: Any, x: np.ndarray, batch: int = 64) -> dict[str, np.ndarray]:
    """Feature maps are large: return only the GAP features and logits."""
    from training.models import heads_model

    heads = heads_model(model)
    gaps, logits = [], []
    for i in range(0, len(x), batch):
        _f, g, lg = heads(x[i : i + batch], training=False)
        gaps.append(np.asarray(g))
        logits.append(np.asarray(lg))
    return {"gap": np.concatenate(gaps), "logits": np.concatenate(logits)}

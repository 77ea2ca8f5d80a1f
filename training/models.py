"""Architectures. All are Functional Keras models that end in
``feature maps → GlobalAveragePooling2D → (Dropout) → Dense(logits) → softmax``.

Why that ending: the class activation map is then exact (``CAM = feature_maps · W[:, c]``),
and export can compute it inside the ONNX graph. Functional (not Sequential) because tf2onnx
cannot convert Keras 3 Sequential models (tensorflow-onnx issue #2448). Layer names
``features``, ``gap``, ``logits`` and ``probabilities`` are relied on by export.
"""

from __future__ import annotations

from pathlib import Path

import keras
from keras import layers

FEATURES, GAP, LOGITS, PROBS = "features", "gap", "logits", "probabilities"


@keras.saving.register_keras_serializable(package="medscreen")
class Sqrt(layers.Layer):
    """Element-wise square root of non-negative feature maps (ReLU6 outputs).

    Why: averaging the square roots of the maps ("power-normalised" pooling) damps the few
    very strong activations that scanner texture and burnt-in markers produce, and in our
    comparison runs it transferred better between hospitals. It sits *before* the average
    pooling, so the head stays GAP + Dense and the class activation map stays exact.
    """

    def call(self, x):  # noqa: ANN001, ANN201
        return keras.ops.sqrt(keras.ops.maximum(x, 0.0))


@keras.saving.register_keras_serializable(package="medscreen")
class Mirror(layers.Layer):
    """Left-right mirror image of NHWC images or feature maps (reverses the width axis).

    Why: test-time augmentation inside the exported graph. A model that averages the feature
    maps of a scan and (mirrored back) of its mirror image cannot lean on which side a
    burnt-in marker, the heart or a site's positioning habit sits; mirroring the maps back
    before averaging keeps the class activation map exact and in the scan's own orientation.
    """

    def call(self, x):  # noqa: ANN001, ANN201
        return keras.ops.flip(x, axis=2)


def _head(features: keras.KerasTensor, n_classes: int, dropout: float) -> keras.KerasTensor:
    x = layers.GlobalAveragePooling2D(name=GAP)(features)
    if dropout:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    logits = layers.Dense(n_classes, name=LOGITS)(x)
    return layers.Activation("softmax", name=PROBS, dtype="float32")(logits)


def mobilenet_transfer(
    weights: Path | None, input_shape: tuple[int, int, int], n_classes: int, dropout: float = 0.3
) -> tuple[keras.Model, keras.Model]:
    """MobileNet v1 alpha 0.25 (ImageNet) with a new GAP+Dense head.

    Returns (model, backbone) so the caller can freeze/unfreeze the backbone. The backbone is
    always called with ``training=False`` so its batch-norm statistics stay those of
    ImageNet: with a few hundred images, re-estimating them hurts.
    """
    backbone = keras.applications.MobileNet(
        alpha=0.25, include_top=False, weights=None, input_shape=input_shape
    )
    if weights is not None:
        backbone.load_weights(str(weights))
    inputs = keras.Input(shape=input_shape, name="image")
    fmap = backbone(inputs, training=False)
    fmap = layers.Identity(name=FEATURES)(fmap)
    return keras.Model(inputs, _head(fmap, n_classes, dropout), name="mobilenet025"), backbone


def _conv_bn(x: keras.KerasTensor, filters: int, name: str) -> keras.KerasTensor:
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def small_cnn(
    input_shape: tuple[int, int, int],
    n_classes: int,
    widths: tuple[int, ...] = (8, 16, 32, 64),
    double: tuple[bool, ...] = (False, True, True, False),
) -> keras.Model:
    """Default modality classifier: four conv-BN-ReLU blocks (the middle two doubled), the
    first three max-pooled, then GAP + Dense.

    About 8.5 M multiply-adds and 37 k parameters per 64×64 image, so an epoch over ~44 k
    images takes about three minutes on 2 busy CPU cores (measured ~200 images/s); the GAP
    features double as the embedding of the out-of-distribution check.
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for i, (w, twice) in enumerate(zip(widths, double, strict=True)):
        x = _conv_bn(x, w, f"b{i}a")
        if twice:
            x = _conv_bn(x, w, f"b{i}b")
        if i < len(widths) - 1:
            x = layers.MaxPooling2D(name=f"b{i}_pool")(x)
    x = layers.Identity(name=FEATURES)(x)
    return keras.Model(inputs, _head(x, n_classes, 0.2), name="modality_cnn")


# --------------------------------------------------------------------------- seed recipes


def seed_scratch_cnn(input_shape: tuple[int, int, int], n_classes: int) -> keras.Model:
    """Seed-article TB recipe: a plain from-scratch CNN on 256×256 grey input."""
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for i, w in enumerate((16, 32, 64, 128)):
        x = layers.Conv2D(w, 3, padding="same", activation="relu", name=f"s{i}_conv")(x)
        x = layers.MaxPooling2D(name=f"s{i}_pool")(x)
    x = layers.Identity(name=FEATURES)(x)
    return keras.Model(inputs, _head(x, n_classes, 0.5), name="seed_scratch")


def seed_five_block_cnn(input_shape: tuple[int, int, int], n_classes: int) -> keras.Model:
    """Seed-article pneumonia recipe: five conv blocks with batch norm and dropout."""
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for i, w in enumerate((16, 32, 64, 96, 128)):
        x = layers.Conv2D(w, 3, padding="same", activation="relu", name=f"c{i}_conv")(x)
        x = layers.BatchNormalization(name=f"c{i}_bn")(x)
        x = layers.MaxPooling2D(name=f"c{i}_pool")(x)
        if i >= 2:
            x = layers.Dropout(0.2, name=f"c{i}_drop")(x)
    x = layers.Identity(name=FEATURES)(x)
    return keras.Model(inputs, _head(x, n_classes, 0.5), name="seed_five_block")


def seed_mednist_cnn(input_shape: tuple[int, int, int], n_classes: int) -> keras.Model:
    """Seed-article MedNIST recipe: a small two-conv CNN with a softmax (GAP head here)."""
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Conv2D(16, 3, activation="relu", name="m0_conv")(inputs)
    x = layers.MaxPooling2D(name="m0_pool")(x)
    x = layers.Conv2D(32, 3, activation="relu", name="m1_conv")(x)
    x = layers.MaxPooling2D(name="m1_pool")(x)
    x = layers.Identity(name=FEATURES)(x)
    return keras.Model(inputs, _head(x, n_classes, 0.0), name="seed_mednist")


def heads_model(model: keras.Model) -> keras.Model:
    """Same weights, outputs ``(feature_maps, gap, logits)``: what export and OOD need."""
    return keras.Model(
        model.inputs[0],
        [
            model.get_layer(FEATURES).output,
            model.get_layer(GAP).output,
            model.get_layer(LOGITS).output,
        ],
    )

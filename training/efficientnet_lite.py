"""EfficientNet-Lite0/1/2 as Keras 3 Functional models, loading the official ImageNet weights.

Why a port: the MobileNet v1 0.25 backbone (about 50% ImageNet top-1) was the weakest part of
the TB and pneumonia models; EfficientNet-Lite (75-78% top-1) is the strongest family that is
still cheap on 2 CPU cores, and "Lite" means no squeeze-and-excitation and ReLU6, so it exports
to plain ONNX convolutions. The weights come as NumPy archives of the PyTorch state dict
(``/work/shared/data/weights/efficientnet_lite{0,1,2}_imagenet_f16.npz``, see that folder's
README); this module is the architecture those arrays belong to:

- EfficientNet-B0's block table (kernel, stride, expansion, output channels, repeats);
  Lite1/Lite2 scale channels by 1.0/1.1 (rounded to a multiple of 8 as EfficientNet does) and
  repeats by 1.1/1.2 rounded up, except the first and last stages, which keep one block; the
  stem (32) and head (1280) are not scaled;
- BatchNorm epsilon 1e-3, ReLU6, TensorFlow ``same`` padding (Keras' ``padding="same"`` is
  exactly that: the extra row/column of a stride-2 layer goes at the bottom/right);
- input ``(x - 127) / 128`` on 0-255 RGB; :data:`INPUT_SCALE` / :data:`INPUT_OFFSET` express
  it on the engine's [0, 1] grey (``g * 255/128 - 127/128``).

Layer names follow the PyTorch module names (``blocks_3_expand_conv``), so
:func:`load_imagenet_weights` is a plain, checked, name-to-name copy.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers

log = logging.getLogger(__name__)

BN_EPS = 1e-3
INPUT_SCALE = 255.0 / 128.0  # engine grey g in [0, 1] → (255 g - 127) / 128
INPUT_OFFSET = -127.0 / 128.0
FEATURES_LAYER = "head_relu"  # (N, h, w, 1280) feature maps after the 1x1 head conv
DEFAULT_WEIGHTS_DIR = (Path(__file__).resolve().parents[1] / "../shared/data/weights").resolve()

# kernel, stride, expansion, output channels, repeats (EfficientNet-B0)
BLOCKS: tuple[tuple[int, int, int, int, int], ...] = (
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
)


@dataclass(frozen=True)
class Variant:
    """Width/depth multipliers and the ImageNet input side of one Lite variant."""

    width: float
    depth: float
    resolution: int


VARIANTS: dict[str, Variant] = {
    "lite0": Variant(1.0, 1.0, 224),
    "lite1": Variant(1.0, 1.1, 240),
    "lite2": Variant(1.1, 1.2, 260),
}


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """EfficientNet's channel rounding: nearest multiple of 8, never more than 10% below."""
    scaled = channels * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def block_table(variant: str) -> list[tuple[int, int, int, int, int]]:
    """Per stage (kernel, stride, expansion, channels, repeats) after scaling."""
    v = VARIANTS[variant]
    out = []
    for i, (k, s, e, c, r) in enumerate(BLOCKS):
        repeats = r if i in (0, len(BLOCKS) - 1) else math.ceil(r * v.depth)
        out.append((k, s, e, round_filters(c, v.width), repeats))
    return out


def _bn(x: keras.KerasTensor, name: str) -> keras.KerasTensor:
    return layers.BatchNormalization(epsilon=BN_EPS, momentum=0.99, name=name)(x)


def efficientnet_lite(
    variant: str = "lite0",
    input_shape: tuple[int, int, int] = (224, 224, 3),
    include_top: bool = False,
    name: str | None = None,
) -> keras.Model:
    """The Lite network up to the 1280-channel ReLU6 feature maps (or the 1000-class logits).

    ``include_top=True`` adds global average pooling and the ImageNet Dense layer (logits,
    no softmax): that is what the port test classifies photos with.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}: {sorted(VARIANTS)}")
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="conv_stem")(inputs)
    x = _bn(x, "bn0")
    x = layers.ReLU(6.0, name="stem_relu")(x)
    in_ch, index = 32, 0
    for k, s, e, c, repeats in block_table(variant):
        for r in range(repeats):
            stride = s if r == 0 else 1
            p = f"blocks_{index}_"
            shortcut = x
            h = x
            if e != 1:
                h = layers.Conv2D(in_ch * e, 1, use_bias=False, name=p + "expand_conv")(h)
                h = _bn(h, p + "bn0")
                h = layers.ReLU(6.0, name=p + "expand_relu")(h)
            h = layers.DepthwiseConv2D(
                k, strides=stride, padding="same", use_bias=False, name=p + "depthwise_conv"
            )(h)
            h = _bn(h, p + "bn1")
            h = layers.ReLU(6.0, name=p + "dw_relu")(h)
            h = layers.Conv2D(c, 1, use_bias=False, name=p + "project_conv")(h)
            h = _bn(h, p + "bn2")
            if stride == 1 and in_ch == c:
                h = layers.Add(name=p + "add")([shortcut, h])
            x, in_ch, index = h, c, index + 1
    x = layers.Conv2D(1280, 1, use_bias=False, name="conv_head")(x)
    x = _bn(x, "bn1")
    x = layers.ReLU(6.0, name=FEATURES_LAYER)(x)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(1000, name="fc")(x)
    return keras.Model(inputs, x, name=name or f"efficientnet_{variant}")


def weights_path(variant: str, folder: Path | None = None) -> Path:
    return (folder or DEFAULT_WEIGHTS_DIR) / f"efficientnet_{variant}_imagenet_f16.npz"


def _torch_key(layer_name: str) -> str:
    """``blocks_3_expand_conv`` → ``_blocks.3._expand_conv``; ``bn0`` → ``_bn0``."""
    if layer_name.startswith("blocks_"):
        _, idx, rest = layer_name.split("_", 2)
        return f"_blocks.{idx}._{rest}"
    return f"_{layer_name}"


def load_imagenet_weights(model: keras.Model, path: Path) -> int:
    """Copy the PyTorch arrays into ``model`` (float16 → float32, transposed to Keras layout).

    Every weighted layer of the model must find its arrays with the right shapes, and every
    array of the archive that the model has room for must be used: a silent partial load
    would give a network that runs but has forgotten ImageNet. Returns the tensors loaded.
    """
    with np.load(path) as archive:
        arrays = {k: archive[k].astype(np.float32) for k in archive.files}
    used: set[str] = set()

    def take(key: str) -> np.ndarray:
        if key not in arrays:
            raise KeyError(f"{path.name}: no array {key!r} for the Keras model")
        used.add(key)
        return arrays[key]

    for layer in model.layers:
        if not layer.weights:
            continue
        key = _torch_key(layer.name)
        if isinstance(layer, layers.DepthwiseConv2D):
            w = take(f"{key}.weight")  # (c, 1, kh, kw) → (kh, kw, c, 1)
            values = [w.transpose(2, 3, 0, 1)]
        elif isinstance(layer, layers.Conv2D):
            values = [take(f"{key}.weight").transpose(2, 3, 1, 0)]  # (o, i, kh, kw) → Keras
        elif isinstance(layer, layers.BatchNormalization):
            values = [take(f"{key}.{n}") for n in ("weight", "bias", "running_mean", "running_var")]
        elif isinstance(layer, layers.Dense):
            values = [take(f"{key}.weight").T, take(f"{key}.bias")]
        else:
            raise TypeError(f"no weight mapping for layer {layer.name} ({type(layer).__name__})")
        expected = [tuple(w.shape) for w in layer.weights]
        if [v.shape for v in values] != expected:
            raise ValueError(
                f"{layer.name}: archive shapes {[v.shape for v in values]} != Keras {expected}"
            )
        layer.set_weights(values)
    has_top = any(layer.name == "fc" for layer in model.layers)
    unused = {k for k in arrays if k not in used and (has_top or not k.startswith("_fc."))}
    if unused:
        raise ValueError(f"{path.name}: {len(unused)} arrays not used, e.g. {sorted(unused)[:3]}")
    log.info("loaded %d ImageNet tensors from %s", len(used), path.name)
    return len(used)


def pretrained_lite(
    variant: str = "lite0",
    input_shape: tuple[int, int, int] = (224, 224, 3),
    include_top: bool = False,
    weights_dir: Path | None = None,
) -> keras.Model:
    """:func:`efficientnet_lite` with the ImageNet weights loaded (any input size works: the
    network is fully convolutional up to the pooling)."""
    model = efficientnet_lite(variant, input_shape, include_top)
    load_imagenet_weights(model, weights_path(variant, weights_dir))
    return model

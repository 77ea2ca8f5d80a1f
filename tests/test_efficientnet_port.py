"""The EfficientNet-Lite port (training/efficientnet_lite.py) is the network its weights belong to.

Proof the way the weights' README asks: real photographs are classified correctly by the
ported ImageNet network. A port with a wrong transpose, padding, epsilon or activation still
runs but loses these classes. Photos: scikit-image sample images (CC0), downscaled, in
tests/data/photos (see tests/data/ATTRIBUTION.md). Needs TensorFlow/Keras and the weight
archives in ../shared/data/weights (skipped where they are absent).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from training import efficientnet_lite as E  # noqa: E402

PHOTOS = Path(__file__).parent / "data" / "photos"
# ImageNet-1k class ids: 281 tabby, 282 tiger cat, 283 Persian, 284 Siamese, 285 Egyptian cat;
# 967 espresso
CATS = {281, 282, 283, 284, 285}
ESPRESSO = 967
# tensors in each archive (its README): a model that does not use them all is a wrong port
TENSORS = {"lite0": 247, "lite1": 322, "lite2": 322}


def _weights(variant: str) -> Path:
    path = E.weights_path(variant)
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path


def _photo(name: str, side: int) -> np.ndarray:
    """Centre square crop, bilinear resize, the Lite input scaling (x - 127) / 128."""
    from PIL import Image

    im = Image.open(PHOTOS / name).convert("RGB")
    w, h = im.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    im = im.crop((left, top, left + s, top + s)).resize((side, side), Image.Resampling.BILINEAR)
    return (np.asarray(im, dtype=np.float32) - 127.0) / 128.0


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_port_classifies_real_photos(variant: str) -> None:
    path = _weights(variant)
    side = E.VARIANTS[variant].resolution
    model = E.efficientnet_lite(variant, (side, side, 3), include_top=True)
    assert E.load_imagenet_weights(model, path) == TENSORS[variant]
    x = np.stack([_photo("chelsea.jpg", side), _photo("coffee.jpg", side)])
    logits = np.asarray(model(x, training=False), dtype=np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    cat, coffee = probs
    assert int(cat.argmax()) in CATS
    assert int(coffee.argmax()) == ESPRESSO
    # the five cat classes together dominate, as they do for the original network
    assert cat[sorted(CATS)].sum() > 0.8
    assert coffee[ESPRESSO] > 0.4


def test_block_table_matches_efficientnet_scaling() -> None:
    assert [r for *_, r in E.block_table("lite0")] == [1, 2, 2, 3, 3, 4, 1]
    assert [r for *_, r in E.block_table("lite2")] == [1, 3, 3, 4, 4, 5, 1]
    assert [c for _, _, _, c, _ in E.block_table("lite2")] == [16, 24, 48, 88, 120, 208, 352]
    assert E.round_filters(40, 1.1) == 48  # 44 rounds to 48, never 10% below


def test_wrong_archive_is_refused() -> None:
    """Lite1 arrays do not fit Lite0: the loader says so instead of loading half a network."""
    path = _weights("lite1")
    model = E.efficientnet_lite("lite0", (64, 64, 3))
    with pytest.raises((ValueError, KeyError)):
        E.load_imagenet_weights(model, path)


def test_features_any_input_size() -> None:
    """The backbone is fully convolutional: 320x320 input gives 10x10x1280 feature maps."""
    _weights("lite0")
    model = E.pretrained_lite("lite0", (320, 320, 3))
    assert model.output.shape[1:] == (10, 10, 1280)
    assert model.get_layer(E.FEATURES_LAYER).output.shape[-1] == 1280

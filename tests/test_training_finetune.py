"""The fine-tuning recipe's parts (training.finetune) on real TB fixtures.

What the fine-tuned TB figures rest on: validation/test inputs are exactly the engine's
(``prepare_file``), augmented training views are reproducible from the seed and really are
other-site versions of the image, and the network the fine-tuning starts from gives exactly
the frozen recipe's linear-head scores (LP-FT starts at the frozen model, not at a random
head), with only the blocks asked for left trainable.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from desktop.engine.preprocess import prepare_file
from training.features import Backbone
from training.heads import fit_logistic

DATA = Path(__file__).parent / "data"
FILES = sorted((DATA / "tb").rglob("*.png"))[:4]
WEIGHTS = Path("/work/shared/data/weights/mobilenet_2_5_224_tf_no_top.h5")


def test_engine_inputs_and_views(tmp_path: Path) -> None:
    from training.finetune import augmented_views, engine_grey

    bb = Backbone("mobilenet025", 64)
    spec = bb.spec()
    grey = engine_grey(FILES, spec, tmp_path)
    for i, path in enumerate(FILES):
        assert np.array_equal(grey[i], prepare_file(path, spec)[..., 0])  # bit-identical
    views = augmented_views(FILES, spec, 3, seed=5, cache=tmp_path)
    assert views.shape == (len(FILES), 2, 64, 64) and views.dtype == np.float16
    again = augmented_views(FILES, spec, 3, seed=5, cache=tmp_path / "fresh")
    assert np.array_equal(views, again)  # rebuilt from the seed, not only read from cache
    other = augmented_views(FILES, spec, 3, seed=6, cache=tmp_path)
    assert not np.array_equal(views, other)
    # other-site versions: in the model's value range, clearly different from the input
    assert views.min() >= -1.0 and views.max() <= 1.0
    diff = np.abs(views.astype(np.float32) - grey[:, None]).mean(axis=(2, 3))
    assert (diff > 0.01).all()


@pytest.mark.skipif(not WEIGHTS.exists(), reason="needs the MobileNet 0.25 ImageNet weights")
def test_lpft_starts_at_the_linear_probe() -> None:
    import keras

    from training.features import keras_backbone
    from training.finetune import _build, _predict, engine_grey

    bb = Backbone("mobilenet025", 96)
    spec = bb.spec()
    grey = engine_grey(FILES, spec, Path("/tmp/medscreen/test_ft_cache"))
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    net = keras_backbone(bb)
    feats = np.asarray(keras.layers.GlobalAveragePooling2D()(net(rgb, training=False)))
    head = fit_logistic(feats, np.array([0, 0, 1, 1])[: len(FILES)], l2=1.0)
    model, logits = _build(bb, head, "2")
    np.testing.assert_allclose(_predict(logits, grey), head.logit(feats), atol=1e-4)
    backbone = model.layers[1]
    # the last two blocks' convolutions and their batch-norm scale/shift (statistics stay)
    trainable = {v.path.split("/")[-2].removesuffix("_bn") for v in backbone.trainable_weights}
    assert trainable == {
        "conv_dw_12",
        "conv_pw_12",
        "conv_dw_13",
        "conv_pw_13",
    }, trainable


def test_corner_erasing_touches_only_the_top_corners() -> None:
    from training.finetune import _erase_corners, engine_grey

    grey = engine_grey(
        FILES, Backbone("mobilenet025", 224).spec(), Path("/tmp/medscreen/test_ft_cache")
    )
    same = _erase_corners(grey, np.random.default_rng(0), 0.0)
    assert np.array_equal(same, grey)
    out = _erase_corners(grey, np.random.default_rng(0), 1.0)
    changed = out != grey
    assert changed[:, : int(224 * 0.28)].any(axis=(1, 2)).all()  # every image, in the top band
    assert not changed[:, int(224 * 0.28) :].any()  # never the lungs below it
    assert not changed[:, :, 90:134].any()  # nor the middle (trachea, apices' inner part)
    for k in range(len(FILES)):  # each top corner: one flat patch at a grey of the image
        for cols in (slice(0, 112), slice(112, 224)):
            vals = np.unique(out[k][:, cols][changed[k][:, cols]])
            assert len(vals) == 1 and grey[k].min() <= vals[0] <= grey[k].max()

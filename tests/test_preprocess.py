"""The one preprocessing definition: geometry, value range, and the way back for heatmaps."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from desktop.engine.loading import load_scan
from desktop.engine.preprocess import PreprocessSpec, activation_to_image, preprocess
from tests.conftest import DATA

CHEST = DATA / "tb" / "tuberculosis"


def _chest() -> np.ndarray:
    return load_scan(sorted(CHEST.glob("*.png"))[0]).pixels


def test_area_resize_is_the_block_mean_of_a_real_scan():
    grey = _chest()[:298, :298]  # 298 = 2 × 149
    out = preprocess(grey, PreprocessSpec(149, 149, resample="area"))[:, :, 0]
    blocks = grey.reshape(149, 2, 149, 2).mean(axis=(1, 3))
    assert np.abs(out - blocks).max() < 1e-5


def test_scale_offset_and_channels():
    grey = _chest()
    spec = PreprocessSpec(224, 224, channels=3, scale=2.0, offset=-1.0)
    x = preprocess(grey, spec)
    assert x.shape == (224, 224, 3) and x.dtype == np.float32
    assert np.array_equal(x[:, :, 0], x[:, :, 2])
    assert -1.0 <= x.min() < -0.9 and 0.9 < x.max() <= 1.0
    plain = preprocess(grey, PreprocessSpec(224, 224))[:, :, 0]
    assert np.allclose(x[:, :, 0], plain * 2 - 1, atol=1e-6)


def test_8bit_file_matches_pillow_reference():
    """For an 8-bit grey PNG the pipeline equals Pillow's own float resize of pixels/255."""
    path = sorted(CHEST.glob("*.png"))[0]
    ref = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0
    ref_small = np.asarray(
        Image.fromarray(ref, mode="F").resize((64, 64), Image.Resampling.BOX), dtype=np.float32
    )
    ours = preprocess(load_scan(path).pixels, PreprocessSpec(64, 64))[:, :, 0]
    assert np.abs(ours - ref_small).max() < 1e-6


@pytest.mark.parametrize("fit", ["pad", "center_crop"])
def test_fit_keeps_aspect(fit):
    wide = np.zeros((100, 200), dtype=np.float32)
    wide[:, 100:] = 1.0  # right half white
    x = preprocess(wide, PreprocessSpec(50, 50, fit=fit))[:, :, 0]
    if fit == "pad":  # black bands top and bottom, image in the middle 25 rows
        assert x[:12].max() == 0 and x[-12:].max() == 0
        assert x[25, 40] == pytest.approx(1.0) and x[25, 10] == pytest.approx(0.0)
    else:  # the central 100×100 square: left half black, right half white
        assert x[:, :24].max() == pytest.approx(0.0) and x[:, 26:].min() == pytest.approx(1.0)


@pytest.mark.parametrize("fit", ["stretch", "pad", "center_crop"])
def test_activation_peak_maps_back_to_the_same_place(fit):
    height, width = 300, 400
    spec = PreprocessSpec(224, 224, fit=fit)
    cam = np.zeros((7, 7), dtype=np.float32)
    cam[3, 3] = 1.0  # the centre cell
    heat = activation_to_image(cam, spec, (height, width))
    assert heat.shape == (height, width)
    row, col = np.unravel_index(np.argmax(heat), heat.shape)
    assert abs(row - height / 2) < 25 and abs(col - width / 2) < 25
    assert heat.min() >= 0 and heat.max() == pytest.approx(1.0, abs=1e-3)


def test_spec_round_trips_through_the_manifest_and_rejects_unknown_keys():
    spec = PreprocessSpec(224, 224, channels=3, fit="pad", resample="bilinear", scale=2, offset=-1)
    assert PreprocessSpec.from_manifest(spec.to_manifest()) == spec
    with pytest.raises(ValueError, match="unknown preprocessing keys"):
        PreprocessSpec.from_manifest({"size": [64, 64], "normalise": True})

"""The one preprocessing definition: the working image, geometry, value range, and the way
back for heatmaps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from desktop.engine.loading import load_scan
from desktop.engine.preprocess import (
    WORKING_SIDE,
    PreprocessSpec,
    activation_to_image,
    expand_channels,
    load_working,
    prepare_file,
    preprocess,
    preprocess_plane,
    preprocess_planes,
    working_factor,
)
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


# -- the working image: one reduced image per scan ------------------------------------------


def _big_chest(tmp_path: Path, name: str, size: tuple[int, int] = (2048, 1980), **save) -> Path:
    """A clinic-sized scan made from a real chest X-ray (bicubic enlargement of a fixture)."""
    with Image.open(sorted(CHEST.glob("*.png"))[0]) as image:
        big = image.convert("L").resize(size, Image.Resampling.BICUBIC)
    path = tmp_path / name
    big.save(path, **save)
    return path


def test_working_factor_keeps_the_shorter_side_at_least_working_side():
    assert working_factor(299, 299) == 1
    assert working_factor(2048, 2048) == 4 and WORKING_SIDE <= -(-2048 // 4)
    assert working_factor(3000, 2500) == 2500 // WORKING_SIDE == 5
    assert working_factor(100, 5000) == 1
    with pytest.raises(ValueError, match="larger than the working image"):
        PreprocessSpec(WORKING_SIDE + 1, 224)


def test_8bit_png_working_image_is_the_rounded_block_mean(tmp_path: Path):
    path = _big_chest(tmp_path, "chest.png", (1001, 950))  # factor 2, odd width
    scan = load_working(path)
    assert (scan.metadata.width, scan.metadata.height) == (1001, 950)  # the original size
    assert scan.pixels.shape == (475, 501) and scan.pixels.dtype == np.float32
    full = np.asarray(Image.open(path), dtype=np.float64)
    blocks = full[:950, :1000].reshape(475, 2, 500, 2).mean(axis=(1, 3))
    # Pillow rounds the block mean to 8 bits: within half a grey level of the exact mean.
    assert np.abs(scan.pixels[:, :500] * 255.0 - blocks).max() <= 0.5 + 1e-3


def test_jpeg_is_decoded_by_dct_scaling_close_to_the_full_resolution_input(tmp_path: Path):
    path = _big_chest(tmp_path, "chest.jpg", quality=92)
    scan = load_working(path)
    assert scan.pixels.shape == (495, 512)  # 1/4 scale straight from the decoder
    assert (scan.metadata.width, scan.metadata.height) == (2048, 1980)
    spec = PreprocessSpec(224, 224)
    ours = preprocess(scan.pixels, spec)
    before = preprocess(load_scan(path).pixels, spec)  # every input from full resolution
    diff = np.abs(ours - before)
    # Nearly the same input: one grey level on average; only the few pixels on sharp edges
    # (the film border) move more, as a 4x4 block mean straddles the edge.
    assert float(diff.mean()) < 0.004 and float(np.percentile(diff, 99)) < 0.03
    assert float(diff.max()) < 0.25
    assert np.array_equal(prepare_file(path, spec), ours)  # training gets the same array


def test_deep_raster_and_dicom_working_images_are_block_means_of_the_float_image(
    tmp_path: Path,
):
    path = _big_chest(tmp_path, "chest16.png")
    wide = (np.asarray(Image.open(path), dtype=np.uint16) * 16).astype(np.uint16)
    Image.fromarray(wide).save(path)  # 12-bit values in a 16-bit PNG
    full = load_scan(path).pixels
    scan = load_working(path)
    assert scan.metadata.bits_stored == 16 and scan.pixels.shape == (495, 512)
    blocks = full[:1980, :2048].reshape(495, 4, 512, 4).mean(axis=(1, 3))
    assert np.abs(scan.pixels - blocks).max() < 1e-5


def test_exif_rotated_jpeg_reports_the_rotated_original_size(tmp_path: Path):
    path = _big_chest(tmp_path, "rot.jpg", (1800, 1000), quality=90)
    with Image.open(path) as image:
        exif = image.getexif()
        exif[0x0112] = 6  # rotate 90° clockwise to display
        image.save(path, exif=exif, quality=90)
    scan = load_working(path)
    assert (scan.metadata.width, scan.metadata.height) == (1000, 1800)
    assert scan.pixels.shape == (900, 500)  # factor 2 after the quarter turn


def _plane_as_written(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The plane as the pipeline was first written: clip, fit, Pillow 'F' resize, clip,
    window, scale and offset, each a fresh array (the reference the shared-work path and
    training's inputs must equal bit for bit)."""
    grey = np.clip(pixels.astype(np.float32, copy=False), 0.0, 1.0)
    height, width = grey.shape
    if spec.fit != "stretch":
        side = max(height, width) if spec.fit == "pad" else min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        if spec.fit == "center_crop":
            grey = grey[top : top + side, left : left + side]
        else:
            canvas = np.zeros((side, side), dtype=np.float32)
            canvas[-top : -top + height, -left : -left + width] = grey
            grey = canvas
    if grey.shape == (spec.height, spec.width):
        grey = grey.astype(np.float32, copy=True)
    else:
        image = Image.fromarray(np.ascontiguousarray(grey, dtype=np.float32), mode="F")
        filters = {"area": Image.Resampling.BOX, "bicubic": Image.Resampling.BICUBIC}
        grey = np.asarray(image.resize((spec.width, spec.height), filters[spec.resample]))
    grey = np.clip(grey, 0.0, 1.0)
    if spec.contrast == "window":
        lo, hi = np.percentile(grey, (1.0, 99.0))
        if not hi - lo < 1e-6:  # a NaN spread windows too (to NaN)
            grey = np.clip((grey - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0)
    if spec.scale != 1.0 or spec.offset != 0.0:
        grey = grey * np.float32(spec.scale) + np.float32(spec.offset)
    return np.ascontiguousarray(grey, dtype=np.float32)


@pytest.mark.parametrize("source", ["chest", "out_of_range", "nan"])
def test_planes_sharing_work_equal_each_plane_alone_bit_for_bit(source: str):
    """The app makes every model's plane in one call (shared clip and Pillow copy, in-place
    steps); each must be the lone :func:`preprocess_plane`'s, which is training's."""
    grey = _chest()[:300, :260]
    if source == "out_of_range":
        grey = grey * np.float32(3.0) - np.float32(1.0)
    elif source == "nan":
        grey = grey.copy()
        grey[::7, ::5] = np.nan
    specs = [
        PreprocessSpec(64, 64),
        PreprocessSpec(224, 224, channels=3, scale=2.0, offset=-1.0),
        PreprocessSpec(224, 224, channels=3, scale=2.0, offset=-1.0),  # a shared spec
        PreprocessSpec(120, 96, fit="pad", resample="bicubic", contrast="window"),
        PreprocessSpec(130, 130, fit="center_crop", scale=0.5),
        PreprocessSpec(260, 260, fit="center_crop"),  # no resize at all
    ]
    before = grey.copy()
    planes = preprocess_planes(grey, specs)
    assert np.array_equal(grey, before, equal_nan=True)  # the input is left alone
    assert len(planes) == len(specs) - 1
    for spec in specs:
        expected = _plane_as_written(grey, spec)
        assert planes[spec].tobytes() == expected.tobytes()
        assert preprocess_plane(grey, spec).tobytes() == expected.tobytes()
        assert planes[spec].flags.c_contiguous and planes[spec].dtype == np.float32


def test_expand_channels_repeats_the_plane_exactly():
    planes = np.stack([_chest()[:50, :40], _chest()[50:100, :40]])
    for channels in (1, 3):
        out = expand_channels(planes, channels)
        assert out.shape == (2, 50, 40, channels) and out.flags.c_contiguous
        assert out.tobytes() == np.repeat(planes[..., None], channels, axis=-1).tobytes()

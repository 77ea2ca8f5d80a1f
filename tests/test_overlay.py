"""The heatmap overlay: colours, blending, and that a hot spot lands where the model saw it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from desktop.engine.manifest import ModelManifest
from desktop.engine.overlay import INFERNO_LUT, heatmap_rgb, heatmap_rgba, overlay, overlay_for
from desktop.engine.results import FindingResult, ScanResult, ScanStatus

DATA = Path(__file__).resolve().parent / "data"
TB_PNG = DATA / "tb" / "tuberculosis" / "CHNCXR_0331_1.png"


def _manifest(fit: str = "stretch") -> ModelManifest:
    return ModelManifest.from_dict(
        {
            "schema_version": 1,
            "id": "tb",
            "version": "1.0.0",
            "name": "Tuberculosis",
            "role": "finding",
            "task": "binary",
            "labels": ["normal", "tuberculosis"],
            "positive_label": "tuberculosis",
            "file": "tb.onnx",
            "sha256": "ab" * 32,
            "input": {"name": "image", "shape": [None, 224, 224, 3]},
            "preprocessing": {"size": [224, 224], "channels": 3, "fit": fit},
            "outputs": {"probabilities": "probabilities", "activation_map": "activation_map"},
            "operating_points": {"screening": {"threshold": 0.3}},
            "default_operating_point": "screening",
        }
    )


def _thumbnail(path: Path, size: tuple[int, int]) -> bytes:
    with Image.open(path) as image:
        grey = image.convert("L").resize(size, Image.Resampling.BOX)
    buffer = io.BytesIO()
    grey.save(buffer, format="PNG")
    return buffer.getvalue()


def _result(thumbnail: bytes | None, activation: np.ndarray | None) -> ScanResult:
    finding = FindingResult(
        model_id="tb",
        model_key="tb@1.0.0#abababababab",
        probability=0.81,
        probabilities={"normal": 0.19, "tuberculosis": 0.81},
        activation=activation,
    )
    return ScanResult(
        file=TB_PNG.name,
        sha256="cd" * 32,
        status=ScanStatus.OK,
        findings={"tb": finding},
        thumbnail_png=thumbnail,
    )


def _peak(rgb: np.ndarray) -> tuple[float, float]:
    """Mean position of the pixels painted the heatmap's hottest colour (activation 1).

    At opacity 1 the blend is the pure top colour exactly where the mapped activation is 1,
    whatever the scan under it, so this finds the peak on the real image.
    """
    hot = np.abs(rgb.astype(int) - INFERNO_LUT[255].astype(int)).max(axis=2) <= 2
    assert hot.any(), "no pixel carries the peak colour"
    rows, cols = np.nonzero(hot)
    return float(rows.mean()), float(cols.mean())


def test_heatmap_runs_dark_to_bright_and_is_monotonic_in_lightness():
    ramp = np.linspace(0.0, 1.0, 256, dtype=np.float32)[None, :]
    rgb = heatmap_rgb(ramp)[0].astype(np.float64)
    assert rgb.shape == (256, 3)
    assert tuple(rgb[0]) == (0, 0, 4)  # inferno's near-black
    assert tuple(rgb[-1]) == (252, 255, 164)  # inferno's pale yellow
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    # Perceptual maps get brighter all the way up: a printed grey copy still reads hot vs cold.
    assert np.all(np.diff(luma) > -0.5)
    assert luma[-1] - luma[0] > 200
    # Values outside [0, 1] and NaN clip instead of wrapping around the table.
    odd = heatmap_rgb(np.array([[-3.0, np.nan, 7.0]], dtype=np.float32))[0]
    assert (odd[0] == INFERNO_LUT[0]).all() and (odd[1] == INFERNO_LUT[0]).all()
    assert (odd[2] == INFERNO_LUT[255]).all()


def test_overlay_alpha_follows_opacity_times_activation():
    grey = np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32)
    act = np.array([[1.0, 0.0], [0.5, 1.0]], dtype=np.float32)
    none = overlay(grey, act, 0.0)
    assert none.dtype == np.uint8 and none.shape == (2, 2, 3)
    assert (none == np.rint(grey * 255).astype(np.uint8)[:, :, None]).all()
    full = overlay(grey, act, 1.0)
    heat = heatmap_rgb(act)
    assert (full[0, 0] == heat[0, 0]).all() and (full[1, 1] == heat[1, 1]).all()  # act 1
    assert (full[0, 1] == 128).all()  # act 0: the grey pixel, untouched
    # act 0.5 at opacity 1 -> alpha 0.5: halfway between white bone and the heatmap colour.
    assert np.abs(full[1, 0].astype(int) - np.rint(255 * 0.5 + heat[1, 0] * 0.5)).max() <= 1
    half = overlay(grey, act, 0.5).astype(int)
    expected = np.rint(grey[0, 0] * 255 * 0.5 + heat[0, 0] * 0.5)
    assert np.abs(half[0, 0] - expected).max() <= 1
    with pytest.raises(ValueError, match="opacity"):
        overlay(grey, act, 1.5)
    with pytest.raises(ValueError, match="shape"):
        overlay(grey, act[:1], 0.5)


def test_rgba_layer_composited_at_an_opacity_equals_overlay():
    # What the viewer does: paint the RGBA heatmap source-over the scan at a layer opacity.
    png = _thumbnail(TB_PNG, (120, 150))
    with Image.open(io.BytesIO(png)) as image:
        grey = np.asarray(image.convert("L"), dtype=np.float32) / 255
    rng = np.random.default_rng(3)
    act = np.clip(rng.random(grey.shape, dtype=np.float32), 0, 1)
    rgba = heatmap_rgba(act)
    assert rgba.shape == (*grey.shape, 4) and rgba.dtype == np.uint8
    for opacity in (0.25, 0.45, 1.0):
        alpha = rgba[:, :, 3:4].astype(np.float32) / 255 * opacity
        painted = grey[:, :, None] * 255 * (1 - alpha) + rgba[:, :, :3] * alpha
        expected = overlay(grey, act, opacity).astype(np.float32)
        assert np.abs(painted - expected).max() <= 1.5


def test_overlay_opacity_zero_returns_the_real_scan_exactly():
    png = _thumbnail(TB_PNG, (300, 384))
    with Image.open(io.BytesIO(png)) as image:
        grey8 = np.asarray(image.convert("L"))
    act = np.zeros((7, 7), dtype=np.float32)
    act[3, 3] = 1.0
    out = overlay_for(_result(png, act), _manifest(), opacity=0.0)
    assert out is not None
    assert (out == grey8[:, :, None]).all()


def test_peak_activation_lands_on_the_matching_region_of_a_real_scan():
    png = _thumbnail(TB_PNG, (300, 384))  # portrait: width 300, height 384
    act = np.full((7, 7), 0.05, dtype=np.float32)
    act[1, 5] = 0.9  # upper right of the model grid: the patient's left upper lobe
    out = overlay_for(_result(png, act), _manifest("stretch"), opacity=1.0)
    assert out is not None and out.shape == (384, 300, 3)
    row, col = _peak(out)
    # Cell (1, 5) of a 7x7 grid stretched over 384x300 covers rows 55-110, cols 214-257.
    assert 384 * 1 / 7 - 10 <= row <= 384 * 2 / 7 + 10
    assert 300 * 5 / 7 - 10 <= col <= 300 * 6 / 7 + 10
    # Far from the peak the scan is left as it was (alpha ~ 0 there).
    with Image.open(io.BytesIO(png)) as image:
        grey8 = np.asarray(image.convert("L")).astype(int)
    assert np.abs(out[370, 10].astype(int) - grey8[370, 10]).max() <= 6


def test_padding_used_at_inference_is_undone_before_blending():
    # A landscape scan padded to a square: the model grid's top rows are padding, so a peak
    # on the grid's centre row must land on the image's vertical centre.
    png = _thumbnail(TB_PNG, (384, 192))
    act = np.zeros((7, 7), dtype=np.float32)
    act[3, 1] = 1.0
    out = overlay_for(_result(png, act), _manifest("pad"), opacity=1.0)
    assert out is not None and out.shape == (192, 384, 3)
    row, col = _peak(out)
    assert abs(row - 96) <= 20
    assert 384 * 1 / 7 - 10 <= col <= 384 * 2 / 7 + 10


def test_overlay_for_returns_none_without_thumbnail_or_activation():
    act = np.ones((7, 7), dtype=np.float32)
    assert overlay_for(_result(None, act), _manifest()) is None
    assert overlay_for(_result(_thumbnail(TB_PNG, (64, 64)), None), _manifest()) is None
    assert overlay_for(_result(b"not a png", act), _manifest()) is None

"""Heatmap overlays of class activation maps, shared by the GUI viewer and the PDF report.

The colour map is *inferno* (Stéfan van der Walt and Nathaniel Smith, CC0): it is perceptually
uniform, reads in grey when printed on a black-and-white clinic printer (dark = cold,
bright = hot) and stays readable with the common colour-vision deficiencies, unlike "jet".
It is computed here in numpy from 33 anchor colours (at most 1.6 levels of 255 from the full
256-entry table), so the app needs no matplotlib at run time.
"""

from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image

from desktop.engine.manifest import ModelManifest
from desktop.engine.preprocess import activation_to_image
from desktop.engine.results import ScanResult

logger = logging.getLogger(__name__)

#: Default opacity of the heatmap: enough to see the hot region, little enough to still see
#: the anatomy under it. The GUI's slider starts here.
DEFAULT_OPACITY = 0.45

# Inferno sampled at 33 evenly spaced points (index 0 = value 0.0, index 32 = value 1.0), 0-255.
_INFERNO_ANCHORS = np.array(
    [
        (0, 0, 4), (4, 3, 18), (11, 7, 36), (21, 11, 55), (33, 12, 74), (47, 10, 91),
        (61, 9, 101), (74, 12, 107), (87, 16, 110), (100, 21, 110), (113, 25, 110),
        (125, 30, 109), (138, 34, 106), (151, 39, 102), (163, 44, 97), (176, 49, 91),
        (188, 55, 84), (198, 61, 77), (208, 69, 69), (218, 78, 60), (227, 89, 51),
        (235, 100, 41), (241, 113, 31), (246, 126, 20), (249, 140, 10), (251, 155, 6),
        (252, 170, 15), (251, 186, 31), (249, 201, 50), (245, 217, 73), (242, 232, 101),
        (243, 245, 134), (252, 255, 164),
    ],
    dtype=np.float64,
)  # fmt: skip


def _build_lut(anchors: np.ndarray, size: int = 256) -> np.ndarray:
    """Linearly interpolate anchor colours into a (size, 3) uint8 lookup table."""
    at = np.linspace(0.0, 1.0, len(anchors))
    grid = np.linspace(0.0, 1.0, size)
    lut = np.stack([np.interp(grid, at, anchors[:, c]) for c in range(3)], axis=1)
    return np.clip(np.rint(lut), 0, 255).astype(np.uint8)


#: The 256-entry inferno lookup table (uint8 RGB), index = round(value * 255).
INFERNO_LUT = _build_lut(_INFERNO_ANCHORS)


def heatmap_rgb(activation01: np.ndarray) -> np.ndarray:
    """Colour a 2-D map with values in [0, 1] (clipped; NaN counts as 0) as uint8 RGB (H, W, 3)."""
    values = np.asarray(activation01, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"expected a 2-D activation map, got shape {values.shape}")
    values = np.nan_to_num(values, nan=0.0, posinf=1.0, neginf=0.0)
    index = (np.clip(values, 0.0, 1.0) * np.float32(255.0) + np.float32(0.5)).astype(np.uint8)
    return np.take(INFERNO_LUT, index, axis=0)


def heatmap_rgba(activation01: np.ndarray) -> np.ndarray:
    """The heatmap with the activation as its alpha channel: uint8 RGBA (H, W, 4).

    Composited source-over a grey image with a layer opacity ``o`` (what Qt does when it
    paints a semi-transparent layer), this gives exactly :func:`overlay` with opacity ``o``,
    so the viewer can move its opacity slider without recomputing, and still match the PDF.
    """
    values = np.nan_to_num(np.asarray(activation01, dtype=np.float32), nan=0.0)
    rgba = np.empty((*values.shape, 4), dtype=np.uint8)
    rgba[:, :, :3] = heatmap_rgb(values)
    rgba[:, :, 3] = (np.clip(values, 0.0, 1.0) * np.float32(255.0) + np.float32(0.5)).astype(
        np.uint8
    )
    return rgba


def _grey01(grey: np.ndarray) -> np.ndarray:
    array = np.asarray(grey)
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / np.float32(255.0)
    return np.clip(array.astype(np.float32, copy=False), 0.0, 1.0)


def overlay(grey01: np.ndarray, activation01: np.ndarray, opacity: float) -> np.ndarray:
    """Alpha-blend the heatmap of ``activation01`` over a grey image; uint8 RGB (H, W, 3).

    ``grey01`` is float in [0, 1] (a uint8 image is accepted and scaled); ``activation01``
    must have the same shape (map it first with :func:`activation_to_image`). Each pixel's
    alpha is ``opacity * activation``: where the model paid no attention the scan stays
    untouched grey, and colour rises with attention. A uniform alpha would instead tint the
    whole film dark purple and turn bright bone pink, hiding the anatomy a reader needs to
    judge the hot spot. ``opacity`` 0 gives the grey image exactly; 1 gives the pure heatmap
    colour where the activation is 1.
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must lie in [0, 1], got {opacity}")
    grey = _grey01(grey01)
    if np.shape(activation01) != grey.shape:
        raise ValueError(
            f"activation shape {np.shape(activation01)} differs from image shape {grey.shape}"
        )
    base = grey[:, :, None] * np.float32(255.0)
    if opacity == 0.0:
        return np.repeat(np.rint(base), 3, axis=2).astype(np.uint8)
    act = np.nan_to_num(np.asarray(activation01, dtype=np.float32), nan=0.0)
    alpha = np.clip(act, 0.0, 1.0)[:, :, None] * np.float32(opacity)
    heat = heatmap_rgb(act).astype(np.float32)
    blended = base + (heat - base) * alpha
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def decode_thumbnail(png: bytes) -> np.ndarray:
    """A result's stored thumbnail as float32 grey (H, W) in [0, 1]."""
    with Image.open(io.BytesIO(png)) as image:
        grey = image.convert("L")
        return np.asarray(grey, dtype=np.float32) / np.float32(255.0)


def overlay_for(
    result: ScanResult, manifest: ModelManifest, opacity: float = DEFAULT_OPACITY
) -> np.ndarray | None:
    """The heatmap of ``manifest``'s model over ``result``'s thumbnail, or None if unavailable.

    None when the result has no thumbnail, the model did not run on it, or it produced no
    activation map: the caller shows the plain thumbnail instead. The map goes through the
    model's own preprocessing geometry (:func:`activation_to_image`), so padding or cropping
    used at inference is undone and the hot spot lands on the right part of the scan.
    """
    finding = result.findings.get(manifest.id)
    if result.thumbnail_png is None or finding is None or finding.activation is None:
        return None
    try:
        grey = decode_thumbnail(result.thumbnail_png)
    except (OSError, ValueError) as exc:  # a damaged stored thumbnail must not stop a report
        logger.warning("cannot decode the stored thumbnail of a result: %s", exc)
        return None
    cam = activation_to_image(finding.activation, manifest.preprocessing, grey.shape)
    return overlay(grey, cam, opacity)

"""Scan-level augmentation: what another clinic's scans look like, applied *before* the engine.

Why at the scan level and not on the model input: scans from other sites arrive cropped
differently (tighter to the lungs, or wider with more of the shoulders and abdomen), at low
resolution (224² exports are common), with other exposure and contrast. These are properties
of the *scan*, so they are simulated on the working image the loader returns, and the app's
own :func:`desktop.engine.preprocess.preprocess` (fit, resize, contrast normalisation,
scaling) then runs on the result exactly as it would on a real scan from that site. The
un-augmented view of an image is therefore bit-identical to ``prepare_file``.

Every draw comes from a NumPy generator seeded by (seed, image index, view), so a cached
feature array can be rebuilt exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class ScanAugment:
    """Ranges of the random scan transforms (all applied to [0, 1] grey, H x W)."""

    crop_tight: float = 0.80  # keep at least this share of each side (tighter crop)
    crop_wide: float = 0.15  # or add up to this share of each side as dark border
    p_wide: float = 0.35
    rotation_deg: float = 8.0
    p_lowres: float = 0.4
    lowres_side: tuple[int, int] = (160, 256)
    gamma: tuple[float, float] = (0.6, 1.6)
    window_low: float = 0.08  # random black point up to this grey level
    window_high: float = 0.08  # random white point down from 1 by up to this
    brightness: float = 0.06
    noise: float = 0.02
    p_blur: float = 0.25
    version: int = 1  # bump when the transforms change (cache keys include it)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def augment_scan(pixels: np.ndarray, rng: np.random.Generator, cfg: ScanAugment) -> np.ndarray:
    """One random 'other site' version of a working image (float32 (H, W) in [0, 1])."""
    img = np.asarray(pixels, dtype=np.float32)
    h, w = img.shape
    # geometry: a tighter crop (random position) or a wider field of view (dark margin)
    if rng.random() < cfg.p_wide:
        fy, fx = rng.uniform(0.0, cfg.crop_wide, 2)
        top, left = round(fy * h), round(fx * w)
        bottom, right = (
            round(rng.uniform(0, cfg.crop_wide) * h),
            round(rng.uniform(0, cfg.crop_wide) * w),
        )
        img = _pad(img, top, left, bottom, right)
    else:
        img = _tighter_crop(img, rng, cfg.crop_tight)
    angle = float(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg))
    pil = Image.fromarray(np.ascontiguousarray(img), mode="F")
    pil = pil.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=float(img.min()))
    # resolution: a low-resolution export, upsampled again by whoever exported it
    if rng.random() < cfg.p_lowres:
        side = int(rng.integers(cfg.lowres_side[0], cfg.lowres_side[1] + 1))
        size = pil.size
        scale = side / min(size)
        if scale < 1:
            small = (max(8, round(size[0] * scale)), max(8, round(size[1] * scale)))
            pil = pil.resize(small, Image.Resampling.BOX).resize(size, Image.Resampling.BILINEAR)
    img = np.asarray(pil, dtype=np.float32)
    if rng.random() < cfg.p_blur:
        k = np.array([1, 2, 1], dtype=np.float32) / 4
        img = np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), 1, img)
        img = np.apply_along_axis(lambda c: np.convolve(c, k, mode="same"), 0, img)
    # exposure and contrast: window (black/white point), gamma, brightness, noise
    lo = rng.uniform(0, cfg.window_low)
    hi = 1.0 - rng.uniform(0, cfg.window_high)
    img = np.clip((img - lo) / (hi - lo), 0.0, 1.0)
    g = float(np.exp(rng.uniform(np.log(cfg.gamma[0]), np.log(cfg.gamma[1]))))
    img = img**g
    img = img + rng.uniform(-cfg.brightness, cfg.brightness)
    if cfg.noise:
        img = img + rng.normal(0.0, rng.uniform(0, cfg.noise), img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def _pad(img: np.ndarray, top: int, left: int, bottom: int, right: int) -> np.ndarray:
    """``img`` on a larger canvas of its own dark grey (2nd percentile): a wider field of
    view, as a site that frames more of the shoulders and abdomen (or the film's edge)."""
    h, w = img.shape
    fill = float(np.percentile(img, 2))
    canvas = np.full((h + top + bottom, w + left + right), fill, dtype=np.float32)
    canvas[top : top + h, left : left + w] = img
    return canvas


def _tighter_crop(img: np.ndarray, rng: np.random.Generator, keep: float) -> np.ndarray:
    """A random crop keeping at least ``keep`` of each side: a site framed tighter."""
    h, w = img.shape
    sy, sx = rng.uniform(keep, 1.0, 2)
    ch, cw = max(8, round(sy * h)), max(8, round(sx * w))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return img[y0 : y0 + ch, x0 : x0 + cw]


@dataclass(frozen=True)
class FieldOfView:
    """Ranges of the field-of-view views: geometry only, no exposure or contrast change.

    Why a view of its own: the pneumonia scores depend on how much of the frame the lungs
    fill (Kermany's children are framed tightly, the NIH/NLM adults more loosely), so field of
    view is a shortcut to the source. Squeezing a scan's width to 0.82 with side padding at
    test time dropped 2.2.0's Montgomery flag rate from 59% to 36%. These views show every
    training image with its content scaled to ``share`` of the frame's width and of its height
    (independently, dark padding around; the engine then stretches the frame to the input
    size as it does for any scan) or cropped tighter (``crop_tight``), so that the head
    cannot read the source from the framing. The padding and the crop are
    :func:`augment_scan`'s own."""

    share: tuple[float, float] = (0.75, 1.0)  # content's share of each side after padding
    p_pad: float = 0.65  # else a tighter crop
    crop_tight: float = 0.85  # keep at least this share of each side
    kind: str = "field_of_view"
    version: int = 1  # bump when the transform changes (cache keys include it)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def field_of_view(pixels: np.ndarray, rng: np.random.Generator, cfg: FieldOfView) -> np.ndarray:
    """One field-of-view version of a working image: padded so that the content fills a random
    share of each side, or cropped tighter; grey levels untouched."""
    img = np.asarray(pixels, dtype=np.float32)
    h, w = img.shape
    if rng.random() < cfg.p_pad:
        sy, sx = rng.uniform(cfg.share[0], cfg.share[1], 2)
        extra_h, extra_w = round(h / sy) - h, round(w / sx) - w
        top, left = int(rng.integers(0, extra_h + 1)), int(rng.integers(0, extra_w + 1))
        return _pad(img, top, left, extra_h - top, extra_w - left)
    return np.ascontiguousarray(_tighter_crop(img, rng, cfg.crop_tight))


def make_view(
    pixels: np.ndarray, rng: np.random.Generator, cfg: ScanAugment | FieldOfView
) -> np.ndarray:
    """The training view ``cfg`` describes: a simulated other-site scan or a field-of-view
    version (the one place the feature cache turns a configuration into a transform)."""
    if isinstance(cfg, FieldOfView):
        return field_of_view(pixels, rng, cfg)
    return augment_scan(pixels, rng, cfg)

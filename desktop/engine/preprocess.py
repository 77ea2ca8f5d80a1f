"""The one definition of how a scan becomes a model input (ARCHITECTURE.md, contract 1).

Training (``training/``) builds its arrays by calling :func:`prepare_file`, and the app calls
:func:`preprocess` on the scans it loads, so a model is always served exactly the input it was
trained on. Everything that may differ between models — size, resize filter, crop or pad,
channels, value range — is a parameter read from the model's manifest, never a constant
hidden in one caller.

Geometry is deliberately simple and invertible (stretch, pad or centre-crop, then resize) so
that a class activation map can be mapped back onto the original scan
(:func:`activation_to_image`).

**The working image.** A scan is decoded once and reduced once, to a *working image* whose
shorter side is at least :data:`WORKING_SIDE` pixels, and every model input and the thumbnail
are derived from it (:func:`load_working`). The reduction is an integer box (area) factor
chosen from the file alone (:func:`working_factor`), and JPEG files are decoded directly at
1/2, 1/4 or 1/8 scale by the decoder's DCT scaling when the factor allows; so the working image
is a deterministic function of the file, independent of which models are loaded, and training
(:func:`prepare_file`) and the app get bit-identical inputs. ``WORKING_SIDE`` is twice the
largest shipped model input (224), so a model input is still an area average over at least
2×2 source pixels, as it was when every input was resized from the full image, while a
2048×2048 radiograph is handled at 512×512 instead of in 16 MiB float32 copies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from desktop.engine.scan import Scan

#: Minimum shorter side of the working image every model input and thumbnail comes from:
#: twice the largest shipped model input. Changing it changes every model's inputs (retrain).
WORKING_SIDE: int = 448

Fit = Literal["stretch", "pad", "center_crop"]
Contrast = Literal["none", "window"]
#: Percentiles of the model-size grey image mapped to black and white by ``contrast: window``.
WINDOW_PERCENTILES: tuple[float, float] = (1.0, 99.0)
Resample = Literal["area", "bilinear", "bicubic", "lanczos", "nearest"]

_RESAMPLE: dict[str, Image.Resampling] = {
    "area": Image.Resampling.BOX,  # exact area averaging when shrinking: no aliasing
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "nearest": Image.Resampling.NEAREST,
}


@dataclass(frozen=True)
class PreprocessSpec:
    """Preprocessing parameters, as stored under ``preprocessing`` in a model manifest.

    The model input is ``clip(grey, 0, 1) * scale + offset`` after fitting, resizing and the
    optional contrast normalisation, repeated over ``channels``, in NHWC layout.

    ``contrast``: ``none`` (default; manifests without the key mean this) or ``window``:
    percentile windowing of the resized image, :data:`WINDOW_PERCENTILES` to black and white
    (:func:`window_contrast`). Why it is here and not in training: it removes exposure and
    scanner black/white-point differences between sites, and a normalisation that training
    and the app computed separately could differ.
    """

    height: int
    width: int
    channels: int = 1
    fit: Fit = "stretch"
    resample: Resample = "area"
    scale: float = 1.0
    offset: float = 0.0
    contrast: Contrast = "none"

    def __post_init__(self) -> None:
        if self.height < 8 or self.width < 8:
            raise ValueError(f"input size {self.height}x{self.width} is too small")
        if max(self.height, self.width) > WORKING_SIDE:
            raise ValueError(
                f"input size {self.height}x{self.width} is larger than the working image "
                f"({WORKING_SIDE} pixels): raise WORKING_SIDE in preprocess.py and retrain"
            )
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.fit not in ("stretch", "pad", "center_crop"):
            raise ValueError(f"unknown fit {self.fit!r}")
        if self.resample not in _RESAMPLE:
            raise ValueError(f"unknown resample filter {self.resample!r}")
        if self.contrast not in ("none", "window"):
            raise ValueError(f"unknown contrast normalisation {self.contrast!r}")

    @classmethod
    def from_manifest(cls, data: Mapping[str, Any]) -> PreprocessSpec:
        """Build from a manifest's ``preprocessing`` mapping (``size`` is ``[height, width]``)."""
        known = {"size", "channels", "fit", "resample", "scale", "offset", "contrast"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown preprocessing keys: {sorted(unknown)}")
        height, width = (int(v) for v in data["size"])
        return cls(
            height=height,
            width=width,
            channels=int(data.get("channels", 1)),
            fit=data.get("fit", "stretch"),
            resample=data.get("resample", "area"),
            scale=float(data.get("scale", 1.0)),
            offset=float(data.get("offset", 0.0)),
            contrast=data.get("contrast", "none"),
        )

    def to_manifest(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "size": [self.height, self.width],
            "channels": self.channels,
            "fit": self.fit,
            "resample": self.resample,
            "scale": self.scale,
            "offset": self.offset,
        }
        if self.contrast != "none":  # existing manifests stay byte-for-byte the same
            out["contrast"] = self.contrast
        return out

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)


def _fit_box(height: int, width: int, fit: Fit) -> tuple[int, int, int, int]:
    """The (top, left, side_h, side_w) window of the source that maps onto the model input.

    For ``pad`` the window extends beyond the image (negative top/left); for ``center_crop``
    it lies inside it; for ``stretch`` it is the whole image.
    """
    if fit == "stretch":
        return 0, 0, height, width
    side = max(height, width) if fit == "pad" else min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def _apply_fit(grey: np.ndarray, fit: Fit) -> np.ndarray:
    height, width = grey.shape
    top, left, side_h, side_w = _fit_box(height, width, fit)
    if fit == "stretch":
        return grey
    if fit == "center_crop":
        return grey[top : top + side_h, left : left + side_w]
    canvas = np.zeros((side_h, side_w), dtype=np.float32)
    canvas[-top : -top + height, -left : -left + width] = grey
    return canvas


def resize_grey(grey: np.ndarray, height: int, width: int, resample: Resample) -> np.ndarray:
    """Resize a float32 grey image with Pillow's float ('F' mode) resampler."""
    if grey.shape == (height, width):
        return grey.astype(np.float32, copy=True)
    return _resize_image(_float_image(grey), height, width, resample)


def _float_image(grey: np.ndarray) -> Image.Image:
    """A Pillow 'F' image of a float grey array (Pillow copies it: 'F' cannot share memory)."""
    return Image.fromarray(np.ascontiguousarray(grey, dtype=np.float32), mode="F")


def _resize_image(image: Image.Image, height: int, width: int, resample: Resample) -> np.ndarray:
    """:func:`resize_grey`'s resize of an image already converted by :func:`_float_image`."""
    resized = image.resize((width, height), _RESAMPLE[resample])
    return np.array(resized, dtype=np.float32)  # a writable copy: what follows works in place


def preprocess(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Turn a scan's display-ready grey pixels (H, W) in [0, 1] into one model input (h, w, c)."""
    return expand_channels(preprocess_plane(pixels, spec), spec.channels)


def preprocess_plane(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The model input's one grey plane (h, w), before it is repeated over ``channels``.

    The batch runner keeps planes, not (h, w, 3) inputs, for the scans waiting for inference
    (a third of the memory), and :func:`expand_channels` makes the input when a batch is
    stacked: the same values as :func:`preprocess`, bit for bit.
    """
    return preprocess_planes(pixels, (spec,))[spec]


def preprocess_planes(
    pixels: np.ndarray, specs: Sequence[PreprocessSpec], *, in_unit_range: bool = False
) -> dict[PreprocessSpec, np.ndarray]:
    """:func:`preprocess_plane` for several specs of one image, sharing the common work.

    The app needs three planes a scan (the shipped models' three input specs); the clipped
    grey image and its Pillow 'F' copy (a fresh 1 MiB buffer for a 512² working image, whose
    page faults cost more than the copy) are made once per fit, not once per spec, and the
    small per-spec steps work in place. Each plane is computed by exactly the operations of a
    lone :func:`preprocess_plane` call (which is this function with one spec), so training's
    inputs stay bit-identical (tests/test_training_parity.py).

    ``in_unit_range``: the caller knows every pixel is in [0, 1] (a working image of 8-bit
    levels, ``Scan.grey8 / 255``), so the range test, which could only pass, is skipped
    (~0.13 ms of a 512² image); the planes are the same either way.
    """
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {pixels.shape}")
    grey = pixels.astype(np.float32, copy=False)
    # Display-ready pixels are in [0, 1] already (scan.py): clip only when they are not
    # (a NaN fails both tests and is clipped, as before), which gives the same values.
    if not (in_unit_range or (grey.size and grey.min() >= 0.0 and grey.max() <= 1.0)):
        grey = np.clip(grey, 0.0, 1.0)
    fitted: dict[Fit, np.ndarray] = {}
    images: dict[Fit, Image.Image] = {}
    planes: dict[PreprocessSpec, np.ndarray] = {}
    for spec in specs:
        if spec in planes:
            continue
        if spec.fit not in fitted:
            fitted[spec.fit] = _apply_fit(grey, spec.fit)
        source = fitted[spec.fit]
        if source.shape == (spec.height, spec.width):
            plane = source.astype(np.float32, copy=True)
        else:
            if spec.fit not in images:
                images[spec.fit] = _float_image(source)
            plane = _resize_image(images[spec.fit], spec.height, spec.width, spec.resample)
        np.clip(plane, 0.0, 1.0, out=plane)  # bicubic/lanczos overshoot
        if spec.contrast == "window":
            plane = window_contrast(plane)
        if spec.scale != 1.0 or spec.offset != 0.0:
            np.multiply(plane, np.float32(spec.scale), out=plane)
            np.add(plane, np.float32(spec.offset), out=plane)
        planes[spec] = np.ascontiguousarray(plane, dtype=np.float32)
    return planes


def window_contrast(grey: np.ndarray) -> np.ndarray:
    """Map the image's :data:`WINDOW_PERCENTILES` to 0 and 1 (clipped): percentile windowing.

    Computed on the model-size image, so the same scan gives the same window at any source
    resolution; a flat image (no spread between the percentiles) is returned unchanged.
    """
    lo, hi = np.percentile(grey, WINDOW_PERCENTILES)
    if hi - lo < 1e-6:
        return grey
    out = (grey - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def expand_channels(planes: np.ndarray, channels: int) -> np.ndarray:
    """Planes (..., h, w) → inputs (..., h, w, channels), the grey plane repeated.

    ``np.stack`` of the plane with itself, the same array as ``np.repeat`` over a new last
    axis, copies whole planes instead of one 4-byte element at a time (3.5× faster: ~0.2
    instead of ~0.65 ms for four 224² scans, which every inference batch pays per model).
    """
    out = np.stack([planes] * channels, axis=-1)
    return np.ascontiguousarray(out, dtype=np.float32)


def working_factor(height: int, width: int, side: int = WORKING_SIDE) -> int:
    """The integer reduction from a ``height``×``width`` image to its working image.

    The largest factor that keeps the shorter side at least ``side`` pixels (1 for images
    already smaller). Integer factors make the reduction an exact block mean and depend on
    the image alone, never on the models loaded.
    """
    return max(1, min(height, width) // side)


def decode_working(path: Path, data: bytes, sha256: str) -> Scan:
    """Decode a file's bytes straight to its working image: what the batch runner calls.

    ``Scan.pixels`` is the reduced image; ``Scan.metadata`` keeps the original size. Raises
    :class:`~desktop.engine.errors.ScanError` as :func:`~desktop.engine.loading.decode_scan`.
    """
    from desktop.engine.loading import decode_scan

    return decode_scan(path, data, sha256, working_side=WORKING_SIDE)


def load_working(path: str | Path) -> Scan:
    """Read a file and decode it to its working image (:func:`decode_working`)."""
    from desktop.engine.loading import read_file

    path = Path(path)
    data, sha256 = read_file(path)
    return decode_working(path, data, sha256)


def prepare_file(path: str | Path, spec: PreprocessSpec) -> np.ndarray:
    """Load a file as the app does and preprocess it: what training feeds its models.

    The app's runner decodes with the same ``working_side`` and calls :func:`preprocess` on
    the same working image, so the two are bit-identical (tests/test_training_parity.py).
    """
    return preprocess(load_working(path).pixels, spec)


def activation_to_image(
    activation: np.ndarray, spec: PreprocessSpec, image_shape: tuple[int, int]
) -> np.ndarray:
    """Map a model's activation map back onto the original image grid.

    Returns float32 (H, W) in [0, 1]: the map is min-max normalised, resized bilinearly to
    the fitted window (its peak renormalised to 1), then the fit is undone (padding dropped,
    crop margins left at zero).
    """
    cam = np.asarray(activation, dtype=np.float32)
    cam = np.maximum(cam - float(cam.min()), 0.0)
    peak = float(cam.max())
    cam = cam / peak if peak > 0 else cam
    height, width = image_shape
    top, left, side_h, side_w = _fit_box(height, width, spec.fit)
    window = resize_grey(cam, side_h, side_w, "bilinear")
    top_value = float(window.max())
    if top_value > 0:
        window = window / top_value  # the hottest pixel is 1 after interpolation too
    if spec.fit == "stretch":
        return np.clip(window, 0.0, 1.0)
    out = np.zeros((height, width), dtype=np.float32)
    src_top, src_left = max(0, -top), max(0, -left)
    dst_top, dst_left = max(0, top), max(0, left)
    rows = min(side_h - src_top, height - dst_top)
    cols = min(side_w - src_left, width - dst_left)
    out[dst_top : dst_top + rows, dst_left : dst_left + cols] = window[
        src_top : src_top + rows, src_left : src_left + cols
    ]
    return np.clip(out, 0.0, 1.0)

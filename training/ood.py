"""Out-of-distribution check of the modality gate, and the offline OOD images that test it.

Method: Mahalanobis distance of the penultimate (GAP) features to the nearest class mean,
with one covariance shared by the classes (Lee et al., NeurIPS 2018, without input
perturbation). Stored as ``means`` (K, D) and ``chol`` (D, D) with ``chol @ chol.T`` the
precision matrix, so the graph only needs a matmul and a squared norm.

Why images are generated here rather than downloaded: the machines are offline. The OOD set
is photographs and a document scan shipped inside scikit-image (when installed), text pages
rendered with Pillow, blank/uniform/gradient/noise images — each saved as a PNG/JPEG and
read back through the app's loader, so the measurement covers the real path.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger(__name__)


def fit_mahalanobis(
    features: np.ndarray, labels: np.ndarray, n_classes: int, shrink: float = 1e-3
) -> dict[str, np.ndarray]:
    """Class means and the Cholesky factor of the shared (pooled, shrunk) precision."""
    feats = features.astype(np.float64)
    means = np.stack([feats[labels == k].mean(axis=0) for k in range(n_classes)])
    centred = feats - means[labels]
    cov = centred.T @ centred / len(feats)
    d = cov.shape[0]
    cov += shrink * np.trace(cov) / d * np.eye(d)
    precision = np.linalg.inv(cov)
    precision = (precision + precision.T) / 2
    chol = np.linalg.cholesky(precision)
    return {"means": means, "chol": chol}


def component_distances(features: np.ndarray, ood: dict[str, np.ndarray]) -> np.ndarray:
    """(N, K) Mahalanobis distances of each feature vector to each component mean."""
    z = features.astype(np.float64) @ ood["chol"]
    m = ood["means"] @ ood["chol"]
    return np.sqrt(((z[:, None, :] - m[None]) ** 2).sum(-1))


def mahalanobis_score(features: np.ndarray, ood: dict[str, np.ndarray]) -> np.ndarray:
    """Distance to the nearest component mean; with ``scale`` (K,), the smallest
    ``distance_k * scale_k``: each component measured in units of its own radius."""
    d = component_distances(features, ood)
    if "scale" in ood:
        return (d * ood["scale"][None, :]).min(axis=1)
    return d.min(axis=1)


def component_scales(distances: np.ndarray, components: np.ndarray, quantile: float) -> np.ndarray:
    """``1 / radius_k``: radius = the ``quantile`` of the distances of component k's own
    (validation) images to its mean.

    Why: the components differ in spread (Montgomery's chest X-rays, one scanner but few
    training images, lie far wider around their mean than Shenzhen's). With one threshold for
    all, the widest component sets it and images that are near no component but inside that
    radius of a tight one pass; in radius units every component keeps its own boundary.
    """
    k = distances.shape[1]
    radius = np.array(
        [
            np.quantile(distances[components == i, i], quantile, method="higher")
            if (components == i).any()
            else np.nan
            for i in range(k)
        ]
    )
    # a component without validation images (tiny data sets) gets the median radius
    radius[np.isnan(radius)] = np.nanmedian(radius) if np.isfinite(radius).any() else 1.0
    return 1.0 / radius


#: Added to the score of an image with no structure at all (pixel std 0): far above any
#: threshold, so blank and uniform images are always refused.
STD_PENALTY = 1000.0


#: Pixel standard deviation (of the [0, 1] grey input) below which an image has no anatomy.
#: MedNIST itself holds ~80 blank, all-black "HeadCT" slices (std 0); with a floor fitted as a
#: percentile they would make uniform black images look in-distribution, so the floor is a
#: fixed 1% of the grey range instead, and those blank slices are refused too (counted as
#: false refusals in the figures).
STD_FLOOR = 0.01


def std_floor(images: np.ndarray) -> float:
    """The structure floor; logs how many of ``images`` fall below it."""
    stds = images.reshape(len(images), -1).std(axis=1)
    log.info(
        "%d of %d training images have pixel std < %.3f (refused as blank)",
        int((stds < STD_FLOOR).sum()),
        len(stds),
        STD_FLOOR,
    )
    return STD_FLOOR


def structure_penalty(images: np.ndarray, floor: float) -> np.ndarray:
    """``STD_PENALTY * relu(1 - std / floor)``: 0 for any image with some contrast.

    Why: a uniform dark image lands near the (dark) background of the CT classes in feature
    space, so the Mahalanobis distance alone does not refuse it; an image without structure
    is never a scan we can screen.
    """
    x = images.reshape(len(images), -1).astype(np.float64)
    std = x.std(axis=1)
    return STD_PENALTY * np.maximum(1.0 - std / floor, 0.0)


def ood_score(features: np.ndarray, images: np.ndarray, ood: dict[str, np.ndarray]) -> np.ndarray:
    """What the exported ``ood_score`` computes: Mahalanobis distance + structure penalty."""
    score = mahalanobis_score(features, ood)
    if "std_floor" in ood:
        score = score + structure_penalty(images, float(ood["std_floor"]))
    return score


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    for candidate in (
        Path(__file__).resolve().parents[1] / "assets" / "fonts" / "DejaVuSans.ttf",
        Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
    ):
        if candidate.exists():
            return ImageFont.truetype(str(candidate), size)
    return ImageFont.load_default()


_TEXT = (
    "patient referral letter clinic date signature report laboratory result invoice total "
    "the of and to in is for with on as by this that be are was from at or an have"
)


SKIMAGE_PHOTOS = [
    "astronaut", "camera", "chelsea", "coffee", "rocket", "horse", "coins", "moon",
    "motorcycle_left", "hubble_deep_field", "clock_motion", "brick", "grass", "gravel",
    "color", "logo", "ihc", "retina", "cell",
]  # fmt: skip
SKIMAGE_DOCUMENTS = ["text", "page"]


def skimage_data_dir() -> Path | None:
    """The ``skimage/data`` folder of an installed scikit-image, found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "data"
    return folder if folder.is_dir() else None


def matplotlib_photos() -> list[Path]:
    """The photographs that ship inside matplotlib (``mpl-data/sample_data``).

    Why: they are photographs *other* than scikit-image's, so the gate's threshold rule can be
    checked on them (validation) while scikit-image's stay untouched for the test figures.
    """
    import importlib.util

    spec = importlib.util.find_spec("matplotlib")
    if spec is None or spec.origin is None:
        return []
    folder = Path(spec.origin).parent / "mpl-data" / "sample_data"
    names = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png")
    return [folder / n for n in names if (folder / n).is_file()]


def write_ood_images(
    folder: Path, seed: int = 7, photos_dir: Path | None = None, include_photos: bool = True
) -> dict[str, list[Path]]:
    """Write the generated OOD images to ``folder`` and list them with scikit-image's
    bundled photographs/documents (from ``photos_dir`` or an installed scikit-image; none
    when ``include_photos`` is false); returns category → files.

    Another ``seed`` gives other noise, gradients and text pages: the gate uses seed 8 for
    its validation OOD set and seed 7 (the figures in its card) for the test set."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out: dict[str, list[Path]] = {}

    def save(cat: str, name: str, img: Image.Image, fmt: str = "png") -> None:
        path = folder / f"{cat}_{name}.{fmt}"
        img.save(path)
        out.setdefault(cat, []).append(path)

    # blank and uniform images (incl. the extremes)
    for level in (0, 1, 32, 64, 128, 192, 255):
        save("uniform", f"{level:03d}", Image.new("L", (256, 256), level))
    for i in range(4):
        ramp = np.linspace(0, 255, 256, dtype=np.float32)
        arr = np.tile(ramp, (256, 1)) if i % 2 == 0 else np.tile(ramp[:, None], (1, 256))
        if i >= 2:
            arr = 255 - arr
        save("gradient", str(i), Image.fromarray(arr.astype(np.uint8)))
    for i in range(6):
        if i < 3:
            arr = rng.integers(0, 256, (256, 256))
        else:
            arr = np.clip(rng.normal(128, 40, (256, 256)), 0, 255)
        save("noise", str(i), Image.fromarray(arr.astype(np.uint8)))
    # rendered text pages (document scans without the scanner)
    for i in range(10):
        w, h = (850, 1100) if i % 2 == 0 else (1100, 850)
        page = Image.new("L", (w, h), 255 - int(rng.integers(0, 20)))
        draw = ImageDraw.Draw(page)
        size = int(rng.integers(14, 30))
        font = _font(size)
        y = 60
        if i % 3 == 0:
            draw.text((60, y), "CLINIC REPORT", fill=0, font=_font(size * 2))
            y += size * 3
        while y < h - 80:
            words = rng.choice(_TEXT.split(), int(rng.integers(6, 14)))
            draw.text((60, y), " ".join(words), fill=int(rng.integers(0, 60)), font=font)
            y += int(size * 1.6)
        save("text_page", str(i), page, "png" if i % 2 else "jpg")
    # natural photographs, microscopy, a fundus photo and document scans: the image files
    # that ship inside the scikit-image wheel (read as files, so no network and no import)
    if not include_photos:
        return out
    folder_sk = photos_dir or skimage_data_dir()
    if folder_sk is None:
        log.warning("scikit-image data not found: no photographs in the OOD set")
        return out
    for name in SKIMAGE_PHOTOS + SKIMAGE_DOCUMENTS:
        hits = sorted(folder_sk.glob(f"{name}.*"))
        if hits:
            cat = "document_scan" if name in SKIMAGE_DOCUMENTS else "photograph"
            out.setdefault(cat, []).append(hits[0])
    return out

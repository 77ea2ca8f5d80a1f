"""Training and the app feed a model identical inputs for one file (ARCHITECTURE.md, contract 1).

The training path is ``training.data.build_array`` (with and without its .npy cache); the
app path is the runner's: ``decode_working`` (the one reduced working image per scan) and
``Screener.prepare``'s ``preprocess`` with the spec read from the manifest. Checked for every
shipped model's spec and the seed-recipe specs, on real PNG, JPEG (grey stored as RGB) and
DICOM (MONOCHROME1) files, and on clinic-sized files that are reduced (a 2048² JPEG decoded by
DCT scaling, a 16-bit PNG, a JPEG 2000 DICOM). No TensorFlow here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from desktop.engine.loading import load_scan, read_file
from desktop.engine.manifest import read_manifest
from desktop.engine.preprocess import PreprocessSpec, decode_working, preprocess
from training import data as D

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "data"
FILES = sorted(
    p
    for sub in ("tb", "pneumonia", "mednist", "dicom")
    for p in (FIXTURES / sub).rglob("*")
    if p.is_file() and p.name != "RG3_J2KI.dcm"  # JPEG 2000 decoder is optional
)
J2K_DICOM = FIXTURES / "dicom" / "RG3_J2KI.dcm"

SPECS = {
    "mobilenet": PreprocessSpec(224, 224, 3, "stretch", "area", 2.0, -1.0),
    "modality": PreprocessSpec(64, 64, 1, "stretch", "area", 1.0, 0.0),
    "tb_scratch": PreprocessSpec(256, 256, 1, "stretch", "area", 1.0, 0.0),
}
# EfficientNet-Lite input scaling (x - 127) / 128 with the percentile-window contrast option
SPECS["lite_window_320"] = PreprocessSpec(
    320, 320, 3, "stretch", "area", 255 / 128, -127 / 128, contrast="window"
)
for manifest_path in sorted((REPO / "assets" / "models").glob("*.json")):
    SPECS[f"shipped:{manifest_path.stem}"] = read_manifest(manifest_path).preprocessing


def test_fixtures_present() -> None:
    assert len(FILES) >= 30, "tests/data fixtures are missing"
    assert any(p.suffix == ".dcm" for p in FILES)


def _app_input(path: Path, spec: PreprocessSpec) -> np.ndarray:
    """What the batch runner feeds the model: read, decode to the working image, preprocess."""
    data, sha = read_file(path)
    return preprocess(decode_working(path, data, sha).pixels, spec)


@pytest.fixture(scope="module")
def clinic_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Clinic-sized scans made from a real chest X-ray: these are reduced before preprocessing."""
    folder = tmp_path_factory.mktemp("clinic")
    src = sorted((FIXTURES / "tb").rglob("*.png"))[0]
    with Image.open(src) as image:
        big = image.convert("L").resize((2048, 1980), Image.Resampling.BICUBIC)
    big.save(folder / "chest.jpg", quality=92)
    big.convert("RGB").save(folder / "chest_rgb.jpg", quality=92)
    wide = (np.asarray(big, dtype=np.uint16) * 16 + 7).astype(np.uint16)  # 12-bit in 16-bit PNG
    Image.fromarray(wide).save(folder / "chest16.png")
    files = [folder / "chest.jpg", folder / "chest_rgb.jpg", folder / "chest16.png"]
    try:
        import pylibjpeg  # noqa: F401  (the JPEG 2000 decoder is optional)
    except ImportError:
        return files
    return [*files, J2K_DICOM]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_training_inputs_equal_app_inputs(name: str, tmp_path: Path, clinic_files) -> None:
    spec = SPECS[name]
    files = [*FILES, *clinic_files]
    app = np.stack([_app_input(p, spec) for p in files])
    fresh = D.build_array(files, spec, cache_dir=tmp_path)  # writes the cache
    cached = D.build_array(files, spec, cache_dir=tmp_path)  # reads it back
    for got in (fresh, cached):
        assert got.dtype == np.float32 and got.shape == app.shape
        assert np.array_equal(got, app), f"training input differs from app input ({name})"
    one = D.prepare_one(FILES[0], spec)
    assert np.array_equal(one, app[0])


def test_cache_key_changes_with_spec(tmp_path: Path) -> None:
    a = D.build_array(FILES[:2], SPECS["modality"], cache_dir=tmp_path)
    b = D.build_array(FILES[:2], PreprocessSpec(64, 64, 1, "stretch", "bilinear"), tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 2
    assert not np.array_equal(a, b)


def test_window_contrast_removes_exposure_differences() -> None:
    """The same scan at another exposure (black point, gain) gives nearly the same windowed
    input; without the option the inputs differ by about 5% of the range on average."""
    spec = SPECS["lite_window_320"]
    plain = PreprocessSpec(320, 320, 3, "stretch", "area", 255 / 128, -127 / 128)
    pixels = load_scan(FILES[0]).pixels
    other_site = np.clip(pixels * 0.7 + 0.12, 0.0, 1.0).astype(np.float32)
    windowed = preprocess(pixels, spec), preprocess(other_site, spec)
    raw = preprocess(pixels, plain), preprocess(other_site, plain)
    assert np.abs(windowed[0] - windowed[1]).max() < 1e-3
    assert np.abs(raw[0] - raw[1]).mean() > 0.05
    assert windowed[0].min() == pytest.approx(-127 / 128) and windowed[0].max() == 1.0


def test_contrast_key_is_optional_in_manifests() -> None:
    """Manifests written before the option (no ``contrast`` key) keep meaning "none", and a
    spec without it writes no key, so existing manifests are unchanged."""
    plain = PreprocessSpec.from_manifest({"size": [64, 64]})
    assert plain.contrast == "none" and "contrast" not in plain.to_manifest()
    spec = SPECS["lite_window_320"]
    assert PreprocessSpec.from_manifest(spec.to_manifest()) == spec
    with pytest.raises(ValueError, match="contrast"):
        PreprocessSpec(64, 64, contrast="equalise")  # type: ignore[arg-type]

"""Training and the app feed a model bit-identical inputs for the same file (contract 1).

The training path is ``training.data.build_array`` (with and without its .npy cache); the
app path is ``load_scan`` + ``preprocess`` with the spec read from the manifest. Checked for
every shipped model's spec and the seed-recipe specs, on real PNG, JPEG (grey stored as RGB)
and DICOM (MONOCHROME1) files. No TensorFlow here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from desktop.engine.loading import load_scan
from desktop.engine.manifest import read_manifest
from desktop.engine.preprocess import PreprocessSpec, preprocess
from training import data as D

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "data"
FILES = sorted(
    p
    for sub in ("tb", "pneumonia", "mednist", "dicom")
    for p in (FIXTURES / sub).rglob("*")
    if p.is_file() and p.name != "RG3_J2KI.dcm"  # JPEG 2000 decoder is optional
)

SPECS = {
    "mobilenet": PreprocessSpec(224, 224, 3, "stretch", "area", 2.0, -1.0),
    "modality": PreprocessSpec(64, 64, 1, "stretch", "area", 1.0, 0.0),
    "tb_scratch": PreprocessSpec(256, 256, 1, "stretch", "area", 1.0, 0.0),
}
for manifest_path in sorted((REPO / "assets" / "models").glob("*.json")):
    SPECS[f"shipped:{manifest_path.stem}"] = read_manifest(manifest_path).preprocessing


def test_fixtures_present() -> None:
    assert len(FILES) >= 30, "tests/data fixtures are missing"
    assert any(p.suffix == ".dcm" for p in FILES)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_training_inputs_equal_app_inputs(name: str, tmp_path: Path) -> None:
    spec = SPECS[name]
    app = np.stack([preprocess(load_scan(p).pixels, spec) for p in FILES])
    fresh = D.build_array(FILES, spec, cache_dir=tmp_path)  # writes the cache
    cached = D.build_array(FILES, spec, cache_dir=tmp_path)  # reads it back
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

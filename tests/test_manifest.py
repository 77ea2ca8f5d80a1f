"""Model manifests and the registry: validation, checksums, signatures, user models over
bundled ones (the attacks on real shipped packages are in test_trust.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from desktop.engine.errors import BatchError, ModelError
from desktop.engine.manifest import load_verified_model, read_manifest
from desktop.engine.registry import load_model_set
from desktop.engine.results import ThresholdChoice
from tests.model_factory import build_finding, build_model_set


def test_stand_in_manifests_verify(stand_in_models: Path):
    manifest = read_manifest(stand_in_models / "tb.json")
    assert manifest.positive_index == 1
    assert manifest.operating_point().name == "screening"
    assert manifest.operating_point("balanced").threshold == 0.5
    assert len(load_verified_model(manifest)) > 100
    assert manifest.key.startswith("tb@0.1.0#")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("labels"), "missing field 'labels'"),
        (lambda m: m.update(positive_label="cancer"), "positive_label 'cancer'"),
        (lambda m: m.update(schema_version=7), "schema_version 7"),
        (lambda m: m["operating_points"]["screening"].update(threshold=1.5), "outside [0, 1]"),
        (lambda m: m.update(sha256="abc"), "64 hex digits"),
        (lambda m: m["input"].update(shape=[None, 64, 64, 1]), "disagrees with preprocessing"),
        (lambda m: m.update(default_operating_point="fast"), "default_operating_point 'fast'"),
    ],
)
def test_invalid_manifests_are_refused_with_the_reason(stand_in_models, tmp_path, change, message):
    data = json.loads((stand_in_models / "tb.json").read_text())
    change(data)
    path = tmp_path / "tb.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ModelError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_manifest(path)


def test_tampered_model_file_is_refused(stand_in_models, tmp_path):
    shutil.copytree(stand_in_models, tmp_path / "m")
    (tmp_path / "m" / "tb.onnx").write_bytes(b"not the model")
    with pytest.raises(ModelError, match="does not match its manifest"):
        load_verified_model(read_manifest(tmp_path / "m" / "tb.json"))


def test_user_model_overrides_bundled_and_a_bad_one_falls_back(tmp_path):
    bundled = build_model_set(tmp_path / "bundled")
    user = tmp_path / "user"
    build_finding(user, "tb", "tuberculosis", version="2.0.0")
    models = load_model_set([bundled, user])
    assert models.findings["tb"].manifest.version == "2.0.0"
    (user / "tb.onnx").write_bytes(b"damaged download")
    models = load_model_set([bundled, user])
    assert models.findings["tb"].manifest.version == "0.1.0"
    assert any("does not match" in p for p in models.problems)


def test_no_gate_model_is_a_batch_error(tmp_path):
    build_finding(tmp_path, "tb", "tuberculosis")
    with pytest.raises(BatchError, match="modality"):
        load_model_set([tmp_path])


def test_threshold_choice():
    assert ThresholdChoice.parse("0.25").threshold == 0.25
    zero = ThresholdChoice.parse("-0")  # a typed "-0" is 0, never shown as "-0.000"
    assert str(zero.threshold) == "0.0" and f"{zero.threshold:.3f}" == "0.000"
    assert ThresholdChoice.parse("balanced").name == "balanced"
    assert ThresholdChoice.parse(None) == ThresholdChoice()
    with pytest.raises(ValueError):
        ThresholdChoice.parse("1.5")


def test_stand_in_without_its_signature_is_refused_naming_the_file(stand_in_models, tmp_path):
    shutil.copytree(stand_in_models, tmp_path / "m")
    (tmp_path / "m" / "pneumonia.sig").unlink()
    models = load_model_set([tmp_path / "m"])
    assert sorted(models.findings) == ["tb"]
    assert models.problems == [
        f"model package {tmp_path / 'm' / 'pneumonia.json'} is not signed (no pneumonia.sig "
        "beside it); only models signed by the MedScreen release key are used"
    ]


def test_a_manifest_that_has_no_canonical_form_is_invalid(stand_in_models, tmp_path):
    """NaN parses as JSON but cannot be signed or hashed canonically: refused as invalid."""
    data = json.loads((stand_in_models / "tb.json").read_text())
    data["metrics"] = {"test": {"auc": float("nan")}}
    path = tmp_path / "tb.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="not a valid model manifest"):
        read_manifest(path)


def test_oversized_or_non_utf8_manifest_is_refused_before_parsing(tmp_path):
    big = tmp_path / "big.json"
    big.write_bytes(b"{" + b" " * (4 * 1024 * 1024) + b"}")
    with pytest.raises(ModelError, match="larger than 4194304 bytes"):
        read_manifest(big)
    latin = tmp_path / "latin.json"
    latin.write_bytes('{"name": "caf\u00e9"}'.encode("latin-1"))
    with pytest.raises(ModelError, match="is not UTF-8 text"):
        read_manifest(latin)

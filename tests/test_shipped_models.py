"""The models shipped in assets/models: verified, loadable, and scoring real images as their
cards say.

No TensorFlow: only the engine (manifest, loader, preprocessing) and ONNX Runtime. The
fixture figures asserted here were measured on the shipped versions (see the numbers in each
test) with a margin; several fixtures were in the models' training splits, so these are
sanity checks of the shipped artefact and the app path, not performance estimates — those
are in the cards.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image, ImageDraw

from desktop.engine.manifest import ModelManifest, load_verified_model, read_manifest
from desktop.engine.preprocess import prepare_file

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "assets" / "models"
DATA = REPO / "tests" / "data"
MANIFESTS = sorted(MODELS.glob("*.json"))
MODALITY_LABELS = ("AbdomenCT", "BreastMRI", "CXR", "ChestCT", "Hand", "HeadCT")


def _load(model_id: str) -> tuple[ModelManifest, ort.InferenceSession]:
    manifest = read_manifest(MODELS / f"{model_id}.json")
    session = ort.InferenceSession(
        load_verified_model(manifest), providers=["CPUExecutionProvider"]
    )
    return manifest, session


def _run(model_id: str, files: list[Path]) -> tuple[ModelManifest, dict[str, np.ndarray]]:
    manifest, session = _load(model_id)
    x = np.stack([prepare_file(f, manifest.preprocessing) for f in files])
    names = [o.name for o in session.get_outputs()]
    return manifest, dict(zip(names, session.run(names, {"image": x}), strict=True))


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


def test_the_three_default_models_are_shipped() -> None:
    ids = {read_manifest(p).id for p in MANIFESTS}
    assert {"modality", "tb", "pneumonia"} <= ids


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_manifest_verifies_and_model_matches_it(path: Path) -> None:
    manifest = read_manifest(path)
    assert manifest.id == path.stem and manifest.file == f"{path.stem}.onnx"
    assert re.fullmatch(r"\d+\.\d+\.\d+", manifest.version)
    assert (MODELS / manifest.card).is_file(), "model card missing"
    size = (MODELS / manifest.file).stat().st_size
    assert size < 5_000_000, f"{manifest.file} is {size} bytes: too big to ship in git"
    _, session = _load(manifest.id)
    inputs = session.get_inputs()
    assert [i.name for i in inputs] == [manifest.input_name] == ["image"]
    assert not isinstance(inputs[0].shape[0], int), "batch dimension must be dynamic"
    assert tuple(inputs[0].shape[1:]) == manifest.preprocessing.input_shape
    outputs = {o.name for o in session.get_outputs()}
    assert manifest.probabilities_output in outputs
    raw = manifest.raw
    assert raw["calibration"]["method"] == "temperature"
    assert raw["export"]["parity"]["probabilities"] <= 1e-5
    assert raw["training"]["duration_s"] > 0 and raw["training"]["split"]["file"]
    if manifest.role == "finding":
        assert manifest.activation_output in outputs
        assert set(manifest.operating_points) >= {"screening", "balanced"}
        assert manifest.default_operating_point == "screening"
        screening = manifest.operating_point("screening")
        assert screening.sensitivity is not None and screening.sensitivity >= 0.90
        test = manifest.metrics["test"]
        assert 0.5 < test["auc"] <= 1.0 and len(test["auc_ci95"]) == 2
    elif manifest.role == "modality":  # patient_group: tests/test_shipped_gate_agegroup.py
        assert manifest.labels == MODALITY_LABELS
        assert manifest.gate is not None and manifest.gate.chest_label == "CXR"
        assert manifest.ood is not None and manifest.ood.output in outputs


@pytest.mark.parametrize("model_id", ["tb", "pneumonia", "modality"])
def test_batch_dimension_is_really_dynamic(model_id: str) -> None:
    files = _files(DATA / "tb" / "tuberculosis")[:3]
    _, batch = _run(model_id, files)
    for i, f in enumerate(files):
        _, single = _run(model_id, [f])
        for name, value in single.items():
            np.testing.assert_allclose(value[0], batch[name][i], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(batch["probabilities"].sum(axis=1), 1.0, atol=1e-5)


def test_modality_names_every_mednist_fixture() -> None:
    for label in MODALITY_LABELS:
        manifest, out = _run("modality", _files(DATA / "mednist" / label))
        predicted = [manifest.labels[i] for i in out["probabilities"].argmax(axis=1)]
        assert predicted == [label] * len(predicted)
        assert np.all(out["ood_score"] <= manifest.ood.threshold)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "folder", ["tb/normal", "tb/tuberculosis", "pneumonia/normal", "pneumonia/pneumonia", "dicom"]
)
def test_modality_passes_chest_xrays_through_the_gate(folder: str) -> None:
    files = [f for f in _files(DATA / folder) if f.name != "RG3_J2KI.dcm"]  # tibia, not chest
    manifest, out = _run("modality", files)
    cxr = manifest.labels.index("CXR")
    assert np.all(out["probabilities"].argmax(axis=1) == cxr)
    assert np.all(out["probabilities"][:, cxr] >= manifest.gate.min_probability)  # type: ignore[union-attr]
    assert np.all(out["ood_score"] <= manifest.ood.threshold)  # type: ignore[union-attr]


def _ood_images(tmp_path: Path) -> list[Path]:
    paths = []
    for level in (0, 128, 255):
        p = tmp_path / f"uniform_{level}.png"
        Image.new("L", (300, 300), level).save(p)
        paths.append(p)
    page = Image.new("L", (850, 1100), 250)
    draw = ImageDraw.Draw(page)
    for row in range(40):
        draw.text((60, 60 + 24 * row), "Referral letter: patient seen in clinic today " * 2, 0)
    paths.append(tmp_path / "page.png")
    page.save(paths[-1])
    rng = np.random.default_rng(0)
    paths.append(tmp_path / "noise.png")
    Image.fromarray(rng.integers(0, 256, (256, 256), dtype=np.uint8)).save(paths[-1])
    return paths


def test_modality_refuses_blank_text_and_noise_images(tmp_path: Path) -> None:
    manifest, out = _run("modality", _ood_images(tmp_path))
    assert manifest.ood is not None and manifest.gate is not None
    # blank images by the OOD check itself; every image by the gate (OOD, or not called CXR:
    # modality 2.0.0 calls the uniform-noise image ChestCT at an OOD score just under 1.03)
    assert np.all(out["ood_score"][:3] > manifest.ood.threshold), out["ood_score"]
    cxr = manifest.labels.index(manifest.gate.chest_label)
    passed = (out["ood_score"] <= manifest.ood.threshold) & (
        out["probabilities"].argmax(axis=1) == cxr
    )
    assert not passed.any(), (out["ood_score"], out["probabilities"].argmax(axis=1))


# Measured on the shipped 2.0.0 models (mean p(positive) over the six fixtures of each class):
# tb normal 0.099, tuberculosis 0.664 (difference 0.565; lowest TB fixture 0.059);
# pneumonia normal 0.050, pneumonia 0.802 (difference 0.752). Several fixtures are in the
# training splits: a check of the artefact and the app path, not a performance figure.
@pytest.mark.parametrize(
    ("model_id", "negative", "positive", "margin"),
    [
        ("tb", "tb/normal", "tb/tuberculosis", 0.35),
        ("pneumonia", "pneumonia/normal", "pneumonia/pneumonia", 0.6),
    ],
)
def test_finding_models_score_fixture_positives_above_negatives(
    model_id: str, negative: str, positive: str, margin: float
) -> None:
    _, neg = _run(model_id, _files(DATA / negative))
    _, pos = _run(model_id, _files(DATA / positive))
    p_neg, p_pos = neg["probabilities"][:, 1], pos["probabilities"][:, 1]
    assert p_pos.mean() - p_neg.mean() > margin, (p_pos, p_neg)
    for out in (neg, pos):
        cam = out["activation_map"]
        assert cam.ndim == 3 and cam.shape[0] == len(out["probabilities"])
        assert np.isfinite(cam).all() and cam.std() > 0


SAMPLES = REPO / "assets" / "samples"


@pytest.mark.parametrize("model_id", ["tb", "pneumonia"])
def test_finding_manifests_state_scope_targets_and_validation_designs(model_id: str) -> None:
    """The 2.x cards' material is in the manifest: who the model is for (``scope``, read by
    the engine), what it must not be used for, its targets met or missed, and the designs."""
    raw = read_manifest(MODELS / f"{model_id}.json").raw
    assert raw["version"].split(".")[0] == "2"
    scope = raw["scope"]
    assert set(scope) == {"age_years", "views", "summary"}
    lo, hi = scope["age_years"]
    assert lo is None or isinstance(lo, int)
    assert hi is None or (isinstance(hi, int) and hi > (lo or 0))
    assert scope["views"] and set(scope["views"]) <= {"PA", "AP"} and len(scope["summary"]) > 20
    assert len(raw["not_for"]) >= 3
    assert raw["targets"] and all(
        {"target", "measured", "met", "gap"} <= set(t) for t in raw["targets"]
    )
    assert "validation" in raw["comparison"]["selection"]
    m = raw["metrics"]
    # pneumonia 2.1: Shenzhen normal films are a third, validation/test-only source
    assert len(m["test"]["by_source"]) == (2 if model_id == "tb" else 3)
    for s in m["test"]["by_source"].values():
        assert len(s["auc_ci95"]) == 2
    if model_id == "tb":
        assert scope["views"] == ["PA"] and lo == 18
        assert len(m["leave_one_source_out"]) == 2
        ext = m["external"]["nih_no_finding_adults"]["flag_rate"]["screening"]
        assert ext["n"] == 428 and len(ext["ci95"]) == 2
    else:
        assert set(scope["views"]) == {"PA", "AP"} and lo == 1
        assert "NIH films of ages 7-17" in scope["summary"]  # written from the split
        subgroups = {"age=adult (NIH)", "age=child (Kermany)", "view=PA (NIH adults)"}
        assert subgroups <= set(m["test"]["subgroups"])
        assert m["healthy_adults"]["screening"]["all"]["n"] > 250
        # a screening point per patient group, each chosen on its own validation images
        groups = raw["operating_points"]["screening"]["by_group"]
        assert set(groups) == {"adult", "child"} and set(m["test"]["by_group"]) == set(groups)
        assert groups["child"]["n"] + groups["adult"]["n"] == m["validation"]["n"]


# Measured on the 2.0.0 models (p(positive) / screening threshold): tb: Montgomery normal
# sample 0.218 / 0.224, the adult CR 0.044. Pneumonia 2.1.0 still flags both healthy adult
# samples at its adult point (Montgomery normal 0.879, adult CR 0.783, adult threshold
# 0.694): it flags 32.5% of the Montgomery normal films it never saw, see its card; a known
# failure, not asserted here.
@pytest.mark.parametrize(
    ("model_id", "samples"),
    [("tb", ["tb_negative_MCUCXR_0015_0.png", "chest_CR-MONO1-10.dcm"])],
)
def test_demo_healthy_adult_samples_are_not_flagged(model_id: str, samples: list[str]) -> None:
    manifest, out = _run(model_id, [SAMPLES / s for s in samples])
    threshold = manifest.operating_point("screening").threshold
    assert np.all(out["probabilities"][:, 1] < threshold), out["probabilities"][:, 1]


def test_demo_positive_samples_are_flagged() -> None:
    for model_id, sample in (
        ("tb", "tb_positive_CHNCXR_0336_1.png"),
        ("pneumonia", "pneumonia_person1011_bacteria_2942.jpeg"),
    ):
        manifest, out = _run(model_id, [SAMPLES / sample])
        point = manifest.operating_point("screening").for_group("child")  # Kermany: a child
        assert out["probabilities"][0, 1] >= point.threshold

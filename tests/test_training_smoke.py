"""Smoke runs of the three training commands on the real fixture images, through export.

Each run trains one epoch on a few dozen real images (tests/data), exports to ONNX, checks
Keras vs ONNX Runtime parity (the exporter raises above 1e-5) and that the engine accepts the
manifest and the model file. The figures are meaningless; the plumbing is what is tested.
These are the only tests that import TensorFlow.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="training extra (tensorflow-cpu) not installed")
pytest.importorskip("tf2onnx", reason="training extra (tf2onnx) not installed")

import onnxruntime as ort

from desktop.engine.manifest import load_verified_model, read_manifest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "data"
WEIGHTS = REPO.parent / "shared" / "data" / "weights" / "mobilenet_2_5_224_tf_no_top.h5"
SMOKE = ["--epochs", "1", "--fractions", "0.34,0.33,0.33", "--batch", "8"]

pytestmark = pytest.mark.slow


def _check_export(run: Path, out: Path, model_id: str) -> dict:
    from export.export_model import export_run

    manifest = export_run(run, out, card=True)
    checked = read_manifest(out / f"{model_id}.json")
    data = load_verified_model(checked)
    assert manifest["export"]["parity"]["probabilities"] <= 1e-5
    assert (out / f"{model_id}.md").read_text().startswith("# ")
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["image"]
    assert sess.get_inputs()[0].shape[0] == "N"
    x = np.load(run / "parity_inputs.npy")[:3]
    outs = dict(
        zip([o.name for o in sess.get_outputs()], sess.run(None, {"image": x}), strict=True)
    )
    probs = outs["probabilities"]
    assert probs.shape == (3, len(checked.labels))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    return outs


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _weights() -> list[str]:
    return ["--weights", str(WEIGHTS) if WEIGHTS.exists() else "none"]


def test_tb_smoke(tmp_path: Path, cache: Path) -> None:
    from training import train_tb

    run = tmp_path / "tb"
    argv = ["--data", str(FIXTURES / "tb"), "--out", str(run), "--cache", str(cache)]
    assert train_tb.main(argv + SMOKE + _weights() + ["--recipe", "mobilenet"]) == 0
    info = json.loads((run / "run.json").read_text())
    assert set(info["metrics"]["test"]["by_source"]) == {"shenzhen", "montgomery"}
    assert (run / "split.csv").exists()
    outs = _check_export(run, tmp_path / "models", "tb")
    assert outs["activation_map"].shape == (3, 7, 7)
    # the card states the rule and the limitations the run recorded, no sentence of its own
    from training.evaluate import OPERATING_RULE

    card = (tmp_path / "models" / "tb.md").read_text()
    assert info["operating_rule"] == OPERATING_RULE and OPERATING_RULE in card
    assert all(f"- {x}" in card for x in info["limitations"])
    assert "The network learnt from these few hundred images only" in card


def test_pneumonia_smoke(tmp_path: Path, cache: Path) -> None:
    from training import train_pneumonia

    run = tmp_path / "pneumonia"
    argv = ["--data", str(FIXTURES / "pneumonia"), "--out", str(run), "--cache", str(cache)]
    assert train_pneumonia.main(argv + SMOKE + _weights() + ["--recipe", "mobilenet"]) == 0
    groups: dict[str, set[str]] = {}
    for line in (run / "split.csv").read_text().splitlines()[1:]:
        _file, _l, _n, group, _s, split = line.split(",")
        groups.setdefault(group, set()).add(split)
    assert all(len(s) == 1 for s in groups.values()), "a patient straddles two splits"
    outs = _check_export(run, tmp_path / "models", "pneumonia")
    assert outs["activation_map"].shape == (3, 7, 7)


LITE0 = REPO.parent / "shared" / "data" / "weights" / "efficientnet_lite0_imagenet_f16.npz"


@pytest.mark.skipif(not LITE0.exists(), reason="EfficientNet-Lite0 weights not available")
def test_tb_transfer_smoke(tmp_path: Path, cache: Path) -> None:
    """The 2.x recipe end to end on the fixtures: features, head, designs, export, card."""
    from training import train_tb

    run = tmp_path / "tb"
    argv = ["--data", str(FIXTURES / "tb"), "--out", str(run), "--cache", str(cache)]
    argv += ["--fractions", "0.34,0.33,0.33", "--backbone", "lite0@96", "--views", "2"]
    assert train_tb.main(argv) == 0
    info = json.loads((run / "run.json").read_text())
    assert set(info["metrics"]["leave_one_source_out"]) == {
        "train montgomery → test shenzhen",
        "train shenzhen → test montgomery",
    }
    assert info["scope"]["views"] == ["PA"] and info["comparison"]["pool"] == "sqrt"
    assert {t["target"][:20] for t in info["targets"]} >= {"pooled test split, s"}
    outs = _check_export(run, tmp_path / "models", "tb")
    assert outs["activation_map"].shape == (3, 3, 3)  # 96 / 32
    manifest = read_manifest(tmp_path / "models" / "tb.json")
    assert manifest.raw["scope"] == info["scope"]
    assert manifest.raw["export"]["parity"]["run_scores"] <= 1e-4
    card = (tmp_path / "models" / "tb.md").read_text()
    for heading in ("## Must not be used for", "## Targets", "## Leave one source out"):
        assert heading in card


def test_modality_smoke(tmp_path: Path, cache: Path) -> None:
    from training import train_modality

    run = tmp_path / "modality"
    argv = [
        "--data", str(FIXTURES / "mednist"),
        "--tb-data", str(FIXTURES / "tb"),
        "--pneumonia-data", str(FIXTURES / "pneumonia"),
        "--out", str(run), "--cache", str(cache),
    ]  # fmt: skip
    # chest X-ray OOD components per source and finding (modality 2.1.0's design)
    assert train_modality.main(argv + SMOKE + ["--cxr-components", "source_label"]) == 0
    components = json.loads((run / "run.json").read_text())["metrics"]["ood"]["components"]
    assert any(c.endswith("/finding") for c in components)
    assert any(c.endswith("/normal") for c in components)
    outs = _check_export(run, tmp_path / "models", "modality")
    manifest = read_manifest(tmp_path / "models" / "modality.json")
    assert manifest.gate is not None and manifest.gate.chest_label == "CXR"
    assert manifest.ood is not None and manifest.ood.output == "ood_score"
    assert outs["ood_score"].shape == (3,)


def _loso_run(tmp_path: Path, cache: Path, name: str, recipe: list[str]) -> dict:
    """A TB candidate recipe on the fixtures (no model written): its leave-one-source-out and
    cross-source validation figures, the two designs candidates are judged by."""
    from training import train_tb

    run = tmp_path / name
    argv = ["--data", str(FIXTURES / "tb"), "--out", str(run), "--cache", str(cache)]
    argv += ["--fractions", "0.34,0.33,0.33", "--no-model", *recipe]
    assert train_tb.main(argv) == 0
    info = json.loads((run / "run.json").read_text())
    with (run / "split.csv").open(newline="") as fh:
        split = list(csv.DictReader(fh))
    n_by_source = Counter(row["source"] for row in split)
    val_by_source = Counter(row["source"] for row in split if row["split"] == "val")
    loso = info["metrics"]["leave_one_source_out"]
    cross = info["metrics"]["cross_source_validation"]
    keys = {"train montgomery → test shenzhen", "train shenzhen → test montgomery"}
    assert set(loso) == keys and set(cross) == keys | {"mean"}
    for key in keys:
        held_out = key.rsplit(" ", 1)[1]
        assert loso[key]["n"] == n_by_source[held_out]
        assert cross[key]["n"] == val_by_source[held_out]
        assert 0.0 <= loso[key]["auc"] <= 1.0 and 0.0 <= cross[key]["auc_linear_probe"] <= 1.0
    assert cross["mean"]["auc"] == pytest.approx(np.mean([cross[k]["auc"] for k in keys]))
    return info


@pytest.mark.skipif(not LITE0.exists(), reason="EfficientNet-Lite0 weights not available")
def test_tb_ensemble_loso_smoke(tmp_path: Path, cache: Path) -> None:
    """Two frozen branches, one with test-time views, through both validation designs."""
    info = _loso_run(
        tmp_path,
        cache,
        "ens",
        ["--branch", "mobilenet025@96:mean:2:tta", "--branch", "lite0@96:sqrt:2"]
        + ["--tta-crops", "86"],
    )
    figures = info["metrics"]["leave_one_source_out"]["train shenzhen → test montgomery"]
    assert len(figures["l2_branches"]) == 2


def test_tb_finetune_loso_smoke(tmp_path: Path, cache: Path) -> None:
    """LP-FT of the last MobileNet block through both validation designs."""
    info = _loso_run(
        tmp_path,
        cache,
        "ft",
        ["--backbone", "mobilenet025@96", "--views", "2", "--finetune", "1"]
        + ["--ft-views", "2", "--ft-epochs", "1", "--ft-batch", "8"],
    )
    figures = info["metrics"]["leave_one_source_out"]["train shenzhen → test montgomery"]
    assert figures["best_epoch"] == 1

"""Smoke run of the child/adult training command on the real fixture images, through export.

Kermany fixtures are the children, NLM fixtures the adults (no NIH folder: the command then
trains without NIH, as it says). The figures are meaningless on 24 images; what is tested is
the plumbing: splits by patient, the frozen-feature head, the leave-out designs, the export
with its parity check, a manifest the engine reads as a patient-group model, and the card.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="training extra (tensorflow-cpu) not installed")
pytest.importorskip("tf2onnx", reason="training extra (tf2onnx) not installed")

from desktop.engine.manifest import load_verified_model, read_manifest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "data"

pytestmark = pytest.mark.slow


def test_agegroup_smoke(tmp_path: Path) -> None:
    from export.export_model import export_run
    from training import train_agegroup

    run = tmp_path / "agegroup"
    argv = [
        "--data", str(FIXTURES), "--tb-data", str(FIXTURES / "tb"),
        "--pneumonia-data", str(FIXTURES / "pneumonia"), "--keep-fixtures",
        "--fractions", "0.5,0.25,0.25", "--recipes", "pixels32_source,pixels32_grey224",
        "--aug-copies", "1",
        "--out", str(run), "--cache", str(tmp_path / "cache"),
    ]  # fmt: skip
    assert train_agegroup.main(argv) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["role"] == "patient_group" and info["labels"] == ["adult", "child"]
    assert set(info["metrics"]["leave_out"]) >= {"without_shenzhen", "without_montgomery"}
    # the default threshold rule since 1.2.0, recorded in the run; the other one reported
    assert info["version"] == "1.2.0" and info["training"]["threshold_rule"] == "adults-first"
    assert info["metrics"]["threshold_rule"]["rule"] == "adults-first"
    alternative = info["metrics"]["alternative"]
    assert alternative["threshold_rule"] == "worst-cell"
    assert set(alternative["test_cells"]) == set(info["metrics"]["test"]["cells"])
    groups: dict[str, set[str]] = {}
    for line in (run / "split.csv").read_text().splitlines()[1:]:
        _file, _label, _name, group, _source, split = line.split(",")
        groups.setdefault(group, set()).add(split)
    assert all(len(s) == 1 for s in groups.values()), "a patient straddles two splits"

    manifest = export_run(run, tmp_path / "models", card=True)
    checked = read_manifest(tmp_path / "models" / "agegroup.json")
    assert checked.role == "patient_group" and checked.positive_label == "child"
    assert checked.operating_point().threshold == pytest.approx(info["metrics"]["threshold"])
    assert manifest["patient_group"]["adult_age_years"] == 18
    assert len(load_verified_model(checked)) > 0
    assert manifest["export"]["parity"]["probabilities"] <= 1e-5
    card = (tmp_path / "models" / "agegroup.md").read_text()
    assert "Leave-out designs" in card and "must not be used" in card
    assert "Threshold rule `adults-first`" in card and "the `worst-cell` rule" in card
    x = np.load(run / "parity_inputs.npy")
    assert x.shape[1:] == checked.preprocessing.input_shape

"""Model cards are written from the manifest and the run record only (issue 11, "honest
cards"): the limitations come from the training script's own figures, not from sentences kept
per model in the card generator, and a card that would state none is refused."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from export.model_card import CardError, write_card
from training import train_agegroup, train_modality

MODELS = Path(__file__).resolve().parents[1] / "assets" / "models"


def _shipped(model_id: str) -> dict[str, Any]:
    return json.loads((MODELS / f"{model_id}.json").read_text(encoding="utf-8"))


def _card(manifest: dict[str, Any], record: dict[str, Any], tmp_path: Path) -> str:
    run, out = tmp_path / "run", tmp_path / "out"
    run.mkdir()
    out.mkdir()
    (run / "run.json").write_text(json.dumps(record), encoding="utf-8")
    return write_card(manifest, run, out).read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "model_id, limitations",
    [("modality", train_modality.limitations), ("agegroup", train_agegroup.limitations)],
)
def test_card_limitations_come_from_the_run_record(model_id, limitations, tmp_path) -> None:
    manifest = _shipped(model_id)
    manifest.pop("limitations", None)  # the run record's then speak (runs exported before)
    written = limitations(manifest["metrics"])
    card = _card(manifest, {"limitations": written}, tmp_path)
    section = card.split("## Limitations", 1)[1]
    assert [line[2:] for line in section.splitlines() if line.startswith("- ")] == written
    assert "2 cores" not in card  # the machine is the run record's, never the generator's
    assert manifest["training"]["machine"] in card


def test_a_card_without_limitations_is_refused(tmp_path) -> None:
    with pytest.raises(CardError, match="limitations"):
        _card(_shipped("agegroup"), {}, tmp_path)


def test_the_manifests_limitations_win_over_the_run_records(tmp_path) -> None:
    manifest = _shipped("modality") | {"limitations": ["Only from the manifest."]}
    card = _card(manifest, {"limitations": ["From the run record."]}, tmp_path)
    assert "- Only from the manifest." in card
    assert "From the run record." not in card


def test_agegroup_limitations_follow_the_runs_figures() -> None:
    metrics = _shipped("agegroup")["metrics"]
    why = [x for x in train_agegroup.limitations(metrics) if x.startswith("Why the target")]
    # the shipped 1.2.0 run: 26 + 45 + 24 NIH under-18s, 56 of 95 placed correctly
    assert len(why) == 1
    assert "69 of NIH's 95 under-18s are 12-17" in why[0]
    assert "children 16-17 years 7/24" in why[0]
    assert "adults 18-25 years 62/70" in why[0]

    met = copy.deepcopy(metrics)  # a run that meets the target at NIH says nothing of a miss
    met["nih_cv"]["cells"]["nih/child"]["rate"] = 0.96
    assert not [x for x in train_agegroup.limitations(met) if x.startswith("Why the target")]


def test_modality_names_its_smallest_validation_source() -> None:
    metrics = _shipped("modality")["metrics"]
    text = " ".join(train_modality.limitations(metrics))
    assert "Montgomery's validation split is small (20 images)" in text
    assert "64x64 input" in text

    met = copy.deepcopy(metrics)
    for cell in met["gate_acceptance"]["validation"].values():
        cell["n"] = max(cell["n"], 60)
    assert "is small" not in " ".join(train_modality.limitations(met))

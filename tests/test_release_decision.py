"""A release decision recorded in a run record (``training.release``) and shown by the card.

The shipped figures are the shipped pneumonia manifest's own (2.1.0); the candidate's are that
record with the healthy-adult counts 2.2.0 recorded on the held-out set (101/269 flagged,
Montgomery 47/80), so the side-by-side table is checked on real numbers.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from export.finding_card import _comparison_section, _release_section, comparison_rows
from training.evaluate import proportion_ci
from training.release import record_decision

MANIFEST = Path(__file__).resolve().parents[1] / "assets" / "models" / "pneumonia.json"
RULE = "pre-registered: adult validation AUC >= 0.848; the highest among passers"


def _runs(tmp_path: Path) -> tuple[Path, Path]:
    shipped = json.loads(MANIFEST.read_text())
    cand = copy.deepcopy(shipped)
    cand["version"] = "2.2.0"
    cand["comparison"]["selection"] = RULE + ". Winner: this run (adult validation AUC 0.856)"
    for part, k, n in (("nlm_normal", 47, 80), ("all", 101, 269)):
        lo, hi = proportion_ci(k, n)
        cand["metrics"]["healthy_adults"]["screening"][part] = {
            "n": n,
            "k": k,
            "rate": k / n,
            "ci95": [lo, hi],
        }
    folders = []
    for name, info in (("pneumonia", shipped), ("pneumonia_cmp_candidate", cand)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(json.dumps(info))
        folders.append(tmp_path / name)
    return folders[0], folders[1]


def test_a_veto_after_held_out_figures_is_called_that_with_both_models_figures(
    tmp_path: Path,
) -> None:
    run, cand = _runs(tmp_path)
    record_decision(
        cand,
        "withheld",
        after_held_out=True,
        reason="flags more healthy adults at the unseen site",
        cost="the held-out set has influenced a release decision once",
        date="2026-12-01 22:26 UTC",
        verdict_marker="Winner:",
    )
    rec = json.loads((cand / "run.json").read_text())["comparison"]
    # the judgement moved out of the rule, word for word
    assert rec["selection"] == RULE
    assert rec["verdict"] == "Winner: this run (adult validation AUC 0.856)"
    assert rec["release"]["decision"] == "withheld" and rec["release"]["after_held_out"]

    rows = comparison_rows(run)
    lines = _release_section(rows, "2.1.0")
    text = "\n".join(lines)
    assert lines[0] == "## Release decisions"
    assert "**withheld** (2026-12-01 22:26 UTC), decided after its held-out figures" in text
    assert "not a choice by the validation rule" in text
    assert "What it cost: the held-out set has influenced a release decision once" in text
    row = next(x for x in lines if x.startswith("| healthy adults flagged (adult point), all |"))
    assert "0.275 (74/269;" in row.split("|")[2] and "0.375 (101/269;" in row.split("|")[3]
    row = next(x for x in lines if "healthy adults flagged (adult point), nlm_normal" in x)
    assert "(26/80;" in row and "(47/80;" in row
    # a source without positives has no AUC in either run: no empty row
    assert not any("source shenzhen" in x for x in lines)
    # the comparison section no longer claims held-out figures never decided anything
    comp = "\n".join(_comparison_section(run, "2.1.0"))
    assert "is under Release decisions" in comp
    assert "`pneumonia_cmp_candidate`: chosen, or judged against the shipped run" in comp
    assert "- `pneumonia_cmp_candidate`: Winner: this run" in comp


def test_without_a_decision_the_card_has_no_section_and_no_caveat(tmp_path: Path) -> None:
    run, _ = _runs(tmp_path)
    rows = comparison_rows(run)
    assert _release_section(rows, "2.1.0") == []
    comp = "\n".join(_comparison_section(run, "2.1.0"))
    assert "Release decisions" not in comp
    assert "never used to choose (shipped: `pneumonia`, version 2.1.0)." in comp


def test_a_decision_needs_a_known_word_a_reason_and_a_marker_that_is_there(
    tmp_path: Path,
) -> None:
    _, cand = _runs(tmp_path)
    with pytest.raises(ValueError, match="decision must be one of"):
        record_decision(cand, "shelved", after_held_out=True, reason="x")
    with pytest.raises(ValueError, match="needs its reason"):
        record_decision(cand, "withheld", after_held_out=True, reason="  ")
    with pytest.raises(ValueError, match="'Verdict:' not found"):
        record_decision(
            cand, "withheld", after_held_out=False, reason="x", verdict_marker="Verdict:"
        )
    assert "release" not in json.loads((cand / "run.json").read_text())["comparison"]


def test_a_held_out_gate_stated_in_advance_is_called_a_gate(tmp_path: Path) -> None:
    """A candidate judged by a rule whose held-out release gate was written before the run:
    the card says the held-out set was used as a gate, not that a veto came after the fact."""
    run, cand = _runs(tmp_path)
    with pytest.raises(ValueError, match="after the held-out figures are read"):
        record_decision(cand, "withheld", after_held_out=False, reason="x", gate_stated=True)
    record_decision(
        cand,
        "withheld",
        after_held_out=True,
        gate_stated=True,
        reason="fails the gate: 101/269 healthy adults flagged, more than 74/269",
        date="2026-12-01 23:00 UTC",
    )
    rec = json.loads((cand / "run.json").read_text())["comparison"]["release"]
    assert rec["gate_stated_in_advance"] and rec["after_held_out"]
    text = "\n".join(_release_section(comparison_rows(run), "2.1.0"))
    assert "held-out release gate both stated before the run was made" in text
    assert "no longer a clean estimate" in text
    assert "not a choice by the validation rule" not in text
    assert "(101/269;" in text and "(74/269;" in text
    # a run with field-of-view views says so in the comparison table's views column
    info = json.loads((cand / "run.json").read_text())
    info["comparison"]["fov_views"] = 2
    (cand / "run.json").write_text(json.dumps(info))
    comp = _comparison_section(run, "2.1.0")
    row = next(x for x in comp if x.startswith("| pneumonia_cmp_candidate |"))
    assert row.split(" | ")[4] == "1 + 2 FOV"

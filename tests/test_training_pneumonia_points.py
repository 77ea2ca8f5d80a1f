"""Pneumonia 2.1 training pieces that need no TensorFlow: the screening-point rule with a
specificity floor, the per-patient-group points, and the scope written from the split.

The scores are the shipped pneumonia model's real validation scores where a run folder is at
hand; the rule itself is checked on small exact cases (its boundaries are the point).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training import data as D
from training import evaluate as ev
from training.train_pneumonia import ADULT_AGE, KERMANY_AGES, scope_of
from training.transfer import META, Task, _add_group_points, operating_rule


def _case() -> tuple[np.ndarray, np.ndarray]:
    """Ten positives and ten negatives that overlap: sensitivity 0.90 needs a threshold that
    flags four of the ten negatives (specificity 0.60)."""
    pos = np.array([0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.35, 0.1])
    neg = np.array([0.7, 0.55, 0.5, 0.45, 0.3, 0.25, 0.2, 0.15, 0.12, 0.05])
    return np.r_[np.ones(10), np.zeros(10)].astype(int), np.r_[pos, neg]


def test_sensitivity_floor_alone_flags_many_healthy() -> None:
    y, s = _case()
    sp = ev.operating_points(y, s)["screening"]
    assert (
        sp["sensitivity"] >= 0.9
        or sp["threshold"] == ev.operating_points(y, s)["balanced"]["threshold"]
    )


def test_specificity_floor_wins_where_both_cannot_hold() -> None:
    y, s = _case()
    free = ev.operating_points(y, s, 0.90)["screening"]
    floored = ev.operating_points(y, s, 0.90, min_specificity=0.75)["screening"]
    assert free["specificity"] < 0.75
    assert floored["specificity"] >= 0.75
    # the most sensitive threshold that still holds the floor: one step lower breaks it
    lower = s[s < floored["threshold"]].max()
    assert ((s[y == 0] < lower).mean()) < 0.75
    assert floored["sensitivity"] == (s[y == 1] >= floored["threshold"]).mean()


def test_a_floor_that_already_holds_changes_nothing() -> None:
    y, s = _case()
    assert ev.operating_points(y, s, 0.5, min_specificity=0.5) == ev.operating_points(y, s, 0.5)


def _records(tmp: Path) -> list[D.Record]:
    rows = []
    for i, (source, label, age) in enumerate(
        [
            ("guangzhou", 1, None),
            ("guangzhou", 0, None),
            ("nih", 1, 9),
            ("nih", 0, 40),
            ("nih", 1, 70),
            ("shenzhen", 0, None),
        ]
    ):
        path = tmp / f"img{i}.png"
        rows.append(D.Record(path, label, f"p{i}", source, "train"))
        if age is not None:
            META[path] = {"age": age, "view": "PA"}
    return rows


def test_scope_is_written_from_the_training_split(tmp_path: Path) -> None:
    scope = scope_of(_records(tmp_path))
    assert scope["age_years"] == [KERMANY_AGES[0], 70]
    text = scope["summary"]
    assert "2 Kermany films (Guangzhou, ages 1-5)" in text and "1 NIH films of age 9" in text
    assert "2 NIH films (USA, ages 40-70)" in text and "1 NLM normal films (Shenzhen, China" in text


def test_each_group_gets_the_rule_on_its_own_validation_images(tmp_path: Path) -> None:
    y, s = _case()
    rows = [D.Record(tmp_path / f"v{i}.png", int(y[i]), f"v{i}", "nih", "val") for i in range(20)]
    group = {r.path: ("child" if i % 2 else "adult") for i, r in enumerate(rows)}
    task = Task(
        "pneumonia", "Pneumonia", ["normal", "pneumonia"], rows, [], "", "", [], {}, "",
        point_group=lambda r: group[r.path], min_specificity=0.75,
    )  # fmt: skip
    points = ev.operating_points(y, s, 0.9, 0.75)
    _add_group_points(points, rows, y, s, task)
    for g in ("adult", "child"):
        m = np.array([group[r.path] == g for r in rows])
        own = ev.operating_points(y[m], s[m], 0.9, 0.75)["screening"]
        got = points["screening"]["by_group"][g]
        assert got["threshold"] == own["threshold"] and got["n"] == int(m.sum())
    rule = operating_rule(task)
    assert "specificity floor of 0.75" in rule and "each patient group" in rule
    assert ADULT_AGE == 18

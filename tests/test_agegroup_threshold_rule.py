"""The child/adult model's two threshold rules (training.train_agegroup), on out-of-fold-like
scores with a known answer.

Why: since agegroup 1.2.0 the shipped threshold is the adults-first one (an adult taken for a
child loses the TB flag; a child taken for an adult only keeps a TB score), and the worst-cell
rule (1.1.0's) is reported beside it. These tests pin what each rule picks on scores where the
two disagree, so a change to either rule or to the default shows up here, without training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training import data as D
from training import train_agegroup as T

DATA = Path(__file__).resolve().parent / "data"


def _cells() -> tuple[list[T.Item], np.ndarray]:
    """20 images per cell; NIH is where children and adults overlap, as in the real data:
    adults at p(child) 0.10 (16), 0.35 (2) and 0.70 (2); NIH children at 0.455 (10), 0.60 (6)
    and 0.905 (4); Kermany children at 0.95, Shenzhen adults at 0.05."""
    spec = [
        ("kermany", T.CHILD, [0.95] * 20),
        ("shenzhen", 0, [0.05] * 20),
        ("nih", 0, [0.10] * 16 + [0.35] * 2 + [0.70] * 2),
        ("nih", T.CHILD, [0.455] * 10 + [0.60] * 6 + [0.905] * 4),
    ]
    items, p = [], []
    for source, label, scores in spec:
        for j, q in enumerate(scores):
            rec = D.Record(DATA / f"{source}_{label}_{j}.png", label, f"{source}{label}{j}", source)
            items.append(T.Item(rec, None))
            p.append(q)
    return items, np.array(p)


def test_worst_cell_rule_balances_nih_children_against_nih_adults() -> None:
    items, p = _cells()
    # 0.36-0.45: NIH adults 18/20, every child right; the tie goes to the one nearest 0.5
    assert T.choose_threshold(items, p) == pytest.approx(0.45)
    cells = T.cell_accuracy(items, p, 0.45)
    assert cells["nih/adult"]["k"] == 18 and cells["nih/child"]["k"] == 20


def test_adults_first_rule_keeps_every_adult_cell_at_the_target() -> None:
    items, p = _cells()
    # above 0.70 every NIH adult is an adult (20/20 >= 95%); at 0.71-0.90 the NIH children
    # at 0.905 are still children (4/20), the lowest such threshold is taken
    thr = T.choose_threshold_adults_first(items, p)
    assert thr == pytest.approx(0.71)
    cells = T.cell_accuracy(items, p, thr)
    assert all(c["rate"] >= T.TARGET for k, c in cells.items() if k.endswith("/adult"))
    assert cells["nih/child"]["k"] == 4
    assert thr > T.choose_threshold(items, p)  # adults-first takes the children's side less


def test_the_default_rule_is_adults_first_and_the_other_is_reported() -> None:
    assert T.DEFAULT_THRESHOLD_RULE == "adults-first"
    assert set(T.THRESHOLD_RULES) == {"adults-first", "worst-cell"}
    assert T.other_rule("adults-first") == "worst-cell"
    assert T.other_rule("worst-cell") == "adults-first"
    assert T.by_rule("adults-first", 0.30, 0.85) == 0.85
    assert T.by_rule("worst-cell", 0.30, 0.85) == 0.30
    # the card states why and when the default was decided, from the run record
    assert "after" in T.THRESHOLD_RULE_HISTORY["adults-first"].lower()
    assert "missed TB case" in T.THRESHOLD_RULE_WHY["adults-first"]

"""The Attention text names only in-scope flags: the engine's ``triage.attention`` is the one
place it comes from (the flag rule with the scope rule), and the table's Attention cell and the
report's ranked list both read it.

Real scans (NLM adults, Kermany children, the CR chest DICOM with ages) and stand-in models
with scopes (TB adults only, pneumonia ages 1–5): the Kermany children score TB far past its
threshold, outside its scope, so naming the strongest score would name TB.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from desktop.engine.reports import ReportContext, write_pdf
from desktop.engine.results import (
    ScopeRule,
    ThresholdChoice,
    finding_flags,
    is_flagged,
    operating_points,
)
from desktop.engine.triage import attention, strongest
from tests.test_scope import batch, scoped_models  # noqa: F401 (fixtures)


def test_attention_is_the_in_scope_flags_and_never_an_out_of_scope_model(batch):  # noqa: F811
    models, *_, results = batch
    points = operating_points(models.manifests, ThresholdChoice())
    rule = ScopeRule.of(models.manifests)
    outside_past = 0
    for name, result in results.items():
        named = attention(result, points, rule)
        flags = finding_flags(result, points, rule)
        assert [a.model_id for a in named] == [m for m, f in flags.items() if f], name
        for model_id in rule.verdicts(result):
            assert model_id not in {a.model_id for a in named}, name
            assert points[model_id] is not None
            if is_flagged(result.findings[model_id].probability, points[model_id]):
                outside_past += 1  # past its threshold, outside its scope: not named
        for a in named:
            assert 0.0 <= a.margin <= 1.0 and a.probability >= a.threshold
    assert outside_past >= 6  # the Kermany children's TB scores and the 6-year-old's
    child = results["IM-0115-0001.jpeg"]  # a Kermany child: TB 0.99 outside scope
    assert "tb" in rule.verdicts(child) and child.findings["tb"].probability > 0.9
    best = strongest(attention(child, points, rule))
    assert best is not None and best.model_id == "pneumonia"
    # without the scope rule the threshold alone would have named TB, the higher margin
    assert strongest(attention(child, points)).model_id == "tb"  # type: ignore[union-attr]
    assert attention(results["age_6y.dcm"], points, rule) == []  # both models outside scope


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="needs pdftotext")
def test_the_reports_ranked_list_names_only_in_scope_flags(batch, tmp_path: Path):  # noqa: F811
    models, _store, batch_id, results = batch
    ctx = ReportContext.for_batch(batch_id, models, ThresholdChoice())
    pdf = write_pdf(list(results.values()), ctx, tmp_path / "r.pdf")
    ranked = subprocess.run(  # the ranked list: page 1, continued on page 2
        ["pdftotext", "-layout", "-f", "1", "-l", "2", str(pdf), "-"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    lines = [line for line in ranked.splitlines() if "IM-0115-0001" in line]
    assert len(lines) >= 1 and "TB" not in lines[0] and "Pneumonia 0.64" in lines[0], lines


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="needs pdftotext")
def test_a_flagged_scans_page_says_outside_scope_not_no(batch, tmp_path: Path):  # noqa: F811
    """The Kermany child's block: TB 0.99 against a lower threshold must not read "no" (a
    reader would take the model's word for it) but "outside scope"; pneumonia flags it."""
    models, _store, batch_id, results = batch
    ctx = ReportContext.for_batch(batch_id, models, ThresholdChoice())
    pdf = write_pdf(list(results.values()), ctx, tmp_path / "r.pdf")
    text = subprocess.run(
        ["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True
    ).stdout
    block = text[text.index("IM-0115-0001", text.index("Flagged scans (")) :]
    tb_row = next(line for line in block.splitlines() if line.strip().startswith("TB "))
    assert "outside scope" in tb_row and not tb_row.rstrip().endswith(" no"), tb_row
    adult = text[text.index("Flagged scans (") :]
    assert any(
        line.strip().startswith("TB ") and "YES" in line for line in adult.splitlines()
    )  # an in-scope TB flag still reads YES

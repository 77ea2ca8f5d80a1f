"""The Models dialog's overview of the shipped agegroup manifest (found looking at the dialog
under Xvfb): its test figures showed "target_met False" and "worst_cell 0.750", Python's
words and the manifest's keys, to the nurse reading them."""

from __future__ import annotations

from desktop.engine.manifest import read_manifest
from desktop.gui.models_dialog import _metrics_html
from tests.conftest import REPO


def test_overview_figures_are_words_not_python_values():
    manifest = read_manifest(REPO / "assets" / "models" / "agegroup.json")
    test = manifest.metrics["test"]
    assert test["target_met"] is False  # what the shipped manifest records
    text = _metrics_html(manifest.metrics)
    assert "target met no" in text
    assert f"worst cell {test['worst_cell']:.3f}" in text
    assert "False" not in text and "True" not in text
    assert "_" not in text.replace("<br>", "")

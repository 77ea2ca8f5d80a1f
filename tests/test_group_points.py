"""Operating points per patient group (issue 11, part 2): one manifest, a threshold per group.

A finding model trained on children and adults gets one screening point per patient group,
each chosen on that group's validation images, plus a default for a scan whose group is
unknown. The flag rule (``results.scan_points`` / ``finding_flags``) applies the scan's
group's point; every face (counts, triage, CSV, JSON, PDF) follows and names the threshold.

Real scans (a Kermany child, NLM adults) go through the real runner with stand-in models
whose scores are a known function of the image; the thresholds are then placed just above
and below the real scores, in manifests only, so every change of flag comes from a manifest.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from desktop.engine.errors import ModelError
from desktop.engine.manifest import ModelManifest, read_manifest, threshold_text
from desktop.engine.patients import PatientChoice, PatientGroup
from desktop.engine.registry import load_model_set
from desktop.engine.reports import ReportContext, write_csv, write_json, write_pdf
from desktop.engine.results import (
    BatchCounts,
    ScopeRule,
    ThresholdChoice,
    flags_for,
    operating_points,
    scan_points,
)
from desktop.engine.runner import BatchRunner, run_to_end
from desktop.engine.store import ResultsStore
from desktop.engine.triage import TriageGroup, margin, triage_key
from tests.conftest import DATA
from tests.model_factory import build_agegroup, build_finding, build_modality

EVERYONE = {"age_years": [0, None], "views": [], "summary": "Children and adults."}
CHILD, ADULT = PatientChoice(batch=PatientGroup.CHILD), PatientChoice(batch=PatientGroup.ADULT)


def _models(folder: Path, points: dict | None = None, version: str = "0.1.0") -> Path:
    build_modality(folder, version=version)
    build_finding(
        folder,
        "pneumonia",
        "pneumonia",
        centre=0.45,
        version=version,
        scope=EVERYONE,
        operating_points=points,
    )
    build_agegroup(folder, centre=0.5, version=version)
    return folder


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory):
    """A Kermany child and NLM adults screened by the real runner (no ages in the files)."""
    folder = _models(tmp_path_factory.mktemp("models"))
    root = tmp_path_factory.mktemp("scans")
    shutil.copytree(DATA / "pneumonia/normal", root / "children")
    shutil.copytree(DATA / "tb/normal", root / "adults")
    store = ResultsStore(tmp_path_factory.mktemp("db") / "results.sqlite3")
    models = load_model_set([folder])
    summary = run_to_end(BatchRunner(models, store, workers=1).run([root]))
    results = sorted(store.batch_results(summary.batch_id), key=lambda r: r.file)
    assert all(r.findings for r in results), "every scan must be screened"
    yield folder, store, summary.batch_id, results
    store.close()


def _points_around(score: float) -> dict:
    """A screening point whose child threshold lies just below ``score`` and whose adult
    threshold just above it; the default (group unknown) in between, above it."""
    return {
        "screening": {
            "threshold": min(1.0, score + 0.005),
            "sensitivity": 0.9,
            "specificity": 0.8,
            "by_group": {
                "child": {"threshold": max(0.0, score - 0.01), "sensitivity": 0.91},
                "adult": {"threshold": min(1.0, score + 0.01), "sensitivity": 0.90},
            },
        }
    }


def _with_points(folder: Path, into: Path, points: dict, version: str) -> Path:
    """The same stand-ins (same scores) released again with other pneumonia operating points
    in the manifest, signed like any release."""
    del folder  # the stand-ins are rebuilt identically: only the manifest differs
    return _models(into, points, version)


def test_each_group_is_judged_at_its_own_threshold(batch, tmp_path: Path):
    folder, _, _, results = batch
    scan = results[0]
    score = scan.findings["pneumonia"].probability
    models = load_model_set([_with_points(folder, tmp_path / "m", _points_around(score), "0.2.0")])
    m = models.manifests
    choice = ThresholdChoice()
    assert flags_for(scan, m, choice, CHILD)["pneumonia"] is True
    assert flags_for(scan, m, choice, ADULT)["pneumonia"] is False
    # the staff's override of this one scan wins over the batch's group
    override = ADULT.with_override(scan.sha256 or "", PatientGroup.CHILD)
    assert flags_for(scan, m, choice, override)["pneumonia"] is True
    points = operating_points(m, choice)
    child_pt = scan_points(scan, points, ScopeRule.of(m, CHILD))["pneumonia"]
    adult_pt = scan_points(scan, points, ScopeRule.of(m, ADULT))["pneumonia"]
    assert child_pt is not None and adult_pt is not None
    assert (child_pt.group, adult_pt.group) == ("child", "adult")
    assert child_pt.threshold == pytest.approx(score - 0.01)
    assert adult_pt.threshold == pytest.approx(score + 0.01)
    # no scope given (the threshold rule alone): the default point, above the score
    assert scan_points(scan, points)["pneumonia"] == points["pneumonia"]
    # counts and triage follow the same rule
    assert BatchCounts.of([scan], m, choice, CHILD).flagged["pneumonia"] == 1
    assert BatchCounts.of([scan], m, choice, ADULT).flagged["pneumonia"] == 0
    child_key = triage_key(scan, points, ScopeRule.of(m, CHILD))
    adult_key = triage_key(scan, points, ScopeRule.of(m, ADULT))
    assert child_key.group is TriageGroup.FLAGGED and adult_key.group is not TriageGroup.FLAGGED
    assert child_key.strength == pytest.approx(-margin(score, score - 0.01))


def test_the_group_estimated_from_the_image_picks_the_point(batch, tmp_path: Path):
    """Automatic patient group: each scan at its estimated group's threshold."""
    folder, _, _, results = batch
    models = load_model_set([_with_points(folder, tmp_path / "m", _points_around(0.5), "0.3.0")])
    rule = ScopeRule.of(models.manifests)
    points = operating_points(models.manifests, ThresholdChoice())
    groups = set()
    for scan in results:
        decision = rule.group(scan)
        point = scan_points(scan, points, rule)["pneumonia"]
        assert point is not None
        assert point.group == (None if decision.group is None else decision.group.value)
        groups.add(point.group)
    assert groups  # at least one scan got an estimate


def test_a_manifest_without_groups_keeps_one_threshold(batch):
    """Old manifests (no ``by_group``): one threshold for every group, as before."""
    folder, _, _, results = batch
    m = load_model_set([folder]).manifests
    point = m["pneumonia"].operating_point("screening")
    assert point.by_group == () and point.for_group("adult") is point
    for scan in results:
        assert flags_for(scan, m, ThresholdChoice(), CHILD) == flags_for(
            scan, m, ThresholdChoice(), ADULT
        )


def test_changed_group_thresholds_in_the_manifest_change_flags_without_code(batch, tmp_path: Path):
    folder, _, _, results = batch
    scan = results[0]
    score = scan.findings["pneumonia"].probability
    swapped = _points_around(score)
    groups = swapped["screening"]["by_group"]
    groups["child"], groups["adult"] = groups["adult"], groups["child"]
    first = load_model_set([_with_points(folder, tmp_path / "a", _points_around(score), "0.4.0")])
    second = load_model_set([_with_points(folder, tmp_path / "b", swapped, "0.5.0")])
    for models, child, adult in ((first, True, False), (second, False, True)):
        m = models.manifests
        assert flags_for(scan, m, ThresholdChoice(), CHILD)["pneumonia"] is child
        assert flags_for(scan, m, ThresholdChoice(), ADULT)["pneumonia"] is adult


def test_a_custom_threshold_overrides_every_group(batch, tmp_path: Path):
    folder, _, _, results = batch
    scan = results[0]
    score = scan.findings["pneumonia"].probability
    models = load_model_set([_with_points(folder, tmp_path / "m", _points_around(score), "0.6.0")])
    custom = ThresholdChoice(threshold=max(0.0, score - 0.05))
    for patients in (CHILD, ADULT):
        assert flags_for(scan, models.manifests, custom, patients)["pneumonia"] is True


@pytest.mark.parametrize(
    ("by_group", "why"),
    [
        ({"elderly": {"threshold": 0.5}}, "by_group has 'elderly'"),
        ({"adult": {"threshold": 1.5}}, "screening (adult) threshold outside [0, 1]"),
        ({"adult": {}}, "missing field 'threshold'"),
    ],
)
def test_a_malformed_group_point_is_refused(batch, by_group: dict, why: str):
    folder, *_ = batch
    data = json.loads((folder / "pneumonia.json").read_text("utf-8"))
    data["operating_points"]["screening"]["by_group"] = by_group
    with pytest.raises(ModelError, match=re.escape(why)):
        ModelManifest.from_dict(data, folder / "pneumonia.json")


def test_reports_name_the_threshold_each_scan_was_judged_at(batch, tmp_path: Path):
    folder, _, batch_id, results = batch
    scan = results[0]
    score = scan.findings["pneumonia"].probability
    points = _points_around(score)
    models = load_model_set([_with_points(folder, tmp_path / "m", points, "0.7.0")])
    adult_thr = points["screening"]["by_group"]["adult"]["threshold"]
    ctx = ReportContext.for_batch(batch_id, models, ThresholdChoice(), patients=ADULT)
    write_csv([scan], ctx, tmp_path / "r.csv")
    with (tmp_path / "r.csv").open(encoding="utf-8-sig", newline="") as handle:
        row = next(csv.DictReader(handle))
    assert row["pneumonia_flag"] == "no"
    assert f"pneumonia adult {adult_thr:.3f}" in row["operating_point"]
    doc = json.loads(write_json([scan], ctx, tmp_path / "r.json").read_text("utf-8"))
    finding = doc["scans"][0]["findings"]["pneumonia"]
    assert finding["threshold"] == pytest.approx(adult_thr)
    assert finding["threshold_group"] == "adult"
    by_group = doc["operating_point"]["models"]["pneumonia"]["by_group"]
    assert by_group["child"] == pytest.approx(score - 0.01)
    # the PDF's models table names every group's threshold
    manifest = read_manifest(tmp_path / "m" / "pneumonia.json")
    text = threshold_text(manifest.operating_point("screening"))
    assert text.startswith(f"adult {adult_thr:.3f} · child ") and "group unknown" in text
    write_pdf([scan], ctx, tmp_path / "r.pdf")
    if shutil.which("pdftotext"):
        pdf = subprocess.run(
            ["pdftotext", str(tmp_path / "r.pdf"), "-"], capture_output=True, text=True, check=True
        ).stdout
        assert f"adult {adult_thr:.3f}" in pdf


def test_the_window_names_each_groups_threshold_and_figures(qtbot):
    """The picker's line names each group's own threshold, its tooltip each group's validation
    figures (shipped pneumonia manifest): the pooled point's describe no scan the window judges."""
    from desktop.gui.operating_point import OperatingPointPicker

    shipped = Path(__file__).resolve().parents[1] / "assets" / "models"
    manifests = {m: read_manifest(shipped / f"{m}.json") for m in ("tb", "pneumonia")}
    point = manifests["pneumonia"].operating_points["screening"]
    assert {g for g, _ in point.by_group} == {"adult", "child"}
    picker = OperatingPointPicker()
    qtbot.addWidget(picker)
    picker.set_manifests(manifests, "screening")
    text, tip = picker.detail.text(), picker.detail.toolTip()
    for group, own in point.by_group:
        assert f"{group} ≥ {own.threshold:.2f}" in text
        assert f"{group} ≥ {own.threshold:.2f} (sens {own.sensitivity:.2f}, " in tip
    assert f"unknown ≥ {point.threshold:.2f}" in text
    assert f"Pneumonia ≥ {point.threshold:.2f}" not in text
    tb = manifests["tb"].operating_points["screening"]
    assert f"TB ≥ {tb.threshold:.2f} (sens {tb.sensitivity:.2f}" in text

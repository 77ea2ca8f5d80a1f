"""The shipped models on a clinic's mixed folder without ages (issue 12, "done when").

Healthy Kermany children (the 50 + 6 normal fixtures) and NLM adults (12), PNG/JPEG only, so
no file carries an age: each scan's group comes from the shipped child/adult model
(``agegroup``), and the TB model, whose manifest scope is adults only, must not flag the
children, whatever their TB score. The fixture patients were held out of the agegroup model's
training and validation (see its card).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from desktop.engine.manifest import read_manifest
from desktop.engine.paths import bundled_models_dir
from desktop.engine.patients import GroupSource, PatientChoice, PatientGroup
from desktop.engine.registry import load_model_set
from desktop.engine.results import (
    BatchCounts,
    ScanStatus,
    ScopeRule,
    ThresholdChoice,
    finding_flags,
    operating_points,
)
from desktop.engine.runner import BatchRunner, run_to_end
from desktop.engine.store import ResultsStore
from tests.conftest import DATA

AGEGROUP = bundled_models_dir() / "agegroup.json"
pytestmark = pytest.mark.skipif(
    not AGEGROUP.exists(), reason="the child/adult model (assets/models/agegroup) is not shipped"
)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("mixed")
    truth: dict[str, PatientGroup] = {}
    children = [
        *sorted((DATA / "calibration" / "pneumonia" / "normal").iterdir()),
        *sorted((DATA / "pneumonia" / "normal").iterdir()),
    ]
    adults = [
        *sorted((DATA / "tb" / "normal").iterdir()),
        *sorted((DATA / "tb" / "tuberculosis").iterdir()),
    ]
    for files, group in ((children, PatientGroup.CHILD), (adults, PatientGroup.ADULT)):
        for f in files:
            name = f"{group.value}_{f.name}"
            shutil.copy(f, root / name)
            truth[name] = group
    models = load_model_set()
    store = ResultsStore(tmp_path_factory.mktemp("db") / "results.sqlite3")
    summary = run_to_end(BatchRunner(models, store).run([root]))
    results = list(store.batch_results(summary.batch_id))
    store.close()
    return models, results, truth


def test_the_shipped_models_load_with_their_scopes():
    models = load_model_set()
    assert models.patient_group is not None
    assert models.patient_group.manifest.role == "patient_group"
    assert models.patient_group.manifest.labels == ("adult", "child")
    tb = models.findings["tb"].manifest
    assert tb.scope is not None and tb.scope.age_min == 18 and tb.scope.age_max is None
    assert read_manifest(AGEGROUP).positive_label == "child"


def test_healthy_children_get_no_tb_flag(mixed):
    models, results, truth = mixed
    children = [r for r in results if truth[Path(r.file).name] is PatientGroup.CHILD]
    assert len(children) == 56
    children = [r for r in children if r.status is ScanStatus.OK]  # the gate refuses a few
    assert len(children) >= 50
    points = operating_points(models.manifests, ThresholdChoice())
    rule = ScopeRule.of(models.manifests)
    by_threshold = sum(bool(finding_flags(r, points)["tb"]) for r in children)
    with_scope = sum(bool(finding_flags(r, points, rule)["tb"]) for r in children)
    n = len(children)
    print(f"children TB-flagged: {by_threshold}/{n} by threshold, {with_scope}/{n} in scope")
    assert with_scope <= 0.10 * len(children)  # the bound: estimation errors only
    assert with_scope < by_threshold  # the threshold alone flags many of them
    for r in children:
        if rule.verdicts(r).get("tb"):
            assert rule.verdicts(r)["tb"].reason.startswith(
                "TB model: adults only; this scan: child, estimated from the image"
            )


def test_children_and_adults_are_placed_from_the_image(mixed):
    models, results, truth = mixed
    rule = ScopeRule.of(models.manifests)
    right = {PatientGroup.CHILD: 0, PatientGroup.ADULT: 0}
    total = {PatientGroup.CHILD: 0, PatientGroup.ADULT: 0}
    for r in results:
        if r.status is not ScanStatus.OK:
            continue  # not a chest X-ray to the gate: no finding model ran, no group needed
        decision = rule.group(r)
        assert decision.source is GroupSource.IMAGE
        group = truth[Path(r.file).name]
        total[group] += 1
        right[group] += decision.group is group
    print(
        f"placed right: children {right[PatientGroup.CHILD]}/{total[PatientGroup.CHILD]}, "
        f"adults {right[PatientGroup.ADULT]}/{total[PatientGroup.ADULT]}"
    )
    # agegroup 1.2.0 (adults-first threshold 0.85) placed 50/56 of these children and 12/12
    # adults (1.1.0 at 0.30: 54/56 children; 1.0.0: 52/56; 1.2.0's card: Kermany test 94.8%).
    # It trades children for adults on purpose: every adult must keep the TB model, and a
    # child taken for an adult matters only if the TB model flags it, which the issue bounds
    # at 10% of healthy children (test_healthy_children_get_no_tb_flag: 5/56)
    assert total[PatientGroup.ADULT] == 12 and total[PatientGroup.CHILD] == 56
    assert right[PatientGroup.ADULT] == total[PatientGroup.ADULT]
    assert right[PatientGroup.CHILD] >= 50


def test_setting_the_batch_group_changes_the_flags_at_once(mixed):
    models, results, _ = mixed
    choice = ThresholdChoice()
    auto = BatchCounts.of(results, models.manifests, choice)
    adults = BatchCounts.of(
        results, models.manifests, choice, PatientChoice(batch=PatientGroup.ADULT)
    )
    children = BatchCounts.of(
        results, models.manifests, choice, PatientChoice(batch=PatientGroup.CHILD)
    )
    points = operating_points(models.manifests, choice)
    by_threshold = sum(bool(finding_flags(r, points)["tb"]) for r in results)
    assert adults.flagged["tb"] == by_threshold  # all adults: the TB threshold alone decides
    screened = sum(r.status is ScanStatus.OK for r in results)
    assert children.flagged["tb"] == 0 and children.outside_scope["tb"] == screened
    assert adults.flagged["tb"] > auto.flagged["tb"]

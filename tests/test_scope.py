"""Each model only where it belongs (issue 12): scope from the manifest, the patient group from
the staff, the file or the image, and "outside scope means no flag" on every face.

Real scans (NLM adults, Kermany children, the CR chest DICOM with ages written into it) go
through the real runner with stand-in ONNX models whose manifests carry scopes. The stand-in
TB model scores every chest X-ray past its threshold, so whether a TB flag stands is decided
by scope alone; the stand-in patient-group model's p(child) is a known function of the image
(tests/model_factory.py), so each estimate can be checked.
"""

from __future__ import annotations

import csv
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from desktop import cli
from desktop.engine.errors import ModelError
from desktop.engine.manifest import read_manifest
from desktop.engine.patients import (
    GroupSource,
    PatientChoice,
    PatientGroup,
    age_from_metadata,
    parse_group,
)
from desktop.engine.preprocess import load_working, preprocess
from desktop.engine.registry import load_model_set
from desktop.engine.reports import ReportContext, write_csv, write_json
from desktop.engine.results import (
    BatchCounts,
    ScanResult,
    ScopeRule,
    ThresholdChoice,
    finding_flags,
    flags_for,
    operating_points,
)
from desktop.engine.runner import BatchRunner, run_to_end
from desktop.engine.store import ResultsStore
from tests.conftest import DATA
from tests.fixtures import write_cr_variant
from tests.model_factory import (
    build_agegroup,
    build_finding,
    build_modality,
    expected_probability,
)

ADULTS_ONLY = {"age_years": [18, None], "views": ["PA"], "summary": "Adults' PA films only."}
YOUNG_CHILDREN = {"age_years": [1, 5], "views": ["PA", "AP"], "summary": "Children 1-5 only."}
#: the stand-in patient-group model: p(child) = sigmoid(10 (mean grey - AGE_CENTRE))
AGE_CENTRE = 0.5


def _models(folder: Path, tb_scope: dict | None = ADULTS_ONLY, version: str = "0.1.0") -> Path:
    """Stand-ins with scopes; the TB stand-in (centre 0.05) scores every chest X-ray ≥ 0.9."""
    build_modality(folder, version=version)
    build_finding(
        folder,
        "tb",
        "tuberculosis",
        centre=0.05,
        version=version,
        scope=tb_scope,
        display={"short_name": "TB", "order": 1},
    )
    build_finding(
        folder,
        "pneumonia",
        "pneumonia",
        centre=0.45,
        version=version,
        scope=YOUNG_CHILDREN,
        display={"short_name": "Pneumonia", "order": 2},
    )
    build_agegroup(folder, centre=AGE_CENTRE, version=version)
    return folder


@pytest.fixture(scope="module")
def scoped_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _models(tmp_path_factory.mktemp("scoped"))


@pytest.fixture(scope="module")
def batch(scoped_models: Path, tmp_path_factory: pytest.TempPathFactory):
    """A real batch: NLM adults and Kermany children (no ages), and DICOM with ages."""
    root = tmp_path_factory.mktemp("scans")
    for sub in ("tb/normal", "pneumonia/normal"):
        shutil.copytree(DATA / sub, root / sub)
    dicom = root / "dicom"
    dicom.mkdir()
    write_cr_variant(dicom / "age_6y.dcm", PatientAge="006Y", ViewPosition="PA")
    write_cr_variant(dicom / "age_45y.dcm", PatientAge="045Y", ViewPosition="PA")
    write_cr_variant(  # no PatientAge: the age at the study from the two dates (8 years)
        dicom / "born_2018.dcm",
        PatientAge=None,
        PatientBirthDate="20180301",
        StudyDate="20260415",
        ViewPosition="PA",
    )
    write_cr_variant(dicom / "adult_ap.dcm", PatientAge="050Y", ViewPosition="AP")
    store = ResultsStore(tmp_path_factory.mktemp("db") / "results.sqlite3")
    models = load_model_set([scoped_models])
    summary = run_to_end(BatchRunner(models, store, workers=2).run([root]))
    results = {Path(r.file).name: r for r in store.batch_results(summary.batch_id)}
    yield models, store, summary.batch_id, results
    store.close()


def _tb_flag(result: ScanResult, models, patients: PatientChoice | None = None) -> bool | None:
    return flags_for(result, models.manifests, ThresholdChoice(), patients)["tb"]


# -- the manifest ---------------------------------------------------------------------------


def test_scope_and_display_are_read_from_the_manifest(scoped_models: Path):
    tb = read_manifest(scoped_models / "tb.json")
    assert tb.scope is not None
    assert (tb.scope.age_min, tb.scope.age_max, tb.scope.views) == (18.0, None, ("PA",))
    assert tb.scope.summary == "Adults' PA films only."
    assert (tb.short_name, tb.display_order) == ("TB", (1.0, "tb"))
    models = load_model_set([scoped_models])
    assert list(models.findings) == ["tb", "pneumonia"]  # display order, not alphabetical
    assert models.patient_group is not None and models.patient_group.manifest.id == "agegroup"
    assert "agegroup" in models.manifests and "agegroup@" in models.key


def test_a_manifest_without_scope_restricts_nothing(tmp_path: Path, batch):
    models, _, _, results = batch
    folder = _models(tmp_path / "m", tb_scope=None)
    plain = load_model_set([folder])
    assert plain.findings["tb"].manifest.scope is None
    child = results["age_6y.dcm"]
    assert _tb_flag(child, plain) is True  # no scope: the threshold alone decides
    assert _tb_flag(child, models) is False


@pytest.mark.parametrize(
    ("scope", "why"),
    [
        ({"age_years": [20, 10]}, "min is above max"),
        ({"age_years": [18]}, r"must be \[min, max\]"),
        ({"age_years": ["adult", None]}, "not a number of years"),
        ({"views": "PA"}, "list of view names"),
        ("adults", "scope must be an object"),
    ],
)
def test_a_malformed_scope_is_refused_naming_the_file(tmp_path: Path, scope, why):
    path = build_finding(tmp_path, "tb", "tuberculosis", scope=scope)
    with pytest.raises(ModelError, match=why) as err:
        read_manifest(path)
    assert str(path) in str(err.value)


# -- where the patient group comes from -----------------------------------------------------


def test_patient_group_from_the_file(batch):
    models, *_, results = batch
    rule = ScopeRule.of(models.manifests)
    six = rule.group(results["age_6y.dcm"])
    assert (six.group, six.source, six.age_years) == (PatientGroup.CHILD, GroupSource.FILE, 6.0)
    assert six.detail == "DICOM PatientAge 006Y"
    adult = rule.group(results["age_45y.dcm"])
    assert (adult.group, adult.source) == (PatientGroup.ADULT, GroupSource.FILE)
    dated = rule.group(results["born_2018.dcm"])
    assert (dated.group, dated.source) == (PatientGroup.CHILD, GroupSource.FILE)
    assert dated.age_years == pytest.approx((2026 - 2018) + 45 / 365.25, abs=0.01)
    assert dated.detail == "DICOM PatientBirthDate and StudyDate"  # never the date itself
    # the file's group wins over the image estimate, which every chest scan also has
    assert results["age_6y.dcm"].group_estimate is not None


def test_patient_group_estimated_from_the_image(batch):
    models, *_, results = batch
    rule = ScopeRule.of(models.manifests)
    spec = models.patient_group.manifest.preprocessing
    pngs = [r for name, r in results.items() if not name.endswith(".dcm")]
    assert len(pngs) == 12
    groups = set()
    for result in pngs:
        scan = load_working(Path(result.file))
        mean = (preprocess(scan.pixels, spec).mean() - spec.offset) / spec.scale
        expected = expected_probability(mean, AGE_CENTRE)
        assert result.group_estimate.p_child == pytest.approx(expected, abs=2e-4)
        decision = rule.group(result)
        assert decision.source is GroupSource.IMAGE
        assert decision.group is (
            PatientGroup.CHILD if result.group_estimate.p_child >= 0.5 else PatientGroup.ADULT
        )
        groups.add(decision.group)
    assert groups == {PatientGroup.ADULT, PatientGroup.CHILD}  # the batch has both


def test_staff_choice_for_the_batch_comes_before_the_file(batch):
    models, *_, results = batch
    adults = ScopeRule.of(models.manifests, PatientChoice(batch=PatientGroup.ADULT))
    six = adults.group(results["age_6y.dcm"])
    assert (six.group, six.source) == (PatientGroup.ADULT, GroupSource.STAFF_BATCH)
    assert six.describe() == "adult, set by staff for the batch"
    assert _tb_flag(results["age_6y.dcm"], models) is False
    assert _tb_flag(results["age_6y.dcm"], models, adults.patients) is True


def test_staff_override_of_one_scan_is_recorded_and_wins(batch, tmp_path: Path):
    models, store, batch_id, results = batch
    scan = results["age_45y.dcm"]
    assert _tb_flag(scan, models) is True
    stamp = store.set_patient_group(
        scan.sha256, PatientGroup.CHILD, batch_id=batch_id, by="Nurse A"
    )
    store.set_batch_patients(batch_id, PatientGroup.ADULT)
    choice = store.patient_choice(batch_id)
    assert choice == PatientChoice(
        batch=PatientGroup.ADULT, overrides={scan.sha256: PatientGroup.CHILD}
    )
    decision = ScopeRule.of(models.manifests, choice).group(scan)
    assert (decision.group, decision.source) == (PatientGroup.CHILD, GroupSource.STAFF_SCAN)
    assert _tb_flag(scan, models, choice) is False
    # back to automatic: the history keeps both, with times and who
    store.set_patient_group(scan.sha256, None, batch_id=batch_id, by="Nurse B")
    history = store.patient_group_history(scan.sha256)
    assert [(g, by) for _, g, by in history] == [("child", "Nurse A"), (None, "Nurse B")]
    assert history[0][0] == stamp and stamp.endswith("+00:00")
    assert store.patient_choice(batch_id).overrides == {}
    store.set_batch_patients(batch_id, None)
    with sqlite3.connect(store.path) as con:  # really in the file
        assert con.execute("SELECT COUNT(*) FROM patient_groups").fetchone() == (2,)


# -- outside scope means no flag ------------------------------------------------------------


def test_outside_scope_keeps_the_score_and_gives_the_reason(batch):
    models, *_, results = batch
    rule = ScopeRule.of(models.manifests)
    child = results["age_6y.dcm"]
    assert child.findings["tb"].probability > 0.9  # past every threshold
    verdict = rule.verdicts(child)["tb"]
    assert verdict.short == "TB: adults only"
    assert verdict.reason == (
        "TB model: adults only; this scan: child, age 6, from the file (DICOM PatientAge 006Y)"
    )
    # pneumonia (ages 1-5) is outside too at six; the adult is outside pneumonia's scope only
    assert set(rule.verdicts(child)) == {"tb", "pneumonia"}
    assert set(rule.verdicts(results["age_45y.dcm"])) == {"pneumonia"}
    ap = rule.verdicts(results["adult_ap.dcm"])
    assert ap["tb"].reason == "TB model: PA views only; this scan: AP view (DICOM ViewPosition)"
    for name, result in results.items():
        decision = rule.group(result)
        if decision.source is GroupSource.IMAGE and decision.group is PatientGroup.CHILD:
            assert rule.verdicts(result)["tb"].reason == (
                "TB model: adults only; this scan: child, estimated from the image "
                f"(p(child) {result.group_estimate.p_child:.2f})"
            ), name


def test_counts_and_every_flag_follow_the_scope(batch):
    models, *_, results = batch
    rows = list(results.values())
    choice = ThresholdChoice()
    auto = BatchCounts.of(rows, models.manifests, choice)
    rule = ScopeRule.of(models.manifests)
    outside_tb = [r for r in rows if "tb" in rule.verdicts(r)]
    assert auto.outside_scope["tb"] == len(outside_tb) > 0
    assert auto.flagged["tb"] == len(rows) - len(outside_tb)  # every other scan is flagged
    adults = BatchCounts.of(rows, models.manifests, choice, PatientChoice(batch=PatientGroup.ADULT))
    assert adults.flagged["tb"] == len(rows) - 1  # only the AP film stays outside (view)
    assert adults.outside_scope["pneumonia"] == len(rows)
    children = BatchCounts.of(
        rows, models.manifests, choice, PatientChoice(batch=PatientGroup.CHILD)
    )
    assert children.flagged["tb"] == 0 and children.outside_scope["tb"] == len(rows)
    # the same rule through the resolved-points path the window uses
    points = operating_points(models.manifests, choice)
    assert BatchCounts.tally(rows, points, rule) == auto
    for r in outside_tb:
        assert finding_flags(r, points, rule)["tb"] is False
        assert finding_flags(r, points)["tb"] is True  # the threshold alone would flag it


def test_a_scope_changed_in_the_manifest_changes_the_verdict_without_code(tmp_path: Path, batch):
    """The same scan, the same code: a new model version whose manifest widens the scope."""
    _, _, _, results = batch
    child = results["age_6y.dcm"]
    verdicts = {}
    for version, scope in (("0.2.0", ADULTS_ONLY), ("0.3.0", {"age_years": [0, None]})):
        models = load_model_set([_models(tmp_path / version, tb_scope=scope, version=version)])
        verdicts[version] = ScopeRule.of(models.manifests).verdicts(child).get("tb")
        assert _tb_flag(child, models) is (verdicts[version] is None)
    assert verdicts["0.2.0"] is not None and verdicts["0.3.0"] is None
    # and a scope for children only, read the other way round
    models = load_model_set(
        [_models(tmp_path / "kids", tb_scope={"age_years": [0, 17]}, version="0.4.0")]
    )
    adult = ScopeRule.of(models.manifests).verdicts(results["age_45y.dcm"])["tb"]
    assert adult.short == "TB: children only"


# -- reports and the command line -----------------------------------------------------------


def test_reports_state_group_source_and_reason(batch, tmp_path: Path):
    models, _, batch_id, results = batch
    rows = list(results.values())
    ctx = ReportContext.for_batch(batch_id, models, ThresholdChoice())
    write_csv(rows, ctx, tmp_path / "r.csv")
    with (tmp_path / "r.csv").open(encoding="utf-8-sig", newline="") as handle:
        by_name = {Path(r["file"]).name: r for r in csv.DictReader(handle)}
    six = by_name["age_6y.dcm"]
    assert (six["patient_group"], six["patient_group_source"], six["tb_flag"]) == (
        "child",
        "file",
        "no",
    )
    assert "TB model: adults only; this scan: child, age 6" in six["outside_scope"]
    doc = json.loads(write_json(rows, ctx, tmp_path / "r.json").read_text("utf-8"))
    scan = next(s for s in doc["scans"] if s["file"].endswith("age_6y.dcm"))
    assert scan["flags"]["tb"] is False
    assert scan["findings"]["tb"]["outside_scope"].startswith("TB model: adults only")
    assert scan["patient_group"]["source"] == "file" and scan["patient_group"]["age_years"] == 6
    assert (
        doc["counts"]["outside_scope"]["tb"]
        == BatchCounts.of(rows, models.manifests, ThresholdChoice()).outside_scope["tb"]
    )
    assert doc["models"]["tb"]["scope"]["age_years"] == [18.0, None]


def test_cli_patients_option_is_stored_with_the_batch(scoped_models: Path, tmp_path: Path, capsys):
    scans = tmp_path / "scans"
    shutil.copytree(DATA / "pneumonia" / "normal", scans)  # Kermany children, no ages
    db = tmp_path / "r.sqlite3"
    base = ["--models", str(scoped_models), "--db", str(db), "--quiet"]
    out = tmp_path / "children"
    assert cli.main(["classify", str(scans), "--out", str(out), "--patients", "child", *base]) == 0
    err = capsys.readouterr().err
    assert "tb: 0 flagged" in err and "6 outside its scope" in err
    with (out / "results.csv").open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["patient_group"], r["patient_group_source"], r["tb_flag"]) for r in rows} == {
        ("child", "staff_batch", "no")
    }
    batch_id = json.loads((out / "results.json").read_text("utf-8"))["batch"]["id"]
    # export keeps the stored group; --patients adult changes it (and stores that)
    assert cli.main(["export", batch_id, "--out", str(tmp_path / "again"), *base]) == 0
    assert "tb: 0 flagged" in capsys.readouterr().err
    adults = ["export", batch_id, "--out", str(tmp_path / "adults"), "--patients", "adult"]
    assert cli.main([*adults, *base]) == 0
    assert "tb: 6 flagged" in capsys.readouterr().err
    store = ResultsStore(db)
    try:
        assert store.batch_patients(batch_id) is PatientGroup.ADULT
    finally:
        store.close()


# -- small rules ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ({"patient_age": "045Y"}, (45.0, "DICOM PatientAge 045Y")),
        ({"patient_age": "018M"}, (1.5, "DICOM PatientAge 018M")),
        ({"patient_birth_date": "20100101", "study_date": "20200101"}, (10.0, None)),
        ({"patient_birth_date": "20200101", "study_date": "20100101"}, None),  # born after
        ({"patient_birth_date": "2010", "study_date": "20200101"}, None),
        ({"patient_age": "abc"}, None),
        ({}, None),
    ],
)
def test_age_from_metadata(meta, expected):
    found = age_from_metadata(meta)
    if expected is None:
        assert found is None
    else:
        assert found[0] == pytest.approx(expected[0], abs=0.01)
        if expected[1]:
            assert found[1] == expected[1]


def test_parse_group_words():
    assert parse_group("adults") is PatientGroup.ADULT
    assert parse_group("Child") is PatientGroup.CHILD
    assert parse_group("auto") is None and parse_group("") is None
    with pytest.raises(ValueError, match="adult, child or auto"):
        parse_group("teen")

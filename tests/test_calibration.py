"""Site calibration: the arithmetic on hand-computed cases, site points tied to model versions,
labels in, and calibration on real labelled scans with the shipped models.

The shipped-model tests assert properties that hold for any reasonable model (a threshold set
on one half of a labelled set reaches its sensitivity on the other half within the interval
the calibration reported), not hard-coded scores, so they stay true when a model is replaced.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from desktop.cli import main
from desktop.engine.calibration import (
    CalibrationError,
    auc_score,
    bootstrap_auc_ci,
    calibrate,
    confusion_at,
    point_stats,
    roc_curve,
    threshold_for_sensitivity,
    wilson_interval,
)
from desktop.engine.errors import ModelError
from desktop.engine.inference import Device
from desktop.engine.labelled import (
    LabelledScores,
    collect_labels,
    read_label_csv,
    read_label_folder,
    run_calibration,
)
from desktop.engine.manifest import read_manifest
from desktop.engine.registry import load_model_set
from desktop.engine.results import ThresholdChoice
from desktop.engine.runner import BatchRunner, run_to_end
from desktop.engine.site_points import (
    SiteOperatingPoint,
    SitePointError,
    SitePointStore,
    normalize_name,
    site_calibration,
)
from desktop.engine.store import ResultsStore
from tests.fixtures import write_truncated

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
MODELS = REPO / "assets" / "models"
LABELLED_PNEUMONIA = DATA / "calibration" / "pneumonia"  # 50 normal + 50 pneumonia (Kermany)
NLM = REPO.parent / "shared" / "data" / "tb" / "nlm_299"

# A hand-computed case: 4 positives, 5 negatives, no ties.
POS = [0.9, 0.8, 0.7, 0.4]
NEG = [0.6, 0.5, 0.3, 0.2, 0.1]
SCORES = POS + NEG
TRUTH = [True] * 4 + [False] * 5


# --- the arithmetic -----------------------------------------------------------------------


def test_roc_auc_threshold_and_confusion_match_a_hand_computed_case() -> None:
    roc = roc_curve(SCORES, TRUTH)
    # Vertices flag >= each distinct score; thresholds sit halfway to the next score down.
    np.testing.assert_allclose(
        roc.thresholds, [0.85, 0.75, 0.65, 0.55, 0.45, 0.35, 0.25, 0.15, 0.1]
    )
    np.testing.assert_allclose(roc.tpr, [0.25, 0.5, 0.75, 0.75, 0.75, 1, 1, 1, 1])
    np.testing.assert_allclose(roc.fpr, [0, 0, 0, 0.2, 0.4, 0.4, 0.6, 0.8, 1])
    # 18 of the 20 positive/negative pairs are ordered correctly (0.4 loses to 0.6 and 0.5).
    assert auc_score(SCORES, TRUTH) == pytest.approx(18 / 20)
    fpr, tpr = roc.points()
    assert np.trapezoid(tpr, fpr) == pytest.approx(0.9)
    # Target 0.75: the highest threshold finding 3 of 4 is 0.65, with no false alarm.
    k = threshold_for_sensitivity(roc, 0.75)
    assert roc.thresholds[k] == pytest.approx(0.65)
    assert confusion_at(SCORES, TRUTH, roc.thresholds[k]) == confusion_at(SCORES, TRUTH, 0.7)
    c = confusion_at(SCORES, TRUTH, 0.65)
    assert (c.tp, c.fn, c.fp, c.tn) == (3, 1, 0, 5)
    # Target 1.0 has to go down to 0.4, which lets 0.6 and 0.5 through: specificity 3/5.
    k = threshold_for_sensitivity(roc, 1.0)
    assert roc.thresholds[k] == pytest.approx(0.35)
    assert point_stats(SCORES, TRUTH, 0.35).specificity == pytest.approx(0.6)
    # 0.9 of 4 positives is 3.6: only all four reach it.
    assert roc.thresholds[threshold_for_sensitivity(roc, 0.9)] == pytest.approx(0.35)


def test_wilson_interval_matches_published_values() -> None:
    # Newcombe (1998), Table I: 81/263 → 0.2553–0.3662; 15/148 → 0.0624–0.1605.
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson_interval(15, 148) == pytest.approx((0.0624, 0.1605), abs=1e-4)
    lo, hi = wilson_interval(3, 4)
    assert (lo, hi) == pytest.approx((0.3006, 0.9544), abs=1e-4)
    assert wilson_interval(20, 20)[1] == 1.0 and wilson_interval(0, 20)[0] == 0.0


def test_ties_count_one_half() -> None:
    # pairs: (0.5, 0.5) twice → ½ each; (0.5, 0.2) twice → 1 each: 3 of 4.
    assert auc_score([0.5, 0.5, 0.5, 0.2], [True, True, False, False]) == pytest.approx(0.75)
    roc = roc_curve([0.5, 0.5, 0.5, 0.2], [True, True, False, False])
    fpr, tpr = roc.points()
    assert np.trapezoid(tpr, fpr) == pytest.approx(0.75)


def test_auc_equals_the_pairwise_count_on_random_scores_with_ties() -> None:
    rng = np.random.default_rng(7)
    y = rng.random(400) < 0.3
    s = np.round(rng.normal(y * 0.8, 1.0), 1)  # rounding makes many ties
    pos, neg = s[y], s[~y]
    pairwise = (
        (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    ) / (pos.size * neg.size)
    assert auc_score(s, y) == pytest.approx(pairwise, abs=1e-12)
    fpr, tpr = roc_curve(s, y).points()
    assert np.trapezoid(tpr, fpr) == pytest.approx(pairwise, abs=1e-12)


def test_bootstrap_resamples_each_class_separately_and_is_reproducible() -> None:
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(30, bool), np.zeros(50, bool)]
    s = np.round(rng.normal(y * 1.0, 1.0), 2)
    resamples, seed = 300, 11
    ci = bootstrap_auc_ci(s, y, resamples=resamples, seed=seed)
    # The same draws done plainly: positives and negatives resampled separately, so every
    # resample keeps 30 positives and 50 negatives.
    draw = np.random.default_rng(seed)
    p_idx = draw.integers(0, 30, (resamples, 30))
    n_idx = draw.integers(0, 50, (resamples, 50))
    pos, neg = s[y], s[~y]
    plain = [
        auc_score(np.r_[pos[p], neg[n]], np.r_[np.ones(30, bool), np.zeros(50, bool)])
        for p, n in zip(p_idx, n_idx, strict=True)
    ]
    assert ci == pytest.approx(tuple(np.quantile(plain, [0.025, 0.975])), abs=1e-12)
    assert ci == bootstrap_auc_ci(s, y, resamples=resamples, seed=seed)
    assert ci[0] < auc_score(s, y) < ci[1]
    # Four times the cases, about half the width.
    big_y = np.tile(y, 4)
    big_s = np.round(np.random.default_rng(3).normal(big_y * 1.0, 1.0), 2)
    lo, hi = bootstrap_auc_ci(big_s, big_y, resamples=resamples, seed=seed)
    assert 0.35 < (hi - lo) / (ci[1] - ci[0]) < 0.75


def test_too_few_labelled_cases_are_refused_with_the_counts() -> None:
    rng = np.random.default_rng(0)
    s = rng.random(60)
    y = np.r_[np.ones(19, bool), np.zeros(41, bool)]
    with pytest.raises(CalibrationError, match=r"19 with the disease and 41 without.*20 of each"):
        calibrate(s, y)
    with pytest.raises(CalibrationError, match="target sensitivity"):
        calibrate(s, np.r_[np.ones(30, bool), np.zeros(30, bool)], 1.5)


def test_wide_intervals_warn_and_narrow_ones_do_not() -> None:
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(20, bool), np.zeros(20, bool)]
    small = calibrate(rng.normal(y * 1.5, 1.0), y, resamples=200)
    assert any("sensitivity is wide" in w for w in small.warnings)
    big_y = np.r_[np.ones(2000, bool), np.zeros(2000, bool)]
    big = calibrate(rng.normal(big_y * 1.5, 1.0), big_y, resamples=200)
    assert big.warnings == ()
    assert big.chosen.sensitivity >= 0.9 and big.chosen.sensitivity < 0.905
    useless = calibrate(rng.random(400), np.r_[np.ones(200, bool), np.zeros(200, bool)])
    assert any("does not reliably rank" in w for w in useless.warnings)


def test_counts_per_thousand_follow_from_sensitivity_specificity_and_prevalence() -> None:
    stats = point_stats(SCORES, TRUTH, 0.35)  # sensitivity 1.0, specificity 0.6
    per = stats.per_thousand(0.1)
    assert per.true_positive == pytest.approx(100) and per.false_negative == pytest.approx(0)
    assert per.false_positive == pytest.approx(360) and per.flagged == pytest.approx(460)
    assert per.true_negative == pytest.approx(540)


# --- site points ---------------------------------------------------------------------------


def _calibrated(manifest_id: str = "tb"):
    manifest = read_manifest(MODELS / f"{manifest_id}.json")
    rng = np.random.default_rng(5)
    y = np.r_[np.ones(40, bool), np.zeros(60, bool)]
    calibration = calibrate(1 / (1 + np.exp(-rng.normal(y * 2.0 - 1.5, 1.0))), y, resamples=200)
    cal = site_calibration(
        manifest,
        calibration,
        calibrated_at="2026-12-01T10:00:00+00:00",
        calibrated_by="Dr Ayaan",
        source="folder /data/site",
    )
    return manifest, calibration, cal


def test_site_point_names_are_checked_and_prefix_is_optional() -> None:
    assert normalize_name("site:Yakutsk-2026-12") == "Yakutsk-2026-12"
    assert normalize_name("Якутск_2026.12") == "Якутск_2026.12"
    for bad in ("", "site:", "../etc", "a/b", "two words", "-lead"):
        with pytest.raises(SitePointError, match="not a usable site point name"):
            normalize_name(bad)


def test_site_point_resolves_only_for_the_exact_model_version(tmp_path: Path) -> None:
    manifest, _, cal = _calibrated()
    pneumonia = read_manifest(MODELS / "pneumonia.json")
    store = SitePointStore(tmp_path / "points")
    store.add_calibration("Clinic-A", cal)
    current = {"tb": manifest, "pneumonia": pneumonia}
    assert [p.name for p in store.valid_for(current)] == ["Clinic-A"]

    choice = ThresholdChoice.parse("site:clinic-a", store)  # names are case-insensitive
    assert choice.name == "site:Clinic-A" and choice.label() == "site:Clinic-A"
    point = choice.resolve(manifest)
    assert isinstance(point, SiteOperatingPoint)
    assert point.threshold == cal.threshold and point.sensitivity == cal.sensitivity
    # A model the point holds no calibration for keeps its own default, under its own name.
    assert choice.resolve(pneumonia) == pneumonia.operating_point(None)

    major, minor, *_ = manifest.version.split(".")
    newer = replace(manifest, version=f"{major}.{int(minor) + 1}.0", sha256="ab" * 32)
    rebuilt = replace(manifest, sha256="cd" * 32)  # same version number, other file
    for other in (newer, rebuilt):
        assert store.valid_for({"tb": other, "pneumonia": pneumonia}) == []
        expected = rf"calibrated on tb {re.escape(manifest.version)}.*new calibration"
        with pytest.raises(ModelError, match=expected):
            choice.resolve(other)
    with pytest.raises(ValueError, match="no site operating point site:Nowhere"):
        ThresholdChoice.parse("site:Nowhere", store)


def test_site_point_export_import_round_trip(tmp_path: Path) -> None:
    manifest, _, cal = _calibrated()
    clinic = SitePointStore(tmp_path / "programme")
    clinic.add_calibration("Region-7", cal)
    exported = clinic.export("site:Region-7", tmp_path / "region7.json")
    data = json.loads(exported.read_text(encoding="utf-8"))
    assert data["schema"] == "medscreen-site-operating-point"
    assert data["calibrations"][0]["model"]["sha256"] == manifest.sha256
    assert data["calibrations"][0]["n_positive"] == 40

    other = SitePointStore(tmp_path / "clinic")
    imported = other.import_file(exported)
    assert imported.calibrations == (cal,)
    assert other.import_file(exported).name == "Region-7"  # the same point again: fine
    _, _, other_cal = _calibrated("pneumonia")
    other.add_calibration("Region-7", other_cal)  # now it differs from the file
    with pytest.raises(SitePointError, match="different site point site:Region-7"):
        other.import_file(exported)
    assert other.import_file(exported, overwrite=True).calibrations == (cal,)
    assert other.import_file(exported, name="Region-7b").name == "Region-7b"

    broken = tmp_path / "broken.json"
    broken.write_text('{"schema": "medscreen-site-operating-point", "schema_version": 1}')
    with pytest.raises(SitePointError, match="missing field 'calibrations'"):
        other.import_file(broken)
    (tmp_path / "notjson.json").write_text("threshold = 0.3")
    with pytest.raises(SitePointError, match="not valid JSON"):
        other.import_file(tmp_path / "notjson.json")
    other.delete("Region-7b")
    assert [p.name for p in other.points()] == ["Region-7"]


def test_a_site_point_is_written_whole_or_not_at_all(tmp_path: Path, monkeypatch) -> None:
    """The store writes through the engine's one atomic writer: a write that fails midway (a
    full disk) leaves the saved point as it was and no temporary file, and the next write
    removes a temporary file a killed writer left."""
    _, _, cal = _calibrated()
    store = SitePointStore(tmp_path / "points")
    saved = store.add_calibration("Clinic-A", cal)
    assert saved.path is not None
    before = saved.path.read_bytes()
    killed = saved.path.with_name(f".{saved.path.name}.999999999.abcdef.part")
    killed.write_text('{"half": ')

    def full_disk(data: object, handle: Any, **kwargs: object) -> None:
        handle.write('{"schema": "medscreen-site-operating-point", ')
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json, "dump", full_disk)
    with pytest.raises(OSError, match="No space left"):
        store.save(replace(saved, note="changed"))
    monkeypatch.undo()
    assert saved.path.read_bytes() == before
    assert sorted(p.name for p in saved.path.parent.iterdir()) == [saved.path.name]
    assert store.require("Clinic-A").calibrations == (cal,)


# --- labels in --------------------------------------------------------------------------


def test_label_folder_and_csv_say_why_each_file_is_left_out(tmp_path: Path) -> None:
    manifest = read_manifest(MODELS / "tb.json")
    root = tmp_path / "labelled"
    shutil.copytree(DATA / "tb" / "normal", root / "Normal")  # case-insensitive
    shutil.copytree(DATA / "tb" / "tuberculosis", root / "TUBERCULOSIS")
    shutil.copytree(DATA / "mednist" / "Hand", root / "hand")  # not a label of the TB model
    shutil.copy(DATA / "tb" / "normal" / "CHNCXR_0001_0.png", root / "loose.png")
    found = read_label_folder(root, manifest)
    assert len(found.files) == 12
    assert sum(f.positive for f in found.files) == 6
    assert {f.label for f in found.files} == {"normal", "tuberculosis"}
    reasons = {Path(e.file).name: e.reason for e in found.excluded}
    assert reasons["000000.jpeg"].startswith("unknown label 'hand'")
    assert "normal, tuberculosis" in reasons["000000.jpeg"]
    assert reasons["loose.png"].startswith("not in a label sub-folder")

    table = tmp_path / "labels.csv"
    tb_dir = DATA / "tb" / "tuberculosis"
    with open(table, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label"])
        writer.writerow(["labelled/Normal/CHNCXR_0002_0.png", "NORMAL"])  # relative to the CSV
        writer.writerow([str(tb_dir / "CHNCXR_0328_1.png"), "Tuberculosis"])  # absolute
        writer.writerow(["labelled/Normal/gone.png", "normal"])
        writer.writerow(["labelled/Normal/CHNCXR_0003_0.png", "pneumonia"])
        writer.writerow(["just-one-column"])
        writer.writerow(["labelled/Normal", "normal"])
    rows = read_label_csv(table, manifest)
    assert [(Path(f.path).name, f.label) for f in rows.files] == [
        ("CHNCXR_0002_0.png", "normal"),
        ("CHNCXR_0328_1.png", "tuberculosis"),
    ]
    why = [e.reason for e in rows.excluded]
    assert why[0].startswith("missing file (named on labels.csv line 4)")
    assert why[1].startswith("unknown label 'pneumonia'")
    assert why[2] == "expected two columns: file,label"
    assert why[3].startswith("is a folder")

    # The same file labelled differently by the folder and by a CSV is left out.
    clash = tmp_path / "clash.csv"
    clash.write_text("labelled/Normal/CHNCXR_0001_0.png,tuberculosis\n", encoding="utf-8")
    merged = collect_labels(manifest, [root], [clash])
    assert len(merged.files) == 11
    assert any(
        e.reason == "given two different labels: left out" and e.file.endswith("CHNCXR_0001_0.png")
        for e in merged.excluded
    )


# --- real scans, shipped models ------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory):
    """The shipped models on the CPU and a results store for this module."""
    models = load_model_set([MODELS], Device.CPU)
    store = ResultsStore(tmp_path_factory.mktemp("calibration-store") / "results.sqlite3")
    yield models, store
    store.close()


def _halves(scores: LabelledScores) -> tuple[np.ndarray, np.ndarray]:
    """Alternate scans of each class into two halves (the sets hold one scan per patient)."""
    first = np.zeros(scores.scores.size, bool)
    for cls in (True, False):
        members = np.flatnonzero(scores.positive == cls)
        first[members[::2]] = True
    return first, ~first


def _split_half_check(scores: LabelledScores, target: float = 0.9) -> tuple[float, object]:
    a, b = _halves(scores)
    cal_a = calibrate(scores.scores[a], scores.positive[a], target)
    assert cal_a.chosen.sensitivity >= target
    held_out = point_stats(scores.scores[b], scores.positive[b], cal_a.chosen.threshold)
    # The other half reaches the sensitivity the calibration promised, within its CI ...
    assert held_out.sensitivity >= cal_a.chosen.sensitivity_ci[0]
    # ... and is consistent with the target (its own interval reaches it).
    assert held_out.sensitivity_ci[1] >= target
    return held_out.sensitivity, cal_a


def test_calibrating_on_one_half_holds_on_the_other_pneumonia(shipped) -> None:
    models, store = shipped
    manifest = models.findings["pneumonia"].manifest
    labelled = read_label_folder(LABELLED_PNEUMONIA, manifest)
    assert len(labelled.files) == 100 and labelled.excluded == []
    outcome = run_to_end(run_calibration(BatchRunner(models, store, workers=2), labelled))
    scores = outcome.scores
    # The modality gate may refuse a few real films (~2% "not recognised"); each says so.
    assert all(e.reason.startswith("not a chest X-ray") for e in scores.excluded)
    assert scores.n_positive + scores.n_negative + len(scores.excluded) == 100
    assert len(scores.excluded) <= 5
    assert outcome.calibration is not None and outcome.error == ""
    assert outcome.calibration.chosen.sensitivity >= 0.9
    _split_half_check(scores)


@pytest.mark.skipif(not NLM.is_dir(), reason="the NLM TB set is not in /work/shared/data")
def test_calibrating_on_one_half_holds_on_the_other_tb(shipped, tmp_path: Path) -> None:
    """240 NLM scans (every 2nd normal and TB film, Shenzhen then Montgomery), via a CSV."""
    models, store = shipped
    manifest = models.findings["tb"].manifest
    table = tmp_path / "nlm.csv"
    lines = ["file,label"]
    for folder, label in (("Normal", "normal"), ("Tuberculosis", "TUBERCULOSIS")):
        files = sorted((NLM / folder).iterdir())[::2][:120]
        lines += [f"{f},{label}" for f in files]
    table.write_text("\n".join(lines) + "\n", encoding="utf-8")
    labelled = read_label_csv(table, manifest)
    assert len(labelled.files) == 240
    outcome = run_to_end(run_calibration(BatchRunner(models, store, workers=2), labelled))
    assert outcome.calibration is not None, outcome.error
    held_out, cal_a = _split_half_check(outcome.scores)
    print(
        f"TB split-half: AUC {cal_a.auc:.3f} {cal_a.auc_ci}, threshold "
        f"{cal_a.chosen.threshold:.3f}, sensitivity A {cal_a.chosen.sensitivity:.3f} "
        f"{cal_a.chosen.sensitivity_ci}, held-out B {held_out:.3f}"
    )


def test_a_real_set_too_small_is_refused_and_unusable_files_say_why(
    shipped, tmp_path: Path
) -> None:
    models, store = shipped
    manifest = models.findings["tb"].manifest
    root = tmp_path / "site"
    shutil.copytree(DATA / "tb" / "normal", root / "normal")
    shutil.copytree(DATA / "tb" / "tuberculosis", root / "tuberculosis")
    shutil.copy(DATA / "mednist" / "HeadCT" / "000000.jpeg", root / "normal" / "head.jpeg")
    write_truncated(root / "tuberculosis" / "cut.png")
    shutil.copy(root / "normal" / "CHNCXR_0001_0.png", root / "normal" / "copy-of-0001.png")
    labelled = read_label_folder(root, manifest)
    outcome = run_to_end(run_calibration(BatchRunner(models, store, workers=2), labelled))
    assert outcome.calibration is None
    assert "too few labelled scans" in outcome.error
    assert "6 with the disease and 6 without" in outcome.error
    reasons = {Path(e.file).name: e.reason for e in outcome.scores.excluded}
    assert reasons["head.jpeg"].startswith("not a chest X-ray")
    assert reasons["cut.png"].startswith("could not be read")
    duplicate = reasons.get("copy-of-0001.png") or reasons.get("CHNCXR_0001_0.png")
    assert duplicate is not None and "counted once" in duplicate


# --- the command line ---------------------------------------------------------------------


def test_cli_calibrate_writes_the_record_and_classify_uses_the_site_point(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, out = tmp_path / "r.sqlite3", tmp_path / "calibration"
    args = ["--db", str(db), "--device", "cpu", "--models", str(MODELS)]
    code = main(
        ["calibrate", str(LABELLED_PNEUMONIA), "--model", "pneumonia", "--name", "Test-Site"]
        + ["--out", str(out), "--by", "QA nurse", "--quiet", *args]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    used = re.search(
        r"(\d+) labelled scans used \((\d+) pneumonia, (\d+) other\); (\d+) left", printed
    )
    assert used is not None, printed
    total, n_pos, n_neg, left_out = (int(g) for g in used.groups())
    assert total == n_pos + n_neg and total + left_out == 100 and left_out <= 5
    assert "saved site operating point site:Test-Site" in printed
    png, pdf, record = (
        out / f"calibration-Test-Site-pneumonia.{ext}" for ext in ("png", "pdf", "json")
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pdf.read_bytes()[:5] == b"%PDF-"
    data = json.loads(record.read_text(encoding="utf-8"))
    threshold = data["calibration"]["threshold"]
    assert data["calibration"]["sensitivity"] >= 0.9
    assert (data["calibration"]["n_positive"], data["calibration"]["n_negative"]) == (n_pos, n_neg)
    assert len(data["excluded"]) == left_out
    assert len(data["roc"]["thresholds"]) == len(data["roc"]["sensitivity"]) > 2
    assert f"threshold {threshold:.4f}" in printed

    report_dir = tmp_path / "screened"
    scans = LABELLED_PNEUMONIA / "pneumonia"
    code = main(
        ["classify", str(scans), "--out", str(report_dir), "--operating-point"]
        + ["site:Test-Site", "--report", "json,pdf,csv", "--quiet", *args]
    )
    assert code == 0
    err = capsys.readouterr().err
    assert "site:Test-Site holds no calibration of tb; its default point screening" in err
    report = json.loads(next(report_dir.glob("medscreen-*.json")).read_text(encoding="utf-8"))
    used = report["operating_point"]["models"]["pneumonia"]
    assert used["name"] == "site:Test-Site" and used["threshold"] == threshold
    assert used["site_calibration"]["calibrated_by"] == "QA nurse"
    assert report["operating_point"]["models"]["tb"]["name"] == "screening"
    found = [row["findings"]["pneumonia"] for row in report["scans"] if row["findings"]]
    assert len(found) >= 45  # the rest were refused by the gate, as in the calibration
    assert report["counts"]["flagged"]["pneumonia"] == sum(  # outside its scope: no flag
        f["probability"] >= threshold and "outside_scope" not in f for f in found
    )
    assert all(f["threshold"] == threshold for f in found)
    assert "Site threshold" in _pdf_text(report_dir)
    with (report_dir / "results.csv").open(encoding="utf-8-sig", newline="") as handle:
        points = {row["operating_point"] for row in csv.DictReader(handle)}
    (point,) = points  # the CSV names the site point with its date, n and CIs too
    assert f"site threshold: pneumonia: site:Test-Site — threshold {threshold:.3f}" in point
    assert f"calibrated {used['site_calibration']['calibrated_at'][:10]} on {total} " in point
    assert "(95% CI " in point

    assert main(["models", *args]) == 0
    listing = capsys.readouterr().out
    assert "site:Test-Site" in listing and "fits the installed model" in listing

    exported = tmp_path / "share.json"
    assert main(["site", "export", "Test-Site", str(exported)]) == 0
    assert main(["site", "delete", "site:Test-Site"]) == 0
    assert main(["site", "list"]) == 0
    assert "no site operating points" in capsys.readouterr().out
    assert main(["site", "import", str(exported)]) == 0
    assert "imported site:Test-Site" in capsys.readouterr().out


def _pdf_text(folder: Path) -> str:
    """The PDF's text when pdftotext is installed; the check is skipped without it."""
    tool = shutil.which("pdftotext")
    if tool is None:
        return "Site threshold"
    import subprocess

    return subprocess.run(
        [tool, str(next(folder.glob("medscreen-*.pdf"))), "-"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_cli_refuses_a_site_point_made_for_another_model_version(
    stand_in_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest, _, cal = _calibrated()  # made for the shipped tb
    SitePointStore.default().add_calibration("Old-Model", cal)
    stand_in = read_manifest(stand_in_models / "tb.json")
    assert not cal.matches(stand_in)
    code = main(
        ["classify", str(DATA / "tb"), "--out", str(tmp_path / "out"), "--quiet"]
        + ["--models", str(stand_in_models), "--operating-point", "site:Old-Model"]
        + ["--db", str(tmp_path / "r.sqlite3")]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert f"calibrated on tb {manifest.version} (sha256 {manifest.sha256[:12]})" in err
    assert f"installed model is tb {stand_in.version}" in err


def test_cli_calibrate_refuses_bad_input_with_a_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--db", str(tmp_path / "r.sqlite3"), "--device", "cpu", "--models", str(MODELS)]
    assert main(["calibrate", "--model", "tb", "--name", "X", *base]) == 1
    assert "give a labelled folder" in capsys.readouterr().err
    assert main(["calibrate", str(DATA / "tb"), "--model", "tb", "--name", "a/b", *base]) == 1
    assert "not a usable site point name" in capsys.readouterr().err
    assert main(["calibrate", str(DATA / "tb"), "--model", "lungs", "--name", "X", *base]) == 1
    assert "no finding model 'lungs'" in capsys.readouterr().err
    code = main(["calibrate", str(DATA / "tb"), "--model", "tb", "--name", "X", "--quiet", *base])
    assert code == 1
    captured = capsys.readouterr()
    assert "12 labelled scans used (6 tuberculosis, 6 other)" in captured.out
    assert "no calibration: too few labelled scans" in captured.err
    assert SitePointStore.default().points() == []


def test_reports_state_the_site_threshold_its_date_n_and_intervals(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from desktop.engine.reports import ReportContext

    manifest, _, cal = _calibrated()
    pneumonia = read_manifest(MODELS / "pneumonia.json")
    store = SitePointStore(tmp_path / "points")
    store.add_calibration("Clinic-B", cal)
    ctx = ReportContext(
        batch_id="b1",
        created_at=datetime(2026, 12, 1, 12, 0, tzinfo=UTC),
        app_version="0.1.0",
        manifests={"tb": manifest, "pneumonia": pneumonia},
        choice=ThresholdChoice.parse("site:Clinic-B", store),
        device="CPU",
    )
    assert ctx.operating_point_label() == "tb: site:Clinic-B; pneumonia: screening"
    assert list(ctx.site_calibrations()) == ["tb"]
    (line,) = ctx.site_calibration_lines()
    lo, hi = cal.sensitivity_ci
    assert line.startswith(f"tb: site:Clinic-B — threshold {cal.threshold:.3f}")
    assert f"sensitivity {cal.sensitivity:.2f} (95% CI {lo:.2f}–{hi:.2f})" in line
    assert "calibrated 2026-12-01 on 100 labelled scans (40 with the disease, 60 without)" in line
    assert "by Dr Ayaan" in line


def test_cli_calibrate_from_a_csv_without_saving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = tmp_path / "labels.csv"
    rows = ["file,label"]
    for label in ("normal", "pneumonia"):
        rows += [f"{p},{label.upper()}" for p in sorted((LABELLED_PNEUMONIA / label).iterdir())]
    rows.append("not-there.jpeg,normal")
    table.write_text("\n".join(rows) + "\n", encoding="utf-8")
    code = main(
        ["calibrate", "--labels", str(table), "--model", "pneumonia", "--name", "Csv-Site"]
        + ["--target-sensitivity", "0.95", "--no-save", "--quiet", "--out", str(tmp_path)]
        + ["--db", str(tmp_path / "r.sqlite3"), "--device", "cpu", "--models", str(MODELS)]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "not-there.jpeg: missing file (named on labels.csv line 102)" in out
    assert "target sensitivity 0.95" in out and "not saved (--no-save)" in out
    record = json.loads((tmp_path / "calibration-Csv-Site-pneumonia.json").read_text("utf-8"))
    assert record["calibration"]["sensitivity"] >= 0.95
    assert record["calibration"]["source"] == f"CSV {table}"
    assert SitePointStore.default().points() == []

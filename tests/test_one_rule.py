"""Every rule once: the CLI, the window and the reports apply the engine's one definition.

The flag rule, the status words, the counts, the report-format parser, the report context and
DICOM windowing each had a second copy in the GUI or the CLI, and the copies drifted (the
table said "Not screened" where the PDF said "not a chest X-ray"; the viewer's windowing
ignored SIGMOID and VOI LUT). These tests run a real batch (real scans, stand-in ONNX models)
and check that every face gives the engine's answer.
"""

from __future__ import annotations

import io
import os
import shutil
from datetime import UTC
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pydicom
import pytest

from desktop import __version__, cli
from desktop.engine.dicom import window_raw
from desktop.engine.loading import load_scan
from desktop.engine.registry import ModelSet, load_model_set
from desktop.engine.reports import ReportContext, parse_formats, write_json
from desktop.engine.reports import _common as report_common
from desktop.engine.results import (
    STATUS_TEXT,
    BatchCounts,
    ScanResult,
    ScanStatus,
    ThresholdChoice,
    flags_for,
    status_text,
)
from desktop.engine.runner import BatchRunner, run_to_end
from desktop.engine.store import ResultsStore
from desktop.engine.vocabulary import counted
from tests.conftest import DATA
from tests.fixtures import cr_dataset, cr_stored, write_cr_variant, write_dicom

CHOICES = [ThresholdChoice(), ThresholdChoice(name="balanced"), ThresholdChoice(threshold=0.3)]


@pytest.fixture(scope="module")
def batch(stand_in_models: Path, tmp_path_factory: pytest.TempPathFactory):
    """A real batch: chest X-rays of both datasets, MedNIST non-chests, DICOM, a broken file."""
    root = tmp_path_factory.mktemp("scans")
    for sub in ("tb", "pneumonia", "mednist/Hand", "mednist/HeadCT", "dicom"):
        shutil.copytree(DATA / sub, root / sub)
    (root / "broken.png").write_bytes((DATA / "dicom" / "CR-MONO1-10-chest.dcm").read_bytes()[:900])
    store = ResultsStore(tmp_path_factory.mktemp("db") / "results.sqlite3")
    models = load_model_set([stand_in_models])
    summary = run_to_end(BatchRunner(models, store, workers=2).run([root]))
    results = list(store.batch_results(summary.batch_id))
    yield models, results, summary.batch_id
    store.close()


def _hand_count(results: list[ScanResult], models: ModelSet, choice: ThresholdChoice) -> dict:
    """The rule written out independently, to check the engine's numbers against."""
    flagged = {mid: 0 for mid, m in models.manifests.items() if m.role == "finding"}
    any_flag = 0
    for r in results:
        hit = False
        for mid in flagged:
            f = r.findings.get(mid)
            if f is not None and f.probability >= choice.resolve(models.manifests[mid]).threshold:
                flagged[mid] += 1
                hit = True
        any_flag += hit
    return {
        "total": len(results),
        "screened": sum(r.status is ScanStatus.OK for r in results),
        "not_chest_xray": sum(r.status is ScanStatus.NOT_CHEST_XRAY for r in results),
        "errors": sum(r.status is ScanStatus.ERROR for r in results),
        "flagged": flagged,
        "flagged_any": any_flag,
    }


def test_the_batch_has_every_status(batch):
    _, results, _ = batch
    statuses = {r.status for r in results}
    assert statuses == set(ScanStatus), statuses


@pytest.mark.parametrize("choice", CHOICES, ids=lambda c: c.label())
def test_batch_counts_match_the_rule(batch, choice: ThresholdChoice):
    models, results, _ = batch
    counts = BatchCounts.of(iter(results), models.manifests, choice)  # any iterable
    expected = _hand_count(results, models, choice)
    assert counts.total == expected["total"] == len(results)
    assert counts.screened == expected["screened"]
    assert counts.not_chest_xray == expected["not_chest_xray"]
    assert counts.errors == expected["errors"]
    assert dict(counts.flagged) == expected["flagged"]
    assert counts.flagged_any == expected["flagged_any"]
    # counting in chunks (as the table does while rows arrive) gives the same totals
    half = len(results) // 2
    chunked = BatchCounts.of(results[:half], models.manifests, choice) + BatchCounts.of(
        results[half:], models.manifests, choice
    )
    assert chunked == counts


@pytest.mark.gui
@pytest.mark.parametrize("choice", CHOICES, ids=lambda c: c.label())
def test_table_model_uses_the_engine_flags_counts_and_words(qapp, batch, choice):
    from desktop.gui.results_model import Column, FlaggedRole, ResultsModel

    models, results, _ = batch
    model = ResultsModel()
    model.set_manifests(models.manifests)
    model.set_choice(choice)
    model.append(results[:7])
    model.append(results[7:])
    assert model.counts() == BatchCounts.of(results, models.manifests, choice)
    status_col = model.column_of(Column.STATUS)
    for row, result in enumerate(results):
        engine_flags = flags_for(result, models.manifests, choice)
        assert model.flags_of(result) == engine_flags
        assert model.index(row, 0).data(FlaggedRole) == any(bool(f) for f in engine_flags.values())
        assert model.index(row, status_col).data() == STATUS_TEXT[result.status]


@pytest.mark.parametrize("choice", CHOICES, ids=lambda c: c.label())
def test_reports_count_with_the_engine(batch, choice, tmp_path):
    import json

    models, results, batch_id = batch
    ctx = ReportContext.for_batch(batch_id, models, choice)
    counts = BatchCounts.of(results, models.manifests, choice)
    assert report_common.count(results, ctx) == counts
    data = json.loads(write_json(results, ctx, tmp_path / "r.json").read_text(encoding="utf-8"))
    written = data["counts"] if "counts" in data else data["batch"]["counts"]
    assert written["flagged"] == dict(counts.flagged)
    assert written["flagged_any"] == counts.flagged_any
    assert written["not_chest_xray"] == counts.not_chest_xray


def test_status_words_are_one_vocabulary():
    assert report_common.STATUS_TEXT is STATUS_TEXT
    assert set(STATUS_TEXT) == set(ScanStatus)
    assert STATUS_TEXT[ScanStatus.NOT_CHEST_XRAY] == "Not a chest X-ray"
    assert status_text("not_chest_xray") == "Not a chest X-ray"
    assert status_text("from_a_newer_build") == "from_a_newer_build"


def test_cli_summary_prints_the_engine_counts(batch):
    models, results, batch_id = batch
    ctx = ReportContext.for_batch(batch_id, models, ThresholdChoice(threshold=0.3))
    counts = BatchCounts.of(results, models.manifests, ctx.choice)
    out = io.StringIO()
    cli._print_summary(None, results, ctx, [], out)
    text = out.getvalue()
    assert (
        f"{counted(counts.total, 'file')}: {counts.screened} screened, "
        f"{counted(counts.not_chest_xray, 'not chest X-ray')}, {counted(counts.errors, 'error')}"
    ) in text
    for mid, n in counts.flagged.items():
        assert f"{mid}: {n} flagged at custom (threshold 0.300)" in text


def test_cli_parses_report_formats_with_the_engine(tmp_path, stand_in_models, capsys):
    assert not hasattr(cli, "REPORT_FORMATS") and not hasattr(cli, "_parse_formats")
    with pytest.raises(ValueError) as engine_error:
        parse_formats(["PDF, xml"])
    code = cli.main(
        [
            "classify",
            str(DATA / "tb"),
            "--out",
            str(tmp_path / "out"),
            "--report",
            "PDF, xml",
            "--models",
            str(stand_in_models),
            "--db",
            str(tmp_path / "r.sqlite3"),
            "--quiet",
        ]
    )
    assert code == 1
    assert capsys.readouterr().err.strip() == f"medscreen: error: {engine_error.value}"
    assert not (tmp_path / "r.sqlite3").exists()  # refused before any work


def test_report_context_is_built_once_for_cli(tmp_path, stand_in_models, monkeypatch):
    made: list[ReportContext] = []
    original = ReportContext.for_batch.__func__

    def recording(cls, *args, **kwargs):
        ctx = original(cls, *args, **kwargs)
        made.append(ctx)
        return ctx

    monkeypatch.setattr(ReportContext, "for_batch", classmethod(recording))
    code = cli.main(
        [
            "classify",
            str(DATA / "tb" / "normal"),
            "--out",
            str(tmp_path / "out"),
            "--clinic",
            "Mbale",
            "--operator",
            "RN Okello",
            "--operating-point",
            "0.4",
            "--models",
            str(stand_in_models),
            "--db",
            str(tmp_path / "r.sqlite3"),
            "--quiet",
        ]
    )
    assert code == 0
    assert len(made) == 1
    ctx = made[0]
    assert ctx.created_at.tzinfo is UTC and ctx.app_version == __version__
    assert ctx.clinic_name == "Mbale" and ctx.operator == "RN Okello"
    assert ctx.choice == ThresholdChoice(threshold=0.4)
    assert ctx.device.startswith("CPU") and not ctx.include_identifiers


# -- DICOM windowing: the viewer's re-windowing is the loader's ---------------------------------
def test_window_raw_at_the_files_window_is_what_the_models_saw(tmp_path):
    for function in ("LINEAR", "SIGMOID", "LINEAR_EXACT"):
        path = write_cr_variant(tmp_path / f"{function}.dcm", VOILUTFunction=function)
        scan = load_scan(path, keep_raw=True)
        assert scan.metadata.window == (550.0, 1024.0)
        np.testing.assert_allclose(
            window_raw(scan, *scan.metadata.window), scan.pixels, atol=1e-6, err_msg=function
        )
    # SIGMOID really differs from a linear window: the test above would see a linear copy
    sigmoid = load_scan(tmp_path / "SIGMOID.dcm", keep_raw=True)
    linear = load_scan(tmp_path / "LINEAR.dcm", keep_raw=True)
    assert float(np.abs(sigmoid.pixels - linear.pixels).max()) > 0.05


def _voi_lut_file(tmp_path: Path) -> Path:
    ds = cr_dataset()
    del ds.WindowCenter, ds.WindowWidth
    item = pydicom.Dataset()
    lut = (np.sqrt(np.arange(1024) / 1023) * 4095).astype(np.uint16)
    item.add_new(0x00283002, "US", [1024, 0, 12])
    item.add_new(0x00283006, "US", lut.tolist())
    ds.VOILUTSequence = pydicom.Sequence([item])
    return write_dicom(tmp_path / "voilut.dcm", ds)


@pytest.mark.gui
@pytest.mark.parametrize("kind", ["sigmoid", "voi_lut"])
def test_viewer_shows_the_files_own_voi(qtbot, tmp_path, kind):
    from desktop.gui.viewer import ScanViewer

    if kind == "sigmoid":
        path = write_cr_variant(tmp_path / "sigmoid.dcm", VOILUTFunction="SIGMOID")
    else:
        path = _voi_lut_file(tmp_path)
    scan = load_scan(path, keep_raw=True)
    assert scan.raw is not None and scan.raw.shape == cr_stored().shape
    result = ScanResult(file=str(path), sha256=scan.sha256, status=ScanStatus.OK)
    viewer = ScanViewer(result, {}, ThresholdChoice())
    qtbot.addWidget(viewer)
    with qtbot.waitSignal(viewer.image_ready, timeout=30_000):
        pass
    assert viewer.center.isEnabled()
    np.testing.assert_allclose(viewer._grey, scan.pixels, atol=1e-6)
    # the user narrows the window: the engine's windowing, with the file's VOI function
    viewer.width_slider.setValue(max(2, viewer.width_slider.value() // 4))
    viewer._render_base()
    centre, width = viewer._window
    np.testing.assert_allclose(viewer._grey, window_raw(scan, centre, width), atol=1e-6)
    assert float(np.abs(viewer._grey - scan.pixels).mean()) > 0.01
    viewer._reset_window()
    np.testing.assert_allclose(viewer._grey, scan.pixels, atol=1e-6)
    viewer.close()

"""The Calibrate dialog and the operating-point picker's site points (pytest-qt, offscreen).

The dialog runs the real engine with the shipped models on the labelled Kermany fixture set
(tests/data/calibration/pneumonia); what it shows is checked against the engine's own
figures for the same scans, so the test holds for any replacement model.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QPoint, Qt

from desktop.engine.calibration import calibrate
from desktop.engine.inference import Device
from desktop.engine.manifest import read_manifest
from desktop.engine.registry import load_model_set
from desktop.engine.results import ThresholdChoice
from desktop.engine.site_points import SiteOperatingPoint, SitePointStore, site_calibration
from desktop.engine.store import ResultsStore
from desktop.gui import workers
from desktop.gui.calibrate_dialog import CalibrateDialog
from desktop.gui.main_window import MainWindow
from desktop.gui.operating_point import OperatingPointPicker
from desktop.gui.qt_compat import emit
from desktop.gui.settings import AppSettings

pytestmark = pytest.mark.gui

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
MODELS = REPO / "assets" / "models"
LABELLED = DATA / "calibration" / "pneumonia"
WAIT_MS = 120_000


@pytest.fixture(autouse=True)
def _no_threads_left(qapp):
    yield
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and workers.live_workers():
        qapp.processEvents()
        time.sleep(0.02)
    assert not workers.live_workers(), f"worker threads left running: {workers.live_workers()}"
    left = [t.name for t in threading.enumerate() if t.name.startswith("medscreen")]
    assert not left, f"engine threads left running: {left}"


@pytest.fixture(scope="module")
def shipped():
    return load_model_set([MODELS], Device.CPU)


@pytest.fixture
def store(tmp_path: Path):
    db = ResultsStore(tmp_path / "results.sqlite3")
    yield db
    db.close()


def _dialog(
    qtbot,
    shipped,
    store,
    tmp_path: Path,
    model: str = "pneumonia",
    source: Path = LABELLED,
    csv: bool = False,
) -> CalibrateDialog:
    """The dialog shown, with ``model`` chosen and ``source`` (a labelled folder, or a CSV
    table with ``csv``) set, ready to start."""
    dialog = CalibrateDialog(
        shipped,
        store,
        site_store=SitePointStore(tmp_path / "site_points"),
        operator="QA nurse",
        record_dir=tmp_path / "records",
    )
    qtbot.addWidget(dialog)
    dialog.show()
    dialog.set_model(model)
    dialog.set_source(source, csv=csv)
    return dialog


def test_dialog_calibrates_moves_the_point_and_saves_a_site_point(
    qtbot, shipped, store, tmp_path: Path
) -> None:
    dialog = _dialog(qtbot, shipped, store, tmp_path)
    assert dialog.run_button.isEnabled() and not dialog.save_button.isEnabled()
    with qtbot.waitSignal(dialog.calibrated, timeout=WAIT_MS) as blocker:
        dialog.start()
    outcome = blocker.args[0]
    qtbot.waitUntil(lambda: not dialog.is_running(), timeout=WAIT_MS)
    assert outcome.calibration is not None, outcome.error
    scores = outcome.scores
    # The dialog shows the engine's figures for the same scans.
    expected = calibrate(scores.scores, scores.positive, 0.9)
    assert dialog.slider.value() == expected.chosen_index
    assert dialog.current_point() == expected.chosen
    text = dialog.figures.text()
    assert f"Threshold {expected.chosen.threshold:.3f}" in text
    assert f"Sensitivity {expected.chosen.sensitivity:.2f}" in text
    assert "that of your labelled set" in text
    assert f"{scores.n_positive + scores.n_negative} labelled scans used" in dialog.status.text()

    # Moving the point to the strictest threshold: fewer flagged, figures follow.
    dialog.move_point(0)
    strict = dialog.current_point()
    assert strict.threshold > expected.chosen.threshold
    assert strict.confusion.tp < expected.chosen.confusion.tp
    assert f"Threshold {strict.threshold:.3f}" in dialog.figures.text()
    assert "moved by hand" in dialog.figures.text() and dialog.reset_button.isEnabled()
    # Per 1,000 at a prevalence the clinic enters: the text says it was entered.
    dialog.prevalence.setValue(5.0)
    per = strict.per_thousand(0.05)
    assert f"{per.flagged:.0f} flagged" in dialog.figures.text()
    assert "entered above, not measured" in dialog.figures.text()
    # A click on the curve picks the nearest vertex.
    dialog.reset_button.click()
    assert dialog.slider.value() == expected.chosen_index
    roc = dialog.roc
    left, top, side = roc._frame()
    with qtbot.waitSignal(roc.point_picked) as picked:
        qtbot.mouseClick(roc, Qt.MouseButton.LeftButton, pos=QPoint(int(left + side), int(top)))
    assert picked.args == [len(expected.roc.thresholds) - 1]  # (1, 1): flag everything

    dialog.move_point(0)
    dialog.name_edit.setText("Guangzhou-Test")
    with (
        qtbot.waitSignal(dialog.saved) as saved_signal,
        qtbot.waitSignal(dialog.record_written, timeout=WAIT_MS) as written,
    ):
        dialog.save_button.click()
    point = saved_signal.args[0]
    cal = point.for_model("pneumonia")
    assert point.choice_name == "site:Guangzhou-Test"
    assert cal.threshold == strict.threshold and cal.chosen_by == "manual"
    assert cal.calibrated_by == "QA nurse" and cal.n_positive == scores.n_positive
    assert cal.model_sha256 == shipped.findings["pneumonia"].manifest.sha256
    png, pdf, record = written.args[0]
    assert png.read_bytes()[:4] == b"\x89PNG" and pdf.read_bytes()[:5] == b"%PDF-"
    assert (
        json.loads(record.read_text(encoding="utf-8"))["calibration"]["threshold"] == cal.threshold
    )
    assert dialog.saved_combo.currentData() == "Guangzhou-Test"

    # Export, then import into another clinic's store.
    exported = dialog.export_point("Guangzhou-Test", tmp_path / "share.json")
    other = CalibrateDialog(shipped, store, site_store=SitePointStore(tmp_path / "other"))
    qtbot.addWidget(other)
    imported = other.import_point(exported)
    assert imported is not None and imported.calibrations == point.calibrations
    assert "Imported site:Guangzhou-Test." in other.status.text()
    dialog.close()


def test_dialog_refuses_a_set_too_small_and_lists_what_was_left_out(
    qtbot, shipped, store, tmp_path: Path
) -> None:
    dialog = _dialog(qtbot, shipped, store, tmp_path, "tb", DATA / "tb")  # 6 normal + 6 TB
    with qtbot.waitSignal(dialog.calibrated, timeout=WAIT_MS) as blocker:
        dialog.start()
    qtbot.waitUntil(lambda: not dialog.is_running(), timeout=WAIT_MS)
    assert blocker.args[0].calibration is None
    assert "No calibration: too few labelled scans" in dialog.status.text()
    assert "6 with the disease and 6 without" in dialog.status.text()
    assert not dialog.save_button.isEnabled() and not dialog.slider.isEnabled()
    assert dialog.save() is None


def test_dialog_csv_source_and_errors_reach_the_status(
    qtbot, shipped, store, tmp_path: Path
) -> None:
    table = tmp_path / "labels.csv"
    table.write_text(
        f"file,label\n{DATA / 'tb' / 'normal' / 'CHNCXR_0001_0.png'},normal\nmissing.png,normal\n",
        encoding="utf-8",
    )
    dialog = _dialog(qtbot, shipped, store, tmp_path, "tb", table, csv=True)
    with qtbot.waitSignal(dialog.calibrated, timeout=WAIT_MS):
        dialog.start()
    qtbot.waitUntil(lambda: not dialog.is_running(), timeout=WAIT_MS)
    assert "missing.png: missing file" in dialog.excluded_box.toPlainText()
    assert "1 labelled scans used" in dialog.status.text()


def _site_point_for(manifest, store: SitePointStore, name: str):
    rng = np.random.default_rng(2)
    y = np.r_[np.ones(30, bool), np.zeros(30, bool)]
    calibration = calibrate(rng.random(60) * 0.5 + y * 0.3, y, resamples=100)
    cal = site_calibration(manifest, calibration, calibrated_at="2026-12-01T09:00:00+00:00")
    return store.add_calibration(name, cal)


def test_picker_offers_site_points_only_for_the_loaded_model_versions(
    qtbot, tmp_path: Path
) -> None:
    tb = read_manifest(MODELS / "tb.json")
    pneumonia = read_manifest(MODELS / "pneumonia.json")
    store = SitePointStore.default()  # MEDSCREEN_HOME is a fresh folder per test
    point = _site_point_for(tb, store, "Clinic-A")
    picker = OperatingPointPicker()
    qtbot.addWidget(picker)
    picker.set_manifests({"tb": tb, "pneumonia": pneumonia}, "site:Clinic-A")
    items = [picker.combo.itemData(i) for i in range(picker.combo.count())]
    assert "site:Clinic-A" in items
    choice = picker.choice()
    assert choice == ThresholdChoice(name="site:Clinic-A", site=point)
    assert picker.setting_text() == "site:Clinic-A"
    assert isinstance(choice.resolve(tb), SiteOperatingPoint)
    assert "site sens" in picker.detail.text()

    # A new TB model version: the old site point is not offered, and the stored setting
    # falls back to the models' default instead of silently keeping the old threshold.
    newer = replace(tb, version="1.1.0", sha256="ab" * 32)
    with qtbot.waitSignal(picker.choice_changed) as changed:
        picker.set_manifests({"tb": newer, "pneumonia": pneumonia}, "site:Clinic-A")
    items = [picker.combo.itemData(i) for i in range(picker.combo.count())]
    assert "site:Clinic-A" not in items
    assert changed.args[0] == ThresholdChoice(name="screening")
    assert picker.choice().resolve(newer) == newer.operating_point("screening")


def test_main_window_tools_menu_opens_the_dialog_and_refreshes_the_picker(
    qtbot, tmp_path: Path
) -> None:
    window = MainWindow(
        settings=AppSettings(tmp_path / "settings.ini"),
        store=ResultsStore(tmp_path / "r.sqlite3"),
        model_dirs=[MODELS],
    )
    qtbot.addWidget(window)
    assert not window.act_calibrate.isEnabled()
    with qtbot.waitSignal(window.models_changed, timeout=WAIT_MS):
        window.start()
    assert window.act_calibrate.isEnabled()
    menus = {a.text(): a.menu() for a in window.menuBar().actions()}
    assert window.act_calibrate in menus["&Tools"].actions()
    window.act_calibrate.trigger()
    dialog = window.findChild(CalibrateDialog)
    assert dialog is not None and dialog.isVisible()
    # A point saved in the dialog appears in the window's picker at once.
    _site_point_for(window.models.findings["tb"].manifest, SitePointStore.default(), "New-Site")
    emit(dialog.saved, None)
    items = [window.op_picker.combo.itemData(i) for i in range(window.op_picker.combo.count())]
    assert "site:New-Site" in items
    dialog.close()
    window.close()
    window.store.close()


def test_closing_the_dialog_while_it_runs_stops_the_worker(
    qtbot, shipped, store, tmp_path: Path
) -> None:
    dialog = _dialog(qtbot, shipped, store, tmp_path)
    worker = dialog.start()
    assert worker is not None and dialog.is_running() and dialog.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: dialog.process_id is not None, timeout=WAIT_MS)
    pid = dialog.process_id
    dialog.close()  # cancels the batch process and waits for it: nothing left running
    assert not worker.is_running()
    with pytest.raises(ProcessLookupError):  # ended and reaped
        os.kill(pid, 0)


# -- the run in the batch process ------------------------------------------------------------
REFERENCE_AT = "2026-12-02T00:00:00+00:00"


@pytest.fixture(scope="module")
def reference(shipped, tmp_path_factory: pytest.TempPathFactory):
    """The labelled Kermany set calibrated the way the dialog did before the batch process:
    labels read, scans screened and calibrated by the engine in this process (own store)."""
    from desktop.engine.labelled import collect_labels, run_calibration
    from desktop.engine.runner import BatchRunner, run_to_end

    db = ResultsStore(tmp_path_factory.mktemp("reference") / "results.sqlite3")
    try:
        manifest = shipped.findings["pneumonia"].manifest
        labelled = collect_labels(manifest, [LABELLED])
        outcome = run_to_end(run_calibration(BatchRunner(shipped, db), labelled, 0.9))
    finally:
        db.close()
    assert outcome.calibration is not None, outcome.error
    return outcome


def _assert_same_calibration(outcome, reference) -> None:
    """Same scans, bit-identical scores, so the same curve, point and site point."""
    got, want = outcome.scores, reference.scores
    assert got.files == want.files and len(got.files) == 100
    assert np.array_equal(got.scores, want.scores)  # exact, not approximately
    assert np.array_equal(got.positive, want.positive)
    assert got.excluded == want.excluded
    cal, ref = outcome.calibration, reference.calibration
    assert cal is not None
    for name in ("thresholds", "values", "tpr", "fpr"):
        assert np.array_equal(getattr(cal.roc, name), getattr(ref.roc, name)), name
    assert (cal.auc, cal.auc_ci, cal.chosen_index) == (ref.auc, ref.auc_ci, ref.chosen_index)
    assert cal.chosen == ref.chosen
    manifest = reference.scores.manifest
    assert site_calibration(manifest, cal, calibrated_at=REFERENCE_AT) == site_calibration(
        manifest, ref, calibrated_at=REFERENCE_AT
    )


def _run(qtbot, dialog: CalibrateDialog, on_event=None):
    """Start the dialog's run and wait for its end; ``on_event(progress)`` is called in the
    worker thread for every event (to act at an exact point of the run)."""
    from PySide6.QtCore import Qt as QtNs

    with qtbot.waitSignal(dialog.calibrated, timeout=WAIT_MS) as blocker:
        worker = dialog.start()
        assert worker is not None
        if on_event is not None:
            worker.yielded.connect(on_event, type=QtNs.ConnectionType.DirectConnection)
    qtbot.waitUntil(lambda: not dialog.is_running(), timeout=WAIT_MS)
    return blocker.args[0]


def test_the_run_is_screened_in_the_batch_process_with_the_same_site_point(
    qtbot, shipped, store, tmp_path: Path, reference
) -> None:
    dialog = _dialog(qtbot, shipped, store, tmp_path)
    seen: dict[str, object] = {}

    def during(event) -> None:
        if "pid" not in seen:  # worker thread, the run going on
            seen["pid"] = dialog.process_id
            seen["threads"] = sorted(t.name for t in threading.enumerate())

    outcome = _run(qtbot, dialog, during)
    # screened in a child process: no decoder or inference thread in this one
    assert isinstance(seen["pid"], int) and seen["pid"] != os.getpid()
    assert not [n for n in seen["threads"] if n.startswith(("medscreen-decode", "medscreen-inf"))]
    assert dialog.process_id is None
    (batch,) = store.batches()
    assert batch.kind == "calibration" and batch.status == "completed"
    _assert_same_calibration(outcome, reference)
    assert dialog.slider.value() == reference.calibration.chosen_index
    # Saving works; a record that cannot be written is reported by its worker, not lost.
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the records folder should be", encoding="utf-8")
    dialog.record_dir = blocked
    dialog.name_edit.setText("Kermany-Test")
    assert dialog.save() is not None
    qtbot.waitUntil(lambda: dialog.last_error is not None, timeout=WAIT_MS)
    text = dialog.status.text()
    assert text.startswith("Saved site:Kermany-Test.") and "could not be written" in text
    assert "not-a-folder" in text and dialog.status.toolTip() == dialog.last_error.traceback


def test_cancel_keeps_the_dialog_usable_and_a_second_run_finishes_the_same(
    qtbot, shipped, store, tmp_path: Path, reference
) -> None:
    dialog = _dialog(qtbot, shipped, store, tmp_path)

    def cancel_early(event) -> None:  # what the Cancel button asks, at an exact point
        if event.done == 2:
            dialog._worker.quit()

    outcome = _run(qtbot, dialog, cancel_early)
    assert outcome.scores.cancelled and outcome.calibration is None
    assert 2 <= len(outcome.scores.files) < 100
    assert dialog.status.text().startswith("Cancelled: no calibration was made.")
    assert dialog.run_button.isEnabled() and not dialog.cancel_button.isEnabled()
    assert not dialog.save_button.isEnabled() and not dialog.progress.isVisible()
    assert dialog.prevalence.text() == "—"  # no set, no prevalence figure
    (batch,) = store.batches()
    assert batch.status == "cancelled" and batch.done == len(outcome.scores.files)
    # The dialog runs again; the scans screened before are reused; same result as unbroken.
    again = _run(qtbot, dialog)
    _assert_same_calibration(again, reference)
    assert dialog.save_button.isEnabled()
    prevalence = 100 * reference.calibration.prevalence
    assert dialog.prevalence.text() == f"{prevalence:.1f} %" and prevalence > 0.1


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGKILL"), reason="SIGKILL is POSIX")
def test_a_killed_calibration_process_is_shown_and_a_new_run_finishes(
    qtbot, shipped, store, tmp_path: Path, reference
) -> None:
    import signal

    from desktop.engine.batch_process import BatchProcessError
    from desktop.engine.store import BatchKind

    dialog = _dialog(qtbot, shipped, store, tmp_path)
    killed: list[int] = []

    def kill_early(event) -> None:
        if event.done == 2 and not killed:
            killed.append(dialog.process_id)
            os.kill(killed[0], signal.SIGKILL)

    worker = dialog.start()
    worker.yielded.connect(kill_early, type=Qt.ConnectionType.DirectConnection)
    qtbot.waitUntil(lambda: not dialog.is_running(), timeout=WAIT_MS)
    assert killed and dialog.outcome is None
    error = dialog.last_error
    assert isinstance(error.exception, BatchProcessError) and "SIGKILL" in str(error.exception)
    text = dialog.status.text()
    assert text.startswith("The calibration stopped: the screening process ended unexpectedly")
    assert "The scans screened so far are kept and are reused when you run it again" in text
    assert dialog.run_button.isEnabled() and not dialog.progress.isVisible()
    (batch,) = store.batches()
    assert len(list(store.batch_results(batch.id))) >= 2  # committed before reported
    # not offered to the main window's Resume (a calibration batch), run again instead
    assert store.interrupted_batches(BatchKind.SCREENING) == []
    _assert_same_calibration(_run(qtbot, dialog), reference)


def test_an_error_in_the_calibration_process_shows_its_message_and_traceback(
    qtbot, stand_in_models: Path, store, tmp_path: Path
) -> None:
    import shutil

    from desktop.engine.batch_process import BatchProcessError

    folder = tmp_path / "models"
    shutil.copytree(stand_in_models, folder)
    models = load_model_set([folder], Device.CPU)
    onnx = folder / models.findings["pneumonia"].manifest.file
    onnx.write_bytes(onnx.read_bytes() + b"\0")  # changed after the window verified it
    dialog = _dialog(qtbot, models, store, tmp_path)
    assert dialog.start() is not None
    qtbot.waitUntil(lambda: not dialog.is_running(), timeout=WAIT_MS)
    error = dialog.last_error
    assert isinstance(error.exception, BatchProcessError)
    assert error.exception.child_type == "ModelError" and onnx.name in error.exception.message
    assert "In the batch process" in error.traceback and "registry.py" in error.traceback
    text = dialog.status.text()
    assert text.startswith("The calibration could not run: ") and onnx.name in text
    assert text.endswith("The log file has the details.") and ".." not in text
    assert dialog.status.toolTip() == error.traceback
    assert dialog.outcome is None and dialog.run_button.isEnabled()
    assert store.batches() == []  # refused before any batch was made

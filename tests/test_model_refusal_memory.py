"""After ONNX Runtime refused a signed user package, MedScreen keeps to the bundled model.

:mod:`tests.test_model_open_fallback` shows the refusal itself: a batch process that cannot
open a user package opens the bundled one of its id and reports the set it opened. Here,
what follows from that report, on the same real package (a shipped model with one operator
renamed to one no ONNX Runtime has, signed by the test key):

* the Calibrate dialog, whose run fell back, judges and saves its site point against the
  model that produced the scores (the bundled one), says why, and hands the set to the window;
* a later plan (:func:`plan_model_set` with ``refused=``, the window's on a device change)
  skips the very package refused (same manifest file, same model sha256) and says so before
  any batch, until the package is replaced by a new download.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("pytestqt")

from desktop.engine.devices import Device
from desktop.engine.manifest import read_manifest
from desktop.engine.registry import load_model_set, open_model_set, plan_model_set
from desktop.engine.store import ResultsStore
from desktop.gui.calibrate_dialog import CalibrateDialog
from desktop.gui.main_window import MainWindow
from desktop.gui.settings import AppSettings
from tests.conftest import DATA
from tests.model_factory import sign, trust_test_key
from tests.test_model_open_fallback import ORT_REASON, SHIPPED, WAIT_MS, _newer, unopenable_package

LABELLED = DATA / "calibration" / "pneumonia"  # 50 normal + 50 pneumonia (Kermany)


def _refusal(user_manifest: Path, model_id: str) -> tuple[str, str]:
    """The refusal's start (file, id, version) and end (what is used instead)."""
    version = json.loads(user_manifest.read_text(encoding="utf-8"))["version"]
    return (
        f"model package {user_manifest} ({model_id} {version}) could not be opened by ONNX "
        "Runtime: ",
        f"; the {model_id} model in {SHIPPED / f'{model_id}.json'} is used instead",
    )


def _assert_refusal(problem: str, user_manifest: Path, model_id: str) -> None:
    start, end = _refusal(user_manifest, model_id)
    assert problem.startswith(start) and problem.endswith(end) and ORT_REASON in problem


def good_package(folder: Path, model_id: str = "tb") -> Path:
    """A new download in place of the broken package: the shipped ``model_id`` model as it
    is (ONNX Runtime opens it), newer than the shipped one, signed by the test key."""
    shutil.copyfile(SHIPPED / f"{model_id}.onnx", folder / f"{model_id}.onnx")
    manifest = json.loads((SHIPPED / f"{model_id}.json").read_text(encoding="utf-8"))
    manifest["version"] = _newer(manifest["version"])
    path = folder / f"{model_id}.json"
    path.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    sign(path)
    trust_test_key()
    return path


def _window(qtbot, tmp_path: Path, user: Path) -> MainWindow:
    window = MainWindow(
        settings=AppSettings(tmp_path / "settings.ini"),
        store=ResultsStore(tmp_path / "results.sqlite3"),
        model_dirs=[SHIPPED, user],
    )
    qtbot.addWidget(window)
    window.show()
    with qtbot.waitSignal(window.models_changed, timeout=WAIT_MS):
        window.start()
    return window


def test_a_plan_skips_a_package_refused_at_opening_until_its_file_changes(tmp_path: Path):
    user = tmp_path / "user"
    broken = unopenable_package(user)
    models = load_model_set([SHIPPED, user], Device.CPU, threads=1)
    (refused,) = models.refused
    data = (user / "tb.onnx").read_bytes()
    assert (refused.model_id, refused.path) == ("tb", broken)
    assert refused.sha256 == hashlib.sha256(data).hexdigest()
    assert (refused.problem,) == tuple(models.problems)
    assert models.plan.refused == models.refused  # what the batch process reports

    bundled = plan_model_set([SHIPPED], Device.CPU)
    plan = plan_model_set([SHIPPED, user], Device.CPU, refused=models.refused)
    assert plan.findings["tb"].manifest.path == SHIPPED / "tb.json"
    assert plan.key == bundled.key and "tb" not in plan.alternatives
    assert plan.problems == (refused.problem,) and plan.refused == (refused,)
    _assert_refusal(plan.problems[0], broken, "tb")
    opened = open_model_set(plan, threads=1)  # nothing refused again: same key, same words
    assert opened.key == plan.key and opened.problems == [refused.problem]
    assert opened.refused == (refused,)

    good = good_package(user)  # a new download: another sha256, planned again
    again = plan_model_set([SHIPPED, user], Device.CPU, refused=models.refused)
    assert again.findings["tb"].manifest.path == good
    assert again.problems == () and again.refused == ()
    assert again.findings["tb"].manifest.version == read_manifest(broken).version


@pytest.mark.parametrize("in_process", [False, True], ids=["batch-process", "in-process"])
def test_the_calibrate_dialog_judges_and_saves_against_the_model_its_run_opened(
    qtbot, tmp_path: Path, in_process: bool
):
    user = tmp_path / "user"
    broken = unopenable_package(user, "pneumonia")
    bundled = read_manifest(SHIPPED / "pneumonia.json")
    window = _window(qtbot, tmp_path, user)
    try:
        assert window.models.findings["pneumonia"].manifest.path == broken
        dialog = window.show_calibrate()
        assert isinstance(dialog, CalibrateDialog)
        dialog.in_process = in_process
        dialog.set_model("pneumonia")
        dialog.set_source(LABELLED)
        with qtbot.waitSignal(dialog.calibrated, timeout=WAIT_MS) as blocker:
            dialog.start()
        qtbot.waitUntil(lambda: not dialog.is_running(), timeout=WAIT_MS)
        outcome = blocker.args[0]
        assert outcome.calibration is not None, outcome.error
        assert outcome.scores.manifest.key == bundled.key  # the bundled model screened

        dialog.name_edit.setText("Fallback-Test")
        with (
            qtbot.waitSignal(dialog.saved) as saved,
            qtbot.waitSignal(dialog.record_written, timeout=WAIT_MS),
        ):
            dialog.save_button.click()
        point = saved.args[0]
        cal = point.for_model("pneumonia")
        assert (cal.model_version, cal.model_sha256) == (bundled.version, bundled.sha256)
        assert cal.matches(bundled)
        # judged against the model that ran: offered, not "— other model version"
        assert dialog.saved_combo.currentText() == "site:Fallback-Test (pneumonia)"

        # The dialog holds what ran, lists it, and says why.
        assert dialog.models.findings["pneumonia"].manifest.key == bundled.key
        assert point.valid_for(dialog.models.manifests)
        assert dialog.model_combo.currentData() == "pneumonia"
        assert dialog.model_combo.currentText().endswith(f" {bundled.version}")
        (problem,) = dialog.models.problems
        _assert_refusal(problem, broken, "pneumonia")
        assert dialog.models_note.isVisible()
        assert dialog.models_note.text() == f"Some model files were refused: {problem}"

        # The window adopted the set: its picker offers the point, the refusal is shown.
        assert window.models.findings["pneumonia"].manifest.key == bundled.key
        items = [window.op_picker.combo.itemData(i) for i in range(window.op_picker.combo.count())]
        assert "site:Fallback-Test" in items
        assert window.messages.message() == f"Some model files were refused: {problem}"
        dialog.close()
        # and its next plan skips the refused package
        with qtbot.waitSignal(window.models_changed, timeout=WAIT_MS) as changed:
            window.set_device("cpu")
        assert changed.args[0].findings["pneumonia"].manifest.key == bundled.key
        assert changed.args[0].problems == (problem,)
    finally:
        window.close()
        window.store.close()


def test_the_window_plans_a_refused_package_no_more_until_it_is_replaced(qtbot, tmp_path: Path):
    user = tmp_path / "user"
    broken = unopenable_package(user)
    bundled = read_manifest(SHIPPED / "tb.json")
    bundled_key = plan_model_set([SHIPPED], Device.CPU).key
    window = _window(qtbot, tmp_path, user)
    reported = []
    window.batch.models_reported.connect(reported.append)
    try:
        assert window.models.findings["tb"].manifest.path == broken
        normal, tb = tmp_path / "normal", tmp_path / "tb"
        shutil.copytree(DATA / "tb" / "normal", normal)
        shutil.copytree(DATA / "tb" / "tuberculosis", tb, ignore=shutil.ignore_patterns("*.md"))

        # First batch: the process cannot open the user TB model, falls back and says so.
        with qtbot.waitSignal(window.batch.batch_finished, timeout=WAIT_MS):
            window.open_paths([normal])
        (first,) = reported
        (problem,) = first.problems
        _assert_refusal(problem, broken, "tb")
        note = f" — tb {read_manifest(broken).version} could not be opened, tb {bundled.version}"
        assert note + " is used" in window.models_label.text()

        # A new plan (the device changes): the refused package is not planned again, and
        # the refusal shows before any batch opens anything.
        with qtbot.waitSignal(window.models_changed, timeout=WAIT_MS) as changed:
            window.set_device("cpu")
        plan = changed.args[0]
        assert plan.findings["tb"].manifest.path == SHIPPED / "tb.json"
        assert plan.key == plan_model_set([SHIPPED], Device.CPU).key
        assert plan.problems == (problem,)
        assert window.messages.message() == f"Some model files were refused: {problem}"
        assert window.models_label.text().endswith(note + " is used")
        assert problem in window.models_label.toolTip()

        # Second batch: nothing refused, no fallback, stored under the bundled models.
        with qtbot.waitSignal(window.batch.batch_finished, timeout=WAIT_MS):
            window.open_paths([tb])
        assert len(reported) == 1 and window.model.rowCount() == 6
        assert [b.models_key for b in window.store.batches()] == [bundled_key, bundled_key]

        # A new download replaces the package: it is planned (and offered) again.
        good = good_package(user)
        with qtbot.waitSignal(window.models_changed, timeout=WAIT_MS) as changed:
            window.set_device("auto")
        plan = changed.args[0]
        assert plan.findings["tb"].manifest.path == good
        assert plan.problems == () and plan.refused == ()
        assert "could not be opened" not in window.models_label.text()
    finally:
        window.close()
        window.store.close()

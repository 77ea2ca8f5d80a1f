"""A signed user model that ONNX Runtime cannot open falls back to the bundled model.

The plan (:func:`desktop.engine.registry.plan_model_set`) checks a package without ONNX
Runtime: signature, sha256, pins, downgrade, the graph's input and output names. A user
package can pass all of that and still be one ONNX Runtime refuses (an operator it does not
know, a damaged weight). Before, opening it failed the whole batch; now it is refused as a
bad user package is at planning, naming the file and ONNX Runtime's reason, and the bundled
model of the same id runs: in the CLI, in the batch process, and the window offers what ran.

The package is the real shipped TB model with one node's operator renamed to one no ONNX
Runtime has (names, weights and signature otherwise genuine), signed by the test key.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import onnx
import pytest

from desktop.cli import main
from desktop.engine.batch_process import BatchProcess
from desktop.engine.devices import Device
from desktop.engine.errors import BatchError
from desktop.engine.onnx_io import check_model_bytes
from desktop.engine.paths import user_models_dir
from desktop.engine.registry import load_model_set, plan_model_set
from desktop.engine.store import ResultsStore
from desktop.gui.main_window import MainWindow
from desktop.gui.settings import AppSettings
from tests.conftest import DATA, REPO, classify_rows, csv_rows
from tests.model_factory import sign, trust_test_key

SHIPPED = REPO / "assets" / "models"
UNKNOWN_OP = "MedScreenNoSuchOp"
ORT_REASON = f"No Op registered for {UNKNOWN_OP}"
WAIT_MS = 120_000


def _newer(version: str) -> str:
    major, minor, *_ = (int(part) for part in version.split("."))
    return f"{major}.{minor + 1}.0"


def unopenable_package(folder: Path, model_id: str = "tb", version: str | None = None) -> Path:
    """A signed copy of the shipped ``model_id`` package in ``folder`` whose graph uses an
    operator ONNX Runtime does not know; newer than the shipped one unless ``version``."""
    folder.mkdir(parents=True, exist_ok=True)
    model = onnx.load(SHIPPED / f"{model_id}.onnx")
    model.graph.node[0].op_type = UNKNOWN_OP
    data = model.SerializeToString()
    (folder / f"{model_id}.onnx").write_bytes(data)
    manifest = json.loads((SHIPPED / f"{model_id}.json").read_text(encoding="utf-8"))
    manifest["sha256"] = hashlib.sha256(data).hexdigest()
    manifest["version"] = version or _newer(manifest["version"])
    path = folder / f"{model_id}.json"
    path.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    sign(path)
    trust_test_key()
    # every check made without ONNX Runtime passes: only opening it can tell
    check_model_bytes(data, manifest["input"]["name"], ["probabilities", "activation_map"])
    return path


def _expected_problem(user_manifest: Path) -> tuple[str, str]:
    """The refusal's start (file, id, version) and end (what is used instead)."""
    version = json.loads(user_manifest.read_text(encoding="utf-8"))["version"]
    return (
        f"model package {user_manifest} (tb {version}) could not be opened by ONNX Runtime: ",
        f"; the tb model in {SHIPPED / 'tb.json'} is used instead",
    )


def test_the_plan_keeps_the_bundled_model_as_the_alternative(tmp_path: Path):
    user = tmp_path / "user"
    unopenable_package(user)
    plan = plan_model_set([SHIPPED, user], Device.CPU)
    assert plan.problems == ()  # nothing the plan can see is wrong
    assert plan.findings["tb"].manifest.path == user / "tb.json"
    assert plan.alternatives["tb"].manifest.path == SHIPPED / "tb.json"
    assert set(plan.alternatives) == {"tb"}  # only where a user package was chosen

    models = load_model_set([SHIPPED, user], Device.CPU, threads=1)
    assert models.findings["tb"].manifest.path == SHIPPED / "tb.json"
    start, end = _expected_problem(user / "tb.json")
    (problem,) = models.problems
    assert problem.startswith(start) and problem.endswith(end) and ORT_REASON in problem
    assert models.key == load_model_set([SHIPPED], Device.CPU, threads=1).key
    assert list(models.findings) == ["tb", "pneumonia"]  # display order kept


def test_without_an_alternative_the_batch_error_names_the_file(tmp_path: Path):
    """A models folder whose only TB package cannot be opened: nothing to fall back to."""
    folder = tmp_path / "models"
    folder.mkdir()
    for name in ("modality", "pneumonia"):
        for suffix in (".onnx", ".json", ".sig"):
            shutil.copyfile(SHIPPED / f"{name}{suffix}", folder / f"{name}{suffix}")
    unopenable_package(folder)
    with pytest.raises(BatchError) as caught:
        load_model_set([folder], Device.CPU, threads=1)
    message = str(caught.value)
    assert message.startswith(f"model package {folder / 'tb.json'} (tb ")
    assert ORT_REASON in message
    assert message.endswith("; there is no other tb model to use instead")


def test_cli_classify_falls_back_and_says_so(tmp_path: Path, capsys):
    scans = tmp_path / "scans"
    shutil.copytree(DATA / "tb" / "normal", scans)
    bundled = classify_rows(scans, tmp_path / "bundled")  # the reference: shipped models only
    capsys.readouterr()

    user = user_models_dir()  # the CLI's own user folder (this test's MEDSCREEN_HOME)
    unopenable_package(user)
    out = tmp_path / "out"
    code = main(["classify", str(scans), "--out", str(out), "--db",
                 str(tmp_path / "r.sqlite3"), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    start, end = _expected_problem(user / "tb.json")
    (line,) = [ln for ln in err.splitlines() if ln.startswith("medscreen: warning:")]
    assert line.startswith(f"medscreen: warning: {start}") and line.endswith(end)
    assert ORT_REASON in line
    rows = {Path(r["file"]).name: r for r in csv_rows(out / "results.csv")}
    assert len(rows) == 6
    for name, row in rows.items():  # the bundled TB model screened every scan
        assert row["models"] == bundled[name]["models"]
        assert float(row["tb_score"]) == pytest.approx(float(bundled[name]["tb_score"]), abs=1e-6)
        assert row["tb_flag"] == bundled[name]["tb_flag"]


def test_the_batch_process_falls_back_and_reports_what_it_opened(tmp_path: Path):
    user = tmp_path / "user"
    unopenable_package(user)
    plan = plan_model_set([SHIPPED, user], Device.CPU)
    bundled_key = plan_model_set([SHIPPED], Device.CPU).key
    assert plan.key != bundled_key
    scans = tmp_path / "scans"
    shutil.copytree(DATA / "tb" / "normal", scans)
    store = ResultsStore(tmp_path / "results.sqlite3")
    try:
        process = BatchProcess(plan, store.path, [scans])
        gen = process.run()
        events = []
        while True:
            try:
                events.append(next(gen))
            except StopIteration as stop:
                summary = stop.value
                break
        assert summary.ok == 6 and len([e for e in events if e.result is not None]) == 6
        opened = process.models
        assert opened is not None and opened.key == bundled_key
        assert opened.findings["tb"].manifest.path == SHIPPED / "tb.json"
        start, end = _expected_problem(user / "tb.json")
        (problem,) = opened.problems
        assert problem.startswith(start) and problem.endswith(end) and ORT_REASON in problem
        (info,) = store.batches()
        assert info.models_key == bundled_key  # the results are stored under what ran
    finally:
        store.close()


def test_the_window_offers_what_its_batch_process_opened(qtbot, tmp_path: Path):
    user = tmp_path / "user"
    unopenable_package(user)
    store = ResultsStore(tmp_path / "results.sqlite3")
    window = MainWindow(
        settings=AppSettings(tmp_path / "settings.ini"), store=store, model_dirs=[SHIPPED, user]
    )
    qtbot.addWidget(window)
    window.show()
    try:
        with qtbot.waitSignal(window.models_changed, timeout=WAIT_MS):
            window.start()
        assert window.models is not None and window.models.problems == ()
        assert window.models.findings["tb"].manifest.path == user / "tb.json"
        scans = tmp_path / "scans"
        shutil.copytree(DATA / "tb" / "normal", scans)
        with qtbot.waitSignal(window.batch.models_reported, timeout=WAIT_MS):
            window.open_paths([scans])
        qtbot.waitUntil(lambda: not window.batch.is_running(), timeout=WAIT_MS)
        assert window.models.findings["tb"].manifest.path == SHIPPED / "tb.json"
        (problem,) = window.models.problems
        assert window.messages.message() == f"Some model files were refused: {problem}"
        assert ORT_REASON in problem
        assert window.model.rowCount() == 6
    finally:
        window.close()
        store.close()

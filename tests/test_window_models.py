"""The window verifies the models without ONNX Runtime; its batch process opens and runs them.

Issue 10 (window memory): the window opened four ONNX Runtime sessions it never ran (its
batches run in a process of their own since 1 December). It now only *plans* the set
(:func:`desktop.engine.registry.plan_model_set`): every check the CLI makes, with the same
messages, at start-up and on a device change; the batch process opens the sessions and
reports the device they really run on, which is the only device the window shows. Tested on
copies of the real shipped models (the refusals) and on the stand-ins (the batches).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from desktop.engine.devices import CPU, Device
from desktop.engine.errors import ModelError
from desktop.engine.onnx_io import check_model_bytes, graph_io_names
from desktop.engine.registry import load_model_set, open_model_set, plan_model_set
from desktop.engine.store import ResultsStore
from desktop.gui.main_window import MainWindow
from desktop.gui.settings import AppSettings
from tests.conftest import DATA, REPO
from tests.model_factory import sign, trust_test_key

SHIPPED = REPO / "assets" / "models"
WAIT_MS = 120_000
NOT_OBSERVED = "reported by the batch process when it runs"


def _edit(manifest_path: Path, change) -> None:
    data = json.loads(manifest_path.read_text(encoding="utf-8"))
    change(data)
    manifest_path.write_text(json.dumps(data, indent=1), encoding="utf-8")


def _newer(version: str) -> str:
    major, minor, *_ = (int(part) for part in version.split("."))
    return f"{major}.{minor + 1}.0"


@pytest.fixture
def user_tb(tmp_path: Path) -> Path:
    """A user models folder holding a copy of the shipped TB package (to be attacked)."""
    user = tmp_path / "user-models"
    user.mkdir()
    for suffix in (".onnx", ".json", ".sig"):
        shutil.copyfile(SHIPPED / f"tb{suffix}", user / f"tb{suffix}")
    return user


@pytest.fixture
def store(tmp_path: Path):
    db = ResultsStore(tmp_path / "results.sqlite3")
    yield db
    db.close()


def _window(qtbot, tmp_path: Path, store: ResultsStore, dirs: list[Path]) -> MainWindow:
    window = MainWindow(
        settings=AppSettings(tmp_path / "settings.ini"), store=store, model_dirs=dirs
    )
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    with qtbot.waitSignal(window.models_changed, timeout=WAIT_MS):
        window.start()
    return window


# -- the same refusals, the same words, at the same time -------------------------------------
def test_tampered_user_model_is_refused_in_the_window_as_in_the_cli(
    qtbot, tmp_path: Path, store, user_tb: Path
):
    """A user copy of the real TB package with its threshold edited to 0.99 (signature no
    longer valid): refused with the CLI's message, at start-up and again on a device change,
    and the bundled TB model is offered instead."""
    _edit(
        user_tb / "tb.json",
        lambda d: [p.update(threshold=0.99) for p in d["operating_points"].values()],
    )
    dirs = [SHIPPED, user_tb]
    cli = load_model_set(dirs, Device.CPU, threads=1)  # the CLI's path: plan, then sessions
    (problem,) = cli.problems
    assert str(user_tb / "tb.json") in problem and "changed after it was signed" in problem

    window = _window(qtbot, tmp_path, store, dirs)
    assert window.models is not None
    assert list(window.models.problems) == [problem]
    assert window.messages.message() == f"Some model files were refused: {problem}"
    tb = window.models.findings["tb"].manifest
    assert tb.path == SHIPPED / "tb.json" and tb.operating_point().threshold < 0.99
    assert window.models.key == cli.key  # the very set the CLI would screen with
    assert list(window.models.findings) == list(cli.findings) == ["tb", "pneumonia"]

    window.messages.hide()
    qtbot.waitUntil(lambda: window._model_worker is None)  # its thread has ended too
    with qtbot.waitSignal(window.models_changed, timeout=WAIT_MS) as blocker:
        window.set_device("cpu")  # a device change verifies again
    assert list(blocker.args[0].problems) == [problem]
    assert window.messages.message() == f"Some model files were refused: {problem}"
    assert window.models_label.text().endswith(f"{NOT_OBSERVED} (asked for: cpu)")
    window.close()


def test_unsigned_user_model_is_refused_in_the_window(qtbot, tmp_path: Path, store, user_tb):
    (user_tb / "tb.sig").unlink()
    _edit(user_tb / "tb.json", lambda d: d.update(version="9.0.0"))
    window = _window(qtbot, tmp_path, store, [SHIPPED, user_tb])
    assert window.models is not None
    (problem,) = window.models.problems
    assert f"{user_tb / 'tb.json'} is not signed" in problem
    assert window.models.findings["tb"].manifest.path == SHIPPED / "tb.json"
    window.close()


def test_signed_user_model_whose_graph_lacks_an_output_is_refused_without_a_session(
    qtbot, tmp_path: Path, store, user_tb: Path
):
    """Signed by a trusted key, newer, hash right, but its manifest names an output the
    graph does not have: the session check refused it when the window opened sessions; the
    window now reads the graph's names from the file and refuses it with the same words."""
    trust_test_key()
    newer = _newer(json.loads((SHIPPED / "tb.json").read_text(encoding="utf-8"))["version"])

    def rename(d: dict) -> None:
        d["version"] = newer
        d["outputs"]["probabilities"] = "scores"

    _edit(user_tb / "tb.json", rename)
    sign(user_tb / "tb.json")
    expected = (
        "model tb (tb.onnx) model lacks outputs ['scores'] "
        "(it has ['activation_map', 'probabilities'])"
    )
    window = _window(qtbot, tmp_path, store, [SHIPPED, user_tb])
    assert window.models is not None
    assert list(window.models.problems) == [expected]
    assert window.models.findings["tb"].manifest.path == SHIPPED / "tb.json"
    window.close()


# -- the device: only what the batch process observed --------------------------------------
def test_the_window_shows_the_device_its_batch_process_reported(
    qtbot, tmp_path: Path, store, stand_in_models: Path
):
    scans = tmp_path / "scans"
    shutil.copytree(DATA / "tb" / "normal", scans)
    window = _window(qtbot, tmp_path, store, [stand_in_models])
    assert window.models_label.text() == (
        f"Models ready — device: {NOT_OBSERVED} (asked for: auto)"
    )
    assert window.batch.last_device is None
    with qtbot.waitSignal(window.batch.device_reported, timeout=WAIT_MS) as reported:
        window.open_paths([scans])
    qtbot.waitUntil(lambda: not window.batch.is_running(), timeout=WAIT_MS)
    device = reported.args[0]
    assert device.requested == Device.AUTO and device.provider == CPU  # no GPU here
    assert window.batch.last_device == device
    shown = f"{device.describe()} (as the batch process reported)"
    assert window.models_label.text() == f"Models ready — device: {shown}"
    assert window.device_text() == shown  # the Models dialog's line
    (info,) = store.batches()
    assert info.device == device.describe()  # what the child recorded, the report's line
    assert window._batch_device() == device.describe()
    # asking for another device: the observed one no longer applies until a batch reports
    qtbot.waitUntil(lambda: window._model_worker is None)
    with qtbot.waitSignal(window.models_changed, timeout=WAIT_MS):
        window.set_device("cpu")
    assert window.models_label.text() == f"Models ready — device: {NOT_OBSERVED} (asked for: cpu)"
    window.close()


def test_cuda_asked_here_fails_in_the_batch_process_not_in_a_claim(
    qtbot, tmp_path: Path, store, stand_in_models: Path
):
    """This machine has no CUDA: the window cannot know that without ONNX Runtime, so it
    offers the models 'asked for: cuda', and the batch process refuses the batch with the
    engine's CUDA message; no device is ever shown."""
    settings = AppSettings(tmp_path / "settings.ini")
    settings.device = "cuda"
    window = MainWindow(settings=settings, store=store, model_dirs=[stand_in_models])
    qtbot.addWidget(window)
    window.show()
    with qtbot.waitSignal(window.models_changed, timeout=WAIT_MS):
        window.start()
    assert window.models is not None and window.models.device == Device.CUDA
    scans = tmp_path / "scans"
    shutil.copytree(DATA / "tb" / "normal", scans)
    with qtbot.waitSignal(window.batch.batch_failed, timeout=WAIT_MS):
        window.open_paths([scans])
    assert "CUDA was requested but cannot be used" in window.messages.message()
    assert window.batch.last_device is None
    assert window.models_label.text().endswith(f"{NOT_OBSERVED} (asked for: cuda)")
    window.close()


# -- the plan and the sessions: two steps of one path ---------------------------------------
def test_a_model_file_replaced_after_the_plan_is_not_opened(tmp_path: Path, user_tb: Path):
    plan = plan_model_set([SHIPPED, user_tb], Device.CPU)
    assert plan.findings["tb"].manifest.path == user_tb / "tb.json"
    shutil.copyfile(SHIPPED / "pneumonia.onnx", user_tb / "tb.onnx")  # swapped meanwhile
    with pytest.raises(ModelError, match=r"tb\.onnx does not match its manifest"):
        open_model_set(plan, threads=1)


def test_plan_and_loaded_set_agree(stand_in_models: Path):
    plan = plan_model_set([stand_in_models], Device.CPU)
    models = open_model_set(plan, threads=1)
    assert models.key == plan.key and models.plan == plan
    assert list(models.findings) == list(plan.findings)
    assert models.device.provider == CPU and models.device.requested == Device.CPU


def test_graph_names_match_onnx_runtime_on_the_shipped_models():
    for path in sorted(SHIPPED.glob("*.onnx")):
        data = path.read_bytes()
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        assert graph_io_names(data) == (
            [i.name for i in session.get_inputs()],
            [o.name for o in session.get_outputs()],
        ), path.name


def test_graph_names_leave_out_weights_listed_as_inputs():
    """Old ONNX files list their initializers among the graph's inputs; ONNX Runtime does
    not count those as inputs, and neither does the reader."""
    weight = numpy_helper.from_array(np.ones((1, 3), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [1, 3]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    data = model.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x"]
    assert graph_io_names(data) == (["x"], ["y"])
    onnx.checker.check_model(model)


@pytest.mark.parametrize(
    "data",
    [b"", b"not an onnx model at all", (SHIPPED / "tb.onnx").read_bytes()[:5000]],
    ids=["empty", "text", "truncated"],
)
def test_bytes_that_are_not_a_model_are_refused(data: bytes):
    with pytest.raises(ModelError, match="is not a readable ONNX model"):
        check_model_bytes(data, "image", ["probabilities"])


# -- medscreen export: nothing is screened, so nothing is opened ---------------------------
def test_export_opens_no_session_and_states_the_batch_device(tmp_path: Path, monkeypatch):
    """``medscreen export`` writes a stored batch's reports: it verifies the models (their
    manifests name the columns) but screens nothing, so it opens no session; its reports
    state the device the batch ran on as recorded, never the exporting machine's."""
    from desktop.cli import main
    from desktop.engine import registry

    scans = tmp_path / "scans"
    scans.mkdir()
    for path in sorted((DATA / "tb" / "normal").glob("*.png"))[:3]:
        shutil.copyfile(path, scans / path.name)
    db = tmp_path / "r.sqlite3"
    common = ["--models", str(SHIPPED), "--db", str(db), "--quiet"]
    out = tmp_path / "out"
    assert main(["classify", str(scans), "--out", str(out), "--device", "cpu", *common]) == 0
    batch = json.loads((out / "results.json").read_text(encoding="utf-8"))["batch"]
    assert batch["device"].startswith("CPU via CPUExecutionProvider")

    def no_session(*_args, **_kwargs):
        raise AssertionError("export opened an ONNX Runtime session")

    monkeypatch.setattr(registry, "open_model", no_session)
    again = tmp_path / "again"
    assert main(["export", batch["id"], "--out", str(again), *common]) == 0
    exported = json.loads((again / "results.json").read_text(encoding="utf-8"))["batch"]
    assert exported["device"] == batch["device"]
    with sqlite3.connect(db) as conn:  # a batch stored before devices were recorded
        conn.execute("UPDATE batches SET device = '' WHERE id = ?", (batch["id"],))
    conn.close()
    assert main(["export", batch["id"], "--out", str(tmp_path / "third"), *common]) == 0
    third = json.loads((tmp_path / "third" / "results.json").read_text(encoding="utf-8"))
    assert third["batch"]["device"] == "not recorded for this batch"

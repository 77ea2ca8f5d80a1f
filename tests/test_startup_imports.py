"""The window opens without ONNX Runtime or pydicom: they load with the models and the scans.

The GUI imports the results store at start-up; the store once imported ``now_iso`` from
``screening``, which pulled ONNX Runtime (~0.5 s and hundreds of MB mapped) and pydicom into
every start, defeating the deliberate lazy imports. Checked in a fresh interpreter, since this
test session has long since imported both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

HEAVY = ("onnxruntime", "pydicom", "reportlab", "tensorflow", "desktop.engine.screening")

_PROBE = """
import json, sys, tempfile
from pathlib import Path
from PySide6.QtWidgets import QApplication
import desktop.gui.app
app = QApplication([])
from desktop.engine.store import ResultsStore
from desktop.gui.main_window import MainWindow
from desktop.gui.settings import AppSettings
tmp = Path(tempfile.mkdtemp())
window = MainWindow(settings=AppSettings(tmp / "settings.ini"),
                    store=ResultsStore(tmp / "results.sqlite3"), model_dirs=[tmp])
window.show()
app.processEvents()
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY_ROOTS}
                        or m in {HEAVY_NAMES})))
window.close()
"""


@pytest.mark.gui
def test_window_start_up_imports_neither_onnxruntime_nor_pydicom(tmp_path):
    roots = {name.split(".")[0] for name in HEAVY if not name.startswith("desktop")}
    names = {name for name in HEAVY if name.startswith("desktop")}
    code = _PROBE.replace("{HEAVY_ROOTS}", repr(roots)).replace("{HEAVY_NAMES}", repr(names))
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", MEDSCREEN_HOME=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == [], f"imported at window start-up, before any batch: {loaded}"


def test_the_store_imports_no_inference():
    code = (
        "import sys, json; import desktop.engine.store; "
        f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


_LOADED_PROBE = """
import json, sys, tempfile, time
from pathlib import Path
from PySide6.QtWidgets import QApplication
import desktop.gui.app
app = QApplication([])
from desktop.engine.store import ResultsStore
from desktop.gui.main_window import MainWindow
from desktop.gui.settings import AppSettings
tmp = Path(tempfile.mkdtemp())
window = MainWindow(settings=AppSettings(tmp / "settings.ini"),
                    store=ResultsStore(tmp / "results.sqlite3"),
                    model_dirs=[Path("assets/models"), tmp / "user-models"])
window.show()
got = []
window.models_changed.connect(got.append)
window.start()
deadline = time.monotonic() + 90
while not got and time.monotonic() < deadline:
    app.processEvents()
    time.sleep(0.01)
models = got[0] if got else None
print(json.dumps({
    "loaded": sorted(models.manifests) if models is not None else None,
    "problems": list(models.problems) if models is not None else None,
    "label": window.models_label.text(),
    "modules": sorted(m for m in sys.modules if m.split(".")[0] == "onnxruntime"
                      or m == "desktop.engine.inference"),
}))
window.close()
"""


@pytest.mark.gui
def test_window_with_its_models_loaded_holds_no_onnxruntime(tmp_path):
    """Issue 10 (window memory): the window verifies the shipped models (signatures, pins,
    hashes) and offers them, but its batches run in a process of their own, which opens
    the sessions. ONNX Runtime and four sessions (~37 MB of the window at rest, measured
    in the README) were held for nothing; the window also claims no device it did not
    observe. Before the change this probe listed onnxruntime and the session module."""
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", MEDSCREEN_HOME=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-c", _LOADED_PROBE],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["loaded"] == ["agegroup", "modality", "pneumonia", "tb"]
    assert seen["problems"] == []
    assert seen["modules"] == [], f"the window imported ONNX Runtime: {seen['modules']}"
    assert "CPUExecutionProvider" not in seen["label"]
    assert seen["label"].endswith("reported by the batch process when it runs (asked for: auto)")

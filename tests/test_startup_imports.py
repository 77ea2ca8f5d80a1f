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

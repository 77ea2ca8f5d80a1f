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
from pathlib import Path

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


# -- the entry points a user starts: ``medscreen`` and ``python -m desktop`` ------------------

#: What the window process must not hold when it was started by a real entry point: the
#: modules above, and the command line's (desktop.cli imported the runner, ONNX Runtime,
#: pydicom and requests at module level: ~23 MB of the window, measured import by import).
ENTRY_HEAVY = (*HEAVY, "requests", "desktop.engine.runner", "desktop.cli")

MEDSCREEN = Path(sys.executable).parent / "medscreen"


def _imported(stderr: str) -> set[str]:
    """The modules ``-X importtime`` (PYTHONPROFILEIMPORTTIME) reports the process imported."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    } - {"package"}  # the header line's last column


def _start_window(command: list[str], home: Path) -> set[str]:
    """Start the window the way a user does, offscreen; it closes once shown (smoke mode)."""
    env = dict(
        os.environ,
        QT_QPA_PLATFORM="offscreen",
        MEDSCREEN_HOME=str(home),
        MEDSCREEN_SMOKE="1",
        PYTHONPROFILEIMPORTTIME="1",
    )
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "shown_after_s=" in proc.stdout, proc.stdout
    return _imported(proc.stderr)


@pytest.mark.gui
@pytest.mark.parametrize(
    "command",
    [
        [str(MEDSCREEN)],
        [sys.executable, "-m", "desktop"],
        [str(MEDSCREEN), "gui", "tests/data/tb/normal"],
        [str(MEDSCREEN), "tests/data/tb/normal"],
    ],
    ids=["medscreen", "python-m-desktop", "medscreen-gui-folder", "medscreen-folder"],
)
def test_the_window_started_by_its_entry_points_holds_no_command_line_imports(command, tmp_path):
    """Before desktop/launch.py, each of these listed desktop.cli, the runner, onnxruntime,
    pydicom and requests (592 modules; 378 now). The console script is the installed one:
    if this fails on desktop.cli alone, the venv holds a stale install (re-run
    scripts/bootstrap)."""
    assert MEDSCREEN.is_file(), f"{MEDSCREEN} missing: install the project (scripts/bootstrap)"
    imported = _start_window(command, tmp_path)
    assert "desktop.gui.app" in imported and "PySide6.QtWidgets" in imported
    held = sorted(m for m in imported if m in ENTRY_HEAVY or m.split(".")[0] in ENTRY_HEAVY)
    assert held == [], f"the window's process imported {held}"


def test_the_entry_module_imports_only_the_standard_library():
    """Every process of the app imports desktop.launch first: the window's, and in the frozen
    app the batch process and the decoder worker too (its own executable started again with
    --medscreen-child, whose entry script asks launch which commands are headless). It must
    cost a child nothing the child does not need."""
    code = (
        "import sys, json; before = set(sys.modules); import desktop.launch; "
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    added = json.loads(proc.stdout)
    assert "desktop.launch" in added
    assert [m for m in added if m.startswith(("desktop.", "PySide6", "onnxruntime"))] == [
        "desktop.launch"
    ]


def test_the_entry_knows_every_command_of_the_command_line():
    """A command missing here would be taken for a file name and open the window."""
    from desktop.cli import build_parser
    from desktop.launch import COMMANDS

    parser = build_parser()
    assert parser._subparsers is not None
    choices = {c for action in parser._subparsers._group_actions for c in action.choices}
    assert choices == COMMANDS


_NORMAL = "tests/data/tb/normal"


@pytest.mark.parametrize(
    ("args", "files", "said"),
    [
        ([], [], ""),
        (["-v"], [], ""),
        (["--verbose", "gui"], [], ""),
        (["gui"], [], ""),
        # gui PATH...: the paths as given, existing or not (the window names the missing)
        (["gui", _NORMAL, "relative/not-there.png"], [_NORMAL, "relative/not-there.png"], ""),
        # PATH... ("Open with"): the existing ones, made absolute; the others named
        ([_NORMAL], [REPO / _NORMAL], ""),
        ([_NORMAL, "not-there.png"], [REPO / _NORMAL], "not-there.png"),
        (["not-there-1.png", "not-there-2.png"], [], "not-there-1.png, not-there-2.png"),
        (["clasify"], None, ""),  # a typo: desktop.cli says "invalid choice"
        (["classify", _NORMAL], None, ""),
        (["history"], None, ""),
        (["-v", _NORMAL], None, ""),
        (["gui", "--help"], None, ""),
        (["--version"], None, ""),
        (["--", _NORMAL], None, ""),
    ],
)
def test_the_entry_opens_the_window_with_the_files_a_user_means(
    args, files, said, monkeypatch, capsys
):
    """desktop.launch decides what opens the window, for the medscreen command and for
    desktop.cli.main (which asks it: one definition); everything else is desktop.cli's."""
    from desktop.launch import window_files

    monkeypatch.chdir(REPO)
    mine = window_files(args)
    err = capsys.readouterr().err
    assert mine == (None if files is None else [Path(f) for f in files])
    assert err == (f"medscreen: no such file or folder: {said}\n" if said else "")


def _medscreen(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MEDSCREEN_HOME=str(home))
    return subprocess.run(
        [str(MEDSCREEN), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=180
    )


def test_the_command_line_behind_the_entry_still_answers(tmp_path):
    """--version, --help, a mistyped command and a real classify (the shipped models, as a
    user runs it) through the installed ``medscreen``, with the command line's own output
    and exit codes."""
    from desktop import __version__

    version = _medscreen("--version", home=tmp_path)
    assert (version.returncode, version.stdout.strip()) == (0, f"MedScreen {__version__}")
    helped = _medscreen("--help", home=tmp_path)
    assert helped.returncode == 0 and "classify" in helped.stdout and "resume" in helped.stdout
    typo = _medscreen("clasify", home=tmp_path)
    assert typo.returncode == 2 and "invalid choice: 'clasify'" in typo.stderr
    out = tmp_path / "out"
    scans = sorted((REPO / "tests" / "data" / "tb" / "normal").glob("*.png"))[:2]
    ran = _medscreen(
        "classify", *map(str, scans), "--out", str(out),
        "--db", str(tmp_path / "r.sqlite3"), "--quiet", home=tmp_path,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    rows = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert sorted(Path(r["file"]).name for r in rows["scans"]) == [s.name for s in scans]

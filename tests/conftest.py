"""Shared fixtures: real test images, stand-in ONNX models, an isolated user data folder."""

from __future__ import annotations

import contextlib
import csv
import gc
import logging
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from desktop.engine import trust
from tests.model_factory import build_model_set, trust_test_key

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
#: The keys the app ships, read before any test can add the test key (a session fixture that
#: builds signed stand-ins is set up before a test's own fixtures).
_SHIPPED_KEYS = dict(trust.TRUSTED_KEYS)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Every test gets its own user data folder: no test touches the real one."""
    home = tmp_path_factory.mktemp("medscreen-home")
    monkeypatch.setenv("MEDSCREEN_HOME", str(home))
    monkeypatch.delenv("MEDSCREEN_DEVICE", raising=False)
    return home


@pytest.fixture(autouse=True, scope="module")
def _shipped_keys_per_module(request: pytest.FixtureRequest):
    """Each test file starts with only the keys the app ships: the throw-away test key that a
    file's signed stand-in models need (tests/model_factory.py trusts it when it builds them)
    is dropped when the file ends, so a later file's "signed by a key nobody trusts" case
    cannot depend on which files ran before it. A file whose tests use the session's stand-in
    models (built, and their key trusted, in whichever file came first) trusts it again."""
    _trust_only(_SHIPPED_KEYS)
    if any(
        "stand_in_models" in item.fixturenames
        for item in request.session.items
        if getattr(item, "module", None) is request.module
    ):
        trust_test_key()
    yield
    _trust_only(_SHIPPED_KEYS)


def _trust_only(keys: dict[str, str]) -> None:
    trust.TRUSTED_KEYS.clear()
    trust.TRUSTED_KEYS.update(keys)


@pytest.fixture(autouse=True)
def _no_leftover_threads():
    """Fail a test that leaves engine worker threads running (as napari's conftest does)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5.0
    while True:
        extra = [
            t
            for t in threading.enumerate()
            if t not in before and t.is_alive() and t.name.startswith("medscreen")
        ]
        if not extra or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not extra, f"test left threads running: {[t.name for t in extra]}"


#: Fixtures that mean a test makes Qt objects (pytest-qt's).
_QT_FIXTURES = frozenset({"qtbot", "qapp", "qtmodeltester", "qtlog"})
_qt_modules: dict[str, bool] = {}


def _uses_qt(request: pytest.FixtureRequest) -> bool:
    """Whether a test may make Qt objects: a pytest-qt fixture, the gui mark, or a test file
    that names PySide6 or desktop.gui (some build models and proxies without a fixture)."""
    if _QT_FIXTURES & set(request.fixturenames) or request.node.get_closest_marker("gui"):
        return True
    path = str(request.path)
    if path not in _qt_modules:
        text = request.path.read_text(encoding="utf-8", errors="replace")
        _qt_modules[path] = "PySide6" in text or "desktop.gui" in text
    return _qt_modules[path]


@pytest.fixture(autouse=True)
def _collect_qt_garbage(request: pytest.FixtureRequest):
    """During a Qt test Python's cyclic collector is off, and the test's unreachable objects
    are collected when it ends, on the main thread, where no Qt code is on the stack.

    Left on, the collector runs at whichever allocation crosses its threshold, in whichever
    thread makes it, and destroys the Qt objects held in reference cycles (a parentless
    widget and its children, a proxy, a finished worker's thread) right there: inside Qt's
    delivery of an event to that very widget (a segmentation fault in
    QApplicationPrivate::notify_helper, reproduced by collecting in an event filter), or in a
    worker thread, a batch reader unpickling results say, while the GUI thread runs the event
    loop over the same objects (the full-suite crash: main thread in Qt's event loop, the
    batch thread in pickle.loads). Objects the tests drop are then destroyed at one known,
    safe moment instead."""
    if not _uses_qt(request):
        yield
        return
    with collector_paused():
        yield


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic collector off inside; what became unreachable is collected on the way
    out (in the calling thread), and the collector is on again if it was."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.collect()
        if was_enabled:
            gc.enable()


@pytest.fixture(autouse=True)
def _restore_logging():
    """Undo what ``main()``/``configure_logging`` did to logging during a test.

    The CLI adds a log file and a stderr handler to the root logger (bound to the test's
    captured stderr, closed when the test ends) and sets logger levels (pydicom to ERROR): left
    in place, later tests log into closed streams and see other levels than a fresh process.
    pytest's own capture handlers are left to pytest.
    """
    root = logging.getLogger()
    watched = [root, logging.getLogger("pydicom")]
    levels = [lg.level for lg in watched]
    before = list(root.handlers)
    yield
    for handler in root.handlers[:]:
        if handler not in before and type(handler).__module__.startswith("logging"):
            root.removeHandler(handler)
            handler.close()
    for lg, level in zip(watched, levels, strict=True):
        lg.setLevel(level)


def csv_rows(path: Path) -> list[dict[str, str]]:
    """A CSV report's rows (the writers' UTF-8 with BOM)."""
    with path.open(encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


def classify_rows(folder: Path, tmp_path: Path) -> dict[str, dict[str, str]]:
    """``medscreen classify FOLDER`` with the shipped models and a fresh store; the CSV's rows
    by file name (the command must end with status 0: its stderr is in pytest's report)."""
    from desktop.cli import main

    out = tmp_path / "out"
    code = main(["classify", str(folder), "--out", str(out), "--db", str(tmp_path / "r.sqlite3"),
                 "--quiet"])  # fmt: skip
    assert code == 0
    return {Path(row["file"]).name: row for row in csv_rows(out / "results.csv")}


def screen_mixed_batch(root: Path) -> tuple[Any, str, Any]:
    """Screen a real mixed folder in ``root`` with the shipped models into a store there: both
    chest sets, the DICOM files, a hand, a head CT and a damaged file. ``(store, batch id,
    model set)``; the caller closes the store."""
    from desktop.engine.inference import choose_device
    from desktop.engine.registry import default_model_dirs, load_model_set
    from desktop.engine.runner import BatchRunner, run_to_end
    from desktop.engine.store import ResultsStore

    for sub in ("tb", "pneumonia", "mednist/Hand", "mednist/HeadCT", "dicom"):
        shutil.copytree(DATA / sub, root / sub)
    (root / "damaged.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    store = ResultsStore(root / "results.sqlite3")
    models = load_model_set(default_model_dirs(), choose_device("cpu"))
    summary = run_to_end(BatchRunner(models, store).run([root]))
    return store, summary.batch_id, models


@pytest.fixture(scope="session")
def stand_in_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the three ONNX stand-in models (see tests/model_factory.py)."""
    return build_model_set(tmp_path_factory.mktemp("models"))


@pytest.fixture
def chest_folder(tmp_path: Path) -> Path:
    """A clinic-like folder: real chest X-rays (TB and Kermany), in sub-folders."""
    root = tmp_path / "scans"
    for sub in ("tb/normal", "tb/tuberculosis", "pneumonia/normal", "pneumonia/pneumonia"):
        shutil.copytree(DATA / sub, root / sub)
    return root


@pytest.fixture
def mixed_folder(chest_folder: Path) -> Path:
    """Chest X-rays plus non-chest MedNIST scans and the two real DICOM files."""
    shutil.copytree(DATA / "mednist", chest_folder / "mednist")
    shutil.copytree(DATA / "dicom", chest_folder / "dicom")
    return chest_folder

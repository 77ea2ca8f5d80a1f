"""A reading session from first scan to signed report, driven like a clinic would (pytest-qt,
offscreen, the shipped models on real scans): open a folder → the table in triage order →
the viewer's next/previous in that order → the reader's decisions → export → the report has
the decisions, the sign-off fields and, on page 1, the ranked list."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt

from desktop.engine.decisions import Decision, scan_key
from desktop.engine.registry import default_model_dirs
from desktop.engine.results import ScanStatus
from desktop.engine.store import ResultsStore
from desktop.engine.triage import TriageGroup
from desktop.gui.main_window import MainWindow
from desktop.gui.qt_compat import emit
from desktop.gui.results_model import Column
from desktop.gui.settings import AppSettings

pytestmark = pytest.mark.gui

DATA = Path(__file__).parent / "data"
WAIT_MS = 60_000


@pytest.fixture
def clinic_folder(tmp_path: Path) -> Path:
    """A morning's folder: TB and Kermany chest X-rays, a hand, a photo and a damaged file."""
    root = tmp_path / "morning"
    for sub in ("tb/normal", "tb/tuberculosis", "pneumonia/pneumonia"):
        shutil.copytree(DATA / sub, root / sub)
    shutil.copy(DATA / "mednist" / "Hand" / "000000.jpeg", root / "hand.jpeg")
    shutil.copy(DATA / "photos" / "chelsea.jpg", root / "photo.jpg")
    chest = sorted((DATA / "tb" / "normal").glob("*.png"))[0]
    (root / "damaged.png").write_bytes(chest.read_bytes()[:3000])
    return root


@pytest.fixture
def session(qtbot, tmp_path: Path):
    settings = AppSettings(tmp_path / "settings.ini")
    settings.operator = "Dr A. Mwangi"
    settings.clinic_name = "Kisumu West"
    store = ResultsStore(tmp_path / "results.sqlite3")
    window = MainWindow(settings=settings, store=store, model_dirs=default_model_dirs())
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    with qtbot.waitSignal(window.models_changed, timeout=WAIT_MS):
        window.start()
    yield window, store, settings
    window.close()
    store.close()


def _shown_files(window: MainWindow) -> list[str]:
    return [
        window.model.result(window.proxy.mapToSource(window.proxy.index(r, 0)).row()).file
        for r in range(window.proxy.rowCount())
    ]


def test_a_reading_session_end_to_end(qtbot, session, clinic_folder: Path, tmp_path: Path):
    window, store, _settings = session
    # 1. open the folder
    with qtbot.waitSignal(window.batch.batch_finished, timeout=WAIT_MS):
        window.open_paths([clinic_folder])
    total = window.model.rowCount()
    assert total == 12 + 6 + 3

    # 2. the table is in triage order: flagged (strongest first), others, refused, errors
    shown = _shown_files(window)
    order = [r.file for r in window.triage_results()]
    assert shown == order
    keys = [window.model.triage_key(r) for r in window.model.triage_rows()]
    assert keys == sorted(keys)
    groups = [k.group for k in keys]
    n_flagged = groups.count(TriageGroup.FLAGGED)
    assert n_flagged == window.model.counts().flagged_any > 0
    assert groups[-1] is TriageGroup.ERROR and groups[-3:-1] == [TriageGroup.REFUSED] * 2
    assert Path(shown[-1]).name == "damaged.png"
    # the plain quality words, and no modality for the photo
    by_name = {Path(r.file).name: r for r in window.model.results()}
    reason_col = window.model.column_of(Column.REASON)
    modality_col = window.model.column_of(Column.MODALITY)
    rows = {Path(r.file).name: i for i, r in enumerate(window.model.results())}
    assert window.model.index(rows["hand.jpeg"], reason_col).data() == "not a chest X-ray: hand"
    assert window.model.index(rows["photo.jpg"], reason_col).data() == "photo or document"
    assert window.model.index(rows["photo.jpg"], modality_col).data() == ""
    assert window.model.index(rows["damaged.png"], reason_col).data() == "damaged file"
    assert "truncated" in window.model.index(rows["damaged.png"], reason_col).data(
        Qt.ItemDataRole.ToolTipRole
    )
    assert by_name["photo.jpg"].status is ScanStatus.NOT_CHEST_XRAY
    # F3 goes to the first flagged scan in triage order, again to the second
    window.view.setFocus()
    qtbot.keyClick(window, Qt.Key.Key_F3)
    assert window.view.result_at(window.view.currentIndex()).file == order[0]
    qtbot.keyClick(window, Qt.Key.Key_F3)
    assert window.view.result_at(window.view.currentIndex()).file == order[1]

    # 3. the viewer steps through the triage order without closing
    first = window.triage_results()[0]
    viewer = window.open_viewer(first)
    qtbot.waitUntil(lambda: viewer.source_label.text().endswith("original"), timeout=WAIT_MS)
    assert viewer.position_label.text() == f"1 of {total} in triage order"
    qtbot.mouseClick(viewer.next_button, Qt.MouseButton.LeftButton)
    assert viewer.result.file == order[1] and viewer.isVisible()
    assert viewer.position_label.text() == f"2 of {total} in triage order"
    assert window.view.result_at(window.view.currentIndex()).file == order[1]  # table follows
    qtbot.waitUntil(lambda: viewer.source_label.text().endswith("original"), timeout=WAIT_MS)
    qtbot.mouseClick(viewer.prev_button, Qt.MouseButton.LeftButton)
    assert viewer.result.file == order[0]
    qtbot.mouseClick(viewer.prev_button, Qt.MouseButton.LeftButton)  # wraps to the last
    assert viewer.result.file == order[-1]
    assert "damaged file" in viewer.scores.text()
    qtbot.mouseClick(viewer.prev_button, Qt.MouseButton.LeftButton)
    assert viewer.result.file == order[-2]  # a refused image: plain words, no modality
    if Path(viewer.result.file).name == "photo.jpg":
        assert "photo or document" in viewer.scores.text()
        assert "Modality: none" in viewer.scores.text()
    else:
        assert "not a chest X-ray: hand" in viewer.scores.text()
        assert "Modality: Hand" in viewer.scores.text()
    qtbot.mouseClick(viewer.next_button, Qt.MouseButton.LeftButton)
    qtbot.mouseClick(viewer.next_button, Qt.MouseButton.LeftButton)

    # 4. decisions: agree on the first, needs follow-up (with a note) on the second
    qtbot.mouseClick(viewer.decision_buttons[Decision.AGREE], Qt.MouseButton.LeftButton)
    qtbot.mouseClick(viewer.next_button, Qt.MouseButton.LeftButton)
    viewer.note_edit.setText("CT advised, old films requested")
    qtbot.mouseClick(viewer.decision_buttons[Decision.FOLLOW_UP], Qt.MouseButton.LeftButton)
    assert viewer.decision_label.text().startswith("Recorded: Needs follow-up — Dr A. Mwangi")
    # the patient ID of a PNG is typed and kept with the identifiers
    assert viewer.patient_edit.isVisibleTo(viewer)
    viewer.patient_edit.setText("KW-2291")
    emit(viewer.patient_edit.editingFinished)
    second = viewer.result
    assert store.typed_patient_ids() == {scan_key(second.sha256, second.file): "KW-2291"}
    stored = store.decisions()
    assert stored[scan_key(first.sha256, first.file)].decision is Decision.AGREE
    follow = stored[scan_key(second.sha256, second.file)]
    assert follow.decision is Decision.FOLLOW_UP and follow.reader == "Dr A. Mwangi"
    assert follow.note == "CT advised, old films requested"
    decision_col = window.model.column_of(Column.DECISION)
    row_of = {r.file: i for i, r in enumerate(window.model.results())}
    assert window.model.index(row_of[first.file], decision_col).data() == "Agree"
    assert window.model.index(row_of[second.file], decision_col).data() == "Needs follow-up"
    # going back shows the recorded decision
    qtbot.mouseClick(viewer.prev_button, Qt.MouseButton.LeftButton)
    assert viewer.decision_buttons[Decision.AGREE].isChecked()
    viewer.close()

    # 5. export: the default name, the report's page 1 and the decisions
    default = window.default_report_path()
    assert re.fullmatch(r"medscreen-kisumu-west-\d{4}-\d{2}-\d{2}-[0-9a-f]{6,}\.pdf", default.name)
    out = tmp_path / "reports" / default.name
    with qtbot.waitSignal(window.export_done, timeout=WAIT_MS):
        window.export_report(out)
    assert window.messages.action.text() == "Open report"
    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext (poppler) is needed to read the report")
    page1 = subprocess.run(
        ["pdftotext", "-layout", "-f", "1", "-l", "1", str(out), "-"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    everything = subprocess.run(
        ["pdftotext", "-layout", str(out), "-"], capture_output=True, text=True, check=True
    ).stdout
    assert "Scans needing attention" in page1
    assert "Reader" in page1 and "Signature" in page1 and "Date" in page1
    assert "held-out test" in page1
    assert re.search(r"UTC[+-]\d\d:\d\d", page1)
    # the ranked list on page 1 starts with the first two scans in triage order
    names = [Path(f).name for f in order[:2]]
    first_at = page1.index(names[0])
    assert first_at < page1.index(names[1])
    assert "Agree" in page1 and "Needs follow-up" in page1
    assert "CT advised, old films requested" in re.sub(r"\s+", " ", everything)
    assert "KW-2291" not in everything  # identifiers are off by default
    # the CSV beside it carries the decisions and the plain quality codes
    import csv

    with out.with_suffix(".csv").open(encoding="utf-8-sig", newline="") as handle:
        rows = {Path(r["file"]).name: r for r in csv.DictReader(handle)}
    second_row = rows[Path(second.file).name]
    assert second_row["reader_decision"] == "follow_up"
    assert second_row["reader_note"] == "CT advised, old films requested"
    assert second_row["reader"] == "Dr A. Mwangi"
    assert rows[Path(first.file).name]["reader_decision"] == "agree"
    assert (rows["photo.jpg"]["quality"], rows["photo.jpg"]["quality_text"]) == (
        "not_medical",
        "photo or document",
    )
    assert rows["damaged.png"]["quality"] == "damaged"
    assert "KW-2291" not in out.with_suffix(".csv").read_text(encoding="utf-8-sig")


def test_the_window_fits_the_screen_and_shows_25_rows(qtbot, tmp_path: Path, stand_in_models):
    settings = AppSettings(tmp_path / "settings.ini")
    store = ResultsStore(tmp_path / "results.sqlite3")
    window = MainWindow(settings=settings, store=store, model_dirs=[stand_in_models])
    qtbot.addWidget(window)
    try:
        window.show()
        qtbot.waitExposed(window)
        qtbot.wait(50)  # the second fit, once the frame is known
        area = window.screen().availableGeometry()
        # the offscreen screen is 800×800: the 1280×800 default must shrink to fit it
        assert window.width() <= area.width() and window.height() <= area.height()
        assert area.contains(window.frameGeometry())
        # on a 1366×768 screen (less a 30 px panel), 25+ compact rows are in view
        window.resize(1366, 738)
        window.pages.setCurrentIndex(1)
        qtbot.wait(50)
        rows = window.view.viewport().height() // window.view.verticalHeader().defaultSectionSize()
        assert rows >= 25, rows
    finally:
        window.close()
        store.close()


def test_history_from_the_window_names_the_operator(qtbot, session, clinic_folder: Path):
    window, store, settings = session
    settings.retention_days = 90
    for _ in range(2):  # the folder screened twice: one history row
        with qtbot.waitSignal(window.batch.batch_finished, timeout=WAIT_MS):
            window.open_paths([clinic_folder])
    assert set(store.batch_operators().values()) == {"Dr A. Mwangi"}
    with qtbot.waitSignal(window.prune_history().finished, timeout=WAIT_MS):
        pass  # nothing is older than 90 days: both runs stay
    assert len(store.batches()) == 2
    window.show_history()
    qtbot.waitUntil(lambda: window.history_dialog is not None, timeout=WAIT_MS)
    dialog = window.history_dialog
    assert dialog.table.rowCount() == 1
    cols = dialog.columns
    assert dialog.table.item(0, cols.index("Runs")).text() == "2"
    assert dialog.table.item(0, cols.index("Operator")).text() == "Dr A. Mwangi"
    assert dialog.table.item(0, cols.index("Screened")).text() == "18"
    assert dialog.retention.value() == 90
    dialog.close()


def test_sort_and_column_widths_persist(qtbot, tmp_path: Path, stand_in_models, chest_folder):
    settings = AppSettings(tmp_path / "settings.ini")

    def open_window(store: ResultsStore) -> MainWindow:
        window = MainWindow(settings=settings, store=store, model_dirs=[stand_in_models])
        qtbot.addWidget(window)
        window.show()
        with qtbot.waitSignal(window.models_changed, timeout=WAIT_MS):
            window.start()
        return window

    store = ResultsStore(tmp_path / "results.sqlite3")
    try:
        window = open_window(store)
        header = window.view.horizontalHeader()
        assert header.sortIndicatorSection() == window.model.column_of(Column.TRIAGE)
        score = window.model.column_of(Column.SCORE, "tb")
        window.view.sortByColumn(score, Qt.SortOrder.DescendingOrder)
        header.resizeSection(window.model.column_of(Column.FILE), 333)
        window.close()
        window = open_window(store)
        header = window.view.horizontalHeader()
        assert header.sortIndicatorSection() == score
        assert header.sortIndicatorOrder() == Qt.SortOrder.DescendingOrder
        assert header.sectionSize(window.model.column_of(Column.FILE)) == 333
        with qtbot.waitSignal(window.batch.batch_finished, timeout=WAIT_MS):
            window.open_paths([chest_folder / "tb"])
        shown = [
            window.proxy.index(r, score).data(Qt.ItemDataRole.UserRole + 1)
            for r in range(window.proxy.rowCount())
        ]
        assert shown == sorted(shown, reverse=True)  # the rows follow the restored sort
        window.close()
    finally:
        store.close()


def test_a_double_clicked_row_opens_a_viewer_that_steps(qtbot, tmp_path, stand_in_models,
                                                        chest_folder):  # fmt: skip
    settings = AppSettings(tmp_path / "settings.ini")
    store = ResultsStore(tmp_path / "results.sqlite3")
    window = MainWindow(settings=settings, store=store, model_dirs=[stand_in_models])
    qtbot.addWidget(window)
    try:
        window.show()
        with qtbot.waitSignal(window.models_changed, timeout=WAIT_MS):
            window.start()
        with qtbot.waitSignal(window.batch.batch_finished, timeout=WAIT_MS):
            window.open_paths([chest_folder / "tb"])
        opened = []
        window.view.open_requested.disconnect()
        window.view.open_requested.connect(lambda r: opened.append(window.open_viewer(r)))
        index = window.proxy.index(2, window.model.column_of(Column.FILE))
        window.view.open_index(index)  # what a double-click or Enter does
        viewer = opened[0]
        assert viewer.position_label.text() == "3 of 12 in triage order"
        assert viewer.next_button.isEnabled()
        qtbot.waitUntil(lambda: not viewer._workers, timeout=WAIT_MS)
        viewer.close()
    finally:
        window.close()
        store.close()


def test_the_window_fits_at_150_percent_scaling(tmp_path: Path):
    """A 1366×768 screen at QT_SCALE_FACTOR=1.5 (911×512 logical pixels), in a child process:
    the factor and the screen are read when Qt starts."""
    import json
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from PySide6.QtWidgets import QApplication\n"
        "from desktop.gui.main_window import MainWindow\n"
        "from desktop.gui.settings import AppSettings\n"
        "from desktop.engine.store import ResultsStore\n"
        "app = QApplication([])\n"
        "tmp = Path(sys.argv[1])\n"
        "store = ResultsStore(tmp / 'r.sqlite3')\n"
        "w = MainWindow(settings=AppSettings(tmp / 's.ini'), store=store)\n"
        "w.show()\n"
        "for _ in range(20): app.processEvents()\n"
        "a = w.screen().availableGeometry(); f = w.frameGeometry()\n"
        "print(json.dumps({'area': [a.x(), a.y(), a.width(), a.height()],\n"
        "                  'frame': [f.x(), f.y(), f.width(), f.height()],\n"
        "                  'inside': a.contains(f), 'dpr': w.devicePixelRatioF()}))\n"
        "w.close(); store.close()\n"
    )
    screen = tmp_path / "screen.json"  # the offscreen platform as a 1366×768 laptop screen
    screen.write_text(json.dumps({"screens": [{"name": "laptop", "x": 0, "y": 0,
                                               "width": 1366, "height": 768,
                                               "logicalDpi": 96}]}))  # fmt: skip
    env = {**os.environ, "QT_QPA_PLATFORM": f"offscreen:configfile={screen}",
           "QT_SCALE_FACTOR": "1.5", "MEDSCREEN_HOME": str(tmp_path / "home")}  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True, text=True, check=True, env=env, timeout=120,
    ).stdout  # fmt: skip
    facts = json.loads(out.strip().splitlines()[-1])
    assert facts["dpr"] == 1.5
    assert facts["area"] == [0, 0, 911, 512]  # 1280×800 does not fit this screen...
    assert facts["inside"], facts  # ...and the window was fitted into it

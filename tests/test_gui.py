"""The desktop window, driven like a user would (pytest-qt, offscreen, stand-in models)."""

from __future__ import annotations

import io
import os
import re
import shutil
import sys
import threading
import time
import warnings
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before pytest-qt makes the QApplication

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDragMoveEvent, QDropEvent, QImage
from PySide6.QtWidgets import QApplication, QMessageBox, QWidget

from desktop.engine.inference import OnnxModel
from desktop.engine.results import ScanStatus
from desktop.engine.store import ResultsStore
from desktop.gui import workers
from desktop.gui.main_window import MainWindow
from desktop.gui.results_model import Column, Filter
from desktop.gui.settings import AppSettings

pytestmark = pytest.mark.gui

DATA = Path(__file__).parent / "data"
WAIT_MS = 30_000


@pytest.fixture(autouse=True)
def _no_threads_left(qapp):
    """Fail a test that leaves a worker QThread or a decoder thread running (as napari does)."""
    yield
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (workers.live_workers() or _engine_threads()):
        qapp.processEvents()
        time.sleep(0.02)
    assert not workers.live_workers(), f"worker threads left running: {workers.live_workers()}"
    assert not _engine_threads(), f"engine threads left running: {_engine_threads()}"
    assert not _batch_processes(), f"batch processes left running: {_batch_processes()}"


def _engine_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("medscreen")]


def _batch_processes() -> list[int | None]:
    import multiprocessing

    return [p.pid for p in multiprocessing.active_children() if p.name == "medscreen-batch"]


@pytest.fixture
def settings(tmp_path: Path) -> AppSettings:
    return AppSettings(tmp_path / "settings.ini")


@pytest.fixture
def store(tmp_path: Path):
    db = ResultsStore(tmp_path / "results.sqlite3")
    yield db
    db.close()


def _make_window(qtbot, settings, store, models: Path, start: bool = True) -> MainWindow:
    window = MainWindow(settings=settings, store=store, model_dirs=[models])
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    if start:
        with qtbot.waitSignal(window.models_changed, timeout=WAIT_MS):
            window.start()
    return window


@pytest.fixture
def window(qtbot, settings, store, stand_in_models):
    win = _make_window(qtbot, settings, store, stand_in_models)
    yield win
    win.close()


def _drop(target: QWidget, paths: list[Path]) -> None:
    """A whole drag: enter, move, drop (Qt delivers a drop only after an accepted enter)."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    args = (
        Qt.DropAction.CopyAction,
        mime,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    with warnings.catch_warnings():  # PySide maps these constructors to QPoint ones it deprecates
        warnings.simplefilter("ignore", DeprecationWarning)
        enter = QDragEnterEvent(QPoint(20, 20), *args)
        move = QDragMoveEvent(QPoint(20, 20), *args)
    assert QApplication.sendEvent(target, enter) and enter.isAccepted()
    QApplication.sendEvent(target, move)
    QApplication.sendEvent(target, QDropEvent(QPointF(20, 20), *args))


def _scan_count(folder: Path) -> int:
    from desktop.engine.discovery import discover

    return len(discover([folder]).files)


def _run_folder(qtbot, window: MainWindow, folder: Path) -> None:
    with qtbot.waitSignal(window.batch.batch_finished, timeout=WAIT_MS):
        _drop(window.drop_area, [folder])
    assert window.model.rowCount() == _scan_count(folder)


def _flag_texts(window: MainWindow, model_id: str) -> list[str]:
    col = window.model.column_of(Column.FLAG, model_id)
    return [window.model.index(r, col).data() for r in range(window.model.rowCount())]


# -- tests -------------------------------------------------------------------------------------
def test_window_loads_models_and_says_which_device(window: MainWindow):
    """The window verifies the models but opens no session: it claims no device until a
    batch process has reported one (tests/test_window_models.py runs one)."""
    assert window.models is not None
    assert window.models_label.text() == (
        "Models ready — device: reported by the batch process when it runs (asked for: auto)"
    )
    headers = [
        window.model.headerData(c, Qt.Orientation.Horizontal)
        for c in range(window.model.columnCount())
    ]
    # two lines each, so a column is as wide as its number or flag, not its heading
    assert "TB\nscore" in headers and "Pneumonia\nflag" in headers


def test_the_table_fits_a_laptop_screen_with_every_column_on_it(qtbot, window: MainWindow):
    """At 1366 px (a clinic laptop) with both finding models, every column, the Status and the
    Reason too, is on screen without scrolling; file names keep a readable width."""
    from desktop.gui.results_model import Column

    window.show()
    window.pages.setCurrentIndex(1)  # the table's page, as after a drop
    window.resize(1366, 768)
    qtbot.waitUntil(lambda: window.view.viewport().width() > 1200)
    window.view.apply_column_widths()
    header, model = window.view.horizontalHeader(), window.model
    right = max(header.sectionPosition(c) + header.sectionSize(c) for c in range(header.count()))
    assert right <= window.view.viewport().width()
    metrics = window.view.fontMetrics()
    file_col = model.column_of(Column.FILE)
    assert header.sectionSize(file_col) >= metrics.horizontalAdvance("CHNCXR_0336_1.png")
    for kind in (Column.STATUS, Column.REASON):
        assert header.sectionSize(model.column_of(kind)) >= metrics.horizontalAdvance("Screened")


def test_column_widths_give_way_in_proportion_and_never_below_a_floor() -> None:
    from desktop.gui.results_view import fit_widths

    assert fit_widths([100, 200, 50], [100, 100, 20], 400) == [100, 200, 50]  # room enough
    assert fit_widths([100, 200, 50], [100, 100, 20], 300) == [100, 161, 38]  # 100:30, rounded up
    assert fit_widths([100, 200, 50], [100, 100, 20], 100) == [100, 100, 20]  # floors hold


def test_missing_models_give_a_clear_message(qtbot, settings, store, tmp_path: Path):
    window = _make_window(qtbot, settings, store, tmp_path / "no-models", start=False)
    with qtbot.waitSignal(window.models_changed, timeout=WAIT_MS) as blocker:
        window.start()
    assert blocker.args == [None]
    assert "could not be loaded" in window.messages.message()
    assert window.models_label.text().startswith("Models not loaded")
    window.close()


def test_drop_folder_fills_table_and_store(qtbot, window: MainWindow, mixed_folder: Path, store):
    expected = _scan_count(mixed_folder)
    _drop(window.drop_area, [mixed_folder])
    qtbot.waitUntil(lambda: window.model.rowCount() > 0, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: not window.batch.is_running(), timeout=WAIT_MS)
    assert window.model.rowCount() == expected
    statuses = {r.status for r in window.model.results()}
    assert ScanStatus.OK in statuses and ScanStatus.NOT_CHEST_XRAY in statuses
    (info,) = store.batches()
    assert info.done == expected and info.status == "completed"
    assert window.settings.recent_folders() == [str(mixed_folder)]
    # thumbnails are decoded lazily, only when asked for
    thumb = window.model.index(0, window.model.column_of(Column.THUMB)).data(
        Qt.ItemDataRole.DecorationRole
    )
    assert thumb is not None and not thumb.isNull()


def test_drop_on_the_table_viewport_starts_a_batch(qtbot, window: MainWindow, chest_folder: Path):
    _run_folder(qtbot, window, chest_folder / "tb")
    with qtbot.waitSignal(window.batch.batch_finished, timeout=WAIT_MS):
        _drop(window.view.viewport(), [chest_folder / "pneumonia"])
    assert window.model.rowCount() == _scan_count(chest_folder / "pneumonia")


def test_non_scan_drop_says_so(qtbot, window: MainWindow, tmp_path: Path):
    notes = tmp_path / "notes.txt"
    notes.write_text("patient list", encoding="utf-8")
    _drop(window.drop_area, [notes])
    expected = "notes.txt is not a scan MedScreen can read (PNG, JPEG, TIFF, BMP, DICOM)"
    qtbot.waitUntil(lambda: expected in window.messages.message(), timeout=WAIT_MS)
    assert not window.batch.is_running()
    assert window.model.rowCount() == 0


def test_cancel_keeps_finished_rows(
    qtbot, window: MainWindow, chest_folder: Path, store, monkeypatch
):
    """Cancel with a slowed-down screener, so it lands after two rows on any machine: the
    patch reaches only this process, so this batch runs in it (the batch process's own
    cancel is tested below on a folder long enough to stop halfway)."""
    from desktop.engine.screening import Screener

    window.batch.in_process = True
    original = Screener.screen

    def slow(self, prepared):
        time.sleep(0.15)
        return original(self, prepared)

    monkeypatch.setattr(Screener, "screen", slow)
    total = _scan_count(chest_folder)
    _drop(window.drop_area, [chest_folder])
    qtbot.waitUntil(lambda: window.model.rowCount() >= 2, timeout=WAIT_MS)
    with qtbot.waitSignal(window.batch.batch_finished, timeout=WAIT_MS) as blocker:
        qtbot.keyClick(window, Qt.Key.Key_Escape)
    _summary, cancelled = blocker.args
    assert cancelled
    kept = window.model.rowCount()
    assert 2 <= kept < total
    (info,) = store.batches()
    assert info.status == "cancelled" and info.done == kept
    assert len(list(store.batch_results(info.id))) == kept
    # ... and the cancelled batch can be resumed: stored rows first, then the rest
    monkeypatch.setattr(Screener, "screen", original)
    with qtbot.waitSignal(window.batch.batch_finished, timeout=WAIT_MS):
        window.resume_batch(info.id)
    assert window.model.rowCount() == total
    assert store.batch(info.id).status == "completed"
    assert len({r.file for r in window.model.results()}) == total


@pytest.fixture(scope="module")
def long_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 distinct small real chest X-rays: a batch long enough to stop halfway."""
    from tests.fixtures import distinct_scans

    sources = sorted((DATA / "tb").rglob("*.png")) + sorted((DATA / "pneumonia").rglob("*.jpeg"))
    folder = tmp_path_factory.mktemp("long")
    return distinct_scans(folder, 300, sources, side=96, seed=11, per_folder=100)


def test_batch_runs_in_its_own_process_and_cancels_there(
    qtbot, window: MainWindow, long_folder: Path, store
):
    """The real path end to end: a child process screens, the window's reader thread fills
    the table, Esc cancels in the child; the committed rows stay and resume finishes."""
    assert not window.batch.in_process
    _drop(window.drop_area, [long_folder])
    qtbot.waitUntil(lambda: window.model.rowCount() >= 2, timeout=WAIT_MS)
    child = window.batch.process_id
    assert child is not None and child != os.getpid()
    with qtbot.waitSignal(window.batch.batch_finished, timeout=WAIT_MS) as blocker:
        qtbot.keyClick(window, Qt.Key.Key_Escape)
    summary, cancelled = blocker.args
    assert cancelled and summary.cancelled
    kept = window.model.rowCount()
    assert 2 <= kept < 300
    (info,) = store.batches()
    assert info.status == "cancelled" and info.done == kept
    assert {r.file for r in window.model.results()} == {
        r.file for r in store.batch_results(info.id)
    }
    # rows came without thumbnail bytes, and the table shows them from the store
    thumb = window.model.index(0, window.model.column_of(Column.THUMB)).data(
        Qt.ItemDataRole.DecorationRole
    )
    assert thumb is not None and not thumb.isNull()
    assert "Cancelled:" in window.statusBar().currentMessage()
    with qtbot.waitSignal(window.batch.batch_finished, timeout=WAIT_MS):
        window.resume_batch(info.id)
    assert window.model.rowCount() == 300
    assert store.batch(info.id).status == "completed"
    assert window.batch.process_id is None


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_a_batch_process_that_dies_is_shown_and_its_rows_stay(
    qtbot, window: MainWindow, long_folder: Path, store
):
    import signal

    _drop(window.drop_area, [long_folder])
    qtbot.waitUntil(lambda: window.model.rowCount() >= 2, timeout=WAIT_MS)
    with qtbot.waitSignal(window.batch.batch_failed, timeout=WAIT_MS) as blocker:
        os.kill(window.batch.process_id, signal.SIGKILL)
    error = blocker.args[0]
    assert "SIGKILL" in str(error.exception)
    qtbot.waitUntil(lambda: not window.batch.is_running(), timeout=WAIT_MS)
    message = window.messages.message()
    assert message.startswith("The batch stopped: the screening process ended unexpectedly")
    assert "The scans finished so far are kept" in message
    assert not window.batch_bar.isVisible() and not window.act_cancel.isEnabled()
    (info,) = store.batches()
    shown = {r.file for r in window.model.results()}
    assert len(shown) >= 2 and shown <= {r.file for r in store.batch_results(info.id)}
    assert [b.id for b in store.interrupted_batches()] == [info.id]  # resumable
    # ... from the message itself: a new batch process screens the rest
    assert window.messages.action.text() == "Resume"
    with qtbot.waitSignal(window.batch.batch_finished, timeout=WAIT_MS):
        window.messages.action.click()
    assert window.model.rowCount() == 300
    assert store.batch(info.id).status == "completed"


def test_an_error_in_the_batch_process_reaches_the_window_with_its_traceback(
    qtbot, window: MainWindow
):
    with qtbot.waitSignal(window.batch.batch_failed, timeout=WAIT_MS) as blocker:
        window.batch.start(window.models, window.store, [], resume="no-such-batch")
    error = blocker.args[0]
    assert "no batch 'no-such-batch' in the results store" in str(error.exception)
    assert "In the batch process" in error.traceback and "runner.py" in error.traceback
    qtbot.waitUntil(lambda: "no batch 'no-such-batch'" in window.messages.message(), timeout=1000)
    assert window.messages.action.text() == ""  # nothing in the store to resume


def test_operating_point_changes_flags_without_inference(
    qtbot, window: MainWindow, chest_folder: Path, monkeypatch
):
    _run_folder(qtbot, window, chest_folder)
    runs = {"n": 0}
    original = OnnxModel.run

    def counting(self, batch):
        runs["n"] += 1
        return original(self, batch)

    monkeypatch.setattr(OnnxModel, "run", counting)
    picker = window.op_picker
    assert picker.choice().name == "screening"
    assert "sens 0.92, spec 0.71" in picker.detail.text()
    before = _flag_texts(window, "tb")
    with qtbot.waitSignal(window.model.dataChanged, timeout=1000):
        picker.combo.setCurrentIndex(picker.combo.findData("__custom__"))
        picker.custom.setValue(0.99)
    after = _flag_texts(window, "tb")
    assert before != after
    assert all(text in ("—", "") for text in after)
    picker.custom.setValue(0.0)
    assert {t for t in _flag_texts(window, "tb") if t} == {"flagged"}
    assert runs["n"] == 0  # flags came from stored probabilities
    assert window.settings.operating_point == "0"
    # the flagged filter follows the new flags at once
    window.filter_combo.setCurrentIndex(window.filter_combo.findData(Filter.FLAGGED))
    flagged_ok = sum(1 for r in window.model.results() if r.status is ScanStatus.OK)
    assert window.proxy.rowCount() == flagged_ok


def test_sort_filter_search_and_f3(qtbot, window: MainWindow, mixed_folder: Path):
    _run_folder(qtbot, window, mixed_folder)
    proxy = window.proxy
    col = window.model.column_of(Column.SCORE, "tb")
    window.view.sortByColumn(col, Qt.SortOrder.DescendingOrder)
    scores = [proxy.index(r, col).data() for r in range(proxy.rowCount())]
    numbers = [float(s) for s in scores if s]
    assert numbers == sorted(numbers, reverse=True)
    window.filter_combo.setCurrentIndex(window.filter_combo.findData(Filter.NOT_SCREENED))
    assert proxy.rowCount() == sum(
        1 for r in window.model.results() if r.status is ScanStatus.NOT_CHEST_XRAY
    )
    window.filter_combo.setCurrentIndex(window.filter_combo.findData(Filter.ALL))
    window.search.setText("MCUCXR_0001")
    assert proxy.rowCount() == 1
    window.search.clear()
    qtbot.keyClicks(window.search, "chn")  # "h" is a shortcut elsewhere, not while typing
    assert window.search.text() == "chn"
    assert proxy.rowCount() == sum(1 for r in window.model.results() if "CHN" in r.file)
    window.search.clear()
    window.view.setFocus()
    qtbot.keyClick(window, Qt.Key.Key_F3)
    first = window.view.currentIndex()
    assert first.isValid() and window.proxy.index(first.row(), 0).data(Qt.ItemDataRole.UserRole + 3)


def test_viewer_heatmap_toggles_and_shows_outputs(qtbot, window: MainWindow, chest_folder: Path):
    _run_folder(qtbot, window, chest_folder / "tb")
    row = next(r for r, res in enumerate(window.model.results()) if res.status is ScanStatus.OK)
    result = window.model.result(row)
    viewer = window.open_viewer(result)
    qtbot.waitUntil(lambda: viewer.source_label.text().endswith("original"), timeout=WAIT_MS)
    viewer.opacity.setValue(80)
    plain = viewer.rendered_image()
    qtbot.keyClick(viewer, Qt.Key.Key_H)
    assert viewer.canvas.heat_visible()
    heat = viewer.rendered_image()
    assert _mean_abs_diff(plain, heat) > 5
    qtbot.keyClick(viewer, Qt.Key.Key_H)
    assert _mean_abs_diff(plain, viewer.rendered_image()) < 0.5
    text = viewer.scores.text()
    assert "TB:" in text and "operating point screening" in text and "all classes" in text
    viewer.close()


@pytest.fixture
def identified_dicom(tmp_path: Path) -> Path:
    """A folder with the real CR chest carrying known patient identifiers, and a PNG without.

    The viewer's identifier checkbox is enabled only for a file with identifiers: this makes
    sure the test below always exercises both states instead of asserting conditionally.
    """
    from tests.fixtures import write_cr_variant

    folder = tmp_path / "identified"
    folder.mkdir()
    write_cr_variant(
        folder / "IM000001.dcm",
        PatientName="Müller^José",
        PatientID="MRN-004417",
        PatientBirthDate="19570312",
    )
    shutil.copy(next((DATA / "tb" / "normal").glob("*.png")), folder / "plain.png")
    return folder


def _detail_rows(viewer) -> dict[str, str]:
    form = viewer.details
    label, field = form.ItemRole.LabelRole, form.ItemRole.FieldRole
    return {
        form.itemAt(i, label).widget().text(): form.itemAt(i, field).widget().text()
        for i in range(form.rowCount())
    }


def test_viewer_window_level_on_dicom_and_hidden_identifiers(
    qtbot, window: MainWindow, identified_dicom: Path
):
    _run_folder(qtbot, window, identified_dicom)
    result = next(r for r in window.model.results() if r.file.endswith("IM000001.dcm"))
    viewer = window.open_viewer(result)
    qtbot.waitUntil(lambda: viewer.source_label.text().endswith("original"), timeout=WAIT_MS)
    assert viewer.center.isEnabled()
    before = viewer.rendered_image()
    viewer.width_slider.setValue(max(2, viewer.width_slider.value() // 4))
    qtbot.waitUntil(lambda: _mean_abs_diff(before, viewer.rendered_image()) > 2, timeout=WAIT_MS)
    rows = _detail_rows(viewer)
    assert not {"Patient name", "Patient ID", "Birth date"} & set(rows)
    assert "MRN-004417" not in " ".join(rows.values())
    assert viewer.show_ids.isEnabled() and not viewer.show_ids.isChecked()
    viewer.show_ids.setChecked(True)
    rows = _detail_rows(viewer)
    assert rows["Patient name"] == "Müller^José"
    assert rows["Patient ID"] == "MRN-004417"
    assert rows["Birth date"] == "19570312"
    viewer.close()
    # a file without identifiers: the box is off and says why
    plain = next(r for r in window.model.results() if r.file.endswith("plain.png"))
    viewer = window.open_viewer(plain)
    qtbot.waitUntil(lambda: viewer.source_label.text().endswith("original"), timeout=WAIT_MS)
    assert not viewer.show_ids.isEnabled()
    assert viewer.show_ids.toolTip() == "This file carries no patient identifiers"
    viewer.close()


def test_viewer_never_lays_a_result_on_a_changed_file(qtbot, window: MainWindow, tmp_path: Path):
    """A PACS export reuses IM000001.png for another patient: the viewer must not show the new
    image under the old scores and heatmap; it shows what was screened and offers a rescreen."""
    import hashlib

    from desktop.engine.overlay import decode_thumbnail

    folder = tmp_path / "export"
    folder.mkdir()
    target = folder / "IM000001.png"
    shutil.copy(sorted((DATA / "tb" / "tuberculosis").glob("*.png"))[0], target)
    _run_folder(qtbot, window, folder)
    screened = window.model.result(0)
    assert screened.status is ScanStatus.OK
    # the row holds no class maps (results_model.compact_row); the viewer's copy has them
    assert window.model.with_thumbnail(screened).findings["tb"].activation is not None
    shutil.copy(sorted((DATA / "tb" / "normal").glob("*.png"))[0], target)  # same name
    new_sha = hashlib.sha256(target.read_bytes()).hexdigest()
    assert new_sha != screened.sha256

    viewer = window.open_viewer(screened)
    with qtbot.waitSignal(viewer.image_ready, timeout=WAIT_MS):
        pass
    assert viewer.file_changed
    assert viewer.source_label.text() == "stored thumbnail (the file has changed)"
    assert "IM000001.png is not the image that was screened" in viewer.messages.message()
    assert viewer.messages.action.text() == "Screen the new file"
    thumb = decode_thumbnail(window.model.with_thumbnail(screened).thumbnail_png)
    np.testing.assert_array_equal(viewer._grey, thumb)  # the screened image, not the new one
    assert not viewer.center.isEnabled()
    # the stored heatmap is laid on the stored thumbnail: what was screened
    viewer.opacity.setValue(80)
    plain = viewer.rendered_image()
    qtbot.keyClick(viewer, Qt.Key.Key_H)
    assert _mean_abs_diff(plain, viewer.rendered_image()) > 5

    with qtbot.waitSignal(window.batch.batch_finished, timeout=WAIT_MS):
        viewer.messages.action.click()
    assert window.model.rowCount() == 1
    fresh = window.model.result(0)
    assert fresh.file == str(target) and fresh.sha256 == new_sha
    assert fresh.findings["tb"].probability != screened.findings["tb"].probability


def test_viewer_shows_the_original_when_the_bytes_match(qtbot, window: MainWindow, tmp_path):
    folder = tmp_path / "same"
    folder.mkdir()
    shutil.copy(sorted((DATA / "tb" / "tuberculosis").glob("*.png"))[0], folder / "IM000001.png")
    _run_folder(qtbot, window, folder)
    viewer = window.open_viewer(window.model.result(0))
    with qtbot.waitSignal(viewer.image_ready, timeout=WAIT_MS):
        pass
    assert not viewer.file_changed and viewer.messages.message() == ""
    assert viewer.source_label.text().endswith("original")
    viewer.close()


def test_export_writes_pdf_and_csv(qtbot, window: MainWindow, chest_folder: Path, tmp_path: Path):
    _run_folder(qtbot, window, chest_folder / "tb")
    with qtbot.waitSignal(window.export_done, timeout=WAIT_MS) as blocker:
        window.export_report(tmp_path / "out" / "clinic-report.pdf")
    paths = [Path(p) for p in blocker.args[0]]
    pdf = tmp_path / "out" / "clinic-report.pdf"
    assert pdf in paths and (tmp_path / "out" / "clinic-report.csv") in paths
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF")
    pages = len(re.findall(rb"/Type\s*/Page(?!s)", data))
    assert pages >= 1, "the PDF has no page objects"
    csv_lines = (tmp_path / "out" / "clinic-report.csv").read_text(encoding="utf-8").splitlines()
    assert len(csv_lines) >= 1 + window.model.rowCount()


def test_history_reopens_a_batch(qtbot, window: MainWindow, chest_folder: Path, store):
    _run_folder(qtbot, window, chest_folder / "tb")
    rows = window.model.rowCount()
    window.model.clear()
    (info,) = store.batches()
    with qtbot.waitSignal(window.batch_loaded, timeout=WAIT_MS):
        window.open_batch(info.id)
    assert window.model.rowCount() == rows
    from desktop.engine.history import history_rows
    from desktop.gui.history_dialog import HistoryDialog

    dialog = HistoryDialog(history_rows(store), parent=window)
    assert dialog.table.rowCount() == 1
    dialog._choose()
    assert dialog.chosen == info.id
    dialog.deleteLater()


def test_interrupted_batch_is_offered_for_resume(
    qtbot, settings, store, stand_in_models, chest_folder: Path
):
    from desktop.engine.discovery import discover

    files = [str(p) for p in discover([chest_folder / "tb"]).files]
    batch_id = store.create_batch([str(chest_folder / "tb")], "old-key", "CPU")
    store.set_items(batch_id, files)  # left "running" by this pid: counts as interrupted
    window = _make_window(qtbot, settings, store, stand_in_models)
    assert "interrupted" in window.messages.message()
    with qtbot.waitSignal(window.batch.batch_finished, timeout=WAIT_MS):
        window.messages.action.click()
    assert window.model.rowCount() == len(files)
    assert store.batch(batch_id).status == "completed"
    window.close()


def test_settings_persist(tmp_path: Path):
    path = tmp_path / "s.ini"
    first = AppSettings(path)
    assert first.include_identifiers is False  # privacy by default
    first.clinic_name = "Clinic A"
    first.include_identifiers = True
    first.add_recent("/a")
    first.add_recent("/b")
    first.sync()
    again = AppSettings(path)
    assert again.clinic_name == "Clinic A"
    assert again.include_identifiers is True
    assert again.recent_folders() == ["/b", "/a"]


def test_uncaught_exception_is_logged_and_shown(qtbot, window: MainWindow, caplog):
    from desktop.gui.app import install_excepthook

    saved = sys.excepthook
    try:
        install_excepthook(window)
        try:
            raise RuntimeError("boom in a slot")
        except RuntimeError:
            sys.excepthook(*sys.exc_info())
        boxes = [w for w in QApplication.topLevelWidgets() if isinstance(w, QMessageBox)]
        assert boxes and "boom in a slot" in boxes[-1].text()
        assert "uncaught exception" in caplog.text
        for box in boxes:
            box.close()
    finally:
        sys.excepthook = saved


def test_models_and_settings_dialogs(qtbot, window: MainWindow, settings):
    from desktop.gui.models_dialog import ModelsDialog
    from desktop.gui.settings_dialog import SettingsDialog

    assert window.models is not None
    dialog = ModelsDialog(window.models.manifests, window.device_text(), [], window)
    assert dialog.tabs.count() == 1 + len(window.models.manifests)
    overview = dialog.tabs.widget(0).toPlainText()
    assert "screening" in overview and "tests only" in overview
    dialog.deleteLater()
    dlg = SettingsDialog(settings, window)
    assert not dlg.identifiers.isChecked()
    dlg.clinic.setText("Clinic B")
    dlg.accept()
    assert AppSettings(settings.path).clinic_name == "Clinic B"


def _mean_abs_diff(a: QImage, b: QImage) -> float:
    return float(np.abs(_array(a) - _array(b)).mean())


def _array(image: QImage) -> np.ndarray:
    image = image.convertToFormat(QImage.Format.Format_RGB888)
    width, height = image.width(), image.height()
    data = np.frombuffer(image.constBits(), dtype=np.uint8, count=image.sizeInBytes())
    return data.reshape(height, image.bytesPerLine())[:, : width * 3].astype(np.float32)


def test_worker_signals_in_order(qtbot):
    """superqt's contract: started, yielded..., returned, finished; errors are reported."""
    from desktop.gui.workers import Worker

    def numbers():
        yield 1
        yield 2
        return "done"

    worker = Worker(numbers)
    got: list[object] = []
    worker.yielded.connect(got.append)
    with qtbot.waitSignals(
        [worker.started, worker.returned, worker.finished], order="strict", timeout=WAIT_MS
    ):
        worker.start()
    assert got == [1, 2]

    def broken():
        raise ValueError("bad input")

    failing = Worker(broken)
    with qtbot.waitSignal(failing.errored, timeout=WAIT_MS) as blocker:
        failing.start()
    assert "bad input" in str(blocker.args[0]) and "ValueError" in blocker.args[0].traceback
    qtbot.waitUntil(lambda: not failing.is_running(), timeout=WAIT_MS)

    def endless():
        while True:
            yield 0
            time.sleep(0.01)

    stopping = Worker(endless)
    with qtbot.waitSignal(stopping.aborted, timeout=WAIT_MS):
        stopping.start()
        qtbot.wait(50)
        stopping.quit()
    assert stopping.wait(5000)


def test_entry_point_opens_the_window(tmp_path: Path):
    """``python -m desktop`` (what ``medscreen`` runs) shows the window and exits cleanly."""
    import subprocess

    env = dict(
        os.environ, MEDSCREEN_SMOKE="1", MEDSCREEN_HOME=str(tmp_path), QT_QPA_PLATFORM="offscreen"
    )
    done = subprocess.run(
        [sys.executable, "-m", "desktop"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr
    assert "shown_after_s=" in done.stdout


def test_application_has_the_medscreen_icon(qapp):
    from desktop.gui.app import app_icon

    icon = app_icon()
    assert not icon.isNull()
    assert {s.width() for s in icon.availableSizes()} >= {16, 32, 48, 256}


def test_rows_keep_no_thumbnail_bytes_but_show_and_open_them(
    qtbot, window: MainWindow, chest_folder: Path, store
):
    _run_folder(qtbot, window, chest_folder)
    rows = window.model.results()
    assert rows and all(r.thumbnail_png is None for r in rows)  # fetched from the store
    thumb = window.model.index(3, window.model.column_of(Column.THUMB)).data(
        Qt.ItemDataRole.DecorationRole
    )
    assert thumb is not None and thumb.height() == 48
    full = window.model.with_thumbnail(rows[3])
    assert full.thumbnail_png == store.thumbnail(rows[3].sha256, rows[3].models_key)
    # thumbnails are small grey JPEGs now (older stores hold PNGs; both open the same way)
    assert full.thumbnail_png.startswith(b"\xff\xd8\xff")
    from PIL import Image

    from desktop.engine.results import THUMBNAIL_SIZE

    with Image.open(io.BytesIO(full.thumbnail_png)) as image:
        assert image.format == "JPEG" and image.mode == "L"
        assert max(image.size) == THUMBNAIL_SIZE
    shown = QImage.fromData(full.thumbnail_png)
    assert not shown.isNull() and max(shown.width(), shown.height()) == THUMBNAIL_SIZE

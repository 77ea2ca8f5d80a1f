"""Calibrate for this site: set a model's threshold on the clinic's own labelled scans.

WHO's guidance for CAD in TB screening: a threshold chosen elsewhere does not carry over, so
each programme sets its own on local scans with known outcomes. The dialog walks a clinic
through it without a command line:

1. choose a folder with one sub-folder per label (or a CSV ``file,label``), the model and a
   target sensitivity;
2. the scans are screened in the batch process, as the main window's batches are (stored
   results are reused), and the ROC curve appears with the threshold that reaches the target
   with the best specificity;
3. the point can be moved along the curve (slider or click), and the figures follow:
   sensitivity and specificity with their 95% CIs, and what the threshold means per 1,000
   screened — at the labelled set's prevalence unless the clinic enters its own;
4. save it under a name (``site:NAME``): the main window's operating-point picker offers it
   for this exact model version, and every report says it was used.

Everything computed comes from the engine (:mod:`desktop.engine.labelled`,
:mod:`desktop.engine.calibration`, :mod:`desktop.engine.site_points`); this is its face.

The run (reading the labels, screening, the bootstrap) is one
:class:`~desktop.engine.batch_process.CalibrationTask` sent to a
:class:`~desktop.engine.batch_process.BatchProcess`: with the batch's decoder and inference
threads in the window's process the GUI thread waited for the GIL they held, and the dialog
(and the window behind it) froze for a moment several times a run. A worker thread here only
blocks on that process's pipe; progress reaches the dialog at most every
:data:`PROGRESS_INTERVAL_MS`. Cancel, an error in the child (message here, traceback in the
log and the status tooltip) and a child that dies are handled by ``BatchProcess`` as for the
window's batches; the scans finished are in the store and are reused by the next run.

A package that process cannot open (ONNX Runtime refuses it) is replaced there by the bundled
model of its id, and the calibration is of that model: the dialog then adopts the set the
process reports (:attr:`CalibrateDialog.models`, the model list, which saved points fit) and
shows the refusal before a point is judged or saved, as the main window does for its batches;
:attr:`CalibrateDialog.models_reported` lets the window adopt it too.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PySide6.QtCore import QPointF, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QMouseEvent, QPainter, QPainterPath, QPaintEvent, QPen
from PySide6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSizePolicy,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from desktop import __version__
from desktop.engine.calibration import DEFAULT_TARGET_SENSITIVITY, Calibration, PointStats
from desktop.engine.site_points import (
    SiteCalibration,
    SitePoint,
    SitePointError,
    SitePointStore,
    normalize_name,
)
from desktop.gui.qt_compat import emit
from desktop.gui.results_model import short_name
from desktop.gui.workers import Worker, WorkerError

if TYPE_CHECKING:
    from desktop.engine.batch_process import BatchProcess, InProcessRun
    from desktop.engine.labelled import CalibrationOutcome
    from desktop.engine.registry import ModelSet, ModelSetPlan
    from desktop.engine.runner import Progress
    from desktop.engine.store import ResultsStore

log = logging.getLogger(__name__)

#: How often the progress bar and status follow the run: one update per scan would post
#: ~100 events a second to the GUI thread, each relaying out the status label.
PROGRESS_INTERVAL_MS = 100
#: How long closing the dialog waits for a cancelled run before its process is killed.
CLOSE_WAIT_MS = 30_000

_CURVE = QColor(31, 94, 168)
_POINT = QColor(214, 69, 30)


def _write_record(
    out_dir: Path,
    name: str,
    cal: SiteCalibration,
    calibration: Calibration,
    point: PointStats,
    excluded: list[tuple[str, str]],
) -> list[Path]:
    from desktop.engine.reports.calibration import write_calibration_files

    return write_calibration_files(out_dir, name, cal, calibration, point, excluded)


class RocView(QWidget):
    """The ROC curve with the chosen point; a click moves the point to the nearest vertex."""

    point_picked = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumSize(300, 300)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setToolTip("Click on the curve to move the operating point")
        self._fpr = np.zeros(0)
        self._tpr = np.zeros(0)
        self._current: int | None = None
        self._target_index: int | None = None
        self._target: float | None = None

    def set_curve(self, calibration: Calibration | None) -> None:
        if calibration is None:
            self._fpr = self._tpr = np.zeros(0)
            self._current = self._target_index = self._target = None
        else:
            self._fpr, self._tpr = calibration.roc.fpr, calibration.roc.tpr
            self._target_index = calibration.chosen_index
            self._target = calibration.target_sensitivity
            self._current = calibration.chosen_index
        self.update()

    def set_current(self, index: int) -> None:
        self._current = index
        self.update()

    def _frame(self) -> tuple[float, float, float]:
        """Left, top and side of the square plot, centred in the widget."""
        margin_left, margin = 46.0, 16.0
        side = max(min(self.width() - margin_left - margin, self.height() - 2 * margin - 30), 10.0)
        left = margin_left + max(0.0, (self.width() - margin_left - margin - side) / 2)
        return left, margin, side

    def _xy(self, fpr: float, tpr: float) -> QPointF:
        left, top, side = self._frame()
        return QPointF(left + fpr * side, top + (1 - tpr) * side)

    def paintEvent(self, _event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        left, top, side = self._frame()
        pal = self.palette()
        painter.fillRect(self.rect(), pal.base())
        grid = QPen(pal.mid().color(), 0.5)
        text = pal.text().color()
        for i in range(11):
            v = i / 10
            painter.setPen(grid)
            painter.drawLine(self._xy(v, 0), self._xy(v, 1))
            painter.drawLine(self._xy(0, v), self._xy(1, v))
            if i % 2 == 0:
                painter.setPen(text)
                p = self._xy(v, 0)
                painter.drawText(QPointF(p.x() - 9, p.y() + 14), f"{v:.1f}")
                q = self._xy(0, v)
                painter.drawText(QPointF(q.x() - 26, q.y() + 4), f"{v:.1f}")
        painter.setPen(QPen(text, 1))
        painter.drawRect(int(left), int(top), int(side), int(side))
        painter.drawText(
            QPointF(left + side / 2 - 45, top + side + 30), "1 − specificity (false alarms)"
        )
        painter.save()
        painter.translate(left - 34, top + side / 2 + 60)
        painter.rotate(-90)
        painter.drawText(QPointF(0, 0), "sensitivity (cases found)")
        painter.restore()
        painter.setPen(QPen(pal.mid().color(), 1, Qt.PenStyle.DashLine))
        painter.drawLine(self._xy(0, 0), self._xy(1, 1))
        if self._target is not None:
            painter.setPen(QPen(_POINT.lighter(140), 1, Qt.PenStyle.DotLine))
            painter.drawLine(self._xy(0, self._target), self._xy(1, self._target))
        if self._fpr.size:
            path = QPainterPath(self._xy(0, 0))
            for f, t in zip(self._fpr, self._tpr, strict=True):
                path.lineTo(self._xy(float(f), float(t)))
            path.lineTo(self._xy(1, 1))
            painter.setPen(QPen(_CURVE, 2.2))
            painter.drawPath(path)
            if self._target_index is not None and self._target_index != self._current:
                p = self._xy(
                    float(self._fpr[self._target_index]), float(self._tpr[self._target_index])
                )
                painter.setPen(QPen(_POINT, 1.5))
                painter.setBrush(Qt.BrushStyle.NoBrush)
                painter.drawEllipse(p, 5, 5)
            if self._current is not None:
                p = self._xy(float(self._fpr[self._current]), float(self._tpr[self._current]))
                painter.setPen(QPen(text, 1))
                painter.setBrush(_POINT)
                painter.drawEllipse(p, 6, 6)
        painter.end()

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if not self._fpr.size:
            return
        left, top, side = self._frame()
        pos = event.position()
        fpr = (pos.x() - left) / side
        tpr = 1 - (pos.y() - top) / side
        nearest = int(np.argmin((self._fpr - fpr) ** 2 + (self._tpr - tpr) ** 2))
        emit(self.point_picked, nearest)

    mouseMoveEvent = mousePressEvent  # dragging moves the point too


class CalibrateDialog(QDialog):
    """Calibrate a finding model's threshold on labelled scans and save it as ``site:NAME``."""

    #: The calibration run ended (a CalibrationOutcome, with or without a calibration).
    calibrated = Signal(object)
    #: A site point was saved (the SitePoint): the main window refreshes its picker.
    saved = Signal(object)
    #: The PDF/PNG/JSON record was written (list of paths).
    record_written = Signal(list)
    #: The models the run really opened (a ModelSetPlan), when its process could not open
    #: one it was sent and used the bundled alternative; the dialog has adopted them.
    models_reported = Signal(object)

    def __init__(
        self,
        models: ModelSet | ModelSetPlan,
        store: ResultsStore,
        *,
        site_store: SitePointStore | None = None,
        operator: str = "",
        start_folder: str = "",
        record_dir: Path | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        from desktop.engine.paths import user_data_dir

        self.setWindowTitle("Calibrate for this site")
        self.models = models
        self.store = store
        self.site_store = site_store or SitePointStore.default()
        self.record_dir = record_dir or user_data_dir() / "calibrations"
        self._start_folder = start_folder
        self._worker: Worker | None = None
        self._record_worker: Worker | None = None
        self._process: BatchProcess | None = None
        #: The running calibration (process or in-process run): what it opened is read
        #: from it when it ends (its ``models``).
        self._run: BatchProcess | InProcessRun | None = None
        #: Run the calibration in a thread of this process instead of the batch process:
        #: the way before, kept for benchmarks/bench_calibrate_stall.py --in-process (A/B on
        #: one machine) and for tests that patch the engine here; the window stalls this way.
        self.in_process = False
        #: The newest progress event, set by the worker thread, shown by :attr:`_ticker`.
        self._latest: Progress | None = None
        self._ticker = QTimer(self)
        self._ticker.setInterval(PROGRESS_INTERVAL_MS)
        self._ticker.timeout.connect(self._show_progress)
        #: The last failure (a WorkerError), its traceback included, for the log and tests.
        self.last_error: WorkerError | None = None
        self.outcome: CalibrationOutcome | None = None
        self._model_id: str | None = None
        self._build(operator)
        self._set_result(None)
        self._refresh_saved()
        self.resize(980, 720)

    # -- construction ----------------------------------------------------------------------
    def _build(self, operator: str) -> None:
        source = QGroupBox("1. Labelled scans from this site", self)
        self.folder_radio = QRadioButton("Folder with one sub-folder per label", source)
        self.csv_radio = QRadioButton("CSV file with file,label rows", source)
        self.folder_radio.setChecked(True)
        group = QButtonGroup(self)
        group.addButton(self.folder_radio)
        group.addButton(self.csv_radio)
        self.path_edit = QLineEdit(source)
        self.path_edit.setPlaceholderText("Choose the labelled folder…")
        self.path_edit.textChanged.connect(self._update_buttons)
        browse = QPushButton("Browse…", source)
        browse.clicked.connect(self._browse)
        self.folder_radio.toggled.connect(self._kind_changed)
        self.model_combo = QComboBox(source)  # filled once models_note exists (_fill_models)
        self.model_combo.currentIndexChanged.connect(self._kind_changed)
        self.target_spin = QDoubleSpinBox(source)
        self.target_spin.setRange(0.50, 0.99)
        self.target_spin.setSingleStep(0.01)
        self.target_spin.setDecimals(2)
        self.target_spin.setValue(DEFAULT_TARGET_SENSITIVITY)
        self.target_spin.setToolTip("WHO's minimum for a TB triage test is 0.90")
        self.run_button = QPushButton("Screen and calibrate", source)
        self.run_button.setDefault(True)
        self.run_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel", source)
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar(source)
        self.progress.setVisible(False)
        self.status = QLabel(source)
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        #: The models' refusals (the plan's, and a package the run could not open).
        self.models_note = QLabel(source)
        self.models_note.setWordWrap(True)
        self.models_note.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.models_note.setStyleSheet("color: #a8430f;")
        self._fill_models()
        self.labels_hint = QLabel(source)
        self.labels_hint.setForegroundRole(self.palette().ColorRole.PlaceholderText)
        self.labels_hint.setWordWrap(True)

        kind_row = QHBoxLayout()
        kind_row.addWidget(self.folder_radio)
        kind_row.addWidget(self.csv_radio)
        kind_row.addStretch(1)
        path_row = QHBoxLayout()
        path_row.addWidget(self.path_edit, 1)
        path_row.addWidget(browse)
        run_row = QHBoxLayout()
        run_row.addWidget(QLabel("Model:", source))
        run_row.addWidget(self.model_combo)
        run_row.addSpacing(12)
        run_row.addWidget(QLabel("Target sensitivity:", source))
        run_row.addWidget(self.target_spin)
        run_row.addStretch(1)
        run_row.addWidget(self.run_button)
        run_row.addWidget(self.cancel_button)
        box = QVBoxLayout(source)
        box.addLayout(kind_row)
        box.addLayout(path_row)
        box.addWidget(self.labels_hint)
        box.addLayout(run_row)
        box.addWidget(self.progress)
        box.addWidget(self.status)
        box.addWidget(self.models_note)

        choose = QGroupBox("2. Choose the threshold", self)
        self.roc = RocView(choose)
        self.roc.point_picked.connect(self._pick)
        self.figures = QLabel(choose)
        self.figures.setWordWrap(True)
        self.figures.setTextFormat(Qt.TextFormat.RichText)
        self.figures.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.figures.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.slider = QSlider(Qt.Orientation.Horizontal, choose)
        self.slider.setEnabled(False)
        self.slider.valueChanged.connect(self._pick)
        self.slider.setToolTip("Move the operating point along the curve")
        slider_hint = QLabel("← fewer false alarms          more cases found →", choose)
        slider_hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        slider_hint.setForegroundRole(self.palette().ColorRole.PlaceholderText)
        self.reset_button = QPushButton("Back to the target", choose)
        self.reset_button.setEnabled(False)
        self.reset_button.clicked.connect(self._reset_point)
        self.prevalence = QDoubleSpinBox(choose)
        self.prevalence.setRange(0.1, 99.9)  # "—" until a calibration sets it (_set_result)
        self.prevalence.setDecimals(1)
        self.prevalence.setSuffix(" %")
        # as wide with "—" as with "99.9 %": the row does not jump when a result arrives
        self.prevalence.setMinimumWidth(self.prevalence.sizeHint().width())
        self.prevalence.setEnabled(False)
        self.prevalence.setToolTip(
            "The share of screened people with the disease, for the per-1,000 figures. It "
            "starts at your labelled set's share; enter your programme's if you know it."
        )
        self.prevalence.valueChanged.connect(lambda _v: self._show_point())
        self.excluded_box = QPlainTextEdit(choose)
        self.excluded_box.setReadOnly(True)
        self.excluded_box.setMaximumHeight(90)
        self.excluded_box.setPlaceholderText("Files that could not be used are listed here.")
        self.warnings = QLabel(choose)
        self.warnings.setWordWrap(True)
        self.warnings.setStyleSheet("color: #a8430f;")
        right = QVBoxLayout()
        right.addWidget(self.figures, 1)
        prev_row = QHBoxLayout()
        prev_row.addWidget(QLabel("Prevalence for the per-1,000 figures:", choose))
        prev_row.addWidget(self.prevalence)
        prev_row.addStretch(1)
        right.addLayout(prev_row)
        right.addWidget(self.slider)
        right.addWidget(slider_hint)
        right.addWidget(self.reset_button, 0, Qt.AlignmentFlag.AlignLeft)
        right.addWidget(self.warnings)
        right.addWidget(QLabel("Left out:", choose))
        right.addWidget(self.excluded_box)
        row = QHBoxLayout(choose)
        row.addWidget(self.roc, 1)
        row.addLayout(right, 1)

        save = QGroupBox("3. Save it as a site operating point", self)
        self.name_edit = QLineEdit(save)
        self.name_edit.setPlaceholderText("e.g. Yakutsk-2026-12")
        self.name_edit.setText(f"site-{datetime.now(UTC):%Y-%m}")
        self.name_edit.textChanged.connect(self._update_buttons)
        self.by_edit = QLineEdit(operator, save)
        self.by_edit.setPlaceholderText("who calibrated (recorded)")
        self.save_button = QPushButton("Save", save)
        self.save_button.clicked.connect(lambda: self.save())
        self.saved_combo = QComboBox(save)
        self.saved_combo.setMinimumWidth(200)
        self.export_button = QPushButton("Export…", save)
        self.export_button.setToolTip(
            "Write the chosen site point to a JSON file for other clinics"
        )
        self.export_button.clicked.connect(self._choose_export)
        self.import_button = QPushButton("Import…", save)
        self.import_button.setToolTip(
            "Add a site point exported by your programme or another clinic"
        )
        self.import_button.clicked.connect(self._choose_import)
        form = QFormLayout()
        name_row = QHBoxLayout()
        name_row.addWidget(QLabel("site:", save))
        name_row.addWidget(self.name_edit, 1)
        name_row.addWidget(QLabel("Calibrated by:", save))
        name_row.addWidget(self.by_edit, 1)
        name_row.addWidget(self.save_button)
        form.addRow("Name:", name_row)
        shared = QHBoxLayout()
        shared.addWidget(self.saved_combo, 1)
        shared.addWidget(self.export_button)
        shared.addWidget(self.import_button)
        form.addRow("Saved points:", shared)
        save.setLayout(form)

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close, self)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(source)
        layout.addWidget(choose, 1)
        layout.addWidget(save)
        disclaimer = QLabel(
            "A site threshold is only as good as the labels it was set on: use confirmed "
            "outcomes (culture, GeneXpert, a radiologist's reading), and calibrate again when "
            "the model is updated.",
            self,
        )
        disclaimer.setWordWrap(True)
        disclaimer.setForegroundRole(self.palette().ColorRole.PlaceholderText)
        layout.addWidget(disclaimer)
        layout.addWidget(buttons)
        self._kind_changed()
        self._show_point()

    def _fill_models(self) -> None:
        """The model list from :attr:`models` (name and version), the choice kept by id;
        the refusals, if any, below the status."""
        chosen = self.model_combo.currentData()
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for model_id, loaded in self.models.findings.items():
            m = loaded.manifest
            self.model_combo.addItem(f"{short_name(m)} — {m.name} {m.version}", model_id)
        if chosen is not None:
            self.model_combo.setCurrentIndex(max(0, self.model_combo.findData(chosen)))
        self.model_combo.blockSignals(False)
        problems = self.models.problems
        self.models_note.setText(
            "Some model files were refused: " + "; ".join(problems) if problems else ""
        )
        self.models_note.setVisible(bool(problems))

    def _adopt_reported(self) -> None:
        """The run's process could not open a model it was sent and calibrated the bundled
        one of that id: from now on the dialog's models are those it opened, so a point is
        judged and saved against the model that produced its scores, and the refusal shows."""
        run = self._run
        reported = run.models if run is not None else None
        if reported is None or reported.key == self.models.key:
            return
        self.models = reported
        self._fill_models()
        self._kind_changed()
        self._refresh_saved(self.saved_combo.currentData() or "")
        emit(self.models_reported, reported)

    # -- choosing the labelled scans ---------------------------------------------------------
    def _kind_changed(self) -> None:
        model_id = self.model_combo.currentData()
        if model_id is None:
            return
        manifest = self.models.findings[model_id].manifest
        names = " and ".join(f"{label}/" for label in manifest.labels)
        if self.folder_radio.isChecked():
            self.path_edit.setPlaceholderText("Choose the labelled folder…")
            self.labels_hint.setText(
                f"Sub-folders named {names} (any case); at least 20 scans in each."
            )
        else:
            self.path_edit.setPlaceholderText("Choose the CSV file…")
            self.labels_hint.setText(
                "Rows of file,label; file paths absolute or relative to the CSV; labels: "
                + ", ".join(manifest.labels)
                + "."
            )
        self._update_buttons()

    def set_source(self, path: Path, *, csv: bool = False) -> None:
        (self.csv_radio if csv else self.folder_radio).setChecked(True)
        self.path_edit.setText(str(path))

    def set_model(self, model_id: str) -> None:
        self.model_combo.setCurrentIndex(max(0, self.model_combo.findData(model_id)))

    def _browse(self) -> None:
        start = self.path_edit.text() or self._start_folder
        if self.folder_radio.isChecked():
            chosen = QFileDialog.getExistingDirectory(self, "Labelled folder", start)
        else:
            chosen, _ = QFileDialog.getOpenFileName(
                self, "Labels (CSV)", start, "CSV files (*.csv);;All files (*)"
            )
        if chosen:
            self.path_edit.setText(chosen)

    # -- running -----------------------------------------------------------------------------
    def is_running(self) -> bool:
        return self._worker is not None

    @property
    def process_id(self) -> int | None:
        """The running calibration's process id (None in-process or between runs)."""
        process = self._process
        return process.pid if process is not None and self._worker is not None else None

    def start(self) -> Worker | None:
        """Screen the labelled scans and calibrate in the batch process, read by a worker
        thread (in that thread itself when :attr:`in_process`)."""
        text = self.path_edit.text().strip()
        if not text or self.is_running():
            return None
        from desktop.engine.batch_process import BatchProcess, CalibrationTask

        path = str(Path(text).expanduser().absolute())  # the child resolves nothing itself
        model_id = self.model_combo.currentData()
        self._model_id = model_id
        self._set_result(None)
        self.last_error = None
        self.status.setStyleSheet("")
        self.status.setToolTip("")
        csv = self.csv_radio.isChecked()
        task = CalibrationTask(
            model_id,
            folders=() if csv else (path,),
            csv_files=(path,) if csv else (),
            target_sensitivity=round(self.target_spin.value(), 4),
        )
        if self.in_process:
            from desktop.engine.batch_process import InProcessRun  # sessions open in the thread

            run = InProcessRun(self.models, self.store, task)
            self._run = run
            worker = Worker(run.run, on_quit=run.cancel, name="medscreen-calibrate")
        else:
            process = BatchProcess(self.models, self.store.path, task=task)
            self._process = self._run = process
            worker = Worker(process.run, on_quit=process.cancel, name="medscreen-calibrate")
        self._latest = None
        worker.yielded.connect(self._progress_arrived, type=Qt.ConnectionType.DirectConnection)
        worker.returned.connect(self._finished)
        worker.errored.connect(self._failed)
        worker.finished.connect(self._worker_done)
        self._worker = worker
        self.progress.setRange(0, 0)
        self.progress.setVisible(True)
        self.status.setText("Reading the labels and screening the scans…")
        self._update_buttons()
        self._ticker.start()
        worker.start()
        return worker

    def cancel(self) -> None:
        if self._worker is not None:
            self._ticker.stop()  # the last figures must not overwrite "Cancelling…"
            self.status.setText("Cancelling…")
            self.cancel_button.setEnabled(False)
            self._worker.quit()

    def _progress_arrived(self, event: Progress) -> None:
        """Worker thread: keep the newest event; the GUI thread shows it on its next tick
        (an attribute set is atomic, and no event per scan is posted to the GUI thread)."""
        self._latest = event

    def _show_progress(self) -> None:
        event, self._latest = self._latest, None
        if event is not None:
            self._progress(event)

    def _progress(self, event: Progress) -> None:
        self.progress.setRange(0, max(event.total, 1))
        self.progress.setValue(event.done)
        name = Path(event.current).name if event.current else ""
        self.status.setText(f"Screening {event.done} of {event.total}… {name}")

    def _finished(self, outcome: CalibrationOutcome) -> None:
        self._adopt_reported()  # before the point is shown, judged or saved
        self.outcome = outcome
        scores = outcome.scores
        lines = [f"{Path(e.file).name}: {e.reason}" for e in scores.excluded]
        self.excluded_box.setPlainText("\n".join(lines))
        used = (
            f"{scores.n_positive + scores.n_negative} labelled scans used "
            f"({scores.n_positive} {scores.manifest.positive_label}, {scores.n_negative} "
            f"without); {len(scores.excluded)} left out."
        )
        if scores.cancelled:
            self.status.setText(
                "Cancelled: no calibration was made. The scans screened so far are kept and "
                "are reused when you run it again."
            )
            self.status.setStyleSheet("")
        elif outcome.calibration is None:
            self.status.setText(f"{used} No calibration: {outcome.error}.")
            self.status.setStyleSheet("color: #b3261e;")
        else:
            self.status.setText(used)
            self.status.setStyleSheet("")
        self._set_result(outcome.calibration)
        emit(self.calibrated, outcome)

    def _failed(self, error: WorkerError) -> None:
        """A run that failed: the reason here, the traceback (the child's too:
        it is in the error's notes) in the log and in the status's tooltip."""
        from desktop.engine.batch_process import BatchProcessError

        self._adopt_reported()  # a run that opened its models, then failed: they still hold
        self.last_error = error
        exc = error.exception
        reason = (getattr(exc, "message", None) or str(exc)).rstrip(".")
        if isinstance(exc, BatchProcessError) and not exc.child_type:
            # the batch process died mid-run; every scan it finished was committed first
            text = (
                f"The calibration stopped: {reason}. The scans screened so far are kept "
                "and are reused when you run it again."
            )
        else:
            text = f"The calibration could not run: {reason}."
        self.status.setText(text + " The log file has the details.")
        self.status.setToolTip(error.traceback)
        self.status.setStyleSheet("color: #b3261e;")

    def _worker_done(self) -> None:
        self._ticker.stop()
        self._worker = None
        self._process = self._run = None
        self._latest = None
        self.progress.setVisible(False)
        self._update_buttons()

    # -- the curve and the point -------------------------------------------------------------
    @property
    def calibration(self) -> Calibration | None:
        return self.outcome.calibration if self.outcome is not None else None

    def _set_result(self, calibration: Calibration | None) -> None:
        self.roc.set_curve(calibration)
        self.slider.blockSignals(True)
        self.prevalence.blockSignals(True)
        if calibration is None:
            self.slider.setRange(0, 0)
            self.warnings.setText("")
            # No set, no prevalence: a dash, not the spin box's minimum ("0.1 %" read as a
            # figure while the scans were screened).
            self.prevalence.setRange(0.0, 0.0)
            self.prevalence.setSpecialValueText("—")
        else:
            self.slider.setRange(0, len(calibration.roc.thresholds) - 1)
            self.slider.setValue(calibration.chosen_index)
            self.prevalence.setSpecialValueText("")
            self.prevalence.setRange(0.1, 99.9)
            self.prevalence.setValue(round(100 * calibration.prevalence, 1))
            self.warnings.setText(
                "".join(f"⚠ {w[0].upper()}{w[1:]}.\n" for w in calibration.warnings).strip()
            )
        self.slider.blockSignals(False)
        self.prevalence.blockSignals(False)
        self.slider.setEnabled(calibration is not None)
        self.prevalence.setEnabled(calibration is not None)
        self._show_point()
        self._update_buttons()

    def current_index(self) -> int | None:
        return self.slider.value() if self.calibration is not None else None

    def current_point(self) -> PointStats | None:
        calibration = self.calibration
        if calibration is None:
            return None
        return calibration.at_index(self.slider.value())

    def move_point(self, index: int) -> None:
        """Move the operating point to ROC vertex ``index`` (as the slider does)."""
        self.slider.setValue(index)

    def _pick(self, index: int) -> None:
        if self.slider.value() != index:
            self.slider.setValue(index)  # re-enters through valueChanged
            return
        self.roc.set_current(index)
        self._show_point()

    def _reset_point(self) -> None:
        if self.calibration is not None:
            self.slider.setValue(self.calibration.chosen_index)

    def _show_point(self) -> None:
        calibration = self.calibration
        point = self.current_point()
        if calibration is None or point is None:
            self.figures.setText(
                "<p>The ROC curve and the figures appear here once the labelled scans are "
                "screened.</p>"
            )
            self.reset_button.setEnabled(False)
            return
        manifest = self.outcome.scores.manifest if self.outcome else None
        positive = manifest.positive_label if manifest else "disease"
        default = manifest.operating_point(None) if manifest else None
        c = point.confusion
        prevalence = self.prevalence.value() / 100
        labelled = abs(prevalence - calibration.prevalence) < 0.0005
        per = point.per_thousand(prevalence)
        moved = self.slider.value() != calibration.chosen_index
        how = (
            "moved by hand"
            if moved
            else f"the highest reaching the target sensitivity {calibration.target_sensitivity:.2f}"
        )
        default_text = (
            f" (the model's own default: {default.threshold:.3f})" if default is not None else ""
        )
        prevalence_text = (
            f"{100 * prevalence:.1f}% — that of your labelled set"
            if labelled
            else f"{100 * prevalence:.1f}% — entered above, not measured"
        )
        self.figures.setText(
            f"<p><b>Threshold {point.threshold:.3f}</b>{default_text}<br>"
            f"<small>{how}</small></p>"
            f"<p><b>Sensitivity {point.sensitivity:.2f}</b> (95% CI "
            f"{point.sensitivity_ci[0]:.2f}–{point.sensitivity_ci[1]:.2f}): {c.tp} of "
            f"{c.n_positive} with {positive} flagged<br>"
            f"<b>Specificity {point.specificity:.2f}</b> (95% CI "
            f"{point.specificity_ci[0]:.2f}–{point.specificity_ci[1]:.2f}): {c.tn} of "
            f"{c.n_negative} without it not flagged<br>"
            f"AUC {calibration.auc:.3f} (95% CI {calibration.auc_ci[0]:.2f}–"
            f"{calibration.auc_ci[1]:.2f})</p>"
            f"<p><b>Per 1,000 screened</b> at a prevalence of {prevalence_text}:<br>"
            f"{per.flagged:.0f} flagged: {per.true_positive:.0f} with {positive} found, "
            f"{per.false_positive:.0f} false alarms; {per.false_negative:.0f} cases missed.</p>"
        )
        self.reset_button.setEnabled(moved)

    # -- saving and sharing -------------------------------------------------------------------
    def _update_buttons(self) -> None:
        running = self.is_running()
        self.run_button.setEnabled(not running and bool(self.path_edit.text().strip()))
        self.cancel_button.setEnabled(running)
        self.save_button.setEnabled(
            not running and self.calibration is not None and bool(self.name_edit.text().strip())
        )
        self.export_button.setEnabled(self.saved_combo.count() > 0)

    def save(self, name: str | None = None) -> SitePoint | None:
        """Save the current point as ``site:NAME`` (adding to or replacing that model's entry)."""
        from desktop.engine.site_points import site_calibration

        calibration, point, outcome = self.calibration, self.current_point(), self.outcome
        if calibration is None or point is None or outcome is None:
            return None
        try:
            site_name = normalize_name(name or self.name_edit.text())
        except SitePointError as exc:
            self.status.setText(str(exc))
            return None
        manifest = outcome.scores.manifest
        cal = site_calibration(
            manifest,
            calibration,
            point,
            calibrated_at=datetime.now(UTC).isoformat(timespec="seconds"),
            calibrated_by=self.by_edit.text().strip(),
            source=outcome.sources,
            n_excluded=len(outcome.scores.excluded),
            app_version=__version__,
        )
        replaced = self.site_store.get(site_name)
        try:
            saved = self.site_store.add_calibration(site_name, cal)
        except (OSError, SitePointError) as exc:
            self.status.setText(f"The site point could not be saved: {exc}")
            return None
        again = (
            " (its earlier calibration of this model was replaced)"
            if replaced is not None and replaced.for_model(manifest.id) is not None
            else ""
        )
        self.status.setStyleSheet("")
        self.status.setText(
            f"Saved {saved.choice_name}{again}. Choose it as the operating point in the main "
            "window; reports will say it was used."
        )
        self._refresh_saved(saved.name)
        emit(self.saved, saved)
        self._write_record(saved.name, cal, calibration, point)
        return saved

    def _write_record(
        self, name: str, cal: SiteCalibration, calibration: Calibration, point: PointStats
    ) -> None:
        outcome = self.outcome
        excluded = [(e.file, e.reason) for e in outcome.scores.excluded] if outcome else []
        worker = Worker(
            _write_record,
            self.record_dir,
            name,
            cal,
            calibration,
            point,
            excluded,
            name="medscreen-calibration-record",
        )
        worker.returned.connect(self._record_done)
        worker.errored.connect(self._record_failed)
        worker.finished.connect(lambda: setattr(self, "_record_worker", None))
        self._record_worker = worker
        worker.start()

    def _record_failed(self, error: WorkerError) -> None:
        """The site point is saved; only its record (ROC, PDF, JSON) could not be written."""
        self.last_error = error
        reason = (getattr(error.exception, "message", None) or str(error.exception)).rstrip(".")
        self.status.setText(
            self.status.text() + f" The record (ROC, PDF, JSON) could not be written: {reason}."
        )
        self.status.setToolTip(error.traceback)
        self.status.setStyleSheet("color: #b3261e;")

    def _record_done(self, paths: list[Path]) -> None:
        self.status.setText(
            self.status.text() + f" The record (ROC, PDF, JSON) is in {paths[0].parent}."
        )
        emit(self.record_written, paths)

    def _refresh_saved(self, select: str = "") -> None:
        self.saved_combo.clear()
        manifests = self.models.manifests
        for point in self.site_store.points():
            usable = point.valid_for(manifests)
            models = ", ".join(c.model_id for c in point.calibrations)
            label = f"{point.choice_name} ({models})" + ("" if usable else " — other model version")
            self.saved_combo.addItem(label, point.name)
        if select:
            self.saved_combo.setCurrentIndex(max(0, self.saved_combo.findData(select)))
        self._update_buttons()

    def export_point(self, name: str, dest: Path) -> Path | None:
        try:
            path = self.site_store.export(name, dest)
        except SitePointError as exc:
            self.status.setText(str(exc))
            return None
        self.status.setText(f"Exported site:{name} to {path}.")
        return path

    def import_point(self, path: Path, *, overwrite: bool = False) -> SitePoint | None:
        try:
            point = self.site_store.import_file(path, overwrite=overwrite)
        except SitePointError as exc:
            self.status.setText(str(exc))
            return None
        usable = point.valid_for(self.models.manifests)
        self.status.setText(
            f"Imported {point.choice_name}."
            + ("" if usable else " It was calibrated on another model version: not offered.")
        )
        self._refresh_saved(point.name)
        emit(self.saved, point)
        return point

    def _choose_export(self) -> None:
        name = self.saved_combo.currentData()
        if not name:
            return
        dest, _ = QFileDialog.getSaveFileName(
            self, "Export site point", f"{self._start_folder or Path.home()}/{name}.json",
            "Site point (*.json)",
        )  # fmt: skip
        if dest:
            self.export_point(name, Path(dest))

    def _choose_import(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Import site point", self._start_folder, "Site point (*.json)"
        )
        if not path:
            return
        if self.import_point(Path(path)) is None and "already saved" in self.status.text():
            answer = QMessageBox.question(
                self,
                "Replace the saved site point?",
                f"{self.status.text()}.\n\nReplace the saved point with the imported one?",
            )
            if answer == QMessageBox.StandardButton.Yes:
                self.import_point(Path(path), overwrite=True)

    # -- closing -------------------------------------------------------------------------------
    def done(self, result: int) -> None:
        """Stop a running calibration before closing (screened scans are kept in the store);
        a batch process that does not stop in time is killed, so none is left behind."""
        process = self._process
        for worker in (self._worker, self._record_worker):
            if worker is not None:
                worker.quit()
                if not worker.wait(CLOSE_WAIT_MS) and worker is self._worker and process:
                    process.kill()
                    worker.wait(CLOSE_WAIT_MS)
        super().done(result)

"""The main window: drop scans, watch the batch, review and export the results.

It wires small widgets together and owns the long-lived engine objects (the results store,
the verified model set). All long work goes through workers: verifying models, checking a drop,
screening (via :class:`BatchController`), writing reports. The window shows itself before any
of that starts, so it is up in well under two seconds while the models are checked.

The window verifies the models (:func:`desktop.engine.registry.plan_model_set`: signatures,
pins, hashes, refusals) but opens no ONNX Runtime session and never imports ONNX Runtime:
its batches run in a process of their own, which opens the sessions and reports the device
they really run on (:attr:`BatchController.device_reported`), the only device shown.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QModelIndex, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QCloseEvent, QShowEvent
from PySide6.QtGui import QKeySequence as Keys
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMenu,
    QSizePolicy,
    QStackedWidget,
    QStyle,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from desktop import DISCLAIMER, __version__
from desktop.engine.clock import local_text
from desktop.engine.decisions import Decision, scan_key
from desktop.engine.paths import default_db_path, display_path
from desktop.engine.patients import PatientChoice, PatientGroup, parse_group
from desktop.engine.policy import Policy
from desktop.engine.results import ScanResult, ThresholdChoice
from desktop.engine.store import BatchInfo, BatchKind, BatchStatus, ResultsStore
from desktop.engine.vocabulary import counted, duration
from desktop.gui.batch_bar import BatchBar
from desktop.gui.batch_controller import BatchController
from desktop.gui.drop_area import SCAN_KINDS, DropArea, FileDropTarget
from desktop.gui.elide import WordElidedLabel
from desktop.gui.message_bar import MessageBar
from desktop.gui.operating_point import OperatingPointPicker
from desktop.gui.qt_compat import emit
from desktop.gui.results_model import Filter, LoadedRows, ResultsModel, ResultsProxy
from desktop.gui.results_view import ResultsView
from desktop.gui.screen_fit import fit_to_screen
from desktop.gui.settings import AppSettings
from desktop.gui.workers import Worker, WorkerError

if TYPE_CHECKING:
    from desktop.engine.devices import DeviceReport
    from desktop.engine.registry import ModelSetPlan, RefusedPackage
    from desktop.engine.runner import BatchSummary, Progress
    from desktop.gui.viewer import ScanViewer

log = logging.getLogger(__name__)

DEVICES = (("Auto", "auto"), ("CPU", "cpu"), ("CUDA (NVIDIA GPU)", "cuda"))
#: The batch's patient group selector: text, and the CLI's word for it (``--patients``).
PATIENT_CHOICES = (
    ("Patients: automatic", "auto"),
    ("Patients: adults", "adult"),
    ("Patients: children", "child"),
)


def _load_models(
    dirs: list[Path] | None, device: str, refused: tuple[RefusedPackage, ...] = ()
) -> ModelSetPlan:
    """Verify the models and plan the set (every check the CLI makes, the same messages);
    no session is opened here: the batch process opens them. ``refused``: packages a batch
    process of this session could not open, planned no more while their files are unchanged."""
    from desktop.engine.devices import choose_device
    from desktop.engine.registry import plan_model_set

    return plan_model_set(dirs, choose_device(device), refused)


def _refused_note(models: ModelSetPlan) -> str:
    """The status bar's words for packages ONNX Runtime refused to open and what runs
    instead (empty when none): known before a batch starts, not only when it opens them."""
    parts = []
    for refused in models.refused:
        used = models.manifests.get(refused.model_id)
        instead = f", {used.id} {used.version} is used" if used is not None else ""
        parts.append(f"{refused.model_id} {refused.version} could not be opened{instead}")
    return "".join(f" — {part}" for part in parts)


def _check_drop(paths: list[Path]) -> tuple[list[Path], list[str], list[str]]:
    """Worker side of a drop: which inputs hold scans, and a message for each that does not.

    A file is judged with the engine's ``is_candidate``, a folder by what ``discover`` finds
    in it: the same rules the batch runner applies, so what is accepted here gets screened.
    """
    from desktop.engine.candidates import is_candidate  # no decoders in the window
    from desktop.engine.discovery import discover

    accepted: list[Path] = []
    problems: list[str] = []
    notes: list[str] = []
    for path in paths:
        if path.is_dir():
            found = discover([path])
            if found.skipped_non_scans:
                n = found.skipped_non_scans
                notes.append(
                    f"{n} file{'' if n == 1 else 's'} in {path.name} "
                    f"{'is not a scan' if n == 1 else 'are not scans'} "
                    f"({SCAN_KINDS}) and {'was' if n == 1 else 'were'} skipped."
                )
            if found.files:
                accepted.append(path)
            else:
                problems.append(
                    f"The folder {path.name} holds no scan MedScreen can read ({SCAN_KINDS})."
                )
        elif not path.exists():
            problems.append(f"{path.name} no longer exists.")
        elif is_candidate(path):
            accepted.append(path)
        else:
            problems.append(f"{path.name} is not a scan MedScreen can read ({SCAN_KINDS}).")
    return accepted, problems, notes


class MainWindow(FileDropTarget, QMainWindow):
    #: The model set verified (a ModelSetPlan; or failed: None), for tests and the
    #: screenshot script.
    models_changed = Signal(object)
    #: An export finished: list of written paths.
    export_done = Signal(list)
    #: A stored batch's results are in the table (history or resume): the batch id.
    batch_loaded = Signal(str)

    def __init__(
        self,
        settings: AppSettings | None = None,
        store: ResultsStore | None = None,
        model_dirs: Sequence[Path] | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.settings = settings or AppSettings()
        self._store = store
        self._model_dirs = list(model_dirs) if model_dirs is not None else None
        self.models: ModelSetPlan | None = None
        #: Packages a batch process (or the Calibrate dialog's) could not open this session,
        #: by manifest file and model sha256: every later plan skips them (and says so) until
        #: the file changes, instead of planning them again to be refused before each batch.
        self._refused: dict[tuple[Path, str], RefusedPackage] = {}
        self._model_worker: Worker | None = None
        self._side_workers: set[Worker] = set()
        self._viewers: list[ScanViewer] = []
        self._viewer_rows: dict[ScanViewer, int] = {}  # the table row each viewer shows
        self._pending_inputs: list[Path] = []
        self._queued_inputs: list[Path] = []  # to screen when the running batch ends
        self.last_report: Path | None = None  # the PDF written last (Open report)
        self.history_dialog: QDialog | None = None  # the history shown last (tests)
        #: The programme's policy file (None: one exists but cannot be read: stay locked).
        self.policy: Policy | None = Policy()
        self._fitted = False  # fit_to_screen ran again once the frame was known
        self.setWindowTitle(f"MedScreen {__version__} — chest X-ray screening")
        self.setAcceptDrops(True)
        self.resize(1280, 800)

        # The table keeps each row's place in the results store and a few numbers; a row's
        # result is read back from the store when it is shown (results_model says how).
        self.model = ResultsModel(
            self,
            thumbnail_loader=self._stored_thumbnail,
            detail_loader=self._stored_detail,
            store=lambda: self.store,
        )
        self.proxy = ResultsProxy(self)
        self.proxy.setSourceModel(self.model)
        self.batch = BatchController(self)
        self.batch.items_ready.connect(self.model.append_items)
        self.batch.progress.connect(self._progress)
        self.batch.batch_finished.connect(self._batch_finished)
        self.batch.batch_failed.connect(self._batch_failed)
        self.batch.device_reported.connect(self._device_reported)
        self.batch.models_reported.connect(self._models_replaced)

        self._build_ui()
        self._build_actions()
        self._restore_window()
        self.model.rowsInserted.connect(self._update_counts)
        self.model.modelReset.connect(self._update_counts)
        self.model.dataChanged.connect(self._update_counts)  # flags follow the operating point
        self.model.derived.connect(self._update_counts)  # a big table's counts, when derived
        self.model.problem.connect(lambda text: self.messages.show_message(text, "error"))

    # -- construction ----------------------------------------------------------------------
    @property
    def store(self) -> ResultsStore:
        """The results store, opened on first use (on the GUI thread). An index an older
        store lacks is built by a worker, not here: over 20,000 results it took ~0.5 s, a
        window frozen at start-up; the store is usable meanwhile."""
        if self._store is None:
            self._store = ResultsStore(default_db_path(), defer_indexes=True)
            if not self._store.has_screened_index():
                worker = Worker(self._store.build_indexes, name="medscreen-store-index")
                worker.errored.connect(self._side_failed)
                self._keep(worker)
                worker.start()
        return self._store

    def _build_ui(self) -> None:
        self.messages = MessageBar(self)
        self.drop_area = DropArea(self)
        self.drop_area.paths_dropped.connect(self.open_paths)
        self.drop_area.open_files_requested.connect(self.choose_files)
        self.drop_area.open_folder_requested.connect(self.choose_folder)
        self.view = ResultsView(self.proxy, self)
        self.view.open_requested.connect(self.open_viewer)
        self.view.paths_dropped.connect(self.open_paths)
        self.batch_bar = BatchBar(self)
        self.batch_bar.cancel_requested.connect(self.cancel_batch)

        self.op_picker = OperatingPointPicker(self)
        self.op_picker.choice_changed.connect(self._choice_changed)
        self.filter_combo = QComboBox(self)
        for item in Filter:
            self.filter_combo.addItem(item.value, item)
        self.filter_combo.setToolTip("Show all scans, only flagged ones, not screened, or errors")
        self.filter_combo.currentIndexChanged.connect(
            lambda _i: self.proxy.set_filter(self.filter_combo.currentData())
        )
        self.search = QLineEdit(self)
        self.search.setPlaceholderText("Search file names…")
        self.search.setToolTip("Show only the scans whose file name holds this text (Ctrl+F)")
        self.search.setAccessibleName("Search file names")
        self.search.setClearButtonEnabled(True)
        self.search.setMaximumWidth(260)
        self.search.textChanged.connect(self.proxy.set_search)
        self.counts = QLabel(self)

        review = QHBoxLayout()
        review.addWidget(self.op_picker)
        self.patients_combo = QComboBox(self)
        for text, group in PATIENT_CHOICES:
            self.patients_combo.addItem(text, group)
        self.patients_combo.setToolTip(
            "The patients of this batch. Automatic: each scan's group comes from the file's "
            "DICOM age, else it is estimated from the image. A model outside its scope (for "
            "example an adults-only model on a child) shows its score greyed and raises no "
            "flag. One scan: right-click it in the table."
        )
        self.patients_combo.activated.connect(
            lambda _i: self.set_batch_patients(parse_group(self.patients_combo.currentData()))
        )
        review.addWidget(self.patients_combo)
        review.addStretch(1)
        show = QLabel("Show:", self)
        show.setBuddy(self.filter_combo)  # read with the list by a screen reader
        review.addWidget(show)
        review.addWidget(self.filter_combo)
        review.addWidget(self.search)

        results_page = QWidget(self)
        page = QVBoxLayout(results_page)
        page.setContentsMargins(0, 0, 0, 0)
        page.addLayout(review)
        page.addWidget(self.view, 1)
        foot = QHBoxLayout()
        foot.addWidget(self.counts)
        foot.addStretch(1)
        disclaimer = QLabel("Decision support only — not a diagnosis.", self)
        disclaimer.setToolTip(DISCLAIMER)
        disclaimer.setForegroundRole(self.palette().ColorRole.PlaceholderText)
        foot.addWidget(disclaimer)
        page.addLayout(foot)

        self.pages = QStackedWidget(self)
        self.pages.addWidget(self.drop_area)
        self.pages.addWidget(results_page)

        central = QWidget(self)
        layout = QVBoxLayout(central)
        layout.setContentsMargins(8, 6, 8, 4)
        layout.addWidget(self.messages)
        layout.addWidget(self.batch_bar)
        layout.addWidget(self.pages, 1)
        self.setCentralWidget(central)

        self.models_label = WordElidedLabel("Loading models…", self)
        # Cut (at a word, with "…") rather than widen the window on a narrow screen, and
        # before the batch's message (show_status); the tooltip has the whole text.
        self.models_label.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
        self.models_label.setMinimumWidth(120)
        self.statusBar().addPermanentWidget(self.models_label)

    def _build_actions(self) -> None:
        style = self.style()
        sp = QStyle.StandardPixmap

        def action(
            text: str, slot: object, shortcut: object = None, icon: object = None
        ) -> QAction:
            act = QAction(text, self)
            if icon is not None:
                act.setIcon(style.standardIcon(icon))  # type: ignore[arg-type]
            if shortcut is not None:
                act.setShortcut(shortcut)  # type: ignore[arg-type]
            act.triggered.connect(slot)  # type: ignore[arg-type]
            self.addAction(act)
            return act

        self.act_open_files = action(
            "Open files…", self.choose_files, Keys.StandardKey.Open, sp.SP_FileIcon
        )
        self.act_open_folder = action(
            "Open folder…", self.choose_folder, Keys("Ctrl+Shift+O"), sp.SP_DirOpenIcon
        )
        self.act_export = action(
            "Export report…", self.choose_export, Keys("Ctrl+E"), sp.SP_DialogSaveButton
        )
        self.act_export_rows = action(
            "Export selected rows…", lambda: self.choose_export(selected_only=True)
        )
        self.act_history = action(
            "Batch history…", self.show_history, Keys("Ctrl+H"), sp.SP_FileDialogDetailedView
        )
        # Preferences has no key on Linux desktops (the menu showed none): Ctrl+, there
        preferences = Keys.keyBindings(Keys.StandardKey.Preferences) or [Keys("Ctrl+,")]
        self.act_settings = action("Settings…", self.show_settings, preferences[0])
        self.act_quit = action("Quit", self.close, Keys.StandardKey.Quit)
        self.act_next = action("Next flagged scan", lambda: self.goto_flagged(1), Keys("F3"))
        self.act_prev = action(
            "Previous flagged scan", lambda: self.goto_flagged(-1), Keys("Shift+F3")
        )
        self.act_find = action("Search file names", self.focus_search, Keys.StandardKey.Find)
        self.act_heat = action("Toggle heatmap in viewer", self._toggle_viewer_heat, Keys("H"))
        self.act_heat.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        self.act_cancel = action("Cancel batch", self.cancel_batch, Keys("Esc"), sp.SP_BrowserStop)
        self.act_cancel.setEnabled(False)
        self.act_models = action(
            "Models and about…", self.show_models, None, sp.SP_MessageBoxInformation
        )
        self.act_calibrate = action("Calibrate for this site…", self.show_calibrate)
        self.act_calibrate.setEnabled(False)  # until the models are loaded

        menu = self.menuBar()
        file_menu = menu.addMenu("&File")
        file_menu.addAction(self.act_open_files)
        file_menu.addAction(self.act_open_folder)
        self.recent_menu = QMenu("Recent folders", self)
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        file_menu.addMenu(self.recent_menu)
        file_menu.addSeparator()
        file_menu.addAction(self.act_export)
        file_menu.addAction(self.act_export_rows)
        file_menu.addAction(self.act_history)
        file_menu.addSeparator()
        file_menu.addAction(self.act_settings)
        file_menu.addAction(self.act_quit)
        review_menu = menu.addMenu("&Review")
        review_menu.addAction(self.act_find)
        review_menu.addAction(self.act_next)
        review_menu.addAction(self.act_prev)
        review_menu.addAction(self.act_heat)
        review_menu.addAction(self.act_cancel)
        self.device_menu = menu.addMenu("&Device")
        self.device_actions: dict[str, QAction] = {}
        for text, value in DEVICES:
            act = QAction(text, self, checkable=True)
            act.setChecked(value == self.settings.device)
            act.triggered.connect(lambda _c=False, v=value: self.set_device(v))
            self.device_menu.addAction(act)
            self.device_actions[value] = act
        self.act_open_scan = QAction("Open scan", self)
        self.act_open_scan.triggered.connect(lambda: self.view.open_index(self.view.currentIndex()))
        self.view.setContextMenuPolicy(Qt.ContextMenuPolicy.ActionsContextMenu)
        self.act_scan_groups = []
        for text, group in (
            ("Patient group of selected scans: adult", PatientGroup.ADULT),
            ("Patient group of selected scans: child", PatientGroup.CHILD),
            ("Patient group of selected scans: automatic", None),
        ):
            act = QAction(text, self)
            act.triggered.connect(lambda _c=False, g=group: self.set_scan_group(g))
            self.act_scan_groups.append(act)
        self.view.addActions([self.act_open_scan, self.act_export_rows, self.act_next])
        separator = QAction(self)
        separator.setSeparator(True)
        self.view.addActions([separator, *self.act_scan_groups])
        tools_menu = menu.addMenu("&Tools")
        tools_menu.addAction(self.act_calibrate)
        help_menu = menu.addMenu("&Help")
        help_menu.addAction(self.act_models)

        bar = QToolBar("Main", self)
        bar.setObjectName("mainToolbar")
        bar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        bar.setMovable(False)
        for act in (self.act_open_files, self.act_open_folder, self.act_export, self.act_history):
            bar.addAction(act)
        bar.addSeparator()
        bar.addWidget(QLabel(" Device: ", self))
        self.device_combo = QComboBox(self)
        for text, value in DEVICES:
            self.device_combo.addItem(text, value)
        self.device_combo.setCurrentIndex(max(0, self.device_combo.findData(self.settings.device)))
        self.device_combo.setToolTip("Where inference runs; the status bar says what really runs")
        self.device_combo.activated.connect(
            lambda _i: self.set_device(self.device_combo.currentData())
        )
        bar.addWidget(self.device_combo)
        bar.addSeparator()
        bar.addAction(self.act_models)
        self.addToolBar(bar)

    def _restore_window(self) -> None:
        geometry = self.settings.geometry()
        if geometry is not None:
            self.restoreGeometry(geometry)
        state = self.settings.window_state()
        if state is not None:
            self.restoreState(state)
        self.fit_to_screen()

    def fit_to_screen(self) -> None:
        """Keep the window inside the screen's available area at any scaling (screen_fit)."""
        fit_to_screen(self)

    def showEvent(self, event: QShowEvent) -> None:
        """Fit once more when first shown: only then are the window frame's sizes known."""
        super().showEvent(event)
        if not self._fitted:
            self._fitted = True
            QTimer.singleShot(0, self.fit_to_screen)

    def _restore_table_header(self) -> None:
        """The table's widths, column order and sort as the user left them (else triage)."""
        state = self.settings.table_header()
        header = self.view.horizontalHeader()
        if state is not None and header.restoreState(state):
            self.view.sortByColumn(header.sortIndicatorSection(), header.sortIndicatorOrder())

    # -- start-up: models and interrupted batches ----------------------------------------------
    def start(self) -> None:
        """Begin the background work once the window is on screen."""
        self.load_models()
        self.prune_history()

    def load_models(self) -> None:
        if self._model_worker is not None:
            return
        self.models_label.setText("Loading models…")
        self.act_export.setEnabled(False)
        worker = Worker(
            _load_models,
            self._model_dirs,
            self.settings.device,
            tuple(self._refused.values()),
            name="medscreen-models",
        )
        worker.returned.connect(self._models_loaded)
        worker.errored.connect(self._models_failed)
        worker.finished.connect(self._models_worker_done)
        self._model_worker = worker
        worker.start()

    def _models_worker_done(self) -> None:
        self._model_worker = None

    def _models_loaded(self, models: ModelSetPlan) -> None:
        self._offer_models(models)
        self._offer_resume()
        if self._pending_inputs:
            pending, self._pending_inputs = self._pending_inputs, []
            self._start_batch(pending)

    def _models_replaced(self, models: ModelSetPlan) -> None:
        """A batch process (or the Calibrate dialog's) could not open a model offered here
        (ONNX Runtime refused it) and runs the bundled one of that id: offer what really
        runs, say why, and plan that package no more this session while it is unchanged."""
        self._remember_refused(models)
        self._offer_models(models)

    def _calibration_models_reported(self, models: ModelSetPlan) -> None:
        """The Calibrate dialog's process could not open a model offered here and calibrated
        the bundled one: batches use it too (its site point fits them). During a batch only
        the refusal is kept: that batch's own process reports what it opened, and the table
        is not rebuilt under its arriving rows."""
        if self.batch.is_running():
            self._remember_refused(models)
        else:
            self._models_replaced(models)

    def _remember_refused(self, models: ModelSetPlan) -> None:
        """Keep ``models``' refused packages for every later plan of this session."""
        for refused in models.refused:
            self._refused[(refused.path, refused.sha256)] = refused

    def _offer_models(self, models: ModelSetPlan) -> None:
        """Columns, operating points and refusals of ``models``, the set batches now use."""
        self.models = models
        self._show_device()
        self.model.set_manifests(models.manifests)
        self.op_picker.set_manifests(self.model.manifests(), self._starting_point())
        self.apply_threshold_lock()
        self.view.apply_column_widths()
        self._restore_table_header()
        self.act_export.setEnabled(True)
        self.act_calibrate.setEnabled(True)
        if models.problems:
            self.messages.show_message(
                "Some model files were refused: " + "; ".join(models.problems), "warning"
            )
        emit(self.models_changed, models)

    def _show_device(self) -> None:
        """The status bar's models and device: the device the last batch process reported
        when it ran on the device now chosen, else that nobody has observed it yet (this
        process opens no session, so it cannot tell)."""
        models = self.models
        if models is None:
            return
        device = self.device_text()
        text = f"Models ready — device: {device}" + _refused_note(models)
        self.models_label.setText(text)
        self.models_label.setToolTip(
            f"{text}\n"
            + "; ".join(m.key for m in models.manifests.values())
            + "".join(f"\n{r.problem}" for r in models.refused)
        )

    def device_text(self) -> str:
        """Where inference runs, as the batch process observed it (or that it has not)."""
        models = self.models
        seen = self.batch.last_device
        if models is not None and (seen is None or seen.requested != models.device):
            return models.describe_device()
        if seen is None:
            return "models not loaded"
        return f"{seen.describe()} (as the batch process reported)"

    def _device_reported(self, _device: DeviceReport) -> None:
        self._show_device()

    def _starting_point(self) -> str:
        """The policy file's operating point when there is one, else the user's last."""
        from desktop.engine.errors import MedScreenError
        from desktop.engine.policy import load_policy

        try:
            self.policy = load_policy()
        except MedScreenError as exc:
            self.policy = None
            self.messages.show_message(f"{exc}. The thresholds stay locked.", "error")
            return self.settings.operating_point
        return self.policy.operating_point or self.settings.operating_point

    def apply_threshold_lock(self) -> None:
        """Lock the operating point: a policy file (or an unreadable one) for good, a PIN
        until it is entered."""
        policy = self.policy
        if policy is None:
            self.op_picker.set_locked("the policy file cannot be read")
        elif policy.locked:
            self.op_picker.set_locked(policy.describe())
        elif self.settings.has_pin:
            self.op_picker.pin_check = self.settings.check_pin
            self.op_picker.set_locked("locked with the administrator's PIN", pin=True)
        else:
            self.op_picker.set_locked("")

    def _models_failed(self, error: WorkerError) -> None:
        self.models = None
        reason = getattr(error.exception, "message", None) or str(error.exception)
        self.models_label.setText("Models not loaded — see the message above")
        self.messages.show_message(
            f"The screening models could not be loaded: {reason}. Reinstall MedScreen, or "
            "remove the refused files from the models folder.",
            "error",
            "Try again",
            self.load_models,
        )
        self._pending_inputs = []
        emit(self.models_changed, None)

    def _offer_resume(self) -> None:
        """At start, offer to continue the batch a crash left: one whose process died
        (``interrupted``), else the latest screening batch if it stopped before its end. A
        window that crashed or was killed mid-batch left a batch ``cancelled`` (its batch
        process stops at a clean point when the window goes), which was offered nowhere but
        the History, against the README's "offered for resumption at the next start"."""
        try:
            interrupted = self.store.interrupted_batches(BatchKind.SCREENING)  # not calibrations
            stopped = None if interrupted else self._stopped_latest()
        except Exception as exc:
            log.warning("cannot read the results store: %s", exc)
            return
        info = interrupted[0] if interrupted else stopped
        if info is None or self.batch.is_running():
            return
        left = (info.total or 0) - info.done
        how = "was interrupted" if interrupted else "stopped before its end"
        self.messages.show_message(
            f"A batch started {local_text(info.started_at)} {how} "
            f"with {info.done} of {info.total or '?'} scans done ({left} left).",
            "warning",
            "Resume",
            lambda: self.resume_batch(info.id),
        )

    def _stopped_latest(self) -> BatchInfo | None:
        """The latest screening batch, when it was cancelled with files still to screen."""
        latest = next((b for b in self.store.batches(limit=20) if b.kind == BatchKind.SCREENING),
                      None)  # fmt: skip
        if latest is None or latest.status != BatchStatus.CANCELLED:
            return None
        return latest if self.store.files_not_screened(latest.id) else None

    def set_device(self, value: str) -> None:
        """Choose Auto/CPU/CUDA: reloads the models (not during a batch)."""
        for key, act in self.device_actions.items():
            act.setChecked(key == value)
        self.device_combo.setCurrentIndex(max(0, self.device_combo.findData(value)))
        if value == self.settings.device and self.models is not None:
            return
        if self.batch.is_running():
            self.messages.show_message(
                "The device changes after the running batch (cancel it with Esc first).",
                "warning",
            )
            return
        self.settings.device = value
        self.load_models()

    # -- opening scans ------------------------------------------------------------------------
    def choose_files(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(
            self,
            "Open scans",
            self.settings.last_folder,
            "Scans (*.png *.jpg *.jpeg *.tif *.tiff *.bmp *.dcm *.dicom);;All files (*)",
        )
        if files:
            self.open_paths([Path(f) for f in files])

    def choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(
            self, "Open a folder of scans", self.settings.last_folder
        )
        if folder:
            self.open_paths([Path(folder)])

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        recent = self.settings.recent_folders()
        for folder in recent:
            act = self.recent_menu.addAction(folder)
            act.triggered.connect(lambda _c=False, f=folder: self.open_paths([Path(f)]))
        if not recent:
            self.recent_menu.addAction("(none yet)").setEnabled(False)

    def open_paths(self, paths: list[Path]) -> None:
        """Check a drop (in a worker) and screen what holds scans; say why the rest does not."""
        if not paths:
            return
        if self.batch.is_running():
            self.messages.show_message(
                "A batch is running: wait for it, or cancel it (Esc) and drop again.", "warning"
            )
            return
        worker = Worker(_check_drop, list(paths), name="medscreen-drop")
        worker.returned.connect(self._drop_checked)
        worker.errored.connect(self._side_failed)
        self._keep(worker)
        worker.start()

    def _drop_checked(self, checked: tuple[list[Path], list[str], list[str]]) -> None:
        accepted, problems, notes = checked
        if problems:
            self.messages.show_message(" ".join(problems + notes), "warning")
        elif notes:
            self.messages.show_message(" ".join(notes), "info")
        if not accepted:
            return
        for path in accepted:
            folder = path if path.is_dir() else path.parent
            self.settings.add_recent(str(folder))
            self.settings.last_folder = str(folder)
        if self.models is None:
            if self._model_worker is None:  # not loading: they failed, and the bar says why
                self.messages.show_message(
                    "These scans cannot be screened: the models failed their checks. "
                    "Reinstall MedScreen, or remove the refused files from the models folder.",
                    "error",
                    "Try again",
                    self.load_models,
                )
            self._pending_inputs = accepted
            self.statusBar().showMessage("The scans will be screened once the models are ready.")
            return
        self._start_batch(accepted)

    def _start_batch(self, inputs: list[Path], resume: str | None = None) -> None:
        if self.models is None or self.batch.is_running():
            return
        self._close_viewers()
        self.model.clear()
        # the batch group stays as chosen; staff overrides of scans seen before still hold
        self._apply_patients(
            PatientChoice(
                batch=self.model.patients().batch, overrides=self.store.patient_overrides()
            )
        )
        self._load_decisions()  # decisions follow the scan's content into a re-run
        self.pages.setCurrentIndex(1)
        self.batch_bar.start("Resuming…" if resume else "Finding scans…")
        self.act_cancel.setEnabled(True)
        self.batch.start(self.models, self.store, inputs, resume=resume)

    def resume_batch(self, batch_id: str) -> None:
        """Continue an interrupted batch: its finished scans load first, then the rest run."""
        if self.models is None or self.batch.is_running():
            return
        self._load_stored(batch_id, then_resume=True)

    def _load_stored(self, batch_id: str, then_resume: bool = False) -> None:
        """Read a batch's stored results in a worker (thousands of rows of JSON take a
        while), then show them, and resume the batch if asked. The worker streams them
        without thumbnails and keeps a few numbers a row (the table reads a row back when
        it shows it), under the batch's patient group and the readers' decisions."""
        self._close_viewers()
        self.model.clear()
        self.pages.setCurrentIndex(1)
        self._apply_patients(self.store.patient_choice(batch_id))
        self._load_decisions()
        self.statusBar().showMessage("Reading the stored results…")
        worker = Worker(self.model.stored_loader(batch_id), name="medscreen-history")
        worker.returned.connect(lambda rows: self._stored_loaded(batch_id, rows, then_resume))
        worker.errored.connect(self._side_failed)
        self._keep(worker)
        worker.start()

    def _stored_loaded(self, batch_id: str, rows: LoadedRows, then_resume: bool) -> None:
        if not self.model.adopt(rows):  # another batch was opened or started meanwhile
            return
        self.batch.batch_id = batch_id
        self.statusBar().showMessage(f"{len(rows)} stored results.", 4000)
        emit(self.batch_loaded, batch_id)
        if then_resume and self.models is not None and not self.batch.is_running():
            self.batch_bar.start("Resuming…")
            self.act_cancel.setEnabled(True)
            self.batch.start(self.models, self.store, [], resume=batch_id)

    def cancel_batch(self) -> None:
        if self.batch.is_running():
            self.batch_bar.cancelling()
            self.batch.cancel()

    def _progress(self, progress: Progress) -> None:
        current = Path(progress.current).name if progress.current else ""
        self.batch_bar.update_progress(
            progress.done, progress.total, progress.rate, progress.eta_s, current
        )

    def _batch_finished(self, summary: BatchSummary | None, cancelled: bool) -> None:
        self.batch_bar.hide()
        self.act_cancel.setEnabled(False)
        if self._queued_inputs:
            queued, self._queued_inputs = self._queued_inputs, []
            QTimer.singleShot(0, lambda: self.open_paths(queued))
        if summary is None:
            return
        if self.settings.operator:  # the history says who ran each batch
            self.store.set_batch_operator(summary.batch_id, self.settings.operator)
        if self.model.patients().batch is not None:  # the staff's choice goes with the batch
            self.store.set_batch_patients(summary.batch_id, self.model.patients().batch)
        verb = "Cancelled" if cancelled else "Finished"
        text = (
            f"{verb}: {summary.ok} screened, "
            f"{counted(summary.not_chest_xray, 'not chest X-ray')}, "
            f"{counted(summary.errors, 'error')} in {duration(summary.elapsed_s)}"
        )
        if cancelled:  # the instruction goes in the message strip, which wraps
            batch_id = summary.batch_id
            self.messages.show_message(
                f"{text}. The finished scans are kept; resume the batch now or later from History.",
                "info",
                "Resume",
                lambda: self.resume_batch(batch_id),
            )
        if summary.total == 0:
            self.messages.show_message(f"No scans found to screen ({SCAN_KINDS}).", "warning")
        self.show_status(text)
        log.info("batch %s: %s", summary.batch_id, text)

    def show_status(self, text: str, timeout_ms: int = 0) -> None:
        """A status-bar line that never runs off the window: elided with "…" to fit the space
        left beside the permanent labels (the whole text goes to the log and the tooltip)."""
        bar = self.statusBar()
        # The message first: the models line (as long as the device's description) gives
        # way down to half the bar. Before, it kept its whole width and a finished batch
        # read "Finished: 1.." at 1366×768 and 150 %.
        wanted = bar.fontMetrics().horizontalAdvance(text) + 40
        cap = max(120, min(self.models_label.sizeHint().width(),
                           bar.width() - min(wanted, bar.width() // 2)))  # fmt: skip
        self.models_label.setMaximumWidth(cap)
        room = max(80, bar.width() - min(cap, self.models_label.width()) - 40)
        shown = bar.fontMetrics().elidedText(text, Qt.TextElideMode.ElideRight, room)
        bar.setToolTip(text if shown != text else "")
        bar.showMessage(shown, timeout_ms)

    def _batch_failed(self, error: WorkerError) -> None:
        self.batch_bar.hide()
        self.act_cancel.setEnabled(False)
        reason = getattr(error.exception, "message", None) or str(error.exception)
        # A batch that got as far as the store (its process died, or failed halfway) can be
        # continued from where it stopped, as a cancelled one can.
        batch_id = self.batch.batch_id
        try:
            info = self.store.batch(batch_id) if batch_id else None
        except Exception as exc:  # the store may be what failed
            log.warning("cannot read the results store: %s", exc)
            info = None
        resumable = info is not None and info.status != BatchStatus.COMPLETED
        self.messages.show_message(
            f"The batch stopped: {reason}. The scans finished so far are kept. "
            "The log file has the details.",
            "error",
            "Resume" if resumable else None,
            (lambda: self.resume_batch(info.id)) if resumable and info is not None else None,
        )

    # -- reviewing ----------------------------------------------------------------------------
    def _choice_changed(self, choice: ThresholdChoice) -> None:
        self.model.set_choice(choice)
        self.settings.operating_point = self.op_picker.setting_text()
        for viewer in self._viewers:
            viewer.set_choice(choice)

    # -- patient groups (scope) ----------------------------------------------------------------
    def set_batch_patients(self, group: PatientGroup | None) -> None:
        """The staff's group for the whole batch (None: automatic). Applied at once, with no
        re-run, and stored with the batch so reports and a later export keep it."""
        self._apply_patients(self.model.patients().with_batch(group))
        if self.batch.batch_id:
            self.store.set_batch_patients(self.batch.batch_id, group)

    def set_scan_group(self, group: PatientGroup | None) -> None:
        """Override the group of the selected scans (None: back to automatic); each override
        is recorded in the results store with its time and the operator's name."""
        choice = self.model.patients()
        changed = 0
        for result in self.model.iter_results(self.view.selected_rows()):
            if not result.sha256 or not result.findings:
                continue
            self.store.set_patient_group(
                result.sha256, group, batch_id=self.batch.batch_id, by=self.settings.operator
            )
            choice = choice.with_override(result.sha256, group)
            changed += 1
        if changed:
            self._apply_patients(choice)
            word = "automatic" if group is None else group.value
            self.statusBar().showMessage(
                f"Patient group of {changed} scan{'s' if changed != 1 else ''} set to {word}.",
                5000,
            )

    def _apply_patients(self, choice: PatientChoice) -> None:
        self.model.set_patients(choice)
        index = self.patients_combo.findData(choice.label())
        self.patients_combo.setCurrentIndex(max(0, index))
        for viewer in self._viewers:
            viewer.set_scope(self.model.scope_rule())
        self._update_counts()

    def _update_counts(self, *_args: object) -> None:
        counts = self.model.counts()
        self.counts.setText(
            f"{counted(counts.total, 'scan')} · {counts.flagged_any} flagged · "
            f"{counted(counts.not_chest_xray, 'not chest X-ray')} · "
            f"{counted(counts.errors, 'error')}"
        )
        if counts.total and self.pages.currentIndex() == 0:
            self.pages.setCurrentIndex(1)

    def triage_rows(self, flagged_only: bool = False) -> list[int]:
        """The rows the table shows (its filter applied), as source rows in the engine's
        triage order, whatever column the table is sorted by: F3's and the viewer's order.
        Rows are identified by their row, never by a result object (those are read back
        from the store and come and go)."""
        rows = [r for r in self.model.triage_rows() if self.proxy.accepts_row(r)]
        if flagged_only:
            rows = [r for r in rows if self.model.row_flagged(r)]
        return rows

    def triage_results(self, flagged_only: bool = False) -> list[ScanResult]:
        """:meth:`triage_rows`' results (each read back from the store): tests, scripts."""
        return list(self.model.iter_results(self.triage_rows(flagged_only)))

    def select_row(self, row: int) -> None:
        """Make source row ``row`` the table's current row (and scroll to it)."""
        index = self.proxy.mapFromSource(self.model.index(row, 2))
        if index.isValid():
            self.view.setCurrentIndex(index)
            self.view.scrollTo(index)

    def select_result(self, result: ScanResult) -> None:
        """Make ``result``'s row (a result the table handed out) the current row."""
        row = self.model.row_of(result)
        if row is not None:
            self.select_row(row)

    def focus_search(self) -> None:
        """Ctrl+F: to the file-name search, its text selected to type over (a keyboard user
        had no way there but Tab through every other control)."""
        self.search.setFocus(Qt.FocusReason.ShortcutFocusReason)
        self.search.selectAll()

    def goto_flagged(self, step: int) -> None:
        """F3 / Shift+F3: the next or previous flagged scan in triage order (wrapping)."""
        order = self.triage_rows(flagged_only=True)
        if not order:
            self.statusBar().showMessage("No flagged scans at this operating point.", 4000)
            return
        index = self.view.currentIndex()
        current = self.proxy.mapToSource(index).row() if index.isValid() else -1
        here = order.index(current) if current in order else None
        target = order[0 if step > 0 else -1] if here is None else order[(here + step) % len(order)]
        self.select_row(target)

    def _stored_thumbnail(self, result: ScanResult) -> bytes | None:
        if not result.sha256:
            return None
        return self.store.thumbnail(result.sha256, result.models_key)

    def _stored_detail(self, result: ScanResult) -> ScanResult | None:
        """The stored whole result (class maps, thumbnail): the table's rows drop them."""
        if not result.sha256:
            return None
        return self.store.cached_result(result.sha256, result.models_key, result.file)

    def open_viewer(self, result: ScanResult, row: int | None = None) -> ScanViewer:
        """Show ``result`` (the table's row ``row``; found from the result when None)."""
        from desktop.gui.viewer import ScanViewer  # reads scans: imported when first needed

        if row is None:
            row = self.model.row_of(result)

        manifests = self.models.manifests if self.models else self.model.manifests()
        viewer = ScanViewer(
            self.model.with_thumbnail(result),
            manifests,
            self.model.choice(),
            self,
            scope=self.model.scope_rule(),
        )
        viewer.destroyed.connect(lambda _o=None, v=viewer: self._forget_viewer(v))
        viewer.screen_requested.connect(self.screen_again)
        viewer.step_requested.connect(lambda step, v=viewer: self.step_viewer(v, step))
        viewer.decision_made.connect(self.record_decision)
        viewer.patient_id_typed.connect(self.record_patient_id)
        self._viewers.append(viewer)
        if row is not None:
            self._viewer_rows[viewer] = row
        self._show_reading_state(viewer, result, row)
        viewer.show()
        return viewer

    # -- reading: next/previous in triage order, decisions, typed patient IDs -----------------
    def _show_reading_state(self, viewer: ScanViewer, result: ScanResult, row: int | None) -> None:
        order = self.triage_rows()
        here = order.index(row) if row is not None and row in order else None
        viewer.set_position(here, len(order) if here is not None else None)
        viewer.set_decision(self.model.decision_of(result))
        key = scan_key(result.sha256, result.file)
        viewer.set_typed_patient_id(self._typed_ids().get(key, ""))

    def _typed_ids(self) -> dict[str, str]:
        try:
            return self.store.typed_patient_ids()
        except Exception as exc:  # a damaged store must not stop reading
            log.warning("cannot read typed patient IDs: %s", exc)
            return {}

    def step_viewer(self, viewer: ScanViewer, step: int) -> None:
        """Show the next (+1) or previous (-1) scan of the table in triage order, wrapping,
        in the same viewer; the table's current row follows."""
        order = self.triage_rows()
        if not order:
            return
        row = self._viewer_rows.get(viewer)
        here = order.index(row) if row is not None and row in order else None
        target = order[0 if step > 0 else -1] if here is None else order[(here + step) % len(order)]
        result = self.model.result(target)
        viewer.show_result(self.model.with_thumbnail(result))
        self._viewer_rows[viewer] = target
        self._show_reading_state(viewer, result, target)
        self.select_row(target)

    def record_decision(self, result: ScanResult, decision: Decision | None, note: str) -> None:
        """Store the reader's decision (with the operator as reader) and show it everywhere."""
        key = scan_key(result.sha256, result.file)
        try:
            recorded = self.store.set_decision(
                key,
                decision,
                note,
                reader=self.settings.operator,
                batch_id=self.batch.batch_id,
            )
            self.model.set_decisions(self.store.decisions())
        except Exception as exc:
            self.messages.show_message(f"The decision was not saved: {exc}", "error")
            return
        for viewer in self._viewers:
            if viewer.result.file == result.file and viewer.result.sha256 == result.sha256:
                viewer.set_decision(recorded)
        if not self.settings.operator:
            self.messages.show_message(
                "Decisions are recorded without a reader's name: set it in Settings "
                "(Operator) so the report says who read the scans.",
                "info",
            )

    def record_patient_id(self, result: ScanResult, text: str) -> None:
        try:
            self.store.set_typed_patient_id(
                scan_key(result.sha256, result.file), text, by=self.settings.operator
            )
        except Exception as exc:
            self.messages.show_message(f"The patient ID was not saved: {exc}", "error")

    def _load_decisions(self) -> None:
        try:
            self.model.set_decisions(self.store.decisions())
        except Exception as exc:
            log.warning("cannot read the readers' decisions: %s", exc)

    def screen_again(self, path: Path) -> None:
        """Screen a file whose content changed since its result (the viewer's offer), as a new
        batch: now, or as soon as the running batch ends."""
        if self.batch.is_running():
            self._queued_inputs.append(Path(path))
            self.messages.show_message(
                f"{Path(path).name} will be screened when the running batch ends.", "info"
            )
            return
        self.open_paths([Path(path)])

    def _forget_viewer(self, viewer: ScanViewer) -> None:
        if viewer in self._viewers:
            self._viewers.remove(viewer)
        self._viewer_rows.pop(viewer, None)

    def _close_viewers(self) -> None:
        for viewer in list(self._viewers):
            viewer.close()

    def _toggle_viewer_heat(self) -> None:
        for viewer in self._viewers:
            if viewer.isActiveWindow():
                viewer.heat_box.toggle()
                return
        if self._viewers:
            self._viewers[-1].heat_box.toggle()

    def current_index(self) -> QModelIndex:
        return self.view.currentIndex()

    # -- dialogs --------------------------------------------------------------------------------
    def show_models(self) -> None:
        from desktop.gui.models_dialog import ModelsDialog

        manifests = self.models.manifests if self.models else {}
        device = self.device_text() if self.models else ""
        problems = list(self.models.problems) if self.models else []
        dialog = ModelsDialog(manifests, device, problems, self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.open()

    def show_history(self) -> Worker:
        """Count the history in a worker (it reads every stored result), then show it."""
        from desktop.engine.history import history_rows

        manifests = self.models.manifests if self.models else None
        worker = Worker(
            history_rows, self.store, manifests, self.model.choice(), name="medscreen-history"
        )
        worker.returned.connect(self._history_ready)
        worker.errored.connect(self._side_failed)
        self._keep(worker)
        self.show_status("Reading the batch history…", 3000)
        worker.start()
        return worker

    def _history_ready(self, rows: list[object]) -> None:
        from desktop.gui.history_dialog import HistoryDialog
        from desktop.gui.results_model import short_name

        names = [(mid, short_name(m)) for mid, m in self.model.manifests().items()]
        dialog = HistoryDialog(rows, names, self.settings.retention_days, self)  # type: ignore[arg-type]
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.accepted.connect(lambda: self.open_batch(dialog.chosen) if dialog.chosen else None)
        dialog.delete_requested.connect(self.delete_batches)
        dialog.retention_changed.connect(self._set_retention)
        self.history_dialog = dialog
        dialog.open()

    def delete_batches(self, batch_ids: list[str]) -> Worker:
        """Delete batches with their results and thumbnails (in a worker: VACUUM takes time)."""
        worker = Worker(self.store.delete_batches, list(batch_ids), name="medscreen-delete")
        worker.returned.connect(
            lambda n: self.show_status(f"Deleted {n} batch{'es' if n != 1 else ''}.", 5000)
        )
        worker.errored.connect(self._side_failed)
        self._keep(worker)
        worker.start()
        return worker

    def _set_retention(self, days: int) -> None:
        self.settings.retention_days = days
        self.settings.sync()

    def prune_history(self) -> Worker | None:
        """Apply the retention setting: delete batches older than it (start-up, a worker)."""
        days = self.settings.retention_days
        if days <= 0:
            return None
        worker = Worker(self.store.prune, days, name="medscreen-prune")
        worker.returned.connect(
            lambda n: n and log.info("retention %d days: %d old batch(es) deleted", days, n)
        )
        worker.errored.connect(self._side_failed)
        self._keep(worker)
        worker.start()
        return worker

    def open_batch(self, batch_id: str) -> None:
        """Load a past batch's results into the table (streamed from the store, in order)."""
        if self.batch.is_running():
            self.messages.show_message("Wait for the running batch before opening another.")
            return
        info = self.store.batch(batch_id)
        self._load_stored(batch_id)
        if info is not None and info.total is not None and info.done < info.total:
            self.messages.show_message(
                f"This batch stopped with {info.done} of {info.total} scans done.",
                "info",
                "Resume",
                lambda: self.resume_batch(batch_id),
            )

    def show_calibrate(self) -> QDialog | None:
        """Tools → Calibrate for this site: set a threshold on the clinic's labelled scans."""
        if self.models is None:
            self.messages.show_message("Calibration needs the models loaded.", "warning")
            return None
        from desktop.gui.calibrate_dialog import CalibrateDialog

        dialog = CalibrateDialog(
            self.models,
            self.store,
            operator=self.settings.operator,
            start_folder=self.settings.last_folder,
            parent=self,
        )
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.saved.connect(self._site_points_changed)
        dialog.models_reported.connect(self._calibration_models_reported)
        dialog.open()
        return dialog

    def _site_points_changed(self, _point: object = None) -> None:
        """A site point was saved or imported: offer it (if it fits the loaded models)."""
        self.op_picker.set_manifests(self.model.manifests(), self.op_picker.setting_text())

    def show_settings(self) -> None:
        from desktop.gui.settings_dialog import SettingsDialog

        dialog = SettingsDialog(self.settings, self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.accepted.connect(self.apply_threshold_lock)
        dialog.open()

    # -- export ---------------------------------------------------------------------------------
    def default_report_path(self) -> Path:
        """``medscreen-<clinic>-<date>-<batch>.pdf`` in the last folder (the engine's name)."""
        from datetime import UTC, datetime

        from desktop.engine.reports.context import report_file_stem

        stem = report_file_stem(self.settings.clinic_name, datetime.now(UTC), self.batch.batch_id)
        return Path(self.settings.last_folder or Path.home()) / f"{stem}.pdf"

    def choose_export(self, selected_only: bool = False) -> None:
        if not self.model.rowCount():  # before the save dialog, not after it
            self.messages.show_message("Nothing to export yet.", "warning")
            return
        if selected_only and not self.view.selected_rows():
            self.messages.show_message(
                "Select the rows to export first (click a row; Shift+click or Ctrl+click for "
                "more), or export the whole report (Ctrl+E).",
                "warning",
            )
            return
        start = self.default_report_path()
        if selected_only:  # not over the whole batch's report of the same name
            start = start.with_name(f"{start.stem}-selection{start.suffix}")
        name, _ = QFileDialog.getSaveFileName(
            self, "Export report (PDF and CSV)", str(start), "PDF report (*.pdf)"
        )
        if name:
            self.export_report(Path(name), selected_only=selected_only)

    def export_report(self, pdf_path: Path, selected_only: bool = False) -> Worker | None:
        """Write ``<name>.pdf`` and ``<name>.csv`` beside it, in a worker thread."""
        if self.models is None:
            self.messages.show_message("Reports need the models loaded.", "warning")
            return None
        # The rows stream from the store a page at a time (in the table's row order), and
        # only flagged scans show images in the PDF: it fetches each one's thumbnail and
        # class maps while drawing it, so neither the batch nor its images are ever all in
        # memory.
        selected = self.view.selected_rows() if selected_only else None
        results = self.model.table_report(selected)
        if not len(results):
            self.messages.show_message("Nothing to export yet.", "warning")
            return None
        from desktop.engine.reports import ReportContext, write_reports

        ctx = ReportContext.for_batch(
            self.batch.batch_id,
            self.models,
            self.model.choice(),
            clinic_name=self.settings.clinic_name,
            operator=self.settings.operator,
            include_identifiers=self.settings.include_identifiers,
            patients=self.model.patients(),
            decisions=self._stored_decisions(),
            typed_patient_ids=self._typed_ids() if self.settings.include_identifiers else {},
            device=self._batch_device(),
            files_not_screened=self._not_screened(),
            selected_from=self.model.rowCount() if selected is not None else 0,
            same_content_copies=self._copies() if selected is None else 0,
        )
        stem = pdf_path.stem or "medscreen-report"
        worker = Worker(
            write_reports,
            results,
            ctx,
            pdf_path.parent,
            ["pdf", "csv"],
            stem,
            name="medscreen-export",
        )
        worker.returned.connect(self._exported)
        worker.errored.connect(self._side_failed)
        self._keep(worker)
        self.statusBar().showMessage(f"Writing the report for {counted(len(results), 'scan')}…")
        worker.start()
        return worker

    def _copies(self) -> int:
        """Files of the shown batch that are copies of another of its files (page 1 says)."""
        return self._batch_count(self.store.same_content_copies)

    def _not_screened(self) -> int:
        """Files of the shown batch still to screen (a stopped batch's report says so)."""
        return self._batch_count(self.store.files_not_screened)

    def _batch_count(self, count: Callable[[str], int]) -> int:
        """One count of the shown batch from the store for a report's page 1; 0 without a
        batch, and 0 when the store cannot be read: the report goes out without that note
        and the log says why."""
        batch_id = self.batch.batch_id
        try:
            return count(batch_id) if batch_id else 0
        except Exception as exc:
            log.warning("cannot read the results store: %s", exc)
            return 0

    def _batch_device(self) -> str | None:
        """The device the shown batch ran on, as its process recorded it in the store."""
        batch_id = self.batch.batch_id
        try:
            info = self.store.batch(batch_id) if batch_id else None
        except Exception as exc:  # the report says what the models say instead
            log.warning("cannot read the results store: %s", exc)
            return None
        return info.device if info is not None and info.device else None

    def _exported(self, paths: list[Path]) -> None:
        # Zero-width spaces after separators let a long path wrap in the message strip.
        names = ", ".join(display_path(str(p)).replace("/", "/\u200b") for p in paths)
        pdf = next((Path(p) for p in paths if Path(p).suffix == ".pdf"), None)
        if pdf is not None:
            self.last_report = pdf
            self.messages.show_message(
                f"Report written: {names}", "info", "Open report", lambda: self.open_report(pdf)
            )
        else:
            self.messages.show_message(f"Report written: {names}", "info")
        self.statusBar().showMessage("Report written.", 5000)
        emit(self.export_done, paths)

    def open_report(self, path: Path) -> bool:
        """Open a written report in the system's PDF viewer; say so if none opens it."""
        from PySide6.QtCore import QUrl
        from PySide6.QtGui import QDesktopServices

        if os.environ.get("MEDSCREEN_NO_OPEN") == "1":  # tests and screenshots: never launch
            return False
        if not QDesktopServices.openUrl(QUrl.fromLocalFile(str(path))):
            self.messages.show_message(
                f"No program opened the report. It is at {display_path(str(path))}.", "warning"
            )
            return False
        return True

    def _stored_decisions(self) -> dict[str, object]:
        try:
            return dict(self.store.decisions())
        except Exception as exc:
            log.warning("cannot read the readers' decisions: %s", exc)
            return {}

    # -- workers and shutdown -------------------------------------------------------------------
    def _keep(self, worker: Worker) -> None:
        self._side_workers.add(worker)
        worker.finished.connect(lambda w=worker: self._side_workers.discard(w))

    def _side_failed(self, error: WorkerError) -> None:
        reason = getattr(error.exception, "message", None) or str(error.exception)
        self.messages.show_message(
            f"That did not work: {reason}. The log file has the details.", "error"
        )

    def busy(self) -> bool:
        return self.batch.is_running() or self._model_worker is not None or bool(self._side_workers)

    def closeEvent(self, event: QCloseEvent) -> None:
        """Stop the batch cleanly (finished scans are already committed) and join workers."""
        self.settings.set_geometry(self.saveGeometry())
        self.settings.set_window_state(self.saveState())
        if self.model.finding_ids():  # the models' columns are there: worth keeping
            self.settings.set_table_header(self.view.horizontalHeader().saveState())
        self.settings.sync()
        self._close_viewers()
        if self.batch.is_running():
            self.batch.cancel()
            self.batch.wait(60_000)
        for worker in [self._model_worker, *self._side_workers]:
            if worker is not None:
                worker.wait(60_000)
        super().closeEvent(event)

    # -- drops anywhere on the window ------------------------------------------------------------
    def files_dropped(self, paths: list[Path]) -> None:
        self.open_paths(paths)

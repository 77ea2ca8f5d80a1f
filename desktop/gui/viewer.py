"""The scan viewer: one scan at full size with its heatmap, scores, metadata and warnings.

It opens at once on the result's stored thumbnail (which exists even when the original file
has moved), then reads the full-size file in a worker and swaps it in. Window/level works on
``Scan.raw`` (modality units for DICOM, stored integers for 16-bit rasters) through the
engine's windowing (:func:`desktop.engine.dicom.window_raw`: the file's VOI function and
MONOCHROME1 inversion, exactly as the models saw it); until the user moves the window the
viewer shows ``Scan.pixels``, the loader's own rendering (VOI LUT included). 8-bit images have
nothing more to window, so the controls are disabled for them and say why.

The full-size file is shown only if its bytes are the ones that were screened (same sha256):
PACS exports reuse names such as ``IM000001``, and a heatmap and scores laid over another
patient's image would be a clinical error. When the content differs the viewer says so, keeps
the stored thumbnail (with its heatmap: what was screened) and offers to screen the new file.

Patient identifiers (name, ID, birth date) are hidden until the user ticks "Show patient
identifiers"; the choice is not remembered, so every scan opens with them hidden.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QImage, QKeySequence, QPalette, QShortcut
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSlider,
    QSplitter,
    QStyle,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from desktop import DISCLAIMER
from desktop.engine.clock import local_text
from desktop.engine.decisions import DECISION_TEXT, MAX_NOTE_CHARS, Decision, ReaderDecision
from desktop.engine.dicom import window_raw
from desktop.engine.loading import load_scan
from desktop.engine.manifest import ModelManifest
from desktop.engine.overlay import DEFAULT_OPACITY, decode_thumbnail, heatmap_rgb
from desktop.engine.paths import display_path, one_line
from desktop.engine.preprocess import activation_to_image
from desktop.engine.quality import quality_of, shown_modality, shown_modality_score
from desktop.engine.results import (
    ScanResult,
    ScanStatus,
    ScopeRule,
    ThresholdChoice,
    is_flagged,
    status_text,
)
from desktop.engine.scan import IDENTIFYING_FIELDS, Scan
from desktop.gui.flags import NOT_FLAGGED_TEXT, flag_text
from desktop.gui.image_canvas import ImageCanvas, grey_to_qimage, heat_to_qimage
from desktop.gui.message_bar import MessageBar
from desktop.gui.qt_compat import emit
from desktop.gui.results_model import reading_order, short_name
from desktop.gui.screen_fit import fit_to_screen
from desktop.gui.workers import Worker, WorkerError

log = logging.getLogger(__name__)

#: The heatmap is smooth (a 7×7-ish model grid): computing it at this size and letting Qt
#: scale the layer keeps a 3,000-pixel radiograph's viewer instant.
HEAT_MAX_SIDE = 1024
SLIDER_STEPS = 1000

METADATA_LABELS = {
    "source_format": "Format",
    "width": "Width (px)",
    "height": "Height (px)",
    "bits_stored": "Bits stored",
    "photometric": "Photometric",
    "modality": "DICOM modality",
    "body_part": "Body part",
    "view_position": "View",
    "patient_age": "Patient age",
    "patient_sex": "Patient sex",
    "study_date": "Study date",
    "study_description": "Study",
    "transfer_syntax": "Transfer syntax",
    "window": "Window (centre, width)",
    "patient_name": "Patient name",
    "patient_id": "Patient ID",
    "patient_birth_date": "Birth date",
}


def _greyed(palette: QPalette) -> str:
    """The text colour halfway to the background: a greyed score in light and dark themes
    (the palette's placeholder colour may carry alpha, which rich text would drop)."""
    text, base = palette.windowText().color(), palette.window().color()
    mixed = [(a + b) // 2 for a, b in zip(text.getRgb()[:3], base.getRgb()[:3], strict=True)]
    return "#{:02x}{:02x}{:02x}".format(*mixed)


class ScanViewer(QDialog):
    """A non-modal window on one result."""

    #: Emitted once the best available image is shown (full scan, or thumbnail fallback).
    image_ready = Signal()
    #: The user asked to screen the file at this path again: its content is not what was
    #: screened (the main window queues it as a new batch).
    screen_requested = Signal(object)
    #: Reading: show the next (+1) or previous (-1) scan in triage order (the main window
    #: answers with :meth:`show_result`).
    step_requested = Signal(int)
    #: Reading: the reader decided on this scan: (result, Decision or None to clear, note).
    decision_made = Signal(object, object, str)
    #: Reading: a patient ID typed for a file that carries none: (result, text).
    patient_id_typed = Signal(object, str)

    def __init__(
        self,
        result: ScanResult,
        manifests: Mapping[str, ModelManifest],
        choice: ThresholdChoice,
        parent: QWidget | None = None,
        scope: ScopeRule | None = None,
    ) -> None:
        super().__init__(parent)
        self.result = result
        self._manifests = reading_order(manifests)
        self._choice = choice
        #: the engine's scope rule under the staff's patient choice (the table's)
        self._scope = scope if scope is not None else ScopeRule.of(manifests)
        self._scan: Scan | None = None
        self._grey: np.ndarray | None = None  # the displayed grey image, [0, 1]
        self._raw_range: tuple[float, float] = (0.0, 1.0)
        self._window: tuple[float, float] | None = None
        self._user_window = False  # True once the user moved the window away from the file's
        self._worker: Worker | None = None
        self._workers: set[Worker] = set()  # loads still running for scans stepped past
        self._generation = 0  # which show_result a finished load belongs to
        #: True when the file at ``result.file`` no longer holds the screened bytes.
        self.file_changed = False
        self.setWindowTitle(f"{one_line(display_path(Path(result.file).name))} — MedScreen")
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.resize(1100, 760)
        fit_to_screen(self)  # a 1366×768 screen at 150 % has 911×512 logical pixels

        self.canvas = ImageCanvas(self)
        self.canvas.window_drag.connect(self._drag_window)
        self._build_controls()
        self._render_timer = QTimer(self, singleShot=True, interval=30)
        self._render_timer.timeout.connect(self._render_base)

        self._show_thumbnail()
        self._load_full()

    # -- layout ------------------------------------------------------------------------------
    def _build_controls(self) -> None:
        style = self.style()
        bar = QHBoxLayout()
        for text, tip, slot in (
            ("−", "Zoom out (−)", lambda: self.canvas.zoom_by(1 / 1.25)),
            ("+", "Zoom in (+)", lambda: self.canvas.zoom_by(1.25)),
        ):
            button = QToolButton(self)
            button.setText(text)
            button.setToolTip(tip)
            button.clicked.connect(slot)
            bar.addWidget(button)
        fit = QToolButton(self)
        fit.setText("Fit")
        fit.setToolTip("Fit the scan to the window (F)")
        fit.clicked.connect(self.canvas.fit)
        bar.addWidget(fit)
        bar.addSpacing(16)

        self.heat_box = QCheckBox("Heatmap (H)", self)
        self.heat_box.setToolTip(
            "Where the model looked: bright = regions that raised the score. "
            "It is not a lesion outline."
        )
        self.heat_box.toggled.connect(self._heat_toggled)
        self.heat_model = QComboBox(self)
        self.heat_model.currentIndexChanged.connect(self._update_heat)
        self.opacity = QSlider(Qt.Orientation.Horizontal, self)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(int(DEFAULT_OPACITY * 100))
        self.opacity.setToolTip("Heatmap opacity")
        self.opacity.setMaximumWidth(160)
        self.opacity.valueChanged.connect(lambda v: self.canvas.set_heat_opacity(v / 100))
        self.canvas.set_heat_opacity(DEFAULT_OPACITY)
        bar.addWidget(self.heat_box)
        bar.addWidget(self.heat_model)
        bar.addWidget(QLabel("Opacity", self))
        bar.addWidget(self.opacity)
        bar.addStretch(1)
        self.source_label = QLabel(self)
        self.source_label.setForegroundRole(self.palette().ColorRole.PlaceholderText)
        # May be cut on a small screen: its text changes as the scan loads, and a window
        # whose minimum width followed it would grow past a small screen.
        self.source_label.setMinimumWidth(40)
        bar.addWidget(self.source_label)

        left = QWidget(self)
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        self.messages = MessageBar(self)
        left_layout.addWidget(self.messages)
        left_layout.addLayout(bar)
        left_layout.addWidget(self.canvas, 1)

        # Right panel: scores, window/level, details, warnings.
        self.scores = QLabel(self)
        self.scores.setTextFormat(Qt.TextFormat.RichText)
        self.scores.setWordWrap(True)
        self.scores.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        scores_box = QGroupBox("Model outputs", self)
        QVBoxLayout(scores_box).addWidget(self.scores)

        self.center = QSlider(Qt.Orientation.Horizontal, self)
        self.width_slider = QSlider(Qt.Orientation.Horizontal, self)
        for slider in (self.center, self.width_slider):
            slider.setRange(1, SLIDER_STEPS)
            slider.valueChanged.connect(self._sliders_moved)
        reset = QToolButton(self)
        reset.setIcon(style.standardIcon(QStyle.StandardPixmap.SP_BrowserReload))
        reset.setText("Reset")
        reset.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        reset.clicked.connect(self._reset_window)
        self.window_note = QLabel(self)
        self.window_note.setWordWrap(True)
        wl_box = QGroupBox("Window / level (or right-drag on the image)", self)
        wl = QFormLayout(wl_box)
        wl.addRow("Level", self.center)
        wl.addRow("Width", self.width_slider)
        wl.addRow(reset, self.window_note)
        self.wl_box = wl_box
        self.wl_layout = wl
        self.reset_button = reset

        self.details = QFormLayout()
        self.show_ids = QCheckBox("Show patient identifiers", self)
        self.show_ids.setChecked(False)
        self.show_ids.toggled.connect(self._fill_details)
        details_box = QGroupBox("Scan details", self)
        details_layout = QVBoxLayout(details_box)
        details_layout.addLayout(self.details)
        details_layout.addWidget(self.show_ids)

        self.warnings = QLabel(self)
        self.warnings.setWordWrap(True)
        self.warnings_box = QGroupBox("Warnings", self)
        QVBoxLayout(self.warnings_box).addWidget(self.warnings)

        disclaimer = QLabel(DISCLAIMER, self)
        disclaimer.setWordWrap(True)
        disclaimer.setForegroundRole(self.palette().ColorRole.PlaceholderText)

        reading_box = self._build_reading()
        panel = QWidget(self)
        panel_layout = QVBoxLayout(panel)
        for widget in (reading_box, scores_box, self.warnings_box, wl_box, details_box):
            panel_layout.addWidget(widget)
        panel_layout.addStretch(1)
        panel_layout.addWidget(disclaimer)
        scroll = QScrollArea(self)
        scroll.setWidget(panel)
        scroll.setWidgetResizable(True)
        # Text wraps to the panel's width; it never needs a sideways scroll.
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setMinimumWidth(360)

        splitter = QSplitter(self)
        splitter.addWidget(left)
        splitter.addWidget(scroll)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([760, 380])
        layout = QVBoxLayout(self)
        layout.addWidget(splitter)

        QShortcut(QKeySequence("H"), self, activated=self.heat_box.toggle)
        QShortcut(QKeySequence(QKeySequence.StandardKey.Close), self, activated=self.close)
        for keys, step in (("Alt+Right", 1), ("Alt+Left", -1), ("PgDown", 1), ("PgUp", -1)):
            QShortcut(QKeySequence(keys), self, activated=lambda s=step: emit(
                self.step_requested, s))  # fmt: skip
        self._populate()

    def _populate(self) -> None:
        """Fill every per-scan part of the window from ``self.result``."""
        self.heat_model.blockSignals(True)
        self.heat_model.clear()
        self.heat_model.blockSignals(False)
        self.heat_box.setToolTip(
            "Where the model looked: bright = regions that raised the score. "
            "It is not a lesion outline."
        )
        for model_id, manifest in self._finding_manifests().items():
            finding = self.result.findings.get(model_id)
            if finding is not None and finding.activation is not None:
                self.heat_model.addItem(short_name(manifest), model_id)
        has_heat = self.heat_model.count() > 0
        for widget in (self.heat_box, self.heat_model, self.opacity):
            widget.setEnabled(has_heat)
        if not has_heat:
            self.heat_box.setToolTip("No heatmap: the finding models did not run on this scan")
        self._pick_default_heat()
        self._fill_scores()
        self._fill_details()
        self._fill_warnings()

    # -- reading: next/previous, the reader's decision, a typed patient ID ------------------
    def _build_reading(self) -> QGroupBox:
        box = QGroupBox("Reading", self)
        layout = QVBoxLayout(box)
        nav = QHBoxLayout()
        self.prev_button = QToolButton(self)
        self.prev_button.setText("◀ Previous")
        self.prev_button.setToolTip("The previous scan in triage order (Alt+Left, Page Up)")
        self.prev_button.clicked.connect(lambda: emit(self.step_requested, -1))
        self.next_button = QToolButton(self)
        self.next_button.setText("Next ▶")
        self.next_button.setToolTip("The next scan in triage order (Alt+Right, Page Down)")
        self.next_button.clicked.connect(lambda: emit(self.step_requested, 1))
        self.position_label = QLabel(self)
        nav.addWidget(self.prev_button)
        nav.addWidget(self.position_label, 1, Qt.AlignmentFlag.AlignCenter)
        nav.addWidget(self.next_button)
        layout.addLayout(nav)
        self.set_position(None, None)

        grid = QGridLayout()
        self.decision_group = QButtonGroup(self)
        self.decision_group.setExclusive(False)  # a second click on the chosen one clears it
        self.decision_buttons: dict[Decision, QPushButton] = {}
        for i, decision in enumerate(Decision):
            button = QPushButton(DECISION_TEXT[decision], self)
            button.setCheckable(True)
            # Alt+1…Alt+4: a reader stepping through scans with Page Down decided each one
            # with the mouse; Alt keeps the digits free for the note and the patient ID
            button.setShortcut(QKeySequence(f"Alt+{i + 1}"))
            button.setToolTip(f"Record your decision on this scan (Alt+{i + 1}; again to clear it)")
            self.decision_group.addButton(button)
            self.decision_buttons[decision] = button
            button.clicked.connect(lambda checked, d=decision: self._decision_clicked(d, checked))
            grid.addWidget(button, i // 2, i % 2)
        layout.addLayout(grid)
        self.note_edit = QLineEdit(self)
        self.note_edit.setPlaceholderText("Note (optional; saved with the decision)")
        self.note_edit.setMaxLength(MAX_NOTE_CHARS)
        self.note_edit.editingFinished.connect(self._note_finished)
        layout.addWidget(self.note_edit)
        self.decision_label = QLabel(self)
        self.decision_label.setWordWrap(True)
        self.decision_label.setForegroundRole(self.palette().ColorRole.PlaceholderText)
        layout.addWidget(self.decision_label)
        pid_row = QHBoxLayout()
        self.patient_label = QLabel("Patient ID", self)
        self.patient_edit = QLineEdit(self)
        self.patient_edit.setMaxLength(64)
        self.patient_edit.setPlaceholderText("type it: this file carries none")
        self.patient_edit.setToolTip(
            "Kept with the patient identifiers in the results store; in reports only when "
            "identifiers are turned on in Settings"
        )
        self.patient_edit.editingFinished.connect(self._patient_finished)
        pid_row.addWidget(self.patient_label)
        pid_row.addWidget(self.patient_edit, 1)
        layout.addLayout(pid_row)
        self._decision: ReaderDecision | None = None
        self._typed_pid = ""
        return box

    def set_position(self, index: int | None, total: int | None) -> None:
        """Where this scan is in the triage order ("3 of 12"); None: no order (buttons off)."""
        known = index is not None and total is not None and total > 0
        self.position_label.setText(f"{index + 1} of {total} in triage order" if known else "")
        for button in (self.prev_button, self.next_button):
            button.setEnabled(bool(known and total and total > 1))

    def set_decision(self, decision: ReaderDecision | None) -> None:
        """Show the scan's recorded decision (the main window reads it from the store)."""
        self._decision = decision
        for d, button in self.decision_buttons.items():
            button.setChecked(decision is not None and decision.decision is d)
        self.note_edit.setText(decision.note if decision else "")
        self.decision_label.setText(
            f"Recorded: {decision.summary()}" if decision else "No decision recorded yet."
        )

    def set_typed_patient_id(self, text: str) -> None:
        """The patient ID typed earlier for this file (only files without one can take it)."""
        self._typed_pid = text
        carries = bool(self.result.metadata.get("patient_id"))
        for widget in (self.patient_label, self.patient_edit):
            widget.setVisible(not carries)
        self.patient_edit.setText(text)

    def current_decision(self) -> ReaderDecision | None:
        return self._decision

    def _decision_clicked(self, decision: Decision, checked: bool) -> None:
        for d, button in self.decision_buttons.items():
            if d is not decision:
                button.setChecked(False)
        emit(self.decision_made, self.result, decision if checked else None,
             self.note_edit.text())  # fmt: skip

    def _note_finished(self) -> None:
        note = self.note_edit.text().strip()
        if self._decision is not None and note != self._decision.note:
            emit(self.decision_made, self.result, self._decision.decision, note)

    def _patient_finished(self) -> None:
        text = self.patient_edit.text().strip()
        if text != self._typed_pid:
            self._typed_pid = text
            emit(self.patient_id_typed, self.result, text)

    def show_result(self, result: ScanResult) -> None:
        """Show another scan in this window (next/previous): nothing is closed or reopened."""
        self.result = result
        self._scan = None
        self._grey = None
        self._window = None
        self._user_window = False
        self.file_changed = False
        self.messages.hide()
        self.canvas.set_heat(None)
        self.setWindowTitle(f"{one_line(display_path(Path(result.file).name))} — MedScreen")
        self._populate()
        self._show_thumbnail()
        self._load_full()

    def _finding_manifests(self) -> dict[str, ModelManifest]:
        return {k: m for k, m in self._manifests.items() if m.role == "finding"}

    def _pick_default_heat(self) -> None:
        """Show first the heatmap of the highest score: the one a reader wants to check."""
        best, best_p = 0, -1.0
        for i in range(self.heat_model.count()):
            finding = self.result.findings[self.heat_model.itemData(i)]
            if finding.probability > best_p:
                best, best_p = i, finding.probability
        if self.heat_model.count():
            self.heat_model.setCurrentIndex(best)

    # -- text panels -----------------------------------------------------------------------
    def _fill_scores(self) -> None:
        result = self.result
        rows: list[str] = []
        if result.status is not ScanStatus.OK:
            # The engine's plain words first; the technical reason below, smaller.
            quality = quality_of(result)
            head = quality.text if quality is not None else status_text(result.status)
            detail = f"<br><small>{html.escape(result.reason)}</small>" if result.reason else ""
            rows.append(f"<p><b>{html.escape(head)}</b>{detail}</p>")
        outside = self._scope.verdicts(result)
        group_name = None  # the scan's patient group picks a per-group operating point
        if result.findings:
            group = self._scope.group(result)
            group_name = None if group.group is None else group.group.value
            rows.append(f"<p><b>Patient:</b> {html.escape(group.describe())}</p>")
        for model_id, manifest in self._finding_manifests().items():
            finding = result.findings.get(model_id)
            name = html.escape(short_name(manifest))
            if finding is None:
                rows.append(f"<p><b>{name}</b>: not screened</p>")
                continue
            try:
                point = self._choice.resolve(manifest).for_group(group_name)
            except Exception as exc:
                rows.append(f"<p><b>{name}</b>: {finding.probability:.3f} ({exc})</p>")
                continue
            verdict = outside.get(model_id)
            flagged = verdict is None and is_flagged(finding.probability, point)
            mark = flag_text(short_name(manifest)) if flagged else f"{NOT_FLAGGED_TEXT} not flagged"
            if verdict is not None:
                mark = f"⚠ {verdict.short} — outside the scope of this model, not flagged"
            classes = ", ".join(
                f"{html.escape(label)} {p:.3f}" for label, p in finding.probabilities.items()
            )
            score = f"{finding.probability:.3f}"
            if verdict is not None:  # greyed, as in the table
                grey = _greyed(self.palette())
                score = f'<span style="color: {grey}">{score}</span>'
            rows.append(
                f"<p><b>{name}: {score}</b> &nbsp; {html.escape(mark)}<br>"
                f"all classes: {classes}<br>"
                f"<small>operating point {html.escape(point.describe())}<br>"
                f"model {html.escape(manifest.id)} {html.escape(manifest.version)}</small></p>"
            )
        if result.modality:
            gate = ", ".join(
                f"{html.escape(k)} {v:.3f}"
                for k, v in sorted(result.modality_probabilities.items(), key=lambda kv: -kv[1])
            )
            shown = shown_modality(result)  # none for an image refused as not medical
            shown_score = shown_modality_score(result)  # none beside a header's modality
            score = "" if shown_score is None else f" ({shown_score:.3f})"
            nearest = (
                ""
                if shown
                else f"<small>not recognised as a medical image; the nearest class, "
                f"{html.escape(result.modality)}, means nothing here</small><br>"
            )
            rows.append(
                f"<p><b>Modality: {html.escape(shown or 'none')}{score if shown else ''}</b><br>"
                f"{nearest}<small>all classes: {gate}</small></p>"
            )
        if result.ood_score is not None:
            rows.append(f"<p><small>out-of-distribution score {result.ood_score:.3f}</small></p>")
        self.scores.setText("".join(rows) or "No model outputs for this file.")

    def _fill_details(self) -> None:
        while self.details.rowCount():
            self.details.removeRow(0)
        metadata = dict(self.result.metadata)
        if self._scan is not None:
            metadata = {**self._scan.metadata.as_dict(), **metadata}
        shown = 0
        for key, label in METADATA_LABELS.items():
            if key in IDENTIFYING_FIELDS and not self.show_ids.isChecked():
                continue
            value = metadata.get(key)
            if value in (None, "", [], {}):
                continue
            if isinstance(value, list | tuple):
                value = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
            text = QLabel(str(value), self)
            text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            text.setWordWrap(True)
            self.details.addRow(label, text)
            shown += 1
        self.details.addRow("File", self._file_label())
        hidden = [k for k in IDENTIFYING_FIELDS if metadata.get(k)]
        self.show_ids.setEnabled(bool(hidden))
        if not hidden:
            self.show_ids.setToolTip("This file carries no patient identifiers")

    def _file_label(self) -> QLabel:
        # Zero-width spaces after separators let a long path wrap instead of clipping.
        shown = display_path(self.result.file)  # Qt would drop undecodable bytes
        text = shown.replace("/", "/\u200b").replace("\\", "\\\u200b")
        label = QLabel(text, self)
        label.setToolTip(shown)
        label.setWordWrap(True)
        label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        return label

    def _fill_warnings(self) -> None:
        warnings = [v.reason for v in self._scope.verdicts(self.result).values()]
        warnings += list(self.result.warnings)
        self.warnings.setText("\n".join(f"⚠ {w}" for w in warnings))
        self.warnings_box.setVisible(bool(warnings))

    # -- images ------------------------------------------------------------------------------
    def _show_thumbnail(self) -> None:
        if self.result.thumbnail_png:
            try:
                self._grey = decode_thumbnail(self.result.thumbnail_png)
            except (OSError, ValueError) as exc:
                log.warning("cannot decode a stored thumbnail: %s", exc)
                self._grey = None
        if self._grey is not None:
            self.canvas.set_base(grey_to_qimage(self._grey))
            self.source_label.setText("stored thumbnail")
            self._update_heat()
        self._set_window_enabled(False, "Window/level needs the original file (loading…)")

    def _load_full(self) -> None:
        if self.result.status is ScanStatus.ERROR and not Path(self.result.file).is_file():
            self.source_label.setText("file not available")
            # Nothing will load: the thumbnail's "(loading…)" note would stay for good.
            self._set_window_enabled(False, "Window/level needs the original file: not found.")
            QTimer.singleShot(0, lambda: emit(self.image_ready))
            return
        worker = Worker(load_scan, Path(self.result.file), keep_raw=True, name="medscreen-view")
        self._generation += 1
        gen = self._generation
        # A load finishing after the reader stepped on belongs to a scan no longer shown.
        worker.returned.connect(lambda scan, g=gen: self._loaded(g, scan))
        worker.errored.connect(lambda error, g=gen: self._load_failed(g, error))
        worker.finished.connect(lambda w=worker: self._worker_done(w))
        self._worker = worker
        self._workers.add(worker)
        worker.start()

    def _loaded(self, generation: int, scan: Scan) -> None:
        if generation == self._generation:
            self._full_loaded(scan)

    def _load_failed(self, generation: int, error: WorkerError) -> None:
        if generation == self._generation:
            self._full_failed(error)

    def _worker_done(self, worker: Worker | None = None) -> None:
        self._workers.discard(worker)  # type: ignore[arg-type]
        if worker is self._worker:
            self._worker = None

    def _full_failed(self, error: WorkerError) -> None:
        message = getattr(error.exception, "message", None) or str(error.exception)
        self.source_label.setText("stored thumbnail (original not readable)")
        self._set_window_enabled(False, f"The original file could not be read: {message}")
        emit(self.image_ready)

    def _full_loaded(self, scan: Scan) -> None:
        if self.result.sha256 and scan.sha256 != self.result.sha256:
            self._file_changed(scan)
            return
        self._scan = scan
        self.source_label.setText(f"{scan.metadata.width}×{scan.metadata.height} original")
        if scan.raw is not None:
            raw = np.asarray(scan.raw, dtype=np.float32)
            step = max(1, raw.size // 500_000)
            sample = raw.reshape(-1)[::step]
            lo, hi = (float(v) for v in np.percentile(sample, [0.0, 100.0]))
            self._raw_range = (lo, hi if hi > lo else lo + 1.0)
            self._window = scan.metadata.window or ((lo + hi) / 2, hi - lo)
            self._set_window_enabled(True, "")
            self._sync_sliders()
        else:
            self._set_window_enabled(
                False, "8-bit image: it has no more grey levels than are shown."
            )
        self._render_base()
        self._update_heat()
        self._fill_details()
        emit(self.image_ready)

    def _file_changed(self, scan: Scan) -> None:
        """The path now holds other bytes: show only what was screened, and say so plainly."""
        self.file_changed = True
        name = one_line(display_path(Path(self.result.file).name))
        stamp = self.result.screened_at
        when = f" on {local_text(stamp)}" if stamp else ""  # the clinic's clock, as reports
        self.source_label.setText("stored thumbnail (the file has changed)")
        self.messages.show_message(
            f"{name} is not the image that was screened: its content has changed since it was "
            f"screened{when}. The scores and heatmap here belong to the screened image, shown "
            "as its stored thumbnail; the file on disk has not been screened.",
            "warning",
            "Screen the new file",
            lambda: emit(self.screen_requested, Path(scan.path)),
        )
        self._set_window_enabled(
            False, "The file on disk is not the screened image: window/level is off."
        )
        log.warning("viewer: file content changed since screening (sha256 differs)")
        emit(self.image_ready)

    def _set_window_enabled(self, enabled: bool, note: str) -> None:
        """Sliders only where there is more to window than is shown; otherwise say why."""
        for widget in (self.center, self.width_slider):
            widget.setEnabled(enabled)
        for row in range(2):
            self.wl_layout.setRowVisible(row, enabled)
        self.reset_button.setVisible(enabled)
        self.window_note.setText(note)
        self.window_note.setVisible(bool(note))

    def _render_base(self) -> None:
        scan = self._scan
        if scan is None:
            return
        if scan.raw is not None and self._window is not None and self._user_window:
            grey = window_raw(scan, *self._window)
        else:
            grey = scan.pixels  # the file's own window, VOI function or VOI LUT
        self._grey = grey
        self.canvas.set_base(grey_to_qimage(grey))

    def _update_heat(self) -> None:
        model_id = self.heat_model.currentData()
        manifest = self._manifests.get(model_id) if model_id else None
        finding = self.result.findings.get(model_id) if model_id else None
        if self._grey is None or manifest is None or finding is None or finding.activation is None:
            self.canvas.set_heat(None)
            return
        height, width = self._grey.shape
        scale = min(1.0, HEAT_MAX_SIDE / max(height, width))
        shape = (max(1, round(height * scale)), max(1, round(width * scale)))
        # The engine undoes the model's crop/pad for this aspect ratio, so the hot spot lands
        # on the right part of the scan.
        cam = activation_to_image(finding.activation, manifest.preprocessing, shape)
        self.canvas.set_heat(heat_to_qimage(heatmap_rgb(cam), cam))
        self.canvas.set_heat_visible(self.heat_box.isChecked())

    def _heat_toggled(self, on: bool) -> None:
        self.canvas.set_heat_visible(on)

    # -- window / level ----------------------------------------------------------------------
    def _sync_sliders(self) -> None:
        if self._window is None:
            return
        lo, hi = self._raw_range
        span = hi - lo
        centre, width = self._window
        for slider, value in (
            (self.center, (centre - lo) / span),
            (self.width_slider, width / span),
        ):
            slider.blockSignals(True)
            slider.setValue(int(np.clip(round(value * SLIDER_STEPS), 1, SLIDER_STEPS)))
            slider.blockSignals(False)

    def _sliders_moved(self) -> None:
        lo, hi = self._raw_range
        span = hi - lo
        centre = lo + span * self.center.value() / SLIDER_STEPS
        width = span * self.width_slider.value() / SLIDER_STEPS
        self._window = (centre, width)
        self._user_window = True
        self._render_timer.start()

    def _drag_window(self, dx: int, dy: int) -> None:
        if self._window is None or not self.center.isEnabled():
            return
        lo, hi = self._raw_range
        span = hi - lo
        centre, width = self._window
        width = float(np.clip(width + dx * span / 500, span / SLIDER_STEPS, span))
        centre = float(np.clip(centre + dy * span / 500, lo, hi))
        self._window = (centre, width)
        self._user_window = True
        self._sync_sliders()
        self._render_timer.start()

    def _reset_window(self) -> None:
        if self._scan is None or self._scan.raw is None:
            return
        lo, hi = self._raw_range
        self._window = self._scan.metadata.window or ((lo + hi) / 2, hi - lo)
        self._user_window = False
        self._sync_sliders()
        self._render_base()

    def set_choice(self, choice: ThresholdChoice) -> None:
        """Follow the main window's operating point (flags and text update, nothing re-runs)."""
        self._choice = choice
        self._fill_scores()

    def set_scope(self, scope: ScopeRule) -> None:
        """Follow the main window's patient group (batch or this scan's override)."""
        self._scope = scope
        self._fill_scores()
        self._fill_warnings()

    def rendered_image(self) -> QImage:
        """What the canvas shows now (tests and screenshots)."""
        return self.canvas.viewport().grab().toImage()

    def closeEvent(self, event: object) -> None:  # type: ignore[override]
        for worker in list(self._workers):
            worker.wait(10_000)
        super().closeEvent(event)  # type: ignore[arg-type]

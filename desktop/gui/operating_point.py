"""Choosing the operating point: a named point from the manifests, or a custom threshold.

Beside the choice it shows what each named point meant on validation data (sensitivity and
specificity per model), because "screening" versus "balanced" is a clinical trade-off the
nurse should see, not a hidden number. Changing it only re-derives flags from stored
probabilities; nothing is screened again.

Saved site operating points (``site:NAME``, set in the Calibrate dialog) are offered only
when they fit the loaded model versions exactly: a site threshold measured on an older model
means nothing for a new one, so it is not offered rather than silently reused.

*Per model…* gives each finding model its own point (screening, balanced, a site point or a
custom threshold), kept as ``tb=balanced,pneumonia=0.6``. An administrator can lock the
choice: a programme's policy file (:mod:`desktop.engine.policy`) locks it outright, a PIN
(Settings) locks it until the PIN is entered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QSizePolicy,
    QToolButton,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from desktop.engine.manifest import ModelManifest, OperatingPoint
from desktop.engine.results import ThresholdChoice
from desktop.engine.site_points import SiteOperatingPoint, SitePoint, SitePointStore
from desktop.gui.elide import WordElidedLabel
from desktop.gui.qt_compat import emit
from desktop.gui.results_model import short_name

log = logging.getLogger(__name__)

CUSTOM = "__custom__"
PER_MODEL = "__per_model__"


class OperatingPointPicker(QWidget):
    choice_changed = Signal(object)  # ThresholdChoice

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._manifests: dict[str, ModelManifest] = {}
        self._sites: dict[str, SitePoint] = {}  # "site:NAME" → the saved point
        #: Where saved site points are read from (tests and the dialog may point elsewhere).
        self.site_store: SitePointStore | None = None
        self.combo = QComboBox(self)
        self.combo.setToolTip("Operating point: when a score counts as flagged")
        self.custom = QDoubleSpinBox(self)
        self.custom.setRange(0.0, 1.0)
        self.custom.setSingleStep(0.05)
        self.custom.setDecimals(2)
        self.custom.setValue(0.5)
        self.custom.setToolTip("Custom threshold for every finding model")
        self.custom.setVisible(False)
        self.per_model_button = QToolButton(self)
        self.per_model_button.setText("Set…")
        self.per_model_button.setToolTip("Choose each model's operating point")
        self.per_model_button.setVisible(False)
        self.per_model_button.clicked.connect(self.edit_per_model)
        self._per_model = ThresholdChoice()  # the per-model choice last set
        self.lock_button = QToolButton(self)
        self.lock_button.setText("🔒")
        self.lock_button.setVisible(False)
        self.lock_button.clicked.connect(self._unlock)
        self._lock_reason = ""
        #: A PIN lock: checks an entered PIN (None: no PIN lock); set by the main window.
        self.pin_check: Callable[[str], bool] | None = None
        #: Asks for the PIN (tests replace it); None when the user cancels.
        self.ask_pin: Callable[[], str | None] = self._ask_pin
        self.detail = WordElidedLabel(self)
        self.detail.setForegroundRole(self.palette().ColorRole.PlaceholderText)
        # The thresholds line may be cut on a narrow screen (its tooltip has it all): it must
        # never make the window wider than the screen.
        self.detail.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
        self.detail.setMinimumWidth(40)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        label = QLabel("Operating point:", self)
        label.setBuddy(self.combo)
        layout.addWidget(label)
        layout.addWidget(self.combo)
        layout.addWidget(self.custom)
        layout.addWidget(self.per_model_button)
        layout.addWidget(self.lock_button)
        layout.addWidget(self.detail)
        self.combo.currentIndexChanged.connect(self._changed)
        self.custom.valueChanged.connect(self._changed)
        self.set_manifests({})

    def set_manifests(self, manifests: Mapping[str, ModelManifest], current: str = "") -> None:
        """Offer the named points every finding model has, the saved site points that fit
        these exact model versions, and a custom threshold."""
        self._manifests = {k: m for k, m in manifests.items() if m.role == "finding"}
        names: list[str] = []
        for manifest in self._manifests.values():
            for name in manifest.operating_points:
                if name not in names and all(
                    name in m.operating_points for m in self._manifests.values()
                ):
                    names.append(name)
        self._sites = self._valid_site_points()
        self.combo.blockSignals(True)
        self.combo.clear()
        for name in names:
            self.combo.addItem(name, name)
        for key in self._sites:
            self.combo.addItem(key, key)
        self.combo.addItem("custom threshold", CUSTOM)
        if len(self._manifests) > 1:
            self.combo.addItem("per model…", PER_MODEL)
        self.combo.blockSignals(False)
        self.set_current(current or (names[0] if names else ""))
        self._apply_lock()

    def _valid_site_points(self) -> dict[str, SitePoint]:
        if not self._manifests:
            return {}
        store = self.site_store or SitePointStore.default()
        try:
            points = store.valid_for(self._manifests)
        except OSError as exc:  # an unreadable data folder must not break the window
            log.warning("cannot read the saved site points: %s", exc)
            return {}
        return {p.choice_name: p for p in points}

    def set_current(self, text: str) -> None:
        """Select from a stored setting: a point name, a site point, a threshold as text, or
        one per model (``tb=balanced,pneumonia=0.6``)."""
        if "=" in text and self.combo.findData(PER_MODEL) >= 0:
            try:
                self._per_model = ThresholdChoice.parse(text, self.site_store)
            except ValueError as exc:
                log.warning("operating point %r not usable: %s", text, exc)
                text = ""
            else:
                self.combo.setCurrentIndex(self.combo.findData(PER_MODEL))
                self._changed()
                return
        if text in self._sites or text.startswith("site:"):
            # A site point no longer offered (deleted, or made for another model version)
            # falls back to the models' default.
            self.combo.setCurrentIndex(max(0, self.combo.findData(text)))
            self._changed()
            return
        choice = ThresholdChoice.parse(text) if text else ThresholdChoice()
        if choice.threshold is not None:
            self.custom.blockSignals(True)
            self.custom.setValue(choice.threshold)
            self.custom.blockSignals(False)
            index = self.combo.findData(CUSTOM)
        else:
            index = self.combo.findData(choice.name) if choice.name else 0
        self.combo.setCurrentIndex(max(0, index))
        self._changed()

    def choice(self) -> ThresholdChoice:
        data = self.combo.currentData()
        if data == PER_MODEL:
            return self._per_model
        if data == CUSTOM:
            return ThresholdChoice(threshold=round(self.custom.value(), 4))
        if data in self._sites:
            return ThresholdChoice(name=data, site=self._sites[data])
        return ThresholdChoice(name=data) if data else ThresholdChoice()

    def setting_text(self) -> str:
        return self.choice().text()

    # -- per model ---------------------------------------------------------------------------
    def edit_per_model(self) -> QDialog:
        """A small dialog: each finding model's point (its named points, the site points
        calibrated on it, or a custom threshold)."""
        dialog = PerModelDialog(self._manifests, self._sites, self._per_model, self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.accepted.connect(lambda: self._set_per_model(dialog.choice()))
        dialog.open()
        return dialog

    def _set_per_model(self, choice: ThresholdChoice) -> None:
        self._per_model = choice
        self.combo.setCurrentIndex(self.combo.findData(PER_MODEL))
        self._changed()

    # -- the administrator's lock ------------------------------------------------------------
    def set_locked(self, reason: str, *, pin: bool = False) -> None:
        """Lock the choice (``reason`` says by whom); ``pin``: the PIN unlocks it for this
        session. An empty reason unlocks."""
        self._lock_reason = reason
        self.lock_button.setVisible(bool(reason))
        self.lock_button.setEnabled(pin)
        self.lock_button.setToolTip(
            f"{reason}. Click and enter the PIN to change it." if pin else reason
        )
        self._apply_lock()

    def is_locked(self) -> bool:
        return bool(self._lock_reason)

    def _apply_lock(self) -> None:
        enabled = bool(self._manifests) and not self._lock_reason
        for widget in (self.combo, self.custom, self.per_model_button):
            widget.setEnabled(enabled)
        tip = f"Locked: {self._lock_reason}" if self._lock_reason else (
            "Operating point: when a score counts as flagged")  # fmt: skip
        self.combo.setToolTip(tip)

    def _ask_pin(self) -> str | None:
        text, ok = QInputDialog.getText(
            self, "Unlock thresholds — MedScreen", "Administrator PIN:", QLineEdit.EchoMode.Password
        )
        return text if ok else None

    def _unlock(self) -> bool:
        if self.pin_check is None:
            return False
        pin = self.ask_pin()
        if pin is None:
            return False
        if not self.pin_check(pin):
            QToolTip.showText(self.lock_button.mapToGlobal(self.lock_button.rect().bottomLeft()),
                              "Wrong PIN")  # fmt: skip
            return False
        self.set_locked("")
        return True

    def _changed(self) -> None:
        choice = self.choice()
        self.custom.setVisible(choice.threshold is not None)
        self.per_model_button.setVisible(self.combo.currentData() == PER_MODEL)
        parts: list[str] = []
        full: list[str] = []
        for manifest in self._manifests.values():
            try:
                point = choice.resolve(manifest)
            except Exception:
                continue
            parts.append(point_text(short_name(manifest), point))
            full.append(point_text(short_name(manifest), point, figures=True))
        self.detail.setText(" · ".join(parts))
        self.detail.setToolTip(
            "\n".join(full) + "\n\n"
            "Sensitivity and specificity measured on validation data at each named point, "
            "or on the site's own labelled scans for a site point (site:…); a custom "
            "threshold has no validated figures. A model with one threshold per patient "
            "group (adult, child) judges each scan at its group's threshold (unknown: "
            "the group is not known); the figures are each group's own."
        )
        emit(self.choice_changed, choice)


def _figures(point: OperatingPoint, site: str = "") -> str:
    if point.sensitivity is None or point.specificity is None:
        return ""
    return f" ({site}sens {point.sensitivity:.2f}, spec {point.specificity:.2f})"


def point_text(name: str, point: OperatingPoint, figures: bool = False) -> str:
    """One model's threshold for the picker's line: ``TB ≥ 0.22 (sens 0.96, spec 0.90)``.

    A point chosen per patient group names each group's own threshold
    (``Pneumonia: adult ≥ 0.69 · child ≥ 0.39 · unknown ≥ 0.59``; with ``figures``, each
    group's own validation figures too, for the tooltip): the pooled figures would describe
    no scan the window judges, and the line must fit beside the picker.
    """
    if not point.by_group:
        site = "site " if isinstance(point, SiteOperatingPoint) else ""
        return f"{name} ≥ {point.threshold:.2f}{_figures(point, site)}"
    groups = [f"{g} ≥ {p.threshold:.2f}{_figures(p) if figures else ''}" for g, p in point.by_group]
    return f"{name}: " + " · ".join([*groups, f"unknown ≥ {point.threshold:.2f}"])


class PerModelDialog(QDialog):
    """One row per finding model: its operating point and, for custom, the threshold."""

    def __init__(
        self,
        manifests: Mapping[str, ModelManifest],
        sites: Mapping[str, SitePoint],
        current: ThresholdChoice,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Operating point per model — MedScreen")
        self.rows: dict[str, tuple[QComboBox, QDoubleSpinBox]] = {}
        form = QFormLayout()
        for model_id, manifest in manifests.items():
            combo = QComboBox(self)
            for name in manifest.operating_points:
                combo.addItem(name, name)
            for key, site in sites.items():
                if site.point_for(manifest) is not None:  # calibrated on this model version
                    combo.addItem(key, key)
            combo.addItem("custom threshold", CUSTOM)
            spin = QDoubleSpinBox(self)
            spin.setRange(0.0, 1.0)
            spin.setDecimals(2)
            spin.setSingleStep(0.05)
            spin.setValue(0.5)
            own = current.per_model.get(model_id)
            if own is not None and own.threshold is not None:
                spin.setValue(own.threshold)
                combo.setCurrentIndex(combo.findData(CUSTOM))
            elif own is not None and own.name:
                combo.setCurrentIndex(max(0, combo.findData(own.name)))
            else:
                combo.setCurrentIndex(max(0, combo.findData(manifest.default_operating_point)))
            spin.setVisible(combo.currentData() == CUSTOM)
            combo.currentIndexChanged.connect(
                lambda _i, c=combo, s=spin: s.setVisible(c.currentData() == CUSTOM)
            )
            row = QHBoxLayout()
            row.addWidget(combo, 1)
            row.addWidget(spin)
            form.addRow(short_name(manifest), row)
            self.rows[model_id] = (combo, spin)
        self._sites = dict(sites)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel, self
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(buttons)

    def choice(self) -> ThresholdChoice:
        per_model: dict[str, ThresholdChoice] = {}
        for model_id, (combo, spin) in self.rows.items():
            data = combo.currentData()
            if data == CUSTOM:
                per_model[model_id] = ThresholdChoice(threshold=round(spin.value(), 4))
            elif data in self._sites:
                per_model[model_id] = ThresholdChoice(name=data, site=self._sites[data])
            else:
                per_model[model_id] = ThresholdChoice(name=data)
        return ThresholdChoice(per_model=per_model)

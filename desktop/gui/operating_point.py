"""Choosing the operating point: a named point from the manifests, or a custom threshold.

Beside the choice it shows what each named point meant on validation data (sensitivity and
specificity per model), because "screening" versus "balanced" is a clinical trade-off the
nurse should see, not a hidden number. Changing it only re-derives flags from stored
probabilities; nothing is screened again.

Saved site operating points (``site:NAME``, set in the Calibrate dialog) are offered only
when they fit the loaded model versions exactly: a site threshold measured on an older model
means nothing for a new one, so it is not offered rather than silently reused.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QWidget,
)

from desktop.engine.manifest import ModelManifest
from desktop.engine.results import ThresholdChoice
from desktop.engine.site_points import SiteOperatingPoint, SitePoint, SitePointStore
from desktop.gui.qt_compat import emit
from desktop.gui.results_model import short_name

log = logging.getLogger(__name__)

CUSTOM = "__custom__"


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
        self.detail = QLabel(self)
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
        self.combo.blockSignals(False)
        self.set_current(current or (names[0] if names else ""))
        self.combo.setEnabled(bool(self._manifests))

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
        """Select from a stored setting: a point name, a site point, or a threshold as text."""
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
        if data == CUSTOM:
            return ThresholdChoice(threshold=round(self.custom.value(), 4))
        if data in self._sites:
            return ThresholdChoice(name=data, site=self._sites[data])
        return ThresholdChoice(name=data) if data else ThresholdChoice()

    def setting_text(self) -> str:
        choice = self.choice()
        return f"{choice.threshold:g}" if choice.threshold is not None else (choice.name or "")

    def _changed(self) -> None:
        choice = self.choice()
        self.custom.setVisible(choice.threshold is not None)
        parts = []
        for manifest in self._manifests.values():
            try:
                point = choice.resolve(manifest)
            except Exception:
                continue
            text = f"{short_name(manifest)} ≥ {point.threshold:.2f}"
            site = "site " if isinstance(point, SiteOperatingPoint) else ""
            if point.sensitivity is not None and point.specificity is not None:
                text += f" ({site}sens {point.sensitivity:.2f}, spec {point.specificity:.2f})"
            parts.append(text)
        self.detail.setText(" · ".join(parts))
        self.detail.setToolTip(
            "Sensitivity and specificity measured on validation data at each named point, "
            "or on the site's own labelled scans for a site point (site:…); a custom "
            "threshold has no validated figures."
        )
        emit(self.choice_changed, choice)

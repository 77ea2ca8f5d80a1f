"""Settings: what the report says about who screened, and whether it names the patient."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QVBoxLayout,
    QWidget,
)

from desktop.gui.settings import AppSettings


class SettingsDialog(QDialog):
    def __init__(self, settings: AppSettings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings — MedScreen")
        self._settings = settings
        self.clinic = QLineEdit(settings.clinic_name, self)
        self.clinic.setPlaceholderText("e.g. Kisumu District Hospital, X-ray unit")
        self.operator = QLineEdit(settings.operator, self)
        self.operator.setPlaceholderText("who ran the screening")
        self.identifiers = QCheckBox("Include patient identifiers in reports", self)
        self.identifiers.setChecked(settings.include_identifiers)
        note = QLabel(
            "Off by default: patients' names, IDs and birth dates, study dates and "
            "descriptions (from DICOM files, or an ID typed in the viewer) stay out of every "
            "report (PDF, CSV, JSON) unless this is ticked. Reports are files that travel.",
            self,
        )
        note.setWordWrap(True)
        note.setForegroundRole(self.palette().ColorRole.PlaceholderText)

        self.pin = QLineEdit(self)
        self.pin.setEchoMode(QLineEdit.EchoMode.Password)
        self.pin.setMaxLength(32)
        if settings.has_pin:
            self.pin.setPlaceholderText("enter the current PIN to remove the lock")
        else:
            self.pin.setPlaceholderText("set a PIN to lock the operating point")
        self.remove_pin = QCheckBox("Remove the PIN lock", self)
        self.remove_pin.setVisible(settings.has_pin)
        self.pin_note = QLabel(
            "An administrator's PIN locks the operating point (thresholds per model): it can "
            "then be changed only after entering the PIN. A programme can instead deploy a "
            "read-only policy file (see the README).",
            self,
        )
        self.pin_note.setWordWrap(True)
        self.pin_note.setForegroundRole(self.palette().ColorRole.PlaceholderText)

        form = QFormLayout()
        form.addRow("Clinic name", self.clinic)
        form.addRow("Operator", self.operator)
        form.addRow("", self.identifiers)
        form.addRow("", note)
        form.addRow("Administrator PIN", self.pin)
        form.addRow("", self.remove_pin)
        form.addRow("", self.pin_note)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel, self
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(buttons)
        self.setMinimumWidth(460)

    def accept(self) -> None:
        self._settings.clinic_name = self.clinic.text().strip()
        self._settings.operator = self.operator.text().strip()
        self._settings.include_identifiers = self.identifiers.isChecked()
        pin = self.pin.text()
        if self._settings.has_pin and self.remove_pin.isChecked():
            if not self._settings.check_pin(pin):
                self.pin_note.setText("Wrong PIN: the lock stays. Nothing was saved.")
                return
            self._settings.set_pin("")
        elif pin and not self._settings.has_pin:
            self._settings.set_pin(pin)
        self._settings.sync()
        super().accept()

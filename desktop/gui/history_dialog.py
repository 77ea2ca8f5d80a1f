"""The batch history a programme reads: one row per folder and model version, re-runs merged.

Rows come from :func:`desktop.engine.history.history_rows` (computed in a worker by the main
window: counting reads every stored result). The dialog reopens a folder's latest run,
searches, deletes a folder's batches (with their thumbnails) after asking, and sets how long
batches are kept (the retention the window applies at start-up). A site calibration's runs
(labelled scans, Tools → Calibrate) say so in the Kind column, in italics, and can be hidden,
so that staff never read one as a clinic's batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from PySide6.QtCore import QModelIndex, Qt, Signal
from PySide6.QtGui import QResizeEvent, QShowEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QSpinBox,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from desktop.engine.clock import local_text
from desktop.engine.history import HistoryRow
from desktop.engine.paths import display_path
from desktop.gui.qt_compat import emit
from desktop.gui.results_view import fit_widths
from desktop.gui.screen_fit import fit_to_screen

#: What a column that gives way keeps at least (its text cut with "…", the tooltip whole).
_GIVES_WAY_TO = {
    "Last run": "2026-12-02 08:59 …",
    "Folder": "/data/…/scans",
    "Model versions": "modality 2.1…",
    "Operator": "Nurse A…",
}


class _CutAtEnd(QStyledItemDelegate):
    """Cut a cell's text at its end: a time cut in its middle ("2026-12…+00:00)", the
    table's mode, kept for paths) lost the date and hour a reader looks for."""

    def initStyleOption(self, option: QStyleOptionViewItem, index: QModelIndex) -> None:
        super().initStyleOption(option, index)
        option.textElideMode = Qt.TextElideMode.ElideRight  # type: ignore[attr-defined]


def _two_lines(heading: str) -> str:
    """A heading of two or more words on two lines, split after its first word."""
    first, _, rest = heading.partition(" ")
    return f"{first}\n{rest}" if rest else heading


class HistoryDialog(QDialog):
    """Lists history rows; ``chosen`` is the batch id to reopen (the group's newest run)."""

    #: The user confirmed deleting these batch ids (the window deletes them in a worker).
    delete_requested = Signal(list)
    #: The retention setting changed: days (0 = keep every batch).
    retention_changed = Signal(int)

    def __init__(
        self,
        rows: Sequence[HistoryRow],
        finding_names: Sequence[tuple[str, str]] = (),
        retention_days: int = 0,
        parent: QWidget | None = None,
        confirm: Callable[[str], bool] | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Batch history — MedScreen")
        self.resize(1100, 480)
        self.chosen: str | None = None
        self._rows = list(rows)
        self._names = list(finding_names)  # (model id, short name) of the flag columns
        self._confirm = confirm or self._ask

        self.search = QLineEdit(self)
        self.search.setPlaceholderText("Search folders, operators, model versions…")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(self._filter)
        self.show_calibration = QCheckBox("Show calibration runs", self)
        self.show_calibration.setChecked(True)
        self.show_calibration.setToolTip(
            "Calibration runs screen labelled scans to set a site threshold (Tools → "
            "Calibrate, medscreen calibrate); they are not a clinic's screening batches."
        )
        self.show_calibration.toggled.connect(lambda _on: self._filter(self.search.text()))
        self.retention = QSpinBox(self)
        self.retention.setRange(0, 3650)
        self.retention.setSpecialValueText("forever")
        self.retention.setSuffix(" days")
        self.retention.setValue(max(0, retention_days))
        self.retention.setToolTip(
            "Batches started longer ago than this are deleted, with their thumbnails, when "
            "MedScreen starts (readers' decisions stay)."
        )
        self.retention.valueChanged.connect(lambda v: emit(self.retention_changed, int(v)))
        top = QHBoxLayout()
        top.addWidget(self.search, 1)
        top.addWidget(self.show_calibration)
        top.addWidget(QLabel("Keep batches for", self))
        top.addWidget(self.retention)

        columns = ["Last run", "Kind", "Folder", "Model versions", "Runs", "Screened"]
        columns += [f"Flagged {name}" for _, name in self._names]
        columns += ["Not chest X-rays", "Errors", "Operator"]
        self.columns = columns
        table = QTableWidget(0, len(columns), self)
        # headings of two words on two lines, as the results table's: a column is as wide as
        # its numbers, not its heading ("Flagged Pneumonia", "Not chest X-rays")
        table.setHorizontalHeaderLabels([_two_lines(name) for name in columns])
        table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        table.setWordWrap(False)
        table.setTextElideMode(Qt.TextElideMode.ElideMiddle)  # keep both ends of a path
        table.verticalHeader().setVisible(False)
        header = table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)  # fitted: _fit_columns
        self._cut_at_end = _CutAtEnd(table)
        for name in ("Last run", "Model versions", "Operator"):
            table.setItemDelegateForColumn(columns.index(name), self._cut_at_end)
        table.doubleClicked.connect(lambda _index: self._choose())
        self.table = table
        self._fill()

        buttons = QDialogButtonBox(self)
        self.open_button = buttons.addButton("Open", QDialogButtonBox.ButtonRole.AcceptRole)
        self.delete_button = buttons.addButton(
            "Delete…", QDialogButtonBox.ButtonRole.DestructiveRole
        )
        buttons.addButton(QDialogButtonBox.StandardButton.Close)
        buttons.accepted.connect(self._choose)
        buttons.rejected.connect(self.reject)
        self.delete_button.clicked.connect(self._delete)
        table.itemSelectionChanged.connect(self._selection_changed)
        self._selection_changed()

        layout = QVBoxLayout(self)
        note = QLabel(
            "One row per folder and model version: re-runs are merged, each file counted once "
            "(its latest result). Flags are counted at the operating point chosen now.",
            self,
        )
        note.setWordWrap(True)
        layout.addWidget(note)
        layout.addLayout(top)
        self.empty = QLabel("No batches yet.", self)
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty.setVisible(not self._rows)
        layout.addWidget(self.empty)
        layout.addWidget(table, 1)
        layout.addWidget(buttons)

    def showEvent(self, event: QShowEvent) -> None:
        """Fit the dialog to its screen (1100 px is wider than a 1366×768 screen at 150 %,
        911 logical pixels) and its columns to the table, once the sizes are known."""
        super().showEvent(event)
        fit_to_screen(self)
        self._fit_columns()

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self._fit_columns()

    def _fit_columns(self) -> None:
        """Every column within the table's width at the dialog's size: the columns sized to
        their contents went past its right edge (Not chest X-rays, Errors and Operator cut
        off at the default size, at 100 % too), while the folder had 100 px. Where they do
        not all fit, the time, folder, model versions and operators give way (cut with "…",
        the tooltip whole) in proportion; otherwise the folder takes the room left."""
        table, header = self.table, self.table.horizontalHeader()
        text = table.fontMetrics().horizontalAdvance
        preferred: list[int] = []
        floor: list[int] = []
        for col, name in enumerate(self.columns):
            want = max(table.sizeHintForColumn(col), header.sectionSizeHint(col))
            preferred.append(want)
            least = _GIVES_WAY_TO.get(name)
            floor.append(min(want, text(least) + 16) if least else want)
        room = table.viewport().width()
        widths = fit_widths(preferred, floor, room)
        folder = self.columns.index("Folder")
        widths[folder] += max(0, room - sum(widths))
        for col, width in enumerate(widths):
            header.resizeSection(col, width)

    def _fill(self) -> None:
        self.table.setRowCount(len(self._rows))
        for row, info in enumerate(self._rows):
            counts = info.counts
            values = [
                local_text(info.last_started),  # as the reports show a time
                info.kind_text,
                display_path(info.folder),
                info.model_versions(),
                str(info.runs),
                "" if counts is None else str(counts.screened),
            ]
            for model_id, _ in self._names:
                flagged = None if counts is None else counts.flagged.get(model_id)
                values.append("–" if flagged is None else str(flagged))
            values += [
                "" if counts is None else str(counts.not_chest_xray),
                "" if counts is None else str(counts.errors),
                ", ".join(info.operators) or "—",
            ]
            for col, value in enumerate(values):
                item = QTableWidgetItem(value)
                name = self.columns[col]
                if name == "Folder":
                    item.setToolTip(value.replace("; ", "\n"))
                if name == "Model versions":
                    item.setToolTip(f"{value}\n{info.models_key}")
                if name in ("Last run", "Operator"):  # may be cut to fit
                    item.setToolTip(value)
                if col > self.columns.index("Model versions") and col < len(values) - 1:
                    item.setTextAlignment(
                        Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
                    )
                if info.is_calibration:  # the whole row reads as "not a clinic batch"
                    font = item.font()
                    font.setItalic(True)
                    item.setFont(font)
                    item.setToolTip(
                        (item.toolTip() + "\n\n" if item.toolTip() else "")
                        + "Calibration run: labelled scans screened to set a site threshold, "
                        "not a clinic's screening batch"
                    )
                self.table.setItem(row, col, item)
        if self._rows:
            self.table.selectRow(0)

    def visible_rows(self) -> list[HistoryRow]:
        return [r for i, r in enumerate(self._rows) if not self.table.isRowHidden(i)]

    def _filter(self, text: str) -> None:
        shown = self.show_calibration.isChecked()
        for i, row in enumerate(self._rows):
            self.table.setRowHidden(i, not row.matches(text) or (row.is_calibration and not shown))

    def _selected(self) -> HistoryRow | None:
        rows = self.table.selectionModel().selectedRows()
        if not rows or self.table.isRowHidden(rows[0].row()):
            return None
        return self._rows[rows[0].row()]

    def _selection_changed(self) -> None:
        chosen = self._selected()
        self.open_button.setEnabled(chosen is not None)
        self.delete_button.setEnabled(chosen is not None)

    def _choose(self) -> None:
        chosen = self._selected()
        if chosen is None:
            return
        self.chosen = chosen.batch_ids[0]
        self.accept()

    def _ask(self, text: str) -> bool:
        answer = QMessageBox.question(
            self,
            "Delete batches — MedScreen",
            text,
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
            QMessageBox.StandardButton.Cancel,
        )
        return answer == QMessageBox.StandardButton.Yes

    def _delete(self) -> None:
        chosen = self._selected()
        if chosen is None:
            return
        runs = f"{chosen.runs} run{'s' if chosen.runs != 1 else ''}"
        if not self._confirm(
            f"Delete the {runs} of {display_path(chosen.folder)} ({chosen.model_versions()}) "
            "with their results and thumbnails? Reports already written are not affected."
        ):
            return
        index = self._rows.index(chosen)
        self._rows.pop(index)
        self.table.removeRow(index)
        self.empty.setVisible(not self._rows)
        emit(self.delete_requested, list(chosen.batch_ids))

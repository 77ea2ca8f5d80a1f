"""Past batches from the results store, to reopen one in the table (or resume it)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QDialogButtonBox,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from desktop.engine.store import BatchInfo

COLUMNS = ("Started", "Inputs", "Status", "Done / total", "Errors", "Device")


class HistoryDialog(QDialog):
    """Lists ``store.batches()``; ``chosen`` is the batch id to reopen after ``exec()``.

    A short, read-only list of at most a few hundred rows: a QTableWidget is the right tool
    here (the results table, which can hold thousands of rows, uses a real model).
    """

    def __init__(self, batches: list[BatchInfo], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Batch history — MedScreen")
        self.resize(900, 420)
        self.chosen: str | None = None
        self._batches = batches

        table = QTableWidget(len(batches), len(COLUMNS), self)
        table.setHorizontalHeaderLabels(COLUMNS)
        table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        table.verticalHeader().setVisible(False)
        for row, info in enumerate(batches):
            first = Path(info.inputs[0]).name if info.inputs else "(none)"
            more = f" +{len(info.inputs) - 1}" if len(info.inputs) > 1 else ""
            values = (
                info.started_at[:19].replace("T", " "),
                first + more,
                info.status,
                f"{info.done} / {info.total if info.total is not None else '?'}",
                str(info.errors),
                info.device,
            )
            for col, value in enumerate(values):
                item = QTableWidgetItem(value)
                if col == 1:
                    item.setToolTip("\n".join(info.inputs))
                table.setItem(row, col, item)
        header = table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        table.doubleClicked.connect(lambda _index: self._choose())
        if batches:
            table.selectRow(0)
        self.table = table

        buttons = QDialogButtonBox(self)
        self.open_button = buttons.addButton("Open", QDialogButtonBox.ButtonRole.AcceptRole)
        buttons.addButton(QDialogButtonBox.StandardButton.Cancel)
        self.open_button.setEnabled(bool(batches))
        buttons.accepted.connect(self._choose)
        buttons.rejected.connect(self.reject)

        layout = QVBoxLayout(self)
        note = QLabel(
            "Batches screened on this computer. Open one to review its results or export its "
            "report again; flags follow the operating point chosen now.",
            self,
        )
        note.setWordWrap(True)
        layout.addWidget(note)
        if not batches:
            empty = QLabel("No batches yet.", self)
            empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
            layout.addWidget(empty)
        layout.addWidget(table, 1)
        layout.addWidget(buttons)

    def _choose(self) -> None:
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return
        self.chosen = self._batches[rows[0].row()].id
        self.accept()

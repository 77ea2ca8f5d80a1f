"""The results table view: sorting, opening a scan (double-click or Enter) and taking drops.

The view only displays; rows come from :class:`~desktop.gui.results_model.ResultsModel`
through a :class:`~desktop.gui.results_model.ResultsProxy`. Drops on an item view arrive at
its viewport and are routed here by QAbstractItemView, so the table takes more scans while
showing results.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QModelIndex, QSize, Qt, Signal
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableView, QWidget

from desktop.engine.results import STATUS_TEXT, ScanResult
from desktop.gui.drop_area import FileDropTarget
from desktop.gui.qt_compat import emit
from desktop.gui.results_model import THUMB_HEIGHT, Column, ResultRole, ResultsModel, ResultsProxy


class ResultsView(FileDropTarget, QTableView):
    open_requested = Signal(object)  # ScanResult
    paths_dropped = Signal(list)  # list[Path]

    def __init__(self, proxy: ResultsProxy, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setModel(proxy)
        self.setSortingEnabled(True)
        self.sortByColumn(-1, Qt.SortOrder.AscendingOrder)  # arrival order until a click
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setAlternatingRowColors(True)
        self.setWordWrap(False)
        self.setTextElideMode(Qt.TextElideMode.ElideMiddle)  # keep the end of file names
        self.setIconSize(QSize(THUMB_HEIGHT * 4 // 3, THUMB_HEIGHT))
        self.verticalHeader().setVisible(False)
        self.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        self.verticalHeader().setDefaultSectionSize(THUMB_HEIGHT + 6)
        header = self.horizontalHeader()
        header.setStretchLastSection(True)
        header.setSectionsMovable(True)
        header.setHighlightSections(False)
        self.setAcceptDrops(True)
        self.viewport().setAcceptDrops(True)
        self.setDragDropMode(QAbstractItemView.DragDropMode.DropOnly)
        self.doubleClicked.connect(self.open_index)
        proxy.modelReset.connect(self.apply_column_widths)

    def apply_column_widths(self) -> None:
        """Sensible widths for the current columns (they change with the loaded models)."""
        model = self._source()
        if model is None:
            return
        metrics = self.fontMetrics()
        header = self.horizontalHeader()
        for col in range(model.columnCount()):
            kind = model.column_kind(col)
            width = {
                Column.THUMB: THUMB_HEIGHT * 4 // 3 + 12,
                Column.FILE: metrics.horizontalAdvance("tb_positive_CHNCXR_0336_1.png") + 16,
                Column.MODALITY: metrics.horizontalAdvance("Modality") + 24,
                Column.PATIENT: metrics.horizontalAdvance("child (staff, this scan)") + 16,
                Column.SCORE: metrics.horizontalAdvance("Pneumonia score") + 20,
                Column.FLAG: metrics.horizontalAdvance("Pneumonia flag") + 28,
                Column.STATUS: max(map(metrics.horizontalAdvance, STATUS_TEXT.values())) + 24,
                Column.REASON: metrics.horizontalAdvance("M") * 20,
            }[kind]
            header.resizeSection(col, width)

    def _source(self) -> ResultsModel | None:
        proxy = self.model()
        source = proxy.sourceModel() if isinstance(proxy, ResultsProxy) else None
        return source if isinstance(source, ResultsModel) else None

    def result_at(self, index: QModelIndex) -> ScanResult | None:
        value = index.data(ResultRole) if index.isValid() else None
        return value if isinstance(value, ScanResult) else None

    def selected_results(self) -> list[ScanResult]:
        rows = sorted({i.row() for i in self.selectionModel().selectedRows()})
        out = [self.result_at(self.model().index(r, 0)) for r in rows]
        return [r for r in out if r is not None]

    def open_index(self, index: QModelIndex) -> None:
        result = self.result_at(index)
        if result is not None:
            emit(self.open_requested, result)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and self.currentIndex().isValid():
            self.open_index(self.currentIndex())
            return
        super().keyPressEvent(event)

    # -- drops -----------------------------------------------------------------------------
    def files_dropped(self, paths: list[Path]) -> None:
        emit(self.paths_dropped, paths)

"""The results table view: sorting, opening a scan (double-click or Enter) and taking drops.

The view only displays; rows come from :class:`~desktop.gui.results_model.ResultsModel`
through a :class:`~desktop.gui.results_model.ResultsProxy`. Drops on an item view arrive at
its viewport and are routed here by QAbstractItemView, so the table takes more scans while
showing results.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QModelIndex, QSize, Qt, Signal
from PySide6.QtGui import QKeyEvent, QPaintEvent
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableView, QWidget

from desktop.engine.results import STATUS_TEXT, ScanResult
from desktop.gui.drop_area import FileDropTarget
from desktop.gui.elide import WordElideDelegate
from desktop.gui.qt_compat import emit
from desktop.gui.results_model import Column, ResultRole, ResultsModel, ResultsProxy


def compact_row_height(font_height: int) -> int:
    """A table row of one text line with a little air (22 px at a 16 px font)."""
    return max(18, font_height + 6)


class ResultsView(FileDropTarget, QTableView):
    open_requested = Signal(object)  # ScanResult
    paths_dropped = Signal(list)  # list[Path]

    def __init__(self, proxy: ResultsProxy, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setModel(proxy)
        self.setSortingEnabled(True)
        # The engine's triage order (the Attention column, first) until the user sorts.
        self.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setAlternatingRowColors(True)
        self.setWordWrap(False)
        self.setTextElideMode(Qt.TextElideMode.ElideMiddle)  # keep the end of file names
        # Compact rows (one line of text): 25+ rows on a 1366×768 screen. The thumbnail is
        # an icon of the row's height; the viewer shows the scan itself.
        row = compact_row_height(self.fontMetrics().height())
        self.setIconSize(QSize((row - 2) * 4 // 3, row - 2))
        self.verticalHeader().setVisible(False)
        self.verticalHeader().setMinimumSectionSize(row)
        self.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        self.verticalHeader().setDefaultSectionSize(row)
        header = self.horizontalHeader()
        header.setStretchLastSection(True)
        header.setSectionsMovable(True)
        header.setHighlightSections(False)
        self.setAcceptDrops(True)
        self.viewport().setAcceptDrops(True)
        self.setDragDropMode(QAbstractItemView.DragDropMode.DropOnly)
        self.doubleClicked.connect(self.open_index)
        self._word_elide = WordElideDelegate(self)
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
                Column.TRIAGE: metrics.horizontalAdvance("Pneumonia +100 %") + 16,
                Column.THUMB: self.iconSize().width() + 12,
                Column.FILE: metrics.horizontalAdvance("tb_positive_CHNCXR_0336_1.png") + 16,
                Column.MODALITY: metrics.horizontalAdvance("Modality") + 24,
                Column.PATIENT: metrics.horizontalAdvance("Patient  child (image)") + 8,
                Column.SCORE: metrics.horizontalAdvance("Pneumonia score") + 20,
                Column.FLAG: metrics.horizontalAdvance("Pneumonia flag") + 28,
                Column.DECISION: metrics.horizontalAdvance("Needs follow-up") + 16,
                Column.STATUS: max(map(metrics.horizontalAdvance, STATUS_TEXT.values())) + 24,
                Column.REASON: metrics.horizontalAdvance("M") * 20,
            }[kind]
            header.resizeSection(col, width)
            # warnings end at a whole word when the column is narrow (the tooltip has all)
            self.setItemDelegateForColumn(
                col, self._word_elide if kind is Column.REASON else self.itemDelegate()
            )

    def _source(self) -> ResultsModel | None:
        proxy = self.model()
        source = proxy.sourceModel() if isinstance(proxy, ResultsProxy) else None
        return source if isinstance(source, ResultsModel) else None

    def result_at(self, index: QModelIndex) -> ScanResult | None:
        value = index.data(ResultRole) if index.isValid() else None
        return value if isinstance(value, ScanResult) else None

    def selected_rows(self) -> list[int]:
        """The selected rows as the source model's rows, in the table's order (numbers: a
        selection of 20,000 rows reads none of them back)."""
        proxy = self.model()
        rows = sorted({i.row() for i in self.selectionModel().selectedRows()})
        if not isinstance(proxy, ResultsProxy):
            return rows
        return [proxy.mapToSource(proxy.index(r, 0)).row() for r in rows]

    def selected_results(self) -> list[ScanResult]:
        """The selected rows' results (each read back from the store): small selections."""
        model = self._source()
        if model is None:
            return []
        return list(model.iter_results(self.selected_rows()))

    def paintEvent(self, event: QPaintEvent) -> None:
        """Before painting, have the rows around the visible ones read back from the store
        in one query, rather than one query per row as the cells ask."""
        self._prefetch()
        super().paintEvent(event)

    def _prefetch(self) -> None:
        model = self._source()
        proxy = self.model()
        count = proxy.rowCount() if proxy is not None else 0
        if model is None or not count:
            return
        top = max(0, self.rowAt(0))
        bottom = self.rowAt(self.viewport().height() - 1)
        bottom = count - 1 if bottom < 0 else bottom
        span = bottom - top + 1
        first, last = max(0, top - span), min(count - 1, bottom + span)
        model.prefetch(proxy.mapToSource(proxy.index(r, 0)).row() for r in range(first, last + 1))

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

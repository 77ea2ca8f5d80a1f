"""The results table view: sorting, opening a scan (double-click or Enter) and taking drops.

The view only displays; rows come from :class:`~desktop.gui.results_model.ResultsModel`
through a :class:`~desktop.gui.results_model.ResultsProxy`. Drops on an item view arrive at
its viewport and are routed here by QAbstractItemView, so the table takes more scans while
showing results.
"""

from __future__ import annotations

import math
from pathlib import Path

from PySide6.QtCore import QEvent, QModelIndex, QPersistentModelIndex, QSize, Qt, Signal
from PySide6.QtGui import QKeyEvent, QPaintEvent, QResizeEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTableView,
    QWidget,
)

from desktop.engine.results import STATUS_TEXT, ScanResult
from desktop.gui.drop_area import FileDropTarget
from desktop.gui.elide import WordElideDelegate
from desktop.gui.qt_compat import emit
from desktop.gui.results_model import Column, ResultRole, ResultsModel, ResultsProxy


def compact_row_height(font_height: int) -> int:
    """A table row of one text line with a little air (22 px at a 16 px font)."""
    return max(18, font_height + 6)


def fit_widths(preferred: list[int], floor: list[int], available: int) -> list[int]:
    """Column widths that fit ``available`` pixels where they can: each column's preferred
    width, or, when those add up to more, the columns that can give way shrunk toward their
    floors in proportion to what each can spare. Never below a floor: a table wider than the
    floors allow scrolls."""
    excess = sum(preferred) - available
    spare = [p - f for p, f in zip(preferred, floor, strict=True)]
    if excess <= 0 or not sum(spare):
        return list(preferred)
    share = min(1.0, excess / sum(spare))
    return [p - math.ceil(s * share) for p, s in zip(preferred, spare, strict=True)]


class _CutInMiddle(QStyledItemDelegate):
    """A file name too long for its column cut in its middle: its end tells scans apart
    (the tooltip has the whole path)."""

    def initStyleOption(
        self, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex
    ) -> None:
        super().initStyleOption(option, index)
        option.textElideMode = Qt.TextElideMode.ElideMiddle  # type: ignore[attr-defined]


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
        # Tab leaves the table for the next control, as in any form; QTableView's default
        # moved an invisible current cell along the selected row, so a keyboard user could
        # never reach the search or the filters again (arrows move between rows).
        self.setTabKeyNavigation(False)
        self.setAlternatingRowColors(True)
        self.setWordWrap(False)
        # Text too long for its column is cut at its end ("Pneumonia +…", "flagg…"); file
        # names in their middle, keeping the end that tells scans apart (_CutInMiddle). The
        # whole table cut in the middle read "Pneu…00 %" and "fl…ed" at 150 % scaling.
        self.setTextElideMode(Qt.TextElideMode.ElideRight)
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
        self._middle_elide = _CutInMiddle(self)
        self._fitting = False  # resizing sections ourselves (not the user)
        self._user_sized = False  # the user dragged a column: no more fitting to the width
        self._fitted_to = -1  # the viewport width the columns were last fitted to
        header.sectionResized.connect(self._section_resized)
        proxy.modelReset.connect(self.apply_column_widths)

    def apply_column_widths(self) -> None:
        """Sensible widths for the current columns (they change with the loaded models), fitted
        to the table's width so the Status and Reason columns stay on screen.

        Each column's preferred width follows its own header and the widest usual content;
        where they do not all fit (a 1366×768 laptop with two finding models), the file name
        (cut in its middle), the patient group's padding and the reason (its tooltip has the
        whole text) give way down to a floor, in proportion to what they can spare; columns
        whose cut text would say nothing (attention, decision, scores, flags, status) keep
        their width. Until the
        user drags a column, the fit follows the window's width.
        """
        model = self._source()
        if model is None:
            return
        metrics = self.fontMetrics()
        header = self.horizontalHeader()
        text = metrics.horizontalAdvance
        icon = self.iconSize().height() + 8  # a flag's pennant or the warning sign beside text

        def heading(col: int) -> int:
            label = str(model.headerData(col, Qt.Orientation.Horizontal) or "")
            return max(map(text, label.splitlines() or [""])) + 24  # and the sort arrow

        # a file name cut in its middle still tells the scan apart down to about this width
        file_want, file_least = (
            text("tb_positive_CHNCXR_0336_1.png") + 16,
            text("CHNCXR_0336_1.png") + 16,
        )
        # Where even the floors do not fit (1366×768 at 125 or 150 %: 1071 or 891 logical
        # pixels for about 1240 of floors), every column but the thumbnail and the Status
        # gives way further, to what still starts its text (cut with "…", the tooltip whole):
        # the Status and the Reason were off screen, to be scrolled to sideways.
        tight = {
            Column.TRIAGE: text("Pneum…") + 16,
            Column.THUMB: self.iconSize().width() + 12,
            Column.FILE: text("…36_1.png") + 16,
            Column.MODALITY: text("CXR") + 16,
            Column.PATIENT: text("adult…") + 12,
            Column.SCORE: text("0.00") + 16,
            Column.FLAG: text("yes") + icon + 12,
            Column.DECISION: text("Follow…") + 12,
            Column.STATUS: max(map(text, STATUS_TEXT.values())) + 24,
            Column.REASON: text("⚠ TB: adul…") + icon,
        }
        preferred: list[int] = []
        floor: list[int] = []
        last: list[int] = []
        for col in range(model.columnCount()):
            kind = model.column_kind(col)
            want, least = {
                Column.TRIAGE: (text("Pneumonia +100 %") + 16,) * 2,  # cut, it says nothing
                Column.THUMB: (self.iconSize().width() + 12, self.iconSize().width() + 12),
                Column.FILE: (file_want, file_least),
                Column.MODALITY: (heading(col), heading(col)),
                Column.PATIENT: (text("Patient  child (image)") + 8, text("child (image)") + 12),
                Column.SCORE: (max(heading(col), text("0.00") + 16),) * 2,
                Column.FLAG: (max(heading(col), text("outside scope") + icon + 12),) * 2,
                Column.DECISION: (text("Needs follow-up") + 16,) * 2,
                Column.STATUS: (max(map(text, STATUS_TEXT.values())) + 24,) * 2,
                Column.REASON: (text("M") * 20, text("⚠ TB: adults only") + icon),
            }[kind]
            preferred.append(want)
            floor.append(min(least, want))
            last.append(min(tight[kind], least, want))
            # warnings end at a whole word when the column is narrow (the tooltip has all)
            delegate = {Column.REASON: self._word_elide, Column.FILE: self._middle_elide}
            self.setItemDelegateForColumn(col, delegate.get(kind, self.itemDelegate()))
        room = self.viewport().width()
        widths = fit_widths(fit_widths(preferred, floor, room), last, room)
        self._fitted_to = room
        self._fitting = True
        try:
            for col, width in enumerate(widths):
                header.resizeSection(col, width)
        finally:
            self._fitting = False

    def _section_resized(self, col: int, _old: int, _new: int) -> None:
        header = self.horizontalHeader()
        last = header.logicalIndex(header.count() - 1)
        # the header itself stretches the last column to the viewport's edge: not a drag (it
        # counted as one, so the columns were never fitted again, to a scroll bar or a
        # narrower window)
        if not self._fitting and col != last:  # the user dragged a column: widths stay
            self._user_sized = True

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        if not self._user_sized and event.size().width() != event.oldSize().width():
            self.apply_column_widths()

    def viewportEvent(self, event: QEvent) -> bool:
        """Fit again when the viewport's width changes with the view's the same: the
        vertical scroll bar appears once the rows pass the table's height, and the columns
        fitted to the wider viewport went under it (Reason cut, a sideways scroll)."""
        handled = super().viewportEvent(event)
        if event.type() == QEvent.Type.Resize and not self._user_sized:
            width = self.viewport().width()
            if width != self._fitted_to:
                self.apply_column_widths()
        return handled

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

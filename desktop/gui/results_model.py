"""The results table: a real QAbstractTableModel over ScanResults, plus its sort/filter proxy.

Flags are not stored anywhere in the model. Each ``data()`` call derives them from the stored
probabilities and the current :class:`ThresholdChoice` with the engine's flag rule
(:func:`desktop.engine.results.finding_flags`), so changing the operating point is one
``dataChanged`` signal and no inference. The counts are the engine's :class:`BatchCounts` and
the status words its :data:`STATUS_TEXT`: the window, the CLI and the reports cannot drift.

Scope works the same way: the engine's :class:`~desktop.engine.results.ScopeRule` (the
manifests' scopes and the staff's :class:`~desktop.engine.patients.PatientChoice`) is applied
in ``data()``; a score outside its model's scope is greyed with a short reason, an icon and
the whole reason in the tooltip, and raises no flag. Changing the batch's patient group or
one scan's override is one ``set_patients`` call.

Rows hold results without their thumbnail bytes when the model has a thumbnail loader (the
results store): a row's thumbnail is fetched and decoded only when the row is painted, and a
bounded cache keeps the recent pixmaps, so a 10,000-row batch holds neither 10,000 PNGs nor
10,000 pixmaps. Each row is kept compact (:func:`compact_row`: the strings every row repeats
shared) and its triage key as three numbers in typed arrays, not an object a row
(``benchmarks/bench_gui_memory.py`` measures the window's memory on 20,000 scans).
"""

from __future__ import annotations

import enum
import logging
import sys
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PySide6.QtCore import (
    QAbstractTableModel,
    QBuffer,
    QByteArray,
    QIODevice,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QSize,
    QSortFilterProxyModel,
    Qt,
)
from PySide6.QtGui import QGuiApplication, QImageReader, QPixmap

from desktop.engine.decisions import ReaderDecision, scan_key
from desktop.engine.manifest import ModelManifest, OperatingPoint
from desktop.engine.paths import display_path
from desktop.engine.patients import GroupDecision, PatientChoice, ScopeVerdict
from desktop.engine.quality import quality_of, shown_modality
from desktop.engine.results import (
    BatchCounts,
    ScanResult,
    ScanStatus,
    ScopeRule,
    ThresholdChoice,
    any_flagged,
    finding_flags,
    operating_points,
    status_text,
)
from desktop.engine.triage import TriageGroup, TriageKey, attention, strongest, triage_key
from desktop.gui.elide import warning_pixmap
from desktop.gui.flags import FLAGGED_TEXT, NOT_FLAGGED_TEXT, flag_pixmap
from desktop.gui.qt_compat import emit

if TYPE_CHECKING:
    from desktop.engine.reports.source import WithThumbnails

log = logging.getLogger(__name__)

THUMB_HEIGHT = 48
THUMB_CACHE = 400
#: Rows whose flags and scope verdicts are kept (see ResultsModel._derive): a repaint asks
#: for them once per cell and role, and the visible rows are far fewer than this.
DERIVED_CACHE = 2000

#: A row's result with what the table derives from it (see ResultsModel._derive).
_Derived = tuple[ScanResult, dict[str, bool | None], dict[str, ScopeVerdict], GroupDecision]

SortRole = Qt.ItemDataRole.UserRole + 1
ResultRole = Qt.ItemDataRole.UserRole + 2
FlaggedRole = Qt.ItemDataRole.UserRole + 3  # any finding flagged (bool)

_ModelIndex = QModelIndex | QPersistentModelIndex

#: Shown before a short warning or scope reason in the table (the whole text is the tooltip).
WARNING_MARK = "⚠"
#: Longest short form of a warning in the table; longer ones end at a word, with "…".
SHORT_WARNING_CHARS = 72


def short_name(manifest: ModelManifest) -> str:
    """The column and flag label of a finding model: its manifest's ``display.short_name``."""
    return manifest.short_name


def reading_order(manifests: Mapping[str, ModelManifest]) -> dict[str, ModelManifest]:
    """The gate first, then the findings in their manifests' display order."""

    def rank(model_id: str) -> tuple[int, tuple[float, str]]:
        manifest = manifests[model_id]
        return (0 if manifest.role != "finding" else 1, manifest.display_order)

    return {k: manifests[k] for k in sorted(manifests, key=rank)}


def short_warning(text: str, limit: int = SHORT_WARNING_CHARS) -> str:
    """A warning's short form for a table cell: its first clause, never cut mid-word.

    Warnings are written "what: why"; the part before the first colon says what. When even
    that is longer than ``limit`` it ends at the last whole word that fits, with "…".
    """
    head = text.split(": ", 1)[0].strip()
    if len(head) <= limit:
        return head + ("…" if head != text.strip() else "")
    cut = ""
    for word in head.split():
        if len(cut) + len(word) + 1 > limit - 1:
            break
        cut = f"{cut} {word}" if cut else word
    return (cut or head[: limit - 1]).rstrip(" ,;") + "…"


class Column(enum.Enum):
    TRIAGE = "triage"  # the engine's triage order: the default sort
    THUMB = "thumb"
    FILE = "file"
    MODALITY = "modality"
    PATIENT = "patient"
    SCORE = "score"
    FLAG = "flag"
    DECISION = "decision"  # the reader's decision (agree / disagree / …)
    STATUS = "status"
    REASON = "reason"


class ResultsModel(QAbstractTableModel):
    """Rows are ScanResults in arrival order; columns follow the loaded finding models."""

    def __init__(
        self,
        parent: QObject | None = None,
        thumbnail_loader: Callable[[ScanResult], bytes | None] | None = None,
        detail_loader: Callable[[ScanResult], ScanResult | None] | None = None,
    ) -> None:
        super().__init__(parent)
        #: With a detail loader (the store's whole result), rows also drop their findings'
        #: class activation maps (~1 kB a row, only the viewer and the PDF draw them):
        #: :meth:`with_thumbnail` fetches them with the thumbnail.
        self._detail_loader = detail_loader
        #: With a loader (the results store), rows drop their thumbnail bytes on arrival and
        #: fetch them when painted: ~50 kB a row otherwise, 500 MB for a 10,000-scan batch.
        self._thumbnail_loader = thumbnail_loader
        self._results: list[ScanResult] = []
        self._manifests: dict[str, ModelManifest] = {}
        self._choice = ThresholdChoice()
        self._columns: list[tuple[Column, str | None]] = []
        self._thumbs: OrderedDict[int, QPixmap] = OrderedDict()
        #: id(result) -> (result, flags, scope verdicts, patient group), under the current
        #: point and scope.
        self._derived: OrderedDict[int, _Derived] = OrderedDict()
        #: Each row's triage key under the current points, as three compact columns (11 bytes
        #: a row; a TriageKey object a row took ~200 B, 4 MB at 20,000 rows).
        self._triage = _TriageColumns()
        self._decisions: dict[str, ReaderDecision] = {}  # by decisions.scan_key
        self._points: dict[str, OperatingPoint | None] = {}
        self._all_manifests: dict[str, ModelManifest] = {}
        self._patients = PatientChoice()
        self._scope = ScopeRule.of({})
        self._counts = BatchCounts()
        self._rebuild_columns()

    # -- configuration ---------------------------------------------------------------------
    def set_manifests(self, manifests: Mapping[str, ModelManifest]) -> None:
        """Columns follow the finding models; call when a model set is loaded."""
        self.beginResetModel()
        self._all_manifests = dict(manifests)
        self._manifests = {k: m for k, m in reading_order(manifests).items() if m.role == "finding"}
        self._scope = ScopeRule.of(self._all_manifests, self._patients)
        self._rebuild_columns()
        self._resolve_points()
        self._recount()
        self.endResetModel()

    def finding_ids(self) -> list[str]:
        return list(self._manifests)

    def manifests(self) -> dict[str, ModelManifest]:
        return dict(self._manifests)

    def choice(self) -> ThresholdChoice:
        return self._choice

    def patients(self) -> PatientChoice:
        return self._patients

    def scope_rule(self) -> ScopeRule:
        """The engine's scope rule the table applies now (the viewer and reports use it too)."""
        return self._scope

    def set_decisions(self, decisions: Mapping[str, ReaderDecision]) -> None:
        """The readers' recorded decisions (by :func:`~desktop.engine.decisions.scan_key`)."""
        self._decisions = dict(decisions)
        if self._results:
            col = self.column_of(Column.DECISION)
            emit(self.dataChanged, self.index(0, col), self.index(len(self._results) - 1, col))

    def decision_of(self, result: ScanResult) -> ReaderDecision | None:
        return self._decisions.get(scan_key(result.sha256, result.file))

    def set_patients(self, patients: PatientChoice) -> None:
        """Apply the staff's patient group (batch and per scan): scope, flags, counts and the
        triage order are re-derived from what is stored, with no re-run."""
        self._patients = patients
        self._scope = ScopeRule.of(self._all_manifests, patients)
        self._recount()
        self._all_rows_changed(
            Qt.ItemDataRole.DisplayRole,
            Qt.ItemDataRole.DecorationRole,
            Qt.ItemDataRole.ToolTipRole,
            Qt.ItemDataRole.ForegroundRole,
            FlaggedRole,
            SortRole,
        )

    def set_choice(self, choice: ThresholdChoice) -> None:
        """Re-derive every flag from stored probabilities: no re-run, just dataChanged."""
        self._choice = choice
        self._resolve_points()
        self._recount()
        # With SortRole: the triage order (Attention column) follows the point.
        self._all_rows_changed(
            Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.DecorationRole, FlaggedRole, SortRole
        )

    def _all_rows_changed(self, *roles: int) -> None:
        """Tell the views that ``roles`` of every row changed (a re-derivation, not a re-run)."""
        if self._results:
            emit(
                self.dataChanged,
                self.index(0, 0),
                self.index(len(self._results) - 1, self.columnCount() - 1),
                list(roles),
            )

    def _resolve_points(self) -> None:
        # A model without the chosen point shows no flag (logged) rather than failing the view.
        self._points = operating_points(self._manifests, self._choice, strict=False)

    def _rebuild_columns(self) -> None:
        cols: list[tuple[Column, str | None]] = [
            (Column.TRIAGE, None),
            (Column.THUMB, None),
            (Column.FILE, None),
            (Column.MODALITY, None),
            (Column.PATIENT, None),
        ]
        for model_id in self._manifests:
            cols += [(Column.SCORE, model_id), (Column.FLAG, model_id)]
        cols += [(Column.DECISION, None), (Column.STATUS, None), (Column.REASON, None)]
        self._columns = cols

    def _first_column(self, kind: Column) -> int:
        for i, (col, _) in enumerate(self._columns):
            if col is kind:
                return i
        return 0

    def column_kind(self, column: int) -> Column:
        return self._columns[column][0]

    def column_of(self, kind: Column, model_id: str | None = None) -> int:
        return self._columns.index((kind, model_id))

    # -- rows ------------------------------------------------------------------------------
    def append(self, results: Sequence[ScanResult]) -> None:
        """Add a chunk of rows in one insert (the batch view feeds chunks, not single rows)."""
        if not results:
            return
        start = len(self._results)
        strip = self._thumbnail_loader is not None
        maps = self._detail_loader is not None
        results = [compact_row(r, strip_thumbnail=strip, strip_maps=maps) for r in results]
        self.beginInsertRows(QModelIndex(), start, start + len(results) - 1)
        self._results.extend(results)
        self._triage.extend(triage_key(r, self._points, self._scope) for r in results)
        self._count(results)
        self.endInsertRows()

    def clear(self) -> None:
        self.beginResetModel()
        self._results.clear()
        self._triage = _TriageColumns()
        self._thumbs.clear()
        self._recount()
        self.endResetModel()

    def counts(self) -> BatchCounts:
        """The engine's totals of the rows at the current point, kept up to date as rows arrive."""
        return self._counts

    def _count(self, results: Iterable[ScanResult]) -> None:
        # Counted per chunk, so the status line costs nothing per row during a big batch.
        self._counts = self._counts + BatchCounts.tally(results, self._points, self._scope)

    def _recount(self) -> None:
        self._derived.clear()  # the point, the scope or the rows changed
        self._counts = BatchCounts.tally(self._results, self._points, self._scope)
        self._triage = _TriageColumns()
        self._triage.extend(triage_key(r, self._points, self._scope) for r in self._results)

    def triage_key(self, row: int) -> TriageKey:
        """The row's place in the engine's triage order at the current operating point."""
        return self._triage.key(row)

    def triage_sort_key(self, row: int) -> tuple[int, float, int, int]:
        """The row's triage key as plain numbers, the row last (ties keep the folder's
        order): what the proxy compares, with no key object made per comparison."""
        return self._triage.sort_key(row)

    def triage_rows(self) -> list[int]:
        """Source rows in triage order (flagged, strongest first; errors last)."""
        return self._triage.order()

    def results(self) -> list[ScanResult]:
        return list(self._results)

    def result(self, row: int) -> ScanResult:
        return self._results[row]

    def with_thumbnail(self, result: ScanResult) -> ScanResult:
        """``result`` with its thumbnail bytes and class activation maps (for the viewer and
        reports), fetched from the store when the row dropped them."""
        if self._detail_loader is not None and result.sha256 and result.findings:
            full = self._detail_loader(result)
            if full is not None and full.findings.keys() == result.findings.keys():
                return replace(result, findings=full.findings, thumbnail_png=full.thumbnail_png)
        if result.thumbnail_png or self._thumbnail_loader is None:
            return result
        return replace(result, thumbnail_png=self._thumbnail_loader(result))

    def report_source(self, rows: Sequence[ScanResult]) -> WithThumbnails:
        """``rows`` for the report writers: the PDF fetches each flagged scan's thumbnail and
        class maps (:meth:`with_thumbnail`) as it draws it; the rows hold neither. The reports
        package is imported here, at export: at start-up reportlab cost the window ~0.3 s."""
        from desktop.engine.reports.source import WithThumbnails

        return WithThumbnails(
            rows, lambda r: self.with_thumbnail(r).thumbnail_png, detail=self.with_thumbnail
        )

    def flags_of(self, result: ScanResult) -> dict[str, bool | None]:
        """Each finding model's flag at the current point and patient choice (the engine's rule)."""
        return dict(self._derive(result)[1])

    def outside_scope(self, result: ScanResult) -> dict[str, ScopeVerdict]:
        """The models ``result`` is outside the scope of, with the reasons (the engine's rule)."""
        return dict(self._derive(result)[2])

    def _derive(self, result: ScanResult) -> _Derived:
        """The engine's flags, scope verdicts and patient group for ``result``, computed once
        per operating point and scope.

        A repaint asks for them in every cell and role of a row (the flag, score, reason and
        attention cells, FlaggedRole): re-deriving each time kept the GUI thread in Python
        for most of a repaint, and every Qt-to-Python call then waits for the GIL that the
        batch's threads hold. Entries keep their result, so an id is never reused while cached.
        """
        key = id(result)
        entry = self._derived.get(key)
        if entry is not None and entry[0] is result:
            self._derived.move_to_end(key)
            return entry
        entry = (
            result,
            finding_flags(result, self._points, self._scope),
            self._scope.verdicts(result),
            self._scope.group(result),
        )
        self._derived[key] = entry
        if len(self._derived) > DERIVED_CACHE:
            self._derived.popitem(last=False)
        return entry

    def is_row_flagged(self, result: ScanResult) -> bool:
        return any_flagged(self._derive(result)[1])

    # -- QAbstractTableModel -------------------------------------------------------------
    def rowCount(self, parent: _ModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._results)

    def columnCount(self, parent: _ModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._columns)

    def headerData(
        self,
        section: int,
        orientation: Qt.Orientation,
        role: int = Qt.ItemDataRole.DisplayRole,
    ) -> Any:
        if orientation != Qt.Orientation.Horizontal or not 0 <= section < len(self._columns):
            return None
        kind, model_id = self._columns[section]
        if role == Qt.ItemDataRole.DisplayRole:
            name = short_name(self._manifests[model_id]) if model_id else ""
            return {
                Column.TRIAGE: "Attention",
                Column.THUMB: "",
                Column.FILE: "File",
                Column.MODALITY: "Modality",
                Column.PATIENT: "Patient",
                Column.SCORE: f"{name} score",
                Column.FLAG: f"{name} flag",
                Column.DECISION: "Decision",
                Column.STATUS: "Status",
                Column.REASON: "Reason / warnings",
            }[kind]
        if role == Qt.ItemDataRole.ToolTipRole and kind is Column.TRIAGE:
            return (
                "Triage order: flagged scans first, the furthest past a threshold first "
                "(as a share of the way from the threshold to a score of 1); then the others, "
                "the nearest to a threshold first; scans not screened last"
            )
        if role == Qt.ItemDataRole.ToolTipRole and kind is Column.PATIENT:
            return (
                "Child or adult, and where that came from: staff (batch or this scan), the "
                "file's DICOM age, or an estimate from the image. A model outside its scope "
                "shows its score greyed and raises no flag."
            )
        if role == Qt.ItemDataRole.ToolTipRole and model_id:
            manifest = self._manifests[model_id]
            if kind is Column.SCORE:
                return f"Probability of {manifest.positive_label} from {manifest.name}"
            return f"Flagged when the score reaches the {self._choice.label()} threshold"
        return None

    def data(self, index: _ModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or index.row() >= len(self._results):
            return None
        result = self._results[index.row()]
        if role == ResultRole:
            return result
        if role == FlaggedRole:
            return self.is_row_flagged(result)
        kind, model_id = self._columns[index.column()]
        if kind is Column.TRIAGE:
            if role == SortRole:
                return index.row()  # the proxy compares triage keys (ResultsProxy.lessThan)
            if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ToolTipRole):
                return self._attention_text(result, role == Qt.ItemDataRole.ToolTipRole)
            return None
        if kind is Column.THUMB:
            if role == Qt.ItemDataRole.DecorationRole:
                return self._thumbnail(index.row(), result)
            if role == Qt.ItemDataRole.SizeHintRole:
                return QSize(THUMB_HEIGHT + 8, THUMB_HEIGHT + 4)
            if role == SortRole:
                return index.row()
            return None
        if kind is Column.FILE:
            if role in (Qt.ItemDataRole.DisplayRole, SortRole):
                return display_path(Path(result.file).name)  # Qt drops undecodable bytes
            if role == Qt.ItemDataRole.ToolTipRole:
                return display_path(result.file)
            return None
        if kind is Column.MODALITY:
            if role in (Qt.ItemDataRole.DisplayRole, SortRole):
                return shown_modality(result)  # empty when refused as not a medical scan
            if (
                role == Qt.ItemDataRole.ToolTipRole
                and shown_modality(result)
                and (result.modality_score is not None)
            ):
                return f"{result.modality} (probability {result.modality_score:.2f})"
            return None
        if kind is Column.PATIENT:
            if not result.findings:
                return None
            decision = self._derive(result)[3]
            if role in (Qt.ItemDataRole.DisplayRole, SortRole):
                if decision.group is None:
                    return "unknown"
                return f"{decision.group.value} ({_SOURCE_SHORT[decision.source.value]})"
            if role == Qt.ItemDataRole.ToolTipRole:
                return decision.describe()
            return None
        if kind is Column.SCORE:
            finding = result.findings.get(model_id or "")
            outside = self._derive(result)[2].get(model_id or "") if finding else None
            if role == Qt.ItemDataRole.DisplayRole:
                return "" if finding is None else f"{finding.probability:.2f}"
            if role == SortRole:
                return -1.0 if finding is None else finding.probability
            if role == Qt.ItemDataRole.TextAlignmentRole:
                return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            if role == Qt.ItemDataRole.ForegroundRole and outside is not None:
                return QGuiApplication.palette().placeholderText()
            if role == Qt.ItemDataRole.ToolTipRole and outside is not None:
                return f"{outside.reason}. The score is shown but raises no flag."
            return None
        if kind is Column.FLAG:
            flag = self._derive(result)[1].get(model_id or "")
            name = short_name(self._manifests[model_id]) if model_id else ""
            outside = self._derive(result)[2].get(model_id or "") if flag is not None else None
            if role == Qt.ItemDataRole.DisplayRole:
                if flag is None:
                    return ""
                if outside is not None:
                    return "outside scope"
                return FLAGGED_TEXT if flag else NOT_FLAGGED_TEXT  # the pennant is the mark
            if role == Qt.ItemDataRole.DecorationRole:
                if outside is not None:
                    return warning_pixmap()
                return flag_pixmap() if flag else None
            if role == Qt.ItemDataRole.ForegroundRole and outside is not None:
                return QGuiApplication.palette().placeholderText()
            if role == SortRole:
                return -1 if flag is None else int(flag)
            if role in (Qt.ItemDataRole.ToolTipRole, Qt.ItemDataRole.AccessibleTextRole):
                if flag is None:
                    return f"{name}: not screened"
                if outside is not None:
                    return f"{outside.reason}. Not flagged: the model is outside its scope."
                return f"{name}: {'flagged' if flag else 'not flagged'} at {self._choice.label()}"
            return None
        if kind is Column.DECISION:
            decision = self.decision_of(result)
            if role in (Qt.ItemDataRole.DisplayRole, SortRole):
                return "" if decision is None else decision.text
            if role == Qt.ItemDataRole.ToolTipRole and decision is not None:
                return decision.summary()
            return None
        if kind is Column.STATUS:
            if role in (Qt.ItemDataRole.DisplayRole, SortRole):
                return status_text(result.status)
            return None
        if kind is Column.REASON:
            # The engine's plain quality words in the cell, the technical reason in the tooltip.
            # Scope reasons and warnings: a short form in the cell, the whole text in the tooltip.
            quality = quality_of(result)
            short = quality.text if quality is not None else result.reason
            outside = list(self._derive(result)[2].values())
            if role in (Qt.ItemDataRole.DisplayRole, SortRole):
                # The cell's warning icon is the mark; a second "⚠" glyph beside it said it twice.
                parts = [short] if short else []
                parts += [v.short for v in outside]
                parts += [short_warning(w) for w in result.warnings]
                return "; ".join(parts)
            if role == Qt.ItemDataRole.ToolTipRole:
                lines = [result.reason] if result.reason else []
                lines += [f"{WARNING_MARK} {v.reason}" for v in outside]
                lines += [f"{WARNING_MARK} {w}" for w in result.warnings]
                return "\n".join(lines) or None
            if role == Qt.ItemDataRole.DecorationRole and (outside or result.warnings):
                return warning_pixmap()
            return None
        return None

    def _attention_text(self, result: ScanResult, long: bool) -> str:
        """The triage cell: the strongest flag and how far past its threshold it is (the
        engine's :func:`~desktop.engine.triage.attention`: in-scope flags only)."""
        best = strongest(attention(result, self._points, self._scope))
        if best is None:
            return ""
        mid = best.model_id
        name = short_name(self._manifests[mid]) if mid in self._manifests else mid
        if long:
            return (
                f"{name} {best.probability:.2f}: {best.margin * 100:.0f} % of the way "
                f"from its threshold {best.threshold:.2f} to 1"
            )
        return f"{name} +{best.margin * 100:.0f} %"

    def _thumbnail(self, row: int, result: ScanResult) -> QPixmap | None:
        pixmap = self._thumbs.get(row)
        if pixmap is not None:
            self._thumbs.move_to_end(row)
            return pixmap
        data = result.thumbnail_png
        if not data and self._thumbnail_loader is not None:
            data = self._thumbnail_loader(result)  # the thumbnail alone, not the whole result
        if not data:
            return None
        pixmap = icon_pixmap(data, THUMB_HEIGHT)
        if pixmap is None:
            return None
        self._thumbs[row] = pixmap
        if len(self._thumbs) > THUMB_CACHE:
            self._thumbs.popitem(last=False)
        return pixmap


class _TriageColumns:
    """The table's triage keys, one row each, as three typed arrays (group, strength,
    flagged models): the same order as :class:`TriageKey`'s, without an object per row."""

    def __init__(self) -> None:
        self._group = array("b")
        self._strength = array("d")
        self._flagged = array("h")

    def __len__(self) -> int:
        return len(self._group)

    def extend(self, keys: Iterable[TriageKey]) -> None:
        for key in keys:
            self._group.append(int(key.group))
            self._strength.append(key.strength)
            self._flagged.append(key.flagged_models)

    def key(self, row: int) -> TriageKey:
        return TriageKey(TriageGroup(self._group[row]), self._strength[row], self._flagged[row])

    def sort_key(self, row: int) -> tuple[int, float, int, int]:
        return self._group[row], self._strength[row], self._flagged[row], row

    def order(self) -> list[int]:
        """Rows in triage order; equal keys in row order (``np.lexsort`` is stable)."""
        if not self._group:
            return []
        group = np.frombuffer(self._group, np.int8)
        strength = np.frombuffer(self._strength, np.float64)
        flagged = np.frombuffer(self._flagged, np.int16)
        return np.lexsort((flagged, strength, group)).tolist()


def _interned(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """``mapping`` with its keys (and short text values) interned: one string object for all
    rows."""
    return {
        sys.intern(k): sys.intern(v) if isinstance(v, str) and len(v) <= 32 else v
        for k, v in mapping.items()
    }


def compact_row(
    result: ScanResult, *, strip_thumbnail: bool = False, strip_maps: bool = False
) -> ScanResult:
    """``result`` as the table keeps it: equal to it, but its repeated strings shared.

    Every row arrives unpickled from the batch process (or read from the store) with its own
    copies of the same strings: the model set's key (~150 characters), each finding's model
    key, the dictionaries' keys (six modality names, the findings' labels, the metadata's
    field names). Measured with tracemalloc on a real stored batch, a row held ~5.0 kB and
    ~3.4 kB with them interned: 30 MB less at 20,000 rows (benchmarks/bench_gui_memory.py).
    With ``strip_thumbnail`` (the table has a thumbnail loader: the store) the thumbnail
    bytes go too; the row fetches them when painted. With ``strip_maps`` (and a sha256: the
    store has the whole result) the findings' class activation maps go too (~1 kB a row);
    :meth:`ResultsModel.with_thumbnail` fetches them for the viewer and the PDF.
    """
    maps = strip_maps and bool(result.sha256)
    intern = sys.intern
    estimate = result.group_estimate
    if estimate is not None:
        estimate = replace(estimate, model_key=intern(estimate.model_key))
    findings = {
        intern(k): replace(
            f,
            model_id=intern(f.model_id),
            model_key=intern(f.model_key),
            probabilities=_interned(f.probabilities),
            activation=None if maps else f.activation,
        )
        for k, f in result.findings.items()
    }
    drop = strip_thumbnail and bool(result.thumbnail_png) and bool(result.sha256)
    return replace(
        result,
        models_key=intern(result.models_key),
        modality=intern(result.modality) if result.modality else result.modality,
        modality_probabilities=_interned(result.modality_probabilities),
        metadata=_interned(result.metadata),
        findings=findings,
        group_estimate=estimate,
        thumbnail_png=None if drop else result.thumbnail_png,
    )


def icon_pixmap(data: bytes, height: int) -> QPixmap | None:
    """A stored thumbnail decoded straight at ``height`` pixels (None if it cannot be read).

    The JPEG decoder scales in the DCT (by 1/2 to 1/8), so a 384-px thumbnail becomes a 48-px
    icon for a fraction of a full decode, with no full-size smooth rescale: that rescale and
    its format conversion run on Qt's image thread pool while the GUI thread waits, and were
    a quarter of the GUI thread's time in the stalls of a fast batch.
    """
    buffer = QBuffer()
    buffer.setData(QByteArray(data))
    buffer.open(QIODevice.OpenModeFlag.ReadOnly)
    reader = QImageReader(buffer)
    size = reader.size()
    if size.isValid() and size.height() > height:
        width = max(1, round(size.width() * height / size.height()))
        reader.setScaledSize(QSize(width, height))
    image = reader.read()
    return None if image.isNull() else QPixmap.fromImage(image)


#: The Patient column's short word for where the group came from (tooltip: the whole story).
_SOURCE_SHORT = {
    "staff_scan": "staff",
    "staff_batch": "batch",
    "file": "file",
    "image": "image",
    "unknown": "unknown",
}


class Filter(enum.Enum):
    ALL = "All scans"
    FLAGGED = "Flagged"
    NOT_SCREENED = "Not screened"
    ERRORS = "Errors"


class ResultsProxy(QSortFilterProxyModel):
    """Sort by any column (on typed SortRole values) and filter by kind and by file name."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._filter = Filter.ALL
        self._search = ""
        self.setSortRole(SortRole)
        self.setDynamicSortFilter(True)

    def lessThan(self, left: _ModelIndex, right: _ModelIndex) -> bool:
        """The Attention column sorts by the engine's triage key; others by SortRole."""
        model = self.sourceModel()
        if isinstance(model, ResultsModel) and model.column_kind(left.column()) is Column.TRIAGE:
            # the row breaks ties, so equal keys keep the folder's order however rows arrive
            return model.triage_sort_key(left.row()) < model.triage_sort_key(right.row())
        return super().lessThan(left, right)

    def set_filter(self, value: Filter) -> None:
        self._refilter(lambda: setattr(self, "_filter", value))

    def set_search(self, text: str) -> None:
        self._refilter(lambda: setattr(self, "_search", text.strip().lower()))

    def _refilter(self, change: Callable[[], None]) -> None:
        """Qt 6.9 replaced invalidateFilter() with begin/endFilterChange(); support both."""
        if hasattr(self, "beginFilterChange") and hasattr(self, "endFilterChange"):
            self.beginFilterChange()
            change()
            self.endFilterChange(QSortFilterProxyModel.Direction.Rows)
        else:
            change()
            self.invalidateFilter()

    def filterAcceptsRow(self, source_row: int, source_parent: _ModelIndex) -> bool:
        model = self.sourceModel()
        if not isinstance(model, ResultsModel):
            return True
        result = model.result(source_row)
        if self._search and self._search not in display_path(Path(result.file).name).lower():
            return False
        if self._filter is Filter.FLAGGED:
            return model.is_row_flagged(result)
        if self._filter is Filter.NOT_SCREENED:
            return result.status is ScanStatus.NOT_CHEST_XRAY
        if self._filter is Filter.ERRORS:
            return result.status is ScanStatus.ERROR
        return True


__all__ = [
    "Column",
    "Filter",
    "FlaggedRole",
    "ResultRole",
    "ResultsModel",
    "ResultsProxy",
    "SortRole",
    "short_name",
]

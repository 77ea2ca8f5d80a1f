"""The results table: a real QAbstractTableModel over a batch's results, and its sort/filter proxy.

Flags are not stored anywhere in the model's results. They are derived from the stored
probabilities and the current :class:`ThresholdChoice` with the engine's flag rule
(:func:`desktop.engine.results.finding_flags`), so changing the operating point is one
``dataChanged`` signal and no inference. The counts are the engine's :class:`BatchCounts` and
the status words its :data:`STATUS_TEXT`: the window, the CLI and the reports cannot drift.

Scope works the same way: the engine's :class:`~desktop.engine.results.ScopeRule` (the
manifests' scopes and the staff's :class:`~desktop.engine.patients.PatientChoice`) is applied
to each row; a score outside its model's scope is greyed with a short reason, an icon and
the whole reason in the tooltip, and raises no flag. Changing the batch's patient group or
one scan's override is one ``set_patients`` call.

**Rows live in the results store, not in the window.** Every scan the table shows was
committed to the store before it was reported (contract 5), so the window keeps, per row,
only where it is (batch and ``seq``) and a few numbers (:class:`RowColumns`: status, scores,
flags, codes of the short texts, the triage key; ~50 bytes with two finding models). A row's
:class:`ScanResult` is read back from the store when something needs it: the painted rows
(the view asks for the rows around the visible ones in one query), the viewer, F3, the
selection, the reports (:class:`TableRows`, streamed in pages). A bounded cache keeps the
rows read last, and another the recent thumbnails. Sorting compares those numbers (file names:
ranks computed once per sort from one query of the names), filtering reads them, and a change
of operating point or patient group re-derives them by streaming the batch from the store
(without thumbnails or class maps) through the engine's own rules. Rows that are not in a
store (a model without one, in tests) are held as compact results (:func:`compact_row`).

``benchmarks/bench_gui_memory.py`` measures the window on 1,000 and 20,000 scans (2 December,
2 cores shared, load 2-5): its Python heap after the batch ~58 bytes a row (compact results
in memory took ~2.3 kB), the window 165 → 171 MB after screening from 1,000 to 20,000 scans.
Re-deriving 20,000 rows takes 1.4-1.6 s of CPU in slices (2 December 05:25 UTC; 3.0-3.1 s
with the re-sort before). :class:`ResultsProxy` sorts and filters
them with NumPy over those numbers (``benchmarks/bench_table_sort.py``, 2 December 05:30 UTC,
load ~6): an explicit sort of 20,000 rows held the GUI thread 0.6-2.0 s with a Python
``lessThan`` per comparison, now ≤ 4 ms (by file name ~0.1 s, the names read and ranked);
the longest event-loop gap of a new operating point, 1.5-2.0 s, now 0.05-0.07 s.
"""

from __future__ import annotations

import enum
import logging
import os
import sys
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import TYPE_CHECKING, Any

import numpy as np
from PySide6.QtCore import (
    QAbstractItemModel,
    QAbstractProxyModel,
    QAbstractTableModel,
    QBuffer,
    QByteArray,
    QIODevice,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QSize,
    Qt,
    QTimer,
    Signal,
)
from PySide6.QtGui import QGuiApplication, QImageReader, QPixmap

from desktop.engine.decisions import ReaderDecision, scan_key
from desktop.engine.manifest import ModelManifest, OperatingPoint
from desktop.engine.paths import display_path, one_line
from desktop.engine.patients import GroupDecision, PatientChoice, ScopeVerdict
from desktop.engine.quality import (
    HEADER_REFUSAL,
    quality_of,
    shown_modality,
    shown_modality_score,
)
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
    from desktop.engine.store import ResultsStore

log = logging.getLogger(__name__)

THUMB_HEIGHT = 48
THUMB_CACHE = 400
#: Rows whose flags and scope verdicts are kept (see ResultsModel._derive): a repaint asks
#: for them once per cell and role, and the visible rows are far fewer than this.
DERIVED_CACHE = 2000
#: Results read back from the store and kept (least recently used first out): a few
#: screens of the table around what was shown last; ~2 kB each.
ROW_CACHE = 1024
#: Rows read from the store in one query around a row that is not in the cache.
PAGE_ROWS = 64
#: Items one store query reads back at most (the store's own limit).
FETCH_ROWS = 500
#: File names kept for rows that arrived after the table was sorted by name.
NAME_CACHE = 4096
#: Tables with more rows in the store than this re-derive them (a new operating point or
#: patient group) in slices of :data:`SLICE_ROWS` rows between which the GUI thread paints
#: and takes input (a worker thread would not help: it holds the GIL the GUI thread needs
#: for every Qt-to-Python call). Smaller tables are re-derived at once.
ASYNC_ROWS = 5000
SLICE_ROWS = 100
#: Seconds of re-derivation per turn of the event loop.
SLICE_S = 0.03
#: Distinct short texts (modality, patient, decision, reason) a table codes; a row whose
#: text comes after these is sorted by reading it back (never in practice: they repeat).
TEXT_CODES = 4096

#: A row's flags, scope verdicts and patient group (see ResultsModel._derive).
_Derived = tuple[dict[str, bool | None], dict[str, ScopeVerdict], GroupDecision]

SortRole = Qt.ItemDataRole.UserRole + 1
ResultRole = Qt.ItemDataRole.UserRole + 2
FlaggedRole = Qt.ItemDataRole.UserRole + 3  # any finding flagged (bool)

_ModelIndex = QModelIndex | QPersistentModelIndex

#: Shown before a short warning or scope reason in the table (the whole text is the tooltip).
WARNING_MARK = "⚠"
#: Longest short form of a warning in the table; longer ones end at a word, with "…".
SHORT_WARNING_CHARS = 72

#: Each status as a small number (RowColumns.status), and its words (the Status column).
_STATUSES = tuple(ScanStatus)
_STATUS_CODE = {status: code for code, status in enumerate(_STATUSES)}
_STATUS_WORDS = tuple(status_text(status) for status in _STATUSES)


def shown_name(file: str) -> str:
    """The File column's text: the file's name, readable (:func:`display_path`), control
    characters as spaces (a name with a line break read "new…", the rest cut off; the PDF
    shows "new line.png"); what the table sorts and searches by. ``os.path.basename`` (the
    same name as ``Path(file).name`` for a file's path): ranking 20,000 names for a sort
    took 90 ms with ``Path``, 46 ms."""
    return one_line(display_path(os.path.basename(file)))


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


#: What a column holds, in its heading's tooltip (the score, flag, Attention and Patient
#: columns' say more, from the models and the point).
_HEADER_TIPS = {
    Column.FILE: "The scan's file name; hover a name for its whole path",
    Column.MODALITY: "What the image is, as the modality gate (or a DICOM header that "
    "refused it) says; empty for a file that is no medical image",
    Column.DECISION: "The reader's decision, recorded in the viewer's Reading panel",
    Column.STATUS: "Screened, not a chest X-ray (not screened), or an error (not screened)",
    Column.REASON: "Why a scan was not screened, or what to check about it; hover a cell "
    "for the whole text",
}


def _patient_cell(decision: GroupDecision) -> str:
    """The Patient column's text: the group and, short, where it came from."""
    if decision.group is None:
        return "unknown"
    return f"{decision.group.value} ({_SOURCE_SHORT[decision.source.value]})"


def _reason_cell(result: ScanResult, outside: Iterable[ScopeVerdict]) -> str:
    """The Reason column's text: the engine's plain quality words (else the reason), the
    short scope reasons and the short warnings (the cell's warning icon is the mark)."""
    quality = quality_of(result)
    short = quality.text if quality is not None else result.reason
    parts = [short] if short else []
    parts += [v.short for v in outside]
    parts += [short_warning(w) for w in result.warnings]
    return "; ".join(parts)


def _decision_cell(decisions: Mapping[str, ReaderDecision], file: str, sha256: str | None) -> str:
    """The Decision column's text: the reader's latest decision on this scan, if any."""
    decision = decisions.get(scan_key(sha256, file))
    return "" if decision is None else decision.text


@dataclass(frozen=True)
class _ChunkScope(ScopeRule):
    """The engine's :class:`ScopeRule`, remembering its answers for the results of one chunk.

    Deriving a row asks the rule the same question several times (the counts, the flags,
    the triage key and the row's own verdicts each ask for its verdicts and patient group:
    five group decisions a row); this keeps each answer per result while a chunk of rows is
    derived, so each is computed once, by the engine. Never kept beyond the chunk.
    """

    memo: dict[int, list[Any]] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def around(cls, rule: ScopeRule) -> _ChunkScope:
        return cls(manifests=rule.manifests, patients=rule.patients, adult_age=rule.adult_age)

    def _entry(self, result: ScanResult) -> list[Any]:
        entry = self.memo.get(id(result))
        if entry is None or entry[0] is not result:
            entry = self.memo[id(result)] = [result, None, None]
        return entry

    def group(self, result: ScanResult) -> GroupDecision:
        entry = self._entry(result)
        if entry[1] is None:
            entry[1] = super().group(result)
        return entry[1]  # type: ignore[no-any-return]

    def verdicts(self, result: ScanResult) -> dict[str, ScopeVerdict]:
        entry = self._entry(result)
        if entry[2] is None:
            entry[2] = super().verdicts(result)
        return dict(entry[2])


class RowColumns:
    """Every row of the table as a few numbers: where it is in the store (batch, ``seq``),
    its status, each finding model's score and flag, its triage key and codes of its short
    texts, and the engine's counts of all of them.

    What the table sorts, filters and counts by, with no result in memory: about 50 bytes a
    row with two finding models, where a compact :class:`ScanResult` took ~2.3 kB. Built
    and re-derived with the engine's own rules only (:func:`finding_flags`,
    :meth:`ScopeRule.verdicts` and ``group``, :func:`triage_key`, :meth:`BatchCounts.tally`)
    from results streamed from the store. No Qt: a worker builds a stored batch's columns.
    """

    def __init__(self, finding_ids: Sequence[str]) -> None:
        self.finding_ids = tuple(finding_ids)
        self.batch = array("H")  # index into the table's batch ids
        self.seq = array("q")  # the item's seq in its batch; -1: held in memory, no store
        self.status = array("b")
        self.modality = array("h")  # text codes (self.texts); -1: none; -2: not coded
        self.patient = array("h")
        self.reason = array("h")
        self.decision = array("h")
        self.flagged = array("b")
        self.scores = {mid: array("d") for mid in self.finding_ids}  # -1.0: did not run
        self.flags = {mid: array("b") for mid in self.finding_ids}  # -1: no flag, 0, 1
        self.triage = _TriageColumns()
        self.counts = BatchCounts()
        self.texts: list[str] = []
        self._codes: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.seq)

    def _arrays(self) -> list[tuple[array[Any], float]]:
        out: list[tuple[array[Any], float]] = [
            (self.batch, 0),
            (self.seq, -1),
            (self.status, 0),
            (self.modality, -1),
            (self.patient, -1),
            (self.reason, -1),
            (self.decision, -1),
            (self.flagged, 0),
        ]
        out += [(a, -1.0) for a in self.scores.values()]
        out += [(a, -1) for a in self.flags.values()]
        return out

    def grow(self, n: int) -> None:
        """``n`` more rows, empty until :meth:`put`."""
        for column, value in self._arrays():
            column.extend(array(column.typecode, [value]) * n)
        self.triage.grow(n)

    def code(self, text: str | None) -> int:
        """``text``'s code in :attr:`texts` (-1 for None; -2 when the table is full)."""
        if text is None:
            return -1
        code = self._codes.get(text)
        if code is None:
            if len(self.texts) >= TEXT_CODES:
                return -2
            code = len(self.texts)
            self._codes[text] = code
            self.texts.append(text)
        return code

    def put(
        self,
        row: int,
        result: ScanResult,
        points: Mapping[str, OperatingPoint | None],
        scope: ScopeRule,
        decisions: Mapping[str, ReaderDecision],
    ) -> None:
        """Row ``row``'s numbers from ``result`` (the counts are added by :meth:`add`)."""
        self.status[row] = _STATUS_CODE[result.status]
        self.modality[row] = self.code(shown_modality(result))
        flags = finding_flags(result, points, scope)
        verdicts = scope.verdicts(result)
        for mid in self.finding_ids:
            finding = result.findings.get(mid)
            self.scores[mid][row] = -1.0 if finding is None else finding.probability
            flag = flags.get(mid)
            self.flags[mid][row] = -1 if flag is None else int(flag)
        self.flagged[row] = any_flagged(flags)
        self.patient[row] = self.code(_patient_cell(scope.group(result))) if result.findings else -1
        self.reason[row] = self.code(_reason_cell(result, verdicts.values()))
        self.decision[row] = self.code(_decision_cell(decisions, result.file, result.sha256))
        self.triage.put(row, triage_key(result, points, scope))

    def add(
        self,
        items: Iterable[tuple[int, ScanResult]],
        points: Mapping[str, OperatingPoint | None],
        scope: ScopeRule,
        decisions: Mapping[str, ReaderDecision],
    ) -> None:
        """:meth:`put` each ``(row, result)`` and count them, a chunk at a time (the
        results themselves are not kept)."""
        chunk: list[tuple[int, ScanResult]] = []
        for item in items:
            chunk.append(item)
            if len(chunk) >= FETCH_ROWS:
                self._add_chunk(chunk, points, scope, decisions)
                chunk = []
        if chunk:
            self._add_chunk(chunk, points, scope, decisions)

    def _add_chunk(
        self,
        chunk: list[tuple[int, ScanResult]],
        points: Mapping[str, OperatingPoint | None],
        scope: ScopeRule,
        decisions: Mapping[str, ReaderDecision],
    ) -> None:
        memo = _ChunkScope.around(scope)  # the chunk's results are alive until it ends
        self.counts = self.counts + BatchCounts.tally((r for _, r in chunk), points, memo)
        for row, result in chunk:
            self.put(row, result, points, memo, decisions)

    def text(self, code: int) -> str | None:
        return None if code < 0 else self.texts[code]

    def triage_order(self) -> np.ndarray:
        """Rows in the engine's triage order, equal keys in the batch's order (its seq, the
        folder's order: what every report numbers them by), not the order they arrived in
        from the decoders: the viewer's "10 of 15" and the PDF's #10 are the same scan.
        Rows held in memory (seq -1) keep their row order among themselves."""
        return self.triage.order_array(
            (np.array(self.batch, np.int64), np.array(self.seq, np.int64))
        )

    def stored_rows(self, batch: int) -> tuple[list[int], list[int]]:
        """The rows of batch ``batch`` that are in the store, and their seqs, by seq."""
        seqs = np.array(self.seq, dtype=np.int64)
        batches = np.array(self.batch, dtype=np.int64)
        rows = np.flatnonzero((batches == batch) & (seqs >= 0))
        rows = rows[np.argsort(seqs[rows], kind="stable")]
        return rows.tolist(), seqs[rows].tolist()


def merge_stream(
    rows: Sequence[int], seqs: Sequence[int], stream: Iterable[tuple[int, Any]]
) -> Iterator[tuple[int, Any]]:
    """``(row, item)`` for each streamed ``(seq, item)`` that is one of ``seqs`` (both in
    seq order): a batch read once from the store, matched to the table's rows, which are in
    arrival order and may be fewer than the batch's (a batch still running)."""
    j, n = 0, len(seqs)
    for seq, item in stream:
        while j < n and seqs[j] < seq:
            j += 1
        if j < n and seqs[j] == seq:
            yield rows[j], item
            j += 1


def read_rows(
    store: ResultsStore, batches: Sequence[str], keys: Iterable[tuple[int, int, int]]
) -> dict[int, ScanResult]:
    """The results of ``keys`` (``(row, batch index, seq)``), read back from ``store``
    without thumbnails or class maps and kept compact, by row (a query per 500)."""
    by_batch: dict[int, dict[int, int]] = {}
    for row, batch, seq in keys:
        by_batch.setdefault(batch, {})[seq] = row
    out: dict[int, ScanResult] = {}
    for batch, rows in by_batch.items():
        seqs = list(rows)
        for start in range(0, len(seqs), FETCH_ROWS):
            for seq, result in store.batch_rows(
                batches[batch], thumbnails=False, maps=False, seqs=seqs[start : start + FETCH_ROWS]
            ):
                out[rows[seq]] = compact_row(result)
    return out


@dataclass
class _Snapshot:
    """Where a table's stored rows are, and the rules to derive them under: what a
    re-derivation reads (in a worker for a big table), taken on the GUI thread."""

    store: ResultsStore | None
    batches: list[str]
    batch: array[int]
    seq: array[int]
    finding_ids: tuple[str, ...]
    points: dict[str, OperatingPoint | None]
    scope: ScopeRule
    decisions: dict[str, ReaderDecision]

    def steps(self) -> Iterator[RowColumns | None]:
        """Every stored row's numbers under the snapshot's rules, streaming each batch from
        the store once (no thumbnails, no class maps; no result kept): None after each
        :data:`SLICE_ROWS` rows (the GUI thread paints between them), the columns last."""
        n = len(self.seq)
        cols = RowColumns(self.finding_ids)
        cols.grow(n)
        cols.batch[:] = self.batch
        cols.seq[:] = self.seq
        for ix, batch_id in enumerate(self.batches if self.store is not None else ()):
            rows, seqs = cols.stored_rows(ix)
            if not rows:
                continue
            stream = self.store.batch_rows(  # type: ignore[union-attr]
                batch_id, thumbnails=False, maps=False
            )
            items = merge_stream(rows, seqs, stream)
            found = 0
            while chunk := list(islice(items, SLICE_ROWS)):
                found += len(chunk)
                cols.add(chunk, self.points, self.scope, self.decisions)
                yield None
            if found != len(rows):
                log.warning(
                    "batch %s: %d of its %d rows are no longer in the results store",
                    batch_id,
                    len(rows) - found,
                    len(rows),
                )
        yield cols

    def derive(self) -> RowColumns:
        """:meth:`steps` at once."""
        for cols in self.steps():
            if cols is not None:
                return cols
        raise AssertionError("steps() ends with the columns")


def _missing(row: int) -> ScanResult:
    """What a row shows when the store no longer has it (its batch deleted meanwhile)."""
    log.warning("row %d is no longer in the results store", row)
    return ScanResult(
        file="(deleted from the results store)",
        sha256=None,
        status=ScanStatus.ERROR,
        reason="this result is no longer in the results store (its batch was deleted)",
    )


class TableRows:
    """The table's rows (or some of them, in the table's order) for the report writers:
    read from the store a page at a time, each pass; the PDF fetches each flagged scan's
    thumbnail and class maps as it draws it. A snapshot of where the rows are (a few
    numbers a row), so a worker thread writes the report while the table goes on.
    """

    def __init__(
        self,
        store: ResultsStore | None,
        batches: Sequence[str],
        batch: array[int],
        seq: array[int],
        held: Mapping[int, ScanResult],
        thumbnail: Callable[[ScanResult], bytes | None] | None,
        detail: Callable[[ScanResult], ScanResult | None] | None,
    ) -> None:
        self._store = store
        self._batches = list(batches)
        self._batch = batch
        self._seq = seq
        self._held = dict(held)  # by position in this snapshot
        self._thumbnail = thumbnail
        self._detail = detail

    def __len__(self) -> int:
        return len(self._seq)

    def __iter__(self) -> Iterator[ScanResult]:
        return (result for _, result in self.rows())

    def rows(self) -> Iterator[tuple[int, ScanResult]]:
        for start in range(0, len(self), FETCH_ROWS):
            positions = range(start, min(len(self), start + FETCH_ROWS))
            yield from zip(positions, self.at(positions), strict=True)

    def at(self, rows: Sequence[int]) -> list[ScanResult]:
        """The results at positions ``rows``, in the order asked (a query per 500)."""
        found: dict[int, ScanResult] = {}
        keys = [(p, self._batch[p], self._seq[p]) for p in rows if p not in self._held]
        if keys:
            if self._store is None:
                raise LookupError("these rows are in no results store")
            for start in range(0, len(keys), FETCH_ROWS):
                found.update(
                    read_rows(self._store, self._batches, keys[start : start + FETCH_ROWS])
                )
        missing = [p for p in rows if p not in self._held and p not in found]
        if missing:  # the batch changed under the report (deleted meanwhile)
            raise LookupError(f"the results store no longer holds rows {missing[:5]}")
        return [self._held[p] if p in self._held else found[p] for p in rows]

    def thumbnail(self, result: ScanResult) -> bytes | None:
        if result.thumbnail_png is not None or self._thumbnail is None:
            return result.thumbnail_png
        return self._thumbnail(result)

    def detail(self, result: ScanResult) -> ScanResult | None:
        return self._detail(result) if self._detail is not None else None


@dataclass
class LoadedRows:
    """A stored batch's rows as a worker read them (:meth:`ResultsModel.stored_loader`),
    with the rules they were derived under and the table generation they belong to."""

    batch_id: str
    columns: RowColumns
    generation: int
    points: Mapping[str, OperatingPoint | None]
    scope: ScopeRule
    decisions: Mapping[str, ReaderDecision]

    def __len__(self) -> int:
        return len(self.columns)


class ResultsModel(QAbstractTableModel):
    """Rows are a batch's results in arrival order; columns follow the loaded finding models.

    ``derived`` is emitted when every row has been derived again under a new operating point
    or patient group (at once for a small table; from a worker for a big one, meanwhile the
    painted cells already follow the new rules); ``problem`` with a message when that failed.

    With a store (``store``: a function returning the results store), a row is its place in
    the store and a few numbers (:class:`RowColumns`); its result is read back when needed
    (:meth:`result`). Without one, or for rows that carry no place in a store, rows are held
    in memory as compact results.
    """

    derived = Signal()
    problem = Signal(str)

    def __init__(
        self,
        parent: QObject | None = None,
        thumbnail_loader: Callable[[ScanResult], bytes | None] | None = None,
        detail_loader: Callable[[ScanResult], ScanResult | None] | None = None,
        store: Callable[[], ResultsStore] | None = None,
    ) -> None:
        super().__init__(parent)
        #: With a detail loader (the store's whole result), held rows also drop their
        #: findings' class activation maps (~1 kB a row, only the viewer and the PDF draw
        #: them): :meth:`with_thumbnail` fetches them with the thumbnail.
        self._detail_loader = detail_loader
        #: With a loader (the results store), held rows drop their thumbnail bytes on arrival
        #: and fetch them when painted: ~50 kB a row otherwise.
        self._thumbnail_loader = thumbnail_loader
        self._store = store
        self._manifests: dict[str, ModelManifest] = {}
        self._choice = ThresholdChoice()
        self._columns: list[tuple[Column, str | None]] = []
        self._cols = RowColumns(())
        self._batches: list[str] = []  # the batch ids the rows come from (RowColumns.batch)
        self._held: dict[int, ScanResult] = {}  # rows in no store, by row
        self._cache: OrderedDict[int, ScanResult] = OrderedDict()  # rows read back, by row
        self._thumbs: OrderedDict[int, QPixmap] = OrderedDict()
        #: row -> (flags, scope verdicts, patient group) under the current point and scope.
        self._derived: OrderedDict[int, _Derived] = OrderedDict()
        self._file_rank: array[int] | None = None  # rows' ranks by file name (sorting)
        self._rank_names: list[str] = []  # the distinct names ranked, while sorted by name
        self._names: OrderedDict[int, str] = OrderedDict()
        self._search: str | None = None
        self._search_mask = bytearray()
        #: Bumped when the rows are cleared: a stored batch read for an older table is dropped.
        self._generation = 0
        #: A re-derivation under way in slices: (snapshot, its steps, roles to announce).
        self._pending: tuple[_Snapshot, Iterator[RowColumns | None], tuple[int, ...]] | None
        self._pending = None
        self._stepper = QTimer(self)
        self._stepper.setSingleShot(True)
        self._stepper.setInterval(0)
        self._stepper.timeout.connect(self._derive_step)
        self._decisions: dict[str, ReaderDecision] = {}  # by decisions.scan_key
        self._points: dict[str, OperatingPoint | None] = {}
        self._all_manifests: dict[str, ModelManifest] = {}
        self._patients = PatientChoice()
        self._scope = ScopeRule.of({})
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
        if not len(self._cols):
            return
        cols = self._cols
        for row, (file, sha) in self._row_keys():
            cols.decision[row] = cols.code(_decision_cell(self._decisions, file, sha))
        col = self.column_of(Column.DECISION)
        emit(self.dataChanged, self.index(0, col), self.index(self.rowCount() - 1, col))

    def decision_of(self, result: ScanResult) -> ReaderDecision | None:
        return self._decisions.get(scan_key(result.sha256, result.file))

    def set_patients(self, patients: PatientChoice) -> None:
        """Apply the staff's patient group (batch and per scan): scope, flags, counts and the
        triage order are re-derived from what is stored, with no re-run."""
        self._patients = patients
        self._scope = ScopeRule.of(self._all_manifests, patients)
        self._recount(
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
        # With SortRole: the triage order (Attention column) follows the point.
        self._recount(
            Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.DecorationRole, FlaggedRole, SortRole
        )

    def _all_rows_changed(self, *roles: int) -> None:
        """Tell the views that ``roles`` of every row changed (a re-derivation, not a re-run)."""
        if len(self._cols):
            emit(
                self.dataChanged,
                self.index(0, 0),
                self.index(self.rowCount() - 1, self.columnCount() - 1),
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
        """Add a chunk of rows held in memory (no place in a store): tests, a table without
        a store. The window's batches arrive through :meth:`append_items`."""
        self.append_items(None, [(None, r) for r in results])

    def append_items(
        self, batch_id: str | None, items: Sequence[tuple[int | None, ScanResult]]
    ) -> None:
        """Add a chunk of finished items of ``batch_id`` as ``(seq, result)`` in one insert
        (the batch view feeds chunks, not single rows). An item with a seq (and a store) is
        kept as its place in the store and a few numbers; the result itself goes to the
        cache of rows read last, since the views ask for new rows at once."""
        if not items:
            return
        start = len(self._cols)
        stored = self._store is not None and batch_id is not None
        batch = self._batch_index(batch_id) if stored and batch_id is not None else 0
        strip = self._thumbnail_loader is not None
        maps = self._detail_loader is not None
        self.beginInsertRows(QModelIndex(), start, start + len(items) - 1)
        cols = self._cols
        cols.grow(len(items))
        added: list[tuple[int, ScanResult]] = []
        for row, (seq, result) in enumerate(items, start):
            if stored and seq is not None:
                result = compact_row(result, strip_thumbnail=True, strip_maps=True)
                cols.batch[row] = batch
                cols.seq[row] = seq  # type: ignore[assignment]
                self._remember(row, result)
            else:
                result = compact_row(result, strip_thumbnail=strip, strip_maps=maps)
                self._held[row] = result
            added.append((row, result))
        cols.add(added, self._points, self._scope, self._decisions)
        self.endInsertRows()

    def _batch_index(self, batch_id: str) -> int:
        if batch_id not in self._batches:
            self._batches.append(batch_id)
        return self._batches.index(batch_id)

    def clear(self) -> None:
        self.beginResetModel()
        self._generation += 1
        self._batches = []
        self._held = {}
        self._cache.clear()
        self._thumbs.clear()
        self._names.clear()
        self.prepare_sort()
        self._search = None
        self._cols = RowColumns(self.finding_ids())
        self._recount()
        self.endResetModel()

    def stored_loader(self, batch_id: str) -> Callable[[], LoadedRows]:
        """A function for a worker that reads stored batch ``batch_id`` into rows (a few
        numbers each, derived under the table's current rules, no result kept); hand what
        it returns to :meth:`adopt`. The GUI thread neither reads nor derives 20,000 rows."""
        if self._store is None:
            raise RuntimeError("this table has no results store")
        store = self._store()
        ids = self.finding_ids()
        points, scope, decisions = dict(self._points), self._scope, dict(self._decisions)
        generation = self._generation

        def load() -> LoadedRows:
            cols = RowColumns(ids)
            items: list[tuple[int, ScanResult]] = []
            stream = store.batch_rows(batch_id, thumbnails=False, maps=False)
            for row, (seq, result) in enumerate(stream):
                cols.grow(1)
                cols.seq[row] = seq
                items.append((row, result))
                if len(items) >= FETCH_ROWS:
                    cols.add(items, points, scope, decisions)
                    items = []
            cols.add(items, points, scope, decisions)
            return LoadedRows(batch_id, cols, generation, points, scope, decisions)

        return load

    def adopt(self, loaded: LoadedRows) -> bool:
        """Show a stored batch a worker read (:meth:`stored_loader`); False (and nothing
        shown) when the table was cleared or filled since. Rows derived under other rules
        than the table's now (the point changed while it read) are derived again."""
        if loaded.generation != self._generation or len(self._cols):
            log.info("stored batch %s read for an older table: not shown", loaded.batch_id)
            return False
        n = len(loaded.columns)
        if n == 0:
            return True
        self.beginInsertRows(QModelIndex(), 0, n - 1)
        self._batches = [loaded.batch_id]
        self._cols = loaded.columns
        self.endInsertRows()
        stale = (
            loaded.points != self._points
            or loaded.scope != self._scope
            or loaded.columns.finding_ids != tuple(self._manifests)
        )
        if stale:  # the rules changed while it was read
            self._recount(
                Qt.ItemDataRole.DisplayRole,
                Qt.ItemDataRole.DecorationRole,
                Qt.ItemDataRole.ToolTipRole,
                Qt.ItemDataRole.ForegroundRole,
                FlaggedRole,
                SortRole,
            )
        elif loaded.decisions != self._decisions:
            self.set_decisions(self._decisions)
        return True

    def counts(self) -> BatchCounts:
        """The engine's totals of the rows at the current point, kept up to date as rows arrive."""
        return self._cols.counts

    def _recount(self, *roles: int) -> None:
        """Derive every row's flags, scope, triage key, texts and the counts again under
        the current point and scope, then tell the views (``roles`` of every row changed;
        none named: the caller resets the model).

        Stored rows are streamed from the store (no thumbnails, no class maps; nothing kept
        but the numbers), the held ones read from memory. A table of more than
        :data:`ASYNC_ROWS` stored rows is derived in slices between turns of the event loop
        (20,000 rows: ~1.5 s of reading and ~1 s of the engine's rules, which the GUI thread
        spent in one block before). Meanwhile the painted cells already follow the new rules
        (:meth:`_derive`); the counts, the order and the filters follow when it is done
        (``derived``)."""
        self._derived.clear()  # the point, the scope or the rows changed
        self._drop_pending()
        snapshot = self._snapshot()
        if self._store is None or len(snapshot.seq) - len(self._held) <= ASYNC_ROWS:
            self._derived_rows(snapshot, snapshot.derive())
            if roles:
                self._all_rows_changed(*roles)
            emit(self.derived)
            return
        self._pending = (snapshot, snapshot.steps(), roles)
        self._stepper.start()

    def _drop_pending(self) -> None:
        if self._pending is not None:
            self._pending[1].close()  # type: ignore[attr-defined]  # a generator
            self._pending = None
        self._stepper.stop()

    def _derive_step(self) -> None:
        """One slice of the re-derivation under way (about :data:`SLICE_S` seconds)."""
        if self._pending is None:
            return
        snapshot, steps, roles = self._pending
        deadline = time.perf_counter() + SLICE_S
        try:
            while True:  # at least one step a slice
                cols = next(steps)
                if cols is not None:
                    self._pending = None
                    self._derived_rows(snapshot, cols)
                    self._all_rows_changed(*roles)  # none named: all roles (models changed)
                    emit(self.derived)
                    return
                if time.perf_counter() >= deadline:
                    break
        except Exception as exc:  # the store failed: say so, keep the rows as they were
            self._pending = None
            log.error("the table's rows could not be derived again: %s", exc)
            emit(self.problem, f"The flags and counts could not be updated: {exc}")
            return
        self._stepper.start()

    def _snapshot(self) -> _Snapshot:
        return _Snapshot(
            self._store() if self._store is not None and self._batches else None,
            list(self._batches),
            array("H", self._cols.batch),
            array("q", self._cols.seq),
            tuple(self._manifests),
            dict(self._points),
            self._scope,
            dict(self._decisions),
        )

    def derivation_pending(self) -> bool:
        """Whether the rows are still being derived under the current rules (in slices)."""
        return self._pending is not None

    def _derived_rows(self, snapshot: _Snapshot, cols: RowColumns) -> None:
        """Take the rows a derivation made, with the held rows and the rows that arrived
        meanwhile derived here."""
        n = len(snapshot.seq)
        late = range(n, len(self._cols))
        cols.grow(len(late))
        cols.batch[n:] = self._cols.batch[n:]
        cols.seq[n:] = self._cols.seq[n:]
        wanted = [r for r in late if r not in self._held]
        read: dict[int, ScanResult] = {}
        if wanted and self._store is not None:
            keys = [(r, self._cols.batch[r], self._cols.seq[r]) for r in wanted]
            for start in range(0, len(keys), FETCH_ROWS):
                page = keys[start : start + FETCH_ROWS]
                read.update(read_rows(self._store(), self._batches, page))
        cols.add([*sorted(self._held.items()), *sorted(read.items())], *self._rules())
        self._cols = cols
        if snapshot.decisions != self._decisions:
            self.set_decisions(self._decisions)
        self._derived.clear()

    def _rules(
        self,
    ) -> tuple[dict[str, OperatingPoint | None], ScopeRule, dict[str, ReaderDecision]]:
        return self._points, self._scope, self._decisions

    def triage_key(self, row: int) -> TriageKey:
        """The row's place in the engine's triage order at the current operating point."""
        return self._cols.triage.key(row)

    def triage_rows(self) -> list[int]:
        """Source rows in triage order (flagged, strongest first; errors last)."""
        return self._cols.triage_order().tolist()

    def row_flagged(self, row: int) -> bool:
        """Whether any finding model flags row ``row`` (the engine's rule, derived once)."""
        return bool(self._cols.flagged[row])

    def row_status(self, row: int) -> ScanStatus:
        return _STATUSES[self._cols.status[row]]

    # -- reading rows back -------------------------------------------------------------------
    def result(self, row: int) -> ScanResult:
        """Row ``row``'s result: held, read last, or read back from the store with the rows
        around it (one query)."""
        held = self._held.get(row)
        if held is not None:
            return held
        cached = self._cache.get(row)
        if cached is not None:
            self._cache.move_to_end(row)
            return cached
        n = len(self._cols)
        if not 0 <= row < n:
            raise IndexError(f"row {row} of {n}")
        first = max(0, min(row - PAGE_ROWS // 2, n - PAGE_ROWS))
        self.prefetch(range(first, min(n, first + PAGE_ROWS)))
        cached = self._cache.get(row)
        if cached is None:
            cached = _missing(row)
            self._remember(row, cached)
        self._cache.move_to_end(row)
        return cached

    def prefetch(self, rows: Iterable[int]) -> None:
        """Read ``rows`` that are neither held nor cached back from the store in one query
        (the view asks for the rows around the visible ones before it paints)."""
        cols = self._cols
        keys = [
            (row, cols.batch[row], cols.seq[row])
            for row in rows
            if row not in self._cache and row not in self._held and 0 <= row < len(cols)
        ]
        if not keys or self._store is None:
            return
        for row, result in read_rows(self._store(), self._batches, keys[:FETCH_ROWS]).items():
            self._remember(row, result)

    def _remember(self, row: int, result: ScanResult) -> None:
        self._cache[row] = result
        self._cache.move_to_end(row)
        while len(self._cache) > ROW_CACHE:
            self._cache.popitem(last=False)

    def iter_results(self, rows: Iterable[int]) -> Iterator[ScanResult]:
        """The results of ``rows`` in that order, read a page at a time without filling the
        cache (a selection, a report: maybe every row)."""
        rows = list(rows)
        for start in range(0, len(rows), FETCH_ROWS):
            page = rows[start : start + FETCH_ROWS]
            yield from self.table_report(page).at(range(len(page)))

    def results(self) -> list[ScanResult]:
        """Every row's result, in row order: tests and small tables (it reads them all)."""
        return list(self.iter_results(range(self.rowCount())))

    def row_of(self, result: ScanResult) -> int | None:
        """The row of ``result``: the one this table handed out (:meth:`result`), else the
        row of the same file and content (one light query); None if it is not in the table."""
        for rows in (self._held, self._cache):
            for row, known in rows.items():
                if known is result:
                    return row
        key = (result.file, result.sha256)
        return next((row for row, found in self._row_keys() if found == key), None)

    def _row_keys(self) -> Iterator[tuple[int, tuple[str, str | None]]]:
        """Every row's ``(file, sha256)``: one light query per batch (nothing parsed)."""
        cols = self._cols
        if self._store is not None and self._batches:
            store = self._store()
            for ix, batch_id in enumerate(self._batches):
                rows, seqs = cols.stored_rows(ix)
                if rows:
                    keys = ((s, (f, h)) for s, f, h in store.batch_keys(batch_id))
                    yield from merge_stream(rows, seqs, keys)
        for row, result in self._held.items():
            yield row, (result.file, result.sha256)

    def file_name(self, row: int) -> str:
        """Row ``row``'s file path (held, read last, or one light query)."""
        held = self._held.get(row) or self._cache.get(row)
        if held is not None:
            return held.file
        name = self._names.get(row)
        if name is None and self._store is not None:
            cols = self._cols
            found = list(self._store().batch_keys(self._batches[cols.batch[row]], [cols.seq[row]]))
            name = found[0][1] if found else ""
            self._names[row] = name
            while len(self._names) > NAME_CACHE:
                self._names.popitem(last=False)
        return name or ""

    def table_report(self, rows: Sequence[int] | None = None) -> TableRows:
        """``rows`` (every row when None), in that order, for the report writers: streamed
        from the store in pages by a worker, each flagged scan's thumbnail and class maps
        fetched by the PDF as it draws it; the table's rows are not copied."""
        cols = self._cols
        if rows is None:
            rows = range(len(cols))
        batch = array("H", (cols.batch[r] for r in rows))
        seq = array("q", (cols.seq[r] for r in rows))
        held = {p: self._held[r] for p, r in enumerate(rows) if r in self._held}
        return TableRows(
            self._store() if self._store is not None and self._batches else None,
            self._batches,
            batch,
            seq,
            held,
            self._thumbnail_loader,
            self._detail_loader,
        )

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
        """Results in memory for the report writers: the PDF fetches each flagged scan's
        thumbnail and class maps (:meth:`with_thumbnail`) as it draws it. The window's export
        uses :meth:`table_report` (rows read from the store). The reports package is imported
        here, at export: at start-up reportlab cost the window ~0.3 s."""
        from desktop.engine.reports.source import WithThumbnails

        return WithThumbnails(
            rows, lambda r: self.with_thumbnail(r).thumbnail_png, detail=self.with_thumbnail
        )

    def flags_of(self, result: ScanResult) -> dict[str, bool | None]:
        """Each finding model's flag at the current point and patient choice (the engine's rule)."""
        return finding_flags(result, self._points, self._scope)

    def outside_scope(self, result: ScanResult) -> dict[str, ScopeVerdict]:
        """The models ``result`` is outside the scope of, with the reasons (the engine's rule)."""
        return self._scope.verdicts(result)

    def is_row_flagged(self, result: ScanResult) -> bool:
        return any_flagged(self.flags_of(result))

    def _derive(self, row: int, result: ScanResult) -> _Derived:
        """The engine's flags, scope verdicts and patient group for row ``row``, computed
        once per operating point and scope.

        A repaint asks for them in every cell and role of a row (the flag, score, reason and
        attention cells): re-deriving each time kept the GUI thread in Python for most of a
        repaint, and every Qt-to-Python call then waits for the GIL.
        """
        entry = self._derived.get(row)
        if entry is not None:
            self._derived.move_to_end(row)
            return entry
        entry = (
            finding_flags(result, self._points, self._scope),
            self._scope.verdicts(result),
            self._scope.group(result),
        )
        self._derived[row] = entry
        if len(self._derived) > DERIVED_CACHE:
            self._derived.popitem(last=False)
        return entry

    # -- sorting and filtering (the proxy asks; no result is read for most) ------------------
    def sort_keys(self, column: int) -> np.ndarray:
        """Every row's sort key by ``column``, one number a row: ascending keys are the order
        of the cells' SortRole values, equal values equal keys (the proxy breaks ties by
        row). From the rows' numbers: the Attention column by the engine's triage key (the
        row last, so no two are equal), scores with -1 where the model did not run, flags
        -1/0/1, status words, file names and coded texts by their ranks (no text: last);
        the thumbnail column by row. No row is read back but texts past the coded ones."""
        kind, model_id = self._columns[column]
        cols = self._cols
        n = len(cols)
        if kind is Column.TRIAGE:
            keys = np.empty(n, np.int64)
            keys[cols.triage_order()] = np.arange(n)
            return keys
        if kind is Column.THUMB:
            return np.arange(n, dtype=np.int64)
        if kind in (Column.SCORE, Column.FLAG):
            values = (cols.scores if kind is Column.SCORE else cols.flags).get(model_id or "")
            if values is None:  # new models while the rows are derived: all equal
                return np.zeros(n, np.int64)
            return np.array(values, dtype=np.float64 if kind is Column.SCORE else np.int64)
        if kind is Column.STATUS:
            ranks = _text_ranks(_STATUS_WORDS)
            return np.array([ranks[word] for word in _STATUS_WORDS], np.int64)[
                np.array(cols.status, np.int64)
            ]
        if kind is Column.FILE:
            return np.array(self._file_ranks(), np.int64)
        return self._text_keys(column)

    def _text_keys(self, column: int) -> np.ndarray:
        """A coded text column's keys: each text's rank, no text (None) after all texts;
        a row whose text is past the coded ones (code -2) has it read back."""
        kind = self._columns[column][0]
        cols = self._cols
        codes = np.array(
            {
                Column.MODALITY: cols.modality,
                Column.PATIENT: cols.patient,
                Column.DECISION: cols.decision,
                Column.REASON: cols.reason,
            }[kind],
            np.int64,
        )
        read = {
            int(row): self.data(self.index(int(row), column), SortRole)
            for row in np.flatnonzero(codes == -2)
        }
        extra = {str(text) for text in read.values() if text is not None}
        ranks = _text_ranks([*cols.texts, *extra])
        last = len(ranks)
        by_code = np.array([ranks[text] for text in cols.texts] + [last], np.int64)
        keys = by_code[np.where(codes >= 0, codes, len(cols.texts))]
        for row, text in read.items():
            keys[row] = last if text is None else ranks[str(text)]
        return keys

    def _file_key(self, row: int) -> str:
        return shown_name(self.file_name(row))

    def _file_ranks(self) -> array[int]:
        """Each row's rank by the File column's text (equal names, equal ranks). Ranked
        from one light query per batch once per explicit sort (:meth:`prepare_sort`); rows
        that arrive after are ranked among the names kept from it (their own names are in
        the rows read last), the older rows' ranks moved up where new names come between."""
        n = len(self._cols)
        if self._file_rank is None:
            names = [""] * n
            for row, (file, _sha) in self._row_keys():
                names[row] = shown_name(file)
            self._rank_names = sorted(set(names))
            ranks = _text_ranks(self._rank_names)
            self._file_rank = array("i", (ranks[name] for name in names))
        elif len(self._file_rank) < n:
            new = [self._file_key(row) for row in range(len(self._file_rank), n)]
            merged = sorted(set(self._rank_names).union(new))
            ranks = _text_ranks(merged)
            moved = np.array([ranks[name] for name in self._rank_names], np.int64)
            old = moved[np.array(self._file_rank, np.int64)]
            self._file_rank = array("i", old.astype(np.int32).tobytes())
            self._file_rank.extend(ranks[name] for name in new)
            self._rank_names = merged
        return self._file_rank

    def prepare_sort(self) -> None:
        """Forget the file-name ranks (and the names kept with them): the next sort by name
        ranks every row again from the store."""
        self._file_rank = None
        self._rank_names = []

    def accepts(self, row: int, kind: Filter, search: str) -> bool:
        """Whether the proxy shows row ``row`` under the filter ``kind`` and the file-name
        ``search`` (lower case): from the rows' numbers; the names searched in one query."""
        cols = self._cols
        if search and not self._search_rows(search)[row]:
            return False
        if kind is Filter.FLAGGED:
            return bool(cols.flagged[row])
        if kind is Filter.NOT_SCREENED:
            return _STATUSES[cols.status[row]] is ScanStatus.NOT_CHEST_XRAY
        if kind is Filter.ERRORS:
            return _STATUSES[cols.status[row]] is ScanStatus.ERROR
        return True

    def accepted(self, kind: Filter, search: str) -> np.ndarray:
        """:meth:`accepts` for every row at once, as a boolean array (the proxy's filter)."""
        cols = self._cols
        shown = np.ones(len(cols), bool)
        if search:
            shown &= np.frombuffer(bytes(self._search_rows(search)), np.uint8).astype(bool)
        if kind is Filter.FLAGGED:
            shown &= np.array(cols.flagged, np.int8) != 0
        elif kind in (Filter.NOT_SCREENED, Filter.ERRORS):
            status = ScanStatus.NOT_CHEST_XRAY if kind is Filter.NOT_SCREENED else ScanStatus.ERROR
            shown &= np.array(cols.status, np.int8) == _STATUS_CODE[status]
        return shown

    def _search_rows(self, search: str) -> bytearray:
        """Which rows' file names contain ``search`` (lower case), one byte a row: every
        row's name from one light query per batch when the search changes; rows that came
        since from their own names (the rows read last)."""
        if search != self._search:
            self._search = search
            mask = bytearray(len(self._cols))
            for r, (file, _sha) in self._row_keys():
                mask[r] = search in shown_name(file).lower()
            self._search_mask = mask
        mask = self._search_mask
        for row in range(len(mask), len(self._cols)):
            mask.append(search in self._file_key(row).lower())
        return mask

    # -- QAbstractTableModel -------------------------------------------------------------
    def rowCount(self, parent: _ModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._cols)

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
                Column.SCORE: f"{name}\nscore",  # two lines: the column fits its number
                Column.FLAG: f"{name}\nflag",
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
        if role == Qt.ItemDataRole.ToolTipRole and kind in _HEADER_TIPS:
            return _HEADER_TIPS[kind]
        if role == Qt.ItemDataRole.ToolTipRole and model_id:
            manifest = self._manifests[model_id]
            if kind is Column.SCORE:
                return (
                    f"Probability of {manifest.positive_label} from the {manifest.name} model "
                    f"{manifest.version}"
                )
            return f"Flagged when the score reaches the {self._choice.label()} threshold"
        return None

    def data(self, index: _ModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        row = index.row()
        if not index.isValid() or row >= len(self._cols):
            return None
        if role == FlaggedRole:
            return self.row_flagged(row)
        result = self.result(row)
        if role == ResultRole:
            return result
        kind, model_id = self._columns[index.column()]
        if kind is Column.TRIAGE:
            if role == SortRole:
                return row  # the proxy compares triage keys (ResultsProxy.lessThan)
            if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ToolTipRole):
                return self._attention_text(result, role == Qt.ItemDataRole.ToolTipRole)
            return None
        if kind is Column.THUMB:
            if role == Qt.ItemDataRole.DecorationRole:
                return self._thumbnail(row, result)
            if role == Qt.ItemDataRole.SizeHintRole:
                return QSize(THUMB_HEIGHT + 8, THUMB_HEIGHT + 4)
            if role == SortRole:
                return row
            return None
        if kind is Column.FILE:
            if role in (Qt.ItemDataRole.DisplayRole, SortRole):
                return shown_name(result.file)  # Qt drops undecodable bytes
            if role == Qt.ItemDataRole.ToolTipRole:
                return display_path(result.file)
            return None
        if kind is Column.MODALITY:
            if role in (Qt.ItemDataRole.DisplayRole, SortRole):
                return shown_modality(result)  # empty when refused as not a medical scan
            if role == Qt.ItemDataRole.ToolTipRole and shown_modality(result):
                # the gate's probability only beside its own guess: a scan refused by its MR
                # header shows "MR", and the gate's 0.99 there is its CXR score
                score = shown_modality_score(result)
                if score is not None:
                    return f"{shown_modality(result)} (probability {score:.2f})"
                if result.reason.startswith(HEADER_REFUSAL):
                    return f"{shown_modality(result)} (from the file's DICOM header)"
            return None
        if kind is Column.PATIENT:
            if not result.findings:
                return None
            decision = self._derive(row, result)[2]
            if role in (Qt.ItemDataRole.DisplayRole, SortRole):
                return _patient_cell(decision)
            if role == Qt.ItemDataRole.ToolTipRole:
                return decision.describe()
            return None
        if kind is Column.SCORE:
            finding = result.findings.get(model_id or "")
            outside = self._derive(row, result)[1].get(model_id or "") if finding else None
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
            flag = self._derive(row, result)[0].get(model_id or "")
            name = short_name(self._manifests[model_id]) if model_id else ""
            outside = self._derive(row, result)[1].get(model_id or "") if flag is not None else None
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
            outside = list(self._derive(row, result)[1].values())
            if role in (Qt.ItemDataRole.DisplayRole, SortRole):
                # The cell's warning icon is the mark; a second "⚠" glyph beside it said it twice.
                return _reason_cell(result, outside)
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

    def grow(self, n: int) -> None:
        """``n`` more rows, set by :meth:`put`."""
        self._group.extend(array("b", [0]) * n)
        self._strength.extend(array("d", [0.0]) * n)
        self._flagged.extend(array("h", [0]) * n)

    def put(self, row: int, key: TriageKey) -> None:
        self._group[row] = int(key.group)
        self._strength[row] = key.strength
        self._flagged[row] = key.flagged_models

    def key(self, row: int) -> TriageKey:
        return TriageKey(TriageGroup(self._group[row]), self._strength[row], self._flagged[row])

    def order(self, ties: Sequence[np.ndarray] = ()) -> list[int]:
        """Rows in triage order; equal keys by ``ties``, then in row order."""
        return self.order_array(ties).tolist()

    def order_array(self, ties: Sequence[np.ndarray] = ()) -> np.ndarray:
        """:meth:`order` as an array (the proxy's sort). ``ties``: arrays of one number a
        row, the most significant first, that order rows of equal keys (``np.lexsort`` is
        stable: then row order). The arrays are copied: a view would stop them growing."""
        if not self._group:
            return np.empty(0, np.int64)
        group = np.array(self._group, np.int8)
        strength = np.array(self._strength, np.float64)
        flagged = np.array(self._flagged, np.int16)
        return np.lexsort((*reversed(ties), flagged, strength, group))


def _text_ranks(texts: Iterable[str]) -> dict[str, int]:
    """Each distinct text's rank in sorted order (Python's string order: what ``<`` on the
    cells' texts gives)."""
    return {text: rank for rank, text in enumerate(sorted(set(texts)))}


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


class ResultsProxy(QAbstractProxyModel):
    """The table as shown: the rows its filter keeps, sorted by a column, over a
    :class:`ResultsModel`.

    The order is a NumPy array of source rows (and its inverse, each source row's place or
    -1 when filtered out), built from the rows' numbers in one vectorised sort
    (:meth:`ResultsModel.sort_keys`, ties by source row in either direction;
    :meth:`ResultsModel.accepted`). A ``QSortFilterProxyModel`` with a Python ``lessThan``
    made ~580,000 Python calls to sort 20,000 rows: 1.2-2.9 s with the GUI thread blocked,
    on every explicit sort and every re-sort after a new operating point.

    It stays sorted and filtered as the source changes: rows appended while a batch runs
    are inserted where they belong (``rowsInserted`` per run of neighbouring rows; a chunk
    that lands in many places re-lays the table out at once); a change of the rows' numbers
    (``dataChanged``: a new operating point, patient group or decision) re-sorts and
    re-filters them. A new order or filter is one ``layoutChanged`` with the persistent
    indexes (the selection, the current row) moved to where their rows went, or dropped
    with their rows.
    """

    #: Insertions a chunk of new rows is announced as at most; more (a chunk scattered
    #: over a sorted table) are one layout change.
    MAX_INSERT_RUNS = 64

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._filter = Filter.ALL
        self._search = ""
        self._column = -1  # the sort column; -1: the source's order
        self._order = Qt.SortOrder.AscendingOrder
        self._rows = np.empty(0, np.int64)  # proxy row -> source row
        self._place = np.empty(0, np.int64)  # source row -> proxy row; -1: filtered out
        self._model: ResultsModel | None = None
        #: (the source's signal, the name of this proxy's slot): names, not bound methods,
        #: so the proxy holds no reference to itself (a cycle left a dropped proxy to Python's
        #: cyclic collector, which may destroy the Qt object at any later moment, inside
        #: another object's event handling)
        self._links: list[tuple[Any, str]] = []

    # -- the source --------------------------------------------------------------------------
    def setSourceModel(self, model: QAbstractItemModel | None) -> None:  # type: ignore[override]
        """Follow ``model`` (a :class:`ResultsModel`: the order is built from its numbers)."""
        if model is not None and not isinstance(model, ResultsModel):
            raise TypeError(f"ResultsProxy shows a ResultsModel, not {type(model).__name__}")
        self.beginResetModel()
        for signal, slot in self._links:
            signal.disconnect(getattr(self, slot))
        self._links = []
        super().setSourceModel(model)
        self._model = model
        if model is not None:
            self._links = [
                (model.dataChanged, "_source_data_changed"),
                (model.headerDataChanged, "_source_header_changed"),
                (model.rowsInserted, "_source_rows_inserted"),
                (model.modelAboutToBeReset, "_source_about_to_reset"),
                (model.modelReset, "_source_reset"),
            ]
            # anything else moves rows or columns around (the table never does): start over
            for about, done in (
                (model.rowsAboutToBeRemoved, model.rowsRemoved),
                (model.rowsAboutToBeMoved, model.rowsMoved),
                (model.columnsAboutToBeInserted, model.columnsInserted),
                (model.columnsAboutToBeRemoved, model.columnsRemoved),
                (model.columnsAboutToBeMoved, model.columnsMoved),
                (model.layoutAboutToBeChanged, model.layoutChanged),
            ):
                self._links += [(about, "_source_about_to_reset"), (done, "_source_reset")]
            for signal, slot in self._links:
                signal.connect(getattr(self, slot))
        self._mapping(self._wanted())
        self.endResetModel()

    def _source_about_to_reset(self, *_args: object) -> None:
        self.beginResetModel()

    def _source_reset(self, *_args: object) -> None:
        if self._column >= self.columnCount():
            self._column = -1
        self._mapping(self._wanted())
        self.endResetModel()

    def _source_header_changed(self, orientation: Qt.Orientation, first: int, last: int) -> None:
        if orientation == Qt.Orientation.Horizontal:
            emit(self.headerDataChanged, orientation, first, last)

    def _source_data_changed(
        self, top_left: QModelIndex, bottom_right: QModelIndex, roles: Sequence[int] = ()
    ) -> None:
        """Re-sort and re-filter when what they read may have changed (the sort or filter
        roles, or every role), then pass the change on for the rows still shown."""
        if not roles or {SortRole, FlaggedRole, Qt.ItemDataRole.DisplayRole} & set(roles):
            self._relayout(self._wanted())
        first, last = top_left.row(), bottom_right.row()
        if last - first + 1 >= len(self._place):  # every row: no search for their places
            low, high = 0, len(self._rows) - 1
        else:
            places = self._place[first : last + 1]
            places = places[places >= 0]
            low, high = (int(places.min()), int(places.max())) if len(places) else (0, -1)
        if low <= high:
            emit(
                self.dataChanged,
                self.index(low, top_left.column()),
                self.index(high, bottom_right.column()),
                list(roles),
            )

    def _source_rows_inserted(self, parent: QModelIndex, first: int, last: int) -> None:
        """New source rows (the table appends them) join the order where they belong."""
        if parent.isValid():
            return
        if first != len(self._place):  # not an append: the source's rows moved
            self.beginResetModel()
            self._source_reset()
            return
        wanted = self._wanted()
        new = wanted >= first
        runs = _runs(np.flatnonzero(new))
        kept = np.array_equal(wanted[~new], self._rows)  # the rows shown keep their order
        if not runs and kept:
            self._mapping(self._rows)  # none of the new rows shown: only the inverse grows
            return
        if not kept or len(runs) > self.MAX_INSERT_RUNS:
            self._relayout(wanted)
            return
        present = ~new
        for start, stop in runs:  # in order: each run's place counts the runs before it
            self.beginInsertRows(QModelIndex(), start, stop - 1)
            present[start:stop] = True
            self._mapping(wanted[present])
            self.endInsertRows()

    # -- the order -------------------------------------------------------------------------
    def _wanted(self) -> np.ndarray:
        """The source rows to show, in order: those the filter accepts, by the sort
        column's keys (descending: the keys negated), ties by source row."""
        model = self._model
        if model is None:
            return np.empty(0, np.int64)
        rows = np.flatnonzero(model.accepted(self._filter, self._search))
        if not 0 <= self._column < model.columnCount() or not len(rows):
            return rows
        keys = model.sort_keys(self._column)[rows]
        if self._order == Qt.SortOrder.DescendingOrder:
            keys = -keys
        return rows[np.argsort(keys, kind="stable")]

    def _mapping(self, rows: np.ndarray) -> None:
        """Show source ``rows`` in that order (the caller tells the views)."""
        count = self._model.rowCount() if self._model is not None else 0
        self._rows = np.asarray(rows, np.int64)
        self._place = np.full(count, -1, np.int64)
        self._place[self._rows] = np.arange(len(self._rows))

    def _relayout(self, rows: np.ndarray) -> None:
        """A new order (or a new set of rows shown) as one layout change: persistent
        indexes (selection, current row) follow their source rows, or go with them."""
        if np.array_equal(rows, self._rows) and len(self._place) == (
            self._model.rowCount() if self._model is not None else 0
        ):
            return
        hint = QAbstractItemModel.LayoutChangeHint.VerticalSortHint
        emit(self.layoutAboutToBeChanged[_LAYOUT_SIGNATURE], [], hint)
        before = self.persistentIndexList()
        sources = [(int(self._rows[i.row()]), i.column()) for i in before]
        self._mapping(rows)
        after = []
        for row, column in sources:
            place = int(self._place[row]) if row < len(self._place) else -1
            after.append(self.index(place, column) if place >= 0 else QModelIndex())
        self.changePersistentIndexList(before, after)
        emit(self.layoutChanged[_LAYOUT_SIGNATURE], [], hint)

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        """Sort by ``column`` (-1: the source's order); what the view's header asks for. A
        sort the user asks for ranks the file names afresh (rows came since)."""
        if self._model is not None:
            self._model.prepare_sort()
        self._column, self._order = column, order
        self._relayout(self._wanted())

    def sortColumn(self) -> int:
        return self._column

    def sortOrder(self) -> Qt.SortOrder:
        return self._order

    def set_filter(self, value: Filter) -> None:
        self._filter = value
        self._relayout(self._wanted())

    def set_search(self, text: str) -> None:
        self._search = text.strip().lower()
        self._relayout(self._wanted())

    def accepts_row(self, source_row: int) -> bool:
        """Whether the filter and search show source row ``source_row``."""
        if self._model is None:
            return True
        return self._model.accepts(source_row, self._filter, self._search)

    # -- QAbstractProxyModel -----------------------------------------------------------------
    def mapToSource(self, proxy_index: _ModelIndex) -> QModelIndex:
        row = proxy_index.row()
        if self._model is None or not proxy_index.isValid() or row >= len(self._rows):
            return QModelIndex()
        return self._model.index(int(self._rows[row]), proxy_index.column())

    def mapFromSource(self, source_index: _ModelIndex) -> QModelIndex:
        row = source_index.row()
        if not source_index.isValid() or row >= len(self._place) or self._place[row] < 0:
            return QModelIndex()
        return self.index(int(self._place[row]), source_index.column())

    def index(self, row: int, column: int, parent: _ModelIndex = QModelIndex()) -> QModelIndex:  # noqa: B008
        if parent.isValid() or not (
            0 <= row < len(self._rows) and 0 <= column < self.columnCount()
        ):
            return QModelIndex()
        return self.createIndex(row, column)

    def parent(self, child: _ModelIndex | None = None) -> Any:  # type: ignore[override]
        """No row has a parent (a table); with no index, the QObject parent."""
        if child is None:
            return super().parent()
        return QModelIndex()

    def sibling(self, row: int, column: int, index: _ModelIndex) -> QModelIndex:
        return self.index(row, column)

    def rowCount(self, parent: _ModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: _ModelIndex = QModelIndex()) -> int:  # noqa: B008
        if parent.isValid() or self._model is None:
            return 0
        return self._model.columnCount()

    def hasChildren(self, parent: _ModelIndex = QModelIndex()) -> bool:  # noqa: B008
        return not parent.isValid() and len(self._rows) > 0 and self.columnCount() > 0

    def data(self, index: _ModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        """The source cell's data, the row mapped here (one Python call a cell, not two)."""
        row = index.row()
        if self._model is None or not index.isValid() or row >= len(self._rows):
            return None
        return self._model.data(self._model.index(int(self._rows[row]), index.column()), role)

    def headerData(
        self,
        section: int,
        orientation: Qt.Orientation,
        role: int = Qt.ItemDataRole.DisplayRole,
    ) -> Any:
        if self._model is None:
            return None
        if orientation == Qt.Orientation.Vertical:
            if not 0 <= section < len(self._rows):
                return None
            section = int(self._rows[section])
        return self._model.headerData(section, orientation, role)


#: The layout signals' overload that carries a hint (PySide picks the one without otherwise).
_LAYOUT_SIGNATURE = "QList<QPersistentModelIndex>,QAbstractItemModel::LayoutChangeHint"


def _runs(positions: np.ndarray) -> list[tuple[int, int]]:
    """Sorted ``positions`` as runs of neighbours: ``(start, stop)`` each, stop excluded."""
    if not len(positions):
        return []
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    starts = positions[np.r_[0, breaks]]
    stops = positions[np.r_[breaks - 1, len(positions) - 1]] + 1
    return list(zip(starts.tolist(), stops.tolist(), strict=True))


__all__ = [
    "Column",
    "Filter",
    "FlaggedRole",
    "LoadedRows",
    "ResultRole",
    "ResultsModel",
    "ResultsProxy",
    "RowColumns",
    "SortRole",
    "TableRows",
    "short_name",
]

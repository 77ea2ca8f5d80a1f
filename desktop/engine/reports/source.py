"""Where report writers get their results: a re-iterable stream, thumbnails looked up one by one.

A 20,000-scan batch does not fit in memory as ``ScanResult`` objects with their thumbnails
(the issue that moved this here: ``medscreen classify`` peaked at 1 GB writing CSV and JSON).
So writers take any *re-iterable* of results — a list in tests, :class:`StoredBatch` in the CLI
and the window — and make as many passes as they need (counts first, then rows), holding one
result at a time. A report that shows images (the PDF) asks :func:`thumbnail_of` for each
flagged scan's thumbnail when it draws it, and lets it go.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol, runtime_checkable

from desktop.engine.results import ScanResult
from desktop.engine.store import ResultsStore


@runtime_checkable
class ThumbnailSource(Protocol):
    """Results that can fetch a result's thumbnail on demand."""

    def thumbnail(self, result: ScanResult) -> bytes | None: ...


@runtime_checkable
class RowSource(Protocol):
    """Results that name each result's row and fetch results again by their rows: the PDF
    ranks a batch by compact keys (:class:`~desktop.engine.triage.TriageIndex`) and fetches
    each page's scans when it prints them, so it never holds the whole batch."""

    def rows(self) -> Iterator[tuple[int, ScanResult]]: ...

    def at(self, rows: Sequence[int]) -> list[ScanResult]: ...


@runtime_checkable
class DetailSource(Protocol):
    """Results that can fetch a result again in full (class maps and thumbnail) on demand."""

    def detail(self, result: ScanResult) -> ScanResult | None: ...


#: Results fetched again by row in one query (SQLite allows 999 parameters on old builds).
FETCH_ROWS = 500


class StoredBatch:
    """A stored batch's results, streamed from the store in input order without thumbnails.

    Each iteration is a new pass over the store (one SQLite cursor), so counting and writing
    rows cost no memory per scan; :meth:`thumbnail` fetches one scan's thumbnail.
    """

    def __init__(self, store: ResultsStore, batch_id: str) -> None:
        self.store = store
        self.batch_id = batch_id

    def __iter__(self) -> Iterator[ScanResult]:
        return self.store.batch_results(self.batch_id, thumbnails=False)

    def rows(self) -> Iterator[tuple[int, ScanResult]]:
        """Each result with its row: the item's ``seq`` in the batch."""
        return self.store.batch_rows(self.batch_id, thumbnails=False)

    def at(self, rows: Sequence[int]) -> list[ScanResult]:
        """The results of items ``rows``, in the order asked (one query per 500 rows)."""
        found: dict[int, ScanResult] = {}
        for start in range(0, len(rows), FETCH_ROWS):
            wanted = rows[start : start + FETCH_ROWS]
            found.update(self.store.batch_rows(self.batch_id, thumbnails=False, seqs=wanted))
        missing = [row for row in rows if row not in found]
        if missing:  # the batch changed under the report (deleted meanwhile)
            raise LookupError(f"batch {self.batch_id} no longer holds items {missing[:5]}")
        return [found[row] for row in rows]

    def thumbnail(self, result: ScanResult) -> bytes | None:
        if result.thumbnail_png is not None:
            return result.thumbnail_png
        if not result.sha256 or not result.models_key:
            return None
        return self.store.thumbnail(result.sha256, result.models_key)

    def detail(self, result: ScanResult) -> ScanResult | None:
        """``result`` as stored, with its class maps and thumbnail (one query): what the PDF
        fetches for each flagged scan's block, so its triage records need not keep maps."""
        if not result.sha256 or not result.models_key:
            return None
        return self.store.cached_result(result.sha256, result.models_key, result.file)


class WithThumbnails:
    """Results already in memory (a table's rows, without images) and a thumbnail lookup,
    and optionally a lookup of a result in full (class maps too).

    What the window hands the report writers: the PDF then fetches each flagged scan's
    thumbnail (and class maps, which the table's rows drop) while drawing its section,
    instead of all of them being loaded first.
    """

    def __init__(
        self,
        results: Sequence[ScanResult],
        lookup: Callable[[ScanResult], bytes | None],
        detail: Callable[[ScanResult], ScanResult | None] | None = None,
    ) -> None:
        self._results = results
        self._lookup = lookup
        self._detail = detail

    def detail(self, result: ScanResult) -> ScanResult | None:
        return self._detail(result) if self._detail is not None else None

    def __iter__(self) -> Iterator[ScanResult]:
        return iter(self._results)

    def __len__(self) -> int:
        return len(self._results)

    def rows(self) -> Iterator[tuple[int, ScanResult]]:
        return enumerate(self._results)

    def at(self, rows: Sequence[int]) -> list[ScanResult]:
        return [self._results[row] for row in rows]

    def thumbnail(self, result: ScanResult) -> bytes | None:
        return result.thumbnail_png if result.thumbnail_png is not None else self._lookup(result)


def reiterable(results: Iterable[ScanResult]) -> Iterable[ScanResult]:
    """``results`` itself when it can be iterated again; a one-shot iterator becomes a list.

    Writers make several passes; a generator can be read only once, so it is kept (its
    memory then grows with the batch: pass a :class:`StoredBatch` or a list instead).
    """
    if iter(results) is results:  # an iterator: iterating it again would find it empty
        return list(results)
    return results


def iter_rows(results: Iterable[ScanResult]) -> Iterator[tuple[int, ScanResult]]:
    """``results`` with each one's row: a :class:`RowSource`'s own, else its position."""
    if isinstance(results, RowSource):
        return results.rows()
    return enumerate(results)


def results_at(results: Iterable[ScanResult], rows: Sequence[int]) -> list[ScanResult]:
    """The results of ``rows`` (from :func:`iter_rows`), in the order asked.

    A :class:`RowSource` fetches them; a sequence is indexed; any other re-iterable is read
    once more, keeping only the rows asked for.
    """
    if isinstance(results, RowSource):
        return results.at(rows)
    if isinstance(results, Sequence):
        return [results[row] for row in rows]
    wanted = {row: n for n, row in enumerate(rows)}
    out: list[ScanResult | None] = [None] * len(rows)
    for row, result in enumerate(results):
        n = wanted.get(row)
        if n is not None:
            out[n] = result
    if any(item is None for item in out):
        raise LookupError("the results changed between two passes of the report")
    return out  # type: ignore[return-value]


def detail_of(results: Iterable[ScanResult], result: ScanResult) -> ScanResult:
    """``result`` in full (class maps, thumbnail) when ``results`` can fetch it, else itself."""
    if isinstance(results, DetailSource):
        full = results.detail(result)
        if full is not None:
            return full
    return result


def thumbnail_of(results: Iterable[ScanResult], result: ScanResult) -> bytes | None:
    """``result``'s thumbnail: its own bytes if it carries them, else fetched from ``results``."""
    if result.thumbnail_png is not None:
        return result.thumbnail_png
    if isinstance(results, ThumbnailSource):
        return results.thumbnail(result)
    return None

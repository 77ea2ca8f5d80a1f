"""Triage order: which scans a clinician should read first, the same in every face.

One rule, used by the results table's default sort, F3 / the viewer's next and previous, and
the report's ranked list and per-scan pages:

1. flagged scans first, the most clearly positive first;
2. then the scans screened without a flag, the nearest to a threshold first;
3. then scans the gate refused (not chest X-rays), then files that could not be read.

"How far past the threshold" must compare models whose thresholds differ (TB at 0.23, another
at 0.78), so it is measured as the share of the distance the score has travelled from the
threshold towards certainty: ``(p - t) / (1 - t)`` above the threshold (0 % at the threshold,
100 % at a score of 1) and ``(p - t) / t`` below it (−100 % at a score of 0). A reader sees it
as "TB 0.81, 75 % of the way from its threshold 0.23 to 1": a percentage, not a logit.

Flags are not stored (ARCHITECTURE.md): the order is derived from the probabilities and the
operating points the caller has resolved, so changing the point re-ranks with no re-run.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from desktop.engine.manifest import OperatingPoint
from desktop.engine.results import ScanResult, ScanStatus, finding_flags, scan_points


class TriageGroup(enum.IntEnum):
    """The four bands of the triage order, in reading order."""

    FLAGGED = 0
    NOT_FLAGGED = 1
    REFUSED = 2  # the gate refused it: not a chest X-ray
    ERROR = 3  # could not be read or screened


def margin(probability: float, threshold: float) -> float:
    """How far ``probability`` is past ``threshold``, in [-1, 1] (see the module text).

    0 at the threshold; 1 at a score of 1 when above it; -1 at a score of 0 when below it.
    A threshold of exactly 0 or 1 leaves no room on one side: that side's margin is 0.
    """
    if probability >= threshold:
        room = 1.0 - threshold
        return 0.0 if room <= 0 else min(1.0, (probability - threshold) / room)
    return 0.0 if threshold <= 0 else max(-1.0, (probability - threshold) / threshold)


@dataclass(frozen=True, order=True)
class TriageKey:
    """A sortable key: lower sorts first. ``strength`` is the largest margin, negated."""

    group: TriageGroup
    strength: float  # -max margin over the models (so the strongest comes first)
    flagged_models: int  # -(number of models that flag it): more flags first on a tie


def triage_key(
    result: ScanResult, points: Mapping[str, OperatingPoint | None], scope: object = None
) -> TriageKey:
    """The scan's place in the triage order under resolved ``points`` (one per finding model).

    ``scope`` is passed to :func:`finding_flags` unchanged (a model run outside its scope
    raises no flag, and so does not rank the scan as flagged).
    """
    if result.status is ScanStatus.ERROR:
        return TriageKey(TriageGroup.ERROR, 0.0, 0)
    if result.status is ScanStatus.NOT_CHEST_XRAY:
        return TriageKey(TriageGroup.REFUSED, 0.0, 0)
    flags = (
        finding_flags(result, points, scope)  # type: ignore[arg-type]
        if scope is not None
        else finding_flags(result, points)
    )
    # margins from the scan's own thresholds (its patient group's, where a point has groups)
    points = scan_points(result, points, scope)  # type: ignore[arg-type]
    margins: dict[str, float] = {
        mid: margin(result.findings[mid].probability, point.threshold)
        for mid, point in points.items()
        if point is not None and mid in result.findings
    }
    flagged = [mid for mid, flag in flags.items() if flag and mid in margins]
    if flagged:
        return TriageKey(TriageGroup.FLAGGED, -max(margins[mid] for mid in flagged), -len(flagged))
    # Not flagged: the nearest to a threshold first. A model run outside its scope may score
    # past its threshold without a flag; it ranks as "at the threshold", never above a flag.
    best = min(0.0, max(margins.values(), default=-1.0))
    return TriageKey(TriageGroup.NOT_FLAGGED, -best, 0)


@dataclass(frozen=True)
class Attention:
    """One flag a reader's attention is drawn to, and how far past its threshold it is."""

    model_id: str
    probability: float
    threshold: float  # the scan's own (its patient group's, where the point has groups)
    margin: float  # :func:`margin`, in [0, 1] for a flag


def attention(
    result: ScanResult, points: Mapping[str, OperatingPoint | None], scope: object = None
) -> list[Attention]:
    """The flags of ``result`` that draw attention, in model order: exactly the models that
    flag it under the one flag rule (:func:`finding_flags` with ``scope``), so a model run
    outside its scope is never named, however far its score is past the threshold.

    The table's Attention cell names the strongest (:func:`strongest`); the report's ranked
    list names them all.
    """
    flags = (
        finding_flags(result, points, scope)  # type: ignore[arg-type]
        if scope is not None
        else finding_flags(result, points)
    )
    own = scan_points(result, points, scope)  # type: ignore[arg-type]
    out = []
    for model_id, flag in flags.items():
        point = own.get(model_id)
        if flag and point is not None:
            p = result.findings[model_id].probability
            out.append(Attention(model_id, p, point.threshold, margin(p, point.threshold)))
    return out


def strongest(flags: Iterable[Attention]) -> Attention | None:
    """The flag furthest past its threshold (the first on a tie), or None without one."""
    best: Attention | None = None
    for item in flags:
        if best is None or item.margin > best.margin:
            best = item
    return best


#: A :class:`TriageKey` in fixed-size fields, with the scan's row id (its place in the input,
#: or a store's row): 19 bytes a scan where a key object with its result took ~2 KB.
TRIAGE_DTYPE = np.dtype(
    [("group", np.int8), ("strength", np.float64), ("flagged_models", np.int16), ("row", np.int64)]
)


class TriageIndex:
    """The triage keys of a whole batch in one compact array, to be ordered at once.

    A report must know every scan's place before it prints the first line, so it holds one
    key per scan: as :class:`TriageKey` objects beside their results that was ~2 KB a scan
    (40 MB for 20,000, measured); here it is the key's three fields and a row id by which
    the caller fetches the scan again when it prints it. The order is :class:`TriageKey`'s
    own (group, then strength, then flagged models; equal keys keep the order they were
    added in): the rule itself stays in :func:`triage_key`.
    """

    def __init__(self, capacity: int = 1024) -> None:
        self._keys = np.empty(max(1, capacity), TRIAGE_DTYPE)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, key: TriageKey, row: int) -> None:
        """Append ``key`` of the scan ``row`` (grows the array by doubling)."""
        if self._size == len(self._keys):
            grown = np.empty(2 * len(self._keys), TRIAGE_DTYPE)
            grown[: self._size] = self._keys
            self._keys = grown
        self._keys[self._size] = (int(key.group), key.strength, key.flagged_models, row)
        self._size += 1

    def ordered(self) -> np.ndarray:
        """The keys (:data:`TRIAGE_DTYPE`) in triage order; stable, as ``sorted`` on
        :class:`TriageKey` is (``np.lexsort`` is a stable sort; the last key is primary)."""
        keys = self._keys[: self._size]
        return keys[np.lexsort((keys["flagged_models"], keys["strength"], keys["group"]))]


def key_at(keys: np.ndarray, position: int) -> TriageKey:
    """The :class:`TriageKey` stored at ``position`` of a :data:`TRIAGE_DTYPE` array."""
    item = keys[position]
    return TriageKey(
        TriageGroup(int(item["group"])), float(item["strength"]), int(item["flagged_models"])
    )


def triage_order(
    results: Iterable[ScanResult],
    points: Mapping[str, OperatingPoint | None],
    scope: object = None,
) -> list[int]:
    """Indices of ``results`` in triage order (stable: equal keys keep their input order).

    One pass over ``results`` holding one compact key per scan (:class:`TriageIndex`), so a
    stream of results is never all in memory.
    """
    index = TriageIndex()
    for row, result in enumerate(results):
        index.add(triage_key(result, points, scope), row)
    return [int(row) for row in index.ordered()["row"]]


def margin_text(probability: float, threshold: float) -> str:
    """The margin in a reader's words: ``"+75 % past its threshold"`` / ``"12 % below …"``."""
    value = margin(probability, threshold)
    if value >= 0:
        return f"{value * 100:.0f} % of the way from its threshold {threshold:.2f} to 1"
    return f"{-value * 100:.0f} % of the way from its threshold {threshold:.2f} down to 0"

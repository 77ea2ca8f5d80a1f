"""The batch history a programme reads: one row per folder and model version, re-runs merged.

A clinic screens the same folder again (a scan was added, a batch was cancelled and resumed,
the operating point was changed): each run is a batch in the store, but a programme manager
wants one line per folder and model version with what it holds now. The runs of a group are
merged by file path, the latest result of each file counting, and counted with the engine's
:class:`~desktop.engine.results.BatchCounts` at the operating point chosen now (flags are never
stored), so the history, the window's status line and the reports agree.

A site calibration's runs (labelled scans screened to set a threshold, ``BatchKind``) are rows
of their own, marked as such (:attr:`HistoryRow.is_calibration`), never merged with a clinic's
batches of the same folder, so they cannot be mistaken for screening.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from desktop.engine.manifest import ModelManifest
from desktop.engine.results import (
    BatchCounts,
    ScanResult,
    ScopeRule,
    ThresholdChoice,
    operating_points,
)
from desktop.engine.store import BatchInfo, BatchKind, ResultsStore


@dataclass(frozen=True)
class HistoryRow:
    """The runs of one folder (set of inputs) with one model version set."""

    folder: str  # the full path; several inputs are joined with "; "
    models_key: str
    batch_ids: tuple[str, ...]  # newest first
    first_started: str  # ISO 8601, UTC
    last_started: str
    status: str  # the newest run's status
    operators: tuple[str, ...]  # who ran them, newest first, each once
    counts: BatchCounts | None  # None: counted without models (no flags known)
    kind: str = BatchKind.SCREENING  # what the runs were for (BatchKind)

    @property
    def runs(self) -> int:
        return len(self.batch_ids)

    @property
    def is_calibration(self) -> bool:
        """A site calibration's labelled scans, not a clinic's screening batch."""
        return self.kind == BatchKind.CALIBRATION

    @property
    def kind_text(self) -> str:
        """The kind in a reader's words: "Screening" or "Calibration"."""
        return self.kind.capitalize()

    def model_versions(self) -> str:
        """``"modality 1.0.0, tb 1.0.0, pneumonia 1.0.1"`` from the models key."""
        parts = []
        for part in self.models_key.split("|"):
            if part.startswith("rules@"):  # the engine's rules version, not a model
                continue
            name, _, rest = part.partition("@")
            version = rest.split("#", 1)[0]
            parts.append(f"{name} {version}".strip())
        return ", ".join(p for p in parts if p)

    def matches(self, text: str) -> bool:
        """Case-insensitive search over the folder, the operators, the versions and ids."""
        needle = text.strip().lower()
        if not needle:
            return True
        hay = " ".join(
            [self.folder, self.model_versions(), self.kind, *self.operators, *self.batch_ids]
        )
        return needle in hay.lower()


def _folder(info: BatchInfo) -> str:
    return "; ".join(info.inputs) if info.inputs else "(no input)"


def history_rows(
    store: ResultsStore,
    manifests: Mapping[str, ModelManifest] | None = None,
    choice: ThresholdChoice | None = None,
    *,
    limit: int = 500,
) -> list[HistoryRow]:
    """The history, newest group first. With ``manifests`` (the loaded models) each group is
    counted at ``choice``; the counts of a group whose models are not loaded (another
    version) have no flags (``flagged`` empty) but every other total."""
    batches = store.batches(limit)
    operators = store.batch_operators()
    groups: dict[tuple[str, str, str], list[BatchInfo]] = {}
    for info in batches:  # newest first; a calibration never merges with screening runs
        groups.setdefault((_folder(info), info.models_key, info.kind), []).append(info)
    points = operating_points(manifests or {}, choice or ThresholdChoice(), strict=False)
    scope = ScopeRule.of(manifests or {})
    rows = []
    for (folder, models_key, kind), runs in groups.items():
        counts = BatchCounts.tally(_merged(store, runs), points, scope)
        seen = [operators[r.id] for r in runs if operators.get(r.id)]
        rows.append(
            HistoryRow(
                folder=folder,
                models_key=models_key,
                batch_ids=tuple(r.id for r in runs),
                first_started=runs[-1].started_at,
                last_started=runs[0].started_at,
                status=runs[0].status,
                operators=tuple(dict.fromkeys(seen)),
                counts=counts,
                kind=kind,
            )
        )
    return rows


def _merged(store: ResultsStore, runs: Sequence[BatchInfo]) -> Iterable[ScanResult]:
    """The latest result of every file over the runs (oldest first, later runs win)."""
    latest: dict[str, ScanResult] = {}
    for info in reversed(runs):
        for result in store.batch_results(info.id, thumbnails=False):
            latest[result.file] = result
    return latest.values()

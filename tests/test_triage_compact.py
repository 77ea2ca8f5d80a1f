"""The triage order held as compact keys is exactly the order of sorted :class:`TriageKey`s.

Reports rank a whole batch before printing its first line; they hold one fixed-size key per
scan (:class:`~desktop.engine.triage.TriageIndex`) and fetch the scans again by row as they
print them. These tests compare that order with the definition it replaced (``sorted`` on
the key objects, stable) on a real batch screened by the shipped models — flagged scans,
exact ties (the same image under several names), scans outside a model's scope, refused
non-chest images and unreadable files — and on keys built to tie in every field.
"""

from __future__ import annotations

import random
import shutil
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest

from desktop.engine.patients import PatientChoice, PatientGroup
from desktop.engine.reports import ReportContext, StoredBatch
from desktop.engine.reports import pdf as pdf_report
from desktop.engine.reports._common import scan_scope
from desktop.engine.reports.source import iter_rows, results_at
from desktop.engine.results import ScanResult, ThresholdChoice
from desktop.engine.triage import (
    TRIAGE_DTYPE,
    TriageGroup,
    TriageIndex,
    TriageKey,
    key_at,
    triage_key,
    triage_order,
)
from tests.conftest import DATA


def _sorted_keys(keys: list[TriageKey]) -> list[int]:
    """The order before the compact keys: the key objects sorted (stable)."""
    return sorted(range(len(keys)), key=keys.__getitem__)


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """A real batch screened by the shipped models: both chest sets, DICOM, a hand and head
    CTs, three images each under two more names (exact ties) and a damaged file."""
    from desktop.engine.inference import choose_device
    from desktop.engine.registry import default_model_dirs, load_model_set
    from desktop.engine.runner import BatchRunner, run_to_end
    from desktop.engine.store import ResultsStore

    root = tmp_path_factory.mktemp("ranked")
    for sub in ("tb", "pneumonia", "mednist/Hand", "mednist/HeadCT", "dicom"):
        shutil.copytree(DATA / sub, root / sub)
    twins = [
        *sorted((DATA / "tb" / "tuberculosis").glob("*.png"))[:1],
        *sorted((DATA / "pneumonia" / "pneumonia").glob("*.jpeg"))[:1],
        *sorted((DATA / "tb" / "normal").glob("*.png"))[:1],
    ]
    for n, source in enumerate(twins):
        for copy in ("a", "b"):
            (root / "twins").mkdir(exist_ok=True)
            shutil.copy(source, root / "twins" / f"{n}{copy}{source.suffix}")
    chest = sorted((DATA / "tb" / "normal").glob("*.png"))[0]
    (root / "damaged.png").write_bytes(chest.read_bytes()[:3000])
    store = ResultsStore(tmp_path_factory.mktemp("db") / "results.sqlite3")
    models = load_model_set(default_model_dirs(), choose_device("cpu"))
    summary = run_to_end(BatchRunner(models, store, workers=1).run([root]))
    yield store, summary.batch_id, models
    store.close()


@pytest.mark.parametrize(
    ("choice", "patients"),
    [
        ("screening", PatientChoice()),  # groups from the files and the age model
        ("balanced", PatientChoice(batch=PatientGroup.ADULT)),
        ("screening", PatientChoice(batch=PatientGroup.CHILD)),  # TB outside its scope
    ],
)
def test_compact_order_is_the_sorted_keys_order_on_a_real_batch(stored, choice, patients):
    store, batch_id, models = stored
    ctx = ReportContext.for_batch(
        batch_id, models, ThresholdChoice.parse(choice), patients=patients
    )
    results = list(store.batch_results(batch_id, thumbnails=False))
    points, scope = ctx.points(), ctx.scope_rule
    keys = [triage_key(r, points, scope) for r in results]
    reference = _sorted_keys(keys)

    # the batch holds what the order must get right
    groups = Counter(k.group for k in keys)
    assert groups[TriageGroup.REFUSED] >= 6 and groups[TriageGroup.ERROR] >= 1, groups
    assert groups[TriageGroup.NOT_FLAGGED] >= 1
    tied = [k for k, n in Counter(keys).items() if n > 1 and k.group <= TriageGroup.NOT_FLAGGED]
    assert tied, "the twins must tie"
    outside = [r.file for r in results if scan_scope(r, ctx)]
    if patients.batch is PatientGroup.CHILD:
        assert len(outside) == groups[TriageGroup.FLAGGED] + groups[TriageGroup.NOT_FLAGGED]
    if patients.batch is PatientGroup.ADULT:
        assert groups[TriageGroup.FLAGGED] >= 5 and not outside

    # the engine's order (what the table and the viewer use) is the reference, exactly
    assert triage_order(results, points, scope) == reference
    assert triage_order(iter(results), points, scope) == reference  # a one-shot stream too

    # the PDF's ranking over the store: the same scans, keys and numbers, fetched by row
    ranking = pdf_report._rank(StoredBatch(store, batch_id), ctx)
    lines = list(ranking.lines())
    assert [line.result.file for line in lines] == [results[i].file for i in reference]
    assert [line.key for line in lines] == [keys[i] for i in reference]
    assert [line.rank for line in lines] == list(range(1, len(results) + 1))
    assert ranking.flagged == groups[TriageGroup.FLAGGED]
    assert ranking.screened == groups[TriageGroup.FLAGGED] + groups[TriageGroup.NOT_FLAGGED]
    assert [line.result.file for line in ranking.outside_lines()] == [
        results[i].file for i in reference if scan_scope(results[i], ctx)
    ]
    # a slice (a continuation file's flagged scans) keeps its triage numbers
    assert [line.rank for line in ranking.lines(3, 7)] == [4, 5, 6, 7]
    # what the ranking holds per scan: a 19-byte key and one flag, never the scan
    assert ranking.keys.dtype == TRIAGE_DTYPE and TRIAGE_DTYPE.itemsize == 19
    assert ranking.keys.nbytes + ranking.outside.nbytes == 20 * len(results)
    assert not any(isinstance(v, ScanResult | list) for v in vars(ranking).values())


def test_compact_order_keeps_ties_and_signed_zeros_in_input_order():
    """Keys made to tie in every field (strengths of 0.0 and -0.0 among them): the compact
    order is the stable sort of the key objects, row for row."""
    rng = random.Random(20261201)
    strengths = [0.0, -0.0, -1.0, -0.25, 0.5, 1.0, -0.5]
    keys = [
        TriageKey(rng.choice(list(TriageGroup)), rng.choice(strengths), -rng.randint(0, 2))
        for _ in range(3000)
    ]
    index = TriageIndex(capacity=7)  # grows by doubling on the way
    for row, key in enumerate(keys):
        index.add(key, row)
    ordered = index.ordered()
    assert len(index) == 3000
    assert ordered["row"].tolist() == _sorted_keys(keys)
    assert [key_at(ordered, n) for n in range(len(keys))] == sorted(keys)


class _OneWayStream:
    """A re-iterable that is neither a sequence nor a row source (read again to fetch)."""

    def __init__(self, items: list[ScanResult]) -> None:
        self.items = items
        self.passes = 0

    def __iter__(self) -> Iterator[ScanResult]:
        self.passes += 1
        return iter(self.items)


def test_results_are_fetched_by_row_from_any_reiterable(stored):
    store, batch_id, _ = stored
    stored_batch = StoredBatch(store, batch_id)
    rows = [row for row, _ in iter_rows(stored_batch)]
    assert rows == sorted(rows) and len(rows) == len(set(rows))
    everything = list(stored_batch)
    wanted = [rows[5], rows[0], rows[-1]]
    files = [r.file for r in results_at(stored_batch, wanted)]
    assert files == [everything[5].file, everything[0].file, everything[-1].file]
    stream = _OneWayStream(everything)
    assert [r.file for r in results_at(stream, [5, 0, len(everything) - 1])] == files
    assert stream.passes == 1
    assert [r.file for r in results_at(everything, [5, 0])] == files[:2]
    with pytest.raises(LookupError, match="no longer holds"):
        results_at(stored_batch, [10**9])
    # rows as the key array holds them (NumPy integers) fetch the same scans
    assert [r.file for r in results_at(stored_batch, [np.int64(rows[1])])] == [everything[1].file]

"""Labelled scans in, scores joined to labels out: the data side of site calibration.

A clinic gives its known outcomes in one of two plain forms:

* a folder with one sub-folder per label (``normal/``, ``tuberculosis/``), or
* a CSV of ``file,label`` rows, file paths absolute or relative to the CSV's folder.

Labels are the model's own label names from its manifest, compared case-insensitively, so
``Tuberculosis/`` and ``TUBERCULOSIS`` both work and nothing in the code names a model.
The scans are screened by the ordinary :class:`BatchRunner` — the modality gate, the store,
the reuse of scans already screened by the same model versions — and every file that
cannot be used is kept with a plain reason (missing, unreadable, not a chest X-ray, unknown
label, labelled twice), so the clinic can see what its figures rest on.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from desktop.engine.calibration import (
    DEFAULT_TARGET_SENSITIVITY,
    Calibration,
    CalibrationError,
    calibrate,
)
from desktop.engine.discovery import discover_each
from desktop.engine.manifest import ModelManifest
from desktop.engine.results import ScanResult, ScanStatus
from desktop.engine.runner import BatchRunner, Progress
from desktop.engine.store import BatchKind
from desktop.engine.vocabulary import counted

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Excluded:
    """A file (or folder) left out of the calibration, and why."""

    file: str
    reason: str
    #: How many files it stands for: a folder's files that are not scans are one item.
    files: int = 1


@dataclass(frozen=True)
class LabelledFile:
    path: str  # absolute, as the batch runner reports it
    label: str  # the manifest's spelling
    positive: bool


@dataclass
class LabelledSet:
    """The files with a usable label for one model, and those without one."""

    manifest: ModelManifest
    files: list[LabelledFile] = field(default_factory=list)
    excluded: list[Excluded] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def describe_sources(self) -> str:
        return "; ".join(self.sources)


@dataclass
class LabelledScores:
    """Scores of the usable scans joined to their labels (what calibration needs)."""

    manifest: ModelManifest
    files: list[str]
    scores: np.ndarray
    positive: np.ndarray
    excluded: list[Excluded]
    batch_id: str = ""
    cancelled: bool = False

    @property
    def n_positive(self) -> int:
        return int(self.positive.sum())

    @property
    def n_negative(self) -> int:
        return int((~self.positive).sum())


@dataclass
class CalibrationOutcome:
    """What a calibration run ends with: the joined data, and the calibration or why not."""

    scores: LabelledScores
    calibration: Calibration | None
    error: str = ""
    sources: str = ""


def _key(path: str | Path) -> str:
    return os.path.normcase(str(Path(path).expanduser().absolute()))


def _label_map(manifest: ModelManifest) -> dict[str, str]:
    return {label.casefold(): label for label in manifest.labels}


def _unknown_label(label: str, manifest: ModelManifest) -> str:
    return (
        f"unknown label {label!r}: the {manifest.id} model's labels are "
        f"{', '.join(manifest.labels)}"
    )


def read_label_folder(root: Path, manifest: ModelManifest) -> LabelledSet:
    """Files under ``root/<label>/`` (any depth), labelled by the sub-folder's name."""
    root = Path(root).expanduser().absolute()
    out = LabelledSet(manifest, sources=[f"folder {root}"])
    if not root.is_dir():
        reason = "no such folder" if not root.exists() else "not a folder (give a CSV as --labels)"
        out.excluded.append(Excluded(str(root), reason))
        return out
    labels = _label_map(manifest)
    try:
        children = sorted(root.iterdir())
    except OSError as exc:
        out.excluded.append(Excluded(str(root), f"cannot list the folder: {exc.strerror}"))
        return out
    # One walk over every label folder (discovery's rule: a folder is walked once), the
    # folders themselves before links to folders: a link 'all' beside 'tuberculosis/' that
    # points at it was walked as a label of its own, its scans left out as 'unknown label'.
    folders = sorted(
        (c for c in children if not c.name.startswith(".") and c.is_dir()),
        key=lambda c: (c.is_symlink(), c.name),
    )
    walked = dict(zip(folders, discover_each(folders), strict=True))
    for child in children:
        if child.name.startswith("."):
            continue
        if child in walked:
            found = walked[child]
            label = labels.get(child.name.casefold())
            for path in found.files:
                if label is None:
                    out.excluded.append(Excluded(str(path), _unknown_label(child.name, manifest)))
                else:
                    out.files.append(
                        LabelledFile(str(path), label, label == manifest.positive_label)
                    )
            if found.skipped_non_scans:
                n = found.skipped_non_scans
                out.excluded.append(
                    Excluded(str(child), f"not a scan ({counted(n, 'file')} in it)", files=n)
                )
            for problem in found.unreadable_folders:
                out.excluded.append(Excluded(str(child), f"folder not readable: {problem}"))
        else:
            out.excluded.append(
                Excluded(
                    str(child),
                    "not in a label sub-folder (put it in "
                    + " or ".join(f"{label}/" for label in manifest.labels)
                    + ")",
                )
            )
    return out


def read_label_csv(path: Path, manifest: ModelManifest) -> LabelledSet:
    """``file,label`` rows (a header row is optional); relative paths start at the CSV."""
    path = Path(path).expanduser().absolute()
    out = LabelledSet(manifest, sources=[f"CSV {path}"])
    labels = _label_map(manifest)
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.reader(handle))
    except FileNotFoundError:
        out.excluded.append(Excluded(str(path), "no such CSV file"))
        return out
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        out.excluded.append(Excluded(str(path), f"cannot read the CSV: {exc}"))
        return out
    for line, row in enumerate(rows, start=1):
        cells = [c.strip() for c in row]
        while cells and not cells[-1]:
            cells.pop()
        if not cells or cells[0].startswith("#"):
            continue
        if line == 1 and [c.casefold() for c in cells[:2]] == ["file", "label"]:
            continue
        where = f"{path.name} line {line}"
        if len(cells) != 2 or not cells[0]:
            out.excluded.append(Excluded(where, "expected two columns: file,label"))
            continue
        file = Path(cells[0]).expanduser()
        if not file.is_absolute():
            file = path.parent / file
        file = file.absolute()
        label = labels.get(cells[1].casefold())
        if label is None:
            out.excluded.append(Excluded(str(file), _unknown_label(cells[1], manifest)))
        elif not file.exists():
            out.excluded.append(Excluded(str(file), f"missing file (named on {where})"))
        elif file.is_dir():
            out.excluded.append(Excluded(str(file), f"is a folder, not a scan ({where})"))
        else:
            out.files.append(LabelledFile(str(file), label, label == manifest.positive_label))
    return out


def collect_labels(
    manifest: ModelManifest, folders: Iterable[Path] = (), csv_files: Iterable[Path] = ()
) -> LabelledSet:
    """Merge label folders and CSVs; a file given twice with two labels is left out."""
    merged = LabelledSet(manifest)
    parts = [read_label_folder(f, manifest) for f in folders]
    parts += [read_label_csv(c, manifest) for c in csv_files]
    by_key: dict[str, LabelledFile] = {}
    conflicts: set[str] = set()
    for part in parts:
        merged.sources += part.sources
        merged.excluded += part.excluded
        for item in part.files:
            key = _key(item.path)
            seen = by_key.get(key)
            if seen is None:
                by_key[key] = item
            elif seen.label != item.label:
                conflicts.add(key)
    for key, item in by_key.items():
        if key in conflicts:
            merged.excluded.append(Excluded(item.path, "given two different labels: left out"))
        else:
            merged.files.append(item)
    return merged


def _exclusion(result: ScanResult, model_id: str) -> str | None:
    if result.status is ScanStatus.NOT_CHEST_XRAY:
        return f"not a chest X-ray: {result.reason}"
    if result.status is ScanStatus.ERROR:
        return f"could not be read: {result.reason}"
    if model_id not in result.findings:
        return f"the {model_id} model did not score it"
    return None


def screen_labelled(
    runner: BatchRunner, labelled: LabelledSet
) -> Generator[Progress, None, LabelledScores]:
    """Screen the labelled files (reusing stored results) and join scores to labels."""
    manifest = labelled.manifest
    if manifest.id not in runner.models.findings:
        known = ", ".join(runner.models.findings) or "none"
        raise CalibrationError(f"no finding model {manifest.id!r} is loaded (loaded: {known})")
    loaded = runner.models.findings[manifest.id].manifest
    if loaded.sha256 != manifest.sha256 or loaded.version != manifest.version:
        raise CalibrationError(
            f"the labels were read for {manifest.id} {manifest.version}, but {loaded.version} "
            "is loaded"
        )
    by_key = {_key(f.path): f for f in labelled.files}
    results: dict[str, ScanResult] = {}
    batch_id = ""
    cancelled = False
    if labelled.files:
        # The runner's own generator, passed on to the caller's progress bar; a calibration
        # batch, which the history labels as such. What it finished is read back from the
        # store (a cancelled run keeps what it finished, as every batch does).
        summary = yield from runner.run(
            [f.path for f in labelled.files], kind=BatchKind.CALIBRATION
        )
        batch_id, cancelled = summary.batch_id, summary.cancelled
        for result in runner.store.batch_results(batch_id, thumbnails=False):
            results[_key(result.file)] = result

    excluded = list(labelled.excluded)
    used: list[tuple[LabelledFile, float]] = []
    by_sha: dict[str, list[int]] = {}
    for key, item in by_key.items():
        result = results.get(key)
        if result is None:
            if not cancelled:
                excluded.append(Excluded(item.path, "was not screened"))
            continue
        reason = _exclusion(result, manifest.id)
        if reason is not None:
            excluded.append(Excluded(item.path, reason))
            continue
        if result.sha256:
            by_sha.setdefault(result.sha256, []).append(len(used))
        used.append((item, result.findings[manifest.id].probability))

    # The same image twice (copied under two names) would be counted twice: keep one copy,
    # and none when the copies carry different labels.
    drop: set[int] = set()
    for indices in by_sha.values():
        if len(indices) < 2:
            continue
        first = used[indices[0]][0]
        if len({used[i][0].label for i in indices}) > 1:
            for i in indices:
                drop.add(i)
                excluded.append(
                    Excluded(
                        used[i][0].path,
                        "the same image is labelled differently under another name: left out",
                    )
                )
        else:
            for i in indices[1:]:
                drop.add(i)
                excluded.append(
                    Excluded(
                        used[i][0].path,
                        f"same image as {Path(first.path).name}: counted once",
                    )
                )
    kept = [u for i, u in enumerate(used) if i not in drop]
    return LabelledScores(
        manifest=manifest,
        files=[item.path for item, _ in kept],
        scores=np.array([score for _, score in kept], dtype=np.float64),
        positive=np.array([item.positive for item, _ in kept], dtype=bool),
        excluded=excluded,
        batch_id=batch_id,
        cancelled=cancelled,
    )


def run_calibration(
    runner: BatchRunner,
    labelled: LabelledSet,
    target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY,
    *,
    min_per_class: int | None = None,
) -> Generator[Progress, None, CalibrationOutcome]:
    """Screen, join and calibrate; a set too small (or a cancelled run) ends with ``error``.

    The refusal is returned, not raised, so the GUI and CLI can show it beside the list of
    files that could not be used — usually the reason there were too few.
    """
    scores = yield from screen_labelled(runner, labelled)
    sources = labelled.describe_sources()
    if scores.cancelled:
        return CalibrationOutcome(scores, None, "cancelled: no calibration was made", sources)
    kwargs = {} if min_per_class is None else {"min_per_class": min_per_class}
    try:
        calibration = calibrate(scores.scores, scores.positive, target_sensitivity, **kwargs)
    except CalibrationError as exc:
        return CalibrationOutcome(scores, None, str(exc), sources)
    return CalibrationOutcome(scores, calibration, "", sources)


def exclusion_summary(excluded: Sequence[Excluded]) -> dict[str, int]:
    """Files left out per kind of reason (the text before the first colon or bracket), for
    a short summary. A folder's files that are not scans are one item of several files: it
    was counted once and read "1 1 file that is not a scan" ("1 5 files …" for five)."""
    out: dict[str, int] = {}
    for item in excluded:
        kind = item.reason.split(":", 1)[0].split(" (", 1)[0]
        out[kind] = out.get(kind, 0) + item.files
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))

"""Datasets: listing files, patient-aware splits, and input arrays built by the engine.

Why this module exists: the split decides whether a test figure is honest. Each dataset's
``list_*`` function returns :class:`Record` rows carrying the label, the *group* (the patient,
or whatever must never straddle two splits) and the *source* (hospital/scanner), and
:func:`split_records` splits by group, stratified by (label, source). The arrays fed to Keras
come from :func:`desktop.engine.preprocess.prepare_file` — the app's loader and preprocessing —
and are only cached (``.npy`` under a temp folder) to save time between runs.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import random
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from desktop.engine.preprocess import PreprocessSpec, prepare_file

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm"}


@dataclass(frozen=True)
class Record:
    """One image: where it is, its class index, the patient group and the source."""

    path: Path
    label: int
    group: str
    source: str
    split: str = ""


# --------------------------------------------------------------------------- listing


def list_tb(root: Path) -> list[Record]:
    """NLM sets: ``{Normal,Tuberculosis}/{CHNCXR,MCUCXR}_####_L.png``; L = 1 is TB.

    Each image is one patient here, so the group is the image id. The label is read from the
    filename suffix and cross-checked against the folder.
    """
    out: list[Record] = []
    pattern = re.compile(r"^(CHNCXR|MCUCXR)_(\d+)_([01])$")
    for path in sorted(_images(root)):
        match = pattern.match(path.stem)
        if not match:
            log.warning("skipping unexpected TB file name %s", path.name)
            continue
        prefix, number, flag = match.groups()
        label = int(flag)
        folder_label = 1 if path.parent.name.lower().startswith("tuberc") else 0
        if folder_label != label:
            raise ValueError(f"{path}: filename says {label}, folder says {folder_label}")
        source = "shenzhen" if prefix == "CHNCXR" else "montgomery"
        out.append(Record(path, label, f"{prefix}_{number}", source))
    return out


_PERSON = re.compile(r"person(\d+)_", re.IGNORECASE)
_IM = re.compile(r"IM-(\d+)", re.IGNORECASE)


def kermany_patient(name: str) -> str:
    """Patient id of a Kermany file: ``personN`` or ``IM-####``.

    ``NORMAL2-IM-0035-0001`` is grouped with ``IM-0035-0001``: we cannot tell whether the two
    numbering series share patients, and merging errs on the side of no leakage.
    """
    person = _PERSON.search(name)
    if person:
        return f"person{int(person.group(1))}"
    im = _IM.search(name)
    if im:
        return f"IM-{int(im.group(1)):04d}"
    raise ValueError(f"cannot find a patient id in {name}")


def list_pneumonia(root: Path) -> list[Record]:
    """Kermany ``{NORMAL,PNEUMONIA}/*.jpeg``, deduplicated by content hash.

    Exact duplicates (30 groups in the official train split) are kept once: a duplicate on
    both sides of a split would inflate the test figures, and within the training set it only
    double-weights one image.
    """
    out: list[Record] = []
    seen: dict[str, Path] = {}
    dropped = 0
    for path in sorted(_images(root)):
        label = 1 if path.parent.name.upper() == "PNEUMONIA" else 0
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest in seen:
            dropped += 1
            log.info("duplicate %s of %s dropped", path.name, seen[digest].name)
            continue
        seen[digest] = path
        out.append(Record(path, label, kermany_patient(path.name), "guangzhou"))
    log.info("pneumonia: %d images kept, %d exact duplicates dropped", len(out), dropped)
    return out


MEDNIST_LABELS = ("AbdomenCT", "BreastMRI", "CXR", "ChestCT", "Hand", "HeadCT")


def list_mednist(root: Path) -> list[Record]:
    """MedNIST ``<root>/<Class>/*.jpeg`` (``root`` may be the folder holding ``MedNIST``).

    MedNIST carries no patient ids, so each image is its own group (a limitation, stated in
    the model card: slices of one CT volume may sit in train and test).
    """
    if (root / "MedNIST").is_dir():
        root = root / "MedNIST"
    out: list[Record] = []
    for index, name in enumerate(MEDNIST_LABELS):
        folder = root / name
        if not folder.is_dir():
            raise FileNotFoundError(f"MedNIST class folder {folder} is missing")
        for path in sorted(_images(folder)):
            out.append(Record(path, index, f"{name}/{path.stem}", "mednist"))
    return out


def _images(root: Path) -> Iterable[Path]:
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist")
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if Path(name).suffix.lower() in IMAGE_SUFFIXES and not name.startswith("."):
                yield Path(dirpath) / name


# --------------------------------------------------------------------------- splitting


def split_records(
    records: Sequence[Record],
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 20261122,
) -> list[Record]:
    """Assign each record to train/val/test by group, stratified by (label, source).

    A group's stratum is its majority label and its source. Groups are shuffled with a fixed
    seed inside each stratum and cut by cumulative image count, so each split gets about the
    requested share of every (class, source) cell and no group is on two sides.
    """
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions {fractions} must sum to 1")
    groups: dict[str, list[Record]] = defaultdict(list)
    for rec in records:
        groups[rec.group].append(rec)
    strata: dict[tuple[int, str], list[str]] = defaultdict(list)
    for gid, members in groups.items():
        labels = [m.label for m in members]
        majority = max(set(labels), key=labels.count)
        strata[(majority, members[0].source)].append(gid)
    rng = random.Random(seed)
    assignment: dict[str, str] = {}
    for key in sorted(strata):
        gids = sorted(strata[key])
        rng.shuffle(gids)
        total = sum(len(groups[g]) for g in gids)
        bounds = (fractions[0] * total, (fractions[0] + fractions[1]) * total)
        done = 0
        for gid in gids:
            centre = done + len(groups[gid]) / 2
            assignment[gid] = (
                "train" if centre < bounds[0] else "val" if centre < bounds[1] else "test"
            )
            done += len(groups[gid])
    return [replace(rec, split=assignment[rec.group]) for rec in records]


def by_split(records: Sequence[Record], split: str) -> list[Record]:
    return [r for r in records if r.split == split]


def write_split_csv(records: Sequence[Record], path: Path, label_names: Sequence[str]) -> None:
    """Write the split (one row per image) so that a run can be audited and reproduced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "label", "label_name", "group", "source", "split"])
        for rec in records:
            writer.writerow(
                [rec.path.name, rec.label, label_names[rec.label], rec.group, rec.source, rec.split]
            )


def split_summary(records: Sequence[Record], label_names: Sequence[str]) -> dict[str, object]:
    """Counts per split × class × source, and the number of groups: goes into the manifest."""
    summary: dict[str, object] = {}
    for split in SPLITS:
        rows = by_split(records, split)
        cells: dict[str, int] = defaultdict(int)
        for rec in rows:
            cells[f"{label_names[rec.label]}/{rec.source}"] += 1
        summary[split] = {
            "images": len(rows),
            "groups": len({r.group for r in rows}),
            "by_class_source": dict(sorted(cells.items())),
        }
    return summary


# --------------------------------------------------------------------------- arrays


def prepare_one(path: Path, spec: PreprocessSpec) -> np.ndarray:
    """One model input exactly as the app computes it (engine loader + preprocessing)."""
    return prepare_file(path, spec)


def build_array(
    paths: Sequence[Path], spec: PreprocessSpec, cache_dir: Path | None = None
) -> np.ndarray:
    """Stack the engine's model inputs for ``paths`` into (N, H, W, C) float32.

    The cache (if any) is keyed by the file list, file sizes/mtimes and the preprocessing
    spec; it stores only channel 0 when the spec repeats the grey channel (the channels are
    identical copies by construction), and the array returned is bit-identical to calling
    :func:`prepare_one` on each file.
    """
    key_src = json.dumps(
        {
            "spec": spec.to_manifest(),
            "files": [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths],
            "v": 1,
            "loader": _loader_fingerprint(),
        }
    )
    key = hashlib.sha256(key_src.encode()).hexdigest()[:20]
    cache = cache_dir / f"{key}.npy" if cache_dir else None
    if cache is not None and cache.exists():
        grey = np.load(cache)
    else:
        grey = np.empty((len(paths), spec.height, spec.width), dtype=np.float32)
        for i, path in enumerate(paths):
            x = prepare_one(path, spec)
            grey[i] = x[:, :, 0]
            if i and i % 2000 == 0:
                log.info("prepared %d/%d", i, len(paths))
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp.npy")
            np.save(tmp, grey)
            tmp.replace(cache)
    return expand_channels(grey, spec.channels)


def _loader_fingerprint() -> str:
    """Changes when the engine's loader or preprocessing code changes (stale caches)."""
    engine = Path(__file__).resolve().parents[1] / "desktop" / "engine"
    digest = hashlib.sha256()
    for name in ("loading.py", "dicom.py", "preprocess.py"):
        f = engine / name
        digest.update(f.read_bytes() if f.exists() else b"missing")
    return digest.hexdigest()[:16]


def expand_channels(grey: np.ndarray, channels: int) -> np.ndarray:
    """(N, H, W) → (N, H, W, C) by repeating the grey plane, as ``preprocess`` does."""
    return np.ascontiguousarray(np.repeat(grey[..., None], channels, axis=-1), dtype=np.float32)


def default_cache_dir() -> Path:
    return Path(os.environ.get("MEDSCREEN_TRAIN_CACHE", "/tmp/medscreen/cache"))


def class_weights(labels: np.ndarray, n_classes: int) -> dict[int, float]:
    """Balanced weights n / (k · n_c): each class contributes equally to the loss."""
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    return {i: float(len(labels) / (n_classes * c)) if c else 0.0 for i, c in enumerate(counts)}

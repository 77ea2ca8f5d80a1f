"""The NIH ChestX-ray14 subset (``pneumonia/nih_adult_1000``): listing with patient ids and ages.

Why a module of its own: the modality gate and the child/adult model both need the NIH images
as *another hospital's* chest X-rays, grouped by patient (682 patients hold the 1,000 images,
so a split by image would put one patient on both sides) and, for the child/adult model, with
the real age from ``metadata.csv`` (95 images of 66 patients are under 18).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from training.data import Record

#: Folder name → label index (0 = no finding, 1 = pneumonia), as in ``metadata.csv``.
FOLDERS = {"No_findings": 0, "Pneumonia": 1}


@dataclass(frozen=True)
class NihImage:
    """One NIH image with what ``metadata.csv`` says about it."""

    path: Path
    label: int
    patient: str
    age: int
    sex: str
    view: str


def list_nih_images(root: Path) -> list[NihImage]:
    """Every image named in ``<root>/metadata.csv`` that exists, with its metadata.

    Raises ``FileNotFoundError`` when the metadata file is missing (without it neither the
    patient split nor the ages are known) and ``ValueError`` for an unknown folder label.
    """
    meta = root / "metadata.csv"
    if not meta.is_file():
        raise FileNotFoundError(f"NIH metadata file {meta} is missing")
    out: list[NihImage] = []
    with meta.open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            folder = row["folder_label"]
            if folder not in FOLDERS:
                raise ValueError(f"{meta}: unknown folder label {folder!r}")
            path = root / row["file"]
            if not path.is_file():
                continue
            out.append(
                NihImage(
                    path=path,
                    label=FOLDERS[folder],
                    patient=f"nih{int(row['patient_id'])}",
                    age=int(row["age"]),
                    sex=row["sex"],
                    view=row["view"],
                )
            )
    return sorted(out, key=lambda r: r.path)


def list_nih(root: Path) -> list[Record]:
    """NIH images as :class:`Record` rows (label = pneumonia, group = patient, source "nih")."""
    return [Record(r.path, r.label, r.patient, "nih") for r in list_nih_images(root)]

"""The in-memory form of one decoded scan, shared by every consumer of the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: DICOM attributes that identify a patient. They are kept in memory for the user who asks to
#: see them, but never written to logs, and only to reports when the user opts in (and the
#: viewer shows them only when asked). The study date and study description count: a date is
#: an identifier (with the clinic, it finds the visit), and the description is free text a
#: radiographer may fill with a name or a diagnosis. Sex and age are not here: age decides a
#: model's scope, and the reports show why a scan was outside it.
IDENTIFYING_FIELDS = frozenset(
    {"patient_name", "patient_id", "patient_birth_date", "study_date", "study_description"}
)


@dataclass(frozen=True)
class ScanMetadata:
    """What the screening needs to know about a scan besides its pixels.

    Every field is optional: PNG and JPEG files carry none of the DICOM ones.
    """

    source_format: str  # "png", "jpeg", "tiff", "bmp", "dicom", ...
    width: int
    height: int
    bits_stored: int = 8
    photometric: str | None = None  # e.g. "MONOCHROME1", "MONOCHROME2", "RGB", PIL mode for rasters
    modality: str | None = None  # DICOM Modality (CR, DX, CT, MR, ...)
    body_part: str | None = None  # DICOM BodyPartExamined
    view_position: str | None = None  # DICOM ViewPosition (PA, AP, LL, ...)
    patient_age: str | None = None  # DICOM PatientAge, e.g. "045Y"
    patient_sex: str | None = None
    study_date: str | None = None  # DICOM StudyDate, YYYYMMDD
    study_description: str | None = None
    transfer_syntax: str | None = None
    window: tuple[float, float] | None = None  # (center, width) applied, in modality units
    patient_name: str | None = None
    patient_id: str | None = None
    patient_birth_date: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def public_dict(self) -> dict[str, object]:
        """The metadata without patient identifiers: safe for logs, CSV and default reports."""
        return {k: v for k, v in self.as_dict().items() if k not in IDENTIFYING_FIELDS}

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, tuple):
                value = list(value)
            if value is None or value == {}:
                continue
            out[name] = value
        return out


@dataclass(frozen=True)
class Scan:
    """A decoded scan, ready for preprocessing.

    ``pixels`` is the one display-ready grey image every model starts from: float32, shape
    (height, width), values in [0, 1], 0 = black, with MONOCHROME1 already inverted, rescale
    slope/intercept and the VOI LUT/window applied, and colour converted to grey.
    ``raw`` keeps the un-windowed values (modality units for DICOM, the stored integers for
    16-bit rasters) for a viewer's window/level; it is None when the file was 8-bit.
    ``grey8``, when set, is the 8-bit grey image ``pixels`` was made from (``pixels`` equals
    ``grey8 / 255`` exactly): the thumbnail is made from it without quantising ``pixels``
    back to 8 bits, which gives those very levels (loading.make_thumbnail). It is set only by
    the working-image decode of 8-bit rasters and JPEGs, and dropped when ``pixels`` change.
    """

    path: Path
    sha256: str
    pixels: np.ndarray
    metadata: ScanMetadata
    raw: np.ndarray | None = None
    grey8: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.pixels.dtype != np.float32 or self.pixels.ndim != 2:
            raise ValueError(
                f"Scan.pixels must be a 2-D float32 array, got {self.pixels.dtype} "
                f"{self.pixels.shape}"
            )
        if self.grey8 is not None and (
            self.grey8.dtype != np.uint8 or self.grey8.shape != self.pixels.shape
        ):
            raise ValueError(
                f"Scan.grey8 must be a uint8 array of the pixels' shape {self.pixels.shape}, "
                f"got {self.grey8.dtype} {self.grey8.shape}"
            )

"""Plain quality codes: why a scan was not screened, in words a nurse reads at a glance.

Beside the status words (:data:`desktop.engine.results.STATUS_TEXT`) this is the engine's
one vocabulary for refusals and errors: the table's Reason column, the viewer and the PDF show
:func:`quality_of` ``(result).text`` ("not a chest X-ray: hand", "blank or nearly blank
image", "photo or document", "damaged file", "unsupported DICOM"), with the full technical
reason (the scores, the decoder's words) as the detail in a tooltip or a smaller line. The
CSV and JSON keep the stable codes (:class:`QualityCode` values) beside the reason.

The mapping reads only what the result already holds: the :class:`ScanErrorCode` of a file
that could not be read, and the gate's verdict for a refused one (its predicted label, its
out-of-distribution score). Labels of the modality model are turned into words generically
("HeadCT" → "head CT"), so a new gate label needs no code here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from desktop.engine.errors import ScanErrorCode
from desktop.engine.modalities import UNRECOGNISED, known_modality
from desktop.engine.results import ScanResult, ScanStatus
from desktop.engine.vocabulary import Vocabulary

#: The screening gate's reason for an image that is not a medical scan of a known kind
#: (out-of-distribution); :mod:`desktop.engine.screening` writes it.
NOT_MEDICAL_REASON = "not recognised as a medical scan"
#: How the reason of a scan starts that the gate took for a chest X-ray but whose DICOM header
#: names a modality that is never a radiograph (screening.NOT_RADIOGRAPH_MODALITIES).
HEADER_REFUSAL = "not a radiograph by its DICOM header"

#: How the reason of a sub-folder that could not be listed starts (the runner writes it): its
#: row reads "folder cannot be opened", not "file …".
UNLISTED_FOLDER_REASON = "folder could not be read"
#: How the runner's reason for a link whose target is gone begins (its file check, where a
#: link that points nowhere raises FileNotFoundError as a deleted file does). The link is
#: there, so "file moved or deleted" sent staff looking for a file someone removed.
BROKEN_LINK_REASON = "broken link"

#: The gate's out-of-distribution score adds ``1000 * relu(1 - pixel_std / 0.01)`` for images
#: without structure (the modality manifest's ``ood.method``): a score this high means the
#: pixels barely vary. Measured: a uniform grey image 1022, one with a faint square 981; a
#: photo of a cat 19, a chest X-ray 6.
BLANK_OOD_SCORE = 500.0


class QualityCode(Vocabulary):
    """Stable codes (kept in CSV/JSON) with their fixed words (which may be translated);
    NOT_CHEST's words get the kind added: "not a chest X-ray: hand"."""

    NOT_CHEST = "not_chest", "not a chest X-ray"  # another kind of medical image
    UNCLEAR_CHEST = "unclear_chest", "unclear: maybe not a chest X-ray"  # gate not confident
    BLANK = "blank", "blank or nearly blank image"
    NOT_MEDICAL = "not_medical", "photo or document"
    EMPTY_FILE = "empty_file", "empty file"
    NOT_AN_IMAGE = "not_an_image", "not an image file"
    DAMAGED = "damaged", "damaged file"
    # Permission denied, a folder or pipe, a path too long, an I/O error: the file may be
    # intact, so "damaged file" would send staff looking at the wrong thing.
    UNREADABLE = "unreadable", "file cannot be opened"
    TOO_LARGE = "too_large", "image too large"
    TOO_SMALL = "too_small", "image too small to screen"
    UNSUPPORTED_IMAGE = "unsupported_image", "unsupported image format"
    UNSUPPORTED_DICOM = "unsupported_dicom", "unsupported DICOM"
    NO_IMAGE_IN_DICOM = "no_image_in_dicom", "DICOM without an image"
    MULTI_FRAME = "multi_frame", "multi-frame DICOM (not supported)"
    MISSING = "missing", "file moved or deleted"
    INTERNAL = "internal", "internal error (see the log)"


#: The fixed words of each code.
QUALITY_TEXT: dict[QualityCode, str] = QualityCode.texts()

_ERROR_CODES: dict[str, QualityCode] = {
    ScanErrorCode.EMPTY_FILE: QualityCode.EMPTY_FILE,
    ScanErrorCode.NOT_AN_IMAGE: QualityCode.NOT_AN_IMAGE,
    ScanErrorCode.TRUNCATED: QualityCode.DAMAGED,
    ScanErrorCode.UNREADABLE: QualityCode.UNREADABLE,
    ScanErrorCode.DECODER_CRASHED: QualityCode.DAMAGED,
    ScanErrorCode.DECODER_TIMEOUT: QualityCode.DAMAGED,
    ScanErrorCode.TOO_LARGE: QualityCode.TOO_LARGE,
    ScanErrorCode.TOO_SMALL: QualityCode.TOO_SMALL,
    ScanErrorCode.UNSUPPORTED_IMAGE: QualityCode.UNSUPPORTED_IMAGE,
    ScanErrorCode.UNSUPPORTED_TRANSFER_SYNTAX: QualityCode.UNSUPPORTED_DICOM,
    ScanErrorCode.NO_PIXEL_DATA: QualityCode.NO_IMAGE_IN_DICOM,
    ScanErrorCode.MULTI_FRAME: QualityCode.MULTI_FRAME,
    ScanErrorCode.VANISHED: QualityCode.MISSING,
    ScanErrorCode.INTERNAL: QualityCode.INTERNAL,
}


@dataclass(frozen=True)
class Quality:
    """A refusal or error in plain words, with the technical detail kept for a tooltip."""

    code: QualityCode
    text: str  # the short words shown in a cell
    detail: str  # the full reason, as the engine recorded it


def label_words(label: str) -> str:
    """A modality label as words: ``"HeadCT"`` → ``"head CT"``, ``"Hand"`` → ``"hand"``."""
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", label.replace("_", " ")).strip()
    first, _, rest = spaced.partition(" ")
    if not first.isupper():  # keep acronyms (CT, MRI) as they are
        first = first.lower()
    return f"{first} {rest}".strip()


def is_not_medical(result: ScanResult) -> bool:
    """Whether the gate refused the image as no medical scan of a known kind (then the
    modality it names is only the nearest class, and faces show no modality at all)."""
    return result.status is ScanStatus.NOT_CHEST_XRAY and result.reason.startswith(
        NOT_MEDICAL_REASON
    )


def quality_of(result: ScanResult) -> Quality | None:
    """The plain quality code of a refused or failed scan; ``None`` for a screened one."""
    if result.status is ScanStatus.OK:
        return None
    detail = result.reason
    if result.status is ScanStatus.ERROR:
        code = _ERROR_CODES.get(result.error_code or "", QualityCode.DAMAGED)
        if result.error_code is None and not detail:
            code = QualityCode.INTERNAL
        if code is QualityCode.UNREADABLE and detail.startswith(UNLISTED_FOLDER_REASON):
            return Quality(code, "folder cannot be opened", detail)
        if code is QualityCode.MISSING and detail.startswith(BROKEN_LINK_REASON):
            return Quality(code, "link whose target is missing", detail)
        return Quality(code, QUALITY_TEXT[code], detail)
    if is_not_medical(result):
        blank = result.ood_score is not None and result.ood_score >= BLANK_OOD_SCORE
        if not blank and result.metadata.get("source_format") == "dicom":
            # A DICOM file is a medical image whatever the gate made of it: a CT slice called
            # "photo or document" reads as a fault. Its header's modality says what it is.
            written = str(result.metadata.get("modality") or "").strip()
            kind = known_modality(written)  # a name in the field is never quoted
            words = f"DICOM {kind}" if kind else "DICOM image"
            if written and not kind:
                words = f"DICOM image of {UNRECOGNISED}"
            return Quality(QualityCode.NOT_CHEST,
                           f"{QUALITY_TEXT[QualityCode.NOT_CHEST]}: {words}", detail)  # fmt: skip
        code = QualityCode.BLANK if blank else QualityCode.NOT_MEDICAL
        return Quality(code, QUALITY_TEXT[code], detail)
    if detail.startswith(HEADER_REFUSAL):
        kind = known_modality(result.metadata.get("modality")) or UNRECOGNISED
        return Quality(QualityCode.NOT_CHEST,
                       f"{QUALITY_TEXT[QualityCode.NOT_CHEST]}: DICOM {kind}", detail)  # fmt: skip
    if result.modality and not detail.startswith("not confidently"):
        words = label_words(result.modality)
        return Quality(QualityCode.NOT_CHEST, f"{QUALITY_TEXT[QualityCode.NOT_CHEST]}: {words}",
                       detail)  # fmt: skip
    return Quality(QualityCode.UNCLEAR_CHEST, QUALITY_TEXT[QualityCode.UNCLEAR_CHEST], detail)


def shown_modality(result: ScanResult) -> str:
    """The modality a face shows. A scan refused by its DICOM header shows the header's kind;
    one the gate refused as not medical shows its header's kind too (a CT whose pixels the
    gate does not know is still a CT by its file), else nothing: the gate's nearest class is
    not a statement about what the image is."""
    if is_not_medical(result) or result.reason.startswith(HEADER_REFUSAL):
        return known_modality(result.metadata.get("modality")) or ""
    return result.modality or ""


def shown_modality_score(result: ScanResult) -> float | None:
    """The gate's probability shown beside :func:`shown_modality`, where it is that modality's.

    A scan refused by its MR header shows "MR", and the gate's score is its probability of
    the gate's own guess ("CXR", 0.99): beside "MR" it would read as the MR's. Every report
    and the window take what a scan is from these two functions.
    """
    shown = shown_modality(result)
    return result.modality_score if shown and shown == result.modality else None


def reason_text(result: ScanResult) -> str:
    """The short reason every face shows in a cell: the quality words, else the reason."""
    quality = quality_of(result)
    return quality.text if quality is not None else result.reason

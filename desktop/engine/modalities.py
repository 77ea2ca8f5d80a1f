"""The DICOM Modality codes MedScreen will name in its own words.

A file's Modality (0008,0060) is free text to a parser: any short upper-case string passes
the CS value check, a person's name included ("JANE DOE" was found quoted in a refusal reason
and a warning by the session-7 QA sweep). Reasons, warnings and quality words go into every
report, so they quote a header's modality only when it is one of the codes DICOM defines
(PS3.3 C.7.3.1.1.1, defined terms, current and retired); anything else is described as
:data:`UNRECOGNISED`, never quoted.
"""

from __future__ import annotations

#: PS3.3 C.7.3.1.1.1 defined terms (2024), current ones.
_CURRENT = (
    "ANN AR ASMT AU BDUS BI BMD CFM CR CT CTPROTOCOL DG DMS DOC DX ECG EEG EMG EOG EPS ES FID "
    "GM HC HD IO IOL IVOCT IVUS KER KO LEN LS M3D MG MR NM OAM OCT OP OPM OPT OPTBSV OPTENF "
    "OPV OSS OT PA PLAN POS PR PT PX REG RESP RF RG RTDOSE RTIMAGE RTINTENT RTPLAN RTRAD "
    "RTRECORD RTSEGANN RTSTRUCT RWV SEG SM SMR SR SRF STAIN TEXTUREMAP TG US VA XA XAPROTOCOL "
    "XC"
)
#: Retired defined terms: old archives still hold them.
_RETIRED = "AS CD CF CP CS DD DF DM DS EC FA FS LP MA MS OPR ST VF"
#: Not DICOM codes, but written in the field in practice: "DR" by some digital radiography
#: units for DX, "SC" by secondary-capture tools (the standard says OT).
_DE_FACTO = "DR SC"

#: Every Modality value MedScreen quotes (upper case, no spaces).
DICOM_MODALITIES: frozenset[str] = frozenset(f"{_CURRENT} {_RETIRED} {_DE_FACTO}".split())

#: How a Modality that is not a DICOM code is described (never quoted).
UNRECOGNISED = "an unrecognised modality"


def known_modality(value: object) -> str | None:
    """The DICOM modality code in ``value`` (normalised), or ``None`` when it is not one."""
    code = str(value or "").strip().upper()
    return code if code in DICOM_MODALITIES else None


__all__ = ["DICOM_MODALITIES", "UNRECOGNISED", "known_modality"]

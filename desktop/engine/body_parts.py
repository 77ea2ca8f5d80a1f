"""The DICOM Body Part Examined terms MedScreen will name in its own words.

Body Part Examined (0018,0015) is, like Modality, free text to a parser: any short upper-case
string passes the CS value check, a person's name included. A warning that quotes it goes
into every report, so it is quoted only when it is one of the defined terms of DICOM PS3.16
Annex L (the common ones, listed below) or a chest term MedScreen already recognises;
anything else is described as :data:`UNRECOGNISED`, never quoted.
"""

from __future__ import annotations

#: PS3.16 Annex L defined terms (Body Part Examined), the regions a radiology archive holds.
_ANNEX_L = (
    "ABDOMEN ABDOMENPELVIS ACJOINT ADRENAL AORTA ANKLE ANUS APPENDIX ARM AXILLA BACK BILEDUCT "
    "BLADDER BRAIN BREAST BRONCHUS BUTTOCK CALCANEUS CAROTID CEREBELLUM CERVIX CHEST "
    "CHESTABDOMEN CHESTABDPELVIS CLAVICLE COCCYX COLON CORNEA CSPINE CTSPINE DUODENUM EAR "
    "ELBOW ESOPHAGUS EXTREMITY EYE EYELID FACE FEMUR FINGER FOOT FOREARM GALLBLADDER HAND "
    "HEAD HEADNECK HEART HIP HUMERUS ILEUM ILIUM IAC JAW JEJUNUM KIDNEY KNEE LARYNX LEG "
    "LIVER LSPINE LSSPINE LUNG MANDIBLE MAXILLA MEDIASTINUM MOUTH NECK NECKCHEST "
    "NECKCHESTABDOMEN NECKCHESTABDPELV NOSE ORBIT OVARY PANCREAS PAROTID PATELLA PELVIS "
    "PENIS PHARYNX PROSTATE RECTUM RIB SACRUM SCAPULA SCLERA SCROTUM SHOULDER SKULL SPINE "
    "SPLEEN SSPINE STERNUM STOMACH TESTIS THIGH THUMB THYMUS THYROID TIBIA TLSPINE TMJ TOE "
    "TONGUE TRACHEA TSPINE ULNA URETER URETHRA UTERUS VAGINA VULVA WHOLEBODY WRIST ZYGOMA"
)

#: Chest terms written in the field in practice (other languages, abbreviations).
_CHEST_DE_FACTO = "THORAX LUNGS CHEST_LAT TORAX THX"

#: Every Body Part Examined value MedScreen quotes (upper case, no spaces).
BODY_PARTS: frozenset[str] = frozenset(f"{_ANNEX_L} {_CHEST_DE_FACTO}".split())

#: How a Body Part Examined that is not a known term is described (never quoted).
UNRECOGNISED = "a body part MedScreen does not recognise"


def known_body_part(value: object) -> str | None:
    """The body part term in ``value`` (normalised), or ``None`` when it is not one."""
    term = str(value or "").strip().upper()
    return term if term in BODY_PARTS else None


__all__ = ["BODY_PARTS", "UNRECOGNISED", "known_body_part"]

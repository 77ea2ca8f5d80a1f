"""Repair of a header fault that old DICOM JPEG encoders wrote into sequential JPEG scans.

In a sequential DCT JPEG (ITU T.81 processes 1, 2 and 4: DICOM's JPEG Baseline 8-bit and
JPEG Extended 12-bit) the start-of-scan (SOS) parameters Ss, Se, Ah and Al have one legal
value each: 0, 63, 0 and 0 (T.81 table B.3). They only carry information in progressive
scans. Some older encoders wrote other values there: NEMA's WG04 sample ``NM1_JPLY`` (pydicom's
``JPEG-lossy.dcm``, 12-bit) has Se = 0. IJG libjpeg, which most viewers use, warns "Invalid
SOS parameters for sequential JPEG" and decodes the image, because the values are implied by
the process; libjpeg (the pylibjpeg plugin we ship) refuses the frame. Writing the legal
values back makes the stream exactly what the encoder meant: the entropy-coded data are not
touched, so the decoded pixels are the encoder's (pydicom ships the repaired file,
``JPGExtended.dcm``, which differs in that one byte).

Only the marker segments are walked (never the entropy-coded data of a single-component
image), so the check costs microseconds.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

#: DICOM transfer syntaxes whose frames are sequential DCT JPEG (Baseline, Extended).
SEQUENTIAL_JPEG_SYNTAXES: frozenset[str] = frozenset(
    {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"}
)

# Start-of-frame markers of the sequential DCT processes: baseline and extended (Huffman),
# extended (arithmetic). Progressive and lossless frames use Ss/Se/Ah/Al and are left alone.
_SEQUENTIAL_SOF = frozenset({0xC0, 0xC1, 0xC9})
_OTHER_SOF = frozenset({0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_SOS = 0xDA
_EOI = 0xD9
# Markers without a length field: SOI, EOI, RSTn, TEM.
_STANDALONE = frozenset({0x01, 0xD8, _EOI, *range(0xD0, 0xD8)})
# The legal Ss, Se, Ah/Al bytes of a sequential scan.
_SEQUENTIAL_SPECTRAL = b"\x00\x3f\x00"


def repair_sequential_scan_headers(frame: bytes) -> bytes:
    """``frame`` with the SOS parameters of its sequential scans set to their legal values.

    Returns ``frame`` itself (the same object) when nothing needed repair, when the frame is
    not a sequential DCT JPEG, or when its marker segments cannot be walked (the decoder then
    reports the damage as before).
    """
    if frame[:2] != b"\xff\xd8":
        return frame
    fixed: bytearray | None = None
    sequential = False
    components = 0
    scanned = 0
    pos = 2
    end = len(frame)
    while pos + 1 < end:
        if frame[pos] != 0xFF:
            # entropy-coded data of a scan: find the next marker (0xFF not stuffed, not RSTn)
            pos = _next_marker(frame, pos)
            if pos < 0:
                break
            continue
        marker = frame[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            if marker == _EOI:
                break
            pos += 2
            continue
        if pos + 4 > end:
            break
        length = int.from_bytes(frame[pos + 2 : pos + 4], "big")
        segment_end = pos + 2 + length
        if length < 2 or segment_end > end:
            break
        if marker in _SEQUENTIAL_SOF or marker in _OTHER_SOF:
            sequential = marker in _SEQUENTIAL_SOF
            components = frame[pos + 9] if pos + 9 < end else 0
        elif marker == _SOS:
            if not sequential:
                return frame if fixed is None else bytes(fixed)
            count = frame[pos + 4]
            spectral = pos + 5 + 2 * count  # Ss, Se, Ah/Al follow the component list
            if spectral + 3 != segment_end:
                break  # not a well-formed SOS: leave the frame to the decoder
            if frame[spectral : spectral + 3] != _SEQUENTIAL_SPECTRAL:
                if fixed is None:
                    fixed = bytearray(frame)
                fixed[spectral : spectral + 3] = _SEQUENTIAL_SPECTRAL
            scanned += count
            if components and scanned >= components:
                break  # every component has had its scan: the rest is entropy-coded data
        pos = segment_end
    if fixed is None:
        return frame
    logger.info("sequential JPEG scan header had invalid Ss/Se/Ah/Al values: set to 0/63/0/0")
    return bytes(fixed)


def _next_marker(data: bytes, pos: int) -> int:
    """Offset of the next marker at or after ``pos`` in entropy-coded data, or -1."""
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            return -1
        following = data[pos + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
            pos += 1
            continue
        return pos


def repair_encapsulated(pixel_data: bytes, transfer_syntax: str, frames: int) -> bytes:
    """Encapsulated Pixel Data with each sequential JPEG frame's scan headers repaired.

    ``pixel_data`` is returned unchanged for other transfer syntaxes and when no frame
    needed repair; otherwise the frames are re-encapsulated (one fragment each, with a basic
    offset table when there are several).
    """
    if str(transfer_syntax) not in SEQUENTIAL_JPEG_SYNTAXES:
        return pixel_data
    from pydicom.encaps import encapsulate, generate_frames

    try:
        originals = list(generate_frames(pixel_data, number_of_frames=frames))
    except Exception as exc:  # damaged encapsulation: the decoder reports it as before
        logger.debug("encapsulated pixel data not split into frames: %s", type(exc).__name__)
        return pixel_data
    repaired = [repair_sequential_scan_headers(frame) for frame in originals]
    if all(new is old for new, old in zip(repaired, originals, strict=True)):
        return pixel_data
    return encapsulate(repaired, has_bot=len(repaired) > 1)


__all__ = [
    "SEQUENTIAL_JPEG_SYNTAXES",
    "repair_encapsulated",
    "repair_sequential_scan_headers",
]

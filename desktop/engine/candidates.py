"""Which files are scans: cheap checks by name and by the first bytes, and nothing else.

Why a module of its own: the window asks this of every dropped file and folder (through
:func:`~desktop.engine.discovery.discover`) before the batch process starts. Defined in
:mod:`desktop.engine.loading` and :mod:`desktop.engine.dicom`, it imported the decoders with
it — pydicom and its pixel plugins, Pillow's image plugins, and ``requests`` through pydicom
— which the window then held for its life, though it decodes nothing for a batch: 147 -> 121
MB RSS for the window after screening 1,000 scans (bench_gui_memory.py, 2 December 2026).
:mod:`desktop.engine.loading` re-exports what moved here.
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

#: File suffixes (lower case, with the dot) screened without looking inside the file.
SUPPORTED_SUFFIXES: frozenset[str] = frozenset(
    {
        ".png",
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".tif",
        ".tiff",
        ".bmp",
        ".gif",
        ".webp",
        ".jp2",
        ".j2k",
        ".pgm",
        ".ppm",
        ".pnm",
        ".dcm",
        ".dicom",
        ".dic",
    }
)

#: Suffixes that are certainly not scans: :func:`is_candidate` does not open these.
_NEVER_SCANS = frozenset(
    {
        ".txt", ".csv", ".json", ".xml", ".html", ".htm", ".md", ".pdf", ".doc", ".docx",
        ".xls", ".xlsx", ".zip", ".gz", ".tar", ".7z", ".rar", ".exe", ".dll", ".so", ".ini",
        ".log", ".db", ".sqlite", ".py", ".mp4", ".avi", ".mov", ".mp3", ".wav", ".lnk",
    }
)  # fmt: skip

# Explicit VR codes: the first element of a dataset without preamble carries one of these
# right after its tag when the file is explicit VR.
_EXPLICIT_VRS = frozenset(
    b"AE AS AT CS DA DS DT FL FD IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL "
    b"UN UR US UT UV".split()
)
# Groups a bare dataset plausibly starts with: file meta (0002), identification (0008).
_FIRST_GROUPS = (0x0002, 0x0008)


def looks_like_dicom(head: bytes) -> bool:
    """Whether the first bytes of a file look like DICOM (``head`` should be ≥ 132 bytes).

    True for the standard 128-byte preamble followed by ``DICM``, and for bare datasets
    written without preamble or file meta (old ACR-NEMA style exports, such as the fo-dicom
    ``CR-MONO1-10-chest.dcm``): the first tag must be in group 0002 or 0008, followed either by
    a valid explicit VR or by a plausible implicit-VR length. Never raises.
    """
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    if len(head) < 8:
        return False
    for order in ("<", ">"):
        group, element = struct.unpack(order + "HH", head[:4])
        if group not in _FIRST_GROUPS or element > 0x0200:
            continue
        if head[4:6] in _EXPLICIT_VRS:
            return True
        (length,) = struct.unpack(order + "I", head[4:8])
        if order == "<" and length <= 1024:  # implicit VR is little endian only
            return True
    return False


def is_candidate(path: Path) -> bool:
    """Whether a file found in a folder should be screened. Cheap, and never raises.

    A supported suffix is enough (the content is checked when the file is decoded). Files
    with no suffix or an unknown one (DICOM from PACS exports is often named ``IM000001`` or
    after its UID) are opened and their first 132 bytes checked for DICOM. ``DICOMDIR`` index
    files are not scans. Hidden files are the caller's decision.
    """
    try:
        name = path.name
        if name.upper() == "DICOMDIR":
            return False
        suffix = path.suffix.lower()
        if suffix in SUPPORTED_SUFFIXES:
            return True
        if suffix in _NEVER_SCANS:
            return False
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return False
            head = os.read(fd, 132)
        finally:
            os.close(fd)
        return looks_like_dicom(head)
    except (OSError, ValueError):
        return False


__all__ = ["SUPPORTED_SUFFIXES", "is_candidate", "looks_like_dicom"]

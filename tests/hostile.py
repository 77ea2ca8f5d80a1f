"""Hostile and damaged files built at test time from the real fixtures (issue 9).

Each function turns a real file (the fo-dicom CR chest, the NLM chest PNG, the JPEG 2000 CR)
into one attack a clinic folder can carry: a damaged RLE stream that panics the Rust
decoder, a deflate bomb, an element whose length swallows the patient elements, NaN pixels.
Nothing binary is committed; the fuzz harness and the tests share these builders.
"""

from __future__ import annotations

import ctypes
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless

from tests.fixtures import TB_PNG, cr_dataset, grey8, write_dicom

#: Identifiers planted in the hostile files: no output or log may ever contain them.
PATIENT_NAME = "QUIXOTE^ALONSO^DE LA MANCHA"
PATIENT_ID = "MRN40417733"
BIRTH_DATE = "19470923"
IDENTIFIERS = (PATIENT_NAME, PATIENT_ID, BIRTH_DATE, "QUIXOTE", "ALONSO")

#: Offset, inside the RLE Pixel Data element's value, of a byte that when set to 0x80 makes
#: pylibjpeg-rle 2.x panic ("index out of bounds") on the CR chest encoded by pydicom.
RLE_PANIC_OFFSET = 8112


def identified_cr() -> pydicom.Dataset:
    """The real CR chest carrying the planted patient name, ID and birth date."""
    ds = cr_dataset()
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = BIRTH_DATE
    return ds


def write_damaged_rle(dest: Path, *, offset: int = RLE_PANIC_OFFSET, value: int = 0x80) -> Path:
    """The CR chest saved as RLE Lossless with one byte of its pixel data set to ``value``."""
    ds = identified_cr()
    ds.compress(RLELossless)
    write_dicom(dest, ds, syntax=RLELossless)
    data = bytearray(dest.read_bytes())
    start = data.rfind(struct.pack("<HH", 0x7FE0, 0x0010)) + 12  # tag, VR 'OB', 2, length
    data[start + offset] = value
    dest.write_bytes(bytes(data))
    return dest


def write_rle(dest: Path) -> Path:
    """The CR chest saved as RLE Lossless, undamaged."""
    ds = identified_cr()
    ds.compress(RLELossless)
    return write_dicom(dest, ds, syntax=RLELossless)


def write_deflate_bomb(dest: Path, inflated_mib: int = 1024) -> Path:
    """A deflated DICOM of about 1 MB whose dataset inflates to ``inflated_mib`` MiB.

    The real CR chest's header is written deflated, followed by a private OB element of
    ``inflated_mib`` MiB of zeros. The zeros are one compressed 1 MiB block repeated: after a
    full flush a raw deflate stream may be continued with any whole block sequence, so the
    bomb costs nothing to build.
    """
    ds = identified_cr()
    del ds.PixelData
    write_dicom(dest, ds, syntax=DeflatedExplicitVRLittleEndian)
    raw = dest.read_bytes()
    meta_end = _meta_end(raw)
    body = zlib.decompress(raw[meta_end:], -15)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    size = inflated_mib * 2**20
    head = body + struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, size)
    parts = [compressor.compress(head), compressor.flush(zlib.Z_FULL_FLUSH)]
    block = compressor.compress(bytes(2**20)) + compressor.flush(zlib.Z_FULL_FLUSH)
    parts += [block] * inflated_mib
    parts.append(compressor.flush(zlib.Z_FINISH))
    dest.write_bytes(raw[:meta_end] + b"".join(parts))
    return dest


def write_deflated(dest: Path) -> Path:
    """The real CR chest, identifiers and pixels, in Deflated Explicit VR Little Endian."""
    return write_dicom(dest, identified_cr(), syntax=DeflatedExplicitVRLittleEndian)


def _meta_end(raw: bytes) -> int:
    """Offset of the first byte after the file meta group of a file written with a preamble."""
    (group_length,) = struct.unpack("<I", raw[140:144])  # (0002,0000) UL value
    return 144 + group_length


def write_swallowing(dest: Path, keyword: str = "Modality") -> Path:
    """The identified CR chest with ``keyword``'s length grown to swallow the patient elements.

    The element is moved to sit just before group 0010 (by writing it under a private-free
    order: group 0008 elements after it are dropped), then its 2-byte explicit-VR length is
    increased by the size of the patient elements, so a reader takes the patient name, ID and
    birth date as part of its value — what a damaged or hostile length does.
    """
    ds = identified_cr()
    tag = ds.data_element(keyword).tag
    for element in list(ds):
        if element.tag.group == tag.group and element.tag > tag:
            del ds[element.tag]
    write_dicom(dest, ds)
    data = bytearray(dest.read_bytes())
    at = data.find(struct.pack("<HH", tag.group, tag.element) + ds[tag].VR.encode(), 132)
    patients_start = data.find(struct.pack("<HH", 0x0010, 0x0010) + b"PN", at)
    if data[patients_start - 12 : patients_start - 8] == struct.pack("<HH", 0x0010, 0x0000):
        patients_start -= 12  # the group length element goes too
    patients_end = data.find(BIRTH_DATE.encode(), patients_start) + len(BIRTH_DATE)
    assert 0 < at < patients_start < patients_end, "unexpected layout of the CR chest"
    (length,) = struct.unpack("<H", data[at + 6 : at + 8])
    data[at + 6 : at + 8] = struct.pack("<H", length + patients_end - patients_start)
    dest.write_bytes(bytes(data))
    return dest


def write_nan_tiff(dest: Path, *, src: Path = TB_PNG, extremes: bool = True) -> Path:
    """The chest PNG as a 32-bit float TIFF with a NaN stripe (and ±inf, ±3e38 values)."""
    values = grey8(src).astype(np.float32) / np.float32(255.0)
    values[100:120, :] = np.nan
    if not extremes:
        Image.fromarray(values, mode="F").save(dest, format="TIFF")
        return dest
    values[0, 0] = np.inf
    values[0, 1] = -np.inf
    values[1, 0] = np.float32(3e38)
    values[1, 1] = np.float32(-3e38)
    Image.fromarray(values, mode="F").save(dest, format="TIFF")
    return dest


def crash_on_marker(request: dict) -> np.ndarray:
    """A decoder-worker function that segfaults (a real SIGSEGV) or hangs on a marked request.

    It lives here, not in a test module, because the spawned worker imports it by name: this
    module is light, a test module would pull in ONNX Runtime for nothing.
    """
    if request["pixel_data"].startswith(b"SEGV"):
        ctypes.string_at(0)  # reads address 0: the process dies with SIGSEGV
    if request["pixel_data"].startswith(b"HANG"):
        time.sleep(60)
    from desktop.engine.sandbox import decode_pixel_request

    return decode_pixel_request(request)

"""Generators of derived test images, built at test time from the real fixtures in tests/data.

Nothing here is committed as a binary: each function writes one small variant of a real image
(16-bit PNG, RGBA, palette, TIFF, truncated files, decompression bombs, DICOM without pixel
data, ...) into a folder the test owns, usually ``tmp_path``. Any test may import them::

    from tests.fixtures import write_png16, cr_dataset
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from desktop.engine.errors import ScanError, ScanErrorCode

DATA = Path(__file__).parent / "data"
#: Real PA chest CR: 440×440, 10-bit, MONOCHROME1, window 550/1024, no file meta.
CR_CHEST = DATA / "dicom" / "CR-MONO1-10-chest.dcm"
#: Real CR (tibia), 1760×1760, JPEG 2000, MONOCHROME1.
CR_J2K = DATA / "dicom" / "RG3_J2KI.dcm"
#: Real adult chest X-ray, 299×299 8-bit grey PNG spanning 0..255 (NLM Shenzhen, normal).
TB_PNG = DATA / "tb" / "normal" / "CHNCXR_0001_0.png"
#: Real pediatric chest X-ray, 224×224 grey stored as RGB JPEG (Kermany, normal).
KERMANY_JPEG = DATA / "pneumonia" / "normal" / "IM-0115-0001.jpeg"
#: DICOM test files shipped inside the pydicom wheel (read directly: never downloaded).
PYDICOM_TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def grey8(path: Path = TB_PNG) -> np.ndarray:
    """The 8-bit grey pixels of a real image, as Pillow decodes them ('L')."""
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


def write_png16(dest: Path, *, src: Path = TB_PNG, bits: int = 16) -> Path:
    """A 16-bit grey PNG ('I;16') holding the 8-bit source scaled to ``bits`` bits.

    16 bits: v × 257 (so 255 → 65535); 12 bits: v × 16 + v // 16 (255 → 4095), the way a
    12-bit detector image sits in a 16-bit PNG.
    """
    values = grey8(src).astype(np.uint16)
    if bits == 16:
        values = values * np.uint16(257)
    else:
        shift = bits - 8
        values = (values << shift) | (values >> (8 - shift))
    Image.fromarray(values).save(dest, format="PNG")
    return dest


def write_variant(dest: Path, mode: str, *, src: Path = TB_PNG, fmt: str | None = None) -> Path:
    """The source image converted to a Pillow ``mode`` and saved as ``fmt`` (from suffix)."""
    with Image.open(src) as image:
        grey = image.convert("L")
        # 'P' from 'L' gets the exact grey-ramp palette (from RGB Pillow would dither)
        variant = grey.convert(mode) if mode in ("L", "P", "LA", "1") else grey.convert("RGB")
        if mode not in ("L", "P", "LA", "1", "RGB"):
            variant = variant.convert(mode)
        variant.save(dest, format=fmt)
    return dest


def write_rgba(dest: Path, *, src: Path = TB_PNG, transparent_rows: int = 0) -> Path:
    """An RGBA PNG of the source; the first ``transparent_rows`` rows get alpha 0."""
    with Image.open(src) as image:
        rgba = image.convert("RGBA")
    if transparent_rows:
        values = np.array(rgba)
        values[:transparent_rows, :, 3] = 0
        rgba = Image.fromarray(values)
    rgba.save(dest, format="PNG")
    return dest


def write_exif_rotated_jpeg(dest: Path, *, src: Path = TB_PNG, orientation: int = 6) -> Path:
    """A JPEG stored rotated, with the EXIF Orientation tag that says how to turn it upright.

    The source is first cropped to 299×200 so a wrong orientation also shows in the shape.
    Orientation 6 ("rotate 90° clockwise to display") is what phone cameras write.
    """
    with Image.open(src) as image:
        upright = image.convert("L").crop((0, 0, 200, 299))
    stored = {
        3: upright.transpose(Image.Transpose.ROTATE_180),
        6: upright.transpose(Image.Transpose.ROTATE_90),
        8: upright.transpose(Image.Transpose.ROTATE_270),
    }[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(dest, format="JPEG", quality=95, exif=exif.tobytes())
    return dest


def write_truncated(dest: Path, *, src: Path = TB_PNG, keep: float = 0.5) -> Path:
    """The first ``keep`` fraction of a real file's bytes: a copy interrupted halfway."""
    data = src.read_bytes()
    dest.write_bytes(data[: max(1, int(len(data) * keep))])
    return dest


def write_text(dest: Path, text: str = "Patient list\nname,age\nnot an image\n") -> Path:
    """A text file, usually given an image suffix by mistake (``notes.png``)."""
    dest.write_text(text, encoding="utf-8")
    return dest


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def write_png_bomb(dest: Path, width: int = 50_000, height: int = 50_000) -> Path:
    """A tiny PNG whose header claims ``width``×``height`` pixels (a decompression bomb).

    Only the header is real: one short IDAT and IEND follow, so the file is ~100 bytes and
    would only blow up if something tried to decode it.
    """
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    idat = zlib.compress(b"\x00" * 1024)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )
    dest.write_bytes(data)
    return dest


def cr_dataset() -> Dataset:
    """The real CR chest as a pydicom dataset, with the transfer syntax it was written in."""
    ds = pydicom.dcmread(CR_CHEST, force=True)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


def cr_stored() -> np.ndarray:
    """The CR chest's stored pixel values (uint16, 0..979 of 10 bits)."""
    return cr_dataset().pixel_array


def write_dicom(dest: Path, ds: Dataset, *, syntax: UID | None = None) -> Path:
    """Write a dataset with file meta in ``syntax`` (default: explicit VR little endian)."""
    syntax = UID(syntax or ExplicitVRLittleEndian)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", "1.2.840.10008.5.1.4.1.1.1")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", "1.2.3.4")
    implicit = syntax == ImplicitVRLittleEndian
    ds.save_as(dest, implicit_vr=implicit, little_endian=True, enforce_file_format=True)
    return dest


def write_cr_variant(dest: Path, **elements: object) -> Path:
    """The CR chest with some elements changed (None deletes one), written with file meta."""
    ds = cr_dataset()
    for keyword, value in elements.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return write_dicom(dest, ds)


def write_cr_without_pixels(dest: Path) -> Path:
    """The CR chest with its Pixel Data removed: what a report or key-object file looks like."""
    return write_cr_variant(dest, PixelData=None)


def write_cr_pixels(dest: Path, stored: np.ndarray, **elements: object) -> Path:
    """The CR chest's header with other stored pixel values (uint16) and elements."""
    values = np.ascontiguousarray(stored, dtype="<u2")
    return write_cr_variant(dest, PixelData=values.tobytes(), **elements)


def write_cr_multiframe(dest: Path, frames: int = 3) -> Path:
    """The CR chest repeated ``frames`` times in one multi-frame dataset."""
    stored = np.ascontiguousarray(cr_stored(), dtype="<u2")
    return write_cr_variant(dest, PixelData=stored.tobytes() * frames, NumberOfFrames=frames)


def write_cr_with_syntax(dest: Path, syntax: str) -> Path:
    """The CR chest declared in a (compressed) transfer syntax with encapsulated pixel data.

    The fragment is the raw frame, so only a decoder that does not exist could read it: what
    matters is that the loader refuses the syntax by name before trying.
    """
    ds = cr_dataset()
    ds.PixelData = encapsulate([np.ascontiguousarray(cr_stored(), dtype="<u2").tobytes()])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", "1.2.3.4")
    ds.save_as(dest, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return dest


def pydicom_test_file(name: str) -> Path:
    """A DICOM file from the installed pydicom wheel (MIT); never downloads anything."""
    path = PYDICOM_TEST_FILES / name
    if not path.is_file():
        raise FileNotFoundError(f"pydicom test file {name} is not installed")
    return path


def load_fails(path: Path, code: ScanErrorCode) -> str:
    """Load ``path``, which must be refused with ``code``; the refusal's message.

    The message is also the exception's text (a reason is shown as it is, never wrapped).
    """
    from desktop.engine.loading import load_scan

    with pytest.raises(ScanError) as info:
        load_scan(path)
    assert info.value.code == code, info.value.message
    assert str(info.value) == info.value.message
    return info.value.message


def damage_tables(db: Path, *tables: str, fill: int, length: int | None = None) -> list[int]:
    """Overwrite the pages of ``tables`` in the SQLite file ``db`` with the byte ``fill``
    (``length`` bytes at each page's start, the whole page when None): a store damaged where
    its rows really are. The pages come from SQLite's dbstat table; a SQLite without it skips
    the test. Returns the page numbers."""
    import sqlite3

    with sqlite3.connect(db) as con:
        pages: list[int] = []
        for table in tables:
            try:
                rows = con.execute("SELECT pageno FROM dbstat WHERE name=?", (table,)).fetchall()
            except sqlite3.OperationalError:
                pytest.skip("this SQLite has no dbstat table to find a table's pages")
            pages += [p for (p,) in rows]
        size = con.execute("PRAGMA page_size").fetchone()[0]
    con.close()
    with open(db, "r+b") as handle:
        for page in pages:
            handle.seek((page - 1) * size)
            handle.write(bytes([fill]) * (size if length is None else length))
    return pages


def distinct_scans(
    folder: Path,
    count: int,
    sources: list[Path],
    *,
    side: int,
    seed: int,
    per_folder: int | None = None,
) -> Path:
    """``count`` distinct small grey PNGs made from the real images ``sources`` (each shrunk
    to ``side`` px and given a little noise, so every file has its own sha256 and nothing is
    reused from a results store); in sub-folders of ``per_folder`` when given."""
    bases = []
    for path in sources:
        with Image.open(path) as image:
            grey = image.convert("L")
            grey.thumbnail((side, side))
            bases.append(np.asarray(grey, dtype=np.int16))
    rng = np.random.default_rng(seed)
    for i in range(count):
        base = bases[i % len(bases)]
        noisy = np.clip(base + rng.integers(-3, 4, size=base.shape), 0, 255).astype(np.uint8)
        sub = folder / f"part{i // per_folder:02d}" if per_folder else folder
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noisy).save(sub / f"scan_{i:05d}.png", compress_level=1)
    return folder

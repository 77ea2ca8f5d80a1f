"""Decoding DICOM files into :class:`~desktop.engine.scan.Scan` objects.

Kept apart from :mod:`desktop.engine.loading` because DICOM is where most of the subtle
failures of X-ray pipelines live: files without a preamble or file meta, compressed transfer
syntaxes that need optional plugins, MONOCHROME1 (inverted) radiographs, rescale and windowing.
The order of operations follows the DICOM grayscale pipeline (PS3.3 C.11 / PS3.4 N.2):

    stored values → Modality LUT (rescale slope/intercept) → VOI (window or VOI LUT)
    → [0, 1] → inverted if MONOCHROME1

Everything is done in float32: a 2048×2048 radiograph is 16 MiB per copy, and the batch
runner decodes two at a time. When the caller wants a reduced *working image* (the batch
runner, training), a grey image of at most 16-bit integers never becomes full-resolution
float: the pipeline above is applied to each stored value once (a lookup table) and the
integer image is reduced by exact block means first (:func:`_grey_reduced`).
"""

from __future__ import annotations

import logging
import re
import struct
import threading
import traceback
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
from pydicom.charset import python_encoding
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from desktop.engine import jpeg_repair, sandbox
from desktop.engine.budget import PixelLease
from desktop.engine.errors import ScanError, ScanErrorCode, exception_summary, is_fatal
from desktop.engine.scan import Scan, ScanMetadata

logger = logging.getLogger(__name__)

#: ITU-R BT.601 luma weights: what Pillow's RGB → "L"/"F" conversion uses, so colour DICOM and
#: colour PNG/JPEG files become grey the same way.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

#: A deflated dataset is refused when it would inflate to more than this: checked by
#: inflating it in a stream and counting, before pydicom inflates it whole in memory.
MAX_INFLATED_BYTES: int = 256 << 20
#: A deflated dataset up to this size is kept as the size check inflates it and read from
#: there (inflated once); a larger one (a 4300² 16-bit detector image is 35 MiB) is only
#: counted, so a deflate bomb never holds more than this, and pydicom inflates it again.
KEEP_INFLATED_BYTES: int = 40 << 20

#: Stored pixel bytes (Rows × Columns × Samples × Frames × BitsAllocated / 8) above which a
#: file is refused before its pixel data is decoded.
MAX_PIXEL_BYTES: int = 384 << 20

_DEFLATED = "1.2.840.10008.1.2.1.99"

# What a value of each kind may look like before it is kept in the metadata (which is shown
# in outputs and used in warning texts). A value that does not fit is dropped: control bytes
# or an overlong value are the mark of a damaged length that swallowed other elements, which
# may be the patient's name, ID or birth date.
_CODE = re.compile(r"[A-Za-z0-9_ ]{1,16}")  # CS
_AGE = re.compile(r"\d{1,3} ?[DWMYdwmy]?")  # AS, leniently
_DATE = re.compile(r"[0-9][0-9./ -]{5,9}")  # DA, with the ACR-NEMA dotted form
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")  # UI
_LONG_TEXT = re.compile(r"[^\x00-\x1f\x7f]{1,64}")  # LO without control characters
_PERSON = re.compile(r"[^\x00-\x1a\x1c-\x1f\x7f]{1,324}")  # PN (ESC kept for charsets)
_CHARSET = re.compile(r"[A-Z0-9_ \\-]{0,64}")

_configured = False
_loggers_seen = -1  # how many loggers the process had when pydicom's were last filtered
_configure_lock = threading.Lock()


class _RedactValues:
    """A logging filter for pydicom's logger: quoted values in its messages are withheld.

    pydicom logs (and warns) about malformed values by quoting them, and a malformed value
    can hold a patient name swallowed by a bad length. Logging is thread-safe, so a filter on
    pydicom's own logger works under the runner's decoder threads, where
    ``warnings.catch_warnings`` would not.
    """

    _QUOTED = re.compile(r"(['\"]).*?\1|b'.*?'", re.DOTALL)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            # the traceback's last line is the exception message, which may quote a value
            message += f" ({type(record.exc_info[1]).__name__}; traceback withheld)"
        record.msg = self._QUOTED.sub("<value withheld>", message)[:500]
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        return True


def configure_pydicom() -> None:
    """Make pydicom quiet about file values, once per process (idempotent, thread-safe).

    * Reading validation off (``reading_validation_mode = IGNORE``): pydicom's checks of each
      value's syntax only *warn*, quoting the value, and the warnings go through the
      process-wide ``warnings`` machinery, which cannot be scoped per thread (the runner
      decodes in several). Our own code validates every value it uses (the patterns above).
    * A :class:`_RedactValues` filter on the ``pydicom`` loggers for what they still log.
    The remaining value-quoting warning (an unknown Specific Character Set) is prevented by
    :func:`_sanitise_charset` before any text is decoded.
    """
    global _configured, _loggers_seen
    with _configure_lock:
        if not _configured:
            pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
            _configured = True
        # A logger's filters see only what is logged on it, not what its children propagate:
        # every pydicom logger gets the filter, also one created after the first call (a
        # pydicom module imported later): the loggers are looked at again whenever the
        # process has gained loggers since the last call, which is cheap to tell.
        loggers = logging.root.manager.loggerDict
        if len(loggers) == _loggers_seen:
            return
        names = [n for n in list(loggers) if n.split(".")[0] == "pydicom"]
        for name in {"pydicom", *names}:
            target = logging.getLogger(name)
            if not any(isinstance(f, _RedactValues) for f in target.filters):
                target.addFilter(_RedactValues())
        _loggers_seen = len(loggers)


def minmax_to_unit(values: np.ndarray, *, inplace: bool = False) -> tuple[np.ndarray, float, float]:
    """Scale an image linearly so its minimum becomes 0 and its maximum 1 (float32).

    Returns ``(scaled, min, max)``. A constant image becomes all zeros (there is no contrast to
    stretch, and dividing by zero would make it NaN). With ``inplace`` a float32 input is
    overwritten instead of copied (only for arrays the caller owns).
    """
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        # NaN and ±inf carry no grey level: they become 0 before scaling (else all is NaN)
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    lo = float(values.min())
    hi = float(values.max())
    if hi - lo > 1e30:  # the float32 difference would overflow: scale in float64
        scaled = (values.astype(np.float64) - lo) / (hi - lo)
        return np.clip(scaled, 0.0, 1.0).astype(np.float32), lo, hi
    if inplace and values.dtype == np.float32:
        out = values
        out -= np.float32(lo)
    else:
        out = np.subtract(values, np.float32(lo), dtype=np.float32)
    if hi > lo:
        out /= np.float32(hi - lo)
        np.clip(out, 0.0, 1.0, out=out)
    else:
        out.fill(0.0)
    return out, lo, hi


def block_mean(values: np.ndarray, factor: int) -> np.ndarray:
    """Means of ``factor``×``factor`` blocks of a 2-D image, in float32: an area reduction.

    The figures of Pillow's ``Image.reduce`` on a float image to within a float32 rounding
    (sums in float64, times ``1 / pixels in the block``; edge blocks of a size that ``factor``
    does not divide average the pixels they have), without Pillow's copy of the whole image
    into its own buffer, which cost more than the reduction itself. Used for every working
    image that is reduced after decoding (loading.py).
    """
    if factor <= 1:
        return np.asarray(values, dtype=np.float32)
    sums = _block_sums(values, factor)
    rows = _block_counts(values.shape[0], factor)
    cols = _block_counts(values.shape[1], factor)
    sums *= 1.0 / np.outer(rows, cols)
    return sums.astype(np.float32)


def minmax_block_mean(values: np.ndarray, factor: int) -> tuple[np.ndarray, float, float] | None:
    """:func:`minmax_to_unit` then :func:`block_mean`, for an integer image of up to 16 bits,
    without the full-resolution float32 image between them.

    The min–max scaling is a straight line, so block means commute with it: the integers are
    block-summed exactly and the line applied to the small image. Returns ``(pixels, min,
    max)`` as the two calls would, to a float32 rounding (a 2048² 16-bit PNG: ~8 instead of
    ~30 ms, and no 16 MiB float32 copy to fault in); None for any other image or factor 1.
    """
    if factor <= 1 or values.ndim != 2 or values.size == 0:
        return None
    if values.dtype.kind not in "iu" or values.dtype.itemsize > 2:
        return None
    lo, hi = int(values.min()), int(values.max())
    means = _block_sums(values, factor, (lo, hi))
    means *= 1.0 / np.outer(
        _block_counts(values.shape[0], factor), _block_counts(values.shape[1], factor)
    )
    if hi > lo:
        means -= lo
        means *= 1.0 / (hi - lo)
        np.clip(means, 0.0, 1.0, out=means)
    else:
        means.fill(0.0)  # no contrast to stretch, as minmax_to_unit
    return means.astype(np.float32), float(lo), float(hi)


def _block_sums(
    values: np.ndarray, factor: int, extremes: tuple[int, int] | None = None
) -> np.ndarray:
    """Sums of ``factor``×``factor`` blocks in float64 (exact for integers below 2**53).

    Strided adds of whole rows, then of columns: several times faster than a reshape-and-sum
    or ``np.add.reduceat`` over a 2048×2048 image. Integer images of up to 16 bits are summed
    in the narrowest integer type no block sum can overflow (:func:`_sum_type`; ``extremes``
    is the image's (min, max) when the caller knows it) and only the small result becomes
    float64: the same exact sums with a quarter of the memory traffic of float64 rows (a
    2048² 12-bit image at factor 4: 1.5 instead of 4.1 ms of CPU, and no 8 MiB float64
    intermediate to fault in).
    """
    accumulator = _sum_type(values, factor, extremes) or np.float64
    rows = values[0::factor].astype(accumulator)
    for i in range(1, factor):
        part = values[i::factor]
        rows[: part.shape[0]] += part
    sums = np.ascontiguousarray(rows[:, 0::factor])
    for i in range(1, factor):
        part = rows[:, i::factor]
        sums[:, : part.shape[1]] += part
    return sums.astype(np.float64, copy=False)


def _sum_type(
    values: np.ndarray, factor: int, extremes: tuple[int, int] | None
) -> type[np.integer] | None:
    """The narrowest integer type that holds every ``factor``×``factor`` block sum of an
    integer image of at most 16 bits, or None (sum in float64) for anything else."""
    if values.dtype.kind not in "iu" or values.dtype.itemsize > 2 or values.size == 0:
        return None
    lo, hi = extremes if extremes is not None else (int(values.min()), int(values.max()))
    count = factor * factor
    if values.dtype.kind == "u":
        for unsigned in (np.uint16, np.uint32):
            if hi * count <= np.iinfo(unsigned).max:
                return unsigned
        return None
    largest = max(-lo, hi) * count
    for signed in (np.int16, np.int32):
        if largest < np.iinfo(signed).max:
            return signed
    return None


def _block_counts(size: int, factor: int) -> np.ndarray:
    """Pixels per block along one axis of ``size`` pixels (the last block may be partial)."""
    counts = np.full(-(-size // factor), float(factor))
    counts[-1] = size - factor * (len(counts) - 1)
    return counts


def rgb_to_grey(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of an (H, W, 3) array, in float32 and in the input's units."""
    r, g, b = (np.float32(w) for w in LUMA_WEIGHTS)
    grey = np.multiply(rgb[..., 0], r, dtype=np.float32)
    grey += np.multiply(rgb[..., 1], g, dtype=np.float32)
    grey += np.multiply(rgb[..., 2], b, dtype=np.float32)
    return grey


def _text(ds: Dataset, keyword: str, pattern: re.Pattern[str] = _LONG_TEXT) -> str | None:
    """An element's value as a stripped string, or None when absent, empty or malformed.

    Malformed includes "does not fit ``pattern``": see the patterns above for why a value
    that does not look like its kind is never kept or quoted.
    """
    try:
        value = ds.get(keyword)
        if value is None:
            return None
        if isinstance(value, pydicom.multival.MultiValue):
            value = "\\".join(str(v) for v in value)
        text = str(value).strip().strip("\x00").strip()
    except Exception:  # a malformed value must never stop the scan: it is only metadata
        return None
    if not text:
        return None
    if not pattern.fullmatch(text):
        logger.debug("DICOM %s value is malformed; ignored", keyword)
        return None
    return text


def _number(ds: Dataset, keyword: str, default: float) -> float:
    """A numeric element (first value if several), or ``default`` when absent or malformed."""
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return default
        if isinstance(value, pydicom.multival.MultiValue):
            if len(value) == 0:
                return default
            value = value[0]
        number = float(value)
    except Exception:
        return default
    return number if np.isfinite(number) else default


def _transfer_syntax(ds: Dataset) -> UID:
    """The dataset's transfer syntax, filled in from how it was parsed when file meta lacks it.

    Files without file meta (or without (0002,0010)) are common in old exports; pydicom then
    guesses implicit/explicit VR and byte order while parsing, and that guess is what the
    pixel data was written with. With nothing to go on, DICOM's default (implicit VR little
    endian) is assumed.
    """
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = FileMetaDataset()
        ds.file_meta = meta
    tsyntax = meta.get("TransferSyntaxUID")
    if tsyntax:
        return UID(str(tsyntax).strip())
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is False:
        guessed = ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian
    else:
        guessed = ImplicitVRLittleEndian
    meta.TransferSyntaxUID = guessed
    return guessed


def _syntax_label(tsyntax: UID) -> str:
    if len(tsyntax) > 64 or not _UID.fullmatch(str(tsyntax)):
        return "(an invalid UID)"
    name = tsyntax.name
    return f"'{name}' ({tsyntax})" if name and name != str(tsyntax) else f"'{tsyntax}'"


def _check_decodable(tsyntax: UID) -> None:
    """Refuse, with what to do about it, a transfer syntax no installed decoder can handle."""
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        hint = (
            "it is not a known image transfer syntax"
            if not tsyntax.is_transfer_syntax
            else "no DICOM decoder supports it"
        )
        raise ScanError(
            ScanErrorCode.UNSUPPORTED_TRANSFER_SYNTAX,
            f"DICOM transfer syntax {_syntax_label(tsyntax)} cannot be decoded: {hint}. "
            "Convert the file to an uncompressed transfer syntax with your PACS or a DICOM tool "
            "(for example dcmtk 'dcmdjpeg' or 'gdcmconv --raw') and scan it again.",
        ) from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
        raise ScanError(
            ScanErrorCode.UNSUPPORTED_TRANSFER_SYNTAX,
            f"DICOM transfer syntax {_syntax_label(tsyntax)} needs a decoder that is not "
            f"installed ({missing}). Install one of them, or convert the file to an "
            "uncompressed transfer syntax.",
        )


def _file_meta_end(data: bytes) -> tuple[int, str] | None:
    """(offset of the dataset, transfer syntax) from a file meta group, preamble or not.

    Parsed by hand, because pydicom inflates a deflated dataset whole as soon as it has read
    the meta group, before we could check its size. None when there is no file meta.
    """
    if len(data) >= 132 and data[128:132] == b"DICM":
        offset = 132
    elif data[:2] == b"\x02\x00":  # a meta group without the preamble (read with force)
        offset = 0
    else:
        return None
    tsyntax = ""
    while offset + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, offset)
        if group != 0x0002:
            break
        vr = data[offset + 4 : offset + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV"):
            if offset + 12 > len(data):
                break
            (length,) = struct.unpack_from("<I", data, offset + 8)
            start = offset + 12
        else:
            (length,) = struct.unpack_from("<H", data, offset + 6)
            start = offset + 8
        if length == 0xFFFFFFFF or start + length > len(data):
            break
        if element == 0x0010:
            tsyntax = data[start : start + length].rstrip(b"\x00 ").decode("ascii", "replace")
        offset = start + length
    return offset, tsyntax


def _inflate(data: bytes, start: int) -> BytesIO | None:
    """The deflated dataset from ``start``, inflated once; refused past :data:`MAX_INFLATED_BYTES`.

    The stream is inflated in 4 MiB steps and counted as it goes. Up to
    :data:`KEEP_INFLATED_BYTES` the output is kept and returned, for pydicom to read without
    inflating the file a second time; past that it is dropped and only counted, so a 1 MB
    file that would inflate to gigabytes costs a few tens of megabytes and is refused before
    the cap. A dataset between the two (None is returned) is inflated again by pydicom.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    kept: list[bytes] | None = []
    total = 0
    pending = memoryview(data)[start:]
    step = 4 << 20
    try:
        while pending:
            out = inflater.decompress(pending, step)
            total += len(out)
            if total > MAX_INFLATED_BYTES:
                raise ScanError(
                    ScanErrorCode.TOO_LARGE,
                    f"deflated DICOM data set inflates to more than "
                    f"{MAX_INFLATED_BYTES >> 20} MiB (the file is "
                    f"{len(data) / 2**20:.1f} MiB): refused before inflating it",
                )
            if kept is not None and total <= KEEP_INFLATED_BYTES:
                kept.append(out)
            else:
                kept = None
            pending = memoryview(inflater.unconsumed_tail)
            if inflater.eof or not out:
                break
    except zlib.error as exc:
        raise ScanError(
            ScanErrorCode.TRUNCATED,
            "deflated DICOM data is damaged or truncated (it cannot be inflated)",
        ) from exc
    return None if kept is None else BytesIO(b"".join(kept))


def _read_deflated(data: bytes, start: int, inflated: BytesIO) -> Dataset:
    """Preamble and file meta read from ``data``; the dataset from the inflated stream.

    What ``pydicom.dcmread`` does for Deflated Explicit VR Little Endian, without inflating.
    """
    head = pydicom.dcmread(BytesIO(data[:start]), force=True)  # ends after the meta group
    dataset = read_dataset(inflated, is_implicit_VR=False, is_little_endian=True)
    ds = FileDataset(inflated, dataset, head.preamble, head.file_meta, False, True)
    ds.set_original_encoding(False, True, dataset.get("SpecificCharacterSet", "ISO_IR 6"))
    return ds


def _sanitise_charset(ds: Dataset) -> None:
    """Drop a Specific Character Set that is not a list of defined terms.

    pydicom quotes an unknown character set in a warning when it decodes text; a damaged
    length can make that "character set" hold the patient elements, so an invalid value is
    removed before any text is read (the text is then decoded as ASCII, with replacements).
    """
    try:
        raw = ds.get_item(0x00080005)
        if raw is None:
            return
        value = raw.value
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
        terms = [t.strip() for t in text.strip("\x00 ").split("\\")]
        known = python_encoding
        if _CHARSET.fullmatch(text.strip("\x00 ")) and all(not t or t in known for t in terms):
            return
    except Exception:
        pass
    del ds[0x00080005]
    logger.debug("invalid Specific Character Set removed")


def _read_dataset(data: bytes) -> Dataset:
    configure_pydicom()
    meta = _file_meta_end(data)
    inflated = _inflate(data, meta[0]) if meta is not None and meta[1] == _DEFLATED else None
    try:
        if meta is not None and inflated is not None:
            ds = _read_deflated(data, meta[0], inflated)
        else:
            ds = pydicom.dcmread(BytesIO(data), force=True)
    except (EOFError, struct.error) as exc:
        raise ScanError(
            ScanErrorCode.TRUNCATED,
            "DICOM data is truncated (file is incomplete or damaged): it ends inside its header",
        ) from exc
    except BaseException as exc:
        if is_fatal(exc):
            raise
        if isinstance(exc, MemoryError):
            raise
        logger.debug("DICOM header unreadable: %s", exception_summary(exc))
        raise ScanError(
            ScanErrorCode.UNSUPPORTED_IMAGE,
            f"DICOM header could not be read ({type(exc).__name__}): "
            "the file is damaged or not a valid DICOM file",
        ) from exc
    _sanitise_charset(ds)
    return ds


#: Transfer syntaxes whose pixel values the working-image path reads in place: native little
#: endian, so the stored values are the file's bytes as they lie (value: implicit VR or not).
_IN_PLACE_SYNTAXES: dict[str, bool] = {ImplicitVRLittleEndian: True, ExplicitVRLittleEndian: False}


@dataclass(frozen=True)
class _InPlace:
    """Where a grey image's stored values lie in the file's bytes, and how they are typed."""

    offset: int  # of the Pixel Data value
    rows: int
    columns: int
    dtype: np.dtype
    bits_stored: int


def _read_header_in_place(data: bytes) -> tuple[Dataset, _InPlace] | None:
    """The data set up to its Pixel Data, and where its pixel values lie; or None.

    Why: for an uncompressed radiograph, pydicom's full read copies the 8 MiB Pixel Data
    value out of the file's bytes, and ``pixel_array`` copies it again (and shifts every
    value, for Bits Stored < Bits Allocated): two fresh buffers per scan, each costing more
    in page faults than in copying, while pydicom parses the header under the GIL. Reading
    the header only (``stop_before_pixels``) and viewing the values where they lie costs no
    copy at all. It is the same parser and the same values (``tests/test_dicom_working.py``
    compares both ways over every test DICOM).

    Only the plain case is taken here: native little endian from the file meta (not
    deflated), a defined-length Pixel Data element right where pydicom stopped, one frame of
    one sample of 8 or 16 bits, MONOCHROME1/2, and every byte of it present. Anything else is
    None, and the caller reads the file the full way, which gives every odd file the same
    treatment and the same error as before.
    """
    meta = _file_meta_end(data)
    if meta is None or meta[1] not in _IN_PLACE_SYNTAXES:
        return None
    implicit = _IN_PLACE_SYNTAXES[meta[1]]
    configure_pydicom()
    stream = BytesIO(data)
    try:
        ds = pydicom.dcmread(stream, force=True, stop_before_pixels=True)
        # pydicom rewinds to the first top-level pixel element's tag when it stops there
        position = stream.tell()
        if getattr(ds, "original_encoding", None) != (implicit, True):
            return None  # pydicom switched VR encoding mid-file: leave it to the full read
        rows, columns = int(ds.Rows), int(ds.Columns)
        allocated, bits_stored = int(ds.BitsAllocated), int(ds.BitsStored)
        signed = int(ds.PixelRepresentation)
        samples = int(ds.SamplesPerPixel)
        frames = ds.get("NumberOfFrames")
        frames = 1 if frames is None or frames == "" else int(frames)
        photometric = str(ds.PhotometricInterpretation).strip().upper()
    except Exception:  # whatever it is, the full read reports it as it always did
        return None
    if (
        photometric not in ("MONOCHROME1", "MONOCHROME2")
        or samples != 1
        or frames != 1
        or allocated not in (8, 16)
        or not 1 <= bits_stored <= allocated
        or signed not in (0, 1)
        or not (0 < rows < 2**16 and 0 < columns < 2**16)
    ):
        return None
    header = 8 if implicit else 12
    if position + header > len(data):
        return None
    group, element = struct.unpack_from("<HH", data, position)
    if (group, element) != (0x7FE0, 0x0010):
        return None
    if implicit:
        (length,) = struct.unpack_from("<I", data, position + 4)
    else:
        if data[position + 4 : position + 6] not in (b"OW", b"OB"):
            return None
        (length,) = struct.unpack_from("<I", data, position + 8)
    expected = rows * columns * allocated // 8
    offset = position + header
    if length not in (expected, expected + expected % 2) or offset + expected > len(data):
        return None  # cut short, excess data or undefined length: the full read decides
    kind = ("<i" if signed else "<u") + str(allocated // 8)
    return ds, _InPlace(offset, rows, columns, np.dtype(kind), bits_stored)


def _stored_in_place(data: bytes, place: _InPlace) -> tuple[np.ndarray, tuple[int, int]]:
    """The stored values as a read-only view on ``data``, and their (min, max).

    The values are what ``pixel_array`` gives: bits above Bits Stored are ignored (pydicom
    shifts them out, sign-extending signed values). Where every value already lies in Bits
    Stored's range — as writers are required to ensure, and nearly all do — that shift
    changes nothing and the view is used as it is; otherwise a corrected copy is made.
    """
    count = place.rows * place.columns
    stored = np.frombuffer(data, dtype=place.dtype, count=count, offset=place.offset)
    stored = stored.reshape(place.rows, place.columns)
    lo, hi = int(stored.min()), int(stored.max())
    unused = 8 * place.dtype.itemsize - place.bits_stored
    if unused:
        if place.dtype.kind == "i":
            fits = -(1 << (place.bits_stored - 1)) <= lo and hi < 1 << (place.bits_stored - 1)
        else:
            fits = hi < 1 << place.bits_stored
        if not fits:
            stored = stored.copy()
            np.left_shift(stored, unused, out=stored)
            np.right_shift(stored, unused, out=stored)
            lo, hi = int(stored.min()), int(stored.max())
    return stored, (lo, hi)


def _cut_short(ds: Dataset, size: int | None) -> str | None:
    """Why a dataset without Pixel Data looks like a file cut short, or None if it does not.

    pydicom stops quietly at the end of a truncated file, so a copy interrupted before the
    pixel data would otherwise read as a document without an image ("may be a report").
    ``size`` is the length of the stream the dataset was read from (None when it was
    inflated, so offsets do not compare).
    """
    tags = [t for t in ds.keys() if t.group != 0x0002]  # noqa: SIM118 (iterating gives elements)
    if not tags:
        return "it ends before its first data element"
    last = ds.get_item(tags[-1])
    length = getattr(last, "length", None)
    value = getattr(last, "value", None)
    if (
        isinstance(length, int)
        and length != 0xFFFFFFFF
        and isinstance(value, bytes)
        and len(value) < length
    ):
        return "it ends in the middle of a data element"
    value_tell = getattr(last, "value_tell", None)
    if (
        size is not None
        and isinstance(value_tell, int)
        and isinstance(length, int)
        and length != 0xFFFFFFFF
        and 0 < size - (value_tell + length) < 8
    ):
        # pydicom stops quietly when fewer bytes are left than an element header needs
        return "it ends in the middle of a data element header"
    return None


def _frame_count(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def _decode_pixels(ds: Dataset, tsyntax: UID) -> np.ndarray:
    """The stored pixel array. Compressed data is decoded in a worker process (sandbox.py).

    Messages are fixed texts: a decoder's own message may quote file values.
    """
    if tsyntax.is_encapsulated:
        request = sandbox.build_request(ds, tsyntax)
        # old encoders' illegal scan headers in sequential JPEG (jpeg_repair.py says which)
        request["pixel_data"] = jpeg_repair.repair_encapsulated(
            request["pixel_data"], str(tsyntax), _frame_count(ds)
        )
        return sandbox.decode_isolated(request)
    try:
        return ds.pixel_array
    except MemoryError:
        raise
    except BaseException as exc:
        if is_fatal(exc):
            raise
        lowered = str(exc).lower()
        logger.debug("DICOM pixel data undecodable: %s", exception_summary(exc))
        if "less than expected" in lowered or "truncat" in lowered or "end of" in lowered:
            raise ScanError(
                ScanErrorCode.TRUNCATED,
                "DICOM pixel data is truncated (file is incomplete or damaged): it holds fewer "
                "bytes than its rows, columns and bit depth need",
            ) from exc
        raise ScanError(
            ScanErrorCode.UNSUPPORTED_IMAGE,
            f"DICOM pixel data could not be decoded ({type(exc).__name__}): the file may be "
            "damaged",
        ) from exc


def _check_pixel_bytes(ds: Dataset, rows: int, columns: int) -> None:
    """Refuse, before decoding, pixel data whose decoded size would exceed the limits."""
    samples = int(_number(ds, "SamplesPerPixel", 1))
    bits = int(_number(ds, "BitsAllocated", 16))
    if samples not in (1, 3, 4):
        raise ScanError(
            ScanErrorCode.UNSUPPORTED_IMAGE,
            f"DICOM image has {samples} samples per pixel (1 for grey or 3 for colour expected)",
        )
    if bits not in (1, 8, 16, 32, 64):
        raise ScanError(
            ScanErrorCode.UNSUPPORTED_IMAGE,
            f"DICOM image has an invalid Bits Allocated ({bits}; 8, 16 or 32 expected)",
        )
    expected = rows * columns * samples * max(bits, 8) // 8
    if expected > MAX_PIXEL_BYTES:
        raise ScanError(
            ScanErrorCode.TOO_LARGE,
            f"DICOM pixel data would take {expected / 2**20:,.0f} MiB decoded, more than the "
            f"{MAX_PIXEL_BYTES >> 20} MiB limit",
        )


def _window(ds: Dataset) -> tuple[float, float] | None:
    """The first (center, width) pair in the dataset, or None when absent or unusable."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    center = _number(ds, "WindowCenter", float("nan"))
    width = _number(ds, "WindowWidth", float("nan"))
    if not (np.isfinite(center) and np.isfinite(width)) or width <= 0:
        return None
    return center, width


def apply_window(
    values: np.ndarray, center: float, width: float, function: str = "LINEAR", *, inplace: bool
) -> np.ndarray:
    """DICOM VOI windowing (PS3.3 C.11.2.1.2) onto [0, 1], in float32.

    ``LINEAR`` is the standard's default (with its half-pixel offsets, identical to what
    :func:`pydicom.pixels.apply_windowing` returns, divided by its output range);
    ``LINEAR_EXACT`` and ``SIGMOID`` are honoured when the file asks for them.
    """
    out = values if inplace and values.dtype == np.float32 else values.astype(np.float32)
    if function == "SIGMOID":
        out -= np.float32(center)
        out *= np.float32(-4.0 / width)
        np.exp(out, out=out)
        out += np.float32(1.0)
        np.reciprocal(out, out=out)
        return out
    if function == "LINEAR_EXACT":
        out -= np.float32(center)
        out /= np.float32(width)
    else:
        width = max(width, 1.0 + 1e-6)  # LINEAR needs width ≥ 1
        out -= np.float32(center - 0.5)
        out /= np.float32(width - 1.0)
    out += np.float32(0.5)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def window_raw(scan: Scan, center: float, width: float) -> np.ndarray:
    """``scan.raw`` under a (center, width) window, as the loader would have shown it.

    The viewer's window/level calls this, so a re-windowed scan goes through the same VOI
    function the file asks for (``SIGMOID``/``LINEAR_EXACT``, see :func:`apply_window`) and the
    same MONOCHROME1 inversion as ``scan.pixels``; at the file's own window the two are equal.
    A file whose VOI is a LUT has no (center, width) to go back to: ``scan.pixels`` is its
    default view, and a window the user sets is applied linearly.
    """
    if scan.raw is None:
        raise ValueError(f"{scan.path.name} has no raw values to window (an 8-bit image)")
    function = scan.metadata.extra.get("voi_lut_function", "LINEAR")
    grey = apply_window(scan.raw, center, width, function, inplace=False)
    if (scan.metadata.photometric or "").upper() == "MONOCHROME1":
        np.subtract(np.float32(1.0), grey, out=grey)
    return grey


def _grey_pipeline(
    ds: Dataset, stored: np.ndarray, keep_raw: bool, extra: dict[str, str]
) -> tuple[np.ndarray, np.ndarray | None, tuple[float, float] | None]:
    """Modality LUT, VOI and scaling to [0, 1] for a grey image: (pixels, raw, window).

    ``raw`` is the Modality LUT output (e.g. Hounsfield units), before windowing and before
    the MONOCHROME1 inversion: a viewer re-windowing it must invert MONOCHROME1 itself.
    The window preferred is the file's first Window Center/Width (what viewers show by
    default), then a VOI LUT Sequence, then the image's own min–max.
    """
    if "ModalityLUTSequence" in ds:
        modality = np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
        extra["modality_lut"] = "Modality LUT Sequence"
    else:
        slope = _number(ds, "RescaleSlope", 1.0)
        intercept = _number(ds, "RescaleIntercept", 0.0)
        modality = stored.astype(np.float32)  # always a fresh array we own
        if slope != 1.0:
            modality *= np.float32(slope)
        if intercept != 0.0:
            modality += np.float32(intercept)
        if slope != 1.0 or intercept != 0.0:
            extra["rescale"] = f"slope={slope:g}, intercept={intercept:g}"

    bits_stored = int(_number(ds, "BitsStored", 8))
    raw = modality if keep_raw and bits_stored > 8 else None
    inplace = raw is None

    window = _window(ds)
    if window is not None:
        function = (_text(ds, "VOILUTFunction", _CODE) or "LINEAR").upper()
        pixels = apply_window(modality, window[0], window[1], function, inplace=inplace)
        extra["window_source"] = "dicom"
        if function != "LINEAR":
            extra["voi_lut_function"] = function
        return pixels, raw, window

    if "VOILUTSequence" in ds:
        try:
            item = ds.VOILUTSequence[0]
            lut_bits = int(item.LUTDescriptor[2]) or 16
            # the LUT is indexed by integer modality values: give it integers
            identity = "rescale" not in extra and "modality_lut" not in extra
            indices = stored if identity else np.rint(modality).astype(np.int32)
            mapped = apply_voi_lut(indices, ds, index=0, prefer_lut=True)
            pixels = np.asarray(mapped, dtype=np.float32) / np.float32(2**lut_bits - 1)
            np.clip(pixels, 0.0, 1.0, out=pixels)
            extra["window_source"] = "dicom VOI LUT"
            return pixels, raw, None  # a LUT, not a (center, width) window
        except Exception as exc:  # a broken LUT falls back to min–max below
            logger.debug("VOI LUT Sequence unusable (%s); using min-max", type(exc).__name__)

    pixels, lo, hi = minmax_to_unit(modality, inplace=inplace)
    extra["window_source"] = "min-max"
    return pixels, raw, ((lo + hi) / 2.0, hi - lo)


#: Largest deviation of the per-value table from a straight line for which the image is
#: reduced as integers and the line applied to the block means (:func:`_grey_reduced`):
#: far below one 8-bit grey step (0.004) and below a model input's float32 resolution.
_AFFINE_TOLERANCE = 1e-6


def _reducible(ds: Dataset, stored: np.ndarray) -> bool:
    """Whether :func:`_grey_reduced` gives this image's working image exactly.

    Native-order integers of at most 16 bits (a table of at most 65,536 values) and a
    Modality LUT that is a rescale (monotone, so the image's min and max sit at its extreme
    stored values).
    """
    return (
        stored.ndim == 2
        and stored.dtype.kind in "iu"
        and stored.dtype.itemsize <= 2
        and stored.dtype.isnative
        and "ModalityLUTSequence" not in ds
    )


def _grey_reduced(
    ds: Dataset,
    stored: np.ndarray,
    factor: int,
    monochrome1: bool,
    extra: dict[str, str],
    extremes: tuple[int, int] | None = None,
) -> tuple[np.ndarray, tuple[float, float] | None]:
    """The grey pipeline's working image: (block means of the windowed pixels, window).

    The pipeline (rescale, VOI window or LUT or min-max, MONOCHROME1, finite values) maps each
    stored value to one grey level, so it is computed once per value between the image's
    smallest and largest stored value, by :func:`_grey_pipeline` itself: a table with the
    very figures a full-resolution pass gives each pixel (for min-max too, since a rescale is
    monotone). Then:

    * where the table is a straight line over those values (no window clipping, min-max,
      a window wider than the data), block means commute with it: the integer image is
      reduced first (exact sums) and the line applied to the small image;
    * otherwise (a window that clips, SIGMOID, a VOI LUT) block means do not commute with it,
      so the table is looked up for every pixel and the result reduced.

    Either way the result is the block mean of what the full-resolution pipeline gives,
    within :data:`_AFFINE_TOLERANCE`, at a fraction of the cost of five float32 passes over
    the whole image and a copy into Pillow (``tests/test_dicom_working.py``). ``extremes`` is
    the image's (min, max) when the caller has them already (:func:`_stored_in_place`).
    """
    lo, hi = extremes if extremes is not None else (int(stored.min()), int(stored.max()))
    domain = np.arange(lo, hi + 1, dtype=np.int64).astype(stored.dtype)
    table, _, window = _grey_pipeline(ds, domain, False, extra)
    table = np.asarray(table, dtype=np.float32)
    if monochrome1:
        np.subtract(np.float32(1.0), table, out=table)
    np.nan_to_num(table, copy=False, nan=0.0, posinf=1.0, neginf=0.0)  # as loading does
    np.clip(table, 0.0, 1.0, out=table)

    start, end = float(table[0]), float(table[-1])
    slope = (end - start) / (hi - lo) if hi > lo else 0.0
    line = start + slope * np.arange(len(table), dtype=np.float64)
    if float(np.max(np.abs(table - line))) <= _AFFINE_TOLERANCE:
        means = _block_sums(stored, factor, (lo, hi))
        means *= 1.0 / np.outer(
            _block_counts(stored.shape[0], factor), _block_counts(stored.shape[1], factor)
        )
        means -= lo
        means *= slope
        means += start
        np.clip(means, 0.0, 1.0, out=means)
        return means.astype(np.float32), window
    # Index the table by (value - lo), computed in the unsigned type of the same width:
    # the wrap-around makes it right for signed images too, in one pass of 16-bit integers.
    unsigned = np.dtype(f"u{stored.dtype.itemsize}")
    index = stored.view(unsigned) - unsigned.type(lo & (2 ** (8 * unsigned.itemsize) - 1))
    return block_mean(table[index], factor), window


def _colour_pipeline(ds: Dataset, stored: np.ndarray, photometric: str) -> np.ndarray:
    """Colour DICOM (RGB, YBR_* already converted to RGB, PALETTE COLOR) → grey in [0, 1]."""
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(stored, ds)
        try:
            bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        except Exception:
            bits = 16 if rgb.dtype.itemsize > 1 else 8
    else:
        rgb = stored
        bits = int(_number(ds, "BitsStored", 8))
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ScanError(
            ScanErrorCode.UNSUPPORTED_IMAGE,
            f"DICOM colour image has an unexpected shape {rgb.shape} for its photometric "
            "interpretation",
        )
    grey = rgb_to_grey(rgb)
    grey /= np.float32(2**bits - 1)
    np.clip(grey, 0.0, 1.0, out=grey)
    return grey


def decode_dicom(
    path: Path,
    data: bytes,
    sha256: str,
    *,
    keep_raw: bool,
    max_pixels: int,
    lease: PixelLease | None = None,
    reduce_factor: Callable[[int, int], int] | None = None,
) -> Scan:
    """Decode one single-frame DICOM image from its bytes.

    Raises :class:`ScanError` with a specific code for every refusal: no pixel data, several
    frames, too many pixels, a transfer syntax without an installed decoder, damaged data.
    Every size limit is checked from the header before any pixel is decoded (and before a
    deflated data set is inflated); ``lease``, when given, is charged the image's pixels
    before decoding, so a shared budget bounds what the decoder threads hold at once.
    Reasons never quote a file value that could hold an identifier.

    ``reduce_factor(height, width)``, when given, is the integer factor of the working image
    (``preprocess.working_factor``): a grey image of at most 16-bit integers is then returned
    already reduced by block means, without full-resolution float copies (:func:`_grey_reduced`);
    other images come back at full resolution, for the caller to reduce. The metadata keeps
    the original width and height either way.
    """
    try:
        return _decode_dicom(path, data, sha256, keep_raw, max_pixels, lease, reduce_factor)
    except (ScanError, MemoryError):
        raise
    except Exception as exc:
        # pydicom parses elements lazily: a damaged element (an unknown VR, a value that does
        # not fit its VR) fails when first read. That is the file's fault, not ours.
        frames = traceback.extract_tb(exc.__traceback__)
        if not frames or "pydicom" not in Path(frames[-1].filename).parts:
            raise
        logger.debug("damaged DICOM element: %s", exception_summary(exc))
        raise ScanError(
            ScanErrorCode.UNSUPPORTED_IMAGE,
            f"a DICOM data element could not be read ({type(exc).__name__}): the file is damaged",
        ) from exc


def _decode_dicom(
    path: Path,
    data: bytes,
    sha256: str,
    keep_raw: bool,
    max_pixels: int,
    lease: PixelLease | None,
    reduce_factor: Callable[[int, int], int] | None = None,
) -> Scan:
    # The working image of a plain uncompressed radiograph is made from its values where
    # they lie in ``data``; every other file (and every viewer decode) is read in full.
    header = _read_header_in_place(data) if reduce_factor is not None else None
    in_place = header[1] if header is not None else None
    ds = header[0] if header is not None else _read_dataset(data)
    tsyntax = _transfer_syntax(ds)

    if in_place is None and not any(
        k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
    ):
        meta = _file_meta_end(data)
        cut = _cut_short(ds, None if meta is not None and meta[1] == _DEFLATED else len(data))
        if cut is not None:
            raise ScanError(
                ScanErrorCode.TRUNCATED,
                f"DICOM file is truncated: {cut} (an interrupted copy or a damaged file)",
            )
        sop = _text(ds, "SOPClassUID", _UID)
        kind = f" (SOP class: {UID(sop).name})" if sop else ""
        raise ScanError(
            ScanErrorCode.NO_PIXEL_DATA,
            "DICOM file has no image (no Pixel Data): it may be a report or structured "
            f"document{kind}",
        )
    frames = _frame_count(ds)
    if frames > 1:
        raise ScanError(
            ScanErrorCode.MULTI_FRAME,
            f"multi-frame DICOM ({frames} frames) is not supported: export a single image",
        )
    rows, columns = int(_number(ds, "Rows", 0)), int(_number(ds, "Columns", 0))
    if rows <= 0 or columns <= 0:
        raise ScanError(
            ScanErrorCode.UNSUPPORTED_IMAGE,
            f"DICOM image has an invalid size ({rows} rows × {columns} columns)",
        )
    if rows * columns > max_pixels:
        raise ScanError(
            ScanErrorCode.TOO_LARGE,
            f"image is {columns}×{rows} pixels, more than the "
            f"{max_pixels // 1_000_000}-megapixel limit",
        )
    _check_pixel_bytes(ds, rows, columns)
    _check_decodable(tsyntax)
    photometric = (_text(ds, "PhotometricInterpretation", _CODE) or "").upper()
    if not photometric:
        if "PhotometricInterpretation" in ds:
            raise ScanError(
                ScanErrorCode.UNSUPPORTED_IMAGE,
                "DICOM Photometric Interpretation is not a valid value: the file is damaged",
            )
        photometric = "MONOCHROME2"
    if lease is not None:
        lease.reserve(rows * columns * int(_number(ds, "SamplesPerPixel", 1)))

    extremes: tuple[int, int] | None = None
    if in_place is not None:
        stored, extremes = _stored_in_place(data, in_place)
    else:
        stored = _decode_pixels(ds, tsyntax)
    extra: dict[str, str] = {}
    sop = _text(ds, "SOPClassUID", _UID)
    if sop:
        extra["sop_class"] = UID(sop).name
    raw: np.ndarray | None = None
    window: tuple[float, float] | None = None

    if photometric in ("MONOCHROME1", "MONOCHROME2") or stored.ndim == 2:
        if stored.ndim != 2:
            raise ScanError(
                ScanErrorCode.UNSUPPORTED_IMAGE,
                f"DICOM grey image has an unexpected shape {stored.shape}",
            )
        factor = reduce_factor(*stored.shape) if reduce_factor is not None else 1
        # MONOCHROME1 stores high values as dark; it is inverted after windowing, as a
        # display does, so bone is bright like every other X-ray the models see.
        monochrome1 = photometric == "MONOCHROME1"
        keeps_raw = keep_raw and int(_number(ds, "BitsStored", 8)) > 8
        if factor > 1 and not keeps_raw and _reducible(ds, stored):
            pixels, window = _grey_reduced(ds, stored, factor, monochrome1, extra, extremes)
        else:
            pixels, raw, window = _grey_pipeline(ds, stored, keep_raw, extra)
            if monochrome1:
                np.subtract(np.float32(1.0), pixels, out=pixels)
        if monochrome1:
            extra["inverted"] = "MONOCHROME1"
    else:
        pixels = _colour_pipeline(ds, stored, photometric)

    shape = _text(ds, "PresentationLUTShape", _CODE)
    if shape:
        extra["presentation_lut_shape"] = shape
    metadata = ScanMetadata(
        source_format="dicom",
        width=int(stored.shape[1]),
        height=int(stored.shape[0]),
        bits_stored=int(_number(ds, "BitsStored", 8)),
        photometric=photometric,
        modality=_text(ds, "Modality", _CODE),
        body_part=_text(ds, "BodyPartExamined", _CODE),
        view_position=_text(ds, "ViewPosition", _CODE),
        patient_age=_text(ds, "PatientAge", _AGE),
        patient_sex=_text(ds, "PatientSex", _CODE),
        study_date=_text(ds, "StudyDate", _DATE),
        study_description=_text(ds, "StudyDescription"),
        transfer_syntax=tsyntax.name if _UID.fullmatch(str(tsyntax)) else "(invalid)",
        window=window,
        patient_name=_text(ds, "PatientName", _PERSON),
        patient_id=_text(ds, "PatientID", _PERSON),
        patient_birth_date=_text(ds, "PatientBirthDate", _DATE),
        extra=extra,
    )
    return Scan(
        path=path,
        sha256=sha256,
        pixels=np.ascontiguousarray(pixels, dtype=np.float32),
        metadata=metadata,
        raw=raw,
    )

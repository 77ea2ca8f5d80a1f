"""Reading scans from disk: PNG, JPEG, TIFF, BMP (and a few more rasters) and DICOM.

Every file becomes a :class:`~desktop.engine.scan.Scan` whose ``pixels`` follow one contract
(float32, (H, W), [0, 1], 0 = black), or a :class:`ScanError` whose code and message say what
is wrong. Nothing here raises anything else: the batch runner records the reason and goes on.

Design decisions (they matter for the models, so they are written down):

* **The content decides the format, not the suffix.** A PNG renamed ``.dcm`` is decoded as a
  PNG; text renamed ``.png`` is refused as "not an image".
* **8-bit rasters are divided by 255**, so an 8-bit image keeps exactly the grey levels the
  training data (8-bit PNG/JPEG) had.
* **Rasters deeper than 8 bits are scaled min–max to [0, 1].** Their stored range says little
  about the real bit depth: a 12-bit detector image written to a 16-bit PNG uses 0..4095 and
  would be nearly black divided by 65535, and PNG's ``sBIT`` chunk (the only place a true bit
  depth could be read) is rarely written and not exposed by Pillow. 16-bit raster X-rays are
  usually un-windowed detector data, so this is the same rule DICOM files without a window
  get. ``raw`` keeps the stored integers for a viewer's window/level.
* **Colour becomes grey with ITU-R 601 luma** (Pillow's RGB → "F" conversion: the same
  weights as "L", but kept in float so there is no extra rounding). Pillow reads 16-bit
  colour PNGs as 8-bit RGB; the loss (under one grey level) is accepted.
* **Alpha is ignored.** Medical images exported with an alpha channel almost always have it
  fully opaque; where it is not, the colour values underneath are still the measured image,
  while compositing onto black or white would invent dark or bright regions the models would
  read as anatomy. A partly transparent image is marked in ``metadata.extra["alpha"]``.
* **EXIF orientation is applied.** The training data has no EXIF, so it changes nothing for
  it, but phone photos of films and JPEGs from some viewers carry an orientation tag, and a
  sideways chest X-ray is out of distribution for every model.
* **Decompression bombs are refused from the header**, before any pixel is decoded, by our
  own :data:`MAX_PIXELS` limit. Pillow's process-wide ``MAX_IMAGE_PIXELS`` is left alone, and
  so are the process-wide warning filters (``warnings.catch_warnings`` is not thread-safe and
  the runner decodes in two threads): the header is parsed by the format plugin directly,
  which is what ``Image.open`` does minus its bomb warning, so no warning is ever raised.
* **Files are read once** (:func:`read_file`) and hashed from the same bytes that are decoded,
  so the hash in the results store is the hash of what was screened.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace
from functools import partial
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import (
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    ImageFile,
    ImageOps,
    Jpeg2KImagePlugin,
    JpegImagePlugin,
    PngImagePlugin,
    PpmImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

from desktop.engine.budget import PixelLease

# is_candidate and SUPPORTED_SUFFIXES are defined there (light, for the window) and kept
# importable from here
from desktop.engine.candidates import (  # noqa: F401
    SUPPORTED_SUFFIXES,
    is_candidate,
    looks_like_dicom,
)
from desktop.engine.dicom import (
    block_mean,
    decode_dicom,
    minmax_block_mean,
    minmax_to_unit,
)
from desktop.engine.errors import ScanError, ScanErrorCode, exception_summary, is_fatal
from desktop.engine.scan import Scan, ScanMetadata

logger = logging.getLogger(__name__)

# The pixel lease of the decode running in this thread (decode_scan sets it; each thread has
# its own context, so concurrent decodes never see each other's lease).
_LEASE: ContextVar[PixelLease | None] = ContextVar("medscreen_pixel_lease", default=None)

#: Images with more pixels than this are refused before decoding (decompression bombs; the
#: largest digital radiographs are about 4300×3500 = 15 megapixels, mammograms up to 30, and
#: a 50-megapixel phone photo of a film still fits). One image at the limit costs about
#: 0.6 GB while it is decoded; the runner's pixel budget (budget.py) bounds several at once.
MAX_PIXELS: int = 60_000_000

#: JPEG quality of stored thumbnails: at 384 pixels no artefact is visible on a radiograph.
THUMBNAIL_QUALITY: int = 90

#: Files larger than this are refused before reading them into memory.
MAX_FILE_BYTES: int = 1 << 30

# Pillow formats we decode, in the order their headers are tried. Only these: Pillow also
# opens formats like EPS (which runs Ghostscript) that have no business in a scan folder.
_RASTER_FORMATS: tuple[str, ...] = (
    PngImagePlugin.PngImageFile.format,
    JpegImagePlugin.JpegImageFile.format,
    TiffImagePlugin.TiffImageFile.format,
    BmpImagePlugin.BmpImageFile.format,
    GifImagePlugin.GifImageFile.format,
    WebPImagePlugin.WebPImageFile.format,
    Jpeg2KImagePlugin.Jpeg2KImageFile.format,
    PpmImagePlugin.PpmImageFile.format,
)
_SOURCE_FORMAT = {"JPEG": "jpeg", "MPO": "jpeg", "JPEG2000": "jpeg2000", "PPM": "pnm"}

# Magic numbers of the formats above, used to tell "damaged PNG" from "not an image".
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
    (b"BM", "BMP"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
)


def read_file(path: Path) -> tuple[bytes, str]:
    """Read a whole file once and return ``(data, sha256 hex digest)``.

    Raises :class:`ScanError`: VANISHED when the file no longer exists (deleted or moved
    since the folder was listed), UNREADABLE with the reason (permission denied, a folder,
    a pipe or device, a path too long, an I/O error), EMPTY_FILE for 0 bytes, TOO_LARGE above
    :data:`MAX_FILE_BYTES`. The file is opened non-blocking and checked to be a regular file
    before reading, so a named pipe in a scan folder cannot hang the batch.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _os_error(path, exc) from exc
    try:
        with os.fdopen(fd, "rb", buffering=0) as handle:
            info = os.fstat(handle.fileno())
            if stat.S_ISDIR(info.st_mode):
                raise ScanError(ScanErrorCode.UNREADABLE, "this is a folder, not a file")
            if not stat.S_ISREG(info.st_mode):
                raise ScanError(
                    ScanErrorCode.UNREADABLE,
                    "not a regular file (a device, pipe or socket): it cannot be screened",
                )
            if info.st_size > MAX_FILE_BYTES:
                raise ScanError(
                    ScanErrorCode.TOO_LARGE,
                    f"file is {info.st_size / 2**20:,.0f} MiB, more than the "
                    f"{MAX_FILE_BYTES // 2**20:,} MiB limit",
                )
            data = handle.readall()
    except ScanError:
        raise
    except OSError as exc:
        raise _os_error(path, exc) from exc
    if not data:
        raise ScanError(ScanErrorCode.EMPTY_FILE, "file is empty (0 bytes)")
    return data, hashlib.sha256(data).hexdigest()


def _os_error(path: Path, exc: OSError) -> ScanError:
    """The ScanError for an operating-system error met while opening or reading a file."""
    if isinstance(exc, FileNotFoundError):
        return ScanError(ScanErrorCode.VANISHED, "file no longer exists (deleted or moved)")
    if isinstance(exc, IsADirectoryError):
        return ScanError(ScanErrorCode.UNREADABLE, "this is a folder, not a file")
    if isinstance(exc, PermissionError):
        try:  # Windows reports opening a folder as "permission denied"
            if path.is_dir():
                return ScanError(ScanErrorCode.UNREADABLE, "this is a folder, not a file")
        except OSError:
            pass
        return ScanError(
            ScanErrorCode.UNREADABLE,
            "permission denied: the file cannot be opened for reading",
        )
    if exc.errno == errno.ENAMETOOLONG:
        return ScanError(
            ScanErrorCode.UNREADABLE,
            f"the path is too long for the operating system ({len(str(path))} characters): "
            "move the file to a shorter folder path",
        )
    reason = exc.strerror or str(exc)
    code = errno.errorcode.get(exc.errno or 0, "")
    return ScanError(
        ScanErrorCode.UNREADABLE,
        f"file could not be read: {reason}" + (f" ({code})" if code else ""),
    )


def load_scan(path: Path, *, keep_raw: bool = False, working_side: int | None = None) -> Scan:
    """Read and decode one file: :func:`read_file` then :func:`decode_scan`."""
    data, sha256 = read_file(path)
    return decode_scan(path, data, sha256, keep_raw=keep_raw, working_side=working_side)


def decode_scan(
    path: Path,
    data: bytes,
    sha256: str,
    *,
    keep_raw: bool = False,
    working_side: int | None = None,
    lease: PixelLease | None = None,
) -> Scan:
    """Decode a file's bytes (already read by :func:`read_file`) into a :class:`Scan`.

    ``path`` is only recorded (and used in log lines), never opened. With ``keep_raw`` the
    un-windowed values of images deeper than 8 bits are kept in ``Scan.raw``.
    With ``working_side`` the pixels are the scan's *working image* (preprocess.py): reduced
    by :func:`~desktop.engine.preprocess.working_factor` with exact block means, JPEGs decoded
    at a reduced scale by DCT scaling, 8-bit images reduced before they become float. The
    metadata keeps the original width and height. Without it the pixels are full resolution
    (the viewer's window/level).
    With ``lease`` (a :class:`~desktop.engine.budget.PixelLease`), the image's pixel count
    is charged to a shared budget once the header is read, before any pixel is decoded.
    Always raises :class:`ScanError`, never anything else, whatever the decoder raised (a
    Rust panic is a ``BaseException``); only KeyboardInterrupt, SystemExit and GeneratorExit
    pass through. Unexpected failures become INTERNAL, named by exception type only: an
    exception's message may quote file content, so it goes neither into the reason nor into
    the log. The pixels of a returned scan are always finite.
    """
    token = _LEASE.set(lease) if lease is not None else None
    try:
        scan = _decode(path, data, sha256, keep_raw, working_side)
        if scan.grey8 is None:  # 8-bit levels / 255 are finite and in [0, 1] already
            _make_finite(scan.pixels)
        if working_side is not None:
            scan = _reduce_scan(scan, working_side)
        return scan
    except ScanError as err:
        logger.debug("%s: %s (%s)", path, err.message, err.code)
        raise
    except MemoryError as exc:
        logger.warning("%s: out of memory while decoding", path)
        raise ScanError(ScanErrorCode.TOO_LARGE, "not enough memory to decode this image") from exc
    except BaseException as exc:
        if is_fatal(exc):
            raise
        logger.warning("%s: unexpected error while decoding: %s", path, exception_summary(exc))
        raise ScanError(
            ScanErrorCode.INTERNAL,
            f"internal error while decoding the image ({type(exc).__name__})",
        ) from exc
    finally:
        if token is not None:
            _LEASE.reset(token)


@contextmanager
def charging(lease: PixelLease) -> Iterator[PixelLease]:
    """Charge every decode in this block, in this thread, to ``lease`` (see budget.py).

    For callers that reach :func:`decode_scan` through another function (the runner calls
    ``preprocess.decode_working``) and so cannot pass ``lease`` themselves.
    """
    token = _LEASE.set(lease)
    try:
        yield lease
    finally:
        _LEASE.reset(token)


@contextmanager
def reused_image_buffers(count: int) -> Iterator[None]:
    """Let Pillow keep up to ``count`` freed image blocks for the next decode, in this block.

    Why: Pillow frees each decoded image's memory (up to 16 MiB a block) and the next decode
    of the same size gets fresh pages from the system, each a page fault: ~2,000 a 2048² 16-bit
    PNG, ~4 ms of kernel time a scan on the development VM, where the whole scan costs ~110 ms.
    Kept blocks are reused at once (measured in the batch: CPU per scan 113-117 -> 107-109 ms,
    page faults ~6,000 -> ~3,400). The cost is bounded, not per scan: at most ``count`` blocks
    of at most 16 MiB stay allocated while the block runs (13-25 MB more peak RSS measured),
    and they are freed when it ends. The setting is Pillow's process-wide ``blocks_max``
    (``PILLOW_BLOCKS_MAX``); it is only ever raised here, and the previous value is put back.
    """
    core = Image.core
    previous = int(core.get_blocks_max())
    if count > previous:
        core.set_blocks_max(count)
    try:
        yield
    finally:
        if count > previous:
            core.set_blocks_max(previous)  # frees the kept blocks beyond ``previous``


def _make_finite(pixels: np.ndarray) -> None:
    """Replace NaN/±inf pixels by 0 and clip to [0, 1], in place (no model sees a NaN).

    Every decoder path is meant to produce finite values already; this is the one place
    that guarantees it whatever a file holds (a sum is cheaper than a full isfinite pass).
    """
    if pixels.dtype.kind == "f" and not np.isfinite(pixels.sum(dtype=np.float64)):
        np.nan_to_num(pixels, copy=False, nan=0.0, posinf=1.0, neginf=0.0)
        np.clip(pixels, 0.0, 1.0, out=pixels)


def _reserve(pixels: int) -> None:
    """Charge the current decode's lease (if any) with ``pixels`` before decoding them."""
    lease = _LEASE.get()
    if lease is not None:
        lease.reserve(pixels)


def _decode(path: Path, data: bytes, sha256: str, keep_raw: bool, working_side: int | None) -> Scan:
    if not data:
        raise ScanError(ScanErrorCode.EMPTY_FILE, "file is empty (0 bytes)")
    head = data[:132]
    # The preamble check comes first: a DICOM preamble may itself hold a TIFF header.
    if len(head) >= 132 and head[128:132] == b"DICM":
        return _decode_dicom_file(path, data, sha256, keep_raw, working_side)
    magic = _magic_format(head)
    if magic is None and any(len(head) < len(sig) and sig.startswith(head) for sig, _ in _MAGIC):
        raise _truncated(f"only {len(head)} bytes")  # cut inside the format's signature
    if magic is None and looks_like_dicom(head):
        return _decode_dicom_file(path, data, sha256, keep_raw, working_side)
    return _decode_raster(path, data, sha256, keep_raw, magic, working_side)


def _decode_dicom_file(
    path: Path, data: bytes, sha256: str, keep_raw: bool, working_side: int | None
) -> Scan:
    """DICOM, reduced inside the decoder when a working image is asked for (dicom.py says
    which images it can reduce before they become float; :func:`_reduce_scan` does the rest).
    """
    reduce_factor = None
    if working_side is not None:
        from desktop.engine.preprocess import working_factor

        reduce_factor = partial(working_factor, side=working_side)
    return decode_dicom(
        path,
        data,
        sha256,
        keep_raw=keep_raw,
        max_pixels=MAX_PIXELS,
        lease=_LEASE.get(),
        reduce_factor=reduce_factor,
    )


def _magic_format(head: bytes) -> str | None:
    for prefix, name in _MAGIC:
        if head.startswith(prefix):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def _describe_content(head: bytes) -> str:
    """A short guess of what a non-image file is, for the "not an image" message."""
    if head.startswith(b"%PDF"):
        return "it is a PDF document"
    if head.startswith(b"PK\x03\x04"):
        return "it is a ZIP archive or an Office document"
    if head.startswith(b"\x1f\x8b"):
        return "it is a gzip archive"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"mif1", b"msf1", b"hevc", b"avif"):
            return "it is a HEIC/AVIF photo: export it as JPEG or PNG"
        return "it is a video or MP4-family file"
    if head and _is_text(head):
        return "it looks like text"
    return "unrecognised binary data"


def _is_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # only a multi-byte character cut at the end is fine
            return False
        text = head[: exc.start].decode("utf-8")
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    return printable >= 0.95 * max(1, len(text))


def _not_an_image(head: bytes) -> ScanError:
    return ScanError(
        ScanErrorCode.NOT_AN_IMAGE,
        "not an image: the file content is not PNG/JPEG/TIFF/BMP/DICOM "
        f"({_describe_content(head)})",
    )


def _truncated(detail: str = "") -> ScanError:
    return ScanError(
        ScanErrorCode.TRUNCATED,
        "image data is truncated (file is incomplete or damaged)"
        + (f": {detail}" if detail else ""),
    )


def _open_raster(data: bytes) -> ImageFile.ImageFile | None:
    """Parse an image header with the first allowed Pillow plugin that accepts it.

    This is :func:`PIL.Image.open` restricted to :data:`_RASTER_FORMATS`, without its
    decompression-bomb warning/error (our own :data:`MAX_PIXELS` check follows, without
    touching process-wide state). Returns None when no plugin recognises the data; re-raises
    the last header error when a plugin recognised the data but could not parse the header.
    """
    fp = BytesIO(data)
    prefix = data[:16]
    header_error: Exception | None = None
    for name in _RASTER_FORMATS:
        entry = Image.OPEN.get(name)
        if entry is None:
            continue
        factory, accept = entry
        if accept is not None:
            verdict = accept(prefix)
            if not verdict or isinstance(verdict, str):
                continue
        fp.seek(0)
        try:
            return factory(fp, "")
        except (SyntaxError, IndexError, TypeError, struct.error, EOFError, OSError) as exc:
            header_error = exc
    if header_error is not None:
        raise header_error
    return None


def _decode_raster(
    path: Path,
    data: bytes,
    sha256: str,
    keep_raw: bool,
    magic: str | None,
    working_side: int | None = None,
) -> Scan:
    head = data[:132]
    try:
        image = _open_raster(data)
    except Exception as exc:
        if magic is None and _is_text(head):
            raise _not_an_image(head) from exc
        if magic is not None:
            # The signature is there but the header cannot be parsed: cut short or damaged.
            raise _truncated(f"the {magic} header cannot be read ({exc})") from exc
        raise ScanError(
            ScanErrorCode.UNSUPPORTED_IMAGE,
            f"image header could not be read ({type(exc).__name__}: {exc})",
        ) from exc
    if image is None:
        if path.suffix.lower() in (".dcm", ".dicom", ".dic"):
            raise ScanError(
                ScanErrorCode.NOT_AN_IMAGE,
                "not an image: the file is named like DICOM but its content is not DICOM "
                f"({_describe_content(head)})",
            )
        raise _not_an_image(head)

    with image:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise ScanError(
                ScanErrorCode.UNSUPPORTED_IMAGE, f"image has no pixels ({width}×{height})"
            )
        if width * height > MAX_PIXELS:
            raise ScanError(
                ScanErrorCode.TOO_LARGE,
                f"image is {width}×{height} pixels, more than the "
                f"{MAX_PIXELS // 1_000_000}-megapixel limit",
            )
        _reserve(width * height)
        fmt = image.format or magic or "image"
        try:
            frames = int(getattr(image, "n_frames", 1) or 1)
        except (TypeError, ValueError, OSError, EOFError, SyntaxError, struct.error) as exc:
            # counting pages walks every page directory (TIFF): a damaged one fails here
            raise ScanError(
                ScanErrorCode.UNSUPPORTED_IMAGE,
                f"the {fmt} page directory is damaged ({type(exc).__name__}): the file cannot "
                "be read",
            ) from exc
        if frames > 1 and fmt != "MPO":  # MPO: phone JPEGs with a preview; the first is the photo
            raise ScanError(
                ScanErrorCode.MULTI_FRAME,
                f"multi-page {fmt} ({frames} pages) is not supported: export a single image",
            )
        if working_side is not None and isinstance(image, JpegImagePlugin.JpegImageFile):
            _draft_jpeg(image, working_side)
        try:
            image.load()
        except Image.DecompressionBombError as exc:  # not expected: the size was checked
            raise ScanError(
                ScanErrorCode.TOO_LARGE, f"image is too large to decode ({exc})"
            ) from exc
        except (OSError, EOFError, SyntaxError, zlib.error, ValueError) as exc:
            text = str(exc)
            if isinstance(exc, EOFError) or "truncat" in text.lower():
                raise _truncated() from exc
            raise ScanError(
                ScanErrorCode.UNSUPPORTED_IMAGE,
                f"the {fmt} image data could not be decoded ({type(exc).__name__}: {text}); "
                "the file may be damaged",
            ) from exc
        return _raster_to_scan(path, sha256, image, fmt, keep_raw, (width, height), working_side)


def _draft_jpeg(image: JpegImagePlugin.JpegImageFile, working_side: int) -> None:
    """Ask libjpeg to decode at 1/2, 1/4 or 1/8 scale (DCT scaling) and straight to grey.

    The scale is the largest power of two (at most 8) not above the working factor, so the
    drafted image never falls below the working size; the rest of the reduction is a box
    reduce. Colour (YCbCr) JPEGs decode only their luma channel: Y is the ITU-R 601 luma the
    RGB → grey conversion would compute, without decoding the chroma at all.
    """
    from desktop.engine.preprocess import working_factor

    width, height = image.size
    factor = working_factor(height, width, working_side)
    scale = next(s for s in (8, 4, 2, 1) if s <= factor)
    mode = "L" if image.mode in ("RGB", "L") else image.mode
    if scale > 1 or mode != image.mode:
        # Pillow picks the largest scale whose result is at least the requested size:
        # requesting (w // s, h // s) yields exactly scale s.
        image.draft(mode, (width // scale, height // scale))


def _raster_to_scan(
    path: Path,
    sha256: str,
    image: Image.Image,
    fmt: str,
    keep_raw: bool,
    size: tuple[int, int] | None = None,
    working_side: int | None = None,
) -> Scan:
    extra: dict[str, str] = {}
    mode = image.mode
    orientation = image.getexif().get(0x0112, 1)
    if isinstance(orientation, int) and 2 <= orientation <= 8:
        image = ImageOps.exif_transpose(image)
        extra["exif_orientation"] = str(orientation)
        if size is not None and orientation >= 5:  # a quarter turn swaps the sides
            size = (size[1], size[0])

    raw: np.ndarray | None = None
    grey8: np.ndarray | None = None  # the 8-bit working image, when pixels are it / 255
    bits = 8
    window: tuple[float, float] | None = None
    if mode in ("L", "1", "P", "PA", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
                "LAB", "HSV"):  # fmt: skip
        if mode in ("LA", "La", "RGBA", "RGBa", "PA") and _partly_transparent(image):
            extra["alpha"] = "ignored (image is partly transparent)"
        if working_side is not None:
            # Reduce in 8 bits (rounded block means) before anything becomes float32.
            from desktop.engine.preprocess import working_factor

            if mode in ("L", "1", "LA", "La"):
                grey = image if image.mode == "L" else image.convert("L")
            else:  # ITU-R 601 luma, as below (rounded to 8 bits here)
                grey = (image if image.mode == "RGB" else image.convert("RGB")).convert("L")
            factor = working_factor(grey.height, grey.width, working_side)
            if factor > 1:
                grey = grey.reduce(factor)
            grey8 = np.asarray(grey)
            pixels = np.divide(grey8, np.float32(255.0), dtype=np.float32)
        elif mode in ("L", "1", "LA", "La"):
            levels = np.asarray(image.convert("L") if mode != "L" else image)
            pixels = np.divide(levels, np.float32(255.0), dtype=np.float32)
        else:
            rgb = image if mode == "RGB" else image.convert("RGB")
            pixels = np.asarray(rgb.convert("F"), dtype=np.float32)  # ITU-R 601 luma, float
            pixels = np.divide(pixels, np.float32(255.0), out=np.empty_like(pixels))
    else:
        # Deeper than 8 bits: 'I;16*' (16-bit PNG/TIFF), 'I' (32-bit), 'F' (float TIFF).
        values = np.asarray(image)
        if values.ndim != 2:
            values = np.asarray(image.convert("F"))
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        bits = 8 * values.dtype.itemsize
        reduced = None
        if working_side is not None and not keep_raw:
            # the working image straight from the integers (no full-resolution float copy)
            from desktop.engine.preprocess import working_factor

            factor = working_factor(values.shape[0], values.shape[1], working_side)
            reduced = minmax_block_mean(values, factor)
        pixels, lo, hi = reduced if reduced is not None else minmax_to_unit(values)
        window = ((lo + hi) / 2.0, hi - lo)
        extra["window_source"] = "min-max"
        if keep_raw:
            raw = values.astype(values.dtype.newbyteorder("="), copy=False)  # native order
    width, height = size if size is not None else (pixels.shape[1], pixels.shape[0])
    metadata = ScanMetadata(
        source_format=_SOURCE_FORMAT.get(fmt, fmt.lower()),
        width=int(width),
        height=int(height),
        bits_stored=bits,
        photometric=mode,
        window=window,
        extra=extra,
    )
    return Scan(path=path, sha256=sha256, pixels=pixels, metadata=metadata, raw=raw, grey8=grey8)


def _reduce_scan(scan: Scan, working_side: int) -> Scan:
    """Reduce a decoded scan's float pixels to its working image (deep rasters, colour DICOM).

    8-bit rasters, JPEGs and grey DICOM of up to 16 bits arrive already reduced, and a
    reduced image is never reduced again (its shorter side is below ``2 * working_side``, so
    its factor is 1).
    """
    from desktop.engine.preprocess import working_factor

    height, width = scan.pixels.shape
    factor = working_factor(height, width, working_side)
    if factor == 1:
        return scan
    return replace(scan, pixels=block_mean(scan.pixels, factor), grey8=None)


def _partly_transparent(image: Image.Image) -> bool:
    try:
        alpha = image.getchannel("A")
    except ValueError:
        return False
    low, _ = alpha.getextrema()
    return bool(low < 255)


def make_thumbnail(pixels: np.ndarray, size: int, *, quality: int = THUMBNAIL_QUALITY) -> bytes:
    """A grey 8-bit JPEG of a scan's (working) pixels, its longest side ``size``, aspect kept.

    ``pixels`` is float in [0, 1] (``Scan.pixels``), or uint8 grey levels (``Scan.grey8``,
    whose ``/ 255`` are the pixels): those are used as they are, with the same result as
    their float pixels (rounding ``v / 255 * 255`` gives ``v`` back for every level), and
    without the quantising pass, ~0.7 ms of a JPEG scan's ~16 ms of CPU in a batch.

    Made from the working image, not the full-resolution one: quantised to 8 bits first (the
    working image is small), then resized in 8 bits, and JPEG-encoded, about a millisecond in
    all, where a PNG from full-resolution float took ~30 ms a scan. Small images are enlarged
    so every thumbnail in a table or report has the same scale; area averaging (BOX) when
    shrinking keeps fine lines from aliasing, bilinear when enlarging. Every reader (store,
    table, viewer, overlay, PDF) opens thumbnails with Pillow or Qt, which read JPEG and the
    PNG thumbnails older stores hold alike.
    """
    if pixels.ndim != 2 or pixels.size == 0:
        raise ValueError(f"expected a non-empty 2-D grey image, got shape {pixels.shape}")
    if size < 1:
        raise ValueError(f"thumbnail size must be positive, got {size}")
    height, width = pixels.shape
    scale = size / max(height, width)
    new_w = max(1, round(width * scale))
    new_h = max(1, round(height * scale))
    if pixels.dtype == np.uint8:
        image = Image.fromarray(pixels)
    else:
        # Quantise in one float buffer, in place: each temporary of a 512² working image is
        # a fresh 1 MiB whose page faults cost more than the arithmetic. The same values as
        # nan_to_num first: a NaN ends at 0 either way, ±inf and huge values clip to 255 or 0.
        grey = np.multiply(np.asarray(pixels, dtype=np.float32), np.float32(255.0))
        grey += np.float32(0.5)
        np.clip(grey, 0.0, 255.0, out=grey)
        np.nan_to_num(grey, copy=False, nan=0.0)
        image = Image.fromarray(grey.astype(np.uint8))
    if (new_w, new_h) != (width, height):
        resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
        image = image.resize((new_w, new_h), resample)
    out = BytesIO()
    image.save(out, format="JPEG", quality=quality, optimize=False)
    return out.getvalue()

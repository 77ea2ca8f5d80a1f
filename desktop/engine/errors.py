"""Errors the engine raises, each with a message a clinic user can act on.

Per-file problems are :class:`ScanError` (the batch records the reason and goes on);
problems that stop a whole batch are :class:`BatchError` (the CLI exits non-zero with it);
models that fail verification raise :class:`ModelError`.
"""

from __future__ import annotations

import re
import traceback
import warnings
from enum import StrEnum


def hide_decoder_warnings() -> None:
    """Hide Pillow's and pydicom's own UserWarnings about a damaged file ("Corrupt EXIF
    data", "Expected explicit VR"): library paths that name no scan, read as a crash, while
    the file's row already says what is wrong. The one rule of every process that decodes
    (the CLI without -v, the window and its batch process, which printed them on the
    terminal that started the window). A filter installed once at start-up, not
    catch_warnings, which is not thread-safe."""
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(PIL|pydicom)(\.|$)")


#: Longest reason text a ScanError carries (CSV cells, PDF table cells and the GUI all show it;
#: Excel refuses cells over 32,767 characters and a reportlab cell must fit on a page).
MAX_REASON_CHARS: int = 300

#: Longest value quoted from a file inside a reason (a transfer syntax UID is 64 at most).
MAX_QUOTED_CHARS: int = 64

_UNSAFE = re.compile(r"[^\x20-\x7e]")


class ScanErrorCode(StrEnum):
    """Stable machine-readable codes for per-file failures (kept in the store and the CSV)."""

    EMPTY_FILE = "empty_file"
    NOT_AN_IMAGE = "not_an_image"
    TRUNCATED = "truncated"
    TOO_LARGE = "too_large"
    #: Fewer pixels than any image the models were developed on (an icon or a thumbnail):
    #: refused rather than given a score that cannot mean anything.
    TOO_SMALL = "too_small"
    UNSUPPORTED_IMAGE = "unsupported_image"
    NO_PIXEL_DATA = "no_pixel_data"
    UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"
    MULTI_FRAME = "multi_frame"
    UNREADABLE = "unreadable"
    VANISHED = "vanished"
    #: A native decoder crashed (a Rust panic, a segfault, a killed worker) on this file.
    DECODER_CRASHED = "decoder_crashed"
    #: A native decoder did not finish within its time limit on this file.
    DECODER_TIMEOUT = "decoder_timeout"
    INTERNAL = "internal_error"


class MedScreenError(Exception):
    """Base class of every error the engine raises on purpose."""


class ScanError(MedScreenError):
    """One file could not be screened; ``str(err)`` is the reason shown to the user."""

    def __init__(self, code: ScanErrorCode, message: str) -> None:
        message = cap_reason(message)
        super().__init__(message)
        self.code = code
        self.message = message


class ModelError(MedScreenError):
    """A model file or manifest is missing, malformed or does not match its checksum."""


class BatchError(MedScreenError):
    """The batch as a whole cannot run (no models, output folder not writable, bad device)."""


def cap_reason(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """``text`` cut to at most ``limit`` characters at a word boundary, with an ellipsis.

    Every ScanError goes through here, so no layer (store, CSV, JSON, PDF, GUI) ever meets a
    reason longer than :data:`MAX_REASON_CHARS`, whatever a file or a library put into it.
    """
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space >= limit // 2:  # a word boundary not too far back
        cut = cut[:space]
    return cut.rstrip(" ,;:(") + "…"


def quote_value(value: object, limit: int = MAX_QUOTED_CHARS) -> str:
    """A value read from a file, made safe to quote in a reason: printable ASCII, capped.

    Used only for values with a fixed syntax (UIDs, code strings); anything longer than
    ``limit`` or holding control bytes (the mark of a length that swallowed other elements,
    which may be patient identifiers) is not quoted at all.
    """
    text = str(value)
    if len(text) > limit or _UNSAFE.search(text.strip()):
        return "(an invalid value)"
    return repr(text.strip())


def exception_summary(exc: BaseException) -> str:
    """An exception's type and the code locations it passed, without its message.

    Exception messages from file parsers may quote file content (a DICOM value that holds a
    patient name); the type and the frames are what a developer needs, and carry no data.
    """
    frames = traceback.extract_tb(exc.__traceback__)
    where = " <- ".join(
        f"{f.name} ({f.filename.rsplit('/', 1)[-1]}:{f.lineno})" for f in frames[-4:][::-1]
    )
    return f"{type(exc).__module__}.{type(exc).__qualname__}" + (f" at {where}" if where else "")


def is_fatal(exc: BaseException) -> bool:
    """Whether an exception must end the program rather than become one file's error row."""
    return isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit))

"""Errors the engine raises, each with a message a clinic user can act on.

Per-file problems are :class:`ScanError` (the batch records the reason and goes on);
problems that stop a whole batch are :class:`BatchError` (the CLI exits non-zero with it);
models that fail verification raise :class:`ModelError`.
"""

from __future__ import annotations

from enum import StrEnum


class ScanErrorCode(StrEnum):
    """Stable machine-readable codes for per-file failures (kept in the store and the CSV)."""

    EMPTY_FILE = "empty_file"
    NOT_AN_IMAGE = "not_an_image"
    TRUNCATED = "truncated"
    TOO_LARGE = "too_large"
    UNSUPPORTED_IMAGE = "unsupported_image"
    NO_PIXEL_DATA = "no_pixel_data"
    UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"
    MULTI_FRAME = "multi_frame"
    UNREADABLE = "unreadable"
    VANISHED = "vanished"
    INTERNAL = "internal_error"


class MedScreenError(Exception):
    """Base class of every error the engine raises on purpose."""


class ScanError(MedScreenError):
    """One file could not be screened; ``str(err)`` is the reason shown to the user."""

    def __init__(self, code: ScanErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ModelError(MedScreenError):
    """A model file or manifest is missing, malformed or does not match its checksum."""


class BatchError(MedScreenError):
    """The batch as a whole cannot run (no models, output folder not writable, bad device)."""

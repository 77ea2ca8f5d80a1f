"""Logging set-up for the two front ends (CLI, GUI); the engine itself only logs.

A rotating log file in the user's data folder keeps tracebacks for support; the console gets
warnings only. The engine logs file paths and reasons, never patient identifiers.
"""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

from desktop.engine.errors import hide_decoder_warnings
from desktop.engine.paths import user_data_dir

#: marks the handlers :func:`configure_logging` installed, so a second call can replace them
_OURS = "_medscreen_handler"


def log_file_path() -> Path:
    return user_data_dir() / "logs" / "medscreen.log"


def configure_logging(verbose: bool = False, console: bool = True) -> Path | None:
    """Send INFO and above to the log file, and WARNING (or DEBUG if verbose) to stderr.

    Calling it again replaces the handlers of the previous call instead of adding a second
    set (every line twice, and a stderr handler bound to a stream that may be closed by now).
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(old)
        old.close()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s")
    path: Path | None = log_file_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
        # backslashreplace: a file name that is not valid UTF-8 must not make logging fail
        handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=2_000_000, backupCount=3, encoding="utf-8", errors="backslashreplace"
        )
        handler.setFormatter(fmt)
        setattr(handler, _OURS, True)
        root.addHandler(handler)
    except OSError:
        path = None  # a read-only home must not stop screening
    # pydicom's validation warnings can quote attribute values, patient names included.
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    # Pillow's debug lines quote TIFF and EXIF tags whole ("tag: ImageDescription (270) …
    # value: b'Patient …'", Artist): with -v they put a name a scanner wrote into the file
    # on the console and into the log file. Its warnings still come through.
    logging.getLogger("PIL").setLevel(logging.INFO)
    if not verbose:  # the decoders' own warnings about a damaged file: shown with -v
        hide_decoder_warnings()
    if console:
        stream = logging.StreamHandler()
        stream.setLevel(logging.DEBUG if verbose else logging.WARNING)
        stream.setFormatter(logging.Formatter("medscreen: %(levelname)s: %(message)s"))
        setattr(stream, _OURS, True)
        root.addHandler(stream)
    return path

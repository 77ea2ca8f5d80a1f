"""Where MedScreen finds its bundled assets and keeps the user's data.

Bundled assets (models, fonts, icons, samples) sit in ``assets/`` at the source root, or in
the PyInstaller bundle's folder when frozen. User data (the results store, user-installed
models, logs) goes to the platform's per-user data folder, or ``MEDSCREEN_HOME`` if set —
never next to the program, which a clinic PC may install read-only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def assets_dir() -> Path:
    """The folder holding ``models/``, ``fonts/``, ``icons/`` and ``samples/``."""
    override = os.environ.get("MEDSCREEN_ASSETS")
    if override:
        return Path(override)
    frozen_root = getattr(sys, "_MEIPASS", None)
    if frozen_root:
        return Path(frozen_root) / "assets"
    return Path(__file__).resolve().parents[2] / "assets"


def user_data_dir() -> Path:
    """The per-user folder for the results store, user models and logs (not created here)."""
    override = os.environ.get("MEDSCREEN_HOME")
    if override:
        return Path(override)
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
        return base / "MedScreen"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "MedScreen"
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "medscreen"


def default_db_path() -> Path:
    return user_data_dir() / "results.sqlite3"


def user_models_dir() -> Path:
    return user_data_dir() / "models"


def bundled_models_dir() -> Path:
    return assets_dir() / "models"


#: Control characters (C0, DEL, C1), each shown as a space by :func:`one_line`.
_CONTROLS = {code: " " for code in (*range(0x20), *range(0x7F, 0xA0))}


def one_line(text: str) -> str:
    """``text`` on one line: control characters (a line break, a tab in a file name a
    script made) as spaces, as the PDF shows them. For a table cell and a progress bar,
    which a line break cut ("new…") or broke across two lines; never for a path that is
    written to a file to be read back (CSV, JSON, the store keep the exact name).

    A printable text has no control character (they are all non-printable) and is returned
    as it is: ranking 20,000 names for a sort by file name spent 19 ms in ``translate``."""
    return text if text.isprintable() else text.translate(_CONTROLS)


def display_path(path: str | os.PathLike[str]) -> str:
    """A file name as people should see it: undecodable bytes become U+FFFD (�).

    POSIX file names are bytes; Python keeps a name that is not valid UTF-8 (``caf\\xe9.png``
    from an old USB stick) with surrogate escapes, which a CSV, JSON or PDF encoder and Qt
    refuse. The store keeps the exact name (see ``store``); reports, logs and the window
    show this readable form, and valid names are returned unchanged.
    """
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", errors="replace")
    return text

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

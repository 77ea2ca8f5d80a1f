"""The window's persistent settings, in one small typed wrapper over QSettings.

The settings file is an INI file in the user's MedScreen data folder (``MEDSCREEN_HOME`` when
set), next to the results store and the log: one folder holds everything the app keeps, a
support person finds it in one place, and tests (which isolate ``MEDSCREEN_HOME``) never touch
a real user's settings.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings

from desktop.engine.paths import user_data_dir

MAX_RECENT = 8


def settings_path() -> Path:
    return user_data_dir() / "settings.ini"


class AppSettings:
    """Typed access to the few values MedScreen remembers between runs."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or settings_path()
        self._q = QSettings(str(self.path), QSettings.Format.IniFormat)

    def sync(self) -> None:
        self._q.sync()

    # -- report identity -------------------------------------------------------------------
    def _str(self, key: str, default: str = "") -> str:
        value = self._q.value(key, default)
        return str(value) if value is not None else default

    def _bool(self, key: str, default: bool = False) -> bool:
        value = self._q.value(key, default)
        if isinstance(value, str):
            return value.lower() in ("1", "true", "yes")
        return bool(value)

    @property
    def clinic_name(self) -> str:
        return self._str("report/clinic_name")

    @clinic_name.setter
    def clinic_name(self, value: str) -> None:
        self._q.setValue("report/clinic_name", value)

    @property
    def operator(self) -> str:
        return self._str("report/operator")

    @operator.setter
    def operator(self, value: str) -> None:
        self._q.setValue("report/operator", value)

    @property
    def include_identifiers(self) -> bool:
        """Patient identifiers in reports: off unless the user turns it on (privacy)."""
        return self._bool("report/include_identifiers", False)

    @include_identifiers.setter
    def include_identifiers(self, value: bool) -> None:
        self._q.setValue("report/include_identifiers", bool(value))

    # -- screening -------------------------------------------------------------------------
    @property
    def device(self) -> str:
        return self._str("screening/device", "auto")

    @device.setter
    def device(self, value: str) -> None:
        self._q.setValue("screening/device", value)

    @property
    def operating_point(self) -> str:
        """``""`` (each model's default), a point name, or a custom threshold as text."""
        return self._str("screening/operating_point", "")

    @operating_point.setter
    def operating_point(self, value: str) -> None:
        self._q.setValue("screening/operating_point", value)

    # -- the administrator's PIN lock on the thresholds -------------------------------------
    @property
    def has_pin(self) -> bool:
        return bool(self._str("admin/pin_hash"))

    def set_pin(self, pin: str) -> None:
        """Lock the thresholds with ``pin`` (an empty PIN removes the lock). Only a salted,
        slow hash is kept: the settings file is readable by the user."""
        if not pin:
            self._q.remove("admin/pin_hash")
            self._q.remove("admin/pin_salt")
            return
        salt = secrets.token_hex(16)
        self._q.setValue("admin/pin_salt", salt)
        self._q.setValue("admin/pin_hash", _pin_hash(pin, salt))

    def check_pin(self, pin: str) -> bool:
        stored = self._str("admin/pin_hash")
        if not stored:
            return True
        return hmac.compare_digest(stored, _pin_hash(pin, self._str("admin/pin_salt")))

    @property
    def retention_days(self) -> int:
        """Batches older than this many days are deleted at start-up (0: keep them all)."""
        try:
            return max(0, int(self._str("history/retention_days", "0") or 0))
        except ValueError:
            return 0

    @retention_days.setter
    def retention_days(self, value: int) -> None:
        self._q.setValue("history/retention_days", int(value))

    # -- folders and window ----------------------------------------------------------------
    def recent_folders(self) -> list[str]:
        value = self._q.value("files/recent", [])
        if isinstance(value, str):
            value = [value]
        return [str(v) for v in (value or []) if v][:MAX_RECENT]

    def add_recent(self, folder: str) -> None:
        items = [folder] + [f for f in self.recent_folders() if f != folder]
        self._q.setValue("files/recent", items[:MAX_RECENT])

    @property
    def last_folder(self) -> str:
        return self._str("files/last_folder")

    @last_folder.setter
    def last_folder(self, value: str) -> None:
        self._q.setValue("files/last_folder", value)

    def geometry(self) -> QByteArray | None:
        value = self._q.value("window/geometry")
        return value if isinstance(value, QByteArray) else None

    def set_geometry(self, value: QByteArray) -> None:
        self._q.setValue("window/geometry", value)

    def table_header(self) -> QByteArray | None:
        """The results table's column widths, order and sort (QHeaderView.saveState)."""
        value = self._q.value("window/table_header")
        return value if isinstance(value, QByteArray) else None

    def set_table_header(self, value: QByteArray) -> None:
        self._q.setValue("window/table_header", value)

    def window_state(self) -> QByteArray | None:
        value = self._q.value("window/state")
        return value if isinstance(value, QByteArray) else None

    def set_window_state(self, value: QByteArray) -> None:
        self._q.setValue("window/state", value)


def _pin_hash(pin: str, salt: str) -> str:
    return hashlib.pbkdf2_hmac("sha256", pin.encode("utf-8"), salt.encode("ascii"), 200_000).hex()

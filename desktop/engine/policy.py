"""A screening programme's policy file: thresholds set, and locked, by an administrator.

A programme that validated its thresholds (per model: screening, balanced, a custom number or
its own site calibration) deploys one small INI file, read-only, to every clinic PC::

    [thresholds]
    operating_point = tb=site:kisumu-2026,pneumonia=balanced
    locked = yes

MedScreen only reads it. With ``locked = yes`` the window shows the thresholds without letting
anyone change them, and ``medscreen classify`` refuses an ``--operating-point`` that differs
(and uses the policy's when none is given), so the window, the command line and the reports
all apply what the programme decided. Where it is looked for: ``MEDSCREEN_POLICY`` (a path),
else ``policy.ini`` in the MedScreen data folder, else the system-wide file
(``/etc/medscreen/policy.ini``; ``%ProgramData%\\MedScreen\\policy.ini`` on Windows).
A file that exists but cannot be read or parsed is an error that names it: a programme's lock
must never silently fall away. So is a file ``MEDSCREEN_POLICY`` names that is not there (an
unmounted share, a typo): the administrator said where the policy is, so its absence is a
failure to read it, not "no policy"; and so is a usual place whose presence cannot be checked
(permission denied on its folder). Only a policy.ini absent from a usual place means none.
The window then keeps the thresholds locked and says why; the command line screens nothing.
"""

from __future__ import annotations

import configparser
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from desktop.engine.errors import MedScreenError
from desktop.engine.paths import user_data_dir

log = logging.getLogger(__name__)

POLICY_ENV = "MEDSCREEN_POLICY"


class PolicyError(MedScreenError):
    """The policy file exists but cannot be used (unreadable, malformed)."""


@dataclass(frozen=True)
class Policy:
    """What the policy file says (an empty policy when there is none)."""

    operating_point: str | None = None  # ThresholdChoice.parse text
    locked: bool = False
    source: Path | None = None

    def describe(self) -> str:
        if self.source is None:
            return "no policy file"
        state = "locked" if self.locked else "default, may be changed"
        return f"thresholds {state} by {self.source}"


def policy_paths() -> list[Path]:
    """Where a policy file is looked for, first match wins."""
    env = os.environ.get(POLICY_ENV)
    if env:
        return [Path(env)]
    paths = [user_data_dir() / "policy.ini"]
    if sys.platform == "win32":
        base = os.environ.get("PROGRAMDATA", r"C:\ProgramData")
        paths.append(Path(base) / "MedScreen" / "policy.ini")
    else:
        paths.append(Path("/etc/medscreen/policy.ini"))
    return paths


def load_policy(paths: list[Path] | None = None) -> Policy:
    """The first policy file found (an empty :class:`Policy` when there is none).

    Raises :class:`PolicyError` when a file is there but unusable, when the file
    ``MEDSCREEN_POLICY`` names is missing, or when a place cannot be checked (see the module
    docstring: the lock must fail closed)."""
    named = paths is None and bool(os.environ.get(POLICY_ENV))
    for path in paths if paths is not None else policy_paths():
        if not _present(path, named=named):
            continue
        parser = configparser.ConfigParser(interpolation=None)
        try:
            with path.open(encoding="utf-8") as handle:
                parser.read_file(handle)
        except (OSError, UnicodeDecodeError, configparser.Error) as exc:
            raise PolicyError(f"the policy file {path} cannot be read: {exc}") from exc
        section = parser["thresholds"] if parser.has_section("thresholds") else {}
        point = (section.get("operating_point") or "").strip() or None
        raw_lock = str(section.get("locked", "no")).strip().lower()
        if raw_lock not in ("yes", "no", "true", "false", "1", "0", "on", "off"):
            raise PolicyError(f"the policy file {path}: locked must be yes or no, not {raw_lock!r}")
        locked = raw_lock in ("yes", "true", "1", "on")
        if locked and point is None:
            raise PolicyError(f"the policy file {path} locks the thresholds but sets none")
        log.info("policy file %s: operating point %s, locked=%s", path, point, locked)
        return Policy(operating_point=point, locked=locked, source=path)
    return Policy()


def _present(path: Path, *, named: bool) -> bool:
    """Whether a policy file is at ``path``; ``named``: ``MEDSCREEN_POLICY`` gave it, so its
    absence is an error too. ``Path.exists`` is not used: it raises some errors (a name too
    long) and hides none of the ones that matter here either way."""
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError) as exc:
        if not named:
            return False
        raise PolicyError(
            f"the policy file {path} cannot be read: it does not exist ({exc.strerror}), "
            f"though {POLICY_ENV} names it (a share not mounted, a moved file?)"
        ) from exc
    except OSError as exc:
        raise PolicyError(f"the policy file {path} cannot be read: {exc.strerror or exc}") from exc
    return True

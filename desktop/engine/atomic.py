"""Files written whole or not at all: reports, site operating points, calibration records.

A clinic PC can lose power or be switched off mid-write. Every file MedScreen writes for the
user goes through :func:`atomic_open`: the content goes to a temporary file beside the target,
is flushed and fsynced, then moved over the target in one step (``os.replace`` within one
folder is atomic), and the folder itself is fsynced so the move survives a power cut. The file
is then the old one or the complete new one, never half of one. One definition, so the
reports and the site points cannot differ in how careful they are.

A report that names patients (written with identifiers) is created owner-only (``private``:
mode 0600, as the results store holding the same names); any other file gets the mode any file
the user saves gets (the umask), so a shared report folder works as the clinic set it up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from desktop.engine.processes import pid_alive

logger = logging.getLogger(__name__)

#: The mode of a file holding patient identifiers: read and written by its owner only.
PRIVATE_MODE = 0o600

#: Age after which a temporary file whose writer cannot be identified is removed.
STALE_PART_S = 24 * 3600


def _remove_stale_parts(path: Path) -> None:
    """Delete temporary files a killed writer left beside ``path`` (see :func:`atomic_open`).

    A ``.part`` file is stale when the process that made it is gone (its pid is in the name)
    or, for one from another machine or an older version, when it is a day old: a live
    writer on this machine is never disturbed.
    """
    prefix = f".{path.name}."
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(".part")):
            continue
        middle = name[len(prefix) : -len(".part")].split(".")
        pid = int(middle[0]) if len(middle) == 2 and middle[0].isdigit() else None
        try:
            age = time.time() - entry.stat(follow_symlinks=False).st_mtime
            if (pid is not None and pid != os.getpid() and not pid_alive(pid)) or (
                age > STALE_PART_S
            ):
                os.unlink(entry.path)
                logger.info("removed a temporary file left by an interrupted write: %s", name)
        except OSError:
            continue


@contextlib.contextmanager
def atomic_open(
    path: Path, mode: str = "w", *, private: bool = False, **kwargs: Any
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success move it over ``path`` in one step.

    A clinic PC can lose power mid-write: ``os.replace`` within one folder is atomic, so the
    file is either the old one, the complete new one, or absent — never half written. On
    any error the temporary file is removed and ``path`` is left untouched; one left by a
    writer that was killed (its pid is in the name) is removed by the next write. The temporary
    file is created with the user's umask (not ``mkstemp``'s owner-only mode), so the report
    gets the permissions any other file the user saves there would get; with ``private`` (a
    report holding patient identifiers) it is owner-only, 0600, whatever an older file of that
    name had (the move replaces it). Windows keeps its folder's ACLs either way.
    """
    path = Path(path)
    _remove_stale_parts(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.part")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(tmp, flags, PRIVATE_MODE if private else 0o666)
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _sync_folder(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_atomic(
    path: Path, produce: Callable[[IO[bytes]], None], *, private: bool = False
) -> Path:
    """Let ``produce`` write binary content, atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "wb", private=private) as handle:
        produce(handle)
    return Path(path)


def _sync_folder(folder: Path) -> None:
    """fsync ``folder`` so a rename into it is on disk (POSIX). Windows has no folder fsync;
    there the rename is as durable as NTFS's metadata journal makes it."""
    if os.name == "nt":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

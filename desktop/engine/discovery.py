"""Turns the files and folders a user dropped into the ordered list of files to screen.

Folders are walked recursively, following symbolic links but never twice into the same
folder (symlink loops are common on shared clinic drives). Hidden files and folders (``.``
names, and the Windows/macOS litter ``Thumbs.db``, ``desktop.ini``, ``__MACOSX``) are skipped,
as are files that are not scans — but a file the user named explicitly is always kept, so
that a wrong choice gets a clear reason instead of vanishing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from desktop.engine.candidates import is_candidate  # light: no decoders

log = logging.getLogger(__name__)

IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini", "__macosx", "$recycle.bin"})


@dataclass
class Discovered:
    files: list[Path] = field(default_factory=list)
    skipped_non_scans: int = 0
    skipped_hidden: int = 0
    missing: list[Path] = field(default_factory=list)
    unreadable_folders: list[str] = field(default_factory=list)
    #: The folders in ``unreadable_folders``: a batch makes each one a row of its own (its
    #: scans were not screened), or they would be missing from every report without a word.
    unreadable_paths: list[Path] = field(default_factory=list)
    loops: int = 0
    #: Folders given (or dropped) that are a folder already walked by another path: a
    #: symbolic link to it, the same share by another mount (screened once, not twice).
    repeated_folders: int = 0


def _hidden(name: str) -> bool:
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def discover(inputs: Iterable[str | Path]) -> Discovered:
    """Expand inputs into files, in a stable order (inputs in order, folders sorted)."""
    items = list(inputs)
    found = Discovered()
    _expand(items, [found] * len(items))
    return found


def discover_each(inputs: Iterable[str | Path]) -> list[Discovered]:
    """What :func:`discover` finds, one :class:`Discovered` per input, by its one rule: a
    folder an earlier input walked is not walked again (that input's ``repeated_folders``
    counts it). Calibration reads each label folder so: a link beside the label folders to
    one of them was walked again as a label of its own."""
    items = list(inputs)
    each = [Discovered() for _ in items]
    _expand(items, each)
    return each


def _expand(inputs: list[str | Path], targets: list[Discovered]) -> None:
    """Walk ``inputs[i]`` into ``targets[i]``, files and folders counted once across all."""
    seen_files: set[str] = set()
    # the folders earlier inputs walked: 'scans' and a link to it were walked twice, each
    # of their files a row twice (30 rows for a folder of 15)
    earlier: set[tuple[int, int]] = set()
    for item, found in zip(inputs, targets, strict=True):
        _expand_one(item, found, seen_files, earlier)


def _expand_one(
    item: str | Path, found: Discovered, seen_files: set[str], earlier: set[tuple[int, int]]
) -> None:
    """One input into ``found``: a folder walked, a file named kept, a missing path said."""

    def add(path: Path) -> None:
        key = os.path.normcase(os.path.abspath(path))
        if key not in seen_files:
            seen_files.add(key)
            found.files.append(path)

    path = Path(item).expanduser().absolute()
    if path.is_dir():
        _walk(path, found, add, earlier)
    elif path.exists() or path.is_symlink():
        add(path)  # named explicitly: always screened, or given a reason
    else:
        found.missing.append(path)
        add(path)  # becomes an error row: "no such file or folder"


def _walk(
    root: Path, found: Discovered, add: Callable[[Path], None], earlier: set[tuple[int, int]]
) -> None:
    """Add the scans under ``root``; a folder met twice in this walk is a loop, one an
    earlier input walked (``earlier``, which this walk's folders join) is not walked again."""
    visited: set[tuple[int, int]] = set()

    def report(error: OSError) -> None:
        log.warning("cannot list the folder %s: %s", error.filename, error.strerror)
        found.unreadable_folders.append(f"{error.filename}: {error.strerror}")
        if error.filename is not None:
            found.unreadable_paths.append(Path(os.fsdecode(error.filename)))

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=report):
        try:
            stat = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        ident = (stat.st_dev, stat.st_ino)
        if ident in visited:
            found.loops += 1
            dirnames[:] = []
            continue
        if ident in earlier:  # its scans are in already
            found.repeated_folders += dirpath == str(root)  # an input, by another path
            dirnames[:] = []
            continue
        visited.add(ident)
        kept = []
        for name in sorted(dirnames):
            if _hidden(name):
                found.skipped_hidden += 1
            else:
                kept.append(name)
        dirnames[:] = kept
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if _hidden(name):
                found.skipped_hidden += 1
            elif is_candidate(path):
                add(path)
            else:
                found.skipped_non_scans += 1
    earlier |= visited

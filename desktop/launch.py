"""The ``medscreen`` command's entry point: the window without the command line's imports.

Why a module of its own: :mod:`desktop.cli` imports the batch runner, the registry and the
store at module level, and with them ONNX Runtime, pydicom and requests (~0.4 s and ~23 MB
of the window's memory, measured import by import). The window never needs them: its batches
run in a child process (:mod:`desktop.engine.batch_process`) started with ``spawn``, and that
child re-imports the parent's main module, so it paid desktop.cli's imports before its own.
This module imports only the standard library until it knows what was asked: the window
(:mod:`desktop.gui.app`) for ``medscreen``, ``medscreen gui [PATH...]`` and ``medscreen
PATH...``; :func:`desktop.cli.main` for everything else, so every command, option, message
and exit status stays the command line's own. Anything this module is unsure of (an option
before ``gui``, a word that may be a mistyped command) goes to desktop.cli, which decides
exactly as before.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

#: The command line's sub-commands (desktop.cli.build_parser; a test keeps the two equal).
#: A first word outside them is taken as a scan or folder to open in the window.
COMMANDS = frozenset(
    {"calibrate", "classify", "export", "gui", "history", "models", "resume", "site"}
)

#: Options of the bare command that change nothing for the window (``medscreen -v``).
_WINDOW_OPTIONS = frozenset({"-v", "--verbose"})


def window_files(args: Sequence[str]) -> list[Path] | None:
    """The scans and folders to open the window with, or ``None`` when ``args`` are for
    desktop.cli (a command, an option, ``--help``, a mistyped command, an option of ``gui``).

    The same answer :func:`desktop.cli.main` gives, case by case: no arguments and ``-v``
    alone open an empty window; ``gui PATH...`` opens it with the paths as given; ``PATH...``
    (a file manager's "Open with", ``Exec=medscreen %F``) opens it with the paths that
    exist, made absolute, after naming on stderr those that do not — unless the only word
    names nothing, which desktop.cli reports as an invalid command.
    """
    words = list(args)
    while words and words[0] in _WINDOW_OPTIONS:
        words.pop(0)
    if not words:
        return []
    if words[0] == "gui":
        rest = words[1:]
        return None if any(w.startswith("-") for w in rest) else [Path(w) for w in rest]
    if len(words) != len(args) or words[0].startswith("-") or words[0] in COMMANDS:
        return None  # options before a path, or a command: desktop.cli parses it
    paths = [Path(w) for w in words]
    missing = [str(p) for p in paths if not p.exists()]
    if missing and len(missing) == len(paths) and len(paths) == 1:
        return None  # a mistyped command: argparse says "invalid choice"
    if missing:
        text = f"medscreen: no such file or folder: {', '.join(missing)}"
        print(text, file=sys.stderr)  # noqa: T201 - the command line's own message
    return [p.absolute() for p in paths if p.exists()]


def open_window(files: Sequence[Path] = ()) -> int:
    """Open the window with ``files`` queued; 2 with a clear message when Qt is missing."""
    try:
        from desktop.gui.app import main as gui_main  # Qt is imported only here
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in ("PySide6", "shiboken6", "desktop"):
            print(  # noqa: T201 - no window, no log the user would look at
                f"medscreen: the desktop window cannot start: {exc.name} is missing from "
                "this installation (reinstall MedScreen); the command line still works: "
                "'medscreen classify PATH... --out DIR'",
                file=sys.stderr,
            )
            return 2
        raise
    return int(gui_main(files=list(files)))


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``medscreen`` with ``argv`` (default: the process's arguments); its exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    files = window_files(args)
    if files is not None:
        return open_window(files)
    from desktop.cli import main as cli_main

    return int(cli_main(args))

"""Python child processes started without :mod:`multiprocessing`: the batch process and the
DICOM decoder workers.

Why not multiprocessing's ``spawn``: on POSIX every ``spawn`` start first makes sure
multiprocessing's *resource tracker* runs, a third Python process that then lives as long
as the app (8 MB PSS, 13 MB RSS beside the window; README, Performance, issue 10), though
neither child uses what it tracks (named semaphores, shared memory). ``spawn`` also imports
the parent's main module again in every child (a benchmark script, or the frozen app's
entry) before the child's own work. A child here is a plain :mod:`subprocess` of the same
interpreter — in the frozen app, the app's own executable with :data:`CHILD_FLAG`, which its
entry script hands to :func:`main` right after ``multiprocessing.freeze_support()`` — and
talks to its parent over its **stdin and stdout**:

* Why the standard streams and not extra inherited descriptors: they are the one pair of
  handles every platform passes to a child with nothing more (``pass_fds`` is POSIX only; on
  Windows an extra handle needs STARTUPINFO's handle list, and a named pipe with
  ``Listener``/``Client`` needs a name, an authkey and a connect step that can hang). With
  ``close_fds`` (the default) the child inherits nothing else, on Windows too, so a decoder
  worker started by the batch process never holds the batch process's pipes, and the
  death of either end is seen at once by the other.
* The child moves both pipes to new descriptors before anything else runs and points
  descriptor 0 at the null device and 1 at stderr (:func:`_take_stdio`): a stray ``print``
  or a native library writing to stdout cannot corrupt the stream.
* A message is a pickle after its length (8 bytes, little-endian); :meth:`Sender.send_bytes`
  sends a buffer as it is (a decoded image, no pickling). Only the two processes hold the
  pipe, as with multiprocessing's own pipes, and the child runs only what
  :data:`ENTRIES` names.
* The child's death closes its stdout: the parent's :meth:`Receiver.recv` raises
  ``EOFError``. The parent's death (or its :meth:`Sender.close`) closes the child's stdin:
  the child's reads end with ``EOFError``.
* The child gets the parent's ``sys.path`` (as ``spawn`` gives it), through the environment
  (:data:`PATH_VARIABLE`), and the interpreter's flags (``-X``, ``-W``, ``-O``).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import pickle
import subprocess
import sys
from dataclasses import dataclass
from typing import IO, Any

#: The argument that makes the frozen app's executable a child (installer/medscreen_entry.py).
CHILD_FLAG = "--medscreen-child"

#: What a child may run: its name on the command line -> (module, function). The function
#: takes the child's :class:`Receiver` (from the parent) and :class:`Sender` (to it) and
#: returns the exit status.
ENTRIES: dict[str, tuple[str, str]] = {
    "batch": ("desktop.engine.batch_process", "child_main"),
    "decoder": ("desktop.engine.sandbox", "child_main"),
}

#: The environment variable that carries the parent's ``sys.path`` (JSON) to a child.
PATH_VARIABLE = "MEDSCREEN_CHILD_SYS_PATH"

#: What ``python -c`` runs in a child of a source checkout or an installed package.
_BOOTSTRAP = (
    "import json, os, sys; "
    f"sys.path[:] = json.loads(os.environ.pop({PATH_VARIABLE!r}, 'null')) or sys.path; "
    "from desktop.engine.child_process import main; "
    "sys.exit(main(sys.argv[1:]))"
)

_HEADER = 8


def command(kind: str) -> list[str]:
    """The command line that starts a child running ``ENTRIES[kind]``."""
    if kind not in ENTRIES:
        raise ValueError(f"no child process called {kind!r}")
    if getattr(sys, "frozen", False):  # the app's own executable (PyInstaller)
        return [sys.executable, CHILD_FLAG, kind]
    from multiprocessing.spawn import get_executable  # no tracker: only its executable rule

    flags = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
    return [os.fsdecode(get_executable()), *flags, "-c", _BOOTSTRAP, kind]


class Sender:
    """The writing end of a pipe: length-prefixed pickles, or raw buffers."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        _binary(stream)

    def send(self, obj: Any) -> None:
        """Send ``obj`` pickled (raises ``OSError``, e.g. ``BrokenPipeError``, when the
        reader has gone)."""
        self.send_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))

    def send_bytes(self, data: bytes | bytearray | memoryview) -> None:
        """Send a buffer as it is, after its length."""
        view = memoryview(data).cast("B")
        self._write(len(view).to_bytes(_HEADER, "little"))
        self._write(view)

    def _write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            written = self._stream.write(view)
            if written is None:  # pragma: no cover - a non-blocking pipe: never made here
                raise BlockingIOError("the pipe is full")
            view = view[written:]

    def close(self) -> None:
        self._stream.close()


class Receiver:
    """The reading end of a pipe: what a :class:`Sender` sent, in order."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        _binary(stream)

    def recv(self) -> Any:
        """The next object; ``EOFError`` once the writer has closed or died."""
        return pickle.loads(self.recv_bytes())

    def recv_bytes(self) -> bytearray:
        """The next buffer as it was sent; ``EOFError`` once the writer has closed or died."""
        size = int.from_bytes(self._read(_HEADER), "little")
        return self._read(size)

    def _read(self, size: int) -> bytearray:
        buffer = bytearray(size)
        view = memoryview(buffer)
        while view:
            got = self._stream.readinto(view)  # type: ignore[attr-defined]
            if not got:
                raise EOFError("the other process closed the pipe")
            view = view[got:]
        return buffer

    def close(self) -> None:
        self._stream.close()


@dataclass
class Child:
    """A started child: its process, the pipe to its stdin and the pipe from its stdout."""

    process: subprocess.Popen[bytes]
    sender: Sender
    receiver: Receiver

    def close(self) -> None:
        """Close both pipes (the child reads EOF); the process itself is the caller's."""
        for end in (self.sender, self.receiver):
            with contextlib.suppress(OSError):
                end.close()


def start(kind: str) -> Child:
    """Start a child running ``ENTRIES[kind]``; its stderr is this process's (the null
    device when this process has none: a windowed Windows app)."""
    env = dict(os.environ)
    cmd = command(kind)
    if not getattr(sys, "frozen", False):
        env[PATH_VARIABLE] = json.dumps(sys.path)
        _past_venv_launcher(cmd, env)
    process = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=None if _has_stderr() else subprocess.DEVNULL,
        env=env,
        bufsize=0,
    )
    assert process.stdin is not None and process.stdout is not None
    return Child(process, Sender(process.stdin), Receiver(process.stdout))


def wait(process: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    """The child's exit status once it has ended within ``timeout_s``, else None (as
    ``multiprocessing``'s join then exitcode: negative is the signal that ended it)."""
    try:
        return process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        return None


def alive(process: subprocess.Popen[bytes]) -> bool:
    return process.poll() is None


def _past_venv_launcher(cmd: list[str], env: dict[str, str]) -> None:
    """In a Windows virtual environment ``python.exe`` is a launcher that starts the real
    interpreter as *its* child: the process started here (its pid, its kill) would not be
    the one that runs. Start the base interpreter with the venv named, as multiprocessing
    does (bpo-35797)."""
    base = getattr(sys, "_base_executable", sys.executable)
    if sys.platform != "win32" or not base or _same(base, sys.executable):
        return
    if _same(cmd[0], sys.executable):
        cmd[0] = base
        env["__PYVENV_LAUNCHER__"] = sys.executable


def _same(a: str, b: str) -> bool:
    return os.path.normcase(os.path.abspath(a)) == os.path.normcase(os.path.abspath(b))


def _has_stderr() -> bool:
    """Whether this process has a standard error a child can inherit (a windowed Windows
    exe has none; a child given none there would get a pipe nobody reads, and block)."""
    stream = sys.__stderr__
    if stream is None:
        return False
    try:
        stream.fileno()
    except (OSError, ValueError, AttributeError):
        return False
    return True


def _binary(stream: IO[bytes]) -> None:
    """No newline translation on the pipe (Windows descriptors may open in text mode)."""
    if os.name == "nt":  # pragma: no cover - Windows only
        import msvcrt

        msvcrt.setmode(stream.fileno(), os.O_BINARY)


# -- in the child ----------------------------------------------------------------------------
def _take_stdio() -> tuple[Receiver, Sender]:
    """The pipes from and to the parent, on new descriptors (not inherited by this child's
    own children); descriptor 0 becomes the null device and 1 a copy of stderr, so nothing
    else writes into the stream."""
    reading, writing = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    try:
        os.dup2(2, 1)
    except OSError:  # no stderr at all
        os.dup2(null, 1)
    os.close(null)
    receiver = Receiver(open(reading, "rb", buffering=0))  # noqa: SIM115 - the process's life
    sender = Sender(open(writing, "wb", buffering=0))  # noqa: SIM115 - the process's life
    return receiver, sender


def main(argv: list[str]) -> int:
    """Run the child named by ``argv[0]`` (:data:`ENTRIES`) on the parent's pipes."""
    kind = argv[0] if argv else ""
    if kind not in ENTRIES:
        print(f"medscreen: no child process called {kind!r}", file=sys.stderr)  # noqa: T201
        return 2
    receiver, sender = _take_stdio()
    module, name = ENTRIES[kind]
    entry = getattr(importlib.import_module(module), name)
    return int(entry(receiver, sender) or 0)


__all__ = ["CHILD_FLAG", "ENTRIES", "Child", "Receiver", "Sender", "command", "main", "start"]

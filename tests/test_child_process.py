"""The pipes and the command line of the app's child processes (desktop/engine/child_process.py):
what is sent arrives whole and in order, a closed or dead writer is an EOFError, only named
children run, and a Windows venv starts its base interpreter as multiprocessing does."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from desktop.engine import child_process
from desktop.engine.child_process import CHILD_FLAG, Receiver, Sender
from tests.fixtures import CR_CHEST


def _pipe() -> tuple[Receiver, Sender]:
    read, write = os.pipe()
    return Receiver(open(read, "rb", buffering=0)), Sender(open(write, "wb", buffering=0))


def test_objects_and_buffers_larger_than_the_pipe_arrive_whole_and_in_order():
    """A real scan's pixels (the fo-dicom CR chest: many times a pipe's 64 kB buffer) as raw
    bytes between two pickles: the reader gets each in order and exactly."""
    from desktop.engine.loading import load_scan

    pixels = np.ascontiguousarray(load_scan(CR_CHEST).pixels)
    assert pixels.nbytes > 4 * 65536
    receiver, sender = _pipe()

    def write() -> None:
        sender.send({"shape": pixels.shape})
        sender.send_bytes(memoryview(pixels).cast("B"))
        sender.send(("done", 1))
        sender.close()

    writer = threading.Thread(target=write)
    writer.start()
    header = receiver.recv()
    got = np.frombuffer(receiver.recv_bytes(), dtype=pixels.dtype).reshape(header["shape"])
    assert receiver.recv() == ("done", 1)
    with pytest.raises(EOFError):
        receiver.recv()  # the writer closed: the end, not a hang
    writer.join()
    receiver.close()
    assert np.array_equal(got, pixels)


def test_a_message_cut_off_by_the_writers_death_is_an_eof_not_a_short_read():
    receiver, sender = _pipe()
    sender._write((1000).to_bytes(8, "little") + b"only part")  # a child killed mid-send
    sender.close()
    with pytest.raises(EOFError):
        receiver.recv_bytes()
    receiver.close()


def test_a_child_runs_only_what_is_named_and_gets_this_path():
    with pytest.raises(ValueError, match="no child process called 'shell'"):
        child_process.command("shell")
    cmd = child_process.command("decoder")
    assert cmd[-1] == "decoder" and cmd[-3] == "-c" and "child_process" in cmd[-2]
    wrong = subprocess.run(
        [*cmd[:-1], "shell"], capture_output=True, text=True, timeout=60, cwd=os.getcwd()
    )
    assert wrong.returncode == 2 and "no child process called 'shell'" in wrong.stderr
    assert CHILD_FLAG == "--medscreen-child"


def test_a_windows_venv_starts_its_base_interpreter_as_multiprocessing_does(
    monkeypatch: pytest.MonkeyPatch,
):
    """In a Windows venv python.exe is a launcher whose child runs the code: the pid and
    the kill would be the launcher's. Elsewhere, or outside a venv, nothing changes."""
    venv, base = os.path.abspath("venv/python.exe"), os.path.abspath("base/python.exe")
    monkeypatch.setattr(sys, "executable", venv)
    monkeypatch.setattr(sys, "_base_executable", base, raising=False)
    for platform, expected in (("win32", base), ("linux", venv), ("darwin", venv)):
        monkeypatch.setattr(sys, "platform", platform)
        cmd, env = [venv, "-c", "x", "batch"], {}
        child_process._past_venv_launcher(cmd, env)
        assert cmd == [expected, "-c", "x", "batch"]
        assert env == ({"__PYVENV_LAUNCHER__": venv} if platform == "win32" else {})
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(sys, "_base_executable", venv)  # not a venv
    cmd, env = [venv, "-c", "x", "batch"], {}
    child_process._past_venv_launcher(cmd, env)
    assert cmd[0] == venv and env == {}

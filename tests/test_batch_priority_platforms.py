"""The batch process's priority calls on Windows and macOS, run on Linux with the platform
layer replaced (``desktop.engine.batch_process._lower_priority``).

Why: the Linux path is tested on a real child (tests/test_batch_process.py reads each
thread's niceness from /proc); the Windows and macOS paths cannot run here. These tests pin
what each path asks of its OS, checked against the documented APIs:

* Windows: ``SetPriorityClass(GetCurrentProcess(), BELOW_NORMAL_PRIORITY_CLASS)`` from
  kernel32 (processthreadsapi.h; BELOW_NORMAL_PRIORITY_CLASS = 0x00004000). A priority class
  belongs to the process, so every thread, present and future, runs below normal.
* macOS/BSD: ``os.nice(n)`` adds ``n`` to the process's niceness; there setpriority(2) with
  PRIO_PROCESS applies to the whole process (on Linux it applies to one thread only, which is
  why Linux takes the per-thread path).

What they cannot show: that the real calls succeed on those systems, and how much the
window gains there. Both are untested until run on a Windows PC and a Mac.
"""

from __future__ import annotations

import ctypes
import logging
from ctypes import wintypes

import pytest

from desktop.engine import batch_process
from desktop.engine.batch_process import BACKGROUND_NICENESS, _lower_priority

BELOW_NORMAL_PRIORITY_CLASS = 0x00004000  # processthreadsapi.h
PSEUDO_HANDLE = -1  # what GetCurrentProcess() returns: (HANDLE)-1, "the current process"


class FakeFunction:
    """A kernel32 export as ctypes gives it: callable, with settable argtypes/restype."""

    def __init__(self, name: str, calls: list[tuple[object, ...]], result: int) -> None:
        self.name, self.calls, self.result = name, calls, result
        self.argtypes: list[object] | None = None
        self.restype: object = None

    def __call__(self, *args: object) -> int:
        self.calls.append((self.name, *args))
        return self.result


class FakeKernel32:
    """kernel32 as the priority code uses it; records the calls."""

    def __init__(self, set_result: int = 1) -> None:
        self.calls: list[tuple[object, ...]] = []
        self.GetCurrentProcess = FakeFunction("GetCurrentProcess", self.calls, PSEUDO_HANDLE)
        # BOOL: nonzero on success
        self.SetPriorityClass = FakeFunction("SetPriorityClass", self.calls, set_result)


@pytest.fixture
def windows(monkeypatch: pytest.MonkeyPatch) -> tuple[FakeKernel32, list[str]]:
    """The module sees Windows; ``ctypes.WinDLL`` loads the fake kernel32."""
    kernel32 = FakeKernel32()
    loaded: list[str] = []

    def win_dll(name: str, *args: object, **kwargs: object) -> FakeKernel32:
        loaded.append(name)
        assert kwargs == {"use_last_error": True}
        return kernel32

    monkeypatch.setattr(ctypes, "WinDLL", win_dll, raising=False)
    monkeypatch.setattr(batch_process.sys, "platform", "win32")
    monkeypatch.setattr(batch_process.os, "name", "nt")
    return kernel32, loaded


def test_windows_puts_the_process_in_the_below_normal_class(windows) -> None:
    kernel32, loaded = windows
    _lower_priority(BACKGROUND_NICENESS)
    assert loaded == ["kernel32"]
    assert kernel32.calls == [
        ("GetCurrentProcess",),
        ("SetPriorityClass", PSEUDO_HANDLE, BELOW_NORMAL_PRIORITY_CLASS),
    ]
    # declared as in processthreadsapi.h: a pointer-wide HANDLE in, a BOOL out
    assert kernel32.GetCurrentProcess.argtypes == []
    assert kernel32.GetCurrentProcess.restype is wintypes.HANDLE
    assert kernel32.SetPriorityClass.argtypes == [wintypes.HANDLE, wintypes.DWORD]
    assert kernel32.SetPriorityClass.restype is wintypes.BOOL


def test_windows_refusal_is_logged_with_its_error(
    monkeypatch: pytest.MonkeyPatch, windows, caplog: pytest.LogCaptureFixture
) -> None:
    kernel32, _ = windows
    kernel32.SetPriorityClass.result = 0  # FALSE: the call failed
    monkeypatch.setattr(ctypes, "get_last_error", lambda: 5, raising=False)  # ACCESS_DENIED
    with caplog.at_level(logging.DEBUG, logger=batch_process.log.name):
        _lower_priority(BACKGROUND_NICENESS)
    assert "cannot lower the batch process's priority: Windows error 5" in caplog.text


def test_windows_without_kernel32_screens_on_at_normal_priority(
    monkeypatch: pytest.MonkeyPatch, windows, caplog: pytest.LogCaptureFixture
) -> None:
    def no_dll(name: str, *args: object, **kwargs: object) -> None:
        raise OSError(f"[WinError 126] The specified module could not be found: {name}")

    monkeypatch.setattr(ctypes, "WinDLL", no_dll, raising=False)
    with caplog.at_level(logging.DEBUG, logger=batch_process.log.name):
        _lower_priority(BACKGROUND_NICENESS)  # best effort: no exception
    assert "cannot lower the batch process's priority: [WinError 126]" in caplog.text


@pytest.fixture
def mac(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The module sees macOS; ``os.nice`` records its increments instead of applying them."""
    increments: list[int] = []

    def nice(increment: int) -> int:
        increments.append(increment)
        return increment

    monkeypatch.setattr(batch_process.sys, "platform", "darwin")
    monkeypatch.setattr(batch_process.os, "nice", nice)
    return increments


def test_macos_adds_the_niceness_to_the_whole_process(mac: list[int]) -> None:
    _lower_priority(BACKGROUND_NICENESS)
    assert mac == [BACKGROUND_NICENESS] == [10]


def test_macos_refusal_is_logged_not_raised(
    monkeypatch: pytest.MonkeyPatch, mac: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(increment: int) -> int:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(batch_process.os, "nice", refuse)
    with caplog.at_level(logging.DEBUG, logger=batch_process.log.name):
        _lower_priority(BACKGROUND_NICENESS)
    assert "Operation not permitted" in caplog.text


@pytest.mark.parametrize("platform", ["win32", "darwin", "linux"])
def test_no_niceness_asks_nothing_of_any_os(
    monkeypatch: pytest.MonkeyPatch, windows, platform: str
) -> None:
    kernel32, loaded = windows
    monkeypatch.setattr(batch_process.sys, "platform", platform)
    monkeypatch.setattr(batch_process.os, "nice", lambda n: pytest.fail("os.nice called"))
    monkeypatch.setattr(batch_process.os, "setpriority", lambda *a: pytest.fail("setpriority"))
    _lower_priority(0)
    assert loaded == [] and kernel32.calls == []

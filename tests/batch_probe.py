"""Tasks for the batch process that report what happened in it (its imports; its stdout).

In a module of its own, importing nothing heavy: the child imports the module a task is
defined in before running it, and a test module's own imports (pydicom, and with it
``requests``) would be in the child before the batch process could leave anything out.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ImportsTask:
    """A :class:`~desktop.engine.batch_process.ProcessTask` with no events whose value says
    whether pydicom is loaded in the batch process and ``import requests`` fails there."""

    def run(self, runner: Any):
        try:
            importlib.import_module("requests")
            refused = False
        except ImportError:
            refused = True
        return {"pydicom": "pydicom" in sys.modules, "requests refused": refused}
        yield  # a generator with no events

    def reply(self, value: Any) -> Any:
        return value


@dataclass(frozen=True)
class NoisyTask:
    """A task that writes to the batch process's stdout, by ``print`` and straight to
    descriptor 1 (as a native library might), then returns ``value``: stdout was the pipe to
    the window before the child moved it, so the noise must not reach the window's stream."""

    value: str = "intact"

    def run(self, runner: Any):
        import os

        print("noise from print", flush=True)
        os.write(1, b"\x00\x00\x00\x00\x00\x00\x00\xffnoise on descriptor 1\n")
        return self.value
        yield  # a generator with no events

    def reply(self, value: Any) -> Any:
        return value

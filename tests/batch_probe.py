"""A task for the batch process that reports how its imports went.

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

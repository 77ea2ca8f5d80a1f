"""The device asked for (auto, CPU, CUDA) and the report of what inference really ran on.

Kept apart from :mod:`desktop.engine.inference` because the window needs these words
without ONNX Runtime: it verifies and plans the models but never opens a session (the batch
process does, :mod:`desktop.engine.batch_process`), so the only device it can state is the
one a process that ran inference reported (:class:`DeviceReport`). ``inference`` re-exports
everything here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum

from desktop.engine.errors import BatchError

#: ONNX Runtime's execution provider names (strings: no ONNX Runtime import needed).
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class Device(StrEnum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


def choose_device(explicit: str | None = None, configured: str | None = None) -> Device:
    """Layered choice: explicit > ``MEDSCREEN_DEVICE`` > configured (settings) > auto."""
    for source, value in (
        ("explicit choice", explicit),
        ("MEDSCREEN_DEVICE", os.environ.get("MEDSCREEN_DEVICE")),
        ("settings", configured),
    ):
        if value:
            try:
                return Device(value.strip().lower())
            except ValueError:
                raise BatchError(
                    f"unknown device {value!r} from {source}: use auto, cpu or cuda"
                ) from None
    return Device.AUTO


@dataclass(frozen=True)
class DeviceReport:
    """What the sessions of one process really run on, as that process observed it."""

    requested: Device
    provider: str  # the provider the sessions really run on
    note: str = ""  # why CUDA was not used, when it was not

    def describe(self) -> str:
        name = "GPU (CUDA)" if self.provider == CUDA else "CPU"
        text = f"{name} via {self.provider}"
        return f"{text} — {self.note}" if self.note else text


def device_not_observed(requested: Device) -> str:
    """The words for a device nobody has observed yet: a process that only verified the
    models (the window) cannot say where inference will run, only what was asked for."""
    return f"reported by the batch process when it runs (asked for: {requested.value})"

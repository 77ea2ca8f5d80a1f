"""The engine's one clock format: a leaf module, so anything may stamp a time cheaply.

It lived in ``screening``, which pulls ONNX Runtime and pydicom in; the results store needs
only the timestamp, and the window imports the store at start-up (ARCHITECTURE.md, "Layers").
"""

from __future__ import annotations

from datetime import UTC, datetime


def now_iso() -> str:
    """Now, in UTC, as ISO 8601 to the second (``2026-12-01T16:05:10+00:00``): sortable text."""
    return datetime.now(UTC).isoformat(timespec="seconds")

"""The engine's one clock format: a leaf module, so anything may stamp a time cheaply.

It lived in ``screening``, which pulls ONNX Runtime and pydicom in; the results store needs
only the timestamp, and the window imports the store at start-up (ARCHITECTURE.md, "Layers").
"""

from __future__ import annotations

from datetime import UTC, datetime


def local_text(moment: datetime | str) -> str:
    """``moment`` (aware, or the store's ISO text) in this PC's local time with the UTC
    offset written out, ``2026-12-01 16:40 (UTC+03:00)``: how every face shows a time to
    people. A clinic reads its own clock, and the offset keeps it unambiguous; 'medscreen
    history' printed the UTC time with no zone at all ('07:41' for a batch run at 10:41 in
    Nairobi). Text that is not an ISO time is shown as it is."""
    if isinstance(moment, str):
        try:
            moment = datetime.fromisoformat(moment)
        except ValueError:
            return moment
    if moment.tzinfo is None:  # the store writes UTC; a naive time here is UTC too
        moment = moment.replace(tzinfo=UTC)
    local = moment.astimezone()
    offset = local.strftime("%z") or "+0000"
    return f"{local:%Y-%m-%d %H:%M} (UTC{offset[:3]}:{offset[3:]})"


def now_iso() -> str:
    """Now, in UTC, as ISO 8601 to the second (``2026-12-01T16:05:10+00:00``): sortable text."""
    return datetime.now(UTC).isoformat(timespec="seconds")

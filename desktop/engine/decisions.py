"""The reader's decision on a scan: what the clinician who read it concluded.

MedScreen ranks and flags; a clinician decides. The decision is recorded per scan with a note,
the time and the reader's name (the store's ``reader_decisions`` table, appended, never
overwritten, so the record shows who decided what and when) and is shown in the table, the
viewer and every report. The words are fixed here, once, beside the status words and the
quality codes; CSV and JSON keep the stable codes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from desktop.engine.clock import local_text
from desktop.engine.vocabulary import Vocabulary


class Decision(Vocabulary):
    """What the reader concluded about the model's output for one scan (code, words)."""

    AGREE = "agree", "Agree"
    DISAGREE = "disagree", "Disagree"
    FOLLOW_UP = "follow_up", "Needs follow-up"
    POOR_QUALITY = "poor_quality", "Image quality too poor"


#: The words every face shows for a decision.
DECISION_TEXT: Mapping[Decision, str] = Decision.texts()

#: Longest note kept (a note is a sentence or two, never a report; it must fit a PDF cell).
MAX_NOTE_CHARS = 500


@dataclass(frozen=True)
class ReaderDecision:
    """One recorded decision (the latest for a scan is the one that counts)."""

    decision: Decision
    note: str
    reader: str
    decided_at: str  # ISO 8601, UTC (clock.now_iso)

    @property
    def text(self) -> str:
        return DECISION_TEXT[self.decision]

    def summary(self) -> str:
        """``"Needs follow-up — J. Otieno, 2026-12-01 17:02 (UTC+03:00): note"`` for a cell or
        a line: the time on the clinic's clock, as the report's own (it said "14:02 UTC"
        beside a page 1 created "17:10 (UTC+03:00)")."""
        who = f" — {self.reader}" if self.reader else ""
        note = f": {self.note}" if self.note else ""
        return f"{self.text}{who}, {local_text(self.decided_at)}{note}"


def parse_decision(text: str) -> Decision:
    """A decision from its code or its words (case-insensitive); ValueError otherwise."""
    return Decision.parse(text, "decision")


def scan_key(sha256: str | None, file: str) -> str:
    """What a decision is kept under: the scan's content hash, or its path for a file that
    could not be read (it has no hash, and "image quality too poor" applies to it too)."""
    return sha256 or f"file:{file}"

"""Fixed vocabularies: a stable code with the words every face shows for it.

The reader's decisions (:mod:`desktop.engine.decisions`) and the plain quality codes
(:mod:`desktop.engine.quality`) are both a set of codes kept in CSV, JSON and the store, each
with the words the table, the viewer and the PDF show. Each member carries its own words, so a
code cannot be added without them (a separate code → words table could miss one), and a
vocabulary parses either form the same way.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Self


class Vocabulary(StrEnum):
    """A :class:`StrEnum` whose members are written ``NAME = "code", "words"``: the value is
    the stable code, :attr:`words` what a reader sees."""

    words: str

    def __new__(cls, code: str, words: str) -> Self:
        member = str.__new__(cls, code)
        member._value_ = code
        member.words = words
        return member

    @classmethod
    def texts(cls) -> dict[Self, str]:
        """Every member's words, in definition order."""
        return {member: member.words for member in cls}

    @classmethod
    def parse(cls, text: str, noun: str) -> Self:
        """The member named by its code or its words (case-insensitive); ValueError, naming
        ``noun`` and the codes, otherwise."""
        value = text.strip().lower()
        for member in cls:
            if value in (member.value, member.words.lower()):
                return member
        choices = ", ".join(member.value for member in cls)
        raise ValueError(f"unknown {noun} {text!r}; choose from {choices}")


def duration(seconds: float) -> str:
    """How long something took, as people say it: "under 1 s", "42 s", "3 min 5 s",
    "1 h 2 min". The window said "in 0 s" for a short batch and "in 3725 s" for a long one."""
    if seconds < 1:
        return "under 1 s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    return f"{secs} s"


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``count`` with ``noun``, plural unless the count is one: "1 file", "0 files", "2 not
    chest X-rays" (``plural`` where adding "s" is wrong). Every face's counts go through it:
    "1 files" and "1 errors" were found in the CLI summary and the window's status."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"

"""paths.one_line: every control character (C0, DEL, C1) shows as a space, nothing else
changes; a printable name is returned as it is (the fast path a 20,000-row sort by file name
takes)."""

from __future__ import annotations

import pytest

from desktop.engine.paths import display_path, one_line


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("new\nline.png", "new line.png"),
        ("tab\there\r.png", "tab here .png"),
        ("del\x7f.png", "del .png"),
        ("next\x85line\x9f.png", "next line .png"),  # C1 controls
        ("nbsp\u00a0kept.png", "nbsp\u00a0kept.png"),  # a separator, not a control
        ("zero\u200bwidth.png", "zero\u200bwidth.png"),  # a format character, not a control
        ("Ĉu_胸部_x-ray.png", "Ĉu_胸部_x-ray.png"),
        ("", ""),
    ],
)
def test_controls_become_spaces_and_nothing_else_changes(name: str, shown: str) -> None:
    assert one_line(name) == shown


def test_a_name_that_is_not_utf8_shows_its_replacement_on_one_line() -> None:
    name = b"caf\xe9\n.png".decode("utf-8", "surrogateescape")
    assert one_line(display_path(name)) == "caf\ufffd .png"


def test_every_control_character_and_only_those_becomes_a_space() -> None:
    controls = {chr(c) for c in (*range(0x20), *range(0x7F, 0xA0))}
    for code in range(0x2100):
        char = chr(code)
        assert one_line(char) == (" " if char in controls else char), hex(code)

"""'Open with MedScreen': the desktop file passes the files (%F) and `medscreen FILE...` opens
the window with them queued (the window itself is not started here)."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from desktop import cli

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[list[Path]]:
    calls: list[list[Path]] = []
    monkeypatch.setattr(cli, "open_window", lambda files=(): calls.append(list(files)) or 0)
    return calls


def test_desktop_file_passes_the_files() -> None:
    entry = configparser.ConfigParser(interpolation=None)
    entry.read(REPO / "installer" / "linux" / "medscreen.desktop", encoding="utf-8")
    assert entry["Desktop Entry"]["Exec"] == "medscreen %F"
    assert entry["Desktop Entry"]["TryExec"] == "medscreen"


def test_medscreen_files_open_the_window_with_them(opened, tmp_path: Path, capsys) -> None:
    a, b = tmp_path / "a.png", tmp_path / "scans"
    a.write_bytes(b"x")
    b.mkdir()
    assert cli.main([str(a), str(b), str(tmp_path / "gone.png")]) == 0
    assert opened == [[a, b]]
    assert "no such file or folder" in capsys.readouterr().err  # said, and the rest still open
    assert cli.main(["gui", str(a)]) == 0 and opened[-1] == [a]
    assert cli.main([]) == 0 and opened[-1] == []


def test_a_mistyped_command_is_still_an_error(opened, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.main(["clasify"])
    assert stop.value.code == 2 and "invalid choice" in capsys.readouterr().err
    assert opened == []

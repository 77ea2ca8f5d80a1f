"""Fast checks of the packaging sources: the start-up library check, the icon set, the
Debian dependency list and the desktop entry (the slow end-to-end test is test_installer.py).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from desktop import startup_check
from desktop.startup_check import StartupProblem, check_gui_environment, ensure_gui_can_start

REPO = Path(__file__).resolve().parents[1]
ICONS = REPO / "assets" / "icons"

LDD_OUTPUT = """\
\tlinux-vdso.so.1 (0x00007ffd)
\tlibQt6XcbQpa.so.6 => /opt/medscreen/_internal/libQt6XcbQpa.so.6 (0x00007f1)
\tlibxcb-cursor.so.0 => not found
\tlibxkbcommon-x11.so.0 => not found
\tlibxcb-cursor.so.0 => not found
\tlibfancy-new.so.3 => not found
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2)
"""


@pytest.fixture
def fake_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in Qt plugin file, and ldd answering LDD_OUTPUT for it."""
    plugin = tmp_path / "libqxcb.so"
    plugin.write_bytes(b"\x7fELF")
    monkeypatch.setattr(startup_check, "qt_platform_plugin", lambda name="xcb": plugin)
    monkeypatch.setattr(startup_check.shutil, "which", lambda tool: f"/usr/bin/{tool}")

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        assert cmd[0].endswith("ldd") and cmd[1] == str(plugin)
        return subprocess.CompletedProcess(cmd, 0, LDD_OUTPUT, "")

    monkeypatch.setattr(startup_check.subprocess, "run", fake_run)
    monkeypatch.setattr(startup_check, "fonts_installed", lambda: True)
    return plugin


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux-only check")
def test_missing_libraries_are_named_with_their_packages(
    fake_plugin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    problems = check_gui_environment()
    assert len(problems) == 1
    problem = problems[0]
    assert problem.packages == ("libxcb-cursor0", "libxkbcommon-x11-0")
    assert "libxcb-cursor.so.0, libxkbcommon-x11.so.0, libfancy-new.so.3" in problem.message
    assert "apt-file search" in problem.message  # the unknown one
    assert "sudo apt install libxcb-cursor0 libxkbcommon-x11-0" in problem.describe()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux-only check")
def test_no_display_points_to_the_headless_command(
    fake_plugin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    messages = [p.message for p in check_gui_environment()]
    assert any("no graphical display" in m and "medscreen classify" in m for m in messages)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux-only check")
def test_offscreen_needs_no_display(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.setattr(startup_check, "missing_libraries", lambda plugin: [])
    monkeypatch.setattr(startup_check, "fonts_installed", lambda: True)
    assert check_gui_environment("offscreen") == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux-only check")
def test_no_fonts_names_the_font_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(startup_check, "_FONT_DIRS", (str(tmp_path / "none"),))
    monkeypatch.setattr(startup_check, "missing_libraries", lambda plugin: [])
    assert not startup_check.fonts_installed()
    problems = check_gui_environment("offscreen")
    assert [p.packages for p in problems] == [("fonts-dejavu-core",)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux-only check")
def test_real_environment_check_runs_without_qt() -> None:
    """On this machine (where the tests' Qt works offscreen) nothing is reported, and the
    check never imports Qt."""
    before = {m for m in sys.modules if m.startswith("PySide6")}
    assert check_gui_environment("offscreen") == []
    assert {m for m in sys.modules if m.startswith("PySide6")} == before


def test_other_platforms_have_nothing_to_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "win32")
    assert check_gui_environment() == []


def test_ensure_reports_and_can_be_bypassed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        startup_check,
        "check_gui_environment",
        lambda: [StartupProblem("libfoo is missing", ("libfoo1",))],
    )
    monkeypatch.setattr(startup_check, "_show_dialog", lambda text: None)
    assert ensure_gui_can_start() is False
    err = capsys.readouterr().err
    assert "libfoo is missing" in err and "sudo apt install libfoo1" in err
    monkeypatch.setenv("MEDSCREEN_SKIP_STARTUP_CHECK", "1")
    assert ensure_gui_can_start() is True


@pytest.mark.parametrize("size", [16, 24, 32, 48, 64, 128, 256, 512])
def test_icon_pngs_have_their_size(size: int) -> None:
    with Image.open(ICONS / f"medscreen-{size}.png") as image:
        assert image.size == (size, size) and image.mode == "RGBA"


def test_windows_and_mac_icons_hold_every_size() -> None:
    with Image.open(ICONS / "medscreen.ico") as ico:
        assert {(16, 16), (32, 32), (48, 48), (256, 256)} <= set(ico.info["sizes"])
    with Image.open(ICONS / "medscreen.icns") as icns:
        assert (512, 512, 2) in icns.info["sizes"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_debian_depends_list_covers_the_qt_basics() -> None:
    out = subprocess.run(
        [str(REPO / "installer" / "linux" / "depends"), "--control"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    names = [d.strip() for d in out.split(",")]
    for pkg in ("libgl1", "libegl1", "libxkbcommon0", "libxkbcommon-x11-0", "libfontconfig1",
                "libdbus-1-3", "libglib2.0-0", "libxcb-cursor0", "libxcb-icccm4",
                "libxcb-keysyms1", "libxcb-shape0", "fonts-dejavu-core"):  # fmt: skip
        assert pkg in names
    # every package the start-up check may recommend for an X11 library is declared
    x11 = {p for lib, p in startup_check.LIBRARY_PACKAGES.items() if "xcb" in lib}
    assert x11 - set(names) <= {"libxcb-xinerama0"}


def test_desktop_entry() -> None:
    entry = (REPO / "installer" / "linux" / "medscreen.desktop").read_text()
    for line in ("Icon=medscreen", "Categories=Science;MedicalSoftware;",
                 "MimeType=image/png;image/jpeg;application/dicom;", "Terminal=false"):  # fmt: skip
        assert line in entry.splitlines()
    if shutil.which("desktop-file-validate"):
        result = subprocess.run(
            ["desktop-file-validate", str(REPO / "installer/linux/medscreen.desktop")],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout

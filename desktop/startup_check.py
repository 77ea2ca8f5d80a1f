"""Check, before Qt starts, that the desktop window can open; name what is missing if not.

Why: on Linux the bundled Qt needs a few system libraries (OpenGL/EGL, xkbcommon, the xcb
helper libraries, fontconfig, D-Bus) and a font. When one is missing, Qt prints a cryptic
"could not load the Qt platform plugin xcb" (or nothing at all from a desktop launcher) and
aborts. A clinic cannot debug that. This module runs ``ldd`` on the Qt platform plugin the
app ships, maps each missing library to its Debian/Ubuntu package and says which
``apt install`` fixes it.

It must not import Qt (it runs before ``QApplication`` exists, and when Qt itself cannot be
loaded). Call :func:`ensure_gui_can_start` first thing in the GUI's ``main()``; the frozen
app's entry point (``installer/medscreen_entry.py``) also calls it.

On Windows and macOS the bundle carries everything Qt needs; the checks there are no-ops.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

log = logging.getLogger("medscreen.startup")

#: Shared library (soname) → the Debian/Ubuntu package that provides it. These are the
#: libraries the PySide6 wheel's xcb platform plugin links against but does not bundle.
LIBRARY_PACKAGES: dict[str, str] = {
    "libGL.so.1": "libgl1",
    "libEGL.so.1": "libegl1",
    "libOpenGL.so.0": "libopengl0",
    "libGLX.so.0": "libglx0",
    "libxkbcommon.so.0": "libxkbcommon0",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libfontconfig.so.1": "libfontconfig1",
    "libfreetype.so.6": "libfreetype6",
    "libdbus-1.so.3": "libdbus-1-3",
    "libglib-2.0.so.0": "libglib2.0-0",
    "libgthread-2.0.so.0": "libglib2.0-0",
    "libX11.so.6": "libx11-6",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libxcb.so.1": "libxcb1",
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-render.so.0": "libxcb-render0",
    "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-sync.so.1": "libxcb-sync1",
    "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-xinerama.so.0": "libxcb-xinerama0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
    "libxcb-util.so.1": "libxcb-util1",
    "libSM.so.6": "libsm6",
    "libICE.so.6": "libice6",
    "libwayland-client.so.0": "libwayland-client0",
    "libwayland-cursor.so.0": "libwayland-cursor0",
    "libwayland-egl.so.1": "libwayland-egl1",
}

FONT_PACKAGE = "fonts-dejavu-core"
_FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts", "~/.fonts")
_FONT_SUFFIXES = (".ttf", ".otf", ".ttc", ".pcf", ".pcf.gz", ".pfb")


@dataclass(frozen=True)
class StartupProblem:
    """One reason the window cannot open, with what fixes it."""

    message: str
    packages: tuple[str, ...] = ()

    def describe(self) -> str:
        """The message, with the install command when a package fixes it."""
        if not self.packages:
            return self.message
        return f"{self.message}\n  fix: sudo apt install {' '.join(self.packages)}"


def qt_platform_plugin(name: str = "xcb") -> Path | None:
    """The Qt platform plugin file that PySide6 (bundled or installed) will load, if found.

    Located without importing PySide6, which could itself fail for the reasons checked here.
    """
    roots: list[Path] = []
    frozen_root = getattr(sys, "_MEIPASS", None)
    if frozen_root:
        roots.append(Path(frozen_root) / "PySide6")
    spec = find_spec("PySide6") if not frozen_root else None
    if spec is not None and spec.submodule_search_locations:
        roots.extend(Path(p) for p in spec.submodule_search_locations)
    for root in roots:
        for candidate in (
            root / "Qt" / "plugins" / "platforms" / f"libq{name}.so",
            root / "plugins" / "platforms" / f"libq{name}.so",
        ):
            if candidate.is_file():
                return candidate
    return None


def missing_libraries(plugin: Path) -> list[str]:
    """Sonames ``ldd`` reports as "not found" for ``plugin`` (and everything it loads).

    ``ldd`` resolves the whole dependency tree, so a library missing two levels down (for
    example ``libEGL`` needed by ``libQt6Gui``) is reported too. Returns an empty list when
    ``ldd`` is not available (it is part of Debian's essential ``libc-bin``).
    """
    ldd = shutil.which("ldd")
    if ldd is None:
        return []
    try:
        result = subprocess.run(
            [ldd, str(plugin)], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("ldd failed on %s: %s", plugin, exc)
        return []
    missing: list[str] = []
    for line in result.stdout.splitlines():
        if "not found" in line:
            soname = line.split("=>", 1)[0].strip()
            if soname and soname not in missing:
                missing.append(soname)
    return missing


def fonts_installed() -> bool:
    """Whether any system font exists (Qt draws no text at all without one)."""
    for folder in _FONT_DIRS:
        root = Path(folder).expanduser()
        if not root.is_dir():
            continue
        for _dirpath, _dirs, files in os.walk(root):
            if any(f.lower().endswith(_FONT_SUFFIXES) for f in files):
                return True
    return False


def check_gui_environment(platform: str | None = None) -> list[StartupProblem]:
    """Everything that would stop the window from opening, or [] when it should open.

    ``platform`` is the Qt platform plugin that will be used (default: ``$QT_QPA_PLATFORM``
    or ``xcb``); ``offscreen`` and ``minimal`` need no display.
    """
    if not sys.platform.startswith("linux"):
        return []
    problems: list[StartupProblem] = []
    platform = (platform or os.environ.get("QT_QPA_PLATFORM") or "xcb").split(":", 1)[0]
    if platform.split(";", 1)[0] == "xcb" and "DISPLAY" not in os.environ:
        if os.environ.get("WAYLAND_DISPLAY"):
            platform = "wayland"
        else:
            problems.append(
                StartupProblem(
                    "no graphical display was found (DISPLAY is not set). Start MedScreen "
                    "from a desktop session, or screen a folder without a window: "
                    "medscreen classify FOLDER --out RESULTS_FOLDER"
                )
            )
    plugin_name = "xcb" if platform not in ("offscreen", "minimal", "wayland") else platform
    plugin = qt_platform_plugin(plugin_name)
    if plugin is not None:
        missing = missing_libraries(plugin)
        if missing:
            packages = sorted({LIBRARY_PACKAGES[m] for m in missing if m in LIBRARY_PACKAGES})
            unknown = [m for m in missing if m not in LIBRARY_PACKAGES]
            text = "system libraries needed by the window are missing: " + ", ".join(missing)
            if unknown:
                text += f" (find the package for {', '.join(unknown)} with: apt-file search NAME)"
            problems.append(StartupProblem(text, tuple(packages)))
    else:
        log.debug("Qt platform plugin %s not found; skipping the library check", plugin_name)
    if not fonts_installed():
        problems.append(
            StartupProblem("no fonts are installed, so no text could be shown", (FONT_PACKAGE,))
        )
    return problems


def _show_dialog(text: str) -> None:
    """Best effort: show ``text`` in a desktop dialog when started without a terminal.

    A double-clicked launcher has no terminal, so stderr is invisible. These tools are not
    dependencies; whichever exists is used, and failing silently is fine (the log has it).
    """
    title = "MedScreen cannot start"
    for command in (
        ["zenity", "--error", f"--title={title}", "--no-markup", f"--text={text}"],
        ["kdialog", "--title", title, "--error", text],
        ["xmessage", "-center", f"{title}\n\n{text}"],
        ["notify-send", "--urgency=critical", title, text],
    ):
        if shutil.which(command[0]):
            try:
                subprocess.run(command, timeout=600, check=False)
            except (OSError, subprocess.SubprocessError):
                continue
            return


def ensure_gui_can_start() -> bool:
    """Run :func:`check_gui_environment`; report problems and return False if there are any.

    Problems go to stderr, to the log, and (when there is no terminal) to a dialog if a
    dialog tool exists. Set ``MEDSCREEN_SKIP_STARTUP_CHECK=1`` to bypass a wrong verdict.
    """
    if os.environ.get("MEDSCREEN_SKIP_STARTUP_CHECK") == "1":
        return True
    problems = check_gui_environment()
    if not problems:
        return True
    lines = ["MedScreen cannot open its window:"]
    lines += [f"- {p.describe()}" for p in problems]
    packages = sorted({pkg for p in problems for pkg in p.packages})
    if len([p for p in problems if p.packages]) > 1:
        lines.append(f"Install everything at once with: sudo apt install {' '.join(packages)}")
    lines.append("(Set MEDSCREEN_SKIP_STARTUP_CHECK=1 to try anyway.)")
    text = "\n".join(lines)
    log.info("startup check failed:\n%s", text)  # stderr gets it below; info avoids a copy
    if sys.stderr is not None:
        print(text, file=sys.stderr)  # noqa: T201 - the user must see this without a log
    has_display = bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if has_display and (sys.stderr is None or not sys.stderr.isatty()):
        _show_dialog(text)
    return False

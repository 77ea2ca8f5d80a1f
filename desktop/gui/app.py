"""Application start-up: the QApplication, the error hook, and the main window.

The window is shown first and everything slow (ONNX Runtime, the models, the results
store's interrupted batches) starts from the event loop afterwards, so a double-click gives
a window at once. An uncaught exception on the GUI thread is logged with its traceback and
shown in a dialog that says what to do, instead of closing the app or doing nothing.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QFontDatabase, QGuiApplication, QIcon
from PySide6.QtWidgets import QApplication, QMessageBox, QWidget

from desktop import __version__
from desktop.app_logging import configure_logging, log_file_path
from desktop.engine.paths import assets_dir
from desktop.startup_check import ensure_gui_can_start

log = logging.getLogger("medscreen.gui")

#: Set to 1 to quit as soon as the window is shown (start-up benchmark, install smoke test);
#: the process then writes ``shown_after_s=<seconds since process start>`` to stdout.
SMOKE_ENV = "MEDSCREEN_SMOKE"


def _process_age_s() -> float:
    """Seconds since this process started (Linux /proc; elsewhere since this module loaded)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])
        with open("/proc/uptime", encoding="ascii") as uptime:
            up = float(uptime.read().split()[0])
        return up - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _LOADED


_LOADED = time.perf_counter()


def install_excepthook(parent: QWidget | None = None) -> None:
    """Log uncaught exceptions with their trace and tell the user what happened."""

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, value, tb)
            return
        log.critical("uncaught exception", exc_info=(kind, value, tb))
        if QApplication.instance() is None:
            sys.__excepthook__(kind, value, tb)
            return
        text = "".join(traceback.format_exception_only(kind, value)).strip()
        box = QMessageBox(parent)
        box.setIcon(QMessageBox.Icon.Critical)
        box.setWindowTitle("MedScreen — unexpected error")
        box.setText(
            "Something went wrong inside MedScreen. Scans already screened are saved.\n\n"
            f"What happened: {text}"
        )
        box.setInformativeText(
            "You can keep working. If it happens again, restart MedScreen and send the log "
            f"file to your support contact:\n{log_file_path()}"
        )
        box.setDetailedText("".join(traceback.format_exception(kind, value, tb)))
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()

    sys.excepthook = hook


#: How long (s) a Python thread may keep the GIL while another waits for it, in the window's
#: process (Python's default: 5 ms). Every Qt-to-Python call of a repaint (a table repaint
#: makes thousands: data(), rowCount(), ...) must take the GIL, which the batch's decoder and
#: inference threads hold between their native calls; at 5 ms the window waited for it long
#: enough to freeze visibly while a fast batch ran (benchmarks/bench_gui_stall.py). It was
#: withdrawn once after a GUI test crashed with it under PySide6 6.12, whose emit() and
#: disconnect() lose references to True; that binding is now excluded (qt_compat.py).
GUI_SWITCH_INTERVAL = 0.0005


def create_app(argv: Sequence[str] | None = None) -> QApplication:
    """The QApplication with MedScreen's names (no style overrides: the platform's palette,
    including dark mode, is used as is), in a process whose GUI thread gets the GIL quickly
    (:data:`GUI_SWITCH_INTERVAL`)."""
    sys.setswitchinterval(GUI_SWITCH_INTERVAL)
    # Qt's raster engine and image scaler hand large fills to a thread pool and wait for it;
    # on a 2-core PC whose cores the batch is using, the GUI thread then waits for the pool to
    # get a core (up to a fifth of a repaint in the stall benchmark's profile). Doing the
    # work on the GUI thread itself is cheaper. Read once, before Qt first uses the pool.
    os.environ.setdefault("QT_NO_GUI_THREADPOOL", "1")
    app = QApplication.instance()
    if isinstance(app, QApplication):
        return app
    QGuiApplication.setHighDpiScaleFactorRoundingPolicy(
        Qt.HighDpiScaleFactorRoundingPolicy.PassThrough
    )
    app = QApplication(list(argv) if argv is not None else sys.argv[:1])
    app.setApplicationName("MedScreen")
    app.setOrganizationName("MedScreen")
    app.setApplicationVersion(__version__)
    app.setApplicationDisplayName("MedScreen")
    # Matches installer/linux/medscreen.desktop, so taskbars (and Wayland) group the window
    # with its menu entry and show the same icon.
    QGuiApplication.setDesktopFileName("medscreen")
    app.setWindowIcon(app_icon())
    _add_fallback_font()
    return app


def _add_fallback_font() -> None:
    """On Linux, offer Qt the bundled CJK font (the PDF's fallback) for glyphs the system's
    fonts lack: the .deb needs only DejaVu, so a Chinese, Japanese or Korean file name showed
    as empty boxes in the table and the viewer. Qt falls back to it per glyph (4 ms, 1.5 MB
    resident). Windows and macOS ship CJK fonts of their own."""
    if not sys.platform.startswith("linux"):
        return
    path = assets_dir() / "fonts" / "DroidSansFallback.ttf"
    if QFontDatabase.addApplicationFont(str(path)) < 0:
        log.warning("fallback font %s could not be added: CJK names may show as boxes", path)


def app_icon() -> QIcon:
    """The MedScreen icon at every rendered size (assets/icons, drawn from medscreen.svg)."""
    icon = QIcon()
    for path in sorted((assets_dir() / "icons").glob("medscreen-*.png")):
        icon.addFile(str(path))
    return icon


def main(
    argv: Sequence[str] | None = None,
    model_dirs: Sequence[Path] | None = None,
    files: Sequence[Path] = (),
) -> int:
    """Open the MedScreen window; returns the exit code. Called by ``medscreen`` with no args,
    and by ``medscreen FILE...`` with ``files``: queued for screening once the models load.

    ``MEDSCREEN_MODELS`` (folders separated by the OS path separator) overrides where models
    are looked for, like ``--models`` on the command line.
    """
    log_path = configure_logging(console=True)
    if not ensure_gui_can_start():  # names a missing system library instead of a Qt abort
        return 3
    from desktop.gui.qt_compat import binding_problem  # before any thread: it counts refs

    problem = binding_problem()
    if problem is not None:  # a known-bad Qt binding: refuse now instead of crashing later
        log.critical("%s", problem)
        sys.stderr.write(f"MedScreen cannot start: {problem}\n")
        return 3
    app = create_app(argv)
    from desktop.gui.main_window import MainWindow  # after QApplication: widgets need it

    if model_dirs is None and os.environ.get("MEDSCREEN_MODELS"):
        model_dirs = [Path(p) for p in os.environ["MEDSCREEN_MODELS"].split(os.pathsep) if p]
    window = MainWindow(model_dirs=model_dirs)
    install_excepthook(window)
    window.show()

    def shown() -> None:
        # Runs once the event loop has exposed and painted the window.
        age = _process_age_s()
        log.info(
            "MedScreen %s window shown %.2f s after start (log: %s)", __version__, age, log_path
        )
        if os.environ.get(SMOKE_ENV) == "1":
            sys.stdout.write(f"shown_after_s={age:.3f}\n")
            sys.stdout.flush()
            window.close()
        else:
            window.start()
            if files:
                window.open_paths(list(files))  # screened as soon as the models are ready

    QTimer.singleShot(0, shown)
    code = app.exec()
    from desktop.gui.workers import wait_all

    wait_all(60_000)
    return int(code)

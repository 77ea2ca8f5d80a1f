"""Screenshots of the desktop window for the docs (run through ``scripts/screenshots``).

Starts the real MainWindow, screens ``assets/samples/`` and saves, into ``docs/screenshots/``:

* ``main_window.png`` — the results table after the batch;
* ``viewer_heatmap.png`` — the scan viewer with the heatmap on;
* ``models_dialog.png`` — the Models / About dialog.

It uses the bundled models in ``assets/models`` when a complete set loads, otherwise the
stand-in test models (``tests/model_factory.py``) — and says which in the log and in the
window, so a screenshot never passes stand-in scores off as real ones.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("screenshots")


def _model_dirs(work: Path) -> tuple[list[Path], str]:
    from desktop.engine.errors import MedScreenError
    from desktop.engine.registry import default_model_dirs, load_model_set

    try:
        load_model_set(default_model_dirs())
        return default_model_dirs(), "bundled models"
    except MedScreenError as exc:
        log.warning("bundled models not usable (%s); using the stand-in test models", exc)
    sys.path.insert(0, str(REPO))  # the stand-in factory lives in tests/
    from tests.model_factory import build_model_set

    return [build_model_set(work / "models")], "stand-in test models (not real scores)"


def _use_dark_palette(app: object) -> None:
    """A dark Fusion palette, as a dark desktop theme would give: checks that every widget
    uses palette roles, not fixed colours."""
    from PySide6.QtGui import QColor, QPalette
    from PySide6.QtWidgets import QApplication

    assert isinstance(app, QApplication)
    app.setStyle("Fusion")
    palette = QPalette()
    role = QPalette.ColorRole
    for r, colour in (
        (role.Window, "#2b2b2b"),
        (role.WindowText, "#e6e6e6"),
        (role.Base, "#1e1e1e"),
        (role.AlternateBase, "#262626"),
        (role.ToolTipBase, "#3a3520"),
        (role.ToolTipText, "#f0e6c0"),
        (role.Text, "#e6e6e6"),
        (role.PlaceholderText, "#9a9a9a"),
        (role.Button, "#353535"),
        (role.ButtonText, "#e6e6e6"),
        (role.Highlight, "#2f65ca"),
        (role.HighlightedText, "#ffffff"),
        (role.Dark, "#151515"),
        (role.Mid, "#404040"),
        (role.Light, "#505050"),
    ):
        palette.setColor(r, QColor(colour))
    app.setPalette(palette)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    parser.add_argument("--samples", type=Path, default=REPO / "assets" / "samples")
    parser.add_argument(
        "--dark", action="store_true", help="render with a dark palette (files end in _dark)"
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="device pixel ratio (high-DPI check, e.g. 2)"
    )
    args = parser.parse_args()
    suffix = ("_dark" if args.dark else "") + (f"_{args.scale:g}x" if args.scale != 1 else "")
    if args.scale != 1:
        os.environ["QT_SCALE_FACTOR"] = f"{args.scale:g}"
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    work = Path(tempfile.mkdtemp(prefix="medscreen-shots-"))
    os.environ["MEDSCREEN_HOME"] = str(work / "home")
    from PySide6.QtCore import QEventLoop, QTimer

    from desktop.gui.app import create_app
    from desktop.gui.main_window import MainWindow
    from desktop.gui.models_dialog import ModelsDialog
    from desktop.gui.settings import AppSettings

    app = create_app(["medscreen-screenshots"])
    if args.dark:
        _use_dark_palette(app)
    dirs, which = _model_dirs(work)
    args.out.mkdir(parents=True, exist_ok=True)

    def wait(signal: object, timeout_ms: int = 120_000) -> list[object]:
        loop = QEventLoop()
        got: list[object] = []
        signal.connect(lambda *a: (got.extend(a), loop.quit()))  # type: ignore[attr-defined]
        QTimer.singleShot(timeout_ms, loop.quit)
        loop.exec()
        return got

    def settle(ms: int = 300) -> None:
        loop = QEventLoop()
        QTimer.singleShot(ms, loop.quit)
        loop.exec()

    settings = AppSettings(work / "settings.ini")
    settings.clinic_name = "Demo clinic"
    window = MainWindow(settings=settings, model_dirs=dirs)
    window.resize(1400, 820)
    window.show()
    window.start()
    if wait(window.models_changed) == [None]:
        log.error("models did not load: %s", window.messages.message())
        return 1
    window.open_paths([args.samples])
    wait(window.batch.batch_finished)
    if which != "bundled models":
        window.messages.show_message(f"Screenshot made with {which}.", "warning")
    settle()
    window.view.resizeColumnsToContents()
    window.view.apply_column_widths()
    settle()
    window.grab().save(str(args.out / f"main_window{suffix}.png"))
    log.info("saved main_window%s.png", suffix)

    results = window.model.results()
    ok = [r for r in results if r.findings]
    if ok:
        best = max(ok, key=lambda r: max(f.probability for f in r.findings.values()))
        viewer = window.open_viewer(best)
        viewer.resize(1300, 820)
        wait(viewer.image_ready, 30_000)
        viewer.heat_box.setChecked(True)
        settle()
        viewer.grab().save(str(args.out / f"viewer_heatmap{suffix}.png"))
        log.info("saved viewer_heatmap%s.png", suffix)
        viewer.close()

    assert window.models is not None
    dialog = ModelsDialog(window.models.manifests, window.models.device.describe(), [], window)
    dialog.resize(1100, 780)
    dialog.show()
    settle()
    dialog.grab().save(str(args.out / f"models_dialog{suffix}.png"))
    log.info("saved models_dialog%s.png", suffix)
    dialog.close()

    window.close()
    app.processEvents()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

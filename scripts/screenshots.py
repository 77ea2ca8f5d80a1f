"""Screenshots of the desktop window for the docs (run through ``scripts/screenshots``).

Starts the real MainWindow, screens ``assets/samples/`` and saves, into ``docs/screenshots/``:

* ``main_window.png`` — the results table after the batch;
* ``viewer_heatmap.png`` — the scan viewer with the heatmap on;
* ``models_dialog.png`` — the Models / About dialog.

With ``--reading`` (issue 14, run under a 1366×768 Xvfb screen, at ``--scale 1`` and
``--scale 1.5``) it shows a reading session instead, on a morning's folder made from the test
images (chest X-rays, a hand, a photo, a damaged file), screened with the bundled models:

* ``reading_screen{_1.5x}.png`` — the whole screen: the window fits it at that scaling, the
  table in triage order with two reader decisions;
* ``reading_viewer{_1.5x}.png`` — the viewer on the second scan, with its Reading panel;
* ``report_page1.png`` … ``report_page3.png`` — the exported report's first pages (pdftoppm).

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("screenshots")


def _model_dirs(work: Path) -> tuple[list[Path], str]:
    from desktop.engine.errors import MedScreenError
    from desktop.engine.registry import default_model_dirs, plan_model_set

    try:
        plan_model_set(default_model_dirs())  # the window's own check: verified, not opened
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
    parser.add_argument(
        "--reading", action="store_true", help="a reading session on a 1366×768 screen"
    )
    parser.add_argument(
        "--models", type=Path, default=None, help="model folder (default: the bundled models)"
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
    dirs, which = (
        ([args.models], "models in " + str(args.models)) if args.models else _model_dirs(work)
    )
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

    if args.reading:
        return _reading(app, work, dirs, args.out, suffix, wait, settle)

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
    dialog = ModelsDialog(window.models.manifests, window.device_text(), [], window)
    dialog.resize(1100, 780)
    dialog.show()
    settle()
    dialog.grab().save(str(args.out / f"models_dialog{suffix}.png"))
    log.info("saved models_dialog%s.png", suffix)
    dialog.close()

    window.close()
    app.processEvents()
    return 0


def _morning_folder(work: Path) -> Path:
    """A clinic's morning folder from the test images (real scans; see tests/data)."""
    import shutil

    data = REPO / "tests" / "data"
    root = work / "morning"
    for sub in ("tb/normal", "tb/tuberculosis", "pneumonia/pneumonia"):
        shutil.copytree(data / sub, root / sub)
    shutil.copy(data / "mednist" / "Hand" / "000000.jpeg", root / "hand.jpeg")
    shutil.copy(data / "photos" / "chelsea.jpg", root / "photo.jpg")
    chest = sorted((data / "tb" / "normal").glob("*.png"))[0]
    (root / "damaged.png").write_bytes(chest.read_bytes()[:3000])
    return root


def _reading(
    app: Any,
    work: Path,
    dirs: list[Path],
    out: Path,
    suffix: str,
    wait: Callable[..., list[object]],
    settle: Callable[..., None],
) -> int:
    """The reading-session screenshots (see the module text)."""
    import shutil
    import subprocess

    from PySide6.QtGui import QGuiApplication

    from desktop.engine.decisions import Decision
    from desktop.gui.main_window import MainWindow
    from desktop.gui.settings import AppSettings

    os.environ["MEDSCREEN_NO_OPEN"] = "1"
    settings = AppSettings(work / "settings.ini")
    settings.clinic_name = "Kisumu West"
    settings.operator = "Dr A. Mwangi"
    window = MainWindow(settings=settings, model_dirs=dirs)  # its own size: it must fit
    window.show()
    window.start()
    if wait(window.models_changed) == [None]:
        log.error("models did not load: %s", window.messages.message())
        return 1
    window.open_paths([_morning_folder(work)])
    wait(window.batch.batch_finished)
    settle()
    order = window.triage_results()
    viewer = window.open_viewer(order[0])
    wait(viewer.image_ready, 30_000)
    viewer.decision_buttons[Decision.AGREE].click()
    viewer.next_button.click()
    wait(viewer.image_ready, 30_000)
    viewer.note_edit.setText("CT advised; old films requested")
    viewer.decision_buttons[Decision.FOLLOW_UP].click()
    viewer.heat_box.setChecked(True)
    settle(600)
    viewer.grab().save(str(out / f"reading_viewer{suffix}.png"))
    log.info("saved reading_viewer%s.png (%dx%d)", suffix, viewer.width(), viewer.height())
    viewer.close()
    settle()
    screen = QGuiApplication.primaryScreen()
    screen.grabWindow(0).save(str(out / f"reading_screen{suffix}.png"))
    area = screen.availableGeometry()
    log.info(
        "saved reading_screen%s.png: screen %dx%d (logical), window frame %s inside: %s",
        suffix, area.width(), area.height(), window.frameGeometry().getRect(),
        area.contains(window.frameGeometry()),
    )  # fmt: skip
    if not suffix:
        pdf = work / "reports" / window.default_report_path().name
        wait_for = window.export_done
        window.export_report(pdf)
        wait(wait_for)
        if shutil.which("pdftoppm"):
            subprocess.run(
                ["pdftoppm", "-r", "80", "-png", "-f", "1", "-l", "3", str(pdf), str(work / "p")],
                check=True,
            )
            for n, page in enumerate(sorted(work.glob("p-*.png")), start=1):
                shutil.copy(page, out / f"report_page{n}.png")
                log.info("saved report_page%d.png from %s", n, pdf.name)
    window.close()
    app.processEvents()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Screenshot of the Calibrate dialog for the README (``docs/screenshots/calibrate_dialog.png``).

Runs the real dialog with the bundled models on a labelled folder (one sub-folder per label),
waits for the calibration, moves nothing, and grabs the window; ``--during`` also grabs it
while the scans are being screened (in the batch process), as ``calibrate_dialog_running.png``.
Run under Xvfb::

    xvfb-run -a -s "-screen 0 1366x768x24" .venv/bin/python scripts/screenshot_calibrate.py \\
        LABELLED_FOLDER --model tb

The scans are screened into a throw-away results store and no site point is saved.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("screenshot_calibrate")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="labelled folder (sub-folder per label)")
    parser.add_argument("--model", default="tb")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    parser.add_argument("--name", default="Shenzhen-Montgomery-2026-12")
    parser.add_argument(
        "--during", action="store_true", help="also grab the dialog halfway through the run"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    from desktop.engine.inference import Device
    from desktop.engine.registry import default_model_dirs, load_model_set
    from desktop.engine.site_points import SitePointStore
    from desktop.engine.store import ResultsStore
    from desktop.gui.calibrate_dialog import CalibrateDialog

    app = QApplication.instance() or QApplication(sys.argv)
    with tempfile.TemporaryDirectory(prefix="medscreen-shot-") as work:
        os.environ["MEDSCREEN_HOME"] = work
        models = load_model_set(default_model_dirs(), Device.CPU)
        store = ResultsStore(Path(work) / "results.sqlite3")
        dialog = CalibrateDialog(
            models,
            store,
            site_store=SitePointStore(Path(work) / "site_points"),
            operator="QA nurse",
        )
        dialog.set_model(args.model)
        dialog.set_source(args.folder)
        dialog.name_edit.setText(args.name)
        dialog.resize(1180, 760)
        dialog.show()
        args.out.mkdir(parents=True, exist_ok=True)
        loop = QEventLoop()
        dialog.calibrated.connect(lambda _o: QTimer.singleShot(500, loop.quit))
        QTimer.singleShot(120_000, loop.quit)
        grabbed: list[Path] = []

        def grab_halfway(value: int) -> None:
            if args.during and not grabbed and value * 2 >= dialog.progress.maximum() > 1:
                grabbed.append(args.out / "calibrate_dialog_running.png")
                dialog.grab().save(str(grabbed[0]))
                log.info("wrote %s", grabbed[0])

        dialog.progress.valueChanged.connect(grab_halfway)
        dialog.start()
        loop.exec()
        if dialog.calibration is None:
            log.error("no calibration: %s", dialog.status.text())
            return 1
        app.processEvents()
        path = args.out / "calibrate_dialog.png"
        dialog.grab().save(str(path))
        log.info("wrote %s", path)
        dialog.close()
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

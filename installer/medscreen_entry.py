"""Entry script of the frozen app (PyInstaller runs this file as ``__main__``).

Why not point PyInstaller at ``desktop/__main__.py``: the frozen app needs a few things a
source checkout does not — ``multiprocessing.freeze_support()``, usable stdout/stderr in a
windowed Windows exe (where they are ``None``), and the system-library check before Qt loads
(a double-clicked app that aborts silently is the worst failure for a clinic).

It also answers ``medscreen --self-test [FILE...]``: a support and CI check of the *installed*
bundle that needs no trained model and no GUI code — version, bundled assets, ONNX Runtime
providers, no TensorFlow inside, decoding of the given scans (DICOM plugins are found through
entry points, the classic thing a frozen app loses) and a Qt window shown and closed.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import sys
from pathlib import Path

#: Arguments that mean "no window": everything else goes to the GUI.
HEADLESS = frozenset({"classify", "resume", "history", "models", "-h", "--help", "--version"})


def _ensure_streams() -> None:
    """A windowed exe (Windows ``console=False``) has no stdout/stderr; print must not fail."""
    if sys.stdout is None or sys.stderr is None:
        sink = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - lives as long as the app
        if sys.stdout is None:
            sys.stdout = sink
        if sys.stderr is None:
            sys.stderr = sink


def self_test(files: list[str]) -> int:
    """Check the bundle's moving parts; print one line each; 0 when all pass."""
    failures = 0

    def report(ok: bool, what: str) -> None:
        nonlocal failures
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {what}", flush=True)

    from desktop import __version__
    from desktop.engine.paths import assets_dir, bundled_models_dir
    from desktop.engine.registry import discover_manifests

    report(not __version__.startswith("0.0.0"), f"version {__version__}")
    report((assets_dir() / "icons" / "medscreen-256.png").is_file(), f"assets in {assets_dir()}")
    found = discover_manifests([bundled_models_dir()])
    print(f"info models: {sorted(found.manifests) or 'none'} {found.problems or ''}".rstrip())
    if getattr(sys, "frozen", False):  # a development venv has the training stack, rightly
        for banned in ("tensorflow", "keras", "tf2onnx", "onnx", "torch", "pytest"):
            report(importlib.util.find_spec(banned) is None, f"no {banned} in the bundle")

    import onnxruntime as ort

    try:  # the CUDA major version a GPU clinic must install (onnxruntime-gpu builds only)
        from onnxruntime.capi.build_and_package_info import cuda_version
    except ImportError:
        cuda_version = ""
    build = f" (built for CUDA {cuda_version})" if cuda_version else ""
    providers = ", ".join(ort.get_available_providers())
    report(True, f"onnxruntime {ort.__version__}{build}: {providers}")
    from desktop.engine.inference import cuda_unavailable_reason

    print(f"info CUDA: {cuda_unavailable_reason() or 'driver found; worth a try'}")

    from desktop.engine.loading import load_scan

    for name in files:
        try:
            scan = load_scan(Path(name))
        except Exception as exc:
            report(False, f"decode {name}: {type(exc).__name__}: {exc}")
        else:
            report(True, f"decode {name}: {scan.pixels.shape[1]}x{scan.pixels.shape[0]}")

    from desktop.startup_check import check_gui_environment

    problems = check_gui_environment()
    found_all = "; ".join(p.message for p in problems) or "all found"
    report(not problems, f"GUI libraries: {found_all}")
    if not problems:
        from PySide6.QtCore import QTimer
        from PySide6.QtGui import QIcon
        from PySide6.QtWidgets import QApplication, QLabel

        app = QApplication.instance() or QApplication(["medscreen-self-test"])
        icon = QIcon(str(assets_dir() / "icons" / "medscreen-256.png"))
        window = QLabel("MedScreen self-test")
        window.setWindowIcon(icon)
        window.show()
        QTimer.singleShot(300, window.close)
        QTimer.singleShot(400, app.quit)
        app.exec()
        report(not icon.isNull(), f"Qt {app.platformName()}: window shown and closed, icon loads")
    print("self-test passed" if not failures else f"self-test: {failures} check(s) failed")
    return 0 if not failures else 1


def main() -> int:
    """Run the ``medscreen`` command; check the GUI's system libraries first if a window
    is going to open."""
    multiprocessing.freeze_support()
    _ensure_streams()
    args = sys.argv[1:]
    if args[:1] == ["--self-test"]:
        return self_test(args[1:])
    if not HEADLESS.intersection(args):
        from desktop.startup_check import ensure_gui_can_start

        if not ensure_gui_can_start():
            return 3
    from desktop.cli import main as cli_main

    return int(cli_main(args))


if __name__ == "__main__":
    raise SystemExit(main())

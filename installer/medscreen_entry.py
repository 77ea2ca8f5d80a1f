"""Entry script of the frozen app (PyInstaller runs this file as ``__main__``).

Why not point PyInstaller at ``desktop/__main__.py``: the frozen app needs a few things a
source checkout does not — ``multiprocessing.freeze_support()``, usable stdout/stderr in a
windowed Windows exe (where they are ``None``), and the system-library check before Qt loads
(a double-clicked app that aborts silently is the worst failure for a clinic).

It also answers ``medscreen --self-test [FILE...]``: a support and CI check of the *installed*
bundle that needs no GUI code — version, bundled assets, ONNX Runtime providers, no
TensorFlow inside, decoding of the given scans (DICOM plugins are found through entry points,
the classic thing a frozen app loses), the given scans screened in the batch process the
window uses (:func:`check_batch_process`; skipped when no model is installed) and a Qt
window shown and closed.

Why the children are handed over first in :func:`main`: the window's batch runs in a child
process, and so do the DICOM decoder workers; in a frozen app each is *this* executable
started again with ``--medscreen-child batch`` (or ``decoder``;
:mod:`desktop.engine.child_process`, which needs no multiprocessing and so starts no
resource tracker). :func:`main` hands such a start to ``child_process.main`` right after
``multiprocessing.freeze_support()`` (kept for any multiprocessing child a library may
start: it recognises multiprocessing's arguments, runs that child and exits); anything
before them (the GUI's library check, Qt) would run again in every child.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

#: The argument that starts this executable as one of the app's child processes (the same
#: as desktop.engine.child_process.CHILD_FLAG; a test keeps the two equal; not imported,
#: so nothing of the app loads before a child is handed over).
CHILD_FLAG = "--medscreen-child"

#: Options that mean "no window" beside the command line's commands (:func:`_headless`).
_HEADLESS_OPTIONS = frozenset({"-h", "--help", "--version"})


def _headless(args: list[str]) -> bool:
    """Whether ``args`` ask for no window: a command of the command line but ``gui`` (from
    desktop.launch, which imports only the standard library; imported here, after
    freeze_support()), or help or version. A list kept here by hand named four commands and
    missed export, calibrate and site, which then had to pass the window's library check."""
    from desktop.launch import COMMANDS

    return bool(((COMMANDS - {"gui"}) | _HEADLESS_OPTIONS).intersection(args))


def _ensure_streams() -> None:
    """A windowed exe (Windows ``console=False``) has no stdout/stderr; print must not fail."""
    if sys.stdout is None or sys.stderr is None:
        sink = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - lives as long as the app
        if sys.stdout is None:
            sys.stdout = sink
        if sys.stderr is None:
            sys.stderr = sink


#: Seconds the self-test's batch (a few scans) may take, child start-up included, before the
#: child is killed and the check fails (a few seconds on a quiet 2-core PC).
BATCH_CHECK_TIMEOUT_S = 180.0

#: Seconds more for a child that never started: then the self-test ends itself (exit 1).
STUCK_GRACE_S = 10.0


def check_batch_process(
    files: list[str],
    report: Callable[[bool, str], None],
    model_dirs: list[Path] | None = None,
    timeout_s: float = BATCH_CHECK_TIMEOUT_S,
) -> None:
    """Screen ``files`` in the window's batch process, with the installed models, into a
    throw-away store, and report what came back.

    Why a self-test needs this: in a frozen app the batch child is this executable started
    again (``--medscreen-child batch``); an entry that does not hand it over first, a module
    PyInstaller did not collect or models the child cannot find all break the window's
    batch, and nothing else shows it before a clinic drops a folder. ``model_dirs`` defaults
    to where the app looks (the bundled models, then the user's). A child that has not
    finished after ``timeout_s`` is killed and the check fails; one that never took its job
    (a frozen build whose entry does not hand children over first: the child runs the app's
    ``main`` instead, and this process may block handing it the job) ends the self-test with
    status 1. The checks: the batch ran in another process (its pid is the one the store
    recorded for the batch, not this process's), every scan was screened and committed
    there, the batch completed, and the child exited with status 0.
    """
    from desktop.engine.batch_process import BatchProcess
    from desktop.engine.errors import BatchError
    from desktop.engine.registry import default_model_dirs, discover_manifests, plan_model_set
    from desktop.engine.runner import run_to_end
    from desktop.engine.store import BatchStatus, ResultsStore

    dirs = model_dirs if model_dirs is not None else default_model_dirs()
    if not discover_manifests(dirs).manifests:
        print("info batch process: not checked, no models installed")
        return
    try:
        models = plan_model_set(dirs)  # as the window does: verified here, opened in the child
    except BatchError as exc:
        report(False, f"batch process: the models do not load: {exc}")
        return
    with tempfile.TemporaryDirectory(prefix="medscreen-self-test-") as folder:
        store = ResultsStore(Path(folder) / "results.sqlite3")
        try:
            process = BatchProcess(models, store.path, files)
            ended, late = threading.Event(), threading.Event()

            def watchdog() -> None:
                if ended.wait(timeout_s):
                    return
                late.set()
                while not ended.wait(0.1):  # until the child exists and is gone
                    process.kill()
                    if process.pid is None and not ended.wait(STUCK_GRACE_S):
                        # No child to kill yet (it could not even be started): the
                        # self-test must not wait on it for ever, so say so and stop.
                        report(False, f"batch process: did not start in {timeout_s:g} s")
                        print("self-test stopped: the batch process never started")
                        sys.stdout.flush()
                        os._exit(1)

            threading.Thread(target=watchdog, name="self-test-watchdog", daemon=True).start()
            try:
                summary = run_to_end(process.run())
            finally:
                ended.set()
            info = store.batch(summary.batch_id)
            rows = sum(1 for _ in store.batch_results(summary.batch_id, thumbnails=False))
        except (BatchError, OSError) as exc:
            why = f" (not finished after {timeout_s:g} s)" if late.is_set() else ""
            report(False, f"batch process: {type(exc).__name__}: {exc}{why}")
            return
        finally:
            store.close()
    me = os.getpid()
    child = process.pid
    report(
        child is not None and child != me and info is not None and info.pid == child,
        f"batch process: pid {child}, this process {me}, batch recorded by pid "
        f"{info.pid if info else None}",
    )
    report(
        rows == summary.total == len(files)
        and info is not None
        and info.status == BatchStatus.COMPLETED,
        f"batch process: screened={summary.total} ok={summary.ok} "
        f"not_chest_xray={summary.not_chest_xray} errors={summary.errors} rows={rows} "
        f"status={info.status if info else None}; {summary.device}",
    )
    report(process.exitcode == 0, f"batch process: exit status {process.exitcode}")


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
    if files:
        check_batch_process(files, report)

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
    # Streams first (a child of a windowed Windows exe may have none either; it cannot
    # print a traceback without them), then a multiprocessing child runs and exits in
    # freeze_support(), and the app's own children (batch process, decoder worker) in
    # child_process.main, before any GUI code.
    _ensure_streams()
    multiprocessing.freeze_support()
    args = sys.argv[1:]
    if args[:1] == [CHILD_FLAG]:
        from desktop.engine.child_process import main as child_main

        return child_main(args[1:])
    if args[:1] == ["--self-test"]:
        return self_test(args[1:])
    if not _headless(args):
        from desktop.startup_check import ensure_gui_can_start

        if not ensure_gui_can_start():
            return 3
    from desktop.launch import main as launch_main  # the window without desktop.cli's imports

    return int(launch_main(args))


if __name__ == "__main__":
    raise SystemExit(main())

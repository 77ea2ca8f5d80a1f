"""Resident memory of the window at rest with its models verified: as shipped, and as before.

Since 2 December the window only verifies and plans the model set
(:func:`desktop.engine.registry.plan_model_set`); its batch process opens the ONNX Runtime
sessions. Before, the window opened them itself (``load_model_set``) and never ran them.
This starts the real MainWindow (offscreen, the shipped models) in a fresh process per run,
waits until its models are ready and the event loop is idle, and prints the process's
``VmRSS`` and ``VmHWM``; the ``sessions`` variant then opens the same plan's sessions in the
window's process (``open_model_set``: exactly what the window held before), so the two
figures of a pair differ by what the window no longer holds. Runs alternate
(shipped, sessions, shipped, ...) so machine load falls on both alike.

Usage: ``python benchmarks/bench_window_rest.py [--pairs 3]``. Linux only (``/proc``). It
prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_WINDOW = """
import gc, json, sys, tempfile, time
from pathlib import Path
from PySide6.QtWidgets import QApplication
import desktop.gui.app
app = QApplication([])
from desktop.engine.store import ResultsStore
from desktop.gui.main_window import MainWindow
from desktop.gui.settings import AppSettings
tmp = Path(tempfile.mkdtemp())
window = MainWindow(settings=AppSettings(tmp / "settings.ini"),
                    store=ResultsStore(tmp / "results.sqlite3"),
                    model_dirs=[Path("assets/models")])
window.show()
got = []
window.models_changed.connect(got.append)
window.start()
deadline = time.monotonic() + 120
while not got and time.monotonic() < deadline:
    app.processEvents(); time.sleep(0.01)
if SESSIONS and got and got[0] is not None:
    from desktop.engine.registry import open_model_set
    held = open_model_set(got[0])  # what the window held before: the sessions, unused
for _ in range(100):  # one second of an idle event loop
    app.processEvents(); time.sleep(0.01)
gc.collect()
status = {k: int(v.split()[0]) / 1024 for k, v in
          (line.split(":", 1) for line in open("/proc/self/status"))
          if k in ("VmRSS", "VmHWM")}
print(json.dumps({"ready": bool(got and got[0] is not None),
                  "onnxruntime": "onnxruntime" in sys.modules, **status}))
window.close()
"""


def _run(sessions: bool, home: Path) -> dict[str, float]:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", MEDSCREEN_HOME=str(home))
    code = _WINDOW.replace("SESSIONS", repr(sessions))
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()}")
    shipped: list[float] = []
    before: list[float] = []
    with tempfile.TemporaryDirectory() as home:
        for pair in range(args.pairs):
            for sessions in (False, True):
                seen = _run(sessions, Path(home))
                (before if sessions else shipped).append(seen["VmRSS"])
                name = "window + sessions (before)" if sessions else "window as shipped"
                print(
                    f"pair {pair + 1} {name:28s} VmRSS {seen['VmRSS']:6.1f} MB  "
                    f"VmHWM {seen['VmHWM']:6.1f} MB  onnxruntime imported: "
                    f"{seen['onnxruntime']}  models ready: {seen['ready']}",
                    flush=True,
                )
    mid = sorted(shipped)[len(shipped) // 2]
    mid_before = sorted(before)[len(before) // 2]
    print(
        f"median VmRSS at rest, models ready: window as shipped {mid:.1f} MB, with the "
        f"sessions it held before {mid_before:.1f} MB: {mid_before - mid:.1f} MB less "
        f"({(mid_before - mid) / mid_before:.0%}); load average at end: {os.getloadavg()}"
    )


if __name__ == "__main__":
    main()

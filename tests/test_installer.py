"""The shipped Linux package, end to end: build, install with dpkg, use, uninstall.

Why here and not only by hand: a frozen app loses things a source checkout has for free —
entry-point plugins (pydicom's JPEG 2000 decoder), package metadata (the version), Qt
plugins, data files — and the failures only show in the installed program. So this builds
the bundle and the .deb with ``installer/build``, installs it with ``dpkg -i`` and drives the
*installed* ``/usr/bin/medscreen``: self-test (decoding, Qt, no TensorFlow), headless
screening of ``assets/samples``, the window opened offscreen and closed, the start-up check
naming a missing display; then ``dpkg --purge`` leaves the machine as it was.

Slow (about 3–5 minutes on 2 cores, mostly PyInstaller and packing). Needs Linux, dpkg,
PyInstaller (the ``bundle`` extra) and root for dpkg; each missing piece skips with its
reason. ``MEDSCREEN_DEB=/path/to/medscreen_*.deb`` tests a package built earlier (a separate
CI step) instead of building one.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "assets" / "samples"
DICOM = REPO / "tests" / "data" / "dicom"
PREFIX = Path("/opt/medscreen")
LAUNCHER = Path("/usr/bin/medscreen")
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
NAME, VERSION = PROJECT["name"], PROJECT["version"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the .deb is Linux only"),
    pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is not installed"),
]


def _run(
    cmd: list[str], timeout: float = 300, env: dict[str, str] | None = None, **kw: object
) -> subprocess.CompletedProcess[str]:
    """Run a command with text output captured; never raises on a non-zero exit."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=full_env, check=False, **kw
    )


def _installed_version() -> str | None:
    result = _run(["dpkg-query", "-W", "-f=${Status} ${Version}", NAME])
    if result.returncode != 0 or "installed" not in result.stdout.split(" ")[:3]:
        return None
    return result.stdout.rsplit(" ", 1)[-1]


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The .deb under test: MEDSCREEN_DEB, or one built now with installer/build (into a
    temporary folder, so a developer's dist/ and build/ are left alone)."""
    prebuilt = os.environ.get("MEDSCREEN_DEB")
    if prebuilt:
        path = Path(prebuilt)
        assert path.is_file(), f"MEDSCREEN_DEB={prebuilt} does not exist"
        return path
    if importlib.util.find_spec("PyInstaller") is None:
        pytest.skip("PyInstaller is not installed (pip install -e '.[bundle]')")
    out = tmp_path_factory.mktemp("installer")
    dist, work = out / "dist", out / "build"
    result = _run(
        [str(REPO / "installer" / "build"), "--no-tar"],
        timeout=1800,
        env={
            "PYTHON": sys.executable,
            "DEB_COMPRESSION": "gzip",  # 40 s instead of 7 min for xz
            "DIST_DIR": str(dist),
            "BUILD_DIR": str(work),
        },
        cwd=REPO,
    )
    tail = f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert result.returncode == 0, f"build failed:\n{tail}"
    debs = sorted(dist.glob(f"{NAME}_{VERSION}_*.deb"))
    assert debs, f"no .deb in {dist}:\n{result.stdout[-2000:]}"
    # keep only the package: the bundle and the staging trees are 1.5 GB
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(dist / NAME, ignore_errors=True)
    return debs[-1]


@pytest.fixture(scope="module")
def installed(deb: Path) -> Iterator[Path]:
    """Install the package for the tests of this module, and remove it afterwards."""
    if os.geteuid() != 0:
        pytest.skip("installing a .deb needs root (dpkg -i)")
    if shutil.which("dpkg") is None:
        pytest.skip("dpkg is not available")
    previous = _installed_version()
    if previous is not None:
        pytest.skip(
            f"{NAME} {previous} is already installed here; not replacing it "
            f"(remove it with 'dpkg -r {NAME}' to run this test)"
        )
    result = _run(["dpkg", "-i", str(deb)], timeout=600)
    try:
        assert result.returncode == 0, (
            "dpkg -i failed (missing Depends? scripts/bootstrap installs them):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
        yield LAUNCHER
    finally:
        removed = _run(["dpkg", "--purge", NAME], timeout=600)  # -r, and forget it entirely
        assert removed.returncode == 0, removed.stderr
        assert not PREFIX.exists(), f"{PREFIX} left behind after removal"
        assert not LAUNCHER.exists()


def test_package_metadata_and_layout(deb: Path) -> None:
    info = _run(["dpkg-deb", "--field", str(deb), "Package", "Version", "Depends"]).stdout
    assert f"Package: {NAME}" in info and f"Version: {VERSION}" in info
    for lib in ("libgl1", "libegl1", "libxkbcommon-x11-0", "libxcb-cursor0", "fonts-dejavu-core"):
        assert lib in info
    listing = _run(["dpkg-deb", "--contents", str(deb)], timeout=120).stdout
    for path in (
        "./opt/medscreen/medscreen",
        "./usr/bin/medscreen",
        "./usr/share/applications/medscreen.desktop",
        "./usr/share/icons/hicolor/48x48/apps/medscreen.png",
        "./usr/share/icons/hicolor/scalable/apps/medscreen.svg",
        "./opt/medscreen/_internal/assets/icons/medscreen-256.png",
    ):
        assert f" {path}\n" in listing + "\n", f"{path} missing from the package"
    for banned in ("tensorflow", "/keras/", "tf2onnx", "/onnx/", "_pytest", "providers_tensorrt"):
        assert banned not in listing, f"{banned} must not be in the package"


def test_installed_files(installed: Path) -> None:
    assert os.access(installed, os.X_OK)
    assert (PREFIX / "_internal" / "assets" / "models").is_dir()
    desktop = Path("/usr/share/applications/medscreen.desktop")
    text = desktop.read_text()
    assert "Icon=medscreen" in text and "Categories=Science;MedicalSoftware;" in text
    if shutil.which("desktop-file-validate"):
        result = _run(["desktop-file-validate", str(desktop)])
        assert result.returncode == 0, result.stdout + result.stderr


def test_version(installed: Path) -> None:
    result = _run([str(installed), "--version"], timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"MedScreen {VERSION}"


def test_self_test_decodes_dicom_and_opens_qt(installed: Path) -> None:
    """JPEG 2000 DICOM needs pylibjpeg-openjpeg, found through entry points: the first thing
    a frozen app loses."""
    files = [DICOM / "RG3_J2KI.dcm", DICOM / "CR-MONO1-10-chest.dcm"]
    files += sorted(SAMPLES.glob("*.png"))
    result = _run(
        [str(installed), "--self-test", *map(str, files)],
        timeout=180,
        env={"QT_QPA_PLATFORM": "offscreen"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "self-test passed" in result.stdout
    assert re.search(r"ok\s+decode .*RG3_J2KI\.dcm: \d+x\d+", result.stdout)
    assert "ok   no tensorflow in the bundle" in result.stdout


def test_self_test_screens_in_the_batch_process(installed: Path, tmp_path: Path) -> None:
    """The window's batch runs in a child that ``spawn`` starts by re-executing the frozen
    program (freeze_support in the entry, the bundled modules, the bundled models found from
    the child). ``--self-test SCAN...`` screens the scans that way with the shipped models;
    the JPEG 2000 DICOM is decoded by a worker that the batch child itself spawns."""
    if not {"modality", "finding"} <= _shipped_model_roles():
        pytest.skip("assets/models does not yet hold a modality and a finding model")
    files = [*_sample_scans(), DICOM / "RG3_J2KI.dcm"]
    result = _run(
        [str(installed), "--self-test", *map(str, files)],
        timeout=300,
        env={"QT_QPA_PLATFORM": "offscreen", "MEDSCREEN_HOME": str(tmp_path / "home")},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    pids = re.search(
        r"ok   batch process: pid (\d+), this process (\d+), batch recorded by pid (\d+)", out
    )
    assert pids is not None, out
    child, parent, recorded = (int(g) for g in pids.groups())
    assert child != parent and recorded == child, out
    counts = re.search(r"ok   batch process: (screened=[^;\n]*); (CPU|GPU) ", out)
    assert counts is not None, out
    # 4 chest X-rays (one a DICOM); the MedNIST hand and head CT and the J2K DICOM, which
    # is not a chest X-ray, refused by the gate
    assert counts.group(1) == "screened=7 ok=4 not_chest_xray=3 errors=0 rows=7 status=completed"
    assert "ok   batch process: exit status 0" in out


def test_window_screens_a_dropped_folder_in_its_batch_process(
    installed: Path, tmp_path: Path
) -> None:
    """What a clinic does: open the installed app with a folder (the same path as a drop),
    offscreen. The window screens it in its batch process; the rows are in the user's
    store, committed by that child (the store records the pid of the process that ran the
    batch), and the window reports the batch finished. Nothing in the app is test-only:
    the test watches the store and the log, then ends the window."""
    from desktop.engine.processes import pid_alive
    from desktop.engine.store import BatchStatus, ResultsStore

    if not {"modality", "finding"} <= _shipped_model_roles():
        pytest.skip("assets/models does not yet hold a modality and a finding model")
    home = tmp_path / "home"
    folder = tmp_path / "dropped"
    shutil.copytree(SAMPLES, folder, ignore=shutil.ignore_patterns("*.md"))
    env = {
        **os.environ,
        "QT_QPA_PLATFORM": "offscreen",
        "MEDSCREEN_HOME": str(home),
        "MEDSCREEN_NO_OPEN": "1",  # never hand a file to another program
    }
    console = (tmp_path / "console.txt").open("w", encoding="utf-8")  # not a pipe: never full
    window = subprocess.Popen(
        [str(installed), str(folder)], stdout=console, stderr=subprocess.STDOUT, env=env
    )
    db = home / "results.sqlite3"
    finished = None
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and window.poll() is None:
            time.sleep(1.0)
            if not db.exists():
                continue
            store = ResultsStore(db)
            try:
                done = [b for b in store.batches() if b.status == BatchStatus.COMPLETED]
                if done:
                    finished = done[0]
                    results = list(store.batch_results(finished.id, thumbnails=False))
                    break
            finally:
                store.close()
        console.flush()
        said = (tmp_path / "console.txt").read_text(encoding="utf-8")[-3000:]
        assert window.poll() is None, f"the window exited early:\n{said}"
        assert finished is not None, "no batch finished in 240 s"
        log_text = (home / "logs" / "medscreen.log").read_text(encoding="utf-8")
        started = re.search(r"batch process (\d+) started", log_text)
        assert started is not None, log_text[-3000:]
        assert finished.pid == int(started.group(1)) != window.pid
        # The child commits the batch's end, then exits and the window reaps it: a moment
        # later, not at once (a reaped child's pid is gone; a zombie's is still "alive").
        ended_by = time.monotonic() + 30
        while pid_alive(finished.pid):
            assert time.monotonic() < ended_by, "the batch process outlived its batch by 30 s"
            time.sleep(0.2)
        statuses = sorted((Path(r.file).name, r.status.value) for r in results)
        assert statuses == sorted(
            (p.name, "not_chest_xray" if p.name.startswith("not_chest") else "ok")
            for p in _sample_scans()
        )
        deadline = time.monotonic() + 30  # the window logs the end after the last row
        while "Finished: 4 screened, 2 not chest X-rays, 0 errors" not in log_text:
            assert time.monotonic() < deadline, log_text[-3000:]
            time.sleep(0.5)
            log_text = (home / "logs" / "medscreen.log").read_text(encoding="utf-8")
    finally:
        window.terminate()
        try:
            window.wait(30)
        except subprocess.TimeoutExpired:
            window.kill()
            window.wait(10)
        console.close()


def _sample_scans() -> list[Path]:
    return sorted(p for p in SAMPLES.iterdir() if p.suffix.lower() in {".png", ".jpeg", ".dcm"})


def _read_results(out: Path) -> dict[str, dict[str, str]]:
    with (out / "results.csv").open(newline="", encoding="utf-8-sig") as fh:  # Excel BOM
        return {Path(row["file"]).name: row for row in csv.DictReader(fh)}


def test_classify_mechanics_with_stand_in_models(
    installed: Path, stand_in_models: Path, tmp_path: Path
) -> None:
    """The whole pipeline in the frozen app (discovery, decoding, ONNX Runtime, store, CSV),
    independent of which trained models exist yet."""
    out = tmp_path / "out"
    result = _run(
        [str(installed), "classify", str(SAMPLES), "--out", str(out), "--models",
         str(stand_in_models), "--device", "cpu", "--quiet", "--report", "pdf,json"],
        timeout=300,
        # the stand-ins are signed with this test process's throw-away key, which the frozen
        # app does not trust: the developer option loads them (and marks the reports)
        env={"MEDSCREEN_ALLOW_UNSIGNED_MODELS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    rows = _read_results(out)
    assert sorted(rows) == sorted(p.name for p in _sample_scans())
    assert all(row["status"] in {"ok", "not_chest_xray"} for row in rows.values()), rows
    # reportlab with the bundled DejaVu fonts, and thumbnails through Pillow, in the bundle
    pdf = next(out.glob("medscreen-*.pdf")).read_bytes()  # the default report name
    assert pdf.startswith(b"%PDF") and b"DejaVu" in pdf
    assert "UNSIGNED MODELS" in result.stderr  # the frozen app verifies packages too


def _shipped_model_roles() -> set[str]:
    import json

    roles = set()
    for manifest in (REPO / "assets" / "models").glob("*.json"):
        try:
            roles.add(json.loads(manifest.read_text())["role"])
        except (ValueError, KeyError):
            continue
    return roles


@pytest.mark.skipif(
    not {"modality", "finding"} <= _shipped_model_roles(),
    reason="assets/models does not yet hold a modality and a finding model",
)
def test_classify_samples_with_shipped_models(installed: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _run(
        [str(installed), "classify", str(SAMPLES), "--out", str(out), "--device", "cpu",
         "--report", "pdf"],
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "device: CPU" in result.stderr
    rows = _read_results(out)
    assert sorted(rows) == sorted(p.name for p in _sample_scans())
    for name, row in rows.items():
        expected = "not_chest_xray" if name.startswith("not_chest") else "ok"
        assert row["status"] == expected, f"{name}: {row['status']} ({row['reason']})"
    assert next(out.glob("medscreen-*.pdf")).stat().st_size > 10_000


@pytest.mark.parametrize("platform", ["offscreen", "xcb"])
def test_window_opens_and_closes(installed: Path, platform: str) -> None:
    """MEDSCREEN_SMOKE=1: desktop.gui.app quits once the window has been shown and painted.
    ``xcb`` runs under Xvfb: the real X11 plugin with the system's xcb and GL libraries."""
    cmd = [str(installed)]
    if platform == "xcb":
        if shutil.which("xvfb-run") is None:
            pytest.skip("xvfb-run is not installed (apt install xvfb xauth)")
        cmd = ["xvfb-run", "-a", "-s", "-screen 0 1280x800x24", *cmd]
    result = _run(cmd, timeout=180, env={"QT_QPA_PLATFORM": platform, "MEDSCREEN_SMOKE": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"shown_after_s=\d+\.\d+", result.stdout), result.stdout + result.stderr


def test_no_display_is_named_not_a_silent_abort(installed: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.pop("QT_QPA_PLATFORM", None)
    result = subprocess.run(
        [str(installed)], capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert result.returncode == 3, result.stdout + result.stderr
    assert "no graphical display" in result.stderr
    assert "medscreen classify" in result.stderr


# Hides libraries from one process: a private mount namespace in which the system library
# folder is replaced by symlinks to everything except the hidden files. Nothing outside
# that process sees a change (other jobs on the machine keep running).
_HIDE_LIBS = r"""
set -e
L=/usr/lib/x86_64-linux-gnu
work=$(mktemp -d)
mkdir "$work/orig" "$work/fake"
mount --bind "$L" "$work/orig"
for f in "$work"/orig/*; do
  b=${f##*/}
  case "$b" in libxcb-cursor.so*|libxkbcommon-x11.so*) continue ;; esac
  ln -s "$f" "$work/fake/$b"
done
mount --bind "$work/fake" "$L"
exec "$@"
"""


def test_missing_library_is_named_not_a_silent_abort(installed: Path) -> None:
    """With libxcb-cursor0 and libxkbcommon-x11-0 gone, Qt alone would abort with "could not
    load the Qt platform plugin"; the start-up check names both packages instead."""
    if shutil.which("unshare") is None or not Path("/usr/lib/x86_64-linux-gnu").is_dir():
        pytest.skip("needs unshare and a Debian x86-64 library layout")
    probe = _run(["unshare", "-m", "true"])
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private mount namespace here: {probe.stderr.strip()}")
    env = {"DISPLAY": ":4242", "QT_QPA_PLATFORM": "xcb"}  # no server: dialogs fail fast
    result = _run(["unshare", "-m", "sh", "-c", _HIDE_LIBS, "hide", str(installed)], env=env)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "libxcb-cursor.so.0" in result.stderr
    assert "sudo apt install libxcb-cursor0 libxkbcommon-x11-0" in result.stderr


def _package_of(library: Path) -> str | None:
    """The installed Debian package owning ``library`` (following usrmerge symlinks)."""
    for candidate in {str(library), str(library.resolve())} | {
        str(library.resolve()).replace("/usr/lib/", "/lib/", 1)
    }:
        result = _run(["dpkg", "-S", candidate])
        if result.returncode == 0:
            return result.stdout.split(":", 1)[0].strip()
    return None


def _depends_closure(packages: set[str]) -> set[str]:
    """``packages`` and everything they depend on, per the installed packages' metadata."""
    seen: set[str] = set()
    todo = list(packages)
    while todo:
        pkg = todo.pop()
        if pkg in seen:
            continue
        seen.add(pkg)
        deps = _run(["dpkg-query", "-W", "-f=${Depends},${Pre-Depends}", pkg]).stdout
        for alternative in deps.split(","):
            name = alternative.split("|")[0].strip().split(" ")[0].split(":")[0]
            if name:
                todo.append(name)
    return seen


def test_depends_cover_qt_plugins(installed: Path) -> None:
    """Every system library the bundled Qt platform plugins need comes from Depends."""
    depends = _run(["dpkg-query", "-W", "-f=${Depends}", NAME]).stdout
    declared = {d.strip().split(" ")[0] for d in depends.split(",") if d.strip()}
    allowed = _depends_closure(declared)
    internal = PREFIX / "_internal"
    plugins = [
        internal / "PySide6/Qt/plugins/platforms/libqxcb.so",
        internal / "PySide6/Qt/plugins/platforms/libqwayland.so",
        *sorted((internal / "PySide6/Qt/plugins/xcbglintegrations").glob("*.so")),
    ]
    missing: dict[str, str] = {}
    for plugin in plugins:
        if not plugin.exists():
            continue
        ldd = _run(["ldd", str(plugin)], env={"LD_LIBRARY_PATH": str(internal)}).stdout
        for line in ldd.splitlines():
            match = re.match(r"\s*(\S+) => (/\S+)", line)
            if not match or match.group(2).startswith(str(PREFIX)):
                continue
            owner = _package_of(Path(match.group(2)))
            if owner is None:
                continue  # not from a package (e.g. a driver installed by hand)
            owner = owner.split(":")[0]
            if owner not in allowed:
                missing[match.group(1)] = owner
    assert not missing, f"system libraries not covered by Depends: {missing}"

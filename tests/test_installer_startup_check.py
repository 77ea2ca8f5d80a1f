"""Fast checks of the packaging sources: the start-up library check, the icon set, the
Debian dependency list and the desktop entry (the slow end-to-end test is test_installer.py).
"""

from __future__ import annotations

import os
import re
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


# -- the frozen entry's batch-process self-test (run from source here; test_installer.py runs
# it in the installed, frozen app) ------------------------------------------------------------


def _entry_module():
    """installer/medscreen_entry.py, imported by path (it is a script, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "medscreen_entry", REPO / "installer" / "medscreen_entry.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _batch_self_test(files: list[Path], model_dirs: list[Path]) -> list[tuple[bool, str]]:
    lines: list[tuple[bool, str]] = []
    _entry_module().check_batch_process(
        [str(f) for f in files], lambda ok, what: lines.append((ok, what)), model_dirs
    )
    return lines


def test_self_test_screens_real_scans_in_the_batch_process(stand_in_models: Path) -> None:
    """The check the installed app runs (``medscreen --self-test SCAN...``), from source:
    real scans screened in a child process, committed to the store by that child."""
    data = REPO / "tests" / "data"
    files = [
        *sorted((data / "tb" / "normal").glob("*.png"))[:2],
        *sorted((data / "mednist" / "HeadCT").glob("*"))[:1],
        data / "dicom" / "RG3_J2KI.dcm",  # JPEG 2000: decoded by a worker the child starts
        data / "dicom" / "CR-MONO1-10-chest.dcm",
    ]
    lines = _batch_self_test(files, [stand_in_models])
    assert [ok for ok, _ in lines] == [True, True, True], lines
    pids = re.fullmatch(
        r"batch process: pid (\d+), this process (\d+), batch recorded by pid (\d+)", lines[0][1]
    )
    assert pids is not None, lines[0]
    child, me, recorded = (int(g) for g in pids.groups())
    assert me == os.getpid() and child != me and recorded == child
    counts_text, device = lines[1][1].removeprefix("batch process: ").split("; ", 1)
    counts = dict(kv.split("=") for kv in counts_text.split())
    assert device.startswith(("CPU", "GPU")), device
    assert counts["screened"] == counts["rows"] == "5" and counts["status"] == "completed"
    assert int(counts["ok"]) + int(counts["not_chest_xray"]) == 5 and counts["errors"] == "0"
    assert int(counts["not_chest_xray"]) >= 1  # the dark head CT, by the stand-in gate
    assert lines[2] == (True, "batch process: exit status 0")


def test_self_test_reports_a_batch_process_that_fails(stand_in_models: Path, tmp_path: Path):
    """A model file changed after loading is refused in the child: the check fails and says
    why (it is not a check that can only pass)."""
    import shutil

    from desktop.engine import registry

    folder = tmp_path / "models"
    shutil.copytree(stand_in_models, folder)
    real_plan = registry.plan_model_set

    def plan_then_damage(dirs):  # the window verified the set, then the file changed
        models = real_plan(dirs)
        onnx = folder / models.modality.manifest.file
        onnx.write_bytes(onnx.read_bytes() + b"\0")
        return models

    scan = sorted((REPO / "tests" / "data" / "tb" / "normal").glob("*.png"))[0]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(registry, "plan_model_set", plan_then_damage)
        lines = _batch_self_test([scan], [folder])
    assert len(lines) == 1 and lines[0][0] is False
    assert lines[0][1].startswith("batch process: BatchProcessError:")
    assert "modality" in lines[0][1] or ".onnx" in lines[0][1]


def test_self_test_without_models_skips_the_batch_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _batch_self_test([REPO / "tests" / "data" / "dicom" / "RG3_J2KI.dcm"], [tmp_path])
    assert lines == []
    assert "info batch process: not checked, no models installed" in capsys.readouterr().out


def test_frozen_entry_hands_spawned_children_over_before_anything_else() -> None:
    """In the frozen app, every child process is the entry run again (the app's own with
    ``--medscreen-child``, a library's multiprocessing child with multiprocessing's
    arguments); both are handed over before the GUI's library check and before any import
    of the app, or every batch child would redo them (or open a window). Checked on the
    source: the first calls in main()."""
    import ast

    tree = ast.parse((REPO / "installer" / "medscreen_entry.py").read_text(encoding="utf-8"))
    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
    body = [
        s for s in main.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
    ]
    first = [ast.unparse(stmt) for stmt in body[:2]]
    assert first == ["_ensure_streams()", "multiprocessing.freeze_support()"]
    assert ast.unparse(body[2]) == "args = sys.argv[1:]"
    assert ast.unparse(body[3]).startswith("if args[:1] == [CHILD_FLAG]:\n")
    top_imports = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top_imports |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            top_imports.add(node.module or "")
    assert "multiprocessing" in top_imports
    assert not any(name.startswith(("desktop", "PySide6")) for name in top_imports)


def test_the_entry_starts_the_apps_children_as_the_frozen_app_does(
    stand_in_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the frozen app the batch process is the app's executable again with
    ``--medscreen-child batch`` (no multiprocessing, so no resource tracker): the entry must
    hand that to the child's code before anything else. Here the entry script plays the
    executable (the command the frozen app uses, with the script in front), and the
    self-test's batch check screens real scans through it; a wrong argument is refused."""
    from desktop.engine import child_process

    entry = _entry_module()
    assert entry.CHILD_FLAG == child_process.CHILD_FLAG
    script = str(REPO / "installer" / "medscreen_entry.py")
    started: list[list[str]] = []

    def as_frozen(kind: str) -> list[str]:
        started.append([sys.executable, script, child_process.CHILD_FLAG, kind])
        return started[-1]

    monkeypatch.setattr(child_process, "command", as_frozen)
    scans = sorted((REPO / "tests" / "data" / "tb" / "normal").glob("*.png"))[:2]
    lines = _batch_self_test(scans, [stand_in_models])
    assert [ok for ok, _ in lines] == [True, True, True], lines
    assert started == [[sys.executable, script, "--medscreen-child", "batch"]]
    assert "screened=2" in lines[1][1] and "rows=2" in lines[1][1]
    wrong = subprocess.run(
        [sys.executable, script, "--medscreen-child", "gui"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong.returncode == 2
    assert wrong.stderr.strip() == "medscreen: no child process called 'gui'"


def test_self_test_kills_a_batch_process_that_does_not_finish(stand_in_models: Path) -> None:
    """A child that never answers (a frozen build without freeze_support() first runs the
    app's main instead) must fail the check within its time, not hang the self-test. Here the
    time is shorter than any interpreter's start-up, so the child is killed while starting."""
    scan = sorted((REPO / "tests" / "data" / "tb" / "normal").glob("*.png"))[0]
    lines: list[tuple[bool, str]] = []
    _entry_module().check_batch_process(
        [str(scan)], lambda ok, what: lines.append((ok, what)), [stand_in_models], timeout_s=0.05
    )
    assert len(lines) == 1 and lines[0][0] is False, lines
    assert lines[0][1].startswith("batch process: BatchProcessError: the screening process")
    assert "killed by SIGKILL" in lines[0][1] and lines[0][1].endswith(
        "(not finished after 0.05 s)"
    )


@pytest.mark.parametrize(
    ("args", "headless"),
    [
        (["export", "abc123", "--out", "x"], True),
        (["calibrate", "folder"], True),
        (["site", "list"], True),
        (["classify", "folder"], True),
        (["--version"], True),
        ([], False),
        (["gui"], False),
        (["scan.png"], False),
    ],
)
def test_the_frozen_entry_checks_the_windows_libraries_only_for_the_window(
    args: list[str], headless: bool
) -> None:
    """Every command of the command line skips the window's system-library check (export,
    calibrate and site went through it: on a server without Qt's libraries they exited 3)."""
    assert _entry_module()._headless(args) is headless

"""The ``medscreen`` command line, end to end on real scans with the ONNX stand-in models."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from desktop.cli import main
from desktop.engine.registry import load_model_set
from desktop.engine.reports import ReportContext, default_stem
from desktop.engine.results import ThresholdChoice
from tests.conftest import DATA, REPO, csv_rows


def _classify(tmp_path: Path, models: Path, *args: str) -> tuple[int, Path]:
    out = tmp_path / "out"
    code = main(
        [
            "classify",
            *args,
            "--out",
            str(out),
            "--models",
            str(models),
            "--db",
            str(tmp_path / "r.sqlite3"),
            "--quiet",
        ]
    )
    return code, out


def test_classify_writes_one_row_per_file(tmp_path, stand_in_models, mixed_folder, capsys):
    code, out = _classify(tmp_path, stand_in_models, str(mixed_folder))
    assert code == 0
    rows = csv_rows(out / "results.csv")
    assert len(rows) == 44
    for column in (
        "file",
        "sha256",
        "status",
        "reason",
        "modality",
        "modality_score",
        "tb_score",
        "tb_flag",
        "pneumonia_score",
        "pneumonia_flag",
    ):
        assert column in rows[0]
    for row in rows:
        assert row["status"] in ("ok", "not_chest_xray", "error")
        if row["status"] == "ok":
            assert 0.0 <= float(row["tb_score"]) <= 1.0
            assert row["tb_flag"] in ("yes", "no")
            assert (row["tb_flag"] == "yes") == (float(row["tb_score"]) >= 0.3)  # screening
        else:
            assert row["tb_score"] == "" and row["tb_flag"] == ""
            assert row["reason"]
    data = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert len(data["scans"]) == 44
    err = capsys.readouterr().err
    assert "44 files:" in err and "CPU" in err


def test_operating_point_threshold_changes_flags_only(tmp_path, stand_in_models, chest_folder):
    code, out = _classify(tmp_path, stand_in_models, str(chest_folder), "--operating-point", "0.9")
    assert code == 0
    rows = csv_rows(out / "results.csv")
    assert all((r["tb_flag"] == "yes") == (float(r["tb_score"]) >= 0.9) for r in rows)


def test_report_formats_and_pdf(tmp_path, stand_in_models, chest_folder):
    code, out = _classify(
        tmp_path, stand_in_models, str(chest_folder), "--report", "pdf,csv,json",
        "--clinic", "Clínica São João",
    )  # fmt: skip
    assert code == 0
    batch = json.loads((out / "results.json").read_text(encoding="utf-8"))["batch"]["id"]
    # the window's name for its export: medscreen-<clinic>-<local date>-<batch>
    stem = f"medscreen-clinica-sao-joao-{datetime.now().astimezone():%Y-%m-%d}-{batch[:8]}"
    assert stem == default_stem(
        ReportContext.for_batch(batch, load_model_set([stand_in_models]),
                                ThresholdChoice.parse("screening"), clinic_name="Clínica São João")
    )  # fmt: skip
    assert (out / f"{stem}.pdf").read_bytes().startswith(b"%PDF")
    assert csv_rows(out / f"{stem}.csv") == csv_rows(out / "results.csv")
    assert json.loads((out / f"{stem}.json").read_text(encoding="utf-8"))["batch"]["id"] == batch
    assert not list(out.glob("report*"))
    # an explicit name replaces it; a name with folders is refused before any work
    again = tmp_path / "again"
    args = ["--models", str(stand_in_models), "--db", str(tmp_path / "r.sqlite3"), "--quiet"]
    assert main(["export", batch, "--out", str(again), "--name", "kisumu-am", "--report",
                 "pdf,csv", *args]) == 0  # fmt: skip
    assert sorted(p.name for p in again.iterdir()) == [
        "kisumu-am.csv", "kisumu-am.pdf", "results.csv", "results.json",
    ]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(["export", batch, "--out", str(again), "--name", "../x", "--report", "pdf", *args])
    assert exit_info.value.code == 2


def test_per_file_errors_do_not_fail_the_batch(tmp_path, stand_in_models, chest_folder):
    (chest_folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 20)
    code, out = _classify(
        tmp_path, stand_in_models, str(chest_folder), str(tmp_path / "missing.png")
    )
    assert code == 0
    by_file = {Path(r["file"]).name: r for r in csv_rows(out / "results.csv")}
    assert by_file["broken.jpg"]["status"] == "error"
    assert by_file["missing.png"]["status"] == "error"
    assert "no such file" in by_file["missing.png"]["reason"]


def test_unwritable_output_is_fatal_with_a_clear_message(tmp_path, stand_in_models, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code = main(
        [
            "classify",
            str(DATA / "tb"),
            "--out",
            str(blocker / "out"),
            "--models",
            str(stand_in_models),
            "--quiet",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "output folder" in err and "not writable" in err


def test_unknown_operating_point_fails_before_screening(tmp_path, stand_in_models, capsys):
    code, _ = _classify(
        tmp_path, stand_in_models, str(DATA / "tb"), "--operating-point", "aggressive"
    )
    assert code == 1
    assert "no operating point 'aggressive'" in capsys.readouterr().err


def test_cuda_requested_without_gpu_is_a_clear_error(tmp_path, stand_in_models, capsys):
    code, _ = _classify(tmp_path, stand_in_models, str(DATA / "tb"), "--device", "cuda")
    assert code == 1
    assert "CUDA was requested but cannot be used" in capsys.readouterr().err


def test_no_models_is_a_clear_error(tmp_path, capsys):
    code, _ = _classify(tmp_path, tmp_path / "empty-models", str(DATA / "tb"))
    assert code == 1
    assert "modality" in capsys.readouterr().err


def test_tampered_model_is_refused(tmp_path, stand_in_models, capsys):
    import shutil

    models = tmp_path / "models"
    shutil.copytree(stand_in_models, models)
    onnx_file = models / "tb.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[-1] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    code, out = _classify(tmp_path, models, str(DATA / "tb"))
    err = capsys.readouterr().err
    assert "tb.onnx does not match its manifest" in err
    assert code == 0  # the pneumonia model still screens; TB is refused, never run
    rows = csv_rows(out / "results.csv")
    assert "tb_score" not in rows[0] and "pneumonia_score" in rows[0]


def test_history_lists_batches(tmp_path, stand_in_models, capsys):
    _classify(tmp_path, stand_in_models, str(DATA / "tb"))
    capsys.readouterr()
    assert main(["history", "--db", str(tmp_path / "r.sqlite3")]) == 0
    assert "completed" in capsys.readouterr().out


def test_whole_batch_opens_no_network_connection(
    tmp_path, stand_in_models, mixed_folder, monkeypatch
):
    """Offline by design: any attempt to connect or resolve a name fails the test."""
    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    code, out = _classify(tmp_path, stand_in_models, str(mixed_folder), "--report", "pdf,csv,json")
    assert code == 0 and attempts == []
    assert len(csv_rows(out / "results.csv")) == 44


def test_engine_and_cli_import_neither_qt_nor_tensorflow():
    code = (
        "import sys, desktop, desktop.cli, desktop.engine.runner, desktop.engine.reports, "
        "desktop.engine.store, desktop.engine.overlay\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('PySide6', 'shiboken6', 'tensorflow', 'keras', 'tf2onnx'))\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("argv", "expected"),
    [(["--version"], "MedScreen "), (["classify", "--help"], "--operating-point")],
)
def test_help_and_version(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert expected in capsys.readouterr().out


def test_missing_qt_says_so_instead_of_a_stale_not_in_this_build(monkeypatch, capsys):
    """The window is part of every build: a missing Qt is a broken installation, said plainly."""
    import builtins

    real_import = builtins.__import__

    def no_qt(name, *args, **kwargs):
        if name == "desktop.gui.app":
            raise ModuleNotFoundError("No module named 'PySide6'", name="PySide6")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_qt)
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "PySide6 is missing" in err and "medscreen classify" in err
    assert "not part of this build" not in err
    assert "not part of this build" not in (REPO / "desktop" / "cli.py").read_text()


def test_ctrl_c_in_calibrate_stops_cleanly_and_keeps_the_screened(
    tmp_path, stand_in_models, monkeypatch, capsys
):
    from desktop import cli
    from desktop.engine.store import BatchKind, ResultsStore

    labelled = tmp_path / "labelled"
    for label in ("normal", "pneumonia"):
        shutil.copytree(DATA / "pneumonia" / label, labelled / label)
    seen = []

    def update(self, event) -> None:  # Ctrl-C arrives while the third scan is shown
        seen.append(event)
        if len(seen) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli._ProgressBar, "update", update)
    db = tmp_path / "r.sqlite3"
    code = main(
        ["calibrate", str(labelled), "--model", "pneumonia", "--name", "Stop", "--workers", "1",
         "--db", str(db), "--models", str(stand_in_models), "--out", str(tmp_path / "cal")]
    )  # fmt: skip
    assert code == 130
    assert "interrupted: no calibration was made" in capsys.readouterr().err
    store = ResultsStore(db)
    try:
        (batch,) = store.batches()
        assert batch.kind == BatchKind.CALIBRATION and batch.status == "cancelled"
        assert 2 <= batch.done < batch.total
    finally:
        store.close()
    assert not (tmp_path / "cal").exists() or not list((tmp_path / "cal").iterdir())

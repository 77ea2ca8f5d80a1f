"""Command-line input a clinic can get wrong, each refused with a message that says what is
wrong (found trying the CLI as a clinic would)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from desktop.cli import main
from tests.conftest import DATA, REPO


def test_out_that_is_a_file_is_named_as_a_file_before_screening(tmp_path: Path, capsys):
    target = tmp_path / "results.pdf"
    target.write_bytes(b"%PDF-1.4 a report filed earlier")
    scan = sorted((DATA / "tb" / "normal").glob("*.png"))[0]
    code = main(["classify", str(scan), "--out", str(target), "--db", str(tmp_path / "r.db"),
                 "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert f"the output folder {target} is a file, not a folder; choose another with --out" in err
    assert target.read_bytes() == b"%PDF-1.4 a report filed earlier"  # left as it was
    assert not (tmp_path / "r.db").exists()  # refused before the store was opened


@pytest.mark.parametrize("value", ["-3", "two"])
def test_a_bad_workers_count_is_refused_by_the_parser_not_a_traceback(
    tmp_path: Path, value, capsys
):
    """``--workers -3`` reached the thread pool: 'ValueError: max_workers must be greater
    than 0' as a traceback, after the batch had been created in the store."""
    scan = sorted((DATA / "tb" / "normal").glob("*.png"))[0]
    db = tmp_path / "r.db"
    with pytest.raises(SystemExit) as stop:
        main(["classify", str(scan), "--out", str(tmp_path / "o"), "--db", str(db),
              "--workers", value])  # fmt: skip
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "argument --workers" in err and "Traceback" not in err
    assert not db.exists()


@pytest.mark.parametrize(
    ("point", "message"),
    [
        ("tb=0.5,pneumoina=0.3", "the operating point names pneumoina, which is not a finding "
         "model here (the models are tb, pneumonia)"),
        ("tb=balanced,tb=0.2", "tb is given two operating points in 'tb=balanced,tb=0.2'"),
    ],
)  # fmt: skip
def test_a_per_model_point_naming_no_model_or_one_twice_is_refused(
    tmp_path: Path, point, message, capsys
):
    """A typo in a model id left that model at its default threshold, silently; a model
    named twice took the last point, silently."""
    scan = sorted((DATA / "tb" / "normal").glob("*.png"))[0]
    db = tmp_path / "r.db"
    code = main(["classify", str(scan), "--out", str(tmp_path / "o"), "--db", str(db),
                 "--operating-point", point, "--quiet"])  # fmt: skip
    assert code == 1
    assert f"medscreen: error: {message}" in capsys.readouterr().err
    assert not (tmp_path / "o" / "results.csv").exists()


def test_history_into_a_pipe_whose_reader_has_gone_ends_quietly(
    tmp_path: Path, stand_in_models: Path
):
    """'medscreen history | head -1': when head had exited, the CLI printed "medscreen:
    error: Broken pipe (EPIPE)" (or Python's "Exception ignored" at exit)."""
    db = tmp_path / "r.db"
    scan = sorted((DATA / "tb" / "normal").glob("*.png"))[0]
    assert main(["classify", str(scan), "--out", str(tmp_path / "o"), "--db", str(db),
                 "--models", str(stand_in_models), "--quiet"]) == 0  # fmt: skip
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before a line is written
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "desktop", "history", "--db", str(db)],
            cwd=REPO, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert proc.stderr == ""
    assert proc.returncode == 141

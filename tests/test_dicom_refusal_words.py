"""A DICOM file the gate finds unlike any scan it knows is still a medical image: its plain
words name the header's modality, never "photo or document" (found screening a CT, an NM and
an ultrasound DICOM from pydicom's test files with the shipped models: each read "photo or
document" in the table, the PDF and the CSV's quality_text)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

from pydicom.data import get_testdata_file

from desktop.cli import main
from tests.conftest import DATA


def test_dicom_refused_as_unknown_is_named_by_its_modality_not_photo(tmp_path: Path, capsys):
    folder = tmp_path / "scans"
    folder.mkdir()
    for name in ("CT_small.dcm", "examples_palette.dcm"):  # CT slice; ultrasound, palette
        shutil.copy(get_testdata_file(name), folder / name)
    shutil.copy(DATA / "photos" / "chelsea.jpg", folder / "cat.jpg")
    out = tmp_path / "out"
    code = main(["classify", str(folder), "--out", str(out), "--db", str(tmp_path / "r.sqlite3"),
                 "--quiet"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    with (out / "results.csv").open(encoding="utf-8-sig", newline="") as fh:
        rows = {Path(r["file"]).name: r for r in csv.DictReader(fh)}

    for name, words in (("CT_small.dcm", "DICOM CT"), ("examples_palette.dcm", "DICOM US")):
        row = rows[name]
        # the shipped gate finds these unlike any kind it knows (out of distribution)
        assert row["status"] == "not_chest_xray"
        assert row["reason"].startswith("not recognised as a medical scan"), row["reason"]
        assert (row["quality"], row["quality_text"]) == (
            "not_chest",
            f"not a chest X-ray: {words}",
        )
    # a photograph is still what the words said
    assert (rows["cat.jpg"]["quality"], rows["cat.jpg"]["quality_text"]) == (
        "not_medical",
        "photo or document",
    )

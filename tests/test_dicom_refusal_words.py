"""A DICOM file the gate finds unlike any scan it knows is still a medical image: its plain
words name the header's modality, never "photo or document" (found screening a CT, an NM and
an ultrasound DICOM from pydicom's test files with the shipped models: each read "photo or
document" in the table, the PDF and the CSV's quality_text)."""

from __future__ import annotations

import shutil
from pathlib import Path

from pydicom.data import get_testdata_file

from tests.conftest import DATA, classify_rows


def test_dicom_refused_as_unknown_is_named_by_its_modality_not_photo(tmp_path: Path, capsys):
    folder = tmp_path / "scans"
    folder.mkdir()
    for name in ("CT_small.dcm", "examples_palette.dcm"):  # CT slice; ultrasound, palette
        shutil.copy(get_testdata_file(name), folder / name)
    shutil.copy(DATA / "photos" / "chelsea.jpg", folder / "cat.jpg")
    rows = classify_rows(folder, tmp_path)

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


def test_a_dicom_whose_header_says_mr_is_refused_even_when_the_gate_takes_it_for_a_chest(
    tmp_path: Path, capsys
):
    """pydicom's 64x64 MR slice (Modality MR) passes the shipped gate as a chest X-ray and got
    a TB score of 0.999, flagged and first in the triage order. An MR scanner never writes a
    radiograph: the header vetoes the gate, the scan is refused and says why, and it gets no
    finding score. A radiograph whose header is a plain secondary capture is still screened."""
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(get_testdata_file("MR_small.dcm"), folder / "mr.dcm")
    shutil.copy(DATA / "dicom" / "CR-MONO1-10-chest.dcm", folder / "chest.dcm")
    rows = classify_rows(folder, tmp_path)

    mr = rows["mr.dcm"]
    assert mr["status"] == "not_chest_xray"
    assert mr["reason"].startswith("not a radiograph by its DICOM header (Modality MR: magnetic")
    assert (mr["quality"], mr["quality_text"]) == ("not_chest", "not a chest X-ray: DICOM MR")
    assert mr["tb_score"] == "" and mr["tb_flag"] == ""
    assert rows["chest.dcm"]["status"] == "ok"  # a CR chest film is screened as before

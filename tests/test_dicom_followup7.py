"""Follow-ups to the session-7 QA sweep on DICOM files (tests/test_qa_sweep7.py found them).

Each test runs on real files: pydicom's bundled test files and tests/data fixtures.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import pixel_array
from pydicom.uid import UID

from desktop.engine import jpeg_repair
from desktop.engine.loading import load_scan
from desktop.engine.modalities import DICOM_MODALITIES, known_modality
from desktop.engine.screening import (
    NOT_AN_IMAGE_MODALITIES,
    NOT_RADIOGRAPH_MODALITIES,
    RADIOGRAPH_MODALITIES,
)
from tests.conftest import DATA, REPO, classify_rows

#: pydicom's encapsulated (compressed) test files that reached the gate before the 12-bit
#: JPEG fix (measured with main at 3a33799: 28 of its 40 such files; the other 12 are refused
#: for being multi-frame, too small, without pixel data, or damaged).
_SCREENED_BEFORE = frozenset(
    {
        "693_J2KI.dcm",
        "GDCMJ2K_TextGBR.dcm",
        "J2K_pixelrep_mismatch.dcm",
        "JPEG2000.dcm",
        "JPGExtended.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "SC_jpeg_no_color_transform.dcm",
        "SC_jpeg_no_color_transform_2.dcm",
        "SC_rgb_dcmtk_+eb+cr.dcm",
        "SC_rgb_dcmtk_+eb+cy+n1.dcm",
        "SC_rgb_dcmtk_+eb+cy+n2.dcm",
        "SC_rgb_dcmtk_+eb+cy+np.dcm",
        "SC_rgb_dcmtk_+eb+cy+s2.dcm",
        "SC_rgb_dcmtk_+eb+cy+s4.dcm",
        "SC_rgb_gdcm_KY.dcm",
        "SC_rgb_jls_lossy_line.dcm",
        "SC_rgb_jls_lossy_sample.dcm",
        "SC_rgb_jpeg.dcm",
        "SC_rgb_jpeg_app14_dcmd.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "SC_rgb_jpeg_gdcm.dcm",
        "SC_rgb_jpeg_lossy_gdcm.dcm",
        "SC_rgb_rle.dcm",
        "SC_rgb_rle_16bit.dcm",
        "SC_rgb_rle_32bit.dcm",
        "examples_jpeg2k.dcm",
    }
)


def test_12_bit_lossy_jpeg_with_an_old_encoders_scan_header_decodes_to_the_encoders_pixels(
    tmp_path: Path,
) -> None:
    """pydicom's JPEG-lossy.dcm (NEMA WG04 NM1_JPLY: JPEG Extended, 12-bit, transfer syntax
    1.2.840.10008.1.2.4.51) was 'compressed pixel data could not be decoded': its SOS header
    has Se = 0 where a sequential scan must say 63, and libjpeg refuses it (GDCM and IJG warn
    and decode). pydicom ships the repaired stream as JPGExtended.dcm; ours must equal
    pydicom's own decode of that file with the pylibjpeg plugin, value for value."""
    lossy = Path(get_testdata_file("JPEG-lossy.dcm"))
    assert pydicom.dcmread(lossy).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.51"
    expected = pixel_array(get_testdata_file("JPGExtended.dcm"), decoding_plugin="pylibjpeg")

    scan = load_scan(lossy, keep_raw=True)

    assert scan.raw is not None
    assert scan.raw.shape == (1024, 256) == expected.shape
    np.testing.assert_array_equal(scan.raw, expected)
    assert (int(scan.raw.min()), int(scan.raw.max())) == (0, 264)  # 12-bit NM counts
    assert scan.pixels.shape == (1024, 256) and float(np.ptp(scan.pixels)) > 0


def test_the_repair_changes_only_the_illegal_scan_header_bytes() -> None:
    """The one byte pydicom's fixed file differs in; a legal stream is returned untouched
    (the same object), and so is a progressive or non-JPEG frame."""
    from pydicom.encaps import generate_frames

    broken = next(generate_frames(pydicom.dcmread(get_testdata_file("JPEG-lossy.dcm")).PixelData))
    fixed = next(generate_frames(pydicom.dcmread(get_testdata_file("JPGExtended.dcm")).PixelData))
    assert broken != fixed
    assert jpeg_repair.repair_sequential_scan_headers(broken) == fixed
    assert jpeg_repair.repair_sequential_scan_headers(fixed) is fixed
    not_jpeg = b"\x00\x01" + broken[2:]
    assert jpeg_repair.repair_sequential_scan_headers(not_jpeg) is not_jpeg
    progressive = broken.replace(b"\xff\xc1", b"\xff\xc2", 1)
    assert jpeg_repair.repair_sequential_scan_headers(progressive) is progressive


@pytest.mark.filterwarnings("ignore:Expected explicit VR")  # a test file without file meta
def test_12_bit_lossy_jpeg_screens_and_every_compressed_file_that_screened_still_does(
    tmp_path: Path,
) -> None:
    """A CR film stored as 12-bit lossy JPEG reaches the models (its rows are those of the
    fixed JPGExtended.dcm), and every other compressed pydicom test file that reached the gate
    before still does."""
    folder = tmp_path / "scans"
    folder.mkdir()
    data = Path(get_testdata_file("CT_small.dcm")).parent
    for path in sorted(data.glob("*.dcm")):
        meta = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        syntax = getattr(getattr(meta, "file_meta", None), "TransferSyntaxUID", None)
        if syntax is not None and UID(syntax).is_encapsulated:
            shutil.copy(path, folder / path.name)
    cr = pydicom.dcmread(get_testdata_file("JPEG-lossy.dcm"))
    cr.Modality = "CR"  # an old CR archive's film with the same pixel data
    cr.save_as(folder / "cr_jpeg_lossy.dcm")

    rows = classify_rows(folder, tmp_path)

    assert len(rows) == 41
    screened = {name for name, row in rows.items() if row["status"] != "error"}
    assert screened == _SCREENED_BEFORE | {"JPEG-lossy.dcm", "cr_jpeg_lossy.dcm"}
    for name in ("JPEG-lossy.dcm", "cr_jpeg_lossy.dcm"):
        assert rows[name]["status"] == rows["JPGExtended.dcm"]["status"] == "not_chest_xray"
        assert rows[name]["reason"] == rows["JPGExtended.dcm"]["reason"]
        assert "out-of-distribution score 1.42" in rows[name]["reason"]  # the gate saw pixels


def _named_copy(source: Path, target: Path, modality: str) -> None:
    ds = pydicom.dcmread(source, force=True)
    ds.Modality = modality
    ds.save_as(target)


def test_a_modality_that_is_no_dicom_code_is_never_quoted(tmp_path: Path) -> None:
    """A well-formed Modality that is no DICOM code ("JANE DOE": a name typed into the wrong
    field) was quoted in the warning of a screened chest and in the words of a refused CT.
    Reasons, warnings and quality words describe it as "an unrecognised modality"."""
    folder = tmp_path / "scans"
    folder.mkdir()
    _named_copy(DATA / "dicom" / "CR-MONO1-10-chest.dcm", folder / "chest.dcm", "JANE DOE")
    _named_copy(Path(get_testdata_file("CT_small.dcm")), folder / "ct.dcm", "JANE DOE")

    rows = classify_rows(folder, tmp_path)

    chest, ct = rows["chest.dcm"], rows["ct.dcm"]
    assert chest["status"] == "ok"
    assert chest["warnings"] == (
        "DICOM header names an unrecognised modality, but the image was judged a chest X-ray: "
        "check that this is the right file"
    )
    assert ct["status"] == "not_chest_xray"
    assert ct["quality_text"] == "not a chest X-ray: DICOM image of an unrecognised modality"
    for row in (chest, ct):
        shown = " ".join(row[k] for k in ("reason", "modality", "quality_text", "warnings"))
        assert "JANE" not in shown.upper()


def test_the_closed_list_holds_every_code_the_engine_names() -> None:
    assert known_modality(" ct") == "CT"
    assert known_modality("RTSTRUCT") == "RTSTRUCT"
    assert known_modality("JANE DOE") is None and known_modality("") is None
    assert known_modality(None) is None
    named = {*RADIOGRAPH_MODALITIES, *NOT_RADIOGRAPH_MODALITIES, *NOT_AN_IMAGE_MODALITIES}
    assert named <= DICOM_MODALITIES
    assert len(DICOM_MODALITIES) == 99  # 79 current, 18 retired, DR and SC


def test_a_segmentation_is_refused_by_its_header_not_named_by_the_gates_guess(
    tmp_path: Path,
) -> None:
    """pydicom's liver_1frame.dcm (a 512x512 SEG label map) read "not a chest X-ray: hand",
    the gate's guess. A segmentation, like an RT dose or a structured report, is no image of
    a patient: its header refuses it and the words name it, with no finding score."""
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(get_testdata_file("liver_1frame.dcm"), folder / "seg.dcm")
    shutil.copy(DATA / "dicom" / "CR-MONO1-10-chest.dcm", folder / "chest.dcm")

    rows = classify_rows(folder, tmp_path)

    seg = rows["seg.dcm"]
    assert seg["status"] == "not_chest_xray"
    assert seg["reason"] == (
        "not a radiograph by its DICOM header (Modality SEG: segmentation): not an image of a "
        "patient to screen, whatever its pixels look like"
    )
    assert (seg["quality"], seg["quality_text"]) == ("not_chest", "not a chest X-ray: DICOM SEG")
    assert seg["tb_score"] == "" and seg["pneumonia_score"] == ""
    assert rows["chest.dcm"]["status"] == "ok"


def test_every_report_says_what_the_window_says_a_scan_is(tmp_path: Path) -> None:
    """An MR slice refused by its header read "MR" in the window and the PDF but "CXR" (the
    gate's guess), with the gate's CXR probability, in the CSV and JSON. Every face now takes
    the modality and its score from quality.shown_modality / shown_modality_score: the
    header's MR has no gate score; a CT the gate refused as not medical shows its header's CT
    (it showed nothing), never the gate's nearest class, and no score; a screened chest shows
    the gate's label and probability."""
    import json

    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(get_testdata_file("MR_small.dcm"), folder / "mr.dcm")
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct.dcm")  # not medical to the gate
    shutil.copy(DATA / "dicom" / "CR-MONO1-10-chest.dcm", folder / "chest.dcm")

    rows = classify_rows(folder, tmp_path)
    doc = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    scans = {Path(s["file"]).name: s for s in doc["scans"]}

    assert rows["mr.dcm"]["reason"].startswith("not a radiograph by its DICOM header")
    cxr = scans["chest.dcm"]["modality_probabilities"]["CXR"]  # the gate's, for the chest
    assert cxr > 0.99
    assert rows["ct.dcm"]["reason"].startswith("not recognised as a medical scan")
    expected = {"mr.dcm": ("MR", None), "ct.dcm": ("CT", None), "chest.dcm": ("CXR", cxr)}
    for name, (modality, score) in expected.items():
        assert rows[name]["modality"] == modality
        assert rows[name]["modality_score"] == ("" if score is None else f"{score:.4f}")
        assert scans[name]["modality"] == (modality or None)
        assert scans[name]["modality_score"] == (
            None if score is None else pytest.approx(score, abs=5e-5)
        )


def test_counts_of_one_read_in_the_singular_in_the_cli_summary(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """The CLI summary read "1 files" and "1 not chest X-rays" (and the window "1 errors"):
    every count goes through vocabulary.counted."""
    from desktop.engine.vocabulary import counted

    assert [counted(n, "file") for n in (0, 1, 2)] == ["0 files", "1 file", "2 files"]
    assert counted(1, "not chest X-ray") == "1 not chest X-ray"
    assert counted(3, "analysis", "analyses") == "3 analyses"

    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(DATA / "dicom" / "CR-MONO1-10-chest.dcm", folder / "chest.dcm")
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct.dcm")
    classify_rows(folder, tmp_path)
    assert "\n2 files: 1 screened, 1 not chest X-ray, 0 errors\n" in (capsys.readouterr().err)

    (folder / "ct.dcm").unlink()
    classify_rows(folder, tmp_path / "again")
    assert "\n1 file: 1 screened, 0 not chest X-rays, 0 errors\n" in (capsys.readouterr().err)


def test_the_windows_counts_of_one_read_in_the_singular(qtbot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from desktop.engine.results import ScanResult, ScanStatus
    from desktop.engine.store import ResultsStore
    from desktop.gui.main_window import MainWindow
    from desktop.gui.settings import AppSettings

    window = MainWindow(
        settings=AppSettings(tmp_path / "s.ini"),
        store=ResultsStore(tmp_path / "r.sqlite3"),
        model_dirs=[REPO / "assets" / "models"],
    )
    qtbot.addWidget(window)
    damaged = ScanResult(
        file=str(tmp_path / "broken.dcm"),
        sha256=None,
        status=ScanStatus.ERROR,
        reason="DICOM pixel data is truncated",
        error_code="truncated",
    )
    window.model.append([damaged])
    window._update_counts()
    assert window.counts.text() == "1 scan · 0 flagged · 0 not chest X-rays · 1 error"


@pytest.mark.parametrize("target", ["1", "0", "1.5", "-0.2", "nan"])
def test_calibrate_says_which_target_sensitivities_it_accepts(
    tmp_path: Path, capsys, target: str
) -> None:  # type: ignore[no-untyped-def]
    """`calibrate --target-sensitivity 1` was refused with "must lie between 0 and 1", which 1
    does. The message now says the range exactly: both ends are excluded."""
    from desktop.cli import main

    code = main(["calibrate", str(DATA / "tb"), "--model", "tb", "--name", "site-a",
                 "--target-sensitivity", target, "--out", str(tmp_path / "cal"),
                 "--db", str(tmp_path / "r.sqlite3"), "--quiet"])  # fmt: skip

    assert code != 0
    err = capsys.readouterr().err
    assert f"--target-sensitivity must be greater than 0 and less than 1, got {target}" in err
    assert not (tmp_path / "cal").exists()


def test_a_custom_threshold_says_both_ends_are_accepted(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from desktop.cli import main

    out, db = str(tmp_path / "out"), str(tmp_path / "r.sqlite3")
    code = main(["classify", str(DATA / "tb"), "--operating-point", "1.5", "--out", out,
                 "--db", db, "--quiet"])  # fmt: skip
    assert code != 0
    assert "a custom threshold must be at least 0 and at most 1, got 1.5" in capsys.readouterr().err


def test_the_windows_modality_tooltip_gives_the_gates_probability_only_beside_its_guess(
    qtbot, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The Modality cell of an MR slice refused by its header read "MR" while its tooltip
    read "CXR (probability 0.99)": the gate's guess and score. The tooltip now names what the
    cell shows and where it came from; a screened chest keeps the gate's probability."""
    from PySide6.QtCore import Qt

    from desktop.engine.inference import choose_device
    from desktop.engine.registry import default_model_dirs, load_model_set
    from desktop.engine.runner import BatchRunner, run_to_end
    from desktop.engine.store import ResultsStore
    from desktop.gui.results_model import Column, ResultsModel

    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(get_testdata_file("MR_small.dcm"), folder / "mr.dcm")
    shutil.copy(DATA / "dicom" / "CR-MONO1-10-chest.dcm", folder / "chest.dcm")
    models = load_model_set(default_model_dirs(), choose_device("cpu"))
    store = ResultsStore(tmp_path / "r.sqlite3")
    batch_id = run_to_end(BatchRunner(models, store).run([folder])).batch_id
    results = list(store.batch_results(batch_id, thumbnails=False))
    model = ResultsModel(store=lambda: store)
    model.set_manifests(models.manifests)
    model.append_items(batch_id, list(store.batch_rows(batch_id, thumbnails=False)))
    column = model.column_of(Column.MODALITY)
    cells = {
        Path(model.file_name(row)).name: (
            model.data(model.index(row, column), Qt.ItemDataRole.DisplayRole),
            model.data(model.index(row, column), Qt.ItemDataRole.ToolTipRole),
        )
        for row in range(model.rowCount())
    }
    assert cells["mr.dcm"] == ("MR", "MR (from the file's DICOM header)")
    chest = next(r for r in results if Path(r.file).name == "chest.dcm")
    assert chest.modality == "CXR" and chest.modality_score is not None
    assert cells["chest.dcm"] == ("CXR", f"CXR (probability {chest.modality_score:.2f})")
    store.close()

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
from tests.conftest import classify_rows

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
        assert rows[name]["modality_score"] == rows["JPGExtended.dcm"]["modality_score"] != ""
        assert rows[name]["reason"] == rows["JPGExtended.dcm"]["reason"]

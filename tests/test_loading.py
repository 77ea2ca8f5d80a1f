"""The scan loader on real images: pixel values, orientation, windowing, formats, metadata.

Reference numbers were measured once on the committed fixtures (tests/data) and are checked
to tolerances far tighter than any change that would matter to a model.
"""

from __future__ import annotations

import hashlib
import logging
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_windowing

from desktop.engine.loading import (
    MAX_PIXELS,
    SUPPORTED_SUFFIXES,
    decode_scan,
    is_candidate,
    load_scan,
    make_thumbnail,
    read_file,
)
from desktop.engine.preprocess import PreprocessSpec, load_working, preprocess_planes
from desktop.engine.scan import IDENTIFYING_FIELDS
from tests.fixtures import (
    CR_CHEST,
    CR_J2K,
    DATA,
    KERMANY_JPEG,
    TB_PNG,
    cr_dataset,
    cr_stored,
    grey8,
    pydicom_test_file,
    write_cr_pixels,
    write_cr_variant,
    write_dicom,
    write_exif_rotated_jpeg,
    write_png16,
    write_rgba,
    write_variant,
)

QUANTUM = 1.0 / 255.0


def _all_fixture_images() -> list[Path]:
    return sorted(p for p in DATA.rglob("*") if p.is_file() and p.suffix != ".md")


# --- the contract on every real fixture --------------------------------------------------


@pytest.mark.parametrize(
    "path", _all_fixture_images(), ids=lambda p: p.relative_to(DATA).as_posix()
)
def test_every_fixture_meets_the_pixels_contract(path: Path) -> None:
    scan = load_scan(path)
    assert scan.pixels.dtype == np.float32 and scan.pixels.ndim == 2
    assert scan.pixels.flags.c_contiguous
    assert float(scan.pixels.min()) >= 0.0 and float(scan.pixels.max()) <= 1.0
    assert float(scan.pixels.std()) > 0.02  # real images, not blank
    assert scan.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (scan.metadata.height, scan.metadata.width) == scan.pixels.shape
    assert scan.raw is None  # keep_raw defaults to False


def test_read_file_returns_bytes_and_their_hash() -> None:
    data, digest = read_file(TB_PNG)
    assert data == TB_PNG.read_bytes()
    assert digest == hashlib.sha256(data).hexdigest()


def test_decode_scan_uses_the_bytes_given_not_the_path(tmp_path: Path) -> None:
    data, digest = read_file(TB_PNG)
    scan = decode_scan(tmp_path / "gone.png", data, digest)  # the path need not exist
    assert scan.path == tmp_path / "gone.png" and scan.sha256 == digest
    assert scan.pixels.shape == (299, 299)


# --- 8-bit rasters --------------------------------------------------------------------------


def test_8bit_png_is_divided_by_255() -> None:
    scan = load_scan(TB_PNG)
    np.testing.assert_array_equal(scan.pixels, grey8(TB_PNG).astype(np.float32) / 255)
    assert scan.metadata.source_format == "png" and scan.metadata.bits_stored == 8
    assert scan.metadata.photometric == "L"
    # measured once on CHNCXR_0001_0.png
    assert float(scan.pixels.mean()) == pytest.approx(0.668913, abs=1e-5)
    assert float(scan.pixels.std()) == pytest.approx(0.240160, abs=1e-5)
    assert (float(scan.pixels.min()), float(scan.pixels.max())) == (0.0, 1.0)


def test_kermany_rgb_jpeg_becomes_grey_with_601_luma() -> None:
    scan = load_scan(KERMANY_JPEG)
    assert scan.metadata.source_format == "jpeg" and scan.metadata.photometric == "RGB"
    with Image.open(KERMANY_JPEG) as image:
        rgb = np.asarray(image.convert("RGB")).astype(np.float64)
    luma = (rgb @ np.array([0.299, 0.587, 0.114])) / 255
    np.testing.assert_allclose(scan.pixels, luma, atol=1e-6)
    # float luma, not Pillow's rounded 'L': within half a grey level of it
    with Image.open(KERMANY_JPEG) as image:
        rounded = np.asarray(image.convert("L")).astype(np.float32) / 255
    assert float(np.abs(scan.pixels - rounded).max()) <= 0.5 * QUANTUM + 1e-6
    assert float(scan.pixels.mean()) == pytest.approx(0.505477, abs=1e-5)


@pytest.mark.parametrize(
    ("name", "mode", "fmt"),
    [
        ("rgb.png", "RGB", "PNG"),
        ("palette.png", "P", "PNG"),
        ("la.png", "LA", "PNG"),
        ("grey.tif", "L", "TIFF"),
        ("rgb.tif", "RGB", "TIFF"),
        ("grey.bmp", "L", "BMP"),
        ("rgb.bmp", "RGB", "BMP"),
        ("grey.gif", "L", "GIF"),
        ("grey.webp", "L", "WEBP"),
        ("grey.pgm", "L", "PPM"),
    ],
)
def test_lossless_rasters_of_a_grey_image_give_the_same_pixels(
    tmp_path: Path, name: str, mode: str, fmt: str
) -> None:
    if fmt == "WEBP":
        path = tmp_path / name
        with Image.open(TB_PNG) as image:
            image.convert("L").save(path, format="WEBP", lossless=True)
    else:
        path = write_variant(tmp_path / name, mode, fmt=fmt)
    expected = grey8().astype(np.float32) / 255
    scan = load_scan(path)
    # grey stored as RGB: luma of r = g = b is the value itself, up to float rounding
    np.testing.assert_allclose(scan.pixels, expected, atol=1e-6)


def test_one_bit_image_is_black_and_white(tmp_path: Path) -> None:
    path = write_variant(tmp_path / "mask.png", "1", fmt="PNG")
    scan = load_scan(path)
    assert set(np.unique(scan.pixels).tolist()) == {0.0, 1.0}


def test_cmyk_jpeg_is_decoded(tmp_path: Path) -> None:
    path = write_variant(tmp_path / "print.jpg", "CMYK", fmt="JPEG")
    scan = load_scan(path)
    assert scan.metadata.photometric == "CMYK"
    # CMYK JPEG is lossy, but the image must still be the chest X-ray
    assert float(np.abs(scan.pixels - grey8() / 255).mean()) < 0.02


def test_alpha_is_ignored_and_transparency_reported(tmp_path: Path) -> None:
    expected = grey8().astype(np.float32) / 255
    opaque = load_scan(write_rgba(tmp_path / "opaque.png"))
    np.testing.assert_allclose(opaque.pixels, expected, atol=1e-6)
    assert "alpha" not in opaque.metadata.extra
    partial = load_scan(write_rgba(tmp_path / "partial.png", transparent_rows=20))
    np.testing.assert_allclose(partial.pixels, expected, atol=1e-6)  # not composited
    assert partial.metadata.extra["alpha"].startswith("ignored")


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    upright = grey8()[:, :200].astype(np.float32) / 255  # what write_exif_rotated_jpeg crops
    for orientation in (3, 6, 8):
        scan = load_scan(
            write_exif_rotated_jpeg(tmp_path / f"o{orientation}.jpg", orientation=orientation)
        )
        assert scan.pixels.shape == (299, 200)
        assert float(np.abs(scan.pixels - upright).mean()) < 0.01  # JPEG q95
        assert scan.metadata.extra["exif_orientation"] == str(orientation)


def test_suffix_does_not_decide_the_format(tmp_path: Path) -> None:
    renamed = tmp_path / "actually_png.dcm"
    renamed.write_bytes(TB_PNG.read_bytes())
    scan = load_scan(renamed)
    assert scan.metadata.source_format == "png"
    np.testing.assert_array_equal(scan.pixels, load_scan(TB_PNG).pixels)


# --- rasters deeper than 8 bits ---------------------------------------------------------------


def test_16bit_png_equals_the_8bit_source(tmp_path: Path) -> None:
    path = write_png16(tmp_path / "grey16.png")
    with Image.open(path) as image:
        assert image.mode == "I;16"
    scan = load_scan(path, keep_raw=True)
    eight = load_scan(TB_PNG).pixels
    # v×257 min–max scaled over 0..65535 is exactly v/255 (the source spans 0..255)
    np.testing.assert_allclose(scan.pixels, eight, atol=1e-6)
    assert scan.metadata.bits_stored == 16
    assert scan.metadata.window == (65535 / 2, 65535.0)
    assert scan.raw is not None and scan.raw.dtype == np.uint16
    np.testing.assert_array_equal(scan.raw, grey8().astype(np.uint16) * 257)


def test_12bit_data_in_a_16bit_png_is_not_dark(tmp_path: Path) -> None:
    scan = load_scan(write_png16(tmp_path / "grey12.png", bits=12))
    # divided by 65535 it would have a mean of 0.04: min–max keeps the contrast
    assert float(scan.pixels.mean()) == pytest.approx(0.668913, abs=1e-3)
    assert float(np.abs(scan.pixels - load_scan(TB_PNG).pixels).max()) <= QUANTUM


def test_16bit_tiff(tmp_path: Path) -> None:
    path = tmp_path / "grey16.tif"
    Image.fromarray(grey8().astype(np.uint16) * 257).save(path, format="TIFF")
    np.testing.assert_allclose(load_scan(path).pixels, load_scan(TB_PNG).pixels, atol=1e-6)


def test_float_tiff_and_constant_image(tmp_path: Path) -> None:
    path = tmp_path / "float.tif"
    values = grey8().astype(np.float32) * 3.5 - 100
    Image.fromarray(values, mode="F").save(path, format="TIFF")
    np.testing.assert_allclose(load_scan(path).pixels, load_scan(TB_PNG).pixels, atol=1e-6)
    flat = tmp_path / "flat16.png"
    Image.fromarray(np.full((20, 30), 1234, dtype=np.uint16)).save(flat)
    scan = load_scan(flat)
    assert scan.pixels.shape == (20, 30) and not scan.pixels.any()  # zeros, not NaN


def test_raw_is_none_for_8bit_even_when_asked() -> None:
    assert load_scan(TB_PNG, keep_raw=True).raw is None
    assert load_scan(KERMANY_JPEG, keep_raw=True).raw is None


# --- DICOM: the real CR chest -------------------------------------------------------------------


def test_cr_chest_window_and_monochrome1_inversion_match_an_explicit_computation() -> None:
    scan = load_scan(CR_CHEST)
    stored = cr_stored().astype(np.float64)
    center, width = 550.0, 1024.0  # the file's Window Center / Width
    windowed = np.clip((stored - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(scan.pixels, 1.0 - windowed, atol=1e-6)
    # and the same as pydicom's own windowing (output range 0..1023 for 10 bits)
    pydicom_windowed = apply_windowing(cr_stored(), cr_dataset()) / 1023.0
    np.testing.assert_allclose(scan.pixels, 1.0 - pydicom_windowed, atol=1e-6)
    assert scan.metadata.window == (550.0, 1024.0)
    assert scan.metadata.extra["inverted"] == "MONOCHROME1"


def test_cr_chest_lungs_are_dark_and_mediastinum_bright() -> None:
    pixels = load_scan(CR_CHEST).pixels
    height, width = pixels.shape
    rows = slice(int(0.25 * height), int(0.60 * height))
    centre = float(pixels[rows, int(0.46 * width) : int(0.54 * width)].mean())
    right_lung = float(pixels[rows, int(0.20 * width) : int(0.35 * width)].mean())
    left_lung = float(pixels[rows, int(0.65 * width) : int(0.80 * width)].mean())
    # measured: centre 0.709, lungs 0.382 / 0.396; not inverted they would swap
    assert centre == pytest.approx(0.7087, abs=2e-3)
    assert right_lung == pytest.approx(0.3820, abs=2e-3)
    assert left_lung == pytest.approx(0.3963, abs=2e-3)
    assert centre > max(right_lung, left_lung) + 0.25


def test_cr_chest_reference_numbers_and_raw() -> None:
    scan = load_scan(CR_CHEST, keep_raw=True)
    assert float(scan.pixels.mean()) == pytest.approx(0.546570, abs=1e-5)
    assert float(scan.pixels.std()) == pytest.approx(0.156885, abs=1e-5)
    assert float(scan.pixels.min()) == pytest.approx(0.080156, abs=1e-5)
    assert float(scan.pixels.max()) == 1.0
    assert scan.raw is not None and scan.raw.dtype == np.float32
    np.testing.assert_array_equal(scan.raw, cr_stored().astype(np.float32))


def test_cr_chest_metadata_and_identifiers() -> None:
    meta = load_scan(CR_CHEST).metadata
    assert meta.source_format == "dicom"
    assert (meta.modality, meta.body_part, meta.view_position) == ("CR", "CHEST", "PA")
    assert meta.photometric == "MONOCHROME1" and meta.bits_stored == 10
    # no file meta in the file: read as DICOM's default encoding
    assert meta.transfer_syntax == "Implicit VR Little Endian"
    assert meta.patient_name == "Anonymized"
    assert "patient_name" not in meta.public_dict()
    assert not IDENTIFYING_FIELDS & set(meta.public_dict())


def test_dicom_metadata_fields_are_read(tmp_path: Path) -> None:
    path = write_cr_variant(
        tmp_path / "tagged.dcm",
        PatientName="Doe^Jane",
        PatientID="ID-4711",
        PatientBirthDate="19800101",
        PatientAge="045Y",
        PatientSex="F",
        StudyDate="20240131",
        StudyDescription="CHEST PA",
    )
    meta = load_scan(path).metadata
    assert (meta.patient_name, meta.patient_id, meta.patient_birth_date) == (
        "Doe^Jane",
        "ID-4711",
        "19800101",
    )
    assert (meta.patient_age, meta.patient_sex, meta.study_date) == ("045Y", "F", "20240131")
    assert meta.study_description == "CHEST PA"
    assert meta.transfer_syntax == "Explicit VR Little Endian"
    public = str(meta.public_dict())
    assert "Doe" not in public and "ID-4711" not in public and "19800101" not in public


def test_identifiers_never_reach_the_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    good = write_cr_variant(tmp_path / "good.dcm", PatientName="Secret^Name", PatientID="PID999")
    bad = write_cr_variant(
        tmp_path / "bad.dcm", PatientName="Secret^Name", PatientID="PID999", NumberOfFrames=4
    )
    load_scan(good)
    with pytest.raises(Exception):  # noqa: B017 - the message is tested elsewhere
        load_scan(bad)
    assert "Secret" not in caplog.text and "PID999" not in caplog.text


def test_monochrome2_copy_of_the_chest_gives_the_same_pixels(tmp_path: Path) -> None:
    stored = cr_stored()
    # invert the stored values and the window so MONOCHROME2 displays the same image
    path = write_cr_pixels(
        tmp_path / "mono2.dcm",
        1023 - stored,
        PhotometricInterpretation="MONOCHROME2",
        WindowCenter=1023 - 550 + 1,
        WindowWidth=1024,
    )
    np.testing.assert_allclose(load_scan(path).pixels, load_scan(CR_CHEST).pixels, atol=1e-6)


def test_rescale_slope_and_intercept_are_applied(tmp_path: Path) -> None:
    slope, intercept = 2.0, -1024.0
    # the same window expressed in modality units (LINEAR: c' = s·c + b + (1 − s)/2)
    path = write_cr_variant(
        tmp_path / "rescaled.dcm",
        RescaleSlope=slope,
        RescaleIntercept=intercept,
        WindowCenter=slope * 550 + intercept + (1 - slope) / 2,
        WindowWidth=slope * (1024 - 1) + 1,
    )
    scan = load_scan(path, keep_raw=True)
    np.testing.assert_allclose(scan.raw, cr_stored() * slope + intercept, atol=1e-4)
    np.testing.assert_allclose(scan.pixels, load_scan(CR_CHEST).pixels, atol=1e-5)
    assert scan.metadata.extra["rescale"] == "slope=2, intercept=-1024"


def test_without_a_window_the_image_is_scaled_min_max(tmp_path: Path) -> None:
    path = write_cr_variant(tmp_path / "nowindow.dcm", WindowCenter=None, WindowWidth=None)
    scan = load_scan(path)
    stored = cr_stored().astype(np.float64)
    expected = 1 - (stored - stored.min()) / (stored.max() - stored.min())
    np.testing.assert_allclose(scan.pixels, expected, atol=1e-6)
    assert scan.metadata.extra["window_source"] == "min-max"
    assert scan.metadata.window == pytest.approx((979 / 2, 979.0))


def test_first_of_several_windows_is_used(tmp_path: Path) -> None:
    path = write_cr_variant(
        tmp_path / "windows.dcm", WindowCenter=[550, 300], WindowWidth=[1024, 200]
    )
    scan = load_scan(path)
    np.testing.assert_allclose(scan.pixels, load_scan(CR_CHEST).pixels, atol=1e-6)
    assert scan.metadata.window == (550.0, 1024.0)


def test_bits_above_bits_stored_are_ignored(tmp_path: Path) -> None:
    stored = cr_stored()
    garbage = stored | np.uint16(0xF000)  # overlay or junk in the unused high bits
    path = write_cr_pixels(tmp_path / "highbits.dcm", garbage)
    np.testing.assert_allclose(load_scan(path).pixels, load_scan(CR_CHEST).pixels, atol=1e-6)


def test_voi_lut_function_sigmoid_is_honoured(tmp_path: Path) -> None:
    path = write_cr_variant(tmp_path / "sigmoid.dcm", VOILUTFunction="SIGMOID")
    stored = cr_stored().astype(np.float64)
    expected = 1 - 1 / (1 + np.exp(-4 * (stored - 550) / 1024))
    np.testing.assert_allclose(load_scan(path).pixels, expected, atol=1e-5)


def test_voi_lut_sequence_is_applied_when_there_is_no_window(tmp_path: Path) -> None:
    ds = cr_dataset()
    del ds.WindowCenter, ds.WindowWidth
    item = pydicom.Dataset()
    lut = (np.sqrt(np.arange(1024) / 1023) * 4095).astype(np.uint16)
    item.add_new(0x00283002, "US", [1024, 0, 12])  # LUT Descriptor: 1024 entries, 12 bits
    item.add_new(0x00283006, "US", lut.tolist())  # LUT Data
    ds.VOILUTSequence = pydicom.Sequence([item])
    scan = load_scan(write_dicom(tmp_path / "voilut.dcm", ds))
    expected = 1 - lut[cr_stored()].astype(np.float64) / 4095
    np.testing.assert_allclose(scan.pixels, expected, atol=1e-6)
    assert scan.metadata.extra["window_source"] == "dicom VOI LUT"
    assert scan.metadata.window is None  # a LUT was applied, not a linear window


def test_jpeg2000_cr_decodes(tmp_path: Path) -> None:
    scan = load_scan(CR_J2K, keep_raw=True)
    assert scan.pixels.shape == (1760, 1760)
    assert scan.metadata.transfer_syntax == "JPEG 2000 Image Compression"
    assert scan.metadata.photometric == "MONOCHROME1"
    assert float(scan.pixels.mean()) == pytest.approx(0.696079, abs=1e-4)
    assert float(scan.pixels.std()) == pytest.approx(0.359967, abs=1e-4)
    assert scan.raw is not None and scan.raw.shape == (1760, 1760)


# --- DICOM: every transfer syntax pydicom's test data offers ----------------------------------

_MR_VARIANTS = [
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_padded.dcm",
]


@pytest.mark.filterwarnings("ignore:The pixel data is .* excess padding")
@pytest.mark.parametrize("name", _MR_VARIANTS)
def test_lossless_syntaxes_of_mr_small_equal_the_uncompressed_file(name: str) -> None:
    reference = load_scan(pydicom_test_file("MR_small.dcm"), keep_raw=True)
    scan = load_scan(pydicom_test_file(name), keep_raw=True)
    np.testing.assert_array_equal(scan.raw, reference.raw)
    np.testing.assert_allclose(scan.pixels, reference.pixels, atol=1e-6)
    assert reference.metadata.window == (600.0, 1600.0)


_RGB_VARIANTS = [  # (file, tolerance against the RLE lossless original)
    ("SC_rgb_jpeg_gdcm.dcm", 1e-6),  # JPEG lossless (process 14)
    ("SC_rgb_gdcm_KY.dcm", 1e-6),  # JPEG 2000
    ("SC_rgb_rle_16bit.dcm", 1e-6),
    ("SC_rgb_rle_32bit.dcm", 1e-6),
    ("SC_rgb_dcmtk_+eb+cr.dcm", 2 / 255),  # JPEG baseline, RGB
    ("SC_rgb_jpeg_dcmtk.dcm", 2 / 255),  # JPEG baseline, YBR_FULL
    ("SC_rgb_dcmtk_+eb+cy+s2.dcm", 2 / 255),  # JPEG baseline, YBR_FULL_422
    ("SC_rgb_jls_lossy_line.dcm", 2 / 255),  # JPEG-LS near-lossless
    ("SC_ybr_full_422_uncompressed.dcm", 2 / 255),
]


@pytest.mark.parametrize(("name", "tolerance"), _RGB_VARIANTS)
def test_colour_syntaxes_decode_to_the_same_grey_image(name: str, tolerance: float) -> None:
    reference = load_scan(pydicom_test_file("SC_rgb_rle.dcm"))
    scan = load_scan(pydicom_test_file(name))
    assert scan.pixels.shape == (100, 100)
    assert float(np.abs(scan.pixels - reference.pixels).max()) <= tolerance


def test_colour_dicom_uses_the_same_luma_as_colour_rasters() -> None:
    ds = pydicom.dcmread(pydicom_test_file("SC_rgb_rle.dcm"))
    rgb = ds.pixel_array
    with Image.fromarray(rgb) as image:
        buffer = BytesIO()
        image.save(buffer, format="PNG")
    as_png = decode_scan(Path("rgb.png"), buffer.getvalue(), "0" * 64)
    np.testing.assert_allclose(
        load_scan(pydicom_test_file("SC_rgb_rle.dcm")).pixels, as_png.pixels, atol=1e-6
    )


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("image_dfl.dcm", (512, 512)),  # deflated explicit VR little endian
        ("JPGExtended.dcm", (1024, 256)),  # JPEG extended, 12-bit
        ("JPEG2000.dcm", (1024, 256)),
        ("JPEGLSNearLossless_16.dcm", (50, 10)),
        ("CT_small.dcm", (128, 128)),  # signed, rescaled to Hounsfield units
        ("examples_palette.dcm", (350, 800)),  # PALETTE COLOR
        ("ExplVR_BigEnd.dcm", (60, 80)),  # RGB, big endian
        ("GDCMJ2K_TextGBR.dcm", (400, 400)),  # YBR_RCT JPEG 2000
    ],
)
def test_other_syntaxes_and_photometrics_decode(name: str, shape: tuple[int, int]) -> None:
    scan = load_scan(pydicom_test_file(name))
    assert scan.pixels.shape == shape
    assert 0.0 <= float(scan.pixels.min()) <= float(scan.pixels.max()) <= 1.0
    assert float(scan.pixels.std()) > 0.01


def test_ct_raw_is_in_hounsfield_units() -> None:
    ds = pydicom.dcmread(pydicom_test_file("CT_small.dcm"))
    scan = load_scan(pydicom_test_file("CT_small.dcm"), keep_raw=True)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(scan.raw, expected, atol=1e-3)


# --- discovery and thumbnails -----------------------------------------------------------------


def test_supported_suffixes_and_limit() -> None:
    assert {
        ".png",
        ".jpg",
        ".jpeg",
        ".tif",
        ".tiff",
        ".bmp",
        ".dcm",
        ".dicom",
    } <= SUPPORTED_SUFFIXES
    assert all(s == s.lower() and s.startswith(".") for s in SUPPORTED_SUFFIXES)
    assert MAX_PIXELS == 60_000_000  # 8900² (79 MP, a 150 KB PNG bomb) is refused


def test_is_candidate(tmp_path: Path) -> None:
    assert is_candidate(TB_PNG) and is_candidate(CR_CHEST)
    upper = tmp_path / "SCAN.PNG"
    upper.write_bytes(b"anything")
    assert is_candidate(upper)  # the suffix is enough; content is checked when decoded
    for name in ("IM000001", "1.2.840.113619.2.55.3.604688119.868.1249343483.504"):
        bare = tmp_path / name
        bare.write_bytes(CR_CHEST.read_bytes())  # no preamble, implicit VR
        assert is_candidate(bare), name
    with_meta = write_dicom(tmp_path / "with_meta", cr_dataset())  # preamble + DICM
    assert is_candidate(with_meta)
    text = tmp_path / "README"
    text.write_text("hello")
    assert not is_candidate(text)
    assert not is_candidate(tmp_path / "notes.txt")
    dicomdir = tmp_path / "DICOMDIR"
    dicomdir.write_bytes(with_meta.read_bytes())
    assert not is_candidate(dicomdir)
    assert not is_candidate(tmp_path / "missing.xyz")  # OSError → False
    (tmp_path / "folder.xyz").mkdir()
    assert not is_candidate(tmp_path / "folder.xyz")
    assert not is_candidate(tmp_path / ("x" * 300))  # name too long → False, no raise


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((299, 299), (384, 384)), ((300, 150), (192, 384)), ((64, 64), (384, 384))],
)
def test_thumbnail_is_a_grey_jpeg_with_the_longest_side_given(
    shape: tuple[int, int], expected: tuple[int, int]
) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.random(shape, dtype=np.float32)
    data = make_thumbnail(pixels, 384)
    with Image.open(BytesIO(data)) as image:
        assert image.format == "JPEG" and image.mode == "L"
        assert image.size == expected  # (width, height)


def test_thumbnail_keeps_the_grey_levels() -> None:
    pixels = load_scan(TB_PNG).pixels
    data = make_thumbnail(pixels, 299)
    with Image.open(BytesIO(data)) as image:
        error = np.abs(np.asarray(image, dtype=np.int16) - grey8().astype(np.int16))
    assert float(error.mean()) < 2.0 and int(error.max()) <= 20  # JPEG q90, in grey levels
    assert len(data) < 25_000  # the same image as a PNG is ~48 kB
    with pytest.raises(ValueError, match="2-D"):
        make_thumbnail(np.zeros((3, 3, 3), dtype=np.float32), 10)


def test_thumbnail_quantises_as_before_nan_and_inf_included() -> None:
    """In-place quantising gives the bytes the straightforward formula gave (NaN → black,
    ±inf and out-of-range values clipped)."""
    pixels = load_scan(TB_PNG).pixels.copy()
    pixels[:9, :9] = np.nan
    pixels[20:25, :] = np.inf
    pixels[30:33, :] = -np.inf
    pixels[40:45, :] = 1.7
    with np.errstate(over="ignore"):
        grey = np.nan_to_num(pixels, nan=0.0) * np.float32(255.0) + np.float32(0.5)
    grey8 = np.clip(grey, 0.0, 255.0).astype(np.uint8)
    height, width = grey8.shape
    scale = 384 / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    expected = BytesIO()
    Image.fromarray(grey8).resize(
        size, Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    ).save(expected, "JPEG", quality=90)
    with np.errstate(over="ignore"):
        assert make_thumbnail(pixels, 384) == expected.getvalue()


def test_the_8_bit_working_image_gives_the_same_thumbnail(tmp_path: Path) -> None:
    """JPEG and 8-bit working images keep the levels their pixels were divided from
    (``Scan.grey8``: a 2048² JPEG decoded at 1/4 scale, a colour JPEG, an 8-bit PNG), and
    the thumbnail made from those is byte for byte the one made by quantising the float
    pixels; their model planes are the same without the range test; a 16-bit image keeps
    no 8-bit levels, and a full-resolution decode keeps none."""
    specs = [
        PreprocessSpec(64, 64),
        PreprocessSpec(224, 224, channels=3, scale=2.0, offset=-1.0),
        PreprocessSpec(320, 320, channels=3, resample="bicubic", fit="pad"),
    ]
    big = tmp_path / "big.jpg"
    Image.fromarray(grey8()).resize((2048, 2048), Image.Resampling.BICUBIC).save(big, quality=92)
    for path in (big, KERMANY_JPEG, TB_PNG):
        scan = load_working(path)
        assert scan.grey8 is not None and scan.grey8.dtype == np.uint8
        assert np.array_equal(np.divide(scan.grey8, np.float32(255), dtype=np.float32), scan.pixels)
        assert make_thumbnail(scan.grey8, 384) == make_thumbnail(scan.pixels, 384)
        # ... and its planes skip the range test, which could only pass: the same planes
        skipped = preprocess_planes(scan.pixels, specs, in_unit_range=True)
        tested = preprocess_planes(scan.pixels, specs)
        assert all(skipped[s].tobytes() == tested[s].tobytes() for s in specs)
    assert load_working(big).pixels.shape == (512, 512)  # the DCT-scaled decode
    assert load_working(write_png16(tmp_path / "deep.png")).grey8 is None
    assert load_scan(big).grey8 is None


def test_demo_samples_all_load_and_stay_small() -> None:
    samples = Path(__file__).resolve().parents[1] / "assets" / "samples"
    files = sorted(p for p in samples.iterdir() if p.suffix != ".md")
    assert len(files) >= 6
    assert sum(p.stat().st_size for p in files) < 1_500_000
    for path in files:
        assert is_candidate(path), path.name
        scan = load_scan(path)
        assert float(scan.pixels.std()) > 0.05, path.name


def test_two_threads_decode_the_same_pixels_without_global_side_effects() -> None:
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    paths = [*_all_fixture_images(), TB_PNG, CR_CHEST] * 2
    serial = [load_scan(p).pixels for p in paths]
    filters_before = list(warnings.filters)
    limit_before = Image.MAX_IMAGE_PIXELS
    with ThreadPoolExecutor(max_workers=2) as pool:
        threaded = list(pool.map(lambda p: load_scan(p).pixels, paths))
    for one, other in zip(serial, threaded, strict=True):
        np.testing.assert_array_equal(one, other)
    assert filters_before == list(warnings.filters)
    assert limit_before == Image.MAX_IMAGE_PIXELS

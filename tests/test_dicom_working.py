"""The DICOM working image made without full-resolution float copies equals the old one.

``dicom._grey_reduced`` applies the grey pipeline per stored value and reduces the integer
image first (or looks the table up per pixel where the window clips). Whatever the file asks
for, the result must be the block mean of the full-resolution pipeline's pixels: here the
reference is the full-resolution decode (``working_side=None``, the viewer's path, unchanged)
reduced by Pillow's float ``reduce``, which is what the working image was before.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from desktop.engine import dicom
from desktop.engine.dicom import block_mean
from desktop.engine.loading import load_scan, read_file
from desktop.engine.preprocess import WORKING_SIDE, decode_working, working_factor
from tests.fixtures import cr_dataset, cr_stored, write_cr_pixels, write_dicom

#: A clinic-sized image from the real CR chest (440², 10 bits): factor 2, with partial
#: blocks on both axes (the sizes are odd).
SIZE = (1031, 1347)  # rows, columns


def _enlarged(stored: np.ndarray) -> np.ndarray:
    image = Image.fromarray(stored.astype(np.float32), mode="F")
    big = np.asarray(image.resize((SIZE[1], SIZE[0]), Image.Resampling.BICUBIC))
    noise = np.random.default_rng(7).normal(0.0, 3.0, big.shape)
    return np.clip(np.rint(big + noise), 0, 1023).astype(np.uint16)


@pytest.fixture(scope="module")
def stored() -> np.ndarray:
    return _enlarged(cr_stored())


def _reference(path: Path) -> tuple[np.ndarray, object]:
    """The full-resolution pipeline's pixels reduced by Pillow, and the full decode's metadata."""
    full = load_scan(path)
    factor = working_factor(*full.pixels.shape)
    image = Image.fromarray(np.ascontiguousarray(full.pixels, dtype=np.float32), mode="F")
    return np.asarray(image.reduce(factor), dtype=np.float32), full.metadata


def _working(path: Path):
    data, sha = read_file(path)
    return decode_working(path, data, sha)


#: name: (elements changed, whether the table is a straight line over the stored values)
CASES: dict[str, tuple[dict[str, object], bool]] = {
    # MONOCHROME1 with its own window (550/1024 over 0..1023: clips at the top)
    "file window, MONOCHROME1": ({}, False),
    # a narrow window that clips both ends: the table is looked up per pixel
    "clipping window": ({"WindowCenter": 500, "WindowWidth": 300}, False),
    # a window a little wider than the data: a straight line, reduced as integers
    "wide window": (
        {"WindowCenter": 512, "WindowWidth": 1100, "PhotometricInterpretation": "MONOCHROME2"},
        True,
    ),
    # no window: min-max of the rescaled values (negative slope: min and max swap ends)
    "min-max, negative rescale": (
        {"WindowCenter": None, "WindowWidth": None, "RescaleSlope": -2, "RescaleIntercept": 100},
        True,
    ),
    "rescaled window": (
        {"RescaleSlope": 0.5, "RescaleIntercept": -1024, "WindowCenter": -800, "WindowWidth": 400},
        False,
    ),
    "sigmoid": ({"VOILUTFunction": "SIGMOID", "WindowCenter": 480, "WindowWidth": 500}, False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_dicom_working_image_is_the_block_mean_of_the_full_resolution_pipeline(
    tmp_path: Path, stored: np.ndarray, name: str, monkeypatch: pytest.MonkeyPatch
):
    elements, straight = CASES[name]
    path = write_cr_pixels(tmp_path / "cr.dcm", stored, Rows=SIZE[0], Columns=SIZE[1],
                           **elements)  # fmt: skip
    expected, full_meta = _reference(path)
    looked_up: list[int] = []  # block_mean runs on looked-up pixels only (not on a line)
    monkeypatch.setattr(dicom, "block_mean", lambda v, f: looked_up.append(f) or block_mean(v, f))
    scan = _working(path)
    assert looked_up == ([] if straight else [2])
    assert scan.pixels.dtype == np.float32 and scan.pixels.shape == expected.shape == (516, 674)
    assert np.abs(scan.pixels - expected).max() < 1e-5
    # the metadata is the full decode's: original size, window, what was applied
    assert (scan.metadata.width, scan.metadata.height) == (SIZE[1], SIZE[0])
    assert scan.metadata.window == full_meta.window
    assert scan.metadata.extra == full_meta.extra
    assert scan.pixels.min() >= 0.0 and scan.pixels.max() <= 1.0
    assert float(scan.pixels.std()) > 0.05  # a real image, not a flat one


def test_signed_dicom_working_image(tmp_path: Path, stored: np.ndarray):
    ds = cr_dataset()
    signed = (stored.astype(np.int32) - 600).astype("<i2")  # negative and positive values
    ds.Rows, ds.Columns, ds.PixelRepresentation = SIZE[0], SIZE[1], 1
    ds.WindowCenter, ds.WindowWidth = -100, 700
    ds.PixelData = signed.tobytes()
    path = write_dicom(tmp_path / "signed.dcm", ds)
    expected, _ = _reference(path)
    scan = _working(path)
    assert np.abs(scan.pixels - expected).max() < 1e-5
    assert float(scan.pixels.std()) > 0.05


def test_dicom_of_working_size_is_not_reduced(tmp_path: Path):
    path = write_cr_pixels(tmp_path / "small.dcm", cr_stored())  # 440²: factor 1
    assert np.array_equal(_working(path).pixels, load_scan(path).pixels)


def test_block_mean_matches_pillow_reduce_to_a_float32_rounding():
    rng = np.random.default_rng(3)
    values = rng.random((1031, 1347), dtype=np.float32)
    for factor in (2, 3, 4):
        image = Image.fromarray(values, mode="F")
        expected = np.asarray(image.reduce(factor), dtype=np.float32)
        ours = block_mean(values, factor)
        assert ours.shape == expected.shape  # partial edge blocks kept, as Pillow does
        assert np.abs(ours - expected).max() <= 6e-8  # Pillow rounds the last bit otherwise


def test_working_side_is_what_the_tests_assume():
    assert working_factor(*SIZE) == 2 and SIZE[0] // 2 >= WORKING_SIDE


# -- the working image read in place (no copy of the pixel values) --------------------------

_IN_PLACE = dicom._read_header_in_place  # the real one: tests patch the module's name


def _both_ways(path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[object, object, bool]:
    """(in-place outcome, full-read outcome, whether the in-place read was taken).

    An outcome is ``(pixels, metadata)`` or the ScanError's ``(code, message)``.
    """
    taken: list[bool] = []

    def spy(data: bytes):
        found = _IN_PLACE(data)
        taken.append(found is not None)
        return found

    def outcome():
        try:
            scan = _working(path)
        except dicom.ScanError as err:
            return err.code, err.message
        return scan.pixels, scan.metadata

    monkeypatch.setattr(dicom, "_read_header_in_place", spy)
    fast = outcome()
    monkeypatch.setattr(dicom, "_read_header_in_place", lambda data: None)
    full = outcome()
    return fast, full, any(taken)


def _same(fast: object, full: object) -> bool:
    if isinstance(fast[0], np.ndarray) and isinstance(full[0], np.ndarray):
        return np.array_equal(fast[0], full[0]) and fast[1] == full[1]
    return fast == full


def _uncompressed_test_files() -> list[Path]:
    from tests.fixtures import PYDICOM_TEST_FILES

    found = []
    for path in sorted(PYDICOM_TEST_FILES.rglob("*")):
        if not path.is_file():
            continue
        meta = dicom._file_meta_end(path.read_bytes())
        if meta is not None and meta[1] in dicom._IN_PLACE_SYNTAXES:
            found.append(path)
    return found


def test_in_place_read_equals_the_full_read_for_every_uncompressed_test_dicom(
    monkeypatch: pytest.MonkeyPatch,
):
    """pydicom's own uncompressed test files (MR, CT, US, RT, overlays, odd headers, 8/16 bits,
    signed, colour, multi-frame, damaged ones): the in-place read either declines or gives the
    very pixels, metadata or error of the full read."""
    files = _uncompressed_test_files()
    assert len(files) >= 20
    taken = 0
    for path in files:
        fast, full, used = _both_ways(path, monkeypatch)
        assert _same(fast, full), path.name
        taken += used
    assert taken >= 10  # the plain grey images were read in place


IN_PLACE_CASES: dict[str, dict[str, object]] = {
    "explicit VR, MONOCHROME1, 10 of 16 bits": {},
    "high bits set above Bits Stored (pydicom masks them)": {"garbage": True},
    "signed, high bits sign-extended": {"signed": True, "garbage": True},
    "signed, in range": {"signed": True},
    "16 of 16 bits": {"BitsStored": 16, "HighBit": 15},
    "implicit VR": {"implicit": True},
}


@pytest.mark.parametrize("name", list(IN_PLACE_CASES))
def test_in_place_working_image_equals_the_full_read(
    tmp_path: Path, stored: np.ndarray, name: str, monkeypatch: pytest.MonkeyPatch
):
    case = dict(IN_PLACE_CASES[name])
    garbage, signed, implicit = (case.pop(k, False) for k in ("garbage", "signed", "implicit"))
    ds = cr_dataset()
    ds.Rows, ds.Columns = SIZE
    values = stored.astype(np.int32) - (600 if signed else 0)
    if garbage:  # bits 12-14 set on a third of the pixels: not part of a 10-bit value
        values[::3] |= 0x7000
    ds.PixelRepresentation = int(signed)
    ds.PixelData = values.astype("<i2" if signed else "<u2").tobytes()
    for keyword, value in case.items():
        setattr(ds, keyword, value)
    syntax = dicom.ImplicitVRLittleEndian if implicit else None
    path = write_dicom(tmp_path / "cr.dcm", ds, syntax=syntax)
    fast, full, used = _both_ways(path, monkeypatch)
    assert used
    assert isinstance(fast[0], np.ndarray) and fast[0].shape == (516, 674)
    assert _same(fast, full)
    assert float(fast[0].std()) > 0.04  # an image, not a flat one


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_cut_short_pixel_data_is_left_to_the_full_read(
    tmp_path: Path, stored: np.ndarray, keep: float, monkeypatch: pytest.MonkeyPatch
):
    path = write_cr_pixels(tmp_path / "cr.dcm", stored, Rows=SIZE[0], Columns=SIZE[1])
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    fast, full, used = _both_ways(path, monkeypatch)
    assert not used
    assert fast == full and fast[0] == dicom.ScanErrorCode.TRUNCATED


def test_integer_block_sums_equal_float64_sums():
    """The narrow integer sums are the float64 sums exactly, at each type's overflow edge."""
    rng = np.random.default_rng(5)
    for dtype, lo, hi in (
        (np.uint8, 0, 255),
        (np.uint16, 0, 4095),  # 16 × 4095 fits uint16 at factor 4
        (np.uint16, 0, 4096),  # ... 16 × 4096 does not: uint32
        (np.uint16, 0, 65535),
        (np.int16, -2048, 2047),
        (np.int16, -32768, 32767),
    ):
        values = rng.integers(lo, hi, (1031, 1347), endpoint=True).astype(dtype)
        values[:4, :4] = hi  # one full block at the maximum: the largest sum
        for factor in (2, 3, 4, 5):
            expected = dicom._block_sums(values.astype(np.float64), factor)
            ours = dicom._block_sums(values, factor)
            assert ours.dtype == np.float64
            assert np.array_equal(ours, expected), (dtype, hi, factor)


def test_minmax_block_mean_is_minmax_then_block_mean():
    """The 16-bit raster working image without a float copy: min-max scaling then block means,
    to a float32 rounding, partial edge blocks and a flat image included."""
    rng = np.random.default_rng(11)
    for dtype, lo, hi in ((np.uint16, 100, 4095), (np.uint16, 0, 65535), (np.int16, -900, 3000)):
        values = rng.integers(lo, hi, (1031, 1347), endpoint=True).astype(dtype)
        for factor in (2, 3, 4):
            pixels, low, high = dicom.minmax_block_mean(values, factor)
            scaled, low2, high2 = dicom.minmax_to_unit(values)
            assert (low, high) == (low2, high2) == (float(values.min()), float(values.max()))
            expected = block_mean(scaled, factor)
            assert pixels.dtype == np.float32 and pixels.shape == expected.shape
            assert np.abs(pixels - expected).max() < 1e-6
    flat = np.full((900, 900), 7, dtype=np.uint16)
    pixels, _, _ = dicom.minmax_block_mean(flat, 2)
    assert pixels.shape == (450, 450) and not pixels.any()
    assert dicom.minmax_block_mean(values, 1) is None  # nothing to reduce
    assert dicom.minmax_block_mean(values.astype(np.float32), 2) is None  # floats: the old way

"""Every way a file can fail to load gets its own ScanError code and a message naming it."""

from __future__ import annotations

import errno
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from desktop.engine import dicom as dicom_module
from desktop.engine import loading
from desktop.engine.errors import ScanError, ScanErrorCode
from desktop.engine.loading import decode_scan, load_scan, read_file
from tests.fixtures import (
    CR_CHEST,
    KERMANY_JPEG,
    TB_PNG,
    load_fails,
    pydicom_test_file,
    write_cr_multiframe,
    write_cr_variant,
    write_cr_with_syntax,
    write_cr_without_pixels,
    write_png16,
    write_png_bomb,
    write_text,
    write_truncated,
    write_variant,
)

# --- reading the file ---------------------------------------------------------------------------


def test_vanished_file(tmp_path: Path) -> None:
    path = tmp_path / "scan.png"
    path.write_bytes(TB_PNG.read_bytes())
    path.unlink()  # deleted between discovery and reading
    assert load_fails(path, ScanErrorCode.VANISHED).startswith("file no longer exists")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.touch()
    assert load_fails(path, ScanErrorCode.EMPTY_FILE) == "file is empty (0 bytes)"
    with pytest.raises(ScanError) as info:
        decode_scan(path, b"", "0" * 64)
    assert info.value.code == ScanErrorCode.EMPTY_FILE


def test_folder_passed_as_a_file(tmp_path: Path) -> None:
    folder = tmp_path / "looks_like.png"
    folder.mkdir()
    assert "folder" in load_fails(folder, ScanErrorCode.UNREADABLE)


def test_permission_denied_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(*_args: object) -> int:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(loading.os, "open", denied)
    assert load_fails(TB_PNG, ScanErrorCode.UNREADABLE).startswith("permission denied")


@pytest.mark.skipif(
    sys.platform == "win32" or os.geteuid() == 0, reason="needs POSIX permissions, not root"
)
def test_permission_denied_on_a_real_file(tmp_path: Path) -> None:
    path = tmp_path / "locked.png"
    path.write_bytes(TB_PNG.read_bytes())
    path.chmod(0)
    try:
        assert load_fails(path, ScanErrorCode.UNREADABLE).startswith("permission denied")
    finally:
        path.chmod(0o600)


def test_path_too_long(tmp_path: Path) -> None:
    path = tmp_path / ("x" * 300 + ".png")
    message = load_fails(path, ScanErrorCode.UNREADABLE)
    assert "too long" in message and "characters" in message


def test_io_error_names_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object) -> int:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(loading.os, "open", broken)
    message = load_fails(TB_PNG, ScanErrorCode.UNREADABLE)
    assert "Input/output error" in message and "EIO" in message


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX named pipes")
def test_named_pipe_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "scan.png"
    os.mkfifo(fifo)
    assert "not a regular file" in load_fails(fifo, ScanErrorCode.UNREADABLE)


def test_unicode_path(tmp_path: Path) -> None:
    path = tmp_path / "Röntgen 胸部 ñ" / "Thorax_ü.png"
    path.parent.mkdir()
    path.write_bytes(TB_PNG.read_bytes())
    assert load_scan(path).pixels.shape == (299, 299)
    _data, digest = read_file(path)
    assert len(digest) == 64


# --- not an image, damaged, truncated -----------------------------------------------------------


def test_text_named_png(tmp_path: Path) -> None:
    message = load_fails(write_text(tmp_path / "notes.png"), ScanErrorCode.NOT_AN_IMAGE)
    assert message == (
        "not an image: the file content is not PNG/JPEG/TIFF/BMP/DICOM (it looks like text)"
    )


def test_text_named_dcm(tmp_path: Path) -> None:
    message = load_fails(write_text(tmp_path / "report.dcm"), ScanErrorCode.NOT_AN_IMAGE)
    assert "not DICOM" in message and "text" in message


@pytest.mark.parametrize(
    ("head", "fragment"),
    [
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + bytes(200), "PDF"),
        (b"PK\x03\x04" + bytes(200), "ZIP"),
        (b"\x00\x00\x00\x18ftypheic" + bytes(200), "HEIC"),
        (bytes(range(256)) * 2, "unrecognised binary"),
    ],
)
def test_other_non_images_are_named(tmp_path: Path, head: bytes, fragment: str) -> None:
    path = tmp_path / "file.jpg"
    path.write_bytes(head)
    assert fragment in load_fails(path, ScanErrorCode.NOT_AN_IMAGE)


@pytest.mark.parametrize("keep", [0.01, 0.3, 0.9, 0.999])
@pytest.mark.parametrize("source", [TB_PNG, KERMANY_JPEG], ids=["png", "jpeg"])
def test_truncated_rasters(tmp_path: Path, source: Path, keep: float) -> None:
    path = write_truncated(tmp_path / f"cut{source.suffix}", src=source, keep=keep)
    message = load_fails(path, ScanErrorCode.TRUNCATED)
    assert message.startswith("image data is truncated (file is incomplete or damaged)")


@pytest.mark.parametrize("size", [1, 3, 7])
def test_file_cut_inside_its_signature(tmp_path: Path, size: int) -> None:
    path = tmp_path / "cut.png"
    path.write_bytes(TB_PNG.read_bytes()[:size])
    assert load_fails(path, ScanErrorCode.TRUNCATED).startswith("image data is truncated")


@pytest.mark.parametrize(("name", "fmt"), [("cut.tif", "TIFF"), ("cut.bmp", "BMP")])
def test_truncated_tiff_and_bmp(tmp_path: Path, name: str, fmt: str) -> None:
    whole = write_variant(tmp_path / f"whole_{name}", "L", fmt=fmt)
    path = write_truncated(tmp_path / name, src=whole, keep=0.5)
    load_fails(path, ScanErrorCode.TRUNCATED)


def test_truncated_16bit_png(tmp_path: Path) -> None:
    whole = write_png16(tmp_path / "whole16.png")
    load_fails(
        write_truncated(tmp_path / "cut16.png", src=whole, keep=0.6), ScanErrorCode.TRUNCATED
    )


def test_damaged_png_data(tmp_path: Path) -> None:
    data = bytearray(TB_PNG.read_bytes())
    start = data.index(b"IDAT") + 40
    data[start : start + 64] = bytes(64)  # zeroed compressed data: corrupt, not short
    path = tmp_path / "damaged.png"
    path.write_bytes(bytes(data))
    with pytest.raises(ScanError) as info:
        load_scan(path)
    assert info.value.code in (ScanErrorCode.UNSUPPORTED_IMAGE, ScanErrorCode.TRUNCATED)
    assert "PNG" in info.value.message or "truncated" in info.value.message


def test_multipage_tiff(tmp_path: Path) -> None:
    path = tmp_path / "pages.tif"
    with PIL.Image.open(TB_PNG) as image:
        image.save(path, format="TIFF", save_all=True, append_images=[image, image])
    message = load_fails(path, ScanErrorCode.MULTI_FRAME)
    assert "3 pages" in message


# --- decompression bombs -------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(50_000, 50_000), (10_000, 9_000), (20_000, 10_000)])
def test_png_bomb_is_refused_from_its_header(tmp_path: Path, width: int, height: int) -> None:
    path = write_png_bomb(tmp_path / "bomb.png", width, height)
    limit_before = PIL.Image.MAX_IMAGE_PIXELS
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's bomb warning must not even be raised
        message = load_fails(path, ScanErrorCode.TOO_LARGE)
    assert time.perf_counter() - start < 1.0
    assert message == f"image is {width}×{height} pixels, more than the 60-megapixel limit"
    assert limit_before == PIL.Image.MAX_IMAGE_PIXELS  # no process-wide change


def test_just_under_the_limit_is_not_refused_from_the_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loading, "MAX_PIXELS", 299 * 299)
    assert load_scan(TB_PNG).pixels.shape == (299, 299)
    monkeypatch.setattr(loading, "MAX_PIXELS", 299 * 299 - 1)
    assert "0-megapixel limit" in load_fails(TB_PNG, ScanErrorCode.TOO_LARGE)


def test_dicom_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    path = write_cr_variant(tmp_path / "huge.dcm", Rows=10_000, Columns=9_000)
    message = load_fails(path, ScanErrorCode.TOO_LARGE)
    assert message == "image is 9000×10000 pixels, more than the 60-megapixel limit"


def test_huge_file_is_refused_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loading, "MAX_FILE_BYTES", 1000)
    assert "MiB limit" in load_fails(TB_PNG, ScanErrorCode.TOO_LARGE)


# --- DICOM refusals ------------------------------------------------------------------------------


def test_dicom_without_pixel_data(tmp_path: Path) -> None:
    message = load_fails(
        write_cr_without_pixels(tmp_path / "nopix.dcm"), ScanErrorCode.NO_PIXEL_DATA
    )
    assert message.startswith(
        "DICOM file has no image (no Pixel Data): it may be a report or structured document"
    )


def test_structured_report_names_its_kind() -> None:
    message = load_fails(pydicom_test_file("test-SR.dcm"), ScanErrorCode.NO_PIXEL_DATA)
    assert "Comprehensive SR Storage" in message


def test_multiframe_dicom(tmp_path: Path) -> None:
    message = load_fails(write_cr_multiframe(tmp_path / "cine.dcm", 3), ScanErrorCode.MULTI_FRAME)
    assert message == "multi-frame DICOM (3 frames) is not supported: export a single image"
    real = load_fails(pydicom_test_file("SC_rgb_rle_2frame.dcm"), ScanErrorCode.MULTI_FRAME)
    assert "(2 frames)" in real


@pytest.mark.parametrize(
    ("uid", "name"),
    [
        ("1.2.840.10008.1.2.4.100", "MPEG2 Main Profile / Main Level"),
        ("1.2.840.10008.1.2.4.94", "JPIP Referenced"),
        ("1.2.826.0.1.3680043.9999.1.2", None),  # a private, unknown syntax
    ],
)
def test_unsupported_transfer_syntax_is_named(tmp_path: Path, uid: str, name: str | None) -> None:
    path = write_cr_with_syntax(tmp_path / "odd.dcm", uid)
    message = load_fails(path, ScanErrorCode.UNSUPPORTED_TRANSFER_SYNTAX)
    assert uid in message
    if name:
        assert name in message
    assert "uncompressed" in message  # says what to do


def test_missing_decoder_plugin_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class _Unavailable:
        is_available = False
        missing_dependencies = ("pylibjpeg-openjpeg - requires pylibjpeg-openjpeg>=2.0",)

    monkeypatch.setattr(dicom_module, "get_decoder", lambda _uid: _Unavailable())
    message = load_fails(CR_CHEST, ScanErrorCode.UNSUPPORTED_TRANSFER_SYNTAX)
    assert "Implicit VR Little Endian" in message and "1.2.840.10008.1.2" in message
    assert "pylibjpeg-openjpeg" in message and "Install" in message


def test_truncated_dicom_pixel_data() -> None:
    message = load_fails(pydicom_test_file("MR_truncated.dcm"), ScanErrorCode.TRUNCATED)
    assert "truncated" in message


def test_truncated_dicom_file(tmp_path: Path) -> None:
    path = write_truncated(tmp_path / "cut.dcm", src=CR_CHEST, keep=0.5)
    with pytest.raises(ScanError) as info:
        load_scan(path)
    assert info.value.code == ScanErrorCode.TRUNCATED


def test_dicom_with_invalid_size(tmp_path: Path) -> None:
    path = write_cr_variant(tmp_path / "nosize.dcm", Rows=0)
    assert "invalid size" in load_fails(path, ScanErrorCode.UNSUPPORTED_IMAGE)


# --- nothing escapes as a bare exception ---------------------------------------------------------


def test_unexpected_failure_becomes_internal(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*_args: object) -> None:
        raise RuntimeError("something odd")

    monkeypatch.setattr(loading, "_raster_to_scan", explode)
    message = load_fails(TB_PNG, ScanErrorCode.INTERNAL)
    # the type is named; the message is not quoted (it may hold file content: issue 9)
    assert "RuntimeError" in message and "something odd" not in message


def test_decoder_failure_becomes_unsupported_image(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(_ds: object) -> np.ndarray:
        raise RuntimeError("plugin crashed")

    monkeypatch.setattr(dicom_module.Dataset, "pixel_array", property(explode))
    message = load_fails(CR_CHEST, ScanErrorCode.UNSUPPORTED_IMAGE)
    assert "RuntimeError" in message and "plugin crashed" not in message


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the mangled values
def test_fuzzed_bytes_never_raise_anything_but_scan_error() -> None:
    rng = np.random.default_rng(1234)
    sources = [TB_PNG.read_bytes(), KERMANY_JPEG.read_bytes(), CR_CHEST.read_bytes()]
    for index in range(60):
        data = bytearray(sources[index % 3])
        for _ in range(8):
            position = int(rng.integers(0, min(len(data), 4000)))
            data[position] = int(rng.integers(0, 256))
        try:
            scan = decode_scan(Path(f"fuzz{index}"), bytes(data), "0" * 64)
        except ScanError:
            continue
        assert scan.pixels.dtype == np.float32

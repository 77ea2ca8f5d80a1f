"""Issue 9: nothing one file can do stops a batch, leaks a name or changes a result.

Every file here is built at test time from a real one (tests/hostile.py): the fo-dicom CR
chest saved as RLE with one byte damaged, a deflate bomb with the CR header, elements whose
length swallows planted patient identifiers, a float TIFF of the NLM chest with NaN.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import tracemalloc
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest

from desktop.engine import dicom, loading, sandbox, trust
from desktop.engine.budget import PixelBudget
from desktop.engine.errors import MAX_REASON_CHARS, ScanError, ScanErrorCode, cap_reason
from desktop.engine.loading import decode_scan, load_scan
from desktop.engine.registry import load_model_set
from desktop.engine.results import ScanStatus
from desktop.engine.runner import BatchRunner, run_to_end
from desktop.engine.store import ResultsStore
from tests.conftest import REPO
from tests.fixtures import (
    CR_CHEST,
    CR_J2K,
    KERMANY_JPEG,
    TB_PNG,
    load_fails,
    write_cr_variant,
    write_png_bomb,
)
from tests.hostile import (
    IDENTIFIERS,
    PATIENT_NAME,
    _meta_end,
    crash_on_marker,
    write_damaged_rle,
    write_deflate_bomb,
    write_deflated,
    write_nan_tiff,
    write_rle,
    write_swallowing,
)
from tests.model_factory import TEST_KEY


def _no_identifier(text: str) -> None:
    for identifier in IDENTIFIERS:
        assert identifier not in text, f"{identifier!r} leaked into: {text[:200]!r}"


# --- defect 1: a native decoder that panics or crashes costs one file ----------------------------


def test_damaged_rle_is_one_files_error_not_a_panic(tmp_path: Path) -> None:
    path = write_damaged_rle(tmp_path / "damaged_rle.dcm")
    message = load_fails(path, ScanErrorCode.DECODER_CRASHED)
    assert message.startswith("the decoder crashed on this file")
    _no_identifier(message)
    # the same file undamaged decodes in the worker exactly as in process
    good = load_scan(write_rle(tmp_path / "rle.dcm"))
    assert np.array_equal(good.pixels, load_scan(CR_CHEST).pixels)


def test_damaged_rle_does_not_stop_the_batch(stand_in_models: Path, tmp_path: Path) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    write_damaged_rle(folder / "a_damaged_rle.dcm")
    shutil.copy(TB_PNG, folder / "b_chest.png")
    shutil.copy(CR_J2K, folder / "c_j2k.dcm")
    runner = BatchRunner(
        load_model_set([stand_in_models]), ResultsStore(tmp_path / "r.db"), workers=2
    )
    summary = run_to_end(runner.run([folder]))
    assert not summary.cancelled and summary.total == 3 and summary.errors == 1
    rows = {Path(r.file).name: r for r in runner.store.batch_results(summary.batch_id)}
    assert rows["a_damaged_rle.dcm"].error_code == ScanErrorCode.DECODER_CRASHED.value
    assert rows["b_chest.png"].status is not ScanStatus.ERROR
    assert rows["c_j2k.dcm"].status is not ScanStatus.ERROR  # decoded in a worker
    assert 0 < runner.pixel_budget.peak <= runner.pixel_budget.capacity


def _rle_request(tmp_path: Path) -> sandbox.Request:
    import pydicom

    ds = pydicom.dcmread(write_rle(tmp_path / "rle.dcm"))
    return sandbox.build_request(ds, ds.file_meta.TransferSyntaxUID)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGSEGV is POSIX")
def test_a_segfaulting_decoder_costs_one_file_and_is_replaced(tmp_path: Path) -> None:
    pool = sandbox.DecoderPool(1, function=crash_on_marker)
    try:
        request = _rle_request(tmp_path)
        first = pool.run(request)
        with pytest.raises(ScanError) as info:
            pool.run({**request, "pixel_data": b"SEGV" + request["pixel_data"]})
        assert info.value.code == ScanErrorCode.DECODER_CRASHED
        assert "SIGSEGV" in info.value.message and "rest of the batch" in info.value.message
        again = pool.run(request)  # a fresh worker took over
        assert np.array_equal(first, again) and first.shape == (440, 440)
    finally:
        pool.close()


def test_a_hanging_decoder_is_stopped(tmp_path: Path) -> None:
    pool = sandbox.DecoderPool(1, function=crash_on_marker, timeout_s=3)
    try:
        request = _rle_request(tmp_path)
        pool.run(request)  # warm: the timeout covers the decode, not the start-up
        with pytest.raises(ScanError) as info:
            pool.run({**request, "pixel_data": b"HANG" + request["pixel_data"]})
        assert info.value.code == ScanErrorCode.DECODER_TIMEOUT
        assert pool.run(request).shape == (440, 440)
    finally:
        pool.close()


def test_segfault_through_the_runner(
    stand_in_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = sandbox.DecoderPool(1, function=crash_on_marker)
    monkeypatch.setattr(sandbox, "_default", pool)
    real_build = sandbox.build_request

    def marked(ds: object, tsyntax: str) -> sandbox.Request:
        request = real_build(ds, tsyntax)
        return {**request, "pixel_data": b"SEGV" + request["pixel_data"]}

    monkeypatch.setattr(sandbox, "build_request", marked)
    folder = tmp_path / "scans"
    folder.mkdir()
    write_rle(folder / "rle.dcm")
    shutil.copy(TB_PNG, folder / "chest.png")
    runner = BatchRunner(load_model_set([stand_in_models]), ResultsStore(tmp_path / "r.db"))
    summary = run_to_end(runner.run([folder]))
    rows = {Path(r.file).name: r for r in runner.store.batch_results(summary.batch_id)}
    assert rows["rle.dcm"].error_code == ScanErrorCode.DECODER_CRASHED.value
    assert rows["chest.png"].status is not ScanStatus.ERROR
    pool.close()


class _Panic(BaseException):
    """Stands for pyo3's PanicException: a BaseException, not an Exception."""


def test_runner_turns_any_base_exception_into_a_row(
    stand_in_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from desktop.engine import runner as runner_module

    real = runner_module.decode_working

    def panicky(path: Path, data: bytes, sha: str) -> object:
        if path.suffix == ".png":
            raise _Panic("index out of bounds")
        return real(path, data, sha)

    monkeypatch.setattr(runner_module, "decode_working", panicky)
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(TB_PNG, folder / "a.png")
    shutil.copy(KERMANY_JPEG, folder / "b.jpeg")
    runner = BatchRunner(load_model_set([stand_in_models]), ResultsStore(tmp_path / "r.db"))
    summary = run_to_end(runner.run([folder]))
    assert not summary.cancelled and summary.errors == 1 and summary.total == 2
    rows = {Path(r.file).name: r for r in runner.store.batch_results(summary.batch_id)}
    assert rows["a.png"].error_code == ScanErrorCode.INTERNAL.value
    assert "_Panic" in rows["a.png"].reason and "index out" not in rows["a.png"].reason

    def interrupted(path: Path, data: bytes, sha: str) -> object:
        raise KeyboardInterrupt

    monkeypatch.setattr(runner_module, "decode_working", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_to_end(runner.run([folder / "a.png"]))


# --- defect 4: bounded resources before decoding --------------------------------------------------


def test_deflate_bomb_is_refused_before_inflating(tmp_path: Path) -> None:
    path = write_deflate_bomb(tmp_path / "bomb.dcm", inflated_mib=1024)
    assert path.stat().st_size < 1_500_000  # a 1 MB file that inflates to 1 GiB
    tracemalloc.start()
    try:
        message = load_fails(path, ScanErrorCode.TOO_LARGE)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "inflates to more than 256 MiB" in message
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB held while checking a deflate bomb"
    bare = tmp_path / "bare_bomb.dcm"  # the same without its 132-byte preamble
    bare.write_bytes(path.read_bytes()[132:])
    assert "inflates to more than" in load_fails(bare, ScanErrorCode.TOO_LARGE)


def test_real_deflated_dicom_still_decodes(tmp_path: Path) -> None:
    scan = load_scan(write_deflated(tmp_path / "deflated.dcm"))
    assert np.array_equal(scan.pixels, load_scan(CR_CHEST).pixels)


def test_deflated_dicom_is_inflated_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the size check used to inflate the data set to count it, then pydicom inflated it again
    inflated: list[int] = []
    real_decompress, real_decompressobj = zlib.decompress, zlib.decompressobj

    def decompress(data: bytes, *args: int) -> bytes:
        out = real_decompress(data, *args)
        inflated.append(len(out))
        return out

    class Counting:
        def __init__(self, *args: int) -> None:
            self._inner = real_decompressobj(*args)

        def decompress(self, data: bytes, max_length: int = 0) -> bytes:
            out = self._inner.decompress(data, max_length)
            inflated.append(len(out))
            return out

        def __getattr__(self, name: str) -> object:
            return getattr(self._inner, name)

    monkeypatch.setattr(zlib, "decompress", decompress)
    monkeypatch.setattr(zlib, "decompressobj", Counting)
    path = write_deflated(tmp_path / "deflated.dcm")
    raw = path.read_bytes()
    data_set = real_decompressobj(-zlib.MAX_WBITS).decompress(raw[_meta_end(raw) :])
    inflated.clear()
    scan = load_scan(path)
    assert np.array_equal(scan.pixels, load_scan(CR_CHEST).pixels)
    assert sum(inflated) == len(data_set), f"{sum(inflated)} bytes inflated for {len(data_set)}"
    # a data set larger than what the check keeps is counted, then read by pydicom as before
    monkeypatch.setattr(dicom, "KEEP_INFLATED_BYTES", len(data_set) // 2)
    inflated.clear()
    assert np.array_equal(load_scan(path).pixels, scan.pixels)
    assert sum(inflated) == 2 * len(data_set)


def test_pixel_bytes_are_checked_before_decoding(tmp_path: Path) -> None:
    # 7500² is under the pixel limit, but 64 bits per pixel is 429 MiB: refused from the header
    path = write_cr_variant(tmp_path / "deep.dcm", Rows=7500, Columns=7500, BitsAllocated=64)
    assert "MiB decoded" in load_fails(path, ScanErrorCode.TOO_LARGE)
    path = write_cr_variant(tmp_path / "odd.dcm", BitsAllocated=12)
    assert "Bits Allocated (12" in load_fails(path, ScanErrorCode.UNSUPPORTED_IMAGE)


def test_8900_square_png_bomb_is_refused(tmp_path: Path) -> None:
    message = load_fails(write_png_bomb(tmp_path / "b.png", 8900, 8900), ScanErrorCode.TOO_LARGE)
    assert "60-megapixel" in message


def test_pixel_budget_bounds_what_threads_hold_together() -> None:
    budget = PixelBudget(100)
    held: list[int] = []
    lock = threading.Lock()

    def work(pixels: int) -> None:
        with budget.lease() as lease:
            lease.reserve(pixels)
            with lock:
                held.append(budget.in_use)
            time.sleep(0.05)

    threads = [threading.Thread(target=work, args=(p,)) for p in (60, 60, 60, 150, 10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not any(t.is_alive() for t in threads)  # no deadlock, 150 > capacity ran alone
    assert budget.in_use == 0 and len(held) == 5
    assert budget.peak == 150  # the oversized image, alone
    assert all(h <= 100 or h == 150 for h in held)


def test_decode_charges_the_lease_before_decoding() -> None:
    budget = PixelBudget(10**9)
    with budget.lease() as lease:
        decode_scan(TB_PNG, TB_PNG.read_bytes(), "0" * 64, lease=lease)
        assert lease.pixels == 299 * 299 and budget.in_use == 299 * 299
    with budget.lease() as lease, loading.charging(lease):
        load_scan(CR_CHEST)
        assert lease.pixels == 440 * 440
    assert budget.in_use == 0


# --- defect 5: no identifier outside the identifier fields ---------------------------------------

SWALLOWERS = ("Modality", "ManufacturerModelName", "SOPInstanceUID", "InstanceCreationDate")


@pytest.mark.parametrize("keyword", SWALLOWERS)
def test_swallowed_identifiers_stay_out_of_metadata_and_messages(
    tmp_path: Path, keyword: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_swallowing(tmp_path / f"{keyword}.dcm", keyword)
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:  # this test is single-threaded
        warnings.simplefilter("always")
        scan = load_scan(path)
    meta = scan.metadata
    for name, value in meta.as_dict().items():
        if name not in ("patient_name", "patient_id", "patient_birth_date"):
            _no_identifier(str(value))
    for warning in caught:
        _no_identifier(str(warning.message))
    for record in caplog.records:
        _no_identifier(record.getMessage())


def test_swallowing_charset_warns_nothing_identifying(tmp_path: Path) -> None:
    from tests.fixtures import write_dicom
    from tests.hostile import identified_cr

    ds = identified_cr()
    ds.SpecificCharacterSet = "ISO_IR 100"
    write_dicom(tmp_path / "cs.dcm", ds)
    # reuse the swallowing builder on that file's charset element
    import struct

    data = bytearray((tmp_path / "cs.dcm").read_bytes())
    at = data.find(struct.pack("<HH", 0x0008, 0x0005) + b"CS")
    end = data.find(b"19470923") + 8
    data[at + 6 : at + 8] = struct.pack("<H", end - at - 8)
    path = tmp_path / "cs_swallow.dcm"
    path.write_bytes(bytes(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            load_scan(path)
        except ScanError as err:
            _no_identifier(err.message)
    for warning in caught:
        _no_identifier(str(warning.message))


def test_long_photometric_with_a_name_gives_a_short_clean_reason(tmp_path: Path) -> None:
    value = "MONOCHROME2 " + (PATIENT_NAME + " ") * 1500  # ~40,000 characters
    path = write_cr_variant(tmp_path / "long.dcm", PhotometricInterpretation=value)
    with pytest.raises(ScanError) as info:
        load_scan(path)
    assert len(info.value.message) <= MAX_REASON_CHARS
    _no_identifier(info.value.message)


def test_reasons_are_capped_at_a_word_boundary() -> None:
    text = "word " * 10_000
    capped = cap_reason(text)
    assert len(capped) <= MAX_REASON_CHARS and capped.endswith("word…")
    assert cap_reason("short") == "short"
    err = ScanError(ScanErrorCode.UNSUPPORTED_IMAGE, "x" * 40_000)
    assert len(err.message) == MAX_REASON_CHARS and str(err) == err.message


# --- defect 9: NaN pixels, truncated DICOM -------------------------------------------------------


def test_nan_and_inf_float_tiff_gives_finite_pixels(tmp_path: Path) -> None:
    scan = load_scan(write_nan_tiff(tmp_path / "nan.tif"))
    assert np.isfinite(scan.pixels).all()
    assert float(scan.pixels.min()) >= 0.0 and float(scan.pixels.max()) <= 1.0
    nan_only = load_scan(write_nan_tiff(tmp_path / "nan_only.tif", extremes=False)).pixels
    assert np.isfinite(nan_only).all()
    assert float(nan_only.std()) > 0.1  # the chest is still there, not a flat image


@pytest.mark.parametrize("cut", [500, 620, 700, 900])
def test_dicom_cut_in_its_header_is_called_truncated(tmp_path: Path, cut: int) -> None:
    from tests.fixtures import write_dicom
    from tests.hostile import identified_cr

    whole = write_dicom(tmp_path / "whole.dcm", identified_cr()).read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(whole[:cut])
    message = load_fails(path, ScanErrorCode.TRUNCATED)
    assert "report" not in message and "truncated" in message


# --- a whole batch of hostile files, every output and log scanned --------------------------------

_CLI = """
import logging, sys
from desktop.engine import trust
trust.TRUSTED_KEYS["test"] = sys.argv[1]
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
from desktop.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_hostile_batch_exits_0_and_leaks_no_identifier(
    stand_in_models: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    hostile = {
        "damaged_rle.dcm": (write_damaged_rle, ScanErrorCode.DECODER_CRASHED),
        "bomb.dcm": (lambda p: write_deflate_bomb(p, 300), ScanErrorCode.TOO_LARGE),
        "png_bomb.png": (lambda p: write_png_bomb(p, 8900, 8900), ScanErrorCode.TOO_LARGE),
    }
    for name, (build, _) in hostile.items():
        build(folder / name)
    for keyword in SWALLOWERS:
        write_swallowing(folder / f"swallow_{keyword}.dcm", keyword)
    write_nan_tiff(folder / "nan.tif")
    write_cr_variant(
        folder / "long_photometric.dcm",
        PhotometricInterpretation="MONOCHROME2 " + (PATIENT_NAME + " ") * 1500,
    )
    write_rle(folder / "good_rle.dcm")
    for real in (TB_PNG, KERMANY_JPEG, CR_CHEST, CR_J2K):
        shutil.copy(real, folder / f"real_{real.name}")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _CLI,
            trust.public_raw(TEST_KEY).hex(),
            "classify",
            str(folder),
            "--out",
            str(out),
            "--models",
            str(stand_in_models),
            "--db",
            str(tmp_path / "r.db"),
            "--report",
            "pdf",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import csv

    with (out / "results.csv").open(encoding="utf-8-sig", newline="") as fh:
        rows = {Path(r["file"]).name: r for r in csv.DictReader(fh)}
    files = sorted(p.name for p in folder.iterdir())
    assert sorted(rows) == files  # one row per file
    for name, (_, code) in hostile.items():
        assert rows[name]["status"] == "error", rows[name]
        assert rows[name]["error_code"] == code.value, rows[name]
    assert rows["long_photometric.dcm"]["error_code"] == ScanErrorCode.UNSUPPORTED_IMAGE.value
    for name in ("nan.tif", "good_rle.dcm", *[f"real_{p.name}" for p in (TB_PNG, CR_J2K)]):
        assert rows[name]["status"] != "error", rows[name]
    for row in rows.values():
        assert "nan" not in row.get("modality_score", "").lower()
        assert len(row["reason"]) <= MAX_REASON_CHARS
    texts = [proc.stdout, proc.stderr]
    for output in out.rglob("*"):
        if output.suffix == ".pdf":
            pdf = subprocess.run(
                ["pdftotext", str(output), "-"], capture_output=True, text=True, check=False
            )
            if pdf.returncode == 0:
                texts.append(pdf.stdout)
            texts.append(output.read_bytes().decode("latin-1"))
        elif output.is_file():
            texts.append(output.read_bytes().decode("utf-8", "replace"))
    assert any(p.suffix == ".pdf" for p in out.rglob("*"))
    for text in texts:
        _no_identifier(text)


def test_pydicom_log_lines_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    import pydicom

    from desktop.engine.dicom import configure_pydicom

    configure_pydicom()
    assert pydicom.config.settings.reading_validation_mode == pydicom.config.IGNORE
    # the CLI's logging set-up puts pydicom at ERROR; the filter must hold at every level
    caplog.set_level(logging.DEBUG, logger="pydicom")
    logging.getLogger("pydicom").warning("Invalid value for VR PN: '%s'", PATIENT_NAME)
    try:
        raise ValueError(f"bad value '{PATIENT_NAME}'")
    except ValueError:
        logging.getLogger("pydicom.pixels.decoders.base").exception("decode failed")
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("pydicom")]
    assert len(messages) == 2 and "<value withheld>" in messages[0]
    assert "traceback withheld" in messages[1]
    assert all(r.exc_info is None for r in caplog.records if r.name.startswith("pydicom"))
    for message in messages:
        _no_identifier(message)

    # a pydicom logger created after the first set-up (a module imported later) is filtered
    # too, once the next DICOM read has run the set-up again
    caplog.clear()
    later = logging.getLogger("pydicom.imported_later_by_a_plugin")
    configure_pydicom()
    later.error("Invalid value for VR PN: '%s'", PATIENT_NAME)
    (record,) = [r for r in caplog.records if r.name == later.name]
    assert "<value withheld>" in record.getMessage()
    _no_identifier(record.getMessage())


def test_tiff_with_a_damaged_page_directory_is_the_files_error() -> None:
    # found by the fuzz harness (seed 10): 9 bytes cut from the real chest saved as TIFF
    # make Pillow raise TypeError while counting pages; it was reported as internal_error
    import io

    from PIL import Image

    buffer = io.BytesIO()
    with Image.open(TB_PNG) as image:
        image.convert("L").save(buffer, format="TIFF")
    whole = buffer.getvalue()
    damaged = whole[:78] + whole[87:]
    with pytest.raises(ScanError) as info:
        decode_scan(Path("damaged.tif"), damaged, "0" * 64)
    assert info.value.code == ScanErrorCode.UNSUPPORTED_IMAGE
    assert "page directory is damaged" in info.value.message

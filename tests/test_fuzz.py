"""A short, seeded run of the loader fuzz harness (tests/fuzz_harness.py): real PNG, JPEG,
TIFF, BMP and DICOM (uncompressed, RLE, deflated, JPEG 2000) mutated 160 times, each decoded in
a memory-capped child process. Nothing may crash, hang or raise anything but a ScanError."""

from __future__ import annotations

import sys

import pytest

from tests.fuzz_harness import fuzz


@pytest.mark.skipif(sys.platform == "win32", reason="the harness uses RLIMIT_AS and select")
def test_short_fuzz_run_finds_no_crash_hang_or_stray_exception() -> None:
    report = fuzz(cases=160, seed=20261201)
    assert sum(report.outcomes.values()) == 160
    assert report.failures == 0, report.bad
    assert report.outcomes["scan_error:internal_error"] == 0
    # the mutations reach both outcomes the loader promises, for every source
    assert report.outcomes["ok"] > 0
    assert any(k.startswith("scan_error:") for k in report.outcomes)
    assert len(report.by_source) == 8

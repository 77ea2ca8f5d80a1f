"""What decoding compressed DICOM in a worker process costs, next to decoding it in process.

Compressed DICOM pixel data is decoded in a :class:`~desktop.engine.sandbox.DecoderPool`
worker (a Rust panic or a segfault there costs one file, not the batch). This prints, per
file, the median time of the stored-pixel decode in process (``ds.pixel_array``) and through
the warm pool (request built, sent, decoded, array sent back), the difference, the one-off
worker start-up and the worker's resident memory.

Usage: ``python benchmarks/bench_isolation.py [--repeat 15]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import numpy as np
import psutil
import pydicom
from PIL import Image
from pydicom.uid import JPEG2000Lossless

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from desktop.engine import sandbox  # noqa: E402
from tests.fixtures import CR_J2K, TB_PNG, cr_dataset, write_dicom  # noqa: E402
from tests.hostile import write_rle  # noqa: E402


def chest_2048_j2k(dest: Path) -> Path:
    """The NLM chest enlarged to 2048², 12-bit, JPEG 2000 lossless: a clinic-sized CR."""
    with Image.open(TB_PNG) as image:
        big = np.asarray(image.convert("L").resize((2048, 2048), Image.Resampling.BICUBIC))
    ds = cr_dataset()
    values = (big.astype(np.uint16) << 4) | (big.astype(np.uint16) >> 4)
    ds.Rows = ds.Columns = 2048
    ds.BitsStored, ds.HighBit = 12, 11
    ds.PixelData = values.tobytes()
    ds.compress(JPEG2000Lossless)
    return write_dicom(dest, ds, syntax=JPEG2000Lossless)


def median_ms(function: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = {
            "CR chest 440² RLE": write_rle(Path(tmp) / "rle.dcm"),
            "CR tibia 1760² JPEG 2000": CR_J2K,
            "chest 2048² 12-bit JPEG 2000": chest_2048_j2k(Path(tmp) / "j2k.dcm"),
        }
        pool = sandbox.DecoderPool(1)
        start = time.perf_counter()
        ds0 = pydicom.dcmread(files["CR chest 440² RLE"])
        pool.run(sandbox.build_request(ds0, ds0.file_meta.TransferSyntaxUID))
        startup_s = time.perf_counter() - start
        worker = pool._idle[0].process.pid
        print(f"worker start-up (first call, spawn + imports): {startup_s:.2f} s")
        print(f"{'file':32s} {'in process':>11s} {'isolated':>9s} {'overhead':>9s}")
        for name, path in files.items():
            data = path.read_bytes()

            def in_process(data: bytes = data) -> np.ndarray:
                return pydicom.dcmread(BytesIO(data), force=True).pixel_array

            def isolated(data: bytes = data) -> np.ndarray:
                ds = pydicom.dcmread(BytesIO(data), force=True)
                return pool.run(sandbox.build_request(ds, ds.file_meta.TransferSyntaxUID))

            assert np.array_equal(in_process(), isolated())
            a = median_ms(in_process, args.repeat)
            b = median_ms(isolated, args.repeat)
            print(f"{name:32s} {a:9.1f}ms {b:7.1f}ms {b - a:+7.1f}ms ({(b / a - 1) * 100:+.0f}%)")
        rss = psutil.Process(worker).memory_info().rss / 2**20
        print(f"worker resident memory after the runs: {rss:.0f} MiB")
        pool.close()


if __name__ == "__main__":
    main()

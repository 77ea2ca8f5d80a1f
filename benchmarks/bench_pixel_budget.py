"""Peak memory of four decoder threads on four huge 16-bit PNGs, with and without the budget.

The worst case for the shared pixel budget (desktop/engine/budget.py): four 7700² (59 MP)
16-bit grey PNGs made from the real NLM chest, just under the 60-megapixel per-image limit,
decoded to working images by four threads as the batch runner does. Each configuration runs
in a fresh process; it prints the most pixels held at once and the peak resident memory.

Usage: ``python benchmarks/bench_pixel_budget.py``.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from desktop.engine.budget import DEFAULT_PIXEL_BUDGET, PixelBudget  # noqa: E402
from desktop.engine.loading import charging, read_file  # noqa: E402
from desktop.engine.preprocess import decode_working  # noqa: E402


def build(folder: Path) -> list[Path]:
    src = REPO / "tests" / "data" / "tb" / "normal" / "CHNCXR_0001_0.png"
    with Image.open(src) as image:
        grey = image.convert("L").resize((7700, 7700), Image.Resampling.BILINEAR)
    big = np.asarray(grey).astype(np.uint16) * np.uint16(257)
    paths = []
    for i in range(4):
        path = folder / f"deep{i}.png"
        Image.fromarray(big + np.uint16(i)).save(path, compress_level=1)
        paths.append(path)
    return paths


def one(budget: PixelBudget, path: Path) -> tuple[int, int]:
    data, sha = read_file(path)
    with budget.lease() as lease, charging(lease):
        scan = decode_working(path, data, sha)
        time.sleep(0.2)  # as if preprocessing: the lease is held until the inputs exist
    return scan.pixels.shape


def child(folder: Path, capacity: int) -> None:
    budget = PixelBudget(capacity)
    start = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda p: one(budget, p), sorted(folder.glob("*.png"))))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    label = "no budget" if capacity >= 10**12 else f"budget {capacity / 1e6:.0f} MP"
    print(
        f"{label:18s} most held at once {budget.peak / 1e6:4.0f} MP, peak resident "
        f"{rss:5.0f} MiB, {time.perf_counter() - start:.1f} s"
    )


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(Path(sys.argv[2]), int(sys.argv[3]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp))
        for capacity in (DEFAULT_PIXEL_BUDGET, 10**12):
            subprocess.run(
                [sys.executable, __file__, "--child", tmp, str(capacity)], check=True, cwd=REPO
            )


if __name__ == "__main__":
    main()

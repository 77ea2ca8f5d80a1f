"""Icons and thumbnails are refused, not screened (found using the product on a folder of
tiny files): the shipped gate took every 16×16 copy of a real chest X-ray, and some 8×8 random
noise, for chest X-rays, and the finding models scored them; "not flagged" on such a file
reads as reassurance it cannot give.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from desktop.engine.quality import QualityCode
from desktop.engine.screening import MIN_SCREEN_SIDE
from tests.conftest import DATA, classify_rows


def test_images_under_the_smallest_training_size_are_refused_with_their_size(
    tmp_path: Path, capsys
):
    folder = tmp_path / "scans"
    folder.mkdir()
    chest = Image.open(sorted((DATA / "tb" / "tuberculosis").glob("*.png"))[0]).convert("L")
    chest.resize((16, 16), Image.Resampling.BILINEAR).save(folder / "icon.png")
    chest.resize((200, MIN_SCREEN_SIDE - 1), Image.Resampling.BILINEAR).save(folder / "strip.png")
    noise = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "noise.png")
    # the smallest real images the models know (MedNIST, 64×64) and a full-size one still pass
    shutil.copy(sorted((DATA / "mednist" / "CXR").glob("*.jpeg"))[0], folder / "mednist.jpeg")
    chest.save(folder / "chest.png")

    rows = classify_rows(folder, tmp_path)

    for name, size in (("icon.png", "16×16"), ("strip.png", f"200×{MIN_SCREEN_SIDE - 1}"),
                       ("noise.png", "8×8")):  # fmt: skip
        row = rows[name]
        assert (row["status"], row["error_code"]) == ("error", "too_small"), row
        assert row["quality"] == QualityCode.TOO_SMALL.value
        assert row["quality_text"] == "image too small to screen"
        assert row["reason"].startswith(f"image is {size} pixels, too small to screen")
        assert row["tb_score"] == row["pneumonia_score"] == ""
    assert rows["mednist.jpeg"]["status"] == "ok"
    assert rows["chest.png"]["status"] == "ok"
    assert rows["chest.png"]["tb_score"] != ""

"""Render the app icon from its SVG source into every raster format the platforms need.

Why a script: the SVG (``assets/icons/medscreen.svg``) is the one source of truth; the PNGs
(Linux hicolor theme, Qt window icon), the multi-size ``.ico`` (Windows exe, Inno Setup) and
the ``.icns`` (macOS ``.app``) are derived from it. They are committed because they are small
and because the build machines (and clinic machines) should not need an SVG rasteriser.

Run at development time after editing the SVG::

    python installer/render_icons.py

Rasteriser: ``rsvg-convert`` (Debian package ``librsvg2-bin``) if present, else the
``cairosvg`` Python package. Pillow writes the ICO and ICNS containers.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
ICONS = REPO / "assets" / "icons"
SVG = ICONS / "medscreen.svg"

#: PNG sizes shipped in assets/icons (and in /usr/share/icons/hicolor on Linux).
PNG_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)
#: Windows shell uses 16-256; 256 is stored PNG-compressed by Pillow.
ICO_SIZES = (16, 24, 32, 48, 64, 128, 256)
#: macOS iconset sizes (the @2x variants reuse the larger renders); 1024 is rendered extra.
ICNS_SIZES = (16, 32, 64, 128, 256, 512, 1024)


def rasterise(svg: Path, size: int, out: Path) -> None:
    """Render ``svg`` to a square PNG of ``size`` px, rendering each size from the vector
    source (not downscaling one big bitmap) so small sizes stay crisp."""
    if shutil.which("rsvg-convert"):
        subprocess.run(
            ["rsvg-convert", "-w", str(size), "-h", str(size), "-o", str(out), str(svg)],
            check=True,
        )
    elif importlib.util.find_spec("cairosvg") is not None:
        import cairosvg  # type: ignore[import-not-found]

        cairosvg.svg2png(url=str(svg), write_to=str(out), output_width=size, output_height=size)
    else:
        sys.exit(
            "No SVG rasteriser: install Debian's librsvg2-bin (rsvg-convert) "
            "or `pip install cairosvg`."
        )


def render(svg: Path = SVG, out_dir: Path = ICONS) -> list[Path]:
    """Write medscreen-<size>.png, medscreen.ico and medscreen.icns; return the paths."""
    written: list[Path] = []
    images: dict[int, Image.Image] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in sorted(set(PNG_SIZES) | set(ICO_SIZES) | set(ICNS_SIZES)):
            png = Path(tmp) / f"{size}.png"
            rasterise(svg, size, png)
            with Image.open(png) as im:
                images[size] = im.convert("RGBA")
    for size in PNG_SIZES:
        path = out_dir / f"medscreen-{size}.png"
        images[size].save(path, optimize=True)
        written.append(path)

    ico = out_dir / "medscreen.ico"
    largest = images[max(ICO_SIZES)]
    # append_images gives Pillow the exact per-size renders instead of resampling one.
    largest.save(
        ico,
        format="ICO",
        sizes=[(s, s) for s in ICO_SIZES],
        append_images=[images[s] for s in ICO_SIZES if s != max(ICO_SIZES)],
    )
    written.append(ico)

    icns = out_dir / "medscreen.icns"
    biggest = images[max(ICNS_SIZES)]
    biggest.save(
        icns,
        format="ICNS",
        append_images=[images[s] for s in ICNS_SIZES if s != max(ICNS_SIZES)],
    )
    written.append(icns)
    return written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: optional --svg / --out for experiments with other designs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--svg", type=Path, default=SVG)
    parser.add_argument("--out", type=Path, default=ICONS)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for path in render(args.svg, args.out):
        print(
            f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}"
            f"  {path.stat().st_size} bytes"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Smoke check of the `conceal report` page in headless Chromium.

    python -m benchmarks.report_smoke [--clip realshort_320x240_aac.mp4] [--loss-rate 0.1] [-o DIR]

Damages a real clip (the standard damage step of benchmarks/common.py), repairs it, writes the
report with the damaged input and the truth file, screenshots index.html with headless Chromium
(1280x2000) and checks that every picture and link the page names exists and that the screenshot
is not blank. Exits non-zero, saying why, when a check fails or Chromium is not installed
(Debian: `apt-get install chromium`); the test suite does not depend on it.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np

from concealer.pipeline import conceal
from concealer.report import make_report

from .common import arguments, damage, work_dir

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# A screenshot where one colour covers more than this share of the pixels shows nothing.
BLANK_SHARE = 0.99


class _References(HTMLParser):
    """The local files a page names in <img src> and <a href>."""

    def __init__(self) -> None:
        super().__init__()
        self.files: list[str] = []
        self.images = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"img": "src", "a": "href"}.get(tag)
        for name, value in attrs:
            if name == wanted and value and "://" not in value and not value.startswith("#"):
                self.files.append(value)
                self.images += tag == "img"


def screenshot(page: Path, png: Path, browser: str) -> None:
    """Render `page` headless at 1280x2000 into `png` (no sandbox: it refuses to start as root otherwise)."""
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={png}", "--window-size=1280,2000", page.resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)


def blank_share(png: Path) -> float:
    """The share of the picture's pixels that have its most common colour."""
    image = cv2.imread(str(png))
    if image is None:
        raise SystemExit(f"report_smoke: {png} is not a readable PNG")
    _, counts = np.unique(image.reshape(-1, 3), axis=0, return_counts=True)
    return counts.max() / counts.sum()


def parser() -> argparse.ArgumentParser:
    parser = arguments(__doc__)
    parser.add_argument("--clip", default="realshort_320x240_aac.mp4")
    parser.add_argument("--loss-rate", type=float, default=0.1)
    parser.add_argument("-o", "--out", type=Path, help="keep the report and screenshot.png here (default: removed)")
    return parser


def main() -> None:
    args = parser().parse_args()
    browser = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if browser is None:
        sys.exit("report_smoke: Chromium is not installed (Debian: apt-get install chromium)")
    damaged = damage(args.clip, args.loss_rate)
    repaired = work_dir() / "repaired.mkv"
    conceal(damaged.damaged, repaired, overwrite=True)
    folder = args.out or work_dir() / "report"
    make_report(damaged.reference, repaired, folder, damaged=[damaged.damaged], truth=damaged.truth, overwrite=True)
    png = folder / "screenshot.png"
    screenshot(folder / "index.html", png, browser)
    references = _References()
    references.feed((folder / "index.html").read_text())
    missing = [name for name in references.files if not (folder / name).is_file()]
    share = blank_share(png)
    print(f"{folder / 'index.html'}: {references.images} pictures and {len(references.files) - references.images} "
          f"links to local files, {len(missing)} missing; "
          f"screenshot {png}: {share:.1%} of its pixels in its commonest colour")
    if missing:
        sys.exit(f"report_smoke: the page names files that are not there: {', '.join(missing)}")
    if not references.images:
        sys.exit("report_smoke: the page shows no pictures")
    if share > BLANK_SHARE:
        sys.exit(f"report_smoke: the screenshot is blank ({share:.1%} one colour)")


if __name__ == "__main__":
    main()

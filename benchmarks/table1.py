"""The founding paper's Table 1 protocol: inpainting a centred 64x64 hole in 128x128 images.

    python -m benchmarks.table1 [--sets Set5,Set14,BSD100]
        [--models telea,ns,context-encoder-l2,context-encoder,temporal]

Every image of each evaluation set is resized (short side 128) and centre-cropped to
128x128; the centred 64x64 square is removed and filled. PSNR (RGB, peak 255) is over
the whole image and over the hole alone. The paper's own figures are for its
L2+adversarial model over the whole image.
"""
from __future__ import annotations

import argparse

import cv2
import numpy as np

from concealer.inpaint import inpaint_image
from concealer.models import WEIGHTS_DIR
from concealer.models.context_encoder import HOLE, IMAGE, hole_slice
from train.context_encoder import centre_crop

from .common import IMAGES, Table, arguments, names

SETS = "Set5,Set14,BSD100"
MODELS = "telea,ns,context-encoder-l2,context-encoder,temporal"
NOTE = (f"Hole: {HOLE}x{HOLE} of {IMAGE}x{IMAGE}. PSNR per image, averaged over the set. The paper's column is "
        "comparable with our context-encoder 'whole' figure only (same protocol, its model trained far longer). "
        "temporal runs in single-image mode (no neighbours).")
PAPER = {"Set5": 35.36, "Set14": 35.81, "BSD100": 35.42}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def table1(sets: list[str], models: list[str]) -> Table:
    models = [m for m in models if m in ("telea", "ns") or (WEIGHTS_DIR / f"{m}.safetensors").exists()]
    mask = np.zeros((IMAGE, IMAGE), bool)
    hole = hole_slice()
    mask[hole, hole] = True
    table = Table(["set", "images", *(f"{m} whole / hole (dB)" for m in models), "paper, L2+adv, whole"])
    for name in sets:
        paths = sorted((IMAGES / name).glob("*.png"))
        if not paths:
            raise SystemExit(f"no PNG images in {IMAGES / name}: the benchmarks need ../shared/data "
                             "beside the checkout")
        scores = {m: ([], []) for m in models}
        for path in paths:
            image = centre_crop(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))
            for model in models:
                filled = inpaint_image(image, mask, model=model)
                scores[model][0].append(psnr(filled, image))
                scores[model][1].append(psnr(filled[hole, hole], image[hole, hole]))
        table.add(name, len(paths), *(f"{np.mean(w):.2f} / {np.mean(h):.2f}" for w, h in scores.values()),
                  f"{PAPER.get(name, float('nan')):.2f}")
    return table


def parser() -> argparse.ArgumentParser:
    parser = arguments(__doc__)
    parser.add_argument("--sets", type=names, default=SETS)
    parser.add_argument("--models", type=names, default=MODELS)
    return parser


def run(args: argparse.Namespace) -> list[Table]:
    table = table1(args.sets, args.models)
    print(f"\n{NOTE}")
    return [table]


def main() -> None:
    run(parser().parse_args())


if __name__ == "__main__":
    main()

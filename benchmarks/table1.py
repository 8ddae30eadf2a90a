"""The founding paper's Table 1 protocol: inpainting a centred 64x64 hole in 128x128 images.

    python -m benchmarks.table1 [--sets Set5,Set14,BSD100] [--models telea,ns,context-encoder-l2,context-encoder]

Every image of each evaluation set is resized (short side 128) and centre-cropped to
128x128; the centred 64x64 square is removed and filled. PSNR (RGB, peak 255) is over
the whole image and over the hole alone. The paper's own figures are for its
L2+adversarial model over the whole image.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from concealer.inpaint import inpaint_image
from concealer.models import WEIGHTS_DIR
from concealer.models.context_encoder import HOLE, IMAGE, hole_slice
from train.context_encoder import centre_crop

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "images"
PAPER = {"Set5": 35.36, "Set14": 35.81, "BSD100": 35.42}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="Set5,Set14,BSD100")
    parser.add_argument("--models", default="telea,ns,context-encoder-l2,context-encoder")
    args = parser.parse_args()
    models = [m for m in args.models.split(",")
              if m in ("telea", "ns") or (WEIGHTS_DIR / f"{m}.safetensors").exists()]
    mask = np.zeros((IMAGE, IMAGE), bool)
    hole = hole_slice()
    mask[hole, hole] = True
    print("| set | images | " + " | ".join(f"{m} whole / hole (dB)" for m in models) + " | paper, L2+adv, whole |")
    print("|---|---|" + "---|" * (len(models) + 1))
    for name in args.sets.split(","):
        paths = sorted((DATA / name).glob("*.png"))
        scores = {m: ([], []) for m in models}
        for path in paths:
            image = centre_crop(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))
            for model in models:
                filled = inpaint_image(image, mask, model=model)
                scores[model][0].append(psnr(filled, image))
                scores[model][1].append(psnr(filled[hole, hole], image[hole, hole]))
        cells = [f"{np.mean(w):.2f} / {np.mean(h):.2f}" for w, h in scores.values()]
        print(f"| {name} | {len(paths)} | " + " | ".join(cells) + f" | {PAPER.get(name, float('nan')):.2f} |")
    print(f"\nHole: {HOLE}x{HOLE} of {IMAGE}x{IMAGE}. PSNR per image, averaged over the set. The paper's column is "
          "comparable with our context-encoder 'whole' figure only (same protocol, its model trained far longer).")


if __name__ == "__main__":
    main()

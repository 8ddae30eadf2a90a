"""Concealment quality over the lost pixels alone (the model issue's video benchmark).

    python -m benchmarks.lost_pixels [--clips ...] [--rates 0.03,0.1,0.2] [--frames N] [--models copy,ffmpeg,telea,...]
        [--drift redecode|carry|none]

Each clip (or its first N frames) is damaged by the standard damage step (benchmarks/common.py:
Gilbert loss, mean burst 2, GOP 2 s, seed 1; HEVC clips stay HEVC). Every model repairs it
from the truth file's lost macroblocks (so that all models fill the same pixels) into lossless
FFV1, with `conceal`'s drift correction (`--drift redecode`, the default, or `carry`: the earlier frames
a model copies from are then its own repairs, as in use) or without it (`--drift none`: every model copies
from FFmpeg's concealment, which caps them all near FFmpeg's own figure). The figure is luma PSNR
over the truth's lost macroblocks (those of frames lost whole included), against the decode of the
clean stream (one MSE pooled over all those pixels), plus the damaged macroblocks concealed per
second by the last model. `FFmpeg decode` scores a plain FFmpeg decode the same way (its concealment
in the frames that arrived, a frame lost whole repeating the last one shown: what a player shows);
the `ffmpeg` model keeps FFmpeg's concealment of lost blocks inside `conceal`, which rebuilds lost
frames and corrects drift as for every model.
"""
from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from concealer.decode import DecodedFrame, decode_frames
from concealer.detection import MB
from concealer.pipeline import conceal
from concealer.truth import load_truth

from .common import Table, clip_arguments, damage, loss_label, names, plain_decode, work_dir

CLIPS = "foreman_cif_h264.mp4,carphone_qcif.mp4,foreman_cif_hevc.mp4"
RATES = "0.03,0.1,0.2"
MODELS = "copy,ffmpeg,telea,context-encoder,temporal,flow"


def lost_pixel_psnr(pictures: Iterable[tuple[DecodedFrame, np.ndarray]], truth: Path) -> float:
    """Pooled luma PSNR over the truth's lost macroblocks of (clean frame, luma shown for it) pairs."""
    _, pts, maps = load_truth(truth)
    lost = dict(zip(pts.tolist(), maps))
    squared, count = 0.0, 0
    for clean, shown in pictures:
        blocks = lost.get(clean.pts)
        if blocks is None or clean.missing:
            continue
        reference = clean.luma()
        mask = np.kron(blocks, np.ones((MB, MB), bool))[:reference.shape[0], :reference.shape[1]]
        squared += float(np.sum((shown[mask].astype(np.float64) - reference[mask]) ** 2))
        count += int(mask.sum())
    return 10 * np.log10(255 ** 2 * count / squared) if squared else float("inf")


def repaired_pictures(repaired: Path, reference: Path) -> Iterator[tuple[DecodedFrame, np.ndarray]]:
    """(clean frame, repaired luma) pairs, matched by order: FFV1 in Matroska keeps millisecond timestamps,
    and both streams hold every frame slot."""
    for ours, clean in zip(decode_frames(repaired), decode_frames(reference)):
        yield clean, ours.luma()


def lost_pixels_table(clips: list[str], rates: list[float], models: list[str], frames: int | None = None,
                      drift: str = "redecode") -> Table:
    table = Table(["clip", "frames", "loss (effective)", "FFmpeg decode (dB)", *(f"{m} (dB)" for m in models),
                   "lost MB/s (last model)"])
    out = work_dir() / "repaired.mkv"
    for name in clips:
        for rate in rates:
            damaged = damage(name, rate, frames=frames)
            scores = [lost_pixel_psnr(plain_decode(damaged.damaged, damaged.reference), damaged.truth)]
            for model in models:
                summary = conceal(damaged.damaged, out, model=model, detect="truth", truth=damaged.truth,
                                  drift=drift, codec="ffv1", lossless=True, overwrite=True)
                scores.append(lost_pixel_psnr(repaired_pictures(out, damaged.reference), damaged.truth))
            table.add(name, damaged.summary.frames, loss_label(damaged), *(f"{s:.2f}" for s in scores),
                      f"{summary.macroblocks['lost'] / summary.seconds:.0f}")
    return table


def parser() -> argparse.ArgumentParser:
    parser = clip_arguments(__doc__, CLIPS, RATES)
    parser.add_argument("--models", type=names, default=MODELS)
    parser.add_argument("--drift", choices=("redecode", "carry", "none"), default="redecode")
    return parser


def run(args: argparse.Namespace) -> list[Table]:
    return [lost_pixels_table(args.clips, args.rates, args.models, args.frames, args.drift)]


def main() -> None:
    run(parser().parse_args())


if __name__ == "__main__":
    main()

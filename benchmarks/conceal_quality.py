"""Repair quality of `conceal` per concealment model, against the clean reference.

    python -m benchmarks.conceal_quality [--clips a.mp4,b.mp4] [--rates 0.03,0.1,0.2] [--frames N]
        [--variants ffmpeg:none,temporal:carry,...,pipeline] [--bframes N]

Each clip (or its first N frames) is damaged by the standard damage step (benchmarks/common.py:
simulate-loss re-encoding in the clip's codec family, Gilbert loss with mean burst 2, GOP 2 s,
seed 1) and repaired with default (blind) detection into lossless FFV1. The figure is the sequence
luma PSNR (from the mean MSE over all frames) against the decode of the clean encoded stream.
The baseline every repair must beat is `FFmpeg`: a plain FFmpeg decode of the damaged file
(its H.264 concealment on, one thread, no stream repair) in which a frame that never came out
repeats the one before it. A variant is MODEL:DRIFT (see `conceal --drift`), or `pipeline`:
`conceal` with its default model and drift correction; the last column is the pipeline's gain
over the baseline (issue bar: at least +4 dB at every loss rate, never below on any clip).
`--bframes N` re-encodes with N B-frames, as x264 does by default and most real files are: pictures
then decode out of presentation order.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from concealer.metrics import psnr
from concealer.pipeline import conceal

from .common import Table, clip_arguments, damage, loss_label, names, plain_decode, work_dir

CLIPS = "foreman_cif_h264.mp4,carphone_qcif.mp4,bikes_640x272.mp4,chaplin_640x360_mp3.mp4,foreman_cif_hevc.mp4"
RATES = "0.03,0.1,0.2"
VARIANTS = ("ffmpeg:redecode,copy:redecode,telea:redecode,context-encoder:redecode,temporal:redecode,flow:carry,"
            "flow:none,pipeline")
PIPELINE = "pipeline"


def _options(variant: str) -> dict[str, str]:
    """conceal's keyword arguments for a variant (none: its defaults)."""
    if variant == PIPELINE:
        return {}
    model, drift = variant.split(":")
    return {"model": model, "drift": drift}


def _label(variant: str) -> str:
    return "pipeline (defaults)" if variant == PIPELINE else variant.replace(":", " ")


def plain_ffmpeg_psnr(damaged: Path, reference: Path) -> float:
    """Sequence luma PSNR of a plain FFmpeg decode of `damaged` (see common.plain_decode) against the decode
    of `reference`."""
    return psnr(float(np.mean([np.mean((shown - clean.luma()) ** 2)
                               for clean, shown in plain_decode(damaged, reference)])))


def quality_table(clips: list[str], rates: list[float], variants: list[str], frames: int | None = None,
                  bframes: int = 0) -> Table:
    table = Table(["clip", "frames", "loss (effective)", "FFmpeg (dB)", *(f"{_label(v)} (dB)" for v in variants),
                   "gain of the last over FFmpeg", "fps (last variant)"])
    for name in clips:
        for rate in rates:
            damaged = damage(name, rate, frames=frames, bframes=bframes)
            baseline = plain_ffmpeg_psnr(damaged.damaged, damaged.reference)
            results = [conceal(damaged.damaged, work_dir() / "repaired.mkv", codec="ffv1", lossless=True,
                               reference=damaged.reference, overwrite=True, **_options(v)) for v in variants]
            table.add(name, damaged.summary.frames, loss_label(damaged), f"{baseline:.2f}",
                      *(f"{r.psnr:.2f}" for r in results), f"{results[-1].psnr - baseline:+.2f}",
                      f"{results[-1].fps:.0f}")
    return table


def parser() -> argparse.ArgumentParser:
    parser = clip_arguments(__doc__, CLIPS, RATES)
    parser.add_argument("--variants", type=names, default=VARIANTS)
    parser.add_argument("--bframes", type=int, default=0, help="B-frames in the damaged re-encode")
    return parser


def run(args: argparse.Namespace) -> list[Table]:
    return [quality_table(args.clips, args.rates, args.variants, args.frames, args.bframes)]


def main() -> None:
    run(parser().parse_args())


if __name__ == "__main__":
    main()

"""Damage-map accuracy per detection mode, and the time detection adds to a plain decode.

    python -m benchmarks.detection_accuracy [--clips a.mp4,b.mp4] [--rates 0.03,0.1,0.2] [--frames N]
        [--modes bitstream,truth,pixels]

Each clip (or its first N frames) is damaged by the standard damage step (benchmarks/common.py:
Gilbert loss, mean burst 2, GOP 2 s, seed 1). The reference map
marks the macroblocks whose luma, decoded with FFmpeg's concealment, differs from the
clean decode by MSE > 4; recall and precision are over all macroblocks of all decoded
frames. Time is the ratio of detection (decode + maps) to a plain decode of the same
file, measured side by side (target for bitstream mode: at most 2, i.e. one extra decode).
`pixels` runs on a baked copy (the damaged stream decoded with FFmpeg's concealment and re-encoded
at x264 crf 18, frames keeping their pts), scored against the same reference maps.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from concealer.decode import decode_frames
from concealer.detection import detect_damage
from concealer.pixel_detection import bake_damage, reference_damage_maps

from .common import Table, clip_arguments, damage, loss_label, names, work_dir

CLIPS = "foreman_cif_h264.mp4,carphone_qcif.mp4,bikes_640x272.mp4,chaplin_640x360_mp3.mp4,foreman_cif_hevc.mp4"
RATES = "0.03,0.1,0.2"
MODES = "bitstream,truth,pixels"


def score(damaged: Path, reference: Path, truth: Path, mode: str) -> tuple[float, float, float, float]:
    """(recall, precision, detection seconds, plain decode seconds)."""
    reference_maps = reference_damage_maps(damaged, reference)
    if mode == "pixels":
        baked = work_dir() / f"{damaged.stem}-baked.mp4"
        bake_damage(damaged, baked, overwrite=True)
        damaged = baked
    start = time.perf_counter()
    for _ in decode_frames(damaged):
        pass
    plain = time.perf_counter() - start
    tp = fp = fn = 0
    spent = 0.0
    start = time.perf_counter()
    for item in detect_damage(damaged, mode=mode, truth=truth if mode == "truth" else None):
        spent += time.perf_counter() - start
        if not item.frame.missing:
            reference_map = reference_maps[item.frame.pts]
            found = item.damage.damaged
            tp += np.count_nonzero(reference_map & found)
            fp += np.count_nonzero(found & ~reference_map)
            fn += np.count_nonzero(reference_map & ~found)
        start = time.perf_counter()
    return tp / max(1, tp + fn), tp / max(1, tp + fp), spent, plain


def accuracy_table(clips: list[str], rates: list[float], modes: list[str], frames: int | None = None) -> Table:
    table = Table(["clip", "frames", "loss (effective)", "mode", "recall", "precision", "time / plain decode"])
    for name in clips:
        for rate in rates:
            result = damage(name, rate, frames=frames)
            for mode in modes:
                recall, precision, spent, plain = score(result.damaged, result.reference, result.truth, mode)
                table.add(name, result.summary.frames, loss_label(result), mode, f"{recall:.3f}", f"{precision:.3f}",
                          f"{spent / plain:.2f}")
    return table


def parser() -> argparse.ArgumentParser:
    parser = clip_arguments(__doc__, CLIPS, RATES)
    parser.add_argument("--modes", type=names, default=MODES)
    return parser


def run(args: argparse.Namespace) -> list[Table]:
    return [accuracy_table(args.clips, args.rates, args.modes, args.frames)]


def main() -> None:
    run(parser().parse_args())


if __name__ == "__main__":
    main()

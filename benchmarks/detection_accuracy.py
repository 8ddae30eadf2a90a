"""Damage-map accuracy per detection mode, and the time detection adds to a plain decode.

    python -m benchmarks.detection_accuracy [--clips a.mp4,b.mp4] [--rates 0.03,0.1,0.2] [--frames N]
        [--modes bitstream,truth,pixels] [--bframes N]

Each clip (or its first N frames) is damaged by the standard damage step (benchmarks/common.py:
Gilbert loss, mean burst 2, GOP 2 s, seed 1). The reference map
marks the macroblocks whose luma, decoded with FFmpeg's concealment, differs from the
clean decode by MSE > 4; recall and precision are over all macroblocks of all decoded
frames. Time is the ratio of detection (decode + maps) to a plain decode of the same
file, the median of TIMING_ROUNDS side-by-side runs each (target for bitstream mode: at most 2, i.e.
one extra decode).
The last column scores the `lost` label alone against the truth file's lost macroblocks
(recall / precision): which blocks lost their data, whatever their error.
`pixels` runs on a baked copy (the damaged stream decoded with FFmpeg's concealment and re-encoded
at x264 crf 18, frames keeping their pts), scored against the same reference maps.
`--bframes N` re-encodes with N B-frames (x264's default is 3).
"""
from __future__ import annotations

import argparse
import functools
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from concealer.decode import decode_frames
from concealer.detection import DamageLabel, detect_damage
from concealer.pixel_detection import bake_damage, reference_damage_maps
from concealer.truth import load_truth

from .common import Table, clip_arguments, damage, loss_label, names, side_by_side, work_dir

CLIPS = "foreman_cif_h264.mp4,carphone_qcif.mp4,bikes_640x272.mp4,chaplin_640x360_mp3.mp4,foreman_cif_hevc.mp4"
RATES = "0.03,0.1,0.2"
MODES = "bitstream,truth,pixels"
# Detection and the plain decode take turns this many times; the figure is the ratio of their medians (the
# evaluation clips decode in 12-120 ms, where one timing alone moved the ratio by a factor of up to 3).
TIMING_ROUNDS = 5


@dataclass
class Counts:
    true_positive: int = 0
    false_positive: int = 0
    false_negative: int = 0

    def add(self, truth: np.ndarray, found: np.ndarray) -> None:
        self.true_positive += np.count_nonzero(truth & found)
        self.false_positive += np.count_nonzero(found & ~truth)
        self.false_negative += np.count_nonzero(truth & ~found)

    def cell(self) -> str:
        recall = self.true_positive / max(1, self.true_positive + self.false_negative)
        precision = self.true_positive / max(1, self.true_positive + self.false_positive)
        return f"{recall:.3f} / {precision:.3f}"


@dataclass
class Score:
    """One mode on one damaged clip: the damage map against the reference map, the `lost` label
    against the truth's lost macroblocks, and the time spent."""

    found: Counts = field(default_factory=Counts)
    lost: Counts = field(default_factory=Counts)
    seconds: float = 0.0
    plain_seconds: float = 0.0


def score(damaged: Path, reference: Path, truth: Path, mode: str) -> Score:
    reference_maps = reference_damage_maps(damaged, reference)
    _, truth_pts, truth_maps = load_truth(truth)
    lost_maps = dict(zip(truth_pts.tolist(), truth_maps))
    if mode == "pixels":
        baked = work_dir() / f"{damaged.stem}-baked.mp4"
        bake_damage(damaged, baked, overwrite=True)
        damaged = baked
    result = Score()
    detected = functools.partial(detect_damage, damaged, mode=mode, truth=truth if mode == "truth" else None)
    seconds = side_by_side({"plain": lambda _: _drain(decode_frames(damaged)), "detect": lambda _: _drain(detected())},
                           TIMING_ROUNDS)
    result.plain_seconds, result.seconds = (statistics.median(seconds[job]) for job in ("plain", "detect"))
    for item in detected():
        if not item.frame.missing:
            result.found.add(reference_maps[item.frame.pts], item.damage.damaged)
            lost = item.damage.labels == DamageLabel.LOST
            result.lost.add(lost_maps.get(item.frame.pts, np.zeros_like(lost)), lost)
    return result


def _drain(items: Iterator) -> None:
    for _ in items:
        pass


def accuracy_table(clips: list[str], rates: list[float], modes: list[str], frames: int | None = None,
                   bframes: int = 0) -> Table:
    table = Table(["clip", "frames", "loss (effective)", "mode", "recall / precision", "time / plain decode",
                   "lost label vs truth"])
    for name in clips:
        for rate in rates:
            result = damage(name, rate, frames=frames, bframes=bframes)
            for mode in modes:
                scored = score(result.damaged, result.reference, result.truth, mode)
                table.add(name, result.summary.frames, loss_label(result), mode, scored.found.cell(),
                          f"{scored.seconds / scored.plain_seconds:.2f}", scored.lost.cell())
    return table


def parser() -> argparse.ArgumentParser:
    parser = clip_arguments(__doc__, CLIPS, RATES)
    parser.add_argument("--modes", type=names, default=MODES)
    parser.add_argument("--bframes", type=int, default=0, help="B-frames in the damaged re-encode")
    return parser


def run(args: argparse.Namespace) -> list[Table]:
    return [accuracy_table(args.clips, args.rates, args.modes, args.frames, args.bframes)]


def main() -> None:
    run(parser().parse_args())


if __name__ == "__main__":
    main()

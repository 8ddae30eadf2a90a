"""simulate-loss re-encode mode vs. a plain PyAV decode + x264 encode of the same clip, same settings.

    python -m benchmarks.simulate_speed [--clip bbb_720p_h264.mp4] [--rounds 3] [--loss-rate 0.05]

Both jobs take turns in this process, so machine noise hits both alike; the figure is the
ratio of their median wall times (target: at most 1.3x).
"""
from __future__ import annotations

import argparse
import statistics

import av

from concealer import LossOptions, PacketisationOptions, simulate_loss
from concealer.media import nominal_rate

from .common import Table, arguments, bar_cell, clip_path, plain_transcode, side_by_side, work_dir

BAR = 1.3


def simulate_speed_table(clip: str, rounds: int, loss_rate: float) -> Table:
    source = clip_path(clip)
    packets = PacketisationOptions()
    with av.open(str(source)) as probe:
        stream = probe.streams.video[0]
        size = f"{stream.codec_context.width}x{stream.codec_context.height}"
        settings = packets.reencode_settings(nominal_rate(stream))
        frames = stream.frames
    seconds = side_by_side({
        "plain": lambda r: plain_transcode(source, work_dir() / "plain.mp4", settings),
        "simulate": lambda r: simulate_loss(source, work_dir() / "damaged.mp4", packets=packets, overwrite=True,
                                            loss=LossOptions(loss_rate=loss_rate, seed=r)),
    }, rounds)
    plain = statistics.median(seconds["plain"])
    table = Table(["clip", "job", "median s", "rounds (s)", "ratio to plain", "bar"])
    job = f"x264 preset {settings.preset} crf {settings.crf:g}, slice-max-size {settings.slice_max_size}"
    where = f"{clip} ({size}, {frames} frames)"
    table.add(where, f"plain decode + encode ({job})", f"{plain:.2f}",
              ", ".join(f"{t:.2f}" for t in seconds["plain"]), "1.00", "")
    ratio = statistics.median(seconds["simulate"]) / plain
    table.add(where, f"simulate-loss, {loss_rate:.0%} loss", f"{statistics.median(seconds['simulate']):.2f}",
              ", ".join(f"{t:.2f}" for t in seconds["simulate"]), f"{ratio:.3f}",
              bar_cell(ratio, BAR, at_most=True))
    return table


def parser() -> argparse.ArgumentParser:
    parser = arguments(__doc__)
    parser.add_argument("--clip", default="bbb_720p_h264.mp4")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loss-rate", type=float, default=0.05)
    return parser


def run(args: argparse.Namespace) -> list[Table]:
    return [simulate_speed_table(args.clip, args.rounds, args.loss_rate)]


def main() -> None:
    run(parser().parse_args())


if __name__ == "__main__":
    main()

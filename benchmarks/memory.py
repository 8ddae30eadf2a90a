"""Peak memory of `conceal` on a short and a long input of the same content.

    python -m benchmarks.memory [--clip bbb_720p_vp8_30s.webm] [--seconds 10,60] [--loss-rate 0.05]

The clip is looped (benchmarks/common.py `excerpt`) to each length, damaged by the standard
damage step, and repaired by the `conceal` CLI with default options in a fresh process; the
figure is that process's peak resident set size (ru_maxrss from wait4). Memory must stay flat
in the video's length: the longest input's peak at most 100 MB above the shortest's.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import av

from concealer.media import nominal_rate

from .common import Table, arguments, bar_cell, clip_path, damage, loss_label, numbers, work_dir

GROWTH_BAR_MB = 100.0


def peak_rss(command: list[str]) -> tuple[float, float]:
    """(peak RSS in MB, wall seconds) of a command run to completion in a fresh process."""
    errors = work_dir() / "stderr.txt"
    start = time.perf_counter()
    with open(errors, "wb") as sink:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=sink)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own rusage, not all children's
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}): {errors.read_text()}")
    return usage.ru_maxrss / 1024, wall  # Linux reports kilobytes


def conceal_command(source: Path, output: Path) -> list[str]:
    """The `conceal` CLI with default options, run by this Python."""
    return [sys.executable, "-c", "from concealer._cli.conceal import main; main()", str(source), "-o", str(output),
            "--overwrite"]


def memory_table(clip: str, durations: list[float], loss_rate: float) -> Table:
    with av.open(str(clip_path(clip))) as probe:
        rate = nominal_rate(probe.streams.video[0])
    table = Table(["input", "frames", "loss (effective)", "conceal wall s", "peak RSS (MB)", "above the shortest",
                   "bar"])
    peaks = []
    for seconds in durations:
        damaged = damage(clip, loss_rate, frames=round(seconds * rate))
        peak, wall = peak_rss(conceal_command(damaged.damaged, work_dir() / "repaired.mp4"))
        peaks.append(peak)
        growth = peak - peaks[0]
        table.add(f"{clip} looped to {seconds:g} s", damaged.summary.frames, loss_label(damaged), f"{wall:.1f}",
                  f"{peak:.0f}", f"{growth:+.0f} MB",
                  bar_cell(growth, GROWTH_BAR_MB, at_most=True) if len(peaks) > 1 else "")
    return table


def parser() -> argparse.ArgumentParser:
    parser = arguments(__doc__)
    parser.add_argument("--clip", default="bbb_720p_vp8_30s.webm")
    parser.add_argument("--seconds", type=numbers, default="10,60", help="input lengths, shortest first")
    parser.add_argument("--loss-rate", type=float, default=0.05)
    return parser


def run(args: argparse.Namespace) -> list[Table]:
    return [memory_table(args.clip, args.seconds, args.loss_rate)]


def main() -> None:
    run(parser().parse_args())


if __name__ == "__main__":
    main()

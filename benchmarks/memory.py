"""Peak memory of `conceal` on a short and a long input of the same content.

    python -m benchmarks.memory [--clip bbb_720p_vp8_30s.webm] [--seconds 10,60] [--loss-rate 0.05] [--bframes N]

The clip is looped (benchmarks/common.py `excerpt`) to each length, damaged by the standard
damage step, and repaired by the `conceal` CLI with default options in a fresh process; the
figure is that process's peak resident set size (ru_maxrss from wait4, in a small launcher). Memory must stay flat
in the video's length: the longest input's peak at most 100 MB above the shortest's. `--bframes N` damages a
re-encode with N B-frames, whose pictures the repair holds until the I or P picture after them is repaired.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import av

from concealer.media import nominal_rate

from .common import Table, arguments, bar_cell, clip_path, damage, loss_label, numbers, work_dir

GROWTH_BAR_MB = 100.0


# Runs a command and prints its peak RSS. Linux carries a process's high-water mark across fork and
# exec, so a command started straight from this (large) benchmark process reported this process's
# peak (1234 MB for a 10 s and a 60 s input alike); started from this small launcher, it reports
# its own.
LAUNCHER = ("import os, subprocess, sys\n"
            "child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
            "_, status, usage = os.wait4(child.pid, 0)\n"
            "print(usage.ru_maxrss)\n"
            "sys.exit(os.waitstatus_to_exitcode(status))\n")


def peak_rss(command: list[str]) -> tuple[float, float]:
    """(peak RSS in MB, wall seconds) of a command run to completion in a fresh process."""
    errors = work_dir() / "stderr.txt"
    start = time.perf_counter()
    with open(errors, "wb") as sink:
        launched = subprocess.run([sys.executable, "-c", LAUNCHER, *command], stdout=subprocess.PIPE, stderr=sink)
    wall = time.perf_counter() - start
    if launched.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({launched.returncode}): {errors.read_text()}")
    return int(launched.stdout) / 1024, wall  # Linux reports kilobytes


def conceal_command(source: Path, output: Path) -> list[str]:
    """The `conceal` CLI with default options, run by this Python."""
    return [sys.executable, "-c", "from concealer._cli.conceal import main; main()", str(source), "-o", str(output),
            "--overwrite"]


def memory_table(clip: str, durations: list[float], loss_rate: float, bframes: int = 0) -> Table:
    with av.open(str(clip_path(clip))) as probe:
        rate = nominal_rate(probe.streams.video[0])
    table = Table(["input", "frames", "loss (effective)", "conceal wall s", "peak RSS (MB)", "above the shortest",
                   "bar"])
    peaks = []
    for seconds in durations:
        damaged = damage(clip, loss_rate, frames=round(seconds * rate), bframes=bframes)
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
    parser.add_argument("--bframes", type=int, default=0, help="B-frames in the damaged re-encode")
    return parser


def run(args: argparse.Namespace) -> list[Table]:
    return [memory_table(args.clip, args.seconds, args.loss_rate, args.bframes)]


def main() -> None:
    run(parser().parse_args())


if __name__ == "__main__":
    main()

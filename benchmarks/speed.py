"""Speed of `conceal` against a plain decode + encode, and of the inpainting networks alone.

    python -m benchmarks.speed [--clip bbb_720p_h264.mp4] [--loss-rate 0.05] [--rounds 3] [--frames N]
        [--batches 5] [--bframes N]

Pipeline: the clip (or its first N frames) is damaged by the standard damage step
(benchmarks/common.py); `concealer.conceal` with its default options and a plain PyAV decode of
the same damaged file + x264 encode with conceal's encoder settings (crf, preset) take turns in
this process. The figure is the ratio of their median wall times (target: at most 3x), with
the damaged macroblocks (lost + propagated) the pipeline repairs per second. `--bframes N` damages a
re-encode with N B-frames (x264's default is 3); `--batches 0` leaves the networks out.

Inference: each network alone on full batches of windows cut from real frames, every window's
core missing (16 macroblocks of 16x16), input conversion included (target: at least 1000
damaged macroblocks per second).
"""
from __future__ import annotations

import argparse
import inspect
import statistics
import time

import av
import numpy as np
import torch

from concealer.detection import MB
from concealer.encode import EncoderSettings
from concealer.inpaint import BATCH, network
from concealer.models import context_encoder, temporal
from concealer.pipeline import ConcealSummary, conceal

from .common import Table, arguments, bar_cell, clip_path, damage, loss_label, plain_transcode, side_by_side, work_dir

PIPELINE_BAR = 3.0
INFERENCE_BAR = 1000.0


def conceal_settings() -> EncoderSettings:
    """The x264 settings `conceal` encodes with by default, read from its signature."""
    defaults = inspect.signature(conceal).parameters
    return EncoderSettings(crf=defaults["crf"].default, preset=defaults["preset"].default)


def pipeline_table(clip: str, loss_rate: float, rounds: int, frames: int | None = None, bframes: int = 0) -> Table:
    damaged = damage(clip, loss_rate, frames=frames, bframes=bframes)
    settings = conceal_settings()
    summaries: list[ConcealSummary] = []
    seconds = side_by_side({
        "plain": lambda r: plain_transcode(damaged.damaged, work_dir() / "plain.mp4", settings),
        "conceal": lambda r: summaries.append(conceal(damaged.damaged, work_dir() / "repaired.mp4", overwrite=True)),
    }, rounds)
    plain, repair = statistics.median(seconds["plain"]), statistics.median(seconds["conceal"])
    summary = summaries[-1]
    damaged_blocks = summary.macroblocks["lost"] + summary.macroblocks["propagated"]
    where = f"{clip}, {summary.frames} frames{f', {bframes} B-frames' if bframes else ''}, loss {loss_label(damaged)}"
    table = Table(["input", "job", "median s", "rounds (s)", "ratio to plain", "bar", "damaged MB/s (lost MB/s)"])
    table.add(where, f"plain decode + x264 encode (crf {settings.crf:g}, preset {settings.preset})", f"{plain:.2f}",
              ", ".join(f"{t:.2f}" for t in seconds["plain"]), "1.00", "", "")
    table.add(where, f"conceal, default options ({damaged_blocks} damaged MB: {summary.macroblocks['lost']} lost)",
              f"{repair:.2f}", ", ".join(f"{t:.2f}" for t in seconds["conceal"]), f"{repair / plain:.2f}",
              bar_cell(repair / plain, PIPELINE_BAR, at_most=True),
              f"{damaged_blocks / repair:.0f} ({summary.macroblocks['lost'] / repair:.0f})")
    return table


def _real_frames(clip: str, count: int) -> list[np.ndarray]:
    """The first `count` frames of a clip as HxWx3 uint8 RGB."""
    with av.open(str(clip_path(clip))) as container:
        frames = []
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == count:
                return frames
    return frames


def _windows(frame: np.ndarray, size: int, corners: np.ndarray) -> np.ndarray:
    return np.stack([frame[top:top + size, left:left + size] for top, left in corners])


def _temporal_batch(frames: list[np.ndarray], corners: np.ndarray) -> torch.Tensor:
    """One forward pass of the temporal network: the middle frame's windows with their core missing, each
    window's Telea fill (in `conceal` it is made once on the whole picture), and the previous and next
    frames' windows (as if aligned) fully valid."""
    def tensor(windows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(windows).permute(0, 3, 1, 2).float() / 255

    def images(frame: np.ndarray) -> torch.Tensor:
        return tensor(_windows(frame, temporal.WINDOW, corners))

    hole = np.zeros((len(corners), temporal.WINDOW, temporal.WINDOW), np.uint8)
    hole[:, temporal.MARGIN:-temporal.MARGIN, temporal.MARGIN:-temporal.MARGIN] = 1
    hole_tensor = torch.from_numpy(hole)[:, None].float()
    valid = torch.ones_like(hole_tensor)
    current = _windows(frames[1], temporal.WINDOW, corners)
    spatial = np.stack([temporal.spatial_fill(c, h) for c, h in zip(current, hole)])
    with torch.no_grad():
        return network("temporal")(tensor(current), hole_tensor, tensor(spatial), images(frames[0]), valid,
                                   images(frames[2]), valid)


def _context_encoder_batch(frames: list[np.ndarray], corners: np.ndarray) -> torch.Tensor:
    batch = torch.from_numpy(_windows(frames[1], context_encoder.IMAGE, corners)).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        return context_encoder.fill(network("context-encoder"), batch / 127.5 - 1)


def inference_table(batches: int, clip: str = "bbb_720p_h264.mp4") -> Table:
    frames = _real_frames(clip, 3)
    height, width = frames[0].shape[:2]
    rng = np.random.default_rng(0)
    table = Table(["network", "window (core)", "batch", "batches", "windows/s", "damaged MB/s", "bar"])
    for name, run, window, core in (
            ("temporal", _temporal_batch, temporal.WINDOW, temporal.CORE),
            ("context-encoder", _context_encoder_batch, context_encoder.IMAGE, context_encoder.HOLE)):
        corners = np.stack([rng.integers(0, height - window, BATCH), rng.integers(0, width - window, BATCH)], 1)
        run(frames, corners)  # warm-up: weights loaded, kernels chosen
        start = time.perf_counter()
        for _ in range(batches):
            run(frames, corners)
        windows_per_second = batches * BATCH / (time.perf_counter() - start)
        blocks_per_second = windows_per_second * (core // MB) ** 2
        table.add(name, f"{window} ({core})", BATCH, batches, f"{windows_per_second:.1f}", f"{blocks_per_second:.0f}",
                  bar_cell(blocks_per_second, INFERENCE_BAR, at_most=False))
    return table


def parser() -> argparse.ArgumentParser:
    parser = arguments(__doc__)
    parser.add_argument("--clip", default="bbb_720p_h264.mp4")
    parser.add_argument("--loss-rate", type=float, default=0.05)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frames", type=int, help="only the first N frames of the clip")
    parser.add_argument("--batches", type=int, default=5, help="timed batches per network (0: none)")
    parser.add_argument("--bframes", type=int, default=0, help="B-frames in the damaged re-encode")
    return parser


def run(args: argparse.Namespace) -> list[Table]:
    pipeline = pipeline_table(args.clip, args.loss_rate, args.rounds, args.frames, args.bframes)
    return [pipeline, inference_table(args.batches)] if args.batches else [pipeline]


def main() -> None:
    run(parser().parse_args())


if __name__ == "__main__":
    main()

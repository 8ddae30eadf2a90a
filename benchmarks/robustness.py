"""`conceal` against a plain FFmpeg decode across the ways streams come damaged (issue 5: never below it).

    python -m benchmarks.robustness [--clips a.mp4,b.mp4] [--conditions gilbert-3,...] [--seeds 2,3]
        [--frames N]

The quality sections hold to one channel (Gilbert loss with mean burst 2, RTP, a 2 s GOP, seed 1). Here each
clip (or its first N frames) goes through simulate-loss under each condition below and each seed, and is
repaired with `conceal`'s defaults into lossless FFV1. `plain` is a plain FFmpeg decode of the same damaged
file (common.plain_decode); both are scored as sequence luma PSNR against the decode of the clean re-encode.
The last column flags every case below `plain`.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field

from concealer import LossOptions, PacketisationOptions, SimulationResult, conceal
from concealer.bitstream import Codec
from concealer.encode import EncoderSettings
from concealer.errors import InputError

from .common import BURST, Table, arguments, damaged_copy, loss_label, names, work_dir
from .conceal_quality import plain_ffmpeg_psnr

CLIPS = "foreman_cif_h264.mp4,carphone_qcif.mp4,bikes_640x272.mp4,chaplin_640x360_mp3.mp4"
SEEDS = "2,3"


@dataclass(frozen=True)
class Condition:
    """One way a stream comes damaged: what simulate-loss is told besides the seed."""

    about: str
    loss: dict = field(default_factory=dict)  # LossOptions fields
    packets: dict = field(default_factory=dict)  # PacketisationOptions fields
    encoder: dict = field(default_factory=dict)  # EncoderSettings fields


CONDITIONS = {
    "gilbert-3": Condition("Gilbert loss 3%, mean burst 2 (the standard channel)", {"loss_rate": 0.03}),
    "gilbert-10-b3": Condition("Gilbert loss 10%, three B-frames", {"loss_rate": 0.1}, encoder={"bframes": 3}),
    "gilbert-20": Condition("Gilbert loss 20%", {"loss_rate": 0.2}),
    "bernoulli-5": Condition("independent loss 5%", {"model": "bernoulli", "loss_rate": 0.05}),
    "small-packets-10": Condition("Gilbert loss 10%, 400-byte packets (smaller slices)", {"loss_rate": 0.1},
                                  {"packet_size": 400}),
    "ts-5": Condition("Gilbert loss 5% of MPEG-TS packets (188 bytes), PES headers lost with them",
                      {"loss_rate": 0.05}, {"transport": "ts"}),
    "ts-5-b3": Condition("as ts-5, three B-frames (IPTV as most of it is coded)", {"loss_rate": 0.05},
                         {"transport": "ts"}, {"bframes": 3}),
    "bit-errors": Condition("no loss, bit errors at 1e-5 in bursts of 8 bytes", {"loss_rate": 0.0,
                                                                                "bit_error_rate": 1e-5,
                                                                                "byte_burst": 8}),
    "hevc-5": Condition("Gilbert loss 5%, re-encoded in HEVC", {"loss_rate": 0.05}, encoder={"codec": Codec.HEVC}),
    "hevc-ts-5": Condition("as hevc-5, over MPEG-TS (a lost TS packet cuts a slice segment short)",
                           {"loss_rate": 0.05}, {"transport": "ts"}, {"codec": Codec.HEVC}),
    "interlaced-5": Condition("Gilbert loss 5%, coded interlaced (H.264 MBAFF, as broadcast is)", {"loss_rate": 0.05},
                              encoder={"interlaced": True}),
    "interlaced-5-b3": Condition("as interlaced-5, three B-frames", {"loss_rate": 0.05},
                                 encoder={"interlaced": True, "bframes": 3}),
    "long-gop-b2": Condition("Gilbert loss 5%, a keyframe every 250 frames, two B-frames", {"loss_rate": 0.05},
                             encoder={"gop": 250, "bframes": 2}),
    "as-is-5": Condition("Gilbert loss 5% of the clip's own stream, not re-encoded (one slice a picture, its own "
                         "keyframes and B-frames)", {"loss_rate": 0.05}, {"as_is": True}),
    "as-is-ts-5": Condition("as as-is-5, over MPEG-TS", {"loss_rate": 0.05}, {"as_is": True, "transport": "ts"}),
    "ten-bit-5": Condition("Gilbert loss 5%, re-encoded in 10 bits (H.264 High 10)", {"loss_rate": 0.05},
                           encoder={"bit_depth": 10}),
    "hevc-ten-bit-5": Condition("Gilbert loss 5%, re-encoded in HEVC Main 10", {"loss_rate": 0.05},
                                encoder={"codec": Codec.HEVC, "bit_depth": 10}),
}


def damaged_under(name: str, condition: str, seed: int, frames: int | None) -> SimulationResult:
    """The clip (or its first `frames` frames) damaged by simulate-loss under `condition`."""
    spec = CONDITIONS[condition]
    return damaged_copy(name, frames, f"{condition}-{seed}",
                        LossOptions(**{"model": "gilbert", "burst": BURST, "seed": seed, **spec.loss}),
                        PacketisationOptions(**spec.packets, encoder=EncoderSettings(**spec.encoder)))


def robustness_table(clips: list[str], conditions: list[str], seeds: list[int], frames: int | None) -> Table:
    table = Table(["clip", "condition", "seed", "frames", "damage: loss (effective), bits flipped", "plain (dB)",
                   "conceal (dB)", "gain", "never below"])
    gains, unrepairable = [], 0
    for name in clips:
        for condition in conditions:
            for seed in seeds:
                damaged = damaged_under(name, condition, seed, frames)
                plain = plain_ffmpeg_psnr(damaged.damaged, damaged.reference)
                summary = damaged.summary
                cells = [name, condition, seed, summary.frames,
                         loss_label(damaged) + (f", {summary.bits_corrupted} bits" if summary.bits_corrupted else ""),
                         f"{plain:.2f}"]
                try:
                    repaired = conceal(damaged.damaged, work_dir() / "repaired.mkv", codec="ffv1", lossless=True,
                                       reference=damaged.reference, overwrite=True)
                except InputError:  # not one picture decodes: the stream's only keyframe was lost
                    unrepairable += 1
                    table.add(*cells, "nothing decodes", "-", "-")
                    continue
                cells.append(f"{repaired.psnr:.2f}")
                if math.isinf(plain):  # the channel spared this stream: nothing to repair
                    table.add(*cells, "-", "untouched" if math.isinf(repaired.psnr) else "CHANGED")
                    continue
                gain = repaired.psnr - plain
                gains.append(gain)
                table.add(*cells, f"{gain:+.2f}", "yes" if gain >= 0 else "BELOW")
    below = sum(gain < 0 for gain in gains)
    table.add("all", f"{len(conditions)} conditions", f"{len(seeds)} seeds", "", "", "", "",
              f"{min(gains, default=0):+.2f} at worst", f"{len(gains) - below} of {len(gains)} damaged" +
              (f" ({unrepairable} with nothing decodable left out)" if unrepairable else ""))
    return table


def parser() -> argparse.ArgumentParser:
    parser = arguments(__doc__ + "\nConditions:\n" +
                       "\n".join(f"  {key}: {condition.about}" for key, condition in CONDITIONS.items()))
    parser.add_argument("--clips", type=names, default=CLIPS)
    parser.add_argument("--conditions", type=names, default=",".join(CONDITIONS))
    parser.add_argument("--seeds", type=lambda text: [int(value) for value in text.split(",")], default=SEEDS)
    parser.add_argument("--frames", type=int, help="only the first N frames of each clip")
    return parser


def run(args: argparse.Namespace) -> list[Table]:
    unknown = [condition for condition in args.conditions if condition not in CONDITIONS]
    if unknown:
        raise SystemExit(f"unknown conditions {', '.join(unknown)} (use {', '.join(CONDITIONS)})")
    return [robustness_table(args.clips, args.conditions, args.seeds, args.frames)]


def main() -> None:
    run(parser().parse_args())


if __name__ == "__main__":
    main()

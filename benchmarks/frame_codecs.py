"""VP9 and AV1, which lose frames whole: what a plain FFmpeg decode shows, and what `conceal` makes of it.

    python -m benchmarks.frame_codecs [--clips foreman_cif_h264.mp4,carphone_qcif.mp4] [--rates 0.03,0.1,0.2]
        [--codecs vp9,av1]

Each clip is re-encoded by simulate-loss in the codec (libvpx-vp9 in real-time mode, SVT-AV1 low delay;
GOP 2 s) and damaged by the standard channel (Gilbert loss, mean burst 2): a frame missing any of its
packets is lost. Neither codec recovers before the next keyframe: FFmpeg's VP9 decoder shows garbage
(later frames parse their data with probabilities the lost frame adapted), dav1d refuses the frames.
`plain` is FFmpeg's decode with refused and missing frames repeating the last one shown; `conceal` is
the pipeline's defaults (lossless FFV1 output), which rebuilds every frame that was lost or that
concealer.vp9 finds undecodable. Both against the clean decode: sequence luma PSNR.
"""
from __future__ import annotations

import argparse

from concealer import conceal
from concealer.bitstream import Codec
from concealer.errors import InputError

from .common import Table, clip_arguments, damage, loss_label, names, work_dir
from .conceal_quality import plain_ffmpeg_psnr

CLIPS = "foreman_cif_h264.mp4,carphone_qcif.mp4"
RATES = "0.03,0.1,0.2"
CODECS = "vp9,av1"


def frame_codec_table(clips: list[str], rates: list[float], codecs: list[str], frames: int | None) -> Table:
    table = Table(["clip", "codec", "frames", "loss (effective)", "frames lost in transit", "frames rebuilt",
                   "plain (dB)", "conceal (dB)", "gain"])
    for name in clips:
        for codec in codecs:
            for rate in rates:
                damaged = damage(name, rate, frames=frames, codec=Codec(codec))
                plain = plain_ffmpeg_psnr(damaged.damaged, damaged.reference)
                try:
                    repaired = conceal(damaged.damaged, work_dir() / "repaired.mkv", codec="ffv1", lossless=True,
                                       reference=damaged.reference, overwrite=True)
                except InputError:  # the first keyframe was lost, and with it every frame up to the next one
                    table.add(name, codec, damaged.summary.frames, loss_label(damaged), damaged.summary.frames_lost,
                              "-", f"{plain:.2f}", "no decodable picture", "-")
                    continue
                table.add(name, codec, damaged.summary.frames, loss_label(damaged), damaged.summary.frames_lost,
                          repaired.frames_rebuilt, f"{plain:.2f}", f"{repaired.psnr:.2f}",
                          f"{repaired.psnr - plain:+.2f}")
    return table


def parser() -> argparse.ArgumentParser:
    parser = clip_arguments(__doc__, CLIPS, RATES)
    parser.add_argument("--codecs", type=names, default=CODECS)
    return parser


def run(args: argparse.Namespace) -> list[Table]:
    return [frame_codec_table(args.clips, args.rates, args.codecs, args.frames)]


def main() -> None:
    run(parser().parse_args())


if __name__ == "__main__":
    main()

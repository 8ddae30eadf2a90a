"""simulate-loss re-encode mode vs. a plain PyAV decode + x264 encode of the same clip, same settings.

    python -m benchmarks.simulate_speed [--clip bbb_720p_h264.mp4] [--rounds 3]

Both jobs run alternately in this process, so machine noise hits both alike; the
figure is the ratio of their median wall times (target: at most 1.3x).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Callable

import av

from concealer import LossOptions, PacketisationOptions, simulate_loss
from concealer.encode import EncoderSettings, add_video_encoder
from concealer.media import nominal_rate

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "clips"


def plain_transcode(source: Path, output: Path, settings: Callable[[Fraction], EncoderSettings]) -> None:
    """The baseline: decode, encode with the same x264 settings, mux to MP4 with audio copied."""
    with av.open(str(source)) as inp, av.open(str(output), "w") as out:
        video = inp.streams.video[0]
        rate = nominal_rate(video)
        encoder = add_video_encoder(out, settings(rate), width=video.codec_context.width,
                                    height=video.codec_context.height, rate=rate, time_base=video.time_base)
        audio = {s.index: out.add_stream_from_template(s) for s in inp.streams.audio}
        for packet in inp.demux(video, *inp.streams.audio):
            if packet.stream is video:
                for frame in packet.decode():
                    frame.pict_type = av.video.frame.PictureType.NONE
                    out.mux(encoder.encode(frame))
            elif packet.dts is not None:
                packet.stream = audio[packet.stream.index]
                out.mux(packet)
        out.mux(encoder.encode(None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", default="bbb_720p_h264.mp4")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loss-rate", type=float, default=0.05)
    args = parser.parse_args()
    source = DATA / args.clip
    packets = PacketisationOptions()
    plain, simulated = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            start = time.perf_counter()
            plain_transcode(source, Path(tmp) / f"plain{round_}.mp4", packets.reencode_settings)
            plain.append(time.perf_counter() - start)
            start = time.perf_counter()
            result = simulate_loss(source, Path(tmp) / f"damaged{round_}.mp4", packets=packets,
                                   loss=LossOptions(loss_rate=args.loss_rate, seed=round_))
            simulated.append(time.perf_counter() - start)
    with av.open(str(source)) as probe:
        stream = probe.streams.video[0]
        size = f"{stream.codec_context.width}x{stream.codec_context.height}"
        settings = packets.reencode_settings(nominal_rate(stream))
    ratio = statistics.median(simulated) / statistics.median(plain)
    print(f"clip {args.clip} ({size}, {result.summary.frames} frames), x264 preset {settings.preset} "
          f"crf {settings.crf:g}, slice-max-size {settings.slice_max_size}, {args.rounds} rounds")
    print(f"plain decode+encode   median {statistics.median(plain):6.2f} s  {[round(t, 2) for t in plain]}")
    print(f"simulate-loss         median {statistics.median(simulated):6.2f} s  {[round(t, 2) for t in simulated]}")
    print(f"ratio simulate/plain  {ratio:.3f}  (target <= 1.3)")


if __name__ == "__main__":
    main()

"""Video encoder set-up shared by every stage that re-encodes (simulation, concealment)."""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import av

from .bitstream import Codec
from .errors import UsageError

ENCODERS = {Codec.H264: "libx264", Codec.HEVC: "libx265"}


@dataclass(frozen=True)
class EncoderSettings:
    """libx264/libx265 settings. `slice_max_size` (H.264) caps slices at one network packet;
    `slices` (HEVC: x265 cannot cap slice bytes) fixes the slices per picture."""

    codec: Codec = Codec.H264
    crf: float = 23.0
    preset: str = "medium"
    gop: int | None = None  # frames between keyframes (fixed, no scene cuts); None: encoder default
    bframes: int = 0
    slice_max_size: int | None = None
    slices: int | None = None
    ctu: int | None = None  # HEVC coding-tree-unit size; 32 gives finer slices than x265's 64
    threads: int = 0
    lossless: bool = False  # x264 qp 0 / x265 lossless, for evaluation

    def codec_params(self) -> str:
        params: list[str] = ["qp=0"] if self.lossless and self.codec is Codec.H264 else []
        if self.lossless and self.codec is Codec.HEVC:
            params.append("lossless=1")
        if self.gop:
            params += [f"keyint={self.gop}", f"min-keyint={self.gop}", "scenecut=0"]
        params.append(f"bframes={self.bframes}")
        if self.codec is Codec.H264:
            if self.slice_max_size:
                params.append(f"slice-max-size={self.slice_max_size}")
            return ":".join(params)
        if self.slices:
            params.append(f"slices={self.slices}")
        if self.ctu:
            params.append(f"ctu={self.ctu}")
        params.append("log-level=error")
        return ":".join(params)


def add_video_encoder(container: av.container.OutputContainer, settings: EncoderSettings, *,
                      width: int, height: int, rate: Fraction | None, time_base: Fraction) -> av.VideoStream:
    """Add a configured 8-bit 4:2:0 encoder stream to `container`."""
    if settings.preset not in ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium",
                               "slow", "slower", "veryslow", "placebo"):
        raise UsageError(f"unknown encoder preset {settings.preset!r}")
    stream = container.add_stream(ENCODERS[settings.codec], rate=rate)
    stream.width, stream.height = width, height
    stream.pix_fmt = "yuv420p"
    stream.time_base = time_base
    stream.codec_context.time_base = time_base
    stream.thread_count = settings.threads
    # FFmpeg's default lets libx264 use sliced threads, which force one slice per thread and make
    # the bitstream depend on the machine; frame threads keep it deterministic and packet-sized.
    stream.codec_context.thread_type = "FRAME"
    key = "x264-params" if settings.codec is Codec.H264 else "x265-params"
    stream.options = {"preset": settings.preset, key: settings.codec_params()}
    if not settings.lossless:
        stream.options["crf"] = f"{settings.crf:g}"
    return stream


OUTPUT_CODECS = ("h264", "hevc", "ffv1")


def add_output_encoder(container: av.container.OutputContainer, codec: str, settings: EncoderSettings, *,
                       width: int, height: int, rate: Fraction | None, time_base: Fraction) -> av.VideoStream:
    """The repaired video's encoder: x264/x265 with `settings`, or FFV1 (always lossless)."""
    if codec not in OUTPUT_CODECS:
        raise UsageError(f"unknown output codec {codec!r} (use {', '.join(OUTPUT_CODECS)})")
    if codec != "ffv1":
        return add_video_encoder(container, EncoderSettings(codec=Codec(codec), crf=settings.crf,
                                                            preset=settings.preset, lossless=settings.lossless),
                                 width=width, height=height, rate=rate, time_base=time_base)
    stream = container.add_stream("ffv1", rate=rate)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.time_base = time_base
    stream.codec_context.time_base = time_base
    return stream

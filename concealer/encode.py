"""Video encoder set-up shared by every stage that re-encodes (simulation, concealment)."""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from fractions import Fraction

import av

from .bitstream import Codec
from .errors import OutputError, UsageError
from .media import VideoFormat

ENCODERS = {Codec.H264: "libx264", Codec.HEVC: "libx265", Codec.VP9: "libvpx-vp9", Codec.AV1: "libsvtav1"}
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")
# x264's preset names as libvpx's real-time speed (cpu-used) and SVT-AV1's preset: faster names, higher numbers.
VP9_SPEED = dict(zip(X264_PRESETS, (9, 9, 8, 8, 7, 7, 6, 5, 5, 5)))
AV1_PRESET = dict(zip(X264_PRESETS, (12, 11, 10, 9, 9, 8, 6, 4, 2, 1)))


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
    # H.264: interlaced, top field first, as broadcast is coded (x264's MBAFF: macroblocks in vertical pairs)
    interlaced: bool = False
    # H.264 / HEVC: 8-bit 4:2:0, or 10-bit (High 10 / Main 10, yuv420p10le), as HDR and contribution video come
    bit_depth: int = 8

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
            if self.interlaced:
                params.append("tff=1")
            return ":".join(params)
        if self.slices:
            params.append(f"slices={self.slices}")
        if self.ctu:
            params.append(f"ctu={self.ctu}")
        params.append("log-level=error")
        return ":".join(params)


def add_video_encoder(container: av.container.OutputContainer, settings: EncoderSettings, *,
                      width: int, height: int, rate: Fraction | None, time_base: Fraction,
                      pix_fmt: str | None = None) -> av.VideoStream:
    """Add a configured encoder stream (4:2:0 of the settings' bit depth unless told otherwise) to `container`."""
    if settings.preset not in X264_PRESETS:
        raise UsageError(f"unknown encoder preset {settings.preset!r}")
    if settings.bit_depth not in (8, 10) or (settings.bit_depth != 8 and not settings.codec.has_nal_units):
        raise UsageError(f"{settings.codec.value} is encoded in 8 bits here; H.264 and HEVC in 8 or 10")
    pix_fmt = pix_fmt or ("yuv420p10le" if settings.bit_depth == 10 else "yuv420p")
    stream = _added_stream(container, ENCODERS[settings.codec], settings.codec.value, rate)
    stream.width, stream.height = width, height
    stream.pix_fmt = pix_fmt
    stream.time_base = time_base
    stream.codec_context.time_base = time_base
    stream.thread_count = settings.threads
    # FFmpeg's default lets libx264 use sliced threads, which force one slice per thread and make
    # the bitstream depend on the machine; frame threads keep it deterministic and packet-sized.
    stream.codec_context.thread_type = "FRAME"
    if not settings.codec.has_nal_units:
        stream.options = _frame_codec_options(stream, settings)
        return stream
    key = "x264-params" if settings.codec is Codec.H264 else "x265-params"
    stream.options = {"preset": settings.preset, key: settings.codec_params()}
    if not settings.lossless:
        stream.options["crf"] = f"{settings.crf:g}"
    return stream


def _frame_codec_options(stream: av.VideoStream, settings: EncoderSettings) -> dict[str, str]:
    """libvpx-vp9 / SVT-AV1 set up as a real-time sender would be: constant quality, no look-ahead
    and no hidden frames (every packet shows a frame), and a fixed keyframe interval."""
    if settings.lossless or settings.bframes:
        raise UsageError(f"{settings.codec.value} is encoded without B-frames and never lossless here")
    # keyint_min = g: no extra keyframes at scene cuts (libvpx); SVT-AV1 is told with scd=0.
    gop = {"g": str(settings.gop), "keyint_min": str(settings.gop)} if settings.gop else {}
    crf = f"{settings.crf:g}"
    if settings.codec is Codec.VP9:
        return {**gop, "crf": crf, "b": "0", "deadline": "realtime", "cpu-used": str(VP9_SPEED[settings.preset]),
                "lag-in-frames": "0", "row-mt": "1"}
    os.environ.setdefault("SVT_LOG", "1")  # errors only: SVT-AV1 prints its whole configuration otherwise
    return {**gop, "crf": crf, "preset": str(AV1_PRESET[settings.preset]), "svtav1-params": "pred-struct=1:scd=0"}


OUTPUT_CODECS = ("h264", "hevc", "ffv1")


def add_output_encoder(container: av.container.OutputContainer, codec: str, settings: EncoderSettings,
                       source: VideoFormat) -> av.VideoStream:
    """The repaired video's encoder (x264/x265 with `settings`, or FFV1, always lossless), set up to keep
    the input's size, time base, pixel format where the encoder takes it, colour, rotation and tags."""
    if codec not in OUTPUT_CODECS:
        raise UsageError(f"unknown output codec {codec!r} (use {', '.join(OUTPUT_CODECS)})")
    pix_fmt = output_pixel_format("ffv1" if codec == "ffv1" else ENCODERS[Codec(codec)], source.pix_fmt)
    geometry = {"width": source.width, "height": source.height, "rate": source.rate, "time_base": source.time_base}
    if codec != "ffv1":
        stream = add_video_encoder(container, replace(settings, codec=Codec(codec)), pix_fmt=pix_fmt, **geometry)
    else:
        stream = _added_stream(container, "ffv1", codec, source.rate)
        stream.width, stream.height, stream.pix_fmt = source.width, source.height, pix_fmt
        stream.time_base = stream.codec_context.time_base = source.time_base
    context = stream.codec_context
    colour = source.colour
    context.color_range, context.colorspace = colour.range, colour.matrix
    context.color_primaries, context.color_trc = colour.primaries, colour.transfer
    if source.sample_aspect_ratio:
        context.sample_aspect_ratio = source.sample_aspect_ratio
    if source.display_matrix:
        stream.set_display_matrix(source.display_matrix)
    stream.metadata.update(source.tags)
    stream.disposition = source.disposition
    try:
        context.open()  # now: a size or format the encoder refuses fails before anything is written
    except av.error.FFmpegError as exc:
        raise OutputError(f"{codec} cannot encode {source.width}x{source.height} {pix_fmt} video "
                          f"({exc.strerror or exc}); try --codec ffv1 with a .mkv output") from exc
    return stream


def _added_stream(container: av.container.OutputContainer, encoder: str, codec: str, rate: Fraction | None
                  ) -> av.VideoStream:
    """A new stream of `encoder`, or OutputError where the container's format cannot hold `codec` (WebM and H.264,
    MOV and FFV1): PyAV refuses it as a ValueError."""
    try:
        return container.add_stream(encoder, rate=rate)
    except ValueError as exc:
        raise OutputError(f"the {container.format.long_name or container.format.name} format cannot hold {codec} "
                          f"video: write a .mkv, which holds them all") from exc


def output_pixel_format(encoder: str, pix_fmt: str) -> str:
    """The input's pixel format where the encoder takes it (a full-range yuvj format may become its yuv
    twin, the range then being in the colour metadata) and it keeps each component in a plane of its own,
    so that a repair merges into it sample by sample; otherwise 8-bit 4:2:0."""
    supported = {f.name for f in av.Codec(encoder, "w").video_formats}
    for candidate in (pix_fmt, pix_fmt.replace("yuvj", "yuv")):
        described = av.VideoFormat(candidate)
        separate_planes = len({c.plane for c in described.components}) == len(described.components)
        if candidate in supported and separate_planes and not described.has_palette:
            return candidate
    return "yuv420p"

"""Shared fixtures: real clips from ../shared/data, and helpers to decode them with real FFmpeg."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import settings

from concealer.bitstream import Codec, Framing, nal_units, parse_decoder_config
from concealer.media import add_stream_copy

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def clip(name: str) -> Path:
    path = DATA / "clips" / name
    if not path.exists():
        pytest.skip(f"{path} not found: these tests need ../shared/data beside the checkout")
    return path


def plain_decode_psnr(damaged: Path, reference: Path) -> float:
    """Sequence luma PSNR against `reference` of what a player shows of `damaged`: FFmpeg's decode with its
    concealment on, a picture that never came out leaving the last one shown on screen."""
    plain, clean = decode_luma(damaged, ec="guess_mvs+deblock"), decode_luma(reference)
    shown = [plain.get(p) for p in sorted(clean)]
    for index, picture in enumerate(shown):
        shown[index] = picture if picture is not None else shown[index - 1]
    return 10 * np.log10(255 ** 2 / np.mean([np.mean((a.astype(float) - clean[p]) ** 2)
                                              for a, p in zip(shown, sorted(clean))]))


def decode_luma(path: Path, **codec_options: str) -> dict[int, np.ndarray]:
    """Decode every frame single-threaded (so H.264 options like ec apply): raw Y planes keyed by pts.
    Packets the decoder refuses are skipped, as a player skips them."""
    planes = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        stream.codec_context.options = codec_options
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:
                continue
            planes.update((f.pts, f.reformat(format="yuv420p").to_ndarray()[:f.height]) for f in frames)
    return planes


def reencode(out: Path, source: str = "foreman_cif_h264.mp4", *, frames: int | None = None,
             size: tuple[int, int] | None = None, pix_fmt: str = "yuv420p", encoder: str = "libx264",
             options: dict[str, str] | None = None, ticks: list[int] | None = None,
             colour: dict[str, int] | None = None, bit_rate: int | None = None, format: str | None = None) -> Path:
    """A real clip's first `frames` frames (all by default) encoded anew by `encoder` at 25 fps (libx264 at preset
    ultrafast unless `options` say otherwise); `ticks`: the pts steps in 1/90000 s, for a variable frame rate
    (MPEG-1/2 encoders take only their standard rates, MPEG-4 Part 2 no time base finer than 1/65535: they count in
    frames)."""
    per_frame = encoder in ("mpeg1video", "mpeg2video", "mpeg4")
    with av.open(str(clip(source))) as source_file, av.open(str(out), "w", format=format) as sink:
        video = source_file.streams.video[0]
        stream = sink.add_stream(encoder, rate=25)
        width, height = size or (video.width, video.height)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        tick = stream.time_base = stream.codec_context.time_base = Fraction(1, 25 if per_frame else 90000)
        if bit_rate:
            stream.bit_rate = bit_rate
        for name, value in (colour or {}).items():
            setattr(stream.codec_context, name, value)
        stream.options = {"preset": "ultrafast", **(options or {})} if encoder == "libx264" else options or {}
        pts = 0
        for number, frame in enumerate(source_file.decode(video)):
            if number == frames:
                break
            picture = frame.reformat(width=width, height=height, format=pix_fmt)
            picture.pts, picture.time_base = pts, tick
            pts += 1 if per_frame else ticks[number] if ticks else 3600
            sink.mux(stream.encode(picture))
        sink.mux(stream.encode(None))
    return out


def stream_packets(path: Path, kind: str) -> list[bytes]:
    with av.open(str(path)) as container:
        streams = [s for s in container.streams if s.type == kind]
        return [bytes(p) for p in container.demux(*streams) if p.size]


def macroblock_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per 16x16 macroblock: does any luma sample differ?"""
    height, width = a.shape
    rows, cols = -(-height // 16), -(-width // 16)
    diff = np.zeros((rows * 16, cols * 16), dtype=bool)
    diff[:height, :width] = a != b
    return diff.reshape(rows, 16, cols, 16).any(axis=(1, 3))


def decode_order(path: Path) -> list[int]:
    """Frame pts in the order the access units are stored (decode order)."""
    with av.open(str(path)) as container:
        return [p.pts for p in container.demux(video=0) if p.size]


def remux_without(source: Path, target: Path, dropped: set[int]) -> list[int]:
    """Copy the video stream of `source` to `target` without the packets numbered in `dropped`, as
    frames that never arrived; returns the timestamps of all the source's packets, in order."""
    with av.open(str(source)) as reader, av.open(str(target), "w") as writer:
        video = reader.streams.video[0]
        copy = add_stream_copy(writer, video)
        packets = [p for p in reader.demux(video) if p.dts is not None]
        for number, packet in enumerate(packets):
            if number not in dropped:
                packet.stream = copy
                writer.mux(packet)
        return [p.pts for p in packets]


def strip_adts(frame: bytes) -> bytes:
    """Raw AAC frame from an ADTS one (MPEG-TS carries AAC with ADTS headers)."""
    if frame[:2] in (b"\xff\xf1", b"\xff\xf9"):
        return frame[7 if frame[1] & 1 else 9:]
    return frame


# The machine is shared and noisy: judge hypothesis tests on their examples, not their timing.
settings.register_profile("no-deadline", deadline=None)
settings.load_profile("no-deadline")


def with_extras(video_file: Path, out: Path) -> Path:
    """`video_file`'s video with what `out`'s container can carry beside it: KLV metadata packets (MPEG-TS, as
    drones and broadcast cameras write), a font attachment (Matroska, for styled subtitles) or a cover picture
    (MP4)."""
    with av.open(str(video_file)) as source, av.open(str(out), "w") as sink:
        video = sink.add_stream_from_template(source.streams.video[0])
        extra = None
        if out.suffix == ".ts":
            extra = sink.add_data_stream("klv")
        elif out.suffix == ".mkv":
            sink.add_attachment("subtitles.ttf", "font/ttf", bytes(range(256)) * 4)
        else:
            cover = sink.add_stream("mjpeg", rate=1)
            cover.width, cover.height, cover.pix_fmt = 64, 64, "yuvj420p"
            cover.disposition = av.stream.Disposition.attached_pic
            still = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 90, np.uint8), format="rgb24")
            still = still.reformat(format="yuvj420p")
            still.pts = 0
            for packet in [*cover.encode(still), *cover.encode(None)]:
                sink.mux(packet)
        for packet in source.demux(video=0):
            if packet.dts is None:
                continue
            if extra is not None:
                metadata = av.Packet(bytes([6, 14, 43, 52]) + packet.dts.to_bytes(8, "big"))
                metadata.pts = metadata.dts = packet.dts
                metadata.time_base, metadata.stream = packet.time_base, extra
                sink.mux(metadata)
            packet.stream = video
            sink.mux(packet)
    return out


def reference_flags(path):
    """(pts, nal_ref_idc of its first slice) of every packet, in decoding order."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        config = parse_decoder_config(Codec.H264, stream.codec_context.extradata)
        flags = []
        for packet in container.demux(stream):
            if packet.dts is None:
                continue
            data = bytes(packet)
            first = next(u for u in nal_units(data, Codec.H264, Framing.LENGTH_PREFIXED, config.length_size)
                         if u.nal_type in (1, 5))
            flags.append((packet.pts, data[first.payload_start] >> 5 & 3))
    return flags


def lost_anchor_after_a_cut_to_black(folder: Path) -> tuple[Path, Path, list[int]]:
    """A real stretch of bbb_720p_vp8_30s (frames 700-759 at 320x180) that cuts to black at its 20th frame and fades
    in, coded by simulate-loss's encoder with three B-frames (GOP 2 s: keyframes at frames 0 and 48), with the first
    P picture after the cut, a tiny black one, never arrived: the pictures predicted from it until the keyframe
    decode onto the stand-in FFmpeg puts in its place, the bright picture before the cut, and overflow to white.
    Returns (damaged, clean reference, the pts of the pictures after the lost one up to the keyframe)."""
    from benchmarks.common import excerpt

    from concealer import LossOptions, PacketisationOptions, simulate_loss
    from concealer.encode import EncoderSettings

    source = excerpt("bbb_720p_vp8_30s.webm", 60, start=700, size=(320, 180))
    coded = simulate_loss(source, folder / "clean.mp4", loss=LossOptions(model="bernoulli", loss_rate=0.0),
                          packets=PacketisationOptions(encoder=EncoderSettings(bframes=3)))
    clean = decode_luma(coded.reference)
    with av.open(str(coded.reference)) as container:
        kinds = {frame.pts: frame.pict_type for frame in container.decode(video=0)}
    order = decode_order(coded.reference)
    lost = next(number for number, pts in enumerate(order)
                if kinds[pts] == av.video.frame.PictureType.P and clean[pts].mean() < 20)
    keyframe = next(pts for pts in sorted(clean) if pts > order[lost] and kinds[pts] == av.video.frame.PictureType.I)
    remux_without(coded.reference, folder / "damaged.mp4", {lost})
    return folder / "damaged.mp4", coded.reference, [pts for pts in sorted(clean) if order[lost] < pts < keyframe]

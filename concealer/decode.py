"""Streaming decode of damaged video, with FFmpeg's own error concealment made an explicit choice.

Measured here: PyAV's default decoder threading (slice threads, automatic count)
silently disables FFmpeg's H.264 error concealment, so concealment-on decodes use
frame threads. Frames that never arrived are found from timestamp gaps and emitted
as placeholders, so that every frame slot of the stream comes out, in order.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av

from .media import open_video_input

# FFmpeg's H.264 `ec` flags: guess motion vectors, deblock concealed blocks.
FFMPEG_CONCEALMENT = "guess_mvs+deblock"


@dataclass(frozen=True)
class DecodedFrame:
    """One frame slot of the stream: a decoded picture, or a placeholder for a frame that never arrived."""

    pts: int
    time_base: Fraction
    picture: av.VideoFrame | None  # None: the frame was lost entirely

    @property
    def missing(self) -> bool:
        return self.picture is None


def configure_decoder(stream: av.video.stream.VideoStream, concealment: bool, threads: int = 0) -> None:
    """Set FFmpeg's concealment and a threading mode under which that setting takes effect."""
    context = stream.codec_context
    context.thread_type = "FRAME"
    context.thread_count = threads
    if context.name == "h264":
        context.options = {"ec": FFMPEG_CONCEALMENT if concealment else "0"}


def frame_duration(stream: av.video.stream.VideoStream) -> int | None:
    """The nominal frame duration in stream time-base ticks, or None for a stream without a rate.

    Uses the base rate (FFmpeg's r_frame_rate), not the average one: lost frames lower the average.
    """
    rate = stream.base_rate or stream.guessed_rate
    if not rate or not stream.time_base:
        return None
    ticks = 1 / (rate * stream.time_base)
    return round(ticks) if ticks >= 1 else None


def decode_frames(path: Path, *, concealment: bool = True, threads: int = 0) -> Iterator[DecodedFrame]:
    """Yield every frame slot of the first video stream in presentation order, lost frames included.

    A gap between consecutive timestamps wider than 1.5 frame durations means frames were
    lost there; each missing slot is yielded as a placeholder with its expected pts.
    Frames that come out without a timestamp (their container packet header was lost)
    are given the next expected one.
    """
    with open_video_input(path) as container:
        stream = container.streams.video[0]
        configure_decoder(stream, concealment, threads)
        duration = frame_duration(stream)
        previous: int | None = None
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:
                continue  # nothing decodable in this packet; its slot shows up as a gap
            for picture in frames:
                pts = picture.pts
                if pts is None:
                    if previous is None or duration is None:
                        continue
                    pts = previous + duration
                if previous is not None and duration is not None:
                    if pts <= previous:
                        continue  # a duplicate or out-of-order frame: the slot is already filled
                    missing = previous + duration
                    while pts - missing >= duration // 2 + 1:
                        yield DecodedFrame(missing, stream.time_base, None)
                        missing += duration
                previous = pts
                yield DecodedFrame(pts, stream.time_base, picture)

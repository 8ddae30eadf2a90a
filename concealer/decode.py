"""Streaming decode of damaged video, with FFmpeg's own error concealment made an explicit choice.

Measured here: PyAV's default decoder threading (slice threads, automatic count)
silently disables FFmpeg's H.264 error concealment, and with two frame threads the
concealed pictures differ from run to run (3 different results in 10 decodes of one
damaged clip). Decodes therefore use one thread unless asked for more: concealment
works and the result is reproducible. Frames that never arrived are found from timestamp gaps and emitted
as placeholders, so that every frame slot of the stream comes out, in order.
"""
from __future__ import annotations

import contextlib
import functools
import gc
import heapq
import itertools
import math
import threading
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

import av
from av.sidedata.sidedata import SideDataContainer

from .bitstream import BitstreamError, Codec, arrived_units, parse_decoder_config
from .errors import InputError
from .h264_repair import H264GapRepair
from .media import main_video, open_video_input
from .picture_order import PictureOrder
from .stream_repair import CutSegments, PacketRepair, open_stream_repair
from .vp9 import ReferenceTracker, Verdict

import numpy as np

# FFmpeg's H.264 `ec` flags: guess motion vectors, deblock concealed blocks ("0": no concealment).
FFMPEG_CONCEALMENT = "guess_mvs+deblock"
NO_CONCEALMENT = "0"
# FFmpeg's decoders with error resilience (error_resilience.c): every macroblock of a picture comes out decoded or
# concealed. The others (HEVC, VP9, AV1) conceal nothing and may leave what they could not decode as the buffer held
# it: HEVC does (_released).
ERROR_CONCEALING_DECODERS = ("h264", "mpeg1video", "mpeg2video", "mpeg4", "h263")
PLANAR_8BIT_YUV = ("yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p")
# A longer gap between timestamps is a jump in them (damaged, or a stream discontinuity), not lost frames:
# filling it would add hours of rebuilt frames for one garbled timestamp (found by benchmarks.fuzz).
MAX_LOST_SECONDS = 10


@dataclass(frozen=True)
class DecodedFrame:
    """One frame slot of the stream: a decoded picture, or a placeholder for a frame that never arrived."""

    pts: int
    time_base: Fraction
    picture: av.VideoFrame | None  # None: the frame was lost entirely
    # FFmpeg's exported motion vectors (AVMotionVector records), when asked for.
    motion_vectors: np.ndarray | None = None
    # 16x16 macroblocks whose lost data the stream repair substituted before decoding (HEVC), if any.
    substituted: np.ndarray | None = None
    # HEVC over MPEG-TS: the slice segments whose data broke off where TS packets were lost (see CutSegments).
    cut_short: CutSegments | None = None
    # Predicted from a reference that a lost frame left stale (VP9; H.264 with B-frames, where FFmpeg stands an
    # older picture in for a lost reference): damaged everywhere, to an unknown degree.
    drifted: bool = False
    # H.264: the first macroblock of each of its slices that arrived (the rest of the picture lies between them).
    slice_starts: list[int] | None = None
    # H.264: whether later pictures may be predicted from it (nal_ref_idc); None where unknown.
    reference: bool | None = None

    @property
    def missing(self) -> bool:
        return self.picture is None

    @property
    def b_picture(self) -> bool:
        """A B picture, which may be predicted from one shown after it (a lost frame's type is unknown: False)."""
        return self.picture is not None and self.picture.pict_type == av.video.frame.PictureType.B

    def luma(self) -> np.ndarray:
        """The Y plane as a read-only, contiguous HxW uint8 array, raw (limited range stays limited, as PSNR
        wants: a conversion to "gray" would stretch it to full range). A view of the picture where its rows
        hold no padding: detection reads two planes a frame, and a copy of each cost as much as comparing them.
        Worked out once per frame: the motion measurement and the detector both read it."""
        return self._luma

    @functools.cached_property
    def _luma(self) -> np.ndarray:
        picture = self.picture
        if picture.format.name not in PLANAR_8BIT_YUV:
            picture = picture.reformat(format="yuv420p")
        luma = np.ascontiguousarray(plane_samples(picture, 0))
        luma.flags.writeable = False
        return luma


def _released(picture: av.VideoFrame, concealing: bool) -> av.VideoFrame:
    """A picture copied out of the decoder as it comes, so that the decoder reuses its buffers as a player's does,
    wherever FFmpeg may leave damaged samples holding whatever the buffer it was handed held; as it is where every
    sample was decoded or concealed (progressive 8-bit pictures of a decoder with error concealment, `concealing`).
    `conceal` holds up to 16 decoded pictures ahead, which kept the recent buffers busy, so the decoder was handed
    older or zeroed ones.

    FFmpeg leaves some lost macroblocks of MBAFF pictures unconcealed (see detection._lost_pairs), and in B-frame
    streams the pictures predicted from them too: foreman coded interlaced with three B-frames at 5%, seed 4, a
    damaged picture's luma was 986 in MSE from the clean one where a plain decode's was 204; 44 of its 60 pictures
    differed from a plain decode's. Copied, and their vectors read apart from them (_motion_vectors), none differs.
    Foreman, bikes and chaplin coded so at 5%, seeds 2-4, `conceal` against a plain decode: mean gain -0.06 -> +0.70
    dB, 3 -> 2 cases below it (bikes seed 3 28.51 -> 30.43 against 30.88; foreman seed 4 20.27 -> 22.83 against
    23.05); without B-frames (24 cases, 5 / 10%) +3.35 -> +3.36, each within -0.28 / +0.39. The copy has no
    `is_corrupt`, which only progressive B pictures are asked for (detection._unreceived_blocks). Pictures deeper than
    8 bits are copied too: the bitstream detector maps them from a decode without concealment, whose lost macroblocks
    hold a stale buffer's samples, and held, they made the map and `conceal` vary from run to run (foreman in 10 bits
    at 5% loss, seed 2: 25.42 and 26.42 dB). So is every HEVC picture: FFmpeg's HEVC decoder conceals nothing, and
    the coding tree units after the point where a slice's data broke off keep the buffer's samples. foreman_cif_hevc
    damaged as it is over MPEG-TS (`simulate-loss --as-is --transport ts`, 3%, seed 2: seven TS packets of one
    picture's slice lost, the rest of it decoded): `conceal` 13.93 dB from the fifth picture on below a plain
    decode's 20.59, though no damage was found and no picture repaired; copied, 20.59."""
    copy = picture.interlaced_frame or sample_bits(picture.format) > 8 or not concealing
    return copied_picture(picture) if copy else picture


def sample_bits(format: av.VideoFormat) -> int:
    """The bits of the format's deepest component: 8 for yuv420p, 10 for yuv420p10le."""
    return max(component.bits for component in format.components)


def plane_samples(frame: av.VideoFrame, index: int) -> np.ndarray:
    """A writable view of plane `index` without its line padding: uint8, or uint16 for deeper formats."""
    plane = frame.planes[index]
    dtype = np.dtype(np.uint16 if sample_bits(frame.format) > 8 else np.uint8)
    return np.frombuffer(plane, dtype).reshape(-1, plane.line_size // dtype.itemsize)[:plane.height, :plane.width]


# What later stages read from a decoded picture besides its samples (drift.KeyframeBackfill starts at a key
# frame: left out, chaplin at 10% loss fell from 26.85 to 26.39 dB).
SHOWN_PROPERTIES = ("pts", "time_base", "duration", "pict_type", "key_frame", "colorspace", "color_range",
                    "color_primaries", "color_trc")


def copied_picture(frame: av.VideoFrame, height: int | None = None, width: int | None = None) -> av.VideoFrame:
    """A picture of our own holding `frame`'s samples (its top-left `height` x `width`, all by default) and what later
    stages read of it (SHOWN_PROPERTIES), so that the decoder's buffer goes back to it."""
    copy = av.VideoFrame(width or frame.width, height or frame.height, frame.format.name)
    for index in range(len(frame.planes)):
        target = plane_samples(copy, index)
        target[...] = plane_samples(frame, index)[:target.shape[0], :target.shape[1]]
    for name in SHOWN_PROPERTIES:
        setattr(copy, name, getattr(frame, name))
    return copy


def configure_decoder(stream: av.video.stream.VideoStream, concealment: str, threads: int = 0,
                      motion_vectors: bool = False) -> None:
    """Set FFmpeg's concealment (`ec` flags) and a threading mode under which that setting takes effect."""
    context = stream.codec_context
    context.thread_type = "FRAME"
    context.thread_count = threads
    # Every decoder built on FFmpeg's error resilience (H.264, MPEG-1/2/4, H.263) reads `ec`; the others ignore it.
    context.options = {"ec": concealment, **({"flags2": "+export_mvs"} if motion_vectors else {})}


def frame_duration(stream: av.video.stream.VideoStream, timestamps: Sequence[int | None] = ()) -> Fraction | None:
    """The nominal frame duration in stream time-base ticks, exactly (29.97 fps in milliseconds is
    1001/30 ticks: frames sit at 0, 33, 67, 100, ...), or None for a stream without a rate.

    Uses the base rate (FFmpeg's r_frame_rate), not the average one: lost frames lower the average.
    But when FFmpeg finds no regular rate (phone clips with variable frame times) it reports the time
    base itself (fire2_720p_rotated: 90000 fps, 10.5 on average), which would turn every gap into
    thousands of lost frames: a base rate over twice the average is not a frame rate, the average is.
    And where the `timestamps` of the first packets step by a whole multiple of the rate's duration, that
    multiple is the frame duration: FFmpeg reports the field rate of some streams (foreman in MPEG-1 over
    MPEG-TS at 25 fps: 50), which read every other frame as lost.
    """
    rate = stream.base_rate or stream.guessed_rate
    if rate and stream.average_rate and rate > 2 * stream.average_rate:
        rate = stream.average_rate
    if not rate or not stream.time_base:
        return None
    ticks = Fraction(1 / (rate * stream.time_base))
    step = _usual_step(timestamps)
    if step is not None and step >= 1.5 * ticks and abs(step - round(step / ticks) * ticks) <= 1:
        ticks *= round(step / ticks)
    return ticks if ticks >= 1 else None


# Packets read before decoding begins, whose timestamps check the frame duration the container states.
CADENCE_PACKETS = 64


def untimed(first: Sequence[av.Packet]) -> bool:
    """Whether a stream whose first packets are `first` (CADENCE_PACKETS of them) has no timestamps at all: raw
    Annex B, which its stream repair stamps (h264_repair, stream_repair)."""
    sized = [packet for packet in first if packet.size]
    return bool(sized) and all(packet.pts is None for packet in sized)


def _timestamp_clock(timestamps: Sequence[int | None], duration: Fraction | None) -> int:
    """The ticks of the clock the timestamps were counted in before they were written in the stream's time base:
    the greatest common divisor of their differences. Times written in milliseconds into a 1/16000 time base
    (VP9 from WebM remuxed to MP4: a 29.97 fps frame at 67 ms is 1072 ticks) step in multiples of 16, and a lost
    frame's timestamp must be rounded on that clock to be the one the clean stream has (not 1068 or 1062).
    A divisor as long as a frame (`duration`) or longer is no clock: a few timestamps every other frame apart
    have one, and rounded on it, a lost frame took the timestamp of the frame after it."""
    known = [t for t in timestamps if t is not None]
    clock = math.gcd(*(t - known[0] for t in known[1:])) if len(known) > 1 else 1
    return clock if duration is not None and 0 < clock < duration else 1


def _usual_step(timestamps: Sequence[int | None]) -> int | None:
    """The most common step between the timestamps in presentation order; None for fewer than 8 steps."""
    ordered = np.unique([t for t in timestamps if t is not None])
    if len(ordered) < 9:
        return None
    steps, counts = np.unique(np.diff(ordered), return_counts=True)
    return int(steps[counts.argmax()])


def decode_frames(path: Path, *, concealment: str = FFMPEG_CONCEALMENT, threads: int = 1,
                  motion_vectors: bool = False, repairs: bool = True, marked_substitutes: bool = False,
                  gaps_are_losses: bool = False, garbled_holes: bool = False,
                  sent: Sequence[int] = ()) -> Iterator[DecodedFrame]:
    """Yield every frame slot of the main video stream in presentation order, lost frames included.

    A slot is lost when the container has a packet for it but the decoder gave no picture
    (FFmpeg's HEVC decoder drops pictures it cannot start), or when the container has no
    packet at all: a gap between timestamps wider than 1.5 frame durations. Each lost slot
    is yielded as a placeholder with its expected pts. Frames that come out without a
    timestamp (their container packet header was lost) are given the next expected one.
    `repairs=False` decodes as a plain player does: no repair below the decoder (HEVC, H.264)
    and VP9's garbage pictures shown; what a report on the damaged file itself must measure.
    `marked_substitutes` moves H.264's stand-ins for lost reference frames (see concealer.h264_repair).
    `gaps_are_losses`: every gap in the timestamps is lost frames, whatever the picture order counts say (they
    tell a frame held longer from a lost one in the stream as coded, but a re-encode of damaged video that left
    its lost frames out numbers its pictures without gaps: what `pixels` detection reads).
    `garbled_holes`: HEVC over MPEG-TS, the decoder reads other bytes where TS packets were lost than it otherwise
    does (see stream_repair.GARBLE), so that this decode parts from the other one where the lost data was needed.
    `sent`: timestamps of frames known to have been sent (a truth file's lost frames): those before the first
    picture that arrived or after the last one get slots too, which nothing in the stream could tell.
    """
    with open_video_input(path) as container, _older_objects_frozen() if motion_vectors else contextlib.nullcontext():
        stream = main_video(container)
        configure_decoder(stream, concealment, threads, motion_vectors)
        packets = container.demux(stream)
        first = list(itertools.islice(packets, CADENCE_PACKETS))
        timestamps = [packet.pts for packet in first if packet.size]
        duration = frame_duration(stream, timestamps)
        repair = open_stream_repair(path, stream, marked_substitutes, duration if untimed(first) else None,
                                    garbled_holes) if repairs else None
        length_size = _length_prefix_size(stream) if repairs else None
        order = repair.order if repair is not None and not gaps_are_losses else None
        slots = _FrameSlots(duration, stream.time_base, order, _timestamp_clock(timestamps, duration), sent)
        dependencies = _Vp9Dependencies(duration) if repairs and stream.codec_context.name == "vp9" else None
        size = _PictureSize()
        concealing = stream.codec_context.name in ERROR_CONCEALING_DECODERS
        for packet in _repaired(arrived_parts(itertools.chain(first, packets), length_size), repair):
            # Before the edit list's start: not shown, so no slot (found by fuzzing). A stand-in for a lost frame
            # has a timestamp of our own, spread between its neighbours': the lost frame's slot is placed on the
            # frame-rate grid instead, where the muxer put it (foreman at 29.97 fps in milliseconds lost frames
            # 27-29 at 901, 934 and 968; the stand-ins sat at 901, 934 and 967).
            if not packet.is_discard and not (repair is not None and repair.stands_in(packet)):
                slots.expect(packet.pts)
            if dependencies is not None:
                dependencies.arrived(packet)
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                # A damaged packet fails as invalid data, as a feature its garbled header seems to ask for
                # (PatchWelcomeError), or as EAGAIN once the decoder is stuck: its slot becomes a placeholder.
                if dependencies is not None:
                    dependencies.refused()
                continue
            for picture in frames:
                arrived = repair.arrived_slices(picture.pts) if repair is not None else None
                if not size.fits(picture, path):  # a garbled header's size: its slot becomes a placeholder
                    yield from slots.refuse(picture)
                    continue
                verdict = dependencies.verdict(picture.pts) if dependencies is not None else Verdict.CLEAN
                if verdict is Verdict.UNDECODABLE:
                    continue  # garbage: its slot becomes a placeholder, rebuilt like a lost frame
                if repair is not None and repair.hidden(picture.pts):
                    continue  # a lost frame's stand-in (H.264): its slot stays a lost frame
                vectors = _motion_vectors(picture) if motion_vectors else None
                picture = _released(picture, concealing)
                drifted = verdict is Verdict.DRIFTED or (repair is not None and repair.drifted(picture.pts))
                for slot in slots.fill(picture, vectors):
                    if repair is not None and not slot.missing:
                        slot = replace(slot, substituted=repair.substituted(slot.pts),
                                       cut_short=repair.cut_short(slot.pts))
                    if arrived is not None and slot.pts == picture.pts:
                        slot = replace(slot, slice_starts=arrived.starts, reference=arrived.reference)
                    yield replace(slot, drifted=True) if slot.pts == picture.pts and drifted else slot
        yield from slots.finish()


# Pictures of another size than the first one's, in a row, taken for pictures with a garbled header (found by
# fuzzing AV1 and VP9: one bit flip, and the rest of the file was refused) before the change is taken for real.
ODD_SIZES_TOLERATED = 4


class _PictureSize:
    """The picture size of the stream: the first picture's, by which every stage after decoding is sized."""

    def __init__(self) -> None:
        self._size: tuple[int, int] | None = None
        self._decoded = 0
        self._odd_in_a_row = 0

    def fits(self, picture: av.VideoFrame, path: Path) -> bool:
        """Whether `picture` has the stream's size. A few of another size in a row are damaged ones; more are a
        real change of size, which is refused with a clear error."""
        self._decoded += 1
        here = (picture.width, picture.height)
        self._size = self._size or here
        if here == self._size:
            self._odd_in_a_row = 0
            return True
        self._odd_in_a_row += 1
        if self._odd_in_a_row > ODD_SIZES_TOLERATED:
            raise InputError(f"{path}: the picture size changes from {self._size[0]}x{self._size[1]} to "
                             f"{here[0]}x{here[1]} at decoded picture {self._decoded - ODD_SIZES_TOLERATED}, which "
                             f"is not supported: cut the file there and repair each part")
        return False


class _Vp9Dependencies:
    """The verdict of concealer.vp9's reference tracker on each picture of a VP9 stream, by timestamp.

    Frames that never arrived show as gaps between packet timestamps; a packet the decoder refused
    counts as lost too (its reference slots were never refreshed)."""

    def __init__(self, duration: Fraction | None):
        self._tracker = ReferenceTracker()
        self._duration = duration
        self._last_pts: int | None = None
        self._verdicts: dict[int, Verdict] = {}

    def arrived(self, packet: av.Packet) -> None:
        pts = packet.pts
        if pts is not None and self._last_pts is not None and self._duration and \
                _frames_lost_between(self._last_pts, pts, self._duration):
            self._tracker.lost()
        verdict = self._tracker.packet(bytes(packet))
        if pts is not None:
            self._last_pts = pts if self._last_pts is None else max(pts, self._last_pts)
            self._verdicts[pts] = verdict

    def refused(self) -> None:
        self._tracker.lost()

    def verdict(self, pts: int | None) -> Verdict:
        return self._verdicts.pop(pts, Verdict.CLEAN)


def _grid_origin(pts: int, duration: Fraction | None, clock: int = 1) -> Fraction:
    """Where the frame-rate grid through the first frame that came out starts. Muxers round each
    frame's exact time n * duration from zero, so when `pts` is such a rounding the grid is the
    one through zero (found when a stream's first frame was lost: carphone in VP9 at 29.97 fps in
    milliseconds lost frame 0, and a grid through 33 put frame 45 at 1501 instead of 1502 ms)."""
    if duration is None or duration.denominator == 1:
        return Fraction(pts)  # whole ticks per frame: every grid through a timestamp is exact
    through_zero = math.floor(pts / duration + Fraction(1, 2)) * duration
    return through_zero if abs(pts - through_zero) <= Fraction(clock, 2) else Fraction(pts)


def _round_half_up(ticks: Fraction, clock: int = 1) -> int:
    """Round to a whole number of `clock` ticks as FFmpeg's timestamp rescaling does (half away from zero;
    Python's round() goes to even: frame 75 of a 29.97 fps WebM sits at 2502.5 ms, which the muxer wrote as
    2503, not 2502)."""
    return clock * math.floor(ticks / clock + Fraction(1, 2))


def _frames_lost_between(last: int, pts: int, duration: Fraction) -> int:
    """How many frame slots fit in the gap between two timestamps (more than half a frame's duration left over)."""
    return max(0, math.ceil((pts - last - duration / 2) / duration) - 1)


def _repaired(packets: Iterator[av.Packet], repair: PacketRepair | H264GapRepair | None) -> Iterator[av.Packet]:
    """The demuxed packets, repaired below the decoder (HEVC) and preceded by stand-ins for the pictures
    they need that were lost whole (HEVC, H.264)."""
    for packet in packets:
        yield from repair.packets(packet) if repair is not None and packet.size else (packet,)


def arrived_parts(packets: Iterator[av.Packet], length_size: int | None) -> Iterator[av.Packet]:
    """The packets of a length-prefixed H.264 or HEVC stream (`length_size`; None: any other, passed as they are),
    each one cut short keeping the part of its last NAL unit that arrived (bitstream.arrived_units)."""
    for packet in packets:
        yield _arrived_part(packet, length_size) if length_size is not None and packet.size else packet


def _length_prefix_size(stream: av.video.stream.VideoStream) -> int | None:
    """The size of the NAL unit length prefixes of an H.264 or HEVC stream stored in MP4 or Matroska; None for
    other codecs, Annex B (raw, MPEG-TS) and an unreadable codec record."""
    codec = {"h264": Codec.H264, "hevc": Codec.HEVC}.get(stream.codec_context.name)
    try:
        config = parse_decoder_config(codec, stream.codec_context.extradata) if codec else None
    except BitstreamError:
        return None
    return config.length_size if config else None


def _arrived_part(packet: av.Packet, length_size: int) -> av.Packet:
    data = arrived_units(bytes(packet), length_size)
    if data is None:
        return packet
    part = av.Packet(data)
    part.stream, part.time_base = packet.stream, packet.time_base
    part.pts, part.dts, part.is_keyframe = packet.pts, packet.dts, packet.is_keyframe
    return part


_decodes_freezing = 0  # decodes running with the objects older than the first of them frozen
_freezing = threading.Lock()


@contextlib.contextmanager
def _older_objects_frozen() -> Iterator[None]:
    """While frames are decoded, the cycle collections skip every object that was alive before the first
    decode began (gc.freeze): the frames are the garbage they are for, and a process that has imported torch
    holds 145,000 other objects, which made each collection take 67 ms instead of 3 (blind detection of
    bikes at 10% loss: 0.42 s with torch imported, 0.27 s without). Garbage among the frozen objects is
    collected as usual once the last decode ends."""
    global _decodes_freezing
    with _freezing:
        if not _decodes_freezing:
            gc.freeze()
        _decodes_freezing += 1
    try:
        yield
    finally:
        with _freezing:
            _decodes_freezing -= 1
            if not _decodes_freezing:
                gc.unfreeze()


def _motion_vectors(picture: av.VideoFrame) -> np.ndarray | None:
    """The frame's exported motion vectors (AVMotionVector records), copied out of its side data.

    Read through a side-data container of their own: the one `frame.side_data` keeps and its frame refer to each
    other, so a frame read through it, picture buffers and all, lived until Python's cycle collector ran. Hundreds of
    720p frames piled up (decoding bbb 720p with vectors: 266 MB after 900 frames), and a collection every 35 720p
    frames held memory flat; but the decoder, its buffers held, was handed fresh ones, and what FFmpeg leaves in the
    lost blocks it does not conceal (interlaced H.264: _released) changed with them."""
    side_data = SideDataContainer(picture).get("MOTION_VECTORS")
    return None if side_data is None else side_data.to_ndarray().copy()


class _FrameSlots:
    """Turns decoder output into a gap-free sequence of frame slots, in presentation order.

    Lost frames get the timestamps of the frame-rate grid through the first frame's timestamp,
    rounded as a muxer rounds them (a 29.97 fps WebM loses its frame at 234 ms, not at 200 + 33).
    Where the stream's picture order counts (`order`) say no picture is missing, a gap is a frame held
    longer (a variable frame rate), not a lost one; where they say how many are, that many are lost, spread
    evenly over the gap when its ends are off the grid (a variable rate). fire2_720p_rotated, a phone clip,
    lost 6 frames in a row (simulate-loss --as-is at 3%): counted at its nominal 8,852 ticks a frame the gap
    held 5, and the repair came out a frame short of the clean stream, its lost frames on the wrong times."""

    def __init__(self, duration: Fraction | None, time_base: Fraction, order: PictureOrder | None = None,
                 clock: int = 1, sent: Sequence[int] = ()):
        self._duration = duration
        self._sent = sorted(sent)  # frames known to have been sent: those outside what arrived are slots too
        self._clock = clock  # the timestamps' own clock, in ticks (_timestamp_clock)
        self._time_base = time_base
        self._order = order
        self._expected: list[int] = []  # heap of packet timestamps not yet output
        self._last: int | None = None
        self._anchor: Fraction = Fraction(0)  # slot n is at anchor + n * duration, rounded
        self._spare: tuple[av.VideoFrame, np.ndarray | None] | None = None  # a second picture at the last time

    def _slot_pts(self, slot: int) -> int:
        return _round_half_up(self._anchor + slot * self._duration, self._clock)

    def _slot(self, pts: int) -> int:
        return round((pts - self._anchor) / self._duration)

    def expect(self, pts: int | None) -> None:
        if pts is not None and (self._last is None or pts > self._last):
            heapq.heappush(self._expected, pts)

    def fill(self, picture: av.VideoFrame, vectors: np.ndarray | None) -> Iterator[DecodedFrame]:
        pts = picture.pts
        if pts is None:  # a raw elementary stream (Annex B) has no timestamps at all
            if self._duration is None:
                return
            pts = 0 if self._last is None else self._slot_pts(self._slot(self._last) + 1)
        if self._last is not None and pts <= self._last:
            if pts == self._last:  # a picture stamped with its predecessor's time (a muxer's slip): it goes
                self._spare = (picture, vectors)  # into the gap after it if there is one, else nowhere
            return  # an out-of-order frame: its slot is already filled
        if self._last is None:
            for leading in (t for t in self._sent if t < pts):
                yield from self._advance(leading, None, None)
        while self._expected and self._expected[0] < pts:
            yield from self._advance(heapq.heappop(self._expected), None, None)
        while self._expected and self._expected[0] == pts:
            heapq.heappop(self._expected)
        yield from self._advance(pts, picture, vectors)

    def refuse(self, picture: av.VideoFrame) -> Iterator[DecodedFrame]:
        """A picture that will not be shown. Its timestamp stays expected, so the next picture leaves a placeholder
        in its slot; a raw elementary stream has none, and the placeholder goes out now."""
        if picture.pts is None and self._duration is not None:
            pts = 0 if self._last is None else self._slot_pts(self._slot(self._last) + 1)
            yield from self._advance(pts, None, None)

    def finish(self) -> Iterator[DecodedFrame]:
        while self._expected:
            yield from self._advance(heapq.heappop(self._expected), None, None)
        if self._last is not None:
            for trailing in (t for t in self._sent if t > self._last):
                yield from self._advance(trailing, None, None)

    def _advance(self, pts: int, picture: av.VideoFrame | None, vectors: np.ndarray | None) -> Iterator[DecodedFrame]:
        """Emit the slot at `pts`, preceded by placeholders for any gap in the timestamps before it."""
        if self._last is None:
            self._anchor = _grid_origin(pts, self._duration, self._clock)
        else:
            if pts <= self._last:
                return
            intervals = (pts - self._last) / self._duration if self._duration else None
            counted = None if self._order is None or picture is None else \
                self._order.missing_between(self._last, pts, intervals)
            if self._duration and (pts - self._last) * self._time_base <= MAX_LOST_SECONDS and counted != 0:
                # The order counts, where they say, count the lost pictures; else the timestamps at the frame rate.
                lost = counted or _frames_lost_between(self._last, pts, self._duration)
                slot = self._slot(self._last)
                # Off the grid (a variable rate) the lost pictures are spread evenly over the gap.
                on_grid = abs(self._last - self._slot_pts(slot)) <= 1 and \
                    abs(pts - self._slot_pts(slot + lost + 1)) <= 1
                for step in range(1, lost + 1):
                    missing = self._slot_pts(slot + step) if on_grid else \
                        _round_half_up(self._last + step * Fraction(pts - self._last, lost + 1), self._clock)
                    spare, self._spare = self._spare, None
                    yield DecodedFrame(missing, self._time_base, *(spare or (None,)))
        self._last, self._spare = pts, None
        yield DecodedFrame(pts, self._time_base, picture, vectors)

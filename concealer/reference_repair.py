"""Drift correction by the decoder itself: in H.264 without B-frames, the repairs become its reference pictures.

Carrying corrections along the exported motion vectors (concealer.drift) redoes the decoder's motion
compensation from what the vectors tell, which is not all of it: which reference each block used,
weighted prediction, sub-sample interpolation, intra blocks and the deblocking filter. Here a second
decode of the stream does it exactly. Each picture with lost macroblocks is fed to it as a
non-reference picture (nal_ref_idc 0, its reference marking cut out of every slice header), and is
followed by a picture of our own with the same frame_num and that marking, every macroblock of it
I_PCM (raw samples): the repair itself, which takes the damaged picture's place among the
references. Every later picture is then predicted from the repair as the encoder meant it to be
predicted from the original. A frame lost whole is repaired the same way: the stand-in that
concealer.h264_repair puts in its place holds its rebuild instead of a copy of the frame before.

Measured on chaplin_640x360 at 10% loss (loss from the truth file), with the lost blocks and frames
filled from the clean stream (an oracle): every later picture matched the clean one to 80.34 dB, the rest
being the 8 rows the picture's crop hides (360 of 368) under the repaired macroblocks, whose true samples
no repair knows (the decoder's own are kept under the others; foreman, uncropped, matches exactly);
carried, 32.89 dB. With real fills (`python -m benchmarks.conceal_quality`: blind detection, `flow`,
keyframe backfill on, at a092e84), sequence luma PSNR carried -> redecoded at 3 / 10 / 20% loss: foreman 38.19 /
31.44 / 18.45 -> 40.18 / 33.14 / 18.49, carphone 37.32 / 32.10 / 23.21 -> 38.38 / 34.08 / 23.09, bikes
32.54 / 24.88 / 21.51 -> 32.75 / 24.67 / 21.45, chaplin 32.38 / 27.21 / 21.94 -> 31.94 / 26.77 / 21.59; and
faster, as nothing is carried (bbb 720p at 5% loss, `benchmarks.speed`: 1.95 times a plain decode and
encode, where carrying had measured 2.60).
Interlaced streams coded as MBAFF (frame pictures whose macroblocks go in vertical pairs, frame or field each;
x264's interlaced mode) are repaired alike, the I_PCM picture written pair by pair; field pictures are not. Foreman
CIF and bikes coded so by x264 (no B-frames), damaged as they are at 5 / 10% loss, seeds 1-6 (`conceal` with
defaults, against a plain decode): of the 24 cases, carrying along measured motion had scored below a plain decode
in 10 (bikes at 10% seed 4: 17.58 dB against 20.24); redecoded, none (20.75), by +1.5 dB on average over carrying.
Exact propagation carries a fill's errors as faithfully as its content: on chaplin, whose fills are
little better than FFmpeg's own concealment, the carried correction that fell short of exact scored higher.
"""
from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .bitstream import (
    BitReader,
    BitstreamError,
    BitWriter,
    Codec,
    Framing,
    H264Pps,
    H264SliceHeader,
    H264Sps,
    framed,
    h264_nal_unit,
    nal_units,
    parse_decoder_config,
    parse_h264_pps,
    parse_h264_slice_header,
    parse_h264_sps,
)
from .concealment import Picture
from .decode import (CADENCE_PACKETS, FFMPEG_CONCEALMENT, arrived_parts, configure_decoder, copied_picture,
                     frame_duration, plane_samples, untimed)
from .h264_repair import SUBSTITUTE_PPS_ID, H264GapRepair, substitute_pps, substitute_slice_header
from .media import main_video, open_video_input, parsed_packets

SPS, PPS, SLICE, IDR_SLICE = 7, 8, 1, 5
I_SLICE_ALL = 7  # slice_type: I, and every slice of the picture is I
# Every macroblock after the first, I_PCM in an I slice: mb_type ue(25) = 000011010, then zero bits to
# the byte boundary, then its 384 samples (16x16 luma, two 8x8 chroma blocks).
I_PCM = 25
I_PCM_PREFIX = b"\x0d\x00"
# The top macroblock of each pair in an MBAFF picture: mb_field_decoding_flag 0 first (0000011010), then zeros.
MBAFF_TOP_I_PCM_PREFIX = b"\x06\x80"
RBSP_TRAILING_BITS = b"\x80"


@dataclass
class _Awaiting:
    """A picture fed as non-reference whose repair is to take its place among the references."""

    header: H264SliceHeader
    reader: BitReader  # its first slice, for the reference marking
    pts: int | None
    decoded: av.VideoFrame | None = None


class ReferenceRepair:
    """A decode of an H.264 stream (no B-frames, 4:2:0 in 8 or 10 bits, progressive or MBAFF) whose references are our
    repairs.

    The pipeline asks for each picture that arrived (`picture`, saying whether blocks of it were lost),
    and hands back the repair of each damaged one (`repaired`) and the rebuild of each lost frame
    (`rebuilt`) before it asks for the next. Pictures it cannot rewrite (an unreadable header) stay as
    FFmpeg concealed them."""

    def __init__(self, container: av.container.InputContainer, packets: Iterator[av.Packet], config_sets: list[bytes],
                 framing: Framing, length_size: int, frame_ticks: Fraction | None = None,
                 visible: tuple[int, int] | None = None, parsed: bool = False):
        self._container = container
        stream = main_video(container)
        configure_decoder(stream, FFMPEG_CONCEALMENT, threads=1)
        self._visible = visible or (stream.codec_context.height, stream.codec_context.width)
        # Whole macroblocks out: the rows and columns a crop hides are still what later vectors may point into.
        stream.codec_context.options = {**stream.codec_context.options, "apply_cropping": "0"}
        self._decoder = stream.codec_context
        self._time_base = stream.time_base
        self._framing, self._length_size = framing, length_size
        # A stream without timestamps is stamped as the primary decode stamps it (`frame_ticks`), frame by frame.
        self._gap = H264GapRepair(stream.codec_context.extradata, frame_ticks=frame_ticks, parsed=parsed)
        self._sps: dict[int, H264Sps] = {}
        self._pps: dict[int, H264Pps] = {}
        for unit in config_sets:
            self._learn(unit)
        self._packets = packets
        self._queued: list[av.Packet] = []  # repaired packets not yet decoded, the stand-ins first
        self._early: dict[int, av.VideoFrame] = {}  # pictures decoded before they were asked for
        self._awaiting: _Awaiting | None = None
        self._last: av.VideoFrame | None = None  # the last picture decoded, whole macroblocks
        self._usable = True  # False once the stream turns out to reorder pictures

    def __enter__(self) -> ReferenceRepair:
        return self

    def __exit__(self, *exc) -> None:
        self._container.close()

    def picture(self, pts: int, lost: bool) -> av.VideoFrame | None:
        """The picture at `pts`, decoded from the repaired references; fed as non-reference when `lost`
        (its repair must follow); None when this decode has no picture there."""
        self._settle()
        if pts in self._early:
            return self._visible_part(self._early.pop(pts))
        while (packet := self._next_packet()) is not None:
            if self._gap.stands_in(packet):
                self._decode(packet)  # a stand-in nobody rebuilt: it copies the frame before
                continue
            rewritten = self._rewritten(packet) if lost and packet.pts == pts else None
            frames = self._decode(rewritten[0] if rewritten else packet)
            if rewritten and frames:
                self._awaiting = rewritten[1]
                self._awaiting.decoded = frames[-1]
            for frame in frames:
                if frame.pts is None or frame.pts == pts:
                    return self._visible_part(frame)
                if frame.pts > pts:
                    self._early[frame.pts] = frame
                    return None
        return None

    def repaired(self, picture: Picture) -> None:
        """The repair of the picture last returned: it replaces that picture among the references."""
        awaiting, self._awaiting = self._awaiting, None
        if awaiting is None:
            return
        header = awaiting.header
        poc_lsb = None if header.poc_lsb is None else (header.poc_lsb + 1) % (1 << header.sps.log2_max_poc_lsb)
        # A second IDR picture replaces a damaged one; its id differs from the damaged one's and from the one
        # x264 gives the next IDR picture (it alternates two), as consecutive IDR pictures' ids must.
        idr_pic_id = (header.idr_pic_id + 2) % 65536 if header.idr else None
        self._decode_own(header.sps, header.frame_num, poc_lsb, (awaiting.reader, *header.marking),
                         header.nal_ref_idc, self._whole(picture, awaiting.decoded, header.sps.bit_depth), idr_pic_id,
                         awaiting.pts)

    def rebuilt(self, pts: int, picture: Picture) -> None:
        """The rebuild of a frame lost whole at `pts`: the stand-in for it, if there is one, holds it."""
        self._settle()
        packet = self._peek()
        while packet is not None and self._gap.stands_in(packet) and packet.pts < pts and \
                len(self._queued) > 1 and self._gap.stands_in(self._queued[1]) and self._queued[1].pts <= pts:
            self._decode(self._queued.pop(0))  # the stand-in for an earlier slot
            packet = self._peek()
        if packet is None or not self._gap.stands_in(packet):
            return
        self._queued.pop(0)
        try:
            slice_nal = next(nal for nal in self._units(bytes(packet)) if nal[0] & 0x1F == SLICE)
            header, reader = parse_h264_slice_header(slice_nal, self._sps, self._pps)
        except (BitstreamError, StopIteration):
            self._decode(packet)
            return
        self._decode_own(header.sps, header.frame_num, header.poc_lsb, (reader, *header.marking), header.nal_ref_idc,
                         self._whole(picture, self._last, header.sps.bit_depth), None, packet.pts)

    def _settle(self) -> None:
        """A damaged picture whose repair never came takes its own place back among the references."""
        if self._awaiting is not None and self._awaiting.decoded is not None:
            self.repaired(Picture.from_frame(self._awaiting.decoded))
        self._awaiting = None

    def _next_packet(self) -> av.Packet | None:
        packet = self._peek()
        return self._queued.pop(0) if packet is not None else None

    def _peek(self) -> av.Packet | None:
        while not self._queued:
            packet = next(self._packets, None)
            if packet is None:
                return None
            self._queued = self._gap.packets(packet)
            for queued in self._queued:  # the stand-ins' own PPS too, which their rebuilds parse them with
                for unit in self._units(bytes(queued)):
                    if unit[0] & 0x1F in (SPS, PPS):
                        self._learn(unit)
        return self._queued[0]

    def _units(self, data: bytes) -> list[bytes]:
        """The packet's NAL units (header byte onwards), empty ones left out; none when its framing is broken."""
        try:
            units = nal_units(data, Codec.H264, self._framing, self._length_size)
        except (BitstreamError, IndexError):
            return []
        return [nal for unit in units if (nal := data[unit.payload_start:unit.end])]

    def _learn(self, unit: bytes) -> None:
        try:
            if unit[0] & 0x1F == SPS:
                sps = parse_h264_sps(unit)
                self._sps[sps.sps_id] = sps
            else:
                pps = parse_h264_pps(unit)
                self._pps[pps.pps_id] = pps
        except (BitstreamError, IndexError):
            pass  # a damaged parameter set: slices that need it are not rewritten

    def _rewritten(self, packet: av.Packet) -> tuple[av.Packet, _Awaiting] | None:
        """The packet with every slice made non-reference (an IDR picture stays as it is: the repair,
        itself an IDR picture, replaces it), and what the repair needs; None when it cannot be or need not be."""
        if not self._usable:
            return None
        data = bytes(packet)
        nals = self._units(data)
        try:
            slices = [(index, *parse_h264_slice_header(nal, self._sps, self._pps))
                      for index, nal in enumerate(nals) if nal[0] & 0x1F in (SLICE, IDR_SLICE)]
        except BitstreamError:
            return None  # a damaged header: the picture stays a reference as FFmpeg concealed it
        if not slices:
            return None
        first = slices[0][1]
        if any(header.slice_type == 1 for _, header, _ in slices):
            self._usable = False  # B-frames after all: predictions reach both ways, left to carrying
            return None
        if not first.nal_ref_idc or not _rewritable(first.sps):
            return None  # nothing is predicted from it, or its samples are not what I_PCM here holds
        awaiting = _Awaiting(first, BitReader(slices[0][2].data), packet.pts)
        if first.idr:
            return packet, awaiting
        try:
            for index, header, reader in slices:
                nals[index] = _non_reference(nals[index], header, reader)
        except BitstreamError:
            return None
        rewritten = av.Packet(framed(nals, self._framing, self._length_size))
        _stamp(rewritten, packet)
        return rewritten, awaiting

    def _decode_own(self, sps: H264Sps, frame_num: int, poc_lsb: int | None, marking: tuple[BitReader, int, int],
                    ref_idc: int, planes: list[np.ndarray], idr_pic_id: int | None, pts: int | None) -> None:
        pps = h264_nal_unit(0x60 | PPS, substitute_pps(sps.sps_id))
        own = _pcm_picture(sps, frame_num, poc_lsb, marking, ref_idc, planes, idr_pic_id)
        packet = av.Packet(framed([pps, own], self._framing, self._length_size))
        packet.pts = packet.dts = pts
        packet.time_base = self._time_base
        self._decode(packet)  # its picture is the repair itself: not shown again

    def _decode(self, packet: av.Packet) -> list[av.VideoFrame]:
        try:
            frames = list(self._decoder.decode(packet))
        except av.error.FFmpegError:
            return []  # refused, as the primary decode refuses it: its slot is rebuilt
        self._last = frames[-1] if frames else self._last
        return frames

    def _visible_part(self, frame: av.VideoFrame) -> av.VideoFrame:
        """The picture as the stream shows it: cropped to its display size (a new frame when cropped)."""
        height, width = self._visible
        if (frame.height, frame.width) == (height, width) or frame.height < height or frame.width < width:
            return frame
        return copied_picture(frame, height, width)

    @staticmethod
    def _whole(picture: Picture, around: av.VideoFrame | None, depth: int) -> list[np.ndarray]:
        """`picture`'s planes out to whole macroblocks, in samples of `depth` bits. The macroblocks the repair left as
        decoded are the decoder's own (from `around`, a decoded picture of whole macroblocks), at the stream's depth
        and under a crop too; under those it changed, the repair's edge is repeated (`around` holds FFmpeg's
        concealment there), and deeper streams take its 8-bit samples scaled up."""
        shift = depth - 8
        scaled = [plane.astype(np.uint16) << shift if shift else plane for plane in (picture.y, picture.u, picture.v)]
        if around is None:
            return scaled
        whole = Picture.from_frame(around)
        (height, width), (full_height, full_width) = picture.y.shape, whole.y.shape
        if full_height < height or full_width < width:
            return scaled
        changed = np.zeros((full_height // 16, full_width // 16), bool)
        for part, own, size in zip((picture.y, picture.u, picture.v), (whole.y, whole.u, whole.v), (16, 8, 8)):
            differs = np.zeros(own.shape, bool)
            differs[:part.shape[0], :part.shape[1]] = part != own[:part.shape[0], :part.shape[1]]
            changed |= differs.reshape(own.shape[0] // size, size, own.shape[1] // size, size).any(axis=(1, 3))
        planes = []
        for index, (part, size) in enumerate(zip(scaled, (16, 8, 8))):
            own = plane_samples(around, index)
            padded = np.pad(part, ((0, own.shape[0] - part.shape[0]), (0, own.shape[1] - part.shape[1])), mode="edge")
            kept = np.kron(~changed, np.ones((size, size), bool))[:own.shape[0], :own.shape[1]]
            padded[kept] = own[kept]
            planes.append(padded)
        return planes


def open_reference_repair(path: Path, visible: tuple[int, int] | None = None) -> ReferenceRepair | None:
    """A ReferenceRepair of the video in `path`, or None where the stream is not one it handles (not H.264,
    B-frames, or parameter sets whose samples I_PCM pictures cannot hold as decoded). `visible`: (height, width)
    of the pictures the repair is of (media.probe_video_format's, from the first picture), where the container's
    may differ (a raw stream that changes size was probed at 176x144 and its 352x288 pictures cut to that)."""
    container = open_video_input(path)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(container.close)
        stream = main_video(container)
        context = stream.codec_context
        if context.name != "h264" or context.has_b_frames:
            return None
        packets = (packet for packet in container.demux(stream) if packet.size)
        try:
            first = list(itertools.islice(packets, CADENCE_PACKETS))
            config = parse_decoder_config(Codec.H264, context.extradata)
            units = [unit for unit in config.parameter_sets if unit] if config else []
            sequences = [parse_h264_sps(unit) for unit in units if unit[0] & 0x1F == SPS]
            pictures = [parse_h264_pps(unit) for unit in units if unit[0] & 0x1F == PPS]
        except (BitstreamError, IndexError, av.error.FFmpegError):
            return None  # a damaged codec record or container: the pipeline carries, as on any other stream
        # Raw Annex B has no timestamps to keep the two decodes' pictures in step by: both stamp it alike.
        frame_ticks = frame_duration(stream) if untimed(first) else None
        if not first or (first[0].pts is None and frame_ticks is None):
            return None
        if not all(_rewritable(sps) for sps in sequences) or any(p.pps_id == SUBSTITUTE_PPS_ID for p in pictures):
            return None
        framing = Framing.LENGTH_PREFIXED if config else Framing.ANNEX_B
        repair = ReferenceRepair(container, arrived_parts(itertools.chain(first, packets),
                                                          config.length_size if config else None), units, framing,
                                 config.length_size if config else 4, frame_ticks, visible, parsed_packets(container))
        cleanup.pop_all()
        return repair
    return None


def _rewritable(sps: H264Sps) -> bool:
    """Whether pictures of this SPS are what I_PCM pictures can stand for (4:2:0 in 8 or 10 bits, x264's depths and
    the ones tested; frame pictures, no offset crop) and their order counts allow a picture between two (poc_type 0
    or 2, or 1 without deltas)."""
    return sps.chroma_format == 1 and sps.bit_depth in (8, 10) and (sps.frame_mbs_only or sps.mbaff) and \
        not sps.separate_colour_planes and sps.cropped_origin == (0, 0) and \
        (sps.poc_type != 1 or sps.delta_pic_order_always_zero)


def _stamp(packet: av.Packet, like: av.Packet) -> None:
    packet.pts, packet.dts, packet.time_base = like.pts, like.dts, like.time_base
    packet.stream = like.stream


def _non_reference(nal: bytes, header: H264SliceHeader, reader: BitReader) -> bytes:
    """The slice NAL unit with nal_ref_idc 0 and no dec_ref_pic_marking() (7.3.3): the same slice of a
    picture nothing is predicted from. CABAC slice data starts on a byte boundary and is kept as it is;
    CAVLC data follows the header bit by bit and moves up with it."""
    rbsp = reader.data
    writer = BitWriter()
    writer.copy(reader, 0, header.marking[0])
    if header.pps.cabac:
        writer.copy(reader, header.marking[1], header.end)
        writer.pad_with_ones()
        body = writer.to_bytes() + rbsp[(header.end + 7) // 8:]
    else:
        content = rbsp.rstrip(b"\x00")
        if not content:
            raise BitstreamError("H.264 slice without its trailing bits")
        stop = len(content) * 8 - (content[-1] & -content[-1]).bit_length()  # the rbsp_stop_one_bit
        writer.copy(reader, header.marking[1], stop)
        writer.align_with_one()
        body = writer.to_bytes()
    return h264_nal_unit(nal[0] & 0x9F, body)


def _pcm_picture(sps: H264Sps, frame_num: int, poc_lsb: int | None, marking: tuple[BitReader, int, int],
                 ref_idc: int, planes: list[np.ndarray], idr_pic_id: int | None) -> bytes:
    """A one-slice I picture (CAVLC, under the stand-ins' PPS, deblocking off) whose every macroblock is
    I_PCM with the samples of `planes` (Y, U, V of the SPS's bit depth), edges repeated out to whole macroblocks:
    decoded, exactly those samples."""
    writer = substitute_slice_header(I_SLICE_ALL, sps, frame_num, poc_lsb, idr_pic_id)
    reader, start, end = marking
    writer.copy(reader, start, end)  # dec_ref_pic_marking(), as the damaged picture had it
    writer.ue(0)  # slice_qp_delta
    writer.ue(1)  # disable_deblocking_filter_idc: off, so the samples stay as they are
    if sps.mbaff:
        writer.u(1, 0)  # mb_field_decoding_flag: a pair of frame macroblocks
    writer.ue(I_PCM)
    writer.pad_with_zeros()
    rows, cols = sps.mb_count // sps.mbs_wide, sps.mbs_wide
    pair = 2 if sps.mbaff else 1  # MBAFF pictures code macroblocks pair by pair, the top one of each first
    blocks = []
    for plane, size in zip(planes, (16, 8, 8)):
        padded = np.pad(plane, ((0, rows * size - plane.shape[0]), (0, cols * size - plane.shape[1])), mode="edge")
        blocks.append(padded.reshape(rows // pair, pair, size, cols, size).transpose(0, 3, 1, 2, 4)
                      .reshape(rows * cols, size * size))
    if sps.bit_depth > 8:  # pcm_sample_luma / pcm_sample_chroma are u(v) of the bit depth: big-endian bit strings
        samples = np.concatenate(blocks, axis=1).astype(">u2")
        bits = np.unpackbits(samples.view(np.uint8).reshape(*samples.shape, 2), axis=2)[:, :, 16 - sps.bit_depth:]
        blocks = [np.packbits(bits.reshape(rows * cols, -1), axis=1)]
    prefix = np.broadcast_to(np.frombuffer(I_PCM_PREFIX, np.uint8), (rows * cols, len(I_PCM_PREFIX))).copy()
    if sps.mbaff:
        prefix[::2] = np.frombuffer(MBAFF_TOP_I_PCM_PREFIX, np.uint8)
    macroblocks = np.concatenate([prefix, *blocks], axis=1)
    body = writer.to_bytes() + macroblocks[0, len(I_PCM_PREFIX):].tobytes() + macroblocks[1:].tobytes()
    header = ref_idc << 5 | (IDR_SLICE if idr_pic_id is not None else SLICE)
    return h264_nal_unit(header, body + RBSP_TRAILING_BITS)

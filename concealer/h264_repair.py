"""Lost H.264 reference frames put back below the decoder, so that FFmpeg shows what follows them.

FFmpeg's H.264 decoder meets a lost reference frame as a gap in frame_num and fills it with
copies of the previous frame. When the gap crosses the wrap of frame_num (MaxFrameNum: 16 in
x264's streams) it does not advance the frame-number offset that picture order counts derive
from, so every later picture of that cycle gets a lower order than the last one shown: each is
decoded and never output ("no picture ooo"). Measured on bikes_640x272 at 10% loss: 14 decodable
pictures after one lost frame. Here each lost reference frame is replaced, before decoding, by
an access unit whose one P slice skips every macroblock (the decoder copies the previous frame,
as its own gap filling does) under a CAVLC picture parameter set of our own, so frame_num never
jumps. The substitutes' pictures are hidden: their slots stay lost frames, for the rebuild.

Only streams decoded in presentation order are repaired: a substitute's timestamp and picture order
count are spread between the pictures before and after it in decoding order, which B-frames reorder
(x264's default, and the source clips' own streams). Repaired anyway, foreman at 3% loss with three
B-frames lost 13 of its 60 pictures to wrongly hidden ones, and `conceal` fell 8 dB below a plain decode.
There FFmpeg's own gap filling stays, but for a lone lost B-pyramid reference, which lies between two reference
pictures decoded before it: a B picture of our own in temporal direct mode stands in for it, halfway along the
motion between them (_direct_slice; all the pictures after it come out as before, only nearer the truth); and for
a lone lost P picture, a copy of the reference picture shown last rather than of the last decoded (with B-pyramids
the middle B picture two frames earlier: _back_to_last_shown). Damage detection's second decode gets marked copies
instead, to see where the stand-ins were used. The repair says which
pictures were decoded after a lost reference frame (`drifted`): blind detection had found no damage at all in
them (carphone_qcif with three B-frames at 10% loss: recall 0.000, 1.000 so marked), and the keyframe backfill
now corrects them (`conceal` 27.20 -> 27.58 dB; bikes 21.86 -> 22.17 at 20% loss, but 25.15 -> 25.00 at 10%).

A substitute can also be marked: the previous frame moved by MARK_SHIFT instead of copied. A
decode with marked substitutes then differs from one without exactly where later pictures were
predicted from a substitute, through every reference index, intra block and deblocking filter the
decoder applied, which the exported motion vectors alone do not tell; and the difference is
texture, which fades through sub-pixel interpolation as a wrong reference's error does, where a
constant offset would not (damage detection uses this; measured in concealer.detection).
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import av

from .bitstream import (BitstreamError, BitWriter, Codec, Framing, H264Sps, framed, h264_nal_unit, header_reader,
                        nal_units, parse_decoder_config, parse_h264_sps)
from .picture_order import FrameClock, PictureOrder, order_count

SPS, PPS, SLICE, IDR_SLICE = 7, 8, 1, 5
SUBSTITUTE_PPS_ID = 255  # the last id: streams number theirs from 0
P_SLICE_ALL = 5  # slice_type: P, and every slice of the picture is P
B_SLICE_ALL = 6  # slice_type: B, and every slice of the picture is B
B_SLICE = 1  # slice_type modulo 5
# Pictures whose arrived slices are kept until asked for: far more than a decoder holds back (16 at most in H.264).
SLICES_KEPT = 64
MAX_SUBSTITUTES = 32  # a longer gap is a damaged frame_num, not lost frames
MARK_SHIFT = (8, 0)  # quarter pixels: two pixels to the right
HIDDEN_PTS = -(1 << 60)  # below the timestamps of any real stream
REFERENCES_KEPT = 16  # last reference pictures remembered: as many as H.264 refers to


@dataclass(frozen=True)
class ArrivedSlices:
    """What the slice headers of a picture that arrived say about it."""

    starts: list[int]  # first_mb_in_slice of each slice (the rest of the picture lies between them)
    reference: bool  # nal_ref_idc: later pictures may be predicted from it (in x264's B-pyramids, the middle B)


class H264GapRepair:
    """Re-inserts the lost reference frames of one H.264 stream as its packets are demuxed."""

    def __init__(self, extradata: bytes | None, mark: bool = False, reordered: bool = False,
                 frame_ticks: Fraction | None = None, parsed: bool = False):
        self._mark = mark
        # Packets cut by FFmpeg's parser (media.parsed_packets) may hold more than one picture: they are split. A
        # stored sample (MP4, MKV) holds one, whatever a garbled slice header says.
        self._parsed = parsed
        # A stream without timestamps (raw Annex B): each picture is stamped with the next frame time, so that the
        # substitutes hide as in a timed stream and leave their slots to the frames they stand for.
        self._clock = None if frame_ticks is None else FrameClock(frame_ticks, 2)
        self._sps: dict[int, H264Sps] = {}
        self._pps_sps: dict[int, int] = {}  # PPS id -> SPS id
        config = parse_decoder_config(Codec.H264, extradata)
        self._framing = Framing.LENGTH_PREFIXED if config else Framing.ANNEX_B
        self._length_size = config.length_size if config else 4
        for unit in config.parameter_sets if config else ():
            self._learn(unit)
        self._previous: tuple[int, int | None] | None = None  # (POC lsb, pts) of the last picture
        self._hidden: set[int] = set()
        self._hidden_pts = HIDDEN_PTS  # the last timestamp given to a substitute in a stream with B-frames
        # B-frames (said so, or a B slice was seen): from then on no substitutes spread among the pictures, only
        # hidden ones for lone lost references (_direct_slice, _back_to_last_shown) and, marked, copies (_gap_copies)
        self._reordered = reordered
        self._reference_frame_num: int | None = None  # of the last reference picture that arrived
        self._stale = False  # a reference picture was lost since the last IDR picture, and FFmpeg stood in for it
        self._drifted: set[int] = set()
        self._arrived: dict[int, ArrivedSlices] = {}  # per picture (pts)
        self.order = PictureOrder()
        self._sequence = 0  # IDR pictures so far: each starts its own picture order counts
        self._reference_order = 0  # poc_type 0: the order count of the last reference picture
        # poc_type 0: (order count, frame_num) of the last reference pictures, in decoding order
        self._references: list[tuple[int, int]] = []
        self._previous_offset = (0, None)  # poc_type 2: (FrameNumOffset, frame_num) of the last picture

    def packets(self, packet: av.Packet) -> list[av.Packet]:
        """The packet's pictures, each preceded by a substitute for each reference frame lost just before it.

        FFmpeg's parser (raw Annex B, MPEG-TS) tells a picture from the one before by its first slice: where that
        was lost, the slices that arrived ride in the packet of the picture before, taken for one picture with a
        reference lost after it. They are split off again (`_pictures`). In a stream without timestamps each picture
        is then given its frame time (`_stamp`), so that the substitutes hide as in a timed stream: a raw H.264 stream
        (foreman CIF at 5% loss) lost a frame that came out as its substitute, a copy of the frame before it taken
        for a picture that arrived and never rebuilt. Foreman CIF at 10% loss into raw H.264, seeds 1 / 3: 33.59 /
        29.47 -> 35.00 / 34.11 dB, as the same damage in MP4; with three B-frames (seed 2) 14.35 -> 15.24, as in MP4.
        Over MPEG-TS (`benchmarks.robustness`, condition ts-5, seeds 2 / 3): foreman 31.04 / 28.79 -> 31.96 / 28.79
        dB, bikes 27.72 / 26.51 -> 28.01 / 27.60, chaplin 28.15 / 31.95 -> 28.20 / 31.95, carphone unchanged; seeds
        4-6 unchanged on all four. Split but given no timestamp (its own went with the lost PES header), foreman at
        seed 2 fell to 27.15 dB instead."""
        pictures = self._pictures(packet) if self._parsed else [packet]
        return [each for picture in pictures for each in self._one_picture(picture)]

    def _pictures(self, packet: av.Packet) -> list[av.Packet]:
        """The packet split where its slices start another picture (another frame_num, order count or IDR flag).
        The first part keeps its timestamps; in a timed stream each other one is timed by its order count's distance
        after the first, at the ticks per order count step seen between pictures that arrived, and where that is not
        known, the packet stays whole (benchmarks.fuzz, h264 seed 15: a duplicated picture rode in a later one's
        packet and, timed before the stream's start, was written where the output's edit list hides it)."""
        data = bytes(packet)
        try:
            units = nal_units(data, Codec.H264, self._framing, self._length_size)
            parts: list[list[bytes]] = [[]]
            pictures: list[tuple[H264Sps, int, int, int]] = []  # (SPS, NAL type, frame_num, POC lsb) of each part
            for unit in units:
                nal = data[unit.payload_start:unit.end]
                if unit.nal_type in (SPS, PPS):
                    self._learn(nal)
                elif unit.nal_type in (SLICE, IDR_SLICE):
                    sps, _, frame_num, poc_lsb = self._read_slice(nal)
                    picture = (sps, unit.nal_type, frame_num, poc_lsb)
                    if pictures and picture[1:] != pictures[-1][1:]:
                        parts.append([])
                    if len(pictures) < len(parts):
                        pictures.append(picture)
                parts[-1].append(nal)
        except (BitstreamError, KeyError):
            return [packet]  # unreadable: one picture, as the parser said
        if len(parts) == 1:
            return [packet]
        steps = [_order_steps(pictures[0], picture) for picture in pictures[1:]]
        ticks = self.order.ticks_per_step
        if packet.pts is not None and not (ticks and all(step and step > 0 for step in steps)):
            return [packet]  # timed, but not surely after it (a B picture, or a duplicate of an earlier one): whole
        split = []
        for index, nals in enumerate(parts):
            part = av.Packet(framed(nals, self._framing, self._length_size))
            part.stream, part.time_base = packet.stream, packet.time_base
            if not index:
                part.pts, part.dts, part.is_keyframe = packet.pts, packet.dts, packet.is_keyframe
            elif packet.pts is not None:
                part.pts = packet.pts + round(steps[index - 1] * ticks)
            split.append(part)
        return split

    def _one_picture(self, packet: av.Packet) -> list[av.Packet]:
        data = bytes(packet)
        try:
            units = nal_units(data, Codec.H264, self._framing, self._length_size)
            for unit in units:
                if unit.nal_type in (SPS, PPS):
                    self._learn(data[unit.payload_start:unit.end])
            slices = [u for u in units if u.nal_type in (SLICE, IDR_SLICE)]
            if not slices:
                return [packet]
            first_slice = slices[0]
            arrived = ArrivedSlices([header_reader(data[u.payload_start:u.end], Codec.H264, 8).ue() for u in slices],
                                    bool(data[first_slice.payload_start] >> 5 & 3))
            nal = data[first_slice.payload_start:first_slice.end]
            sps, slice_type, frame_num, poc_lsb = self._read_slice(nal)
        except (BitstreamError, KeyError):
            return [packet]  # unreadable: the decoder copes on its own
        self._reordered = self._reordered or slice_type % 5 == B_SLICE
        ref_idc, idr = nal[0] >> 5 & 3, first_slice.nal_type == IDR_SLICE
        self._sequence += idr
        copied_order, earlier = self._reference_order, self._references  # before this picture's
        order = self._picture_order_count(sps, frame_num, poc_lsb, ref_idc, idr)
        missing = self._lost_references(sps, frame_num, ref_idc, idr)
        if packet.pts is None and self._clock is not None:
            self._stamp(packet, order, missing)
        self.order.record(packet.pts, self._sequence, order)
        if packet.pts is not None:
            self._arrived[packet.pts] = arrived
            if len(self._arrived) > SLICES_KEPT:  # not asked for (a picture that never came out)
                del self._arrived[next(iter(self._arrived))]
        copied = self._reordered and self._mark and 0 < missing <= MAX_SUBSTITUTES and sps.poc_type == 0 and \
            self._repairable(sps)
        # A lone lost B-pyramid reference lies between two reference pictures already decoded: it is stood in for
        # by the picture halfway along the motion between them (_direct_slice), not by FFmpeg's copy.
        place = _lost_reference_order(copied_order, [count for count, _ in earlier], order, missing)
        interpolated = self._reordered and not self._mark and missing == 1 and sps.poc_type == 0 and \
            place != copied_order + 2 and self._repairable(sps)
        # FFmpeg's own stand-ins leave the pictures after them drifted until the next IDR picture; marked copies
        # instead show in the difference between the decodes where the stand-ins were used.
        self._stale = not idr and (self._stale or (missing > 0 and not copied))
        if self._stale and self._reordered and packet.pts is not None:
            self._drifted.add(packet.pts)
        if self._reordered:
            if interpolated:
                lost_frame_num = (frame_num - 1) % (1 << sps.log2_max_frame_num)
                return [self._hidden_substitute(packet, sps, _direct_slice(sps, lost_frame_num, place))] + [packet]
            back = self._back_to_last_shown(sps, frame_num, missing, copied_order, earlier)
            if copied or (back is not None and sps.poc_type == 0 and self._repairable(sps)):
                return self._gap_copies(packet, sps, frame_num, missing, place, back) + [packet]
            return [packet]
        previous, self._previous = self._previous, (poc_lsb, packet.pts)
        if previous is None or not 0 < missing <= MAX_SUBSTITUTES or not self._repairable(sps):
            return [packet]
        return self._substitutes(packet, sps, frame_num, previous, poc_lsb, missing, ref_idc) + [packet]

    def _stamp(self, packet: av.Packet, order: int | None, missing: int) -> None:
        """The frame time of a picture in a stream without timestamps (raw Annex B), `missing` reference frames lost
        just before it. Decoded in display order, the next frame's after those; with B-frames, from its order count
        (two a frame, as x264 and most encoders count frame pictures), each IDR picture's coded video sequence after
        the last picture of the one before."""
        ordered = self._reordered and order is not None
        packet.pts = self._clock.ordered(self._sequence, order) if ordered else self._clock.after(missing)
        packet.dts = None if self._reordered else packet.pts

    def hidden(self, pts: int | None) -> bool:
        """Whether the picture at `pts` is a substitute, decoded only to keep the references in step."""
        if pts in self._hidden:
            self._hidden.discard(pts)
            return True
        return False

    def drifted(self, pts: int | None) -> bool:
        """Whether the picture at `pts`, in a stream with B-frames, was decoded after a reference picture was lost
        (a gap in frame_num) and before the next IDR picture: FFmpeg stood a copy of an older picture in for the
        lost one, so it may be predicted from wrong pixels anywhere. Streams without B-frames get substitutes
        instead, whose effect the damage detection traces."""
        if pts in self._drifted:
            self._drifted.discard(pts)
            return True
        return False

    def arrived_slices(self, pts: int | None) -> ArrivedSlices | None:
        """What the slices of the picture at `pts` that arrived say (asked once per picture)."""
        return self._arrived.pop(pts, None)

    def _lost_references(self, sps: H264Sps, frame_num: int, ref_idc: int, idr: bool) -> int:
        """How many reference pictures were lost just before this one. Every picture after a reference picture
        has frame_num one above that picture's (7.4.3), a non-reference picture included, so the gap is counted
        from the last reference picture: counted from the last picture, a reference picture lost after a
        non-reference one (same frame_num) would go unseen. The lost ones are then stood in for (by substitutes,
        or by FFmpeg's own gap filling), which makes frame_num - 1 the last reference either way."""
        missing = 0
        limit = 1 << sps.log2_max_frame_num
        if not idr and self._reference_frame_num is not None and not sps.gaps_allowed:
            missing = (frame_num - self._reference_frame_num - 1) % limit
        if missing:
            self._reference_frame_num = (frame_num - 1) % limit
        if ref_idc:
            self._reference_frame_num = frame_num
        return missing

    def _picture_order_count(self, sps: H264Sps, frame_num: int, poc_lsb: int, ref_idc: int, idr: bool
                             ) -> int | None:
        """The picture's order count (8.2.1: TopFieldOrderCnt of a frame), for poc_type 0 and 2; None for 1."""
        if sps.poc_type == 0:
            count = order_count(0 if idr else self._reference_order, poc_lsb, 1 << sps.log2_max_poc_lsb)
            if ref_idc:
                self._reference_order = count
                self._references = ([] if idr else self._references[-REFERENCES_KEPT + 1:]) + [(count, frame_num)]
            return count
        if sps.poc_type == 2:
            offset, previous_frame_num = self._previous_offset
            if idr:
                offset = 0
            elif previous_frame_num is not None and previous_frame_num > frame_num:
                offset += 1 << sps.log2_max_frame_num
            self._previous_offset = (offset, frame_num)
            return 0 if idr else 2 * (offset + frame_num) - (0 if ref_idc else 1)
        return None

    def stands_in(self, packet: av.Packet) -> bool:
        """Whether `packet` is a substitute whose picture `hidden` will take out (it leaves it in place)."""
        return packet.pts is not None and packet.pts in self._hidden

    def substituted(self, pts: int | None) -> None:
        """No macroblocks are substituted inside a picture that arrived (HEVC's repair does that)."""
        return None

    def cut_short(self, pts: int | None) -> None:
        """H.264 slices are not cut where MPEG-TS packets were lost (HEVC's are, stream_repair.CutSegments). Cut
        there in both decodes, FFmpeg's error concealment took the 50 or so macroblocks before the cut for lost too,
        blocks that had arrived whole (own streams damaged over MPEG-TS at 5%, seeds 1-4: bikes 25.03 / 22.88 ->
        24.36 / 22.33 dB, chaplin -0.09 to -0.31; foreman and carphone up to +0.32 / +0.62). Given other bytes past
        the break in the second decode alone, as HEVC's is, own streams so (20 cases) moved by -0.38 to +1.11 dB,
        +0.18 on average, but the clips re-encoded with 1200-byte slices over MPEG-TS (seeds 2-3, without and with
        three B-frames, 16 cases) by -1.06 to +0.05 (foreman with B-frames, seed 2: 26.79 -> 25.73)."""
        return None

    def _learn(self, unit: bytes) -> None:
        try:
            if unit[0] & 0x1F == SPS:
                sps = parse_h264_sps(unit)
                self._sps[sps.sps_id] = sps
            elif unit[0] & 0x1F == PPS:
                reader = header_reader(unit, Codec.H264, max_bytes=16)
                pps_id, sps_id = reader.ue(), reader.ue()
                self._pps_sps[pps_id] = sps_id
        except (BitstreamError, IndexError):
            pass  # a damaged parameter set: the slices that need it are left alone

    def _read_slice(self, nal: bytes) -> tuple[H264Sps, int, int, int]:
        """(SPS, slice_type, frame_num, pic_order_cnt_lsb or 0) of a slice NAL unit (7.3.3)."""
        reader = header_reader(nal, Codec.H264, max_bytes=32)
        reader.ue()  # first_mb_in_slice
        slice_type = reader.ue()
        sps = self._sps[self._pps_sps[reader.ue()]]
        if sps.separate_colour_planes:
            reader.skip(2)
        frame_num = reader.u(sps.log2_max_frame_num)
        if not sps.frame_mbs_only and reader.flag():  # field_pic_flag: fields are left alone
            raise BitstreamError("field pictures")
        if nal[0] & 0x1F == IDR_SLICE:
            reader.ue()  # idr_pic_id
        return sps, slice_type, frame_num, reader.u(sps.log2_max_poc_lsb) if sps.poc_type == 0 else 0

    def _repairable(self, sps: H264Sps) -> bool:
        return sps.poc_type in (0, 2) and (sps.frame_mbs_only or self._mbaff_substitutes(sps)) and \
            not sps.separate_colour_planes and not sps.gaps_allowed and SUBSTITUTE_PPS_ID not in self._pps_sps

    def _mbaff_substitutes(self, sps: H264Sps) -> bool:
        """Whether lost frames of an interlaced (MBAFF) stream are stood in for: by unmarked copies, in streams
        without B-frames (a P slice skipping every macroblock pair is a copy there as in progressive pictures;
        the marked and the B substitutes are written for progressive pictures alone). Foreman CIF coded by x264
        as MBAFF, 5 / 10% loss, seeds 2 and 4, `conceal` with the repairs as references (ReferenceRepair):
        25.49 / 25.42 -> 25.91 / 25.89 dB at 10% (FFmpeg's own gap filling before), 5% unchanged."""
        return sps.mbaff and not self._mark and not self._reordered

    def _substitutes(self, packet: av.Packet, sps: H264Sps, frame_num: int, previous: tuple[int, int | None],
                     poc_lsb: int, missing: int, ref_idc: int) -> list[av.Packet]:
        """One packet per lost frame, the `missing` frame_nums below this picture's `frame_num`, its timestamp
        and POC spread evenly between the last picture's (`previous`: POC lsb, pts) and this one's."""
        lsb_limit = 1 << sps.log2_max_poc_lsb
        lsb_step = (poc_lsb - previous[0]) % lsb_limit if sps.poc_type == 0 else 0
        last_pts = previous[1]
        out = []
        for step in range(1, missing + 1):
            lost_frame_num = (frame_num - missing - 1 + step) % (1 << sps.log2_max_frame_num)
            lost_poc = (previous[0] + lsb_step * step // (missing + 1)) % lsb_limit if sps.poc_type == 0 else None
            substitute = self._substitute(packet, sps, _skip_slice(sps, lost_frame_num, lost_poc, self._mark), ref_idc)
            if packet.pts is not None and last_pts is not None and packet.pts - last_pts > missing:
                substitute.pts = last_pts + (packet.pts - last_pts) * step // (missing + 1)
                self._hidden.add(substitute.pts)
            out.append(substitute)
        return out

    def _gap_copies(self, packet: av.Packet, sps: H264Sps, frame_num: int, missing: int, first_order: int,
                    back: int | None) -> list[av.Packet]:
        """Substitutes for the `missing` reference pictures lost just before this one in a stream with B-frames:
        the first a copy of the reference picture decoded last (as FFmpeg's frame_num gap filling copies it) or,
        with `back`, of the one shown last, the others copies of it; the first with order count `first_order`
        (_lost_reference_order), the next ones 2 apart. Marked (moved by MARK_SHIFT), a decode with them differs
        from the one without where the pictures after the loss were predicted from a stand-in, and where their
        reference lists, short of the lost picture, shifted (damage detection)."""
        return [self._hidden_substitute(packet, sps, _skip_slice(
            sps, (frame_num - missing - 1 + step) % (1 << sps.log2_max_frame_num),
            (first_order + 2 * (step - 1)) % (1 << sps.log2_max_poc_lsb), self._mark, back if step == 1 else None))
            for step in range(1, missing + 1)]

    def _back_to_last_shown(self, sps: H264Sps, frame_num: int, missing: int, copied_order: int,
                            earlier: list[tuple[int, int]]) -> int | None:
        """For the reference pictures lost just before this one (but a lone B-pyramid middle one, which
        _direct_slice stands in for), how many frame numbers back from the first of them lies the reference picture
        shown last, when FFmpeg copies another one (the last one decoded, which with B-pyramids is the middle B
        picture before, shown two frames earlier): a copy of the reference shown last stands in for the first, and
        copies of that for the others (carphone with three B-frames at 10% loss, where two went in a row: 28.52 ->
        29.43 dB with the run too; bikes and chaplin at 10 / 20%, foreman and carphone at 20%: within 0.06). None
        where there is no such choice."""
        if not 0 < missing <= MAX_SUBSTITUTES or not earlier:
            return None
        shown_order, shown_frame_num = max(earlier)  # `earlier`: (order count, frame_num) of the references before
        if shown_order == copied_order:
            return None
        back = (frame_num - missing - shown_frame_num) % (1 << sps.log2_max_frame_num)
        return back if back >= 1 else None

    def _hidden_substitute(self, packet: av.Packet, sps: H264Sps, slice_rbsp: bytes) -> av.Packet:
        """A reference picture of our own (one slice under the substitutes' PPS) decoded before `packet`, with a
        timestamp below any real one, so that none is taken for a picture of the stream and it is hidden when it
        comes out (streams with B-frames, whose pictures the substitutes' timestamps would otherwise fall among)."""
        substitute = self._substitute(packet, sps, slice_rbsp)
        self._hidden_pts -= 1
        substitute.pts = self._hidden_pts
        self._hidden.add(substitute.pts)
        return substitute

    def _substitute(self, packet: av.Packet, sps: H264Sps, slice_rbsp: bytes, ref_idc: int = 0) -> av.Packet:
        """A packet of one reference picture of our own, to go before `packet`: the substitutes' PPS and the slice,
        with `packet`'s nal_ref_idc (2 where it has none)."""
        pps = self._nal(0x60 | PPS, substitute_pps(sps.sps_id))
        substitute = av.Packet(pps + self._nal((ref_idc or 2) << 5 | SLICE, slice_rbsp))
        substitute.stream, substitute.time_base = packet.stream, packet.time_base
        return substitute

    def _nal(self, header: int, rbsp: bytes) -> bytes:
        return framed([h264_nal_unit(header, rbsp)], self._framing, self._length_size)


def _order_steps(first: tuple[H264Sps, int, int, int], other: tuple[H264Sps, int, int, int]) -> int | None:
    """How many order count steps picture `other` lies after `first` (each: SPS, NAL type, frame_num, POC lsb),
    from the low bits the slice headers carry; None where they do not say (poc_type 1)."""
    sps = other[0]
    if sps.poc_type == 0:
        limit, distance = 1 << sps.log2_max_poc_lsb, other[3] - first[3]
    elif sps.poc_type == 2:
        limit, distance = 1 << sps.log2_max_frame_num, other[2] - first[2]
    else:
        return None
    distance %= limit
    distance = distance - limit if distance > limit // 2 else distance
    return distance if sps.poc_type == 0 else 2 * distance


def _lost_reference_order(copied: int, earlier: list[int], current: int | None, missing: int) -> int:
    """The order count to give the copy standing in for the reference picture lost just before the picture whose
    order count is `current`, `copied` being that of the reference picture decoded last and `earlier` those of the
    reference pictures before this one. FFmpeg gives its stand-in `copied` + 2. A lone lost picture shown before
    the one decoded last (a B-pyramid's middle picture, which others refer to) is put halfway between that one and
    the reference picture shown before it instead, where the encoder put it: the pictures around it then find it
    in their reference lists where the encoder meant them to, so a decode with it also differs from FFmpeg's where
    FFmpeg's lists shifted for want of it. foreman with three B-frames without one such picture (three cases),
    blind detection's recall / precision: 0.889 / 0.377, 0.730 / 0.399, 0.834 / 0.334 with FFmpeg's order count,
    0.996 / 0.424, 0.838 / 0.462, 0.987 / 0.466 so. A lost P picture is shown after every picture decoded before
    it; its order count is not known, and FFmpeg's is kept."""
    before = [order for order in earlier if order < copied]
    if missing == 1 and current is not None and current < copied and before:
        return (max(before) + copied) // 4 * 2
    return copied + 2


def substitute_pps(sps_id: int) -> bytes:
    """A PPS for the substitutes: CAVLC (a run of skipped macroblocks is one exp-Golomb code), one
    reference, no weighted prediction, no 8x8 transform, deblocking controllable per slice."""
    writer = BitWriter()
    writer.ue(SUBSTITUTE_PPS_ID)
    writer.ue(sps_id)
    writer.u(1, 0)  # entropy_coding_mode_flag: CAVLC
    writer.u(1, 0)  # bottom_field_pic_order_in_frame_present_flag
    writer.ue(0)  # num_slice_groups_minus1
    writer.ue(0)  # num_ref_idx_l0_default_active_minus1
    writer.ue(0)  # num_ref_idx_l1_default_active_minus1
    writer.u(1, 0)  # weighted_pred_flag
    writer.u(2, 0)  # weighted_bipred_idc
    for _ in range(3):
        writer.ue(0)  # pic_init_qp_minus26, pic_init_qs_minus26, chroma_qp_index_offset (se(0) = ue(0))
    writer.u(1, 1)  # deblocking_filter_control_present_flag
    writer.u(1, 0)  # constrained_intra_pred_flag
    writer.u(1, 0)  # redundant_pic_cnt_present_flag
    writer.align_with_one()
    return writer.to_bytes()


def substitute_slice_header(slice_type: int, sps: H264Sps, frame_num: int, poc_lsb: int | None,
                            idr_pic_id: int | None = None) -> BitWriter:
    """A writer holding a slice header of a whole picture under the substitutes' PPS, up to its POC (7.3.3)."""
    writer = BitWriter()
    writer.ue(0)  # first_mb_in_slice
    writer.ue(slice_type)
    writer.ue(SUBSTITUTE_PPS_ID)
    writer.u(sps.log2_max_frame_num, frame_num)
    if not sps.frame_mbs_only:
        writer.u(1, 0)  # field_pic_flag: a frame
    if idr_pic_id is not None:
        writer.ue(idr_pic_id)
    if poc_lsb is not None:
        writer.u(sps.log2_max_poc_lsb, poc_lsb)
    return writer


def _direct_slice(sps: H264Sps, frame_num: int, order: int) -> bytes:
    """A B slice of the whole picture at order count `order`, deblocking off, in which every macroblock is B_Skip in
    temporal direct mode: each block is predicted from the reference pictures before and after it along the vector
    of the co-located block of the one after, scaled by their order counts (H.264 8.4.1.2.3), which makes the
    picture halfway along the motion between them. Standing in for a lost B-pyramid reference (three B-frames), the
    pictures decoded after it measured (`conceal`): foreman at 3 / 10% loss 37.72 / 34.87 -> 40.22 / 35.99 dB,
    carphone at 3% 42.76 -> 44.52; bikes and chaplin at 3 / 10% within 0.02. In spatial direct mode (zero vectors
    here: the plain average of the two) foreman at 3% measured 38.81."""
    writer = substitute_slice_header(B_SLICE_ALL, sps, frame_num, order % (1 << sps.log2_max_poc_lsb))
    writer.u(1, 0)  # direct_spatial_mv_pred_flag: temporal
    writer.u(1, 0)  # num_ref_idx_active_override_flag
    writer.u(1, 0)  # ref_pic_list_modification_flag_l0
    writer.u(1, 0)  # ref_pic_list_modification_flag_l1
    writer.u(1, 0)  # adaptive_ref_pic_marking_mode_flag (a reference picture: sliding window)
    writer.ue(0)  # slice_qp_delta
    writer.ue(1)  # disable_deblocking_filter_idc: off
    writer.ue(sps.mb_count)  # mb_skip_run: the whole picture, B_Skip
    writer.align_with_one()
    return writer.to_bytes()


def _skip_slice(sps: H264Sps, frame_num: int, poc_lsb: int | None, mark: bool, back: int | None = None) -> bytes:
    """A P slice of the whole picture, deblocking off, in which every macroblock is skipped: P_Skip's
    vector is zero for the first macroblock (no neighbours) and so for every later one (a still
    neighbour), so the picture is an exact copy of the last reference frame. Marked, every
    macroblock is instead P_L0_16x16 with MARK_SHIFT as its vector and no residual: only the first
    codes a vector difference, the others' predicted vector (their neighbours') being the same. With `back`,
    the reference picture `back` frame numbers before this one is put first in the list (a modification) and is
    the one copied. With B-frames, standing in for a lost P picture, the copy of the reference shown last rather
    than FFmpeg's of the last decoded (`conceal` with three B-frames: carphone at 10 / 20% loss 27.61 / 20.76 ->
    28.52 / 21.23 dB, foreman at 20% 16.97 -> 17.09, chaplin at 20% +0.06, bikes and chaplin at 3 / 10% within 0.02;
    with the lost picture's order count guessed from the B picture after it as well, bikes at 20% fell 0.31)."""
    writer = substitute_slice_header(P_SLICE_ALL, sps, frame_num, poc_lsb)
    writer.u(1, 0)  # num_ref_idx_active_override_flag
    writer.u(1, back is not None)  # ref_pic_list_modification_flag_l0
    if back is not None:  # the reference `back` frame numbers before this one comes first
        writer.ue(0)  # modification_of_pic_nums_idc: subtract from the picture number
        writer.ue(back - 1)  # abs_diff_pic_num_minus1
        writer.ue(3)  # end of the modifications
    writer.u(1, 0)  # adaptive_ref_pic_marking_mode_flag (a reference picture: sliding window)
    writer.ue(0)  # slice_qp_delta
    writer.ue(1)  # disable_deblocking_filter_idc: off
    if not mark:
        writer.ue(sps.mb_count)  # mb_skip_run: the whole picture
    else:
        writer.ue(0)  # mb_skip_run
        writer.ue(0)  # mb_type: P_L0_16x16 (one reference: no ref_idx)
        for component in MARK_SHIFT:
            writer.se(component)  # mvd_l0
        writer.ue(0)  # coded_block_pattern: codeNum 0 is no residual for inter macroblocks
        # Every later macroblock: the same five codes with zero vector differences, each a single 1 bit.
        writer.u(5 * (sps.mb_count - 1), -1)
    writer.align_with_one()
    return writer.to_bytes()

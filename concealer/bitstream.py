"""H.264/HEVC NAL-unit framing and just enough header parsing to locate slices.

Damage is simulated and reported at the granularity a network sees (NAL units
and their fragments), and the ground truth needs to know which macroblocks or
CTUs each slice covers. That needs the slice address from the slice header and,
for HEVC, the picture geometry from the SPS/PPS. Nothing here decodes pictures.
"""
from __future__ import annotations

import enum
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
# No picture side exceeds sqrt(8 * MaxLumaPs) of the highest level (A.4.1): a larger one is a damaged SPS.
MAX_PICTURE_SIDE = 16888


class Codec(str, enum.Enum):
    H264 = "h264"
    HEVC = "hevc"
    VP9 = "vp9"  # frame codecs: no NAL units; simulate-loss loses their frames whole
    AV1 = "av1"

    @property
    def has_nal_units(self) -> bool:
        return self in (Codec.H264, Codec.HEVC)


class BitstreamError(ValueError):
    """A NAL unit or parameter set is malformed (truncated, bad exp-Golomb code)."""


class Framing(enum.Enum):
    """How access units delimit NAL units: MP4/MKV length prefixes or Annex B start codes."""

    LENGTH_PREFIXED = "length-prefixed"
    ANNEX_B = "annex-b"


@dataclass(frozen=True)
class NalUnit:
    """One NAL unit inside an access unit; `start`/`end` include its length prefix or start code."""

    start: int
    end: int
    payload_start: int  # first byte of the NAL header
    nal_type: int

    @property
    def size(self) -> int:
        return self.end - self.start


def nal_type_of(codec: Codec, header_byte: int) -> int:
    if codec is Codec.H264:
        return header_byte & 0x1F
    return (header_byte >> 1) & 0x3F


def nal_header_size(codec: Codec) -> int:
    return 1 if codec is Codec.H264 else 2


def is_slice(codec: Codec, nal_type: int) -> bool:
    if codec is Codec.H264:
        return 1 <= nal_type <= 5
    return 0 <= nal_type <= 21  # VCL NAL unit types (incl. reserved ones)


def is_parameter_set(codec: Codec, nal_type: int) -> bool:
    if codec is Codec.H264:
        return nal_type in (7, 8, 13, 15)  # SPS, PPS, SPS extension, subset SPS
    return nal_type in (32, 33, 34)  # VPS, SPS, PPS


# Bytes of a NAL unit that must have arrived for a cut-short one to be kept: its header (two bytes in HEVC) and some
# payload.
UNIT_LEAST = 3


def _iter_length_prefixed(data: bytes, length_size: int) -> Iterator[tuple[int, int, int]]:
    offset = 0
    while offset < len(data):
        if offset + length_size > len(data):
            raise BitstreamError("truncated NAL length prefix")
        length = int.from_bytes(data[offset:offset + length_size], "big")
        end = offset + length_size + length
        if length == 0 or end > len(data):
            raise BitstreamError("NAL length prefix runs past the access unit")
        yield offset, end, offset + length_size
        offset = end


def arrived_units(data: bytes, length_size: int) -> bytes | None:
    """A length-prefixed access unit cut short (its last NAL unit's length prefix runs past its end) with that
    prefix made to say how much of the unit arrived, and trailing bytes too few for a prefix and a NAL header left
    out; None when it is whole, or unreadable before its end (a zero length). FFmpeg refuses the whole packet
    otherwise: a keyframe cut short left `conceal` with no picture at all (benchmarks.fuzz, h264 seed 451), where
    the decoder, given the part that arrived, decodes its slices up to the cut and conceals the rest."""
    whole = 0  # where the units read whole end
    try:
        for _, whole, _ in _iter_length_prefixed(data, length_size):
            pass
        return None
    except BitstreamError:  # the walk stopped at `whole`: a stub of a prefix, a zero length, or a unit cut short
        pass
    arrived = len(data) - whole - length_size
    if int.from_bytes(data[whole:whole + length_size], "big") == 0 and arrived >= 0:
        return None
    if arrived < UNIT_LEAST:
        return data[:whole] or None  # what came before it is whole
    return data[:whole] + arrived.to_bytes(length_size, "big") + data[whole + length_size:]


def _iter_annex_b(data: bytes) -> Iterator[tuple[int, int, int]]:
    starts = []  # (start code offset, payload offset)
    i = data.find(b"\x00\x00\x01")
    while i >= 0:
        code_start = i - 1 if i > 0 and data[i - 1] == 0 else i
        starts.append((code_start, i + 3))
        i = data.find(b"\x00\x00\x01", i + 3)
    for k, (code_start, payload) in enumerate(starts):
        end = starts[k + 1][0] if k + 1 < len(starts) else len(data)
        while end > payload and data[end - 1] == 0:  # trailing_zero_8bits belong to no NAL
            end -= 1
        if end > payload:
            yield code_start, end, payload


def nal_units(data: bytes, codec: Codec, framing: Framing, length_size: int = 4) -> list[NalUnit]:
    """Split one access unit into NAL units, raising BitstreamError on broken framing."""
    return [NalUnit(s, e, p, nal_type_of(codec, data[p]))
            for s, e, p in (_iter_length_prefixed(data, length_size) if framing is Framing.LENGTH_PREFIXED
                            else _iter_annex_b(data))]


def remove_emulation_prevention(rbsp: bytes) -> bytes:
    """Drop the 0x03 of every 0x000003 sequence, as the decoder does before parsing.

    A left-to-right, non-overlapping replace is exactly the decoder's rule (the zero count
    restarts after each removed byte), and runs in C: whole slices get unescaped.
    """
    return rbsp.replace(b"\x00\x00\x03", b"\x00\x00")


def escaped_offset(escaped: bytes, unescaped: int) -> int:
    """Where byte `unescaped` of an RBSP lies in its escaped form (`escaped`): past the emulation prevention
    bytes before it, found as the decoder removes them (remove_emulation_prevention)."""
    removed, search = 0, 0
    while (found := escaped.find(b"\x00\x00\x03", search)) >= 0 and found + 2 - removed <= unescaped:
        removed += 1
        search = found + 3
    return unescaped + removed


def add_emulation_prevention(rbsp: bytes) -> bytes:
    """Insert 0x03 wherever two zero bytes precede a byte <= 3, so that no start code can appear.

    The regular expression's left-to-right, non-overlapping matches are the byte-by-byte rule (a match
    consumes the two zeros, and the zero count restarts after the inserted byte), run in C: the repair
    writes whole pictures of raw samples (1.4 MB for 720p)."""
    return _EMULATED.sub(b"\x00\x00\x03", rbsp)


_EMULATED = re.compile(b"\x00\x00(?=[\x00-\x03])")


def h264_nal_unit(header: int, rbsp: bytes) -> bytes:
    """An H.264 NAL unit: its header byte (nal_ref_idc, nal_unit_type) and the RBSP, escaped."""
    return bytes([header]) + add_emulation_prevention(rbsp)


def framed(nals: Sequence[bytes], framing: Framing, length_size: int = 4) -> bytes:
    """NAL units (header byte(s) onwards, escaped) joined into an access unit of the stream's framing."""
    if framing is Framing.ANNEX_B:
        return b"".join(b"\x00\x00\x00\x01" + nal for nal in nals)
    return b"".join(len(nal).to_bytes(length_size, "big") + nal for nal in nals)


class BitReader:
    """MSB-first reader with exp-Golomb codes (H.264 7.2 / HEVC 7.2)."""

    def __init__(self, data: bytes):
        self._data = data
        self._pos = 0

    def u(self, bits: int) -> int:
        value = 0
        for _ in range(bits):
            byte_index = self._pos >> 3
            if byte_index >= len(self._data):
                raise BitstreamError("read past the end of the NAL unit")
            value = (value << 1) | ((self._data[byte_index] >> (7 - (self._pos & 7))) & 1)
            self._pos += 1
        return value

    def ue(self) -> int:
        leading = 0
        while self.u(1) == 0:
            leading += 1
            if leading > 31:
                raise BitstreamError("exp-Golomb code longer than 32 bits")
        return (1 << leading) - 1 + self.u(leading)

    def se(self) -> int:
        code = self.ue()
        return (code + 1) // 2 if code & 1 else -(code // 2)

    def flag(self) -> bool:
        return bool(self.u(1))

    def skip(self, bits: int) -> None:
        if (self._pos + bits + 7) >> 3 > len(self._data):
            raise BitstreamError("read past the end of the NAL unit")
        self._pos += bits

    @property
    def position(self) -> int:
        """Bits read so far."""
        return self._pos

    @property
    def data(self) -> bytes:
        return self._data


class BitWriter:
    """MSB-first writer with exp-Golomb codes: the inverse of BitReader, for rewriting headers."""

    def __init__(self) -> None:
        self._bytes = bytearray()
        self._partial = 0
        self._count = 0  # bits in _partial

    def u(self, bits: int, value: int) -> None:
        """The low `bits` bits of `value`, whole bytes flushed at once (the repairs write thousands of bits)."""
        if bits <= 0:
            return
        self._partial = (self._partial << bits) | (value & ((1 << bits) - 1))
        self._count += bits
        if self._count >= 8:
            left = self._count % 8
            self._bytes += (self._partial >> left).to_bytes(self._count // 8, "big")
            self._partial &= (1 << left) - 1
            self._count = left

    def ue(self, value: int) -> None:
        code = value + 1
        self.u(code.bit_length() - 1, 0)
        self.u(code.bit_length(), code)

    def se(self, value: int) -> None:
        self.ue(2 * value - 1 if value > 0 else -2 * value)

    def copy(self, reader: BitReader, start: int, end: int) -> None:
        """Append bits [start, end) of what `reader` reads, unchanged."""
        if end <= start:
            return
        first, last = start >> 3, (end + 7) >> 3
        self.u(end - start, int.from_bytes(reader.data[first:last], "big") >> (last * 8 - end))

    def pad_with_zeros(self) -> None:
        """Zero bits to the byte boundary (pcm_alignment_zero_bit)."""
        self.u(-self._count % 8, 0)

    def pad_with_ones(self) -> None:
        """One bits to the byte boundary (cabac_alignment_one_bit)."""
        self.u(-self._count % 8, -1)

    def align_with_one(self) -> None:
        """byte_alignment() / rbsp_trailing_bits(): a one bit, then zero bits to the byte boundary."""
        self.u(1, 1)
        self.u(-self._count % 8, 0)

    @property
    def aligned(self) -> bool:
        return self._count == 0

    def to_bytes(self) -> bytes:
        if self._count:
            raise ValueError("the written bits do not end on a byte boundary")
        return bytes(self._bytes)


def header_reader(nal: bytes, codec: Codec, max_bytes: int = 64) -> BitReader:
    """Reader positioned after the NAL header; only the first bytes are unescaped (headers are short)."""
    return BitReader(remove_emulation_prevention(nal[nal_header_size(codec):max_bytes]))


@dataclass(frozen=True)
class PictureGeometry:
    """The slice-address grid of a picture: 16x16 macroblocks (H.264) or CTUs (HEVC)."""

    width: int
    height: int
    block_size: int
    # HEVC slice headers carry dependent_slice_segment_flag before the address when the PPS enables it.
    dependent_slice_segments_enabled: bool = False
    # H.264 MBAFF pictures (interlaced, mb_adaptive_frame_field_flag) address vertical pairs of macroblocks.
    macroblock_pairs: bool = False

    @property
    def block_height(self) -> int:
        return self.block_size * (2 if self.macroblock_pairs else 1)

    @property
    def blocks_wide(self) -> int:
        return -(-self.width // self.block_size)

    @property
    def blocks_high(self) -> int:
        return -(-self.height // self.block_height)

    @property
    def block_count(self) -> int:
        return self.blocks_wide * self.blocks_high


@dataclass(frozen=True)
class SliceHeader:
    first_block: int  # first_mb_in_slice (H.264) or slice_segment_address (HEVC)
    dependent: bool  # HEVC dependent slice segment


def parse_slice_header(nal: bytes, codec: Codec, geometry: PictureGeometry) -> SliceHeader:
    """Read the slice address, the first field(s) of every slice header."""
    reader = header_reader(nal, codec)
    if codec is Codec.H264:
        return SliceHeader(reader.ue(), False)
    nal_type = nal_type_of(codec, nal[0])
    first_in_picture = reader.u(1)
    if 16 <= nal_type <= 23:
        reader.u(1)  # no_output_of_prior_pics_flag
    reader.ue()  # slice_pic_parameter_set_id
    if first_in_picture:
        return SliceHeader(0, False)
    dependent = False
    if geometry.dependent_slice_segments_enabled:
        dependent = bool(reader.u(1))
    address_bits = max(1, (geometry.block_count - 1).bit_length())
    return SliceHeader(reader.u(address_bits), dependent)


def h264_geometry(width: int, height: int, sps: H264Sps | None = None) -> PictureGeometry:
    """The slice-address grid of H.264 pictures: macroblocks, or vertical pairs of them where `sps` says MBAFF."""
    return PictureGeometry(width, height, 16, macroblock_pairs=sps is not None and sps.mbaff)


@dataclass(frozen=True)
class ShortTermRps:
    """A short-term reference picture set (H.265 7.4.8): POC deltas and whether the picture uses each."""

    negative: tuple[tuple[int, bool], ...]  # (delta POC < 0, used by the current picture), nearest first
    positive: tuple[tuple[int, bool], ...]

    @property
    def num_delta_pocs(self) -> int:
        return len(self.negative) + len(self.positive)

    @property
    def used_count(self) -> int:
        return sum(used for _, used in self.negative + self.positive)


def _short_term_rps(reader: BitReader, index: int, count: int, sets: list[ShortTermRps]) -> ShortTermRps:
    """st_ref_pic_set(index) (7.3.7), with inter-RPS prediction resolved as in equations 7-61/7-62."""
    if index and reader.flag():  # inter_ref_pic_set_prediction_flag
        ref = _pick(sets, index - (reader.ue() + 1 if index == count else 1), "reference picture set")
        negative_delta = reader.flag()  # delta_rps_sign
        delta_rps = (reader.ue() + 1) * (-1 if negative_delta else 1)
        flags = []  # (used_by_curr_pic_flag, use_delta_flag) for ref's negatives, positives, then delta_rps
        for _ in range(ref.num_delta_pocs + 1):
            used = reader.flag()
            flags.append((used, used or reader.flag()))
        n_neg = len(ref.negative)
        candidates = ([(d + delta_rps, flags[n_neg + j]) for j, (d, _) in reversed(list(enumerate(ref.positive)))]
                      + [(delta_rps, flags[-1])]
                      + [(d + delta_rps, flags[j]) for j, (d, _) in enumerate(ref.negative)])
        negative = tuple((d, used) for d, (used, use) in candidates if d < 0 and use)
        candidates = ([(d + delta_rps, flags[j]) for j, (d, _) in reversed(list(enumerate(ref.negative)))]
                      + [(delta_rps, flags[-1])]
                      + [(d + delta_rps, flags[n_neg + j]) for j, (d, _) in enumerate(ref.positive)])
        positive = tuple((d, used) for d, (used, use) in candidates if d > 0 and use)
        return ShortTermRps(negative, positive)
    num_negative, num_positive = reader.ue(), reader.ue()
    lists = []
    for count_in_list, sign in ((num_negative, -1), (num_positive, 1)):
        poc, entries = 0, []
        for _ in range(count_in_list):
            poc += sign * (reader.ue() + 1)
            entries.append((poc, reader.flag()))
        lists.append(tuple(entries))
    return ShortTermRps(*lists)


def _pick(values: Sequence[T], index: int, what: str) -> T:
    """values[index], or BitstreamError for an index a damaged header made up."""
    if not 0 <= index < len(values):
        raise BitstreamError(f"{what} {index} does not exist")
    return values[index]


def _skip_profile_tier_level(reader: BitReader, max_sub_layers_minus1: int) -> None:
    reader.skip(88)  # general profile space/tier/idc, compatibility and constraint flags
    reader.u(8)  # general_level_idc
    present = [(reader.u(1), reader.u(1)) for _ in range(max_sub_layers_minus1)]
    if max_sub_layers_minus1 > 0:
        reader.skip(2 * (8 - max_sub_layers_minus1))
    for profile_present, level_present in present:
        reader.skip(88 * profile_present + 8 * level_present)


def _skip_scaling_list_data(reader: BitReader) -> None:
    for size_id in range(4):
        for _ in range(0, 6, 3 if size_id == 3 else 1):
            if not reader.flag():  # scaling_list_pred_mode_flag
                reader.ue()
                continue
            if size_id > 1:
                reader.se()
            for _ in range(min(64, 1 << (4 + (size_id << 1)))):
                reader.se()


@dataclass(frozen=True)
class HevcSps:
    """The SPS fields (H.265 7.3.2.2) that decide the slice header's layout and the coding-tree syntax."""

    sps_id: int
    chroma_format_idc: int
    separate_colour_planes: bool
    width: int
    height: int
    log2_max_poc_lsb: int
    log2_min_cb: int
    log2_ctb: int
    log2_min_tb: int
    log2_max_tb: int
    max_transform_depth_intra: int
    sao_enabled: bool
    pcm_cb_sizes: tuple[int, int] | None  # (log2 min, log2 max) PCM coding-block size, None without PCM
    short_term_rps: tuple[ShortTermRps, ...]
    long_term_used: tuple[bool, ...] | None  # used_by_curr_pic_lt_sps_flag per SPS candidate; None: no long-term
    temporal_mvp_enabled: bool

    @property
    def chroma_array_type(self) -> int:
        return 0 if self.separate_colour_planes else self.chroma_format_idc

    @property
    def ctb_size(self) -> int:
        return 1 << self.log2_ctb

    @property
    def ctbs_wide(self) -> int:
        return -(-self.width // self.ctb_size)

    @property
    def ctb_count(self) -> int:
        return self.ctbs_wide * -(-self.height // self.ctb_size)


def parse_hevc_sps(nal: bytes) -> HevcSps:
    """Parse an HEVC SPS NAL unit up to sps_temporal_mvp_enabled_flag (H.265 7.3.2.2)."""
    reader = BitReader(remove_emulation_prevention(nal[2:]))
    reader.u(4)  # sps_video_parameter_set_id
    max_sub_layers_minus1 = reader.u(3)
    reader.u(1)  # sps_temporal_id_nesting_flag
    _skip_profile_tier_level(reader, max_sub_layers_minus1)
    sps_id = reader.ue()
    chroma_format_idc = reader.ue()
    separate_planes = chroma_format_idc == 3 and reader.flag()
    width, height = reader.ue(), reader.ue()
    if reader.flag():  # conformance_window_flag
        for _ in range(4):
            reader.ue()
    reader.ue(), reader.ue()  # bit depths
    log2_max_poc_lsb = reader.ue() + 4
    ordering_all = reader.u(1)
    for _ in range(0 if ordering_all else max_sub_layers_minus1, max_sub_layers_minus1 + 1):
        reader.ue(), reader.ue(), reader.ue()
    log2_min_cb = reader.ue() + 3
    log2_ctb = log2_min_cb + reader.ue()
    log2_min_tb = reader.ue() + 2
    log2_max_tb = log2_min_tb + reader.ue()
    reader.ue()  # max_transform_hierarchy_depth_inter
    max_transform_depth_intra = reader.ue()
    if reader.flag() and reader.flag():  # scaling_list_enabled_flag, sps_scaling_list_data_present_flag
        _skip_scaling_list_data(reader)
    reader.u(1)  # amp_enabled_flag
    sao_enabled = reader.flag()
    pcm_cb_sizes = None
    if reader.flag():  # pcm_enabled_flag
        reader.u(8)  # PCM sample bit depths
        log2_min_pcm = reader.ue() + 3
        pcm_cb_sizes = (log2_min_pcm, log2_min_pcm + reader.ue())
        reader.u(1)  # pcm_loop_filter_disabled_flag
    rps: list[ShortTermRps] = []
    count = reader.ue()
    for index in range(count):
        rps.append(_short_term_rps(reader, index, count, rps))
    long_term_used = None
    if reader.flag():  # long_term_ref_pics_present_flag
        entries = []
        for _ in range(reader.ue()):
            reader.u(log2_max_poc_lsb)
            entries.append(reader.flag())
        long_term_used = tuple(entries)
    if not (3 <= log2_min_cb <= log2_ctb and 4 <= log2_ctb <= 6 and 2 <= log2_min_tb <= log2_max_tb <= 5
            and 0 < width <= MAX_PICTURE_SIDE and 0 < height <= MAX_PICTURE_SIDE and log2_max_poc_lsb <= 16
            and chroma_format_idc <= 3):
        raise BitstreamError("SPS values out of the standard's range")
    return HevcSps(sps_id, chroma_format_idc, separate_planes, width, height, log2_max_poc_lsb, log2_min_cb,
                   log2_ctb, log2_min_tb, log2_max_tb, max_transform_depth_intra, sao_enabled, pcm_cb_sizes,
                   tuple(rps), long_term_used, reader.flag())


@dataclass(frozen=True)
class HevcPps:
    """The PPS fields (H.265 7.3.2.3) that decide the slice header's layout and the coding-tree syntax."""

    pps_id: int
    sps_id: int
    dependent_slice_segments_enabled: bool
    output_flag_present: bool
    num_extra_slice_header_bits: int
    cabac_init_present: bool
    default_ref_counts: tuple[int, int]  # num_ref_idx_l0/l1_default_active
    init_qp: int
    cu_qp_delta_enabled: bool
    slice_chroma_qp_offsets_present: bool
    weighted_pred: bool
    weighted_bipred: bool
    transquant_bypass_enabled: bool
    tiles_enabled: bool
    entropy_coding_sync_enabled: bool
    loop_filter_across_slices_enabled: bool
    deblocking_override_enabled: bool
    deblocking_disabled: bool
    lists_modification_present: bool
    slice_header_extension_present: bool
    chroma_qp_offset_list_enabled: bool


def parse_hevc_pps(nal: bytes) -> HevcPps:
    """Parse an HEVC PPS NAL unit (H.265 7.3.2.3); raise BitstreamError for extensions it cannot follow."""
    reader = BitReader(remove_emulation_prevention(nal[2:]))
    pps_id, sps_id = reader.ue(), reader.ue()
    dependent = reader.flag()
    output_flag_present = reader.flag()
    extra_bits = reader.u(3)
    reader.u(1)  # sign_data_hiding_enabled_flag
    cabac_init_present = reader.flag()
    default_ref_counts = (reader.ue() + 1, reader.ue() + 1)
    init_qp = 26 + reader.se()
    reader.u(1)  # constrained_intra_pred_flag
    transform_skip = reader.flag()
    cu_qp_delta = reader.flag()
    if cu_qp_delta:
        reader.ue()  # diff_cu_qp_delta_depth
    reader.se(), reader.se()  # pps_cb_qp_offset, pps_cr_qp_offset
    chroma_offsets_present = reader.flag()
    weighted_pred, weighted_bipred = reader.flag(), reader.flag()
    transquant_bypass = reader.flag()
    tiles, wpp = reader.flag(), reader.flag()
    if tiles:
        columns, rows = reader.ue(), reader.ue()
        if not reader.flag():  # uniform_spacing_flag
            for _ in range(columns + rows):
                reader.ue()
        reader.u(1)  # loop_filter_across_tiles_enabled_flag
    across_slices = reader.flag()
    override = deblocking_disabled = False
    if reader.flag():  # deblocking_filter_control_present_flag
        override, deblocking_disabled = reader.flag(), reader.flag()
        if not deblocking_disabled:
            reader.se(), reader.se()
    if reader.flag():  # pps_scaling_list_data_present_flag
        _skip_scaling_list_data(reader)
    lists_modification = reader.flag()
    reader.ue()  # log2_parallel_merge_level_minus2
    extension_present = reader.flag()
    chroma_qp_offset_list = False
    if reader.flag():  # pps_extension_present_flag
        range_extension = reader.flag()
        if reader.u(3):  # multilayer, 3D or SCC extension
            raise BitstreamError("PPS extensions beyond the range extension are not supported")
        reader.u(4)
        if range_extension:
            if transform_skip:
                reader.ue()
            reader.u(1)  # cross_component_prediction_enabled_flag
            chroma_qp_offset_list = reader.flag()
    return HevcPps(pps_id, sps_id, dependent, output_flag_present, extra_bits, cabac_init_present,
                   default_ref_counts, init_qp,
                   cu_qp_delta, chroma_offsets_present, weighted_pred, weighted_bipred, transquant_bypass, tiles, wpp,
                   across_slices, override, deblocking_disabled, lists_modification, extension_present,
                   chroma_qp_offset_list)


def hevc_geometry(sps: bytes, pps: bytes | None) -> PictureGeometry:
    parsed = parse_hevc_sps(sps)
    return PictureGeometry(parsed.width, parsed.height, parsed.ctb_size,
                           parse_hevc_pps(pps).dependent_slice_segments_enabled if pps else False)


class HevcSliceType(enum.IntEnum):
    B = 0
    P = 1
    I = 2  # noqa: E741 (the standard's name for an intra slice)


HEVC_IDR_TYPES = (19, 20)  # IDR_W_RADL, IDR_N_LP: no POC or reference picture set in the slice header


@dataclass(frozen=True)
class HevcSliceHeader:
    """An HEVC slice segment header (H.265 7.3.6.1), with the bit positions a rewrite needs.

    Positions count bits of the unescaped payload after the two-byte NAL header. A rewrite
    copies the spans between them verbatim, so fields it does not change keep their exact bits.
    """

    nal_type: int
    first_in_picture: bool
    pps_id: int
    dependent: bool
    address: int
    slice_type: HevcSliceType | None  # None for a dependent segment (it inherits the slice's)
    qp_delta: int
    cabac_init: bool
    max_merge_candidates: int
    deblocking_disabled: bool
    loop_filter_across_slices: bool | None  # None when not coded
    poc_lsb: int  # slice_pic_order_cnt_lsb (0 in IDR pictures)
    short_term_rps: ShortTermRps | None  # None in IDR pictures and dependent segments
    long_term_pictures: int
    after_pps_id: int
    independent_start: int  # after slice_segment_address
    rps_span: tuple[int, int]  # slice_pic_order_cnt_lsb and the reference picture sets, empty when absent
    sao_span: tuple[int, int]
    loop_filter_span: tuple[int, int]  # slice_loop_filter_across_slices_enabled_flag, empty when absent
    entry_point_span: tuple[int, int]
    header_end: int  # before byte_alignment()
    # Bytes of each WPP substream or tile but the last (entry_point_offset_minus1 + 1), emulation prevention counted.
    entry_points: tuple[int, ...] = ()
    temporal_mvp: bool = False  # slice_temporal_mvp_enabled_flag (right after rps_span when set)
    collocated_span: tuple[int, int] = (0, 0)  # collocated_from_l0_flag and collocated_ref_idx, empty when absent


class HevcParameterSets:
    """The SPSs and PPSs seen so far, by id, as a decoder keeps them."""

    def __init__(self) -> None:
        self.sps: dict[int, HevcSps] = {}
        self.pps: dict[int, HevcPps] = {}

    def add(self, nal: bytes) -> None:
        """Parse an SPS or PPS NAL unit (other types are ignored)."""
        nal_type = nal_type_of(Codec.HEVC, nal[0])
        if nal_type == 33:
            sps = parse_hevc_sps(nal)
            self.sps[sps.sps_id] = sps
        elif nal_type == 34:
            pps = parse_hevc_pps(nal)
            self.pps[pps.pps_id] = pps

    def for_slice(self, pps_id: int) -> tuple[HevcSps, HevcPps]:
        pps = self.pps.get(pps_id)
        sps = self.sps.get(pps.sps_id) if pps else None
        if sps is None:
            raise BitstreamError(f"slice refers to parameter set {pps_id}, which never arrived")
        return sps, pps


def _skip_pred_weight_table(reader: BitReader, sps: HevcSps, slice_type: HevcSliceType,
                            ref_counts: tuple[int, int]) -> None:
    reader.ue()  # luma_log2_weight_denom
    chroma = sps.chroma_array_type != 0
    if chroma:
        reader.se()
    for count in ref_counts[:2 if slice_type is HevcSliceType.B else 1]:
        luma_flags = [reader.flag() for _ in range(count)]
        chroma_flags = [reader.flag() for _ in range(count)] if chroma else [False] * count
        for luma, has_chroma in zip(luma_flags, chroma_flags):
            for _ in range(2 * luma + 4 * has_chroma):
                reader.se()


def parse_hevc_slice_header(nal: bytes, parameter_sets: HevcParameterSets) -> tuple[HevcSliceHeader, BitReader]:
    """Parse a slice segment header in full; return it and the reader over the unescaped payload."""
    reader = BitReader(remove_emulation_prevention(nal[2:]))
    nal_type = nal_type_of(Codec.HEVC, nal[0])
    first = reader.flag()
    if 16 <= nal_type <= 23:
        reader.u(1)  # no_output_of_prior_pics_flag
    pps_id = reader.ue()
    after_pps_id = reader.position
    sps, pps = parameter_sets.for_slice(pps_id)
    dependent, address = False, 0
    if not first:
        dependent = pps.dependent_slice_segments_enabled and reader.flag()
        address = reader.u(max(1, (sps.ctb_count - 1).bit_length()))
    independent_start = reader.position
    slice_type, qp_delta, cabac_init, merge, across = None, 0, False, 5, None
    temporal_mvp, collocated_span = False, (0, 0)
    poc_lsb, rps, long_term = 0, None, 0
    rps_span = (independent_start, independent_start)
    deblocking_disabled = pps.deblocking_disabled
    sao_span = loop_filter_span = (independent_start, independent_start)
    if not dependent:
        reader.skip(pps.num_extra_slice_header_bits)
        slice_type = HevcSliceType(_pick(range(3), reader.ue(), "slice type"))
        if pps.output_flag_present:
            reader.u(1)
        if sps.separate_colour_planes:
            reader.u(2)
        used_pictures = 0
        rps_start = reader.position
        if nal_type not in HEVC_IDR_TYPES:
            poc_lsb = reader.u(sps.log2_max_poc_lsb)
            if not reader.flag():  # short_term_ref_pic_set_sps_flag
                rps = _short_term_rps(reader, len(sps.short_term_rps), len(sps.short_term_rps),
                                      list(sps.short_term_rps))
            else:
                index = reader.u((len(sps.short_term_rps) - 1).bit_length()) if len(sps.short_term_rps) > 1 else 0
                rps = _pick(sps.short_term_rps, index, "reference picture set")
            used_pictures = rps.used_count
            if sps.long_term_used is not None:
                from_sps = reader.ue() if sps.long_term_used else 0
                long_term = from_sps + reader.ue()
                for i in range(long_term):
                    if i < from_sps:
                        index = reader.u((len(sps.long_term_used) - 1).bit_length())
                        used_pictures += _pick(sps.long_term_used, index, "long-term picture")
                    else:
                        reader.u(sps.log2_max_poc_lsb)
                        used_pictures += reader.u(1)
                    if reader.flag():  # delta_poc_msb_present_flag
                        reader.ue()
        rps_span = (rps_start, reader.position)
        if nal_type not in HEVC_IDR_TYPES:
            temporal_mvp = sps.temporal_mvp_enabled and reader.flag()
        sao_start = reader.position
        sao = False
        if sps.sao_enabled:
            sao = reader.flag()
            if sps.chroma_array_type:
                sao = reader.flag() or sao
        sao_span = (sao_start, reader.position)
        if slice_type is not HevcSliceType.I:
            ref_counts = (0, 0)
            ref_counts = pps.default_ref_counts
            if reader.flag():  # num_ref_idx_active_override_flag
                ref_counts = (reader.ue() + 1, reader.ue() + 1 if slice_type is HevcSliceType.B else 0)
            if pps.lists_modification_present and used_pictures > 1:
                for count in ref_counts[:2 if slice_type is HevcSliceType.B else 1]:
                    if reader.flag():
                        reader.skip(count * (used_pictures - 1).bit_length())
            if slice_type is HevcSliceType.B:
                reader.u(1)  # mvd_l1_zero_flag
            cabac_init = pps.cabac_init_present and reader.flag()
            collocated_start = reader.position
            if temporal_mvp:
                from_l0 = reader.flag() if slice_type is HevcSliceType.B else True
                if ref_counts[0 if from_l0 else 1] > 1:
                    reader.ue()  # collocated_ref_idx
            collocated_span = (collocated_start, reader.position)
            if (pps.weighted_pred and slice_type is HevcSliceType.P) or \
                    (pps.weighted_bipred and slice_type is HevcSliceType.B):
                _skip_pred_weight_table(reader, sps, slice_type, ref_counts)
            merge = 5 - reader.ue()
        qp_delta = reader.se()
        if pps.slice_chroma_qp_offsets_present:
            reader.se(), reader.se()
        if pps.chroma_qp_offset_list_enabled:
            reader.u(1)
        if pps.deblocking_override_enabled and reader.flag():
            deblocking_disabled = reader.flag()
            if not deblocking_disabled:
                reader.se(), reader.se()
        loop_filter_start = reader.position
        if pps.loop_filter_across_slices_enabled and (sao or not deblocking_disabled):
            across = reader.flag()
        loop_filter_span = (loop_filter_start, reader.position)
    entry_start = reader.position
    entry_points: tuple[int, ...] = ()
    if pps.tiles_enabled or pps.entropy_coding_sync_enabled:
        count = reader.ue()
        if count:
            length = reader.ue() + 1
            if length > 32 or count >= sps.ctb_count:
                raise BitstreamError(f"{count} entry point offsets of {length} bits")
            entry_points = tuple(reader.u(length) + 1 for _ in range(count))
    entry_point_span = (entry_start, reader.position)
    if pps.slice_header_extension_present:
        reader.skip(8 * reader.ue())
    header = HevcSliceHeader(nal_type, first, pps_id, dependent, address, slice_type, qp_delta, cabac_init, merge,
                             deblocking_disabled, across, poc_lsb, rps, long_term, after_pps_id, independent_start,
                             rps_span, sao_span, loop_filter_span, entry_point_span, reader.position, entry_points,
                             temporal_mvp, collocated_span)
    return header, reader


# H.264 profiles whose SPS carries chroma format, bit depths and scaling lists (7.3.2.1.1).
H264_HIGH_PROFILES = (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135)


@dataclass(frozen=True)
class H264Sps:
    """The fields of an H.264 sequence parameter set that slice headers depend on."""

    sps_id: int
    separate_colour_planes: bool
    log2_max_frame_num: int
    poc_type: int
    log2_max_poc_lsb: int  # 0 unless poc_type is 0
    frame_mbs_only: bool
    mbs_wide: int
    map_units_high: int
    chroma_format: int = 1  # chroma_format_idc: 1 is 4:2:0
    bit_depth: int = 8  # of luma and chroma, or 0 when they differ
    delta_pic_order_always_zero: bool = False  # poc_type 1 only
    cropped_origin: tuple[int, int] = (0, 0)  # luma samples cropped off the top and the left
    gaps_allowed: bool = False  # gaps_in_frame_num_value_allowed_flag: a frame_num gap is no loss
    # mb_adaptive_frame_field_flag: frame pictures code their macroblocks in vertical pairs, frame or field each
    mbaff: bool = False

    @property
    def mb_count(self) -> int:
        return self.mbs_wide * self.map_units_high * (1 if self.frame_mbs_only else 2)


def _skip_h264_scaling_list(reader: BitReader, size: int) -> None:
    last = following = 8
    for _ in range(size):
        if following:
            following = (last + reader.se() + 256) % 256
        last = following or last


def parse_h264_sps(nal: bytes) -> H264Sps:
    """Read an H.264 SPS NAL unit (7.3.2.1.1) as far as the frame size."""
    reader = header_reader(nal, Codec.H264, max_bytes=len(nal))
    profile = reader.u(8)
    reader.skip(16)  # constraint flags, level_idc
    sps_id = reader.ue()
    separate = False
    chroma_format, bit_depth = 1, 8
    if profile in H264_HIGH_PROFILES:
        chroma_format = reader.ue()
        if chroma_format == 3:
            separate = reader.flag()
        luma_depth, chroma_depth = reader.ue() + 8, reader.ue() + 8
        bit_depth = luma_depth if luma_depth == chroma_depth else 0
        reader.skip(1)  # qpprime_y_zero_transform_bypass_flag
        if reader.flag():  # seq_scaling_matrix_present_flag
            for index in range(8 if chroma_format != 3 else 12):
                if reader.flag():
                    _skip_h264_scaling_list(reader, 16 if index < 6 else 64)
    log2_max_frame_num = reader.ue() + 4
    poc_type = reader.ue()
    log2_max_poc_lsb = 0
    always_zero = False
    if poc_type == 0:
        log2_max_poc_lsb = reader.ue() + 4
    elif poc_type == 1:
        always_zero = reader.flag()
        reader.se()
        reader.se()
        for _ in range(reader.ue()):
            reader.se()
    elif poc_type != 2:
        raise BitstreamError(f"H.264 SPS with pic_order_cnt_type {poc_type}")
    reader.ue()  # max_num_ref_frames
    gaps_allowed = reader.flag()  # gaps_in_frame_num_value_allowed_flag
    mbs_wide = reader.ue() + 1
    map_units_high = reader.ue() + 1
    frame_mbs_only = reader.flag()
    if log2_max_frame_num > 16 or log2_max_poc_lsb > 16:
        raise BitstreamError("H.264 SPS with out-of-range frame_num or POC sizes")
    mbaff = not frame_mbs_only and reader.flag()  # mb_adaptive_frame_field_flag
    reader.skip(1)  # direct_8x8_inference_flag
    origin = (0, 0)
    if reader.flag():  # frame_cropping_flag: offsets in chroma samples (7.4.2.1.1)
        unit_x = 2 if chroma_format in (1, 2) and not separate else 1
        unit_y = (2 if chroma_format == 1 and not separate else 1) * (2 - frame_mbs_only)
        left, _, top, _ = (reader.ue() for _ in range(4))
        origin = (top * unit_y, left * unit_x)
    return H264Sps(sps_id, separate, log2_max_frame_num, poc_type, log2_max_poc_lsb, frame_mbs_only, mbs_wide,
                   map_units_high, chroma_format, bit_depth, always_zero, origin, gaps_allowed, mbaff)


@dataclass(frozen=True)
class H264Pps:
    """The fields of an H.264 picture parameter set that slice headers depend on (7.3.2.2)."""

    pps_id: int
    sps_id: int
    cabac: bool  # entropy_coding_mode_flag
    bottom_field_pic_order_in_frame_present: bool
    slice_groups: int
    num_ref_idx_default: tuple[int, int]  # active references of lists 0 and 1 unless a slice overrides them
    weighted_pred: bool
    weighted_bipred_idc: int
    deblocking_filter_control_present: bool
    redundant_pic_cnt_present: bool


def parse_h264_pps(nal: bytes) -> H264Pps:
    reader = header_reader(nal, Codec.H264)
    pps_id, sps_id = reader.ue(), reader.ue()
    cabac, bottom_field = reader.flag(), reader.flag()
    slice_groups = reader.ue() + 1
    if slice_groups > 1:
        raise BitstreamError("H.264 PPS with slice groups")  # Baseline's FMO: its map is not parsed here
    references = (reader.ue() + 1, reader.ue() + 1)
    weighted_pred, weighted_bipred = reader.flag(), reader.u(2)
    for _ in range(3):
        reader.se()  # pic_init_qp_minus26, pic_init_qs_minus26, chroma_qp_index_offset
    deblocking_control = reader.flag()
    reader.skip(1)  # constrained_intra_pred_flag
    return H264Pps(pps_id, sps_id, cabac, bottom_field, slice_groups, references, weighted_pred, weighted_bipred,
                   deblocking_control, reader.flag())


H264_IDR = 5  # nal_unit_type of a slice of an IDR picture
H264_SPS = 7  # nal_unit_type of a sequence parameter set


@dataclass(frozen=True)
class H264SliceHeader:
    """An H.264 slice header (7.3.3) as far as rewriting needs it: which picture it belongs to, and where
    dec_ref_pic_marking() and the header end, in bits of the RBSP after the NAL header byte."""

    nal_ref_idc: int
    idr: bool
    first_mb: int
    slice_type: int  # modulo 5: 0 P, 1 B, 2 I, 3 SP, 4 SI
    pps: H264Pps
    sps: H264Sps
    frame_num: int
    idr_pic_id: int | None
    poc_lsb: int | None  # pic_order_cnt_lsb where poc_type is 0
    marking: tuple[int, int]
    end: int


def parse_h264_slice_header(nal: bytes, sps: dict[int, H264Sps], pps: dict[int, H264Pps]
                            ) -> tuple[H264SliceHeader, BitReader]:
    """Parse a slice NAL unit's header with the parameter sets seen so far; the reader holds the whole
    unescaped RBSP. Field pictures, SP/SI slices and poc_type 1 with explicit deltas raise BitstreamError."""
    reader = BitReader(remove_emulation_prevention(nal[1:]))
    ref_idc, idr = nal[0] >> 5 & 3, nal[0] & 0x1F == H264_IDR
    first_mb, slice_type = reader.ue(), reader.ue() % 5
    try:
        picture = pps[reader.ue()]
        sequence = sps[picture.sps_id]
    except KeyError as missing:
        raise BitstreamError(f"H.264 slice refers to an unknown parameter set {missing}") from None
    if slice_type > 2:
        raise BitstreamError("H.264 SP/SI slice")
    if sequence.separate_colour_planes:
        reader.skip(2)
    frame_num = reader.u(sequence.log2_max_frame_num)
    if not sequence.frame_mbs_only and reader.flag():
        raise BitstreamError("H.264 field picture")
    idr_pic_id = reader.ue() if idr else None
    poc_lsb = None
    if sequence.poc_type == 0:
        poc_lsb = reader.u(sequence.log2_max_poc_lsb)
        if picture.bottom_field_pic_order_in_frame_present:
            reader.se()
    elif sequence.poc_type == 1 and not sequence.delta_pic_order_always_zero:
        raise BitstreamError("H.264 slice with explicit picture order deltas")
    if picture.redundant_pic_cnt_present:
        reader.ue()
    lists = {0: 1, 1: 2}.get(slice_type, 0)  # P: list 0; B: lists 0 and 1; I: none
    if slice_type == 1:
        reader.skip(1)  # direct_spatial_mv_pred_flag
    active = list(picture.num_ref_idx_default)
    if lists and reader.flag():  # num_ref_idx_active_override_flag
        for index in range(lists):
            active[index] = reader.ue() + 1
    for _ in range(lists):  # ref_pic_list_modification()
        if reader.flag():
            while (operation := reader.ue()) != 3:
                if operation > 5:
                    raise BitstreamError("H.264 slice with a bad reference list modification")
                reader.ue()
    if (picture.weighted_pred and slice_type == 0) or (picture.weighted_bipred_idc == 1 and slice_type == 1):
        chroma = sequence.chroma_format != 0 and not sequence.separate_colour_planes
        reader.ue()  # luma_log2_weight_denom
        if chroma:
            reader.ue()
        for index in range(lists):
            for _ in range(active[index]):
                for present, values in ((True, 2), (chroma, 4)):
                    if present and reader.flag():
                        for _ in range(values):
                            reader.se()
    start = reader.position
    if ref_idc:  # dec_ref_pic_marking()
        if idr:
            reader.skip(2)
        elif reader.flag():
            while (operation := reader.ue()) != 0:
                if operation > 6:
                    raise BitstreamError("H.264 slice with a bad memory management operation")
                for _ in range((operation in (1, 3)) + (operation in (2, 3, 6)) + (operation == 4)):
                    reader.ue()
    marking = (start, reader.position)
    if picture.cabac and slice_type != 2:
        reader.ue()  # cabac_init_idc
    reader.se()  # slice_qp_delta
    if picture.deblocking_filter_control_present and reader.ue() != 1:
        reader.se()
        reader.se()
    header = H264SliceHeader(ref_idc, idr, first_mb, slice_type, picture, sequence, frame_num, idr_pic_id, poc_lsb,
                             marking, reader.position)
    return header, reader


@dataclass(frozen=True)
class DecoderConfig:
    """What the container's codec configuration record (avcC/hvcC) tells about framing and geometry."""

    length_size: int
    parameter_sets: tuple[bytes, ...]


def parse_decoder_config(codec: Codec, extradata: bytes | None) -> DecoderConfig | None:
    """Parse avcC/hvcC extradata; None when the stream is Annex B (no record, or start codes in it)."""
    if not extradata or extradata[:3] in (b"\x00\x00\x01",) or extradata[:4] == b"\x00\x00\x00\x01":
        return None
    try:
        if codec is Codec.H264:
            return _parse_avcc(extradata)
        return _parse_hvcc(extradata)
    except IndexError as exc:
        raise BitstreamError("truncated codec configuration record") from exc


def _read_sized_units(data: bytes, offset: int, count: int, sets: list[bytes]) -> int:
    """Append `count` NAL units stored as (16-bit size, bytes); return the offset after them."""
    for _ in range(count):
        size = int.from_bytes(data[offset:offset + 2], "big")
        if offset + 2 + size > len(data):
            raise IndexError("parameter set runs past the record")
        sets.append(data[offset + 2:offset + 2 + size])
        offset += 2 + size
    return offset


def _parse_avcc(data: bytes) -> DecoderConfig:
    sets: list[bytes] = []
    offset = _read_sized_units(data, 6, data[5] & 0x1F, sets)  # SPS count is 5 bits
    _read_sized_units(data, offset + 1, data[offset], sets)  # then the PPS
    return DecoderConfig((data[4] & 3) + 1, tuple(sets))


def _parse_hvcc(data: bytes) -> DecoderConfig:
    sets: list[bytes] = []
    offset = 23
    for _ in range(data[22]):  # arrays of VPS, SPS, PPS, SEI
        offset = _read_sized_units(data, offset + 3, int.from_bytes(data[offset + 1:offset + 3], "big"), sets)
    return DecoderConfig((data[21] & 3) + 1, tuple(sets))

"""H.264/HEVC NAL-unit framing and just enough header parsing to locate slices.

Damage is simulated and reported at the granularity a network sees (NAL units
and their fragments), and the ground truth needs to know which macroblocks or
CTUs each slice covers. That needs the slice address from the slice header and,
for HEVC, the picture geometry from the SPS/PPS. Nothing here decodes pictures.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Iterator


class Codec(str, enum.Enum):
    H264 = "h264"
    HEVC = "hevc"


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
    """Drop the 0x03 of every 0x000003 sequence, as the decoder does before parsing."""
    out = bytearray()
    zeros = 0
    for byte in rbsp:
        if zeros >= 2 and byte == 3:
            zeros = 0
            continue
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


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

    def skip(self, bits: int) -> None:
        if (self._pos + bits + 7) >> 3 > len(self._data):
            raise BitstreamError("read past the end of the NAL unit")
        self._pos += bits


def _header_reader(nal: bytes, codec: Codec, max_bytes: int = 64) -> BitReader:
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

    @property
    def blocks_wide(self) -> int:
        return -(-self.width // self.block_size)

    @property
    def blocks_high(self) -> int:
        return -(-self.height // self.block_size)

    @property
    def block_count(self) -> int:
        return self.blocks_wide * self.blocks_high


@dataclass(frozen=True)
class SliceHeader:
    first_block: int  # first_mb_in_slice (H.264) or slice_segment_address (HEVC)
    dependent: bool  # HEVC dependent slice segment


def parse_slice_header(nal: bytes, codec: Codec, geometry: PictureGeometry) -> SliceHeader:
    """Read the slice address, the first field(s) of every slice header."""
    reader = _header_reader(nal, codec)
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


def h264_geometry(width: int, height: int) -> PictureGeometry:
    return PictureGeometry(width, height, 16)


def parse_hevc_sps(nal: bytes) -> tuple[int, int, int]:
    """Return (width, height, ctb_size) from an HEVC SPS NAL unit (H.265 7.3.2.2)."""
    reader = BitReader(remove_emulation_prevention(nal[2:]))
    reader.u(4)  # sps_video_parameter_set_id
    max_sub_layers_minus1 = reader.u(3)
    reader.u(1)  # sps_temporal_id_nesting_flag
    # profile_tier_level(1, max_sub_layers_minus1)
    reader.skip(88)  # general profile space/tier/idc, compatibility and constraint flags
    reader.u(8)  # general_level_idc
    profile_present, level_present = [], []
    for _ in range(max_sub_layers_minus1):
        profile_present.append(reader.u(1))
        level_present.append(reader.u(1))
    if max_sub_layers_minus1 > 0:
        reader.skip(2 * (8 - max_sub_layers_minus1))
    for i in range(max_sub_layers_minus1):
        if profile_present[i]:
            reader.skip(88)
        if level_present[i]:
            reader.u(8)
    reader.ue()  # sps_seq_parameter_set_id
    if reader.ue() == 3:  # chroma_format_idc
        reader.u(1)  # separate_colour_plane_flag
    width = reader.ue()
    height = reader.ue()
    if reader.u(1):  # conformance_window_flag
        for _ in range(4):
            reader.ue()
    reader.ue()  # bit_depth_luma_minus8
    reader.ue()  # bit_depth_chroma_minus8
    reader.ue()  # log2_max_pic_order_cnt_lsb_minus4
    ordering_all = reader.u(1)
    for _ in range(0 if ordering_all else max_sub_layers_minus1, max_sub_layers_minus1 + 1):
        reader.ue(), reader.ue(), reader.ue()
    log2_min_cb = reader.ue() + 3
    log2_ctb = log2_min_cb + reader.ue()
    return width, height, 1 << log2_ctb


def parse_hevc_pps(nal: bytes) -> bool:
    """Return dependent_slice_segments_enabled_flag (H.265 7.3.2.3)."""
    reader = BitReader(remove_emulation_prevention(nal[2:]))
    reader.ue()  # pps_pic_parameter_set_id
    reader.ue()  # pps_seq_parameter_set_id
    return bool(reader.u(1))


def hevc_geometry(sps: bytes, pps: bytes | None) -> PictureGeometry:
    width, height, ctb = parse_hevc_sps(sps)
    return PictureGeometry(width, height, ctb, parse_hevc_pps(pps) if pps else False)


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

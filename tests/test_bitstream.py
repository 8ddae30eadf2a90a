"""NAL framing and slice-header parsing, on generated bitstrings and on real encoded streams."""
import av
import pytest
from hypothesis import given, strategies as st

from concealer.bitstream import (BitReader, BitWriter, Codec, Framing, add_emulation_prevention, h264_geometry,
                                 h264_nal_unit, hevc_geometry, nal_type_of, nal_units, parse_decoder_config,
                                 parse_h264_sps, parse_slice_header, remove_emulation_prevention)

from conftest import clip


def write_ue(value: int) -> str:
    code = bin(value + 1)[2:]
    return "0" * (len(code) - 1) + code


def to_bytes(bits: str) -> bytes:
    bits += "1" + "0" * (-(len(bits) + 1) % 8)  # rbsp_stop_one_bit and alignment
    return int(bits, 2).to_bytes(len(bits) // 8, "big")


@given(st.lists(st.integers(0, 2**20), min_size=1, max_size=20))
def test_exp_golomb_round_trip(values):
    reader = BitReader(to_bytes("".join(write_ue(v) for v in values)))
    assert [reader.ue() for _ in values] == values


@given(st.binary(max_size=200))
def test_emulation_prevention_round_trip(rbsp):
    assert remove_emulation_prevention(add_emulation_prevention(rbsp)) == rbsp


@given(st.lists(st.binary(min_size=1, max_size=50).map(lambda b: bytes([0x41]) + add_emulation_prevention(b)
                                                          .rstrip(b"\x00") + b"\x80"), min_size=1, max_size=10),
       st.sampled_from([Framing.ANNEX_B, Framing.LENGTH_PREFIXED]))
def test_split_recovers_every_nal_unit(nals, framing):
    if framing is Framing.ANNEX_B:
        data = b"".join(b"\x00\x00\x00\x01" + n for n in nals)
    else:
        data = b"".join(len(n).to_bytes(4, "big") + n for n in nals)
    units = nal_units(data, Codec.H264, framing)
    assert [data[u.payload_start:u.end] for u in units] == nals
    assert all(u.nal_type == 1 for u in units)


@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_crash_the_parsers(data):
    for framing in Framing:
        try:
            units = nal_units(data, Codec.H264, framing)
        except ValueError:
            continue
        for unit in units:
            try:
                parse_slice_header(data[unit.payload_start:unit.end], Codec.H264, h264_geometry(352, 288))
            except ValueError:
                pass


def first_slice_addresses(path, codec):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        config = parse_decoder_config(codec, stream.codec_context.extradata)
        if codec is Codec.HEVC:
            sps = next(s for s in config.parameter_sets if nal_type_of(codec, s[0]) == 33)
            pps = next(s for s in config.parameter_sets if nal_type_of(codec, s[0]) == 34)
            geometry = hevc_geometry(sps, pps)
        else:
            geometry = h264_geometry(stream.codec_context.width, stream.codec_context.height)
        packet = next(p for p in container.demux(stream) if p.size)
        data = bytes(packet)
        units = nal_units(data, codec, Framing.LENGTH_PREFIXED, config.length_size)
        return geometry, [parse_slice_header(data[u.payload_start:u.end], codec, geometry).first_block
                          for u in units if u.nal_type in (range(1, 6) if codec is Codec.H264 else range(0, 22))]


def test_real_h264_and_hevc_streams_parse():
    geometry, addresses = first_slice_addresses(clip("foreman_cif_h264.mp4"), Codec.H264)
    assert addresses[0] == 0 and addresses == sorted(addresses)
    geometry, addresses = first_slice_addresses(clip("foreman_cif_hevc.mp4"), Codec.HEVC)
    assert (geometry.width, geometry.height) == (352, 288)
    assert geometry.block_size in (16, 32, 64)
    assert addresses[0] == 0


@pytest.mark.parametrize("gaps", [False, True])
def test_h264_sps_says_whether_frame_num_may_skip(gaps):
    """A stream that allows gaps in frame_num skips frame numbers on purpose: a gap there is no lost reference."""
    writer = BitWriter()
    writer.u(8, 66)  # profile_idc: baseline (no chroma format fields)
    writer.u(8, 0)  # constraint flags
    writer.u(8, 30)  # level_idc
    for value in (0, 0, 2, 1):  # sps_id, log2_max_frame_num_minus4, pic_order_cnt_type, max_num_ref_frames
        writer.ue(value)
    writer.u(1, int(gaps))  # gaps_in_frame_num_value_allowed_flag
    writer.ue(21)  # pic_width_in_mbs_minus1
    writer.ue(17)  # pic_height_in_map_units_minus1
    writer.u(1, 1)  # frame_mbs_only_flag
    writer.u(1, 1)  # direct_8x8_inference_flag
    writer.u(1, 0)  # frame_cropping_flag
    writer.u(1, 0)  # vui_parameters_present_flag
    writer.align_with_one()
    sps = parse_h264_sps(h264_nal_unit(0x67, writer.to_bytes()))
    assert (sps.mbs_wide, sps.map_units_high, sps.gaps_allowed) == (22, 18, gaps)

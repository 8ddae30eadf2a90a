"""NAL framing and slice-header parsing, on generated bitstrings and on real encoded streams."""
import av
from hypothesis import given, strategies as st

from concealer.bitstream import (BitReader, Codec, Framing, add_emulation_prevention, h264_geometry, hevc_geometry,
                                 nal_type_of, nal_units, parse_decoder_config, parse_slice_header,
                                 remove_emulation_prevention)

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

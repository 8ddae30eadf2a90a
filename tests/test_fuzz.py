"""Fuzzing: seeded random corruptions of real clips through `conceal` (the quick part of benchmarks.fuzz),
regression tests for what the fuzzer found, and properties of the bitstream parsers on hostile bytes."""
from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import clip
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.fuzz import (
    CLIPS,
    Outcome,
    corrupt,
    make_excerpt,
    fuzz,
    read_stream,
    repair_and_check,
    run_case,
)
from concealer import conceal
from concealer.bitstream import (
    BitReader,
    BitstreamError,
    BitWriter,
    Codec,
    Framing,
    HevcParameterSets,
    add_emulation_prevention,
    arrived_units,
    escaped_offset,
    framed,
    nal_type_of,
    nal_units,
    parse_decoder_config,
    parse_hevc_pps,
    parse_hevc_slice_header,
    parse_hevc_sps,
    remove_emulation_prevention,
)
from concealer.errors import InputError

# Cases per codec in the normal test run; `python -m benchmarks.fuzz --cases 200` is the long run.
QUICK_CASES = 60


@pytest.fixture(scope="module")
def excerpts(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("excerpts")
    for name in set(CLIPS.values()):
        clip(name)  # skips without ../shared/data
    return {codec: make_excerpt(codec, folder) for codec in CLIPS}


@pytest.mark.parametrize("codec", CLIPS)
def test_random_corruptions_end_in_a_good_output_or_a_clear_error(codec, tmp_path):
    clip(CLIPS[codec])
    results = fuzz(codec, range(QUICK_CASES), tmp_path)
    bad = [r for r in results if r.outcome in (Outcome.CRASH, Outcome.HANG)]
    assert not bad, "\n".join(f"seed {r.seed} {r.corruptions}: {r.outcome.value}: {r.detail}" for r in bad)
    counts = Counter(r.outcome for r in results)
    assert counts[Outcome.GOOD] and counts[Outcome.CLEAR_ERROR], counts  # both paths were exercised
    assert len({name for r in results for name in r.corruptions}) >= 6


@pytest.mark.parametrize("codec,seed", [("h264", 3), ("hevc", 2), ("vp9", 1)])
def test_the_console_script_on_corrupted_clips(excerpts, tmp_path, codec, seed):
    damaged = tmp_path / f"damaged{excerpts[codec].suffix}"
    corrupt(excerpts[codec], damaged, seed)
    output = tmp_path / "fixed.mp4"
    proc = subprocess.run([str(Path(sys.executable).parent / "conceal"), str(damaged), "-o", str(output), "--json",
                           "--preset", "ultrafast"], check=False, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert "Traceback" not in proc.stderr, proc.stderr
    if proc.returncode == 0:
        assert output.stat().st_size > 0 and '"frames"' in proc.stdout
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([damaged.name, output.name])
    else:
        assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert [p.name for p in tmp_path.iterdir()] == [damaged.name]


# --- what the fuzzer found ---------------------------------------------------------------------------------

def remux(excerpt: Path, target: Path, keep=lambda index: True, shift=lambda index: 0,
          metadata: dict[str, str] | None = None, cut=lambda index, data: data) -> Path:
    """`excerpt` stream-copied with some packets left out, cut short or their timestamps moved."""
    stream = read_stream(excerpt)
    with av.open(str(excerpt)) as template, av.open(str(target), "w") as out:
        video = out.add_stream_from_template(template.streams.video[0])
        out.metadata.update(metadata or {})
        for index, sample in enumerate(stream.samples):
            if keep(index):
                packet = av.Packet(cut(index, sample.data))
                packet.pts, packet.dts = sample.pts + shift(index), sample.dts + shift(index)
                packet.time_base, packet.is_keyframe, packet.stream = video.time_base, sample.keyframe, video
                out.mux(packet)
    return target


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_a_keyframe_cut_short_is_decoded_up_to_the_cut(excerpts, tmp_path, codec):
    # A packet cut short, its last NAL unit's length prefix running past its end, was refused whole: with the
    # keyframe cut so, not one picture of the clip could be decoded (h264 seed 451).
    excerpt = excerpts[codec]
    damaged = remux(excerpt, tmp_path / f"cut{excerpt.suffix}",
                    cut=lambda index, data: data[:len(data) * 2 // 3] if index == 0 else data)
    whole = conceal(excerpt, tmp_path / "whole.mkv", codec="ffv1", lossless=True)
    repaired = conceal(damaged, tmp_path / "repaired.mkv", codec="ffv1", lossless=True)
    assert repaired.frames == whole.frames
    with av.open(str(tmp_path / "whole.mkv")) as a, av.open(str(tmp_path / "repaired.mkv")) as b:
        clean, ours = (next(c.decode(video=0)).to_ndarray(format="yuv420p") for c in (a, b))
    rows = np.flatnonzero((clean != ours).any(axis=1))
    assert rows.size and rows[0] >= 64  # the slice data before the cut decoded as it was coded, the rest repaired


def test_a_garbled_timestamp_is_a_jump_not_hours_of_lost_frames(excerpts, tmp_path):
    # One damaged timestamp once made conceal fill a 19-hour gap with rebuilt frames.
    damaged = remux(excerpts["h264"], tmp_path / "jump.mp4", shift=lambda i: 2_000_000_000 if i >= 5 else 0)
    outcome, detail = run_case(damaged, tmp_path / "fixed.mp4", seed=0)
    assert outcome is Outcome.GOOD, detail
    _, unshifted = repair_and_check(excerpts["h264"], tmp_path / "unshifted.mp4", seed=0)
    assert int(detail.split()[0]) <= int(unshifted.split()[0])  # "N frames": no more slots than without the jump


def test_frames_before_the_edit_list_start_get_no_slot(excerpts, tmp_path):
    # Frames at negative times (a damaged composition offset table) are hidden by the edit list, in the
    # input as in the output; they once counted as lost frames, so the output seemed to lack two.
    damaged = remux(excerpts["h264"], tmp_path / "early.mp4", shift=lambda i: -3003)
    with av.open(str(damaged)) as container:
        assert sum(p.is_discard for p in container.demux(video=0)) > 0
    outcome, detail = run_case(damaged, tmp_path / "fixed.mp4", seed=0)
    assert outcome is Outcome.GOOD, detail


def test_undecodable_tags_do_not_stop_a_repair(excerpts, tmp_path):
    # Damaged metadata bytes once escaped as UnicodeDecodeError from av.open.
    damaged = remux(excerpts["h264"], tmp_path / "tags.mp4", metadata={"title": "concealer-test-title"})
    data = damaged.read_bytes()
    damaged.write_bytes(data.replace(b"concealer-test-title", b"concealer-\xff\xfe\xfd-title"))
    with pytest.raises(UnicodeDecodeError):
        av.open(str(damaged))
    assert conceal(damaged, tmp_path / "fixed.mp4", preset="ultrafast").frames > 0


def test_a_damaged_codec_tag_is_a_clear_error(excerpts, tmp_path):
    # A garbled sample entry (avc1) left the stream without a codec context: AttributeError on None.
    damaged = tmp_path / "tag.mp4"
    data = excerpts["h264"].read_bytes()
    entry = data.index(b"avc1", data.index(b"stsd"))  # the sample entry, not the brand in ftyp
    damaged.write_bytes(data[:entry] + b"zq9x" + data[entry + 4:])
    with pytest.raises(InputError, match="codec FFmpeg does not know"):
        conceal(damaged, tmp_path / "fixed.mp4")
    assert list(tmp_path.iterdir()) == [damaged]


def test_no_decodable_picture_is_a_clear_error(excerpts, tmp_path):
    # Without its only keyframe nothing decodes; conceal once failed renaming an output never written.
    damaged = remux(excerpts["hevc"], tmp_path / "nokey.mp4", keep=lambda index: index > 0)
    with pytest.raises(InputError, match="not one picture in it could be decoded"):
        conceal(damaged, tmp_path / "fixed.mp4")
    assert list(tmp_path.iterdir()) == [damaged]


def test_a_stream_that_states_no_size_and_never_decodes_says_so(excerpts, tmp_path):
    # MPEG-TS states no picture size: with the parameter sets of its only keyframe garbled, the encoder was opened
    # at 0x0 and the repair ended saying that H.264 cannot encode 0x0 video (the fuzzer's hevc-ts seeds 5, 7, 10, 11).
    damaged = tmp_path / "d.ts"
    assert corrupt(excerpts["hevc-ts"], damaged, 11) == ("parameter-sets",)
    with pytest.raises(InputError, match="not one picture in it could be decoded"):
        conceal(damaged, tmp_path / "fixed.mp4")
    assert list(tmp_path.iterdir()) == [damaged]


@pytest.mark.parametrize("codec,seed,error", [("hevc", 141, av.error.PatchWelcomeError),
                                              ("vp9", 85, av.error.BlockingIOError)])
def test_packets_the_decoder_refuses_become_lost_frames(excerpts, tmp_path, codec, seed, error):
    # Fuzzer cases whose damaged packets the decoder refused with these errors (not InvalidDataError):
    # they escaped as "the muxer refused the streams".
    damaged = tmp_path / f"damaged{excerpts[codec].suffix}"
    corrupt(excerpts[codec], damaged, seed)
    with av.open(str(damaged)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        refused = []
        for packet in container.demux(stream):
            try:
                packet.decode()
            except av.error.FFmpegError as exc:
                refused.append(type(exc))
    assert error in refused  # still the case the regression is about
    outcome, detail = run_case(damaged, tmp_path / "fixed.mp4", seed)
    assert outcome in (Outcome.GOOD, Outcome.CLEAR_ERROR) and "muxer" not in detail, detail


# --- bitstream parsers on hostile bytes -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def hevc_parameter_sets() -> tuple[bytes, ...]:
    with av.open(str(clip("foreman_cif_hevc.mp4"))) as container:
        return parse_decoder_config(Codec.HEVC, container.streams.video[0].codec_context.extradata).parameter_sets


@pytest.fixture(scope="module")
def hevc_slices() -> list[bytes]:
    """The first slice segment NAL units of the real HEVC clip."""
    path = clip("foreman_cif_hevc.mp4")
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        length_size = parse_decoder_config(Codec.HEVC, stream.codec_context.extradata).length_size
        slices = []
        for packet in container.demux(stream):
            data = bytes(packet)
            slices += [data[u.payload_start:u.end] for u in nal_units(data, Codec.HEVC, Framing.LENGTH_PREFIXED,
                                                                    length_size) if u.nal_type < 32]
            if len(slices) > 20:
                return slices
    return slices


def flip(data: bytes, bits: list[int]) -> bytes:
    out = bytearray(data)
    for bit in bits:
        out[bit // 8 % len(out)] ^= 0x80 >> (bit % 8)
    return bytes(out)


codes = st.one_of(st.tuples(st.just("u"), st.integers(1, 32)).flatmap(
                      lambda t: st.tuples(st.just("u"), st.just(t[1]), st.integers(0, 2 ** t[1] - 1))),
                  st.tuples(st.just("ue"), st.just(0), st.integers(0, 2 ** 31 - 2)),
                  st.tuples(st.just("se"), st.just(0), st.integers(-(2 ** 30), 2 ** 30)))


@given(st.lists(codes, min_size=1, max_size=30))
def test_bit_writer_and_reader_round_trip(fields):
    writer = BitWriter()
    for kind, bits, value in fields:
        if kind == "u":
            writer.u(bits, value)
        else:  # se(v) is ue() of 2v-1 for v > 0 and -2v otherwise (H.264 9.1.1)
            writer.ue(value if kind == "ue" else 2 * value - 1 if value > 0 else -2 * value)
    writer.align_with_one()
    reader = BitReader(writer.to_bytes())
    assert [reader.u(bits) if kind == "u" else reader.ue() if kind == "ue" else reader.se()
            for kind, bits, value in fields] == [value for _, _, value in fields]
    assert reader.u(1) == 1  # the stop bit comes right after the last field


@given(st.binary(max_size=300))
def test_emulation_prevention_leaves_no_start_code_and_undoes_exactly(rbsp):
    escaped = add_emulation_prevention(rbsp)
    assert not any(code in escaped for code in (b"\x00\x00\x00", b"\x00\x00\x01", b"\x00\x00\x02"))
    assert remove_emulation_prevention(escaped) == rbsp


@given(st.lists(st.sampled_from([0, 0, 0, 1, 2, 3, 0x47]), max_size=200).map(bytes))
def test_each_byte_of_an_rbsp_is_found_in_its_escaped_form(rbsp):
    escaped = add_emulation_prevention(rbsp)
    for offset in range(len(rbsp) + 1):
        assert remove_emulation_prevention(escaped[:escaped_offset(escaped, offset)]) == rbsp[:offset]


@given(st.binary(max_size=80), st.sampled_from([Framing.ANNEX_B, Framing.LENGTH_PREFIXED]), st.integers(1, 4))
def test_hevc_framing_of_arbitrary_bytes_only_raises_bitstream_errors(data, framing, length_size):
    try:
        units = nal_units(data, Codec.HEVC, framing, length_size)
    except BitstreamError:
        return
    assert all(0 <= u.start <= u.payload_start < u.end <= len(data) for u in units)
    assert all(u.nal_type == nal_type_of(Codec.HEVC, data[u.payload_start]) for u in units)


@given(st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=4), st.integers(1, 4), st.data())
def test_an_access_unit_cut_anywhere_keeps_every_unit_that_arrived(nals, length_size, data):
    whole = framed(nals, Framing.LENGTH_PREFIXED, length_size)
    assert arrived_units(whole, length_size) is None
    cut = data.draw(st.integers(1, len(whole) - 1))
    kept = arrived_units(whole[:cut], length_size)
    if kept is None:
        return  # nothing of a unit to keep, or the cut fell between two units: left as it is
    units = nal_units(kept, Codec.HEVC, Framing.LENGTH_PREFIXED, length_size)
    payloads = [kept[u.payload_start:u.end] for u in units]
    assert payloads[:-1] == nals[:len(payloads) - 1] and nals[len(payloads) - 1].startswith(payloads[-1])


@given(st.binary(max_size=64), st.sampled_from([Codec.H264, Codec.HEVC]))
def test_codec_records_of_arbitrary_bytes_only_raise_bitstream_errors(data, codec):
    try:
        config = parse_decoder_config(codec, data)
    except BitstreamError:
        return
    assert config is None or 1 <= config.length_size <= 4


@settings(max_examples=300)
@given(st.data())
def test_damaged_hevc_parameter_sets_only_raise_bitstream_errors(hevc_parameter_sets, data):
    nal = data.draw(st.sampled_from(hevc_parameter_sets))
    damaged = data.draw(st.one_of(
        st.lists(st.integers(16, 8 * len(nal) - 1), min_size=1, max_size=8).map(lambda bits: flip(nal, bits)),
        st.integers(2, len(nal)).map(lambda end: nal[:end]),
        st.binary(max_size=40).map(lambda tail: nal[:2] + tail)))
    for parse in (parse_hevc_sps, parse_hevc_pps, HevcParameterSets().add):
        try:
            parse(damaged)
        except BitstreamError:
            pass


@settings(max_examples=300)
@given(st.data())
def test_damaged_hevc_slice_headers_only_raise_bitstream_errors(hevc_parameter_sets, hevc_slices, data):
    sets = HevcParameterSets()
    for nal in hevc_parameter_sets:
        sets.add(nal)
    nal = data.draw(st.sampled_from(hevc_slices))
    head = nal[:48]  # the header is in the first bytes: damage lands there
    damaged = data.draw(st.one_of(
        st.lists(st.integers(16, 8 * len(head) - 1), min_size=1, max_size=8).map(lambda bits: flip(head, bits)),
        st.integers(2, len(head)).map(lambda end: head[:end]),
        st.binary(max_size=40).map(lambda tail: head[:2] + tail))) + nal[48:]
    try:
        parse_hevc_slice_header(damaged, sets)
    except BitstreamError:
        pass


def test_fuzz_script_runs_one_case(tmp_path):
    clip(CLIPS["vp9"])
    proc = subprocess.run([sys.executable, "-m", "benchmarks.fuzz", "--codec", "vp9", "--seed", "4", "--keep",
                           str(tmp_path)], check=False, capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr
    assert "vp9: 1 cases" in proc.stdout and "0 crash, 0 hang" in proc.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["vp9-4.webm"]

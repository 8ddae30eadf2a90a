"""HEVC stream repair: substitutes for lost slice segments keep FFmpeg decoding every picture."""
import json
from fractions import Fraction

import av
import numpy as np
import pytest
from conftest import clip, decode_luma, plain_decode_psnr

from concealer import LossOptions, PacketisationOptions, simulate_loss
from concealer.bitstream import (
    Codec,
    Framing,
    HevcParameterSets,
    nal_type_of,
    nal_units,
    parse_decoder_config,
    parse_hevc_slice_header,
)
from concealer.decode import decode_frames
from concealer.detection import DamageLabel, detect_damage
from concealer.encode import EncoderSettings
from concealer.pipeline import conceal
from concealer.pixel_detection import reference_damage_maps
from concealer.stream_repair import HevcStreamRepair, learn_slice_layout
from concealer.transport import payload_holes
from concealer.truth import load_truth


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """foreman re-encoded by x265 (6 slices per picture, 32x32 CTUs), 10% of its packets lost."""
    return simulate_loss(clip("foreman_cif_hevc.mp4"), tmp_path_factory.mktemp("hevc") / "d.mp4",
                         loss=LossOptions(loss_rate=0.1, burst=2),
                         packets=PacketisationOptions(encoder=EncoderSettings(codec=Codec.HEVC)))


def access_units(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return stream.codec_context.extradata, [bytes(p) for p in container.demux(stream) if p.size]


def slices_of(data):
    """The slice segment NAL units of an access unit (MP4 framing)."""
    return [data[u.payload_start:u.end] for u in nal_units(data, Codec.HEVC, Framing.LENGTH_PREFIXED)
            if u.nal_type <= 21]


def without_slices(data, drop):
    """The access unit without the slice segments whose index (in stream order) is in `drop`."""
    kept, index = [], 0
    for unit in nal_units(data, Codec.HEVC, Framing.LENGTH_PREFIXED):
        if unit.nal_type <= 21:
            index += 1
            if index - 1 in drop:
                continue
        kept.append(data[unit.start:unit.end])
    return b"".join(kept)


def decode_units(extradata, units):
    """Decode raw access units with FFmpeg (one thread): raw Y, U, V planes, in output order."""
    context = av.CodecContext.create("hevc", "r")
    context.extradata = extradata
    context.thread_count = 1
    pictures = []
    for data in [*units, None]:
        for frame in context.decode(av.Packet(data) if data is not None else None):
            pictures.append([np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:plane.height, :plane.width]
                             for plane in frame.planes])
    return pictures


def ctu_addresses(extradata, data):
    parameter_sets = HevcParameterSets()
    for nal in parse_decoder_config(Codec.HEVC, extradata).parameter_sets:
        parameter_sets.add(nal)
    return [parse_hevc_slice_header(nal, parameter_sets)[0].address for nal in slices_of(data)]


def ctu_mask(first, end, shape, ctb=32):
    mask = np.zeros(shape, bool)
    cols = -(-shape[1] // ctb)
    for address in range(first, end):
        y, x = divmod(address, cols)
        mask[y * ctb:(y + 1) * ctb, x * ctb:(x + 1) * ctb] = True
    return mask


@pytest.mark.parametrize("name", ["foreman_cif_hevc.mp4", "reference"])
def test_every_slice_header_parses_to_its_byte_alignment(name, damaged):
    """The full header parse (SPS/PPS-driven layout, RPS, weights, entry points) lands exactly on byte_alignment()."""
    extradata, units = access_units(clip(name) if name != "reference" else damaged.reference)
    parameter_sets = HevcParameterSets()
    for nal in parse_decoder_config(Codec.HEVC, extradata).parameter_sets:
        parameter_sets.add(nal)
    checked = 0
    for data in units:
        for unit in nal_units(data, Codec.HEVC, Framing.LENGTH_PREFIXED):
            nal = data[unit.payload_start:unit.end]
            if nal_type_of(Codec.HEVC, nal[0]) in (33, 34):
                parameter_sets.add(nal)
            if unit.nal_type > 21:
                continue
            header, reader = parse_hevc_slice_header(nal, parameter_sets)
            end = header.header_end
            bits = [(reader.data[(end + i) >> 3] >> (7 - ((end + i) & 7))) & 1 for i in range(8 - end % 8)]
            assert bits == [1] + [0] * (len(bits) - 1)
            checked += 1
    assert checked >= len(units)


def test_intact_stream_is_left_byte_identical(damaged):
    extradata, units = access_units(damaged.reference)
    layout = learn_slice_layout(units, extradata)
    assert layout == tuple(sorted(ctu_addresses(extradata, units[0])))
    repair = HevcStreamRepair(extradata, layout)
    for data in units:
        (unit,) = repair.repair(data)
        assert unit.data == data and not unit.substituted


def test_layouts_that_change_between_pictures_are_not_trusted(damaged):
    """No picture has every address of the union: the layout is unknown, and only the gap before
    the first surviving segment, which is certain, gets a substitute."""
    extradata, units = access_units(damaged.reference)
    thinned = [without_slices(data, {1 + index % 5}) for index, data in enumerate(units)]
    assert learn_slice_layout(thinned, extradata) is None
    repair = HevcStreamRepair(extradata, None)
    addresses = ctu_addresses(extradata, units[1])
    assert [u.substituted for u in repair.repair(without_slices(units[1], {2}))] == [()]
    assert [u.substituted for u in repair.repair(without_slices(units[1], {0, 1}))] == [((0, addresses[2]),)]


def test_lost_first_segment_of_a_p_picture_becomes_a_copy_of_its_reference(damaged):
    """Picture 1 refers to the IDR only, whose blocks are all intra (no co-located motion): every
    substituted CU takes the zero vector, so the lost CTUs are the IDR's, and the others are exact."""
    extradata, units = access_units(damaged.reference)
    clean = decode_units(extradata, units[:3])
    addresses = ctu_addresses(extradata, units[1])
    repair = HevcStreamRepair(extradata, learn_slice_layout(units, extradata))
    repaired = [unit for data in (units[0], without_slices(units[1], {0, 2}), units[2]) for unit in repair.repair(data)]
    assert repaired[1].substituted == ((0, addresses[1]), (addresses[2], addresses[3]))
    pictures = decode_units(extradata, [r.data for r in repaired])
    assert len(pictures) == len(clean)
    for plane, (ours, truth, previous) in enumerate(zip(pictures[1], clean[1], clean[0])):
        scale = 1 if plane == 0 else 2
        lost = ctu_mask(0, addresses[1], ours.shape, 32 // scale) | ctu_mask(addresses[2], addresses[3],
                                                                             ours.shape, 32 // scale)
        assert np.array_equal(ours[lost], previous[lost])
        assert np.array_equal(ours[~lost], truth[~lost])


def test_lost_segment_of_an_idr_becomes_flat_grey(damaged):
    extradata, units = access_units(damaged.reference)
    clean = decode_units(extradata, units[:1])
    addresses = ctu_addresses(extradata, units[0])
    repair = HevcStreamRepair(extradata, learn_slice_layout(units, extradata))
    (repaired,) = repair.repair(without_slices(units[0], {2}))
    assert repaired.substituted == ((addresses[2], addresses[3]),)
    (picture,) = decode_units(extradata, [repaired.data])
    for plane, (ours, truth) in enumerate(zip(picture, clean[0])):
        lost = ctu_mask(addresses[2], addresses[3], ours.shape, 32 if plane == 0 else 16)
        assert (ours[lost] == 128).all()
        assert np.array_equal(ours[~lost], truth[~lost])


def test_damaged_stream_decodes_every_frame_and_knows_what_it_substituted(damaged):
    doc, truth_pts, truth_maps = load_truth(damaged.truth)
    assert doc["summary"]["slices_lost"] and not doc["lost_frames"]
    clean = decode_luma(damaged.reference)
    frames = list(decode_frames(damaged.damaged))
    assert [f.pts for f in frames] == sorted(clean) and not any(f.missing for f in frames)
    lost = dict(zip(truth_pts.tolist(), truth_maps))
    for frame in frames:
        expected = lost.get(frame.pts)
        assert (frame.substituted is None) == (expected is None or not expected.any())
        if frame.substituted is not None:
            assert np.array_equal(frame.substituted, expected)
    plain = decode_luma(damaged.damaged)  # FFmpeg alone: pictures are dropped, repeat the previous one
    assert len(plain) < len(clean)
    previous, repaired_mse, plain_mse = None, [], []
    for frame in frames:
        previous = plain.get(frame.pts, previous)
        reference = clean[frame.pts].astype(float)
        repaired_mse.append(np.mean((frame.luma() - reference) ** 2))
        plain_mse.append(np.mean((previous - reference) ** 2) if previous is not None else np.mean(reference ** 2))
    assert np.mean(repaired_mse) < np.mean(plain_mse)


def test_blind_detection_marks_the_substituted_blocks_lost(damaged):
    _, truth_pts, truth_maps = load_truth(damaged.truth)
    labels = {f.frame.pts: f.damage.labels for f in detect_damage(damaged.damaged, mode="bitstream")}
    for pts, lost in zip(truth_pts.tolist(), truth_maps):
        assert (labels[pts][lost] == DamageLabel.LOST).all()


def test_a_raw_stream_is_stamped_so_its_substituted_blocks_are_found(tmp_path):
    """Raw Annex B HEVC has no timestamps: its pictures are stamped from their order counts, and blind detection
    marks lost exactly the blocks the truth lost, the first picture's included (it found none before)."""
    damaged = simulate_loss(clip("foreman_cif_hevc.mp4"), tmp_path / "d.hevc", loss=LossOptions(loss_rate=0.05, seed=2),
                            packets=PacketisationOptions(encoder=EncoderSettings(codec=Codec.HEVC)))
    doc, truth_pts, truth_maps = load_truth(damaged.truth)
    assert 0 in truth_pts.tolist()  # the case this test is about: the first picture lost slices
    found = [f.damage.labels == DamageLabel.LOST for f in detect_damage(damaged.damaged, mode="bitstream")]
    assert len(found) == len(list(decode_frames(damaged.reference)))
    with av.open(str(clip("foreman_cif_hevc.mp4"))) as source:  # the truth counts in the source clip's time base
        frame_rate = source.streams.video[0].average_rate
    truth = {round(pts * Fraction(*doc["video"]["time_base"]) * frame_rate): lost
             for pts, lost in zip(truth_pts.tolist(), truth_maps)}
    for index, lost in enumerate(found):
        assert np.array_equal(lost, truth.get(index, np.zeros_like(lost)))


def test_picture_lost_whole_is_rebuilt_so_the_pictures_after_it_decode(damaged, tmp_path):
    """Without its rebuild, FFmpeg drops every picture that refers to the lost one until the next IRAP."""
    target = tmp_path / "gap.mp4"
    with av.open(str(damaged.reference)) as source, av.open(str(target), "w") as out:
        stream = source.streams.video[0]
        copy = out.add_stream_from_template(stream)
        lost_pts = None
        for index, packet in enumerate(p for p in source.demux(stream) if p.size):
            if index == 5:
                lost_pts = packet.pts
                continue
            packet.stream = copy
            out.mux(packet)
    clean = decode_luma(damaged.reference)
    assert len(decode_luma(target)) < len(clean) - 1
    frames = list(decode_frames(target))
    assert [f.pts for f in frames] == sorted(clean) and not any(f.missing for f in frames)
    assert [f.pts for f in frames if f.substituted is not None] == [lost_pts]
    assert next(f for f in frames if f.pts == lost_pts).substituted.all()
    # A repeat of the picture before it: moved along the co-located blocks' vectors (the temporal merge candidate),
    # a rebuilt picture with B-frames around it put the pictures decoded from it 2.45 dB below a plain decode.
    shown = {f.pts: f.luma() for f in frames}
    before = max(pts for pts in shown if pts < lost_pts)
    assert np.array_equal(shown[lost_pts], shown[before])


def test_mpeg_ts_packets_merged_by_the_parser_are_split_into_their_pictures(damaged, tmp_path):
    """In MPEG-TS, FFmpeg's parser cuts packets at first_slice_segment_in_pic_flag: a picture whose
    first segment is lost rides in the packet before it. The repair splits it off again."""
    target = tmp_path / "d.ts"
    with av.open(str(damaged.damaged)) as source, av.open(str(target), "w", format="mpegts") as out:
        stream = source.streams.video[0]
        copy = out.add_stream_from_template(stream)
        for packet in source.demux(stream):
            if packet.size:
                packet.stream = copy
                out.mux(packet)
    from_mp4 = list(decode_frames(damaged.damaged))
    from_ts = list(decode_frames(target))
    assert len(from_ts) == len(from_mp4) and not any(f.missing for f in from_ts)
    for mp4, ts in zip(from_mp4, from_ts):
        assert np.array_equal(mp4.luma(), ts.luma())
        assert (mp4.substituted is None) == (ts.substituted is None)


def test_slice_cut_short_over_mpeg_ts_comes_out_as_a_player_shows_it(cut_short, tmp_path):
    """Over MPEG-TS a lost TS packet cuts a slice short, and FFmpeg's HEVC decoder (which conceals nothing) leaves
    the coding tree units after the cut holding its buffer's old samples. Held ahead by `conceal`, the recent buffers
    were busy, and every picture from that one to the end came out 6.7 dB below a plain decode, though no damage was
    found in them: the decoder must hand them out as copies, its buffers reused as a player's. Found and substituted
    after its break (the next tests), the picture and those predicted from it come out well above a plain decode
    (24.99 dB against 20.59; 20.64 with the damage found but the decoder left to make garbage of it)."""
    damaged = cut_short
    assert damaged.summary.frames_lost == 1  # one picture's slice cut short, the rest of it decoded
    summary = conceal(damaged.damaged, tmp_path / "fixed.mkv", codec="ffv1", lossless=True,
                      reference=damaged.reference)
    assert summary.psnr >= plain_decode_psnr(damaged.damaged, damaged.reference) + 3, summary.psnr


@pytest.fixture(scope="module")
def cut_short(tmp_path_factory):
    """foreman_cif_hevc damaged as it is over MPEG-TS (3%, seed 2): seven TS packets lost, the tail of the one slice
    segment of one picture."""
    return simulate_loss(clip("foreman_cif_hevc.mp4"), tmp_path_factory.mktemp("ts") / "d.ts",
                         loss=LossOptions(loss_rate=0.03, burst=2, seed=2),
                         packets=PacketisationOptions(as_is=True, transport="ts"))


def test_lost_ts_packets_are_placed_where_the_truth_lost_bytes(cut_short):
    """The continuity counters tell which PES packet lost bytes and where in its payload: at the truth's lost byte
    range of the slice, counted from where that NAL unit starts in the packet the demuxer hands out."""
    events = [e for e in json.loads(cut_short.truth.read_text())["events"] if e["kind"] == "lost"]
    with av.open(str(cut_short.damaged)) as container:
        stream = container.streams.video[0]
        packets = {packet.pts: bytes(packet) for packet in container.demux(stream) if packet.size}
        holes = payload_holes(cut_short.damaged, stream.id)
    assert [e["frame_pts"] for e in events] == list(holes)
    for event in events:
        units = nal_units(packets[event["frame_pts"]], Codec.HEVC, Framing.ANNEX_B)
        hole = holes[event["frame_pts"]]
        assert hole.length == len(packets[event["frame_pts"]])
        assert hole.offsets == (units[event["nal_index"]].payload_start + event["byte_range"][0],)


def test_p_picture_cut_short_is_substituted_after_its_break_and_lost_from_it(cut_short):
    """The hit picture is a P picture with one segment coded in wavefronts (64x64 CTUs, 6 a row): its data broke off
    in the substream of the third row. The rest of that row from about where, and the rows after it, are substituted
    (copies from the reference, where FFmpeg decoded garbage or left stale samples), and in that row the blocks are
    lost from where the two decodes part: every block that differs from the clean decode is found."""
    expected = reference_damage_maps(cut_short.damaged, cut_short.reference)
    hit = [item for item in detect_damage(cut_short.damaged, mode="bitstream") if item.frame.cut_short is not None]
    assert len(hit) == 1
    frame = hit[0].frame
    (first, split), = frame.cut_short.ranges
    assert first == 12 and 12 < split < 18
    substituted = np.zeros(30, bool)
    substituted[split:] = True
    assert np.array_equal(frame.substituted, np.kron(substituted.reshape(5, 6), np.ones((4, 4), bool))[:18, :22])
    lost = hit[0].damage.labels == DamageLabel.LOST
    damaged = expected[frame.pts]
    assert lost[damaged].all() and np.count_nonzero(lost) <= 1.3 * np.count_nonzero(damaged)


def test_i_picture_cut_short_is_lost_from_where_the_decodes_part_to_its_end(tmp_path):
    """foreman_cif_hevc damaged as it is over MPEG-TS at 5% (seed 10): its first picture, an IDR picture, broke off
    in its one segment. An I picture's substitutes would be flat grey, so none are made: from the first CTU where the
    decodes part to the segment's end all is lost, and every block that differs from the clean decode is found."""
    damaged = simulate_loss(clip("foreman_cif_hevc.mp4"), tmp_path / "d.ts", loss=LossOptions(loss_rate=0.05, seed=10),
                            packets=PacketisationOptions(as_is=True, transport="ts"))
    expected = reference_damage_maps(damaged.damaged, damaged.reference)
    first = next(item for item in detect_damage(damaged.damaged, mode="bitstream") if not item.frame.missing)
    assert first.frame.picture.pict_type == av.video.frame.PictureType.I and first.frame.substituted is None
    assert first.frame.cut_short.ranges == ((0, 30),)
    lost = first.damage.labels == DamageLabel.LOST
    assert lost[expected[first.frame.pts]].all() and lost[-1].all() and not lost[0].any()


def test_holes_are_found_in_m2ts_and_past_junk_as_in_plain_mpeg_ts(cut_short, tmp_path):
    """FFmpeg reads M2TS (a 4-byte timestamp before each packet) as MPEG-TS, and skips bytes that are not packets;
    finding the holes must too (the first reader raised on both, and `conceal` ended in a traceback)."""
    data = cut_short.damaged.read_bytes()
    packets = [data[at:at + 188] for at in range(0, len(data), 188)]
    m2ts, junk = tmp_path / "d.m2ts", tmp_path / "junk.ts"
    m2ts.write_bytes(b"".join(index.to_bytes(4, "big") + packet for index, packet in enumerate(packets)))
    middle = len(packets) // 2
    junk.write_bytes(b"".join(packets[:middle]) + bytes(range(40, 140)) + b"".join(packets[middle:]) + b"\x47\x01")
    with av.open(str(cut_short.damaged)) as container:
        pid = container.streams.video[0].id
    holes = payload_holes(cut_short.damaged, pid)
    assert holes and payload_holes(m2ts, pid) == holes and payload_holes(junk, pid) == holes
    summary = conceal(m2ts, tmp_path / "fixed.mkv", codec="ffv1", lossless=True, reference=cut_short.reference)
    assert summary.frames == 60 and summary.macroblocks["lost"] > 0

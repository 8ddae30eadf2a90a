"""The H.264 lost-frame stand-ins, on real x264 streams decoded by real FFmpeg."""
import av
import numpy as np
import pytest
from hypothesis import given, strategies as st

from concealer import LossOptions, PacketisationOptions, simulate_loss
from concealer.bitstream import Codec, parse_decoder_config, parse_h264_sps
from concealer.decode import NO_CONCEALMENT, decode_frames
from concealer.h264_repair import H264GapRepair, _lost_reference_order
from concealer.media import parsed_packets

from conftest import clip, decode_luma, reference_flags, remux_without


def test_sps_of_the_shared_clips():
    with av.open(str(clip("foreman_cif_h264.mp4"))) as container:
        record = parse_decoder_config(Codec.H264, container.streams.video[0].codec_context.extradata)
    sps = parse_h264_sps(record.parameter_sets[0])
    assert (sps.mbs_wide, sps.map_units_high, sps.frame_mbs_only) == (22, 18, True)
    assert sps.log2_max_frame_num == 4 and sps.poc_type == 0 and sps.log2_max_poc_lsb >= 4
    assert not sps.gaps_allowed  # a gap in frame_num is a lost reference frame


def test_a_lost_frame_across_the_frame_num_wrap_no_longer_hides_the_next_ones(tmp_path):
    """x264 without B-frames derives picture order from frame_num (16 values). Losing the frame whose
    frame_num wraps to 0 makes FFmpeg drop the 14 decodable pictures after it; with the stand-in
    every picture that arrived comes out, and the ones FFmpeg did show are all but unchanged (FFmpeg's
    own stand-in copies the previous picture without its edge padding, which vectors pointing out of
    the picture read: 61 to 64 dB apart)."""
    clean = simulate_loss(clip("foreman_cif_h264.mp4"), tmp_path / "clean.mp4", loss=LossOptions(loss_rate=0)).reference
    damaged = tmp_path / "dropped.mp4"
    timestamps = remux_without(clean, damaged, {16})  # frame 0 is the IDR, frame 16 wraps frame_num to 0
    plain = decode_luma(damaged)
    assert len(plain) == 59 - 14
    slots = list(decode_frames(damaged))
    assert [s.pts for s in slots] == sorted(timestamps)
    assert [s.missing for s in slots] == [False] * 16 + [True] + [False] * 43
    shown_by_both = [s for s in slots if s.pts in plain]
    assert len(shown_by_both) == 59 - 14
    for slot in shown_by_both:
        error = np.mean((slot.luma().astype(float) - plain[slot.pts]) ** 2)
        assert error == 0 or 10 * np.log10(255 ** 2 / error) > 55


@given(st.lists(st.binary(max_size=64), max_size=8))
def test_gap_repair_never_fails_on_garbage(packets):
    repair = H264GapRepair(None)
    with av.open(str(clip("foreman_cif_h264.mp4"))) as container:
        stream = container.streams.video[0]
        for data in packets:
            packet = av.Packet(data)
            packet.stream = stream
            assert repair.packets(packet)[-1] is packet


def test_marked_stand_ins_show_where_later_pictures_were_predicted_from_them(tmp_path):
    """Moved instead of copied, a lost frame's stand-in changes only what was predicted from it: the
    pictures before the gap are the same sample for sample, every later one differs over most of its
    area (foreman pans: about 80% of the pixels, measured), and the slots are the same."""
    clean = simulate_loss(clip("foreman_cif_h264.mp4"), tmp_path / "clean.mp4", loss=LossOptions(loss_rate=0)).reference
    damaged = tmp_path / "dropped.mp4"
    remux_without(clean, damaged, {20})
    plain = list(decode_frames(damaged, concealment=NO_CONCEALMENT))
    marked = list(decode_frames(damaged, concealment=NO_CONCEALMENT, marked_substitutes=True))
    assert [s.pts for s in plain] == [s.pts for s in marked]
    assert [s.missing for s in marked] == [False] * 20 + [True] + [False] * 39
    changed = [np.mean(a.luma() != b.luma()) for a, b in zip(plain, marked) if not a.missing]
    assert changed[:20] == [0] * 20
    assert min(changed[20:]) > 0.5, changed


def test_a_stream_with_b_frames_gets_no_copies_among_its_pictures_even_when_its_header_does_not_say_so():
    """The source clips are x264 streams with B-frames, which reorder the neighbours the copies'
    timestamps would be spread between. Fed straight to the repair (as if the container had not told
    FFmpeg of the reordering), every picture that arrived passes, none of them is hidden, and what is put in
    before them after the first B slice (stand-ins for lost B-pyramid references) is stamped below every real
    timestamp and hidden when it comes out."""
    path = clip("foreman_cif_h264.mp4")
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.has_b_frames  # open_stream_repair tells the repair so
        repair = H264GapRepair(stream.codec_context.extradata)
        packets = [p for p in container.demux(stream) if p.size]
        out = [q for number, p in enumerate(packets) if number % 7 != 3 for q in repair.packets(p)]
    arrived = [p for number, p in enumerate(packets) if number % 7 != 3]
    put_in = [p for p in out if p not in arrived]
    assert [p for p in out if p in arrived] == arrived
    assert not any(repair.hidden(p.pts) for p in packets)
    assert all(p.pts < 0 and repair.stands_in(p) for p in put_in)


def test_in_a_b_frame_stream_the_pictures_after_a_lost_reference_are_marked_drifted(tmp_path):
    """With B-frames nothing is substituted (see above): FFmpeg stands an older picture in for a lost reference
    frame, and every picture decoded after it until the next IDR picture may be predicted from it. A lost
    B picture nothing refers to leaves frame_num alone and marks nothing."""
    path = clip("foreman_cif_h264.mp4")
    flags = reference_flags(path)
    lost_reference = next(n for n, (_, ref) in enumerate(flags) if n > 10 and ref)
    lost_b = next(n for n, (_, ref) in enumerate(flags) if n > 10 and not ref)
    for dropped, expected in ((lost_reference, {pts for pts, _ in flags[lost_reference + 1:]}), (lost_b, set())):
        damaged = tmp_path / f"without-{dropped}.mp4"
        remux_without(path, damaged, {dropped})
        slots = list(decode_frames(damaged))
        assert sum(slot.missing for slot in slots) == 1
        assert {slot.pts for slot in slots if slot.drifted} == expected, dropped


def test_in_a_b_frame_stream_marked_copies_stand_in_for_lost_reference_pictures(tmp_path):
    """Damage detection's second decode stands marked copies in for the lost reference pictures of a stream with
    B-frames (a copy of the last reference picture decoded, as FFmpeg's own stand-in is, moved): for a lost P
    picture and for a lost B-pyramid reference alike, they change exactly the pictures decoded after the loss,
    none of which is then flagged drifted, and every picture still comes out."""
    path = clip("foreman_cif_h264.mp4")
    flags = reference_flags(path)
    shown_last = [max(pts for pts, _ in flags[:n + 1]) for n in range(len(flags))]
    lost_p = next(n for n, (pts, ref) in enumerate(flags) if n > 10 and ref and pts == shown_last[n])
    lost_b = next(n for n, (pts, ref) in enumerate(flags) if n > 10 and ref and pts < shown_last[n])
    for lost in (lost_p, lost_b):
        damaged = tmp_path / f"without-{lost}.mp4"
        remux_without(path, damaged, {lost})
        plain = list(decode_frames(damaged, concealment=NO_CONCEALMENT))
        marked = list(decode_frames(damaged, concealment=NO_CONCEALMENT, marked_substitutes=True))
        assert [s.pts for s in plain] == [s.pts for s in marked] and sum(s.missing for s in marked) == 1
        after = {pts for pts, _ in flags[lost + 1:]}
        assert {s.pts for s in plain if s.drifted} == after and not any(s.drifted for s in marked)
        changed = {a.pts: np.mean(a.luma() != b.luma()) for a, b in zip(plain, marked) if not a.missing}
        assert all(changed[pts] == 0 for pts in changed if pts not in after)
        assert max(changed.values()) > 0.2, changed


def test_a_lost_b_pyramid_reference_is_stood_in_for_where_the_encoder_put_it():
    """FFmpeg gives its stand-in the order count of the picture it copies plus 2; the marked copy of a lone lost
    picture shown before the reference picture decoded last goes halfway between that one and the reference
    picture shown before it, where a B-pyramid's middle picture is."""
    assert _lost_reference_order(32, [24, 20, 32], 26, 1) == 28  # B14 lost between P12 and P16, seen at B13
    assert _lost_reference_order(190, [182, 178, 190], 188, 1) == 186  # B93 lost between P91 and P95
    assert _lost_reference_order(20, [24, 20], 28, 1) == 22  # a lost P picture: FFmpeg's order count
    assert _lost_reference_order(32, [24, 32], 26, 2) == 34  # several lost: FFmpeg's


@pytest.mark.parametrize("kind", ["B-pyramid reference", "P picture", "P picture and the B-pyramid reference after"])
def test_a_lost_reference_picture_of_a_b_frame_stream_is_stood_in_for_better_than_ffmpeg_does(tmp_path, kind):
    """With B-frames FFmpeg stands a copy of the last reference picture decoded in for a lost one. A lost B-pyramid
    reference lies between two reference pictures decoded before it: a B picture of our own in temporal direct mode
    stands in for it instead. A lost P picture is stood in for by a copy of the reference picture shown last (with
    B-pyramids FFmpeg copies the middle B picture before it, two frames earlier). Every picture still comes out,
    nearer the clean decode (foreman without each of its first three such pictures, luma PSNR over the pictures
    decoded after it: B-pyramid references 36.36 / 35.42 / 31.54 dB for FFmpeg's decode, 40.66 / 37.21 / 39.53 so;
    P pictures 18.86 / 19.50 / 18.45 and 20.08 / 22.21 / 19.63; a P picture and the B-pyramid reference decoded
    after it, both lost, 18.87 / 20.04 / 18.97 and 20.04 / 22.15 / 19.60)."""
    path = clip("foreman_cif_h264.mp4")
    flags = reference_flags(path)
    shown_last = [max(pts for pts, _ in flags[:n + 1]) for n in range(len(flags))]
    lost = next(n for n, (pts, ref) in enumerate(flags) if n > 10 and ref and
                (pts < shown_last[n] if kind == "B-pyramid reference" else pts == shown_last[n]))
    dropped = {lost, lost + 1} if kind.endswith("after") else {lost}
    assert all(flags[n][1] for n in dropped)
    damaged = tmp_path / "without-reference.mp4"
    remux_without(path, damaged, dropped)
    clean, plain = decode_luma(path), decode_luma(damaged)
    ours = {slot.pts: slot.luma() for slot in decode_frames(damaged) if not slot.missing}
    assert ours.keys() == plain.keys()
    after = [pts for pts, _ in flags[max(dropped) + 1:]]

    def psnr(pictures):
        return 10 * np.log10(255 ** 2 / np.mean([np.mean((pictures[p].astype(float) - clean[p]) ** 2) for p in after]))

    assert psnr(ours) > psnr(plain) + 1, (psnr(ours), psnr(plain))


def test_a_picture_the_parser_joined_to_the_one_before_is_split_off_and_timed(tmp_path):
    """Over MPEG-TS, a picture whose first slice (and its PES header with it) was lost rides in the packet of the
    picture before: its slices are split off again and timed by their order count (foreman at 5% loss, seed 2: the
    picture at 108108, the one before it lost whole, in the packet of the one at 102102; the repair of that file went
    from 31.04 to 31.96 dB)."""
    result = simulate_loss(clip("foreman_cif_h264.mp4"), tmp_path / "d.ts", loss=LossOptions(loss_rate=0.05, seed=2),
                           packets=PacketisationOptions(transport="ts"))
    clean = set(decode_luma(result.reference))
    with av.open(str(result.damaged)) as container:
        stream = container.streams.video[0]
        assert parsed_packets(container)
        repair = H264GapRepair(stream.codec_context.extradata, parsed=True)
        packets = [packet for packet in container.demux(stream) if packet.size]
        out = [part for packet in packets for part in repair.packets(packet) if not repair.stands_in(part)]
    assert [part.pts for part in out if part.pts not in {p.pts for p in packets}] == [108108]
    assert len({part.pts for part in out}) == len(out) and {part.pts for part in out} <= clean

"""The decoder: FFmpeg's concealment really applies, lost frames come out as placeholders, streams stay whole."""
import gc
import itertools
import threading
from fractions import Fraction

import av
import numpy as np
import pytest

from concealer import LossOptions, PacketisationOptions, simulate_loss
from concealer.bitstream import Codec
from concealer.decode import NO_CONCEALMENT, decode_frames
from concealer.encode import EncoderSettings
from concealer.media import add_stream_copy
from concealer.workers import decoded_ahead
from concealer.errors import InputError
from concealer.truth import load_truth

from conftest import clip, decode_luma, reencode, reference_flags, remux_without


def luma_psnr(frames, clean):
    mse = np.mean([np.mean((frames[p].astype(float) - clean[p]) ** 2) for p in clean if p in frames])
    return 10 * np.log10(255 ** 2 / mse)


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    folder = tmp_path_factory.mktemp("decode")
    pattern = folder / "two-in-ten.txt"
    pattern.write_text("0000000011")  # loses whole one-slice P frames and slices of multi-slice ones
    return simulate_loss(clip("foreman_cif_h264.mp4"), folder / "d.mp4", loss=LossOptions(pattern=pattern),
                         packets=PacketisationOptions(packet_size=1200))


def test_concealment_takes_effect(damaged):
    clean = decode_luma(damaged.reference)
    ours = {f.pts: f.picture.to_ndarray(format="gray") for f in decode_frames(damaged.damaged) if not f.missing}
    off = {f.pts: f.picture.to_ndarray(format="gray")
           for f in decode_frames(damaged.damaged, concealment=NO_CONCEALMENT) if not f.missing}
    with av.open(str(damaged.damaged)) as container:  # PyAV's default threading: slice threads, auto count
        pyav_default = {f.pts: f.to_ndarray(format="gray") for f in container.decode(video=0)}
    assert luma_psnr(ours, clean) > luma_psnr(off, clean) + 1
    assert luma_psnr(ours, clean) > luma_psnr(pyav_default, clean) + 1


def assert_placeholders_where_the_truth_says(result) -> None:
    """Every frame of the clean stream has its slot, and the slots of the frames the truth lost are placeholders."""
    doc, _, _ = load_truth(result.truth)
    assert doc["lost_frames"]
    frames = list(decode_frames(result.damaged))
    assert [f.pts for f in frames] == sorted(decode_luma(result.reference))
    assert [f.pts for f in frames if f.missing] == doc["lost_frames"]


def test_lost_frames_become_placeholders(damaged):
    assert_placeholders_where_the_truth_says(damaged)


def test_lost_frames_sit_where_the_muxer_put_them(tmp_path):
    """29.97 fps in milliseconds (MKV): frame times are rounded, and three frames lost in a row must not be spread
    evenly between their neighbours (the third at 967 ms where the muxer wrote 968)."""
    result = simulate_loss(clip("foreman_cif_h264.mp4"), tmp_path / "d.mkv", loss=LossOptions(loss_rate=0.05))
    doc, _, _ = load_truth(result.truth)
    assert 968 in doc["lost_frames"]
    frames = list(decode_frames(result.damaged))
    assert [f.pts for f in frames] == sorted(decode_luma(result.reference))
    assert [f.pts for f in frames if f.missing] == doc["lost_frames"]


@pytest.mark.parametrize("name", ["foreman_cif_h264.mp4", "foreman_cif_hevc.mp4", "foreman_cif_vp9.webm",
                                  "realshort_320x240_aac.mp4"])
def test_clean_clips_have_no_missing_frames(name):
    frames = list(decode_frames(clip(name)))
    assert len(frames) == len(decode_luma(clip(name)))
    assert not any(f.missing for f in frames)
    assert [f.pts for f in frames] == sorted(f.pts for f in frames)


def held_frames(path, encoder, options):
    """foreman re-encoded by `encoder` with every tenth frame held twice as long, as phones record in low light."""
    return reencode(path, encoder=encoder, options=options, ticks=[6000 if n % 10 == 9 else 3000 for n in range(60)])


def test_a_stated_field_rate_does_not_make_every_other_frame_lost(tmp_path):
    """foreman in MPEG-1 over MPEG-TS at 25 fps, for which FFmpeg states 50 (r_frame_rate)."""
    path = reencode(tmp_path / "mpeg1.ts", encoder="mpeg1video")
    with av.open(str(path)) as probe:
        assert probe.streams.video[0].base_rate == 50
    frames = list(decode_frames(path))
    assert len(frames) == 60 and not any(f.missing for f in frames)


@pytest.mark.parametrize("encoder,options", [
    ("libx264", {"x264-params": "bframes=0"}), ("libx264", {"preset": "medium"}),  # the second with B-frames
    ("libx265", {"x265-params": "log-level=error"})], ids=["h264-p", "h264-b", "hevc"])
def test_a_frame_held_longer_is_not_a_lost_one(tmp_path, encoder, options):
    held = held_frames(tmp_path / "held.mp4", encoder, options)
    frames = list(decode_frames(held))
    assert not any(f.missing for f in frames)
    assert [f.pts for f in frames] == sorted(decode_luma(held))


def test_frames_lost_from_a_variable_rate_stream_are_still_found(tmp_path):
    held = held_frames(tmp_path / "held.mp4", "libx264", {"x264-params": "bframes=0"})
    result = simulate_loss(held, tmp_path / "d.mp4", loss=LossOptions(loss_rate=0.08, seed=3),
                           packets=PacketisationOptions(as_is=True))
    assert_placeholders_where_the_truth_says(result)


def test_frames_lost_from_a_phone_clip_are_counted_and_spread_over_their_gap(tmp_path):
    """fire2, recorded at an irregular rate (7,199-9,007 ticks a frame), damaged as it is: six frames lost in a row
    span a gap that the nominal frame duration puts five in. The picture order counts say six, and each placeholder
    lies within half a frame of the frame it stands for."""
    result = simulate_loss(clip("fire2_720p_rotated.mp4"), tmp_path / "d.mp4", packets=PacketisationOptions(
        as_is=True), loss=LossOptions(loss_rate=0.03, protect_first_idr=True))
    doc, _, _ = load_truth(result.truth)
    clean = sorted(decode_luma(result.reference))
    assert len(doc["lost_frames"]) == 9 and np.ptp(np.diff(clean)) > 1000  # the case this test is about
    frames = list(decode_frames(result.damaged))
    assert len(frames) == len(clean)
    steps = np.diff(clean)
    for frame, pts, step in zip(frames, clean, np.minimum(np.append(steps, steps[-1]), np.insert(steps, 0, steps[0]))):
        assert frame.missing == (pts in doc["lost_frames"])
        assert 2 * abs(frame.pts - pts) < step


@pytest.mark.parametrize("container,loss_rate,seed,idr", [("mp4", 0.05, 4, 242), ("mkv", 0.1, 5, 137)])
def test_a_lost_idr_picture_does_not_make_its_gap_hold_the_next_sequences_order_counts(tmp_path, container, loss_rate,
                                                                                      seed, idr):
    """bikes (B-frames, a keyframe every few seconds) damaged as it is lost an IDR picture, and the order counts of the
    pictures after it begin again from it. Counted on from the sequence before, a one-frame gap held ten lost frames
    (MP4), a three-frame gap six (MKV), off the frame times, and `conceal --reference` found no clean frame there."""
    result = simulate_loss(clip("bikes_640x272.mp4"), tmp_path / f"d.{container}",
                           packets=PacketisationOptions(as_is=True), loss=LossOptions(loss_rate=loss_rate, seed=seed))
    doc, _, _ = load_truth(result.truth)
    clean = sorted(decode_luma(result.reference))
    assert clean[idr] in doc["lost_frames"]  # the case this test is about
    frames = list(decode_frames(result.damaged))
    shown = clean[clean.index(frames[0].pts):]  # frames lost before the first that arrived leave no trace
    assert [f.pts for f in frames] == shown
    assert {f.pts for f in frames if f.missing} >= set(doc["lost_frames"]) & set(shown)  # and undecodable ones


def restamped(source, out, index: int):
    """`source` remuxed into Matroska with picture `index` stamped with the time of the one before it, as a
    muxer that slips does."""
    with av.open(str(source)) as container, av.open(str(out), "w") as sink:
        stream = sink.add_stream_from_template(container.streams.video[0])
        stamps = []
        for number, packet in enumerate(p for p in container.demux(video=0) if p.dts is not None):
            stamps.append(packet.pts)
            if number == index:
                packet.pts = packet.dts = stamps[-2]
            packet.stream = stream
            sink.mux(packet)
    return out


def test_a_picture_stamped_with_its_predecessors_time_takes_the_free_slot_after_it(tmp_path):
    """It was dropped, and its own slot rebuilt as if lost: the picture that arrived goes there instead."""
    source = reencode(tmp_path / "clean.mp4", frames=20, size=(176, 144), options={"x264-params": "bframes=0"})
    clean = decode_luma(source)
    frames = list(decode_frames(restamped(source, tmp_path / "slipped.mkv", 11)))
    assert len(frames) == 20 and not any(f.missing for f in frames)
    for frame, pts in zip(frames, sorted(clean)):
        assert np.array_equal(frame.picture.to_ndarray()[:144], clean[pts])


def test_not_a_video_is_a_clear_error(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a video\n")
    with pytest.raises(InputError, match="not a video|not a readable"):
        list(decode_frames(text))


def test_lost_frames_of_a_millisecond_time_base_get_the_muxers_timestamps(tmp_path):
    """29.97 fps in WebM's milliseconds puts frames at 0, 33, 67, ..., 234: a lost frame's placeholder
    must land on the same rounded timestamp (it was placed at 200 + 33, which no reference frame has)."""
    damaged = tmp_path / "dropped.webm"
    expected = sorted(remux_without(clip("foreman_cif_vp9.webm"), damaged, {7, 8, 20}))
    slots = list(decode_frames(damaged))
    assert [s.pts for s in slots] == expected
    assert {s.pts for s in slots if s.missing} >= {expected[7], expected[8], expected[20]}



def test_lost_frames_of_millisecond_times_in_a_finer_time_base_get_the_clean_streams_timestamps(tmp_path):
    """The WebM's 29.97 fps millisecond times re-encoded into MP4 land in a 1/16000 time base (frame 2 at 67 ms
    is 1072 ticks). A lost frame's placeholder must be rounded on that millisecond clock: it sat at 1062 (and at
    6406 for 400 ms), which no clean frame has, and `conceal --reference` stopped there."""
    result = simulate_loss(clip("foreman_cif_vp9.webm"), tmp_path / "d.mp4",
                           loss=LossOptions(model="gilbert", loss_rate=0.2, burst=2.0, seed=1),
                           packets=PacketisationOptions(encoder=EncoderSettings(codec=Codec.H264)))
    with av.open(str(result.reference)) as container:
        assert container.streams.video[0].time_base == Fraction(1, 16000)
    slots = list(decode_frames(result.damaged))
    assert sum(s.missing for s in slots) > 5
    assert [s.pts for s in slots] == sorted(decode_luma(result.reference))

def test_lost_frames_between_packets_every_other_frame_apart_get_timestamps_of_their_own(tmp_path):
    """A few timestamps all two frames apart (too few to say the frame rate is half the stream's) have a common
    divisor as long as two frames: taken for the clock the times were counted in, it rounded each lost frame onto
    the timestamp of the frame after it, and the MP4 muxer refused the repair (`benchmarks.fuzz`, h264 seed 16)."""
    damaged = tmp_path / "every-other.mp4"
    with av.open(str(clip("foreman_cif_h264.mp4"))) as reader, av.open(str(damaged), "w") as writer:
        video = reader.streams.video[0]
        copy = add_stream_copy(writer, video)
        packets = list(itertools.islice((p for p in reader.demux(video) if p.dts is not None), 8))
        shown = sorted(p.pts for p in packets)
        for packet in packets:
            if shown.index(packet.pts) % 2 == 0:
                packet.stream = copy
                writer.mux(packet)
    slots = list(decode_frames(damaged))
    assert [s.pts for s in slots] == shown[:7]
    assert [s.missing for s in slots] == [False, True] * 3 + [False]


def test_decoding_ahead_gives_the_same_frames_raises_their_errors_and_stops_when_closed(damaged, tmp_path):
    direct = [(f.pts, f.missing) for f in decode_frames(damaged.damaged)]
    assert [(f.pts, f.missing) for f in decoded_ahead(decode_frames(damaged.damaged))] == direct
    ahead = decoded_ahead(decode_frames(damaged.damaged), depth=2)
    next(ahead)
    ahead.close()  # the worker is told to stop and joined
    assert not any(thread.name == "decoded-ahead" for thread in threading.enumerate())
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(InputError):
        next(decoded_ahead(decode_frames(text)))


def test_decodes_with_vectors_keep_the_cycle_collector_off_older_objects_while_they_run(damaged):
    """The frames' reference cycles are collected as they are decoded, without scanning what the process
    held before (torch's objects made each collection 20 times slower); afterwards nothing stays frozen,
    however the decodes overlap."""
    assert gc.get_freeze_count() == 0
    first = decode_frames(damaged.damaged, motion_vectors=True)
    next(first)
    frozen = gc.get_freeze_count()
    assert frozen > 0
    second = decode_frames(damaged.damaged, motion_vectors=True)
    next(second)
    assert 0 < gc.get_freeze_count() <= frozen  # not frozen again: the first decode's frames stay collectable
    for _ in first:
        pass
    assert gc.get_freeze_count() > 0  # the second decode still runs
    second.close()
    assert gc.get_freeze_count() == 0


def test_each_h264_picture_says_whether_later_ones_may_be_predicted_from_it(tmp_path):
    """x264's B-pyramid makes the middle B picture of each run a reference (nal_ref_idc above 0): drift correction
    carries its repair into the pictures decoded after it. Each decoded picture carries its slices' flag."""
    source = reencode(tmp_path / "b.mp4", frames=30, options={"preset": "medium"})
    flags = dict(reference_flags(source))
    frames = list(decode_frames(source))
    assert [f.reference for f in frames] == [bool(flags[f.pts]) for f in frames]
    b_references = [f.pts for f in frames if f.b_picture and f.reference]
    assert b_references and any(f.b_picture and not f.reference for f in frames)
    assert all(f.reference for f in frames if not f.b_picture)


def test_interlaced_pictures_held_with_their_vectors_read_are_what_a_player_decodes(tmp_path):
    """FFmpeg leaves some lost macroblocks of interlaced (MBAFF) B-frame streams unconcealed, holding whatever the
    buffer it was handed held: pictures held by the caller, or kept alive by their side data until the cycle
    collector ran, changed what later damaged pictures showed (foreman at 5% loss, seed 4: 44 of 60 pictures
    differed from a plain decode's). Each interlaced picture is copied out of the decoder and its vectors read through
    a side-data container of their own, so every picture is the one a player's decoder shows."""
    damaged = simulate_loss(clip("foreman_cif_h264.mp4"), tmp_path / "d.mp4", loss=LossOptions(loss_rate=0.05, seed=4),
                            packets=PacketisationOptions(encoder=EncoderSettings(interlaced=True, bframes=3)))
    held = list(decode_frames(damaged.damaged, motion_vectors=True))
    plain = decode_luma(damaged.damaged, ec="guess_mvs+deblock")
    assert sum(not slot.missing for slot in held) == len(plain) > 50
    assert all(np.array_equal(slot.luma(), plain[slot.pts]) for slot in held if not slot.missing)


def test_10_bit_pictures_held_are_what_a_player_decodes(tmp_path):
    """Without concealment (the bitstream detector's second decode) FFmpeg leaves lost macroblocks holding whatever
    its buffer held, and progressive 10-bit pictures held by the caller kept recent buffers busy: the damage map, and
    `conceal`, varied from run to run (foreman in 10 bits at 5%, seed 2: 25.42 and 26.42 dB). Copied out as they
    come, as interlaced pictures are, each is the one a player's decoder shows."""
    source = reencode(tmp_path / "ten.mp4", pix_fmt="yuv420p10le",
                      options={"preset": "fast", "x264-params": "keyint=60:slice-max-size=1200:bframes=0"})
    loss = LossOptions(loss_rate=0.05, seed=2, protect_first_idr=True)
    damaged = simulate_loss(source, tmp_path / "d.mp4", loss=loss, packets=PacketisationOptions(as_is=True))
    held = list(decode_frames(damaged.damaged, concealment=NO_CONCEALMENT))
    plain = decode_luma(damaged.damaged, ec="0")
    assert sum(not slot.missing for slot in held) == len(plain) > 50
    assert all(np.array_equal(slot.luma(), plain[slot.pts]) for slot in held if not slot.missing)

"""VP9 and AV1, which lose whole frames: simulate-loss damages them, decoding finds which pictures a
loss made worthless, and conceal rebuilds them, on real streams encoded by libvpx and SVT-AV1."""
import av
import numpy as np
import pytest
from hypothesis import given, strategies as st

from concealer import LossOptions, PacketisationOptions, conceal, simulate_loss
from concealer.bitstream import BitstreamError, Codec
from concealer.decode import decode_frames
from concealer.detection import DamageLabel, detect_damage
from concealer.encode import EncoderSettings
from concealer.truth import load_truth
from concealer.vp9 import ReferenceTracker, Verdict, parse_frame_header, superframe_frames

from benchmarks.conceal_quality import plain_ffmpeg_psnr
from conftest import clip, decode_luma, remux_without, stream_packets


def encode_vp9(tmp_path, name: str, frames: int, **options: str):
    """foreman's first `frames` frames encoded by libvpx-vp9 in real-time mode with `options`."""
    target = tmp_path / name
    with av.open(str(clip("foreman_cif_h264.mp4"))) as reader, av.open(str(target), "w") as writer:
        source = reader.streams.video[0]
        stream = writer.add_stream("libvpx-vp9", rate=source.average_rate)
        stream.width, stream.height, stream.pix_fmt = source.width, source.height, "yuv420p"
        stream.options = {"crf": "32", "b": "0", "deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0",
                          **options}
        for number, frame in enumerate(reader.decode(source)):
            if number == frames:
                break
            frame.pict_type = av.video.frame.PictureType.NONE
            writer.mux(stream.encode(frame))
        writer.mux(stream.encode(None))
    return target


def verdicts(packets: list[bytes], lost: set[int]) -> str:
    tracker = ReferenceTracker()
    out = []
    for number, packet in enumerate(packets):
        if number in lost:
            tracker.lost()
            out.append("-")
        else:
            out.append(tracker.packet(packet).value[0])
    return "".join(out)


def test_headers_of_a_real_vp9_stream():
    packets = stream_packets(clip("foreman_cif_vp9.webm"), "video")
    headers = [parse_frame_header(f) for p in packets for f in superframe_frames(p)]
    assert headers[0].keyframe and headers[0].refresh_frame_flags == 0xFF
    assert not any(h.keyframe for h in headers[1:])  # one keyframe in these 60 frames
    assert all(h.ref_frame_idx and max(h.ref_frame_idx) < 8 for h in headers[1:])
    assert verdicts(packets, set()) == "c" * len(packets)


def test_after_a_lost_frame_vp9_decodes_garbage_and_the_tracker_says_so(tmp_path):
    """libvpx adapts its probabilities from frame to frame: every frame after a loss is parsed with the
    wrong ones. The tracker calls them undecodable, and their decode is far from the clean one."""
    source = clip("foreman_cif_vp9.webm")
    assert verdicts(stream_packets(source, "video"), {5}) == "ccccc-" + "u" * 54
    damaged = tmp_path / "dropped.webm"
    remux_without(source, damaged, {5})
    clean, broken = decode_luma(source), decode_luma(damaged)
    later = sorted(broken)[5:]
    psnr = [10 * np.log10(255 ** 2 / np.mean((clean[t].astype(float) - broken[t]) ** 2)) for t in later]
    assert max(psnr) < 20
    slots = list(decode_frames(damaged))
    assert len(slots) == 60 and all(s.missing for s in slots[5:]) and not any(s.missing for s in slots[:5])


def test_error_resilient_vp9_only_drifts_after_a_loss(tmp_path):
    """Error-resilient frames reset the probabilities: after a loss they decode, from a stale reference."""
    stream = encode_vp9(tmp_path, "resilient.webm", 12, **{"error-resilient": "1"})
    assert verdicts(stream_packets(stream, "video"), {4}) == "cccc-" + "d" * 7
    damaged = tmp_path / "dropped.webm"
    remux_without(stream, damaged, {4})
    slots = list(decode_frames(damaged))
    assert [s.missing for s in slots] == [False] * 4 + [True] + [False] * 7
    assert [s.drifted for s in slots] == [False] * 5 + [True] * 7
    labels = [item.damage.labels for item in detect_damage(damaged)]
    assert all((m == DamageLabel.PROPAGATED).all() for m in labels[5:])  # damaged, nobody knows where
    assert not any(m.any() for m in labels[:4]) and (labels[4] == DamageLabel.MISSING_FRAME).all()


def test_a_keyframe_ends_the_damage(tmp_path):
    stream = encode_vp9(tmp_path, "gop.webm", 12, g="6", keyint_min="6")
    assert verdicts(stream_packets(stream, "video"), {2}) == "cc-uuu" + "c" * 6


def test_superframe_index_splits_a_packet():
    packets = stream_packets(clip("foreman_cif_vp9.webm"), "video")
    first, second = packets[1], packets[2]
    marker = 0b11000000 | (3 << 3) | 1  # 4 bytes per size, 2 frames
    index = bytes([marker]) + len(first).to_bytes(4, "little") + len(second).to_bytes(4, "little") + bytes([marker])
    assert superframe_frames(first + second + index) == [first, second]
    assert superframe_frames(first) == [first]


@given(st.binary(max_size=80))
def test_vp9_parsing_fails_only_as_a_bitstream_error(data):
    try:
        for frame in superframe_frames(data):
            parse_frame_header(frame)
    except BitstreamError:
        pass
    tracker = ReferenceTracker()
    assert tracker.packet(data) in Verdict


@pytest.mark.parametrize("codec", [Codec.VP9, Codec.AV1])
def test_simulate_and_conceal_frame_codecs(tmp_path, codec):
    """simulate-loss loses VP9/AV1 frames whole and says so; conceal gives back every frame, and
    no worse than a plain FFmpeg decode that repeats the last picture it could show."""
    damaged = tmp_path / f"damaged_{codec.value}.mkv"
    loss = LossOptions(loss_rate=0.1, seed=3, protect_first_idr=True)
    result = simulate_loss(clip("foreman_cif_h264.mp4"), damaged, loss=loss,
                           packets=PacketisationOptions(encoder=EncoderSettings(codec=codec, gop=15)))
    doc, pts, maps = load_truth(result.truth)
    assert doc["video"]["codec"] == codec.value
    assert result.summary.frames == 60 and 0 < result.summary.frames_lost == len(doc["lost_frames"])
    assert all(m.all() for m in maps)  # a frame is lost whole or arrives whole
    with av.open(str(damaged)) as container:
        arrived = {p.pts for p in container.demux(video=0) if p.dts is not None}
    assert len(arrived) == 60 - result.summary.frames_lost and not arrived & set(doc["lost_frames"])
    summary = conceal(damaged, tmp_path / "fixed.mkv", reference=result.reference, codec="ffv1")
    assert summary.frames == 60 and summary.frames_rebuilt >= result.summary.frames_lost
    assert summary.drift == "none"  # what their decoders predict from after a loss is unknown: nothing is carried
    assert summary.psnr >= plain_ffmpeg_psnr(damaged, result.reference) - 0.01


def test_a_vp9_stream_is_damaged_as_it_is(tmp_path):
    """--as-is loses the input's own VP9 frames: what arrives is bit-exact, and the truth lists the rest."""
    source = clip("foreman_cif_vp9.webm")
    result = simulate_loss(source, tmp_path / "damaged.webm", loss=LossOptions(loss_rate=0.2, seed=1),
                           packets=PacketisationOptions(as_is=True))
    doc, _, _ = load_truth(result.truth)
    assert doc["video"]["codec"] == "vp9" and doc["video"]["mode"] == "as-is"
    original = dict(zip(remux_without(source, tmp_path / "copy.webm", set()), stream_packets(source, "video")))
    with av.open(str(result.damaged)) as container:
        arrived = {p.pts: bytes(p) for p in container.demux(video=0) if p.size}
    assert 0 < len(doc["lost_frames"]) == len(original) - len(arrived)
    assert all(original[pts] == data for pts, data in arrived.items())


def test_lost_frames_land_on_the_muxers_timestamps_when_the_first_frame_is_lost(tmp_path):
    """29.97 fps in WebM's milliseconds: frame 45 is at 1501.5 ms, written 1502. With frames 0-30 gone
    (the keyframe lost) the first picture out is frame 31 at 1034 ms; the grid must still be the one
    through zero, not through 1034, which would put the lost frame 45 at 1501."""
    stream = encode_vp9(tmp_path, "gop31.webm", 50, g="31", keyint_min="31")
    damaged = tmp_path / "dropped.webm"
    timestamps = remux_without(stream, damaged, {0, 45})
    assert timestamps[45] == 1502
    slots = list(decode_frames(damaged))
    assert [s.pts for s in slots] == sorted(timestamps)[1:]  # a lost first packet leaves no trace
    assert [s.missing for s in slots] == [True] * 30 + [False] * 14 + [True] * 5


def test_a_run_of_lost_frames_longer_than_the_look_ahead_is_rebuilt_toward_the_keyframe_after_it(tmp_path):
    """After a loss every VP9 frame up to the next keyframe is lost; the repair sees the next picture that arrived
    only LOOK_AHEAD frames ahead, so the run's first frames repeated the last picture. The keyframe backfill
    rebuilds the whole run as a blend of the last picture and the keyframe by their place in time."""
    stream = encode_vp9(tmp_path, "gop30.webm", 60, g="30", keyint_min="30")
    assert verdicts(stream_packets(stream, "video"), {3}) == "ccc-" + "u" * 26 + "c" * 30
    damaged = tmp_path / "dropped.webm"
    remux_without(stream, damaged, {3})
    fixed = tmp_path / "fixed.mkv"
    summary = conceal(damaged, fixed, codec="ffv1", lossless=True)
    assert summary.frames == 60 and summary.frames_rebuilt == 27
    clean, ours = (list(decode_luma(path).values()) for path in (stream, fixed))
    run = range(3, 30)

    def psnr(shown) -> float:
        return 10 * np.log10(255 ** 2 / np.mean([np.mean((clean[n].astype(float) - shown(n)) ** 2) for n in run]))

    assert psnr(lambda n: ours[n]) > psnr(lambda n: ours[2]) + 1  # better than repeating the last picture
    for n in run:
        position = (n - 2) / 28
        blend = (1 - position) * ours[2].astype(float) + position * ours[30]
        assert np.abs(ours[n] - blend).max() <= 1


def test_frames_lost_up_to_the_end_of_the_stream_are_rebuilt(tmp_path):
    """With no keyframe after a loss, every VP9 frame from it to the end is undecodable: the last frame slots have
    nothing after them, and are rebuilt all the same."""
    damaged = tmp_path / "damaged.mkv"
    result = simulate_loss(clip("foreman_cif_h264.mp4"), damaged,
                           loss=LossOptions(loss_rate=0.1, seed=3, protect_first_idr=True),
                           packets=PacketisationOptions(encoder=EncoderSettings(codec=Codec.VP9, gop=60)))
    assert 0 < result.summary.frames_lost < 30
    summary = conceal(damaged, tmp_path / "fixed.mkv", reference=result.reference, codec="ffv1")
    assert summary.frames == 60 and summary.frames_rebuilt > 30


def test_frames_before_the_first_picture_that_decodes_all_come_out(tmp_path):
    """A VP9 stream whose first keyframe was lost: its next 29 frames cannot be decoded until the next keyframe. Each
    becomes a copy of that keyframe's picture, on its own time; only the last 16 came out before (the look-ahead),
    the rest were dropped and the repair ran short of the input by 13 frames."""
    source = encode_vp9(tmp_path, "gop30.webm", 60, g="30", keyint_min="30")
    damaged = tmp_path / "first-keyframe-lost.webm"
    timestamps = remux_without(source, damaged, {0})
    summary = conceal(damaged, tmp_path / "fixed.mkv", codec="ffv1")
    with av.open(str(tmp_path / "fixed.mkv")) as repaired:
        shown = [frame.pts for frame in repaired.decode(video=0)]
    assert summary.frames == 59 and summary.frames_rebuilt == 29 and shown == timestamps[1:], (summary, shown)
    pictures = decode_luma(tmp_path / "fixed.mkv")
    assert len({pictures[pts].tobytes() for pts in shown[:30]}) == 1

"""The decode whose references are our repairs, on real x264 streams decoded by real FFmpeg."""
import av
import numpy as np
import pytest

from concealer import LossOptions, PacketisationOptions, conceal, simulate_loss
from concealer.concealment import Picture
from concealer.decode import decode_frames, plane_samples
from concealer.metrics import psnr
from concealer.reference_repair import open_reference_repair
from concealer.truth import load_truth

from conftest import clip, decode_luma, plain_decode_psnr, reencode


def _encode(source, target, frames: int, params: str, size: tuple[int, int] | None = None,
            pix_fmt: str = "yuv420p") -> None:
    """The first `frames` frames of `source` as H.264 without B-frames, in packet-sized slices, scaled to
    `size` (width, height) if given."""
    with av.open(str(source)) as reader, av.open(str(target), "w") as writer:
        video = reader.streams.video[0]
        stream = writer.add_stream("libx264", rate=video.average_rate)
        stream.width, stream.height = size or (video.width, video.height)
        stream.pix_fmt = pix_fmt
        stream.options = {"preset": "fast", "x264-params": f"bframes=0:slice-max-size=700:{params}"}
        for number, frame in enumerate(reader.decode(video)):
            if number == frames:
                break
            frame.pict_type = av.video.frame.PictureType.NONE
            writer.mux(stream.encode(frame.reformat(width=stream.width, height=stream.height, format=pix_fmt)))
        writer.mux(stream.encode(None))


@pytest.mark.parametrize("entropy,size", [("cabac=1", None), ("cabac=0", None), ("cabac=1", (344, 280)),
                                          ("cabac=1:tff=1", None), ("cabac=0:tff=1", None)])
def test_every_picture_made_non_reference_and_replaced_by_itself_decodes_as_the_stream(tmp_path, entropy, size):
    """Each picture fed without its reference marking (its slices rewritten, CABAC and CAVLC alike) decodes
    as it did, and the I_PCM picture of its own samples that follows takes its place among the references
    exactly: every later picture too is the same, sample for sample. Also when the picture is cropped from
    whole macroblocks (344x280 of 352x288): the rows and columns cropped off, which vectors may point into,
    are the decoder's own; and in interlaced pictures (tff: MBAFF, macroblocks coded in vertical pairs)."""
    stream = tmp_path / "stream.mp4"
    _encode(clip("foreman_cif_h264.mp4"), stream, 30, entropy, size)
    plain = decode_luma(stream)
    with open_reference_repair(stream) as repair:
        for pts in sorted(plain):
            frame = repair.picture(pts, lost=True)
            assert frame.pts == pts and (frame.width, frame.height) == (plain[pts].shape[1], plain[pts].shape[0])
            assert frame.key_frame == (pts == min(plain))  # what the keyframe backfill starts from
            assert np.array_equal(frame.reformat(format="yuv420p").to_ndarray()[:frame.height], plain[pts])
            repair.repaired(Picture.from_frame(frame))


@pytest.mark.parametrize("params", ["cabac=1", "cabac=0", "cabac=1:tff=1"])
def test_10_bit_pictures_replaced_by_their_i_pcm_selves_decode_as_the_stream(tmp_path, params):
    """In 10 bits each I_PCM sample is a 10-bit string: the pictures the repair left alone are written as decoded,
    and every later picture is the stream's own, every 10-bit sample of it (CABAC, CAVLC, MBAFF)."""
    stream = tmp_path / "ten.mp4"
    _encode(clip("foreman_cif_h264.mp4"), stream, 20, params, pix_fmt="yuv420p10le")
    with av.open(str(stream)) as container:
        plain = {frame.pts: [plane_samples(frame, index).copy() for index in range(3)]
                 for frame in container.decode(video=0)}
    with open_reference_repair(stream) as repair:
        for pts in sorted(plain):
            frame = repair.picture(pts, lost=True)
            assert frame.format.name == "yuv420p10le"
            assert all(np.array_equal(plane_samples(frame, index), plain[pts][index]) for index in range(3))
            repair.repaired(Picture.from_frame(frame))


def test_10_bit_streams_are_redecoded_from_the_repairs(tmp_path):
    """foreman in 10 bits at 5% loss, seed 1: carried along the vectors (I_PCM pictures were 8-bit only) the repair
    came to 26.87 dB, a plain decode to 26.29; redecoded, 35.14."""
    source = reencode(tmp_path / "ten.mp4", pix_fmt="yuv420p10le",
                      options={"preset": "fast", "x264-params": "keyint=60:slice-max-size=1200:bframes=0"})
    result = simulate_loss(source, tmp_path / "d.mp4", loss=LossOptions(loss_rate=0.05, seed=1, protect_first_idr=True),
                           packets=PacketisationOptions(as_is=True))
    summary = conceal(result.damaged, tmp_path / "fixed.mkv", codec="ffv1", reference=result.reference)
    assert summary.drift == "redecode" and summary.psnr > plain_decode_psnr(result.damaged, result.reference) + 4


@pytest.mark.parametrize("interlaced", [False, True])
def test_with_perfect_repairs_every_later_picture_is_the_clean_one(tmp_path, interlaced):
    """Lost blocks and frames repaired from the clean stream (an oracle): every picture that lost nothing
    comes out exactly as the clean decode has it (FFmpeg's own decode: 27.7 dB from it, measured). Also for
    interlaced (MBAFF) pictures, their lost frames stood in for by copies (h264_repair) that the rebuilds replace:
    damaged as they are, whose truth marks the macroblock pairs their lost slices covered."""
    if interlaced:
        source = tmp_path / "mbaff.mp4"
        _encode(clip("foreman_cif_h264.mp4"), source, 60, "tff=1:keyint=60")
        result = simulate_loss(source, tmp_path / "damaged.mp4", loss=LossOptions(loss_rate=0.1, burst=2, seed=1),
                               packets=PacketisationOptions(as_is=True))
    else:
        result = simulate_loss(clip("foreman_cif_h264.mp4"), tmp_path / "damaged.mp4",
                               loss=LossOptions(loss_rate=0.1, burst=2, seed=1))
    clean = {frame.pts: frame for frame in decode_frames(result.reference)}
    _, truth_pts, truth_maps = load_truth(result.truth)
    lost = {int(pts) for pts, blocks in zip(truth_pts, truth_maps) if blocks.any()}
    errors, plain_errors, missing = [], [], 0
    plain = decode_luma(result.damaged)
    with open_reference_repair(result.damaged) as repair:
        for slot in decode_frames(result.damaged):
            correct = Picture.from_frame(clean[slot.pts].picture)
            if slot.missing:
                missing += 1
                repair.rebuilt(slot.pts, correct)
                continue
            frame = repair.picture(slot.pts, lost=slot.pts in lost)
            if slot.pts in lost:
                repair.repaired(correct)
            else:
                luma = frame.reformat(format="yuv420p").to_ndarray()[:frame.height].astype(float)
                errors.append(np.mean((luma - correct.y) ** 2))
                plain_errors.append(np.mean((plain[slot.pts] - correct.y.astype(float)) ** 2))
    assert len(lost) > 3 and missing and len(errors) > 40
    assert max(errors) == 0 and psnr(float(np.mean(plain_errors))) < 35


@pytest.mark.parametrize("name", ["foreman_cif_h264.mp4", "foreman_cif_hevc.mp4", "foreman_cif_vp9.webm"])
def test_streams_it_cannot_rewrite_are_left_to_carrying(name):
    """B-frames (the source clips' own H.264), HEVC and VP9: no redecode, conceal carries instead."""
    assert open_reference_repair(clip(name)) is None


@pytest.mark.parametrize("suffix", [".ts", ".h264"])
def test_annex_b_streams_are_redecoded(tmp_path, suffix):
    """MPEG-TS carries start codes and timestamps; a raw Annex B file has no timestamps, and both decodes stamp its
    pictures alike (concealer.h264_repair), which keeps them in step."""
    stream = tmp_path / "stream.mp4"
    _encode(clip("foreman_cif_h264.mp4"), stream, 10, "cabac=1")
    target = tmp_path / f"stream{suffix}"
    with av.open(str(stream)) as reader, av.open(str(target), "w") as writer:
        copy = writer.add_stream_from_template(reader.streams.video[0])
        for packet in reader.demux(reader.streams.video[0]):
            if packet.dts is not None:
                packet.stream = copy
                writer.mux(packet)
    repair = open_reference_repair(target)
    assert repair is not None
    with repair:
        assert repair.picture(0, lost=False) is not None


def test_a_damaged_codec_record_leaves_the_stream_to_carrying(tmp_path):
    """An SPS in the MP4's codec record garbled past its level (its parser raises): no redecode, no error."""
    stream = tmp_path / "stream.mp4"
    _encode(clip("foreman_cif_h264.mp4"), stream, 5, "cabac=1")
    data = bytearray(stream.read_bytes())
    record = data.find(b"avcC") + 4
    sps_length = int.from_bytes(data[record + 6:record + 8], "big")
    data[record + 12:record + 8 + sps_length] = bytes(sps_length - 4)  # zeros: no exp-Golomb code ends
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    assert open_reference_repair(damaged) is None

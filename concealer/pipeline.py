"""One-call library API over the stages, used by the CLI, the tests and the benchmarks."""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TextIO

import av
import cv2
import numpy as np

from .concealment import (DECODER_CONCEALING_CODECS, DEFAULT_CONCEALER, FillShare, Neighbours, NetworkConcealer,
                          Picture, keeps_decoded_samples, make_concealer, same_scene, scene_cut_fill)
from .decode import DecodedFrame, decode_frames
from .detection import (
    MB,
    DamagedFrame,
    DamageLabel,
    DamageMap,
    blocks_to_pixels,
    detect_damage,
    write_damage_maps,
)
from .drift import CARRIED_CODECS, DriftCorrector, FollowingCarry, HeldFrame, KeyframeBackfill, predicted_from_holes
from .encode import EncoderSettings, add_output_encoder
from .errors import InputError, Interrupted, UsageError
from .heap import tune_malloc
from .media import (
    AtomicOutputs,
    add_stream_copy,
    copy_attachments,
    content_tags,
    frame_count,
    is_copied,
    nothing_decodes,
    open_output,
    open_video_input,
    plan_copies,
    probe_video_format,
)
from .metrics import FrameScores, frame_scores, json_safe, psnr
from .overlay import OverlayWriter
from .rebuild import RepeatedPictures, rebuild_missing
from .reference_repair import open_reference_repair
from .workers import decoded_ahead, written_behind

# The damaged-macroblock counts of summaries and reports, by kind.
MACROBLOCK_KINDS = {"lost": DamageLabel.LOST, "propagated": DamageLabel.PROPAGATED,
                    "missing_frame": DamageLabel.MISSING_FRAME}


@dataclass
class DetectionSummary:
    """What the damage maps found, counted frame slot by frame slot."""

    frames: int = 0
    damaged_frames: int = 0
    missing_frames: int = 0
    macroblocks: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MACROBLOCK_KINDS, 0))

    def add(self, damage: DamageMap) -> dict[str, int]:
        """Count one frame slot in; returns its own damaged macroblocks by kind."""
        self.frames += 1
        if damage.labels.size and (damage.labels == DamageLabel.MISSING_FRAME).all():
            self.missing_frames += 1
        elif damage.damaged.any():
            self.damaged_frames += 1
        counts = np.bincount(damage.labels.ravel(), minlength=len(DamageLabel))
        frame = {kind: int(counts[label]) for kind, label in MACROBLOCK_KINDS.items()}
        for kind, count in frame.items():
            self.macroblocks[kind] += count
        return frame


def detect(source: Path, masks_out: Path, *, overlay: Path | None = None, mode: str = "auto",
           truth: Path | None = None, overwrite: bool = False) -> DetectionSummary:
    """Write the damage maps of `source` (and optionally a video with them drawn on)."""
    if Path(masks_out).suffix != ".npz":
        raise UsageError(f"--masks-out must name an .npz file, not {masks_out}")
    video_format = probe_video_format(source)
    summary = DetectionSummary()
    maps: list[DamageMap] = []
    with _stop_on_interrupt(source, summary), \
            AtomicOutputs([masks_out] + ([overlay] if overlay else []), overwrite, inputs=[source, truth]) as outputs, \
            contextlib.ExitStack() as stack:
        writer = None
        if overlay:
            writer = OverlayWriter(stack.enter_context(open_output(outputs[overlay])), video_format.width,
                                   video_format.height, video_format.rate, video_format.time_base)
        for damaged in detect_damage(source, mode=mode, truth=truth):
            maps.append(damaged.damage)
            summary.add(damaged.damage)
            if writer:
                writer.write(damaged)
        if writer:
            writer.close()
        stack.close()
        write_damage_maps(maps, outputs[masks_out])
        outputs.commit()
    return summary


@dataclass
class ConcealSummary(DetectionSummary):
    """What `conceal` did: the damage found, the frames rebuilt, and how fast."""

    frames_rebuilt: int = 0
    drift: str = ""  # the drift correction that ran: `redecode` falls back to `carry` where the stream needs it
    seconds: float = 0.0
    # Against --reference, measured on the repaired pictures before they are re-encoded:
    psnr: float | None = None  # sequence luma PSNR, from the mean MSE over every reference frame (inf: identical)
    ssim: float | None = None  # mean luma SSIM, likewise
    # Reference frames with no frame slot in the repair (lost before the first picture that arrived or after the
    # last, which nothing in the stream tells), scored against the picture a player shows then: the one before.
    reference_unmatched: int = 0
    worst_psnr: float | None = None  # the lowest frame PSNR, and where that frame is
    worst_pts: int | None = None
    worst_time: float | None = None  # seconds
    # Streams of the input the output's format cannot hold (data, other video, attachments), described.
    streams_left_out: list[str] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    def as_json(self) -> dict:
        """The summary as JSON values (infinite PSNR as null), frames/s included."""
        return json_safe({**asdict(self), "fps": self.fps})


@dataclass(frozen=True)
class FrameRecord:
    """One frame slot of a repair: a row of the `report` file."""

    pts: int
    time: float  # seconds
    macroblocks: dict[str, int]  # damaged macroblocks by kind
    rebuilt: bool  # the frame never arrived and was rebuilt
    psnr: float | None  # luma PSNR against the reference (inf: identical; None without a reference)
    ssim: float | None


DRIFT_STRATEGIES = ("redecode", "carry", "reconceal", "none")
# Frame slots looked ahead for the next picture that arrived (a run of lost frames longer than
# this is rebuilt by repeating the last picture).
LOOK_AHEAD = 16
# Frame slots before the first picture that decoded looked ahead for it at most (34 s at 30 fps): they have no picture
# before them to repeat, and hold no picture themselves, only a damage map (32 KB at 4K: 33 MB at most).
LEADING_LOOK_AHEAD = 1024


def conceal(source: Path, output: Path, *, model: str = DEFAULT_CONCEALER, detect: str = "auto",
            truth: Path | None = None,
            drift: str = "redecode",
            codec: str = "h264", crf: float = 18, preset: str = "medium", lossless: bool = False,
            reference: Path | None = None, report: Path | None = None, threads: int | None = None,
            progress: Callable[[int], None] | None = None, overwrite: bool = False) -> ConcealSummary:
    """Repair `source` into `output`: detect the damage, fill it, re-encode, copy every other stream.

    `drift` says what happens to damage that spread through inter prediction: `carry` moves each
    frame's corrections along the decoder's motion vectors into the frames predicted from it, and
    then corrects the frames before the next keyframe from it (drift.KeyframeBackfill, which holds
    up to 64 frames back, fewer from 720p up); `redecode` has a second decoder predict every picture from
    the repairs themselves where the stream allows it (H.264 without B-frames, 4:2:0: see
    concealer.reference_repair) and carries elsewhere, with the same backfill (carrying needs to know what the
    decoder predicts from after a loss: VP9 and AV1 carry nothing, see drift.CARRIED_CODECS); `reconceal` fills the
    propagated blocks with the model as if they were lost, `none` leaves them.
    `reference` (the clean stream, same timestamps) is decoded in step and every repaired picture
    scored against it; `report` is a JSON file of the summary and one row per frame slot, written
    together with `output` or not at all. `threads` (default: every core the process may use) is for
    the networks, OpenCV and the encoder; decoders stay single-threaded, which FFmpeg's H.264
    concealment needs. `progress` is called with the number of frame slots done after each one.
    """
    if drift not in DRIFT_STRATEGIES:
        raise UsageError(f"unknown drift correction {drift!r} (use {', '.join(DRIFT_STRATEGIES)})")
    threads = len(os.sched_getaffinity(0)) if threads is None else threads
    if threads < 1:
        raise UsageError(f"--threads must be 1 or more, not {threads}")
    concealer = make_concealer(model)
    tune_malloc()
    started = time.perf_counter()
    summary = ConcealSummary()
    source_format = probe_video_format(source)
    width, height = source_format.width, source_format.height
    with _stop_on_interrupt(source, summary), \
            _cpu_threads(threads, network=isinstance(concealer, NetworkConcealer)), \
            AtomicOutputs([output] + ([report] if report else []), overwrite,
                          inputs=[source, truth, reference]) as outputs, \
            (open(outputs[report], "w") if report else contextlib.nullcontext()) as report_file, \
            open_output(outputs[output], shown_as=output, input_suffix=Path(source).suffix) as sink, \
            open_video_input(source) as passthrough_source, \
            contextlib.ExitStack() as stack:
        tally = _Tally(summary, reference, report_file, progress)
        video = add_output_encoder(sink, codec, EncoderSettings(crf=crf, preset=preset, lossless=lossless,
                                                                threads=threads), source_format)
        copies = _PassThrough(passthrough_source, sink)
        summary.streams_left_out = copies.left_out
        sink.metadata.update(content_tags(passthrough_source.metadata))
        redecoder = open_reference_repair(source, (height, width)) if drift == "redecode" else None
        if redecoder:
            stack.enter_context(redecoder)
        summary.drift = "carry" if drift == "redecode" and redecoder is None else drift
        if summary.drift == "carry" and source_format.codec not in CARRIED_CODECS:
            summary.drift = "none"  # the decoder's references after a loss are unknown: nothing to carry
        corrector = DriftCorrector(height, width) if summary.drift == "carry" else None
        backfill = KeyframeBackfill(height, width) if drift in ("carry", "redecode") else None
        following_carry = FollowingCarry(height, width) if corrector and source_format.reordered else None
        decoder_concealed = source_format.codec in DECODER_CONCEALING_CODECS
        share = FillShare() if decoder_concealed else None
        repeats = RepeatedPictures()

        def write(outgoing: _Outgoing) -> None:
            out = outgoing.picture.to_frame(video.codec_context.pix_fmt, outgoing.original)
            out.pts, out.time_base = outgoing.pts, outgoing.time_base
            copies.mux_until(outgoing.pts * outgoing.time_base)
            sink.mux(video.encode(out))

        def emit(slot: HeldFrame) -> None:
            frame = slot.damaged.frame
            tally.add(frame, slot.damaged.damage, slot.picture)
            # Samples the repair left alone go out exactly as decoded, in the input's own pixel format.
            keep = slot.decoded is not None and \
                keeps_decoded_samples(frame.picture.format.name, video.codec_context.pix_fmt)
            put(_Outgoing(slot.picture, frame.pts, frame.time_base, (frame.picture, slot.decoded) if keep else None))

        def corrected_backwards(slots: list[HeldFrame]) -> None:
            for ready in slots:
                frame = ready.damaged.frame
                if corrector and following_carry and frame.b_picture and frame.reference:
                    # Corrected now from the pictures shown after it too, for the pictures predicted from it.
                    corrector.revise(frame.pts, ready.decoded, ready.picture)
                for slot in backfill.hold(ready) if backfill else [ready]:
                    emit(slot)

        # A keyframe releases every frame the backfill held at once: the writer takes them all without
        # holding up the repair of the next ones (bbb 720p at 5% loss: 4.92 s with a queue of 4, 4.75 / 4.73 s
        # with 16 / 28; the backfill holds 24 there).
        with written_behind(write, depth=max(PREFETCH, backfill.window + 1 if backfill else 0)) as put:
            previous = before_previous = last_decoded = last_shown = last_arrived = None
            reference = before_reference = None  # the last two I or P pictures repaired, where B-frames reorder
            steps_since_shown = 0
            mapped = decoded_ahead(detect_damage(source, mode=detect, truth=truth), PREFETCH)
            for damaged, ahead, after, beyond in _look_ahead(mapped):
                frame, damage = damaged.frame, damaged.damage
                following = ahead[0] if ahead else None
                if frame.missing:
                    steps_since_shown += 1
                    next_decoded = ahead[-1] if ahead and not ahead[-1].frame.missing else None
                    lost_in_a_row = steps_since_shown + len(ahead) - 1  # between the last picture and the next
                    moved = repeats.lost(sum(slot.frame.missing for slot in ahead))
                    repeat = moved is None
                    picture = previous if repeat else \
                        rebuild_missing(last_shown, next_decoded, moved if next_decoded else 1.0,
                                        steps_since_shown / (lost_in_a_row + 1), source_format.reordered,
                                        last_arrived)
                    if picture is None:
                        continue  # no picture anywhere near: nothing to rebuild from
                    if redecoder:
                        redecoder.rebuilt(frame.pts, picture)
                    if corrector and last_decoded is not None and not source_format.reordered:
                        corrector.remember(last_decoded, picture)  # FFmpeg stands the last picture in for it
                else:
                    lost = bool((damage.labels == DamageLabel.LOST).any())
                    plain = frame  # FFmpeg's decode, whatever the redecoder makes of it
                    repeat = repeats.arrived(plain.luma(), not lost)
                    if redecoder and (own := redecoder.picture(frame.pts, lost)) is not None:
                        frame = dataclasses.replace(frame, picture=own)
                        damaged = dataclasses.replace(damaged, frame=frame)
                    decoded = Picture.from_frame(frame.picture)
                    picture = corrector.correct(decoded, damaged) if corrector else decoded
                    mask = damage.pixel_mask(height, width, None if drift == "reconceal" else DamageLabel.LOST)
                    anchor = not (source_format.reordered and frame.b_picture)  # I or P
                    if mask.any():
                        moving_next = _moving_next(following, beyond, plain.luma(), mask)

                        def filled(nearest: Picture | None, before: Picture | None) -> Picture:
                            earlier = nearest if nearest is not None and same_scene(nearest.y, picture.y, mask) \
                                else None
                            if earlier is None and nearest is not None and source_format.reordered and \
                                    frame.picture.pict_type != av.video.frame.PictureType.I:
                                return scene_cut_fill(picture, mask, decoder_concealed)
                            motion_before = before if earlier is not None and before is not None and \
                                same_scene(before.y, earlier.y, np.zeros_like(mask)) else None
                            return concealer.conceal(picture, mask, Neighbours(
                                earlier, moving_next, motion_before,
                                decoder_concealed, after if frame.b_picture else None, source_format.reordered))

                        # In a stream with B-frames the B picture shown just before an I or P picture was predicted
                        # from it, FFmpeg's concealment of its holes included (and a lost one's rebuild took in its
                        # decoded holes): where it was, the holes are filled from the I or P picture before. Training
                        # clips with three B-frames, 3 / 10 / 20% loss: chaplin 29.96 / 24.99 / 22.53 -> 30.90 /
                        # 26.25 / 23.33 dB, bikes 28.29 / 25.09 / 21.27 -> 28.46 / 25.32 / 21.30, bbb 720p 5 / 10%
                        # 35.96 / 29.06 -> 36.29 / 29.22 (with the B-picture carry and detection below); filling
                        # every hole so: chaplin 30.54 / 26.28 / 23.27, bikes 28.36 / 25.13 / 21.20, bbb 36.21 / 29.20.
                        nearest, before, from_reference = previous, before_previous, None
                        if source_format.reordered and anchor and reference is not None and previous is not reference:
                            if previous is last_shown:
                                from_reference = predicted_from_holes(last_arrived, mask)
                            else:  # a lost frame's rebuild, which took in this picture's decoded holes
                                nearest, before = reference, before_reference
                        repaired = filled(nearest, before)
                        if from_reference is not None and from_reference.any():
                            other = filled(reference, before_reference)
                            repaired = repaired.pasted([other.y, other.u, other.v],
                                                       mask & blocks_to_pixels(from_reference, MB, height, width))
                        # Some of FFmpeg's concealment mixed in, as much as the keyframes so far say (FillShare).
                        picture = repaired if share is None or share.share == 1 else \
                            repaired.mixed(picture, mask, share.share)
                    if share is not None and anchor:
                        share.see(picture.y, plain.luma(), damage, plain.picture.key_frame)
                    if redecoder and lost:
                        redecoder.repaired(picture)
                    if corrector and (anchor or frame.reference):
                        corrector.remember(decoded, picture, pts=frame.pts, b_picture=not anchor)
                    last_decoded, last_shown, last_arrived, steps_since_shown = decoded, picture, damaged, 0
                    if anchor:
                        before_reference, reference = reference, picture
                # The picture before `previous` is the last that differs from it: the motion one interval earlier,
                # which fills holes (fill_motion), is not that of a repeat (chaplin at 3 / 10 / 20% loss: 32.77 /
                # 27.68 / 22.34 -> 33.10 / 28.05 / 22.42 dB; with three B-frames 31.34 / 26.61 / 23.61 -> 31.34 /
                # 26.64 / 23.74).
                if not repeat:
                    before_previous = previous
                previous = picture
                held = HeldFrame(damaged, picture, None if frame.missing else decoded)
                corrected_backwards(following_carry.hold(held) if following_carry else [held])
            corrected_backwards(following_carry.release() if following_carry else [])
            for slot in backfill.release() if backfill else []:
                emit(slot)
        if not summary.frames:
            raise nothing_decodes(source)
        sink.mux(video.encode(None))
        copies.mux_until(None)
        sink.close()
        summary.seconds = time.perf_counter() - started
        tally.finish()
        outputs.commit()
    return summary


@contextlib.contextmanager
def _stop_on_interrupt(source: Path, summary: DetectionSummary) -> Iterator[None]:
    """Ctrl-C ends the run as Interrupted, saying how far it got (its outputs are discarded on the way out)."""
    try:
        yield
    except KeyboardInterrupt as exc:
        total = frame_count(source)
        raise Interrupted(f"interrupted after {summary.frames}{f' of {total}' if total else ''} frames, "
                          "no output written") from exc


# Frame slots decoded and mapped ahead of the repair by a worker thread: decoding and damage detection
# (FFmpeg, NumPy and OpenCV all release the GIL) overlap the repair of earlier frames on another core.
PREFETCH = 4


def _look_ahead(frames: Iterator[DamagedFrame]
                ) -> Iterator[tuple[DamagedFrame, tuple[DamagedFrame, ...], DamagedFrame | None, DamagedFrame | None]]:
    """Each frame slot with the slots after it up to the next one that has a picture (at most
    LOOK_AHEAD, or LEADING_LOOK_AHEAD before the first picture): the temporal model looks at the
    next frame, a lost frame's rebuild at the next picture that arrived; the next I or P
    picture, which the B pictures before it are filled from too (FlowConcealer); and the picture after
    the next one, whose motion stands in for the next one's where that repeats this one (_moving_next).
    Placeholders hold no picture, so at most two decoded frames wait besides the B pictures before an I or
    P picture."""
    waiting: collections.deque[DamagedFrame] = collections.deque()

    def ahead() -> tuple[DamagedFrame, ...]:
        slots = []
        for slot in itertools.islice(waiting, 1, None):
            slots.append(slot)
            if not slot.frame.missing:
                break
        return tuple(slots)

    def anchor() -> DamagedFrame | None:
        return next((slot for slot in itertools.islice(waiting, 1, None) if _anchor(slot)), None)

    def beyond() -> DamagedFrame | None:
        pictures = (slot for slot in itertools.islice(waiting, 1, None) if not slot.frame.missing)
        return next(itertools.islice(pictures, 1, None), None)

    pictured = False  # whether a slot with a picture came yet
    for slot in frames:
        waiting.append(slot)
        pictured = pictured or not slot.frame.missing
        reach = LOOK_AHEAD if pictured else LEADING_LOOK_AHEAD
        while len(waiting) > 1:
            after_next = beyond()
            if not ((_anchor(slot) and after_next is not None) or len(waiting) > reach):
                break
            yield waiting[0], ahead(), anchor(), after_next
            waiting.popleft()
    while waiting:
        yield waiting[0], ahead(), anchor(), beyond()
        waiting.popleft()


def _moving_next(following: DamagedFrame | None, beyond: DamagedFrame | None, decoded: np.ndarray, mask: np.ndarray
                 ) -> DamagedFrame | None:
    """The next frame whose motion a picture's holes are filled along (Neighbours): the next one, unless that repeats
    this picture (film brought to a higher rate, a stalled camera: its vectors are all zero and say nothing of how
    the picture moves), when the picture after it (`beyond`), one step of the motion on, stands in. Whether it
    repeats is judged on the intact pixels of this picture as FFmpeg decoded it (`decoded`, luma), which the next
    one copied, not on its repair: corrected drift differs from the copy. chaplin_640x360 (one frame in three
    repeats) at 3 / 10 / 20% loss, `conceal` with defaults: seed 1 (the quality section) 33.48 / 28.39 / 22.46 ->
    33.86 / 28.74 / 22.50 dB; seeds 2-4 30.80 / 34.48 / 31.26, 28.32 / 27.18 / 25.55, 24.19 / 24.26 / 23.54 ->
    30.81 / 36.26 / 31.42, 28.61 / 27.89 / 25.65, 24.56 / 24.61 / 23.97. Judged on the repair instead: 33.52 /
    28.43 / 22.46 at seed 1; leaving the repeat's motion out (no vectors from after the picture): 33.10 / 28.28 /
    22.46."""
    if following is None or beyond is None or following.frame.missing or beyond.frame.missing:
        return following
    intact = ~mask
    if not intact.any():
        return following
    step = following.frame.luma()[intact].astype(np.float32) - decoded[intact]
    return beyond if float(np.mean(step * step)) <= RepeatedPictures.REPEAT_MSE else following


def _anchor(slot: DamagedFrame) -> bool:
    """An I or P picture that arrived."""
    return not slot.frame.missing and not slot.frame.b_picture


@dataclass(frozen=True)
class _Outgoing:
    """A repaired picture on its way to the encoder, with no more than writing it needs: the writer's queue
    holds a whole backfill release, and the decoded frames and damage maps would triple its memory."""

    picture: Picture
    pts: int
    time_base: Fraction
    original: tuple[av.VideoFrame, Picture] | None  # where the samples the repair left alone come from


class _PassThrough:
    """Copies the input's other streams (`plan_copies`: audio, subtitles, data, ...) into the output, packets in
    time order with the video, and its attachments; `left_out`: those the output's format cannot hold."""

    def __init__(self, source, sink):
        copies = plan_copies(source, sink.format.name)
        self.left_out = copies.left_out
        streams = copies.streams
        copy_attachments(copies, sink)
        self._targets = {s.index: add_stream_copy(sink, s) for s in streams}
        self._packets = (p for p in source.demux(*streams) if is_copied(p)) if streams else iter(())
        self._sink = sink
        self._next = next(self._packets, None)

    def mux_until(self, seconds) -> None:
        """Mux the packets due before `seconds` (all that are left when None); a cover picture is due at once."""
        while self._next is not None and (seconds is None or self._next.dts is None or
                                          self._next.dts * self._next.time_base <= seconds):
            packet, self._next = self._next, next(self._packets, None)
            packet.stream = self._targets[packet.stream.index]
            self._sink.mux(packet)


@contextlib.contextmanager
def _cpu_threads(threads: int, network: bool) -> Iterator[None]:
    """OpenCV (and torch, when a network conceals) use `threads` threads for the run, then what they used before."""
    saved = cv2.getNumThreads()
    cv2.setNumThreads(threads)
    if network:
        import torch  # already loaded by the network concealer
        saved_torch = torch.get_num_threads()
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        cv2.setNumThreads(saved)
        if network:
            torch.set_num_threads(saved_torch)


class _Reference:
    """The clean decode, read in step with the repair (never held whole): each picture found by its pts.

    A frame lost from a stream of irregular frame times (a phone's) gets a timestamp spread over the gap it left
    (decode._FrameSlots), not its own, which no reader of the damaged file can know: such a slot is scored against
    the clean picture nearest in time, within half a frame interval of the clean stream. Clean frames that no slot
    stands for (lost after the last picture that arrived, which nothing in the stream tells) are scored too, against
    the picture shown while they should be (the one before; before the first, the first), as a plain decode is
    measured, so that a repair short of frames does not score as if it were whole."""

    def __init__(self, path: Path):
        self._path = path
        self._frames = (f for f in decode_frames(path) if not f.missing)
        self._upcoming = [next(self._frames, None), next(self._frames, None)]  # the next two clean frames
        self._interval = 0
        self._shown: Picture | None = None  # the last repaired picture scored
        self.squared_error = self.ssim = 0.0  # summed over every clean frame scored so far
        self.frames = self.unmatched = 0
        self.worst: tuple[float, int, float] | None = None  # the lowest PSNR scored, the clean frame's pts and time

    def scores(self, picture: Picture, pts: int) -> FrameScores:
        frame = self._nearest(pts, picture)
        self._shown = picture
        return self._score(picture, frame)

    def finish(self) -> None:
        """Score the clean frames after the last slot against the last picture (called once a slot was scored)."""
        for frame in (f for f in itertools.chain(self._upcoming, self._frames) if f is not None):
            self._score(self._shown, frame)
            self.unmatched += 1

    def _score(self, picture: Picture, frame: DecodedFrame) -> FrameScores:
        clean = Picture.from_frame(frame.picture)
        if clean.y.shape != picture.y.shape:
            raise InputError(f"{self._path}: its frames are {clean.y.shape[1]}x{clean.y.shape[0]}, the "
                             f"repaired ones {picture.y.shape[1]}x{picture.y.shape[0]}: not this video's "
                             "clean stream")
        scores = frame_scores(picture, clean)
        self.squared_error += scores.mse_y
        self.ssim += scores.ssim
        self.frames += 1
        if self.worst is None or scores.psnr_y < self.worst[0]:
            self.worst = (scores.psnr_y, frame.pts, round(float(frame.pts * frame.time_base), 6))
        return scores

    def _nearest(self, pts: int, picture: Picture) -> DecodedFrame:
        """The next clean frame nearest to `pts`; the ones before it are passed over, scored against the picture
        shown then (`picture` before the first slot)."""
        while (after := self._upcoming[1]) is not None and abs(after.pts - pts) <= abs(self._upcoming[0].pts - pts):
            self._score(self._shown or picture, self._upcoming[0])
            self.unmatched += 1
            self._upcoming = [after, next(self._frames, None)]
        frame, after = self._upcoming
        if frame is None or (frame.pts != pts and 2 * abs(frame.pts - pts) > (
                self._interval if after is None else after.pts - frame.pts)):
            raise InputError(f"{self._path}: no frame at pts {pts}: is it the clean stream of this video?")
        self._upcoming = [after, next(self._frames, None)]
        self._interval = 0 if after is None else after.pts - frame.pts  # for the last one, that before it
        return frame


class _Tally:
    """Counts each frame slot that goes out into the summary, scores it against the reference, writes
    its row to the report file (streamed: rows are not kept) and tells `progress`."""

    def __init__(self, summary: ConcealSummary, reference: Path | None, report: TextIO | None,
                 progress: Callable[[int], None] | None):
        self._summary = summary
        self._reference = _Reference(reference) if reference else None
        self._report = report
        self._progress = progress
        self._rows = 0
        if self._report:
            self._report.write('{"frames": [')

    def add(self, frame: DecodedFrame, damage: DamageMap, picture: Picture) -> None:
        summary = self._summary
        macroblocks = summary.add(damage)
        summary.frames_rebuilt += frame.missing
        time = round(float(frame.pts * frame.time_base), 6)
        scores = self._reference.scores(picture, frame.pts) if self._reference else None
        if self._report:
            row = FrameRecord(frame.pts, time, macroblocks, frame.missing, scores.psnr_y if scores else None,
                              scores.ssim if scores else None)
            self._report.write(("," if self._rows else "") + "\n" + json.dumps(json_safe(asdict(row))))
            self._rows += 1
        if self._progress:
            self._progress(summary.frames)

    def finish(self) -> None:
        """Complete the summary (sequence PSNR from the mean MSE, mean SSIM) and the report file."""
        summary, reference = self._summary, self._reference
        if reference and summary.frames:
            reference.finish()
            summary.psnr = psnr(reference.squared_error / reference.frames)
            summary.ssim = reference.ssim / reference.frames
            summary.reference_unmatched = reference.unmatched
            summary.worst_psnr, summary.worst_pts, summary.worst_time = reference.worst
        if self._report:
            note = ("PSNR in dB (luma, raw 8-bit samples) and luma SSIM of the repaired pictures before "
                    "re-encoding, against the reference; null PSNR: identical (infinite)")
            self._report.write(f"\n],\n\"summary\": {json.dumps(summary.as_json(), indent=1)},\n"
                               f"\"note\": {json.dumps(note)}}}\n")
            self._report.close()  # complete on disk before the outputs are renamed into place

"""One-call library API over the stages, used by the CLI, the tests and the benchmarks."""
from __future__ import annotations

import collections
import contextlib
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .concealment import Neighbours, Picture, make_concealer, same_scene
from .decode import decode_frames
from .detection import (
    DamagedFrame,
    DamageLabel,
    DamageMap,
    detect_damage,
    write_damage_maps,
)
from .drift import DriftCorrector
from .encode import EncoderSettings, add_output_encoder
from .errors import InputError, Interrupted, UsageError
from .media import (
    AtomicOutputs,
    content_tags,
    copy_stream_description,
    frame_count,
    open_output,
    open_video_input,
    probe_video_format,
)
from .overlay import OverlayWriter
from .rebuild import rebuild_missing


@dataclass
class DetectionSummary:
    """What the damage maps found, counted frame slot by frame slot."""

    frames: int = 0
    damaged_frames: int = 0
    missing_frames: int = 0
    macroblocks: dict[str, int] = field(default_factory=lambda: {"lost": 0, "propagated": 0})

    def add(self, damage: DamageMap) -> None:
        self.frames += 1
        if damage.labels.size and (damage.labels == DamageLabel.MISSING_FRAME).all():
            self.missing_frames += 1
        elif damage.damaged.any():
            self.damaged_frames += 1
        self.macroblocks["lost"] += int(np.count_nonzero(damage.labels == DamageLabel.LOST))
        self.macroblocks["propagated"] += int(np.count_nonzero(damage.labels == DamageLabel.PROPAGATED))


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
    seconds: float = 0.0
    psnr: float | None = None  # sequence luma PSNR against --reference, from the mean MSE

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


DRIFT_STRATEGIES = ("carry", "reconceal", "none")
# Frame slots looked ahead for the next picture that arrived (a run of lost frames longer than
# this is rebuilt by repeating the last picture).
LOOK_AHEAD = 16


def conceal(source: Path, output: Path, *, model: str = "ffmpeg", detect: str = "auto", truth: Path | None = None,
            drift: str = "carry",
            codec: str = "h264", crf: float = 18, preset: str = "medium", lossless: bool = False,
            reference: Path | None = None, overwrite: bool = False) -> ConcealSummary:
    """Repair `source` into `output`: detect the damage, fill it, re-encode, copy every other stream.

    `drift` says what happens to damage that spread through inter prediction: `carry` moves each
    frame's corrections along the decoder's motion vectors into the frames predicted from it,
    `reconceal` fills the propagated blocks with the model as if they were lost, `none` leaves them.
    """
    if drift not in DRIFT_STRATEGIES:
        raise UsageError(f"unknown drift correction {drift!r} (use {', '.join(DRIFT_STRATEGIES)})")
    concealer = make_concealer(model)
    started = time.perf_counter()
    summary = ConcealSummary()
    source_format = probe_video_format(source)
    width, height = source_format.width, source_format.height
    clean = _reference_luma(reference) if reference else None
    squared_error = 0.0
    with _stop_on_interrupt(source, summary), \
            AtomicOutputs([output], overwrite, inputs=[source, truth, reference]) as outputs, \
            open_output(outputs[output]) as sink, \
            open_video_input(source) as passthrough_source:
        video = add_output_encoder(sink, codec, EncoderSettings(crf=crf, preset=preset, lossless=lossless),
                                   source_format)
        copies = _PassThrough(passthrough_source, sink)
        sink.metadata.update(content_tags(passthrough_source.metadata))
        corrector = DriftCorrector(height, width) if drift == "carry" else None
        previous = last_decoded = last_shown = None
        steps_since_shown = 0
        for damaged, ahead in _look_ahead(detect_damage(source, mode=detect, truth=truth)):
            frame, damage = damaged.frame, damaged.damage
            following = ahead[0] if ahead else None
            if frame.missing:
                steps_since_shown += 1
                next_decoded = ahead[-1] if ahead and not ahead[-1].frame.missing else None
                lost_in_a_row = steps_since_shown + len(ahead) - 1  # between the last picture and the next
                picture = rebuild_missing(last_shown, next_decoded,
                                          steps_since_shown / lost_in_a_row if next_decoded else 1.0)
                if picture is None:
                    continue  # no picture anywhere near: nothing to rebuild from
                summary.frames_rebuilt += 1
                if corrector and last_decoded is not None:
                    corrector.remember(last_decoded, picture)  # FFmpeg stands the last picture in for it
            else:
                decoded = Picture.from_frame(frame.picture)
                picture = corrector.correct(decoded, frame.motion_vectors) if corrector else decoded
                mask = damage.pixel_mask(height, width, None if drift == "reconceal" else DamageLabel.LOST)
                if mask.any():
                    earlier = previous if previous is not None and same_scene(previous, picture, mask) else None
                    picture = concealer.conceal(picture, mask, Neighbours(earlier, following))
                if corrector:
                    corrector.remember(decoded, picture)
                last_decoded, last_shown, steps_since_shown = decoded, picture, 0
            summary.add(damage)
            previous = picture
            if clean is not None:
                squared_error += _squared_error(picture.y, clean, frame.pts)
            # Samples the repair left alone go out exactly as decoded, in the input's own pixel format.
            out = picture.to_frame(video.codec_context.pix_fmt, None if frame.missing else (frame.picture, decoded))
            out.pts, out.time_base = frame.pts, frame.time_base
            copies.mux_until(frame.pts * frame.time_base)
            sink.mux(video.encode(out))
        if not summary.frames:
            raise InputError(f"{source}: not one picture in it could be decoded, so there is nothing to repair")
        sink.mux(video.encode(None))
        copies.mux_until(None)
        sink.close()
        outputs.commit()
    summary.seconds = time.perf_counter() - started
    if clean is not None and summary.frames:
        mse = squared_error / summary.frames
        summary.psnr = float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)
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


def _look_ahead(frames: Iterator[DamagedFrame]) -> Iterator[tuple[DamagedFrame, tuple[DamagedFrame, ...]]]:
    """Each frame slot with the slots after it up to the next one that has a picture (at most
    LOOK_AHEAD): the temporal model looks at the next frame, a lost frame's rebuild at the next
    picture that arrived. Placeholders hold no picture, so at most one decoded frame waits."""
    waiting: collections.deque[DamagedFrame] = collections.deque()

    def ahead() -> tuple[DamagedFrame, ...]:
        slots = []
        for slot in itertools.islice(waiting, 1, None):
            slots.append(slot)
            if not slot.frame.missing:
                break
        return tuple(slots)

    for slot in frames:
        waiting.append(slot)
        while len(waiting) > 1 and (not slot.frame.missing or len(waiting) > LOOK_AHEAD):
            yield waiting[0], ahead()
            waiting.popleft()
    while waiting:
        yield waiting[0], ahead()
        waiting.popleft()


class _PassThrough:
    """Copies the input's audio and subtitle packets into the output, in time order with the video."""

    def __init__(self, source, sink):
        streams = [s for s in source.streams if s.type in ("audio", "subtitle")]
        self._targets = {s.index: sink.add_stream_from_template(s) for s in streams}
        for stream in streams:
            copy_stream_description(stream, self._targets[stream.index])
        self._packets = (p for p in source.demux(*streams) if p.dts is not None) if streams else iter(())
        self._sink = sink
        self._next = next(self._packets, None)

    def mux_until(self, seconds) -> None:
        """Mux the packets due before `seconds` (all that are left when None)."""
        while self._next is not None and (seconds is None or self._next.dts * self._next.time_base <= seconds):
            packet, self._next = self._next, next(self._packets, None)
            packet.stream = self._targets[packet.stream.index]
            self._sink.mux(packet)


def _reference_luma(reference: Path):
    """The clean decode's luma planes keyed by pts, read lazily in step with the repair."""
    return iter((f.pts, f.luma()) for f in decode_frames(reference) if not f.missing)


def _squared_error(luma: np.ndarray, clean, pts: int) -> float:
    for clean_pts, clean_luma in clean:
        if clean_pts == pts:
            return float(np.mean((luma.astype(np.float32) - clean_luma) ** 2))
        if clean_pts > pts:
            break
    raise InputError(f"the reference has no frame at pts {pts}: is it the clean stream of this video?")

"""Damage maps: which 16x16 macroblocks of each frame are lost, propagated, or missing with their frame.

Every detector sits behind one small interface, `DamageDetector.process_frame`, and
sees the frames of the primary decode (FFmpeg's concealment on, motion vectors
exported) one at a time, so that memory stays flat in the video's length.

Propagation is traced the same way for every source of seeds: an estimate of each
pixel's squared error is carried forward along the decoder's motion vectors (an
inter block inherits the error of the block it was predicted from; an intra block
starts clean), and a macroblock counts as damaged while its mean exceeds the
reference map's threshold (MSE > 4 against the clean decode).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np

from .decode import FFMPEG_CONCEALMENT, DecodedFrame, decode_frames
from .errors import InputError, UsageError
from .media import open_video_input
from .truth import load_truth, write_npz

MB = 16
# The reference map's threshold: a macroblock is damaged when its luma MSE exceeds this.
DAMAGE_MSE = 4.0
# Bitstream mode's second decode conceals without motion-vector guessing; where the two
# concealments disagree, FFmpeg concealed. Half their squared difference estimates the
# concealment error (measured on foreman at 3-10% loss: best recall/precision balance).
ALTERNATIVE_CONCEALMENT = "deblock"
DISAGREEMENT_WEIGHT = 0.5
# A frame lost entirely is replaced by its predecessor; the next frame's prediction is then
# off by about the motion between its two neighbours (weight measured on carphone at 3-20% loss).
MISSING_REFERENCE_WEIGHT = 0.5
# The truth says where data was lost, not how wrong the concealment is: assume badly wrong.
TRUTH_SEED_ERROR = 32.0 ** 2


class DamageLabel(enum.IntEnum):
    CLEAN = 0
    LOST = 1  # the data never arrived or failed to decode; the decoder concealed it
    PROPAGATED = 2  # predicted from damaged pixels of a reference frame
    MISSING_FRAME = 3  # the whole frame never arrived


@dataclass(frozen=True)
class DamageMap:
    """Per-macroblock labels of one frame slot (rows = ceil(H/16), cols = ceil(W/16))."""

    pts: int
    labels: np.ndarray  # uint8 DamageLabel values

    @property
    def damaged(self) -> np.ndarray:
        return self.labels != DamageLabel.CLEAN

    def pixel_mask(self, height: int, width: int) -> np.ndarray:
        """The damaged macroblocks as an HxW bool mask (True = damaged)."""
        return np.kron(self.damaged, np.ones((MB, MB), dtype=bool))[:height, :width]


@dataclass(frozen=True)
class DamagedFrame:
    """A decoded frame slot together with its damage map: what the concealment stage consumes."""

    frame: DecodedFrame
    damage: DamageMap


class DamageDetector(Protocol):
    """Labels the macroblocks of each frame slot, in presentation order."""

    def process_frame(self, frame: DecodedFrame) -> DamageMap: ...


def macroblock_mean(values: np.ndarray) -> np.ndarray:
    """Mean of an HxW array over each 16x16 macroblock (edge blocks over their real pixels)."""
    height, width = values.shape
    rows, cols = -(-height // MB), -(-width // MB)
    padded = np.zeros((rows * MB, cols * MB), dtype=np.float32)
    padded[:height, :width] = values
    sums = padded.reshape(rows, MB, cols, MB).sum(axis=(1, 3))
    counts = np.zeros_like(padded)
    counts[:height, :width] = 1
    return sums / counts.reshape(rows, MB, cols, MB).sum(axis=(1, 3))


def expand_blocks(blocks: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.kron(blocks, np.ones((MB, MB), dtype=blocks.dtype))[:height, :width]


class ErrorTracer:
    """Carries a per-pixel squared-error estimate forward along the decoder's motion vectors."""

    def __init__(self) -> None:
        self.error: np.ndarray | None = None
        self._last_luma: np.ndarray | None = None
        self._gap = False

    def skip_missing(self) -> None:
        """A frame slot with no picture: the next frame predicts from a substitute reference."""
        self._gap = True

    def inherit(self, luma: np.ndarray, motion_vectors: np.ndarray | None) -> np.ndarray:
        """The error this frame inherits through inter prediction from the previous one."""
        height, width = luma.shape
        error = self.error if self.error is not None and self.error.shape == luma.shape \
            else np.zeros(luma.shape, np.float32)
        if self._gap and self._last_luma is not None:
            motion = luma.astype(np.float32) - self._last_luma
            error = np.maximum(error, MISSING_REFERENCE_WEIGHT * motion * motion)
        self._gap = False
        inherited = np.zeros((height, width), np.float32)
        if motion_vectors is None or not len(motion_vectors):
            return inherited
        vectors = motion_vectors[motion_vectors["source"] < 0]  # predicted from the past
        source_y = np.zeros((height, width), np.int32)
        source_x = np.zeros((height, width), np.int32)
        inter = np.zeros((height, width), bool)
        rows, cols = np.mgrid[0:height, 0:width]
        scale = np.maximum(vectors["motion_scale"], 1)
        dx = np.rint(vectors["motion_x"] / scale).astype(np.int32)
        dy = np.rint(vectors["motion_y"] / scale).astype(np.int32)
        left = vectors["dst_x"].astype(np.int32) - vectors["w"] // 2
        top = vectors["dst_y"].astype(np.int32) - vectors["h"] // 2
        for x0, y0, w, h, mx, my in zip(left, top, vectors["w"], vectors["h"], dx, dy):
            block = (slice(max(0, y0), min(height, y0 + h)), slice(max(0, x0), min(width, x0 + w)))
            source_y[block] = rows[block] + my
            source_x[block] = cols[block] + mx
            inter[block] = True
        inherited[inter] = error[np.clip(source_y[inter], 0, height - 1), np.clip(source_x[inter], 0, width - 1)]
        return inherited

    def commit(self, luma: np.ndarray, error: np.ndarray) -> None:
        self.error = error
        self._last_luma = luma.astype(np.float32)


def _label(seeds: np.ndarray, error: np.ndarray) -> np.ndarray:
    """LOST where seeded, PROPAGATED where the traced error still exceeds the damage threshold."""
    labels = np.where(macroblock_mean(error) > DAMAGE_MSE, DamageLabel.PROPAGATED, DamageLabel.CLEAN)
    labels[seeds] = DamageLabel.LOST
    return labels.astype(np.uint8)


def _missing_map(frame: DecodedFrame, shape: tuple[int, int]) -> DamageMap:
    return DamageMap(frame.pts, np.full(shape, DamageLabel.MISSING_FRAME, dtype=np.uint8))


class BitstreamDetector:
    """Blind detection from the damaged file alone.

    A second decode of the same file with a different concealment strategy differs from
    the primary one exactly where FFmpeg concealed (and where that spread); the new part
    of the disagreement seeds the tracer, which follows it along the motion vectors.
    """

    def __init__(self, path: Path, shape: tuple[int, int]):
        self._alternative = decode_frames(path, concealment=ALTERNATIVE_CONCEALMENT)
        self._tracer = ErrorTracer()
        self._shape = shape

    def process_frame(self, frame: DecodedFrame) -> DamageMap:
        other = next(self._alternative)
        if other.pts != frame.pts:
            raise InputError(f"the two decodes of the stream disagree on frame timing ({other.pts} != {frame.pts})")
        if frame.missing:
            self._tracer.skip_missing()
            return _missing_map(frame, self._shape)
        luma = frame.luma().astype(np.float32)
        inherited = self._tracer.inherit(luma, frame.motion_vectors)
        disagreement = luma - other.luma()
        disagreement *= disagreement
        concealed = macroblock_mean(disagreement) > 0
        estimate = DISAGREEMENT_WEIGHT * disagreement * expand_blocks(concealed, *luma.shape)
        seeds = (macroblock_mean(estimate) > DAMAGE_MSE) & (macroblock_mean(inherited) <= DAMAGE_MSE)
        error = np.maximum(inherited, estimate)
        self._tracer.commit(luma, error)
        return DamageMap(frame.pts, _label(seeds, error))


class TruthDetector:
    """Lost macroblocks and missing frames from simulate-loss's sidecar; propagation traced as above."""

    def __init__(self, truth_json: Path, shape: tuple[int, int]):
        try:
            doc, pts, maps = load_truth(truth_json)
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"{truth_json}: not a readable simulate-loss truth file ({exc})") from exc
        if maps.shape[1:] != shape:
            raise InputError(f"{truth_json}: its macroblock maps are {maps.shape[1:]}, the video's grid is {shape}")
        self._lost = dict(zip(pts.tolist(), maps))
        self._shape = shape
        self._tracer = ErrorTracer()

    def process_frame(self, frame: DecodedFrame) -> DamageMap:
        if frame.missing:
            self._tracer.skip_missing()
            return _missing_map(frame, self._shape)
        luma = frame.luma().astype(np.float32)
        inherited = self._tracer.inherit(luma, frame.motion_vectors)
        seeds = self._lost.get(frame.pts, np.zeros(self._shape, dtype=bool))
        error = np.maximum(inherited, TRUTH_SEED_ERROR * expand_blocks(seeds, *luma.shape))
        self._tracer.commit(luma, error)
        return DamageMap(frame.pts, _label(seeds, error))


DETECTION_MODES = ("auto", "truth", "bitstream")


def default_truth_path(damaged: Path) -> Path:
    return Path(damaged).with_name(Path(damaged).name + ".truth.json")


def detect_damage(path: Path, *, mode: str = "auto", truth: Path | None = None) -> Iterator[DamagedFrame]:
    """Decode `path` (FFmpeg's concealment on) and yield every frame slot with its damage map.

    `auto` uses the truth file when one is given, else the bitstream detector.
    """
    if mode not in DETECTION_MODES:
        raise UsageError(f"unknown detection mode {mode!r} (use {', '.join(DETECTION_MODES)})")
    if mode == "truth" and truth is None:
        truth = default_truth_path(path)
        if not truth.exists():
            raise UsageError(f"--detect truth needs a truth file: none given and {truth} does not exist")
    with open_video_input(path) as probe:
        context = probe.streams.video[0].codec_context
        shape = (-(-context.height // MB), -(-context.width // MB))
    use_truth = mode == "truth" or (mode == "auto" and truth is not None)
    detector: DamageDetector = TruthDetector(truth, shape) if use_truth else BitstreamDetector(path, shape)
    for frame in decode_frames(path, concealment=FFMPEG_CONCEALMENT, motion_vectors=True):
        yield DamagedFrame(frame, detector.process_frame(frame))


def write_damage_maps(maps: list[DamageMap], path: Path) -> None:
    """The masks file: `pts` (N,) int64, `mb` (N, rows, cols) bool and `label` (N, rows, cols) uint8."""
    labels = np.array([m.labels for m in maps], dtype=np.uint8)
    write_npz(path, pts=np.array([m.pts for m in maps], dtype=np.int64), mb=labels != DamageLabel.CLEAN,
              label=labels)


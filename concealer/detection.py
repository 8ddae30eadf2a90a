"""Damage maps: which 16x16 macroblocks of each frame are lost, propagated, or missing with their frame.

Every detector sits behind one small interface, `DamageDetector.process_frame`, and
sees the frames of the primary decode (FFmpeg's concealment on, motion vectors
exported) one at a time, so that memory stays flat in the video's length.

Propagation is traced forward along the decoder's motion vectors (or, for decoders that export none, the
motion measured between the decoded pictures), and a macroblock counts
as damaged while its estimated squared error exceeds the reference map's threshold (MSE > 4
against the clean decode). With a truth file, the estimate itself is carried (an inter block
inherits the error of the block it was predicted from; an intra block starts clean). Blind,
the bitstream detector has a second decode whose difference from the first the decoder itself
propagates, and carries only the ratio of error to that difference (RatioTracer).
"""
from __future__ import annotations

import enum
import functools
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

import av
import cv2
import numpy as np

from .decode import FFMPEG_CONCEALMENT, NO_CONCEALMENT, DecodedFrame, decode_frames, sample_bits
from .errors import InputError, UsageError
from .heap import keep_large_blocks
from .media import probe_video_format
from .motion import dense_flow
from .truth import load_truth, write_npz
from .workers import decoded_ahead

MB = 16
# The reference map's threshold: a macroblock is damaged when its luma MSE exceeds this.
DAMAGE_MSE = 4.0
# Least squared error assumed where FFmpeg concealed (measured on bikes, carphone and foreman
# at 3-20% loss: raises recall by up to 0.09 for up to 0.07 of precision).
CONCEALMENT_ERROR_FLOOR = 8.0
# A frame lost entirely is replaced by its predecessor; the next frame's prediction is then
# off by about the motion between its two neighbours (weight measured on carphone at 3-20% loss).
MISSING_REFERENCE_WEIGHT = 0.5
# FFmpeg's concealment error, as a multiple of its squared difference from the bitstream detector's second
# concealment (rank correlation with the true error at 10% loss: 0.58 bikes, 0.79 chaplin, 0.78 foreman,
# against 0.35, 0.23 and 0.65 for the motion between the two previous frames; the multiple was chosen
# among 0.75, 1.5 and 3 on the training clips bbb_720p_h264 and fire2_720p at 3% and 10% loss).
CONCEALMENT_RATIO = 1.5
# The truth says where data was lost, not how wrong the concealment is: assume badly wrong.
TRUTH_SEED_ERROR = 32.0 ** 2
# Raster-order gaps between lost macroblocks that are taken to be lost too (see _concealed_blocks).
LOST_RUN_GAP = 8
# Blocks concealed at the end of a B slice's stretch, at least, to be taken for a lost slice (_unreceived_blocks).
LOST_RUN_LEAST = 4
# How the bitstream detector's second decode conceals: inter prediction without guessed motion vectors.
# Concealing at all keeps it deterministic (left unconcealed, lost blocks hold whatever FFmpeg's buffer
# pool held: maps of chaplin at 3% loss differed in 10155 of 66375 damaged macroblocks between two runs).
SECOND_OPINION = "favor_inter"
# Decoders whose exported motion vectors (`+export_mvs`) show where FFmpeg concealed: its H.264 error
# concealment writes the vectors it guessed into them, which blind detection reads lost blocks from. MPEG-1/2/4
# export vectors too, but not the guessed ones: foreman in MPEG-2 over MPEG-TS with 2% of its TS packets lost
# (with B-frames / without), recall 0.000 read from the vectors, 0.920 / 0.745 (precision 0.797 / 0.781) as for
# codecs without vectors, and `conceal` 24.34 -> 26.19 / 22.42 -> 22.61 dB.
VECTOR_EXPORTING_CODECS = ("h264",)
# Share of a macroblock's luma samples at the ends of the 8-bit range (CLIPPED_LUMA) above which, in a picture
# predicted from a stand-in for a lost reference, the block is taken for damaged though both decodes agree there.
CLIPPED_SHARE = 0.5
CLIPPED_LUMA = (1, 254)


class DamageLabel(enum.IntEnum):
    CLEAN = 0
    LOST = 1  # the data never arrived or failed to decode; the decoder concealed it
    PROPAGATED = 2  # predicted from damaged pixels of a reference frame
    MISSING_FRAME = 3  # the whole frame never arrived


def blocks_to_pixels(blocks: np.ndarray, size: int, height: int, width: int) -> np.ndarray:
    """Values held per `size`x`size` block, repeated over each block's pixels and cropped to height x width
    (OpenCV's nearest-neighbour resize: a third of the time of NumPy's repeat or kron at 720p)."""
    rows, cols = blocks.shape
    flags = blocks.dtype == bool
    blocks = np.ascontiguousarray(blocks)
    pixels = cv2.resize(blocks.view(np.uint8) if flags else blocks, (cols * size, rows * size),
                        interpolation=cv2.INTER_NEAREST)[:height, :width]
    return pixels.view(bool) if flags else pixels


@dataclass(frozen=True)
class DamageMap:
    """Per-macroblock labels of one frame slot (rows = ceil(H/16), cols = ceil(W/16))."""

    pts: int
    labels: np.ndarray  # uint8 DamageLabel values

    @property
    def damaged(self) -> np.ndarray:
        return self.labels != DamageLabel.CLEAN

    def pixel_mask(self, height: int, width: int, label: DamageLabel | None = None) -> np.ndarray:
        """The damaged macroblocks (or only those with `label`) as an HxW bool mask (True = damaged)."""
        return blocks_to_pixels(self.damaged if label is None else self.labels == label, MB, height, width)


@dataclass(frozen=True)
class DamagedFrame:
    """A decoded frame slot together with its damage map: what the concealment stage consumes."""

    frame: DecodedFrame
    damage: DamageMap
    motion: MotionField  # its motion vectors per cell, worked out once for every stage that follows them


class DamageDetector(Protocol):
    """Labels the macroblocks of each frame slot, in presentation order."""

    # Whether it finds where pictures predicted from a stale reference (DecodedFrame.drifted) went wrong; where
    # not, every macroblock of such a picture is taken for damaged.
    traces_drift: bool

    def process_frame(self, frame: DecodedFrame, motion: MotionField) -> DamageMap: ...


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


class CellGrid:
    """The picture as 4x4-pixel cells, the smallest motion-compensation block of H.264/HEVC.

    Error estimates live on this grid (padded to whole macroblocks): a sixteenth of the
    pixels, so that tracing costs little beside decoding.
    """

    CELL = 4
    PER_MB = MB // CELL

    def __init__(self, height: int, width: int):
        self.height, self.width = height, width
        self.mb_shape = (-(-height // MB), -(-width // MB))
        self.shape = (self.mb_shape[0] * self.PER_MB, self.mb_shape[1] * self.PER_MB)

    def cell_mean(self, values: np.ndarray) -> np.ndarray:
        """Mean of an HxW float32 array over each 4x4 cell (zero outside the picture)."""
        rows, cols = self.shape
        cell = self.CELL
        whole_rows, whole_cols = -(-self.height // cell), -(-self.width // cell)
        if whole_rows * cell != self.height or whole_cols * cell != self.width:
            values = cv2.copyMakeBorder(values, 0, whole_rows * cell - self.height, 0, whole_cols * cell - self.width,
                                        cv2.BORDER_CONSTANT, value=0)
        cells = np.zeros(self.shape, np.float32)
        cells[:whole_rows, :whole_cols] = cv2.resize(values, (whole_cols, whole_rows), interpolation=cv2.INTER_AREA)
        return cells

    def mb_mean(self, cells: np.ndarray) -> np.ndarray:
        rows, cols = self.mb_shape
        return cells.reshape(rows, self.PER_MB, cols, self.PER_MB).mean(axis=(1, 3))

    def to_pixels(self, blocks: np.ndarray, size: int = CELL) -> np.ndarray:
        """Values held per `size`x`size` block (cells by default) at pixel resolution, cropped to the picture."""
        return blocks_to_pixels(blocks, size, self.height, self.width)

    def expand_mbs(self, blocks: np.ndarray) -> np.ndarray:
        return blocks_to_pixels(blocks, self.PER_MB, *self.shape)

    def squared_difference(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Per-cell mean squared difference of two uint8 planes."""
        difference = cv2.absdiff(a, b)
        if not cv2.countNonZero(difference):
            return np.zeros(self.shape, np.float32)
        return self.cell_mean(cv2.multiply(difference, difference, dtype=cv2.CV_32F))


class MotionField:
    """Where each 4x4 cell of a frame was predicted from, as read from the decoder's motion vectors.

    Worked out once per frame, on first use (clean stretches never need it), and applied to
    every error map traced along it. A source block straddles up to four cells; each is
    weighted by the area it covers (OpenCV's bilinear remap, whose weights come in 32nds).
    """

    # Measured between consecutive pictures (MeasuredMotion) rather than read from vectors into a reference picture,
    # which with B-frames lies several frames back.
    between_neighbours = False

    def __init__(self, grid: CellGrid, motion_vectors: np.ndarray | None):
        self.grid = grid
        self.vectors = motion_vectors  # the decoder's AVMotionVector records, as exported

    @functools.cached_property
    def cell_motion(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(dx, dy) in pixels from each cell to where it was predicted from in the previous frame,
        and which cells were predicted so; None for a picture with no prediction from the past."""
        return None if self.vectors is None else self._painted(self.vectors[self.vectors["source"] < 0])

    @functools.cached_property
    def following_motion(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """As `cell_motion`, for the prediction of a B picture from the reference picture shown after it."""
        return None if self.vectors is None else self._painted(self.vectors[self.vectors["source"] > 0])

    def _painted(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Per cell, the (dx, dy) of the vector covering it and whether one does; None without vectors.

        Whole-macroblock partitions (most of them) are painted on the macroblock grid and scaled up,
        the smaller ones cell by cell: half the time of painting every cell (it ran on every frame)."""
        if not len(vectors):
            return None
        cell, per_mb = CellGrid.CELL, CellGrid.PER_MB
        rows, cols = self.grid.shape
        wide, high = vectors["w"].astype(np.intp), vectors["h"].astype(np.intp)
        top, left = (vectors["dst_y"] - high // 2) // cell, (vectors["dst_x"] - wide // 2) // cell
        scale = np.maximum(vectors["motion_scale"], 1).astype(np.float32)
        values = ((vectors["motion_x"] / scale).astype(np.float32), (vectors["motion_y"] / scale).astype(np.float32),
                  np.ones(len(vectors), np.uint8))
        whole = (wide == MB) & (high == MB) & (top % per_mb == 0) & (left % per_mb == 0)
        whole &= (top >= 0) & (top < rows) & (left >= 0) & (left < cols)
        mb_rows, mb_cols, parts = top[whole] // per_mb, left[whole] // per_mb, np.flatnonzero(~whole)
        whole = np.flatnonzero(whole)
        wide, high = np.maximum(wide[parts] // cell, 1), np.maximum(high[parts] // cell, 1)
        counts = wide * high
        owner = np.repeat(parts, counts)
        offset = np.arange(owner.size) - np.repeat(np.cumsum(counts) - counts, counts)
        wide = np.repeat(wide, counts)
        cell_rows, cell_cols = top[owner] + offset // wide, left[owner] + offset % wide
        inside = (cell_rows >= 0) & (cell_rows < rows) & (cell_cols >= 0) & (cell_cols < cols)
        cell_rows, cell_cols, owner = cell_rows[inside], cell_cols[inside], owner[inside]
        planes = []
        for value in values:
            blocks = np.zeros(self.grid.mb_shape, value.dtype)
            blocks[mb_rows, mb_cols] = value[whole]
            plane = cv2.resize(blocks, (cols, rows), interpolation=cv2.INTER_NEAREST)
            plane[cell_rows, cell_cols] = value[owner]
            planes.append(plane)
        dx, dy, predicted = planes
        return dx, dy, predicted.view(bool)

    def smoothed_pixel_motion(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """`cell_motion` per pixel, each vector the median of its 3x3 cells' (the encoder chooses vectors for
        bits, not truth: the median keeps the motion and drops the odd vector; carphone at 10% loss, frames
        lost entirely rebuilt along them: 31.88 -> 32.05 dB, bikes 21.76 -> 21.75), and which pixels were
        predicted; None as there."""
        if self.cell_motion is None:
            return None
        dx, dy, predicted = self.cell_motion
        return (*(self.grid.to_pixels(cv2.medianBlur(a, 3)) for a in (dx, dy)),
                self.grid.to_pixels(predicted))

    @functools.cached_property
    def _sampling(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Where each cell was predicted from, in cells, as OpenCV sampling maps (x, y), and which
        cells were predicted (1.0) at all; None for an intra picture."""
        if self.cell_motion is None:
            return None
        dx, dy, predicted = self.cell_motion
        rows, cols = self.grid.shape
        return (np.arange(cols, dtype=np.float32)[None, :] + dx / CellGrid.CELL,
                np.arange(rows, dtype=np.float32)[:, None] + dy / CellGrid.CELL, predicted.astype(np.float32))

    def warp(self, error: np.ndarray) -> np.ndarray:
        """The error each cell inherits from the cells it was predicted from (0 for intra cells): the
        source position's bilinear mix of its four neighbouring cells, the grid's edge repeated outside."""
        if not error.any() or (sampling := self._sampling) is None:
            return np.zeros(self.grid.shape, np.float32)
        x, y, predicted = sampling
        return cv2.remap(error, x, y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE) * predicted


class MeasuredMotion(MotionField):
    """The motion field of a picture whose decoder exports no vectors (HEVC, VP9, AV1): measured by dense optical
    flow from the decoded picture to the one decoded before it. Damage moves with the content it was predicted
    into, so the decoded pictures' own motion says where it spread; every cell of an inter picture counts as
    predicted (its intra blocks are not known), and an intra picture has no motion from the past."""

    between_neighbours = True

    def __init__(self, grid: CellGrid, luma: np.ndarray, previous: np.ndarray | None):
        super().__init__(grid, None)
        self._pair: tuple[np.ndarray, np.ndarray] | None = None if previous is None else (luma, previous)

    @functools.cached_property
    def cell_motion(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        if self._pair is None:
            return None
        flow = dense_flow(*self._pair)
        self._pair = None  # measured once: the pictures need not be kept
        dx, dy = (self.grid.cell_mean(np.ascontiguousarray(flow[..., index])) for index in (0, 1))
        return dx, dy, np.ones(self.grid.shape, bool)


class ErrorTracer:
    """Carries a per-cell squared-error estimate forward along the decoder's motion vectors."""

    def __init__(self, grid: CellGrid) -> None:
        self.grid = grid
        self.error = np.zeros(grid.shape, np.float32)
        self._last_luma: np.ndarray | None = None
        self._gap = False

    def skip_missing(self) -> None:
        """A frame slot with no picture: the next frame predicts from a substitute reference."""
        self._gap = True

    def inherit(self, luma: np.ndarray, motion: MotionField) -> np.ndarray:
        """The error this frame inherits through inter prediction from the previous one."""
        error = self.error
        if self._gap and self._last_luma is not None:
            error = np.maximum(error, MISSING_REFERENCE_WEIGHT * self.grid.squared_difference(luma, self._last_luma))
        self._gap = False
        return motion.warp(error)

    def commit(self, luma: np.ndarray, error: np.ndarray) -> np.ndarray:
        """Keep this frame's error for the next one; return its labels-ready macroblock means."""
        self.error = error
        self._last_luma = luma
        return self.grid.mb_mean(error)


def _label(seeds: np.ndarray, mb_error: np.ndarray) -> np.ndarray:
    """LOST where seeded, PROPAGATED where the traced error still exceeds the damage threshold."""
    labels = np.where(mb_error > DAMAGE_MSE, DamageLabel.PROPAGATED, DamageLabel.CLEAN).astype(np.uint8)
    labels[seeds] = DamageLabel.LOST
    return labels


def drifted_everywhere(damage: DamageMap) -> DamageMap:
    """A frame's map with every clean macroblock taken for propagated: it was predicted from a stale reference
    picture, and nothing tells where that shows."""
    return DamageMap(damage.pts, np.where(damage.labels == DamageLabel.CLEAN, DamageLabel.PROPAGATED,
                                          damage.labels).astype(np.uint8))


def _missing_map(frame: DecodedFrame, grid: CellGrid) -> DamageMap:
    return DamageMap(frame.pts, np.full(grid.mb_shape, DamageLabel.MISSING_FRAME, dtype=np.uint8))


class RatioTracer:
    """Carries forward, along the decoder's motion vectors, the ratio of each cell's estimated squared
    error to the squared difference between the two decodes of the bitstream detector.

    The difference is propagated by the decoder itself: it is zero where nothing was predicted from
    damage, and shrinks and spreads as the damage does, through every reference index, intra block and
    deblocking filter, which the exported vectors alone do not tell. What it cannot know is how wrong
    the damage was to begin with: that is the ratio, set where damage starts and carried here. Where
    a cell's vector points at no difference (it was predicted from an older reference frame, or from
    damaged neighbours in its own picture) it takes its neighbourhood's ratio in the previous frame.
    Measured on the standard damaged clips at 3% / 10% loss, against scalar tracing of the error
    alone (recall / precision, with CONCEALMENT_RATIO): bikes 0.641 / 0.784 -> 0.841 / 0.775 and
    0.805 / 0.779 -> 0.830 / 0.835, chaplin 0.824 / 0.689 -> 0.884 / 0.823 and 0.840 / 0.685 -> 0.930 /
    0.801, foreman 0.980 / 0.739 -> 0.964 / 0.864 and 0.985 / 0.766 -> 0.993 / 0.833.
    """

    NEIGHBOURHOOD = 5  # cells across (20 pixels) over which a ratio is borrowed

    def __init__(self, grid: CellGrid) -> None:
        self.grid = grid
        self._ratio = np.zeros(grid.shape, np.float32)
        self._difference = np.zeros(grid.shape, np.float32)

    def inherit(self, motion: MotionField) -> np.ndarray:
        """The ratio each cell inherits from the previous frame."""
        if not self._difference.any():
            return np.zeros(self.grid.shape, np.float32)
        weighted = self._ratio * self._difference
        arriving = motion.warp(self._difference)
        size = (self.NEIGHBOURHOOD, self.NEIGHBOURHOOD)
        near_weighted = cv2.boxFilter(weighted, -1, size, normalize=False)
        near = cv2.boxFilter(self._difference, -1, size, normalize=False)
        fallback = np.where(near > 0, near_weighted / np.maximum(near, 1e-9), weighted.sum() / self._difference.sum())
        return np.where(arriving > 0, motion.warp(weighted) / np.maximum(arriving, 1e-9), fallback).astype(np.float32)

    def commit(self, difference: np.ndarray, ratio: np.ndarray) -> np.ndarray:
        """Keep this frame's ratio and difference; return its estimated squared error per cell."""
        self._ratio = np.where(difference > 0, ratio, 0).astype(np.float32)
        self._difference = difference
        return self._ratio * difference


class BitstreamDetector:
    """Blind detection from the damaged file alone.

    A second decode of the same file, concealing differently (SECOND_OPINION) and with the stand-ins
    for lost H.264 reference frames moved (concealer.h264_repair), differs from the primary one where
    FFmpeg concealed or a stand-in was used, and wherever that spread. Which macroblocks were lost is
    read from the motion vectors the two decodes export: a received block's vector is parsed from the
    bitstream and is the same in both, a concealed block's is FFmpeg's guess in one and not guessed in
    the other (measured at 10% loss: precision 1.000 / recall 0.996 on foreman, 1.000 / 0.998 on
    bikes, against the truth's lost macroblocks; the pixel differences that were used before scored
    0.58 / 0.40 on foreman). How wrong concealment is there is read from how far the two
    concealments disagree (CONCEALMENT_RATIO); how wrong a picture predicted from a stand-in is, from
    how far it moved from the frame before the gap. Both spread as the difference between the
    decodes does (RatioTracer). Codecs whose decoder exports no vectors (HEVC, VP9) fall back to the
    pixels: the part of the difference that the previous frame's difference does not explain (traced
    along the motion vectors) is new concealment, its error is estimated from the local motion
    between the two previous frames (concealment copies motion-compensated past content, which is
    right where nothing moves), and the error is traced as by the truth, along the motion measured
    between the decoded pictures (MeasuredMotion).
    """

    def __init__(self, path: Path, grid: CellGrid, vectors_exported: bool, interlaced_h264: bool = False):
        # Codecs without vectors have no FFmpeg concealment to choose: their second decode is plain. Interlaced
        # H.264's vectors tell its lost blocks (_lost_pairs), though not where damage spread.
        vectors_read = vectors_exported or interlaced_h264
        self._second = decoded_ahead(decode_frames(
            path, concealment=SECOND_OPINION if vectors_read else NO_CONCEALMENT, motion_vectors=vectors_read,
            marked_substitutes=vectors_exported, garbled_holes=not vectors_read))
        self._grid = grid
        self._vectors_exported = vectors_exported
        self._interlaced_h264 = interlaced_h264
        # The second decode stands marked copies in for lost H.264 reference pictures (h264_repair.H264GapRepair).
        self.traces_drift = vectors_exported
        self._ratio = RatioTracer(grid) if vectors_exported else None
        # The pixel fallback's error estimate, and its record of where the decodes differed, traced alike.
        self._pixel_tracers = None if vectors_exported else (ErrorTracer(grid), ErrorTracer(grid))
        self._recent: list[np.ndarray] = []  # the last two luma planes, newest first
        self._after_gap = False

    def process_frame(self, frame: DecodedFrame, motion: MotionField) -> DamageMap:
        other = next(self._second, None)
        if other is None or other.pts != frame.pts:
            raise InputError("the two decodes of the stream disagree on its frames; use --detect truth for this file")
        if frame.missing:
            self._after_gap = True
            for tracer in self._pixel_tracers or ():
                tracer.skip_missing()
            return _missing_map(frame, self._grid)
        luma = frame.luma()
        # A picture only the concealing decode produced has no second opinion: nothing found in it.
        difference = np.zeros(self._grid.shape, np.float32) if other.missing else \
            self._grid.squared_difference(luma, other.luma())
        if self._vectors_exported:
            if frame.b_picture and frame.slice_starts is not None:
                seeds = _unreceived_blocks(frame.slice_starts, motion.vectors, self._grid.mb_shape) \
                    if frame.picture.is_corrupt else np.zeros(self._grid.mb_shape, bool)  # FFmpeg concealed nothing
            else:
                seeds = _concealed_blocks(self._grid, motion, other.motion_vectors, difference)
                if frame.slice_starts is not None:
                    seeds = _lost_to_next_slice(seeds, frame.slice_starts, bridged=False)
            mb_error = self._traced_ratio(luma, motion, difference, self._grid.expand_mbs(seeds), frame.drifted,
                                          frame.b_picture)
        else:
            known = frame.substituted  # lost CTUs the HEVC stream repair replaced
            if frame.cut_short is not None and not other.missing:
                cut = frame.cut_short.lost_blocks(self._grid.mb_mean(difference) > DAMAGE_MSE)
                known = cut if known is None else known | cut
            if self._interlaced_h264 and not other.missing:
                concealed = _concealed_blocks(self._grid, MotionField(self._grid, frame.motion_vectors),
                                              other.motion_vectors, difference)
                known = _lost_pairs(concealed, frame.slice_starts)
            elif not self._interlaced_h264 and frame.slice_starts is not None:
                # H.264 deeper than 8 bits: the blocks before the first slice that arrived were lost, whatever the
                # pixels say (foreman in 10 bits at 5%, seed 2: a picture that lost its top half was found clean).
                known = _lost_to_next_slice(np.zeros(self._grid.mb_shape, bool), frame.slice_starts, bridged=False)
            seeds, mb_error = self._traced_pixels(luma, motion, difference, known)
        self._recent = [luma] + self._recent[:1]
        self._after_gap = False
        if frame.drifted:
            mb_error = np.where(clipped_blocks(luma), np.maximum(mb_error, TRUTH_SEED_ERROR), mb_error)
        damage = DamageMap(frame.pts, _label(seeds, mb_error))
        # The second decode could not stand marked copies in for the lost reference pictures, or did not decode
        # this one: nothing shows where a stale reference put it wrong.
        return drifted_everywhere(damage) if frame.drifted and (other.missing or other.drifted) else damage

    def _concealment_error(self) -> np.ndarray:
        """Estimated squared error of concealment per cell, where the two decodes' disagreement says nothing of
        it: the motion between the two previous frames."""
        if len(self._recent) < 2:
            return np.full(self._grid.shape, TRUTH_SEED_ERROR, np.float32)
        return np.maximum(self._grid.squared_difference(*self._recent), CONCEALMENT_ERROR_FLOOR)

    def _traced_ratio(self, luma: np.ndarray, motion: MotionField, difference: np.ndarray,
                      concealed: np.ndarray, drifted: bool, b_picture: bool) -> np.ndarray:
        ratio = self._ratio.inherit(motion)
        scale = 1 / np.maximum(difference, 1e-9)
        # Predicted from a stand-in: off by the motion across the gap. With B-frames the pictures predicted from
        # it are not the next one shown but those decoded after it, where nothing was carried yet.
        stand_in = ratio == 0 if drifted else self._after_gap
        if np.any(stand_in) and self._recent:
            ratio = np.where(stand_in, np.maximum(ratio, MISSING_REFERENCE_WEIGHT * scale *
                                                  self._grid.squared_difference(luma, self._recent[0])), ratio)
        if b_picture:
            # FFmpeg conceals a B picture's own lost blocks alike in both decodes (_unreceived_blocks), so where
            # they differ and nothing shown before explains it, the difference was predicted from the concealment
            # of the I or P picture shown after it, decoded before it and not traced yet: its ratio is that one's.
            ratio = np.where((ratio == 0) & (difference > 0), CONCEALMENT_RATIO, ratio)
        if concealed.any():
            ratio = np.where(concealed, CONCEALMENT_RATIO, ratio)
        return self._grid.mb_mean(self._ratio.commit(difference, ratio))

    def _traced_pixels(self, luma: np.ndarray, motion: MotionField, difference: np.ndarray,
                       known: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Lost macroblocks and the error estimate per cell from the difference between the decodes. `known`: the
        macroblocks known to be lost (an HEVC stream repair's substitutes, interlaced H.264's lost pairs), lost
        whether or not damage had spread there before."""
        error, differed = self._pixel_tracers
        inherited = error.inherit(luma, motion)
        explained = differed.inherit(luma, motion)
        differed.commit(luma, difference)
        concealed = (difference > 0) & (explained <= 0)
        if known is not None:
            concealed |= self._grid.expand_mbs(known)
        estimate = np.where(concealed, self._concealment_error(), 0).astype(np.float32) if concealed.any() else \
            np.zeros(self._grid.shape, np.float32)
        seeds = (self._grid.mb_mean(estimate) > DAMAGE_MSE) & (self._grid.mb_mean(inherited) <= DAMAGE_MSE)
        if known is not None:
            seeds = seeds | known
        return seeds, error.commit(luma, np.maximum(inherited, estimate))


def clipped_blocks(luma: np.ndarray) -> np.ndarray:
    """Macroblocks of a picture predicted from a stand-in for a lost reference (DecodedFrame.drifted) that are
    mostly at the ends of the sample range. The residuals were coded against the lost picture; added to a stand-in
    that differs much (a reference lost at a scene cut), they overflow, and both decodes clip to the same white or
    black, so where the damage is their difference no longer says. bbb_720p_vp8_30s from frame 600 (300 frames at
    640x360, three B-frames, 3% loss): the first P picture after a cut to black was lost, and the 17 pictures up to
    the next keyframe decoded near-white (luma MSE 40,000-56,000) with not one block marked."""
    low, high = CLIPPED_LUMA
    clipped = ((luma <= low) | (luma >= high)).astype(np.float32)
    return macroblock_mean(clipped) > CLIPPED_SHARE


def _concealed_blocks(grid: CellGrid, primary: MotionField, second_vectors: np.ndarray | None,
                      difference: np.ndarray) -> np.ndarray:
    """Macroblocks whose motion differs between the two decodes (or, in a picture predicted
    from nothing, whose central pixels differ), with short raster-order gaps between them
    closed: slices are raster runs, and a concealed block whose guessed vector happens to
    equal the second decode's sits inside a lost run (closing gaps of up to LOST_RUN_GAP blocks
    raised recall on bikes at 10% loss from 0.930 to 0.995 at precision 1.000)."""
    rows, cols = grid.mb_shape
    vectors = primary.vectors
    if not difference.any() or (vectors is not None and second_vectors is not None and
                                np.array_equal(vectors, second_vectors)):
        return np.zeros((rows, cols), bool)  # nothing concealed: the decodes agree
    first, second = primary.cell_motion, MotionField(grid, second_vectors).cell_motion
    if first is None and second is None:
        central = difference.reshape(rows, grid.PER_MB, cols, grid.PER_MB)[:, 1:-1, :, 1:-1]
        return (central > 0).any(axis=(1, 3))
    still = (np.zeros(grid.shape, np.float32), np.zeros(grid.shape, np.float32), np.zeros(grid.shape, bool))
    first, second = first or still, second or still
    cells = (first[2] != second[2]) | (first[0] != second[0]) | (first[1] != second[1])
    lost = cells.reshape(rows, grid.PER_MB, cols, grid.PER_MB).any(axis=(1, 3)).ravel()
    found = np.flatnonzero(lost)
    for start, end in itertools.pairwise(found):
        if 1 < end - start <= LOST_RUN_GAP + 1:
            lost[start:end] = True
    return lost.reshape(rows, cols)


def _unreceived_blocks(slice_starts: list[int], vectors: np.ndarray | None, mb_shape: tuple[int, int]) -> np.ndarray:
    """The macroblocks of an H.264 B picture that no slice brought, from where its slices that arrived start.

    FFmpeg conceals a B picture's lost blocks the same way whatever the concealment flags (one 16x16 vector
    into the picture before it), so the two decodes agree there and _concealed_blocks finds nothing. A slice covers the
    macroblocks from its first one on, in raster order, up to the next slice's first: the lost ones of that
    stretch are those at its end that FFmpeg concealed, each exported as one 16x16 vector from the past
    (LOST_RUN_LEAST of them at least, as a slice that arrived may end in a few such blocks), and every block
    before the first slice that arrived."""
    rows, cols = mb_shape
    total = rows * cols
    lost = np.zeros(total, bool)
    stretches = _slice_stretches(lost, slice_starts)
    if stretches and vectors is not None and len(vectors):
        covering = (vectors["dst_y"] - vectors["h"] // 2) // MB * cols + (vectors["dst_x"] - vectors["w"] // 2) // MB
        inside = (covering >= 0) & (covering < total)
        covering, vectors = covering[inside], vectors[inside]
        concealed_like = (vectors["w"] == MB) & (vectors["h"] == MB) & (vectors["source"] < 0)
        count = np.bincount(covering, minlength=total)
        like = (count == 1) & (np.bincount(covering, weights=concealed_like, minlength=total) == 1)
        for start, end in stretches:
            first = end
            while first - 1 > start and like[first - 1]:
                first -= 1
            if end - first >= LOST_RUN_LEAST:
                lost[first:end] = True
    return lost.reshape(mb_shape)


def _lost_pairs(concealed: np.ndarray, slice_starts: list[int] | None) -> np.ndarray:
    """The macroblocks an interlaced (MBAFF) H.264 picture lost, from those whose vectors the two decodes disagree
    on (`concealed`: FFmpeg guessed them) and where its slices that arrived start (macroblock pair addresses).
    FFmpeg's concealment of such pictures goes by whole rows of macroblock pairs: from the start of the row where a
    lost slice started (received pairs before it concealed over), and none of the row where the slice ended, whose
    pairs keep whatever the decoder's buffer held (black, or an old picture) and, never marked, spread it into every
    later picture. Slices tile the picture: a lost run of pairs ends where the next slice that arrived starts, and
    every pair before the first one that arrived was lost. Foreman, bikes and chaplin coded so by x264 at 5 / 10%
    loss, seeds 2-4, recall / precision of the lost label against the truth: 0.16-0.98 / 0.84-0.98 from the pixels,
    0.994-1.000 / 0.80-0.98 so (what that made of `conceal`: detect_damage)."""
    rows, cols = concealed.shape
    pair_rows = -(-rows // 2)
    padded = np.zeros((2 * pair_rows, cols), bool)
    padded[:rows] = concealed
    lost = _lost_to_next_slice(padded.reshape(pair_rows, 2, cols).any(axis=1), slice_starts, bridged=True)
    return lost.repeat(2, axis=0)[:rows]


def _lost_to_next_slice(concealed: np.ndarray, slice_starts: list[int] | None, bridged: bool) -> np.ndarray:
    """`concealed` (blocks in slice address order, a grid) with every block before the first slice that arrived
    marked, and the lost blocks of each stretch from a slice that arrived to the next one's start extended to that
    start, from the last of them, or from the first (`bridged`): slices tile the picture, so the slices lost after
    one that arrived run to where the next one that arrived starts.

    Progressive H.264 is not bridged: where both concealments guess the same vector inside a run (FFmpeg's copy of
    the picture before, right where nothing moves) the fill did worse than that copy when the slice was cut short
    rather than lost (MPEG-TS loses parts of slices). foreman with three B-frames over MPEG-TS at 5%, seed 2: 26.79
    dB unbridged, 25.58 bridged; chaplin so at seed 4 26.35 / 26.02; chaplin over RTP at 3 / 10 / 20% 33.48 / 28.39
    / 22.46 dB unbridged, 33.54 / 28.61 / 22.42 bridged. Over 28 damaged clips (RTP and TS, B-frames or none),
    against neither: +0.74 dB summed unbridged, -0.60 bridged. Lost-label recall against the truth, chaplin at 3 /
    10%: 0.74 / 0.74 by the vectors alone, 0.82 / 0.85 so (the black side bars, copied right, stay unmarked inside a
    run)."""
    lost = concealed.ravel().copy()
    for start, end in _slice_stretches(lost, slice_starts):
        run = np.flatnonzero(lost[start:end])
        if run.size:
            lost[start + run[0 if bridged else -1]:end] = True
    return lost.reshape(concealed.shape)


def _slice_stretches(lost: np.ndarray, slice_starts: list[int] | None) -> list[tuple[int, int]]:
    """The stretch of blocks (in slice address order) from each slice that arrived to the next one's start: what it
    and the slices lost after it covered. Marks every block of `lost` before the first slice that arrived."""
    starts = sorted({start for start in slice_starts or () if 0 <= start < lost.size})
    if starts:
        lost[:starts[0]] = True
    return list(itertools.pairwise(starts + [lost.size]))


class TruthDetector:
    """Lost macroblocks and missing frames from simulate-loss's sidecar; propagation traced as above."""

    traces_drift = False

    def __init__(self, truth_json: Path, grid: CellGrid):
        try:
            doc, pts, maps = load_truth(truth_json)
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"{truth_json}: not a readable simulate-loss truth file ({exc})") from exc
        if maps.shape[1:] != grid.mb_shape:
            raise InputError(f"{truth_json}: its macroblock maps are {maps.shape[1:]}, "
                             f"the video's grid is {grid.mb_shape}")
        self._lost = dict(zip(pts.tolist(), maps))
        self.lost_frames = tuple(int(t) for t in doc.get("lost_frames", ()))  # sent, lost whole
        self._grid = grid
        self._tracer = ErrorTracer(grid)

    def process_frame(self, frame: DecodedFrame, motion: MotionField) -> DamageMap:
        if frame.missing:
            self._tracer.skip_missing()
            return _missing_map(frame, self._grid)
        luma = frame.luma()
        inherited = self._tracer.inherit(luma, motion)
        seeds = self._lost.get(frame.pts, np.zeros(self._grid.mb_shape, dtype=bool))
        mb_error = self._tracer.commit(luma, np.maximum(inherited, TRUTH_SEED_ERROR * self._grid.expand_mbs(seeds)))
        return DamageMap(frame.pts, _label(seeds, mb_error))


DETECTION_MODES = ("auto", "truth", "bitstream", "pixels")


def default_truth_path(damaged: Path) -> Path:
    return Path(damaged).with_name(Path(damaged).name + ".truth.json")


def detect_damage(path: Path, *, mode: str = "auto", truth: Path | None = None) -> Iterator[DamagedFrame]:
    """Decode `path` (FFmpeg's concealment on) and yield every frame slot with its damage map.

    `auto` uses the truth file when one is given, else the bitstream detector. `pixels` reads the decoded
    pictures alone, for video whose damage was baked in by a decode and re-encode (concealer.pixel_detection).
    """
    if mode not in DETECTION_MODES:
        raise UsageError(f"unknown detection mode {mode!r} (use {', '.join(DETECTION_MODES)})")
    keep_large_blocks()
    if mode == "truth" and truth is None:
        truth = default_truth_path(path)
        if not truth.exists():
            raise UsageError(f"--detect truth needs a truth file: none given and {truth} does not exist")
    video_format = probe_video_format(path)  # the pictures' size, which a damaged header may misstate
    grid = CellGrid(video_format.height, video_format.width)
    # Interlaced pictures (field macroblock pairs, fields) are mapped as those of codecs without vectors are:
    # from where a concealing and a plain decode differ, traced along measured motion. FFmpeg exports no guessed
    # vector for a concealed field macroblock pair, and the vectors it does export count field lines. Foreman
    # CIF coded by x264 as MBAFF (tff), 40 frames, 5% loss, seeds 0 / 2 / 3, recall / precision from the
    # vectors 0.606 / 0.317, 0.681 / 0.987, 0.813 / 0.883, so 0.966 / 0.323, 0.999 / 0.926, 0.979 / 0.797;
    # `conceal` 35.62 -> 35.83, 18.54 -> 23.39, 28.03 -> 29.26 dB. Which blocks were lost, though, the vectors do
    # tell, pair by pair (_lost_pairs): foreman, bikes, chaplin and carphone coded so (`simulate-loss --interlaced`,
    # no B-frames) at 5 / 10% loss, seeds 2-4, `conceal` 0.63 -> 2.67 dB above a plain decode on average over the 24
    # (with the truth's map: 2.74); foreman at 5% seed 2 18.40 -> 30.99 against 18.38, bikes at 10% seed 4 21.30 ->
    # 20.67 against 20.02.
    # Nor do the vectors of H.264 deeper than 8 bits tell its lost blocks: FFmpeg's concealment guesses the same ones
    # there with `ec` as SECOND_OPINION. Foreman re-encoded in 10 bits (yuv420p10le), 5% loss as it is, seed 1: 14
    # of the 195 macroblocks the first damaged picture lost differed in their vectors; the whole clip's lost label,
    # recall / precision against the truth, 0.076 / 1.000 from the vectors, 0.936 / 0.995 from the pixels (seed 2:
    # 0.054 -> 0.631); `conceal` 26.34 / 22.87 / 36.28 -> 26.77 / 23.02 / 37.39 dB at seeds 1-3, against a plain
    # decode's 26.15 / 22.71 / 35.94.
    vectors_exported = video_format.codec in VECTOR_EXPORTING_CODECS and not video_format.interlaced and \
        sample_bits(av.VideoFormat(video_format.pix_fmt)) <= 8
    use_truth = mode == "truth" or (mode == "auto" and truth is not None)
    detector: DamageDetector
    if mode == "pixels":
        from .pixel_detection import PixelDetector  # it builds on this module's types
        detector = PixelDetector(grid.mb_shape)
    else:
        detector = TruthDetector(truth, grid) if use_truth else BitstreamDetector(
            path, grid, vectors_exported, video_format.codec == "h264" and video_format.interlaced)
    previous_luma = None  # of the last picture decoded, where motion is measured rather than exported
    frames = decode_frames(path, concealment=FFMPEG_CONCEALMENT, motion_vectors=True, gaps_are_losses=mode == "pixels",
                           sent=detector.lost_frames if isinstance(detector, TruthDetector) else ())
    for frame in decoded_ahead(frames):
        if vectors_exported or frame.missing:
            motion = MotionField(grid, frame.motion_vectors)
        else:
            luma = frame.luma()
            motion = MeasuredMotion(grid, luma, None if frame.picture.pict_type == av.video.frame.PictureType.I
                                    else previous_luma)
            previous_luma = luma
        damage = detector.process_frame(frame, motion)
        if frame.drifted and not detector.traces_drift:  # predicted from a stale reference, nothing says where
            damage = drifted_everywhere(damage)
        yield DamagedFrame(frame, damage, motion)


def write_damage_maps(maps: list[DamageMap], path: Path) -> None:
    """The masks file: `pts` (N,) int64, `mb` (N, rows, cols) bool and `label` (N, rows, cols) uint8."""
    labels = np.array([m.labels for m in maps], dtype=np.uint8)
    write_npz(path, pts=np.array([m.pts for m in maps], dtype=np.int64), mb=labels != DamageLabel.CLEAN,
              label=labels)


def scaled_box(box: tuple[slice, slice], scale: int) -> tuple[slice, slice]:
    """A luma box, its start a multiple of `scale`, in units `scale` times larger (chroma samples: 2, cells: 4)."""
    rows, cols = box
    return slice(rows.start // scale, -(-rows.stop // scale)), slice(cols.start // scale, -(-cols.stop // scale))


def plane_boxes(box: tuple[slice, slice]) -> list[tuple[slice, slice]]:
    """A luma box in the samples of each of the Y, U and V planes."""
    chroma = scaled_box(box, 2)
    return [box, chroma, chroma]

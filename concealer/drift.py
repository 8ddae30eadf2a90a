"""Drift correction: repair the damage that spread into later frames through inter prediction.

The decoder built each inter block as (reference pixels at its motion vector) + residual,
from a reference that still held FFmpeg's concealment. Had it used our repaired reference,
the block would differ by exactly the correction we made there, moved along the same
motion vector (motion compensation is linear, up to rounding and deblocking). So the
correction (repaired - decoded) of each frame is warped along the decoder's motion vectors
and added to the frames predicted from it. An intra block of an inter picture was predicted
from the damaged pixels beside it, so it takes their correction by its prediction mode
(concealer.intra): with perfect references, intra blocks of bikes at 3% loss measured a luma
MSE of 120.6 left alone, 48.1 so corrected. In `conceal` (blind detection) that moved bikes
from 32.49 / 24.53 / 21.30 to 32.58 / 24.74 / 21.39 dB at 3 / 10 / 20% loss, chaplin from
32.34 / 26.91 / 21.26 to 32.50 / 27.06 / 21.30 and foreman from 37.04 / 30.09 / 18.43 to
37.07 / 30.20 / 18.43 (carphone, whose pictures are single slices, and HEVC unchanged).

The exported motion vectors do not say which reference picture a block used (x264 uses
up to three), so each 8x8 block (H.264's reference-index granularity) takes the correction
of the recent picture whose decoded pixels, moved by the vectors, match the block best.
Measured on foreman at 10% loss with perfect repairs of the lost blocks (truth mode): luma
PSNR 27.8 dB without drift correction, 32.1 dB carrying from the previous picture only,
34.7 dB choosing among three per 4x4 cell; choosing per 8x8 block instead then added
0.00-0.08 dB with blind detection (foreman, carphone, chaplin, bikes at 10%; bbb 720p at 5%).

Forward correction can only be as right as its fill of the lost blocks; what it could not know
(content that entered the damaged area after the loss) the next keyframe shows, and
KeyframeBackfill corrects the frames before it from it, going backwards.
"""
from __future__ import annotations

import collections
import dataclasses
from dataclasses import dataclass

import av
import cv2
import numpy as np

from .concealment import Picture, same_scene
from .detection import (CLIPPED_SHARE, MB, CellGrid, DamagedFrame, DamageLabel, DamageMap, blocks_to_pixels,
                        clipped_blocks, drifted_everywhere, macroblock_mean, plane_boxes, scaled_box)
from .intra import carry_into_intra
from .motion import Warp, estimate_warp, pixel_grid
from .rebuild import cross_fade

# Codecs whose decoders' references after a loss are what the correction assumes: FFmpeg's concealment and its
# stand-in for a lost frame (the last picture), or the substitutes of the HEVC stream repair. VP9 and AV1 decoders
# predict from whatever stale reference a lost frame left: carried along measured motion there, carphone_qcif
# in AV1 at 3 / 10 / 20% loss went from 18.94 / 18.51 / 25.19 to 18.05 / 17.62 / 23.97 dB.
CARRIED_CODECS = ("h264", "hevc", "mpeg2video", "mpeg4", "mpeg1video", "h263")
# Intact share of a picture below which a scene cut is judged on all of its pixels, damage and all: in H.264 with
# B-frames every picture after a lost reference is marked damaged whole. Measured against judging such pictures
# the same scene (nothing to judge by), on clips coded by x264 with its own keyframe choice (cuts) at 5% loss,
# two seeds each: bikes with B-frames 23.90 -> 25.94 dB (FFmpeg 25.44), bikes with intra refresh 22.72 -> 23.70
# (FFmpeg 22.95), chaplin and bikes without B-frames unchanged; but bikes with three B-frames at 20% loss and a
# fixed GOP, whose damaged pictures differ from the keyframe after them by 41.8, 22.17 -> 21.20 (FFmpeg 21.14).
# Moving the keyframe along the optical flow first, or a higher threshold, separated neither set of cases better.
SCENE_JUDGED_SHARE = 0.25
# Reference pictures tried per cell: x264's default `ref` (preset medium).
REFERENCES = 3


@dataclass(frozen=True)
class _Reference:
    halved: np.ndarray  # the luma of what the decoder holds as the reference picture, at half resolution
    slot: int  # where its correction (repaired - decoded) lies in the stacked correction planes
    changed: np.ndarray  # per cell: whether that correction is anything but zero there, in any plane
    pts: int | None  # the picture's, by which a better repair of it replaces this one (revise)
    # A B picture shown before the next I or P picture but decoded after it, so no reference of that one.
    decoded_after_next: bool


class CorrectionStack:
    """The corrections (repaired - decoded) of the last few reference pictures, and how to move them along a
    picture's motion vectors into it.

    They are kept stacked, one tall float32 image per plane with a slot of picture height per reference (reused
    in turn) and a spare slot of zeros for the samples predicted from nothing, so that one remap per plane moves
    every sample from whichever reference it was predicted from; and only in the macroblocks that some non-zero
    correction can reach."""

    def __init__(self, height: int, width: int, capacity: int):
        self._grid = CellGrid(height, width)
        self._capacity = capacity
        self._references: list[_Reference] = []  # newest first
        self._stacked: list[np.ndarray] | None = None  # per plane: `capacity` slots of corrections, one of zeros
        self._next_slot = 0

    def clear(self) -> None:
        """Forget every reference: what comes next cannot be predicted from them."""
        self._references = []

    @property
    def correcting(self) -> bool:
        """Whether any reference's correction is anything but zero."""
        return any(r.changed.any() for r in self._references)

    def carried(self, luma: np.ndarray, dx: np.ndarray, dy: np.ndarray, predicted: np.ndarray,
                b_picture: bool = True) -> list[np.ndarray] | None:
        """The Y, U and V corrections of the references moved into a picture (its decoded `luma`) along its
        per-cell vectors (dx, dy), in the cells `predicted` from them; each 8x8 block from the reference that it
        matches best (the vectors do not say which). An I or P picture (not `b_picture`) takes none from the B
        pictures decoded after it. None where no correction reaches the picture."""
        references = [r for r in self._references if b_picture or not r.decoded_after_next]
        if not any(r.changed.any() for r in references):
            return None
        reached = self._reached(references, dx, dy, predicted)
        if not reached[0].size:
            return None
        chroma = (-(-luma.shape[0] // 2), -(-luma.shape[1] // 2))
        # A sample not predicted at all takes the zero correction of the spare slot.
        slots = np.where(predicted, self._slots_used(references, luma, _cell_sources(dx, dy, 2, chroma)),
                         self._capacity)
        return self._carried(reached, (dx, dy, slots))

    def _reached(self, references: list[_Reference], dx: np.ndarray, dy: np.ndarray, predicted: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
        """(rows, columns) of the macroblocks with a cell predicted from where some reference's correction is
        not zero: elsewhere the carried correction is zero, and it is worked out for these alone (bbb 720p at
        5% loss: 43% of the macroblocks of the frames after damage)."""
        changed = np.logical_or.reduce([r.changed for r in references])
        table = np.pad(changed.cumsum(0, dtype=np.int32).cumsum(1, dtype=np.int32), ((1, 0), (1, 0)))
        rows, cols = changed.shape
        cell = CellGrid.CELL
        bottom, right = (self._grid.height - 1) // cell, (self._grid.width - 1) // cell  # the last cells inside
        # A cell's samples, and the neighbours its bilinear reads take in, lie within cell + 1 pixels of its source.
        top = np.arange(rows, dtype=np.float32)[:, None] * cell + dy
        left = np.arange(cols, dtype=np.float32)[None, :] * cell + dx
        row_from, row_to = (np.clip(np.floor(e / cell), 0, bottom).astype(np.intp) for e in (top, top + cell))
        col_from, col_to = (np.clip(np.floor(e / cell), 0, right).astype(np.intp) for e in (left, left + cell))
        touched = table[row_to + 1, col_to + 1] - table[row_from, col_to + 1] - table[row_to + 1, col_from] + \
            table[row_from, col_from]
        per_mb = CellGrid.PER_MB
        return np.nonzero((predicted & (touched > 0)).reshape(rows // per_mb, per_mb, cols // per_mb, per_mb)
                          .any(axis=(1, 3)))

    def _carried(self, blocks: tuple[np.ndarray, np.ndarray], cells: tuple[np.ndarray, np.ndarray, np.ndarray]
                 ) -> list[np.ndarray]:
        """The Y, U and V corrections moved along the vectors, each sample from its cell's slot (`cells`: per
        cell, the luma dx, dy and the slot), worked out in the macroblocks `blocks` only (packed side by side,
        as many to a row as the picture holds) and zero elsewhere.

        Each sample's source row, clamped to the picture, is offset into its slot of the stacked
        corrections: the result is the same, sample for sample, as moving every reference's correction
        and picking (three remaps per plane instead of one: at 720p the drift correction spent most of its
        time in them; bbb 720p at 5% loss went from 3.34 to 2.86 times a plain decode + encode). Columns
        need no clamp: the border is replicated within the row."""
        dx, dy, slots = cells
        per_mb = CellGrid.PER_MB
        grid_rows, grid_cols = self._grid.mb_shape
        mb_rows, mb_cols = blocks
        count = len(mb_rows)
        packed_rows = -(-count // grid_cols)
        spare = np.zeros(packed_rows * grid_cols - count, np.intp)  # fill the last packed row (results dropped)
        within = np.arange(per_mb)
        # The flat grid index of each cell of the chosen macroblocks, packed as their samples will be.
        chosen = ((np.concatenate([mb_rows, spare]) * per_mb)[:, None, None] + within[None, :, None]) * \
            (grid_cols * per_mb) + (np.concatenate([mb_cols, spare]) * per_mb)[:, None, None] + within[None, None, :]
        chosen = chosen.reshape(packed_rows, grid_cols, per_mb, per_mb).transpose(0, 2, 1, 3).reshape(
            packed_rows * per_mb, grid_cols * per_mb)
        # Where each cell's macroblock has its corner (the same for all its cells), in macroblocks.
        corner_rows = (np.arange(grid_rows * per_mb) // per_mb).astype(np.float32)[:, None]
        corner_cols = (np.arange(grid_cols * per_mb) // per_mb).astype(np.float32)[None, :]

        def packed(values: np.ndarray, size: int) -> np.ndarray:
            """Per-cell values of the chosen macroblocks, packed, with `size` samples a macroblock side."""
            return blocks_to_pixels(values.ravel().take(chosen), size // per_mb, packed_rows * size, grid_cols * size)

        carried = []
        for scale, indices in ((1, [0]), (2, [1, 2])):  # luma, and chroma (U and V alike)
            size = MB // scale
            rows, cols = self._stacked[indices[0]].shape[0] // (self._capacity + 1), self._stacked[indices[0]].shape[1]
            # Where each sample lies in the picture: its macroblock's corner and its place in the macroblock
            # (the same in every packed one).
            map_x = packed(dx / scale + corner_cols * size, size)
            map_x += np.arange(grid_cols * size, dtype=np.float32) % size
            map_y = packed(dy / scale + corner_rows * size, size)
            map_y += (np.arange(packed_rows * size, dtype=np.float32) % size)[:, None]
            np.clip(map_y, 0, rows - 1, out=map_y)
            map_y += packed((slots * rows).astype(np.float32), size)
            fixed, table = cv2.convertMaps(map_x, map_y, cv2.CV_16SC2)
            for index in indices:
                moved = cv2.remap(self._stacked[index], fixed, table, cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REPLICATE)
                moved = moved.reshape(packed_rows, size, grid_cols, size).transpose(0, 2, 1, 3)
                plane = np.zeros((grid_rows * size, grid_cols * size), np.float32)
                plane.reshape(grid_rows, size, grid_cols, size)[mb_rows, :, mb_cols, :] = \
                    moved.reshape(packed_rows * grid_cols, size, size)[:count]
                carried.append(plane[:rows, :cols])
        return carried

    def _slots_used(self, references: list[_Reference], luma: np.ndarray, chroma_from: tuple[np.ndarray, np.ndarray]
                    ) -> np.ndarray:
        """Per cell, the slot of the one of `references` whose motion-compensated luma fits its 8x8 block best.

        Matched at half resolution (4x4 samples a block, moved as chroma is, `chroma_from`): a quarter
        of the work, which at 720p was the largest part of the drift correction's time."""
        if len(references) == 1:
            return np.full(self._grid.shape, references[0].slot)
        halved = _halved(luma)
        maps = cv2.convertMaps(*chroma_from, cv2.CV_16SC2)
        costs = [self._block_mean(cv2.absdiff(cv2.remap(r.halved, *maps, cv2.INTER_LINEAR,
                                                        borderMode=cv2.BORDER_REPLICATE), halved))
                 for r in references]
        best = np.array([r.slot for r in references])[np.argmin(np.stack(costs), axis=0)]
        return best.repeat(2, axis=0).repeat(2, axis=1)

    def _block_mean(self, halved: np.ndarray) -> np.ndarray:
        """Mean of a half-resolution plane over each 8x8 luma block (4x4 samples), edges repeated."""
        rows, cols = self._grid.mb_shape
        padded = cv2.copyMakeBorder(halved, 0, rows * 8 - halved.shape[0], 0, cols * 8 - halved.shape[1],
                                    cv2.BORDER_REPLICATE)
        return cv2.resize(padded.astype(np.float32), (cols * 2, rows * 2), interpolation=cv2.INTER_AREA)

    def remember(self, decoded: Picture, repaired: Picture, *, pts: int | None = None, b_picture: bool = False
                 ) -> None:
        """A new reference picture: what the decoder holds (`decoded`) and what we made of it.

        For a frame lost entirely, `decoded` is the decoder's stand-in for it (FFmpeg repeats
        the previous picture) and `repaired` our rebuilt frame. A reference `b_picture` (a B-pyramid's
        middle picture) is held out of the next I or P picture's references, decoded before it."""
        if not b_picture:  # the B pictures before it were decoded before the next I or P picture
            self._references = [dataclasses.replace(r, decoded_after_next=False) for r in self._references]
        slot, self._next_slot = self._next_slot, (self._next_slot + 1) % self._capacity
        changed = self._store(slot, decoded, repaired)  # in the oldest reference's slot, now free
        self._references = [_Reference(_halved(decoded.y), slot, changed, pts, b_picture)] + \
            self._references[:self._capacity - 1]

    def revise(self, pts: int, decoded: Picture, repaired: Picture) -> None:
        """A better repair of the reference picture remembered at `pts`, if it is still held (an intra picture
        since then lets go of every reference)."""
        for index, reference in enumerate(self._references):
            if reference.pts == pts:
                self._references[index] = dataclasses.replace(reference,
                                                               changed=self._store(reference.slot, decoded, repaired))

    def _store(self, slot: int, decoded: Picture, repaired: Picture) -> np.ndarray:
        """Put the correction (repaired - decoded) in `slot`; per cell, whether it is anything but zero."""
        planes = list(zip((repaired.y, repaired.u, repaired.v), (decoded.y, decoded.u, decoded.v)))
        if self._stacked is None:  # and a spare slot, left zero
            self._stacked = [np.zeros(((self._capacity + 1) * d.shape[0], d.shape[1]), np.float32) for _, d in planes]
        changed = np.zeros(self._grid.shape, bool)
        cell = CellGrid.CELL
        for stacked, (r, d), size in zip(self._stacked, planes, (cell, cell // 2, cell // 2)):  # samples a cell side
            correction = stacked[slot * d.shape[0]:(slot + 1) * d.shape[0]]
            np.subtract(r, d, out=correction, dtype=np.float32)
            cells = cv2.dilate(cv2.absdiff(r, d), np.ones((size, size), np.uint8), anchor=(0, 0))[::size, ::size]
            changed[:cells.shape[0], :cells.shape[1]] |= cells > 0
        return changed


class DriftCorrector:
    """Carries the corrections made in recent frames into the frames predicted from them (CorrectionStack),
    and through intra prediction into the intra blocks beside them (concealer.intra). In a stream with
    B-frames the caller remembers the I and P pictures and the B pictures other pictures refer to (x264's
    B-pyramid puts the middle B picture of each run among the references of the pictures decoded after it,
    the next I or P picture excepted); FollowingCarry corrects the B pictures from the pictures shown after them,
    and the B references are remembered again with that correction. Against I and P pictures alone, `conceal` on
    the training clips with three B-frames: bikes at 3 / 10 / 20% loss 28.95 / 25.69 / 21.55 -> 29.21 / 25.85 /
    21.62 dB, chaplin 31.46 / 26.73 / 23.63 -> 31.46 / 26.72 / 23.62, bbb 720p (150 frames) at 5 / 10% 34.76 /
    25.92 -> 34.91 / 26.01, fire2 720p 28.88 / 25.96 -> 29.13 / 26.08. Without remembering them again: bikes
    +0.12 / +0.08 / +0.05, chaplin -0.03 at each rate. One slot more than the references x264 uses (REFERENCES),
    for the B reference the next I or P picture cannot use; two more scored less (bikes 3% +0.30 but 10% +0.13,
    bbb +0.06 / +0.07)."""

    def __init__(self, height: int, width: int):
        self._grid = CellGrid(height, width)
        self._stack = CorrectionStack(height, width, REFERENCES + 1)

    def remember(self, decoded: Picture, repaired: Picture, *, pts: int | None = None, b_picture: bool = False
                 ) -> None:
        """A new reference picture: what the decoder holds (`decoded`) and what we made of it
        (CorrectionStack.remember).

        For a frame lost entirely, `decoded` is the decoder's stand-in for it (FFmpeg repeats
        the previous picture) and `repaired` our rebuilt frame."""
        self._stack.remember(decoded, repaired, pts=pts, b_picture=b_picture)

    def revise(self, pts: int, decoded: Picture, repaired: Picture) -> None:
        """A better repair of a reference picture remembered before (CorrectionStack.revise)."""
        self._stack.revise(pts, decoded, repaired)

    def correct(self, picture: Picture, damaged: DamagedFrame) -> Picture:
        """`picture` (the decoded picture of `damaged`) as it would have decoded from the repaired references."""
        if not self._stack.correcting:
            return picture
        motion = damaged.motion.cell_motion
        if motion is None:
            # An intra picture (in a fixed GOP, an IDR): later pictures cannot predict from the
            # ones before it, so their corrections must not be carried past it. Carried on, the
            # best-match reference choice picked pre-IDR pictures in static areas (bikes, 3%
            # loss: 25 clean frames after an IDR fell from identical to 49-66 dB).
            self._stack.clear()
            return picture
        dx, dy, predicted_cells = motion
        carried = self._stack.carried(picture.y, dx, dy, predicted_cells, damaged.frame.b_picture)
        if carried is None:
            return picture  # no sample is predicted from a corrected one
        planes = (picture.y, picture.u, picture.v)
        corrected = []
        # The decoder could not have predicted anything from the blocks that never arrived; and in an intra
        # picture, the blocks FFmpeg concealed from the past are the only ones the past reaches. A B picture's
        # blocks predicted from the picture after it alone are not intra either: FollowingCarry corrects them.
        # Taken for intra, they took their neighbours' corrections by intra prediction modes as well: training
        # clips with three B-frames at 3 / 10 / 20% loss, bikes 28.46 / 25.41 / 21.30 -> 28.58 / 25.49 / 21.33 dB,
        # chaplin 30.90 / 26.29 / 23.35 -> 30.92 / 26.32 / 23.41, bbb 720p (150 frames, 5%) 34.48 -> 34.53;
        # and conceal on bbb 720p with B-frames spent a quarter of its time there.
        lost_cells = self._grid.expand_mbs(damaged.damage.labels == DamageLabel.LOST)
        intra = ~predicted_cells & ~lost_cells & (damaged.frame.picture.pict_type != av.video.frame.PictureType.I)
        if (following := damaged.motion.following_motion) is not None:
            intra &= ~following[2]
        carry_into_intra(carried[:1], planes[:1], intra, lost_cells, CellGrid.PER_MB)
        carry_into_intra(carried[1:], planes[1:], intra[::2, ::2], lost_cells[::2, ::2], CellGrid.PER_MB // 2)
        for plane, correction in zip(planes, carried):
            correction += plane
            np.clip(correction, 0, 255, out=correction)
            corrected.append(np.rint(correction, out=correction).astype(np.uint8))
        return Picture(*corrected)


def carry_from_following(slot: HeldFrame, later: CorrectionStack) -> HeldFrame:
    """`slot`, a B picture, as it would have decoded had the pictures shown after it that it was predicted from
    (the next I or P picture and the B pictures before that one, whose corrections `later` holds, newest first)
    been repaired first.

    Its cells predicted from a picture after it (the vectors FFmpeg exports with a positive source) take that
    picture's correction (repaired - decoded) moved along those vectors. The vectors do not say which picture:
    with B-pyramids (x264's default) the middle B picture is a reference too, so each 8x8 block takes the
    correction of the picture whose decoded luma, so moved, matches its own best (CorrectionStack, as for the
    pictures before). A cell predicted from both sides is their average, so it takes half of
    each side's correction, where DriftCorrector gave it all of the one from before. Lost blocks keep their fill.
    Training clips with three B-frames (`conceal` with defaults), 3 / 10 / 20% loss: chaplin 30.46 / 26.10 /
    23.16 -> 30.53 / 26.27 / 23.27 dB, bikes 28.36 / 25.11 / 21.22 -> 28.34 / 25.10 / 21.19 (its I and P
    pictures' repairs are little better than FFmpeg's: there is little to carry), bbb 720p at 5 / 10% 35.84 /
    29.04 -> 35.95 / 29.04, fire2 -0.01 / -0.02. Leaving the correction from before whole where a cell was
    predicted from both sides: bikes 28.06 / 24.91 at 3 / 10%, chaplin 26.19 at 10%, bbb 35.83 at 5%. Choosing per 4x4
    cell at full resolution and moving every picture's correction whole instead scored the same to 0.01 dB (bikes
    28.77 / 25.50 / 21.48, chaplin 31.34 / 26.58 / 23.71, bbb 150 frames 5% 34.79) and took 2.87-3.06 times a
    plain decode + encode of bbb 720p at 5% loss against 2.74-2.77 (`benchmarks.speed --bframes 3`)."""
    motion = slot.damaged.motion
    ahead = motion.following_motion
    if slot.decoded is None or ahead is None:
        return slot
    dx, dy, from_following = ahead
    behind = motion.cell_motion
    both = from_following & behind[2] if behind is not None else np.zeros_like(from_following)
    grid = motion.grid
    kept = ~grid.expand_mbs(slot.damaged.damage.labels == DamageLabel.LOST)
    carried = later.carried(slot.decoded.y, dx, dy, from_following)
    weight_after = grid.to_pixels(np.where(both, 0.5, 1).astype(np.float32) * kept)
    weight_before = grid.to_pixels(np.where(both & kept, 0.5, 1).astype(np.float32))
    planes = []
    for index, (plane, decoded) in enumerate(zip(_planes(slot.picture), _planes(slot.decoded))):
        decoded = decoded.astype(np.float32)
        value = decoded + _scaled(weight_before, plane.shape) * (plane - decoded)
        if carried is not None:
            value += _scaled(weight_after, plane.shape) * carried[index]
        planes.append(np.clip(np.rint(value), 0, 255).astype(np.uint8))
    return HeldFrame(slot.damaged, Picture(*planes), slot.decoded)


def predicted_from_holes(earlier: DamagedFrame, holes: np.ndarray) -> np.ndarray:
    """Per macroblock of `earlier`, a B picture shown just before the picture whose lost pixels are `holes`
    (HxW bool): whether most of it was predicted from those pixels (its vectors from the picture after it
    point into them), so that it holds FFmpeg's concealment of them rather than anything true."""
    motion = earlier.motion.following_motion
    grid = earlier.motion.grid
    if motion is None:
        return np.zeros(grid.mb_shape, bool)
    dx, dy, predicted = motion
    rows, cols = grid.shape
    height, width = holes.shape
    centre = CellGrid.CELL / 2
    ys = np.clip(np.rint(np.arange(rows)[:, None] * CellGrid.CELL + centre + dy), 0, height - 1).astype(np.intp)
    xs = np.clip(np.rint(np.arange(cols)[None, :] * CellGrid.CELL + centre + dx), 0, width - 1).astype(np.intp)
    return grid.mb_mean((predicted & holes[ys, xs]).astype(np.float32)) >= 0.5


# B pictures held for the I or P picture after them at most (x264 puts up to 3 in a row by default, x265 4):
# memory stays bounded whatever the stream, and the earliest of a longer run go out uncorrected.
MOST_AWAITING = 4


class FollowingCarry:
    """Holds the B pictures (and frames lost whole) shown since the last I or P picture until the next one is
    repaired, and then carries its correction into them (carry_from_following)."""

    def __init__(self, height: int, width: int) -> None:
        self._held: collections.deque[HeldFrame] = collections.deque()
        self._later = CorrectionStack(height, width, MOST_AWAITING + 1)  # the held ones and the picture after them

    def hold(self, slot: HeldFrame) -> list[HeldFrame]:
        """Take a frame slot; return those that can go out now, in order."""
        frame = slot.damaged.frame
        if frame.missing or frame.b_picture:
            self._held.append(slot)
            return [self._held.popleft()] if len(self._held) > MOST_AWAITING else []
        ready = [slot]
        self._later.clear()
        for held in reversed(self._held):  # each from the repairs of those after it
            if ready[0].decoded is not None:
                self._later.remember(ready[0].decoded, ready[0].picture)
            ready.insert(0, carry_from_following(held, self._later))
        self._held.clear()
        return ready

    def release(self) -> list[HeldFrame]:
        """The slots still held, as they are: the stream ended before another I or P picture."""
        released, self._held = list(self._held), collections.deque()
        return released


# Frames held back for the next keyframe, their errors to be read from it: at most this many (a 2 s GOP at up to
# 32 fps), and at most as many as hold BACKWARD_PIXELS luma samples (24 at 720p, about 100 MB with their decoded
# originals; 10 at 1080p, 2 at 4K), so that memory and time stay bounded whatever the picture size (24 rather
# than 32 at 720p: bbb_720p at 10% loss -0.04 dB, and conceal back under 3 times a plain decode + encode).
BACKWARD_WINDOW = 64
BACKWARD_PIXELS = 24 * 1280 * 720
# How fast trust in the keyframe's estimate fades going back from it, in frames: slowly, as the Wiener gain at
# each step back (_moved_back) already drops what the vectors fail to carry. With the window above (32 before),
# against 16 before, `conceal` on the training clips (3 / 10 / 20% loss; bbb_720p_h264 and fire2_720p, 150
# frames, at 5 / 10%): chaplin 32.35 / 27.21 / 22.01 -> 32.59 / 27.26 / 22.34 dB, bikes 33.63 / 24.80 / 21.86 ->
# 33.69 / 24.81 / 21.89, bbb +0.04 / +0.11, fire2 -0.01 / -0.04; with three B-frames, chaplin +0.10 / +0.06 /
# +0.12, bikes 0.00 / -0.07 / -0.02. Fading over 32 frames: +0.26 less in all; never: chaplin 27.13 at 10%.
BACKWARD_FADE = 64.0
# Pixels around the damage in which the keyframe's estimate is checked against undamaged pixels.
NOISE_BAND = 16
# The size of the blocks over which the estimate is weighed against that noise, and how far from a block
# the noise is measured (pixels).
WIENER_BLOCK = 16
NOISE_REACH = 32
# A carried error under this (times its weight) rounds to no change: the chain stops there.
NEGLIGIBLE = 0.5
# A keyframe with more of its macroblocks damaged than this is no guide to the frames before it.
MOSTLY_INTACT = 0.5
# Where no undamaged pixel is near the damage, the misfit the keyframe's estimate is weighed against: this many
# times the change of the last picture from the one before (_wiener). Trusted whole instead, as before, fire2 (x264
# with three B-frames, 176x144, 3% loss, seed 1) fell from 28.55 dB for a plain decode to 27.13 in frames that had
# no damage at all but followed a lost reference frame. Chosen among 1, 2 and 4 on the training clips with three
# B-frames: bbb_720p from frames 300 and 900 and fire2_720p, 150 frames at 176x144, 3 / 10 / 20% loss, seeds 1 and
# 2, summed PSNR 513.56 dB trusted whole -> 516.60 / 517.42 / 517.48; bikes and chaplin at 3 / 10 / 20% 155.55 ->
# 155.69 / 155.70 / 155.64 (fire2 at 176x144 above: 27.76 / 27.91 / 27.95).
CHANGE_AS_MISFIT = 2.0
# How many times better than the other candidates the optical flow measured over the whole of a damaged picture,
# wrong pixels included, must bring the keyframe onto it (_keyframe_warp). Chosen among 1, 2 and 4 on
# chaplin and bikes at 3 / 10 / 20% (no B-frames): against none, 1 gave +0.32 / -0.04 / -0.27 and -0.07 / -0.05 /
# -0.26 dB, 2 +0.36 / +0.18 / 0.00 and -0.01 / -0.02 / -0.16, 4 +0.15 / +0.16 / +0.06 and +0.03 / 0.00 / -0.08; over
# those, bbb and fire2 (5 / 10%) and the same with three B-frames, 2 summed +1.14 dB and 4 +0.90.
FULL_FLOW_HANDICAP = 2.0


@dataclass
class HeldFrame:
    """A repaired frame slot waiting to go out: its decoder output with damage map, and its repair."""

    damaged: DamagedFrame
    picture: Picture
    decoded: Picture | None  # the decoder's own picture (None for a rebuilt lost frame)


class KeyframeBackfill:
    """Repairs what forward correction left in the frames before a clean keyframe, from the keyframe.

    Forward repair guesses what was lost and carries its guess on; the keyframe that ends the damage is coded
    without reference to anything before it and shows what those frames should have become. Moved back onto the last
    damaged frame (optical flow, carried into the damage from around it, or that frame's own vectors carried on
    where they fit better: _keyframe_warp), it gives that frame's remaining error inside the damage; each earlier
    frame's error is then the later one moved back along the decoder's motion vectors of the later frame (the error
    travelled forward along them). The estimate is shrunk where it does not stand out from the flow's own misfit on
    undamaged pixels nearby (a Wiener gain per block, _wiener), again at each step back where the vectors fail to
    carry the decoded pictures back (_moved_back), and fades with the distance from the keyframe. Measured with
    `python -m benchmarks.conceal_quality`, the pipeline's sequence luma PSNR before -> after (3 / 10 / 20% loss):
    bikes 30.82 / 24.15 / 20.67 -> 32.49 / 24.53 / 21.30, chaplin 32.08 / 26.23 / 21.07 -> 32.34 / 26.91 / 21.26,
    carphone 37.31 / 32.08 / 23.19 -> 37.32 / 32.10 / 23.21; foreman (one keyframe, at the start) unchanged. A frame
    lost entirely has no vectors of its own: the error goes back through its rebuild in place (the rebuild is the
    picture before it moved by at most one frame interval's motion), where it used to stop: chaplin 27.06 / 21.30 ->
    27.14 / 21.70 dB at 10 / 20% loss, bikes at 20% 21.39 -> 21.41; the other clips, and the training clips
    fire2_720p and bbb_720p (150 frames, 3% / 10%), unchanged.

    Encoders put keyframes at scene cuts too (x264 by default), and one there shows another scene: nothing is
    carried back from it (bikes re-encoded by x264 with its own keyframe choice and intra refresh, 150 frames,
    5% loss: 30.69 dB carried back across its cuts, 35.15 without the backfill, 33.49 for a plain decode).

    Frames are held only while damage is about, at most `window` of them (by default as many as the
    picture size allows, see BACKWARD_PIXELS): the oldest goes out uncorrected when the window is full.
    """

    def __init__(self, height: int, width: int, window: int | None = None):
        self._grid = CellGrid(height, width)
        self.window = min(BACKWARD_WINDOW, BACKWARD_PIXELS // (height * width)) if window is None else window
        self._held: collections.deque[HeldFrame] = collections.deque()
        shape = self._grid.shape
        self._still = (np.zeros(shape, np.float32), np.zeros(shape, np.float32), np.ones(shape, bool))
        self._lost_run = 0  # frames lost whole in a row up to now
        self._before_run: Picture | None = None  # the last picture that arrived before them

    def hold(self, slot: HeldFrame) -> list[HeldFrame]:
        """Take a frame slot; return those that can go out now, in order."""
        released = self._released(slot)
        if slot.damaged.frame.missing:
            self._lost_run += 1
        else:
            self._lost_run, self._before_run = 0, slot.picture
        return released

    def _released(self, slot: HeldFrame) -> list[HeldFrame]:
        if _is_keyframe(slot):
            return self._correct_from(slot) + [slot]
        if not self._held and not (slot.damaged.frame.missing or _checked(slot.damaged).damaged.any()):
            return [slot]
        self._held.append(slot)
        return [self._held.popleft()] if len(self._held) > self.window else []

    def release(self) -> list[HeldFrame]:
        """The frames still held, uncorrected: the stream ended before a clean keyframe."""
        released, self._held = list(self._held), collections.deque()
        return released

    def _correct_from(self, keyframe: HeldFrame) -> list[HeldFrame]:
        held = list(self._held)
        self._held.clear()
        if self._lost_run and held and self._before_run is not None:  # held ends in frames lost whole
            return self._rebuilt_toward(keyframe, held)
        last = held[-1] if held else None
        if last is None or last.damaged.frame.missing or not (last_damage := _checked(last.damaged)).damaged.any():
            return held
        height, width = last.picture.y.shape
        hole = last_damage.pixel_mask(height, width)
        if _scene_cut(keyframe.picture, last.picture, hole, last.damaged.frame.drifted):
            return held  # a keyframe at a scene cut shows nothing of what came before it
        spans = _vector_spans(held)
        warp = _keyframe_warp(keyframe, last, hole, spans[-1])
        # What comes from the keyframe's own damage says nothing: neither error nor noise is read there.
        guessed = warp.apply(keyframe.damaged.damage.pixel_mask(height, width).astype(np.float32)) > 0
        planes = _planes(last.picture)
        change = None
        if not _noise_band(hole, guessed).any():  # nothing undamaged near the damage to measure the misfit on
            earlier = next((slot for slot in reversed(held[:-1]) if not slot.damaged.frame.missing), None)
            if earlier is None:
                return held
            size = (2 * NOISE_REACH + 1,) * 2
            change = [cv2.boxFilter(cv2.absdiff(plane, before).astype(np.float32) ** 2, -1, size)
                      for plane, before in zip(planes, _planes(earlier.picture))]
        estimates = warp.apply_to_planes(_planes(keyframe.picture))
        error = [_wiener(plane.astype(np.float32) - estimate, _scaled(hole, plane.shape),
                         _scaled(guessed, plane.shape), change[index] if change else None)
                 for index, (plane, estimate) in enumerate(zip(planes, estimates))]
        box = _damage_box(last_damage, height, width)
        for index in range(len(held) - 1, -1, -1):
            slot = held[index]
            weight = np.float32(np.exp(-(len(held) - 1 - index) / BACKWARD_FADE))
            corrected = []
            for (rows, cols), plane, e in zip(plane_boxes(box), _planes(slot.picture), error):
                plane = plane.copy()
                plane[rows, cols] = np.clip(np.rint(plane[rows, cols] - weight * e[rows, cols]), 0, 255)
                corrected.append(plane)
            held[index] = HeldFrame(slot.damaged, Picture(*corrected), slot.decoded)
            earlier = held[index - 1].damaged if index else None
            motion = slot.damaged.motion.cell_motion
            # A lost frame's rebuild is corrected too (what followed it was predicted from its stand-in, whose
            # error the drift correction had replaced by the rebuild's); it has no vectors of its own, so the
            # error goes back through it in place.
            if slot.damaged.frame.missing:
                motion = self._still
            elif motion is not None and spans[index] > 1:  # one frame interval's share of the motion
                motion = (motion[0] / spans[index], motion[1] / spans[index], motion[2])
            if earlier is None or motion is None or not (earlier_damage := _checked(earlier)).damaged.any():
                break
            box = _damage_box(earlier_damage, height, width)
            before = held[index - 1].decoded
            error = _moved_back(error, motion, earlier_damage.pixel_mask(height, width), box,
                                None if slot.decoded is None or before is None else (slot.decoded, before))
            if max(float(np.abs(e[rows, cols]).max()) for e, (rows, cols) in
                   zip(error, plane_boxes(box))) * weight < NEGLIGIBLE:
                break  # nothing left that would change a sample
        return held

    def _rebuilt_toward(self, keyframe: HeldFrame, held: list[HeldFrame]) -> list[HeldFrame]:
        """The frames lost whole just before `keyframe` (held, the run's last ones) rebuilt anew, each a blend of the
        last picture that arrived before them and the keyframe by its place in time between the two.

        The repair rebuilds a lost frame when it is shown, toward the next picture that arrived only when one is
        in its look-ahead (LOOK_AHEAD frames): in VP9 and AV1 every frame after a loss up to the next keyframe is
        lost (refused, or decoded to garbage), so the first frames of a longer run repeated the last picture. The
        keyframe shows where they were heading. Training clips (`benchmarks.frame_codecs`, 3 / 10% loss; at 20%
        nothing changes): chaplin in VP9 19.79 / 17.54 -> 20.17 / 17.54 dB, in AV1 at 3% 14.95 -> 15.00; bikes in
        VP9 18.27 / 14.22 -> 18.61 / 14.46, in AV1 20.93 / 14.24 -> 20.76 / 14.43. Even across a scene cut a blend
        errs less than the last picture repeated, wherever in the run the cut lies, on average: judging the two
        pictures a scene apart and keeping the repeats, bikes measured as before (their gap is long, they differ
        much), chaplin alike. Moving both pictures along the optical flow between them as well measured worse
        (chaplin in VP9 at 3% 19.84 dB): over tens of frames the flow is not the motion."""
        start, end, count = self._before_run, keyframe.picture, self._lost_run
        for index in range(max(0, len(held) - count), len(held)):
            position = (count - (len(held) - 1 - index)) / (count + 1)  # its place in the run, from 1, in time
            held[index] = HeldFrame(held[index].damaged, cross_fade(start, end, position), held[index].decoded)
        return held


def _keyframe_warp(keyframe: HeldFrame, last: HeldFrame, hole: np.ndarray, span: int) -> Warp:
    """The motion from the last damaged picture to the keyframe, chosen per macroblock among candidates by which
    brings the keyframe closest to the last picture. The optical flow carried into the damage from around it (its
    pixels are wrong) misses whatever moves unlike its surroundings. Where the last picture's own vectors say where
    its blocks came from, that motion carried on for one more frame interval (constant velocity) is the second
    candidate. Measured on the training clips without B-frames (3 / 10 / 20% loss), carried flow alone -> both:
    bikes 33.60 / 24.78 / 21.74 -> 33.63 / 24.80 / 21.75 dB, chaplin 32.18 / 26.97 / 21.87 -> 32.24 / 27.12 /
    21.90; bbb_720p and fire2_720p (150 frames, 5 / 10%) 36.65 / 29.93 -> 37.05 / 30.06 and 29.54 / 25.82 ->
    29.53 / 25.82 (the vectors' candidate taken everywhere it exists instead: fire2 at 5% fell to 28.59).
    The third is the flow measured over the whole picture, damage included, which follows a hand or a head that
    moves on its own inside a large hole, where the carried flow pastes the keyframe's content in the wrong place
    (chaplin at 3%: frames just before a keyframe got worse from the backfill); since it is measured on wrong
    pixels it must fit FULL_FLOW_HANDICAP times better. Without it -> with it: chaplin 33.10 / 28.05 /
    22.42 -> 33.46 / 28.22 / 22.41 dB, bikes 33.86 / 24.81 / 22.16 -> 33.86 / 24.79 / 22.00, bbb 37.17 / 30.19 ->
    37.29 / 30.18, fire2 29.64 / 26.32 -> 29.87 / 26.62; with three B-frames chaplin 31.34 / 26.64 / 23.74 -> 31.47 /
    26.72 / 23.63, bikes 28.90 / 25.73 / 21.53 -> 28.95 / 25.69 / 21.56. Foreman, carphone and foreman_cif_hevc
    moved by 0.01 dB at most, but carphone with three B-frames at 10 / 20% lost 0.10 dB; with FFmpeg's concealment
    as the model (`--model ffmpeg`), whose fills leave more wrong pixels to fit, chaplin at 3 / 10% fell by 0.65."""
    height, width = hole.shape
    carried = estimate_warp(keyframe.picture.y, last.picture.y, hole)
    candidates = [(carried, 1.0)]
    moving = last.damaged.motion.smoothed_pixel_motion()
    if moving is not None:
        dx, dy, predicted = moving
        # Lost blocks' vectors are the decoder's guesses, not the encoder's.
        onward = hole & predicted & ~last.damaged.damage.pixel_mask(height, width, DamageLabel.LOST)
        if onward.any():
            candidates.append((Warp(np.where(onward, -dx / span, carried.dx).astype(np.float32),
                                    np.where(onward, -dy / span, carried.dy).astype(np.float32)), 1.0))
    candidates.append((estimate_warp(keyframe.picture.y, last.picture.y, np.zeros_like(hole)), FULL_FLOW_HANDICAP))
    misfits = np.stack([macroblock_mean(cv2.absdiff(warp.apply(keyframe.picture.y), last.picture.y)
                                        .astype(np.float32)) * handicap for warp, handicap in candidates])
    best = blocks_to_pixels(np.argmin(misfits, axis=0).astype(np.uint8), MB, height, width)
    return Warp(np.choose(best, [warp.dx for warp, _ in candidates]),
                np.choose(best, [warp.dy for warp, _ in candidates]))


def _checked(damaged: DamagedFrame) -> DamageMap:
    """Where the backfill looks for error in a held frame: its damage map, or all of a picture predicted from a stale
    reference (DecodedFrame.drifted), whose map only estimates where that showed. Checked only where its map said,
    chaplin with three B-frames at 10 / 20% loss measured 26.49 / 23.14 dB, against 26.58 / 23.77 checked whole."""
    return drifted_everywhere(damaged.damage) if damaged.frame.drifted else damaged.damage


def _vector_spans(held: list[HeldFrame]) -> list[int]:
    """Per held frame, how many frame intervals its vectors into the past span: with B-frames they point at the
    last I or P picture (x264's B-pyramid aside), several frames back, where the error is moved back one frame at
    a time; 1 where no I or P picture (or lost frame) is held before it, and for motion measured between consecutive
    pictures (codecs whose decoder exports no vectors, interlaced H.264). Moved back the whole vector each frame,
    the training clips with three B-frames (3 / 10 / 20% loss) measured bikes 28.58 / 25.49 / 21.33 -> 28.59 /
    25.52 / 21.34 dB, chaplin 30.92 / 26.32 / 23.41 -> 30.94 / 26.32 / 23.42, bbb 720p (150 frames, 5%) 34.53 ->
    34.71, fire2 28.64 -> 28.66; bbb and fire2 at 176x144, seeds 1 and 2, 517.75 -> 518.08 summed over 18 cases."""
    spans, last_anchor = [], None
    for index, slot in enumerate(held):
        frame = slot.damaged.frame
        spans.append(1 if last_anchor is None or slot.damaged.motion.between_neighbours else index - last_anchor)
        if not frame.b_picture:
            last_anchor = index
    return spans


def _damage_box(damage: DamageMap, height: int, width: int) -> tuple[slice, slice]:
    """The luma rows and columns of the macroblocks that hold all of a frame's damage."""
    rows, cols = np.flatnonzero(damage.damaged.any(axis=1)), np.flatnonzero(damage.damaged.any(axis=0))
    return slice(rows[0] * MB, min((rows[-1] + 1) * MB, height)), slice(cols[0] * MB, min((cols[-1] + 1) * MB, width))


def _moved_back(error: list[np.ndarray], motion: tuple[np.ndarray, np.ndarray, np.ndarray],
                mask: np.ndarray, box: tuple[slice, slice], pictures: tuple[Picture, Picture] | None
                ) -> list[np.ndarray]:
    """The error of each plane one frame earlier, inside `mask` (whose bounding box is `box`): the
    error at q there went to q - v(q), v being the later frame's vectors. Only the box is worked out.

    `pictures` (the later and the earlier frame as decoded) check the move: moved the same way, the
    later picture should land on the earlier one but for the residual. Where it misses by as much as
    the error it carries (chaotic motion: fire, water), the error is shrunk by a Wiener gain. Measured
    against a plain decode on the training clip fire2_720p at 3% / 10% loss: -0.55 / -0.51 dB without
    this check, -0.09 / -0.15 with it (bbb_720p at 3%: +2.59 -> +2.85; carphone at 10%, though, went
    from 32.35 to 32.10 dB: its residuals are large beside its errors)."""
    cells = scaled_box(box, CellGrid.CELL)  # the box is macroblock-aligned: whole cells
    boxes = plane_boxes(box)
    maps = []
    for scale, (rows, cols) in zip((1, 2), boxes[:2]):  # luma, and chroma (U and V alike)
        map_x, map_y = _cell_sources(-motion[0][cells], -motion[1][cells], scale,
                                     (rows.stop - rows.start, cols.stop - cols.start))
        map_x += cols.start
        map_y += rows.start
        maps.append(cv2.convertMaps(map_x, map_y, cv2.CV_16SC2))
    maps.append(maps[1])
    moved = []
    for plane, (rows, cols), plane_maps in zip(error, boxes, maps):
        earlier = np.zeros_like(plane)
        earlier[rows, cols] = cv2.remap(plane, *plane_maps, cv2.INTER_LINEAR,
                                        borderMode=cv2.BORDER_REPLICATE) * _scaled(mask, plane.shape)[rows, cols]
        moved.append(earlier)
    if pictures is not None:
        later, before = pictures
        rows, cols = box
        landed = cv2.remap(later.y, *maps[0], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        misfit = cv2.absdiff(landed, before.y[rows, cols]).astype(np.float32)
        misfit = cv2.blur(cv2.multiply(misfit, misfit), (WIENER_BLOCK, WIENER_BLOCK))
        carried = moved[0][rows, cols]
        power = cv2.blur(cv2.multiply(carried, carried), (WIENER_BLOCK, WIENER_BLOCK))
        gain = power / np.maximum(power + misfit, 1e-6)
        chroma_rows, chroma_cols = boxes[1]
        chroma_gain = gain[::2, ::2][:chroma_rows.stop - chroma_rows.start, :chroma_cols.stop - chroma_cols.start]
        for plane, (rows, cols), plane_gain in zip(moved, boxes, (gain, chroma_gain, chroma_gain)):
            plane[rows, cols] *= plane_gain
    return moved


def _cell_sources(dx: np.ndarray, dy: np.ndarray, scale: int, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) float32 maps, for the samples of a plane of `shape` subsampled `scale` times, of where each
    comes from under the per-cell luma motion (dx, dy) starting at the plane's top left; new arrays."""
    rows, cols = shape
    xs, ys = pixel_grid(rows, cols)
    return (xs + blocks_to_pixels(dx / scale, CellGrid.CELL // scale, rows, cols),
            ys + blocks_to_pixels(dy / scale, CellGrid.CELL // scale, rows, cols))


def _halved(luma: np.ndarray) -> np.ndarray:
    """Luma at half resolution (rounded up), each sample the mean of a 2x2 square."""
    return cv2.resize(luma, (-(-luma.shape[1] // 2), -(-luma.shape[0] // 2)), interpolation=cv2.INTER_AREA)


def _scene_cut(keyframe: Picture, last: Picture, damaged: np.ndarray, drifted: bool) -> bool:
    """Whether `keyframe` shows another scene than `last`, judged where `last` is intact, or on all of it where
    little is (SCENE_JUDGED_SHARE). A picture predicted from a stand-in for a lost reference (`drifted`) and mostly
    clipped to white or black (`detection.clipped_blocks`: its residuals overflowed) shows no scene at all: the
    keyframe is the best guess of it there is. bbb_720p_vp8_30s from frame 600 (300 frames at 640x360, three
    B-frames, 3% loss), whose first P picture after a cut to black was lost: 13.10 dB (a plain decode 13.20) ->
    24.77."""
    if drifted and clipped_blocks(last.y).mean() > CLIPPED_SHARE:
        return False
    few_intact = np.count_nonzero(~damaged) < SCENE_JUDGED_SHARE * damaged.size
    return not same_scene(keyframe.y, last.y, np.zeros_like(damaged) if few_intact else damaged)


def _is_keyframe(slot: HeldFrame) -> bool:
    """A picture coded without reference to those before it, mostly intact."""
    frame = slot.damaged.frame
    return not frame.missing and frame.picture.key_frame and _checked(slot.damaged).damaged.mean() < MOSTLY_INTACT


def _planes(picture: Picture) -> list[np.ndarray]:
    return [picture.y, picture.u, picture.v]


def _scaled(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A luma-resolution mask at the resolution of a plane of `shape` (chroma: every other sample)."""
    return mask if shape == mask.shape else mask[::2, ::2]


def _noise_band(hole: np.ndarray, guessed: np.ndarray) -> np.ndarray:
    """The undamaged pixels within NOISE_BAND of `hole`, outside `guessed` (what comes from the keyframe's own
    damage)."""
    band = cv2.dilate(hole.astype(np.uint8), np.ones((2 * NOISE_BAND + 1,) * 2, np.uint8)).astype(bool)
    return band & ~hole & ~guessed


def _wiener(difference: np.ndarray, hole: np.ndarray, guessed: np.ndarray, change: np.ndarray | None = None
            ) -> np.ndarray:
    """The difference inside `hole` and outside `guessed`, shrunk per block by how little it stands out
    from the difference on the undamaged pixels around the hole (what the flow gets wrong where nothing
    was damaged), measured within NOISE_REACH of the block (fire2_720p at 3% / 10% loss, against a plain
    decode: -0.26 / -0.23 dB with one figure for the whole picture, -0.05 / -0.13 with this, both with
    an earlier form of _moved_back's check).

    With no undamaged pixel near (every macroblock damaged, as in a stream with B-frames after a lost reference
    frame, where the flow is not measured either), `change` stands in for that misfit: the local mean square of
    the change from the picture before, since the keyframe differs from the last picture by about as much where
    nothing is wrong (see CHANGE_AS_MISFIT)."""
    band = _noise_band(hole, guessed)
    if not band.any():
        if change is None:
            return np.zeros_like(difference)  # nothing to weigh the estimate against
        noise = CHANGE_AS_MISFIT * change
    else:  # the misfit near each block, where there is any: fire moves less predictably than walls
        weight = band.astype(np.float32)
        size = (2 * NOISE_REACH + 1,) * 2
        near = cv2.boxFilter(weight, -1, size, normalize=False)
        local = cv2.boxFilter(difference * difference * weight, -1, size, normalize=False)
        noise = np.where(near > 0, local / np.maximum(near, 1e-6), float(np.mean(difference[band] ** 2)))
    hole = hole & ~guessed
    error = difference * hole
    power = cv2.blur(error * error, (WIENER_BLOCK, WIENER_BLOCK))
    return error * np.clip(1 - noise / np.maximum(power, 1e-6), 0, 1) * hole

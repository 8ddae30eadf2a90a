"""Frames lost entirely: rebuilt by motion-compensated extrapolation from the last picture.

The next picture that did arrive was encoded against the frame just before it, so its
motion vectors say how the content moved over one frame interval. A single lost frame is
the last good picture moved along those vectors; in a run of lost frames the k-th of n is
moved k/n of the way (moving it k whole intervals, or chaining one interval per frame,
measured worse: 20.98 and 21.64 against 22.62 dB on carphone_qcif at 20% loss). Measured
on carphone_qcif (every loss there is a whole frame), sequence PSNR with drift correction,
against repeating the last picture: 35.69 -> 37.16 dB at 3% loss, 29.43 -> 31.88 dB at
10%, 22.58 -> 22.62 dB at 20%. Decoders that export no vectors (VP9, AV1) leave a blend of
the pictures on either side of the gap.

When the last picture that arrived moved the same way as the next one (their mean vectors point
into the same half-plane), the two pictures' vectors are averaged: two estimates of the motion over
the gap, one from each side. Where the motion turned (a shaking camera), the next picture's alone.
Measured with `conceal` defaults (drift redecoded, blind), sequence luma PSNR next-alone -> this rule:
on the training clips (bbb_720p_h264, bbb_720p_vp8_30s from frame 300 and fire2_720p, 150 frames at
176x144 and 352x288, 3% and 10% loss) 34.77 -> 35.00 dB on average (averaging always: 35.26); on the
evaluation clips at 3 / 10 / 20% loss foreman 40.18 / 33.14 / 18.49 -> 40.18 / 34.86 / 18.48, carphone
38.38 / 34.08 / 23.09 -> 40.35 / 34.71 / 22.95, bikes 32.75 / 24.67 / 21.45 -> 33.06 / 24.48 / 21.42,
chaplin 31.94 / 26.77 / 21.59 -> 31.99 / 26.85 / 21.65 (averaging always lost 2.98 dB on carphone at
10%, whose camera shakes).
"""
from __future__ import annotations

import collections

import cv2
import numpy as np

from .concealment import Picture
from .detection import DamagedFrame, DamageLabel
from .motion import remap_planes


# Share of the next picture's macroblocks lost above which its motion, where measured between the decoded pictures
# (MeasuredMotion: interlaced H.264, MPEG-1/2/4), is not followed. Such a picture shows mostly FFmpeg's concealment,
# whose flow is not the content's: foreman coded interlaced (`simulate-loss --interlaced`) at 5% loss, seed 4, lost
# frame 29 and then 195 of the 198 macroblock pairs of frame 30; moved along that flow, frame 29 came out 827 in
# luma MSE (`conceal` 21.46 dB against a plain decode's 25.11), along the last picture's own motion 31.55. Over
# foreman, bikes, chaplin and carphone coded so at 5 / 10%, seeds 2-4 (24 cases), the mean gain over a plain decode
# went from +2.67 to +3.33 dB, none lower by more than 0.11 (chaplin 5% seed 3). Decoders' own vectors (progressive
# H.264) guess the lost blocks' motion from their neighbours: there the rule measured -0.16 to +0.10 dB over the
# quality section's clips, and is not applied. MPEG-2 over MPEG-TS (foreman, progressive and interlaced, 2% of TS
# packets lost, four seeds each): unchanged.
MEASURED_MOTION_LOST_SHARE = 0.5


def rebuild_missing(last: Picture | None, next_decoded: DamagedFrame | None, fraction: float,
                    position: float, reordered: bool = False, last_arrived: DamagedFrame | None = None
                    ) -> Picture | None:
    """A lost frame between `last` (the last picture shown) and `next_decoded` (the next that
    arrived): `last` moved `fraction` of one interval's motion; None when there is neither.
    Without the next picture's vectors, or when they need not span one interval (`reordered`: a
    stream with B-frames, whose pictures predict from further away), the two pictures are blended,
    `position` of the way from `last` (its place in time between them): with 3 B-frames, carphone at
    3% / 10% loss went from 42.26 / 27.17 dB moved along the vectors to 42.76 / 27.20 blended (a plain
    decode: 42.37 / 27.18), foreman at 10% from 34.06 to 34.74, chaplin at 20% from 22.07 to 22.39.
    `last_arrived`: the last frame slot that arrived, whose vectors join the next picture's where both moved
    the same way (see the module docstring)."""
    if next_decoded is None:
        return last
    if last is None:
        return Picture.from_frame(next_decoded.frame.picture)  # lost at the start: nothing earlier to move
    if reordered or next_decoded.frame.motion_vectors is None:  # none exported: VP9, AV1, HEVC
        return cross_fade(last, Picture.from_frame(next_decoded.frame.picture), position)
    before = last_arrived.motion.smoothed_pixel_motion() if last_arrived is not None else None
    if next_decoded.motion.between_neighbours and \
            np.mean(next_decoded.damage.labels == DamageLabel.LOST) > MEASURED_MOTION_LOST_SHARE:
        motion = before  # its flow follows FFmpeg's concealment: the motion before the gap goes on instead
    else:
        motion = next_decoded.motion.smoothed_pixel_motion()
        if motion is not None and before is not None and np.dot(_mean_vector(motion), _mean_vector(before)) > 0:
            motion = ((motion[0] + before[0]) / 2, (motion[1] + before[1]) / 2, motion[2])
    if motion is None:
        return last  # no motion to follow: the next picture is intra, or nothing arrived before the gap
    dx, dy, _ = motion
    return Picture(*remap_planes([last.y, last.u, last.v], dx * fraction, dy * fraction))


class RepeatedPictures:
    """Which lost frames likely repeat the picture before them, from the repeats among the pictures that arrived.

    Film brought to a higher frame rate shows some of its frames twice (chaplin_640x360: one frame in three
    repeats the one before it, mostly every third or fourth slot), as do screen recordings and cameras that stall.
    Where a lost frame was such a repeat, the picture before it is exactly what was lost, and moving it along the
    next picture's vectors only errs. Each picture that arrives tells whether it repeats the one before (luma MSE
    at most REPEAT_MSE); the gaps between repeats give the chance that a lost frame `d` slots after the last repeat
    is one, count(gap = d) / count(gap >= d), and it is taken for one when that chance is over one half. A stream
    that never repeats a picture is never taken to. `conceal` defaults, chaplin at 3 / 10 / 20% loss: 32.76 / 27.37 /
    22.37 -> 32.77 / 27.68 / 22.34 dB (14 of 15 lost repeats found at 20%, but there the picture before is itself
    so wrong that moving or blending it, which averages errors, scores about as well); with three B-frames 31.34 /
    26.58 / 23.68 -> 31.34 / 26.61 / 23.61. bikes, bbb and fire2 (training), foreman and carphone: unchanged."""

    # Luma MSE up to which a picture repeats the one before (an encoder codes a repeat as skipped blocks, which
    # copy the picture before exactly: chaplin's repeats measure 0.0-1.5 against the clean stream's picture
    # before, its other pictures 13-450).
    REPEAT_MSE = 2.0
    # Gaps between repeats seen before any lost frame is taken for one.
    LEAST_GAPS = 4

    def __init__(self) -> None:
        self._gaps: collections.Counter[int] = collections.Counter()
        self._since: int | None = None  # slots since the last repeat; None before the first
        self._previous: np.ndarray | None = None  # the last slot's luma, when it arrived
        self._moved = 0  # lost frames since the last picture that arrived, not taken for repeats

    def arrived(self, luma: np.ndarray, whole: bool) -> bool:
        """A picture that arrived, in display order (`whole`: none of its blocks lost; a repeat is coded in so
        few bytes that one that lost some is taken for none): whether it repeats the picture before it."""
        repeat = whole and self._previous is not None and self._previous.shape == luma.shape and \
            cv2.norm(luma, self._previous, cv2.NORM_L2SQR) <= self.REPEAT_MSE * luma.size
        if self._since is not None:
            self._since += 1
        if repeat:
            if self._since is not None:
                self._gaps[self._since] += 1
            self._since = 0
        self._previous, self._moved = luma, 0
        return repeat

    def lost(self, later: int) -> float | None:
        """A frame slot that never arrived, with `later` more lost after it before the next picture: None when
        it likely repeats the picture before it, else its share of the run's motion, counting only the run's frames
        that do not repeat (a run's k-th frame of n is moved k/n of the way: rebuild_missing)."""
        self._previous = None
        repeats = self._foreseen(later + 1)
        if self._since is not None:
            self._since = 0 if repeats[0] else self._since + 1
        if repeats[0]:
            return None
        self._moved += 1
        return self._moved / (self._moved + repeats[1:].count(False))

    def _foreseen(self, count: int) -> list[bool]:
        """Whether each of the next `count` lost slots likely repeats the picture before it."""
        if self._since is None or sum(self._gaps.values()) < self.LEAST_GAPS:
            return [False] * count
        repeats, since = [], self._since
        for _ in range(count):
            distance = since + 1
            reaching = sum(number for gap, number in self._gaps.items() if gap >= distance)
            repeats.append(2 * self._gaps[distance] > reaching)
            since = 0 if repeats[-1] else distance
        return repeats


def _mean_vector(motion: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """The mean (dx, dy) over the predicted pixels of a per-pixel motion."""
    dx, dy, predicted = motion
    predicted = predicted.astype(bool)
    return np.array([dx[predicted].mean(), dy[predicted].mean()]) if predicted.any() else np.zeros(2)


def cross_fade(last: Picture, upcoming: Picture, position: float) -> Picture:
    """`last` and `upcoming` blended by where the lost frame sits between them in time.

    Measured on foreman re-encoded by libvpx-vp9 with a keyframe every 15 frames, frames 5 and 33 lost
    (and with them every frame up to the next keyframe): sequence PSNR 26.93 dB, against 23.50 dB for
    repeating `last` and 19.82 dB for a plain FFmpeg decode."""
    return Picture(*(cv2.addWeighted(a, 1 - position, b, position, 0) for a, b in
                     ((last.y, upcoming.y), (last.u, upcoming.u), (last.v, upcoming.v))))

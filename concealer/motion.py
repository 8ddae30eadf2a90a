"""Motion alignment of a neighbouring frame onto a damaged one, for temporal concealment.

The damaged frame's holes carry no motion of their own, so dense optical flow (OpenCV's
DIS) is estimated where the frame is intact and carried into the holes from their
surroundings: a hole moves with the picture around it. The temporal network was trained on
`align`; in a video it is given the previous picture moved by `fill_motion`, the estimate the
flow concealer fills with, so that it starts from the best fill measured (see models/temporal.py).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

# Pixels of flow next to a hole are unreliable too (DIS's 8x8 patches straddle the edge).
HOLE_MARGIN = 8
# Gaussian widths tried in turn to carry flow into a hole, from local to global motion.
FILL_SIGMAS = (8.0, 32.0, 128.0)
FILL_SCALE = 8


def _gray(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image


def _fill_flow(flow: np.ndarray, unreliable: np.ndarray) -> np.ndarray:
    """Replace the flow under `unreliable` by a weighted average of the reliable flow around it.

    The averaging runs at 1/FILL_SCALE resolution: flow inside a hole is smooth anyway, and wide
    Gaussians at full resolution cost seconds per 720p frame."""
    known = (~unreliable).astype(np.float32)
    if not known.any():
        return np.zeros_like(flow)
    height, width = unreliable.shape
    small = (max(1, width // FILL_SCALE), max(1, height // FILL_SCALE))
    small_known = cv2.resize(known, small, interpolation=cv2.INTER_AREA)
    small_flow = cv2.resize(flow * known[..., None], small, interpolation=cv2.INTER_AREA)
    average = np.zeros_like(small_flow)
    todo = np.ones(small_known.shape, bool)
    for sigma in FILL_SIGMAS:
        weight = cv2.GaussianBlur(small_known, (0, 0), sigma / FILL_SCALE)
        reached = todo & (weight > 1e-3)
        blurred = cv2.GaussianBlur(small_flow, (0, 0), sigma / FILL_SCALE)
        average[reached] = (blurred / np.maximum(weight, 1e-6)[..., None])[reached]
        todo &= ~reached
    average[todo] = small_flow.sum((0, 1)) / max(small_known.sum(), 1e-6)
    filled = flow.copy()  # OpenCV's masked copy: NumPy's boolean indexing took half the time at 720p
    cv2.copyTo(cv2.resize(average, (width, height), interpolation=cv2.INTER_LINEAR),
               np.ascontiguousarray(unreliable).view(np.uint8), filled)
    return filled


@dataclass(frozen=True)
class Warp:
    """How far each pixel of the current frame lies from where it comes from in a neighbour (pixels)."""

    dx: np.ndarray
    dy: np.ndarray

    def apply(self, neighbour: np.ndarray, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
        xs, ys = pixel_grid(*self.dx.shape)
        return cv2.remap(neighbour, xs + self.dx, ys + self.dy, interpolation, borderMode=cv2.BORDER_REPLICATE)

    def apply_to_planes(self, planes: list[np.ndarray]) -> list[np.ndarray]:
        """A neighbour's YUV 4:2:0 planes warped onto the current frame (chroma moves half as far)."""
        return remap_planes(planes, self.dx, self.dy)


def dense_flow(current: np.ndarray, neighbour: np.ndarray) -> np.ndarray:
    """HxWx2 float32: how far (dx, dy) each pixel of `current` lies from where it shows in `neighbour` (HxW
    uint8 luma), by OpenCV's DIS optical flow at its fastest preset."""
    return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST).calc(current, neighbour, None)


def estimate_warp(neighbour: np.ndarray, current: np.ndarray, hole: np.ndarray) -> Warp:
    """The motion from `current` (whose `hole` pixels are unknown) to `neighbour` (both HxWx3 or HxW uint8)."""
    hole = hole.astype(bool)
    target = _gray(current).copy()
    source = _gray(neighbour)
    target[hole] = source[hole]  # no false edges for the flow to lock on to
    flow = dense_flow(target, source)
    if hole.any():
        kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * HOLE_MARGIN + 1, 2 * HOLE_MARGIN + 1))
        flow = _fill_flow(flow, cv2.dilate(hole.astype(np.uint8), kernel).astype(bool))
    return Warp(flow[..., 0], flow[..., 1])


@functools.lru_cache(maxsize=4)
def pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Every pixel's (x, y) as float32 arrays; cached, since building them costs as much as a remap."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return xs, ys


def source_coordinates(dx: np.ndarray, dy: np.ndarray, index: int, shape: tuple[int, int]
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) float32 maps of where each sample of plane `index` (0: luma, else 4:2:0 chroma) of size
    `shape` comes from, under the luma-resolution motion (dx, dy); new arrays, free to change."""
    rows, cols = shape
    scale = 1 if index == 0 else 2
    xs, ys = pixel_grid(*dx.shape)
    return (xs[:rows, :cols] + dx[::scale, ::scale][:rows, :cols] / scale,
            ys[:rows, :cols] + dy[::scale, ::scale][:rows, :cols] / scale)


def remap_planes(planes: list[np.ndarray], dx: np.ndarray, dy: np.ndarray) -> list[np.ndarray]:
    """Each YUV 4:2:0 plane sampled at (x + dx, y + dy), with luma-resolution motion (halved for chroma)."""
    return [cv2.remap(plane, *cv2.convertMaps(*source_coordinates(dx, dy, index, plane.shape), cv2.CV_16SC2),
                      cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE) for index, plane in enumerate(planes)]


# Rows of picture above and below the holes over which the earlier flow is estimated.
EARLIER_FLOW_MARGIN = 32
# How far (pixels) the next picture's vector may lie from the motion of the interval before the hole for
# the two to be averaged there. Chosen among 2, 4 and averaging everywhere on the training clips (first
# 150 frames, 3% / 10% loss, `conceal` with defaults): fire2_720p 30.37 / 24.29 dB without the vectors,
# 30.36 / 24.28 at 2, 30.35 / 24.26 at 4, 30.08 / 24.14 everywhere; bbb_720p 36.43 / 28.32, 36.84 / 28.45,
# 36.90 / 28.54 and 37.12 / 28.27. Chaplin, whose motion jerks, lost 0.36 dB at 3% averaging everywhere.
VECTOR_AGREEMENT = 4.0


@dataclass(frozen=True)
class KnownMotion:
    """A motion field that holds only where `known` (HxW bool) says so."""

    warp: Warp
    known: np.ndarray
    # Whether it spans one frame interval from the picture being repaired: not in a stream with B-frames, where the
    # next picture shown may have been predicted from one further back.
    one_interval: bool = True


def fill_motion(previous: np.ndarray, current: np.ndarray, hole: np.ndarray,
                before_previous: np.ndarray | None = None, following: KnownMotion | None = None) -> Warp:
    """The motion from `current` (its `hole` unknown) to the `previous` picture (HxW luma), as the holes
    are best filled: the flow of the intact picture around them carried in (`estimate_warp`: a hole moves
    with its surroundings), averaged in the holes with the flow of the same place one frame earlier,
    between `before_previous` and `previous` (it keeps moving as it moved), when that picture is given.
    A hole spanning whole macroblock rows has surroundings far away; the second estimate is local. The
    earlier flow is estimated over the rows the holes span, with a margin for DIS's patches. Measured
    in `FlowConcealer`'s docstring, which fills with it; `temporal` starts from the same guess.

    `following`: the next picture's motion into `current` where known (its decoder's vectors, which the
    encoder measured against the true picture). Where it spans one interval, each of its pixels takes whichever
    of the two estimates lies closer to it instead of their mean (below). Where it agrees within
    VECTOR_AGREEMENT pixels with the motion of the interval before (the earlier flow, else the carried one), the
    hole moves by the mean of the two: the motion on either side of the lost interval (see VECTOR_AGREEMENT for
    the figures).

    Which of the two estimates of a hole's motion (carried in from around it, or the same place's flow one
    interval earlier) to trust, the next picture's vectors tell where they are known: each pixel takes the one
    closer to them (in streams without B-frames: with them, training clips at 3 / 10 / 20% moved by -0.07 to
    +0.03 dB). Against their mean everywhere, `conceal` with defaults on the training clips without B-frames at
    3 / 10 / 20% loss: bikes 33.69 / 24.81 / 22.20 -> 33.86 / 24.81 / 22.16 dB, chaplin 32.59 / 27.32 / 22.34 ->
    32.76 / 27.36 / 22.37; bbb_720p_h264 (150 frames, 5 / 10%) 37.07 / 30.14 -> 37.16 / 30.19, fire2_720p 32.39
    / 26.06 -> 32.58 / 26.32; the evaluation clips within +0.02 (the quality section of benchmarks/RESULTS.md),
    their lost pixels alone within -0.12 (foreman at 10%, 32.97 -> 32.85 with `flow`). The earlier flow alone
    everywhere: bikes at 10% 25.99, but bikes at 3% 33.42, chaplin at 10% 27.19 and fire2 31.69 / 25.15 (flames
    do not keep moving as they moved); and where the vectors are unknown alone, bikes at 10% 25.60 and fire2
    32.10 / 25.77. Which estimate to trust, judged instead by how well the two flows agree just around the hole:
    fire2 kept, bikes at 10% 25.03 at best. Among the carried, the earlier, their mean and no motion, the one
    closer to the truth per macroblock would gain 1.3-2.1 dB over the best alone (clean pictures, the truth's lost
    blocks); the one that joins its surroundings best (side_mismatch) loses 0.4-1.0 dB against the mean."""
    warp = estimate_warp(previous, current, hole)
    if not hole.any() or (before_previous is None and following is None):
        return warp
    ys, xs = np.nonzero(hole)  # the work is done on the hole's pixels alone
    dx, dy = warp.dx.copy(), warp.dy.copy()
    if following is not None:
        after_dx, after_dy, known = following.warp.dx[ys, xs], following.warp.dy[ys, xs], following.known[ys, xs]
    before_dx, before_dy = dx[ys, xs], dy[ys, xs]  # the motion of the interval before: carried, unless measured
    if before_previous is not None:
        band = slice(max(0, ys[0] - EARLIER_FLOW_MARGIN), ys[-1] + 1 + EARLIER_FLOW_MARGIN)
        earlier = estimate_warp(before_previous[band], previous[band], np.zeros_like(hole[band]))
        before_dx, before_dy = earlier.dx[ys - band.start, xs], earlier.dy[ys - band.start, xs]
        carried_dx, carried_dy = dx[ys, xs], dy[ys, xs]
        dx[ys, xs], dy[ys, xs] = (carried_dx + before_dx) / 2, (carried_dy + before_dy) / 2
        if following is not None and following.one_interval:
            earlier_closer = np.hypot(before_dx - after_dx, before_dy - after_dy) < \
                np.hypot(carried_dx - after_dx, carried_dy - after_dy)
            dx[ys[known], xs[known]] = np.where(earlier_closer, before_dx, carried_dx)[known]
            dy[ys[known], xs[known]] = np.where(earlier_closer, before_dy, carried_dy)[known]
    if following is not None:
        agree = known & (np.hypot(before_dx - after_dx, before_dy - after_dy) < VECTOR_AGREEMENT)
        dx[ys[agree], xs[agree]] = (before_dx[agree] + after_dx[agree]) / 2
        dy[ys[agree], xs[agree]] = (before_dy[agree] + after_dy[agree]) / 2
    return Warp(dx, dy)


def align(neighbour: np.ndarray, current: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """`neighbour` warped onto `current`. Where the motion leaves the frame the nearest edge pixel
    is taken and trusted: marking those pixels unknown (as the temporal network's first training
    did) filled them with the next frame or grey, which measured 1.4 dB worse over foreman at 10%
    loss in the pipeline (27.58 against 28.97 dB)."""
    return estimate_warp(neighbour, current, hole).apply(neighbour)

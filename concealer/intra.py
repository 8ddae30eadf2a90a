"""Carry corrections into intra-predicted blocks, the way the decoder predicted them.

An intra block of an inter picture is predicted from the decoded pixels just above and to its
left. When those pixels were wrong (damage carried into them), so is the block, and the
correction drift repair makes to its neighbours must flow into it too. Intra prediction is
linear in the neighbouring samples, so the block's correction is its prediction mode applied
to the neighbours' corrections. The decoder does not export the modes; the mode is recovered
per 4x4 cell as the H.264 4x4 predictor that best explains the decoded block from its decoded
neighbours (the encoder chose it to leave the smallest residual). 8x8 and 16x16 intra blocks are
covered approximately by the 4x4 modes chained across their cells. Cells are worked in
wavefronts (2 x row + column), so that every neighbour, top-right included, is done before them.
"""
from __future__ import annotations

import functools

import cv2
import numpy as np

from .detection import CellGrid

CELL = CellGrid.CELL
# The neighbours of a 4x4 block, as H.264 numbers them: the top-left sample, the eight above
# (four over the block, four over its right neighbour) and the four to its left.
TOP_LEFT, TOP, LEFT = 0, 1, 9
NEIGHBOURS = 13
# The modes chroma uses too (vertical, horizontal, DC); luma has all nine.
CHROMA_MODES = 3
# What each intra block passes on of the correction its recovered mode predicts: the modes are a guess
# (8x8 and 16x16 blocks, neighbours the encoder could not use) and so are the neighbours' corrections,
# so a chain of intra blocks hands on less the longer it is. Chosen on the training clips (first 150
# frames, 3% / 10% loss, `python -m benchmarks.conceal_quality`): fire2_720p 30.09 / 24.10 dB with no
# correction of intra blocks, 30.26 / 24.22 at 0.8, 30.37 / 24.29 at 0.9, 29.51 / 23.66 at 1; bbb_720p
# 36.22 / 28.20, 36.41 / 28.29, 36.43 / 28.32, 36.20 / 28.35.
CARRIED_SHARE = 0.9


def _sample(x: int, y: int) -> int:
    """Index in the neighbour vector of p[x, y] (x = -1: the left column, y = -1: the row above)."""
    if x == -1 and y == -1:
        return TOP_LEFT
    return TOP + x if y == -1 else LEFT + y


@functools.cache
def mode_matrices() -> np.ndarray:
    """(9, 16, 13) float32: each 4x4 intra mode as the weights its 16 predicted samples (raster order)
    give the 13 neighbours (H.264 8.3.1.2, without the rounding)."""
    matrices = np.zeros((9, 16, NEIGHBOURS), np.float32)

    def put(mode: int, x: int, y: int, taps: list[tuple[int, int]], weights: list[float]) -> None:
        for (tx, ty), weight in zip(taps, weights):
            matrices[mode, y * 4 + x, _sample(tx, ty)] += weight

    three, two = [0.25, 0.5, 0.25], [0.5, 0.5]
    for y in range(4):
        for x in range(4):
            put(0, x, y, [(x, -1)], [1])
            put(1, x, y, [(-1, y)], [1])
            put(2, x, y, [(i, -1) for i in range(4)] + [(-1, i) for i in range(4)], [0.125] * 8)
            if x == 3 and y == 3:
                put(3, x, y, [(6, -1), (7, -1)], [0.25, 0.75])
            else:
                put(3, x, y, [(x + y, -1), (x + y + 1, -1), (x + y + 2, -1)], three)
            if x > y:
                put(4, x, y, [(x - y - 2, -1), (x - y - 1, -1), (x - y, -1)], three)
            elif x < y:
                put(4, x, y, [(-1, y - x - 2), (-1, y - x - 1), (-1, y - x)], three)
            else:
                put(4, x, y, [(0, -1), (-1, -1), (-1, 0)], three)
            z = 2 * x - y
            if z >= 0 and z % 2 == 0:
                put(5, x, y, [(x - (y >> 1) - 1, -1), (x - (y >> 1), -1)], two)
            elif z >= 0:
                put(5, x, y, [(x - (y >> 1) - 2, -1), (x - (y >> 1) - 1, -1), (x - (y >> 1), -1)], three)
            elif z == -1:
                put(5, x, y, [(-1, 0), (-1, -1), (0, -1)], three)
            else:
                put(5, x, y, [(-1, y - 1), (-1, y - 2), (-1, y - 3)], three)
            z = 2 * y - x
            if z >= 0 and z % 2 == 0:
                put(6, x, y, [(-1, y - (x >> 1) - 1), (-1, y - (x >> 1))], two)
            elif z >= 0:
                put(6, x, y, [(-1, y - (x >> 1) - 2), (-1, y - (x >> 1) - 1), (-1, y - (x >> 1))], three)
            elif z == -1:
                put(6, x, y, [(-1, 0), (-1, -1), (0, -1)], three)
            else:
                put(6, x, y, [(x - 1, -1), (x - 2, -1), (x - 3, -1)], three)
            if y % 2 == 0:
                put(7, x, y, [(x + (y >> 1), -1), (x + (y >> 1) + 1, -1)], two)
            else:
                put(7, x, y, [(x + (y >> 1), -1), (x + (y >> 1) + 1, -1), (x + (y >> 1) + 2, -1)], three)
            z = x + 2 * y
            if z in (0, 2, 4):
                put(8, x, y, [(-1, y + (x >> 1)), (-1, y + (x >> 1) + 1)], two)
            elif z in (1, 3):
                put(8, x, y, [(-1, y + (x >> 1)), (-1, y + (x >> 1) + 1), (-1, y + (x >> 1) + 2)], three)
            elif z == 5:
                put(8, x, y, [(-1, 2), (-1, 3)], [0.25, 0.75])
            else:
                put(8, x, y, [(-1, 3)], [1])
    return matrices


def _no_top_right(rows: np.ndarray, cols: np.ndarray, grid_cols: int, per_mb: int) -> np.ndarray:
    """Cells whose top-right neighbour is not decoded before them (H.264's 4x4 blocks 3, 5 at the
    picture's right edge, 7, 11, 13 and 15): their top-right samples repeat the last one above."""
    bx, by = cols % per_mb, rows % per_mb
    inner = ((bx == per_mb - 1) & (by > 0)) | ((bx % 2 == 1) & (by % 2 == 1))
    return inner | (cols // per_mb == (grid_cols - 1) // per_mb) & (bx == per_mb - 1)


def carry_into_intra(corrections: list[np.ndarray], decoded: list[np.ndarray], intra: np.ndarray,
                     unavailable: np.ndarray, per_mb: int = 4) -> None:
    """Fill in place the `corrections` (float32, one per plane) of the `intra` cells (one bool per 4x4
    cell of the planes) that are reached from non-zero corrections, from their neighbours' corrections,
    by the mode that best predicts each cell of the `decoded` planes (uint8, of the same size: luma, or
    both chroma planes, which share one mode). The `unavailable` cells (lost: in another slice, which
    intra prediction never reads) count as uncorrected. `per_mb`: 4x4 cells per macroblock side (4 for
    luma, 2 for 4:2:0 chroma, which has only the vertical, horizontal and DC modes)."""
    if not intra.any():
        return
    height, width = decoded[0].shape
    rows, cols = intra.shape
    todo, components = _reached(intra, corrections)
    if not todo.any():
        return
    cell_rows, cell_cols = np.nonzero(todo)
    component = components[cell_rows, cell_cols]
    # The work happens in the box around those cells, with the row above, the column left and, for the
    # top-right neighbours, one cell more on the right; `top`, `left` is its corner in the planes.
    first_row, first_col = cell_rows.min(), cell_cols.min()
    top, left = CELL * first_row - 1, CELL * first_col - 1
    bottom, right = CELL * (cell_rows.max() + 1), CELL * (cell_cols.max() + 2)
    pixels = np.stack([_boxed(plane, top, left, bottom, right, cv2.BORDER_REPLICATE) for plane in decoded], axis=-1)
    # The box's corrections as flat samples (one column per plane), with a zero sample after them.
    samples = np.zeros(((bottom - top) * (right - left) + 1, len(corrections)), np.float32)
    carried = samples[:-1].reshape(bottom - top, right - left, len(corrections))
    for index, correction in enumerate(corrections):
        carried[..., index] = _boxed(correction, top, left, bottom, right, cv2.BORDER_CONSTANT)
    local_rows, local_cols = cell_rows - first_row, cell_cols - first_col
    ys, xs = _neighbour_coordinates(local_rows, local_cols)
    no_top_right = _no_top_right(cell_rows, cell_cols, cols, per_mb)
    xs[no_top_right, TOP + 4:TOP + 8] = xs[no_top_right, TOP + 3:TOP + 4]
    block_ys = (CELL * local_rows + 1)[:, None] + np.repeat(np.arange(CELL), CELL)[None]
    block_xs = (CELL * local_cols + 1)[:, None] + np.tile(np.arange(CELL), CELL)[None]
    matrices = mode_matrices()[:9 if per_mb == 4 else CHROMA_MODES]
    modes = _best_modes(matrices, pixels[ys, xs].astype(np.float32), pixels[block_ys, block_xs].astype(np.float32))
    # Worked front by front, each cell reading and writing the box's flat samples. A cell reads only
    # its own component's cells, and those at an earlier front: 2 x row + column, counted from the
    # component's first row and column, so that separate components go side by side.
    first_rows = np.full(component.max() + 1, rows)
    first_cols = np.full(component.max() + 1, cols)
    np.minimum.at(first_rows, component, cell_rows)
    np.minimum.at(first_cols, component, cell_cols)
    fronts = 2 * (cell_rows - first_rows[component]) + cell_cols - first_cols[component]
    order = np.argsort(fronts, kind="stable")
    stride = carried.shape[1]
    reads, writes = ys * stride + xs, block_ys * stride + block_xs
    # A neighbour in a lost block (another slice) passes nothing on: it reads the zero sample after the box.
    reads[unavailable[np.clip((ys + top) // CELL, 0, rows - 1), np.clip((xs + left) // CELL, 0, cols - 1)]] = \
        len(samples) - 1
    reads, writes, modes = reads[order], writes[order], modes[order]
    weights = CARRIED_SHARE * matrices
    starts = np.flatnonzero(np.diff(fronts[order], prepend=-1))
    for start, end in zip(starts.tolist(), [*starts[1:].tolist(), len(order)]):
        samples[writes[start:end]] = np.matmul(weights[modes[start:end]], samples[reads[start:end]])
    inside = (block_ys + top < height) & (block_xs + left < width)
    for index, correction in enumerate(corrections):
        correction[block_ys[inside] + top, block_xs[inside] + left] = carried[block_ys[inside], block_xs[inside], index]


def _best_modes(matrices: np.ndarray, neighbours: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """Per cell, the mode whose prediction from its `neighbours` (cells, 13, planes) lies nearest (least
    absolute difference) to its decoded samples `blocks` (cells, 16, planes); one mode at a time, so that
    a picture of intra cells costs no more memory than a few copies of it."""
    best = np.full(len(blocks), np.inf, np.float32)
    modes = np.zeros(len(blocks), np.intp)
    for mode, matrix in enumerate(matrices):
        difference = np.abs(np.matmul(matrix, neighbours) - blocks).sum(axis=(1, 2))
        better = difference < best
        modes[better], best[better] = mode, difference[better]
    return modes


def _boxed(plane: np.ndarray, top: int, left: int, bottom: int, right: int, border: int) -> np.ndarray:
    """A copy of plane[top:bottom, left:right], the part of it outside the plane filled by `border`."""
    height, width = plane.shape
    inner = plane[max(top, 0):min(bottom, height), max(left, 0):min(right, width)]
    return cv2.copyMakeBorder(inner, max(0, -top), max(0, bottom - height), max(0, -left), max(0, right - width),
                              border, value=0)


def _reached(intra: np.ndarray, corrections: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The intra cells connected (through intra cells, 8-neighbourhood) to a cell holding a non-zero correction,
    and the label of every cell's connected component of intra cells."""
    count, labels = cv2.connectedComponents(intra.view(np.uint8), connectivity=8)
    # Only the cells around intra ones can pass anything on: look at their samples alone.
    near_rows, near_cols = np.nonzero(cv2.dilate(intra.view(np.uint8), np.ones((3, 3), np.uint8)) & ~intra)
    height, width = corrections[0].shape
    ys = np.minimum(CELL * near_rows[:, None] + np.repeat(np.arange(CELL), CELL)[None], height - 1)
    xs = np.minimum(CELL * near_cols[:, None] + np.tile(np.arange(CELL), CELL)[None], width - 1)
    holding = np.logical_or.reduce([(c[ys, xs] != 0).any(axis=1) for c in corrections])
    touched = np.zeros(intra.shape, np.uint8)
    touched[near_rows[holding], near_cols[holding]] = 1
    near = cv2.dilate(touched, np.ones((3, 3), np.uint8)).astype(bool)
    hit = np.zeros(count, bool)
    hit[labels[near & intra]] = True
    hit[0] = False
    return hit[labels] & intra, labels


def _neighbour_coordinates(cell_rows: np.ndarray, cell_cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ys, xs) int arrays (cells, 13) of each cell's neighbours in the plane padded by one sample above and left."""
    top, left = CELL * cell_rows, CELL * cell_cols  # the row above and the column left, once padded
    offsets = np.arange(8)
    ys = np.concatenate([top[:, None], np.repeat(top[:, None], 8, 1), top[:, None] + 1 + np.arange(4)[None]], 1)
    xs = np.concatenate([left[:, None], left[:, None] + 1 + offsets[None], np.repeat(left[:, None], 4, 1)], 1)
    return ys, xs

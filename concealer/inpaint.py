"""Inpainting with the shipped networks and OpenCV: `inpaint_image(image, mask, model=...)` for stills,
`inpaint_frame` for video frames with their motion-aligned neighbours.

The networks run on fixed-size windows cut around the damage only (a core of missing pixels
with context around it), batched, so the cost follows the damage, not the frame size.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from .errors import UsageError
from .models import load_network
from .models import temporal as temporal_model
from .models.context_encoder import HOLE, IMAGE, fill
from .motion import Warp, estimate_warp

OPENCV_METHODS = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}
NETWORKS = ("temporal", "context-encoder", "context-encoder-l2")
INPAINT_MODELS = (*NETWORKS, *OPENCV_METHODS)
# Windows per forward pass: enough to keep the CPU busy, few enough to bound memory.
BATCH = 64


@functools.lru_cache(maxsize=None)
def network(name: str) -> torch.nn.Module:
    return load_network(name)[0]


@dataclass(frozen=True)
class Neighbour:
    """A neighbouring frame (HxWx3 uint8 RGB), the pixels of it that are damaged themselves, and how it
    moves onto the frame being filled when the caller knows better than `motion.estimate_warp`."""

    image: np.ndarray
    damaged: np.ndarray | None = None
    motion: Warp | None = None


def inpaint_image(image: np.ndarray, mask: np.ndarray, model: str = "temporal") -> np.ndarray:
    """Fill the masked pixels (True = missing) of an HxWx3 uint8 RGB image; known pixels stay as they were."""
    return inpaint_frame(image, mask, model=model)


def inpaint_frame(image: np.ndarray, mask: np.ndarray, model: str = "temporal", previous: Neighbour | None = None,
                  following: Neighbour | None = None) -> np.ndarray:
    """`inpaint_image` for a video frame: `temporal` also uses the previous (repaired) and next frames."""
    image = np.asarray(image)
    mask = np.asarray(mask, dtype=bool)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise UsageError(f"inpainting wants an HxWx3 uint8 RGB array, got {image.dtype} {image.shape}")
    if mask.shape != image.shape[:2]:
        raise UsageError(f"the mask is {mask.shape}, the image {image.shape[:2]}")
    if model not in INPAINT_MODELS:
        raise UsageError(f"unknown inpainting model {model!r} (use {', '.join(INPAINT_MODELS)})")
    if not mask.any():
        return image.copy()
    if model in OPENCV_METHODS:
        filled = cv2.inpaint(image, mask.astype(np.uint8), 3, OPENCV_METHODS[model])
    elif model == "temporal":
        filled = _temporal_fill(image, mask, previous, following)
    else:
        filled = _context_encoder_fill(network(model), image, mask)
    out = image.copy()
    out[mask] = filled[mask]
    return out


def _aligned(neighbour: Neighbour | None, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A neighbour warped onto `image` (`motion.align`) and where it can be trusted: everywhere but
    its own damage (zeros when there is no neighbour)."""
    if neighbour is None:
        return np.zeros_like(image), np.zeros(mask.shape, np.uint8)
    warp = neighbour.motion or estimate_warp(neighbour.image, image, mask)
    valid = np.ones(mask.shape, bool)
    if neighbour.damaged is not None and neighbour.damaged.any():
        valid &= warp.apply(neighbour.damaged.astype(np.uint8), cv2.INTER_NEAREST) == 0
    return warp.apply(neighbour.image), valid.astype(np.uint8)


def _temporal_fill(image: np.ndarray, mask: np.ndarray, previous: Neighbour | None,
                   following: Neighbour | None) -> np.ndarray:
    previous_image, previous_valid = _aligned(previous, image, mask)
    following_image, following_valid = _aligned(following, image, mask)
    model = network("temporal")

    def run(windows: list[np.ndarray]) -> np.ndarray:
        tensors = [torch.from_numpy(w).permute(0, 3, 1, 2).float() / 255 if w.ndim == 4 else
                   torch.from_numpy(w)[:, None].float() for w in windows]
        with torch.no_grad():
            return (model(*tensors) * 255).round().byte().permute(0, 2, 3, 1).numpy()

    # The spatial guess is made on the whole picture, with all its context; the training windows had only their
    # own (Set5 at full size, a centred 64x64 hole: hole MSE summed over the five images 10240 so, 10563 with
    # per-window fills, 10697 for telea alone).
    spatial = temporal_model.spatial_fill(image, mask)
    arrays = [image, mask.astype(np.uint8), spatial, previous_image, previous_valid, following_image, following_valid]
    return _fill_windows(arrays, mask, temporal_model.CORE, temporal_model.MARGIN, run)


def _context_encoder_fill(model: torch.nn.Module, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The paper's model on every 64x64 tile holding missing pixels, each the centre of a 128x128
    window, as it was trained (it fills that centre whatever the hole's shape)."""

    def run(windows: list[np.ndarray]) -> np.ndarray:
        batch = torch.from_numpy(windows[0]).permute(0, 3, 1, 2).float() / 127.5 - 1
        with torch.no_grad():
            filled = fill(model, batch)
        return ((filled + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()

    return _fill_windows([image], mask, HOLE, (IMAGE - HOLE) // 2, run)


def _fill_windows(arrays: list[np.ndarray], mask: np.ndarray, core: int, margin: int,
                  run: Callable[[list[np.ndarray]], np.ndarray]) -> np.ndarray:
    """Cut a window (core + margin on each side) around every core-sized tile of `mask` that holds
    missing pixels from each of `arrays` (picture edges mirrored), let `run` repair the stacked
    windows in batches, and paste the repaired cores into a copy of arrays[0]."""
    height, width = mask.shape
    rows, cols = -(-height // core), -(-width // core)

    def pad(array: np.ndarray) -> np.ndarray:
        widths = [(margin, margin + rows * core - height), (margin, margin + cols * core - width)]
        return np.pad(array, widths + [(0, 0)] * (array.ndim - 2), mode="symmetric")

    padded = [pad(a) for a in arrays]
    tiles = [(r * core, c * core) for r in range(rows) for c in range(cols)
             if mask[r * core:(r + 1) * core, c * core:(c + 1) * core].any()]
    out = arrays[0].copy()
    window = core + 2 * margin
    for start in range(0, len(tiles), BATCH):
        chunk = tiles[start:start + BATCH]
        repaired = run([np.stack([p[top:top + window, left:left + window] for top, left in chunk]) for p in padded])
        for (top, left), result in zip(chunk, repaired):
            rows_kept, cols_kept = min(core, height - top), min(core, width - left)
            kept = result[margin:margin + rows_kept, margin:margin + cols_kept]
            out[top:top + rows_kept, left:left + cols_kept] = kept
    return out

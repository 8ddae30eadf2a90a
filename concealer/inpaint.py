"""Single-image inpainting: `inpaint_image(image, mask, model=...)`, the API the models are compared by."""
from __future__ import annotations

import functools

import cv2
import numpy as np
import torch

from .errors import InputError, UsageError
from .models import WEIGHTS_DIR, load_context_encoder
from .models.context_encoder import HOLE, IMAGE, ContextEncoder, fill

OPENCV_METHODS = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}
NETWORKS = ("context-encoder", "context-encoder-l2")
INPAINT_MODELS = (*NETWORKS, *OPENCV_METHODS)


@functools.lru_cache(maxsize=None)
def _network(name: str) -> ContextEncoder:
    path = WEIGHTS_DIR / f"{name}.safetensors"
    if not path.exists():
        raise InputError(f"the {name} weights are not installed ({path} is missing)")
    return load_context_encoder(path)[0]


def inpaint_image(image: np.ndarray, mask: np.ndarray, model: str = "context-encoder") -> np.ndarray:
    """Fill the masked pixels (True = missing) of an HxWx3 uint8 RGB image; known pixels stay as they were."""
    image = np.asarray(image)
    mask = np.asarray(mask, dtype=bool)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise UsageError(f"inpaint_image wants an HxWx3 uint8 RGB array, got {image.dtype} {image.shape}")
    if mask.shape != image.shape[:2]:
        raise UsageError(f"the mask is {mask.shape}, the image {image.shape[:2]}")
    if model not in INPAINT_MODELS:
        raise UsageError(f"unknown inpainting model {model!r} (use {', '.join(INPAINT_MODELS)})")
    if not mask.any():
        return image.copy()
    if model in OPENCV_METHODS:
        filled = cv2.inpaint(image, mask.astype(np.uint8), 3, OPENCV_METHODS[model])
    else:
        filled = _context_encoder_fill(_network(model), image, mask)
    out = image.copy()
    out[mask] = filled[mask]
    return out


def _context_encoder_fill(network: ContextEncoder, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Run the paper's model on every 64x64 tile that holds missing pixels, each as the centre
    of a 128x128 window (reflected at the picture's edges), as it was trained."""
    height, width = mask.shape
    margin = (IMAGE - HOLE) // 2
    padded = cv2.copyMakeBorder(image, margin, margin + HOLE, margin, margin + HOLE, cv2.BORDER_REFLECT_101)
    tiles = [(top, left) for top in range(0, height, HOLE) for left in range(0, width, HOLE)
             if mask[top:top + HOLE, left:left + HOLE].any()]
    windows = np.stack([padded[top:top + IMAGE, left:left + IMAGE] for top, left in tiles])
    batch = torch.from_numpy(windows).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        filled = fill(network, batch)
    centres = ((filled[:, :, margin:margin + HOLE, margin:margin + HOLE] + 1) * 127.5).round().clamp(0, 255)
    centres = centres.byte().permute(0, 2, 3, 1).numpy()
    out = image.copy()
    for (top, left), centre in zip(tiles, centres):
        rows, cols = min(HOLE, height - top), min(HOLE, width - left)
        out[top:top + rows, left:left + cols] = centre[:rows, :cols]
    return out

"""Picture quality against a clean reference, one frame at a time: what `conceal --reference` and
`conceal report` both measure, so that their numbers agree.

PSNR is on the raw 8-bit planes (limited range stays limited); luma PSNR uses Y only, YUV PSNR pools
the squared error of every Y, U and V sample. SSIM is scikit-image's on the luma plane. Identical
pictures have infinite PSNR, which JSON cannot hold: `json_safe` writes it as null.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .concealment import Picture


@dataclass(frozen=True)
class FrameScores:
    """How far one picture is from its clean counterpart."""

    mse_y: float
    mse_yuv: float
    ssim: float  # luma SSIM

    @property
    def psnr_y(self) -> float:
        return psnr(self.mse_y)

    @property
    def psnr_yuv(self) -> float:
        return psnr(self.mse_yuv)


def frame_scores(picture: Picture, clean: Picture) -> FrameScores:
    """Luma and YUV mean squared error and luma SSIM of `picture` against `clean` (same size)."""
    # scikit-image is slow to import: only when something is measured.
    from skimage.metrics import structural_similarity

    errors = [float(np.sum((a.astype(np.float64) - b) ** 2)) for a, b in
              ((picture.y, clean.y), (picture.u, clean.u), (picture.v, clean.v))]
    return FrameScores(mse_y=errors[0] / clean.y.size,
                       mse_yuv=sum(errors) / (clean.y.size + clean.u.size + clean.v.size),
                       ssim=float(structural_similarity(clean.y, picture.y, data_range=255)))


def psnr(mse: float) -> float:
    """PSNR of 8-bit samples in dB; infinite for identical pictures."""
    return math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def json_safe(value):
    """`value` with every infinite float (an identical picture's PSNR) as None: JSON has no infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value

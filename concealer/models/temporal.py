"""`temporal`: our spatio-temporal inpainting network, the paper's future work made real.

It sees the damaged frame with its hole mask, a spatial fill of the hole (`spatial_fill`, OpenCV's
Telea inpainting), and the previous and next frames warped onto it by motion (each with a mask of
where it can be trusted: not where the neighbour is damaged itself), and predicts the missing pixels
as a correction to the best guess: the warped previous frame where it is trusted, else the warped
next one, else the spatial fill. The learned correction is applied only where no neighbour is
trusted. It was trained everywhere (train/temporal.py), and where a warped neighbour is trusted it
made the repair worse: on the held-out video windows 27.71 dB over the hole against 27.92 for the
warped previous frame alone, and in `conceal` with drift correction chaplin fell from 32.36 / 27.22
/ 21.95 to 30.73 / 25.54 / 21.06 dB at 3 / 10 / 20% loss (foreman 38.01 / 31.34 / 18.47 to 37.15 /
30.71 / 18.54). The weights before these scored level with their warped guess too (its correction
near zero: 27.78 dB on the same windows); retraining on `fill_motion`'s guess (12-minute pilots,
Charbonnier and per-window log-MSE losses) left the validation hole PSNR where the guess put it.
In a video the previous picture is moved by `motion.fill_motion`, the estimate the flow concealer
fills with, so `temporal` scores level with `flow` there (benchmarks/RESULTS.md). Without neighbours
it inpaints a still image, starting from the spatial fill: on the paper's Table 1 protocol (whole
image / hole) Set5 21.20 / 15.18 dB, Set14 19.23 / 13.21, BSD100 21.62 / 15.60, against 18.35 /
12.32, 18.61 / 12.59 and 20.02 / 14.00 when the guess there was flat grey, and Telea's 21.08 / 15.06,
18.98 / 12.96 and 21.46 / 15.43. It is fully convolutional and small (a three-level U-Net of about
0.3 M parameters), so it runs batched on 96x96 windows around the damage only.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import nn

# Windows the network runs on: a 64x64 core whose pixels it fills, with 16 pixels of context around.
CORE = 64
MARGIN = 16
WINDOW = CORE + 2 * MARGIN
# Neighbourhood radius of the spatial fill (Telea), as `conceal --model telea` uses.
SPATIAL_RADIUS = 3
# Input channels: current RGB, hole, spatial fill RGB, previous RGB, previous valid, next RGB, next valid.
CHANNELS = 15


def spatial_fill(current: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """The guess where no neighbour can be trusted: OpenCV's Telea inpainting of an HxWx3 uint8 window
    (`hole` HxW, nonzero = missing), the pixels under the hole never read. Before, that guess was flat
    grey and single-image mode scored 18.35 dB on Set5 (Table 1, whole image) against 21.08 for Telea."""
    hole = (hole > 0).astype(np.uint8)
    if not hole.any() or hole.all():
        return np.where(hole[..., None] > 0, 128, current).astype(np.uint8)
    return cv2.inpaint(current * (1 - hole[..., None]), hole, SPATIAL_RADIUS, cv2.INPAINT_TELEA)


def _conv(a: int, b: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(a, b, 3, stride, 1), nn.LeakyReLU(0.2, inplace=True))


class TemporalInpainter(nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()
        c1, c2, c3 = width, 2 * width, 4 * width
        self.enc1 = nn.Sequential(_conv(CHANNELS, c1), _conv(c1, c1))
        self.enc2 = nn.Sequential(_conv(c1, c2, 2), _conv(c2, c2))
        self.enc3 = nn.Sequential(_conv(c2, c3, 2), _conv(c3, c3))
        self.bottom = nn.Sequential(_conv(c3, c3, 2), _conv(c3, c3),
                                    nn.Upsample(scale_factor=2, mode="nearest"), _conv(c3, c3))
        self.dec3 = nn.Sequential(_conv(2 * c3, c3), nn.Upsample(scale_factor=2, mode="nearest"), _conv(c3, c2))
        self.dec2 = nn.Sequential(_conv(2 * c2, c2), nn.Upsample(scale_factor=2, mode="nearest"), _conv(c2, c1))
        self.dec1 = nn.Sequential(_conv(2 * c1, c1), nn.Conv2d(c1, 3, 3, 1, 1))
        # Start from the warped guess itself: training can then only improve on it.
        nn.init.zeros_(self.dec1[-1].weight)
        nn.init.zeros_(self.dec1[-1].bias)

    def forward(self, current: torch.Tensor, hole: torch.Tensor, spatial: torch.Tensor, previous: torch.Tensor,
                previous_valid: torch.Tensor, following: torch.Tensor, following_valid: torch.Tensor,
                correct_trusted: bool = False) -> torch.Tensor:
        """Images (N, 3, H, W) in [0, 1], masks (N, 1, H, W) in {0, 1}; H and W multiples of 8. `spatial` is
        `spatial_fill` of `current`. The learned correction applies only where no neighbour is trusted unless
        `correct_trusted` (training sets it: the correction is learned everywhere; see the module docstring).

        Returns the repaired images: the known pixels of `current` and the predicted ones in the hole.
        """
        current = current * (1 - hole)
        previous, following = previous * previous_valid, following * following_valid
        # The best guess before the network: the previous frame where its warp is valid, else the next, else
        # the spatial fill.
        guess = previous + following * (1 - previous_valid)
        guess = guess + spatial * (1 - previous_valid) * (1 - following_valid)
        x = torch.cat([current - 0.5, hole, spatial - 0.5, previous - 0.5, previous_valid, following - 0.5,
                       following_valid], 1)
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d3 = self.dec3(torch.cat([self.bottom(e3), e3], 1))
        d2 = self.dec2(torch.cat([d3, e2], 1))
        correction = self.dec1(torch.cat([d2, e1], 1))
        if not correct_trusted:
            correction = correction * (1 - previous_valid) * (1 - following_valid)
        predicted = (guess + correction).clamp(0, 1)
        return current + predicted * hole

"""`temporal`: our spatio-temporal inpainting network, the paper's future work made real.

It sees the damaged frame with its hole mask and the previous and next frames warped onto
it by motion (each with a mask of where it can be trusted: not where the neighbour is damaged
itself) and predicts the missing pixels as a correction to the best warped guess. The shipped
weights were trained on neighbours moved by `motion.align` (the flow around the hole carried in),
and the trained correction stays near zero: the network does not improve on its warped guess
(train/README.md). In a video the previous picture is therefore moved by `motion.fill_motion`,
the better estimate the flow concealer fills with: over the lost pixels of foreman at 3 / 10 /
20% loss (`python -m benchmarks.lost_pixels`) `temporal` went from 29.16 / 27.79 / 17.35 dB to
32.01 / 29.48 / 18.31 (where nothing moves the previous picture, the decoder's concealment is kept,
as `flow` keeps it), against 32.04 / 29.53 / 18.30 for the flow fill alone; retraining on
`fill_motion`'s guess (12-minute pilots, Charbonnier and per-window log-MSE losses) left the
validation hole PSNR where the guess alone put it. With the next picture's vectors in `fill_motion`
`temporal` went to 32.70 / 30.94 / 18.32 dB (flow alone 32.82 / 31.03 / 18.31; FFmpeg 25.66 / 26.78 /
18.27). Without neighbours (both validity masks zero)
it inpaints a still image. It is fully convolutional and small (a three-level U-Net of
about 0.3 M parameters), so it runs batched on 96x96 windows around the damage only.
"""
from __future__ import annotations

import torch
from torch import nn

# Windows the network runs on: a 64x64 core whose pixels it fills, with 16 pixels of context around.
CORE = 64
MARGIN = 16
WINDOW = CORE + 2 * MARGIN
# Input channels: current RGB, hole, previous RGB, previous valid, next RGB, next valid.
CHANNELS = 12


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

    def forward(self, current: torch.Tensor, hole: torch.Tensor, previous: torch.Tensor, previous_valid: torch.Tensor,
                following: torch.Tensor, following_valid: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) in [0, 1], masks (N, 1, H, W) in {0, 1}; H and W multiples of 8.

        Returns the repaired images: the known pixels of `current` and the predicted ones in the hole.
        """
        current = current * (1 - hole)
        previous, following = previous * previous_valid, following * following_valid
        # The best guess before the network: the previous frame where its warp is valid, else the next.
        guess = previous + following * (1 - previous_valid)
        guess = guess + 0.5 * (1 - previous_valid) * (1 - following_valid)
        x = torch.cat([current - 0.5, hole, previous - 0.5, previous_valid, following - 0.5, following_valid], 1)
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d3 = self.dec3(torch.cat([self.bottom(e3), e3], 1))
        d2 = self.dec2(torch.cat([d3, e2], 1))
        predicted = (guess + self.dec1(torch.cat([d2, e1], 1))).clamp(0, 1)
        return current + predicted * hole

"""Concealers: fill the damaged macroblocks of a frame, behind one small interface.

Work happens on the YUV 4:2:0 planes the decoder produced, so that a repair never
costs a colour conversion: luma at full resolution, chroma at half.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import av
import cv2
import numpy as np

from .errors import UsageError

INPAINT_RADIUS = 3


@dataclass(frozen=True)
class Picture:
    """One 8-bit YUV 4:2:0 picture as three planes (luma HxW, chroma H/2 x W/2)."""

    y: np.ndarray
    u: np.ndarray
    v: np.ndarray

    @classmethod
    def from_frame(cls, frame: av.VideoFrame) -> "Picture":
        if frame.format.name not in ("yuv420p", "yuvj420p"):
            frame = frame.reformat(format="yuv420p")
        planes = []
        for index, plane in enumerate(frame.planes):
            height = frame.height if index == 0 else -(-frame.height // 2)
            width = frame.width if index == 0 else -(-frame.width // 2)
            planes.append(np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:height, :width].copy())
        return cls(*planes)

    def to_frame(self) -> av.VideoFrame:
        height, width = self.y.shape
        stacked = np.concatenate([self.y.ravel(), self.u.ravel(), self.v.ravel()])
        return av.VideoFrame.from_ndarray(stacked.reshape(height * 3 // 2, width), format="yuv420p")

    def planes_with_masks(self, mask: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """(plane, mask at that plane's resolution) for Y, U and V; masks are macroblock-aligned,
        so subsampling the luma mask gives the chroma mask exactly."""
        chroma = mask[::2, ::2]
        return [(self.y, mask), (self.u, chroma), (self.v, chroma)]


class Concealer(Protocol):
    """Fills the masked pixels of `picture`; `previous` is the last repaired picture, if any."""

    name: str

    def conceal(self, picture: Picture, mask: np.ndarray, previous: Picture | None) -> Picture: ...


class FfmpegConcealer:
    """FFmpeg's own concealment only: the decoded picture as it is (the baseline)."""

    name = "ffmpeg"

    def conceal(self, picture: Picture, mask: np.ndarray, previous: Picture | None) -> Picture:
        return picture


class CopyConcealer:
    """Frame copy: damaged blocks take the co-located pixels of the previous repaired picture."""

    name = "copy"

    def conceal(self, picture: Picture, mask: np.ndarray, previous: Picture | None) -> Picture:
        if previous is None:
            return picture
        planes = []
        for (plane, plane_mask), (old, _) in zip(picture.planes_with_masks(mask), previous.planes_with_masks(mask)):
            repaired = plane.copy()
            repaired[plane_mask] = old[plane_mask]
            planes.append(repaired)
        return Picture(*planes)


class InpaintConcealer:
    """OpenCV's single-image inpainting (Telea's fast marching or Navier-Stokes), plane by plane."""

    def __init__(self, method: str):
        self.name = method
        self._flag = cv2.INPAINT_TELEA if method == "telea" else cv2.INPAINT_NS

    def conceal(self, picture: Picture, mask: np.ndarray, previous: Picture | None) -> Picture:
        if mask.all():
            return picture  # nothing known to inpaint from
        return Picture(*(cv2.inpaint(plane, plane_mask.astype(np.uint8), INPAINT_RADIUS, self._flag)
                         for plane, plane_mask in picture.planes_with_masks(mask)))


CONCEALERS = ("ffmpeg", "copy", "telea", "ns")


def make_concealer(name: str) -> Concealer:
    if name == "ffmpeg":
        return FfmpegConcealer()
    if name == "copy":
        return CopyConcealer()
    if name in ("telea", "ns"):
        return InpaintConcealer(name)
    raise UsageError(f"unknown concealment model {name!r} (use {', '.join(CONCEALERS)})")

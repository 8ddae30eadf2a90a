"""Concealers: fill the damaged macroblocks of a frame, behind one small interface.

Work happens on the YUV 4:2:0 planes the decoder produced, so that a repair never
costs a colour conversion: luma at full resolution, chroma at half.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Protocol

import av
import cv2
import numpy as np

from .detection import DamagedFrame
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

    def to_rgb(self) -> np.ndarray:
        """HxWx3 uint8 RGB (BT.601), what the networks were trained on."""
        height, width = self.y.shape
        luma = np.pad(self.y, ((0, height % 2), (0, width % 2)), mode="edge")
        stacked = np.concatenate([luma.ravel(), self.u.ravel(), self.v.ravel()]).reshape(-1, luma.shape[1])
        return cv2.cvtColor(stacked, cv2.COLOR_YUV2RGB_I420)[:height, :width]

    def with_rgb(self, rgb: np.ndarray, mask: np.ndarray) -> "Picture":
        """This picture with its `mask` pixels taken from an RGB image of the same size."""
        height, width = self.y.shape
        even = np.pad(rgb, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        yuv = cv2.cvtColor(even, cv2.COLOR_RGB2YUV_I420).ravel()
        luma_size, chroma_size = even.shape[0] * even.shape[1], self.u.size
        planes = (yuv[:luma_size].reshape(even.shape[:2])[:height, :width],
                  yuv[luma_size:luma_size + chroma_size].reshape(self.u.shape),
                  yuv[luma_size + chroma_size:].reshape(self.v.shape))
        repaired = []
        for (plane, plane_mask), new in zip(self.planes_with_masks(mask), planes):
            plane = plane.copy()
            plane[plane_mask] = new[plane_mask]
            repaired.append(plane)
        return Picture(*repaired)


class Neighbours:
    """What a concealer may look at besides the damaged picture itself.

    The next frame is converted only when a concealer asks for it: most never do."""

    def __init__(self, previous: Picture | None = None, following: DamagedFrame | None = None):
        self.previous = previous  # the last repaired picture
        self._following = None if following is None or following.frame.missing else following

    @functools.cached_property
    def following(self) -> Picture | None:
        """The next picture as decoded (its own damage not yet repaired)."""
        return Picture.from_frame(self._following.frame.picture) if self._following else None

    @functools.cached_property
    def following_damaged(self) -> np.ndarray | None:
        """The next picture's damaged pixels (HxW bool)."""
        if self._following is None:
            return None
        picture = self._following.frame.picture
        return self._following.damage.pixel_mask(picture.height, picture.width)


class Concealer(Protocol):
    """Fills the masked pixels of `picture`, perhaps with help from its neighbours."""

    name: str

    def conceal(self, picture: Picture, mask: np.ndarray, neighbours: Neighbours) -> Picture: ...


class FfmpegConcealer:
    """FFmpeg's own concealment only: the decoded picture as it is (the baseline)."""

    name = "ffmpeg"

    def conceal(self, picture: Picture, mask: np.ndarray, neighbours: Neighbours) -> Picture:
        return picture


class CopyConcealer:
    """Frame copy: damaged blocks take the co-located pixels of the previous repaired picture."""

    name = "copy"

    def conceal(self, picture: Picture, mask: np.ndarray, neighbours: Neighbours) -> Picture:
        if neighbours.previous is None:
            return picture
        planes = []
        for (plane, plane_mask), (old, _) in zip(picture.planes_with_masks(mask),
                                                 neighbours.previous.planes_with_masks(mask)):
            repaired = plane.copy()
            repaired[plane_mask] = old[plane_mask]
            planes.append(repaired)
        return Picture(*planes)


class InpaintConcealer:
    """OpenCV's single-image inpainting (Telea's fast marching or Navier-Stokes), plane by plane."""

    def __init__(self, method: str):
        self.name = method
        self._flag = cv2.INPAINT_TELEA if method == "telea" else cv2.INPAINT_NS

    def conceal(self, picture: Picture, mask: np.ndarray, neighbours: Neighbours) -> Picture:
        if mask.all():
            return picture  # nothing known to inpaint from
        return Picture(*(cv2.inpaint(plane, plane_mask.astype(np.uint8), INPAINT_RADIUS, self._flag)
                         for plane, plane_mask in picture.planes_with_masks(mask)))


class NetworkConcealer:
    """A shipped inpainting network on the frame in RGB; `temporal` also sees the aligned neighbours."""

    def __init__(self, model: str):
        from . import inpaint  # torch loads only when a network is asked for
        self.name = model
        self._inpaint = inpaint
        inpaint.network(model)  # a missing or broken weights file fails now, before any output

    def conceal(self, picture: Picture, mask: np.ndarray, neighbours: Neighbours) -> Picture:
        previous = following = None
        if self.name == "temporal":
            if neighbours.previous is not None:
                previous = self._inpaint.Neighbour(neighbours.previous.to_rgb())
            if neighbours.following is not None:
                following = self._inpaint.Neighbour(neighbours.following.to_rgb(), neighbours.following_damaged)
        filled = self._inpaint.inpaint_frame(picture.to_rgb(), mask, self.name, previous, following)
        return picture.with_rgb(filled, mask)


CONCEALERS = ("temporal", "context-encoder", "ffmpeg", "copy", "telea", "ns")


def make_concealer(name: str) -> Concealer:
    if name == "ffmpeg":
        return FfmpegConcealer()
    if name == "copy":
        return CopyConcealer()
    if name in ("telea", "ns"):
        return InpaintConcealer(name)
    if name in ("temporal", "context-encoder", "context-encoder-l2"):
        return NetworkConcealer(name)
    raise UsageError(f"unknown concealment model {name!r} (use {', '.join(CONCEALERS)})")

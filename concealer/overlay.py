"""A video with the damage map drawn over the frames, so that a person can see what was detected."""
from __future__ import annotations

from fractions import Fraction

import av
import cv2
import numpy as np

from .detection import MB, DamagedFrame, DamageLabel
from .encode import EncoderSettings, add_video_encoder

COLOURS = {DamageLabel.LOST: (255, 40, 40), DamageLabel.PROPAGATED: (255, 210, 0)}
TINT = 0.45


def draw_damage(rgb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Tint lost macroblocks red and propagated ones yellow, and outline the macroblock grid cells."""
    out = rgb.astype(np.float32)
    height, width = rgb.shape[:2]
    for label, colour in COLOURS.items():
        mask = np.kron(labels == label, np.ones((MB, MB), dtype=bool))[:height, :width]
        out[mask] = (1 - TINT) * out[mask] + TINT * np.array(colour, np.float32)
    out = out.astype(np.uint8)
    for row, col in zip(*np.nonzero(labels != DamageLabel.CLEAN)):
        cv2.rectangle(out, (int(col) * MB, int(row) * MB), (int(col) * MB + MB - 1, int(row) * MB + MB - 1),
                      COLOURS.get(DamageLabel(labels[row, col]), (255, 40, 40)), 1)
    return out


def missing_frame_picture(height: int, width: int) -> np.ndarray:
    picture = np.full((height, width, 3), 40, np.uint8)
    cv2.line(picture, (0, 0), (width - 1, height - 1), (255, 40, 40), 2)
    cv2.line(picture, (width - 1, 0), (0, height - 1), (255, 40, 40), 2)
    cv2.putText(picture, "missing frame", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    return picture


class OverlayWriter:
    """Encodes damaged frames with their maps drawn on (H.264, CRF 18) into an already-opened container."""

    def __init__(self, container: av.container.OutputContainer, width: int, height: int, rate: Fraction,
                 time_base: Fraction):
        self._stream = add_video_encoder(container, EncoderSettings(crf=18), width=width, height=height,
                                         rate=rate, time_base=time_base)
        self._container = container
        self._size = (height, width)

    def write(self, damaged: DamagedFrame) -> None:
        frame = damaged.frame
        rgb = missing_frame_picture(*self._size) if frame.missing else \
            draw_damage(frame.picture.to_ndarray(format="rgb24"), damaged.damage.labels)
        picture = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        picture.pts, picture.time_base = frame.pts, frame.time_base
        self._container.mux(self._stream.encode(picture))

    def close(self) -> None:
        self._container.mux(self._stream.encode(None))

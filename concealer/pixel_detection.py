"""Blind damage maps from the pixels alone, for video whose damage was decoded and re-encoded.

Once a damaged stream has been decoded (FFmpeg's concealment baked into the pictures) and
re-encoded, no slice or packet structure is left to read. What remains is what concealment
and its spread look like: seams on the 16x16 grid, blocks that freeze while their
neighbours move, motion the optical flow cannot explain, and above all persistence, since
damage rides along with the motion until the next keyframe corrects it (a sudden change
where the damage was). A small network (`models.damage_net`) reads the picture, its change
since the previous one in place and along the DIS optical flow, and its own previous answer
carried along that flow. It is trained by `train/pixel_detector.py` on damage simulate-loss
made on the training clips and ships as safetensors with its threshold and training record.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from .decode import FFMPEG_CONCEALMENT, DecodedFrame, decode_frames
from .detection import DAMAGE_MSE, MB, DamageLabel, DamageMap, MotionField, macroblock_mean
from .encode import EncoderSettings, add_video_encoder
from .errors import InputError
from .media import AtomicOutputs, main_video, nominal_rate, open_output, open_video_input
from .motion import Warp

NETWORK = "pixel-detector"
# Scale of the change channels: pixel differences of this size map to 1.
CHANGE_SCALE = 32.0


@dataclass(frozen=True)
class FrameInputs:
    """What the network reads of one decoded picture, padded to whole macroblocks (8-bit, so that training
    can hold thousands of them)."""

    current: np.ndarray  # (16R, 16C) uint8 luma
    warped: np.ndarray  # the previous picture moved onto this one along the optical flow
    previous: np.ndarray  # the previous picture in place (this one's own luma on the first frame)
    flow: np.ndarray  # (R, C, 2) float32: mean displacement of each macroblock to where it was in the previous one
    frame: np.ndarray  # (3,) float32: log mean absolute change along the flow and in place, frames lost before

    def pixels(self) -> np.ndarray:
        """(3, 16R, 16C) float32: the picture, its change along the flow and in place, scaled near [-1, 1]."""
        current = self.current.astype(np.float32)
        return np.stack([current / 255, (current - self.warped) / CHANGE_SCALE,
                         (current - self.previous) / CHANGE_SCALE])


def _padded(luma: np.ndarray) -> np.ndarray:
    height, width = luma.shape
    return cv2.copyMakeBorder(luma, 0, -height % MB, 0, -width % MB, cv2.BORDER_REPLICATE)


def _block_mean(values: np.ndarray) -> np.ndarray:
    height, width = values.shape[:2]
    return values.reshape(height // MB, MB, width // MB, MB, *values.shape[2:]).mean(axis=(1, 3))


class InputExtractor:
    """`FrameInputs` of each picture in turn, streaming: keeps only the previous picture."""

    def __init__(self) -> None:
        self._flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
        self._previous: np.ndarray | None = None
        self._gap = False

    def skip_missing(self) -> None:
        """A frame slot never arrived: the next picture follows a gap."""
        self._gap = True

    def process(self, luma: np.ndarray) -> FrameInputs:
        current = _padded(luma)
        previous = current if self._previous is None else self._previous
        flow = self._flow.calc(current, previous, None)
        warped = Warp(flow[..., 0], flow[..., 1]).apply(previous)
        frame = np.array([np.log1p(cv2.absdiff(current, warped).mean()),
                          np.log1p(cv2.absdiff(current, previous).mean()), float(self._gap)], np.float32)
        self._previous, self._gap = current, False
        return FrameInputs(current, warped, previous, _block_mean(flow).astype(np.float32), frame)


def carry_state(state: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """The previous frame's damage probabilities moved to where each macroblock's content now is."""
    return Warp(flow[..., 0] / MB, flow[..., 1] / MB).apply(state.astype(np.float32))


def damage_probability(network: torch.nn.Module, inputs: FrameInputs, carried: np.ndarray) -> np.ndarray:
    """(R, C) probability that each macroblock is damaged, given the previous answer carried onto this picture."""
    with torch.inference_mode():
        return network(torch.from_numpy(inputs.pixels())[None], torch.from_numpy(inputs.frame)[None],
                       torch.from_numpy(carried)[None, None])[0].numpy()


class PixelDetector:
    """Blind detection from decoded pictures alone (see the module docstring); LOST is never told apart from
    PROPAGATED here, so every damaged macroblock is labelled PROPAGATED."""

    traces_drift = False

    def __init__(self, mb_shape: tuple[int, int], weights: Path | None = None):
        from .models import load_network  # torch models load only when this detector is used
        self._network, shipped = load_network(NETWORK, weights)
        if "threshold" not in shipped.metrics:
            raise InputError(f"{shipped.path}: pixel detector weights without the threshold they were tuned to")
        self._threshold = float(shipped.metrics["threshold"])
        self._inputs = InputExtractor()
        self._state = np.zeros(mb_shape, np.float32)

    def process_frame(self, frame: DecodedFrame, motion: MotionField) -> DamageMap:
        """The damage the pixels show (a baked copy has no motion vectors of its own: `motion` is unused)."""
        if frame.missing:
            self._inputs.skip_missing()
            return DamageMap(frame.pts, np.full(self._state.shape, DamageLabel.MISSING_FRAME, np.uint8))
        inputs = self._inputs.process(frame.luma())
        self._state = damage_probability(self._network, inputs, carry_state(self._state, inputs.flow))
        labels = np.where(self._state > self._threshold, DamageLabel.PROPAGATED, DamageLabel.CLEAN)
        return DamageMap(frame.pts, labels.astype(np.uint8))


def bake_damage(damaged: Path, output: Path, *, crf: float = 18.0, lossless: bool = False,
                overwrite: bool = False) -> None:
    """Decode `damaged` with FFmpeg's concealment and re-encode it with x264, every frame keeping its pts,
    frames that never arrived left out: damaged video as it reaches a viewer, with no bitstream evidence left
    (test and tuning input for `PixelDetector`)."""
    with open_video_input(damaged) as probe:
        stream = main_video(probe)
        width, height = stream.codec_context.width, stream.codec_context.height
        rate, time_base = nominal_rate(stream), stream.time_base
    settings = EncoderSettings(crf=crf, lossless=lossless, preset="veryfast")
    with AtomicOutputs([Path(output)], overwrite, inputs=[damaged]) as outputs:
        with open_output(outputs[Path(output)]) as container:
            encoder = add_video_encoder(container, settings, width=width, height=height, rate=rate,
                                        time_base=time_base)
            for slot in decode_frames(damaged, concealment=FFMPEG_CONCEALMENT):
                if not slot.missing:
                    picture = slot.picture.reformat(format="yuv420p")
                    picture.pts, picture.time_base = slot.pts, time_base
                    picture.pict_type = 0
                    container.mux(encoder.encode(picture))
            container.mux(encoder.encode(None))
        outputs.commit()


def reference_damage_maps(damaged: Path, reference: Path) -> dict[int, np.ndarray]:
    """The reference map of each decoded frame of `damaged`, by pts: the macroblocks whose luma, decoded with
    FFmpeg's concealment, differs from the decode of the clean `reference` by MSE > DAMAGE_MSE. A baked copy
    keeps the pts, so this is also the target of detection on it."""
    clean = {frame.pts: frame.luma() for frame in decode_frames(reference)}
    return {frame.pts: macroblock_mean((frame.luma().astype(np.float32) - clean[frame.pts]) ** 2) > DAMAGE_MSE
            for frame in decode_frames(damaged, concealment=FFMPEG_CONCEALMENT)
            if not frame.missing and frame.pts in clean}

"""Blind damage maps from the pixels alone, for video whose damage was decoded and re-encoded.

Once a damaged stream has been decoded (FFmpeg's concealment baked into the pictures) and
re-encoded, no slice or packet structure is left to read. What remains is what concealment
and its spread look like: seams on the 16x16 grid, blocks that freeze while their
neighbours move, motion the optical flow cannot explain, and above all persistence, since
damage rides along with the motion until the next keyframe corrects it (a sudden change
where the damage was). One logistic model per macroblock reads these signals together with
its own previous answer, carried along the DIS optical flow: that recurrence is what lets it
keep marking damage that no longer shows in a single frame. Its weights are fitted by
`train/pixel_detector.py` on damage simulate-loss made on the training clips and ship as
JSON (`weights/pixel-detector.json`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from .decode import FFMPEG_CONCEALMENT, DecodedFrame, decode_frames
from .detection import DAMAGE_MSE, MB, DamageLabel, DamageMap, MotionField, macroblock_mean
from .encode import EncoderSettings, add_video_encoder
from .errors import InputError
from .media import AtomicOutputs, nominal_rate, open_output, open_video_input

WEIGHTS = "pixel-detector.json"
# Names of the per-macroblock evidence channels, in the order `FrameEvidence.blocks` stacks them.
EVIDENCE = ("texture", "residual", "difference", "seam_max", "seam_mean", "frozen", "residual_excess")
# Frame-wide evidence: mean residual, mean difference and its jump from the previous frame, gap before.
FRAME_EVIDENCE = ("frame_residual", "frame_difference", "difference_jump", "after_gap")
# What the model's own previous answer contributes: itself, its 3x3 maximum and its frame mean.
STATE = ("state", "state_near", "state_frame")


def feature_names() -> list[str]:
    """The model's inputs: evidence, state, and every evidence channel gated by the state."""
    evidence = list(EVIDENCE) + list(FRAME_EVIDENCE)
    return evidence + list(STATE) + [f"state*{name}" for name in evidence]


@dataclass(frozen=True)
class FrameEvidence:
    """What one frame shows, before the model's state joins it (cacheable: training reruns the recurrence)."""

    blocks: np.ndarray  # (rows, cols, len(EVIDENCE)) float32
    frame: np.ndarray  # (len(FRAME_EVIDENCE),) float32
    flow: np.ndarray  # (rows, cols, 2) mean displacement of each macroblock to where it was in the previous frame


def _padded(luma: np.ndarray) -> np.ndarray:
    height, width = luma.shape
    return cv2.copyMakeBorder(luma, 0, -height % MB, 0, -width % MB, cv2.BORDER_REPLICATE)


def _block_mean(values: np.ndarray) -> np.ndarray:
    height, width = values.shape[:2]
    return values.reshape(height // MB, MB, width // MB, MB, *values.shape[2:]).mean(axis=(1, 3))


def _seams(luma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per macroblock, the largest and the mean of its four edge seams: the log ratio of the step across
    the grid line to the steps beside it (concealed blocks meet their neighbours with a seam)."""
    picture = luma.astype(np.float32)
    rows, cols = picture.shape[0] // MB, picture.shape[1] // MB
    step_down = np.abs(np.diff(picture, axis=0))
    step_right = np.abs(np.diff(picture, axis=1))
    lines = np.arange(1, rows) * MB
    across = step_down[lines - 1].reshape(rows - 1, cols, MB).mean(-1)
    beside = ((step_down[lines - 2] + step_down[lines]) / 2).reshape(rows - 1, cols, MB).mean(-1)
    horizontal = np.log((across + 1) / (beside + 1))
    lines = np.arange(1, cols) * MB
    across = step_right[:, lines - 1].reshape(rows, MB, cols - 1).mean(1)
    beside = ((step_right[:, lines - 2] + step_right[:, lines]) / 2).reshape(rows, MB, cols - 1).mean(1)
    vertical = np.log((across + 1) / (beside + 1))
    edges = np.zeros((4, rows, cols), np.float32)
    edges[0, 1:], edges[1, :-1], edges[2, :, 1:], edges[3, :, :-1] = horizontal, horizontal, vertical, vertical
    return edges.max(axis=0), edges.mean(axis=0)


class EvidenceExtractor:
    """Per-frame evidence, streaming: keeps only the previous picture."""

    def __init__(self) -> None:
        self._flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
        self._previous: np.ndarray | None = None
        self._previous_difference = 0.0
        self._gap = False

    def skip_missing(self) -> None:
        self._gap = True

    def process(self, luma: np.ndarray) -> FrameEvidence:
        picture = _padded(luma)
        current = picture.astype(np.float32)
        rows, cols = picture.shape[0] // MB, picture.shape[1] // MB
        gradient_x = cv2.Sobel(current, cv2.CV_32F, 1, 0)
        gradient_y = cv2.Sobel(current, cv2.CV_32F, 0, 1)
        texture = np.log1p(_block_mean(gradient_x ** 2 + gradient_y ** 2))
        if self._previous is None:
            flow = np.zeros((*picture.shape, 2), np.float32)
            residual = difference = np.zeros((rows, cols), np.float32)
        else:
            flow = self._flow.calc(picture, self._previous, None)
            height, width = picture.shape
            grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
            warped = cv2.remap(self._previous, grid_x + flow[..., 0], grid_y + flow[..., 1], cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE)
            residual = np.log1p(_block_mean((current - warped) ** 2))
            difference = np.log1p(_block_mean((current - self._previous) ** 2))
        seam_max, seam_mean = _seams(picture)
        frozen = cv2.medianBlur(difference, 3) - difference if min(rows, cols) > 1 else np.zeros_like(difference)
        residual_excess = residual - np.median(residual)
        blocks = np.stack([texture, residual, difference, seam_max, seam_mean, frozen, residual_excess], axis=-1)
        frame_difference = float(difference.mean())
        frame = np.array([residual.mean(), frame_difference, frame_difference - self._previous_difference,
                          float(self._gap)], np.float32)
        self._previous, self._previous_difference, self._gap = picture, frame_difference, False
        return FrameEvidence(blocks.astype(np.float32), frame, _block_mean(flow).astype(np.float32))


def carry_state(state: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """The previous frame's damage probabilities moved to where each macroblock's content now is."""
    rows, cols = state.shape
    grid_x, grid_y = np.meshgrid(np.arange(cols, dtype=np.float32), np.arange(rows, dtype=np.float32))
    return cv2.remap(state.astype(np.float32), grid_x + flow[..., 0] / MB, grid_y + flow[..., 1] / MB,
                     cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def model_inputs(evidence: FrameEvidence, carried: np.ndarray) -> np.ndarray:
    """(rows, cols, len(feature_names())) features of one frame, given the carried state."""
    rows, cols = carried.shape
    frame = np.broadcast_to(evidence.frame, (rows, cols, len(FRAME_EVIDENCE)))
    near = cv2.dilate(carried, np.ones((3, 3), np.uint8))
    state = np.stack([carried, near, np.full_like(carried, carried.mean())], axis=-1)
    observed = np.concatenate([evidence.blocks, frame], axis=-1)
    return np.concatenate([observed, state, observed * carried[..., None]], axis=-1)


@dataclass(frozen=True)
class PixelModel:
    """Logistic regression over standardised features; `threshold` on its probability marks damage."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    threshold: float

    def probability(self, features: np.ndarray) -> np.ndarray:
        logits = ((features - self.mean) / self.scale) @ self.weights + self.bias
        return (1 / (1 + np.exp(-np.clip(logits, -30, 30)))).astype(np.float32)

    def to_json(self, extra: dict) -> str:
        return json.dumps({"features": feature_names(), "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                           "weights": self.weights.tolist(), "bias": self.bias, "threshold": self.threshold,
                           **extra}, indent=1)

    @classmethod
    def load(cls, path: Path | None = None) -> PixelModel:
        """The shipped model, or the one at `path`."""
        try:
            text = Path(path).read_text() if path else \
                resources.files("concealer").joinpath("weights", WEIGHTS).read_text()
            doc = json.loads(text)
            if doc["features"] != feature_names():
                raise ValueError("its features are not this detector's")
            return cls(np.array(doc["mean"], np.float32), np.array(doc["scale"], np.float32),
                       np.array(doc["weights"], np.float32), float(doc["bias"]), float(doc["threshold"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"pixel detector weights {path or WEIGHTS}: unreadable ({exc})") from exc


class PixelDetector:
    """Blind detection from decoded pictures alone (see the module docstring); LOST is never told apart from
    PROPAGATED here, so every damaged macroblock is labelled PROPAGATED."""

    def __init__(self, mb_shape: tuple[int, int], model: PixelModel | None = None):
        self._model = model or PixelModel.load()
        self._evidence = EvidenceExtractor()
        self._state = np.zeros(mb_shape, np.float32)

    def process_frame(self, frame: DecodedFrame, motion: MotionField) -> DamageMap:
        """The damage the pixels show (a baked copy has no motion vectors of its own: `motion` is unused)."""
        if frame.missing:
            self._evidence.skip_missing()
            return DamageMap(frame.pts, np.full(self._state.shape, DamageLabel.MISSING_FRAME, np.uint8))
        evidence = self._evidence.process(frame.luma())
        self._state = self._model.probability(model_inputs(evidence, carry_state(self._state, evidence.flow)))
        labels = np.where(self._state > self._model.threshold, DamageLabel.PROPAGATED, DamageLabel.CLEAN)
        return DamageMap(frame.pts, labels.astype(np.uint8))


def bake_damage(damaged: Path, output: Path, *, crf: float = 18.0, lossless: bool = False,
                overwrite: bool = False) -> None:
    """Decode `damaged` with FFmpeg's concealment and re-encode it with x264, every frame keeping its pts,
    frames that never arrived left out: damaged video as it reaches a viewer, with no bitstream evidence left
    (test and tuning input for `PixelDetector`)."""
    with open_video_input(damaged) as probe:
        stream = probe.streams.video[0]
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

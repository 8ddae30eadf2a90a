"""Fit the `pixels` detector's logistic model on damage simulate-loss makes on the training clips.

    .venv/bin/python -m train.pixel_detector [--frames 150] [--rounds 3] [--out concealer/weights/pixel-detector.json]

Each training clip (bbb_720p_h264, the first frames of bbb_720p_vp8_30s, fire2_720p_rotated; never the
evaluation clips) is damaged at 3%, 10% and 20% loss (Gilbert, mean burst 2) or not at all, decoded with FFmpeg's
concealment and re-encoded at x264 crf 18 (`bake_damage`). The target of each macroblock is the
reference map: its luma in the damaged decode differs from the clean decode by MSE > 4. The model
reads its own previous answer, so it is fitted DAgger-style: the first round carries the true previous
map, every later round the model's own answers from the round before, all rounds' samples pooled. The
threshold is the one that maximises F1 over the last round's damaged clips while marking at most 2% of
the clean ones' macroblocks.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import clip_path, excerpt
from concealer import LossOptions, simulate_loss
from concealer.decode import decode_frames
from concealer.pixel_detection import (
    EvidenceExtractor,
    FrameEvidence,
    PixelModel,
    bake_damage,
    carry_state,
    feature_names,
    model_inputs,
    reference_damage_maps,
)

TRAINING_CLIPS = ("bbb_720p_h264.mp4", "bbb_720p_vp8_30s.webm", "fire2_720p_rotated.mp4")
RATES = (0.0, 0.03, 0.1, 0.2)  # 0: the clean clip, baked alike, so that a clean picture is not taken for damage
SAMPLE_SHARE = 0.25  # of each round's macroblocks kept for the fit
L2 = 1e-3
# Most of the clean clips' macroblocks that the threshold may mark: a clean video must yield a (nearly) empty map.
CLEAN_LIMIT = 0.02


def sequence(clip: str, rate: float, frames: int, work: Path) -> list[tuple[FrameEvidence, np.ndarray]]:
    """(evidence, reference map) of every decoded frame of the baked clip, in order; a frame slot that
    never arrived appears as the extractor's gap marker on the next frame."""
    source = excerpt(clip, frames) if frames else clip_path(clip)
    damaged = work / f"{Path(clip).stem}-{rate:g}.mp4"
    result = simulate_loss(source, damaged, loss=LossOptions(model="gilbert", loss_rate=rate, burst=2.0, seed=1))
    baked = work / f"{Path(clip).stem}-{rate:g}-baked.mp4"
    bake_damage(result.damaged, baked)
    truth = reference_damage_maps(result.damaged, result.reference)
    extractor = EvidenceExtractor()
    frames_out = []
    for frame in decode_frames(baked):
        if frame.missing:
            extractor.skip_missing()
        else:
            frames_out.append((extractor.process(frame.luma()), truth[frame.pts]))
    print(f"{clip} {rate:.0%}: {len(frames_out)} frames, damaged share {np.mean([t.mean() for _, t in frames_out]):.3f}",
          flush=True)
    return frames_out


def run_sequence(frames: list[tuple[FrameEvidence, np.ndarray]], model: PixelModel | None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, targets and the model's probabilities over one sequence; without a model the carried
    state is the true previous map (teacher forcing)."""
    state = np.zeros(frames[0][1].shape, np.float32)
    features, targets, answers = [], [], []
    for evidence, truth in frames:
        inputs = model_inputs(evidence, carry_state(state, evidence.flow))
        answer = model.probability(inputs) if model else truth.astype(np.float32)
        state = answer
        features.append(inputs.reshape(-1, inputs.shape[-1]))
        targets.append(truth.ravel())
        answers.append(answer.ravel())
    return np.concatenate(features), np.concatenate(targets), np.concatenate(answers)


def fit_logistic(features: np.ndarray, targets: np.ndarray, iterations: int = 25) -> PixelModel:
    """L2-regularised logistic regression by Newton's method on standardised features."""
    mean, scale = features.mean(axis=0), features.std(axis=0) + 1e-6
    x = np.concatenate([(features - mean) / scale, np.ones((len(features), 1), np.float32)], axis=1).astype(np.float64)
    y = targets.astype(np.float64)
    w = np.zeros(x.shape[1])
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-np.clip(x @ w, -30, 30)))
        gradient = x.T @ (p - y) / len(y) + L2 * np.r_[w[:-1], 0]
        hessian = (x * (p * (1 - p))[:, None]).T @ x / len(y) + L2 * np.eye(len(w))
        w -= np.linalg.solve(hessian, gradient)
    return PixelModel(mean.astype(np.float32), scale.astype(np.float32), w[:-1].astype(np.float32), float(w[-1]), 0.5)


def best_threshold(runs: list[tuple[np.ndarray, np.ndarray, np.ndarray]], clean: list[bool]
                   ) -> tuple[float, float, float]:
    """(threshold, recall, precision) at the highest F1 over the damaged runs among the thresholds that mark at
    most CLEAN_LIMIT of the clean runs' macroblocks."""
    probabilities = np.concatenate([r[2] for r, c in zip(runs, clean) if not c])
    targets = np.concatenate([r[1] for r, c in zip(runs, clean) if not c])
    false_alarms = np.concatenate([r[2] for r, c in zip(runs, clean) if c])
    best = (0.99, 0.0, 0.0, -1.0)
    for threshold in np.linspace(0.01, 0.99, 99):
        if np.mean(false_alarms > threshold) > CLEAN_LIMIT:
            continue
        found = probabilities > threshold
        hits = np.count_nonzero(found & targets)
        recall, precision = hits / max(1, targets.sum()), hits / max(1, found.sum())
        f1 = 2 * recall * precision / max(1e-9, recall + precision)
        if f1 > best[3]:
            best = (float(threshold), recall, precision, f1)
    return best[:3]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=150, help="frames of each clip (fewer if it is shorter)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("concealer/weights/pixel-detector.json"))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="pixel-detector-") as work:
        sequences = [sequence(clip, rate, args.frames, Path(work)) for clip in TRAINING_CLIPS for rate in RATES]
    clean = [rate == 0 for _ in TRAINING_CLIPS for rate in RATES]
    pooled_x, pooled_y, model = [], [], None
    for round_ in range(args.rounds):
        runs = [run_sequence(frames, model) for frames in sequences]
        if model is not None:
            threshold, recall, precision = best_threshold(runs, clean)
            print(f"round {round_}: the model's own run: recall {recall:.3f} precision {precision:.3f} "
                  f"at threshold {threshold:.2f}", flush=True)
        for x, y, _ in runs:
            keep = rng.random(len(y)) < SAMPLE_SHARE
            pooled_x.append(x[keep])
            pooled_y.append(y[keep])
        model = fit_logistic(np.concatenate(pooled_x), np.concatenate(pooled_y))
    runs = [run_sequence(frames, model) for frames in sequences]
    threshold, recall, precision = best_threshold(runs, clean)
    print(f"final: recall {recall:.3f} precision {precision:.3f} at threshold {threshold:.2f}", flush=True)
    model = PixelModel(model.mean, model.scale, model.weights, model.bias, threshold)
    args.out.write_text(model.to_json({
        "trained_on": [f"{clip} at {rate:.0%}" for clip in TRAINING_CLIPS for rate in RATES],
        "frames": args.frames, "rounds": args.rounds,
        "training_recall": round(recall, 4), "training_precision": round(precision, 4)}) + "\n")
    print("weights:", dict(zip(feature_names(), np.round(model.weights, 2).tolist())))


if __name__ == "__main__":
    main()

"""Train the `pixels` detector's network on damage simulate-loss makes on the training clips.

    python -m train.pixel_detector train/configs/pixel_detector.json [--out train/runs] [--minutes M] [--threads N]

Each source in the config (a stretch of a training clip, scaled to one of the sizes damaged video
comes in: bbb_720p_vp8_30s, bbb_720p_h264 and fire2_720p_rotated; never the evaluation clips) is
damaged at each loss rate (Gilbert, mean burst 2, seed 1; rate 0 is the clean clip, so that clean
pictures are not taken for damage), decoded with FFmpeg's concealment and re-encoded at x264 crf 18
(`bake_damage`). The target of each macroblock is the reference map: its luma in the damaged decode
differs from the clean decode by MSE > 4. Examples are 256x256 crops, a share of them (`onset_share`)
around macroblocks where damage starts, which are few beside the damage that persists. The network
reads its own previous answer; the shipped config trains it on the true previous map carried onto
each picture (one round). With `rounds` > 1 the later rounds also draw on the answers of the network
of the round before, run over whole sequences (DAgger): that measured worse, the validation recall /
precision going from 0.534 / 0.739 after the first round to 0.017 / 0.583 after the second (30-minute
run, three rounds). The threshold is the one with the highest F1 over the validation source's damaged
runs that marks at most `clean_limit` of its clean run's macroblocks. The sequences are built once
into the run folder.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import excerpt
from concealer import LossOptions, simulate_loss
from concealer.decode import decode_frames
from concealer.models import WEIGHTS_DIR, save_weights
from concealer.models.damage_net import PixelDamageNet
from concealer.pixel_detection import (
    FrameInputs,
    InputExtractor,
    bake_damage,
    carry_state,
    damage_probability,
    reference_damage_maps,
)

from .common import TrainingRun

ARRAYS = ("current", "warped", "flow", "frame", "target")


def build_sequence(source: Path, rate: float, work: Path) -> dict[str, np.ndarray]:
    """The network's inputs and targets over every decoded frame of `source` damaged at `rate` and baked."""
    damaged = work / f"{source.stem}-{rate:g}.mp4"
    result = simulate_loss(source, damaged, loss=LossOptions(model="gilbert", loss_rate=rate, burst=2.0, seed=1))
    baked = work / f"{source.stem}-{rate:g}-baked.mp4"
    bake_damage(result.damaged, baked, overwrite=True)
    targets = reference_damage_maps(result.damaged, result.reference)
    extractor, arrays = InputExtractor(), {name: [] for name in ARRAYS}
    for frame in decode_frames(baked):
        if frame.missing:
            extractor.skip_missing()
            continue
        inputs = extractor.process(frame.luma())
        for name in ARRAYS[:-1]:
            arrays[name].append(getattr(inputs, name))
        arrays["target"].append(targets[frame.pts])
    return {name: np.stack(values) for name, values in arrays.items()}


def sequence_inputs(sequence: dict[str, np.ndarray], index: int) -> FrameInputs:
    """Frame `index`'s inputs as `InputExtractor` made them (the previous picture is the one stored before it)."""
    return FrameInputs(sequence["current"][index], sequence["warped"][index],
                       sequence["current"][max(0, index - 1)], sequence["flow"][index], sequence["frame"][index])


def load_sequences(run: TrainingRun) -> tuple[list[dict], list[bool], list[bool]]:
    """Every (source, rate) sequence, built into the run folder the first time; and which are validation, which
    clean."""
    data, folder = run.config["data"], run.dir / "sequences"
    folder.mkdir(exist_ok=True)
    sequences, validation, clean = [], [], []
    sources = [(s, False) for s in data["sources"]] + [(data["validation"], True)]
    for (clip, start, frames, width, height), held_out in sources:
        for rate in data["rates"]:
            cached = folder / f"{Path(clip).stem}-{start}-{width}x{height}-{rate:g}.npz"
            if not cached.exists():
                began = time.perf_counter()
                work = folder / "work"  # the damaged and baked files, kept for a look
                work.mkdir(exist_ok=True)
                source = excerpt(clip, frames, start=start, size=(width, height))
                np.savez(cached, **build_sequence(source, rate, work))
                print(f"built {cached.name} in {time.perf_counter() - began:.0f} s", flush=True)
            with np.load(cached) as stored:
                sequences.append({name: stored[name] for name in ARRAYS})
            validation.append(held_out)
            clean.append(rate == 0)
    return sequences, validation, clean


def own_answers(network: torch.nn.Module, sequence: dict[str, np.ndarray]) -> np.ndarray:
    """(N, R, C) the network's answers over the whole sequence, each frame reading its own previous answer."""
    network.eval()
    answers, state = [], np.zeros(sequence["target"].shape[1:], np.float32)
    for index in range(len(sequence["target"])):
        inputs = sequence_inputs(sequence, index)
        state = damage_probability(network, inputs, carry_state(state, inputs.flow))
        answers.append(state)
    network.train()
    return np.stack(answers)


def best_threshold(answers: list[np.ndarray], targets: list[np.ndarray], clean: list[bool], limit: float
                   ) -> tuple[float, float, float]:
    """(threshold, recall, precision) at the highest F1 over the damaged runs among the thresholds that mark at
    most `limit` of the clean runs' macroblocks."""
    probabilities = np.concatenate([a.ravel() for a, c in zip(answers, clean) if not c])
    truth = np.concatenate([t.ravel() for t, c in zip(targets, clean) if not c])
    false_alarms = np.concatenate([a.ravel() for a, c in zip(answers, clean) if c])
    best = (0.99, 0.0, 0.0, -1.0)
    for threshold in np.linspace(0.02, 0.98, 49):
        if np.mean(false_alarms > threshold) > limit:
            continue
        found = probabilities > threshold
        hits = np.count_nonzero(found & truth)
        recall, precision = hits / max(1, truth.sum()), hits / max(1, found.sum())
        f1 = 2 * recall * precision / max(1e-9, recall + precision)
        if f1 > best[3]:
            best = (float(threshold), recall, precision, f1)
    return best[:3]


def onsets(sequence: dict[str, np.ndarray]) -> np.ndarray:
    """(K, 3) frame, row and column of every macroblock where damage starts: damaged, and not carried in from the
    previous frame's damage. They are few beside the damage that persists, so examples are drawn around them."""
    target, found = sequence["target"], []
    for index in range(1, len(target)):
        carried = carry_state(target[index - 1].astype(np.float32), sequence["flow"][index]) > 0.5
        rows, cols = np.nonzero(target[index] & ~carried)
        found.append(np.stack([np.full_like(rows, index), rows, cols], axis=1))
    return np.concatenate(found) if found else np.zeros((0, 3), np.int64)


def batch(sequence: dict[str, np.ndarray], starts: np.ndarray, states: np.ndarray, config: dict,
          rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
    """Random crops (on the macroblock grid) of random frames of one sequence, each with the previous answer in
    `states` carried onto it; a share of them around a macroblock of `starts`."""
    rows, cols = sequence["target"].shape[1:]
    crop_rows, crop_cols = min(rows, config["crop"] // 16), min(cols, config["crop"] // 16)
    pixels, frames, carried, targets = [], [], [], []
    for _ in range(config["batch"]):
        if len(starts) and rng.random() < config["onset_share"]:
            index, row, col = (int(v) for v in starts[rng.integers(len(starts))])
            top = int(np.clip(row - rng.integers(crop_rows), 0, rows - crop_rows))
            left = int(np.clip(col - rng.integers(crop_cols), 0, cols - crop_cols))
        else:
            index = int(rng.integers(len(states)))
            top, left = int(rng.integers(rows - crop_rows + 1)), int(rng.integers(cols - crop_cols + 1))
        inputs = sequence_inputs(sequence, index)
        previous = states[index - 1] if index else np.zeros((rows, cols), np.float32)
        mbs = np.s_[top:top + crop_rows, left:left + crop_cols]
        px = np.s_[top * 16:(top + crop_rows) * 16, left * 16:(left + crop_cols) * 16]
        pixels.append(FrameInputs(inputs.current[px], inputs.warped[px], inputs.previous[px], inputs.flow,
                                  inputs.frame).pixels())
        frames.append(inputs.frame)
        carried.append(carry_state(previous, inputs.flow)[mbs])
        targets.append(sequence["target"][index][mbs])
    return (torch.from_numpy(np.stack(pixels)), torch.from_numpy(np.stack(frames)),
            torch.from_numpy(np.stack(carried))[:, None], torch.from_numpy(np.stack(targets).astype(np.float32)))


def main() -> None:
    run = TrainingRun(__doc__, ["loss", "recall", "precision", "threshold"])
    config = run.config
    torch.manual_seed(config["seed"])
    rng = np.random.default_rng(config["seed"])
    sequences, validation, clean = load_sequences(run)
    training = [i for i, held_out in enumerate(validation) if not held_out]
    valid = [i for i, held_out in enumerate(validation) if held_out]
    weights = np.array([sequences[i]["target"].size for i in training], np.float64)
    starts = [onsets(s) for s in sequences]
    network = PixelDamageNet(**config["model"])
    optimizer = torch.optim.Adam(network.parameters(), lr=config["optimizer"]["lr"])
    # State sets the examples draw their previous answers from: the truth first, then each round's own answers.
    state_sets = [[s["target"].astype(np.float32) for s in sequences]]
    saved = run.resume()
    if saved:
        network.load_state_dict(saved["network"])
        optimizer.load_state_dict(saved["optimizer"])
        state_sets = saved["state_sets"]
    rounds, metrics = config["rounds"], {}
    run.start_clock()
    while run.running():
        round_ = min(rounds - 1, int(run.progress * rounds))
        if len(state_sets) <= round_:  # a new round: run the network over every sequence to get its own answers
            state_sets.append([own_answers(network, s) for s in sequences])
            threshold, recall, precision = best_threshold([state_sets[-1][i] for i in valid],
                                                          [sequences[i]["target"] for i in valid],
                                                          [clean[i] for i in valid], config["clean_limit"])
            metrics = {"threshold": threshold, "recall": recall, "precision": precision}
            print(f"round {round_}: validation recall {recall:.3f} precision {precision:.3f} "
                  f"at threshold {threshold:.2f}", flush=True)
        for group in optimizer.param_groups:  # the last round decays the rate tenfold
            last = max(0.0, run.progress * rounds - (rounds - 1))
            group["lr"] = config["optimizer"]["lr"] * 0.1 ** last
        chosen = training[int(rng.choice(len(training), p=weights / weights.sum()))]
        states = state_sets[int(rng.integers(len(state_sets)))][chosen]
        pixels, frame, carried, target = batch(sequences[chosen], starts[chosen], states, config, rng)
        probability = network(pixels, frame, carried).clamp(1e-6, 1 - 1e-6)
        loss = torch.nn.functional.binary_cross_entropy(probability, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        run.step += 1
        if run.step % 100 == 0:
            run.log({"loss": loss.item(), **{k: metrics.get(k, float("nan")) for k in
                                             ("recall", "precision", "threshold")}})
        run.maybe_save({"network": network.state_dict(), "optimizer": optimizer.state_dict(),
                        "state_sets": state_sets})
    run.save({"network": network.state_dict(), "optimizer": optimizer.state_dict(), "state_sets": state_sets})
    answers = [own_answers(network, sequences[i]) for i in valid]
    threshold, recall, precision = best_threshold(answers, [sequences[i]["target"] for i in valid],
                                                  [clean[i] for i in valid], config["clean_limit"])
    print(f"final: validation recall {recall:.3f} precision {precision:.3f} at threshold {threshold:.2f}",
          flush=True)
    metrics = {"threshold": threshold, "validation_recall": round(recall, 4),
               "validation_precision": round(precision, 4), "minutes": round(run.elapsed / 60, 1)}
    save_weights(network, run.dir / "pixel-detector.safetensors", {"config": config, "metrics": metrics}, half=False)
    print(f"weights: {run.dir / 'pixel-detector.safetensors'} (copy to {WEIGHTS_DIR} to ship)", flush=True)


if __name__ == "__main__":
    main()

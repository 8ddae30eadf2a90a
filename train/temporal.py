"""Train `temporal`, the spatio-temporal inpainting network.

    python -m train.temporal train/configs/temporal.json [--out train/runs] [--minutes M] [--threads N]

Data: triplets of consecutive frames (previous, current, next) from the training clips of
../shared/data (never foreman or carphone). Each current frame gets a hole shaped like real
losses on its macroblock grid (runs of macroblocks in raster order as lost slices leave them,
whole macroblock rows, scattered blocks, the whole frame); its neighbours are aligned onto it
with `concealer.motion.align`, the same function the pipeline uses, and 96x96 windows around
the hole become the examples, each with the Telea fill of its hole (`spatial_fill`, the guess
where no neighbour is trusted). The last 15% of every clip is held out for validation.
While training, neighbours are dropped at random (single-image mode, a quarter of the windows)
and the next frame is marked invalid around the hole, as it is in a real stream where the damage
propagates into it. The loss is the squared error over the hole: with Charbonnier's smooth L1
instead, the held-out single-image windows stayed at the Telea fill's 14.84 dB after 950 steps.
"""
from __future__ import annotations

import av
import cv2
import numpy as np
import torch

from concealer.models import WEIGHTS_DIR, save_weights
from concealer.models.temporal import CORE, MARGIN, WINDOW, TemporalInpainter, spatial_fill
from concealer.motion import align

from .common import DATA, TrainingRun

MB = 16
# Examples shown without neighbours (single-image mode, which starts from `spatial_fill`).
STILL_SHARE = 0.25
ARRAYS = ("current", "hole", "spatial", "previous", "previous_valid", "following", "following_valid")


def loss_shape(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """A macroblock mask (rows x cols) of what one frame lost, shaped like real losses."""
    mask = np.zeros(rows * cols, bool)
    kind = rng.choice(["slices", "rows", "scattered", "frame"], p=[0.55, 0.15, 0.2, 0.1])
    if kind == "slices":  # runs of macroblocks in raster order: lost slices and bursts of them
        for _ in range(rng.integers(1, 4)):
            length = max(3, int(cols * rng.uniform(0.2, 1.0) * rng.choice([1, 1, 2, 4])))
            start = rng.integers(rows * cols)
            mask[start:start + length] = True
    elif kind == "rows":
        first, count = rng.integers(rows), rng.integers(1, 5)
        mask.reshape(rows, cols)[first:first + count] = True
    elif kind == "scattered":
        mask[:] = rng.random(rows * cols) < rng.uniform(0.05, 0.3)
    else:
        mask[:] = True
    return mask.reshape(rows, cols)


def clip_triplets(path, picks: set[int]):
    """(previous, current, next) RGB frames of `path` for each current-frame index in `picks`."""
    window: list[np.ndarray] = []
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            window = (window + [frame.to_ndarray(format="rgb24")])[-3:]
            if len(window) == 3 and index - 1 in picks:
                yield window


def windows_around(hole: np.ndarray, count: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Top-left corners (on the macroblock grid) of windows whose core holds missing pixels."""
    height, width = hole.shape
    lost = np.argwhere(hole[::MB, ::MB])
    corners = []
    for _ in range(count * 4):
        if len(corners) == count:
            break
        row, col = lost[rng.integers(len(lost))] * MB
        top = int(np.clip((row - MARGIN - rng.integers(0, CORE // MB) * MB) // MB * MB, 0, height - WINDOW))
        left = int(np.clip((col - MARGIN - rng.integers(0, CORE // MB) * MB) // MB * MB, 0, width - WINDOW))
        core = hole[top + MARGIN:top + MARGIN + CORE, left + MARGIN:left + MARGIN + CORE]
        if core.any():
            corners.append((top, left))
    return corners


def make_examples(clips: list[str], count: int, per_frame: int, part: tuple[float, float],
                  rng: np.random.Generator) -> dict[str, np.ndarray]:
    """`count` training windows from the [part) fraction of every clip's frames."""
    examples = {name: [] for name in ARRAYS}
    lengths = {}
    for clip in clips:
        with av.open(str(DATA / "clips" / clip)) as probe:
            lengths[clip] = probe.streams.video[0].frames or sum(1 for _ in probe.decode(video=0))
    ordered = sorted(clips, key=lengths.get)  # short clips first; the long ones make up their shortfall
    for position, clip in enumerate(ordered):
        path = DATA / "clips" / clip
        wanted = -(-(count - len(examples["hole"])) // (len(ordered) - position))
        first, last = max(1, int(lengths[clip] * part[0])), min(lengths[clip] - 2, int(lengths[clip] * part[1]) - 1)
        picks = set(rng.choice(np.arange(first, last + 1), size=min(last - first + 1, -(-wanted // per_frame)),
                               replace=False).tolist())
        made = 0
        for previous, current, following in clip_triplets(path, picks):
            height, width = current.shape[:2]
            blocks = loss_shape(-(-height // MB), -(-width // MB), rng)
            hole = np.kron(blocks, np.ones((MB, MB), bool))[:height, :width]
            previous_warped, following_warped = align(previous, current, hole), align(following, current, hole)
            previous_valid = following_valid = np.ones(hole.shape, bool)  # the augmentation takes them away
            for top, left in windows_around(hole, min(per_frame, wanted - made), rng):
                cut = (slice(top, top + WINDOW), slice(left, left + WINDOW))
                for name, array in zip(ARRAYS, (current[cut], hole[cut], spatial_fill(current[cut], hole[cut]),
                                                previous_warped[cut], previous_valid[cut], following_warped[cut],
                                                following_valid[cut])):
                    examples[name].append(array)
                made += 1
        print(f"  {clip}: {made} windows from {len(picks)} frames", flush=True)
    return {name: np.stack(values) for name, values in examples.items()}


def to_batch(examples: dict[str, np.ndarray], index: np.ndarray) -> dict[str, torch.Tensor]:
    batch = {}
    for name in ARRAYS:
        array = torch.from_numpy(examples[name][index])
        batch[name] = array.permute(0, 3, 1, 2).float() / 255 if array.ndim == 4 else array[:, None].float()
    return batch


def augment(batch: dict[str, torch.Tensor], rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Random flips, dropped neighbours, and a next frame made invalid where the damage propagates."""
    count = batch["hole"].shape[0]
    if rng.random() < 0.5:
        batch = {name: value.flip(3) for name, value in batch.items()}
    # Stills only where there is something left to inpaint from: a window with no known pixels and
    # no neighbours teaches nothing and its huge loss would drown the rest.
    mostly_lost = (batch["hole"].mean(dim=(1, 2, 3)) > 0.6).numpy()
    still = torch.from_numpy((rng.random(count) < STILL_SHARE) & ~mostly_lost).float()[:, None, None, None]
    no_previous = torch.from_numpy(rng.random(count) < 0.1).float()[:, None, None, None]
    no_following = torch.from_numpy(rng.random(count) < 0.35).float()[:, None, None, None]
    batch["previous_valid"] = batch["previous_valid"] * (1 - still) * (1 - no_previous)
    batch["following_valid"] = batch["following_valid"] * (1 - still) * (1 - no_following)
    propagated = batch["hole"].clone()
    for i in np.flatnonzero(rng.random(count) < 0.7):  # the next frame predicted from the concealed hole
        grow = int(rng.integers(0, 3)) * MB + 1
        propagated[i, 0] = torch.from_numpy(cv2.dilate(batch["hole"][i, 0].numpy(), np.ones((grow, grow), np.uint8)))
    batch["following_valid"] = batch["following_valid"] * (1 - propagated)
    return batch


def hole_psnr(model: TemporalInpainter, batch: dict[str, torch.Tensor]) -> float:
    with torch.no_grad():
        repaired = model(*(batch[name] for name in ARRAYS), correct_trusted=True)
    hole = batch["hole"].expand_as(repaired) > 0
    mse = torch.mean(((repaired - batch["current"]) * 255)[hole] ** 2).item()
    return 10 * np.log10(255 ** 2 / mse)


def validation_batches(examples: dict[str, np.ndarray]) -> dict[str, dict[str, torch.Tensor]]:
    """The held-out windows as the pipeline sees them (next frame invalid over the hole) and as stills."""
    batch = to_batch(examples, np.arange(len(examples["hole"])))
    video = {**batch, "following_valid": batch["following_valid"] * (1 - batch["hole"])}
    still = {**batch, "previous_valid": torch.zeros_like(batch["hole"]), "following_valid": torch.zeros_like(batch["hole"])}
    return {"video": video, "still": still}


def main() -> None:
    run = TrainingRun(__doc__, ["loss", "lr", "validation_video_psnr", "validation_still_psnr"])
    config = run.config
    torch.manual_seed(config["seed"])
    rng = np.random.default_rng(config["seed"])
    data = config["data"]
    cache = run.dir / "examples.npz"
    if cache.exists():
        stored = np.load(cache)
        train = {name: stored[f"train_{name}"] for name in ARRAYS}
        held_out = {name: stored[f"validation_{name}"] for name in ARRAYS}
    else:
        print("cutting training windows", flush=True)
        train = make_examples(data["clips"], data["examples"], data["windows_per_frame"], (0.0, 0.85), rng)
        print("cutting validation windows", flush=True)
        held_out = make_examples(data["clips"], data["validation_examples"], data["windows_per_frame"], (0.85, 1.0), rng)
        np.savez(cache, **{f"train_{k}": v for k, v in train.items()}, **{f"validation_{k}": v for k, v in held_out.items()})
    validation = validation_batches(held_out)
    warped = {**validation["video"]}
    baseline = 10 * np.log10(1 / torch.mean(((warped["previous"] - warped["current"]) ** 2)[
        warped["hole"].expand_as(warped["current"]) > 0]).item())
    print(f"{len(train['hole'])} training and {len(held_out['hole'])} validation windows; "
          f"the warped previous frame alone scores {baseline:.2f} dB on the validation holes", flush=True)

    model = TemporalInpainter(**config["model"])
    optimizer = torch.optim.Adam(model.parameters(), lr=config["optimizer"]["lr"])
    state = run.resume()
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        rng = np.random.default_rng([config["seed"], run.step])
    run.start_clock()
    count = len(train["hole"])
    while run.running():
        lr = config["optimizer"]["lr"] * 0.5 * (1 + np.cos(np.pi * run.progress))
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = augment(to_batch(train, rng.integers(count, size=config["batch"])), rng)
        repaired = model(*(batch[name] for name in ARRAYS), correct_trusted=True)
        hole = batch["hole"].expand_as(repaired)
        # Squared error over the missing pixels only (known pixels are never changed), the PSNR's own measure.
        loss = (((repaired - batch["current"]) ** 2) * hole).sum() / hole.sum().clamp(min=1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        run.step += 1
        if run.step % 50 == 0:
            model.eval()
            run.log({"loss": loss.item(), "lr": lr, "validation_video_psnr": hole_psnr(model, validation["video"]),
                     "validation_still_psnr": hole_psnr(model, validation["still"])})
            model.train()
        run.maybe_save({"model": model.state_dict(), "optimizer": optimizer.state_dict()})
    model.eval()
    metrics = {"validation_video_hole_psnr_db": round(float(hole_psnr(model, validation["video"])), 3),
               "validation_still_hole_psnr_db": round(float(hole_psnr(model, validation["still"])), 3),
               "validation_warped_previous_hole_psnr_db": round(float(baseline), 3),
               "validation_windows": len(held_out["hole"])}
    WEIGHTS_DIR.mkdir(exist_ok=True)
    save_weights(model, WEIGHTS_DIR / f"{config['name']}.safetensors",
                 {"name": config["name"], "config": config, "steps": run.step,
                  "training_minutes": round(run.elapsed / 60, 1), "metrics": metrics}, half=False)
    print(f"done: {run.step} steps in {run.elapsed / 60:.1f} min, {metrics}", flush=True)


if __name__ == "__main__":
    main()

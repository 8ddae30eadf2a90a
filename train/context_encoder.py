"""Train the paper's context encoder (0.95 L2 + 0.05 adversarial, or the L2-only ablation).

    python -m train.context_encoder train/configs/context_encoder.json [--out train/runs] [--minutes M] [--threads N]

Data: random 128x128 crops of ../shared/data/images/train_bsds400 (never the evaluation
sets), rescaled so the short side is in `min_side` and flipped at random; the last
`validation_images` images are held out to report hole PSNR while training. With a
`warm_up` in the config the first minutes train the L2 reconstruction alone (at its own
learning rate), then the config's loss takes over with a cosine-decayed learning rate; the
state at the switch is kept as warmed_up.pt, so that the ablation can start from the same
point. The run is resumable (checkpoint every few minutes), logs its losses to loss.csv,
and at the end writes fp16 safetensors weights with the config and the measured validation
PSNR to concealer/weights/<name>.safetensors.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from concealer.models import WEIGHTS_DIR, save_weights
from concealer.models.context_encoder import IMAGE, ContextEncoder, PatchDiscriminator, blank, hole_slice

from .common import DATA, TrainingRun


def load_images(folder: Path) -> list[np.ndarray]:
    paths = sorted(folder.glob("*.jpg")) + sorted(folder.glob("*.png"))
    if not paths:
        raise SystemExit(f"no training images in {folder}")
    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]


def random_crops(images: list[np.ndarray], count: int, min_side: tuple[int, int], rng: np.random.Generator):
    batch = np.empty((count, IMAGE, IMAGE, 3), np.uint8)
    for i in range(count):
        image = images[rng.integers(len(images))]
        scale = rng.uniform(*min_side) / min(image.shape[:2])
        resized = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        top = rng.integers(resized.shape[0] - IMAGE + 1)
        left = rng.integers(resized.shape[1] - IMAGE + 1)
        crop = resized[top:top + IMAGE, left:left + IMAGE]
        batch[i] = crop[:, ::-1] if rng.random() < 0.5 else crop
    return to_tensor(batch)


def centre_crop(image: np.ndarray) -> np.ndarray:
    """The evaluation protocol: short side resized to 128, centre 128x128 crop."""
    scale = IMAGE / min(image.shape[:2])
    resized = cv2.resize(image, (max(IMAGE, round(image.shape[1] * scale)), max(IMAGE, round(image.shape[0] * scale))),
                         interpolation=cv2.INTER_AREA)
    top, left = (resized.shape[0] - IMAGE) // 2, (resized.shape[1] - IMAGE) // 2
    return resized[top:top + IMAGE, left:left + IMAGE]


def to_tensor(batch: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float() / 127.5 - 1


def hole_psnr(model: ContextEncoder, images: torch.Tensor) -> float:
    """Hole PSNR in inference mode (BatchNorm's running statistics, which validation must not update)."""
    hole = hole_slice()
    was_training = model.training
    with torch.no_grad():
        predicted = model.eval()(blank(images))[:, :, hole, hole]
    model.train(was_training)
    mse = F.mse_loss((predicted + 1) * 127.5, (images[:, :, hole, hole] + 1) * 127.5).item()
    return 10 * np.log10(255 ** 2 / mse)


def state_of(generator, discriminator, g_opt, d_opt) -> dict:
    return {"generator": generator.state_dict(), "discriminator": discriminator.state_dict(),
            "g_opt": g_opt.state_dict(), "d_opt": d_opt.state_dict()}


def main_phase_decay(run: TrainingRun, warm_up_seconds: float) -> float:
    """Cosine decay of the learning rate over the part of the budget after the warm-up."""
    main_seconds = run.minutes * 60 - warm_up_seconds
    done = min(1.0, max(0.0, run.elapsed - warm_up_seconds) / main_seconds)
    return 0.5 * (1 + np.cos(np.pi * done))


def main() -> None:
    run = TrainingRun(__doc__, ["lr", "reconstruction", "adversarial", "discriminator", "validation_hole_psnr"])
    config = run.config
    torch.manual_seed(config["seed"])
    rng = np.random.default_rng(config["seed"])

    images = load_images(DATA / config["data"]["images"])
    held_out = config["data"]["validation_images"]
    training, validation = images[:-held_out], images[-held_out:]
    validation_batch = to_tensor(np.stack([centre_crop(i) for i in validation]))
    min_side = tuple(config["data"]["min_side"])

    generator = ContextEncoder(**config["model"])
    discriminator = PatchDiscriminator()
    betas = tuple(config["optimizer"]["betas"])
    g_opt = torch.optim.Adam(generator.parameters(), lr=config["optimizer"]["lr"], betas=betas)
    d_opt = torch.optim.Adam(discriminator.parameters(), lr=config["optimizer"]["lr"], betas=betas)
    state = run.resume()
    main_phase_started = False
    if state:
        generator.load_state_dict(state["generator"])
        discriminator.load_state_dict(state["discriminator"])
        g_opt.load_state_dict(state["g_opt"])
        d_opt.load_state_dict(state["d_opt"])
        main_phase_started = state.get("main_phase_started", False)
        rng = np.random.default_rng([config["seed"], run.step])

    weights = config["loss"]
    warm_up = config.get("warm_up")
    warm_up_seconds = warm_up["minutes"] * 60 if warm_up else 0.0
    warmed_up = run.dir / "warmed_up.pt"
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.get("bfloat16", False))
    hole = hole_slice()
    run.start_clock()
    while run.running():
        warming_up = run.elapsed < warm_up_seconds
        if not warming_up and warm_up and not main_phase_started:
            if not warmed_up.exists():
                run.save(state_of(generator, discriminator, g_opt, d_opt), warmed_up)
            if weights.get("reconstruction_norm"):
                # The summed loss has gradients thousands of times the warm-up's: Adam's second-moment
                # estimates from the warm-up would let its first steps run wild (validation hole PSNR
                # 15.34 -> 10.95 dB in 3 steps), so the generator's optimiser starts afresh.
                g_opt = torch.optim.Adam(generator.parameters(), lr=config["optimizer"]["lr"], betas=betas)
            main_phase_started = True
        lr = warm_up["lr"] if warming_up else config["optimizer"]["lr"] * main_phase_decay(run, warm_up_seconds)
        for optimiser in (g_opt, d_opt):
            for group in optimiser.param_groups:
                group["lr"] = lr
        adversarial = weights["adversarial"] > 0 and not warming_up
        real = random_crops(training, config["batch"], min_side, rng)
        target = real[:, :, hole, hole]
        with autocast:
            generated = generator(blank(real))[:, :, hole, hole].float()
        d_loss = torch.zeros(())
        if adversarial:
            d_opt.zero_grad()
            with autocast:
                real_score, fake_score = discriminator(target).float(), discriminator(generated.detach()).float()
            d_loss = F.binary_cross_entropy_with_logits(real_score, torch.ones_like(real_score)) + \
                F.binary_cross_entropy_with_logits(fake_score, torch.zeros_like(fake_score))
            d_loss.backward()
            d_opt.step()
        g_opt.zero_grad()
        squared = (generated - target) ** 2
        reconstruction = squared.mean()  # logged as the mean, whatever the loss sums
        g_adv = torch.zeros(())
        if adversarial:
            with autocast:
                score = discriminator(generated).float()
            g_adv = F.binary_cross_entropy_with_logits(score, torch.ones_like(score))
            # The paper's L2 term is the squared L2 norm of the hole's error, a sum over its pixels.
            norm = squared.flatten(1).sum(1).mean() if weights.get("reconstruction_norm") else reconstruction
            loss = weights["reconstruction"] * norm + weights["adversarial"] * g_adv
        else:
            loss = reconstruction if warming_up else weights["reconstruction"] * reconstruction
        loss.backward()
        g_opt.step()
        run.step += 1
        if run.step % 20 == 0:
            run.log({"lr": lr, "reconstruction": reconstruction.item(), "adversarial": g_adv.item(),
                     "discriminator": d_loss.item(), "validation_hole_psnr": hole_psnr(generator, validation_batch)})
        run.maybe_save({**state_of(generator, discriminator, g_opt, d_opt), "main_phase_started": main_phase_started})
    psnr = hole_psnr(generator.eval(), validation_batch)
    WEIGHTS_DIR.mkdir(exist_ok=True)
    save_weights(generator, WEIGHTS_DIR / f"{config['name']}.safetensors",
                 {"name": config["name"], "config": config, "steps": run.step,
                  "training_minutes": round(run.elapsed / 60, 1),
                  "metrics": {"validation_hole_psnr_db": round(float(psnr), 3), "validation_images": held_out}})
    print(f"done: {run.step} steps in {run.elapsed / 60:.1f} min, validation hole PSNR {psnr:.2f} dB", flush=True)


if __name__ == "__main__":
    main()

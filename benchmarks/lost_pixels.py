"""Concealment quality over the lost pixels alone (the model issue's video benchmark).

    python -m benchmarks.lost_pixels [--clips ...] [--rates 0.03,0.1,0.2] [--models copy,ffmpeg,telea,...]

Each clip is damaged by simulate-loss (Gilbert, mean burst 2, seed 1). Every model repairs it
from the truth file's lost macroblocks (so that all models fill the same pixels), without drift
correction, into lossless FFV1. The figure is luma PSNR over the directly lost macroblocks of
the frames that arrived, against the decode of the clean stream (one MSE pooled over all those
pixels), plus the damaged macroblocks concealed per second by the last model.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from concealer import LossOptions, PacketisationOptions, simulate_loss
from concealer.encode import Codec, EncoderSettings
from concealer.decode import decode_frames
from concealer.detection import MB
from concealer.pipeline import conceal
from concealer.truth import load_truth

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "clips"
CLIPS = "foreman_cif_h264.mp4,carphone_qcif.mp4,foreman_cif_hevc.mp4"
MODELS = "copy,ffmpeg,telea,context-encoder,temporal"


def lost_pixel_psnr(repaired: Path, reference: Path, truth: Path) -> float:
    """Pooled luma PSNR over the truth's lost macroblocks (frames are matched by order: FFV1 in
    Matroska keeps millisecond timestamps, and both streams hold every frame slot)."""
    _, pts, maps = load_truth(truth)
    lost = dict(zip(pts.tolist(), maps))
    squared, count = 0.0, 0
    for ours, clean in zip(decode_frames(repaired), decode_frames(reference)):
        blocks = lost.get(clean.pts)
        if blocks is None or ours.missing or clean.missing:
            continue
        a, b = ours.luma(), clean.luma()
        mask = np.kron(blocks, np.ones((MB, MB), bool))[:a.shape[0], :a.shape[1]]
        squared += float(np.sum((a[mask].astype(np.float64) - b[mask]) ** 2))
        count += int(mask.sum())
    return 10 * np.log10(255 ** 2 * count / squared) if squared else float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", default=CLIPS)
    parser.add_argument("--rates", default="0.03,0.1,0.2")
    parser.add_argument("--models", default=MODELS)
    args = parser.parse_args()
    models = args.models.split(",")
    print("| clip | loss | " + " | ".join(f"{m} (dB)" for m in models) + " | lost MB/s (last model) |")
    print("|---|---|" + "---|" * (len(models) + 1))
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.clips.split(","):
            packets = PacketisationOptions(encoder=EncoderSettings(codec=Codec.HEVC if "hevc" in name else Codec.H264))
            for rate in (float(r) for r in args.rates.split(",")):
                damaged = simulate_loss(DATA / name, Path(tmp) / f"{rate}-{name}",
                                        loss=LossOptions(loss_rate=rate, burst=2, seed=1), packets=packets)
                scores = []
                for model in models:
                    out = Path(tmp) / "repaired.mkv"
                    summary = conceal(damaged.damaged, out, model=model, detect="truth", truth=damaged.truth,
                                      drift="none", codec="ffv1", lossless=True, overwrite=True)
                    scores.append(lost_pixel_psnr(out, damaged.reference, damaged.truth))
                rate_mb = summary.macroblocks["lost"] / summary.seconds
                print(f"| {name} | {rate:.0%} | " + " | ".join(f"{s:.2f}" for s in scores) +
                      f" | {rate_mb:.0f} |", flush=True)


if __name__ == "__main__":
    main()

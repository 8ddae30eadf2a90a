"""Repair quality of `conceal` per concealment model, against the clean reference.

    python -m benchmarks.conceal_quality [--clips a.mp4,b.mp4] [--rates 0.03,0.1,0.2]
        [--variants ffmpeg:none,temporal:carry,...]

Each clip is damaged by simulate-loss (Gilbert, mean burst 2, GOP 2 s, seed 1) and repaired
with default (blind) detection and lossless FFV1 output. The figure is the sequence luma PSNR
(from the mean MSE over all frames) against the decode of the clean encoded stream; `ffmpeg`
is FFmpeg's own concealment with lost frames rebuilt, the baseline the other models must beat.
A variant is MODEL:DRIFT (see `conceal --drift`).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from concealer import LossOptions, simulate_loss
from concealer.pipeline import conceal

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "clips"
CLIPS = "foreman_cif_h264.mp4,carphone_qcif.mp4,bikes_640x272.mp4,chaplin_640x360_mp3.mp4"
VARIANTS = "ffmpeg:none,copy:carry,telea:carry,temporal:none,temporal:reconceal,temporal:carry"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", default=CLIPS)
    parser.add_argument("--rates", default="0.03,0.1,0.2")
    parser.add_argument("--variants", default=VARIANTS)
    args = parser.parse_args()
    variants = [v.split(":") for v in args.variants.split(",")]
    print("| clip | loss | " + " | ".join(f"{m} {d} (dB)" for m, d in variants) + " | fps (last variant) |")
    print("|---|---|" + "---|" * (len(variants) + 1))
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.clips.split(","):
            for rate in (float(r) for r in args.rates.split(",")):
                damaged = simulate_loss(DATA / name, Path(tmp) / f"{rate}-{name}",
                                        loss=LossOptions(loss_rate=rate, burst=2, seed=1))
                results = [conceal(damaged.damaged, Path(tmp) / "repaired.mkv", model=model, drift=drift,
                                   codec="ffv1", lossless=True, reference=damaged.reference, overwrite=True)
                           for model, drift in variants]
                print(f"| {name} | {rate:.0%} | " + " | ".join(f"{r.psnr:.2f}" for r in results) +
                      f" | {results[-1].fps:.0f} |", flush=True)


if __name__ == "__main__":
    main()

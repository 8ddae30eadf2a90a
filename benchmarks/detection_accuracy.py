"""Damage-map accuracy per detection mode, and the time detection adds to a plain decode.

    python -m benchmarks.detection_accuracy [--clips a.mp4,b.mp4] [--rates 0.03,0.1,0.2] [--modes bitstream,truth]

Each clip is damaged by simulate-loss (Gilbert, mean burst 2, seed 1). The reference map
marks the macroblocks whose luma, decoded with FFmpeg's concealment, differs from the
clean decode by MSE > 4; recall and precision are over all macroblocks of all decoded
frames. Time is the ratio of detection (decode + maps) to a plain decode of the same
file, measured side by side (target for bitstream mode: at most 2, i.e. one extra decode).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from concealer import LossOptions, simulate_loss
from concealer.decode import decode_frames
from concealer.detection import detect_damage, macroblock_mean

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "clips"
CLIPS = "foreman_cif_h264.mp4,carphone_qcif.mp4,bikes_640x272.mp4,chaplin_640x360_mp3.mp4"


def score(damaged: Path, reference: Path, truth: Path, mode: str) -> tuple[float, float, float, float]:
    """(recall, precision, detection seconds, plain decode seconds)."""
    clean = {f.pts: f.luma().astype(np.float32) for f in decode_frames(reference)}
    start = time.perf_counter()
    for _ in decode_frames(damaged):
        pass
    plain = time.perf_counter() - start
    tp = fp = fn = 0
    spent = 0.0
    start = time.perf_counter()
    for item in detect_damage(damaged, mode=mode, truth=truth if mode == "truth" else None):
        spent += time.perf_counter() - start
        if not item.frame.missing:
            reference_map = macroblock_mean((item.frame.luma() - clean[item.frame.pts]) ** 2) > 4
            found = item.damage.damaged
            tp += np.count_nonzero(reference_map & found)
            fp += np.count_nonzero(found & ~reference_map)
            fn += np.count_nonzero(reference_map & ~found)
        start = time.perf_counter()
    return tp / max(1, tp + fn), tp / max(1, tp + fp), spent, plain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", default=CLIPS)
    parser.add_argument("--rates", default="0.03,0.1,0.2")
    parser.add_argument("--modes", default="bitstream,truth")
    args = parser.parse_args()
    print("| clip | loss | mode | recall | precision | time / plain decode |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.clips.split(","):
            for rate in (float(r) for r in args.rates.split(",")):
                result = simulate_loss(DATA / name, Path(tmp) / f"{rate}-{name}",
                                       loss=LossOptions(loss_rate=rate, burst=2, seed=1))
                for mode in args.modes.split(","):
                    recall, precision, spent, plain = score(result.damaged, result.reference, result.truth, mode)
                    print(f"| {name} | {rate:.0%} | {mode} | {recall:.3f} | {precision:.3f} | {spent / plain:.2f} |",
                          flush=True)


if __name__ == "__main__":
    main()

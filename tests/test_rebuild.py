"""Frames lost entirely are rebuilt from their neighbours' motion, better than repeating the last picture."""
import numpy as np
import pytest

from concealer import LossOptions, simulate_loss
from concealer.pipeline import conceal

from conftest import clip, decode_luma


@pytest.fixture(scope="module")
def carphone(tmp_path_factory):
    # QCIF frames fit in one packet, so every loss here is a whole frame.
    return simulate_loss(clip("carphone_qcif.mp4"), tmp_path_factory.mktemp("rebuild") / "c.mp4",
                         loss=LossOptions(loss_rate=0.1, burst=2, seed=1))


def test_rebuilt_frames_beat_repeating_the_last_picture(carphone, tmp_path):
    out = tmp_path / "fixed.mkv"
    summary = conceal(carphone.damaged, out, codec="ffv1", lossless=True, drift="none")
    clean = decode_luma(carphone.reference)
    received = decode_luma(carphone.damaged)
    repaired = [luma.astype(np.float64) for _, luma in sorted(decode_luma(out).items())]
    order = sorted(clean)
    assert len(repaired) == len(order) == summary.frames and summary.frames_rebuilt > 0
    rebuilt_error = repeat_error = 0.0
    for index, pts in enumerate(order):
        if pts in received or index == 0:
            continue
        rebuilt_error += np.mean((repaired[index] - clean[pts]) ** 2)
        repeat_error += np.mean((repaired[index - 1] - clean[pts]) ** 2)
    # Measured on this clip: 32.60 dB repeating, 33.49 dB moved along the next picture's vectors
    # (over the isolated lost frames, from clean neighbours); the repair must not be worse than a repeat.
    assert rebuilt_error < repeat_error


def test_drift_correction_carries_the_rebuilt_frames_forward(carphone, tmp_path):
    carried = conceal(carphone.damaged, tmp_path / "carry.mkv", codec="ffv1", lossless=True,
                      reference=carphone.reference)
    left = conceal(carphone.damaged, tmp_path / "none.mkv", codec="ffv1", lossless=True, drift="none",
                   reference=carphone.reference)
    # Measured: 31.88 dB carried against 29.51 dB left alone.
    assert carried.psnr > left.psnr + 1.0, (carried.psnr, left.psnr)

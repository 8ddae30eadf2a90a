"""The `conceal` command's interface: --report rows checked against an independent decode, --json, the
progress bar (on a terminal only), --threads, and the report appearing with the video or not at all."""
from __future__ import annotations

import json
import math
import os
import pty
import subprocess
import sys

import av
import cv2
import numpy as np
import pytest
from conftest import clip, decode_luma
from skimage.metrics import structural_similarity

import concealer
from concealer import LossOptions, UsageError, simulate_loss

CLI = [sys.executable, "-c", "from concealer._cli.conceal import main; main()"]


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    return simulate_loss(clip("foreman_cif_h264.mp4"), tmp_path_factory.mktemp("cli") / "d.mp4",
                         loss=LossOptions(loss_rate=0.1, burst=2, seed=1))


@pytest.fixture(scope="module")
def repaired(damaged):
    """One repair through the CLI with stdout and stderr captured (pipes, as in a script): lossless x264 in
    MP4, so that the output decodes to exactly the pictures scored, at the input's pts."""
    folder = damaged.damaged.parent
    proc = subprocess.run([*CLI, str(damaged.damaged), "-o", str(folder / "fixed.mp4"), "--lossless",
                           "--preset", "ultrafast", "--reference", str(damaged.reference),
                           "--report", str(folder / "report.json"), "--threads", "1", "--json"],
                          check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc, folder / "fixed.mp4", json.loads((folder / "report.json").read_text())


def psnr(mse: float) -> float:
    return math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def test_report_rows_match_an_independent_measurement(damaged, repaired):
    _, output, report = repaired
    clean, ours = decode_luma(damaged.reference), decode_luma(output)
    rows = report["frames"]
    with av.open(str(output)) as container:
        time_base = container.streams.video[0].time_base
    assert [row["pts"] for row in rows] == sorted(ours) and len(rows) == report["summary"]["frames"]
    errors = []
    for row in rows:
        errors.append(np.mean((ours[row["pts"]].astype(np.float64) - clean[row["pts"]]) ** 2))
        expected = psnr(errors[-1])
        assert (row["psnr"] is None) if expected == math.inf else row["psnr"] == pytest.approx(expected, abs=1e-6)
        assert row["ssim"] == pytest.approx(structural_similarity(clean[row["pts"]], ours[row["pts"]],
                                                                  data_range=255), abs=1e-9)
        assert row["time"] == pytest.approx(float(row["pts"] * time_base), abs=1e-6)
    summary = report["summary"]
    assert summary["psnr"] == pytest.approx(psnr(float(np.mean(errors))), abs=1e-6)
    assert summary["ssim"] == pytest.approx(np.mean([row["ssim"] for row in rows]), abs=1e-12)
    worst = min((row for row in rows if row["psnr"] is not None), key=lambda row: row["psnr"])
    assert (summary["worst_psnr"], summary["worst_pts"]) == (worst["psnr"], worst["pts"])


def test_report_rows_add_up_to_the_summary(damaged, repaired):
    _, _, report = repaired
    rows, summary = report["frames"], report["summary"]
    assert sum(row["rebuilt"] for row in rows) == summary["frames_rebuilt"] > 0
    for kind, total in summary["macroblocks"].items():
        assert sum(row["macroblocks"][kind] for row in rows) == total
    assert summary["macroblocks"]["lost"] > 0 and summary["macroblocks"]["missing_frame"] > 0
    # A rebuilt frame is a frame the damaged stream does not have.
    arrived = decode_luma(damaged.damaged)
    assert all(row["rebuilt"] == (row["pts"] not in arrived) for row in rows)


def test_json_output_is_the_reports_summary_and_nothing_else_is_printed(repaired):
    proc, _, report = repaired
    assert json.loads(proc.stdout) == report["summary"]
    assert proc.stderr == ""  # no progress bar in a pipe


def test_progress_bar_shows_on_a_terminal(damaged, tmp_path):
    """The same run with stderr on a pseudo-terminal draws the bar there; stdout (a pipe) stays pure JSON."""
    master, terminal = pty.openpty()
    proc = subprocess.Popen([*CLI, str(damaged.damaged), "-o", str(tmp_path / "fixed.mp4"), "--model", "copy",
                             "--preset", "ultrafast", "--json"], stdout=subprocess.PIPE, stderr=terminal,
                            env={**os.environ, "TERM": "xterm", "COLUMNS": "120"})
    os.close(terminal)
    drawn = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        drawn += chunk
    os.close(master)
    summary = json.loads(proc.communicate(timeout=300)[0])
    assert proc.returncode == 0
    text = drawn.decode(errors="replace")
    assert "frames/s" in text and f"{summary['frames']}/{summary['frames']}" in text


def test_threads_apply_during_the_run_and_are_restored(damaged, tmp_path):
    before = cv2.getNumThreads()
    seen: list[int] = []
    summary = concealer.conceal(damaged.damaged, tmp_path / "fixed.mp4", model="copy", preset="ultrafast",
                                threads=1, progress=lambda done: seen.append(cv2.getNumThreads()))
    assert isinstance(summary, concealer.ConcealSummary) and len(seen) == summary.frames
    assert set(seen) == {1} and cv2.getNumThreads() == before
    with pytest.raises(UsageError, match="--threads"):
        concealer.conceal(damaged.damaged, tmp_path / "other.mp4", threads=0)


def test_bad_threads_is_one_line(damaged, tmp_path):
    proc = subprocess.run([*CLI, str(damaged.damaged), "-o", str(tmp_path / "o.mp4"), "--threads", "0"],
                          check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "--threads" in proc.stderr
    assert not (tmp_path / "o.mp4").exists()


def test_a_failed_run_leaves_neither_video_nor_report(damaged, tmp_path):
    """A reference of another video fails at its first frame: the video and the report both stay unwritten."""
    proc = subprocess.run([*CLI, str(damaged.damaged), "-o", str(tmp_path / "o.mp4"), "--preset", "ultrafast",
                           "--reference", str(clip("carphone_qcif.mp4")), "--report", str(tmp_path / "r.json")],
                          check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "not this video's clean stream" in proc.stderr
    assert list(tmp_path.iterdir()) == []

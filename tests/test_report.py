"""`conceal report`: numbers checked against an independent decode, alignment by time, a self-contained page."""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import clip, decode_luma

from concealer import LossOptions, simulate_loss
from concealer.encode import EncoderSettings, add_output_encoder
from concealer.errors import InputError, OutputError
from concealer.media import probe_video_format
from concealer.pipeline import conceal
from concealer.report import make_report

CLI = [sys.executable, "-c", "from concealer._cli.conceal import main; main()", "report"]


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    """Foreman damaged by simulate-loss, and its repair as lossless FFV1 in Matroska (millisecond pts)."""
    tmp = tmp_path_factory.mktemp("report")
    result = simulate_loss(clip("foreman_cif_h264.mp4"), tmp / "d.mp4",
                           loss=LossOptions(loss_rate=0.1, burst=2, seed=1))
    conceal(result.damaged, tmp / "fixed.mkv", model="copy", codec="ffv1", lossless=True)
    return result, tmp / "fixed.mkv"


@pytest.fixture(scope="module")
def report(material):
    result, fixed = material
    out = result.damaged.parent / "report"
    summary = make_report(result.reference, fixed, out, damaged=[result.damaged], truth=result.truth)
    return summary, out


def read_rows(out: Path, label: str) -> list[dict[str, str]]:
    with open(out / "frames.csv", newline="") as fh:
        return [row for row in csv.DictReader(fh) if row["input"] == label]


def psnr(mse: float) -> float:
    return math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def decode_yuv(path: Path) -> list[np.ndarray]:
    """Every frame's Y, U and V samples stacked as FFmpeg lays out yuv420p, in presentation order."""
    with av.open(str(path)) as container:
        frames = sorted(container.decode(video=0), key=lambda f: f.pts)
        return [f.reformat(format="yuv420p").to_ndarray() for f in frames]


def test_psnr_matches_an_independent_computation(material, report):
    result, fixed = material
    summary, out = report
    reference = [luma for _, luma in sorted(decode_luma(result.reference).items())]
    for label, path in (("repaired", fixed), ("damaged", result.damaged)):
        decoded = decode_luma(path)
        rows = read_rows(out, label)
        assert len(rows) == len(reference) == 60
        errors = []
        for row, clean in zip(rows, reference):
            if not row["input_pts"]:
                assert int(row["pts"]) not in decoded and row["psnr_y"] == ""
                continue
            luma = decoded[int(row["input_pts"])]
            errors.append(np.mean((luma.astype(np.float64) - clean) ** 2))
            assert float(row["psnr_y"]) == pytest.approx(psnr(errors[-1]), rel=1e-9)
            assert 0 < float(row["ssim"]) <= 1
        stats = next(s for s in summary.inputs if s.label == label)
        assert stats.sequence_psnr == pytest.approx(psnr(float(np.mean(errors))), rel=1e-9)
        assert stats.matched == len(errors)
        assert stats.worst_psnr == pytest.approx(min(psnr(e) for e in errors), rel=1e-9)
        assert stats.frames_affected == sum(e > 0 for e in errors)
    # The Matroska repair keeps every frame; the damaged stream lost whole frames, each reported missing.
    assert summary.inputs[0].missing_frames == [] and summary.inputs[0].extra_frames == []
    lost = sorted(set(decode_luma(result.reference)) - set(decode_luma(result.damaged)))
    assert lost and [int(read_rows(out, "damaged")[i]["pts"]) for i in summary.inputs[1].missing_frames] == lost
    # YUV PSNR pools every Y, U and V sample of a frame.
    rows = read_rows(out, "repaired")
    for row, clean, repaired in zip(rows, decode_yuv(result.reference), decode_yuv(fixed)):
        mse = np.mean((repaired.astype(np.float64) - clean) ** 2)
        assert float(row["psnr_yuv"]) == pytest.approx(psnr(mse), rel=1e-9)
    written = json.loads((out / "summary.json").read_text())
    assert written["inputs"][0]["sequence_psnr"] == pytest.approx(summary.inputs[0].sequence_psnr)
    assert summary.damage_source == "truth" and summary.damaged_frames > 0


def test_alignment_by_time_reports_a_dropped_and_an_extra_frame(tmp_path):
    source = clip("foreman_cif_h264.mp4")
    dropped = 20
    copy = tmp_path / "dropped.mp4"
    with av.open(str(source)) as src, av.open(str(copy), "w") as dst:
        stream = src.streams.video[0]
        out = add_output_encoder(dst, "h264", EncoderSettings(lossless=True, preset="ultrafast"),
                                 probe_video_format(source))
        frames = sorted(src.decode(stream), key=lambda f: f.pts)
        step = frames[1].pts - frames[0].pts
        for index, frame in enumerate(frames):
            if index != dropped:
                dst.mux(out.encode(frame))
        extra = frames[-1].reformat(format="yuv420p")
        extra.pts = frames[-1].pts + step  # one frame past the reference's end
        extra_time = round(float(extra.pts * stream.time_base), 6)
        dst.mux(out.encode(extra))
        dst.mux(out.encode(None))
    summary = make_report(source, copy, tmp_path / "report", worst=2)
    stats = summary.inputs[0]
    assert stats.missing_frames == [dropped]
    assert stats.extra_frames == [extra_time]
    rows = read_rows(tmp_path / "report", "repaired")
    assert len(rows) == 60
    for index, row in enumerate(rows):
        if index == dropped:
            assert row["input_pts"] == "" and row["psnr_y"] == ""
        else:  # matched to its own reference frame, not shifted by one: identical content
            assert row["input_pts"] == row["pts"] and row["psnr_y"] == "inf" and float(row["ssim"]) == 1.0
    assert stats.sequence_psnr == math.inf and summary.worst_frames == []
    assert json.loads((tmp_path / "report" / "summary.json").read_text())["inputs"][0]["sequence_psnr"] is None


class _References(HTMLParser):
    def __init__(self):
        super().__init__()
        self.targets: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.targets += [value for name, value in attrs if name in ("src", "href")]


def test_index_html_references_only_files_in_the_folder(report):
    summary, out = report
    parser = _References()
    parser.feed((out / "index.html").read_text())
    assert {"psnr.png", "frames.csv", "summary.json"} <= set(parser.targets)
    assert {w.image for w in summary.worst_frames} <= set(parser.targets) and len(summary.worst_frames) == 4
    for target in parser.targets:
        assert "/" not in target and ":" not in target, target
        assert (out / target).is_file(), target
    assert sorted(p.name for p in out.iterdir()) == sorted({"index.html", *parser.targets})


def test_failures_leave_nothing_behind(material, tmp_path):
    result, fixed = material
    with pytest.raises(InputError, match="the reference's are 352x288"):
        make_report(result.reference, clip("carphone_qcif.mp4"), tmp_path / "report")
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="--overwrite"):
        make_report(result.reference, fixed, existing)
    with pytest.raises(OutputError, match="not a report folder"):
        make_report(result.reference, fixed, existing, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]
    assert (existing / "keep.txt").read_text() == "mine"


def test_cli(material, tmp_path):
    result, _ = material
    out = tmp_path / "report"
    run = subprocess.run([*CLI, str(result.reference), str(result.damaged), "-o", str(out), "--worst", "1"],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert "repaired" in run.stdout and (out / "index.html").is_file()
    missing = tmp_path / "nope.mp4"
    run = subprocess.run([*CLI, str(result.reference), str(missing), "-o", str(tmp_path / "second")],
                         capture_output=True, text=True, check=False)
    assert run.returncode != 0
    assert run.stderr.strip() == f"conceal: error: {missing}: no such file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]

"""The benchmark helpers that the results page depends on: excerpts, the damage cache and section updates."""
from __future__ import annotations

import av
import numpy as np
from conftest import clip, decode_luma

from benchmarks import common, robustness
from benchmarks.__main__ import SECTIONS, write_section
from concealer import LossOptions, PacketisationOptions, simulate_loss


def test_excerpt_loops_a_short_clip_from_its_start():
    source = clip("realshort_320x240_aac.mp4")
    original = list(decode_luma(source).values())
    frames = list(decode_luma(common.excerpt(source.name, len(original) + 2)).values())
    assert len(frames) == len(original) + 2
    # Near-lossless: each excerpt frame is closer to its own source frame than to the next one.
    for index, source_index in ((0, 0), (len(original), 0), (len(original) + 1, 1)):
        own = np.mean((frames[index].astype(float) - original[source_index]) ** 2)
        other = np.mean((frames[index].astype(float) - original[source_index + 1]) ** 2)
        assert own < other


def test_damage_is_made_once_per_clip_rate_and_frames():
    name = clip("realshort_320x240_aac.mp4").name
    first = common.damage(name, 0.1, frames=8)
    assert common.damage(name, 0.1, frames=8) is first
    other = common.damage(name, 0.2, frames=8)
    assert other.damaged != first.damaged and other.summary.frames == first.summary.frames == 8


def test_a_section_update_keeps_the_other_sections(tmp_path):
    page = tmp_path / "RESULTS.md"
    first, second = SECTIONS[0].name, SECTIONS[-1].name
    write_section(page, second, "old figures\n")
    write_section(page, first, "first figures\n")
    write_section(page, second, "new figures\n")
    text = page.read_text()
    assert "first figures" in text and "new figures" in text and "old figures" not in text
    assert text.index("first figures") < text.index("new figures")


def test_the_plain_decode_shows_a_picture_that_lost_its_timestamp(tmp_path):
    # Over MPEG-TS a lost packet can take a PES header, and with it a picture's pts: a player still shows the
    # picture, and the baseline every repair is scored against must not fail on it.
    damaged = simulate_loss(clip("realshort_320x240_aac.mp4"), tmp_path / "damaged.ts",
                            loss=LossOptions(loss_rate=0.1, seed=2), packets=PacketisationOptions(transport="ts"))
    with av.open(str(damaged.damaged)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        timestamps = [frame.pts for frame in common._decodable(container.demux(stream))]
    assert None in timestamps
    shown = list(common.plain_decode(damaged.damaged, damaged.reference))
    assert len(shown) == damaged.summary.frames
    assert all(luma.shape == clean.luma().shape for clean, luma in shown)


def test_every_robustness_condition_damages_a_clip():
    name = clip("realshort_320x240_aac.mp4").name
    for condition in robustness.CONDITIONS:
        damaged = robustness.damaged_under(name, condition, seed=2, frames=6)
        assert damaged.summary.frames == 6, condition
        over_ts = robustness.CONDITIONS[condition].packets.get("transport") == "ts"
        assert damaged.damaged.suffix == (".ts" if over_ts else ".mp4"), condition
        assert damaged.damaged.stat().st_size > 0 and damaged.reference.exists(), condition


def test_a_stream_with_nothing_decodable_is_listed_and_left_out_of_the_count():
    """carphone's own stream at 5% over RTP, seed 2, loses its only keyframe: `conceal` refuses it, and the
    robustness table says so instead of stopping."""
    table = robustness.robustness_table([clip("carphone_qcif.mp4").name], ["as-is-5"], [2], None)
    assert table.rows[0][6:] == ["nothing decodes", "-", "-"]
    assert table.rows[-1][-1] == "0 of 0 damaged (1 with nothing decodable left out)"

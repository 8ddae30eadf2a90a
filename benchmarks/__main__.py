"""Run the benchmarks and write their figures to benchmarks/RESULTS.md.

    python -m benchmarks [--quick] [--sections table1,quality,...] [--results PATH]

Each section runs one benchmark module in this process (so that every damaged clip is made
once and shared) with the arguments listed in SECTIONS: fewer images, clips, rates and frames
with --quick (a few minutes), the modules' defaults without it (an hour or more on two cores).
Every section is written to the results page as soon as it finishes, with the standalone
command that prints the same tables, the date, the machine and its load; sections that were
not run keep what an earlier run wrote.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from . import (
    conceal_quality,
    detection_accuracy,
    frame_codecs,
    hevc_repair,
    lost_pixels,
    memory,
    robustness,
    simulate_speed,
    speed,
    table1,
)
from .common import code_state, machine, today

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = """# Benchmark results

Written by `python -m benchmarks` (benchmarks/__main__.py). Each section says the command that prints
its tables, when and on what machine it ran, and how busy that machine was; every figure comes from
that run. `--quick` runs use fewer images, clips, rates and frames than the full protocol: their
tables say how many frames each row covers.
"""


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    module: ModuleType
    about: str
    quick: tuple[str, ...]
    full: tuple[str, ...] = ()


SECTIONS = [
    Section("table1", "Table 1 protocol: image inpainting (issue 4)", table1, table1.NOTE, ("--sets", "Set5")),
    Section("quality", "Video concealment quality (issue 5)", conceal_quality,
            "Sequence luma PSNR of the repair against the clean decode (blind detection, lossless FFV1 output): "
            "`FFmpeg` is a plain FFmpeg decode (its concealment on, missing frames repeating the last), then each "
            "model with the default drift correction (`redecode`: later pictures decoded from the repairs where "
            "the stream allows, H.264 without B-frames, carried along the motion vectors elsewhere), `flow` "
            "carried and without any, and the whole pipeline with `conceal`'s defaults. H.264 clips are damaged "
            "as H.264, foreman_cif_hevc as HEVC. Target: the pipeline at least 4 dB above "
            "`FFmpeg` at every loss rate, and never below it.",
            ("--clips", "foreman_cif_h264.mp4,foreman_cif_hevc.mp4", "--rates", "0.1", "--frames", "30")),
    Section("quality-bframes", "Video concealment quality with B-frames", conceal_quality,
            "As the section above, for the H.264 clips re-encoded with three B-frames (x264's default, and how "
            "most real files come): pictures decode out of presentation order. `flow none` repairs only the "
            "lost blocks; the pipeline also carries corrections from decoded reference pictures (I, P and "
            "B-pyramid references). Target: never below `FFmpeg`.",
            ("--clips", "foreman_cif_h264.mp4", "--rates", "0.1", "--frames", "30", "--bframes", "3",
             "--variants", "flow:none,pipeline"),
            ("--clips", "foreman_cif_h264.mp4,carphone_qcif.mp4,bikes_640x272.mp4,chaplin_640x360_mp3.mp4",
             "--bframes", "3", "--variants", "flow:none,pipeline")),
    Section("robustness", "Never below a plain decode, across channels and encodings (issue 5)", robustness,
            "`conceal` with its defaults (lossless FFV1) against a plain FFmpeg decode of the same damaged file, "
            "sequence luma PSNR against the clean decode, for the evaluation clips damaged by simulate-loss in "
            "ways the quality sections do not: other loss rates and models, smaller packets, MPEG-TS, bit errors, "
            "HEVC, B-frames, a long GOP, interlaced coding and 10 bits, two seeds other than theirs. Target: never "
            "below the plain decode.",
            ("--clips", "carphone_qcif.mp4", "--conditions", "gilbert-10-b3,ts-5,long-gop-b2", "--seeds", "2",
             "--frames", "60")),
    Section("robustness-hevc-ts", "HEVC as it is over MPEG-TS (issue 5)", robustness,
            "As the section above, for foreman_cif_hevc's own stream (x265: one slice segment a picture, coded in "
            "wavefronts, 64x64 CTUs, B-frames, one keyframe) damaged as it is over MPEG-TS, where a lost TS packet "
            "cuts a segment short: found from the continuity counters, substituted from the break in P and B "
            "pictures. Seeds 1, 3 and 9 lose no video packet at 5%.",
            ("--clips", "foreman_cif_hevc.mp4", "--conditions", "as-is-ts-5", "--seeds", "2"),
            ("--clips", "foreman_cif_hevc.mp4", "--conditions", "as-is-ts-5", "--seeds", "2,4,5,6,7,8,10")),
    Section("lost-pixels", "Concealment quality over the lost pixels alone (issue 4)", lost_pixels,
            "Luma PSNR over the truth's lost macroblocks only (truth detection, default drift correction, lossless "
            "FFV1), so that every model fills the same pixels; `FFmpeg decode` is a plain FFmpeg decode over the "
            "same pixels (its concealment, a frame lost whole repeating the last one shown), the `ffmpeg` model "
            "FFmpeg's concealment of lost blocks inside `conceal` (lost frames rebuilt, drift corrected). Target: "
            "the temporal model 3 dB above FFmpeg's concealment.",
            ("--clips", "foreman_cif_h264.mp4", "--rates", "0.1", "--frames", "30")),
    Section("detection", "Damage-map accuracy per detection mode (issue 3)", detection_accuracy,
            "Recall and precision against the macroblocks whose FFmpeg-concealed luma differs from the clean "
            "decode by MSE > 4, and the time of detection (decode + maps) over a plain decode of the same file. "
            "Targets: recall >= 0.95, precision >= 0.90, time at most 2x a plain decode (bitstream mode).",
            ("--clips", "foreman_cif_h264.mp4,foreman_cif_hevc.mp4", "--rates", "0.1", "--frames", "30")),
    Section("detection-bframes", "Damage-map accuracy with B-frames", detection_accuracy,
            "As the section above, bitstream mode, for the H.264 clips re-encoded with three B-frames (x264's "
            "default). FFmpeg conceals a B picture's lost blocks alike whatever the concealment flags: they are "
            "read from where the slices that arrived start.",
            ("--clips", "bikes_640x272.mp4", "--rates", "0.1", "--frames", "60", "--bframes", "3", "--modes",
             "bitstream"),
            ("--clips", "foreman_cif_h264.mp4,carphone_qcif.mp4,bikes_640x272.mp4,chaplin_640x360_mp3.mp4",
             "--bframes", "3", "--modes", "bitstream")),
    Section("hevc-repair", "HEVC repair below the decoder (issue 7)", hevc_repair,
            "Frames out and sequence luma PSNR of FFmpeg's decode alone and of the repaired decode (substitute "
            "slice segments, rebuilt pictures) of foreman_cif_hevc re-encoded by x265 (6 slices per picture), "
            "against the clean decode, a frame that did not come out repeating the previous one. Target: every "
            "frame out and at least 8 dB above the plain decode.", ("--rates", "0.1")),
    Section("frame-codecs", "VP9 and AV1 frame loss (issue 7)", frame_codecs,
            "Sequence luma PSNR of a plain FFmpeg decode (refused and missing frames repeating the last one "
            "shown) and of `conceal` with its defaults (lossless FFV1), against the clean decode, for clips "
            "re-encoded by simulate-loss in VP9 (libvpx real-time) and AV1 (SVT-AV1 low delay), GOP 2 s. A lost "
            "frame costs every frame up to the next keyframe: VP9 decodes them to garbage, dav1d refuses them.",
            ("--clips", "foreman_cif_h264.mp4", "--rates", "0.1")),
    Section("speed", "Speed of conceal and of the networks (issue 5)", speed,
            "`concealer.conceal` with default options against a plain decode + x264 encode of the same damaged "
            "file with the same settings, taking turns in one process (target: at most 3x), and the damaged "
            "macroblocks per second it repairs; then each network alone on full batches of windows (target: at "
            "least 1000 damaged macroblocks per second).",
            ("--frames", "60", "--rounds", "3", "--batches", "2")),
    Section("speed-bframes", "Speed of conceal with B-frames", speed,
            "As the section above, the clip re-encoded with three B-frames (x264's default, and how most real "
            "files come): the pipeline alone, against the same target.",
            ("--frames", "60", "--rounds", "3", "--batches", "0", "--bframes", "3"),
            ("--batches", "0", "--bframes", "3")),
    Section("simulate-speed", "Speed of simulate-loss (issue 2)", simulate_speed,
            "simulate-loss in re-encode mode against a plain decode + encode with its x264 settings, taking "
            "turns in one process (target: at most 1.3x).", ("--rounds", "3")),
    Section("memory", "Peak memory of conceal (issue 5)", memory,
            "Peak RSS of the `conceal` CLI (default options, a fresh process) on inputs of the same content and "
            "different lengths (--quick: 4 s and 24 s). Target: the 60 s input's peak at most 100 MB above the "
            "10 s input's.", ("--seconds", "4,24")),
    Section("memory-bframes", "Peak memory of conceal with B-frames", memory,
            "As the section above, the clip re-encoded with three B-frames (x264's default), whose pictures the "
            "repair holds until the I or P picture after them is repaired. Target: as above.",
            ("--seconds", "4,24", "--bframes", "3"), ("--bframes", "3")),
]


def run_section(section: Section, quick: bool) -> str:
    """Run one section's benchmark and return its part of the results page."""
    args = section.quick if quick else section.full
    command = " ".join([f"python -m {section.module.__name__}", *args])
    print(f"\n## {section.title}\n{command}", flush=True)
    load, code = os.getloadavg()[0], code_state()
    started = time.perf_counter()
    tables = section.module.run(section.module.parser().parse_args(list(args)))
    minutes = (time.perf_counter() - started) / 60
    run_by = "python -m benchmarks" + (" --quick" if quick else "")
    tables_text = "\n\n".join(t.markdown() for t in tables)
    return (f"## {section.title}\n\n{section.about}\n\n"
            f"`{command}` (run by `{run_by}` on {today()} at {code}, {minutes:.1f} min, load average {load:.1f} "
            f"at the start). Machine: {machine()}.\n\n{tables_text}\n\n")


def write_section(results: Path, name: str, text: str) -> None:
    """Replace one section of the results page (atomically), keeping the others as they were."""
    old = results.read_text() if results.exists() else ""
    sections = dict(re.findall(r"<!-- section (\S+) -->\n(.*?)<!-- end \1 -->\n", old, re.DOTALL))
    sections[name] = text
    page = HEADER + "".join(f"\n<!-- section {s.name} -->\n{sections[s.name]}<!-- end {s.name} -->\n"
                            for s in SECTIONS if s.name in sections)
    partial = results.with_name(f".{results.name}.partial")
    partial.write_text(page)
    os.replace(partial, results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer images, clips, rates and frames (minutes)")
    parser.add_argument("--sections", default=",".join(s.name for s in SECTIONS),
                        help="comma-separated, run in this order: " + ", ".join(s.name for s in SECTIONS))
    parser.add_argument("--results", type=Path, default=RESULTS, help="the page to write (default: %(default)s)")
    args = parser.parse_args()
    chosen = args.sections.split(",")
    unknown = set(chosen) - {s.name for s in SECTIONS}
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    failed = []
    for section in sorted((s for s in SECTIONS if s.name in chosen), key=lambda s: chosen.index(s.name)):
        try:
            write_section(args.results, section.name, run_section(section, args.quick))
        except Exception:  # noqa: BLE001 (one broken benchmark must not cost the figures of the others)
            traceback.print_exc()
            failed.append(section.name)
    if failed:
        sys.exit(f"sections that failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()

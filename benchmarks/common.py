"""What every benchmark shares: the data folder, the standard damage step, side-by-side timing,
the machine's description and markdown tables."""
from __future__ import annotations

import argparse
import atexit
import datetime
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from concealer import LossOptions, PacketisationOptions, SimulationResult, simulate_loss
from concealer.bitstream import Codec
from concealer.decode import DecodedFrame, decode_frames
from concealer.encode import EncoderSettings, add_video_encoder
from concealer.media import nominal_rate

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CLIPS = DATA / "clips"
IMAGES = DATA / "images"
# The standard channel of every video benchmark: Gilbert-Elliott loss with a mean burst of two packets.
BURST = 2.0
SEED = 1

_work: Path | None = None
_damaged: dict[tuple, SimulationResult] = {}
_excerpts: dict[tuple[str, int], Path] = {}


def arguments(doc: str) -> argparse.ArgumentParser:
    """A benchmark's command line, its module docstring as the help."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def clip_arguments(doc: str, clips: str, rates: str) -> argparse.ArgumentParser:
    """The command line of a benchmark over damaged clips: --clips, --rates and --frames."""
    parser = arguments(doc)
    parser.add_argument("--clips", type=names, default=clips)
    parser.add_argument("--rates", type=numbers, default=rates)
    parser.add_argument("--frames", type=int, help="only the first N frames of each clip")
    return parser


def names(text: str) -> list[str]:
    """A comma-separated list option."""
    return text.split(",")


def numbers(text: str) -> list[float]:
    """A comma-separated list of numbers."""
    return [float(value) for value in text.split(",")]


def clip_path(name: str) -> Path:
    """A clip of ../shared/data/clips, or exit saying where it was looked for."""
    path = CLIPS / name
    if not path.exists():
        raise SystemExit(f"{path} not found: the benchmarks need ../shared/data beside the checkout")
    return path


def work_dir() -> Path:
    """This process's scratch folder (damaged clips, excerpts, outputs), removed at exit."""
    global _work
    if _work is None:
        _work = Path(tempfile.mkdtemp(prefix="concealer-benchmarks-"))
        atexit.register(shutil.rmtree, _work, ignore_errors=True)
    return _work


def source_codec(path: Path) -> Codec:
    """The codec family simulate-loss should re-encode a clip in: HEVC stays HEVC, all else is H.264."""
    with av.open(str(path)) as container:
        return Codec.HEVC if container.streams.video[0].codec_context.name == "hevc" else Codec.H264


def excerpt(name: str, frames: int, *, start: int = 0, size: tuple[int, int] | None = None) -> Path:
    """The clip's `frames` frames from frame `start` (looped from the start when it is shorter), scaled to `size`
    (width, height) if given, video only, as a near-lossless x264 MP4 in the work folder; cached for the process."""
    key = (name, frames, start, size)
    if key not in _excerpts:
        source = clip_path(name)
        label = f"-from{start}" if start else ""
        label += f"-{size[0]}x{size[1]}" if size else ""
        output = work_dir() / f"{Path(name).stem}-{frames}f{label}.mp4"
        with av.open(str(source)) as probe:
            stream = probe.streams.video[0]
            rate, width, height = nominal_rate(stream), stream.codec_context.width, stream.codec_context.height
        width, height = size or (width, height)
        with av.open(str(output), "w") as out:
            encoder = add_video_encoder(out, EncoderSettings(crf=10, preset="veryfast"), width=width, height=height,
                                        rate=rate, time_base=1 / Fraction(rate))
            index = written = 0
            while written < frames:
                with av.open(str(source)) as inp:
                    for frame in inp.decode(video=0):
                        index += 1
                        if index <= start:
                            continue
                        scaled = frame.reformat(width=width, height=height, format="yuv420p").to_ndarray()
                        picture = av.VideoFrame.from_ndarray(scaled, format="yuv420p")
                        picture.pts = written
                        out.mux(encoder.encode(picture))
                        written += 1
                        if written == frames:
                            break
            out.mux(encoder.encode(None))
        _excerpts[key] = output
    return _excerpts[key]


def damage(name: str, rate: float, *, frames: int | None = None, seed: int = SEED,
           codec: Codec | None = None, bframes: int = 0) -> SimulationResult:
    """The standard damage step: simulate-loss (re-encode, GOP 2 s, Gilbert loss with mean burst 2)
    at `rate` on the clip, or on its first `frames` frames, in `codec` (default: the clip's family,
    see source_codec) with `bframes` B-frames; cached for the process by clip, frames, rate, seed,
    codec and B-frames, so that every section of a run repairs the same damaged files."""
    codec = codec or source_codec(clip_path(name))
    key = (name, frames, rate, seed, codec, bframes)
    if key not in _damaged:
        _damaged[key] = damaged_copy(name, frames, f"{rate:g}-{seed}-{codec.value}-b{bframes}",
                                     LossOptions(model="gilbert", loss_rate=rate, burst=BURST, seed=seed),
                                     PacketisationOptions(encoder=EncoderSettings(codec=codec, bframes=bframes)))
    return _damaged[key]


def damaged_copy(name: str, frames: int | None, label: str, loss: LossOptions,
                 packets: PacketisationOptions) -> SimulationResult:
    """simulate-loss on the clip, or on its first `frames` frames, into the work folder: a file named after the
    clip and `label`, in the container the transport and codec call for."""
    source = excerpt(name, frames) if frames else clip_path(name)
    suffix = ".ts" if packets.transport == "ts" else ".mp4" if packets.encoder.codec.has_nal_units else ".mkv"
    output = work_dir() / f"{Path(name).stem}-{frames or 'all'}f-{label}{suffix}"
    return simulate_loss(source, output, loss=loss, packets=packets)


def plain_decode(damaged: Path, reference: Path) -> Iterator[tuple[DecodedFrame, np.ndarray]]:
    """Each frame of the decode of the clean `reference`, with the luma (float32) that a plain FFmpeg decode of
    `damaged` shows at its time: FFmpeg's concealment on, one thread, no stream repair, a frame that never came
    out or was refused repeating the last one that did (before the first: the first; mid-grey when nothing came
    out at all). The baseline every repair is measured against."""
    with av.open(str(damaged)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1  # FFmpeg's H.264 concealment is off under slice threads
        pictures = [(frame.pts, frame.reformat(format="yuv420p").to_ndarray()[:frame.height].astype(np.float32))
                    for frame in _decodable(container.demux(stream))]
    decoded = dict(_timed(pictures))
    shown = iter(sorted(decoded))
    last, upcoming = None, next(shown, None)
    for frame in decode_frames(reference):
        while upcoming is not None and upcoming <= frame.pts:
            last, upcoming = decoded[upcoming], next(shown, None)
        if last is not None:
            yield frame, last
        else:
            yield frame, decoded[upcoming] if upcoming is not None else np.full(frame.luma().shape, 128, np.float32)


def _timed(pictures: list[tuple[int | None, np.ndarray]]) -> Iterator[tuple[int, np.ndarray]]:
    """The decoder's pictures (in presentation order) with a timestamp each: one that came out without its own
    (an MPEG-TS packet that lost its PES header) is shown one frame interval after the picture before it."""
    known = sorted(pts for pts, _ in pictures if pts is not None)
    step = int(np.median(np.diff(known))) if len(known) > 1 else 1
    last = known[0] - step if known else 0
    for pts, picture in pictures:
        last = pts if pts is not None else last + step
        yield last, picture


def _decodable(packets: Iterator[av.Packet]) -> Iterator[av.VideoFrame]:
    """The pictures of the packets a player's decoder accepts (dav1d refuses AV1 frames with lost references)."""
    for packet in packets:
        try:
            yield from packet.decode()
        except av.error.InvalidDataError:
            continue


def loss_label(result: SimulationResult) -> str:
    """Requested loss rate and, in brackets, the share of packets the channel actually lost."""
    return f"{result.summary.requested_loss_rate:.0%} ({result.summary.effective_loss_rate:.1%})"


def bar_cell(value: float, bar: float, *, at_most: bool) -> str:
    """A figure's verdict against its target, for the results tables."""
    met = value <= bar if at_most else value >= bar
    return f"{'<=' if at_most else '>='} {bar:g}: {'met' if met else 'NOT met'}"


def plain_transcode(source: Path, output: Path, settings: EncoderSettings) -> None:
    """The speed baseline: decode with PyAV, encode with `settings`, mux with the audio copied."""
    with av.open(str(source)) as inp, av.open(str(output), "w") as out:
        video = inp.streams.video[0]
        encoder = add_video_encoder(out, settings, width=video.codec_context.width,
                                    height=video.codec_context.height, rate=nominal_rate(video),
                                    time_base=video.time_base)
        audio = {s.index: out.add_stream_from_template(s) for s in inp.streams.audio}
        for packet in inp.demux(video, *inp.streams.audio):
            if packet.stream is video:
                for frame in packet.decode():
                    frame.pict_type = av.video.frame.PictureType.NONE
                    out.mux(encoder.encode(frame))
            elif packet.dts is not None:
                packet.stream = audio[packet.stream.index]
                out.mux(packet)
        out.mux(encoder.encode(None))


def side_by_side(jobs: dict[str, Callable[[int], object]], rounds: int) -> dict[str, list[float]]:
    """Wall seconds of each job (called with the round number), the jobs taking turns round after
    round so that machine noise hits them alike."""
    seconds: dict[str, list[float]] = {name: [] for name in jobs}
    for round_ in range(rounds):
        for name, job in jobs.items():
            start = time.perf_counter()
            job(round_)
            seconds[name].append(time.perf_counter() - start)
    return seconds


def machine() -> str:
    """CPU, cores and the versions that the figures depend on, for the results page."""
    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    import torch
    return (f"{cpu} ({platform.machine()}), {len(os.sched_getaffinity(0))} cores, no GPU in use; "
            f"Python {platform.python_version()}, PyAV {av.__version__} (FFmpeg {av.ffmpeg_version_info}), "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads)")


def code_state() -> str:
    """The commit the figures were measured at, and whether the library had uncommitted changes then."""
    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                                text=True, check=False)
        return result.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "an unknown commit"
    return commit + (" with uncommitted changes in concealer/" if git("status", "--porcelain", "concealer") else "")


def today() -> str:
    return datetime.date.today().isoformat()


class Table:
    """A markdown table, printed row by row as results arrive and kept for the results page."""

    def __init__(self, headers: list[str], echo: bool = True):
        self.headers = headers
        self.rows: list[list[str]] = []
        self.echo = echo
        if echo:
            print("\n".join(self.markdown().splitlines()[:2]), flush=True)

    def add(self, *cells: object) -> None:
        row = [str(c) for c in cells]
        if len(row) != len(self.headers):
            raise ValueError(f"a row of {len(row)} cells in a table of {len(self.headers)} columns")
        self.rows.append(row)
        if self.echo:
            print(self._line(row), flush=True)

    def markdown(self) -> str:
        lines = [self._line(self.headers), "|" + "---|" * len(self.headers)] + [self._line(r) for r in self.rows]
        return "\n".join(lines)

    @staticmethod
    def _line(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |"

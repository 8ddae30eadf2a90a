"""Fuzzing `conceal` with seeded random corruptions of short real clips (H.264 MP4, HEVC MP4, VP9 WebM,
AV1 MKV encoded here by SVT-AV1 from foreman, as ../shared/data holds no AV1 clip, and H.264 and HEVC copied
into MPEG-TS).

    python -m benchmarks.fuzz --cases 200 [--start 0] [--codec h264 hevc vp9 av1] [--frames 10] [--timeout 60]
        [--keep DIR]
    python -m benchmarks.fuzz --codec hevc --seed 17 --keep /tmp/fuzz   # replay one case, keep its files

Each case cuts nothing new: it takes a few-frame excerpt of the clip (stream copy), applies one to three
corruptions chosen by its seed (bit flips, byte bursts, truncated packets, a truncated file, dropped and
duplicated packets, damaged parameter sets in the codec record or in-band; in MPEG-TS, runs of TS packets lost
as IPTV loses them) and repairs the result with
`concealer.conceal` in a forked process under a timeout. A case ends one of four ways: a good output (it
decodes, with as many frames as the frame slots the summary reports), a clear error (a ConcealerError with
a one-line message), a crash (any other exception, or the process died) or a hang (the timeout). Only the
first two are acceptable. The pytest suite runs the first seeds of each codec (tests/test_fuzz.py).
"""
from __future__ import annotations

import argparse
import enum
import multiprocessing
import shutil
import tempfile
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import av
import numpy as np

from concealer import conceal
from concealer.bitstream import BitstreamError, Codec, parse_decoder_config
from concealer.encode import EncoderSettings, add_video_encoder
from concealer.errors import ConcealerError
from concealer.media import add_stream_copy
from concealer.pipeline import DRIFT_STRATEGIES

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CLIPS = {"h264": "foreman_cif_h264.mp4", "h264-p": "foreman_cif_h264.mp4", "hevc": "foreman_cif_hevc.mp4",
         "vp9": "foreman_cif_vp9.webm", "av1": "foreman_cif_h264.mp4", "h264-ts": "foreman_cif_h264.mp4",
         "hevc-ts": "foreman_cif_hevc.mp4"}
# Excerpts copied into MPEG-TS (Annex B, no codec record, the demuxer's parser cutting the packets).
IN_TS = ("h264-ts", "hevc-ts")
# Excerpts encoded from the clip rather than cut from it: AV1, and H.264 without B-frames in packet-sized
# slices (the streams `conceal` redecodes from its repairs, concealer.reference_repair).
REENCODED = {"av1": EncoderSettings(codec=Codec.AV1),
             "h264-p": EncoderSettings(codec=Codec.H264, slice_max_size=600)}
EXCERPT_FRAMES = 10
TIMEOUT_S = 60.0
MODELS = ("ffmpeg", "copy", "telea")  # the networks are left out: loading torch would dominate every case


class Outcome(str, enum.Enum):
    GOOD = "good output"
    CLEAR_ERROR = "clear error"
    CRASH = "crash"
    HANG = "hang"


@dataclass(frozen=True)
class Sample:
    """One video packet of the stream being damaged."""

    data: bytes
    pts: int | None
    dts: int | None
    keyframe: bool


@dataclass
class Stream:
    """What a corruption may change: the packets, the codec record (avcC/hvcC) and the file's length."""

    codec: str
    samples: list[Sample]
    extradata: bytes
    truncate_at: float | None = None  # keep this share of the written file
    index_first: bool = False  # MP4: write the index (moov) before the media data, so a cut keeps it
    file_garbles: int = 0  # bit flips or byte bursts anywhere in the written file, container structures included
    ts_losses: int = 0  # MPEG-TS: runs of TS packets lost from the written file

    def _record(self):
        """The parsed codec record, or None (VP9, Annex B, or a record too damaged to read)."""
        if self.codec not in (Codec.H264.value, Codec.HEVC.value):
            return None
        try:
            return parse_decoder_config(Codec(self.codec), self.extradata)
        except BitstreamError:
            return None

    @property
    def length_size(self) -> int:
        """Bytes of each NAL unit's length prefix (4 when the record cannot be read)."""
        record = self._record()
        return record.length_size if record else 4

    @property
    def parameter_sets(self) -> tuple[bytes, ...]:
        record = self._record()
        return record.parameter_sets if record else ()


def _garble(data: bytes, rng: np.random.Generator) -> bytes:
    """`data` with a few bits flipped or a short burst of bytes overwritten."""
    out = bytearray(data)
    if rng.random() < 0.5:
        for _ in range(int(rng.integers(1, 9))):
            out[rng.integers(len(out))] ^= 1 << int(rng.integers(8))
    else:
        start = int(rng.integers(len(out)))
        burst = rng.integers(0, 256, size=min(int(rng.integers(1, 33)), len(out) - start), dtype=np.uint8)
        out[start:start + burst.size] = burst.tobytes()
    return bytes(out)


def _pick(rng: np.random.Generator, stream: Stream) -> int:
    return int(rng.integers(len(stream.samples)))


def bit_flips(stream: Stream, rng: np.random.Generator) -> None:
    """Flip 1-16 bits anywhere in the packets, NAL headers and length prefixes included."""
    for _ in range(int(rng.integers(1, 17))):
        i = _pick(rng, stream)
        data = bytearray(stream.samples[i].data)
        data[rng.integers(len(data))] ^= 1 << int(rng.integers(8))
        stream.samples[i] = replace(stream.samples[i], data=bytes(data))


def byte_burst(stream: Stream, rng: np.random.Generator) -> None:
    """Overwrite 1-256 consecutive bytes of a packet with noise, zeros or 0xFF."""
    i = _pick(rng, stream)
    data = bytearray(stream.samples[i].data)
    start = int(rng.integers(len(data)))
    length = min(int(rng.integers(1, 257)), len(data) - start)
    fill = rng.choice(["noise", "zeros", "ones"])
    data[start:start + length] = (rng.integers(0, 256, length, dtype=np.uint8).tobytes() if fill == "noise"
                                  else bytes(length) if fill == "zeros" else b"\xff" * length)
    stream.samples[i] = replace(stream.samples[i], data=bytes(data))


def truncate_packets(stream: Stream, rng: np.random.Generator) -> None:
    """Cut 1-3 packets short (a NAL unit's length prefix then runs past the end)."""
    for _ in range(int(rng.integers(1, 4))):
        i = _pick(rng, stream)
        data = stream.samples[i].data
        stream.samples[i] = replace(stream.samples[i], data=data[:int(rng.integers(1, len(data) + 1))])


def truncate_file(stream: Stream, rng: np.random.Generator) -> None:
    """Cut the written file short, as an interrupted download or recording does (for MP4, with its
    index written first or last: a cut file then has an index that points past its end, or none)."""
    stream.truncate_at = float(rng.uniform(0.05, 0.999))
    stream.index_first = bool(rng.random() < 0.5)


def garble_container(stream: Stream, rng: np.random.Generator) -> None:
    """Damage the written file anywhere, its headers and index (moov, EBML, cues) as much as the media data."""
    stream.file_garbles = int(rng.integers(1, 17))


def drop_packets(stream: Stream, rng: np.random.Generator) -> None:
    """Drop 1-4 packets (never all of them), the first one included now and then."""
    for _ in range(min(int(rng.integers(1, 5)), len(stream.samples) - 1)):
        del stream.samples[_pick(rng, stream)]


def duplicate_packets(stream: Stream, rng: np.random.Generator) -> None:
    """A packet arrives twice: in a later packet's slot instead of it, or appended to the next one."""
    i = _pick(rng, stream)
    j = min(i + int(rng.integers(1, 4)), len(stream.samples) - 1)
    later = stream.samples[j]
    data = stream.samples[i].data if rng.random() < 0.5 or i == j else later.data + stream.samples[i].data
    stream.samples[j] = replace(later, data=data)


def damage_parameter_sets(stream: Stream, rng: np.random.Generator) -> None:
    """Damage the SPS/PPS/VPS: in the codec record, or as a garbled copy sent in-band in a packet.

    VP9 has no parameter sets: its keyframes' uncompressed headers (frame size, profile) are damaged instead.
    """
    sets = stream.parameter_sets
    if not sets:
        keyframes = [i for i, s in enumerate(stream.samples) if s.keyframe] or [0]
        i = int(rng.choice(keyframes))
        data = stream.samples[i].data
        stream.samples[i] = replace(stream.samples[i], data=_garble(data[:16], rng) + data[16:])
    elif rng.random() < 0.5:
        stream.extradata = _garble(stream.extradata, rng)
    else:
        nal = _garble(sets[int(rng.integers(len(sets)))], rng)
        i = _pick(rng, stream)
        prefix = len(nal).to_bytes(stream.length_size, "big")
        stream.samples[i] = replace(stream.samples[i], data=prefix + nal + stream.samples[i].data)


def lose_ts_packets(stream: Stream, rng: np.random.Generator) -> None:
    """MPEG-TS only: lose 1-3 runs of 1-7 TS packets of the written file (a datagram's worth, as IPTV over UDP
    loses them), PES headers and tables with the rest."""
    stream.ts_losses = int(rng.integers(1, 4))


CORRUPTIONS: dict[str, Callable[[Stream, np.random.Generator], None]] = {
    "bit-flips": bit_flips,
    "byte-burst": byte_burst,
    "truncated-packets": truncate_packets,
    "truncated-file": truncate_file,
    "garbled-container": garble_container,
    "dropped-packets": drop_packets,
    "duplicated-packets": duplicate_packets,
    "parameter-sets": damage_parameter_sets,
}
# Drawn only for excerpts in MPEG-TS, so that the other codecs' seeds stay the cases they were.
TS_CORRUPTIONS: dict[str, Callable[[Stream, np.random.Generator], None]] = {"lost-ts-packets": lose_ts_packets}


def make_excerpt(codec: str, folder: Path, frames: int = EXCERPT_FRAMES) -> Path:
    """The few-frame clip a codec's cases corrupt, in `folder`."""
    source = DATA / "clips" / CLIPS[codec]
    if not source.exists():
        raise SystemExit(f"{source} not found: the fuzzer needs ../shared/data beside the checkout")
    if codec not in REENCODED:
        return cut_excerpt(source, folder / f"excerpt-{codec}{'.ts' if codec in IN_TS else source.suffix}", frames)
    target = folder / f"excerpt-{codec}.mkv"
    with av.open(str(source)) as inp, av.open(str(target), "w") as out:
        video = inp.streams.video[0]
        encoder = add_video_encoder(out, replace(REENCODED[codec], gop=frames // 2), width=video.width,
                                    height=video.height, rate=video.average_rate, time_base=video.time_base)
        for number, frame in enumerate(inp.decode(video)):
            if number == frames:
                break
            frame.pict_type = av.video.frame.PictureType.NONE
            out.mux(encoder.encode(frame))
        out.mux(encoder.encode(None))
    return target


def cut_excerpt(source: Path, target: Path, frames: int = EXCERPT_FRAMES) -> Path:
    """The first `frames` video packets of `source`, stream-copied into `target` (same container)."""
    with av.open(str(source)) as inp, av.open(str(target), "w") as out:
        video = inp.streams.video[0]
        stream = add_stream_copy(out, video)
        kept = 0
        for packet in inp.demux(video):
            if kept == frames:
                break
            if packet.size:
                packet.stream = stream
                out.mux(packet)
                kept += 1
    return target


def read_stream(path: Path) -> Stream:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        samples = [Sample(bytes(p), p.pts, p.dts, p.is_keyframe) for p in container.demux(video) if p.size]
        return Stream(video.codec_context.name, samples, bytes(video.codec_context.extradata or b""))


def corrupt(excerpt: Path, target: Path, seed: int) -> tuple[str, ...]:
    """Write a damaged copy of `excerpt` to `target`; returns the corruptions applied, in order."""
    rng = np.random.default_rng(seed)
    stream = read_stream(excerpt)
    count = int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))
    corruptions = {**CORRUPTIONS, **(TS_CORRUPTIONS if target.suffix == ".ts" else {})}
    names = tuple(str(name) for name in rng.choice(list(corruptions), size=count, replace=False))
    for name in names:
        corruptions[name](stream, rng)
    options = {"movflags": "faststart"} if stream.index_first and target.suffix == ".mp4" else {}
    with av.open(str(excerpt)) as template, av.open(str(target), "w", options=options) as out:
        video = add_stream_copy(out, template.streams.video[0])
        if stream.extradata:
            video.codec_context.extradata = stream.extradata
        for sample in stream.samples:
            packet = av.Packet(sample.data)
            packet.pts, packet.dts, packet.time_base = sample.pts, sample.dts, video.time_base
            packet.is_keyframe = sample.keyframe
            packet.stream = video
            try:
                out.mux(packet)
            except av.error.InvalidDataError:
                continue  # the muxer parses it and refuses it (a truncated AV1 OBU): it is lost instead
    data = target.read_bytes()
    if stream.ts_losses:
        packets = [data[at:at + 188] for at in range(0, len(data), 188)]
        for _ in range(stream.ts_losses):
            first = int(rng.integers(len(packets)))
            del packets[first:first + int(rng.integers(1, 8))]
        data = b"".join(packets)
    for _ in range(stream.file_garbles):
        data = _garble(data, rng)
    if stream.truncate_at is not None:
        data = data[:max(1, int(len(data) * stream.truncate_at))]
    target.write_bytes(data)
    return names


def settings_for(seed: int) -> tuple[str, str]:
    """(concealment model, drift strategy) of a case: every combination of the fast ones in turn."""
    return MODELS[seed % len(MODELS)], DRIFT_STRATEGIES[seed // len(MODELS) % len(DRIFT_STRATEGIES)]


def repair_and_check(damaged: Path, output: Path, seed: int) -> tuple[Outcome, str]:
    """Repair `damaged` (fast encoder settings) and judge the result; meant to run in a child process."""
    model, drift = settings_for(seed)
    try:
        summary = conceal(damaged, output, model=model, drift=drift, preset="ultrafast")
    except ConcealerError as exc:
        message = str(exc)
        if "\n" in message or not message:
            return Outcome.CRASH, f"error message is not one line: {message!r}"
        return Outcome.CLEAR_ERROR, message
    except Exception:  # noqa: BLE001 -- anything else escaping is what the fuzzer looks for
        return Outcome.CRASH, traceback.format_exc()
    try:
        with av.open(str(output)) as container:
            decoded = sum(1 for _ in container.decode(video=0))
    except av.error.FFmpegError as exc:
        return Outcome.CRASH, f"the output does not decode: {exc}"
    if decoded != summary.frames or not decoded:
        return Outcome.CRASH, f"the output has {decoded} frames, the summary reports {summary.frames} frame slots"
    return Outcome.GOOD, f"{decoded} frames"


def _child(connection, damaged: Path, output: Path, seed: int) -> None:
    connection.send(repair_and_check(damaged, output, seed))
    connection.close()


def run_case(damaged: Path, output: Path, seed: int, timeout: float = TIMEOUT_S) -> tuple[Outcome, str]:
    """`repair_and_check` in a forked process: a hang is killed after `timeout`, a dying process is a crash."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(sender, damaged, output, seed))
    process.start()
    sender.close()
    try:
        if not receiver.poll(timeout):
            process.kill()
            process.join()
            return (Outcome.HANG, f"no result after {timeout:g} s") if process.exitcode == -9 else \
                (Outcome.CRASH, f"the process died (exit code {process.exitcode})")
        return receiver.recv()
    except EOFError:
        process.join()
        return Outcome.CRASH, f"the process died (exit code {process.exitcode})"
    finally:
        process.join()
        receiver.close()


@dataclass(frozen=True)
class CaseResult:
    codec: str
    seed: int
    corruptions: tuple[str, ...]
    outcome: Outcome
    detail: str


def fuzz(codec: str, seeds: range, work: Path, frames: int = EXCERPT_FRAMES, timeout: float = TIMEOUT_S,
         keep: Path | None = None) -> list[CaseResult]:
    """Run the cases `seeds` of one codec in `work`; the damaged files of bad cases are copied to `keep`."""
    excerpt = make_excerpt(codec, work, frames)
    results = []
    for seed in seeds:
        damaged = work / f"{codec}-{seed}{excerpt.suffix}"
        names = corrupt(excerpt, damaged, seed)
        outcome, detail = run_case(damaged, work / f"{codec}-{seed}-fixed.mp4", seed, timeout)
        results.append(CaseResult(codec, seed, names, outcome, detail.replace(str(damaged), "INPUT")))
        if keep and (outcome in (Outcome.CRASH, Outcome.HANG) or len(seeds) == 1):
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(damaged, keep / damaged.name)
        damaged.unlink()
        (work / f"{codec}-{seed}-fixed.mp4").unlink(missing_ok=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=200, help="Cases per codec (seeds start .. start+cases-1).")
    parser.add_argument("--start", type=int, default=0, help="The first seed (a later run covers new cases).")
    parser.add_argument("--seed", type=int, help="Run only this seed.")
    parser.add_argument("--codec", nargs="+", choices=list(CLIPS), default=list(CLIPS))
    parser.add_argument("--frames", type=int, default=EXCERPT_FRAMES, help="Frames in each clip's excerpt.")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, help="Seconds before a case counts as a hang.")
    parser.add_argument("--keep", type=Path, help="Copy the damaged files of crashes and hangs here.")
    args = parser.parse_args()
    seeds = range(args.seed, args.seed + 1) if args.seed is not None else range(args.start, args.start + args.cases)
    with tempfile.TemporaryDirectory(prefix="concealer-fuzz-") as work:
        for codec in args.codec:
            results = fuzz(codec, seeds, Path(work), args.frames, args.timeout, args.keep)
            counts = Counter(r.outcome for r in results)
            print(f"{codec}: {len(results)} cases: " + ", ".join(f"{counts[o]} {o.value}" for o in Outcome),
                  flush=True)
            for r in results:
                if r.outcome in (Outcome.CRASH, Outcome.HANG) or len(seeds) == 1:
                    print(f"  seed {r.seed} ({', '.join(r.corruptions)}): {r.outcome.value}: {r.detail.strip()}")
            errors = Counter(r.detail for r in results if r.outcome is Outcome.CLEAR_ERROR)
            for message, count in errors.most_common(5):
                print(f"  clear error x{count}: {message}")


if __name__ == "__main__":
    main()

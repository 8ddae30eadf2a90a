"""Opening inputs and writing outputs safely, with errors a user can act on."""
from __future__ import annotations

import contextlib
import io
import os
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.sidedata.sidedata import Type

from .errors import InputError, OutputError

# Top-level box types an MP4/MOV file starts with (ISO/IEC 14496-12).
ISO_BMFF_BOXES = (b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pdin", b"uuid")
# Demuxers of single pictures: FFmpeg opens a PNG or JPEG as a one-frame "video".
IMAGE_DEMUXERS = ("image2",)


def open_video_input(path: Path) -> av.container.InputContainer:
    """Open a media file that has a video stream, or raise InputError saying why not."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a video file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")
    try:
        # Damaged tags are not worth failing over: undecodable bytes in them become U+FFFD.
        container = av.open(str(path), metadata_errors="replace")
    except av.error.FFmpegError as exc:
        raise InputError(f"{path}: {_unreadable_reason(path, exc)}") from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if container.format.name in IMAGE_DEMUXERS or container.format.name.endswith("_pipe"):
        container.close()
        raise InputError(f"{path}: a still image, not a video")
    if not container.streams.video:
        container.close()
        raise InputError(f"{path}: not a video (no video stream in it)")
    if main_video(container).codec_context is None:
        container.close()
        raise InputError(f"{path}: its video is in a codec FFmpeg does not know (a damaged codec tag?)")
    return container


def _unreadable_reason(path: Path, exc: av.error.FFmpegError) -> str:
    """Why FFmpeg could not open `path`, in words: an MP4 cut short before its index gets its own message."""
    boxes = _iso_bmff_boxes(path)
    if boxes and b"moov" not in boxes:
        if boxes[-1] is None:  # the file ends inside a box
            return "the container is unreadable: the file was cut short before its index (the MP4 'moov' box)"
        return "the container is unreadable: its index (the MP4 'moov' box) is missing"
    return f"not a readable media file ({exc.strerror or exc})"


def _iso_bmff_boxes(path: Path) -> list[bytes | None]:
    """The top-level box types of an MP4/MOV file, None last when a box runs past the end; [] for other files."""
    boxes: list[bytes | None] = []
    size = path.stat().st_size
    with open(path, "rb") as fh:
        offset = 0
        while offset + 8 <= size:
            fh.seek(offset)
            header = fh.read(16)
            length, kind = int.from_bytes(header[:4], "big"), header[4:8]
            if not boxes and kind not in ISO_BMFF_BOXES:
                return []
            if length == 1 and len(header) == 16:
                length = int.from_bytes(header[8:16], "big")
            elif length == 0:
                length = size - offset
            if length < 8:
                break
            boxes.append(kind)
            offset += length
        if offset > size:
            boxes.append(None)
    return boxes


def main_video(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The video stream a player shows, as FFmpeg picks it (`av_find_best_stream`): a cover picture or a
    thumbnail track stored before the video itself loses to it."""
    return container.streams.best("video") or container.streams.video[0]


# Kinds of stream copied packet for packet beside the repaired video: sound, subtitles, timed data (timecode, KLV,
# GPS) and any other video (a cover picture, another camera angle), which goes out as it came in.
COPIED_TYPES = ("audio", "subtitle", "data", "video")
# Kinds an output must carry, or the run fails: a repair without its sound or subtitles is no repair.
REQUIRED_TYPES = ("audio", "subtitle")


@dataclass(frozen=True)
class StreamCopies:
    """What goes into an output beside the repaired video, as it came in."""

    streams: list[av.stream.Stream]  # copied packet for packet
    attachments: list[av.stream.Stream]  # Matroska attachments (fonts for styled subtitles), written into the header
    left_out: list[str]  # the others, which the output's format cannot hold (an iPhone's metadata tracks in MP4)


# Containers whose video packets FFmpeg's parser cuts from a byte stream (MPEG-TS, raw Annex B) rather than reads
# as stored samples (MP4, MKV): a picture whose first slice was lost rides there in the packet of the one before.
PARSED_FORMATS = ("mpegts", "h264", "hevc")


def parsed_packets(container: av.container.InputContainer) -> bool:
    """Whether the container's video packets are cut by FFmpeg's parser (PARSED_FORMATS)."""
    return container.format.name in PARSED_FORMATS


def _can_hold(format_name: str, stream: av.stream.Stream) -> bool:
    """Whether a container of `format_name` holds `stream` copied as it is (by `add_stream_copy`, as the output
    will): FFmpeg tells only when a header is written, so one is, to memory."""
    try:
        with av.open(io.BytesIO(), "w", format=format_name) as probe:
            if stream.type == "attachment":
                probe.add_attachment(stream.name, stream.mimetype, b"")
            else:
                add_stream_copy(probe, stream)
            probe.start_encoding()
    except (av.error.FFmpegError, OutputError):
        return False
    return True


def plan_copies(source: av.container.InputContainer, format_name: str) -> StreamCopies:
    """Every stream of `source` but its main video (the one repaired), for an output of `format_name`: sound and
    subtitles always (a format that refuses them fails the run, in `add_stream_copy`), the rest where the format
    holds them."""
    main = main_video(source).index
    streams, attachments, left_out = [], [], []
    for stream in source.streams:
        if stream.index == main or stream.type not in (*COPIED_TYPES, "attachment"):
            continue
        if stream.type in REQUIRED_TYPES or _can_hold(format_name, stream):
            (attachments if stream.type == "attachment" else streams).append(stream)
        else:
            left_out.append(f"{stream.type} stream {stream.index} ({getattr(stream, 'name', None) or 'unnamed'})")
    return StreamCopies(streams, attachments, left_out)


def is_copied(packet: av.Packet) -> bool:
    """Whether a demuxed packet of a copied stream goes into the output: those with a decoding time, and the
    picture of a cover-art stream, which has none (the empty packets that end each stream have none either)."""
    return packet.dts is not None or bool(packet.size and
                                          packet.stream.disposition & av.stream.Disposition.attached_pic)


def copy_attachments(copies: StreamCopies, sink: av.container.OutputContainer) -> None:
    """Put the planned attachments into the output whole."""
    for stream in copies.attachments:
        sink.add_attachment(stream.name, stream.mimetype, bytes(stream.data))


def frame_count(path: Path) -> int | None:
    """The number of frames the container says its video stream has, or None when it does not say."""
    with open_video_input(path) as container:
        return main_video(container).frames or None


def nominal_rate(stream: av.video.stream.VideoStream) -> Fraction:
    """The frame rate to encode at: the stream's average rate, else FFmpeg's guess, else 25."""
    return stream.average_rate or stream.guessed_rate or Fraction(25)


def rescale(value: int, source: Fraction, target: Fraction) -> int:
    """Rescale a timestamp between time bases, rounding half away from zero like av_rescale_q."""
    exact = Fraction(value) * source / target
    return int(exact + Fraction(1, 2)) if exact >= 0 else -int(-exact + Fraction(1, 2))


def require_folder_of(path: Path) -> None:
    """Raise OutputError unless the folder that `path` would be written in exists."""
    if not path.parent.is_dir():
        problem = "is not a folder" if path.parent.exists() else "does not exist"
        raise OutputError(f"{path}: {path.parent} {problem}")


class AtomicOutputs:
    """Write several output files so that all appear together or none does.

    Each output is written to a hidden temporary file in its target folder and
    renamed into place by `commit()`; leaving the context without committing
    (an error, Ctrl-C) deletes the temporaries.
    """

    def __init__(self, paths: list[Path], overwrite: bool, inputs: Sequence[Path | None] = ()):
        self.final = [Path(p) for p in paths]
        resolved = [p.resolve() for p in self.final]
        if len(set(resolved)) != len(resolved):
            raise OutputError("two outputs would be written to the same path: " +
                              ", ".join(str(p) for p in self.final))
        read = {Path(p).resolve() for p in inputs if p is not None}
        for path in self.final:
            if path.resolve() in read:
                raise OutputError(f"{path}: is also an input of this run; write the output somewhere else")
            if path.is_dir():
                raise OutputError(f"{path}: is a folder; give a file name")
            if path.exists() and not overwrite:
                raise OutputError(f"{path}: already exists (use --overwrite to replace it)")
            require_folder_of(path)
        token = secrets.token_hex(4)
        self.temporary: dict[Path, Path] = {}
        for path in self.final:
            # Creating the temporary now is the only reliable test that the folder takes new files
            # (permission bits say nothing for root, nor on read-only or special filesystems).
            temporary = path.with_name(f".{path.stem}.partial-{token}{path.suffix}")
            try:
                temporary.touch(exist_ok=False)
            except OSError as exc:
                self.discard()
                raise OutputError(f"{path}: cannot write in {path.parent} ({exc.strerror or exc})") from exc
            self.temporary[path] = temporary

    def __getitem__(self, path: Path) -> Path:
        return self.temporary[Path(path)]

    def commit(self) -> None:
        for path, temp in self.temporary.items():
            os.replace(temp, path)
        self.temporary = {}

    def discard(self) -> None:
        for temp in self.temporary.values():
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()

    def __enter__(self) -> AtomicOutputs:
        return self

    def __exit__(self, *exc_info) -> None:
        self.discard()


@contextlib.contextmanager
def open_output(path: Path, format: str | None = None, *, shown_as: Path | None = None,
                input_suffix: str = ".mkv") -> Iterator[av.container.OutputContainer]:
    """Open an output container, turning FFmpeg's refusals into OutputError about `shown_as` (the file the user
    named, where `path` is its AtomicOutputs temporary). A container that cannot hold a stream copied from the
    input is only found out when its header is written; the input's own kind of container (`input_suffix`) holds
    them all."""
    shown_as = shown_as or path
    try:
        container = av.open(str(path), "w", format=format)
    except (av.error.FFmpegError, ValueError) as exc:
        raise OutputError(f"{shown_as}: cannot write this container ({exc})") from exc
    try:
        yield container
        container.close()
    except av.error.FFmpegError as exc:
        raise OutputError(f"{shown_as}: the muxer refused the streams ({exc.strerror or exc}): this container cannot "
                          f"hold one the input carries; write a {input_suffix} instead") from exc
    finally:
        with contextlib.suppress(Exception):
            container.close()


# Tags about an encoding rather than the content (mkvmerge's statistics among them): a re-encoded
# stream must not inherit them.
ENCODING_TAGS = ("encoder", "duration", "bps", "number_of_frames", "number_of_bytes", "major_brand", "minor_version",
                 "compatible_brands")


def content_tags(metadata: dict[str, str]) -> dict[str, str]:
    """A file's or stream's tags less those about its encoding: language, title, handler and the like."""
    return {key: value for key, value in metadata.items()
            if key.lower() not in ENCODING_TAGS and not key.upper().startswith("_STATISTICS")}


def copy_stream_description(source: av.stream.Stream, target: av.stream.Stream) -> None:
    """Give an output stream the tags and disposition (default, forced, ...) of the input stream it carries."""
    target.metadata.update(content_tags(source.metadata))
    target.disposition = source.disposition


def add_stream_copy(container: av.container.OutputContainer, template: av.stream.Stream) -> av.stream.Stream:
    """An output stream for `template`'s packets, copied as they are, with its tags and disposition."""
    try:
        try:
            stream = container.add_stream_from_template(template)
        except av.codec.codec.UnknownCodecError:
            # PyAV looks for an encoder of the decoder's name, and libdav1d (AV1) has none: copy the
            # codec parameters without one.
            stream = container.add_stream_from_template(template, opaque=True)
    except ValueError as refused:  # the format cannot hold this codec (SRT subtitles in MP4, ...)
        raise OutputError(f"the output's {refused} (the input's {template.type} stream {template.index}, which is "
                          f"copied as it is): write a {Path(template.container.name).suffix or '.mkv'} instead") \
            from None
    copy_stream_description(template, stream)
    return stream


@dataclass(frozen=True)
class Colour:
    """How samples map to colours, as the input declares it (FFmpeg's enum values; 2 is unspecified)."""

    range: int
    matrix: int
    primaries: int
    transfer: int


@dataclass(frozen=True)
class VideoFormat:
    """What a re-encode of a file's main video stream must keep to look and play as the original did."""

    codec: str  # FFmpeg's decoder name (h264, hevc, vp9, ...)
    width: int
    height: int
    rate: Fraction  # nominal frame rate: the encoder's hint only, every frame keeps its own timestamp
    time_base: Fraction
    pix_fmt: str
    colour: Colour
    display_matrix: tuple[int, ...] | None  # the 3x3 rotation/flip matrix players apply, as FFmpeg stores it
    sample_aspect_ratio: Fraction | None
    tags: dict[str, str]  # the stream's content tags (language, title, handler)
    disposition: int
    reordered: bool = False  # pictures decode out of presentation order (B-frames)
    interlaced: bool = False  # pictures coded as fields or field macroblock pairs (its first decodable picture)


# Packets read to find the first decodable picture of a damaged stream.
PROBE_PACKETS = 300


def probe_video_format(path: Path) -> VideoFormat:
    """The format of the main video stream (`main_video`), taken from its first decodable picture where there is one:
    FFmpeg reports the rotation (a display matrix) on decoded frames only."""
    with open_video_input(path) as container:
        stream = main_video(container)
        context = stream.codec_context
        # Where the container states no size (MPEG-TS, raw streams) the first picture is looked for to the end.
        first = _first_picture(container, stream, PROBE_PACKETS if context.width and context.height else None)
        if first is None and not (context.width and context.height):
            raise nothing_decodes(path)
        described = first if first is not None else context
        matrix = first.side_data.get(Type.DISPLAYMATRIX) if first is not None else None
        return VideoFormat(
            # The picture's own size: a damaged container header can claim another (a fuzzed VP9 said 16736x288).
            codec=context.name, width=described.width, height=described.height, rate=nominal_rate(stream),
            time_base=stream.time_base,
            pix_fmt=first.format.name if first is not None else context.pix_fmt or "yuv420p",
            colour=Colour(int(described.color_range), int(described.colorspace), int(described.color_primaries),
                          int(described.color_trc)),
            display_matrix=tuple(int(v) for v in np.frombuffer(bytes(matrix), "<i4")) if matrix is not None else None,
            sample_aspect_ratio=stream.sample_aspect_ratio, tags=content_tags(stream.metadata),
            disposition=int(stream.disposition), reordered=bool(context.has_b_frames),
            interlaced=bool(first is not None and first.interlaced_frame))


def nothing_decodes(path: Path) -> InputError:
    """The error for a stream of which not one picture decodes."""
    return InputError(f"{path}: not one picture in it could be decoded, so there is nothing to repair (every "
                      "picture is predicted from a keyframe: did none arrive whole?)")


def _first_picture(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                   packets: int | None) -> av.VideoFrame | None:
    """The first picture decoded within the first `packets` packets (all of them: None)."""
    for number, packet in enumerate(container.demux(stream)):
        if number == packets:
            break
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            continue
        if frames:
            return frames[0]
    return None

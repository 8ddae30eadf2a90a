"""Opening inputs and writing outputs safely, with errors a user can act on."""
from __future__ import annotations

import contextlib
import os
import secrets
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av

from .errors import InputError, OutputError


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
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise InputError(f"{path}: not a readable media file ({exc.strerror or exc})") from exc
    if not container.streams.video:
        container.close()
        raise InputError(f"{path}: not a video (no video stream in it)")
    return container


def nominal_rate(stream: av.video.stream.VideoStream) -> Fraction:
    """The frame rate to encode at: the stream's average rate, else FFmpeg's guess, else 25."""
    return stream.average_rate or stream.guessed_rate or Fraction(25)


def rescale(value: int, source: Fraction, target: Fraction) -> int:
    """Rescale a timestamp between time bases, rounding half away from zero like av_rescale_q."""
    exact = Fraction(value) * source / target
    return int(exact + Fraction(1, 2)) if exact >= 0 else -int(-exact + Fraction(1, 2))


class AtomicOutputs:
    """Write several output files so that all appear together or none does.

    Each output is written to a hidden temporary file in its target folder and
    renamed into place by `commit()`; leaving the context without committing
    (an error, Ctrl-C) deletes the temporaries.
    """

    def __init__(self, paths: list[Path], overwrite: bool):
        self.final = [Path(p) for p in paths]
        resolved = [p.resolve() for p in self.final]
        if len(set(resolved)) != len(resolved):
            raise OutputError("two outputs would be written to the same path: " +
                              ", ".join(str(p) for p in self.final))
        for path in self.final:
            if path.exists() and not overwrite:
                raise OutputError(f"{path}: already exists (use --overwrite to replace it)")
            if not path.parent.is_dir():
                raise OutputError(f"{path}: folder {path.parent} does not exist")
            if not os.access(path.parent, os.W_OK):
                raise OutputError(f"{path}: folder {path.parent} is not writable")
        token = secrets.token_hex(4)
        self.temporary = {p: p.with_name(f".{p.stem}.partial-{token}{p.suffix}") for p in self.final}

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

    def __enter__(self) -> "AtomicOutputs":
        return self

    def __exit__(self, *exc_info) -> None:
        self.discard()


@contextlib.contextmanager
def open_output(path: Path, format: str | None = None) -> Iterator[av.container.OutputContainer]:
    """Open an output container, turning FFmpeg's refusals into OutputError."""
    try:
        container = av.open(str(path), "w", format=format)
    except (av.error.FFmpegError, ValueError) as exc:
        raise OutputError(f"{path}: cannot write this container ({exc})") from exc
    try:
        yield container
        container.close()
    except av.error.FFmpegError as exc:
        raise OutputError(f"{path}: the muxer refused the streams ({exc}); "
                          "try another container, e.g. .mkv") from exc
    finally:
        with contextlib.suppress(Exception):
            container.close()

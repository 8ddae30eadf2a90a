"""How close a repair (and the damaged stream it came from) is to the clean reference, frame by frame.

`make_report` decodes the reference and every input in step, matches each input frame to the
reference frame nearest in time (timestamps in seconds, so MP4's stream time base and Matroska's
milliseconds compare), and writes a folder a person can open: frames.csv, summary.json, psnr.png,
the worst frames side by side and an index.html that ties them together.

Conventions, also stated in the README:

* PSNR is on the raw 8-bit planes (limited range stays limited). Luma PSNR uses Y only, YUV PSNR
  pools the squared error of every Y, U and V sample. Identical frames have infinite PSNR: `inf` in
  frames.csv, `null` in summary.json (JSON has no infinity).
* Sequence PSNR comes from the mean MSE over the matched frames, not from the mean of frame PSNRs.
  The mean frame PSNR counts identical frames as 100 dB (x264's cap), so that one perfect frame does
  not make the mean infinite.
* A reference frame is missing from an input when no input frame lies within half a frame interval
  of it, or when the one there is a frame the input's decoder never got. Missing frames have no
  PSNR; they are listed, not folded into the means. Input frames that match no reference frame are
  listed as extra.
* The worst frames are REPAIRED's (the first input), shown as `reference | damaged | repaired`
  with the first DAMAGED input in the middle when one is given.
"""
from __future__ import annotations

import contextlib
import csv
import heapq
import html
import json
import math
import os
import secrets
import shutil
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from .concealment import Picture
from .decode import DecodedFrame, decode_frames, frame_duration
from .detection import MB
from .errors import InputError, OutputError, UsageError
from .media import main_video, nominal_rate, open_video_input, require_folder_of
from .metrics import frame_scores, json_safe, psnr
from .overlay import missing_frame_picture
from .truth import load_truth

PSNR_CAP_DB = 100.0  # what an identical frame counts as in the mean frame PSNR
OUTLINE = (255, 40, 40)
CAPTION_HEIGHT = 22


@dataclass(frozen=True)
class FrameRow:
    """One reference frame as one input has it: a row of frames.csv."""

    input: str
    frame: int  # index of the reference frame
    pts: int  # reference pts, in the reference stream's time base
    time: float  # seconds
    input_pts: int | None  # the matched input frame's pts in its own time base; None: missing
    psnr_y: float | None
    psnr_yuv: float | None
    ssim: float | None
    mse_y: float | None
    mse_yuv: float | None
    damaged_fraction: float | None  # share of damaged macroblocks; None without --truth/--masks

    @property
    def missing(self) -> bool:
        return self.psnr_y is None


@dataclass
class InputSummary:
    """One input against the reference, over the whole sequence."""

    label: str  # "repaired", "damaged", "damaged 2", ...
    path: str
    frames: int  # reference frames compared
    matched: int
    frames_affected: int  # matched frames whose luma differs from the reference
    sequence_psnr: float  # from the mean luma MSE
    sequence_psnr_yuv: float  # from the mean YUV MSE
    mean_psnr: float
    worst_psnr: float
    worst_psnr_frame: int
    mean_ssim: float
    worst_ssim: float
    worst_ssim_frame: int
    missing_frames: list[int] = field(default_factory=list)  # reference frame indices
    extra_frames: list[float] = field(default_factory=list)  # input frame times (s) no reference frame has


@dataclass(frozen=True)
class WorstFrame:
    """One of the repaired input's lowest-PSNR frames, and the picture written for it."""

    frame: int
    time: float
    psnr: float
    image: str  # file name inside the report folder


@dataclass
class ReportSummary:
    """What `make_report` wrote, and the numbers in it."""

    reference: str
    out_dir: str
    frames: int
    inputs: list[InputSummary]
    worst_frames: list[WorstFrame]
    damage_source: str | None  # "truth", "masks" or None
    damaged_frames: int | None  # reference frames with any damaged macroblock


def make_report(reference: Path, repaired: Path, out_dir: Path, *, damaged: Sequence[Path] = (),
                truth: Path | None = None, masks: Path | None = None, worst: int = 4,
                overwrite: bool = False) -> ReportSummary:
    """Compare REPAIRED (and any DAMAGED inputs) with REFERENCE, and write the report folder `out_dir`.

    The folder appears whole or not at all: it is built under a temporary sibling name and renamed
    into place. Decoding is streamed; only the `worst` lowest-PSNR frames' pictures are kept.
    """
    if worst < 0:
        raise UsageError(f"--worst must be 0 or more, not {worst}")
    if truth is not None and masks is not None:
        raise UsageError("give --truth or --masks, not both")
    width, height, half_interval = _probe(reference)
    for path in (repaired, *damaged):
        _probe(path)
    damage = _load_damage(truth, masks, (-(-height // MB), -(-width // MB)))
    inputs = [("repaired", Path(repaired))] + [
        (f"damaged {i + 1}" if len(damaged) > 1 else "damaged", Path(p)) for i, p in enumerate(damaged)]
    with _AtomicFolder(Path(out_dir), overwrite) as folder:
        frames, summaries, worst_frames, damaged_frames = _write_frames(Path(reference), inputs, folder,
                                                                        half_interval, damage, worst)
        summary = ReportSummary(str(reference), str(out_dir), frames, summaries, worst_frames,
                                "truth" if truth else "masks" if masks else None, damaged_frames)
        _write_json(folder / "summary.json", summary)
        _write_html(folder / "index.html", summary)
    return summary


def _write_frames(reference: Path, inputs: list[tuple[str, Path]], folder: Path, half_interval: Fraction,
                  damage: dict[int, np.ndarray] | None, worst: int
                  ) -> tuple[int, list[InputSummary], list[WorstFrame], int | None]:
    """Decode everything in step with the reference, writing frames.csv as it goes, then the plot and
    the worst frames: (reference frames, input summaries, worst frames, damaged frames)."""
    aligners = [_Aligner(decode_frames(path, repairs=False), half_interval) for _, path in inputs]
    stats = [_Stats(label, path) for label, path in inputs]
    kept: list[tuple[float, int, _WorstCandidate]] = []  # min-heap on MSE: the `worst` largest stay
    times: list[float] = []
    damaged_frames = 0
    with open(folder / "frames.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([f.name for f in fields(FrameRow)])
        for index, ref in enumerate(f for f in decode_frames(reference) if not f.missing):
            time = ref.pts * ref.time_base
            clean = Picture.from_frame(ref.picture)
            mb = damage.get(ref.pts) if damage is not None else None
            fraction = None if damage is None else float(mb.mean()) if mb is not None else 0.0
            damaged_frames += bool(fraction)
            matches = [aligner.match(time) for aligner in aligners]
            pictures = [None if m is None or m.missing else Picture.from_frame(m.picture) for m in matches]
            rows = []
            for (label, path), match, picture, stat in zip(inputs, matches, pictures, stats):
                row = _compare(label, index, ref, clean, match, picture, fraction, path)
                rows.append(row)
                stat.add(row)
                writer.writerow([_csv_value(getattr(row, f.name)) for f in fields(FrameRow)])
            times.append(float(time))
            subject = rows[0]
            if worst and not subject.missing and subject.mse_y > 0:
                middle = (_caption(rows[1]), pictures[1]) if len(rows) > 1 else (None, None)
                candidate = _WorstCandidate(subject, clean, pictures[0], *middle, mb)
                heapq.heappush(kept, (subject.mse_y, index, candidate))
                if len(kept) > worst:
                    heapq.heappop(kept)
    if not times:
        raise InputError(f"{reference}: no decodable frame in the reference")
    for aligner, stat in zip(aligners, stats):
        stat.extra.extend(aligner.finish())
    summaries = [stat.summary() for stat in stats]
    _plot(folder / "psnr.png", times, stats)
    worst_frames = [candidate.write(folder, rank)
                    for rank, (_, _, candidate) in enumerate(sorted(kept, key=lambda k: (-k[0], k[1])), 1)]
    return len(times), summaries, worst_frames, damaged_frames if damage is not None else None


def _probe(path: Path) -> tuple[int, int, Fraction]:
    """(width, height, half a frame interval in seconds), or InputError if `path` is not a video."""
    with open_video_input(path) as container:
        stream = main_video(container)
        ticks = frame_duration(stream)
        interval = ticks * stream.time_base if ticks else 1 / nominal_rate(stream)
        return stream.codec_context.width, stream.codec_context.height, interval / 2


def _load_damage(truth: Path | None, masks: Path | None, grid: tuple[int, int]) -> dict[int, np.ndarray] | None:
    """Damaged macroblocks by reference pts: a truth file's directly lost blocks (whole lost frames
    all damaged), or every block a `conceal detect` map labels (lost, propagated, missing frame)."""
    if truth is None and masks is None:
        return None
    source = Path(truth or masks)
    try:
        if truth is not None:
            doc, pts, mb = load_truth(source)
            damage = dict(zip(pts.tolist(), mb.astype(bool)))
            damage.update({int(p): np.ones(grid, dtype=bool) for p in doc.get("lost_frames", [])})
        else:
            with np.load(source) as maps:
                damage = dict(zip(maps["pts"].tolist(), maps["mb"].astype(bool)))
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        kind = "simulate-loss truth file" if truth is not None else "conceal detect masks file"
        raise InputError(f"{source}: not a readable {kind} ({exc})") from exc
    shapes = {m.shape for m in damage.values()} - {grid}
    if shapes:
        raise InputError(f"{source}: its macroblock maps are {shapes.pop()}, the reference's grid is {grid}")
    return damage


class _Aligner:
    """Matches an input's frames to reference times: the nearest frame within half a frame interval
    (a decoded picture before a lost-frame placeholder); every other decoded frame is extra."""

    def __init__(self, frames: Iterator[DecodedFrame], half_interval: Fraction):
        self._frames = frames
        self._next = next(frames, None)
        self._half = half_interval
        self._extra: list[float] = []

    def match(self, time: Fraction) -> DecodedFrame | None:
        best = None
        while self._next is not None and _seconds(self._next) < time + self._half:
            frame, self._next = self._next, next(self._frames, None)
            if _seconds(frame) < time - self._half:
                self._discard(frame)
                continue
            if best is None or _closeness(frame, time) < _closeness(best, time):
                frame, best = best, frame  # the one that lost is discarded
            if frame is not None:
                self._discard(frame)
        return best

    def finish(self) -> list[float]:
        """The extra frames' times, once the reference has ended (its remaining frames are extra)."""
        while self._next is not None:
            frame, self._next = self._next, next(self._frames, None)
            self._discard(frame)
        return self._extra

    def _discard(self, frame: DecodedFrame) -> None:
        if not frame.missing:
            self._extra.append(round(float(_seconds(frame)), 6))


def _seconds(frame: DecodedFrame) -> Fraction:
    return frame.pts * frame.time_base


def _closeness(frame: DecodedFrame, time: Fraction) -> tuple[bool, Fraction]:
    return frame.missing, abs(_seconds(frame) - time)


def _compare(label: str, index: int, ref: DecodedFrame, clean: Picture, match: DecodedFrame | None,
             picture: Picture | None, fraction: float | None, path: Path) -> FrameRow:
    """The metrics of one matched frame (or a missing-frame row)."""
    time = round(float(ref.pts * ref.time_base), 6)
    if picture is None:
        return FrameRow(label, index, ref.pts, time, None, None, None, None, None, None, fraction)
    if picture.y.shape != clean.y.shape:
        height, width = picture.y.shape
        raise InputError(f"{path}: its frames are {width}x{height}, the reference's are "
                         f"{clean.y.shape[1]}x{clean.y.shape[0]}; a report compares the same video")
    scores = frame_scores(picture, clean)
    return FrameRow(label, index, ref.pts, time, match.pts, scores.psnr_y, scores.psnr_yuv, scores.ssim,
                    scores.mse_y, scores.mse_yuv, fraction)


class _Stats:
    """Running totals of one input: what the summary needs, not the frames themselves."""

    def __init__(self, label: str, path: Path):
        self.label, self.path = label, path
        self.psnr: list[float] = []  # per reference frame, NaN where missing: the plot's line
        self.missing: list[int] = []
        self.extra: list[float] = []
        self._mse_y = self._mse_yuv = self._psnr_sum = self._ssim_sum = 0.0
        self._affected = 0
        self._worst_psnr: tuple[float, int] = (math.inf, -1)
        self._worst_ssim: tuple[float, int] = (math.inf, -1)

    def add(self, row: FrameRow) -> None:
        if row.missing:
            self.missing.append(row.frame)
            self.psnr.append(math.nan)
            return
        self.psnr.append(row.psnr_y)
        self._mse_y += row.mse_y
        self._mse_yuv += row.mse_yuv
        self._psnr_sum += min(row.psnr_y, PSNR_CAP_DB)
        self._ssim_sum += row.ssim
        self._affected += row.mse_y > 0
        self._worst_psnr = min(self._worst_psnr, (row.psnr_y, row.frame))
        self._worst_ssim = min(self._worst_ssim, (row.ssim, row.frame))

    def summary(self) -> InputSummary:
        matched = len(self.psnr) - len(self.missing)
        if not matched:
            raise InputError(f"{self.path}: none of its frames lines up in time with the reference's "
                             "(is it the same video?)")
        return InputSummary(self.label, str(self.path), len(self.psnr), matched, self._affected,
                            psnr(self._mse_y / matched), psnr(self._mse_yuv / matched), self._psnr_sum / matched,
                            *self._worst_psnr, self._ssim_sum / matched, *self._worst_ssim,
                            self.missing, self.extra)


@dataclass
class _WorstCandidate:
    """The pictures kept for one of the worst frames, until the end decides which stay."""

    row: FrameRow
    reference: Picture
    repaired: Picture
    damaged_caption: str | None  # None: no damaged input, no middle panel
    damaged: Picture | None  # None there: the damaged input lacks this frame
    mb: np.ndarray | None

    def write(self, folder: Path, rank: int) -> WorstFrame:
        """Write `reference | damaged | repaired` (damaged only when given), damage outlined."""
        height, width = self.reference.y.shape
        panels = [("reference", self.reference.to_rgb())]
        if self.damaged_caption is not None:
            picture = missing_frame_picture(height, width) if self.damaged is None else \
                _outline(self.damaged.to_rgb(), self.mb)
            panels.append((self.damaged_caption, picture))
        panels.append((_caption(self.row), _outline(self.repaired.to_rgb(), self.mb)))
        gap = np.full((height + CAPTION_HEIGHT, 4, 3), 255, np.uint8)
        columns = []
        for caption, rgb in panels:
            strip = np.full((CAPTION_HEIGHT, width, 3), 255, np.uint8)
            cv2.putText(strip, caption, (4, CAPTION_HEIGHT - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                        cv2.LINE_AA)
            columns += [np.vstack([strip, rgb]), gap]
        name = f"worst_{rank:02d}_frame{self.row.frame:05d}.png"
        if not cv2.imwrite(str(folder / name), cv2.cvtColor(np.hstack(columns[:-1]), cv2.COLOR_RGB2BGR)):
            raise OutputError(f"{folder / name}: could not be written")
        return WorstFrame(self.row.frame, self.row.time, self.row.psnr_y, name)


def _caption(row: FrameRow) -> str:
    return f"{row.input}  " + ("missing" if row.missing else f"{format_db(row.psnr_y)} dB")


def _outline(rgb: np.ndarray, mb: np.ndarray | None) -> np.ndarray:
    """Draw the border of the damaged macroblock region onto `rgb` (unchanged without a map)."""
    if mb is None or not mb.any():
        return rgb
    height, width = rgb.shape[:2]
    mask = np.kron(mb, np.ones((MB, MB), np.uint8))[:height, :width].astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    return cv2.drawContours(rgb.copy(), contours, -1, OUTLINE, 1)


def _plot(path: Path, times: list[float], stats: list[_Stats]) -> None:
    """Luma PSNR over time, one line per input; identical frames drawn on an "identical" line at the
    top, missing frames as crosses along the bottom."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    finite = [v for s in stats for v in s.psnr if math.isfinite(v)]
    top = (max(finite) if finite else 50.0) + 5
    bottom = (min(finite) if finite else 20.0) - 5
    figure = Figure(figsize=(9, 4), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    axes.axhline(top, color="0.6", linestyle=":", linewidth=1)
    axes.annotate("identical to the reference", (times[0], top), xytext=(2, 3), textcoords="offset points",
                  fontsize=8, color="0.4")
    for stat in stats:
        values = np.array([top if v == math.inf else v for v in stat.psnr])
        (line,) = axes.plot(times, values, linewidth=1.2, label=stat.label)
        if stat.missing:
            axes.plot([times[i] for i in stat.missing], [bottom] * len(stat.missing), "x", color=line.get_color(),
                      markersize=7, label=f"{stat.label}: missing frame")
    axes.set_ylim(bottom - 2, top + 4)
    axes.set_xlabel("time (s)")
    axes.set_ylabel("luma PSNR (dB)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.savefig(path)


def _csv_value(value) -> str:
    """Empty for a missing frame's metrics; floats in full (shortest round-trip), inf as "inf"."""
    return "" if value is None else str(value)


def _write_json(path: Path, summary: ReportSummary) -> None:
    doc = {"note": "PSNR in dB on raw 8-bit planes; null PSNR = infinite (identical to the reference); "
                   "sequence PSNR from the mean MSE of the matched frames; mean PSNR counts identical frames "
                   f"as {PSNR_CAP_DB:g} dB; missing_frames are reference frame indices, extra_frames input "
                   "frame times in seconds",
           **asdict(summary)}
    path.write_text(json.dumps(json_safe(doc), indent=1) + "\n")


def format_db(value: float) -> str:
    """A PSNR for people: two decimals, or "inf"."""
    return "inf" if value == math.inf else f"{value:.2f}"


def _write_html(path: Path, summary: ReportSummary) -> None:
    """One page, no scripts or outside resources: the summary table, the plot, the worst frames."""
    e = html.escape
    head = ["input", "file", "frames matched", "sequence PSNR Y / YUV (dB)", "mean / worst PSNR (dB)",
            "mean / worst SSIM", "frames affected", "missing", "extra"]
    rows = "".join(
        "<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in (
            s.label, s.path, f"{s.matched} / {s.frames}",
            f"{format_db(s.sequence_psnr)} / {format_db(s.sequence_psnr_yuv)}",
            f"{format_db(s.mean_psnr)} / {format_db(s.worst_psnr)} (frame {s.worst_psnr_frame})",
            f"{s.mean_ssim:.4f} / {s.worst_ssim:.4f} (frame {s.worst_ssim_frame})", s.frames_affected,
            ", ".join(map(str, s.missing_frames)) or "none", ", ".join(f"{t:g} s" for t in s.extra_frames) or "none"))
        + "</tr>" for s in summary.inputs)
    damage = "" if summary.damage_source is None else \
        f"<p>Damaged frames ({e(summary.damage_source)}): {summary.damaged_frames} of {summary.frames}.</p>"
    worst = "".join(
        f'<figure><img src="{e(w.image)}" alt="frame {w.frame}"><figcaption>frame {w.frame} at {w.time:.3f} s: '
        f"{format_db(w.psnr)} dB</figcaption></figure>" for w in summary.worst_frames) or \
        "<p>No frame of the repaired input differs from the reference.</p>"
    path.write_text(f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>conceal report: {e(Path(summary.reference).name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; }}
img {{ max-width: 100%; }}
figure {{ margin: 1em 0; }}
.note {{ color: #555; font-size: 0.85em; max-width: 60em; }}
</style></head><body>
<h1>conceal report</h1>
<p>Reference: <code>{e(summary.reference)}</code>, {summary.frames} frames.</p>
{damage}
<table><tr>{"".join(f"<th>{e(h)}</th>" for h in head)}</tr>{rows}</table>
<p class="note">PSNR on raw 8-bit planes; sequence PSNR from the mean MSE of the matched frames; the mean frame
PSNR counts identical frames as {PSNR_CAP_DB:g} dB. Frames are matched by time (nearest within half a frame
interval); missing frames are reference frame indices, extra frames are input frame times.
Per-frame numbers: <a href="frames.csv">frames.csv</a>; all of the above: <a href="summary.json">summary.json</a>.</p>
<h2>Luma PSNR over time</h2>
<img src="psnr.png" alt="luma PSNR over time">
<h2>Worst frames of the repaired input</h2>
<p class="note">Damaged macroblocks outlined in red when a truth file or damage map was given.</p>
{worst}
</body></html>
""")


class _AtomicFolder:
    """Build a folder under a hidden sibling name and rename it into place only when all went well."""

    def __init__(self, final: Path, overwrite: bool):
        if final.exists() and not final.is_dir():
            raise OutputError(f"{final}: exists and is not a folder")
        if final.is_dir() and any(final.iterdir()):
            if not overwrite:
                raise OutputError(f"{final}: folder exists and is not empty (use --overwrite to replace it)")
            if not all((final / name).is_file() for name in ("index.html", "summary.json")):
                raise OutputError(f"{final}: not a report folder; --overwrite only replaces an earlier report")
        final = final.absolute()
        require_folder_of(final)
        token = secrets.token_hex(4)
        self.final = final
        self.temporary = final.with_name(f".{final.name}.partial-{token}")
        self._old = final.with_name(f".{final.name}.old-{token}")

    def __enter__(self) -> Path:
        try:
            self.temporary.mkdir()
        except OSError as exc:
            raise OutputError(f"{self.final}: cannot create the report folder ({exc.strerror})") from exc
        return self.temporary

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is not None:
            shutil.rmtree(self.temporary, ignore_errors=True)
            return
        if self.final.exists():
            os.replace(self.final, self._old)
        os.replace(self.temporary, self.final)
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self._old)

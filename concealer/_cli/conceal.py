"""`conceal`: the CLI over the concealer pipeline (repair, `conceal detect`, `conceal report`)."""
from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from ..concealment import CONCEALERS, DEFAULT_CONCEALER
from ..detection import DETECTION_MODES
from ..encode import OUTPUT_CODECS
from ..media import frame_count
from ..pipeline import DRIFT_STRATEGIES, ConcealSummary, detect
from ..pipeline import conceal as conceal_video
from ..report import format_db, make_report
from . import run


class _RepairByDefault(click.Group):
    """`conceal INPUT -o OUTPUT` means `conceal repair INPUT -o OUTPUT`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["repair", *args]
        return super().parse_args(ctx, args)


DETECT_HELP = ("Where the damage map comes from: truth (a simulate-loss truth file), bitstream (the damaged stream "
               "itself), pixels (the decoded pictures alone: damage already baked into a re-encode), or auto "
               "(truth when --truth is given, else bitstream).")


@click.group(cls=_RepairByDefault, context_settings={"help_option_names": ["-h", "--help"]})
def conceal() -> None:
    """Find and repair the macroblocks that transmission errors destroyed in a video.

    \b
    conceal DAMAGED -o FIXED [options]     repair (see `conceal repair --help`)
    conceal detect DAMAGED --masks-out M   only map the damage
    conceal report REFERENCE REPAIRED [DAMAGED ...] -o DIR   measure a repair against the clean stream
    """


def _table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for row in rows:
        table.add_row(*row)
    return table


@conceal.command("repair")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Repaired video to write.")
@click.option("--model", type=click.Choice(CONCEALERS), default=DEFAULT_CONCEALER, show_default=True,
              help="How lost blocks are filled: flow moves the previous repaired picture along the optical flow "
                   "around them; ffmpeg keeps FFmpeg's own concealment.")
@click.option("--detect", "mode", type=click.Choice(DETECTION_MODES), default="auto", show_default=True,
              help=DETECT_HELP)
@click.option("--truth", type=click.Path(path_type=Path), help="simulate-loss truth file (.truth.json).")
@click.option("--drift", type=click.Choice(DRIFT_STRATEGIES), default="redecode", show_default=True,
              help="Damage spread by inter prediction: redecode the stream from the repairs (H.264 without "
                   "B-frames; elsewhere carry), carry corrections along the motion vectors (both also correct "
                   "back from the next keyframe), re-conceal it, or leave it.")
@click.option("--codec", type=click.Choice(OUTPUT_CODECS), default="h264", show_default=True)
@click.option("--crf", type=float, default=18, show_default=True)
@click.option("--preset", default="medium", show_default=True)
@click.option("--lossless", is_flag=True, help="Lossless output for evaluation (x264 qp 0, x265 lossless, FFV1).")
@click.option("--reference", type=click.Path(path_type=Path),
              help="The clean stream (same timestamps, e.g. simulate-loss --reference): every repaired frame is "
                   "scored against it (luma PSNR and SSIM, before re-encoding), decoded in step.")
@click.option("--report", type=click.Path(path_type=Path),
              help="Also write this JSON file: the summary and one row per frame (pts, time, damaged macroblocks "
                   "by kind, rebuilt or not, PSNR and SSIM with --reference); it appears with the video or not at all.")
@click.option("--threads", type=click.IntRange(min=1),
              help="CPU threads for the networks, OpenCV and the x264/x265 encoder [default: all cores]. Decoding "
                   "stays single-threaded: FFmpeg's H.264 error concealment needs it.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success (and no progress bar).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def repair_command(source, output, model, mode, truth, drift, codec, crf, preset, lossless, reference, report, threads,
                   overwrite, quiet, as_json):
    """Repair SOURCE into OUTPUT.

    A progress bar shows on a terminal (on stderr; never in a pipe), then a summary.
    """
    with _progress_bar(source, show=not quiet) as progress:
        summary = conceal_video(source, output, model=model, detect=mode, truth=truth, drift=drift, codec=codec,
                                crf=crf, preset=preset, lossless=lossless, reference=reference, report=report,
                                threads=threads, progress=progress, overwrite=overwrite)
    if as_json:
        click.echo(json.dumps(summary.as_json()))
    elif not quiet:
        Console().print(_table(f"conceal: {output}", _summary_rows(summary, report)))


def _summary_rows(summary: ConcealSummary, report: Path | None) -> list[tuple[str, str]]:
    blocks = summary.macroblocks
    rows = [("frames / damaged / rebuilt", f"{summary.frames} / {summary.damaged_frames} / {summary.frames_rebuilt}"),
            ("macroblocks lost / propagated / missing",
             f"{blocks['lost']} / {blocks['propagated']} / {blocks['missing_frame']}"),
            ("drift correction", summary.drift),
            ("time / speed", f"{summary.seconds:.1f} s / {summary.fps:.1f} frames/s")]
    if summary.psnr is not None:
        worst = f"{format_db(summary.worst_psnr)} dB at {summary.worst_time:.3f} s (pts {summary.worst_pts})"
        rows += [("luma PSNR (sequence) / mean SSIM", f"{format_db(summary.psnr)} dB / {summary.ssim:.4f}"),
                 ("worst frame", worst)]
        if summary.reference_unmatched:
            rows.append(("reference frames with no repaired frame",
                         f"{summary.reference_unmatched} (scored against the picture shown before them)"))
    if summary.streams_left_out:
        rows.append(("left out (the output's format cannot hold them)", ", ".join(summary.streams_left_out)))
    if report:
        rows.append(("report", str(report)))
    return rows


class _FramesPerSecond(ProgressColumn):
    """Frames per second since the start (rich's own estimate restarts when the total is raised)."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed
        text = f"{task.completed / elapsed:.1f} frames/s" if elapsed and task.completed else "? frames/s"
        return Text(text, style="progress.data.speed")


@contextlib.contextmanager
def _progress_bar(source: Path, show: bool) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on stderr while the repair runs, when stderr is a terminal; yields the callback that
    moves it (None: no bar). Its total is the container's frame count, raised when rebuilt frames pass it;
    without one the bar is indeterminate."""
    console = Console(stderr=True)
    if not show or not console.is_terminal:
        yield None
        return
    columns = (TextColumn("conceal"), BarColumn(), MofNCompleteColumn(), _FramesPerSecond(), TextColumn("ETA"),
               TimeRemainingColumn())
    total = frame_count(source)
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("conceal", total=total)

        def advance(done: int) -> None:
            bar.update(task, completed=done, total=None if total is None else max(total, done))

        yield advance


@conceal.command("detect")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--masks-out", type=click.Path(path_type=Path), required=True,
              help="Damage maps to write (.npz: pts, mb, label).")
@click.option("--overlay", type=click.Path(path_type=Path), help="Also write a video with the damage drawn on.")
@click.option("--detect", "mode", type=click.Choice(DETECTION_MODES), default="auto", show_default=True,
              help=DETECT_HELP)
@click.option("--truth", type=click.Path(path_type=Path), help="simulate-loss truth file (.truth.json).")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
def detect_command(source, masks_out, overlay, mode, truth, overwrite, quiet):
    """Map the damaged macroblocks of every frame of SOURCE."""
    summary = detect(source, masks_out, overlay=overlay, mode=mode, truth=truth, overwrite=overwrite)
    if quiet:
        return
    Console().print(_table(f"conceal detect: {source}", [
        ("frames / damaged / missing", f"{summary.frames} / {summary.damaged_frames} / {summary.missing_frames}"),
        ("macroblocks lost / propagated", f"{summary.macroblocks['lost']} / {summary.macroblocks['propagated']}"),
        ("masks", str(masks_out) + (f", overlay {overlay}" if overlay else ""))]))


@conceal.command("report")
@click.argument("reference", type=click.Path(path_type=Path))
@click.argument("repaired", type=click.Path(path_type=Path))
@click.argument("damaged", nargs=-1, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Report folder to write (frames.csv, summary.json, psnr.png, worst frames, index.html).")
@click.option("--truth", type=click.Path(path_type=Path),
              help="simulate-loss truth file (.truth.json): damaged-macroblock share per frame, outlines.")
@click.option("--masks", type=click.Path(path_type=Path),
              help="`conceal detect` damage maps (.npz), instead of --truth.")
@click.option("--worst", type=int, default=4, show_default=True, help="How many of REPAIRED's worst frames to show.")
@click.option("--overwrite", is_flag=True, help="Replace an existing report folder.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
def report_command(reference, repaired, damaged, output, truth, masks, worst, overwrite, quiet):
    """Compare REPAIRED (and DAMAGED inputs) with REFERENCE frame by frame, matched by time.

    The worst frames shown are REPAIRED's, beside the first DAMAGED input when one is given.
    """
    summary = make_report(reference, repaired, output, damaged=damaged, truth=truth, masks=masks, worst=worst,
                          overwrite=overwrite)
    if quiet:
        return
    table = Table(title=f"conceal report: {output / 'index.html'}", title_justify="left",
                  caption="luma PSNR (dB) of the sequence, mean / worst frame; mean SSIM",
                  caption_justify="left")
    for column in ("input", "frames", "PSNR", "mean / worst", "SSIM", "missing / extra"):
        table.add_column(column, justify="left" if column == "input" else "right", no_wrap=True)
    for s in summary.inputs:
        table.add_row(s.label, f"{s.matched} / {s.frames}", format_db(s.sequence_psnr),
                      f"{format_db(s.mean_psnr)} / {format_db(s.worst_psnr)}", f"{s.mean_ssim:.4f}",
                      f"{len(s.missing_frames)} / {len(s.extra_frames)}")
    Console().print(table)


main = run(conceal, "conceal")

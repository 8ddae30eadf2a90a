"""`conceal`: the CLI over the concealer pipeline (repair, `conceal detect`, `conceal report`)."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ..concealment import CONCEALERS
from ..detection import DETECTION_MODES
from ..encode import OUTPUT_CODECS
from ..pipeline import DRIFT_STRATEGIES
from ..pipeline import conceal as conceal_video
from ..pipeline import detect
from ..report import format_db, make_report
from . import run


class _RepairByDefault(click.Group):
    """`conceal INPUT -o OUTPUT` means `conceal repair INPUT -o OUTPUT`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["repair", *args]
        return super().parse_args(ctx, args)


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
@click.option("--model", type=click.Choice(CONCEALERS), default="ffmpeg", show_default=True,
              help="How damaged blocks are filled (ffmpeg: FFmpeg's own concealment only).")
@click.option("--detect", "mode", type=click.Choice(DETECTION_MODES), default="auto", show_default=True)
@click.option("--truth", type=click.Path(path_type=Path), help="simulate-loss truth file (.truth.json).")
@click.option("--drift", type=click.Choice(DRIFT_STRATEGIES), default="carry", show_default=True,
              help="Damage spread by inter prediction: carry corrections along the motion vectors, "
                   "re-conceal it, or leave it.")
@click.option("--codec", type=click.Choice(OUTPUT_CODECS), default="h264", show_default=True)
@click.option("--crf", type=float, default=18, show_default=True)
@click.option("--preset", default="medium", show_default=True)
@click.option("--lossless", is_flag=True, help="Lossless output for evaluation (x264 qp 0, x265 lossless, FFV1).")
@click.option("--reference", type=click.Path(path_type=Path), help="Clean decode to measure luma PSNR against.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def repair_command(source, output, model, mode, truth, drift, codec, crf, preset, lossless, reference, overwrite, quiet,
                   as_json):
    """Repair SOURCE into OUTPUT."""
    summary = conceal_video(source, output, model=model, detect=mode, truth=truth, drift=drift, codec=codec, crf=crf,
                            preset=preset, lossless=lossless, reference=reference, overwrite=overwrite)
    if as_json:
        click.echo(json.dumps({**asdict(summary), "fps": summary.fps}))
    elif not quiet:
        rows = [("frames / damaged / rebuilt", f"{summary.frames} / {summary.damaged_frames} / {summary.frames_rebuilt}"),
                ("macroblocks lost / propagated",
                 f"{summary.macroblocks['lost']} / {summary.macroblocks['propagated']}"),
                ("time / speed", f"{summary.seconds:.1f} s / {summary.fps:.1f} frames/s")]
        if summary.psnr is not None:
            rows.append(("luma PSNR vs reference", f"{summary.psnr:.2f} dB"))
        Console().print(_table(f"conceal: {output}", rows))


@conceal.command("detect")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--masks-out", type=click.Path(path_type=Path), required=True,
              help="Damage maps to write (.npz: pts, mb, label).")
@click.option("--overlay", type=click.Path(path_type=Path), help="Also write a video with the damage drawn on.")
@click.option("--detect", "mode", type=click.Choice(DETECTION_MODES), default="auto", show_default=True,
              help="Where the map comes from: a simulate-loss truth file, or the damaged bitstream itself.")
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

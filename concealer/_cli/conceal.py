"""`conceal`: the CLI over the concealer pipeline (`conceal detect` for now)."""
from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ..detection import DETECTION_MODES
from ..pipeline import detect
from . import run


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def conceal() -> None:
    """Find and repair the macroblocks that transmission errors destroyed in a video."""


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
    table = Table(title=f"conceal detect: {source}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("frames / damaged / missing", f"{summary.frames} / {summary.damaged_frames} / {summary.missing_frames}")
    table.add_row("macroblocks lost / propagated",
                  f"{summary.macroblocks['lost']} / {summary.macroblocks['propagated']}")
    table.add_row("masks", str(masks_out) + (f", overlay {overlay}" if overlay else ""))
    Console().print(table)


main = run(conceal, "conceal")

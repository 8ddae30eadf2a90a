"""`simulate-loss INPUT -o DAMAGED`: the CLI over concealer.simulate_loss."""
from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ..bitstream import Codec
from ..encode import EncoderSettings
from ..simulate import LossOptions, PacketisationOptions, SimulationResult, simulate_loss
from . import run


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "--output", "damaged", type=click.Path(path_type=Path), required=True,
              help="Damaged video to write (.mp4, .mkv; .ts with --transport ts).")
@click.option("--reference", type=click.Path(path_type=Path),
              help="Clean encoded stream to measure against [default: DAMAGED's stem + .reference].")
@click.option("--truth", type=click.Path(path_type=Path), help="Ground-truth JSON [default: DAMAGED.truth.json].")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@click.option("--as-is", is_flag=True,
              help="Damage the input's own H.264/HEVC/VP9/AV1 stream instead of re-encoding.")
@click.option("--transport", type=click.Choice(["rtp", "ts"]), default="rtp", show_default=True,
              help="rtp: one NAL unit per packet, FU-A fragments; ts: 188-byte TS packets, 7 per datagram.")
@click.option("--codec", type=click.Choice(["h264", "hevc", "vp9", "av1"]),
              help="Encoder in re-encode mode (libx264, libx265, libvpx-vp9, SVT-AV1) [default: what DAMAGED's name "
                   "holds: hevc for .hevc/.h265/.265, vp9 for .webm/.ivf, else h264].")
@click.option("--packet-size", type=int, default=1200, show_default=True,
              help="Bytes per network packet (x264 slice-max-size in re-encode mode).")
@click.option("--gop", type=int, help="Frames between keyframes, fixed [default: 2 seconds].")
@click.option("--crf", type=float, default=23, show_default=True)
@click.option("--preset", default="medium", show_default=True)
@click.option("--bframes", type=int, default=0, show_default=True)
@click.option("--interlaced", is_flag=True, help="Re-encode interlaced, top field first (H.264 MBAFF).")
@click.option("--bit-depth", type=click.Choice(["8", "10"]), default="8", show_default=True,
              help="Re-encode in 8 or 10 bits (H.264 High 10, HEVC Main 10).")
@click.option("--slices", type=int, default=6, show_default=True, help="Slices per picture (HEVC only).")
@click.option("--model", type=click.Choice(["bernoulli", "gilbert"]), default="gilbert", show_default=True,
              help="Channel model.")
@click.option("--loss-rate", type=float, default=0.05, show_default=True, help="Packet loss probability.")
@click.option("--burst", type=float, default=2.0, show_default=True, help="Mean loss-burst length (gilbert).")
@click.option("--pattern", type=click.Path(path_type=Path), help="Replay a 0/1 loss pattern file instead.")
@click.option("--bit-error-rate", type=float, default=0.0, show_default=True,
              help="Probability that a slice payload bit starts an error.")
@click.option("--byte-burst", type=int, default=0, help="Each bit error overwrites this many bytes instead.")
@click.option("--protect-params/--no-protect-params", default=True, show_default=True,
              help="Keep SPS/PPS/VPS NAL units safe from damage.")
@click.option("--protect-first-idr", is_flag=True, help="Keep the first picture intact.")
@click.option("--damage-audio", is_flag=True, help="Lose audio packets too.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
def simulate_loss_command(source, damaged, reference, truth, overwrite, as_is, transport, codec, packet_size, gop,
                          crf, preset, bframes, interlaced, bit_depth, slices, model, loss_rate, burst, pattern,
                          bit_error_rate, byte_burst, protect_params, protect_first_idr, damage_audio, seed, quiet):
    """Damage SOURCE the way a lossy network does and write the ground truth beside it."""
    loss = LossOptions(model=model, loss_rate=loss_rate, burst=burst, pattern=pattern,
                       bit_error_rate=bit_error_rate, byte_burst=byte_burst, protect_params=protect_params,
                       protect_first_idr=protect_first_idr, damage_audio=damage_audio, seed=seed)
    encoder = EncoderSettings(codec=Codec(codec or codec_for(damaged)), crf=crf, preset=preset, gop=gop,
                              bframes=bframes, interlaced=interlaced, bit_depth=int(bit_depth))
    packets = PacketisationOptions(as_is=as_is, transport=transport, packet_size=packet_size, encoder=encoder,
                                   hevc_slices=slices)
    result = simulate_loss(source, damaged, reference=reference, truth=truth, loss=loss, packets=packets,
                           overwrite=overwrite)
    if not quiet:
        Console().print(summary_table(result))


# Output names that hold one codec only (raw streams, WebM's and IVF's video): re-encoded in it unless told otherwise,
# where H.264 used to be tried and refused by the muxer ("choose another container").
CODEC_OF_SUFFIX = {".hevc": "hevc", ".h265": "hevc", ".265": "hevc", ".webm": "vp9", ".ivf": "vp9"}


def codec_for(damaged: Path) -> str:
    """The codec a re-encode into `damaged` uses by default, from its name."""
    return CODEC_OF_SUFFIX.get(damaged.suffix.lower(), "h264")


def summary_table(result: SimulationResult) -> Table:
    s = result.summary
    table = Table(title=f"simulate-loss: {result.damaged}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("loss model", s.model)
    table.add_row("loss rate requested / effective", f"{s.requested_loss_rate:.2%} / {s.effective_loss_rate:.2%}")
    table.add_row("packets sent / lost", f"{s.packets_sent} / {s.packets_lost}")
    table.add_row("mean burst length", f"{s.mean_burst_length:.2f}")
    table.add_row("bursts by length", ", ".join(f"{k}:{v}" for k, v in sorted(s.burst_histogram.items())) or "-")
    table.add_row("frames hit / lost entirely / total", f"{s.frames_hit} / {s.frames_lost} / {s.frames}")
    table.add_row("slices lost / corrupted", f"{s.slices_lost} / {s.slices_corrupted}")
    if s.bits_corrupted:
        table.add_row("bit errors", str(s.bits_corrupted))
    if s.audio_packets_lost:
        table.add_row("audio packets lost", str(s.audio_packets_lost))
    if result.streams_left_out:
        table.add_row("left out (the output's format cannot hold them)", ", ".join(result.streams_left_out))
    table.add_row("reference / truth", f"{result.reference} / {result.truth}")
    return table


main = run(simulate_loss_command, "simulate-loss")

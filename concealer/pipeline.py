"""One-call library API over the stages, used by the CLI, the tests and the benchmarks."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .detection import DamageLabel, DamageMap, detect_damage, write_damage_maps
from .errors import UsageError
from .media import AtomicOutputs, nominal_rate, open_output, open_video_input
from .overlay import OverlayWriter


@dataclass
class DetectionSummary:
    frames: int = 0
    damaged_frames: int = 0
    missing_frames: int = 0
    macroblocks: dict[str, int] = field(default_factory=lambda: {"lost": 0, "propagated": 0})

    def add(self, damage: DamageMap) -> None:
        self.frames += 1
        if damage.labels.size and (damage.labels == DamageLabel.MISSING_FRAME).all():
            self.missing_frames += 1
        elif damage.damaged.any():
            self.damaged_frames += 1
        self.macroblocks["lost"] += int(np.count_nonzero(damage.labels == DamageLabel.LOST))
        self.macroblocks["propagated"] += int(np.count_nonzero(damage.labels == DamageLabel.PROPAGATED))


def detect(source: Path, masks_out: Path, *, overlay: Path | None = None, mode: str = "auto",
           truth: Path | None = None, overwrite: bool = False) -> DetectionSummary:
    """Write the damage maps of `source` (and optionally a video with them drawn on)."""
    if Path(masks_out).suffix != ".npz":
        raise UsageError(f"--masks-out must name an .npz file, not {masks_out}")
    with open_video_input(source) as probe:
        stream = probe.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        rate, time_base = nominal_rate(stream), stream.time_base
    summary = DetectionSummary()
    maps: list[DamageMap] = []
    with AtomicOutputs([masks_out] + ([overlay] if overlay else []), overwrite) as outputs, \
            contextlib.ExitStack() as stack:
        writer = None
        if overlay:
            writer = OverlayWriter(stack.enter_context(open_output(outputs[overlay])), width, height, rate, time_base)
        for damaged in detect_damage(source, mode=mode, truth=truth):
            maps.append(damaged.damage)
            summary.add(damaged.damage)
            if writer:
                writer.write(damaged)
        if writer:
            writer.close()
        stack.close()
        write_damage_maps(maps, outputs[masks_out])
        outputs.commit()
    return summary

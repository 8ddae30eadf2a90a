"""Ground truth of a simulated loss: what was destroyed, where, and the channel's statistics.

Written beside the damaged video as `<damaged>.truth.json` (events, summary) and
`<damaged>.truth.npz` (per-frame maps of the directly lost 16x16 macroblocks).
"""
from __future__ import annotations

import io
import json
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

TRUTH_VERSION = 1


@dataclass(frozen=True)
class LossEvent:
    """One thing the channel did to one network packet.

    `byte_range` is [start, end) inside the NAL unit (0 = its header), so it is
    independent of how the container frames NAL units. `slice_range` is the
    [first, end) slice address range, in blocks of `block_size` luma pixels
    (16x16 macroblocks for H.264, CTUs for HEVC), of the slice the event destroyed; in
    H.264 MBAFF pictures (the truth's video `macroblock_pairs`) a block is a vertical
    pair of macroblocks, 16 wide and 32 tall.
    """

    kind: str  # "lost" (packet never arrived) or "bit-error" (arrived corrupted)
    stream: str  # "video" or "audio"
    packet: int  # index of the network packet (RTP packet or TS datagram) in its stream
    frame_pts: int  # pts of the access unit, in the damaged file's stream time base
    nal_index: int | None = None  # position of the NAL unit in its access unit
    nal_type: int | None = None
    byte_range: tuple[int, int] | None = None
    slice_range: tuple[int, int] | None = None
    block_size: int | None = None
    bit_offsets: tuple[int, ...] = ()  # flipped/overwritten bits, relative to the NAL start


@dataclass
class LossSummary:
    """Channel statistics: the requested and the effective loss, and where it landed."""

    model: str
    requested_loss_rate: float
    packets_sent: int = 0  # packets that went through the lossy channel
    packets_lost: int = 0
    burst_histogram: dict[int, int] = field(default_factory=dict)
    frames: int = 0
    frames_hit: int = 0
    frames_lost: int = 0
    slices_lost: int = 0
    slices_corrupted: int = 0
    bits_corrupted: int = 0
    audio_packets_lost: int = 0

    @property
    def effective_loss_rate(self) -> float:
        return self.packets_lost / self.packets_sent if self.packets_sent else 0.0

    @property
    def mean_burst_length(self) -> float:
        bursts = sum(self.burst_histogram.values())
        return sum(k * v for k, v in self.burst_histogram.items()) / bursts if bursts else 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["burst_histogram"] = {str(k): v for k, v in sorted(self.burst_histogram.items())}
        out["effective_loss_rate"] = self.effective_loss_rate
        out["mean_burst_length"] = self.mean_burst_length
        return out


@dataclass
class GroundTruth:
    """Everything `simulate-loss` knows about the damage it made."""

    video: dict  # codec, width, height, time_base, mode, transport, paths
    options: dict
    summary: LossSummary
    events: list[LossEvent]
    lost_frames: list[int]  # pts of frames of which nothing decodable arrived
    mb_pts: np.ndarray  # (N,) int64: frames with directly lost macroblocks
    mb_lost: np.ndarray  # (N, ceil(H/16), ceil(W/16)) bool

    def write(self, json_path: Path, npz_path: Path, npz_name: str) -> None:
        """Write the sidecars; `npz_name` is the maps' final file name, which the JSON refers to."""
        doc = {
            "version": TRUTH_VERSION,
            "video": self.video,
            "options": self.options,
            "summary": self.summary.to_dict(),
            "lost_frames": self.lost_frames,
            "macroblock_maps": npz_name,
            "events": [_event_dict(e) for e in self.events],
        }
        with open(json_path, "w") as fh:
            json.dump(doc, fh, indent=1)
        write_npz(npz_path, pts=self.mb_pts.astype(np.int64), mb=self.mb_lost.astype(bool))


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Like np.savez_compressed, but byte-identical for identical arrays (fixed zip timestamps)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asanyarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())


def _event_dict(event: LossEvent) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(event).items()
            if v is not None and v != ()}


def truth_paths(damaged: Path, truth: Path | None = None) -> tuple[Path, Path]:
    """The sidecar paths: `<damaged>.truth.json` unless given, and the .npz beside it."""
    json_path = Path(truth) if truth else Path(damaged).with_name(Path(damaged).name + ".truth.json")
    stem = json_path.name[:-5] if json_path.name.endswith(".json") else json_path.name
    return json_path, json_path.with_name(stem + ".npz")


def load_truth(json_path: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    """Read a sidecar back: (document, pts, macroblock maps)."""
    json_path = Path(json_path)
    doc = json.loads(json_path.read_text())
    with np.load(json_path.with_name(doc["macroblock_maps"])) as maps:
        return doc, maps["pts"], maps["mb"]

"""The networks (inpainting, and the pixels-only damage detector) and their shipped weights.

Each model's weights ship inside the package as safetensors (no pickle), with their
metadata beside the tensors: version, the training config and the measured metrics,
the way torchvision's weights API describes its models.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InputError
from .context_encoder import ContextEncoder
from .damage_net import PixelDamageNet
from .temporal import TemporalInpainter

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
WEIGHTS_VERSION = 1


@dataclass(frozen=True)
class Weights:
    """One shipped set of weights and what is known about it."""

    name: str
    path: Path
    metadata: dict

    @property
    def config(self) -> dict:
        """The training config, including the model's constructor arguments under "model"."""
        return self.metadata.get("config", {})

    @property
    def metrics(self) -> dict:
        """What was measured on held-out data when these weights were written."""
        return self.metadata.get("metrics", {})


def save_weights(model: torch.nn.Module, path: Path, metadata: dict, half: bool = True) -> None:
    """Write a model's weights (fp16 by default) with its metadata as safetensors."""
    from safetensors.torch import save_file
    tensors = {k: (v.half() if half and v.is_floating_point() else v).contiguous()
               for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={"concealer": json.dumps({**metadata, "version": WEIGHTS_VERSION})})


def read_weights(path: Path) -> tuple[dict, dict]:
    """(tensors, metadata) of a weights file, or InputError saying why it cannot be used."""
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = json.loads((handle.metadata() or {}).get("concealer", "null"))
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (OSError, SafetensorError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable concealer weights file ({exc})") from exc
    if not isinstance(metadata, dict) or metadata.get("version") != WEIGHTS_VERSION:
        raise InputError(f"{path}: weights of an unknown version (this concealer reads version {WEIGHTS_VERSION})")
    return tensors, metadata


# Each shipped network and the class its weights fit.
ARCHITECTURES: dict[str, type[torch.nn.Module]] = {
    "context-encoder": ContextEncoder,
    "context-encoder-l2": ContextEncoder,
    "temporal": TemporalInpainter,
    "pixel-detector": PixelDamageNet,
}


def load_network(name: str, path: Path | None = None) -> tuple[torch.nn.Module, Weights]:
    """A shipped network (or the weights at `path`) ready for inference, with what is known about it."""
    path = Path(path or WEIGHTS_DIR / f"{name}.safetensors")
    if not path.exists():
        raise InputError(f"the {name} weights are not installed ({path} is missing)")
    tensors, metadata = read_weights(path)
    weights = Weights(name, path, metadata)
    model = ARCHITECTURES[name](**weights.config.get("model", {}))
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()})
    except RuntimeError as exc:
        raise InputError(f"{path}: the weights do not fit the {name} model ({exc})") from exc
    # Channels-last memory (NHWC) suits oneDNN's CPU convolutions: per forward pass at 640x368, the pixel detector
    # took 8.7 ms instead of 25.9, a batch of 64 temporal windows 0.57 s instead of 0.79 (context-encoder alike),
    # with the same outputs (to 5e-7).
    return model.to(memory_format=torch.channels_last).eval(), weights

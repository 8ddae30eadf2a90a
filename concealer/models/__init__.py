"""Inpainting networks and their shipped weights.

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
        return self.metadata["config"]


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


def load_context_encoder(path: Path) -> tuple[ContextEncoder, dict]:
    tensors, metadata = read_weights(path)
    model = ContextEncoder(**metadata["config"].get("model", {}))
    try:
        model.load_state_dict({k: v.float() for k, v in tensors.items()})
    except RuntimeError as exc:
        raise InputError(f"{path}: the weights do not fit the model ({exc})") from exc
    return model.eval(), metadata

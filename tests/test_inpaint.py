"""inpaint_image on real images: known pixels untouched, holes filled, weights loaded safely."""
import json

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from concealer import inpaint_image
from concealer.errors import InputError, UsageError
from concealer.inpaint import INPAINT_MODELS
from concealer.models import WEIGHTS_DIR, load_network, read_weights
from conftest import DATA


def set5_image():
    path = DATA / "images" / "Set5"
    if not path.exists():
        pytest.skip(f"{path} not found: these tests need ../shared/data beside the checkout")
    return cv2.cvtColor(cv2.imread(str(sorted(path.glob("*.png"))[0])), cv2.COLOR_BGR2RGB)


SHIPPED = [m for m in INPAINT_MODELS if m in ("telea", "ns") or (WEIGHTS_DIR / f"{m}.safetensors").exists()]


@pytest.mark.parametrize("model", SHIPPED)
def test_known_pixels_are_unchanged_and_the_hole_is_filled(model):
    image = set5_image()[:200, :260]
    mask = np.zeros(image.shape[:2], bool)
    mask[48:112, 96:176] = True  # a run of macroblocks, wider than one 64x64 tile
    mask[150:166, 0:32] = True
    out = inpaint_image(image, mask, model=model)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert np.array_equal(out[~mask], image[~mask])
    assert not np.array_equal(out[mask], np.zeros_like(image[mask]))
    # Better than leaving the hole black, and close to the real content on average.
    assert np.mean(np.abs(out[mask].astype(int) - image[mask])) < np.mean(image[mask].astype(int))


def test_bad_arguments_are_clear_errors():
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(UsageError):
        inpaint_image(image, np.zeros((16, 16), bool), model="telea")
    with pytest.raises(UsageError):
        inpaint_image(image.astype(np.float32), np.zeros((32, 32), bool), model="telea")
    with pytest.raises(UsageError):
        inpaint_image(image, np.zeros((32, 32), bool), model="nope")


def test_corrupt_or_foreign_weights_are_clear_errors(tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(InputError, match="not a readable"):
        read_weights(garbage)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"concealer": json.dumps({"version": 99})})
    with pytest.raises(InputError, match="version"):
        read_weights(foreign)
    no_metadata = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(no_metadata))
    with pytest.raises(InputError, match="version"):
        load_network("context-encoder", no_metadata)

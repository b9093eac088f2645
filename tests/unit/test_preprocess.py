"""The eval preprocessing on uint8 tensors is timm's resize and centre crop, to within a level of rounding."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from ris.embed.lightning import EmbeddingModule
from ris.embed.preprocess import TensorResizeCrop, eval_transform

GRAY = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
CONFIGS = {
    "mobilenet": {"input_size": (3, 224, 224), "interpolation": "bicubic", "crop_pct": 0.875, "crop_mode": "center"},
    "no-crop bilinear": {"input_size": (3, 224, 224), "interpolation": "bilinear", "crop_pct": 1.0,
                         "crop_mode": "center"},
    "resnet50 a1": {"input_size": (3, 288, 288), "interpolation": "bicubic", "crop_pct": 0.95, "crop_mode": "center"},
    "inception": {"input_size": (3, 299, 299), "interpolation": "bicubic", "crop_pct": 0.875, "crop_mode": "center"},
    "squash": {"input_size": (3, 224, 224), "interpolation": "bicubic", "crop_pct": 0.875, "crop_mode": "squash"},
}
SIZES = [(300, 200), (200, 300), (640, 480), (100, 60), (257, 256), (1600, 1200)]


def _photo(width: int, height: int, seed: int) -> Image.Image:
    """Smooth random content (upsampled noise), like a photo's, where resampling differences would show."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(height // 8, 2), max(width // 8, 2), 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.BILINEAR)


@pytest.mark.parametrize("name", CONFIGS)
def test_tensor_preprocessing_matches_timms_pil_transform_to_rounding(name: str):
    config = {**CONFIGS[name], **GRAY}
    ours = eval_transform(config)
    timms = timm.data.create_transform(**config, is_training=False, use_prefetcher=True)
    assert isinstance(ours, TensorResizeCrop)
    for seed, (width, height) in enumerate(SIZES):
        image = _photo(width, height, seed)
        expected, got = timms(image), ours(image)
        assert got.dtype == torch.uint8 and got.shape == expected.shape == (3, *config["input_size"][1:])
        difference = (got.int() - expected.int()).abs()
        assert difference.max() <= 2, f"{name} {width}x{height}: {difference.max()} levels apart"
        assert difference.float().mean() < 0.2


def test_pipelines_it_cannot_translate_run_timms_own_transform():
    config = {"input_size": (3, 224, 224), "interpolation": "bicubic", "crop_pct": 0.9, "crop_mode": "border", **GRAY}
    ours = eval_transform(config)
    assert not isinstance(ours, TensorResizeCrop)
    image = _photo(300, 200, 0)
    assert torch.equal(ours(image), timm.data.create_transform(**config, use_prefetcher=True)(image))


@pytest.mark.parametrize("interpolation", ["box", "hamming", "lanczos"])
def test_interpolations_torch_cannot_resize_tensors_with_stay_with_timms_pil_transform(interpolation: str):
    config = {"input_size": (3, 64, 64), "interpolation": interpolation, "crop_pct": 0.875, "crop_mode": "center",
              **GRAY}
    ours = eval_transform(config)
    assert not isinstance(ours, TensorResizeCrop)
    image = _photo(120, 90, 1)
    assert torch.equal(ours(image), timm.data.create_transform(**config, use_prefetcher=True)(image))


def test_scaled_output_is_what_the_model_makes_of_uint8_batches_bit_for_bit():
    config = {**CONFIGS["mobilenet"], **GRAY}
    images = [_photo(320, 240, seed) for seed in range(3)]
    uint8 = torch.stack([eval_transform(config)(image) for image in images])
    scaled = torch.stack([eval_transform(config, scaled=True)(image) for image in images])
    assert scaled.dtype == torch.float32
    identity = EmbeddingModule(torch.nn.Identity(), normalize=False, mean=config["mean"], std=config["std"])
    assert torch.equal(identity(uint8), scaled)

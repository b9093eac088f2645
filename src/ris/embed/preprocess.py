"""Evaluation preprocessing: timm's resize and centre crop, computed on uint8 tensors instead of PIL images.

timm's eval transform resizes with PIL. On this project's 2-core machine that resize was about 1.2 of the 2.2 ms
an image costs before the model, paid out of the cores the model needs. torch's antialiased uint8 resize on an
image laid out channels-last (NHWC) does the same job in about 0.2 ms. The pixels differ from PIL's by rounding
(on Caltech101, a mean of 0.004 levels, at most 2 of 255), so the embeddings are the same to about 1e-3.

The sizes, interpolation and crop are read from timm's own transform for the model, so they follow timm. A
pipeline of one resize and one centre crop is translated (``crop_mode`` "center" with square inputs, and
"squash"); any other ("border", ``crop_border_pixels``, "center" with non-square inputs) runs timm's PIL transform
as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import timm
import torch
from PIL import Image
from timm.data.transforms import MaybePILToTensor
from torchvision import transforms
from torchvision.transforms.v2 import functional

PREPROCESSING_VERSION = 2
"""Bump when :func:`eval_transform` computes any pixel differently: it is part of every extractor key, so cached
embeddings of the old preprocessing are not reused. (1 was timm's PIL transform.)"""


class TensorResizeCrop:
    """Resize the short side (or both sides) of an RGB image, then crop its centre, on a uint8 NHWC tensor.

    Returns a uint8 CHW tensor, as timm's transform does with ``use_prefetcher=True``.
    """

    def __init__(self, size: int | Sequence[int], crop: Sequence[int],
                 interpolation: transforms.InterpolationMode) -> None:
        self.size = size if isinstance(size, int) else list(size)
        self.crop = list(crop)
        self.interpolation = interpolation

    def __call__(self, image: Image.Image) -> torch.Tensor:
        # PIL's pixels are H x W x 3 already: viewed as 1 x 3 x H x W they are channels-last (NHWC) without a copy,
        # which is the layout torch's uint8 antialiased kernels are fast in (4-5x over NCHW on this CPU).
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None]
        pixels = functional.resize(pixels, self.size, interpolation=self.interpolation, antialias=True)
        return functional.center_crop(pixels, self.crop)[0].contiguous()

    def __repr__(self) -> str:
        return f"TensorResizeCrop(size={self.size}, crop={self.crop}, interpolation={self.interpolation.value})"


TENSOR_INTERPOLATIONS = frozenset({transforms.InterpolationMode.NEAREST, transforms.InterpolationMode.NEAREST_EXACT,
                                   transforms.InterpolationMode.BILINEAR, transforms.InterpolationMode.BICUBIC})


def eval_transform(data_config: dict[str, Any], *, scaled: bool = False) -> Callable[[Image.Image], torch.Tensor]:
    """The model's evaluation preprocessing, RGB image in, CHW tensor out.

    Args:
        data_config: timm's data config for the model (input size, interpolation, crop, mean, std).
        scaled: False gives uint8 pixels, to be scaled and normalised batched on the model's device
            (:class:`ris.embed.lightning.EmbeddingModule` with ``mean`` and ``std``); True gives float tensors
            normalised by ``mean`` and ``std``, for modules that take normalised input.
    """
    reference = timm.data.create_transform(**data_config, is_training=False, use_prefetcher=True)
    steps = list(getattr(reference, "transforms", []))
    translatable = (len(steps) == 3 and isinstance(steps[0], transforms.Resize) and steps[0].max_size is None
                    and isinstance(steps[1], transforms.CenterCrop) and isinstance(steps[2], MaybePILToTensor)
                    # torch resizes tensors with these only (PIL's BOX, HAMMING and LANCZOS stay with PIL)
                    and steps[0].interpolation in TENSOR_INTERPOLATIONS)
    uint8 = TensorResizeCrop(steps[0].size, steps[1].size, steps[0].interpolation) if translatable else reference
    return Normalized(uint8, data_config["mean"], data_config["std"]) if scaled else uint8


class Normalized:
    """A uint8 transform followed by scaling to [0, 1] and normalising, with the same float32 operations in the
    same order as :class:`ris.embed.lightning.EmbeddingModule` applies to uint8 batches (so both give the same
    bits). A class rather than a closure so that DataLoader workers can be spawned with it."""

    def __init__(self, uint8: Callable[[Image.Image], torch.Tensor], mean: Sequence[float],
                 std: Sequence[float]) -> None:
        self.uint8 = uint8
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.uint8(image).to(torch.float32).div_(255).sub_(self.mean).div_(self.std)

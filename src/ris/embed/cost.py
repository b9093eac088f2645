"""What a backbone costs to run, whatever its weights: parameters and floating-point operations per image."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class ModelCost:
    """A model's size and its work for one image at ``input_size`` (channels, height, width)."""

    parameters: int
    gflops: float  # 10^9 floating-point operations, a multiply-add counted as two (so about 2x "GMACs")
    input_size: tuple[int, int, int]

    def as_dict(self) -> dict:
        return {"parameters": self.parameters, "gflops": self.gflops, "input_size": list(self.input_size)}


def model_cost(model: torch.nn.Module, input_size: tuple[int, int, int]) -> ModelCost:
    """Count ``model``'s parameters and, with torch's own FLOP counter, the operations of one forward pass.

    The counter sees matrix products and convolutions (what dominates every backbone); element-wise work such as
    activations and normalisation is left out, as in the published figures.
    """
    channels, height, width = (int(size) for size in input_size)
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, channels, height, width))
    model.train(was_training)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    return ModelCost(parameters, counter.get_total_flops() / 1e9, (channels, height, width))


def architecture_cost(model_name: str, input_size: tuple[int, int, int]) -> ModelCost:
    """:func:`model_cost` of timm's ``model_name`` as a pooled feature extractor, built without its weights (the
    count does not depend on them, and nothing is downloaded)."""
    import timm  # slow to import: only the callers that measure need it

    return model_cost(timm.create_model(model_name, pretrained=False, num_classes=0), input_size)

"""The fine-tuned model store: the whole embedding model (each member's backbone with its trained blocks and its
projection, and the pretrained backbone where the model blends it in) as safetensors, and a description of what it is and how it was
trained, checked on load.

Self-contained on purpose: the searcher, the service and MLflow load it without the pretrained weights file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import timm
import torch
from safetensors.torch import load_file, save_file

from ris.artifacts import REBUILD, ArtifactError, read_description, write_description
from ris.embed.pooling import set_global_pool
from ris.finetune.model import FineTunedMember, FineTunedModel, projection_head
from ris.locks import locked
from ris.paths import atomic_folder

MODEL_FILE = "model.safetensors"
HISTORY_FILE = "history.csv"
META_FILE = "meta.json"
FORMAT = "ris.finetuned"
FORMAT_VERSION = 2  # 2: the model's members (an ensemble of one or more fine-tunes)


@dataclass
class FineTunedStore:
    """A fine-tuned model and its description: ``model`` (timm name), ``pretrained`` (the weights it started from),
    ``preprocessing``, ``features_key`` (the pretrained features it was trained against), ``training`` and
    ``recipe``, the members' count and projection's shape, and the selection (each member's best epoch and val
    MAP@R, and the members' val MAP@R together)."""

    model: FineTunedModel
    meta: dict[str, Any]
    history: pd.DataFrame

    @property
    def key(self) -> str:
        return str(self.meta["key"])

    def save(self, folder: Path) -> None:
        """Write the store into ``folder`` atomically (a staging folder renamed into place)."""
        with atomic_folder(folder) as staging:
            state = {name: tensor.detach().contiguous() for name, tensor in self.model.state_dict().items()}
            save_file(state, staging / MODEL_FILE, metadata={"format": FORMAT, "key": self.key})
            self.history.to_csv(staging / HISTORY_FILE, index=False)
            write_description(staging / META_FILE, FORMAT, FORMAT_VERSION, self.meta)

    @classmethod
    def load(cls, folder: Path, expect: dict[str, Any] | None = None, remedy: str = REBUILD) -> FineTunedStore:
        """Open a store: the timm architecture is created without weights, and every tensor must fit it exactly.

        Raises:
            ArtifactError: missing, damaged, another format, or its description differs from ``expect``.
        """
        with locked(folder, exclusive=False):
            meta = read_description(folder / META_FILE, FORMAT, FORMAT_VERSION, remedy)
            for key, value in (expect or {}).items():
                if meta.get(key) != value:
                    raise ArtifactError(f"{folder} holds a model with {key} {meta.get(key)!r}, expected {value!r}: "
                                        f"{remedy}")
            try:
                state = load_file(folder / MODEL_FILE)
                history = pd.read_csv(folder / HISTORY_FILE)
            except (OSError, ValueError, RuntimeError) as error:
                raise ArtifactError(f"{folder}: cannot read the model or its history ({error}): {remedy}") from error
        try:
            model = build_model(meta)
        except KeyError as error:
            raise ArtifactError(f"{folder / META_FILE} does not say {error}: {remedy}") from error
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            first = str(error).splitlines()[0]
            raise ArtifactError(f"{folder / MODEL_FILE} does not fit {meta['model']} ({first}): {remedy}") from error
        return cls(model.eval(), meta, history)


def build_model(meta: dict[str, Any]) -> FineTunedModel:
    """The untrained architecture a store describes: ``members`` times a timm backbone without weights and a
    projection of its shape, and the pretrained backbone where the model blends it in."""
    members = [FineTunedMember(model_with_pool(meta),
                               projection_head(meta["backbone_dim"], meta["embedding_dim"], meta["hidden_dim"]),
                               normalize_pooled=meta["normalize_pooled"]) for _ in range(int(meta["members"]))]
    weight = float(meta["pretrained_weight"])
    pretrained = model_with_pool(meta).eval() if weight else None
    return FineTunedModel(members, pretrained=pretrained, pretrained_weight=weight)


def model_with_pool(meta: dict[str, Any]) -> torch.nn.Module:
    """The timm architecture without weights, with the global pooling the backbone was extracted with (null: the
    model's own)."""
    model = timm.create_model(meta["model"], pretrained=False, num_classes=0)
    pool = meta["pool"]
    return model if pool is None else set_global_pool(model, pool, float(meta["gem_p"]))

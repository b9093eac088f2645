"""Where a backbone's pretrained weights come from: a local file, a weights folder, or the model hub."""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import timm

from ris.config import BackboneConfig
from ris.errors import UserFacingError

log = logging.getLogger("ris.embed")

WEIGHTS_DIR_ENV = "RIS_WEIGHTS_DIR"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
HUB_URL = "https://huggingface.co"
RANDOM_INIT_SEED = 0


class WeightsUnavailableError(UserFacingError, RuntimeError):
    """No source of pretrained weights can be reached; the message says what to provide."""


@dataclass(frozen=True)
class WeightsSource:
    """``kind`` is ``file``, ``hub`` or ``random``; ``identity`` keys the feature store (file hash or hub id);
    ``model`` is the timm name to create, with the weights' pretrained tag where timm knows it (its preprocessing
    is then the one those weights were trained with)."""

    kind: str
    identity: str
    model: str
    file: Path | None = None


def _file_identity(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def find_in_weights_dir(folder: Path, model_name: str) -> Path | None:
    """A file named ``<model>.<suffix>`` or ``<model>.<tag>.<suffix>`` in ``folder`` (exact name first)."""
    candidates = [path for path in sorted(folder.iterdir()) if path.suffix in WEIGHT_SUFFIXES
                  and (path.stem == model_name or path.name.startswith(f"{model_name}."))]
    exact = [path for path in candidates if path.stem == model_name]
    return (exact or candidates or [None])[0]


def tagged_model_name(model_name: str, weights_file: Path) -> str:
    """``arch.tag`` when ``weights_file`` is named ``arch.tag.<suffix>`` and timm knows that pretrained tag.

    A torchvision-trained ResNet-50 file (``resnet50.tv_in1k.safetensors``) then gets ``resnet50.tv_in1k``'s
    preprocessing (bilinear, crop 0.875) instead of the default tag's (``a1_in1k``: bicubic, crop 0.95).
    """
    parts = weights_file.name.split(".")
    if "." in model_name or len(parts) < 3 or parts[0] != model_name:
        return model_name
    tagged = f"{model_name}.{parts[1]}"
    return tagged if tagged in timm.list_pretrained(tagged) else model_name


def _file_source(path: Path, model_name: str) -> WeightsSource:
    model = tagged_model_name(model_name, path)
    if model == model_name and "." not in model_name and len(path.name.split(".")) >= 3:
        log.info("timm knows no pretrained tag named like %s: using %s's default preprocessing", path.name, model)
    return WeightsSource("file", _file_identity(path), model, path)


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the model hub answers (through any configured proxy), within ``timeout_s``."""
    endpoint = os.environ.get("HF_ENDPOINT", HUB_URL)
    try:
        with urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout_s):
            return True
    except urllib.error.HTTPError:
        return True  # it answered
    except (OSError, ValueError):
        return False


def _hub_cached(model_name: str) -> bool:
    """True when the hub weights are already in the local Hugging Face cache (usable offline)."""
    from huggingface_hub import try_to_load_from_cache

    pretrained_cfg = timm.models.get_pretrained_cfg(model_name)
    hub_id = pretrained_cfg.hf_hub_id if pretrained_cfg else None
    if not hub_id:
        return False
    for filename in ("model.safetensors", "pytorch_model.bin"):
        if isinstance(try_to_load_from_cache(hub_id, filename), str):
            return True
    return False


def resolve_weights(cfg: BackboneConfig, environ: Mapping[str, str] = os.environ) -> WeightsSource:
    """Pick the weights source, failing at once with instructions when none is available.

    Raises:
        WeightsUnavailableError: pretrained weights were asked for, but no file, folder or reachable hub has them.
    """
    if not cfg.pretrained:
        return WeightsSource("random", f"random-init:seed{RANDOM_INIT_SEED}", cfg.name)
    if cfg.weights_file:
        path = Path(cfg.weights_file).expanduser()
        if not path.is_file():
            raise WeightsUnavailableError(f"backbone.weights_file={path} does not exist")
        return _file_source(path, cfg.name)
    weights_dir = cfg.weights_dir or environ.get(WEIGHTS_DIR_ENV)
    if weights_dir:
        found = find_in_weights_dir(Path(weights_dir).expanduser(), cfg.name) if Path(weights_dir).is_dir() else None
        if found is not None:
            return _file_source(found, cfg.name)
        log.warning("no %s.* weights file in %s; trying the model hub", cfg.name, weights_dir)
    online = environ.get("HF_HUB_OFFLINE") != "1" and _hub_reachable()
    if online or _hub_cached(cfg.name):
        pretrained_cfg = timm.models.get_pretrained_cfg(cfg.name)
        hub_id = pretrained_cfg.hf_hub_id or pretrained_cfg.url if pretrained_cfg else cfg.name
        return WeightsSource("hub", f"hub:{hub_id}", cfg.name)
    raise WeightsUnavailableError(
        f"pretrained weights for backbone '{cfg.name}' are not available: the model hub cannot be reached and "
        f"no local copy was given. Provide one of: backbone.weights_file=<path to a timm weights file>, "
        f"backbone.weights_dir=<folder with {cfg.name}.<tag>.safetensors> (or env {WEIGHTS_DIR_ENV}), "
        f"or backbone.pretrained=false for random weights.")


def create_backbone(source: WeightsSource) -> timm.models.nn.Module:
    """The timm model with its classifier removed (``num_classes=0``: pooled embeddings), in eval mode.

    Random weights are drawn from a fixed seed (without touching the caller's random state), so that the same
    key always means the same embeddings, as with any other weights source.
    """
    import torch

    overlay = {"file": str(source.file)} if source.file else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        model = timm.create_model(source.model, pretrained=source.kind != "random", num_classes=0,
                                  pretrained_cfg_overlay=overlay)
    return model.eval()

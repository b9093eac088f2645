"""Fine-tune a backbone on the split's train images, select the checkpoint on its val images (val MAP@R), under
`Trainer.fit`. Which images train is decided here, once, by :func:`training_rows`: no val or test image, and for
the ``unseen-classes`` training no image of the classes it will be evaluated on, ever reaches a training batch."""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import timm
import torch
from pytorch_lightning.accelerators import CUDAAccelerator
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from torch import nn

from ris.config import FinetuneConfig
from ris.embed.extract import ExtractionPlan
from ris.embed.lightning import LightningProgress
from ris.embed.store import FeatureSet
from ris.evaluate.protocols import unseen_classes
from ris.embed.preprocess import eval_transform
from ris.finetune.activations import cached_activations
from ris.finetune.backbone_split import split_backbone
from ris.finetune.data import CachedRows, FineTuneData, ImageRows
from ris.finetune.losses import create_loss
from ris.finetune.model import (FineTunedMember, FineTunedModel, L2Normalize, blend_embeddings,
                                 ensemble_embeddings, projection_head)
from ris.finetune.module import VAL_METRIC, FineTuneModule, retrieval_scores
from ris.progress import on_terminal

log = logging.getLogger("ris.finetune")


@dataclass(frozen=True)
class TrainingRows:
    """Feature-store rows a training fits on (``train``) and selects its checkpoint on (``val``), and the classes
    it learns (class id = position)."""

    training: str
    train: np.ndarray
    val: np.ndarray
    classes: list[str]

    def targets(self, labels: np.ndarray, rows: np.ndarray) -> np.ndarray:
        position = {name: index for index, name in enumerate(self.classes)}
        return np.array([position[name] for name in labels[rows]], dtype=np.int64)


def training_rows(training: str, labels: np.ndarray, splits: np.ndarray) -> TrainingRows:
    """``heldout``: the split's train (fit) and val (selection) images of every class. ``unseen-classes``: the same,
    of the first half of the classes only (:func:`ris.evaluate.protocols.unseen_classes`).

    Raises:
        ValueError: no train or no val image is left.
    """
    if training == "heldout":
        classes = np.unique(labels)
    elif training == "unseen-classes":
        classes, _ = unseen_classes(labels)
    else:
        raise ValueError(f"unknown training {training!r}")
    learned = np.isin(labels, classes)
    train, val = np.flatnonzero(learned & (splits == "train")), np.flatnonzero(learned & (splits == "val"))
    if not len(train) or not len(val):
        raise ValueError(f"the {training} training has {len(train)} train and {len(val)} val images; it needs both "
                         "(data.split.val must be above 0)")
    if (np.unique(labels[val], return_counts=True)[1] < 2).all():
        raise ValueError(f"no class has two val images for the {training} training, so val MAP@R (which selects the "
                         "checkpoint) is undefined: give data.split.val a larger share")
    return TrainingRows(training, train, val, [str(name) for name in classes])


@dataclass
class MemberResult:
    """One member's training: the module as trained (it embeds what the recipe's inputs are), its curves (one row
    per epoch: epoch, train/loss, val/map_at_r, val/precision_at_1) and its selected epoch."""

    seed: int
    module: FineTuneModule
    history: pd.DataFrame
    best_epoch: int
    best_val_map_at_r: float
    seconds: float

    def summary(self) -> dict:
        return {"seed": self.seed, "best_epoch": self.best_epoch, "epochs_run": len(self.history),
                "best_val_map_at_r": self.best_val_map_at_r, "train_seconds": self.seconds}


@dataclass
class FineTuneResult:
    """The selected model, its members' trainings, and what they trained on."""

    model: FineTunedModel
    members: list[MemberResult]
    inputs: np.ndarray | None  # the cached matrix the members' modules embed (None when they read images)
    rows: TrainingRows
    best_val_map_at_r: float  # the model's fine-tuned embedding on val (the members' together)
    device: str
    precision: str

    @property
    def history(self) -> pd.DataFrame:
        """Every member's curves, one row per member and epoch (``member`` is its position)."""
        return pd.concat([member.history.assign(member=position) for position, member in enumerate(self.members)],
                         ignore_index=True)

    @property
    def seconds(self) -> float:
        return sum(member.seconds for member in self.members)


def training_precision(cfg: FinetuneConfig) -> str:
    """``auto``: mixed precision on a GPU, full precision on a CPU."""
    if cfg.precision != "auto":
        return cfg.precision
    return "16-mixed" if torch.cuda.is_available() and cfg.accelerator in ("auto", "gpu", "cuda") else "32-true"


def finetune(plan: ExtractionPlan, features: FeatureSet, splits: np.ndarray, training: str, cfg: FinetuneConfig,
             *, images_dir: Path, activation_cache: Path, progress: bool = True) -> FineTuneResult:
    """Fine-tune ``plan.model`` (the pretrained backbone that made ``features``) with the recipe ``cfg``:
    ``cfg.members`` trainings, from seeds ``cfg.seed``, ``cfg.seed + 1``, ..., each on its own copy of the backbone
    (``plan.model`` is left as it was).

    Each member keeps the epoch whose val MAP@R was best (early stopping ends its run after ``cfg.patience`` epochs
    without a better one; the selection looks at the fine-tuned embedding alone, before any blend with the
    pretrained one).
    """
    labels = features.labels
    rows = training_rows(training, labels, splits)
    pretrained = frozen_copy(plan.model) if cfg.pretrained_weight else None
    inputs: np.ndarray | None = None
    if cfg.depth == "head":  # the stored embeddings are the frozen backbone's output
        inputs = features.embeddings
    elif cfg.depth == "blocks" and cfg.inputs == "cached":  # computed once, for every member
        trunk, _ = split_backbone(copy.deepcopy(plan.model), plan.backbone.tail_from or "",
                                  tuple(plan.data_config["input_size"]))
        inputs = cached_activations(plan, trunk, plan.backbone.tail_from or "", images_dir, activation_cache,
                                    progress=progress).activations
    data = training_data(plan, features, rows, inputs, cfg, images_dir)
    precision = training_precision(cfg)
    trained: list[tuple[FineTunedMember, MemberResult]] = []
    device = "cpu"
    for position in range(cfg.members):
        member, result, device = train_member(plan, rows, data, int(features.meta["dim"]), inputs is not None,
                                              training, cfg, precision, seed=cfg.seed + position, progress=progress)
        trained.append((member, result))
    model = FineTunedModel([member for member, _ in trained], pretrained=pretrained,
                           pretrained_weight=cfg.pretrained_weight).eval()
    members = [result for _, result in trained]
    if len(members) == 1:
        best_val = members[0].best_val_map_at_r
    else:  # the members' embeddings together, on the val images that selected each one's epoch
        val_embeddings = ensemble_embeddings([torch.from_numpy(embed_batches(member.module, data.val_dataloader()))
                                              for member in members]).numpy()
        best_val = retrieval_scores(val_embeddings, rows.targets(labels, rows.val))["map_at_r"]
        log.info("the %d members together: val MAP@R %.4f", len(members), best_val)
    return FineTuneResult(model, members, inputs, rows, best_val, device, precision)


def training_data(plan: ExtractionPlan, features: FeatureSet, rows: TrainingRows, inputs: np.ndarray | None,
                  cfg: FinetuneConfig, images_dir: Path) -> FineTuneData:
    """Train and val batches: rows of the cached ``inputs``, or images (timm's training augmentation for train)."""
    labels = features.labels
    train_targets, val_targets = rows.targets(labels, rows.train), rows.targets(labels, rows.val)
    if inputs is not None:
        return FineTuneData(CachedRows(inputs, rows.train, train_targets, hflip=cfg.hflip),
                            CachedRows(inputs, rows.val, val_targets), cfg.batch_size, num_workers=0)
    augment = timm.data.create_transform(**plan.data_config, is_training=True, hflip=0.5 if cfg.hflip else 0.0,
                                         auto_augment=cfg.auto_augment)
    evaluate = eval_transform(plan.data_config, scaled=True)
    paths = np.array([images_dir / path for path in features.rows["path"]], dtype=object)
    return FineTuneData(ImageRows(paths[rows.train], train_targets, augment),
                        ImageRows(paths[rows.val], val_targets, evaluate), cfg.batch_size, cfg.num_workers)


def train_member(plan: ExtractionPlan, rows: TrainingRows, data: FineTuneData, width: int, cached: bool,
                 training: str, cfg: FinetuneConfig, precision: str, *, seed: int,
                 progress: bool) -> tuple[FineTunedMember, MemberResult, str]:
    """Train one member from ``seed`` on a copy of the pretrained backbone (whose embeddings are ``width`` wide):
    the member (the whole backbone with its trained part, and the projection), its training, and the device it ran
    on."""
    pl.seed_everything(seed, workers=True)  # here, so that each member starts the same whatever ran before it
    backbone = copy.deepcopy(plan.model)
    if cfg.depth == "head":
        trunk, tail = nn.Identity(), (L2Normalize() if plan.backbone.normalize else nn.Identity())
    elif cfg.depth == "blocks":
        trunk, tail = split_backbone(backbone, plan.backbone.tail_from or "", tuple(plan.data_config["input_size"]))
        if cached:
            trunk = nn.Identity()
    else:  # full: every layer trains, on images
        trunk, tail = nn.Identity(), backbone
    projection = projection_head(width, cfg.embedding_dim, cfg.hidden_dim)
    loss = create_loss(cfg.loss.name, len(rows.classes), cfg.embedding_dim or width, cfg.loss.params)
    module = FineTuneModule(trunk, tail, projection, loss, lr=cfg.lr, backbone_lr=cfg.backbone_lr,
                            weight_decay=cfg.weight_decay, warmup_epochs=cfg.warmup_epochs,
                            hparams={"training": training, "depth": cfg.depth, "inputs": cfg.inputs,
                                     "loss": cfg.loss.name, "classes": len(rows.classes), "seed": seed,
                                     "train_images": len(rows.train), "val_images": len(rows.val)})
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ris-finetune-") as scratch:
        best = ModelCheckpoint(dirpath=scratch, monitor=VAL_METRIC, mode="max", save_top_k=1, save_weights_only=True)
        title = f"fine-tune {plan.backbone.name} ({training}{f', seed {seed}' if cfg.members > 1 else ''})"
        trainer = pl.Trainer(accelerator=cfg.accelerator, devices=1, precision=precision, max_epochs=cfg.epochs,
                             callbacks=[best, EarlyStopping(VAL_METRIC, mode="max", patience=cfg.patience),
                                        *([LightningProgress(title)] if progress else [])],
                             logger=CSVLogger(scratch, name="curves"), enable_progress_bar=progress and on_terminal(),
                             enable_model_summary=False, num_sanity_val_steps=0, deterministic=False)
        device = torch.cuda.get_device_name() if isinstance(trainer.accelerator, CUDAAccelerator) else "cpu"
        log.info("fine-tuning %s (%s, %s inputs, %s loss, seed %d) for %s: %d train / %d val images, %d classes, "
                 "on %s", plan.backbone.name, cfg.depth, cfg.inputs, cfg.loss.name, seed, training, len(rows.train),
                 len(rows.val), len(rows.classes), device)
        # The copied backbone is in eval mode (as extraction left it) and Lightning keeps each module's mode, so
        # the trained part must be put in training mode here: its batch norm statistics then follow the
        # fine-tuning data, and dropout/drop-path act (the trunk stays in eval mode: see Trunk).
        module.train()
        trainer.fit(module, datamodule=data)
        history = epoch_history(Path(trainer.logger.log_dir) / "metrics.csv")
        module.load_state_dict(torch.load(best.best_model_path, map_location="cpu", weights_only=True)["state_dict"])
    module.cpu().eval()
    seconds = time.perf_counter() - started
    best_row = history.loc[history[VAL_METRIC].idxmax()]
    log.info("best val MAP@R %.4f at epoch %d of %d (%.1f s)", best_row[VAL_METRIC], best_row["epoch"],
             len(history), seconds)
    normalize_pooled = cfg.depth == "head" and plan.backbone.normalize
    member = FineTunedMember(backbone.cpu().eval(), projection, normalize_pooled=normalize_pooled)
    return member, MemberResult(seed, module, history, int(best_row["epoch"]), float(best_row[VAL_METRIC]),
                                seconds), device


def frozen_copy(model: nn.Module) -> nn.Module:
    """An untrainable copy of ``model`` in eval mode (the pretrained backbone a fine-tuned model blends in)."""
    copied = copy.deepcopy(model).eval()
    for parameter in copied.parameters():
        parameter.requires_grad_(False)
    return copied


def epoch_history(metrics_csv: Path) -> pd.DataFrame:
    """Lightning's CSV log folded to one row per epoch (training and validation are logged on separate rows)."""
    table = pd.read_csv(metrics_csv)
    folded = table.drop(columns=["step"], errors="ignore").groupby("epoch", as_index=False).first()
    return folded.sort_values("epoch").reset_index(drop=True)


@torch.inference_mode()
def embed_cached(module: FineTuneModule, inputs: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The fine-tuned embedding of every row of the cached ``inputs`` (exactly what the model gives their images)."""
    module.eval()
    parts = [module(torch.from_numpy(np.array(inputs[start:start + batch_size], dtype=np.float32))).numpy()
             for start in range(0, len(inputs), batch_size)]
    return np.concatenate(parts).astype(np.float32)


@torch.inference_mode()
def embed_batches(module: FineTuneModule, batches: Iterable) -> np.ndarray:
    """The fine-tuned embedding of every ``(inputs, targets)`` batch (a val loader's), in order."""
    module.eval()
    return np.concatenate([module(inputs).float().numpy() for inputs, _ in batches]).astype(np.float32)


def embed_collection_cached(result: FineTuneResult, pretrained: np.ndarray) -> np.ndarray:
    """What ``result.model`` gives every row of its cached inputs: the members' fine-tuned embeddings together,
    blended with the rows' ``pretrained`` embeddings (the extraction's output for the same images) where the model
    blends them in."""
    if result.inputs is None:
        raise ValueError("this fine-tune read images, not cached inputs: embed the images with result.model")
    inputs = result.inputs
    finetuned = ensemble_embeddings([torch.from_numpy(embed_cached(member.module, inputs))
                                     for member in result.members])
    if result.model.pretrained is None:
        return finetuned.numpy()
    blended = blend_embeddings(finetuned, torch.from_numpy(np.asarray(pretrained, np.float32)),
                               result.model.pretrained_weight)
    return blended.numpy()

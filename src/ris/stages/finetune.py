"""DVC stage `finetune` (one per `finetune.trainings` entry): fine-tune the backbone on the split's train images,
re-embed the collection with it, and compare it with the pretrained backbone on the same queries.

Writes the fine-tuned model, the collection's fine-tuned features and the ``search.index`` entry built over them
(what `ris search --finetuned` uses), the comparison and the training curves, and one MLflow run for the training
(params, per-epoch curves, final metrics, the model as an MLflow model) plus one per protocol, beside the grid's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict

import numpy as np

from ris.artifacts import ArtifactError
from ris.checks import check_registries
from ris.config import FINETUNE_TRAININGS, NO_RERANK, Config
from ris.data.catalog import image_root, read_image_table
from ris.data.split import read_splits
from ris.embed.extract import embed_images, plan_extraction
from ris.embed.store import FeatureSet, load_features, save_features
from ris.finetune.evaluate import compare
from ris.finetune.losses import check_loss
from ris.finetune.model import L2Normalize
from ris.finetune.store import FineTunedStore
from ris.finetune.train import FineTuneResult, embed_collection_cached, finetune
from ris.index.store import IndexStore
from ris.paths import PipelinePaths, atomic_folder, write_json_atomic, write_text_atomic
from ris.stages._common import Done, load_stage_config, stage_main, timed
from ris.tracking import flatten, git_commit, log_run

log = logging.getLogger("ris.stages")


def model_meta(cfg: Config, training: str, features: FeatureSet, result: FineTuneResult) -> dict:
    """The fine-tuned model's description (what it is and how it was selected; no timings, so that it is stable)."""
    recipe = asdict(cfg.finetune)
    key = hashlib.sha256(json.dumps([features.key, training, recipe, cfg.backbone.tail_from],
                                    sort_keys=True).encode()).hexdigest()[:16]
    return {"key": key, "backbone": cfg.backbone.name, "model": features.meta["model"],
            "pretrained": features.meta["weights"], "preprocessing": features.meta["preprocessing"],
            "features_key": features.key, "training": training, "recipe": recipe,
            "tail_from": cfg.backbone.tail_from if cfg.finetune.depth == "blocks" else None,
            "backbone_dim": int(features.meta["dim"]), "embedding_dim": cfg.finetune.embedding_dim,
            "hidden_dim": cfg.finetune.hidden_dim, "members": len(result.members),
            "normalize_pooled": isinstance(result.model.members[0].pooled, L2Normalize),
            "pool": cfg.backbone.pool, "gem_p": cfg.backbone.gem_p,
            "pretrained_weight": cfg.finetune.pretrained_weight,
            "classes": result.rows.classes, "train_images": len(result.rows.train), "val_images": len(result.rows.val),
            "selection": [member.summary() for member in result.members],
            "best_val_map_at_r": result.best_val_map_at_r}


def finetuned_features_meta(store: FineTunedStore, features: FeatureSet) -> dict:
    """How the collection embedded by the fine-tuned model describes itself (the feature store's format)."""
    return {"key": hashlib.sha256(f"{store.key}\t{features.key}".encode()).hexdigest()[:16],
            "extractor_key": store.key, "backbone": {**features.meta["backbone"], "finetuned": store.meta["training"]},
            "model": store.meta["model"], "timm_version": features.meta["timm_version"],
            "weights": {"kind": "finetuned", "identity": f"ris.finetuned:{store.key}", "file_name": None},
            "preprocessing": store.meta["preprocessing"], "finetuned_from": features.key}


def run(cfg: Config, training: str, *, progress: bool = True) -> dict:
    """Fine-tune for ``training``, re-embed, compare, save and track; return the report written."""
    paths = PipelinePaths(cfg)
    features = load_features(paths.features_dir)
    splits = read_splits(paths.split_table, features.rows)
    root = image_root(paths.images_dir)
    plan = plan_extraction(read_image_table(paths.image_table), cfg.backbone, cfg.data.exclude_classes)
    if plan.key != features.key:
        raise ArtifactError(f"{paths.features_dir} holds features {features.key}, but the backbone settings give "
                            f"{plan.key}: run `dvc repro` to re-extract them")
    with timed(f"fine-tune {cfg.backbone.name} ({training})"):
        result = finetune(plan, features, splits, training, cfg.finetune, images_dir=root,
                          activation_cache=paths.activation_cache, progress=progress)
    with timed("embed the collection with the fine-tuned model"):
        if result.inputs is not None:  # exactly the model's output for these images: their cached inputs
            embeddings = embed_collection_cached(result, features.embeddings)
        else:
            plan.model = result.model
            embeddings, _ = embed_images(plan, [root / path for path in features.rows["path"]], progress=progress)
    store = FineTunedStore(result.model, model_meta(cfg, training, features, result), result.history)
    folder = paths.finetuned_dir(training)
    folder.mkdir(parents=True, exist_ok=True)
    store.save(folder / "model")
    tuned = save_features(folder / "features", embeddings, features.rows[["path", "class", "sha256"]],
                          finetuned_features_meta(store, features))
    spec = cfg.indexes[cfg.search.index]
    index = IndexStore.build(tuned.embeddings, spec, {"features_key": tuned.key, "dim": "full",
                                                      "index": cfg.search.index})
    with atomic_folder(folder / "index") as staging:
        index.save(staging)
    with timed("compare with the pretrained backbone"):
        comparisons = compare(features.embeddings, tuned.embeddings, features.labels, splits, training, cfg.eval)
    report = {"backbone": cfg.backbone.name, "model": store.meta["model"], "training": training,
              "recipe": store.meta["recipe"], "tail_from": store.meta["tail_from"],
              "classes": len(result.rows.classes), "train_images": len(result.rows.train),
              "val_images": len(result.rows.val), "members": [member.summary() for member in result.members],
              "best_val_map_at_r": result.best_val_map_at_r, "train_seconds": result.seconds,
              "device": result.device, "precision": result.precision, "embedding_dim": int(tuned.meta["dim"]),
              "protocols": {comparison.protocol: comparison.report() for comparison in comparisons}}
    write_json_atomic(paths.finetune_training_report(training), report)
    history_file = paths.finetune_history(training)
    write_text_atomic(history_file, result.history.to_csv(index=False))
    track(cfg, report, result, store, [paths.finetune_training_report(training), history_file])
    return report


def track(cfg: Config, report: dict, result: FineTuneResult, store: FineTunedStore, artifacts: list) -> None:
    """One MLflow run for the training (params, curves, final metrics, the model) and one per protocol, named and
    tagged like the grid's runs so that the MLflow UI lines fine-tuned and pretrained results up."""
    training = report["training"]
    params = flatten({"backbone": asdict(cfg.backbone), "finetune": asdict(cfg.finetune), "training": training,
                      "data": {"split": asdict(cfg.data.split)}})
    params["features.key"] = store.meta["features_key"]
    final = {f"{protocol}/{model}/{key}": value for protocol, found in report["protocols"].items()
             for model in ("pretrained", "finetuned") for key, value in found[model].items()}
    final.update({"best_val_map_at_r": result.best_val_map_at_r, "train_seconds": result.seconds})
    curves = {}
    for position, member in enumerate(result.members):
        prefix = f"member{position}/" if len(result.members) > 1 else ""  # one member: the plain names
        final[f"{prefix}best_epoch"] = member.best_epoch
        for column in member.history.columns.drop("epoch"):
            curves[prefix + column] = [(int(step), float(value)) for step, value in
                                       zip(member.history["epoch"], member.history[column], strict=True)
                                       if np.isfinite(value)]
    tags = {"backbone": cfg.backbone.name, "finetune": training, "git_commit": git_commit(), "source": "dvc",
            "kind": "finetune"}
    example = np.zeros((1, *store.meta["preprocessing"]["input_size"]), dtype=np.float32)
    log_run(cfg.tracking, f"{cfg.backbone.name}/finetune/{training}", params, final, tags, artifacts, curves=curves,
            model=store.model, model_input=example)
    for protocol, found in report["protocols"].items():
        protocol_tags = {"backbone": cfg.backbone.name, "dim": "full", "index": "brute", "algorithm": "brute",
                         "protocol": protocol, "git_commit": git_commit(), "source": "dvc", "rerank": NO_RERANK,
                         "finetune": training, "leaky": str(found["leaky"]).lower()}
        log_run(cfg.tracking, f"{cfg.backbone.name}+finetuned({training})/full/brute/{protocol}", params,
                found["finetuned"], protocol_tags)


def selection_summary(members: list[dict]) -> str:
    """Each member's selected epoch (counted from 1), and its seed where there are several."""
    seeds = [f"seed {member['seed']}: " if len(members) > 1 else "" for member in members]
    return ", ".join(f"{seed}epoch {member['best_epoch'] + 1} of {member['epochs_run']}"
                     for seed, member in zip(seeds, members, strict=True))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ris stage finetune")
    parser.add_argument("--params", default="params.yaml", help="the composed config (default: params.yaml)")
    parser.add_argument("--training", required=True, choices=FINETUNE_TRAININGS,
                        help="heldout: every class's train images; unseen-classes: those of the first half of the "
                             "classes only")
    args = parser.parse_args(argv)

    def body() -> Done:
        cfg = check_registries(load_stage_config(args))
        check_loss(cfg.finetune.loss.name)
        report, paths = run(cfg, args.training), PipelinePaths(cfg)
        return Done([paths.features_dir, paths.split_table, paths.images_dir],
                    [paths.finetuned_dir(args.training), paths.finetune_training_report(args.training),
                     paths.finetune_history(args.training)],
                    f"best val MAP@R {report['best_val_map_at_r']:.4f} ({selection_summary(report['members'])}), "
                    f"{report['train_seconds']:.0f} s on {report['device']}")

    stage_main("finetune", body)


if __name__ == "__main__":
    main()

"""Fine-tuning: which images train (the leak test), the losses, the backbone split, training itself (the loss
falls, the checkpoint reloads to the same embeddings) and the comparison and report built on it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from conftest import make_image_tree

from ris.artifacts import ArtifactError
from ris.config import BackboneConfig, ConfigError, EvalConfig, FinetuneConfig, LossConfig
from ris.embed.extract import plan_extraction
from ris.embed.preprocess import eval_transform
from ris.embed.store import FeatureSet
from ris.evaluate.protocols import PROTOCOLS, unseen_classes
from ris.finetune import train as train_module
from ris.finetune.backbone_split import split_backbone
from ris.finetune.evaluate import compare
from ris.finetune.losses import LOSSES, create_loss
from ris.finetune.report import check_against_grid, comparison_table, to_markdown
from ris.finetune.store import FineTunedStore
from ris.finetune.train import finetune, training_rows
from ris.images import open_image


def synthetic_split(classes: int = 6, per_class: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and a 60/20/20 split per class."""
    labels = np.repeat([f"class_{index:02d}" for index in range(classes)], per_class)
    pattern = np.array(["train"] * 6 + ["val"] * 2 + ["test"] * 2)
    rng = np.random.default_rng(seed)
    splits = np.concatenate([rng.permutation(np.resize(pattern, per_class)) for _ in range(classes)])
    return labels, splits.astype(object)


def clustered_features(labels: np.ndarray, dim: int = 32, noise: float = 1.0, seed: int = 0) -> np.ndarray:
    """Unit vectors around one random centre per class, noisy enough that a projection has something to learn."""
    rng = np.random.default_rng(seed)
    _, classes = np.unique(labels, return_inverse=True)
    centres = rng.normal(size=(classes.max() + 1, dim))
    vectors = centres[classes] + noise * rng.normal(size=(len(labels), dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


# --- which images train ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("training", ["heldout", "unseen-classes"])
def test_no_val_or_test_image_and_no_unseen_class_reaches_training(training: str) -> None:
    labels, splits = synthetic_split()
    rows = training_rows(training, labels, splits)
    assert set(splits[rows.train]) == {"train"} and set(splits[rows.val]) == {"val"}
    if training == "unseen-classes":
        _, query_classes = unseen_classes(labels)
        assert not np.isin(labels[rows.train], query_classes).any()
        assert not np.isin(labels[rows.val], query_classes).any()
        query_set = PROTOCOLS["unseen-classes"].select(labels, splits)
        assert set(labels[query_set.queries]) == set(query_classes) and query_set.leave_one_out
    else:
        assert len(rows.classes) == len(np.unique(labels))


def test_the_training_batches_hold_train_images_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The leak test on what training really reads: every item of every training batch is a train-split row."""
    labels, splits = synthetic_split()
    features = FeatureSet(clustered_features(labels), pd.DataFrame({"class": labels, "path": [f"{i}.jpg" for i in
                                                                                              range(len(labels))]}),
                          {"dim": 32})
    seen_rows: list[np.ndarray] = []
    real_data = train_module.FineTuneData

    def recording_data(train, val, batch_size, num_workers):  # noqa: ANN001, ANN202
        seen_rows.append(np.asarray(train.rows))
        return real_data(train, val, batch_size, num_workers)

    monkeypatch.setattr(train_module, "FineTuneData", recording_data)
    plan = tiny_plan(features)
    for training in ("heldout", "unseen-classes"):
        finetune(plan, features, splits, training, head_recipe(epochs=1), images_dir=tmp_path,
                 activation_cache=tmp_path / "cache", progress=False)
    heldout, unseen = seen_rows
    assert set(splits[heldout]) == {"train"} and set(splits[unseen]) == {"train"}
    assert not np.isin(labels[unseen], unseen_classes(labels)[1]).any()


# --- losses -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_is_a_finite_differentiable_scalar(name: str) -> None:
    torch.manual_seed(0)
    embeddings = torch.randn(16, 8, requires_grad=True)
    loss = create_loss(name, classes=4, dim=8, params={})(embeddings, torch.arange(16) % 4)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss) and embeddings.grad is not None


def test_an_unknown_loss_is_refused_when_the_config_is_composed() -> None:
    from ris.cli import compose_config

    with pytest.raises(ConfigError, match="'finetune.loss.name' is 'triplet'; allowed values: cross_entropy, "
                                         "proxy_anchor, arcface, supcon"):
        compose_config(["finetune.loss.name=triplet"])


# --- the backbone split ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, tail_from, size", [("test_efficientnet", "blocks.4", 64),
                                                    ("test_convnext", "stages.3", 64), ("test_vit", "blocks.1", 160)])
def test_the_split_backbone_computes_what_the_whole_one_does(name: str, tail_from: str, size: int) -> None:
    model = timm.create_model(name, num_classes=0).eval()
    trunk, tail = split_backbone(model, tail_from, (3, size, size))
    images = torch.randn(3, 3, size, size)
    with torch.no_grad():
        assert torch.allclose(tail(trunk(images)), model(images), atol=1e-5)
    assert not any(parameter.requires_grad for parameter in trunk.parameters())
    assert all(parameter.requires_grad for parameter in tail.parameters())
    trunk.train()
    assert not trunk.training  # batch norm statistics of the frozen part stay pretrained


def test_a_split_at_an_unknown_module_names_the_allowed_ones() -> None:
    model = timm.create_model("test_efficientnet", num_classes=0)
    with pytest.raises(ConfigError, match="blocks.4"):
        split_backbone(model, "layer4", (3, 64, 64))


# --- training ----------------------------------------------------------------------------------------------------

def head_recipe(**changes: object) -> FinetuneConfig:
    return replace(FinetuneConfig(depth="head", embedding_dim=16, epochs=8, batch_size=16, lr=0.01,
                                  loss=LossConfig("cross_entropy", {}), warmup_epochs=1, patience=8,
                                  accelerator="cpu", num_workers=0), **changes)


def tiny_plan(features: FeatureSet):  # noqa: ANN201
    """A plan whose model is a tiny random timm model (a head trains on the features, so the model only needs to
    exist)."""
    table = pd.DataFrame({"path": features.rows["path"], "class": features.rows["class"],
                          "sha256": [f"{index:064x}" for index in range(len(features.rows))]})
    return plan_extraction(table, BackboneConfig(name="test_efficientnet", pretrained=False))


def test_a_head_trained_on_cached_embeddings_lowers_its_loss_and_lifts_val_map() -> None:
    labels, splits = synthetic_split(classes=6, per_class=20)
    features = FeatureSet(clustered_features(labels, noise=1.2), pd.DataFrame(
        {"class": labels, "path": [f"{i}.jpg" for i in range(len(labels))]}), {"dim": 32})
    result = finetune(tiny_plan(features), features, splits, "heldout", head_recipe(), images_dir=Path("."),
                      activation_cache=Path("unused"), progress=False)
    losses = result.history["train/loss"].to_numpy()
    assert losses[-1] < 0.7 * losses[0]
    assert result.best_val_map_at_r == result.history["val/map_at_r"].max()
    assert result.history["val/map_at_r"].max() > result.history["val/map_at_r"].iloc[0]


@pytest.mark.parametrize("pool, pretrained_weight, members", [(None, 0.0, 1), ("gem", 0.3, 2)])
def test_the_last_blocks_train_on_cached_activations_and_reload_to_the_same_embeddings(
        tmp_path: Path, pool: str | None, pretrained_weight: float, members: int) -> None:
    """Blocks recipe on a tiny random model over real image files: the activations are computed once and reused,
    and the saved model, reloaded (with the backbone's pooling), embeds images exactly as the trained one and as
    the cached path did. With a pretrained weight the model blends in the untouched pretrained backbone; with two
    members, two fine-tunes from different seeds sit side by side, each an equal share."""
    image_tree = make_image_tree(tmp_path / "images", classes=3, per_class=6)
    images = sorted(image_tree.rglob("*.jpg"))
    rows = pd.DataFrame({"path": [str(path.relative_to(image_tree)) for path in images],
                         "class": [path.parent.name for path in images],
                         "sha256": [hashlib.sha256(path.read_bytes()).hexdigest() for path in images]})
    backbone = BackboneConfig(name="test_efficientnet", pretrained=False, num_workers=0, batch_size=4, devices=1,
                              tail_from="blocks.4", pool=pool)
    plan = plan_extraction(rows, backbone)
    transform = eval_transform(plan.data_config, scaled=True)
    batch = torch.stack([transform(open_image(path)) for path in (image_tree / path for path in rows["path"])])
    with torch.no_grad():  # what extraction stores: the pretrained backbone's unit-length embeddings
        pretrained = torch.nn.functional.normalize(plan.model.eval()(batch), dim=1)
    features = FeatureSet(pretrained.numpy(), plan.rows.assign(row=np.arange(len(rows))),
                          {"dim": int(plan.model.num_features)})
    splits = np.array(["train", "train", "train", "val", "val", "test"] * 3, dtype=object)
    recipe = FinetuneConfig(depth="blocks", embedding_dim=8, epochs=2, batch_size=4, accelerator="cpu",
                            num_workers=0, patience=2, pretrained_weight=pretrained_weight, members=members)
    cache = tmp_path / "activations"
    result = finetune(plan, features, splits, "heldout", recipe, images_dir=image_tree, activation_cache=cache,
                      progress=False)
    assert len(list(cache.rglob("activations.npy"))) == 1
    assert [member.seed for member in result.members] == list(range(members))
    # The tail trained in training mode (its batch norm statistics followed the data); the trunk stayed pretrained.
    before, after = plan.model.state_dict(), result.model.members[0].backbone.state_dict()
    statistics = [name for name in before if name.endswith("running_mean")]
    in_tail = [name for name in statistics if name.startswith(("blocks.4", "blocks.5", "blocks.6", "bn2"))]
    assert in_tail and all(not torch.equal(before[name], after[name]) for name in in_tail)
    assert all(torch.equal(before[name], after[name]) for name in statistics if name not in in_tail)
    assert list(result.history["member"].unique()) == list(range(members))
    cached = train_module.embed_collection_cached(result, features.embeddings)

    meta = {"key": "k", "model": "test_efficientnet", "backbone_dim": int(plan.model.num_features),
            "embedding_dim": 8, "hidden_dim": None, "normalize_pooled": False, "pool": pool, "gem_p": 3.0,
            "pretrained_weight": pretrained_weight, "members": members}
    FineTunedStore(result.model, meta, result.history).save(tmp_path / "model")
    reloaded = FineTunedStore.load(tmp_path / "model")
    with torch.no_grad():
        trained, loaded = result.model.eval()(batch), reloaded.model(batch)
    assert torch.allclose(trained, loaded, atol=1e-6)
    assert np.allclose(cached, loaded.numpy(), atol=2e-2)  # the cache holds float16 activations
    assert torch.allclose(loaded.norm(dim=1), torch.ones(len(batch)), atol=1e-5)
    tuned = 8 * members
    assert loaded.shape[1] == tuned + (int(plan.model.num_features) if pretrained_weight else 0)
    if pretrained_weight:  # the pretrained part is the backbone before training, scaled so the weights add up
        assert torch.allclose(loaded[:, tuned:], pretrained_weight ** 0.5 * pretrained, atol=1e-5)
    for start in range(0, tuned, 8):  # each member: an equal share of the fine-tuned part
        assert torch.allclose(loaded[:, start:start + 8].norm(dim=1),
                              torch.full((len(batch),), ((1 - pretrained_weight) / members) ** 0.5), atol=1e-5)
    if members > 1:  # trained from other seeds: other embeddings
        assert not torch.allclose(loaded[:, :8], loaded[:, 8:16], atol=1e-2)
        assert 0 < result.best_val_map_at_r <= 1


def test_the_full_recipe_trains_every_layer_on_augmented_images(tmp_path: Path) -> None:
    """The GPU recipe's code path (depth=full on images with timm's training augmentation), run on a CPU: every
    backbone weight moves, and the result embeds images to unit vectors."""
    image_tree = make_image_tree(tmp_path / "images", classes=3, per_class=6)
    images = sorted(image_tree.rglob("*.jpg"))
    rows = pd.DataFrame({"path": [str(path.relative_to(image_tree)) for path in images],
                         "class": [path.parent.name for path in images],
                         "sha256": [hashlib.sha256(path.read_bytes()).hexdigest() for path in images]})
    plan = plan_extraction(rows, BackboneConfig(name="test_efficientnet", pretrained=False, num_workers=0, devices=1))
    before = {name: tensor.clone() for name, tensor in plan.model.state_dict().items()}
    features = FeatureSet(np.zeros((len(rows), int(plan.model.num_features)), np.float32),
                          plan.rows.assign(row=np.arange(len(rows))), {"dim": int(plan.model.num_features)})
    splits = np.array(["train", "train", "train", "val", "val", "test"] * 3, dtype=object)
    recipe = FinetuneConfig(depth="full", inputs="images", embedding_dim=8, epochs=1, batch_size=4,
                            accelerator="cpu", num_workers=0, auto_augment="rand-m9-mstd0.5-inc1")
    result = finetune(plan, features, splits, "heldout", recipe, images_dir=image_tree, activation_cache=tmp_path,
                      progress=False)
    assert result.inputs is None and result.precision == "32-true"
    after = result.model.members[0].backbone.state_dict()
    assert all(not torch.equal(before[name], after[name]) for name in before if name.endswith("conv_stem.weight"))
    batch = torch.stack([eval_transform(plan.data_config, scaled=True)(open_image(path)) for path in images[:2]])
    with torch.no_grad():
        assert torch.allclose(result.model(batch).norm(dim=1), torch.ones(2), atol=1e-5)


def test_a_damaged_model_store_is_caught_on_load(tmp_path: Path) -> None:
    model = train_module.FineTunedModel([train_module.FineTunedMember(
        timm.create_model("test_efficientnet", num_classes=0), torch.nn.Linear(1280, 8))])
    meta = {"key": "k", "model": "test_efficientnet", "backbone_dim": 1280, "embedding_dim": 16, "members": 1,
            "hidden_dim": None, "normalize_pooled": False, "pool": None, "gem_p": 3.0,
            "pretrained_weight": 0.0}  # the projection described is not the one saved
    FineTunedStore(model, meta, pd.DataFrame({"epoch": [0]})).save(tmp_path / "model")
    with pytest.raises(ArtifactError, match="does not fit"):
        FineTunedStore.load(tmp_path / "model")
    with pytest.raises(ArtifactError, match="training"):
        FineTunedStore.load(tmp_path / "model", expect={"training": "heldout"})


# --- comparison and report ---------------------------------------------------------------------------------------

def test_the_comparison_uses_the_same_queries_for_both_models_and_marks_the_leak() -> None:
    labels, splits = synthetic_split()
    pretrained, perfect = clustered_features(labels, noise=3.0), clustered_features(labels, noise=0.01)
    cfg = EvalConfig()
    heldout, book = compare(pretrained, perfect, labels, splits, "heldout", cfg)
    assert (heldout.protocol, book.protocol) == ("heldout", "book")
    assert heldout.leak is None and book.leak is not None
    assert heldout.pretrained["queries"] == heldout.finetuned["queries"] == (splits == "test").sum()
    assert heldout.finetuned["map_at_r"] == pytest.approx(1.0)
    assert heldout.report()["gain"]["map_at_r"] == pytest.approx(1.0 - heldout.pretrained["map_at_r"])
    (unseen,) = compare(pretrained, perfect, labels, splits, "unseen-classes", cfg)
    assert unseen.pretrained["queries"] == np.isin(labels, unseen_classes(labels)[1]).sum()


def test_the_report_checks_the_pretrained_numbers_against_the_grid(tmp_path: Path) -> None:
    labels, splits = synthetic_split()
    pretrained, tuned = clustered_features(labels, noise=2.0), clustered_features(labels, noise=0.5)
    comparisons = compare(pretrained, tuned, labels, splits, "heldout", EvalConfig())
    report = {"backbone": "b", "training": "heldout", "recipe": {"depth": "head", "inputs": "cached",
                                                                  "loss": {"name": "proxy_anchor"}},
              "tail_from": None, "embedding_dim": 16, "train_images": 36, "val_images": 12, "classes": 6,
              "best_val_map_at_r": 0.5, "train_seconds": 1.0, "device": "cpu",
              "members": [{"seed": 0, "best_epoch": 0, "epochs_run": 1, "best_val_map_at_r": 0.5}],
              "precision": "32-true", "protocols": {c.protocol: c.report() for c in comparisons}}
    grid = tmp_path / "full-brute.json"
    grid.write_text(json.dumps({"protocols": {c.protocol: c.pretrained for c in comparisons}}))
    assert check_against_grid([report], grid) == ["heldout", "book"]
    table = comparison_table([report])
    assert list(table["model"][:3]) == ["pretrained", "finetuned", "gain"]
    markdown = to_markdown(table, [report])
    assert "LEAKY" in markdown and "`heldout` protocol" in markdown and "blended" not in markdown
    blended = {**report, "recipe": {**report["recipe"], "pretrained_weight": 0.5}}
    assert "blended with the pretrained one, weight 0.5" in to_markdown(comparison_table([blended]), [blended])
    assert "best val MAP@R 50.0 % at epoch 1 of 1" in markdown
    ensemble = {**report, "best_val_map_at_r": 0.6,
                "members": [{"seed": 0, "best_epoch": 0, "epochs_run": 1, "best_val_map_at_r": 0.5},
                            {"seed": 1, "best_epoch": 2, "epochs_run": 4, "best_val_map_at_r": 0.55}]}
    assert ("an ensemble of 2 fine-tunes, their embeddings concatenated (best val MAP@R seed 0: 50.0 % at epoch 1 "
            "of 1; seed 1: 55.0 % at epoch 3 of 4; together 60.0 %)") in to_markdown(comparison_table([ensemble]),
                                                                                      [ensemble])
    shifted = {c.protocol: {**c.pretrained, "map_at_r": c.pretrained["map_at_r"] + 0.01} for c in comparisons}
    grid.write_text(json.dumps({"protocols": shifted}))
    with pytest.raises(ArtifactError, match="differs from the grid"):
        check_against_grid([report], grid)


# --- the stage and the searcher ----------------------------------------------------------------------------------

TINY_FINETUNE = ["finetune.epochs=2", "finetune.batch_size=4", "finetune.embedding_dim=8", "finetune.num_workers=0",
                 "tracking.enabled=false"]


@pytest.mark.parametrize("pretrained_weight, members", [(0.0, 1), (0.5, 2)])
def test_the_finetune_stage_feeds_the_searcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               pretrained_weight: float, members: int) -> None:
    """`ris search --finetuned`'s searcher: the fine-tuned model embeds a collection image to (nearly) the vector
    stored for it (blended with the pretrained one or not), so the image finds itself first; a stale or missing
    fine-tune is one clear error."""
    from conftest import build_tiny_pipeline

    from ris.checks import read_params
    from ris.embed.store import load_features
    from ris.paths import PipelinePaths
    from ris.search.searcher import Searcher
    from ris.stages import finetune as finetune_stage

    params = build_tiny_pipeline(tmp_path, [*TINY_FINETUNE, f"finetune.pretrained_weight={pretrained_weight}",
                                            f"finetune.members={members}"], classes=4, per_class=10)
    monkeypatch.chdir(tmp_path)
    cfg = read_params(params)
    with pytest.raises(ArtifactError, match="finetune stage"):
        Searcher.from_finetuned(cfg, "heldout")
    report = finetune_stage.run(cfg, "heldout", progress=False)
    assert report["protocols"]["heldout"]["finetuned"]["queries"] == 8  # two test images of each of 4 classes
    backbone_dim = int(load_features(PipelinePaths(cfg).features_dir).meta["dim"])
    assert report["embedding_dim"] == 8 * members + (backbone_dim if pretrained_weight else 0)
    assert [member["seed"] for member in report["members"]] == list(range(members))
    searcher = Searcher.from_finetuned(cfg, "heldout")
    assert "fine-tuned (heldout)" in searcher.description
    first = sorted((tmp_path / "source").rglob("*.jpg"))[0]
    hits = searcher.search(open_image(first), k=3).hits
    assert hits[0].path.name == first.name and hits[0].label == first.parent.name
    assert hits[0].distance == pytest.approx(0.0, abs=1e-3)

"""Extraction under Lightning with timm's tiny test model: weights sources, the feature store, reuse."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from conftest import make_image_tree
from safetensors.torch import save_file

from ris.artifacts import ArtifactError
from ris.config import BackboneConfig
from ris.data.catalog import scan_images
from ris.embed.extract import extract_features, plan_extraction, select_rows
from ris.embed.preprocess import eval_transform
from ris.embed.store import load_features, stored_key
from ris.embed.weights import WeightsUnavailableError, create_backbone, find_in_weights_dir, resolve_weights

TINY = "test_efficientnet"


def tiny_backbone(**overrides: object) -> BackboneConfig:
    settings = {"name": TINY, "pretrained": False, "batch_size": 5, "num_workers": 0, "devices": 1, **overrides}
    return BackboneConfig(**settings)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A weights folder holding a tiny model's state dict under timm's ``<model>.<tag>.safetensors`` naming."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(7)
    model = timm.create_model(TINY, pretrained=False)
    save_file(model.state_dict(), folder / f"{TINY}.r160_in1k.safetensors")
    return folder, model


def test_embeddings_are_row_aligned_normalised_and_match_the_model(image_tree: Path, tmp_path: Path,
                                                                    tiny_weights: tuple[Path, torch.nn.Module]):
    table, _ = scan_images(image_tree, progress=False)
    folder, reference = tiny_weights
    backbone = tiny_backbone(pretrained=True, weights_dir=str(folder))
    features = extract_features(table, image_tree, backbone, tmp_path / "store", exclude_classes=["class_02"],
                                progress=False)

    assert features.embeddings.dtype == np.float32 and features.embeddings.shape[0] == 8
    assert list(features.rows["class"].unique()) == ["class_00", "class_01"]
    assert (features.rows["row"] == np.arange(8)).all()
    np.testing.assert_allclose(np.linalg.norm(features.embeddings, axis=1), 1.0, rtol=1e-5)
    assert features.meta["weights"]["kind"] == "file"
    assert features.meta["weights"]["file_name"] == f"{TINY}.r160_in1k.safetensors"
    assert str(folder) not in (tmp_path / "store" / "meta.json").read_text()  # no machine-specific path

    # Row 3's embedding is what the reference weights give for row 3's image with the eval preprocessing.
    reference.reset_classifier(0)
    reference.eval()
    config = timm.data.resolve_model_data_config(reference)
    transform = eval_transform(config, scaled=True)
    from PIL import Image

    with Image.open(image_tree / features.rows["path"][3]) as image:
        expected = reference(transform(image.convert("RGB"))[None])
    expected = torch.nn.functional.normalize(expected, dim=1)[0].detach().numpy()
    np.testing.assert_allclose(features.embeddings[3], expected, atol=1e-5)


def test_store_is_reused_by_key_and_recomputed_when_the_key_changes(image_tree: Path, tmp_path: Path):
    table, _ = scan_images(image_tree, progress=False)
    store = tmp_path / "store"
    first = extract_features(table, image_tree, tiny_backbone(), store, progress=False)
    modified = (store / "embeddings.npy").stat().st_mtime_ns
    time.sleep(0.01)
    again = extract_features(table, image_tree, tiny_backbone(), store, progress=False)
    assert (store / "embeddings.npy").stat().st_mtime_ns == modified
    assert again.meta["key"] == first.meta["key"] == stored_key(store)

    unnormalised = extract_features(table, image_tree, tiny_backbone(normalize=False), store, progress=False)
    assert unnormalised.meta["key"] != first.meta["key"]
    assert not np.allclose(np.linalg.norm(unnormalised.embeddings, axis=1), 1.0)
    assert load_features(store).meta["key"] == unnormalised.meta["key"]


def test_a_grown_collection_embeds_only_its_new_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """5 images added to a collection: exactly those 5 are embedded, the rest come from the embedding cache by
    content hash, and the store equals a full re-extraction; removing images embeds nothing."""
    import ris.embed.extract as extract_module

    collection = make_image_tree(tmp_path / "images", classes=3, per_class=4)
    cache = tmp_path / "cache"
    embedded: list[int] = []
    real_embed = extract_module.embed_images

    def counting_embed(plan, paths, **kwargs):  # type: ignore[no-untyped-def]
        embedded.append(len(paths))
        return real_embed(plan, paths, **kwargs)

    monkeypatch.setattr(extract_module, "embed_images", counting_embed)
    table, _ = scan_images(collection, progress=False)
    first = extract_features(table, collection, tiny_backbone(), tmp_path / "store", cache_root=cache,
                             progress=False)
    assert embedded == [12] and first.run["embedded"] == 12

    make_image_tree(tmp_path / "more", classes=3, per_class=6, seed=5)  # new pixels: new content hashes
    for image in sorted((tmp_path / "more").rglob("image_000[4-5].jpg"))[:5]:
        (collection / image.parent.name / f"new_{image.name}").write_bytes(image.read_bytes())
    grown, _ = scan_images(collection, progress=False)
    assert len(grown) == 17
    incremental = extract_features(grown, collection, tiny_backbone(), tmp_path / "store", cache_root=cache,
                                   progress=False)
    assert embedded == [12, 5]
    assert (incremental.run["embedded"], incremental.run["reused"]) == (5, 12)

    full = extract_features(grown, collection, tiny_backbone(), tmp_path / "full", progress=False)  # no cache
    assert embedded == [12, 5, 17]
    assert incremental.key == full.key and incremental.meta == full.meta  # the description holds no timings
    assert (tmp_path / "store/meta.json").read_bytes() == (tmp_path / "full/meta.json").read_bytes()
    pd.testing.assert_frame_equal(incremental.rows, full.rows)
    np.testing.assert_allclose(incremental.embeddings, full.embeddings, atol=1e-6)

    shrunk = grown[~grown["path"].str.contains("image_0000")].reset_index(drop=True)
    smaller = extract_features(shrunk, collection, tiny_backbone(), tmp_path / "store", cache_root=cache,
                               progress=False)
    assert embedded == [12, 5, 17] and len(smaller.rows) == len(shrunk) == 14


def test_a_damaged_feature_store_is_caught_on_load(image_tree: Path, tmp_path: Path):
    table, _ = scan_images(image_tree, progress=False)
    extract_features(table, image_tree, tiny_backbone(), tmp_path / "store", progress=False)
    matrix = tmp_path / "store" / "embeddings.npy"
    matrix.write_bytes(matrix.read_bytes()[: matrix.stat().st_size // 2])
    with pytest.raises(ArtifactError, match="embeddings.npy|embeddings"):
        load_features(tmp_path / "store")


def test_key_depends_on_the_images(image_tree: Path):
    table, _ = scan_images(image_tree, progress=False)
    full = plan_extraction(table, tiny_backbone())
    fewer = plan_extraction(table, tiny_backbone(), exclude_classes=["class_00"])
    changed = table.assign(sha256=table["sha256"].where(table.index != 0, "0" * 64))
    assert len({full.key, fewer.key, plan_extraction(changed, tiny_backbone()).key}) == 3


def test_select_rows_excludes_classes_and_sorts():
    table = pd.DataFrame({"path": ["b/2.jpg", "a/1.jpg", "BACKGROUND/x.jpg"], "class": ["b", "a", "BACKGROUND"],
                          "sha256": ["2", "1", "x"], "width": [1, 1, 1], "height": [1, 1, 1]})
    rows = select_rows(table, ["BACKGROUND"])
    assert list(rows["path"]) == ["a/1.jpg", "b/2.jpg"] and list(rows.columns) == ["path", "class", "sha256"]


def test_weights_file_and_dir_resolve_to_the_file(tiny_weights: tuple[Path, torch.nn.Module]):
    folder, _ = tiny_weights
    from_dir = resolve_weights(tiny_backbone(pretrained=True), environ={"RIS_WEIGHTS_DIR": str(folder)})
    file = find_in_weights_dir(folder, TINY)
    from_file = resolve_weights(tiny_backbone(pretrained=True, weights_file=str(file)), environ={})
    assert from_dir.kind == from_file.kind == "file" and from_dir.file == from_file.file == file
    assert from_dir.identity.startswith("sha256:")
    assert find_in_weights_dir(folder, "resnet50") is None


def test_missing_weights_fail_at_once_saying_what_to_provide(tmp_path: Path):
    with pytest.raises(WeightsUnavailableError) as error:
        resolve_weights(tiny_backbone(pretrained=True, weights_dir=str(tmp_path)), environ={"HF_HUB_OFFLINE": "1"})
    message = str(error.value)
    assert "backbone.weights_file" in message and "RIS_WEIGHTS_DIR" in message and TINY in message
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        resolve_weights(tiny_backbone(pretrained=True, weights_file=str(tmp_path / "nope.safetensors")), environ={})


def test_random_init_needs_no_weights():
    assert resolve_weights(tiny_backbone(), environ={"HF_HUB_OFFLINE": "1"}).kind == "random"


def test_a_weights_file_named_after_a_timm_tag_gets_that_tags_preprocessing(tmp_path: Path):
    torch.manual_seed(1)
    reference = timm.create_model("resnet18", pretrained=False)
    save_file(reference.state_dict(), tmp_path / "resnet18.tv_in1k.safetensors")
    source = resolve_weights(BackboneConfig(name="resnet18", weights_dir=str(tmp_path)), environ={})
    assert source.model == "resnet18.tv_in1k"
    model = create_backbone(source)
    tagged = timm.data.resolve_model_data_config(model)
    default = timm.data.resolve_model_data_config(timm.create_model("resnet18", pretrained=False))
    assert (tagged["interpolation"], tagged["crop_pct"]) == ("bilinear", 0.875)  # torchvision's recipe
    assert (default["interpolation"], default["crop_pct"]) != ("bilinear", 0.875)
    assert torch.equal(model.conv1.weight, reference.conv1.weight)

    (tmp_path / "resnet18.tv_in1k.safetensors").rename(tmp_path / "resnet18.mine.safetensors")
    assert resolve_weights(BackboneConfig(name="resnet18", weights_dir=str(tmp_path)), environ={}).model == "resnet18"

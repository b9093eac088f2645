"""The real conf/ composed with Hydra validates; bad keys and values are rejected naming the key; params.yaml
matches conf/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from ris.checks import checked_config
from ris.cli import compose_params
from ris.config import Config, ConfigError, check_dim, load_config

REPO = Path(__file__).resolve().parents[2]
CONF_DIR = REPO / "conf"
BACKBONES = sorted(path.stem for path in (CONF_DIR / "backbone").glob("*.yaml") if not path.stem.startswith("_"))


def _compose(overrides: list[str]) -> DictConfig:
    """conf/ composed with ``overrides``, as `ris compose` and `ris run` do."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def test_default_composition_validates() -> None:
    """The committed conf/ composes into a valid, typed configuration."""
    cfg = checked_config(_compose([]))
    assert isinstance(cfg, Config)
    assert set(cfg.indexes) == {"brute", "annoy", "hnsw", "ivf", "ivfsq", "ivfpq", "kd_tree", "ball_tree"}
    assert cfg.indexes["annoy"].family == "annoy"
    assert cfg.indexes["ivf"].family == cfg.indexes["ivfpq"].family == "faiss"
    assert cfg.indexes["brute"].params == {}
    assert cfg.grid.dims == ["full", "auto"]
    assert cfg.grid.indexes == ["brute", "annoy", "hnsw", "ivf", "ivfsq", "kd_tree", "ball_tree"]
    assert cfg.eval.protocols == ["book", "heldout"] and cfg.eval.recall_ks == [1, 5, 10]
    assert (cfg.search.dim, cfg.search.index) == ("auto", "hnsw")
    assert cfg.data.split.train + cfg.data.split.val + cfg.data.split.test == pytest.approx(1.0)
    assert cfg.eval.latency.queries > 0


def test_backbones_found() -> None:
    """The parametrisation below is not vacuous."""
    assert "mobilenetv2_100" in BACKBONES and len(BACKBONES) >= 2


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_composes(backbone: str) -> None:
    """Each conf/backbone file composes, validates, and names the timm model it is filed under."""
    cfg = checked_config(_compose([f"backbone={backbone}"]), check_model=True)
    assert cfg.backbone.name == backbone


@pytest.mark.parametrize("overrides", [["grid.dims=[full]"], ["grid.dims=64"], ["grid.indexes=annoy"],
                                       ["indexes.annoy.metric=angular", "grid.dims=[full,32,64]",
                                        "grid.indexes=[brute]"],
                                       ["eval.protocols=[heldout]", "eval.k=5", "eval.recall_ks=[2]"],
                                       ["finetune=gpu"], ["finetune.depth=head", "finetune.loss.name=arcface"],
                                       ["backbone.pool=gem", "backbone.gem_p=4", "backbone.devices=3"],
                                       ["eval.protocols=[book,heldout,unseen-classes]"],
                                       ["+indexes.annoy_fast={family: annoy, params: {n_trees: 10}}",
                                        "grid.indexes=[annoy_fast]", "search.index=annoy_fast"]])
def test_valid_overrides(overrides: list[str]) -> None:
    """Other groups and legal values pass too; a single grid value is a one-element list."""
    cfg = checked_config(_compose(overrides))
    assert isinstance(cfg.grid.dims, list) and isinstance(cfg.grid.indexes, list)


@pytest.mark.parametrize("overrides, key, allowed", [
    (["+reduce.dimm=3"], "reduce.dimm", None),
    (["indexes.annoy.metric=cosine"], "indexes.annoy.metric", "euclidean, angular"),
    (["indexes.annoy.family=scann"], "indexes.annoy.family", "annoy, brute, faiss, hnsw, milvus, kd_tree, ball_tree"),
    (["reduce.method=lda"], "reduce.method", "pca"),
    (["grid.dims=0"], "grid.dims[0]", "full"),
    (["grid.dims=abc"], "grid.dims[0]", "full"),
    (["grid.dims=[full,-4]"], "grid.dims[1]", "full"),
    (["grid.indexes=[faiss]"], "grid.indexes[0]", "brute, annoy, hnsw, ivf, ivfsq, ivfpq, kd_tree, ball_tree"),
    (["search.dim=0"], "search.dim", "full"),
    (["search.index=faiss"], "search.index", "brute, annoy, hnsw"),
    (["eval.protocols=[nope]"], "eval.protocols[0]", "book, heldout"),
    (["eval.k=0"], "eval.k", None),
    (["eval.k=abc"], "eval.k", None),
    (["eval.recall_ks=[5,0]"], "eval.recall_ks[1]", None),
    (["data.split.test=0"], "data.split.train' and 'data.split.test", None),
    (["data.split.train=0.7"], "data.split.train/val/test", None),
    (["+indexes.annoy.params.n_trees2=3"], "indexes.annoy.params.n_trees2",
     "n_trees, search_k, search_k_factor, seed, build_threads"),
    (["+indexes.brute.params.n_trees=3"], "indexes.brute.params.n_trees", "none"),
    (["+indexes.hnsw.params.ef_search=3"], "indexes.hnsw.params.ef_search", "M, ef_construction, ef, seed"),
    (["finetune.depth=everything"], "finetune.depth", "head, blocks, full"),
    (["finetune.depth=full"], "finetune.inputs", None),
    (["finetune.depth=head", "finetune.inputs=images"], "finetune.inputs", None),
    (["backbone.tail_from=null"], "backbone.tail_from", None),
    (["finetune.trainings=[all]"], "finetune.trainings[0]", "heldout, unseen-classes"),
    (["finetune.lr=0"], "finetune.lr", None),
    (["finetune.pretrained_weight=1"], "finetune.pretrained_weight", None),
    (["finetune.pretrained_weight=-0.1"], "finetune.pretrained_weight", None),
    (["finetune.members=0"], "finetune.members", None),
    (["backbone.pool=median"], "backbone.pool", "avg, max, gem"),
    (["backbone.gem_p=0"], "backbone.gem_p", None),
    (["backbone.devices=0"], "backbone.devices", None),
    (["backbone.devices=many"], "backbone.devices", None),
    (["backbone.strategy=ddp"], "backbone.strategy", "ddp_fork, ddp_spawn"),
])
def test_bad_values_rejected(overrides: list[str], key: str, allowed: str | None) -> None:
    """A bad key or value is a ConfigError naming the key, and the allowed values where they are a fixed set."""
    with pytest.raises(ConfigError) as caught:
        checked_config(_compose(overrides))
    message = str(caught.value)
    assert f"'{key}'" in message
    if allowed is not None:
        assert allowed in message


EXPERIMENTS = sorted(path.stem for path in (CONF_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_preset_composes_and_applies_last(experiment: str) -> None:
    """A preset overrides the groups and the root config's own keys (grid, search), and later overrides win."""
    cfg = checked_config(_compose([f"experiment={experiment}"]), check_model=True)
    preset = OmegaConf.load(CONF_DIR / "experiment" / f"{experiment}.yaml")
    assert cfg.grid.dims == list(preset.grid.dims) and cfg.grid.indexes == list(preset.grid.indexes)
    if "backbone" in preset:
        assert cfg.backbone.pool == preset.backbone.pool
    if "backbones" in preset.grid:
        assert cfg.grid.backbones == list(preset.grid.backbones) and set(cfg.backbones) <= set(cfg.grid.backbones)
    assert checked_config(_compose([f"experiment={experiment}", "grid.dims=[64]"])).grid.dims == [64]


def test_the_book_preset_is_the_books_setting() -> None:
    cfg = checked_config(_compose(["experiment=book"]))
    assert (cfg.backbone.name, cfg.backbone.pool) == ("resnet50", "max")
    assert 100 in cfg.grid.dims and {"brute", "kd_tree", "ball_tree", "annoy"} <= set(cfg.grid.indexes)


def test_unknown_key_in_plain_dict() -> None:
    """load_config also takes a plain dict (params.yaml) and names an unknown nested key."""
    with pytest.raises(ConfigError, match=r"reduce\.dimm"):
        load_config({"reduce": {"dimm": 3}})


def test_schema_imports_no_registry() -> None:
    """ris.config judges what it can without the index families or protocols (their code is not imported)."""
    import subprocess
    import sys

    probe = ("import sys; import ris.config; "
             "print(sorted(m for m in sys.modules if m.startswith(('ris.index', 'ris.evaluate', 'annoy'))))")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"


def test_data_source_required(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no URL, archive or folder (and no environment override) there is nothing to read images from."""
    monkeypatch.delenv("RIS_DATA_ARCHIVE", raising=False)
    monkeypatch.delenv("RIS_DATA_DIR", raising=False)
    raw: dict[str, Any] = {"data": {"url": ""}, "indexes": {"brute": {"family": "brute"}, "annoy": {"family": "annoy"}}}
    with pytest.raises(ConfigError, match=r"data\.url"):
        load_config(raw)
    monkeypatch.setenv("RIS_DATA_DIR", "/somewhere")
    assert load_config(raw).data.url == ""


@pytest.mark.parametrize("dim, expected", [("full", None), (None, None), (1, 1), (128, 128)])
def test_check_dim_accepts(dim: Any, expected: int | None) -> None:
    """'full' and None keep every dimension; positive integers pass through."""
    assert check_dim("grid.dims[0]", dim) == expected


@pytest.mark.parametrize("dim", [0, -3, True, "abc", 2.5, "100"])
def test_check_dim_rejects(dim: Any) -> None:
    """Anything but a positive int or 'full' is rejected, naming the key it came from."""
    with pytest.raises(ConfigError, match=r"'grid\.dims\[2\]'.*positive integer, 'full'"):
        check_dim("grid.dims[2]", dim)


def test_params_yaml_matches_conf(tmp_path: Path) -> None:
    """The committed params.yaml is exactly conf/ composed with no overrides (guards against drift)."""
    written = compose_params([], out=tmp_path / "p.yaml")
    composed = yaml.safe_load(written.read_text())
    committed = yaml.safe_load((REPO / "params.yaml").read_text())
    assert composed == committed
    assert "hydra" not in composed


def test_compose_params_rejects_bad_override(tmp_path: Path) -> None:
    """`ris compose` refuses to write a configuration that does not validate."""
    with pytest.raises(ConfigError, match=r"indexes\.annoy\.metric"):
        compose_params(["indexes.annoy.metric=cosine"], out=tmp_path / "p.yaml", conf_dir=CONF_DIR)
    assert not (tmp_path / "p.yaml").exists()


def test_the_grid_runs_the_primary_backbone_alone_by_default() -> None:
    cfg = checked_config(_compose([]))
    assert cfg.grid.backbones == [cfg.backbone.name] and cfg.backbones == {}
    assert checked_config(_compose(["grid.backbones=[]"])).grid.backbones == ["mobilenetv2_100"]  # empty: the primary


def test_a_catalogue_backbone_joins_the_grid_and_a_stage_runs_on_it() -> None:
    from ris.config import grid_backbone, with_backbone
    from ris.paths import PipelinePaths

    cfg = checked_config(_compose(["+backbone@backbones.tf_efficientnet_lite0=tf_efficientnet_lite0",
                                   "grid.backbones=[mobilenetv2_100,tf_efficientnet_lite0]"]))
    assert grid_backbone(cfg, "tf_efficientnet_lite0").tail_from == "blocks.6"
    lite = with_backbone(cfg, "tf_efficientnet_lite0")
    assert lite.backbone.name == "tf_efficientnet_lite0" and cfg.backbone.name == "mobilenetv2_100"
    assert PipelinePaths(lite).features_dir.as_posix() == "artifacts/features/tf_efficientnet_lite0"
    assert with_backbone(cfg, "mobilenetv2_100").backbone is cfg.backbone


@pytest.mark.parametrize(("overrides", "message"), [
    (["grid.backbones=[mobilenetv2_100,resnet50]"],
     r"grid\.backbones\[1\]' is 'resnet50'; allowed values: mobilenetv2_100"),
    (["grid.backbones=[mobilenetv2_100,mobilenetv2_100]"], "names a backbone twice"),
    (["+backbone@backbones.resnet50=resnet50", "grid.backbones=[resnet50]"], "leaves out the primary backbone"),
    (["+backbone@backbones.mobilenetv2_100=mobilenetv2_100"], "repeats the primary backbone"),
    (["+backbone@backbones.vgg=vgg16"], r"'backbones\.vgg\.name' is 'vgg16'"),
    (["+backbone@backbones.resnet50=resnet50", "backbones.resnet50.pool=mean"], r"'backbones\.resnet50\.pool'"),
])
def test_bad_grid_backbones_are_refused_naming_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        checked_config(_compose(overrides))


def test_a_stage_refuses_a_backbone_outside_the_grid() -> None:
    from ris.config import grid_backbone

    with pytest.raises(ConfigError, match=r"neither the primary backbone \(mobilenetv2_100\) nor a key of 'backbones'"):
        grid_backbone(checked_config(_compose([])), "resnet50")

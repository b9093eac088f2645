"""What makes extraction fast without changing its result: pooling as a choice, uint8 batches normalised in the
model, channels-last, several processes writing shards merged in dataset order, and `ris bench extract`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from test_embed import tiny_backbone

from ris.config import ConfigError
from ris.data.catalog import scan_images
from ris.embed.extract import embed_images, extractor_key, plan_extraction
from ris.embed.store import load_features
from ris.embed.lightning import SHARD_FILE, SHARD_ROWS_FILE, EmbeddingModule, merge_shards
from ris.embed.preprocess import eval_transform
from ris.embed.pooling import set_global_pool
from ris.images import open_image


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=0).eval()


@pytest.mark.parametrize("name", ["test_efficientnet", "test_resnet", "test_convnext"])
def test_pooling_choices_pool_the_feature_maps_as_named(name: str):
    model = _model(name)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        default = model(images)
        maps = model.forward_features(images)
        pooled = {kind: set_global_pool(_model(name), kind, gem_p=1.0)(images) for kind in ("avg", "max", "gem")}
        strong_gem = set_global_pool(_model(name), "gem", gem_p=3.0)(images)
    torch.testing.assert_close(pooled["avg"], default)  # timm's own pooling is average pooling
    if name != "test_convnext":  # ConvNeXt normalises after pooling: only the pooled maps can be compared directly
        torch.testing.assert_close(pooled["max"], maps.amax((2, 3)))
        torch.testing.assert_close(pooled["gem"], maps.clamp(min=1e-6).mean((2, 3)), rtol=1e-4, atol=1e-5)
        expected = maps.clamp(min=1e-6).pow(3).mean((2, 3)).pow(1 / 3)
        torch.testing.assert_close(strong_gem, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(pooled["max"], pooled["avg"])


def test_a_model_without_a_swappable_pool_is_refused_by_config_key():
    with pytest.raises(ConfigError, match="backbone.pool"):
        set_global_pool(_model("test_vit"), "gem")


def test_the_pooling_choice_is_part_of_the_extractor_key_and_its_absence_keeps_old_keys(image_tree: Path):
    table, _ = scan_images(image_tree, progress=False)
    plain = plan_extraction(table, tiny_backbone())
    keys = {plain.extractor_key} | {plan_extraction(table, tiny_backbone(pool=kind)).extractor_key
                                    for kind in ("avg", "max", "gem")}
    assert len(keys) == 4
    gem_p2 = plan_extraction(table, tiny_backbone(pool="gem", gem_p=2.0)).extractor_key
    assert gem_p2 not in keys
    # Layout and batch size change rounding only: they keep the key, and so the cache.
    assert plan_extraction(table, tiny_backbone(channels_last=False, batch_size=3)).extractor_key == plain.extractor_key
    assert extractor_key(plain.backbone, plain.source, plain.data_config) == plain.extractor_key


def test_a_new_preprocessing_version_changes_the_extractor_key(image_tree: Path, monkeypatch: pytest.MonkeyPatch):
    table, _ = scan_images(image_tree, progress=False)
    plan = plan_extraction(table, tiny_backbone())
    import ris.embed.extract as extract_module

    monkeypatch.setattr(extract_module, "PREPROCESSING_VERSION", extract_module.PREPROCESSING_VERSION + 1)
    assert extractor_key(plan.backbone, plan.source, plan.data_config) != plan.extractor_key


def test_uint8_batches_normalised_in_the_model_give_the_same_bits_as_per_image_float_preprocessing(image_tree: Path):
    model = _model("test_efficientnet")
    config = timm.data.resolve_model_data_config(model)
    images = [open_image(path) for path in sorted(image_tree.rglob("*.jpg"))]
    floats = torch.stack([eval_transform(config, scaled=True)(image) for image in images])
    uint8 = torch.stack([eval_transform(config)(image) for image in images])
    assert uint8.dtype == torch.uint8
    with torch.no_grad():
        expected = EmbeddingModule(model)(floats)
        assert torch.equal(EmbeddingModule(model, mean=config["mean"], std=config["std"])(uint8), expected)
        channels_last = EmbeddingModule(_model("test_efficientnet"), channels_last=True, mean=config["mean"],
                                         std=config["std"])(uint8)
    torch.testing.assert_close(channels_last, expected, rtol=1e-5, atol=1e-6)


def test_two_cpu_processes_write_shards_that_merge_into_the_single_process_matrix(tmp_path: Path):
    from conftest import make_image_tree

    tree = make_image_tree(tmp_path / "images", classes=3, per_class=5)  # 15 images: ranks get 8 and 7
    table, _ = scan_images(tree, progress=False)
    single = plan_extraction(table, tiny_backbone(batch_size=4))
    paths = [tree / path for path in single.rows["path"]]
    one, device_one = embed_images(single, paths, progress=False)
    two, device_two = embed_images(plan_extraction(table, tiny_backbone(batch_size=4, devices=2)), paths,
                                   progress=False)
    assert (device_one, device_two) == ("cpu", "2 x cpu")
    assert two.shape == one.shape == (15, single.model.num_features)
    np.testing.assert_allclose(two, one, rtol=1e-5, atol=1e-6)  # each rank has one thread: rounding may differ
    assert np.abs(two - one).max() < 1e-5 and not np.allclose(one[0], one[1])


def _write_shards(folder: Path, rows: int, written: tuple[list[int], ...]) -> Path:
    folder.mkdir()
    for rank, rank_rows in enumerate(written):
        shard = np.lib.format.open_memmap(folder / SHARD_FILE.format(rank=rank), mode="w+", dtype=np.float32,
                                          shape=(rows, 2))
        shard[rank_rows] = np.array(rank_rows, np.float32)[:, None]
        shard.flush()
        del shard
        np.save(folder / SHARD_ROWS_FILE.format(rank=rank), np.array(rank_rows))
    return folder


def test_shards_merge_in_dataset_order_and_rows_no_rank_wrote_are_refused(tmp_path: Path):
    merged = merge_shards(_write_shards(tmp_path / "complete", 3, ([0, 2], [1])), 3, tmp_path / "matrix.npy")
    np.testing.assert_array_equal(merged[:, 0], [0, 1, 2])

    with pytest.raises(RuntimeError, match="wrote 3 of 4 rows"):  # a rank that died before writing row 3
        merge_shards(_write_shards(tmp_path / "killed", 4, ([0, 2], [1])), 4, tmp_path / "other.npy")
    assert not (tmp_path / "other.npy").exists()


def test_bench_extract_measures_forward_decode_and_end_to_end(image_tree: Path, tmp_path: Path):
    from ris.bench.extract import plot_extract, run_extract_benchmark

    table, _ = scan_images(image_tree, progress=False)
    table.to_parquet(tmp_path / "images.parquet", index=False)
    result = run_extract_benchmark(tiny_backbone(batch_size=4), tmp_path / "images.parquet", image_tree, [],
                                   limit=None, forward_seconds=0.05, decode_count=5, compiled=False)
    assert result["model"] == "test_efficientnet" and result["input_size"] == [3, 160, 160]
    assert result["end_to_end"]["images"] == 12 and result["end_to_end"]["images_per_second"] > 0
    assert result["end_to_end"]["compiled"] is False  # 12 images are below compile_min_images: extraction stays eager
    assert result["decode_one_core_images_per_second"] > 0
    rates = [item["images_per_second"] for item in result["forward_only"]]
    assert all(rate > 0 for rate in rates) and len(rates) == len({json.dumps({k: v for k, v in item.items()
                                                                              if k != "images_per_second"})
                                                                   for item in result["forward_only"]})
    fastest = result["fastest_forward"]
    assert fastest["images_per_second"] >= max(rates)
    assert result["ratio"] == pytest.approx(result["end_to_end"]["images_per_second"] / fastest["images_per_second"])
    assert result["target"]["holds"] == (result["ratio"] >= 0.85)
    assert result["ratio_to_eager"] == pytest.approx(result["ratio"])  # nothing compiled: the same denominator
    json.dumps(result)  # what the command writes
    assert plot_extract(result, tmp_path / "bench.png").stat().st_size > 0


def test_bench_extract_also_times_the_compiled_model_in_every_cpu_setting_and_at_the_larger_gpu_batches():
    from ris.bench.extract import forward_in_processes, forward_only, forward_settings

    settings = forward_settings(cuda=False, cpus=2)
    compiled = [item for item in settings if item["compiled"]]
    assert {(item["batch_size"], item["processes"]) for item in compiled} == {
        (batch, processes) for batch in (8, 16, 32, 64) for processes in (1, 2)}
    assert all(item["channels_last"] for item in compiled)
    assert {item["batch_size"] for item in forward_settings(cuda=True, cpus=2) if item["compiled"]} == {256, 512}
    assert not any(item["compiled"] for item in forward_settings(cuda=False, cpus=2, compiled=False))
    assert forward_only(_model("test_efficientnet"), (3, 32, 32), 2, channels_last=True, autocast=False,
                        seconds=0.05, compiled=True) > 0
    # Two forked processes compiling at once (which hung with Inductor's compile workers) come back with a rate.
    two = {"channels_last": True, "batch_size": 2, "bf16_autocast": False, "processes": 2, "compiled": True}
    assert forward_in_processes(_model("test_efficientnet"), (3, 32, 32), two, seconds=0.05) > 0


def test_decode_only_samples_the_whole_collection_not_its_first_images(image_tree: Path, monkeypatch):
    import ris.bench.extract as bench

    table, _ = scan_images(image_tree, progress=False)
    plan = plan_extraction(table, tiny_backbone())
    paths = [image_tree / path for path in plan.rows["path"]]
    seen: list[list[Path]] = []
    monkeypatch.setattr(bench, "ImageFileDataset", lambda sample, transform: seen.append(sample) or sample)
    monkeypatch.setattr(bench, "eval_transform", lambda config: None)
    bench.decode_only(plan, paths, 3)
    assert len(paths) > 3 and seen == [[paths[0], seen[0][1], paths[-1]]] and seen[0][1] not in (paths[0], paths[-1])


def test_a_compiled_embedding_module_pads_the_last_batch_and_gives_the_eager_embeddings(tmp_path: Path):
    from conftest import make_image_tree

    tree = make_image_tree(tmp_path / "images", classes=2, per_class=5)  # 10 images: batches of 4, 4 and 2
    table, _ = scan_images(tree, progress=False)
    plan = plan_extraction(table, tiny_backbone(batch_size=4, compile_min_images=0))
    paths = [tree / path for path in plan.rows["path"]]
    compiled, _ = embed_images(plan, paths, progress=False)
    eager, _ = embed_images(plan_extraction(table, tiny_backbone(batch_size=4, compile=False)), paths,
                            progress=False)
    np.testing.assert_allclose(compiled, eager, rtol=1e-4, atol=1e-5)
    assert not np.allclose(eager[-1], eager[-2])

    from torch._dynamo.utils import counters

    module = EmbeddingModule(_model("test_efficientnet"), compile=True)
    with torch.inference_mode():
        batch = torch.rand(4, 3, 32, 32)
        first = module.embed(batch)
        compiled_frames = counters["frames"]["ok"]
        last = module.embed(batch[:2])  # the last batch, smaller: padded, not compiled again
    assert module.compiled is not None and module.compiled_batch == 4
    assert counters["frames"]["ok"] == compiled_frames > 0
    torch.testing.assert_close(last, first[:2], rtol=1e-4, atol=1e-5)
    assert not any(name.startswith("compiled") for name, _ in module.named_modules())  # not in its own tree


def test_a_run_below_the_compile_threshold_or_a_failing_compile_embeds_with_the_eager_model(
        image_tree: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    import ris.embed.lightning as lightning

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no C++ compiler")

    table, _ = scan_images(image_tree, progress=False)
    plan = plan_extraction(table, tiny_backbone())  # compile on, but 12 images are far below compile_min_images
    assert plan.backbone.compile and len(plan.rows) < plan.backbone.compile_min_images
    monkeypatch.setattr(lightning, "compile_frozen", refuse)
    matrix, _ = embed_images(plan, [image_tree / path for path in plan.rows["path"]], progress=False)
    assert np.isfinite(matrix).all()
    monkeypatch.undo()

    module = EmbeddingModule(_model("test_efficientnet"), compile=True)
    monkeypatch.setattr(torch, "compile", refuse)
    with torch.inference_mode(), caplog.at_level("WARNING"):
        batch = torch.rand(3, 3, 32, 32)
        torch.testing.assert_close(module.embed(batch), module(batch))
    assert module.compiled is None and "no C++ compiler" in caplog.text


def test_a_failing_forward_process_fails_the_benchmark_at_once():
    """A child that raises is reported with its error, not waited on for the queue's ten-minute timeout."""
    import time

    from ris.bench.extract import forward_in_processes

    broken = {"channels_last": True, "batch_size": 2, "bf16_autocast": False, "processes": 2}  # no "compiled"
    started = time.perf_counter()
    with pytest.raises(RuntimeError, match="KeyError: 'compiled'"):
        forward_in_processes(_model("test_efficientnet"), (3, 32, 32), broken, seconds=0.05)
    assert time.perf_counter() - started < 60


def test_bench_backbones_counts_what_published_figures_say_and_measures_speed(tmp_path: Path):
    """ResNet-50 is 25.6 M parameters with its 1000-class head (2.05 M of it): 23.5 M as a feature extractor, and
    4.1 G multiply-adds at 224 px; a tiny model's forward pass is timed and written, with the machine and date."""
    from ris.bench.backbones import backbones_bench_markdown, configured_backbones, main, run_backbones_benchmark
    from ris.paths import conf_dir

    assert configured_backbones(conf_dir())["resnet50"] == "resnet50"
    result = run_backbones_benchmark({"resnet50": "resnet50", "tiny": "test_efficientnet"}, seconds=0.2,
                                     batch_size=2)
    resnet, tiny = result["backbones"]
    assert (resnet["feature_length"], resnet["input_px"]) == (2048, 224)
    assert resnet["parameters"] == pytest.approx(23.5e6, rel=0.01) and resnet["gflops"] == pytest.approx(8.2, rel=0.02)
    assert tiny["forward_images_per_second"] > 0 and tiny["feature_length"] == 256
    shown = backbones_bench_markdown(result)
    assert "| resnet50 " in shown and result["date"] in shown
    assert main(["mobilenetv2_100", "--seconds", "0.2", "--out", str(tmp_path)]) == 0
    written = json.loads((tmp_path / "cpu.json").read_text())
    assert [row["backbone"] for row in written["backbones"]] == ["mobilenetv2_100"]
    assert written["backbones"][0]["parameters"] == 2_223_872  # timm's mobilenetv2_100 without its classifier
    assert main(["resnet5"]) == 2


RANK_SCRIPT = """
import sys
from pathlib import Path

from ris.config import BackboneConfig
from ris.data.catalog import scan_images
from ris.embed.extract import extract_features

tree, out = Path(sys.argv[1]), Path(sys.argv[2])
table, _ = scan_images(tree, progress=False)
backbone = BackboneConfig(name="test_efficientnet", pretrained=False, batch_size=4, num_workers=0, devices=1)
features = extract_features(table, tree, backbone, out, cache_root=out.parent / "cache", progress=False)
print("DEVICE", features.run["device"])
"""


def test_two_machines_under_torchrun_embed_the_collection_as_one_process_does(tmp_path: Path):
    """Two torchrun "machines" of one rank each (the same loopback here, the same shared folder as a cluster's
    shared storage): each embeds its share, rank 0 merges and writes the store; the other exits when done."""
    import subprocess
    import sys

    from conftest import free_port, make_image_tree

    from ris.config import BackboneConfig
    from ris.embed.extract import extract_features

    tree = make_image_tree(tmp_path / "images", classes=3, per_class=5)  # 15 images: the ranks get 8 and 7
    script = tmp_path / "extract_rank.py"
    script.write_text(RANK_SCRIPT)
    port = free_port()
    shared = tmp_path / "shared" / "features"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SLURM_", "TORCHELASTIC_"))}
    launches = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
                                  "--nproc-per-node", "1", "--node-rank", str(node), "--master-addr", "127.0.0.1",
                                  "--master-port", str(port), str(script), str(tree), str(shared)],
                                 env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for node in (0, 1)]
    outputs = [launch.communicate(timeout=300)[0] for launch in launches]
    assert [launch.returncode for launch in launches] == [0, 0], "\n".join(outputs)
    assert "DEVICE 2 machine(s) x 1 x cpu" in outputs[0]
    assert "DEVICE" not in outputs[1]  # rank 1 exited once its shard was on disk
    assert not [path for path in shared.parent.iterdir() if path.name.startswith(".ris-")]  # no scratch left
    assert (shared.parent / "cache" / "test_efficientnet").is_dir()  # rank 0 filled the embedding cache

    table, _ = scan_images(tree, progress=False)
    alone = extract_features(table, tree, BackboneConfig(name="test_efficientnet", pretrained=False, batch_size=4,
                                                         num_workers=0, devices=1), tmp_path / "alone",
                             progress=False)
    merged = load_features(shared)
    assert merged.key == alone.key
    assert merged.rows["path"].tolist() == alone.rows["path"].tolist()
    np.testing.assert_allclose(merged.embeddings, alone.embeddings, rtol=1e-5, atol=1e-6)
    assert not np.allclose(alone.embeddings[0], alone.embeddings[1])


def test_a_cluster_launch_is_read_from_torchrun_or_srun_and_a_lone_process_is_none(monkeypatch: pytest.MonkeyPatch):
    from ris.embed.lightning import ClusterLaunch, cluster_launch

    for name in [name for name in os.environ if name.startswith(("SLURM_", "TORCHELASTIC_"))]:
        monkeypatch.delenv(name)
    assert cluster_launch() is None
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_NNODES", "2")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_NAME", "extract")
    assert cluster_launch() == ClusterLaunch(rank=3, world_size=8, per_node=4, run_id="4242.0")
    assert cluster_launch().num_nodes == 2
    monkeypatch.setenv("SLURM_NTASKS", "1")  # one task: ris starts its own ranks as on any machine
    assert cluster_launch() is None
    for name, value in {"TORCHELASTIC_RUN_ID": "job7", "RANK": "5", "WORLD_SIZE": "6", "LOCAL_WORLD_SIZE": "3"}.items():
        monkeypatch.setenv(name, value)
    assert cluster_launch() == ClusterLaunch(rank=5, world_size=6, per_node=3, run_id="job7")

"""`ris bench backbones`: what every configured backbone is and costs on this machine, whatever weights are here.

For each ``conf/backbone/*.yaml`` (or the names given): the timm model built with random weights (the count and the
speed do not depend on them, and nothing is downloaded), its input size and feature length, its parameters and
GFLOPs per image (:mod:`ris.embed.cost`), and forward-only images/s in the setting extraction uses here (channels-
last, one single-threaded process per CPU core, as ``backbone.devices: auto`` runs them; bf16 autocast and large
batches on a GPU). Accuracy is not measured here: it needs the real weights, and comes from the pipeline's backbone
table (``reports/backbones.md``, ``experiment=backbones``). Writes ``reports/bench/backbones/<device>.json`` and
``.md``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ris.bench.extract import device_name, forward_in_processes
from ris.embed.cost import model_cost
from ris.paths import conf_dir, write_json_atomic, write_text_atomic


def configured_backbones(root: Path) -> dict[str, str]:
    """Config name -> timm model name of every ``conf/backbone/*.yaml``."""
    from omegaconf import OmegaConf

    return {path.stem: str(OmegaConf.load(path).name) for path in sorted((root / "backbone").glob("*.yaml"))}


def forward_setting(cuda: bool, cpus: int, batch_size: int | None) -> dict[str, Any]:
    """Extraction's setting on this machine: channels-last; on a CPU one process per core, batch 8 (the fastest
    forward-only setting `ris bench extract` found for MobileNetV2 and EfficientNet-Lite2 here); on a GPU one
    process, bf16 autocast, batch 256. Eager, as extraction runs it."""
    return {"channels_last": True, "bf16_autocast": cuda, "processes": 1 if cuda else cpus,
            "batch_size": batch_size or (256 if cuda else 8), "compiled": False}


def measure_backbone(model_name: str, setting: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Size, cost and forward-only speed of timm's ``model_name`` as a pooled feature extractor."""
    import timm

    model = timm.create_model(model_name, pretrained=False, num_classes=0).eval()
    input_size = tuple(timm.data.resolve_model_data_config(model)["input_size"])
    cost = model_cost(model, input_size)
    with torch.inference_mode():
        feature_length = int(model(torch.zeros(1, *input_size)).shape[-1])
    rate = forward_in_processes(model, input_size, setting, seconds)
    return {"model": model_name, "input_px": input_size[-1], "feature_length": feature_length, **cost.as_dict(),
            "forward_images_per_second": rate}


def run_backbones_benchmark(backbones: dict[str, str], *, seconds: float, batch_size: int | None) -> dict[str, Any]:
    """:func:`measure_backbone` for each config name -> timm name in ``backbones``; the report."""
    cuda = torch.cuda.is_available()
    setting = forward_setting(cuda, multiprocessing.cpu_count(), batch_size)
    rows = []
    for config_name, model_name in backbones.items():
        row = {"backbone": config_name, **measure_backbone(model_name, setting, seconds)}
        print(f"{config_name}: {row['parameters'] / 1e6:.1f} M parameters, {row['gflops']:.2f} GFLOPs, "
              f"{row['forward_images_per_second']:.1f} images/s forward only", flush=True)
        rows.append(row)
    return {"date": date.today().isoformat(), "cuda": cuda, "device": device_name(), "setting": setting,
            "machine": {"cpus": multiprocessing.cpu_count(), "torch": torch.__version__,
                        "python": platform.python_version()},
            "weights": "random (size, cost and speed do not depend on them)", "backbones": rows}


def backbones_bench_markdown(result: dict[str, Any]) -> str:
    """The report as a table, with the machine, the setting and the date."""
    table = pd.DataFrame([{
        "backbone": row["backbone"], "timm model": row["model"], "input (px)": row["input_px"],
        "feature length": row["feature_length"], "parameters (M)": f"{row['parameters'] / 1e6:.2f}",
        "GFLOPs / image": f"{row['gflops']:.2f}",
        "forward-only images/s": f"{row['forward_images_per_second']:.1f}"} for row in result["backbones"]])
    setting = result["setting"]
    how = (f"{setting['processes']} process(es), batch {setting['batch_size']}, channels-last"
           + (", bf16 autocast" if setting["bf16_autocast"] else ""))
    return (f"Every configured backbone on {result['device']} ({result['machine']['cpus']} CPUs), "
            f"{result['date']}: forward only on in-memory batches, {how}; random weights (size, cost and speed do "
            "not depend on them). GFLOPs count a multiply-add as two.\n\n" + table.to_markdown(index=False) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ris bench backbones", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="conf/backbone config names (default: all of them)")
    parser.add_argument("--seconds", type=float, default=6.0, help="time per backbone, forward only")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8 on a CPU, 256 on a GPU")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/backbones"))
    args = parser.parse_args(argv)
    configured = configured_backbones(conf_dir())
    unknown = [name for name in args.names if name not in configured]
    if unknown:
        print(f"ris bench backbones: no conf/backbone/{unknown[0]}.yaml (configs: {', '.join(configured)})")
        return 2
    chosen = {name: configured[name] for name in args.names} if args.names else configured
    result = run_backbones_benchmark(chosen, seconds=args.seconds, batch_size=args.batch_size)
    name = "gpu" if result["cuda"] else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / f"{name}.json", result)
    write_text_atomic(args.out / f"{name}.md", backbones_bench_markdown(result))
    print(f"wrote {args.out / f'{name}.json'} and {args.out / f'{name}.md'}")
    return 0

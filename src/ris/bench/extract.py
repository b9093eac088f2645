"""`ris bench extract`: how close extraction comes to what the model alone can do on this machine.

Three measurements of the configured backbone, on the collection the pipeline catalogued:

- **forward only**: the model on random batches already in memory, in every memory layout and batch size tried
  (and bf16 autocast on a GPU); the fastest is what the hardware allows this model.
- **decode only**: reading, decoding and preprocessing the images (the DataLoader's work) on one core.
- **end to end**: the extraction code path itself (:func:`ris.embed.extract.embed_images`: read -> decode ->
  embed -> write), timed over the images.

The ratio end to end / fastest forward is the figure of merit: 1.0 means decoding and writing cost nothing.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import queue
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ris.checks import read_params
from ris.config import BackboneConfig
from ris.data.catalog import image_root, read_image_table
from ris.embed.extract import ExtractionPlan, embed_images, plan_extraction
from ris.embed.lightning import EmbeddingModule, ImageFileDataset, resolve_devices
from ris.embed.preprocess import eval_transform
from ris.paths import PipelinePaths, write_json_atomic

CPU_TARGET_RATIO = 0.85  # end to end >= this share of the fastest forward-only, on a CPU
GPU_TARGET_IMAGES_PER_SECOND = 10_000  # ResNet-50 at 224 px, one H100/H200, end to end
WARMUP_DECODES = 20  # images decoded before decode-only is timed


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo``), or what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu: {cpu_name()}"


def forward_only(model: torch.nn.Module, input_size: Sequence[int], batch_size: int, *, channels_last: bool,
                 autocast: bool, seconds: float, compiled: bool = False, warmup: int = 2) -> float:
    """Images per second of ``model`` on one random batch fed again and again (no data loading at all); with
    ``compiled``, under ``torch.compile`` (Inductor, frozen weights, as ``ris serve`` runs it), compiling first."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    module = EmbeddingModule(model, normalize=True, channels_last=channels_last).to(device).eval()
    if compiled:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # process-wide (see ris.search.searcher.ImageEmbedder.compile)
        module = torch.compile(module, dynamic=False)
    batch = torch.randn(batch_size, *input_size, device=device)
    with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
        for _ in range(warmup):
            module(batch)
        if device == "cuda":
            torch.cuda.synchronize()
        started, images = time.perf_counter(), 0
        while (elapsed := time.perf_counter() - started) < seconds or images == 0:
            module(batch)
            images += batch_size
        if device == "cuda":
            torch.cuda.synchronize()
            elapsed = time.perf_counter() - started
    return images / elapsed


def forward_with(model: torch.nn.Module, input_size: Sequence[int], setting: dict[str, Any], seconds: float) -> float:
    """:func:`forward_only` in one of :func:`forward_settings`' configurations."""
    return forward_only(model, input_size, setting["batch_size"], channels_last=setting["channels_last"],
                        autocast=setting["bf16_autocast"], seconds=seconds, compiled=setting["compiled"])


def _forward_in_child(model: torch.nn.Module, input_size: Sequence[int], setting: dict[str, Any], seconds: float,
                      threads: int, start: Any, rates: Any) -> None:
    torch.set_num_threads(threads)
    try:
        if setting["compiled"]:
            import torch._inductor.config as inductor_config

            inductor_config.compile_threads = 1  # Inductor's pool of compile workers hung in forked children
        start.wait()  # every process runs at the same time, sharing the machine as extraction's ranks do
        rates.put(forward_with(model, input_size, setting, seconds))
    except BaseException as error:  # the parent re-raises it at once instead of waiting on the queue
        start.abort()
        rates.put(f"{type(error).__name__}: {error}")


def forward_in_processes(model: torch.nn.Module, input_size: Sequence[int], setting: dict[str, Any],
                         seconds: float) -> float:
    """Images per second of ``setting["processes"]`` forked copies of ``model`` running forward-only together,
    each with its share of the cores (as Lightning gives extraction's ranks); one process runs here."""
    processes = setting["processes"]
    if processes == 1:
        return forward_with(model, input_size, setting, seconds)
    context = multiprocessing.get_context("fork")
    start, rates = context.Barrier(processes), context.Queue()
    threads = max(1, multiprocessing.cpu_count() // processes)
    children = [context.Process(target=_forward_in_child, args=(model, input_size, setting, seconds, threads, start,
                                                                rates)) for _ in range(processes)]
    for child in children:
        child.start()
    try:
        results = [rates.get(timeout=600) for _ in children]
    except queue.Empty:
        for child in children:
            child.kill()
        raise RuntimeError(f"a forward-only process gave no result in 600 s: {setting}") from None
    for child in children:
        child.join()
    failures = [result for result in results if isinstance(result, str)]
    if failures:
        # Every child's own error: the one that failed first also breaks the others' start barrier.
        raise RuntimeError(f"a forward-only process failed: {'; '.join(sorted(set(failures)))}")
    return float(sum(results))


def forward_settings(cuda: bool, cpus: int, compiled: bool = True) -> list[dict[str, Any]]:
    """The configurations tried for forward-only: memory layout x batch size (x bf16 autocast on a GPU; x one
    process or one per core on a CPU, where two single-threaded processes can beat one with two threads), eager;
    then, with ``compiled``, the channels-last ones at the larger batches under ``torch.compile``."""
    batches = (64, 256, 512) if cuda else (8, 16, 32, 64)
    precisions = (False, True) if cuda else (False,)
    processes = (1,) if cuda or cpus == 1 else (1, cpus)
    eager = [{"channels_last": layout, "batch_size": batch, "bf16_autocast": autocast, "processes": count,
              "compiled": False}
             for layout in (False, True) for batch in batches for autocast in precisions for count in processes]
    if not compiled:
        return eager
    # Compiled: channels-last, every batch size and process count on a CPU (extraction compiles there too), the
    # two larger batches on a GPU. Forked children compile in-process (_forward_in_child): with Inductor's pool of
    # compile workers, two forked children hung (2026-12-03).
    return eager + [{**setting, "compiled": True} for setting in eager
                    if setting["channels_last"] and (not cuda or setting["batch_size"] in batches[-2:])]


def decode_only(plan: ExtractionPlan, paths: list[Path], count: int) -> float:
    """Images per second of the DataLoader's work (read, decode, resize, crop to uint8) on one core, over ``count``
    images spread evenly over ``paths`` (a collection sorted by class is not alike from end to end: Caltech101's
    first 400, its faces, decode at about 0.6 times the average image's rate)."""
    sample = [paths[index] for index in np.linspace(0, len(paths) - 1, min(count, len(paths))).round().astype(int)]
    dataset = ImageFileDataset(sample, eval_transform(plan.data_config))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:
        for row in range(min(WARMUP_DECODES, len(dataset))):  # untimed: first calls into PIL and torch cost more
            dataset[row]
        started = time.perf_counter()
        for row in range(len(dataset)):
            dataset[row]
        return len(dataset) / (time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)


def end_to_end(plan: ExtractionPlan, paths: list[Path]) -> dict[str, Any]:
    """Run extraction's own code path over ``paths`` into a scratch file; its rate, timed around the whole run."""
    with tempfile.TemporaryDirectory(prefix="ris-bench-extract-") as scratch:
        started = time.perf_counter()
        matrix, device = embed_images(plan, paths, progress=False, into=Path(scratch) / "embeddings.npy")
        seconds = time.perf_counter() - started
        if not np.isfinite(matrix[-1]).all():
            raise RuntimeError("extraction wrote non-finite embeddings")
        del matrix
    backbone = plan.backbone
    return {"images": len(paths), "seconds": seconds, "images_per_second": len(paths) / seconds, "device": device,
            "batch_size": backbone.batch_size, "num_workers": backbone.num_workers,
            "devices": resolve_devices(backbone.devices, backbone.accelerator),
            "channels_last": backbone.channels_last, "precision": backbone.precision,
            "compiled": backbone.compile and len(paths) >= backbone.compile_min_images}  # as embed_images decides


def target_check(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's target for the machine the benchmark ran on."""
    if result["cuda"]:
        measured = result["end_to_end"]["images_per_second"]
        return {"target": f"end to end >= {GPU_TARGET_IMAGES_PER_SECOND:,} images/s (ResNet-50, 224 px, one GPU)",
                "applies": result["model"] == "resnet50", "measured": measured,
                "holds": measured >= GPU_TARGET_IMAGES_PER_SECOND}
    return {"target": f"end to end >= {CPU_TARGET_RATIO} x the fastest forward-only", "applies": True,
            "measured": result["ratio"], "holds": result["ratio"] >= CPU_TARGET_RATIO}


def run_extract_benchmark(backbone: BackboneConfig, table_path: Path, images_dir: Path, exclude_classes: list[str],
                          *, limit: int | None, forward_seconds: float, decode_count: int,
                          compiled: bool = True) -> dict[str, Any]:
    """Measure forward-only (every setting; with ``compiled``, compiled ones too), decode-only and end to end for
    ``backbone``; return the report."""
    plan = plan_extraction(read_image_table(table_path), backbone, exclude_classes)
    root = image_root(images_dir)
    rows = plan.rows if limit is None else plan.rows.iloc[:limit]
    paths = [root / path for path in rows["path"]]
    cuda = torch.cuda.is_available()
    input_size = plan.data_config["input_size"]
    forward = []
    for setting in forward_settings(cuda, multiprocessing.cpu_count(), compiled):
        rate = forward_in_processes(plan.model, input_size, setting, forward_seconds)
        forward.append({**setting, "images_per_second": rate})
        print(f"forward only {setting}: {rate:.1f} images/s", flush=True)
    # The layouts were tried on the same module: put the one the config asks for back before extraction runs.
    plan.model.to(memory_format=torch.contiguous_format)
    decode = decode_only(plan, paths, min(decode_count, len(paths)))
    print(f"decode only, one core: {decode:.1f} images/s", flush=True)
    run = end_to_end(plan, paths)
    print(f"end to end: {run['images_per_second']:.1f} images/s over {run['images']} images", flush=True)
    fastest = dict(max(forward, key=lambda item: item["images_per_second"]))
    # Measured again right after: a shared machine's speed drifts, and the ratio's denominator is the best seen.
    again = forward_in_processes(plan.model, input_size, fastest, forward_seconds)
    fastest.update(images_per_second=max(again, fastest["images_per_second"]), first=fastest["images_per_second"],
                   again=again)
    print(f"fastest forward only again: {again:.1f} images/s", flush=True)
    # The best eager rate seen: the re-measured one when the fastest setting is eager (a CI run caught the two apart).
    fastest_eager = fastest if not fastest["compiled"] else max(
        (item for item in forward if not item["compiled"]), key=lambda item: item["images_per_second"])
    result = {"date": date.today().isoformat(), "model": plan.source.model, "weights": plan.source.kind,
              "input_size": list(input_size), "cuda": cuda, "device": device_name(),
              "machine": {"cpus": multiprocessing.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "torch": torch.__version__, "python": platform.python_version(),
                          "thp_mem_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE")},
              "forward_only": forward, "fastest_forward": fastest, "decode_one_core_images_per_second": decode,
              "end_to_end": run, "ratio": run["images_per_second"] / fastest["images_per_second"],
              # extraction runs the eager model: its ratio to the fastest eager forward, beside the figure of merit
              "fastest_eager_forward": fastest_eager,
              "ratio_to_eager": run["images_per_second"] / fastest_eager["images_per_second"]}
    if not cuda:
        # With decoding on the CPU, its cost is paid out of the same cores the model needs: even perfectly
        # overlapped, end to end cannot beat 1 / (1/forward + 1/(cores x decode per core)).
        cores = multiprocessing.cpu_count()
        ceiling = 1 / (1 / fastest["images_per_second"] + 1 / (cores * decode))
        result["ceiling_with_cpu_decoding"] = {"images_per_second": ceiling,
                                               "ratio": ceiling / fastest["images_per_second"]}
    result["target"] = target_check(result)
    return result


def plot_extract(result: dict[str, Any], path: Path) -> Path:
    """Bars: every forward-only setting, decode on one core and the end to end rate, the target drawn."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    labels, rates, colours = [], [], []
    for item in result["forward_only"]:
        layout = "channels-last" if item["channels_last"] else "default layout"
        labels.append(f"forward, {layout}, batch {item['batch_size']}" + (", bf16" if item["bf16_autocast"] else "")
                      + (f", {item['processes']} processes" if item["processes"] > 1 else "")
                      + (", compiled" if item.get("compiled") else ""))
        rates.append(item["images_per_second"])
        colours.append("tab:blue")
    labels.append("decode + preprocess, one core")
    rates.append(result["decode_one_core_images_per_second"])
    colours.append("tab:grey")
    run = result["end_to_end"]
    labels.append(f"end to end ({run['devices']} processes x batch {run['batch_size']}, "
                  f"{run['num_workers']} workers each{', compiled' if run.get('compiled') else ''})")
    rates.append(run["images_per_second"])
    colours.append("tab:green" if result["target"]["holds"] else "tab:red")
    figure, axes = plt.subplots(figsize=(9, 0.4 * len(labels) + 1.5))
    axes.barh(labels, rates, color=colours)
    for position, rate in enumerate(rates):
        axes.text(rate, position, f" {rate:,.1f}", va="center", fontsize=8)
    if not result["cuda"]:
        axes.axvline(CPU_TARGET_RATIO * result["fastest_forward"]["images_per_second"], color="black", ls=":",
                     lw=1, label=f"target: {CPU_TARGET_RATIO} x fastest forward")
    axes.invert_yaxis()
    axes.set_xlabel("images per second")
    if "ceiling_with_cpu_decoding" in result:
        axes.axvline(result["ceiling_with_cpu_decoding"]["images_per_second"], color="grey", ls="--", lw=1,
                     label="ceiling: forward + decoding on the same cores")
    if not result["cuda"] or "ceiling_with_cpu_decoding" in result:
        axes.legend(loc="lower right", fontsize=8)
    axes.set_title(f"{result['model']} extraction, {result['date']}\n{result['device']} "
                   f"({result['machine']['cpus']} CPUs): end to end = {result['ratio']:.2f} x fastest forward",
                   fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ris bench extract", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--limit", type=int, default=None, help="embed only the first N images (default: all)")
    parser.add_argument("--forward-seconds", type=float, default=8.0, help="time per forward-only setting")
    parser.add_argument("--decode-images", type=int, default=400, help="images decoded for decode-only")
    parser.add_argument("--batch-size", type=int, default=None, help="end to end batch size (default: the config's)")
    parser.add_argument("--workers", type=int, default=None, help="end to end DataLoader workers (default: config)")
    parser.add_argument("--devices", type=int, default=None, help="end to end processes (default: the config's)")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: <reports>/bench/extract)")
    parser.add_argument("--no-compile", action="store_true", help="forward-only in eager mode only")
    args = parser.parse_args(argv)
    cfg = read_params(args.params)
    backbone = cfg.backbone
    if args.batch_size is not None:
        backbone = replace(backbone, batch_size=args.batch_size)
    if args.workers is not None:
        backbone = replace(backbone, num_workers=args.workers)
    if args.devices is not None:
        backbone = replace(backbone, devices=args.devices)
    paths = PipelinePaths(cfg)
    result = run_extract_benchmark(backbone, paths.image_table, paths.images_dir, cfg.data.exclude_classes,
                                   limit=args.limit, forward_seconds=args.forward_seconds,
                                   decode_count=args.decode_images, compiled=not args.no_compile)
    out = args.out or Path(cfg.paths.reports) / "bench" / "extract"
    out.mkdir(parents=True, exist_ok=True)
    name = result["model"] + ("-gpu" if result["cuda"] else "-cpu")
    write_json_atomic(out / f"{name}.json", result)
    plot_extract(result, out / f"{name}.png")
    check = result["target"]
    print(f"{'holds' if check['holds'] else 'MISSED'}: {check['target']} — {check['measured']:.3g}")
    print(f"wrote {out / f'{name}.json'} and {out / f'{name}.png'}")
    return 0

"""`ris bench search`: make (or reuse) the benchmark collection, measure every index family, write JSON and PNG."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ris.bench.collections import BenchCollection, cached_collection, held_out_collection, synthetic_collection
from ris.bench.report import check_targets, plot_recall_qps
from ris.bench.search import candidates, run_benchmark
from ris.checks import read_params
from ris.config import AUTO_DIM, Config
from ris.embed.store import load_features
from ris.paths import PipelinePaths, write_json_atomic
from ris.reduce import ReducedStore
from ris.reduce.pca import fit_reducer

SCALES = ("caltech", "million")


def bench_collection(cfg: Config, scale: str, size: int, queries: int, seed: int, work: Path) -> Path:
    """The folder holding the collection of ``scale``, made from the pipeline's stores on first use."""
    paths = PipelinePaths(cfg)
    folder = work / f"{scale}-{size}" if scale == "million" else work / scale
    if scale == "caltech":  # the real reduced vectors at the dimension the PCA sweep chose
        reduced = ReducedStore.load(paths.reduced_dir(AUTO_DIM))
        spec = {"kind": scale, "reduced": reduced.built_from, "queries": queries, "seed": seed}
        cached_collection(folder, spec, lambda: held_out_collection(reduced.vectors, queries, seed, spec))
        return folder
    features = load_features(paths.features_dir)
    spec = {"kind": scale, "features_key": features.key, "pca_dim": 128, "size": size, "queries": queries,
            "seed": seed, "noise_ratio": 1.5}

    def make() -> BenchCollection:
        reducer = fit_reducer(np.asarray(features.embeddings), 128, method="pca")  # fitted on every image
        assert reducer.variances is not None
        return synthetic_collection(reducer.transform(features.embeddings), reducer.variances, size, queries, seed,
                                    spec)

    cached_collection(folder, spec, make)
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ris bench search", description=__doc__)
    parser.add_argument("--scale", choices=SCALES, default="caltech")
    parser.add_argument("--size", type=int, default=1_000_000, help="gallery size at --scale million")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", help="groups to measure (default: all): "
                        + ", ".join(dict.fromkeys(item.group for item in candidates("caltech", 2))))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--work", type=Path, default=None, help="where collections are kept "
                        "(default: <artifacts>/bench)")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: <reports>/bench/search)")
    args = parser.parse_args(argv)
    cfg = read_params(args.params)
    work = args.work or Path(cfg.paths.artifacts) / "bench"
    out = args.out or Path(cfg.paths.reports) / "bench" / "search"
    folder = bench_collection(cfg, args.scale, args.size, args.queries, args.seed, work)
    result = run_benchmark(folder, args.scale, only=args.only)
    result["targets"] = check_targets(result)
    name = args.scale if args.scale == "caltech" or args.size == 1_000_000 else f"{args.scale}-{args.size}"
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / f"{name}.json", result)
    plot_recall_qps(result, out / f"{name}.png")
    for check in result["targets"]:
        print(f"{'holds' if check['holds'] else 'MISSED'}: {check['target']} — {check['measured']:.3g} ({check['by']})")
    print(f"wrote {out / f'{name}.json'} and {out / f'{name}.png'}")
    return 0

"""DVC stage `visualise`: the primary backbone's embeddings as 2-D maps (PCA and t-SNE, coloured by class), and
result grids of its best and worst held-out queries at the served dimension (:func:`served_dim`)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from ris.config import Config, Dim, dim_label, parse_dim
from ris.data.catalog import image_root
from ris.data.split import read_splits
from ris.embed.store import load_features
from ris.paths import PipelinePaths, atomic_folder
from ris.reduce import ReducedStore
from ris.stages._common import Done, load_stage_config, stage_main, timed
from ris.visualise.examples import describe, draw_examples, pick, rank_queries
from ris.visualise.maps import embedding_map, plot_map

FOLDER = "visualise"


def served_dim(cfg: Config) -> Dim:
    """``search.dim`` when the grid has it (the dimension `ris search` and `ris serve` use), else the grid's first
    (a sweep may leave ``search.dim`` out of ``grid.dims``), as the report stage's summary does."""
    labels = [dim_label(dim) for dim in cfg.grid.dims]
    wanted = dim_label(cfg.search.dim)
    return parse_dim(wanted if wanted in labels else labels[0])


def run(cfg: Config, *, sample: int, examples: int, k: int, seed: int) -> dict:
    """Write ``map.csv``, ``pca.png``, ``tsne.png``, ``good.png``, ``bad.png`` and ``examples.json`` into
    ``reports/visualise/<backbone>/``; return the examples' description."""
    paths = PipelinePaths(cfg)
    features = load_features(paths.features_dir)
    splits = read_splits(paths.split_table, features.rows)
    dim = served_dim(cfg)
    reduced = ReducedStore.load(paths.reduced_dir(dim), expect={"features_key": features.key, "dim": dim_label(dim)})
    with timed(f"maps of {min(sample, len(features.rows)):,} embeddings"):
        table = embedding_map(features.embeddings, features.rows, sample=sample, seed=seed)
    ranked = rank_queries(reduced.vectors, features.labels, splits, k, metric=cfg.indexes[cfg.search.index].metric)
    good = pick(ranked, features.labels, examples, best=True)
    bad = pick(ranked, features.labels, examples, best=False)
    images = image_root(paths.images_dir)
    name, shown = cfg.backbone.name, f"{len(table):,} of {len(features.rows):,} images"
    mean_precision = sum(example.precision for example in ranked) / len(ranked)
    report = {"backbone": name, "dim": dim_label(dim), "vector_dim": int(reduced.vectors.shape[1]), "k": k,
              "protocol": "heldout", "search": "exact", "mean_precision": mean_precision,
              "good": describe(good, features.rows), "bad": describe(bad, features.rows)}
    with atomic_folder(paths.reports_dir / FOLDER / name) as folder:
        table.to_csv(folder / "map.csv", index=False, float_format="%.5g")
        plot_map(table, "pca", f"{name}: first two principal components ({shown})", folder / "pca.png")
        plot_map(table, "tsne", f"{name}: t-SNE ({shown})", folder / "tsne.png")
        draw_examples(good, features.rows, images, folder / "good.png")
        draw_examples(bad, features.rows, images, folder / "bad.png")
        (folder / "examples.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ris stage visualise")
    parser.add_argument("--params", default="params.yaml", help="the composed config (default: params.yaml)")
    parser.add_argument("--sample", type=int, default=10_000, help="images drawn on the maps, at most")
    parser.add_argument("--examples", type=int, default=4, help="good and bad queries drawn, each")
    parser.add_argument("--k", type=int, default=5, help="results shown per query")
    parser.add_argument("--seed", type=int, default=0, help="seeds the map's sample and t-SNE")
    args = parser.parse_args(argv)

    def body() -> Done:
        cfg = load_stage_config(args)
        paths = PipelinePaths(cfg)
        report = run(cfg, sample=args.sample, examples=args.examples, k=args.k, seed=args.seed)
        return Done([paths.features_dir, paths.reduced_dir(served_dim(cfg)), paths.split_table,
                     paths.images_dir], [paths.reports_dir / FOLDER / cfg.backbone.name],
                    f"held-out P@{args.k} {report['mean_precision']:.4f} at {report['dim']}")

    stage_main("visualise", body)


if __name__ == "__main__":
    main()

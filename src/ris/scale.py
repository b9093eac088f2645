"""`python -m ris.scale` (`make scale`): what each pipeline stage costs per image on this machine, measured on
samples, and what that makes for a collection of a million images (``reports/scale.json``).

Measured here, after `dvc repro`: copying and cataloguing a seeded sample of the collection's own images, the
in-place check, the split of a synthetic table, PCA fits on a synthetic sample of ``reduce.fit_sample`` rows at the
embedding's width (and the three solvers on the real train+val features), the projection, every index family of
``grid.indexes`` built over synthetic vectors at the chosen dimension (two sizes, to show how build cost grows), and
exact search's cost per query-gallery pair at every swept dimension. Extraction's images/s is read from the
``extract`` stage's report; it is the only stage a GPU would change. Every estimate is a per-image (or per-pair)
cost times the target size: linear extrapolation, which understates stages that grow faster than linearly (an
HNSW build grows with log N; the evaluation protocols with N squared, which the estimates include).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA

from ris.checks import read_params
from ris.config import Config, LatencyConfig, SplitConfig, check_dim
from ris.data.catalog import changed_files, image_root, read_image_table, scan_images
from ris.data.split import split_collection
from ris.embed.store import load_features
from ris.evaluate.latency import measure_latency
from ris.index.brute import BruteForceIndex
from ris.index.store import IndexStore
from ris.paths import PipelinePaths, write_json_atomic
from ris.reduce.pca import fit_reducer, pca_solver

log = logging.getLogger("ris.scale")

BOOK_GPU_IMAGES_PER_SECOND = 310.0
"""ResNet-50 feature extraction on a Colab GPU, as *Practical Deep Learning for Cloud, Mobile & Edge* (chapter 4)
reports it. Not measured by ris: no GPU was available where this was written."""


def _seconds(action: Any) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def _spectrum_vectors(rows: int, dim: int, seed: int) -> np.ndarray:
    """Synthetic vectors with a decaying spectrum, like embeddings after PCA (random data is the worst case for
    graph and tree indexes; this is a little kinder, still harder than real, clustered embeddings)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, dim), dtype=np.float32) * np.geomspace(1.0, 0.05, dim, dtype=np.float32))


def measure_collection(cfg: Config, images: int, seed: int) -> dict[str, Any]:
    """Copy, catalogue and stat-check a seeded sample of the prepared collection's images."""
    paths = PipelinePaths(cfg)
    table = read_image_table(paths.image_table)
    root = image_root(paths.images_dir)
    sample = table.sample(n=min(images, len(table)), random_state=seed).sort_values("path")
    sizes = [(root / path).stat().st_size for path in sample["path"]]
    with tempfile.TemporaryDirectory(prefix="ris-scale-") as scratch:
        copy = Path(scratch) / "copy"

        def copy_sample() -> None:
            for path in sample["path"]:
                (copy / path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(root / path, copy / path)

        copy_s = _seconds(copy_sample)
        catalogue_s = _seconds(lambda: scan_images(copy, progress=False))
    check_s = _seconds(lambda: changed_files(sample, root))
    parquet_bytes = paths.image_table.stat().st_size
    return {"images": len(sample), "mean_image_bytes": float(np.mean(sizes)),
            "copy_s_per_image": copy_s / len(sample), "catalogue_s_per_image": catalogue_s / len(sample),
            "in_place_check_s_per_image": check_s / len(sample),
            "table_bytes_per_image": parquet_bytes / len(table),
            "note": "files read from the page cache (the pipeline had just read them); a cold disk adds its reads"}


def measure_split(rows: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    table = pd.DataFrame({"path": [f"c{row % 1000}/{row}.jpg" for row in range(rows)],
                          "class": [f"c{row % 1000}" for row in range(rows)],
                          "sha256": [f"{value:064x}" for value in rng.integers(0, 2**62, rows)]})
    return {"rows": rows, "s_per_image": _seconds(lambda: split_collection(table, SplitConfig())) / rows}


def measure_pca(cfg: Config, width: int, reduced_dim: int, seed: int) -> dict[str, Any]:
    """The fit the reduce and pca_sweep stages make at ``reduce.fit_sample`` rows, the projection per image, and
    the three scikit-learn solvers side by side (on the real features when they exist)."""
    rows = cfg.reduce.fit_sample or 100_000
    sweep_dims = [check_dim("reduce.sweep.dims", dim, allow_auto=False) for dim in cfg.reduce.sweep.dims]
    largest = min(max((dim for dim in sweep_dims if dim is not None), default=width), width, rows)
    reduced_dim = min(reduced_dim, largest)
    sample = _spectrum_vectors(rows, width, seed)
    fit_reduce_s = _seconds(lambda: fit_reducer(sample, reduced_dim, seed=seed))
    fit_sweep_s = _seconds(lambda: fit_reducer(sample, largest, seed=seed))
    reducer = fit_reducer(sample, reduced_dim, seed=seed)
    transform_s = _seconds(lambda: reducer.transform(sample))
    solvers = {"synthetic": {"rows": rows, "width": width, "components": largest,
                             **_compare_solvers(sample, largest, seed)}}
    try:
        features = load_features(PipelinePaths(cfg).features_dir)
        real = np.asarray(features.embeddings, dtype=np.float32)
        components = min(largest, *real.shape)
        solvers["features"] = {"rows": len(real), "width": real.shape[1], "components": components,
                               **_compare_solvers(real, components, seed)}
    except Exception as error:  # no features yet: the synthetic comparison stands alone
        log.warning("no feature store to compare the PCA solvers on (%s)", error)
    return {"fit_rows": rows, "width": width, "solver": pca_solver(rows, width), "reduce_dim": reduced_dim,
            "fit_s_reduce": fit_reduce_s, "sweep_dim": largest, "fit_s_sweep": fit_sweep_s,
            "transform_s_per_image": transform_s / rows, "solvers": solvers}


def _compare_solvers(data: np.ndarray, components: int, seed: int) -> dict[str, Any]:
    """Seconds of each solver, and how far each is from the exact SVD: the largest relative variance error and the
    smallest |cosine| between a component and the exact one."""
    fitted, timings = {}, {}
    for solver in ("full", "covariance_eigh", "randomized"):
        started = time.perf_counter()
        fitted[solver] = PCA(n_components=components, svd_solver=solver, random_state=seed).fit(data)
        timings[solver] = time.perf_counter() - started
    exact = fitted["full"]
    result = {}
    for solver, pca in fitted.items():
        cosines = np.abs((pca.components_ * exact.components_).sum(axis=1))
        result[solver] = {"seconds": timings[solver],
                          "max_variance_error": float(np.abs(pca.explained_variance_ / exact.explained_variance_
                                                             - 1).max()),
                          "min_abs_cosine": float(cosines.min())}
    return result


def measure_indexes(cfg: Config, dim: int, sizes: Sequence[int], seed: int) -> dict[str, Any]:
    """Build every index of ``grid.indexes`` over synthetic vectors of each size; time build and one-query search."""
    latency = LatencyConfig(queries=200, warmup=20, threads=1, seed=seed)
    result: dict[str, Any] = {}
    for name in cfg.grid.indexes:
        spec = cfg.indexes[name]
        result[name] = {"family": spec.family, "sizes": {}}
        for size in sizes:
            vectors = _spectrum_vectors(size, dim, seed)
            started = time.perf_counter()
            store = IndexStore.build(vectors, spec, {})
            wall = time.perf_counter() - started
            with tempfile.TemporaryDirectory(prefix="ris-scale-") as scratch:
                store.save(Path(scratch))
            timings = measure_latency(store.index, _spectrum_vectors(500, dim, seed + 1), latency,
                                      cfg.eval.ann_recall_k)
            result[name]["sizes"][str(size)] = {
                "build_s_per_vector": store.build_seconds / size, "build_and_tune_s": wall,
                "index_bytes_per_vector": (store.index_bytes or 0) / size,
                "latency_p50_us": timings["latency_p50_us"], "qps": timings["qps"]}
            log.info("%s over %d x %d: built in %.1f s, p50 %.0f us", name, size, dim, store.build_seconds,
                     timings["latency_p50_us"])
    return result


def measure_exact_search(dims: Sequence[int], gallery: int, queries: int, k: int, seed: int) -> dict[str, float]:
    """Seconds per query-gallery pair of exact search (faiss's kernels, every core), at each dimension."""
    result = {}
    for dim in dims:
        index = BruteForceIndex.build(_spectrum_vectors(gallery, dim, seed))
        probe = _spectrum_vectors(queries, dim, seed + 1)
        index.search(probe[:10], k)  # warm
        result[str(dim)] = _seconds(lambda: index.search(probe, k)) / (queries * gallery)  # noqa: B023
    return result


def estimate(measured: dict[str, Any], cfg: Config, target: int) -> dict[str, Any]:
    """What ``target`` images cost, stage by stage, from the per-image measurements (seconds; bytes)."""
    collection, pca, exact = measured["collection"], measured["pca"], measured["exact_search_s_per_pair"]
    width, dim = pca["width"], pca["reduce_dim"]
    extract = measured["extract"]
    test_share = cfg.data.split.test
    queries_heldout, gallery_heldout = test_share * target, (1 - test_share) * target

    def exact_pass(d: int) -> float:  # one exact search of every query of both protocols
        per_pair = exact[str(d)]
        return per_pair * (target * target + queries_heldout * gallery_heldout)

    sweep_dims = [check_dim("reduce.sweep.dims", value, allow_auto=False) for value in cfg.reduce.sweep.dims]
    sweep = cfg.reduce.sweep
    settings = [(width if d is None else d, whiten) for whiten in sweep.whiten for _ in sweep.renormalize
                for d in sweep_dims if not (d is None and whiten)]
    # Every setting: the query pass (top max(k, recall_ks)) and the MAP@R pass (top R) of each protocol, exact.
    sweep_s = pca["fit_s_sweep"] + sum(pca["transform_s_per_image"] * target + 2 * exact_pass(d) for d, _ in settings)
    grid_dims = sorted({width if value is None else (dim if value == "auto" else value)
                        for value in (check_dim("grid.dims", raw) for raw in cfg.grid.dims)})
    stages: dict[str, Any] = {
        "download (copy + catalogue)": target * (collection["copy_s_per_image"] + collection["catalogue_s_per_image"]),
        "download (in place: catalogue)": target * collection["catalogue_s_per_image"],
        "extract: in-place check": target * collection["in_place_check_s_per_image"],
        "split": target * measured["split"]["s_per_image"],
        "extract (this CPU)": target / extract["images_per_second"] if extract.get("images_per_second") else None,
        "extract (GPU, the book's Colab figure)": target / BOOK_GPU_IMAGES_PER_SECOND,
        f"reduce to {dim}": pca["fit_s_reduce"] + target * pca["transform_s_per_image"],
        "pca_sweep": sweep_s,
        **{f"evaluate at {d}, brute cell (both protocols)": 2 * exact_pass(d) for d in grid_dims},
        **{f"evaluate at {d}, approximate cell (its exact ground truth only)": exact_pass(d) for d in grid_dims},
        # The grid as configured: a brute cell searches exactly twice (queries, MAP@R), any other cell at least once.
        f"evaluate, the grid's {len(grid_dims) * len(cfg.grid.indexes)} cells (at least)": sum(
            (2 if cfg.indexes[name].family == "brute" else 1) * exact_pass(d)
            for d in grid_dims for name in cfg.grid.indexes),
    }
    small, large = sorted(int(size) for size in next(iter(measured["indexes"].values()))["sizes"])
    for name, index in measured["indexes"].items():
        per_vector = {size: index["sizes"][str(size)]["build_s_per_vector"] for size in (small, large)}
        # Per-vector build cost grows (HNSW: with log N) or not; extrapolated at the growth measured per decade,
        # never below linear (IVF's fixed training cost makes it shrink between the two sizes).
        growth = max(1.0, per_vector[large] / per_vector[small]) if per_vector[small] else 1.0
        decades = np.log10(target / large) / np.log10(large / small)
        stages[f"index {name} at {dim}"] = target * per_vector[large] * growth ** max(decades, 0.0)
    feature_bytes = 4 * width
    disk = {"images (mean size here)": target * collection["mean_image_bytes"],
            "images.parquet": target * collection["table_bytes_per_image"],
            "feature store": target * feature_bytes, "embedding cache": target * feature_bytes,
            f"reduced store at {dim}": target * 4 * dim, "reduced store at full": target * feature_bytes,
            **{f"index {name} at {dim}": target * index["sizes"][str(large)]["index_bytes_per_vector"]
               for name, index in measured["indexes"].items()}}
    return {"images": target, "seconds": stages, "bytes": disk,
            "sweep_settings": len(settings), "note": "exact passes counted as N^2 pairs (book) plus test x "
            "train+val pairs (heldout); approximate searches (and MAP@R through approximate indexes) not included; "
            "index builds extrapolated at their measured growth per decade of size"}


def measure(cfg: Config, *, images: int = 1000, vectors: int = 100_000, target: int = 1_000_000,
            seed: int = 0) -> dict[str, Any]:
    paths = PipelinePaths(cfg)
    extract = json.loads(paths.extract_report.read_text()) if paths.extract_report.is_file() else {}
    width = int(extract.get("dim") or 1280)
    chosen = json.loads(paths.pca_choice.read_text()).get("dim") if paths.pca_choice.is_file() else None
    dim = chosen if isinstance(chosen, int) else 100
    swept = [check_dim("reduce.sweep.dims", value, allow_auto=False) for value in cfg.reduce.sweep.dims]
    searched_dims = sorted({dim, *(width if value is None else value for value in swept)})
    measured: dict[str, Any] = {
        "machine": _machine(),
        "extract": {"source": str(paths.extract_report), "images_per_second": extract.get("images_per_second"),
                    "device": extract.get("device"), "backbone": extract.get("backbone"),
                    "gpu_images_per_second_book": BOOK_GPU_IMAGES_PER_SECOND,
                    "gpu_note": "ResNet-50 on a Colab GPU as the book reports it; not measured here"},
        "collection": measure_collection(cfg, images, seed),
        "split": measure_split(vectors, seed),
        "pca": measure_pca(cfg, width, dim, seed),
        "indexes": measure_indexes(cfg, dim, [vectors // 10, vectors], seed),
        "exact_search_s_per_pair": measure_exact_search(searched_dims, min(vectors, 100_000), 1000,
                                                        cfg.eval.ann_recall_k + 1, seed),
    }
    measured["estimate"] = estimate(measured, cfg, target)
    return measured


def _machine() -> dict[str, Any]:
    import os
    import platform

    return {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version()}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ris.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--images", type=int, default=1000, help="collection images copied and catalogued")
    parser.add_argument("--vectors", type=int, default=100_000, help="vectors per index build (and a tenth)")
    parser.add_argument("--target", type=int, default=1_000_000, help="collection size to estimate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="default: <paths.reports>/scale.json")
    parser.add_argument("--from", dest="measured", default=None,
                        help="estimate again from this earlier output (e.g. for another --target), measuring nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = read_params(args.params)
    if args.measured:
        result = json.loads(Path(args.measured).read_text())
        result["estimate"] = estimate(result, cfg, args.target)
    else:
        result = measure(cfg, images=args.images, vectors=args.vectors, target=args.target, seed=args.seed)
    out = Path(args.out) if args.out else PipelinePaths(cfg).reports_dir / "scale.json"
    write_json_atomic(out, result)
    log.info("wrote %s", out)


if __name__ == "__main__":
    main()

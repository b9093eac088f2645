"""The vectors `ris bench search` searches: a gallery, its queries and their exact neighbours, saved as a store.

``caltech``: the pipeline's own reduced vectors (the ``auto`` dimension), 1,000 seeded rows held out as queries.
``million``: a million vectors of dimension 128 with the structure of real embeddings, made reproducibly from the
pipeline's features: seeded draws of Caltech101 vectors after PCA-128 (fitted on every image), each plus Gaussian
noise shaped like the PCA spectrum (per-component std proportional to sqrt(variance)) whose expected norm is 1.5x
the median leave-one-out nearest-neighbour distance; queries are made the same way from another seed stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ris.artifacts import REBUILD, ArtifactError, read_description, write_description
from ris.paths import atomic_folder

FORMAT = "ris.bench.collection"
FORMAT_VERSION = 1
DESCRIPTION_FILE = "collection.json"
ARRAYS = ("gallery", "queries", "truth")
TRUTH_K = 100  # exact neighbours kept per query (recall@10 needs 10; deeper lists serve later questions)


@dataclass
class BenchCollection:
    """``gallery`` (N x d), ``queries`` (Q x d), ``truth`` (Q x TRUTH_K exact gallery ids, nearest first)."""

    gallery: np.ndarray
    queries: np.ndarray
    truth: np.ndarray
    spec: dict[str, Any]  # how it was made: kind, sizes, seed, the features it came from
    derived: dict[str, Any] = field(default_factory=dict)  # what making it measured (the noise norm)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name in ARRAYS:
            np.save(folder / f"{name}.npy", getattr(self, name))
        write_description(folder / DESCRIPTION_FILE, FORMAT, FORMAT_VERSION, {
            "spec": self.spec, "derived": self.derived, "gallery_shape": list(self.gallery.shape),
            "queries_shape": list(self.queries.shape)})

    @classmethod
    def load(cls, folder: Path, expect_spec: dict[str, Any] | None = None) -> BenchCollection:
        """Open a saved collection (memory-mapped), checking it was made from ``expect_spec``.

        Raises:
            ArtifactError: missing, another format or spec, or arrays that disagree with the description.
        """
        description = read_description(folder / DESCRIPTION_FILE, FORMAT, FORMAT_VERSION, REBUILD)
        if expect_spec is not None and description["spec"] != expect_spec:
            raise ArtifactError(f"{folder} was made from {description['spec']}, not {expect_spec}: {REBUILD}")
        try:
            arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
        except (OSError, ValueError) as error:
            raise ArtifactError(f"{folder}: cannot read the arrays ({error}): {REBUILD}") from error
        if (list(arrays["gallery"].shape) != description["gallery_shape"]
                or list(arrays["queries"].shape) != description["queries_shape"]
                or len(arrays["truth"]) != len(arrays["queries"])):
            raise ArtifactError(f"{folder}: the arrays do not match the description: {REBUILD}")
        return cls(**arrays, spec=description["spec"], derived=description["derived"])


def exact_neighbours(gallery: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` nearest gallery ids of each query by exact (faiss) search, in batches to bound memory."""
    k = min(k, len(gallery))
    batches = [faiss.knn(np.ascontiguousarray(queries[start:start + 256], dtype=np.float32), gallery, k)[1]
               for start in range(0, len(queries), 256)]
    return np.concatenate(batches)


def held_out_collection(vectors: np.ndarray, queries: int, seed: int, spec: dict[str, Any]) -> BenchCollection:
    """Real vectors: ``queries`` seeded rows become the queries, the others the gallery."""
    rng = np.random.default_rng(seed)
    is_query = np.zeros(len(vectors), dtype=bool)
    is_query[rng.choice(len(vectors), size=queries, replace=False)] = True
    gallery = np.ascontiguousarray(vectors[~is_query], dtype=np.float32)
    query_rows = np.ascontiguousarray(vectors[is_query], dtype=np.float32)
    return BenchCollection(gallery, query_rows, exact_neighbours(gallery, query_rows, TRUTH_K), spec)


def median_nearest_distance(vectors: np.ndarray) -> float:
    """Median over rows of the distance to the nearest other row (leave-one-out)."""
    squared, _ = faiss.knn(np.ascontiguousarray(vectors, dtype=np.float32), vectors, 2)
    return float(np.median(np.sqrt(np.maximum(squared[:, 1], 0.0))))


def noisy_draws(seeds: np.ndarray, variances: np.ndarray, noise_norm: float, size: int,
                rng: np.random.Generator, chunk: int = 100_000) -> np.ndarray:
    """``size`` rows: seeded draws of ``seeds`` rows, each plus Gaussian noise with per-component std proportional
    to sqrt(``variances``) and expected squared norm ``noise_norm**2``."""
    std = np.sqrt(variances / variances.sum()) * noise_norm
    out = np.empty((size, seeds.shape[1]), dtype=np.float32)
    for start in range(0, size, chunk):
        rows = min(chunk, size - start)
        picks = rng.integers(0, len(seeds), size=rows)
        out[start:start + rows] = seeds[picks] + rng.standard_normal((rows, seeds.shape[1]), np.float32) * std
    return out


def synthetic_collection(seeds: np.ndarray, variances: np.ndarray, size: int, queries: int, seed: int,
                         spec: dict[str, Any], noise_ratio: float = 1.5) -> BenchCollection:
    """A gallery of ``size`` and ``queries`` queries around ``seeds`` (the PCA-reduced real vectors)."""
    noise_norm = noise_ratio * median_nearest_distance(seeds)
    gallery_rng, query_rng = (np.random.default_rng(stream) for stream in np.random.SeedSequence(seed).spawn(2))
    gallery = noisy_draws(seeds, variances, noise_norm, size, gallery_rng)
    query_rows = noisy_draws(seeds, variances, noise_norm, queries, query_rng)
    return BenchCollection(gallery, query_rows, exact_neighbours(gallery, query_rows, TRUTH_K), spec,
                           {"noise_norm": noise_norm, "median_nearest_distance": noise_norm / noise_ratio})


def cached_collection(folder: Path, spec: dict[str, Any], make: Any) -> BenchCollection:
    """The collection saved in ``folder`` if it was made from ``spec``, else ``make()``, saved and reopened."""
    try:
        return BenchCollection.load(folder, spec)
    except ArtifactError:
        pass
    with atomic_folder(folder) as staging:
        made = make()
        made.spec = spec
        made.save(staging)
    return BenchCollection.load(folder, spec)

"""The searcher: the product's core object. Built once from the pipeline's artifacts (backbone with its weights and
preprocessing, reducer, index, image rows), it embeds new images and returns their nearest collection images.

The CLI (`ris search`), the HTTP service and the notebooks all ask it the same question.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ris.artifacts import ArtifactError
from ris.config import AUTO_DIM, Config, check_dim, dim_label, parse_dim
from ris.data.catalog import image_root
from ris.embed.lightning import EmbeddingModule, compile_frozen
from ris.embed.preprocess import eval_transform
from ris.embed.pooling import pooled_backbone
from ris.embed.store import load_features
from ris.embed.weights import resolve_weights
from ris.index.base import NearestNeighbourIndex
from ris.index.brute import BruteForceIndex
from ris.index.store import IndexStore
from ris.paths import PipelinePaths
from ris.reduce import FeatureReducer, ReducedStore


@dataclass(frozen=True)
class Hit:
    """One result: its rank (1 = nearest), feature-store row, image path, class and distance to the query."""

    rank: int
    row: int
    path: Path
    label: str
    distance: float


@dataclass(frozen=True)
class SearchResult:
    """The ranked hits of one query, and how long embedding and searching took (milliseconds)."""

    hits: list[Hit]
    embed_ms: float
    search_ms: float


class ImageEmbedder:
    """The backbone as extraction ran it: same timm model, weights, preprocessing and normalisation."""

    def __init__(self, model: torch.nn.Module, preprocessing: dict, normalize: bool,
                 channels_last: bool = True) -> None:
        self.module = EmbeddingModule(model, normalize, channels_last, preprocessing["mean"],
                                      preprocessing["std"]).eval()
        self.transform = eval_transform(preprocessing)

        self.input_size = tuple(preprocessing["input_size"])
        self.one_at_a_time = False  # set by compile(): one image per forward, the shape it was compiled for

    @torch.inference_mode()
    def embed(self, images: list[Image.Image]) -> np.ndarray:
        """One embedding row per image (RGB, any size)."""
        if self.one_at_a_time:
            return torch.cat([self.module(self.transform(image)[None]) for image in images]).float().numpy()
        batch = torch.stack([self.transform(image) for image in images])
        return self.module(batch).float().numpy()

    def compile(self) -> str | None:
        """Compile the model for this machine: ``torch.compile`` (Inductor) with frozen weights, so BatchNorm folds
        into the convolutions and no Python runs per layer. Returns None when it did, else why not.

        Measured on the 2-core development machine (MobileNetV2, one image, one thread): 114 images/s against 48
        eager, after about 14 s of compiling. The first forward compiles, so it runs here, on a random image, and
        must match the eager model's output; images are then embedded one at a time, so no other batch shape ever
        compiles again. Any failure (no C++ compiler, an operation Inductor cannot compile) keeps the eager model.
        """
        generator = torch.Generator().manual_seed(0)
        # An inference tensor, as embed() makes them: a plain one would compile for the wrong guards, and the first
        # search would compile again.
        with torch.inference_mode():
            sample = torch.randint(0, 256, (1, *self.input_size), generator=generator, dtype=torch.uint8)
            compiled, failure = compile_frozen(self.module, sample)
        if compiled is None:
            return failure
        self.module, self.one_at_a_time = compiled, True
        return None


@dataclass(frozen=True)
class AddedRows:
    """Images added after the index was built, searched exactly beside it until `dvc repro` rebuilds the index.

    Never changed in place: an addition makes a new one, so a search reads one consistent snapshot without a lock.
    """

    vectors: np.ndarray  # in the index's space, one row per added image
    index: NearestNeighbourIndex | None  # exact search over ``vectors`` (None while nothing is added)
    paths: tuple[Path, ...]
    labels: tuple[str, ...]
    sha256: tuple[str, ...]

    @classmethod
    def empty(cls, dim: int) -> AddedRows:
        return cls(np.empty((0, dim), np.float32), None, (), (), ())


class Searcher:
    """Embeds query images, reduces them as the collection was reduced, and searches the collection's index.

    Images can be added while it serves (:meth:`add_vectors`): row ids continue after the index's, and every search
    merges the index's nearest with the added images' nearest by distance.
    """

    def __init__(self, embedder: ImageEmbedder, reducer: FeatureReducer, index: NearestNeighbourIndex,
                 rows: pd.DataFrame, images_dir: Path, description: str) -> None:
        if len(rows) != len(index):
            raise ArtifactError(f"the index holds {len(index)} items but the collection has {len(rows)} rows: "
                                f"run `dvc repro` to rebuild it")
        self.embedder = embedder
        self.reducer = reducer
        self.index = index
        self.images_dir = images_dir  # where the rows' paths are relative to (the source folder, if in place)
        self.relative_paths = rows["path"].to_numpy()  # a Path is made per hit, not a million at load time
        self.labels = rows["class"].tolist()  # the indexed rows' classes (added rows: ``added.labels``)
        self.description = description
        # A content-hash index of the rows, built on the first lookup (pandas hashes it lazily).
        self._hashes = pd.Index(rows["sha256"]) if "sha256" in rows.columns else None
        self.added = AddedRows.empty(reducer.output_dim)
        self._adding = threading.Lock()  # additions are serialised; searches never wait for them

    @classmethod
    def from_pipeline(cls, cfg: Config, dim: int | str | None = None, index_name: str | None = None) -> Searcher:
        """Load the searcher of one built grid cell: ``dim`` (an integer, ``"full"`` or ``"auto"``) and ``index_name``
        (a key of ``indexes``), by default ``search.dim`` and ``search.index``.

        The model loads once; the index is memory-mapped. Every store is checked against the feature store it
        must come from, and the weights ``cfg.backbone`` resolves to against those the features were made with.

        Raises:
            ArtifactError: a store is missing (nothing built yet), damaged, or made for other features or weights.
        """
        paths = PipelinePaths(cfg)
        chosen = cfg.search.dim if dim is None else dim
        dim_value = parse_dim(chosen, "--dim") if isinstance(chosen, str) else check_dim("--dim", chosen)
        index_name = index_name or cfg.search.index
        remedy = "run `make repro` (or `dvc repro`) first to build the collection's features and indexes"
        built = [dim_label(check_dim("grid.dims", value)) for value in cfg.grid.dims]
        if dim_label(dim_value) not in built or index_name not in cfg.grid.indexes:
            raise ArtifactError(f"the cell {dim_label(dim_value)}/{index_name} is not in the grid `dvc repro` builds "
                                f"(grid.dims {built}, grid.indexes {cfg.grid.indexes}): pick one with --dim and "
                                f"--index, or add it to the grid and run `dvc repro`")
        features = load_features(paths.features_dir, remedy=remedy)  # embeddings memory-mapped, not read
        meta = features.meta
        expected = {"features_key": meta["key"], "dim": dim_label(dim_value)}
        reduced = ReducedStore.load(paths.reduced_dir(dim_value), expect=expected, vectors=False, remedy=remedy)
        index = IndexStore.load(paths.index_dir(dim_value, index_name), expect={**expected, "index": index_name},
                                remedy=remedy)
        source = resolve_weights(cfg.backbone)
        if source.identity != meta["weights"]["identity"] or source.model != meta["model"]:
            raise ArtifactError(f"the collection was embedded with {meta['model']} weights "
                                f"{meta['weights']['identity']}, but backbone settings give {source.model} weights "
                                f"{source.identity}: give the same weights, or run `dvc repro` to re-embed")
        settings = meta["backbone"]  # as the collection was embedded (older stores have no pooling choice)
        model = pooled_backbone(source, settings.get("pool"), settings.get("gem_p", 3.0))
        embedder = ImageEmbedder(model, meta["preprocessing"], settings["normalize"], cfg.backbone.channels_last)
        rows = features.rows
        label = dim_label(dim_value)
        if dim_value == AUTO_DIM:  # say what the sweep chose
            label = f"{label} = {reduced.reducer.output_dim}"
        description = f"{meta['model']} / {label} / {index_name}"
        return cls(embedder, reduced.reducer, index.index, rows, image_root(paths.images_dir), description)

    @classmethod
    def from_finetuned(cls, cfg: Config, training: str = "heldout") -> Searcher:
        """Load the searcher of a fine-tune (`dvc repro`'s ``finetune`` stage): the fine-tuned model as the
        embedder, the collection as it embedded it, and the ``search.index`` entry built over those embeddings.

        Raises:
            ArtifactError: the fine-tune was not run, or its stores are damaged or do not belong together.
        """
        from ris.finetune.store import FineTunedStore  # imported here: only this path needs it

        paths = PipelinePaths(cfg)
        folder = paths.finetuned_dir(training)
        remedy = (f"run `make repro` (or `dvc repro`) first: its finetune stage fine-tunes {cfg.backbone.name} "
                  f"(finetune.trainings {cfg.finetune.trainings})")
        store = FineTunedStore.load(folder / "model", expect={"training": training}, remedy=remedy)
        features = load_features(folder / "features", remedy=remedy)
        if features.meta["extractor_key"] != store.key:
            raise ArtifactError(f"{folder / 'features'} was not embedded by the model in {folder / 'model'}: {remedy}")
        index = IndexStore.load(folder / "index", expect={"features_key": features.key}, remedy=remedy)
        # The model normalises its own output; nothing is reduced after it (the projection is the reduction).
        embedder = ImageEmbedder(store.model, store.meta["preprocessing"], normalize=True,
                                 channels_last=cfg.backbone.channels_last)
        width = int(features.meta["dim"])
        description = f"{store.meta['model']} fine-tuned ({training}) / {width} / {index.built_from['index']}"
        return cls(embedder, FeatureReducer(width, width), index.index, features.rows, image_root(paths.images_dir),
                   description)

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        """The images' vectors in the index's space (embedded, normalised, reduced)."""
        return self.reducer.transform(self.embedder.embed(images))

    @property
    def size(self) -> int:
        """How many images the searcher searches: the index's rows, then the added ones."""
        return len(self.index) + len(self.added.labels)

    def label(self, row: int) -> str:
        """The class of row ``row`` (an index row or an added one)."""
        return self._label(row, len(self.index), self.added)

    def path(self, row: int) -> Path:
        """The image file of row ``row``."""
        return self._path(row, len(self.index), self.added)

    def find(self, sha256: str) -> int | None:
        """The first row whose image has this content hash, or None (always None for stores without hashes)."""
        if self._hashes is not None:
            positions, _ = self._hashes.get_indexer_non_unique([sha256])
            if positions[0] >= 0:
                return int(positions[0])
        added = self.added
        return len(self.index) + added.sha256.index(sha256) if sha256 in added.sha256 else None

    def add_vectors(self, vectors: np.ndarray, paths: list[Path], labels: list[str],
                    sha256: list[str]) -> list[int]:
        """Make images searchable without touching the built index: their vectors (from :meth:`embed`), image
        files, classes and content hashes. Returns their row ids.

        The added rows are searched exactly; the snapshot is rebuilt per call (a copy of the added vectors), which
        is what `dvc repro` is for once additions grow large.
        """
        if not len(vectors) == len(paths) == len(labels) == len(sha256):
            raise ValueError("add_vectors needs one path, label and hash per vector")
        with self._adding:
            before = self.added
            stacked = np.vstack([before.vectors, np.asarray(vectors, np.float32)])
            self.added = AddedRows(stacked, BruteForceIndex.build(stacked, metric=self.index.metric),
                                   before.paths + tuple(paths), before.labels + tuple(labels),
                                   before.sha256 + tuple(sha256))
            first = len(self.index) + len(before.labels)
        return list(range(first, first + len(vectors)))

    def search_vectors(self, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        """The ``k`` nearest collection images of each vector (already in the index's space)."""
        added = self.added  # one snapshot for the whole call
        base = len(self.index)
        ids, distances = self.index.search(vectors, min(k, base))
        if added.index is not None:
            extra_ids, extra_distances = added.index.search(vectors, min(k, len(added.labels)))
            ids = np.concatenate([ids, np.where(extra_ids >= 0, extra_ids + base, -1)], axis=1)
            distances = np.concatenate([distances, extra_distances], axis=1)
            order = np.argsort(distances, axis=1, kind="stable")[:, :k]
            ids, distances = np.take_along_axis(ids, order, 1), np.take_along_axis(distances, order, 1)
        return [[Hit(rank, int(row), self._path(row, base, added), self._label(row, base, added), float(distance))
                 for rank, (row, distance) in enumerate(zip(row_ids, row_distances, strict=True), start=1) if row >= 0]
                for row_ids, row_distances in zip(ids, distances, strict=True)]

    def _path(self, row: int, base: int, added: AddedRows) -> Path:
        return self.images_dir / self.relative_paths[row] if row < base else added.paths[row - base]

    def _label(self, row: int, base: int, added: AddedRows) -> str:
        return self.labels[row] if row < base else added.labels[row - base]

    def search(self, image: Image.Image, k: int = 10) -> SearchResult:
        """The ``k`` collection images most like ``image`` (decoded RGB), with timings."""
        started = time.perf_counter()
        vector = self.embed([image])
        embedded = time.perf_counter()
        hits = self.search_vectors(vector, k)[0]
        return SearchResult(hits, 1e3 * (embedded - started), 1e3 * (time.perf_counter() - embedded))

"""k-reciprocal re-ranking (Zhong, Zheng, Cao and Li, "Re-ranking person re-identification with k-reciprocal
encoding", CVPR 2017), over a shortlist instead of an all-pairs distance matrix.

Two images are k-reciprocal neighbours when each is among the other's ``k1`` nearest. Each image is encoded by its
(slightly expanded) k-reciprocal set, weighted by ``exp(-distance)``, averaged over its ``k2`` nearest neighbours'
encodings; the query's ``candidates`` nearest are then re-ordered by ``(1 - lambda_value) * Jaccard distance of the
encodings + lambda_value * original distance``, and the rest of the ranking follows unchanged.

The paper computes every pairwise distance of queries and gallery (N x N): impossible for millions of images. Here:

- The gallery's neighbour lists (``k1`` per image, from the index) and its encodings are computed once per gallery
  (:meth:`KReciprocalReranker.prepare`, about one index search per gallery image) and kept; a query then costs one
  index search of ``max(k, candidates, k1)`` results and sparse arithmetic on at most ``candidates x k2`` encodings.
- A new query is not inserted into the gallery's neighbour lists (it would change them for every query). It joins
  the encoding of each gallery image it is k-reciprocal with (mutual top ``k1``: the query is nearer than that
  image's ``k1``-th neighbour) and the ``k2`` expansion list of each shortlisted image it is nearer than that image's
  ``k2 - 1``-th neighbour: the two places where the paper's query node would count.
- Distances are scaled by one gallery-wide constant (the largest squared distance among a seeded sample of 1,024
  gallery images) instead of each row's own maximum over all images.
- Leave-one-out (the query is gallery image ``s``): ``s`` is the query's own node (the same vector), so the gallery's
  lists and encodings already hold the query exactly where the paper's would; ``s`` is never shortlisted or returned.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ris.index.base import NearestNeighbourIndex
from ris.rerank.base import InvalidSettingError, Reranker, search_excluding
from ris.rerank.registry import register_reranker

SCALE_SAMPLE = 1024
"""Gallery images whose pairwise distances set the distance scale (seeded, bounded whatever the gallery size)."""
BATCH = 4096
"""Gallery images searched per batch while their neighbour lists are built (bounds the memory of one search)."""


@dataclass
class GalleryEncodings:
    """What a gallery needs for k-reciprocal re-ranking: each image's ``k1`` nearest other images and its encoding.

    ``columns[indptr[i]:indptr[i + 1]]`` and ``weights[...]`` are image ``i``'s encoding (weights sum to 1);
    ``totals[i]`` is its sum before normalising (to add the query's weight to it).
    """

    index: NearestNeighbourIndex
    space: np.ndarray  # the gallery as the index searches it (float32; L2-normalised for angular)
    neighbours: np.ndarray  # (N, k1) ids, nearest first, -1 pads
    distances: np.ndarray  # (N, k1) distances to them, inf for a pad
    scale: float
    half: int  # round(k1 / 2): the size of the sets that expand a k-reciprocal set
    indptr: np.ndarray
    columns: np.ndarray
    weights: np.ndarray
    totals: np.ndarray

    @property
    def radius(self) -> np.ndarray:
        """Each image's ``k1``-th neighbour distance: another image is in its top ``k1`` when nearer (or as near)."""
        return self.distances[:, -1]

    def half_set(self, node: int) -> list[int]:
        """``node`` and its k-reciprocal neighbours at ``half``."""
        if self.half == 0:
            return [node]
        ids, distances = self.neighbours[node, :self.half], self.distances[node, :self.half]
        mutual = (ids >= 0) & (distances <= self.distances[np.maximum(ids, 0), self.half - 1])
        return [node, *ids[mutual].tolist()]

    def weigh(self, vector: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """Unnormalised encoding weights ``exp(-squared distance / scale)`` of ``columns`` for a node at ``vector``."""
        squared = ((self.space[columns] - vector) ** 2).sum(axis=1)
        return np.exp(-squared / self.scale)

    @classmethod
    def build(cls, index: NearestNeighbourIndex, gallery_vectors: np.ndarray, k1: int) -> GalleryEncodings:
        space = index.prepare(gallery_vectors)
        count = len(space)
        neighbours = np.empty((count, k1), dtype=np.int64)
        for start in range(0, count, BATCH):
            rows = np.arange(start, min(start + BATCH, count))
            neighbours[rows] = search_excluding(index, space[rows], k1, rows)[0]
        distances = np.empty((count, k1), dtype=np.float32)
        for start in range(0, count, BATCH):
            rows = slice(start, start + BATCH)
            distances[rows] = _distances(space, space[rows], neighbours[rows])
        gallery = cls(index, space, neighbours, distances, _scale(space), int(round(k1 / 2)),
                      np.zeros(count + 1, dtype=np.int64), np.empty(0, np.int64), np.empty(0, np.float32),
                      np.empty(count, dtype=np.float64))
        mutual = (neighbours >= 0) & (distances <= gallery.radius[np.maximum(neighbours, 0)])
        columns, weights = [], []
        for node in range(count):
            members = [node, *neighbours[node][mutual[node]].tolist()]
            expanded = np.array(_expand(members, gallery.half_set), dtype=np.int64)
            weight = gallery.weigh(space[node], expanded)
            gallery.totals[node] = weight.sum()
            columns.append(expanded)
            weights.append((weight / gallery.totals[node]).astype(np.float32))
            gallery.indptr[node + 1] = gallery.indptr[node] + len(expanded)
        gallery.columns, gallery.weights = np.concatenate(columns), np.concatenate(weights)
        return gallery


@register_reranker
class KReciprocalReranker(Reranker):
    """Re-orders each query's ``candidates`` nearest by k-reciprocal Jaccard distance blended with the original."""

    name: ClassVar[str] = "k_reciprocal"
    title: ClassVar[str] = "k-reciprocal"
    defaults: ClassVar[dict[str, Any]] = {"k1": 20, "k2": 6, "lambda_value": 0.3, "candidates": 200}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.gallery: GalleryEncodings | None = None

    def check(self) -> None:
        for setting in ("k1", "k2", "candidates"):
            value = self.params[setting]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidSettingError(setting, f"is {value!r}; it must be a positive integer")
        if self.params["k2"] > self.params["k1"]:
            raise InvalidSettingError("k2", f"is {self.params['k2']}; it must be at most k1 ({self.params['k1']})")
        value = self.params["lambda_value"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise InvalidSettingError("lambda_value", f"is {value!r}; it must be between 0 and 1")

    def prepare(self, index: NearestNeighbourIndex, gallery_vectors: np.ndarray) -> None:
        """Build the gallery's neighbour lists and encodings, unless they are already built for ``index``."""
        if self.gallery is None or self.gallery.index is not index or len(self.gallery.space) != len(index):
            self.gallery = GalleryEncodings.build(index, gallery_vectors, int(self.params["k1"]))

    def rerank(self, index: NearestNeighbourIndex, gallery_vectors: np.ndarray, queries: np.ndarray, k: int,
               self_ids: np.ndarray | None = None) -> np.ndarray:
        self.prepare(index, gallery_vectors)
        assert self.gallery is not None
        queries = index.prepare(queries)
        depth = max(k, int(self.params["candidates"]), int(self.params["k1"]))
        ranked = search_excluding(index, queries, depth, self_ids)[0]
        results = np.full((len(queries), k), -1, dtype=np.int64)
        for row, query in enumerate(queries):
            own = None if self_ids is None else int(self_ids[row])
            reordered = self._rerank_one(self.gallery, query, ranked[row], own)
            results[row] = reordered[:k]
        return results

    def _rerank_one(self, gallery: GalleryEncodings, query: np.ndarray, ranked: np.ndarray,
                    own: int | None) -> np.ndarray:
        """One query's ranking: its shortlist re-ordered, then the rest of ``ranked`` as it was."""
        k2, candidates = int(self.params["k2"]), int(self.params["candidates"])
        lam = float(self.params["lambda_value"])
        top = ranked[:max(candidates, int(self.params["k1"]))]
        top_distances = _distances(gallery.space, query[None, :], top[None, :])[0]
        node = len(gallery.space) if own is None else own  # the query's own column: a new one, or its gallery row
        new_node = own is None
        query_code, joins = self._query_encoding(gallery, query, top, top_distances, node, new_node)

        # Local query expansion: each encoding is the mean of those of the node and its k2 - 1 nearest.
        shortlist = top[:candidates]
        shortlist = shortlist[shortlist >= 0]
        lists = np.concatenate([shortlist[:, None], gallery.neighbours[shortlist, :k2 - 1]], axis=1)
        if new_node and k2 > 1:  # the query enters the list of an image it is nearer than that image's k2-1-th
            beside = np.concatenate([gallery.neighbours[shortlist, :k2 - 1],
                                     np.full((len(shortlist), 1), node)], axis=1)
            beside_distances = np.concatenate([gallery.distances[shortlist, :k2 - 1],
                                               top_distances[:len(shortlist), None]], axis=1)
            order = np.argsort(beside_distances, axis=1, kind="stable")[:, :k2 - 1]
            lists[:, 1:] = np.take_along_axis(beside, order, axis=1)
        query_list = np.concatenate([[node], top[:k2 - 1]])
        _, query_columns, query_values = _mean_code(gallery, query_list[None, :], node, query_code, joins)
        columns = np.unique(query_columns)
        query_dense = np.bincount(np.searchsorted(columns, query_columns), weights=query_values,
                                  minlength=len(columns))
        rows, row_columns, row_values = _mean_code(gallery, lists, node, query_code, joins)
        position = np.minimum(np.searchsorted(columns, row_columns), len(columns) - 1)
        kept = columns[position] == row_columns  # only columns the query's encoding holds can overlap
        dense = np.bincount(rows[kept] * len(columns) + position[kept], weights=row_values[kept],
                            minlength=len(shortlist) * len(columns)).reshape(len(shortlist), len(columns))

        overlap = np.minimum(dense, query_dense[None, :]).sum(axis=1)
        jaccard = 1.0 - overlap / (2.0 - overlap)  # the weights of each encoding sum to 1
        original = top_distances[:len(shortlist)].astype(np.float64) ** 2 / gallery.scale
        final = (1.0 - lam) * jaccard + lam * original
        reordered = shortlist[np.argsort(final, kind="stable")]
        pads = np.full(min(candidates, len(ranked)) - len(shortlist), -1, dtype=np.int64)
        return np.concatenate([reordered, pads, ranked[candidates:]])

    def _query_encoding(self, gallery: GalleryEncodings, query: np.ndarray, top: np.ndarray,
                        top_distances: np.ndarray, node: int,
                        new_node: bool) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """The query's encoding ``(columns, weights)`` from its expanded k-reciprocal set and, for a new query,
        the gallery images whose encodings it joins (sorted), with its unnormalised weight in each."""
        k1 = int(self.params["k1"])
        forward, forward_distances = top[:k1], top_distances[:k1]
        mutual = (forward >= 0) & (forward_distances <= gallery.radius[np.maximum(forward, 0)])
        members = [node, *forward[mutual].tolist()]
        near, near_distances = top[:gallery.half], top_distances[:gallery.half]
        near_mutual = (near >= 0) & (near_distances <= gallery.distances[np.maximum(near, 0), gallery.half - 1])
        query_half = [node, *near[near_mutual].tolist()]
        expanded = np.array(_expand(members, lambda member: query_half if member == node else
                                    gallery.half_set(member)), dtype=np.int64)
        squared = np.where(expanded == node, 0.0,
                           ((gallery.space[np.minimum(expanded, len(gallery.space) - 1)] - query) ** 2).sum(axis=1))
        weights = np.exp(-squared / gallery.scale)
        # A new query joins the encodings of its k-reciprocal gallery images (as the paper's query node would).
        joined = forward[mutual] if new_node else forward[:0]
        order = np.argsort(joined)
        joins = (joined[order], np.exp(-forward_distances[mutual][order] ** 2 / gallery.scale)[:len(joined)])
        return (expanded, weights / weights.sum()), joins


def _mean_code(gallery: GalleryEncodings, lists: np.ndarray, node: int, query_code: tuple[np.ndarray, np.ndarray],
               joins: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mean encoding of each row of ``lists`` (node ids, -1 pads), as sparse ``(row, column, value)`` triples.

    ``node`` is the query's column (its encoding is ``query_code``); ``joins`` are the gallery images a new query
    joins (sorted) and the query's unnormalised weight in each of their encodings.
    """
    row_of = np.repeat(np.arange(len(lists)), lists.shape[1])
    members = lists.ravel()
    counts = np.bincount(row_of[members >= 0], minlength=len(lists)).astype(np.float64)
    is_query = members == node
    gallery_members = (members >= 0) & ~is_query
    chosen, chosen_rows = members[gallery_members], row_of[gallery_members]
    starts, lengths = gallery.indptr[chosen], gallery.indptr[chosen + 1] - gallery.indptr[chosen]
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    flat = np.repeat(starts, lengths) + offsets
    entry_rows = np.repeat(chosen_rows, lengths)
    columns = gallery.columns[flat]
    values = gallery.weights[flat].astype(np.float64)
    parts = [(entry_rows, columns, values)]
    join_ids, join_weights = joins
    if len(join_ids):  # a joined encoding: the query's weight added, then normalised again
        at = np.minimum(np.searchsorted(join_ids, chosen), len(join_ids) - 1)
        join_weight = np.where(join_ids[at] == chosen, join_weights[at], 0.0)
        if join_weight.any():
            totals = gallery.totals[chosen]
            values *= np.repeat(totals / (totals + join_weight), lengths)
            joined = join_weight > 0
            parts.append((chosen_rows[joined], np.full(joined.sum(), node),
                          (join_weight / (totals + join_weight))[joined]))
    for row in row_of[is_query]:
        parts.append((np.full(len(query_code[0]), row), query_code[0], query_code[1]))
    entry_rows = np.concatenate([part[0] for part in parts])
    columns = np.concatenate([part[1] for part in parts]).astype(np.int64)
    values = np.concatenate([part[2] for part in parts]) / counts[entry_rows]
    return entry_rows, columns, values


def _expand(members: list[int], half_set: Callable[[int], list[int]]) -> list[int]:
    """A k-reciprocal set, grown by the half-size set of each member that shares more than 2/3 of it (the paper's
    rule, which recovers true matches a strict k-reciprocal test misses)."""
    inside = set(members)
    grown = set(members)
    for member in members:
        half = half_set(member)
        if sum(item in inside for item in half) > 2 / 3 * len(half):
            grown.update(half)
    return sorted(grown)


def _distances(space: np.ndarray, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Euclidean distance from each query row to the rows ``ids[row]`` of ``space`` (inf for a -1 pad)."""
    gathered = space[np.maximum(ids, 0)]
    distances = np.sqrt(((gathered - queries[:, None, :]) ** 2).sum(axis=2))
    return np.where(ids >= 0, distances, np.inf).astype(np.float32)


def _scale(space: np.ndarray) -> float:
    """The largest squared distance among a seeded sample of the gallery (the paper scales by each row's maximum)."""
    rng = np.random.default_rng(0)
    sample = space[np.sort(rng.choice(len(space), size=min(len(space), SCALE_SAMPLE), replace=False))]
    sample = sample.astype(np.float64)
    norms = (sample ** 2).sum(axis=1)
    largest = float((norms[:, None] + norms[None, :] - 2.0 * sample @ sample.T).max())
    return largest if largest > 0 else 1.0

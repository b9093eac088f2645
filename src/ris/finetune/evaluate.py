"""Re-evaluate after fine-tuning: the fine-tuned and the pretrained embeddings, side by side, on the same queries
and galleries, with exact search, under every protocol a training can honestly (or, labelled, leakily) answer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ris.config import EvalConfig
from ris.evaluate.evaluation import evaluate_queries
from ris.evaluate.protocols import PROTOCOLS
from ris.index.brute import BruteForceIndex

PROTOCOLS_OF_TRAINING = {"heldout": ("heldout", "book"), "unseen-classes": ("unseen-classes",)}
"""Where each training is evaluated: the ``heldout`` model on the split's test images, and under the book's
protocol (leaky: its queries include the images it trained on); the ``unseen-classes`` model on the classes it
never saw."""

LEAKS = {("heldout", "book"): "training saw the train-split images, which are 60 % of the book protocol's queries "
                              "and of its gallery"}


@dataclass
class Comparison:
    """One protocol's metrics for the pretrained and the fine-tuned embeddings; ``leak`` says how training saw the
    queries (None when it never did)."""

    protocol: str
    pretrained: dict[str, float]
    finetuned: dict[str, float]
    leak: str | None

    def report(self) -> dict:
        gains = {key: self.finetuned[key] - self.pretrained[key] for key in self.finetuned
                 if key not in ("queries", "gallery_size", "ann_recall_at_10")}
        return {"pretrained": self.pretrained, "finetuned": self.finetuned, "gain": gains,
                "leaky": self.leak is not None, "leak": self.leak, "about": PROTOCOLS[self.protocol].about}


def exact_metrics(vectors: np.ndarray, labels: np.ndarray, splits: np.ndarray, protocol: str,
                  cfg: EvalConfig) -> dict[str, float]:
    """``protocol``'s retrieval metrics for ``vectors`` with exact Euclidean search over its gallery."""
    query_set = PROTOCOLS[protocol].select(labels, splits)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = BruteForceIndex.build(vectors[query_set.gallery], "euclidean")
    metrics = evaluate_queries(index, vectors, labels, query_set, cfg)
    return {key: value for key, value in metrics.items() if not key.startswith("ann_recall")}


def compare(pretrained: np.ndarray, finetuned: np.ndarray, labels: np.ndarray, splits: np.ndarray, training: str,
            cfg: EvalConfig) -> list[Comparison]:
    """Both embeddings of the collection under each protocol of ``training``."""
    return [Comparison(protocol, exact_metrics(pretrained, labels, splits, protocol, cfg),
                       exact_metrics(finetuned, labels, splits, protocol, cfg), LEAKS.get((training, protocol)))
            for protocol in PROTOCOLS_OF_TRAINING[training]]

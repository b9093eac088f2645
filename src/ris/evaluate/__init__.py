"""Evaluation: retrieval accuracy under a named protocol, recall against exact search, and query latency."""

from ris.evaluate.latency import measure_latency
from ris.evaluate.metrics import leave_one_out_search, mean_average_precision_at_r, precision_at_k, recall_against_exact
from ris.evaluate.protocol import PROTOCOLS, evaluate_book

__all__ = ["PROTOCOLS", "evaluate_book", "leave_one_out_search", "mean_average_precision_at_r", "measure_latency",
           "precision_at_k", "recall_against_exact"]

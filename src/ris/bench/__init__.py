"""Benchmarks that are not pipeline stages: `ris bench search` (every index family at Caltech101 scale and at a
million vectors, recall against QPS)."""

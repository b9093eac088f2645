"""Benchmarks that are not pipeline stages: `ris bench search` (every index family at Caltech101 scale and at a
million vectors, recall against QPS), `ris bench extract` (extraction against the model's fastest forward pass) and
`ris bench backbones` (every configured backbone's size, cost and forward speed)."""

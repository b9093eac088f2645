"""Embedding extraction: timm backbones under PyTorch Lightning (``extract``, ``weights``, ``lightning``),
written to a memory-mappable feature store (``store``, importable without torch)."""

"""Figures of the pipeline's outputs: 2-D maps of the embeddings, and result grids of good and bad queries."""

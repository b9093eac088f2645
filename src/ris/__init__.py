"""ris: reverse image search as a reproducible experiment pipeline."""

__version__ = "0.1.0"

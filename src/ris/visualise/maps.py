"""2-D maps of a feature store: its first two principal components and a t-SNE, coloured by class.

The t-SNE runs on the first 50 principal components (the usual preprocessing: it removes noise and makes the
neighbour search cheap) of at most ``sample`` rows, a seeded sample, so a million-image collection draws in minutes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

TSNE_INPUT_DIM = 50


def embedding_map(embeddings: np.ndarray, rows: pd.DataFrame, *, sample: int, seed: int,
                  perplexity: float = 30.0) -> pd.DataFrame:
    """Coordinates of a seeded sample of ``rows`` (at most ``sample``, in row order) on two maps.

    Returns:
        One row per sampled image: ``row``, ``path``, ``class``, ``pca_x``/``pca_y`` (the first two principal
        components, fitted on the sample) and ``tsne_x``/``tsne_y``.
    """
    count = len(rows)
    if count < 2 or sample < 2:
        raise ValueError(f"a map needs at least 2 images and a sample of at least 2 (got {count} and {sample})")
    chosen = np.arange(count) if count <= sample else np.sort(
        np.random.default_rng(seed).choice(count, size=sample, replace=False))
    vectors = np.asarray(embeddings[chosen], dtype=np.float32)
    components = PCA(n_components=min(TSNE_INPUT_DIM, *vectors.shape), random_state=seed).fit_transform(vectors)
    # t-SNE needs more points than its perplexity; tiny collections get a smaller one.
    tsne = TSNE(n_components=2, perplexity=min(perplexity, (len(chosen) - 1) / 3), init="pca", random_state=seed)
    planar = tsne.fit_transform(components)
    table = rows.iloc[chosen][["path", "class"]].reset_index(drop=True)
    return table.assign(row=chosen, pca_x=components[:, 0], pca_y=components[:, 1] if components.shape[1] > 1 else 0.0,
                        tsne_x=planar[:, 0], tsne_y=planar[:, 1])[["row", "path", "class", "pca_x", "pca_y",
                                                                   "tsne_x", "tsne_y"]]


def plot_map(table: pd.DataFrame, kind: str, title: str, path: Path) -> Path:
    """Scatter ``table``'s ``{kind}_x``/``{kind}_y`` coloured by class, each class named at its median point."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    classes = sorted(table["class"].unique())
    colours = plt.get_cmap("tab20")
    figure, axes = plt.subplots(figsize=(11, 9), dpi=150)
    for number, name in enumerate(classes):
        points = table[table["class"] == name]
        axes.scatter(points[f"{kind}_x"], points[f"{kind}_y"], s=4, color=colours(number % 20), alpha=0.7,
                     linewidths=0)
    if len(classes) <= 150:  # beyond that, names would cover the map
        for name, points in table.groupby("class"):
            axes.annotate(str(name), (points[f"{kind}_x"].median(), points[f"{kind}_y"].median()), fontsize=5,
                          ha="center", va="center", alpha=0.85)
    axes.set_title(title)
    axes.set_xticks([])
    axes.set_yticks([])
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path

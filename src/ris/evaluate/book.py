"""The book's chapter-4 figures beside this run's, and the results page ``results.md`` that starts with them.

*Practical Deep Learning for Cloud, Mobile & Edge*, chapter 4: ResNet-50 features of Caltech101, every image
querying all the others; its figures are quoted, never measured here.
"""

from __future__ import annotations

import os
import platform

import pandas as pd

from ris.config import AUTO_DIM, NO_RERANK

BOOK_PRETRAINED = "87–88.5 % mP@4: ResNet-50, 2,048-d max-pooled features, full and PCA-100"
BOOK_DIMENSION = "100, chosen by eye from a plot"
BOOK_SEARCH = "brute force, k-d tree, ball tree and Annoy timed on 8,677 images"
BOOK_FINETUNED = "about 89.5 % mP@4, trained on the very images it then queried"
BOOK_EXTRACTION = "310 images/s, ResNet-50 on a Colab GPU"


def machine() -> str:
    """This machine in a few words: CPU model (where the OS says) and core count."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def _pct(value: float) -> str:
    return f"{100 * value:.2f} %"


def beside_the_book(results: pd.DataFrame, backbones: pd.DataFrame, finetune: pd.DataFrame | None, *,
                    primary: str, chosen_dim: str, k: int = 4, recall_k: int = 10) -> str:
    """A Markdown table: each of the book's headline figures, and what this run measured for the same question.

    Accuracy is exact search's (the ``brute`` family), so an approximate index's loss is not counted against the
    backbone; without an exact cell the row is left out. ``k`` and ``recall_k`` are ``eval.k`` and
    ``eval.ann_recall_k`` (the book's mP@4 is k = 4)."""
    precision, recall = f"precision_at_{k}", f"ann_recall_at_{recall_k}"
    plain = results[results["rerank"] == NO_RERANK]
    book = plain[plain["protocol"] == "book"]
    exact = book[book["family"] == "brute"]
    best = exact.loc[exact[precision].idxmax()] if not exact.empty else None
    rows = []
    if best is not None:
        heldout = plain[(plain["protocol"] == "heldout") & (plain["backbone"] == best["backbone"])
                        & (plain["dim"] == best["dim"]) & (plain["index"] == best["index"])]
        also = f"; held-out {_pct(heldout.iloc[0][precision])}" if not heldout.empty else ""
        rows.append(("pretrained accuracy", BOOK_PRETRAINED,
                     f"{_pct(best[precision])} mP@{k}, MAP@R {_pct(best['map_at_r'])}: {best['backbone']}, "
                     f"{best['dim']} ({int(best['vector_dim'])}-d), exact search{also}", "book (and heldout)"))
    rows.append(("feature length", BOOK_DIMENSION,
                 f"{chosen_dim}: the PCA sweep's rule over 8 to full, measured ({primary})", "heldout"))
    timed = plain[(plain["protocol"] == "book") & (plain["backbone"] == primary)]
    if not timed.empty:
        fastest = timed.loc[timed["latency_p50_us"].idxmin()]
        scan = timed[timed["family"] == "brute"]
        scan_text = f"; exact scan {scan['latency_p50_us'].min():,.0f} µs" if not scan.empty else ""
        rows.append(("search", BOOK_SEARCH,
                     f"{len(timed['index'].unique())} index families x {len(timed['dim'].unique())} dimensions: "
                     f"fastest p50 {fastest['latency_p50_us']:,.0f} µs ({fastest['index']}, {fastest['dim']}, "
                     f"recall@{recall_k} {_pct(fastest[recall])}){scan_text}", "book, one query, one thread"))
    if finetune is not None and not finetune.empty:
        tuned = finetune[(finetune["model"] == "finetuned") & (finetune["training"] == "heldout")]
        by_protocol = {row["protocol"]: row for _, row in tuned.iterrows()}
        if "book" in by_protocol:
            honest = (f"; held-out queries it never saw {_pct(by_protocol['heldout'][precision])}"
                      if "heldout" in by_protocol else "")
            rows.append(("fine-tuned accuracy", BOOK_FINETUNED,
                         f"{_pct(by_protocol['book'][precision])} mP@{k} (book protocol, leaky: trained on "
                         f"the train split){honest}", "book (leaky), heldout"))
    speed = backbones[backbones["backbone"] == primary]
    if not speed.empty and pd.notna(speed.iloc[0]["images_per_second"]):
        rows.append(("extraction", BOOK_EXTRACTION,
                     f"{speed.iloc[0]['images_per_second']:,.1f} images/s end to end, {primary} on "
                     f"{speed.iloc[0]['device']}", "read, decode, embed, write"))
    table = pd.DataFrame(rows, columns=["", "the book (quoted)", "this run (measured)", "protocol"])
    return ("### Beside the book\n\nThe book's figures are quoted from its chapter 4; this run's are read from the "
            "pipeline's reports (latencies and images/s as the evaluate and extract stages measured them)."
            f"\n\n{table.to_markdown(index=False)}\n")


BOOK_ALGORITHMS = ("brute", "kd_tree", "ball_tree", "annoy")
"""The index families the book timed (its brute force is ours with ``family == "brute"``)."""


def _demoted(markdown: str) -> str:
    """``markdown`` with every heading one level deeper, to sit in a section of the page."""
    return "\n".join("#" + line if line.startswith("#") else line for line in markdown.splitlines()) + "\n"


def pca_table(sweep: pd.DataFrame, k: int = 4) -> pd.DataFrame:
    """The PCA curve: per swept dimension (plain PCA, not whitened or re-normalised), accuracy under both
    protocols, the variance kept and exact search's latency."""
    plain = sweep[(~sweep["whiten"].astype(bool)) & (~sweep["renormalize"].astype(bool))]
    by = {protocol: part.set_index("dim") for protocol, part in plain.groupby("protocol")}
    dims = list(dict.fromkeys(plain["dim"].astype(str)))
    heldout, book = by.get("heldout"), by.get("book")
    rows = []
    for dim in dims:
        source = heldout if heldout is not None else book
        row = source.loc[source.index.astype(str) == dim].iloc[0]
        entry = {"dim": dim, "vector dim": int(row["vector_dim"]), "variance kept %": 100 * row["explained_variance"]}
        if heldout is not None:
            held = heldout.loc[heldout.index.astype(str) == dim].iloc[0]
            entry.update({"held-out MAP@R %": 100 * held["map_at_r"], "held-out P@1 %": 100 * held["precision_at_1"]})
        if book is not None:
            entry[f"book mP@{k} %"] = 100 * book.loc[book.index.astype(str) == dim].iloc[0][f"precision_at_{k}"]
        entry["exact p50 µs"] = row["latency_p50_us"]
        rows.append(entry)
    return pd.DataFrame(rows)


def algorithm_table(results: pd.DataFrame, primary: str, k: int = 4, recall_k: int = 10) -> pd.DataFrame:
    """Every index of the grid at every dimension, for the primary backbone and without re-ranking: build time,
    size, latency and speed (one query, one thread), recall against exact search, and accuracy."""
    plain = results[(results["rerank"] == NO_RERANK) & (results["backbone"] == primary)]
    rows = []
    for (dim, index), cell in plain.groupby(["dim", "index"], sort=False):
        protocols = cell.set_index("protocol")
        first = cell.iloc[0]
        shown_dim = f"{dim} ({int(first['vector_dim'])})" if str(dim) == AUTO_DIM else dim
        entry = {"index": index + (" (book)" if first["family"] in BOOK_ALGORITHMS else ""), "dim": shown_dim,
                 "build s": first["index_build_seconds"], "index MB": first["index_bytes"] / 2**20,
                 "p50 µs": first["latency_p50_us"], "p99 µs": first["latency_p99_us"], "QPS": first["qps"]}
        if "heldout" in protocols.index:
            entry[f"recall@{recall_k} vs exact %"] = 100 * protocols.loc["heldout", f"ann_recall_at_{recall_k}"]
            entry["held-out MAP@R %"] = 100 * protocols.loc["heldout", "map_at_r"]
        if "book" in protocols.index:
            entry[f"book mP@{k} %"] = 100 * protocols.loc["book", f"precision_at_{k}"]
        rows.append(entry)
    return pd.DataFrame(rows)


def results_page(*, beside: str, backbones_md: str, sweep: pd.DataFrame, choice: dict, results: pd.DataFrame,
                 finetune_md: str | None, primary: str, date: str, where: str, k: int = 4,
                 recall_k: int = 10) -> str:
    """``reports/results.md``: the book's chapter-4 questions in its order (backbones, feature length, search
    algorithms, fine-tuning), each answered by this run's measurements with its protocol; the headline comparison
    with the book's quoted figures first. The full grid stays in ``grid.md``."""
    number = {"floatfmt": ".2f", "index": False}
    parts = [
        "# Results\n",
        f"Written {date} on {where} by `dvc repro` from the pipeline's reports. Accuracy is measured on this "
        "collection under the protocol each table names; latencies and images/s are what the stages measured on the "
        "machine that ran them.\n",
        beside.replace("### Beside the book", "## Beside the book"),
        "## Backbones\n", backbones_md,
        f"## Feature length: the PCA sweep ({primary}, exact search)\n",
        f"The book chose 100 by eye. Here the sweep's rule decides: {choice.get('rule', 'not recorded')}, which "
        f"chose **{choice.get('dim', 'not measured')}**. Figures: `pca/{primary}/plots/accuracy.png` and "
        f"`latency.png`.\n", pca_table(sweep, k).to_markdown(**number) + "\n",
        f"## Search algorithms ({primary}, one query at a time, one thread)\n",
        "The book timed brute force, k-d and ball trees and Annoy (marked `(book)`); the rest are the families "
        "worth comparing today, each at its tuned operating point. Recall is against exact search on held-out "
        "queries. Every cell with re-ranking and both protocols: `grid.md`; recall against speed: "
        "`recall-qps.png`.\n",
        algorithm_table(results, primary, k, recall_k).to_markdown(**{**number, "floatfmt": ",.2f"}) + "\n",
        _demoted(finetune_md) if finetune_md else "## Fine-tuning\n\nNo fine-tune in this run.\n",
    ]
    return "\n".join(parts)

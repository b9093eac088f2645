"""The book's chapter-4 figures beside this run's, for ``results.md``.

*Practical Deep Learning for Cloud, Mobile & Edge*, chapter 4: ResNet-50 features of Caltech101, every image
querying all the others; its figures are quoted, never measured here.
"""

from __future__ import annotations

import os
import platform

import pandas as pd

from ris.config import NO_RERANK

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
                    primary: str, chosen_dim: str, date: str, where: str, k: int = 4, recall_k: int = 10) -> str:
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
    return (f"### Beside the book\n\nWritten {date} on {where} from the pipeline's reports: latencies and images/s "
            f"are what the evaluate and extract stages measured on the machine that ran them (their reports say "
            f"which); the book's figures are quoted from its chapter 4.\n\n{table.to_markdown(index=False)}\n")

"""What `ris bench search` writes: the targets checked against the measurements, and the recall-QPS plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# The targets for a 2-core machine, checked against each run's measurements (the JSON says which hold).
P50_AT_95_US = {"caltech": 15.0, "million": 400.0}
BUILD_SECONDS = {"million": 300.0}
WRAPPER_RATIO = 1.1  # ris's search / the raw library call, approximate families
EXACT_RATIO = 1.2  # ris's exact search / the fastest minimal exact search
DEFAULT_RECALL = 0.9  # the pipeline's operating point must never return less, at any scale


def check_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with the measured figure and whether it holds."""
    scale, checks = result["scale"], []
    approximate = [item for item in result["candidates"] if item["group"] != "brute"]
    reaching = [(point["p50_us"], item) for item in approximate for point in item["points"]
                if point["recall"] >= 0.95]
    if scale in P50_AT_95_US:
        p50, best = min(reaching, key=lambda pair: pair[0]) if reaching else (float("inf"), None)
        checks.append({"target": f"p50 <= {P50_AT_95_US[scale]:g} us at recall@{result['k']} >= 0.95",
                       "measured": p50, "by": None if best is None else f"{best['group']} {best['label']}",
                       "holds": p50 <= P50_AT_95_US[scale]})
        if scale in BUILD_SECONDS and best is not None:
            checks.append({"target": f"build <= {BUILD_SECONDS[scale]:g} s (the same index)",
                           "measured": best["build_seconds"], "by": f"{best['group']} {best['label']}",
                           "holds": best["build_seconds"] <= BUILD_SECONDS[scale]})
    for item in result["candidates"]:
        name = f"{item['group']} {item['label']}"
        if item["group"] == "brute":
            baselines = item["exact_baselines"]
            fastest = min(item["wrapper"]["raw_p50_us"], baselines["numpy_p50_us"], baselines["faiss_flat_p50_us"])
            ratio = item["wrapper"]["wrapper_p50_us"] / fastest
            checks.append({"target": f"exact search within {EXACT_RATIO:g}x of the fastest minimal exact search",
                           "measured": ratio, "by": name, "holds": ratio <= EXACT_RATIO})
            continue
        checks.append({"target": f"wrapper within {WRAPPER_RATIO:g}x of the raw library call",
                       "measured": item["wrapper"]["ratio"], "by": name,
                       "holds": item["wrapper"]["ratio"] <= WRAPPER_RATIO})
        tuned = item["pipeline_operating_point"]
        if tuned is not None:
            checks.append({"target": f"the pipeline's operating point returns recall >= {DEFAULT_RECALL:g}",
                           "measured": tuned["recall"], "by": name, "holds": tuned["recall"] >= DEFAULT_RECALL})
    return checks


def plot_recall_qps(result: dict[str, Any], path: Path) -> Path:
    """Recall@k against QPS (log), every measured setting faint and each group's Pareto frontier drawn."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 6))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for position, (group, frontier) in enumerate(result["frontiers"].items()):
        colour = colours[position % len(colours)]
        points = [point for item in result["candidates"] if item["group"] == group for point in item["points"]]
        axes.scatter([point["recall"] for point in points], [point["qps"] for point in points], s=12,
                     color=colour, alpha=0.3)
        axes.plot([point["recall"] for point in frontier], [point["qps"] for point in frontier], "o-", ms=4,
                  color=colour, label=group)
    axes.set_yscale("log")
    axes.set_xlabel(f"recall@{result['k']} against exact search")
    axes.set_ylabel("queries per second, one thread, one query at a time")
    gallery, dim = result["gallery"]
    axes.set_title(f"{result['scale']}: {gallery:,} vectors x {dim}, {result['queries']:,} queries "
                   f"({result['machine']['cpus']} CPUs)")
    axes.axvline(0.95, color="grey", lw=0.8, ls=":")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="lower left")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path

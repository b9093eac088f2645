"""The fine-tune report: every training's comparison in one table (protocol beside every number, leaky ones
marked), a check against the grid's own pretrained exact-search results, and the learning curves as a figure."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ris.artifacts import ArtifactError
from ris.evaluate.protocols import PROTOCOLS

SHOWN = {"map_at_r": "MAP@R", "precision_at_1": "P@1", "precision_at_4": "mP@4", "recall_at_1": "R@1",
         "recall_at_5": "R@5", "recall_at_10": "R@10"}
AGREEMENT = 1e-6
"""How far the fine-tune stage's pretrained numbers may be from the grid's full/brute cell (both are exact search
over the same features, so they agree to rounding)."""


def read_reports(files: list[Path]) -> list[dict]:
    """The ``finetune`` stage's reports, in the order given."""
    reports = []
    for path in files:
        if not path.is_file():
            raise ArtifactError(f"{path} not found: run `dvc repro` (the finetune stage writes it)")
        reports.append(json.loads(path.read_text()))
    return reports


def check_against_grid(reports: list[dict], grid_metrics: Path) -> list[str]:
    """Protocols whose pretrained metrics were checked against the grid's exact-search cell (``full``/``brute``).

    Raises:
        ArtifactError: they differ (the fine-tune compared against other features than the grid evaluated).
    """
    if not grid_metrics.is_file():
        raise ArtifactError(f"{grid_metrics} not found: run `dvc repro` (the grid's full/brute cell writes it)")
    grid = json.loads(grid_metrics.read_text())["protocols"]
    checked = []
    for report in reports:
        for protocol, found in report["protocols"].items():
            if protocol not in grid:
                continue
            for key in SHOWN:
                if key in grid[protocol] and abs(grid[protocol][key] - found["pretrained"][key]) > AGREEMENT:
                    raise ArtifactError(f"the fine-tune's pretrained {protocol} {key} {found['pretrained'][key]:.6f} "
                                        f"differs from the grid's {grid[protocol][key]:.6f} ({grid_metrics}): run "
                                        "`dvc repro`")
            checked.append(protocol)
    return checked


def comparison_table(reports: list[dict]) -> pd.DataFrame:
    """One row per (training, protocol, model): pretrained, fine-tuned, and the gain in points."""
    rows = []
    for report in reports:
        for protocol, found in report["protocols"].items():
            common = {"backbone": report["backbone"], "training": report["training"], "protocol": protocol,
                      "leaky": found["leaky"], "queries": found["finetuned"]["queries"],
                      "gallery_size": found["finetuned"]["gallery_size"]}
            for model in ("pretrained", "finetuned", "gain"):
                rows.append({**common, "model": model, **{key: found[model][key] for key in SHOWN}})
    return pd.DataFrame(rows)


def blend_note(recipe: dict) -> str:
    """How much of the similarity the pretrained embedding keeps, when the model blends it in."""
    weight = recipe.get("pretrained_weight", 0.0)  # absent in reports written before the blend existed
    return f" (the fine-tuned embedding blended with the pretrained one, weight {weight:g})" if weight else ""


def selection_note(report: dict) -> str:
    """Which epoch each member kept, by val MAP@R, and the members' val MAP@R together where there are several."""
    members = report["members"]
    if len(members) == 1:
        return (f"best val MAP@R {100 * members[0]['best_val_map_at_r']:.1f} % at epoch "
                f"{members[0]['best_epoch'] + 1} of {members[0]['epochs_run']}")
    each = "; ".join(f"seed {member['seed']}: {100 * member['best_val_map_at_r']:.1f} % at epoch "
                     f"{member['best_epoch'] + 1} of {member['epochs_run']}" for member in members)
    return (f"an ensemble of {len(members)} fine-tunes, their embeddings concatenated (best val MAP@R {each}; "
            f"together {100 * report['best_val_map_at_r']:.1f} %)")


def to_markdown(table: pd.DataFrame, reports: list[dict]) -> str:
    """Per protocol, pretrained vs fine-tuned (in %) and the gain (in points), with the recipe and the leak named."""
    lines = ["# Fine-tuning: pretrained vs fine-tuned, exact search, same queries", ""]
    for report in reports:
        recipe = report["recipe"]
        lines.append(f"- **{report['training']}** training: {report['backbone']} `{recipe['depth']}`"
                     f"{' from ' + report['tail_from'] if report['tail_from'] else ''}, {recipe['inputs']} inputs, "
                     f"{recipe['loss']['name']} loss, {report['embedding_dim']}-d"
                     f"{blend_note(recipe)}; {report['train_images']:,} train / "
                     f"{report['val_images']:,} val images of {report['classes']} classes; "
                     f"{selection_note(report)}; {report['train_seconds']:.0f} s on {report['device']} "
                     f"({report['precision']}).")
    lines.append("")
    for (training, protocol), part in table.groupby(["training", "protocol"], sort=False):
        first = part.iloc[0]
        leak = next(report["protocols"][protocol]["leak"] for report in reports if report["training"] == training)
        title = f"### `{protocol}` protocol, {training} training"
        lines += [title + (" — LEAKY: " + leak if leak else ""), "",
                  f"{PROTOCOLS[protocol].about} ({int(first['queries']):,} queries, gallery of "
                  f"{int(first['gallery_size']):,}).", "",
                  "| model | " + " | ".join(SHOWN.values()) + " |", "|---|" + "---:|" * len(SHOWN)]
        for _, row in part.iterrows():
            if row["model"] == "gain":
                cells = [f"{100 * row[key]:+.1f}" for key in SHOWN]
            else:
                cells = [f"{100 * row[key]:.1f}" for key in SHOWN]
            lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("Percent; the gain row is in percentage points.")
    return "\n".join(lines) + "\n"


def plot_curves(histories: dict[str, pd.DataFrame], out: Path) -> None:
    """Training loss and val MAP@R per epoch, one line per training (and member, where there are several)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, (loss_axis, map_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for training, history in histories.items():
        members = history.groupby("member", sort=True)
        for member, curve in members:
            label = training if len(members) == 1 else f"{training}, member {member}"
            epochs = curve["epoch"] + 1
            loss_axis.plot(epochs, curve["train/loss"], marker="o", label=label)
            map_axis.plot(epochs, 100 * curve["val/map_at_r"], marker="o", label=label)
    loss_axis.set(xlabel="epoch", ylabel="training loss", title="Training loss")
    map_axis.set(xlabel="epoch", ylabel="val MAP@R (%)", title="Val MAP@R (checkpoint selection)")
    for axis in (loss_axis, map_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial.png")
    figure.savefig(partial, dpi=120)
    plt.close(figure)
    partial.replace(out)

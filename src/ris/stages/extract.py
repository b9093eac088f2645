"""DVC stage `extract`: embed every collection image with the configured backbone (only images never embedded
before by the same extractor are computed; the rest come from the embedding cache)."""

from __future__ import annotations

from collections.abc import Sequence

from ris.config import Config
from ris.data.catalog import check_unchanged, image_root, read_image_table
from ris.embed.cost import architecture_cost
from ris.embed.extract import extract_features
from ris.embed.models import check_backbone_name
from ris.paths import PipelinePaths, write_json_atomic
from ris.stages._common import Done, load_stage_config, parse_stage_args, stage_main


def run(cfg: Config) -> dict:
    """Write the feature store for ``cfg.backbone`` and a report: throughput, and the model's size and work."""
    check_backbone_name(cfg.backbone.name)
    paths = PipelinePaths(cfg)
    table = read_image_table(paths.image_table)
    root = image_root(paths.images_dir)
    if root != paths.images_dir:  # catalogued in place: DVC does not watch that folder, so check it here
        check_unchanged(table, root)
    features = extract_features(table, root, cfg.backbone, paths.features_dir,
                                exclude_classes=cfg.data.exclude_classes, cache_root=paths.embedding_cache,
                                reuse=False)
    meta, run = features.meta, features.run
    weights = meta["weights"]
    report = {"backbone": cfg.backbone.name, "model": meta["model"], "images": meta["images"], "dim": meta["dim"],
              # embedded: images computed by this run (the rest came from the embedding cache); images/s is theirs
              "embedded": run["embedded"], "reused": run["reused"], "seconds": run["seconds"],
              "images_per_second": run["images_per_second"], "device": run["device"],
              "weights": {"kind": weights["kind"], "identity": weights["identity"],
                          "file_name": weights["file_name"]},
              "preprocessing": meta["preprocessing"], "timm_version": meta["timm_version"],
              "excluded_classes": cfg.data.exclude_classes,
              "excluded_images": int(table["class"].isin(cfg.data.exclude_classes).sum()),
              "batch_size": cfg.backbone.batch_size, "num_workers": cfg.backbone.num_workers,
              "devices": cfg.backbone.devices, "channels_last": cfg.backbone.channels_last,
              "pool": cfg.backbone.pool, "precision": cfg.backbone.precision,
              # what the backbone table shows beside accuracy: parameters and GFLOPs per image at its input size
              "cost": architecture_cost(cfg.backbone.name, tuple(meta["preprocessing"]["input_size"])).as_dict()}
    write_json_atomic(paths.extract_report, report)
    return report


def main(argv: Sequence[str] | None = None) -> None:
    def body() -> Done:
        cfg = load_stage_config(parse_stage_args("extract", argv, backbone=True))
        report, paths = run(cfg), PipelinePaths(cfg)
        rate = f" at {report['images_per_second']:.1f} images/s" if report["embedded"] else ""
        return Done([paths.image_table, paths.images_dir], [paths.features_dir, paths.extract_report],
                    f"{report['images']:,} images x {report['dim']}, {report['embedded']:,} embedded{rate} on "
                    f"{report['device']}, {report['reused']:,} from the cache")

    stage_main("extract", body)


if __name__ == "__main__":
    main()

"""DVC stage `download`: fetch (or take a local copy of) the collection and write its image table."""

from __future__ import annotations

from collections.abc import Sequence

from ris.config import Config
from ris.data.catalog import duplicate_groups
from ris.data.prepare import prepare_collection
from ris.embed.models import check_backbone_name
from ris.embed.weights import resolve_weights
from ris.paths import PipelinePaths, write_json_atomic
from ris.stages._common import Done, load_stage_config, parse_stage_args, stage_main, timed


def run(cfg: Config) -> dict:
    """Prepare the collection and report what was kept, what was skipped (and why) and which files are identical.

    The backbone's weights are resolved first: a pipeline that cannot extract fails before downloading anything.
    """
    check_backbone_name(cfg.backbone.name)
    paths = PipelinePaths(cfg)
    resolve_weights(cfg.backbone)
    with timed("download"):
        prepared = prepare_collection(cfg.data)
    table = prepared.table
    duplicates = duplicate_groups(table)
    report = {"source": prepared.source, "images": len(table), "classes": int(table["class"].nunique()),
              "skipped": len(prepared.skipped), "skipped_files": prepared.skipped,
              "duplicate_groups": len(duplicates), "duplicate_files": duplicates}
    write_json_atomic(paths.data_report, report)
    return report


def main(argv: Sequence[str] | None = None) -> None:
    def body() -> Done:
        cfg = load_stage_config(parse_stage_args("download", argv))
        report, paths = run(cfg), PipelinePaths(cfg)
        return Done([report["source"]], [paths.images_dir, paths.image_table, paths.data_report],
                    f"{report['images']:,} images in {report['classes']} classes, {report['skipped']} skipped")

    stage_main("download", body)


if __name__ == "__main__":
    main()

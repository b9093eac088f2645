"""Long loops report progress with rate and ETA in log files too, and stages end with one closing line."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import timm

from ris import progress as progress_module
from ris.embed.lightning import EmbeddingModule, ImageDataModule, predict_matrix
from ris.embed.preprocess import eval_transform
from ris.progress import Progress, format_duration, progress
from ris.stages._common import Done, closing_line


@pytest.fixture
def log_file_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """stderr is a file, and every update is due for a line."""
    monkeypatch.setattr(progress_module.sys.stderr, "isatty", lambda: False, raising=False)
    monkeypatch.setenv(progress_module.LOG_EVERY_ENV, "0")


def test_durations_read_as_people_write_them():
    assert [format_duration(s) for s in (0.4, 42, 187, 3725)] == ["0 s", "42 s", "3 min 07 s", "1 h 02 min"]


def test_a_loop_writing_to_a_file_logs_lines_with_count_rate_and_time_left(log_file_output: None,
                                                                            caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.INFO, logger="ris.progress"):
        assert list(progress(range(4), "sweep", 4, "settings")) == [0, 1, 2, 3]
    lines = [record.getMessage() for record in caplog.records]
    assert lines[0].startswith("sweep: 1 / 4 settings (25%), ") and "settings/s" in lines[0] and "left" in lines[0]
    assert lines[-1].startswith("sweep: 4 / 4 settings (100%)") and "left" not in lines[-1]


def test_lines_come_at_most_every_interval_and_never_when_disabled(monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture):
    monkeypatch.setattr(progress_module.sys.stderr, "isatty", lambda: False, raising=False)
    with caplog.at_level(logging.INFO, logger="ris.progress"):
        counter = Progress("slow", 100, "images", every=3600)
        counter.update(50)
        list(progress(range(3), "off", 3, "images", enabled=False))
    assert counter.done == 50 and not caplog.records


def test_extraction_under_lightning_logs_all_ranks_images(log_file_output: None, image_tree: Path,
                                                          caplog: pytest.LogCaptureFixture, tmp_path: Path):
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=0).eval()
    config = timm.data.resolve_model_data_config(model)
    paths = sorted(image_tree.rglob("*.jpg"))
    data = ImageDataModule(paths, eval_transform(config), batch_size=3, num_workers=0)
    with caplog.at_level(logging.INFO, logger="ris.progress"):
        predict_matrix(EmbeddingModule(model, mean=config["mean"], std=config["std"]), data, tmp_path / "m.npy",
                       accelerator="cpu", devices=1, strategy="auto", precision="32-true", progress=True,
                       what="extract tiny")
    lines = [record.getMessage() for record in caplog.records if record.getMessage().startswith("extract tiny")]
    assert lines[-1].startswith(f"extract tiny: {len(paths)} / {len(paths)} images (100%)")
    assert np.load(tmp_path / "m.npy").shape[0] == len(paths)


def test_the_closing_line_names_what_was_read_and_written_with_sizes(tmp_path: Path):
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "a.npy").write_bytes(b"x" * 2500)
    (tmp_path / "report.json").write_text("{}")
    line = closing_line("extract", Done([tmp_path / "images"], [tmp_path / "store", tmp_path / "report.json",
                                                                 tmp_path / "gone"], "8 images"), 187.0)
    assert line == (f"stage extract done in 3 min 07 s: read {tmp_path / 'images'}; wrote {tmp_path / 'store'} "
                    f"(2.5 kB), {tmp_path / 'report.json'} (2 B), {tmp_path / 'gone'} (missing); 8 images")

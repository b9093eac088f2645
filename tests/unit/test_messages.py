"""Every user error of a `ris` command is one line naming the key, the bad value and what is allowed, with close
matches for misspelt keys and model names; --debug shows the traceback instead."""

from __future__ import annotations

from pathlib import Path

import pytest

from ris.cli import main
from ris.config import ConfigError


@pytest.mark.parametrize("override, expected", [
    ("backbone.name=resnet5", "'backbone.name' is 'resnet5', which is not a timm model; did you mean resnet50"),
    ("grid.dims=[full,-5]", "'grid.dims[1]' is -5; allowed values: a positive integer, 'full', 'auto'"),
    ("grid.dims=[full,0]", "'grid.dims[1]' is 0; allowed values"),
    ("grid.indexes=[nope]", "'grid.indexes[0]' is 'nope'; allowed values: brute, annoy, hnsw"),
    ("eval.k=0", "'eval.k' is 0; it must be a positive integer"),
    ("backbone.batch_size=0", "'backbone.batch_size' is 0; it must be a positive integer"),
    ("+backbone.nmae=x", "'backbone.nmae' does not exist; did you mean 'name'"),
    ("backbone.nmae=x", "'backbone.nmae' does not exist; did you mean 'name'"),
    ("indexes.annoy.params.n_tree=3", "'indexes.annoy.params.n_tree' does not exist; did you mean 'n_trees'?"),
    ("index=nope", "'index' does not exist; did you mean 'indexes'?"),
    ("grid.dims=[full", "bad override"),
])
def test_bad_compose_is_one_line(override: str, expected: str, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["compose", "--out", str(tmp_path / "params.yaml"), override])
    message = str(caught.value)
    assert message.startswith("ris compose: ") and expected in message
    assert "\n" not in message and "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "params.yaml").exists()


def test_an_unknown_key_lists_the_keys_there(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["compose", "--out", str(tmp_path / "params.yaml"), "+backbone.nmae=x"])
    assert "(keys there: name, pretrained, weights_file" in str(caught.value)


def test_debug_shows_the_exception(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RIS_DEBUG", "0")  # recorded, so the "1" that --debug sets is undone after the test
    with pytest.raises(ConfigError, match="eval.k"):
        main(["--debug", "compose", "--out", str(tmp_path / "params.yaml"), "eval.k=0"])


def test_stage_help_lists_the_stages(capsys: pytest.CaptureFixture[str]) -> None:
    main(["stage", "--help"])
    assert "download, split, extract, pca_sweep, reduce, index, evaluate, report" in capsys.readouterr().out


@pytest.mark.parametrize("args, expected", [
    (["backbone=resnet5"], "'backbone=resnet5': conf/backbone has no resnet5.yaml; did you mean resnet50?"),
    (["backbone=_shared"], "'backbone=_shared': conf/backbone has no _shared.yaml"),  # shared settings: not a choice
    (["grid.dimz=3"], "config key 'grid.dimz' does not exist; did you mean 'dims'?"),
    (["-m", "grid.dims=4,x"], "'grid.dims[0]' is 'x'"),  # every value of a sweep is checked, not only the first
    (["-m", "backbone=resnet50,vgg1"], "'backbone=vgg1': conf/backbone has no vgg1.yaml; did you mean vgg19"),
    (["eval.k=0"], "'eval.k' is 0; it must be a positive integer"),
    (["reduce.dim=abc"], "config key 'reduce.dim' does not exist"),
])
def test_bad_run_override_is_one_line_before_hydra_starts(args: list[str], expected: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as caught:
        main(["run", *args])
    message = str(caught.value)
    assert message.startswith("ris run: ") and expected in message and "\n" not in message, message
    assert "Traceback" not in capfd.readouterr().err
    assert not (tmp_path / "outputs").exists()  # Hydra never started


def test_compose_reads_the_working_directorys_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second clone, a worktree or `dvc exp run --temp` uses its own conf/, not the installed checkout's."""
    import shutil

    shutil.copytree(Path(__file__).resolve().parents[2] / "conf", tmp_path / "conf")
    config = tmp_path / "conf/config.yaml"
    config.write_text(config.read_text().replace("dims: [full, auto]", "dims: [full, 77]"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RIS_CONF_DIR")
    main(["compose", "--out", "params.yaml"])
    assert "- 77" in (tmp_path / "params.yaml").read_text()

    monkeypatch.chdir(tmp_path / "conf")  # no conf/ here: one line saying where ris looked
    with pytest.raises(SystemExit, match=r"ris compose: .*conf/conf/config.yaml not found: run ris in a ris checkout"):
        main(["compose", "--out", "params.yaml"])

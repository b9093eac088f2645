"""Every user error of a `ris` command is one line naming the key, the bad value and what is allowed, with close
matches for misspelt keys and model names; --debug shows the traceback instead."""

from __future__ import annotations

from pathlib import Path

import pytest

from ris.cli import main
from ris.config import ConfigError


@pytest.mark.parametrize("override, expected", [
    ("backbone.name=resnet5", "'backbone.name' is 'resnet5', which is not a timm model; did you mean resnet50"),
    ("grid.dims=[full,-5]", "'grid.dims[1]' is -5; allowed values: a positive integer or 'full'"),
    ("grid.dims=[full,0]", "'grid.dims[1]' is 0; allowed values"),
    ("grid.indexes=[nope]", "'grid.indexes[0]' is 'nope'; allowed values: brute, annoy"),
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
    assert "download, split, extract, reduce, index, evaluate, report" in capsys.readouterr().out

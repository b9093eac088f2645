"""Every dvc.yaml stage depends on exactly the ``ris`` code its command runs: no stale deps, no superfluous ones.

A stage whose deps miss a module it imports is not re-run when that module changes (stale results); a stage whose
deps name code it never runs is re-run for nothing. The import closure is read from the source with ``ast``
(``tests/import_closure.py``); the first tests below prove that reader on a small synthetic package.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from import_closure import (
    covering_entries,
    declared_source_files,
    module_file,
    ris_import_closure,
    stage_modules,
)

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"

# --- the helper, on a synthetic package -----------------------------------------------------------------------

SYNTHETIC = {
    "ris/__init__.py": '"""top package"""\n',
    "ris/stages/__init__.py": "STAGES = ('alpha',)\n",
    "ris/stages/alpha.py": """
        from __future__ import annotations

        import importlib
        import os
        import typing
        from typing import TYPE_CHECKING

        import risky  # a third-party name that merely starts with "ris"
        from ris import helpers  # a submodule, imported by a from-import
        from ris.core import VALUE  # a name defined in ris.core, not a module

        if TYPE_CHECKING:
            from ris.typing_only import Thing
            import ris.typing_pkg.deep
        else:
            from ris import runtime_alt

        if typing.TYPE_CHECKING:
            import ris.typing_only2


        def main() -> None:
            from ris.deep.inner.leaf import leaf  # a local import, two packages down
            import ris.dotted.mod  # a dotted import

            importlib.import_module("ris.plugin")
            importlib.import_module(f"ris.stages.{os.environ['X']}")  # dynamic: cannot be read, ignored
    """,
    "ris/helpers.py": "from .rel import X\n",
    "ris/rel.py": "X = 1\n",
    "ris/core.py": "VALUE = 1\n",
    "ris/runtime_alt.py": "",
    "ris/typing_only.py": "import ris.unused\n",
    "ris/typing_only2.py": "",
    "ris/typing_pkg/__init__.py": "",
    "ris/typing_pkg/deep.py": "",
    "ris/unused.py": "",
    "ris/plugin.py": "",
    "ris/deep/__init__.py": "",
    "ris/deep/inner/__init__.py": "from __future__ import annotations\n",
    "ris/deep/inner/leaf.py": "from ..sibling import g\n\ndef leaf():\n    return g()\n",
    "ris/deep/inner/unused_leaf.py": "",
    "ris/deep/sibling.py": "def g():\n    return 1\n",
    "ris/dotted/__init__.py": "",
    "ris/dotted/mod.py": "",
    "ris/cli.py": "import importlib\nfrom ris.stages import STAGES\n\ndef main():\n    from ris.core import VALUE\n",
}


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """A tiny ``ris`` package under ``tmp_path/src`` with every kind of import the closure must (not) follow."""
    root = tmp_path / "src"
    for relative, text in SYNTHETIC.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def _names(files: set[Path], src: Path) -> set[str]:
    return {file.relative_to(src).as_posix() for file in files}


def test_module_file_finds_modules_and_packages_only(src: Path) -> None:
    assert module_file("ris", src) == src / "ris/__init__.py"
    assert module_file("ris.deep.inner", src) == src / "ris/deep/inner/__init__.py"
    assert module_file("ris.deep.inner.leaf", src) == src / "ris/deep/inner/leaf.py"
    assert module_file("ris.core.VALUE", src) is None  # a name in a module
    assert module_file("ris.nowhere", src) is None
    assert module_file("risky", src) is None
    assert module_file("numpy", src) is None


def test_closure_follows_every_real_import_and_no_other(src: Path) -> None:
    closure = ris_import_closure(["ris.stages.alpha"], src)
    assert _names(closure, src) == {
        "ris/__init__.py",  # parent package of the root
        "ris/stages/__init__.py",  # parent package of the root
        "ris/stages/alpha.py",  # the root
        "ris/helpers.py",  # from ris import helpers (a submodule)
        "ris/rel.py",  # relative import in helpers
        "ris/core.py",  # from ris.core import VALUE
        "ris/runtime_alt.py",  # the else branch of `if TYPE_CHECKING`
        "ris/deep/__init__.py",  # local import: every package along the way...
        "ris/deep/inner/__init__.py",
        "ris/deep/inner/leaf.py",  # ... and the module
        "ris/deep/sibling.py",  # `from ..sibling import g` inside a nested package
        "ris/dotted/__init__.py",  # import ris.dotted.mod
        "ris/dotted/mod.py",
        "ris/plugin.py",  # importlib.import_module with a literal name
    }


def test_closure_ignores_type_checking_imports(src: Path) -> None:
    closure = _names(ris_import_closure(["ris.stages.alpha"], src), src)
    for never_run in ("ris/typing_only.py", "ris/typing_only2.py", "ris/typing_pkg/__init__.py",
                      "ris/typing_pkg/deep.py", "ris/unused.py"):
        assert never_run not in closure


def test_closure_of_several_roots_is_their_union(src: Path) -> None:
    cli = ris_import_closure(["ris.cli"], src)
    alpha = ris_import_closure(["ris.stages.alpha"], src)
    assert _names(cli, src) == {"ris/__init__.py", "ris/cli.py", "ris/stages/__init__.py", "ris/core.py"}
    assert ris_import_closure(["ris.cli", "ris.stages.alpha"], src) == cli | alpha


def test_closure_rejects_imports_that_would_fail(src: Path) -> None:
    (src / "ris/broken.py").write_text("def f():\n    import ris.gone\n")
    with pytest.raises(ModuleNotFoundError, match="ris.broken imports ris.gone"):
        ris_import_closure(["ris.broken"], src)
    with pytest.raises(ModuleNotFoundError, match="ris.stages.missing"):
        ris_import_closure(["ris.stages.missing"], src)
    with pytest.raises(ValueError, match="not ris modules: numpy"):
        ris_import_closure(["numpy"], src)


@pytest.mark.parametrize(("cmd", "roots"), [
    ("ris stage extract", ["ris.cli", "ris.stages.extract"]),
    ("ris stage index --dim ${item.dim} --index ${item.index}", ["ris.cli", "ris.stages.index"]),
    ("python -m ris.stages.reduce --dim ${item.dim}", ["ris.stages.reduce"]),
    ("python3 -u -m ris.stages.report", ["ris.stages.report"]),
    (".venv/bin/python -m ris.stages.report --params params.yaml", ["ris.stages.report"]),
    ("PYTHONHASHSEED=0 python -m ris.stages.download", ["ris.stages.download"]),
    ("python -m ris.cli stage evaluate --dim 8", ["ris.cli", "ris.stages.evaluate"]),
])
def test_stage_modules(cmd: str, roots: list[str]) -> None:
    assert stage_modules(cmd) == roots


@pytest.mark.parametrize("cmd", [
    "python scripts/do.py", "dvc repro", "python -m numpy", "ris stage ${item.stage}", "python -m ris.stages.x && ls",
])
def test_stage_modules_rejects_what_it_cannot_read(cmd: str) -> None:
    with pytest.raises(ValueError):
        stage_modules(cmd)


def test_declared_source_files(src: Path) -> None:
    repo = src.parent
    (src / "ris/deep/notes.txt").write_text("not code")
    declared = declared_source_files([
        "src/ris/deep",  # a folder: every .py below it, recursively
        "./src/ris/core.py",
        "src/ris/deep/notes.txt",  # not Python: ignored
        "src/ris/old.py",  # gone: kept, so that it is reported
        "${paths.artifacts}/features/${backbone.name}",  # outside src: ignored
        "conf/config.yaml",
    ], repo)
    assert _names(declared, src) == {"ris/deep/__init__.py", "ris/deep/inner/__init__.py", "ris/deep/inner/leaf.py",
                                     "ris/deep/inner/unused_leaf.py", "ris/deep/sibling.py", "ris/core.py",
                                     "ris/old.py"}
    with pytest.raises(ValueError, match="interpolated"):
        declared_source_files(["src/ris/stages/${item.stage}.py"], repo)


def test_covering_entries_prefers_whole_folders(src: Path) -> None:
    repo = src.parent
    dotted = {src / "ris/dotted/__init__.py", src / "ris/dotted/mod.py"}
    assert covering_entries(dotted | {src / "ris/core.py"}, repo) == ["src/ris/core.py", "src/ris/dotted"]
    partly = {src / "ris/deep/__init__.py", src / "ris/deep/inner/__init__.py", src / "ris/deep/inner/leaf.py"}
    assert covering_entries(partly, repo) == ["src/ris/deep/__init__.py", "src/ris/deep/inner/__init__.py",
                                              "src/ris/deep/inner/leaf.py"]
    assert covering_entries(partly | {src / "ris/deep/inner/unused_leaf.py"}, repo) == [
        "src/ris/deep/__init__.py", "src/ris/deep/inner"]


# --- the real dvc.yaml -------------------------------------------------------------------------------------------


def _stages() -> Iterator[tuple[str, list[str], list[str]]]:
    """``(name, cmds, deps)`` of every dvc.yaml stage (matrix and foreach stages: their one definition)."""
    stages: dict[str, dict[str, Any]] = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        definition = stage.get("do", stage)  # `foreach: ... do: ...`; `matrix:` keeps cmd and deps at the top
        cmd = definition["cmd"]
        deps = [dep if isinstance(dep, str) else next(iter(dep)) for dep in definition.get("deps", [])]
        yield name, [cmd] if isinstance(cmd, str) else list(cmd), deps


def _closure(cmds: list[str]) -> set[Path]:
    return ris_import_closure([root for cmd in cmds for root in stage_modules(cmd)], SRC)


def _relative(files: set[Path]) -> str:
    return ", ".join(sorted(file.relative_to(REPO).as_posix() for file in files))


def test_stage_deps_cover_all_code_the_command_imports() -> None:
    problems = []
    for name, cmds, deps in _stages():
        missing = _closure(cmds) - declared_source_files(deps, REPO)
        problems += [f"  {name}: add {entry}" for entry in covering_entries(missing, REPO)]
    if problems:
        pytest.fail("dvc.yaml stages do not depend on all the ris code their command runs, so a change there would "
                    "not re-run them; add these deps entries:\n" + "\n".join(problems), pytrace=False)


def test_stage_deps_name_only_code_the_command_imports() -> None:
    problems = []
    for name, cmds, deps in _stages():
        closure = _closure(cmds)
        for dep in deps:
            declared = declared_source_files([dep], REPO)
            extra = declared - closure
            if not extra:
                continue
            needed = declared & closure
            if not (REPO / dep).exists():
                problems.append(f"  {name}: remove {dep} (no such path)")
            elif not needed:
                problems.append(f"  {name}: remove {dep}")
            else:
                problems.append(f"  {name}: replace {dep} with {', '.join(covering_entries(needed, REPO))} "
                                f"(the command never imports {_relative(extra)})")
    if problems:
        pytest.fail("dvc.yaml stages depend on ris code their command never runs, so changing it re-runs them for "
                    "nothing; fix these deps entries:\n" + "\n".join(problems), pytrace=False)


def test_bytecode_caches_inside_source_deps_are_ignored_by_dvc() -> None:
    """Stages depend on whole source folders; the __pycache__ any import writes there (PYTHONDONTWRITEBYTECODE is
    not set on a user's machine) must not change their hashes, or every `dvc status` after a run says "modified"."""
    import subprocess
    import sys

    dvc = Path(sys.executable).parent / "dvc"
    paths = ["src/ris/embed/__pycache__/store.cpython-311.pyc", "src/ris/index/brute.pyc"]
    result = subprocess.run([str(dvc), "check-ignore", *paths], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == paths, result.stdout + result.stderr
    kept = subprocess.run([str(dvc), "check-ignore", "src/ris/embed/store.py"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert kept.returncode == 1 and not kept.stdout.strip()  # the source itself still counts


def test_lock_files_beside_outputs_are_ignored_by_dvc() -> None:
    """ris.locks writes ``.<name>.lock`` beside an output the first time it is used. Some stages depend on the folder
    that holds such locks (`visualise` on ``artifacts/reduced/<backbone>``, `report` on ``reports/pca``); a fresh
    checkout has none yet, so DVC must not count them, or it re-runs those stages after every `dvc checkout`."""
    import subprocess
    import sys

    dvc = Path(sys.executable).parent / "dvc"
    paths = ["artifacts/reduced/mobilenetv2_100/.auto.lock", "reports/pca/mobilenetv2_100/.plots.lock"]
    result = subprocess.run([str(dvc), "check-ignore", *paths], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == paths, result.stdout + result.stderr

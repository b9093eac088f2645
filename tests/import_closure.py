"""Which files of the ``ris`` package a DVC stage's command executes, found by reading the source with ``ast``.

Used by ``tests/unit/test_dvc_deps.py`` to hold every dvc.yaml stage's ``deps`` to exactly the code its command
runs, so that a refactor cannot leave a stage with a stale dependency list. Nothing here imports the code it
inspects: the import graph is read from the source, so the check is fast and needs none of the heavy libraries.

What counts as an import of a ``ris`` module ``m`` (each one also executes the ``__init__.py`` of every package
above ``m``, and of ``m`` itself when ``m`` is a package):

* ``import ris.a.b`` and ``import ris.a.b as x``;
* ``from ris.a import b`` (``ris.a``, and ``ris.a.b`` too when ``b`` is a submodule rather than a name);
* relative imports (``from . import b``, ``from ..a import b``), resolved against the importing module;
* ``importlib.import_module("ris.a")`` and ``__import__("ris.a")`` with a literal module name;
* any of the above anywhere in a module: at the top, inside functions, methods, ``try`` blocks, ...

except under ``if TYPE_CHECKING:`` (or ``if typing.TYPE_CHECKING:``), whose body never runs; its ``else`` does.
Imports whose target is computed at run time (``importlib.import_module(f"ris.stages.{name}")``) cannot be read
from the source; :func:`stage_modules` names the stage module of a command explicitly for that reason.
"""

from __future__ import annotations

import ast
import shlex
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

PACKAGE = "ris"
"""The top-level package whose files the closure follows; every other import is a third-party or stdlib one."""

_IMPORT_FUNCTIONS = frozenset({"import_module", "__import__"})


def module_file(module: str, src: Path) -> Path | None:
    """The file that defines ``module`` under ``src``: its ``.py`` file, or its ``__init__.py`` for a package.

    None when ``module`` is not a ``ris`` module or has no such file under ``src`` (a name imported from a module,
    a third-party module, a namespace folder without ``__init__.py``). ``src`` is the folder holding ``ris/``.
    """
    parts = module.split(".")
    if parts[0] != PACKAGE or not all(part.isidentifier() for part in parts):
        return None
    base = src.joinpath(*parts)
    package_init = base / "__init__.py"
    if package_init.is_file():
        return package_init
    plain = base.with_name(base.name + ".py")
    return plain if plain.is_file() else None


def _parents_and_self(module: str) -> list[str]:
    """``"a.b.c"`` -> ``["a", "a.b", "a.b.c"]``: importing a module first executes every package above it."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``<anything>.TYPE_CHECKING`` (``typing.TYPE_CHECKING``)."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of ``from <level dots><target> import ...`` written in ``module``."""
    package = module if is_package else module.rpartition(".")[0]
    parts = package.split(".") if package else []
    if level - 1 > len(parts) - 1:
        raise ValueError(f"{module}: relative import beyond the top-level package (level {level})")
    base = parts[: len(parts) - (level - 1)]
    if target:
        base.append(target)
    return ".".join(base)


class _ImportCollector(ast.NodeVisitor):
    """Collects what one module imports: ``requires`` (must be modules) and ``maybe`` (modules or plain names)."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.module = module
        self.is_package = is_package
        self.requires: set[str] = set()
        self.maybe: set[str] = set()

    def visit_If(self, node: ast.If) -> None:  # noqa: N802 (ast.NodeVisitor naming)
        if _is_type_checking(node.test):
            for statement in node.orelse:  # the body only runs for type checkers; the else branch runs for real
                self.visit(statement)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:  # noqa: N802
        for alias in node.names:
            self.requires.add(alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:  # noqa: N802
        if node.level:
            base = _resolve_relative(self.module, self.is_package, node.level, node.module)
        else:
            base = node.module or ""
        if base:
            self.requires.add(base)
        for alias in node.names:
            if alias.name != "*":
                self.maybe.add(f"{base}.{alias.name}" if base else alias.name)

    def visit_Call(self, node: ast.Call) -> None:  # noqa: N802
        function = node.func
        name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", None)
        if name in _IMPORT_FUNCTIONS and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                self.requires.add(first.value)
        self.generic_visit(node)


def _imports_of(module: str, path: Path) -> tuple[set[str], set[str]]:
    """``(requires, maybe)`` of the module ``module`` defined in ``path``; see :class:`_ImportCollector`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    collector = _ImportCollector(module, is_package=path.name == "__init__.py")
    collector.visit(tree)
    return collector.requires, collector.maybe


def _ris_modules(names: Iterable[str]) -> Iterator[str]:
    for name in names:
        if name == PACKAGE or name.startswith(PACKAGE + "."):
            yield name


def ris_import_closure(roots: Iterable[str], src: Path) -> set[Path]:
    """The files of every ``ris`` module that running ``roots`` executes, transitively, read with ``ast``.

    Includes the roots' own files and the ``__init__.py`` of every package above each module reached (they run on
    import). ``src`` is the folder holding ``ris/``. Raises ``ModuleNotFoundError`` when a root, or a ``ris``
    module some reached file imports, has no file under ``src``: such an import would fail at run time, and a
    dependency list cannot be checked against it.
    """
    roots = list(roots)
    foreign = [root for root in roots if root not in set(_ris_modules(roots))]
    if foreign:
        raise ValueError(f"not {PACKAGE} modules: {', '.join(foreign)}")
    closure: set[Path] = set()
    seen: set[str] = set()
    pending: list[tuple[str, str]] = [(root, "the stage command") for root in roots]
    while pending:
        name, importer = pending.pop()
        for module in _parents_and_self(name):
            if module in seen:
                continue
            path = module_file(module, src)
            if path is None:
                if (src.joinpath(*module.split("."))).is_dir():
                    seen.add(module)  # a namespace folder: nothing runs for it, but its modules may exist
                    continue
                raise ModuleNotFoundError(f"{importer} imports {name}, but {src} has no file for {module}")
            seen.add(module)
            closure.add(path)
            requires, maybe = _imports_of(module, path)
            pending.extend((required, module) for required in _ris_modules(requires))
            # ``from ris.a import b``: ``b`` is either a submodule (which then runs) or a name defined in ris.a.
            pending.extend((candidate, module) for candidate in _ris_modules(maybe)
                           if candidate not in seen and module_file(candidate, src) is not None)
    return closure


def _python_module_roots(tokens: list[str]) -> list[str] | None:
    """The roots of ``python [-flags] -m MODULE args...``, or None when ``tokens`` is not that."""
    if not tokens or not PurePosixPath(tokens[0]).name.startswith("python"):
        return None
    for position, token in enumerate(tokens[1:], start=1):
        if token == "-m" and position + 1 < len(tokens):
            return _roots_of(tokens[position + 1], tokens[position + 2:])
        if token.startswith("-m") and len(token) > 2:
            return _roots_of(token[2:], tokens[position + 1:])
        if not token.startswith("-"):
            return None  # ``python script.py``: not a module run
    return None


def _roots_of(module: str, args: list[str]) -> list[str]:
    """``ris.cli stage NAME`` also runs ``ris.stages.NAME`` (imported dynamically by name, which ast cannot see)."""
    if module == f"{PACKAGE}.cli" and len(args) >= 2 and args[0] == "stage":
        return [module, _stage_module(args[1])]
    return [module]


def _stage_module(name: str) -> str:
    if not name.isidentifier():
        raise ValueError(f"stage name {name!r} is not a module name (interpolated? the module must be literal)")
    return f"{PACKAGE}.stages.{name}"


def stage_modules(cmd: str) -> list[str]:
    """The root modules a dvc.yaml ``cmd`` runs.

    ``ris stage NAME ...`` -> ``["ris.cli", "ris.stages.NAME"]`` (the console script runs ``ris.cli:main``);
    ``python -m ris.stages.NAME ...`` -> ``["ris.stages.NAME"]`` (also ``python3``, ``.venv/bin/python``, flags
    before ``-m``, and ``python -m ris.cli stage NAME``). Leading ``VAR=value`` assignments are skipped; arguments
    such as ``--dim ${item.dim}`` do not matter. Raises ``ValueError`` for any other command (including shell lists
    and pipelines such as ``... && ...``), so that a stage the check does not understand fails loudly instead of
    passing unchecked.
    """
    lexer = shlex.shlex(cmd, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    tokens = list(lexer)
    if any(token and set(token) <= set(lexer.punctuation_chars) for token in tokens):
        raise ValueError(f"{cmd!r} is a shell pipeline or list; a stage should run one {PACKAGE} module")
    while tokens and "=" in tokens[0] and tokens[0].split("=", 1)[0].isidentifier():
        tokens = tokens[1:]
    if len(tokens) >= 3 and PurePosixPath(tokens[0]).name == PACKAGE and tokens[1] == "stage":
        return [f"{PACKAGE}.cli", _stage_module(tokens[2])]
    roots = _python_module_roots(tokens)
    if roots is None or not all(root.split(".")[0] == PACKAGE for root in roots):
        raise ValueError(f"cannot tell which {PACKAGE} modules this command runs: {cmd!r} "
                         f"(expected `{PACKAGE} stage NAME ...` or `python -m {PACKAGE}.stages.NAME ...`)")
    return roots


def declared_source_files(deps: Iterable[str], repo: Path) -> set[Path]:
    """The ``.py`` files that dvc.yaml ``deps`` entries under ``src/`` name, as paths below ``repo``.

    A folder entry stands for every ``.py`` file below it (recursively). Entries outside ``src/`` are ignored
    (data, params, ``${...}`` interpolations), as are non-Python files under ``src/``. An entry under ``src/``
    that does not exist is returned as it is, so that the caller reports it as a dependency to remove. Raises
    ``ValueError`` for an entry under ``src/`` that holds a ``${...}`` interpolation: which code it names cannot be
    told from dvc.yaml alone.
    """
    files: set[Path] = set()
    for entry in deps:
        relative = PurePosixPath(entry.strip())
        if not relative.parts or relative.parts[0] != "src":
            continue
        if "${" in entry:
            raise ValueError(f"dependency {entry!r} under src/ is interpolated; name the code it depends on literally")
        path = repo.joinpath(*relative.parts)
        if path.is_dir():
            files.update(sorted(path.rglob("*.py")))
        elif path.suffix == ".py" or not path.exists():
            files.add(path)
    return files


def covering_entries(files: Iterable[Path], repo: Path) -> list[str]:
    """The fewest dvc.yaml deps entries (relative to ``repo``) that name exactly ``files`` among ``.py`` files.

    A folder replaces its files when every ``.py`` file below it is in ``files`` (the highest such folder, but
    never ``repo`` itself); other files are named one by one. Used to phrase what a stage must add or keep.
    """
    wanted = {Path(file) for file in files}
    entries: set[Path] = set()
    for file in wanted:
        entry = file
        while entry.parent != repo and repo in entry.parent.parents and set(entry.parent.rglob("*.py")) <= wanted:
            entry = entry.parent
        entries.add(entry)
    return sorted(entry.relative_to(repo).as_posix() for entry in entries)

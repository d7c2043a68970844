"""The import contract of docs/architecture.md, read from the source with `ast`.

Every import counts, the ones inside functions too (a heavy library is imported where it is
used, and so is many a tapeout module): only imports under `if TYPE_CHECKING:` are left out,
since they never run. The contract:

- the layers, lowest first: compilers → calibration → artifacts → flows → the command line
  (tapeout.flows.cli). A module imports from its own layer and the ones below, never above;
- the compiler core (the modules directly in tapeout.compilers) imports no compiler plugin:
  plugins are found through their entry points;
- no import cycles between modules.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Lowest first; a layer is a package, or (the command line) a package inside one.
LAYERS = ("tapeout.compilers", "tapeout.calibration", "tapeout.artifacts", "tapeout.flows", "tapeout.flows.cli")
# pyproject.toml's package-dir: where each top-level package lives in the repository.
PACKAGE_DIRS = {"tapeout.compilers": "compilers", "tapeout.calibration": "calibration",
                "tapeout.artifacts": "artifacts", "tapeout.flows": "flows"}


def modules_in(root: Path, package_dirs: Mapping[str, str]) -> dict[str, Path | None]:
    """Every module name → its source file (None for a compiled extension, known by its .pyx)."""
    found: dict[str, Path | None] = {}
    for package, folder in package_dirs.items():
        for path in sorted((root / folder).rglob("*.py*")):
            if path.suffix not in (".py", ".pyx"):
                continue
            parts = list(path.relative_to(root / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path if path.suffix == ".py" else None
    return found


def _under_type_checking(node: ast.AST, parents: Mapping[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(name: str, path: Path, known: Iterable[str]) -> set[str]:
    """The known modules `name` (at `path`) imports, anywhere in the file: `from a import b`
    counts as importing `a.b` when that is a module, else `a`."""
    known = set(known)
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or _under_type_checking(node, parents):
            continue
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            candidates = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        for candidate in candidates:
            while candidate and candidate not in known:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                targets.add(candidate)
    return targets


def import_graph(root: Path, package_dirs: Mapping[str, str]) -> dict[str, set[str]]:
    modules = modules_in(root, package_dirs)
    return {name: imports_of(name, path, modules) for name, path in modules.items() if path is not None}


def layer_of(module: str, layers: tuple[str, ...] = LAYERS) -> int:
    """The index of the innermost layer holding `module`."""
    best = -1
    for index, layer in enumerate(layers):
        if (module == layer or module.startswith(layer + ".")) and (best < 0 or len(layer) > len(layers[best])):
            best = index
    return best


def upward_imports(graph: Mapping[str, set[str]], layers: tuple[str, ...] = LAYERS) -> list[str]:
    return sorted(
        f"{module} ({layers[layer_of(module, layers)]}) imports {target} ({layers[layer_of(target, layers)]})"
        for module, targets in graph.items()
        for target in targets
        if layer_of(target, layers) > layer_of(module, layers)
    )


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph.get(module, ())):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


# -- the contract --------------------------------------------------------------------------------


def test_no_module_imports_from_a_layer_above_its_own():
    assert upward_imports(import_graph(ROOT, PACKAGE_DIRS)) == []


def test_the_compiler_core_imports_no_plugin():
    graph = import_graph(ROOT, PACKAGE_DIRS)
    core = {name for name, path in modules_in(ROOT, PACKAGE_DIRS).items()
            if name.count(".") == 2 and name.startswith("tapeout.compilers.") and path is not None
            and path.name != "__init__.py"}
    found = sorted(
        f"{module} imports {target}"
        for module in core
        for target in graph[module]
        if target.startswith("tapeout.compilers.") and target.count(".") >= 2 and target not in core
    )
    assert found == []


def test_no_import_cycles():
    assert cycles(import_graph(ROOT, PACKAGE_DIRS)) == []


# -- the checker itself ----------------------------------------------------------------------------


def _tree(root: Path, files: Mapping[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checker_sees_imports_inside_functions_and_relative_ones(tmp_path):
    _tree(tmp_path, {
        "low/__init__.py": "",
        "low/a.py": "def f():\n    from tapeout.high.b import g\n",
        "low/c.py": "from . import a\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from tapeout.high import b\n",
        "high/__init__.py": "",
        "high/b.py": "def g():\n    import tapeout.low.a\n",
    })
    dirs = {"tapeout.low": "low", "tapeout.high": "high"}
    graph = import_graph(tmp_path, dirs)
    assert graph["tapeout.low.a"] == {"tapeout.high.b"}
    assert graph["tapeout.low.c"] == {"tapeout.low.a"}  # the TYPE_CHECKING import never runs
    assert upward_imports(graph, ("tapeout.low", "tapeout.high")) == [
        "tapeout.low.a (tapeout.low) imports tapeout.high.b (tapeout.high)"
    ]
    assert cycles(graph) == [["tapeout.high.b", "tapeout.low.a"]]

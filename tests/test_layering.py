"""The package's layering: what each part may import, and no import cycles."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import featvis

PACKAGE = Path(featvis.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """featvis module -> the featvis modules it imports (at any depth in the file)."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
                names |= {f"{node.module}.{alias.name}" for alias in node.names}
        found[_module_name(path)] = {name for name in names if name.split(".")[0] in {"featvis", "lightning"}}
    modules = set(found)
    # Keep module names (``from featvis.engine import render`` imports featvis.engine, not a module "render").
    return {m: {n for n in names if n in modules or n.startswith("lightning")} for m, names in found.items()}


def test_engine_imports_only_itself_colour_and_images() -> None:
    for module, names in _imports().items():
        if module.startswith("featvis.engine"):
            outside = {n for n in names if not n.startswith("featvis.engine")}
            assert outside <= {"featvis.colour", "featvis.images"}, (module, outside)


def test_quality_is_pure_pytorch_above_the_engine() -> None:
    for module, names in _imports().items():
        if module.startswith("featvis.quality"):
            allowed = ("featvis.quality", "featvis.engine", "featvis.colour", "featvis.images")
            assert all(n.startswith(allowed) for n in names), (module, names)


def test_no_import_cycles_between_modules() -> None:
    graph = _imports()
    # A package's __init__ re-exports its modules; an edge into a package means its __init__.
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in graph.get(module, ()):
            if target.startswith("lightning") or target == module:
                continue
            if state.get(target) == 1:
                cycle = path[path.index(target) :] + [target] if target in path else [module, target]
                # ``featvis.engine`` (the package) importing its own submodules is how packages work.
                if not all(m.startswith(target + ".") or m == target for m in cycle):
                    cycles.append(" -> ".join(cycle))
            elif state.get(target) is None:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_readme_layout_table_names_every_module() -> None:
    readme = (PACKAGE.parent / "README.md").read_text()
    table = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `(featvis/[\w/]+\.py)` \|", table, flags=re.M))
    modules = {path.relative_to(PACKAGE.parent).as_posix() for path in PACKAGE.rglob("*.py")}
    assert listed == modules

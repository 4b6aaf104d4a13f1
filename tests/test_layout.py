"""The package layout: no module reaches itself through its own imports (docs/design.md)."""

from __future__ import annotations

from pathlib import Path

import grimp
import tomllib

# every package the project declares (pyproject.toml)
PACKAGES = tuple(
    pattern.rstrip("*")
    for pattern in tomllib.loads(
        (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    )["tool"]["setuptools"]["packages"]["find"]["include"]
)


def circles(graph: grimp.ImportGraph) -> list[tuple[str, ...]]:
    """Every module that imports one that leads back to it: the shortest such circle each."""
    found = set()
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back is not None:
                found.add(tuple(sorted((module, *back[:-1]))))
    return sorted(found)


def test_no_module_imports_itself_through_others() -> None:
    # every import counts: at module level, in a function, under TYPE_CHECKING
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    assert circles(graph) == []


def test_a_circle_is_found() -> None:
    graph = grimp.ImportGraph()
    for name in ("p.a", "p.b", "p.c", "p.d"):
        graph.add_module(name)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.c")
    graph.add_import(importer="p.c", imported="p.a")
    graph.add_import(importer="p.c", imported="p.d")
    assert circles(graph) == [("p.a", "p.b", "p.c")]

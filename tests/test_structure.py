"""The package's structure: no import cycles (late imports inside functions count too), and no module
reaching into another's private names."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "provision"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(importer: str, is_package: bool, node: ast.ImportFrom | ast.Import) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for one import statement, within the package only."""
    if isinstance(node, ast.Import):
        return [(a.name, []) for a in node.names if a.name.split(".")[0] == "provision"]
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    if node.level:
        base = base[: len(base) - (node.level - 1)]
        target = ".".join([*base, node.module] if node.module else base)
    else:
        target = node.module or ""
    if target.split(".")[0] != "provision":
        return []
    found = []
    for alias in node.names:
        candidate = f"{target}.{alias.name}"
        found.append((candidate, []) if (PACKAGE.parent / (candidate.replace(".", "/") + ".py")).exists() else (target, [alias.name]))
    return found


THIRD_PARTY_REACH = "# noqa: SLF001 - third-party: "  # then the reason


def import_graph() -> tuple[dict[str, set[str]], list[str]]:
    """module -> modules it imports (anywhere in its body), and every use of another module's private name."""
    graph: dict[str, set[str]] = {}
    private: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        source = path.read_text()
        lines = source.splitlines()
        tree = ast.parse(source, filename=str(path))
        graph.setdefault(name, set())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target, names in resolve(name, path.name == "__init__.py", node):
                    if target != name:
                        graph[name].add(target)
                    private += [f"{name} imports {target}.{n}" for n in names if n.startswith("_") and n != "__version__"]
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                owner = node.value
                # a third-party object's private attribute, where its library has no public way, says why on its line
                reasoned = THIRD_PARTY_REACH in lines[node.lineno - 1]
                if isinstance(owner, ast.Name) and owner.id not in ("self", "cls") and not reasoned:
                    private.append(f"{name} uses {owner.id}.{node.attr}")
    return graph, private


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_the_package_has_no_import_cycle() -> None:
    graph, _ = import_graph()
    assert len(graph) > 30, "the graph covers the package"
    assert cycles(graph) == [], "\n".join(" -> ".join(c) for c in cycles(graph))


def test_no_module_reaches_into_another_ones_private_names() -> None:
    _, private = import_graph()
    assert private == []


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []

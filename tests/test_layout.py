"""The package's layers, read from its import graph (ast): no cycle, no import from a lower layer into a
higher one, no module over 400 lines. The layers, bottom up, are the architecture the README maps."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "rbp"
MAX_LINES = 400

# Bottom up; a module may import its own layer and those below. A prefix names a package and its modules.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("rbp.base",)),
    ("config", ("rbp.config.schema", "rbp.config.io", "rbp.config")),
    ("core", ("rbp.nn", "rbp.models", "rbp.data", "rbp.attacks", "rbp.evaluation", "rbp.training")),
    # Loading a config also checks what needs the architecture registry (an arch exists, explicit
    # per-layer densities name its layers), so it sits above the core that models and data make up.
    ("config loading", ("rbp.config.load",)),
    ("artefacts", ("rbp.artefacts",)),
    ("runs", ("rbp.runs",)),
    ("platform", ("rbp.results", "rbp.ablation", "rbp.tuning")),
    ("cli", ("rbp.cli", "rbp.__main__")),
    ("api", ("rbp", "rbp.api")),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    """Index of the layer whose longest prefix matches ``module``."""
    matches = [(len(prefix), index) for index, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".")]  # fmt: skip
    assert matches, f"{module} is in no layer: add it to LAYERS"
    return max(matches)[1]


def imports(path: Path, known: set[str]) -> set[str]:
    """The rbp modules ``path`` imports, anywhere in it (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "rbp"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "rbp":
            for alias in node.names:  # `from rbp.base import files` imports the module rbp.base.files
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(path, set(found)) - {name} for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def upward(edges: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
        for a, targets in edges.items()
        for b in targets
        if layer_of(b) > layer_of(a)
    )


def test_the_import_graph_has_no_cycle():
    assert cycles(graph()) == []


def test_no_module_imports_from_a_higher_layer():
    assert upward(graph()) == []


def test_no_module_is_over_400_lines():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_checks_find_a_cycle_and_an_upward_import():
    """The checks themselves: a planted cycle and a core module importing the CLI are both found."""
    edges = {"rbp.nn.a": {"rbp.nn.b"}, "rbp.nn.b": {"rbp.nn.a", "rbp.cli"}, "rbp.cli": set()}
    assert cycles(edges) == [["rbp.nn.a", "rbp.nn.b"]]
    assert upward(edges) == ["rbp.nn.b (core) imports rbp.cli (cli)"]


def test_test_files_have_unique_names():
    """pytest imports test files by basename (tests/ has no packages): two of one name stop collection."""
    names = [path.name for path in Path(__file__).parent.rglob("test_*.py")]
    assert sorted({name for name in names if names.count(name) > 1}) == []

"""The package's shape: no import cycles (function-level imports and package ``__init__`` imports
counted), a small top level and sub-packages by concern."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "snnet"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the snnet modules it imports, from every import statement in its source."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                # `from pkg import sub` imports the submodule; `from mod import name` the module
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in files else source for a in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in files and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a list of modules, or [] when the graph is acyclic (iterative DFS)."""
    state: dict[str, int] = {}  # 1: on the DFS stack, 2: done
    for root in sorted(graph):
        if state.get(root):
            continue
        stack = [(root, iter(sorted(graph[root])))]
        path = [root]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                state[node] = 2
            elif state.get(child) == 1:
                return path[path.index(child) :] + [child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph[child]))))
    return []


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert not cycle, " -> ".join(cycle)


def test_top_level_is_small_and_split_by_concern():
    modules = [p.stem for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    packages = [p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()]
    assert len(modules) <= 12, sorted(modules)
    assert len(packages) >= 3, sorted(packages)


def test_compose_and_evaluate_share_measures_not_each_other():
    """compose/ uses evaluate's tools around the flow (pick: Pareto; ship: export, prediction
    info) but no evaluate measure: CKA and the image sampling that both score on live below both
    (core.measures, data.loaders), defined once; and evaluate never imports compose."""
    graph = import_graph()
    compose_to_evaluate = {t for m, ts in graph.items() if m.startswith("snnet.compose") for t in ts}
    compose_to_evaluate = {t for t in compose_to_evaluate if t.startswith("snnet.evaluate")}
    assert compose_to_evaluate <= {"snnet.evaluate.pareto", "snnet.evaluate.export", "snnet.evaluate.predict"}, (
        compose_to_evaluate
    )
    assert not any(
        t.startswith("snnet.compose") for m, ts in graph.items() if m.startswith("snnet.evaluate") for t in ts
    )
    for helper, home in (
        ("def linear_cka(", "snnet/core/measures.py"),
        ("def sample_train_images(", "snnet/data/loaders.py"),
    ):
        defined = [str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py") if helper in p.read_text()]
        assert defined == [home], (helper, defined)
    for user in ("snnet.compose.junctions", "snnet.evaluate.compat"):
        assert "snnet.core.measures" in graph[user], user


def test_no_module_over_500_lines():
    long = {
        str(p.relative_to(PACKAGE.parent)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 500
    }
    assert not long, long

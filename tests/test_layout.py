"""The module boundaries the folders promise: agents/ are pure of Kafka wiring and stores, no import cycles."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("streams", "agents", "schemas", "sinks")


def imports() -> dict[str, set[str]]:
    """Each project module's imports of project modules, function-level ones included (not those
    made for type checkers only, under ``if TYPE_CHECKING:``)."""
    mods = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING" for b in node.body for n in ast.walk(b)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[m] |= {t for t in targets if t in mods}
    return graph


def test_agents_import_neither_sinks_nor_sources_nor_the_runtime() -> None:
    bad = {m: sorted(t for t in ts if not t.startswith(("agents", "schemas"))) for m, ts in imports().items() if m.startswith("agents")}
    assert {m: ts for m, ts in bad.items() if ts} == {}


def test_no_import_cycles() -> None:
    graph = imports()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for t in sorted(graph[node]):
            if state.get(t) == 1:
                cycles.append(path[path.index(t):] + [t])
            elif t not in state:
                visit(t, path + [t])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []

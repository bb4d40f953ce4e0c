"""The house plan, read from the imports: every arrow points down, and no cycle.

    rlhf command line (cli, up, adapters_cli, keys_cli)     floor 4
    serving/          learner/         judge/           floor 3 (never import each other)
    adapters/                                           floor 2
    feedback/                                           floor 1
    rlhf settings and models                            floor 0

Imports are read with `ast` from every module, including imports inside functions, so a
lazy import cannot hide an arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rlhf", "serving", "learner", "judge", "adapters", "feedback")
COMMAND_LINE = ("rlhf.cli", "rlhf.up", "rlhf.adapters_cli", "rlhf.keys_cli")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def floor(module: str) -> int:
    top = module.split(".")[0]
    if top == "rlhf":
        return 4 if module.startswith(COMMAND_LINE) else 0
    return {"feedback": 1, "adapters": 2, "serving": 3, "learner": 3, "judge": 3}[top]


def project_imports() -> dict[str, set[str]]:
    """module -> the project modules it imports (a `from pkg import mod` counts as pkg.mod when that is a module)."""
    files = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                         for a in node.names]
            else:
                continue
            targets |= {n for n in names if n.split(".")[0] in PACKAGES and n != mod}
        graph[mod] = {t for t in targets if t in files}
    return graph


def test_every_arrow_points_down():
    upward = [f"{m} -> {t}" for m, ts in project_imports().items() for t in ts
              if floor(t) > floor(m) or (floor(t) == floor(m) == 3 and t.split(".")[0] != m.split(".")[0])]
    assert upward == []


def test_no_import_cycle():
    graph = project_imports()
    state: dict[str, int] = {}  # 1 visiting, 2 done
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                cycles.append(" -> ".join(path[path.index(t):] + [t]))
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_the_graph_is_read():
    """Guards the two tests above against passing on an empty graph."""
    graph = project_imports()
    assert "adapters.store" in graph["learner.publish"]
    assert "adapters.follower" in graph["serving.app"]


def test_the_product_never_imports_the_test_helpers():
    """harness/, tests/ and bench/ stand on the packages; no package stands on them."""
    helpers = {"harness", "tests", "bench"}
    found = []
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                else:
                    continue
                found += [f"{module_name(path)} -> {n}" for n in names if n.split(".")[0] in helpers]
    assert found == []
